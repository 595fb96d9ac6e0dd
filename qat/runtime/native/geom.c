/* Geometry checks and buffer sizes. */
#include "qat_internal.h"

int qat_api_version(void) { return QAT_API_VERSION; }

static int out_size(int32_t size, int32_t k, int32_t s, int32_t p, int32_t d)
{
    int64_t span = (int64_t)size + 2 * (int64_t)p - (int64_t)d * (k - 1) - 1;
    return span < 0 ? 0 : (int)(span / s + 1);
}

static int elems_ok(int64_t a, int64_t b, int64_t c, int64_t d)
{
    /* a * b * c * d < QAT_MAX_ELEMS, each factor already in [0, 2^31) */
    int64_t p = a;
    if (b && p > QAT_MAX_ELEMS / b) return 0;
    p *= b;
    if (c && p > QAT_MAX_ELEMS / c) return 0;
    p *= c;
    if (d && p > QAT_MAX_ELEMS / d) return 0;
    return 1;
}

int qat_conv_geom_check(const qat_conv_geom *g)
{
    if (!g || g->n < 0 || g->h < 1 || g->w < 1 || g->c_in < 1 || g->c_out < 1)
        return QAT_EARG;
    if (g->kh < 1 || g->kw < 1 || g->sh < 1 || g->sw < 1 || g->ph < 0 || g->pw < 0 || g->dh < 1 ||
        g->dw < 1)
        return QAT_EARG;
    if (g->ho < 1 || g->wo < 1 || g->ho != out_size(g->h, g->kh, g->sh, g->ph, g->dh) ||
        g->wo != out_size(g->w, g->kw, g->sw, g->pw, g->dw))
        return QAT_EARG;
    if (!elems_ok(g->n, g->h, g->w, g->c_in) || !elems_ok(g->n, g->ho, g->wo, g->c_out) ||
        !elems_ok(g->c_out + QAT_OC_BLOCK, g->kh, g->kw, g->c_in + 64))
        return QAT_EARG;
    return QAT_OK;
}

int qat_pool_geom_check(const qat_pool_geom *g)
{
    if (!g || g->n < 0 || g->h < 1 || g->w < 1 || g->c < 1 || g->kh < 1 || g->kw < 1 || g->sh < 1 ||
        g->sw < 1 || g->ph < 0 || g->pw < 0 || g->dh < 1 || g->dw < 1 || g->ho < 1 || g->wo < 1)
        return QAT_EARG;
    /* padding at most half the kernel (torch's rule); every window must start inside the input
     * or its left padding and hold at least one input position */
    if (2 * g->ph > g->kh || 2 * g->pw > g->kw)
        return QAT_EARG;
    if ((int64_t)(g->ho - 1) * g->sh - g->ph >= g->h || (int64_t)(g->wo - 1) * g->sw - g->pw >= g->w)
        return QAT_EARG;
    if (!elems_ok(g->n, g->h, g->w, g->c) || !elems_ok(g->n, g->ho, g->wo, g->c))
        return QAT_EARG;
    return QAT_OK;
}

int64_t qat_sign_words(int32_t c) { return c < 1 ? 0 : ((int64_t)c + 63) / 64; }

static int64_t blocks(int32_t c_out) { return ((int64_t)c_out + QAT_OC_BLOCK - 1) / QAT_OC_BLOCK; }

static int64_t dense_words(const qat_conv_geom *g)
{
    return ((int64_t)g->kh * g->kw * g->c_in + 63) / 64;
}

int qat_binary_dense(const qat_conv_geom *g)
{
    if (qat_conv_geom_check(g) != QAT_OK)
        return 0;
    return qat_dense_layout(g);
}

int64_t qat_binary_row_words(const qat_conv_geom *g)
{
    if (qat_conv_geom_check(g) != QAT_OK)
        return -1;
    return qat_binary_dense(g) ? dense_words(g) : (int64_t)g->kh * g->kw * qat_sign_words(g->c_in);
}

int64_t qat_binary_weight_words(const qat_conv_geom *g)
{
    int64_t rw = qat_binary_row_words(g);
    return rw < 0 ? -1 : blocks(g->c_out) * rw * QAT_OC_BLOCK;
}

int64_t qat_ternary_weight_words(const qat_conv_geom *g)
{
    int64_t rw = qat_binary_row_words(g);
    /* two planes a block, the non-zero counts, the sums per kernel position (qat_kernels.h) */
    return rw < 0 ? -1 : blocks(g->c_out) * (2 * rw + 1 + (int64_t)g->kh * g->kw) * QAT_OC_BLOCK;
}

static int64_t k_pad(const qat_conv_geom *g)
{
    int64_t k = (int64_t)g->kh * g->kw * g->c_in;
    return k + (k & 1);
}

int64_t qat_int_weight_elems(const qat_conv_geom *g)
{
    if (qat_conv_geom_check(g) != QAT_OK)
        return -1;
    return blocks(g->c_out) * k_pad(g) * QAT_OC_BLOCK;
}

int64_t qat_int_conv_scratch_elems(const qat_conv_geom *g)
{
    if (qat_conv_geom_check(g) != QAT_OK)
        return -1;
    return 4 * k_pad(g); /* up to 4 im2col rows (the AVX2 kernel's pixel block) */
}

int64_t qat_int8_weight_bytes(const qat_conv_geom *g)
{
    if (qat_conv_geom_check(g) != QAT_OK)
        return -1;
    return blocks(g->c_out) * QAT_OC_BLOCK * (qat_int8_k4(g) + 8); /* weights, then 2 int32 per channel */
}

int64_t qat_int8_conv_scratch_bytes(const qat_conv_geom *g)
{
    if (qat_conv_geom_check(g) != QAT_OK)
        return -1;
    return 8 * qat_int8_k4(g); /* 8 im2col rows (the VNNI kernel's largest pixel block) */
}
