/* Sign packing: int8 codes <-> packed signs (NHWC, 64 channels a word), binary weights and the two
 * bit planes of ternary weights. */
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

/* The bit of a weight code in one plane: the sign of a binary weight (+1 -> 1, -1 -> 0), or the
 * non-zero or positive bit of a ternary one; -1 for a code the plane does not take. */
enum { PLANE_SIGN, PLANE_NONZERO, PLANE_POSITIVE };

static int plane_bit(int8_t v, int plane)
{
    if (plane == PLANE_SIGN)
        return v == 1 ? 1 : (v == -1 ? 0 : -1);
    if (v < -1 || v > 1)
        return -1;
    return plane == PLANE_NONZERO ? v != 0 : v > 0;
}

/* One plane of OHWI codes into the binary weight layout (qat_kernels.h), block b of 16 output
 * channels starting at out + b * block_words; out must be zeroed. */
static int pack_plane(const qat_conv_geom *g, const int8_t *codes, uint64_t *out, int64_t block_words, int plane)
{
    int64_t cw = qat_sign_words(g->c_in);
    int32_t o, ky, kx, ch;
    if (qat_binary_dense(g)) {
        int64_t k = (int64_t)g->kh * g->kw * g->c_in, i;
        for (o = 0; o < g->c_out; o++) {
            uint64_t *dst = out + (int64_t)(o / QAT_OC_BLOCK) * block_words + o % QAT_OC_BLOCK;
            for (i = 0; i < k; i++) {
                int bit = plane_bit(codes[(int64_t)o * k + i], plane);
                if (bit < 0)
                    return QAT_ERANGE;
                dst[(i / 64) * QAT_OC_BLOCK] |= (uint64_t)bit << (i % 64);
            }
        }
        return QAT_OK;
    }
    for (o = 0; o < g->c_out; o++)
        for (ky = 0; ky < g->kh; ky++)
            for (kx = 0; kx < g->kw; kx++) {
                const int8_t *src = codes + (((int64_t)o * g->kh + ky) * g->kw + kx) * g->c_in;
                uint64_t *dst = out + (int64_t)(o / QAT_OC_BLOCK) * block_words +
                                ((int64_t)ky * g->kw + kx) * cw * QAT_OC_BLOCK + o % QAT_OC_BLOCK;
                for (ch = 0; ch < g->c_in; ch++) {
                    int bit = plane_bit(src[ch], plane);
                    if (bit < 0)
                        return QAT_ERANGE;
                    dst[(ch / 64) * QAT_OC_BLOCK] |= (uint64_t)bit << (ch % 64);
                }
            }
    return QAT_OK;
}

int qat_binary_pack_weights(const qat_conv_geom *g, const int8_t *codes, uint64_t *out)
{
    int64_t total = qat_binary_weight_words(g);
    if (total < 0 || !codes || !out)
        return QAT_EARG;
    for (int64_t i = 0; i < total; i++)
        out[i] = 0;
    return pack_plane(g, codes, out, qat_binary_row_words(g) * QAT_OC_BLOCK, PLANE_SIGN);
}

int qat_ternary_pack_weights(const qat_conv_geom *g, const int8_t *codes, uint64_t *out)
{
    int64_t total = qat_ternary_weight_words(g), rw, nblk, k, kk, i;
    int32_t o;
    int rc;
    if (total < 0 || !codes || !out)
        return QAT_EARG;
    rw = qat_binary_row_words(g);
    nblk = (g->c_out + QAT_OC_BLOCK - 1) / QAT_OC_BLOCK;
    for (i = 0; i < total; i++)
        out[i] = 0;
    rc = pack_plane(g, codes, out, 2 * rw * QAT_OC_BLOCK, PLANE_NONZERO);
    if (rc == QAT_OK)
        rc = pack_plane(g, codes, out + rw * QAT_OC_BLOCK, 2 * rw * QAT_OC_BLOCK, PLANE_POSITIVE);
    if (rc != QAT_OK)
        return rc;
    k = (int64_t)g->kh * g->kw * g->c_in;
    kk = (int64_t)g->kh * g->kw;
    for (o = 0; o < g->c_out; o++) { /* after the planes: non-zero counts, then sums per kernel position */
        uint64_t n = 0, *sums = out + nblk * (2 * rw + 1) * QAT_OC_BLOCK + (o / QAT_OC_BLOCK) * kk * QAT_OC_BLOCK;
        for (i = 0; i < k; i++) {
            int8_t v = codes[(int64_t)o * k + i];
            n += v != 0;
            sums[(i / g->c_in) * QAT_OC_BLOCK + o % QAT_OC_BLOCK] += (uint64_t)(int64_t)v; /* mod 2^64 */
        }
        out[nblk * 2 * rw * QAT_OC_BLOCK + o] = n;
    }
    return QAT_OK;
}
