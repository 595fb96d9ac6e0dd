/* Ternary-weight, sign-input convolution, portable scalar path (__builtin_popcountll). The loop over
 * output pixels and the padding correction are shared with the AVX2 path (qat_internal.h). */
#include "qat_internal.h"

static void counts(const uint64_t *row, const uint64_t *nz, const uint64_t *pos, int64_t nw, uint64_t *dis)
{
    int64_t j;
    int l;
    for (l = 0; l < QAT_OC_BLOCK; l++)
        dis[l] = 0;
    for (j = 0; j < nw; j++)
        for (l = 0; l < QAT_OC_BLOCK; l++)
            dis[l] += (uint64_t)__builtin_popcountll((row[j] ^ pos[j * QAT_OC_BLOCK + l]) & nz[j * QAT_OC_BLOCK + l]);
}

int qat_ternary_conv2d_scalar(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w,
                              int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                              int32_t row0, int32_t row1)
{
    return qat_ternary_conv_rows(g, x, w, acc, T, dir, bits, row0, row1, counts);
}
