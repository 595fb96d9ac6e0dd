/* Integer (8-bit codes) convolution, AVX2 path. Operands are x - zx and w - zw widened to int16,
 * multiplied pairwise by vpmaddwd into int32 (exact: no int16 saturation as with vpmaddubsw on
 * full-range uint8 x int8, where 2 * 255 * 128 > 32767). Register block: 4 pixels x 16 output
 * channels = 8 ymm accumulators; per pair of reduction steps, 2 weight loads, 4 broadcasts,
 * 8 vpmaddwd, 8 vpaddd (128 MACs). */
#include "qat_internal.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#include <string.h>

#define QAT_AVX2 __attribute__((target("avx2")))

QAT_AVX2 static inline __m256i bcast_pair(const int16_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

QAT_AVX2 int qat_int_conv2d_avx2(const qat_conv_geom *g, const void *x, int32_t x_type, int32_t zx,
                                 const int16_t *w, int16_t *scratch, int32_t *acc,
                                 const qat_requant *rq, void *out, int32_t row0, int32_t row1)
{
    int64_t k, kp, k2, nblk;
    int32_t r;
    int rc = qat_int_args_check(g, x, x_type, zx, w, scratch, acc, rq, out, row0, row1);
    if (rc != QAT_OK)
        return rc;
    k = (int64_t)g->kh * g->kw * g->c_in;
    kp = k + (k & 1);
    k2 = kp / 2;
    nblk = (g->c_out + QAT_OC_BLOCK - 1) / QAT_OC_BLOCK;
    for (r = row0; r < row1; r++) {
        int32_t img = r / g->ho, oy = r % g->ho, ox;
        for (ox = 0; ox < g->wo; ox += 4) {
            int32_t np = g->wo - ox < 4 ? g->wo - ox : 4, p;
            const int16_t *a0 = scratch, *a1 = scratch + kp, *a2 = scratch + 2 * kp, *a3 = scratch + 3 * kp;
            for (p = 0; p < np; p++)
                qat_int_im2col_row(g, x, x_type, zx, img, oy, ox + p, scratch + p * kp);
            for (p = np; p < 4; p++) /* a partial block computes on copies of its first row */
                memcpy(scratch + p * kp, scratch, (size_t)kp * sizeof *scratch);
            for (int64_t b = 0; b < nblk; b++) {
                const int16_t *wb = w + b * kp * QAT_OC_BLOCK;
                __m256i s00 = _mm256_setzero_si256(), s01 = s00, s10 = s00, s11 = s00;
                __m256i s20 = s00, s21 = s00, s30 = s00, s31 = s00;
                int32_t acc16[4][QAT_OC_BLOCK];
                for (int64_t i = 0; i < k2; i++) {
                    const __m256i *wv = (const __m256i *)(wb + i * 2 * QAT_OC_BLOCK);
                    __m256i w0 = _mm256_loadu_si256(wv), w1 = _mm256_loadu_si256(wv + 1), a;
                    a = bcast_pair(a0 + 2 * i);
                    s00 = _mm256_add_epi32(s00, _mm256_madd_epi16(a, w0));
                    s01 = _mm256_add_epi32(s01, _mm256_madd_epi16(a, w1));
                    a = bcast_pair(a1 + 2 * i);
                    s10 = _mm256_add_epi32(s10, _mm256_madd_epi16(a, w0));
                    s11 = _mm256_add_epi32(s11, _mm256_madd_epi16(a, w1));
                    a = bcast_pair(a2 + 2 * i);
                    s20 = _mm256_add_epi32(s20, _mm256_madd_epi16(a, w0));
                    s21 = _mm256_add_epi32(s21, _mm256_madd_epi16(a, w1));
                    a = bcast_pair(a3 + 2 * i);
                    s30 = _mm256_add_epi32(s30, _mm256_madd_epi16(a, w0));
                    s31 = _mm256_add_epi32(s31, _mm256_madd_epi16(a, w1));
                }
                _mm256_storeu_si256((__m256i *)acc16[0], s00);
                _mm256_storeu_si256((__m256i *)(acc16[0] + 8), s01);
                _mm256_storeu_si256((__m256i *)acc16[1], s10);
                _mm256_storeu_si256((__m256i *)(acc16[1] + 8), s11);
                _mm256_storeu_si256((__m256i *)acc16[2], s20);
                _mm256_storeu_si256((__m256i *)(acc16[2] + 8), s21);
                _mm256_storeu_si256((__m256i *)acc16[3], s30);
                _mm256_storeu_si256((__m256i *)(acc16[3] + 8), s31);
                for (p = 0; p < np; p++)
                    qat_int_emit(g, (int64_t)r * g->wo + ox + p, (int32_t)b * QAT_OC_BLOCK, acc16[p],
                                 acc, rq, out);
            }
        }
    }
    return QAT_OK;
}

#endif
