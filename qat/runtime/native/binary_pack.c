/* Sign packing: int8 codes <-> packed signs (NHWC, 64 channels a word), and binary weights. */
#include "qat_internal.h"

int qat_pack_signs(const int8_t *codes, int64_t pixels, int32_t c, uint64_t *out)
{
    int64_t p, cw = qat_sign_words(c);
    int32_t j, b;
    if (!codes || !out || pixels < 0 || c < 1 || pixels > QAT_MAX_ELEMS / c)
        return QAT_EARG;
    for (p = 0; p < pixels; p++) {
        const int8_t *src = codes + p * c;
        for (j = 0; j < cw; j++) {
            int32_t n = c - 64 * j < 64 ? c - 64 * j : 64;
            uint64_t word = 0;
            for (b = 0; b < n; b++)
                word |= (uint64_t)(src[64 * j + b] > 0) << b;
            out[p * cw + j] = word;
        }
    }
    return QAT_OK;
}

int qat_unpack_signs(const uint64_t *bits, int64_t pixels, int32_t c, int8_t *out)
{
    int64_t p, cw = qat_sign_words(c);
    int32_t ch;
    if (!bits || !out || pixels < 0 || c < 1 || pixels > QAT_MAX_ELEMS / c)
        return QAT_EARG;
    for (p = 0; p < pixels; p++)
        for (ch = 0; ch < c; ch++)
            out[p * c + ch] = (int8_t)(((bits[p * cw + ch / 64] >> (ch % 64)) & 1) ? 1 : -1);
    return QAT_OK;
}

int qat_binary_pack_weights(const qat_conv_geom *g, const int8_t *codes, uint64_t *out)
{
    int64_t total = qat_binary_weight_words(g), cw;
    int32_t o, ky, kx, ch;
    if (total < 0 || !codes || !out)
        return QAT_EARG;
    cw = qat_sign_words(g->c_in);
    for (int64_t i = 0; i < total; i++)
        out[i] = 0;
    if (qat_binary_dense(g)) {
        int64_t k = (int64_t)g->kh * g->kw * g->c_in, rw = (k + 63) / 64, i;
        for (o = 0; o < g->c_out; o++) {
            uint64_t *dst = out + (int64_t)(o / QAT_OC_BLOCK) * rw * QAT_OC_BLOCK + o % QAT_OC_BLOCK;
            for (i = 0; i < k; i++) {
                int8_t v = codes[(int64_t)o * k + i];
                if (v != 1 && v != -1)
                    return QAT_ERANGE;
                if (v > 0)
                    dst[(i / 64) * QAT_OC_BLOCK] |= (uint64_t)1 << (i % 64);
            }
        }
        return QAT_OK;
    }
    for (o = 0; o < g->c_out; o++)
        for (ky = 0; ky < g->kh; ky++)
            for (kx = 0; kx < g->kw; kx++) {
                const int8_t *src = codes + (((int64_t)o * g->kh + ky) * g->kw + kx) * g->c_in;
                uint64_t *dst = out + ((((int64_t)(o / QAT_OC_BLOCK) * g->kh + ky) * g->kw + kx) * cw) *
                                          QAT_OC_BLOCK + o % QAT_OC_BLOCK;
                for (ch = 0; ch < g->c_in; ch++) {
                    if (src[ch] != 1 && src[ch] != -1)
                        return QAT_ERANGE;
                    if (src[ch] > 0)
                        dst[(ch / 64) * QAT_OC_BLOCK] |= (uint64_t)1 << (ch % 64);
                }
            }
    return QAT_OK;
}
