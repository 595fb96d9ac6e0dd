/* Ternary-weight, sign-input convolution, AVX2 path: the binary AVX2 kernel's scheme (one pixel
 * against a block of 16 output channels, nibble-lookup popcounts summed by vpsadbw) on
 * (x XOR pos) AND nz; padding is corrected afterwards (qat_internal.h). */
#include "qat_internal.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include "qat_avx2.h"

/* byte counts of 4 ymm added into u64 lanes; a byte holds at most 31 * 8 = 248 between flushes */
QAT_AVX2 static inline void flush(__m256i *c, __m256i *t)
{
    const __m256i zero = _mm256_setzero_si256();
    int q;
    for (q = 0; q < 4; q++) {
        t[q] = _mm256_add_epi64(t[q], _mm256_sad_epu8(c[q], zero));
        c[q] = zero;
    }
}

/* qat_tcount_fn */
QAT_AVX2 static inline void counts(const uint64_t *row, const uint64_t *nz, const uint64_t *pos, int64_t nw,
                                   uint64_t *dis)
{
    const __m256i lut = qat_nibble_lut(), low = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
    __m256i c[4] = {zero, zero, zero, zero}, t[4] = {zero, zero, zero, zero};
    int64_t j;
    int q;
    for (j = 0; j < nw; j++) {
        const __m256i *nv = (const __m256i *)(nz + j * QAT_OC_BLOCK), *pv = (const __m256i *)(pos + j * QAT_OC_BLOCK);
        __m256i a = _mm256_set1_epi64x((long long)row[j]);
        for (q = 0; q < 4; q++) {
            __m256i d = _mm256_and_si256(_mm256_xor_si256(a, _mm256_loadu_si256(pv + q)), _mm256_loadu_si256(nv + q));
            c[q] = _mm256_add_epi8(c[q], qat_popcnt_bytes(d, lut, low));
        }
        if (j % 31 == 30)
            flush(c, t);
    }
    flush(c, t);
    for (q = 0; q < 4; q++)
        _mm256_storeu_si256((__m256i *)(dis + 4 * q), t[q]);
}

QAT_AVX2 int qat_ternary_conv2d_avx2(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w,
                                     int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                                     int32_t row0, int32_t row1)
{
    return qat_ternary_conv_rows(g, x, w, acc, T, dir, bits, row0, row1, counts);
}

#endif
