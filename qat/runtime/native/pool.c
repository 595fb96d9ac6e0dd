/* Max pooling on int32 accumulators and on packed signs (NHWC). */
#include "qat_internal.h"

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
            int32_t *dst = out + ((int64_t)r * g->wo + ox) * g->c, ch, ky, kx, first = 1;
            for (ky = 0; ky < g->kh; ky++) {
                int32_t iy = oy * g->sh - g->ph + ky * g->dh;
                if (iy < 0 || iy >= g->h)
                    continue;
                for (kx = 0; kx < g->kw; kx++) {
                    int32_t ix = ox * g->sw - g->pw + kx * g->dw;
                    const int32_t *src;
                    if (ix < 0 || ix >= g->w)
                        continue;
                    src = x + (((int64_t)img * g->h + iy) * g->w + ix) * g->c;
                    for (ch = 0; ch < g->c; ch++)
                        dst[ch] = first || src[ch] > dst[ch] ? src[ch] : dst[ch];
                    first = 0;
                }
            }
            if (first)
                return QAT_EARG; /* an empty window (ruled out by the geometry check) */
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
            for (int64_t j = 0; j < cw; j++) {
                uint64_t any = 0, all = ~(uint64_t)0;
                int32_t ky, kx;
                for (ky = 0; ky < g->kh; ky++) {
                    int32_t iy = oy * g->sh - g->ph + ky * g->dh;
                    if (iy < 0 || iy >= g->h)
                        continue;
                    for (kx = 0; kx < g->kw; kx++) {
                        int32_t ix = ox * g->sw - g->pw + kx * g->dw;
                        uint64_t v;
                        if (ix < 0 || ix >= g->w)
                            continue;
                        v = x[(((int64_t)img * g->h + iy) * g->w + ix) * cw + j];
                        any |= v;
                        all &= v;
                    }
                }
                if (all == ~(uint64_t)0 && any == 0)
                    return QAT_EARG; /* an empty window */
                dst[j] = (any & up_mask[j]) | (all & ~up_mask[j]);
            }
        }
    }
    return QAT_OK;
}
