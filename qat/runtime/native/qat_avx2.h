/* AVX2 helpers shared by the AVX2 kernel files (x86-64 GCC/clang only, target attributes only). */
#ifndef QAT_AVX2_H
#define QAT_AVX2_H

#include <immintrin.h>

#define QAT_AVX2 __attribute__((target("avx2,popcnt")))

/* per-byte popcounts of v by nibble lookup (Mula, Kurz and Lemire 2018); lut: the counts of 0..15
 * in both lanes, low: 0x0f in every byte */
QAT_AVX2 static inline __m256i qat_popcnt_bytes(__m256i v, __m256i lut, __m256i low)
{
    __m256i lo = _mm256_and_si256(v, low);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

QAT_AVX2 static inline __m256i qat_nibble_lut(void)
{
    return _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2,
                            3, 3, 4);
}

#endif /* QAT_AVX2_H */
