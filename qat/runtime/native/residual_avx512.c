/* The float residual stream of an exported ResNet block as one pass over NHWC values (AVX-512):
 *   acc (int32) -> dequantize -> [BatchNorm] -> + residual -> clamp -> float out
 *                                                           \-> [sign bits | affine codes]
 * RUNTIME ONLY: this file computes in float and is never copied into the standalone C program
 * (whose kernels have no float). Each step is the reference runtime's float32 (or float64)
 * operation, rounded as torch rounds it; the compiler must not contract a multiply and an add into
 * an FMA on its own (GCC's default for ISO C, -std=c99), the FMA variants are explicit. The caller
 * (qat.runtime.native.residual) checks every stage on a probe against the reference ops before
 * using it, and falls back to the reference where they differ. */
#include "qat_residual.h"

#include "qat_internal.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>

#define QAT_AVX512F __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))

/* The dequantization's constants, read once per call */
typedef struct dq_consts {
    int float_in, exact32;
    const float *scale, *bias;
    const double *scale64;
} dq_consts;

/* 16 channels c0 .. c0 + 15 of one pixel (keep: the channels that exist) */
QAT_AVX512F static inline __m512 dequantize16(const int32_t *acc, const dq_consts *d, int32_t c0, __mmask16 keep)
{
    __m512i a = _mm512_maskz_loadu_epi32(keep, acc);
    if (d->float_in) /* the bits of float32 inputs */
        return _mm512_castsi512_ps(a);
    if (d->exact32) { /* float32: acc * scale (+ bias), two roundings */
        __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(a), _mm512_maskz_loadu_ps(keep, d->scale + c0));
        return d->bias ? _mm512_add_ps(y, _mm512_maskz_loadu_ps(keep, d->bias + c0)) : y;
    } else { /* float64: acc * scale (+ bias), rounded to float32 once at the end */
        __m512d lo = _mm512_mul_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(a)),
                                   _mm512_maskz_loadu_pd((__mmask8)keep, d->scale64 + c0));
        __m512d hi = _mm512_mul_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(a, 1)),
                                   _mm512_maskz_loadu_pd((__mmask8)(keep >> 8), d->scale64 + c0 + 8));
        if (d->bias) {
            lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm256_maskz_loadu_ps((__mmask8)keep, d->bias + c0)));
            hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm256_maskz_loadu_ps((__mmask8)(keep >> 8), d->bias + c0 + 8)));
        }
        return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo)), _mm512_cvtpd_ps(hi), 1);
    }
}

/* BatchNorm (eval) as y * alpha + beta: invstd = 1 / sqrt(var + eps), alpha = invstd * w, and
 * beta = b - mean * alpha, fused (fma) or rounded twice, each in float32 (w, b NULL: 1, 0) */
QAT_AVX512F int qat_bn_constants(const float *mean, const float *var, const float *w, const float *b, float eps,
                                 int32_t c, int32_t fma, float *alpha, float *beta)
{
    int32_t i;
    if (!mean || !var || !alpha || !beta || c < 1)
        return QAT_EARG;
    for (i = 0; i < c; i++) {
        __m128 v = _mm_add_ss(_mm_set_ss(var[i]), _mm_set_ss(eps));
        __m128 inv = _mm_div_ss(_mm_set_ss(1.0f), _mm_sqrt_ss(v));
        __m128 a = _mm_mul_ss(inv, _mm_set_ss(w ? w[i] : 1.0f)), bb = _mm_set_ss(b ? b[i] : 0.0f);
        __m128 nm = _mm_set_ss(-mean[i]);
        alpha[i] = _mm_cvtss_f32(a);
        beta[i] = _mm_cvtss_f32(fma ? _mm_fmadd_ss(nm, a, bb) : _mm_add_ss(_mm_mul_ss(nm, a), bb));
    }
    return QAT_OK;
}

QAT_AVX512F int qat_residual_avx512(const int32_t *acc, const float *res, int64_t pixels, int32_t c,
                                    const qat_residual *p, float *out, uint64_t *bits, void *codes)
{
    int64_t px, cw = qat_sign_words(c);
    if (!acc || !p || !out || pixels < 0 || c < 1 || pixels > QAT_MAX_ELEMS / c)
        return QAT_EARG;
    if (!(p->mode & QAT_RES_FLOAT_IN) && ((p->mode & QAT_RES_EXACT32) ? !p->scale : !p->scale64))
        return QAT_EARG;
    if ((p->mode & QAT_RES_BN) && (!p->alpha || !p->beta))
        return QAT_EARG;
    if ((bits && codes) || (codes && (p->code_type != QAT_U8 && p->code_type != QAT_I8)))
        return QAT_EARG;
    {
        /* block by block of 16 channels, each over all pixels: the block's constants stay in
         * registers, and the mode's branches are the same for every pixel */
        const int bn = (p->mode & QAT_RES_BN) != 0, fma = (p->mode & QAT_RES_BN_FMA) != 0;
        const __m512 lo = _mm512_set1_ps(p->lo), hi = _mm512_set1_ps(p->hi), inv = _mm512_set1_ps(p->inv_scale);
        const __m512 zp = _mm512_set1_ps(p->zero_point), qlo = _mm512_set1_ps(p->qlo), qhi = _mm512_set1_ps(p->qhi);
        const dq_consts d = {(p->mode & QAT_RES_FLOAT_IN) != 0, (p->mode & QAT_RES_EXACT32) != 0, p->scale, p->dq_bias,
                             p->scale64};
        for (int32_t c0 = 0; c0 < c; c0 += 16) {
            int32_t m = c - c0 < 16 ? c - c0 : 16, sh = c0 % 64;
            __mmask16 keep = (__mmask16)((1u << m) - 1u);
            __m512 al = bn ? _mm512_maskz_loadu_ps(keep, p->alpha + c0) : _mm512_setzero_ps();
            __m512 be = bn ? _mm512_maskz_loadu_ps(keep, p->beta + c0) : _mm512_setzero_ps();
            uint64_t *word = bits ? bits + c0 / 64 : NULL;
            for (px = 0; px < pixels; px++) {
                int64_t at = px * c + c0;
                __m512 y = dequantize16(acc + at, &d, c0, keep);
                if (bn)
                    y = fma ? _mm512_fmadd_ps(y, al, be) : _mm512_add_ps(_mm512_mul_ps(y, al), be);
                if (res)
                    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(keep, res + at));
                /* clamp as torch.clamp: x < lo -> lo, x > hi -> hi */
                y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(y, lo, _CMP_LT_OQ), y, lo);
                y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(y, hi, _CMP_GT_OQ), y, hi);
                _mm512_mask_storeu_ps(out + at, keep, y);
                if (word) { /* quantize sign: x >= 0 (the word's first block stores it, the others OR) */
                    uint64_t on = (uint64_t)(_mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_GE_OQ) & keep) << sh;
                    word[px * cw] = sh ? word[px * cw] | on : on;
                }
                if (codes) { /* quantize affine: clamp(round_half_even(x * inv_scale) + zp, qlo, qhi) */
                    __m512 q = _mm512_roundscale_ps(_mm512_mul_ps(y, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                    q = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(q, zp), qlo), qhi);
                    _mm512_mask_cvtepi32_storeu_epi8((int8_t *)codes + at, keep, _mm512_cvttps_epi32(q));
                }
            }
        }
    }
    return QAT_OK;
}

QAT_AVX512F int qat_threshold_nchw_avx512(const float *x, int64_t n, int32_t c, int64_t hw, const float *T,
                                          const int8_t *dir, uint64_t *bits)
{
    int64_t cw = qat_sign_words(c), img, p0;
    if (!x || !T || !dir || !bits || n < 0 || c < 1 || hw < 1 || hw > QAT_MAX_ELEMS / c || n > QAT_MAX_ELEMS / (hw * c))
        return QAT_EARG;
    for (img = 0; img < n; img++)
        for (p0 = 0; p0 < hw; p0 += 16) { /* 16 pixels of each channel plane, one word group at a time */
            int32_t m = hw - p0 < 16 ? (int32_t)(hw - p0) : 16;
            __mmask16 keep = (__mmask16)((1u << m) - 1u);
            for (int64_t j = 0; j < cw; j++) {
                __m512i lo = _mm512_setzero_si512(), hi = lo; /* the words of pixels p0 .. p0 + 7, + 8 .. 15 */
                uint64_t words[16];
                int32_t c1 = (int32_t)(64 * j + 64 < c ? 64 * j + 64 : c);
                for (int32_t ch = (int32_t)(64 * j); ch < c1; ch++) {
                    __m512 v = _mm512_maskz_loadu_ps(keep, x + (img * c + ch) * hw + p0);
                    /* plus = (v >= T) == up: the compare (false for NaN), flipped for direction -1 */
                    __mmask16 on = _mm512_cmp_ps_mask(v, _mm512_set1_ps(T[ch]), _CMP_GE_OQ);
                    __m512i bit = _mm512_set1_epi64((long long)((uint64_t)1 << (ch % 64)));
                    on = (__mmask16)(dir[ch] < 0 ? ~on : on);
                    lo = _mm512_or_si512(lo, _mm512_maskz_mov_epi64((__mmask8)on, bit));
                    hi = _mm512_or_si512(hi, _mm512_maskz_mov_epi64((__mmask8)(on >> 8), bit));
                }
                _mm512_storeu_si512(words, lo);
                _mm512_storeu_si512(words + 8, hi);
                for (int32_t k = 0; k < m; k++)
                    bits[(img * hw + p0 + k) * cw + j] = words[k];
            }
        }
    return QAT_OK;
}

#endif
