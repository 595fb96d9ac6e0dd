/* Binary (XNOR-popcount) convolution, portable scalar path. See qat_kernels.h for the layouts. */
#include "qat_internal.h"

int qat_binary_conv2d_scalar(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w,
                             int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                             int32_t row0, int32_t row1)
{
    int64_t cw, cwo, nblk;
    int32_t r;
    if (qat_rows_check(g, row0, row1) != QAT_OK || !x || !w || (!acc == !bits) ||
        (bits && (!T || !dir)))
        return QAT_EARG;
    cw = qat_sign_words(g->c_in);
    cwo = qat_sign_words(g->c_out);
    nblk = (g->c_out + QAT_OC_BLOCK - 1) / QAT_OC_BLOCK;
    if (qat_binary_dense(g)) {
        int64_t rw = ((int64_t)g->kh * g->kw * g->c_in + 63) / 64;
        uint64_t row[QAT_DENSE_WORDS], mask[QAT_DENSE_WORDS];
        for (r = row0; r < row1; r++) {
            int32_t img = r / g->ho, oy = r % g->ho, ox;
            for (ox = 0; ox < g->wo; ox++) {
                int64_t pixel = (int64_t)r * g->wo + ox;
                int full, l;
                int32_t nvalid = qat_dense_row(g, x, img, oy, ox, row, mask, &full) * g->c_in;
                (void)full;
                if (bits)
                    for (int64_t j = 0; j < cwo; j++)
                        bits[pixel * cwo + j] = 0;
                for (int64_t b = 0; b < nblk; b++) {
                    const uint64_t *wp = w + b * rw * QAT_OC_BLOCK;
                    uint32_t cnt[QAT_OC_BLOCK] = {0};
                    int32_t acc16[QAT_OC_BLOCK];
                    for (int64_t j = 0; j < rw; j++)
                        for (l = 0; l < QAT_OC_BLOCK; l++)
                            cnt[l] += (uint32_t)__builtin_popcountll((row[j] ^ wp[j * QAT_OC_BLOCK + l]) & mask[j]);
                    for (l = 0; l < QAT_OC_BLOCK; l++)
                        acc16[l] = nvalid - 2 * (int32_t)cnt[l];
                    qat_binary_emit(g, pixel, (int32_t)b * QAT_OC_BLOCK, acc16, acc, T, dir, bits);
                }
            }
        }
        return QAT_OK;
    }
    for (r = row0; r < row1; r++) {
        int32_t img = r / g->ho, oy = r % g->ho, ox;
        for (ox = 0; ox < g->wo; ox++) {
            int64_t pixel = (int64_t)r * g->wo + ox;
            int32_t iy0 = oy * g->sh - g->ph, ix0 = ox * g->sw - g->pw;
            if (bits)
                for (int64_t j = 0; j < cwo; j++)
                    bits[pixel * cwo + j] = 0;
            for (int64_t b = 0; b < nblk; b++) {
                uint32_t cnt[QAT_OC_BLOCK] = {0};
                int32_t acc16[QAT_OC_BLOCK], npos = 0, ky, kx, l;
                for (ky = 0; ky < g->kh; ky++) {
                    int32_t iy = iy0 + ky * g->dh;
                    if (iy < 0 || iy >= g->h)
                        continue;
                    for (kx = 0; kx < g->kw; kx++) {
                        int32_t ix = ix0 + kx * g->dw;
                        const uint64_t *xp, *wp;
                        if (ix < 0 || ix >= g->w)
                            continue;
                        npos++;
                        xp = x + (((int64_t)img * g->h + iy) * g->w + ix) * cw;
                        wp = w + (((b * g->kh + ky) * g->kw + kx) * cw) * QAT_OC_BLOCK;
                        for (int64_t j = 0; j < cw; j++)
                            for (l = 0; l < QAT_OC_BLOCK; l++)
                                cnt[l] += (uint32_t)__builtin_popcountll(xp[j] ^ wp[j * QAT_OC_BLOCK + l]);
                    }
                }
                for (l = 0; l < QAT_OC_BLOCK; l++)
                    acc16[l] = npos * g->c_in - 2 * (int32_t)cnt[l];
                qat_binary_emit(g, pixel, (int32_t)b * QAT_OC_BLOCK, acc16, acc, T, dir, bits);
            }
        }
    }
    return QAT_OK;
}
