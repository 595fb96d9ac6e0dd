/* Max pooling on int32 accumulators and on packed signs (NHWC). */
#include "qat_internal.h"

/* [k0, k1): the kernel taps whose input position o * s - p + k * d lies in [0, size) */
static void taps(int32_t o, int32_t s, int32_t p, int32_t d, int32_t k, int32_t size, int32_t *k0, int32_t *k1)
{
    int32_t base = o * s - p, last = size - 1 - base;
    *k0 = base < 0 ? (-base + d - 1) / d : 0;
    *k1 = last < 0 ? 0 : (last / d + 1 < k ? last / d + 1 : k);
}

static int pool_rows_check(const qat_pool_geom *g, int32_t row0, int32_t row1)
{
    if (qat_pool_geom_check(g) != QAT_OK || row0 < 0 || row1 < row0 || (int64_t)row1 > (int64_t)g->n * g->ho)
        return QAT_EARG;
    return QAT_OK;
}

int qat_maxpool_i32(const qat_pool_geom *g, const int32_t *x, int32_t *out, int32_t row0, int32_t row1)
{
    int32_t r;
    if (pool_rows_check(g, row0, row1) != QAT_OK || !x || !out)
        return QAT_EARG;
    for (r = row0; r < row1; r++) {
        int32_t img = r / g->ho, oy = r % g->ho, ox;
        for (ox = 0; ox < g->wo; ox++) {
            int32_t *dst = out + ((int64_t)r * g->wo + ox) * g->c, ch, ky, kx, ky0, ky1, kx0, kx1;
            taps(oy, g->sh, g->ph, g->dh, g->kh, g->h, &ky0, &ky1);
            taps(ox, g->sw, g->pw, g->dw, g->kw, g->w, &kx0, &kx1);
            if (ky0 >= ky1 || kx0 >= kx1)
                return QAT_EARG; /* an empty window (ruled out by the geometry check) */
            for (ky = ky0; ky < ky1; ky++)
                for (kx = kx0; kx < kx1; kx++) {
                    const int32_t *src = x + (((int64_t)img * g->h + oy * g->sh - g->ph + ky * g->dh) * g->w +
                                              ox * g->sw - g->pw + kx * g->dw) * g->c;
                    for (ch = 0; ch < g->c; ch++)
                        dst[ch] = (ky == ky0 && kx == kx0) || src[ch] > dst[ch] ? src[ch] : dst[ch];
                }
        }
    }
    return QAT_OK;
}

int qat_maxpool_bits(const qat_pool_geom *g, const uint64_t *x, const uint64_t *up_mask,
                     uint64_t *out, int32_t row0, int32_t row1)
{
    int64_t cw;
    int32_t r;
    if (pool_rows_check(g, row0, row1) != QAT_OK || !x || !up_mask || !out)
        return QAT_EARG;
    cw = qat_sign_words(g->c);
    for (r = row0; r < row1; r++) {
        int32_t img = r / g->ho, oy = r % g->ho, ox;
        for (ox = 0; ox < g->wo; ox++) {
            uint64_t *dst = out + ((int64_t)r * g->wo + ox) * cw;
            int32_t ky, kx, ky0, ky1, kx0, kx1;
            taps(oy, g->sh, g->ph, g->dh, g->kh, g->h, &ky0, &ky1);
            taps(ox, g->sw, g->pw, g->dw, g->kw, g->w, &kx0, &kx1);
            if (ky0 >= ky1 || kx0 >= kx1)
                return QAT_EARG; /* an empty window (ruled out by the geometry check) */
            for (int64_t j = 0; j < cw; j++) {
                uint64_t any = 0, all = ~(uint64_t)0;
                for (ky = ky0; ky < ky1; ky++)
                    for (kx = kx0; kx < kx1; kx++) {
                        uint64_t v = x[(((int64_t)img * g->h + oy * g->sh - g->ph + ky * g->dh) * g->w +
                                        ox * g->sw - g->pw + kx * g->dw) * cw + j];
                        any |= v;
                        all &= v;
                    }
                dst[j] = (any & up_mask[j]) | (all & ~up_mask[j]);
            }
        }
    }
    return QAT_OK;
}
