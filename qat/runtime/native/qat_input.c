#include "qat_input.h"

#include "qat_internal.h"

int qat_input_codes(const uint8_t *pixels, int64_t n, int32_t c, int32_t h, int32_t w,
                    const uint8_t *table, uint8_t *out)
{
    int64_t i, y, x, ch;
    if (!pixels || !table || !out || n <= 0 || c <= 0 || h <= 0 || w <= 0 ||
        n > QAT_MAX_ELEMS / ((int64_t)c * h * w))
        return QAT_EARG;
    for (i = 0; i < n; i++)
        for (ch = 0; ch < c; ch++) {
            const uint8_t *t = table + ch * 256;
            const uint8_t *p = pixels + (i * c + ch) * h * w;
            uint8_t *o = out + i * h * w * c + ch;
            for (y = 0; y < h; y++)
                for (x = 0; x < w; x++)
                    o[(y * w + x) * c] = t[p[y * w + x]];
        }
    return QAT_OK;
}

int qat_input_conv(const qat_conv_geom *g, const uint8_t *pixels, const int32_t *table,
                   const int8_t *w, int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                   int32_t row0, int32_t row1)
{
    int64_t r, ox, ky, kx, ch, k_len, cw;
    int32_t oc0, l, m, acc16[QAT_OC_BLOCK];
    if (!g || !pixels || !table || !w || qat_rows_check(g, row0, row1) != QAT_OK ||
        (acc ? (bits != NULL) : (!bits || !T || !dir)))
        return QAT_EARG;
    k_len = (int64_t)g->kh * g->kw * g->c_in;
    cw = qat_sign_words(g->c_out);
    for (r = row0; r < row1; r++) {
        const int64_t i = r / g->ho, oy = r % g->ho;
        const uint8_t *img = pixels + i * g->c_in * g->h * g->w;
        for (ox = 0; ox < g->wo; ox++) {
            const int64_t pixel = r * g->wo + ox;
            if (bits)
                for (l = 0; l < cw; l++)
                    bits[pixel * cw + l] = 0;
            for (oc0 = 0; oc0 < g->c_out; oc0 += QAT_OC_BLOCK) {
                const int8_t *wb = w + oc0 * k_len;
                m = g->c_out - oc0 < QAT_OC_BLOCK ? g->c_out - oc0 : QAT_OC_BLOCK;
                for (l = 0; l < m; l++)
                    acc16[l] = 0;
                for (ky = 0; ky < g->kh; ky++) {
                    const int64_t y = oy * g->sh - g->ph + ky * g->dh;
                    if (y < 0 || y >= g->h)
                        continue; /* padding: the value 0 adds nothing */
                    for (kx = 0; kx < g->kw; kx++) {
                        const int64_t x = ox * g->sw - g->pw + kx * g->dw;
                        if (x < 0 || x >= g->w)
                            continue;
                        for (ch = 0; ch < g->c_in; ch++) {
                            const int32_t v = table[ch * 256 + img[(ch * g->h + y) * g->w + x]];
                            const int8_t *wk = wb + (ky * g->kw + kx) * g->c_in + ch;
                            for (l = 0; l < m; l++)
                                acc16[l] += v * wk[l * k_len];
                        }
                    }
                }
                qat_binary_emit(g, pixel, oc0, acc16, acc, T, dir, bits);
            }
        }
    }
    return QAT_OK;
}
