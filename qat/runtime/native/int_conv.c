/* Integer (8-bit codes) convolution, portable scalar path: im2col row of x - zx in int16, int32
 * dot products with the packed w - zw, fused requantization. See qat_kernels.h. */
#include "qat_internal.h"

#include <string.h>

int qat_int_pack_weights(const qat_conv_geom *g, const int32_t *codes, const int32_t *zw, int16_t *out)
{
    int64_t total = qat_int_weight_elems(g), k, kp, i;
    int32_t o;
    if (total < 0 || !codes || !out)
        return QAT_EARG;
    k = (int64_t)g->kh * g->kw * g->c_in;
    kp = k + (k & 1);
    for (i = 0; i < total; i++)
        out[i] = 0;
    for (o = 0; o < g->c_out; o++) {
        int64_t z = zw ? zw[o] : 0;
        int16_t *blk = out + (int64_t)(o / QAT_OC_BLOCK) * kp * QAT_OC_BLOCK;
        for (i = 0; i < k; i++) {
            int64_t v = (int64_t)codes[(int64_t)o * k + i] - z;
            if (v < -32768 || v > 32767)
                return QAT_ERANGE;
            blk[((i / 2) * QAT_OC_BLOCK + o % QAT_OC_BLOCK) * 2 + (i & 1)] = (int16_t)v;
        }
    }
    return QAT_OK;
}

int qat_int8_pack_weights(const qat_conv_geom *g, const int32_t *codes, const int32_t *zw, int8_t *out)
{
    int64_t total = qat_int8_weight_bytes(g), k, k4, i, nblk, n;
    int32_t o, lo = 0, hi = 0, offset;
    uint32_t *consts;
    if (total < 0 || !codes || !out)
        return QAT_EARG;
    k = (int64_t)g->kh * g->kw * g->c_in;
    k4 = qat_int8_k4(g);
    nblk = (g->c_out + QAT_OC_BLOCK - 1) / QAT_OC_BLOCK;
    n = k * g->c_out;
    for (i = 0; i < n; i++) {
        lo = codes[i] < lo ? codes[i] : lo;
        hi = codes[i] > hi ? codes[i] : hi;
    }
    if (lo >= 0 && hi <= 255)
        offset = 0; /* uint8 codes */
    else if (lo >= -128 && hi <= 127)
        offset = 128; /* int8 codes, read as uint8 w + 128 */
    else
        return QAT_ERANGE;
    for (i = 0; i < total; i++)
        out[i] = 0;
    for (o = 0; o < g->c_out; o++) {
        /* A = 128 - zwu and B = K zwu - sum_k wu, mod 2^32 (the kernel's result is exact mod 2^32) */
        uint32_t zwu = (uint32_t)((zw ? zw[o] : 0) + offset), sum = 0, a, b;
        int8_t *blk = out + (int64_t)(o / QAT_OC_BLOCK) * k4 * QAT_OC_BLOCK;
        for (i = 0; i < k; i++) {
            int32_t wu = codes[(int64_t)o * k + i] + offset;
            blk[((i / 4) * QAT_OC_BLOCK + o % QAT_OC_BLOCK) * 4 + (i & 3)] = (int8_t)(wu - 128);
            sum += (uint32_t)wu;
        }
        a = 128u - zwu;
        b = (uint32_t)k * zwu - sum;
        consts = (uint32_t *)(void *)(out + nblk * k4 * QAT_OC_BLOCK);
        memcpy(consts + o, &a, sizeof a);
        memcpy(consts + nblk * QAT_OC_BLOCK + o, &b, sizeof b);
    }
    return QAT_OK;
}

int qat_int_conv2d_scalar(const qat_conv_geom *g, const void *x, int32_t x_type, int32_t zx,
                          const int16_t *w, int16_t *scratch, int32_t *acc, const qat_requant *rq,
                          void *out, int32_t row0, int32_t row1)
{
    int64_t k, k2, nblk;
    int32_t r;
    int rc = qat_int_args_check(g, x, x_type, zx, w, scratch, acc, rq, out, row0, row1);
    if (rc != QAT_OK)
        return rc;
    k = (int64_t)g->kh * g->kw * g->c_in;
    k2 = (k + 1) / 2;
    nblk = (g->c_out + QAT_OC_BLOCK - 1) / QAT_OC_BLOCK;
    for (r = row0; r < row1; r++) {
        int32_t img = r / g->ho, oy = r % g->ho, ox;
        for (ox = 0; ox < g->wo; ox++) {
            int64_t pixel = (int64_t)r * g->wo + ox;
            qat_int_im2col_row(g, x, x_type, zx, img, oy, ox, scratch);
            for (int64_t b = 0; b < nblk; b++) {
                const int16_t *wb = w + b * k2 * 2 * QAT_OC_BLOCK;
                int32_t acc16[QAT_OC_BLOCK] = {0}, l;
                for (int64_t i = 0; i < k2; i++) {
                    int32_t a0 = scratch[2 * i], a1 = scratch[2 * i + 1];
                    const int16_t *wi = wb + i * 2 * QAT_OC_BLOCK;
                    for (l = 0; l < QAT_OC_BLOCK; l++)
                        acc16[l] += a0 * wi[2 * l] + a1 * wi[2 * l + 1];
                }
                qat_int_emit(g, pixel, (int32_t)b * QAT_OC_BLOCK, acc16, acc, rq, out);
            }
        }
    }
    return QAT_OK;
}
