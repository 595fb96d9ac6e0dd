/* The fused float residual stage of the native runtime (residual_avx512.c). RUNTIME ONLY: float
 * code, never copied into the standalone C program (qat/export/c copies qat_kernels.h and the
 * scalar kernel files, none of which include this header). */
#ifndef QAT_RESIDUAL_H
#define QAT_RESIDUAL_H

#include <stdint.h>

#define QAT_RES_EXACT32 1 /* dequantize in float32 (power-of-two scales), else in float64 */
#define QAT_RES_BN 2      /* a BatchNorm y * alpha + beta follows the dequantize */
#define QAT_RES_BN_FMA 4  /* ... computed as one fused multiply-add (as torch's kernel does here) */
#define QAT_RES_FLOAT_IN 8 /* the input is float32 (no dequantize): acc points to floats */

/* Per-channel constants (c of each) and the clamp; the optional affine quantization of the output
 * (codes of code_type QAT_U8 / QAT_I8). */
typedef struct qat_residual {
    const float *scale;     /* dequantize scale, float32 (mode & QAT_RES_EXACT32) */
    const double *scale64;  /* dequantize scale, float64 (otherwise) */
    const float *dq_bias;   /* dequantize bias or NULL */
    const float *alpha, *beta; /* BatchNorm (mode & QAT_RES_BN) */
    int32_t mode;
    float lo, hi;           /* clamp (relu: 0, +inf; hardtanh: min_val, max_val) */
    float inv_scale, zero_point, qlo, qhi; /* affine quantization */
    int32_t code_type;
} qat_residual;

/* acc int32 [pixels][c] (NHWC; float32 with QAT_RES_FLOAT_IN), res float32 [pixels][c] or NULL -> out float32 [pixels][c], and at
 * most one of: bits, packed signs [pixels][ceil(c / 64)] of out >= 0; codes [pixels][c] of the
 * affine quantization. QAT_OK, or QAT_EARG for inconsistent arguments. */
int qat_residual_avx512(const int32_t *acc, const float *res, int64_t pixels, int32_t c,
                        const qat_residual *p, float *out, uint64_t *bits, void *codes);

/* BatchNorm's per-channel alpha, beta as torch's kernel computes them (fma: beta = fma(-mean, alpha, b)) */
int qat_bn_constants(const float *mean, const float *var, const float *w, const float *b, float eps,
                     int32_t c, int32_t fma, float *alpha, float *beta);

/* The float threshold (BatchNorm + sign folded, on float values) written as packed signs: x float32
 * NCHW [n][c][hw] -> bits [n][hw][ceil(c / 64)], bit = (x >= T[ch]) for dir[ch] = +1, its negation
 * for dir[ch] = -1 (a NaN compares false). QAT_OK, or QAT_EARG for inconsistent arguments. */
int qat_threshold_nchw_avx512(const float *x, int64_t n, int32_t c, int64_t hw, const float *T,
                              const int8_t *dir, uint64_t *bits);

#endif /* QAT_RESIDUAL_H */
