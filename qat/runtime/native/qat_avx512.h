/* AVX-512 helpers shared by the popcount kernel files (x86-64 GCC/clang only, target attributes only). */
#ifndef QAT_AVX512_H
#define QAT_AVX512_H

#include <immintrin.h>

#include "qat_internal.h"

#define QAT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq,avx512vbmi,popcnt")))

/* Output stage of one pixel and one block of 16 channels from oc0: v = base - 2 count, the counts in
 * u64 lanes (lo: channels 0..7, hi: 8..15) as 16 int32, stored, or compared with the thresholds into
 * 16 bits ORed into *word (the pixel's packed word of these channels, stored by the caller once its
 * 64 channels are done). */
QAT_AVX512 static inline void qat_emit16(const qat_conv_geom *g, int64_t pixel, int32_t oc0, __m512i base,
                                         __m512i lo, __m512i hi, int32_t *acc, const int32_t *T,
                                         const int8_t *dir, uint64_t *word)
{
    int32_t m = g->c_out - oc0 < QAT_OC_BLOCK ? g->c_out - oc0 : QAT_OC_BLOCK;
    __mmask16 keep = (__mmask16)((1u << m) - 1u);
    __m512i cnt = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(lo)),
                                     _mm512_cvtepi64_epi32(hi), 1);
    __m512i v = _mm512_sub_epi32(base, _mm512_slli_epi32(cnt, 1));
    if (acc) {
        _mm512_mask_storeu_epi32(acc + pixel * g->c_out + oc0, keep, v);
    } else {
        __mmask16 ge = _mm512_cmpge_epi32_mask(v, _mm512_maskz_loadu_epi32(keep, T + oc0));
        __mmask16 down = _mm_movepi8_mask(_mm_maskz_loadu_epi8(keep, dir + oc0));
        *word |= (uint64_t)(uint16_t)((ge ^ down) & keep) << (oc0 % 64);
    }
}

/* qat_emit16 of block b (of nblk) for one pixel, keeping its packed word of the current 64 channels:
 * zeroed at the first block of the word, stored once the word is complete */
QAT_AVX512 static inline void qat_emit16_word(const qat_conv_geom *g, int64_t pixel, int64_t b, int64_t nblk,
                                              __m512i base, __m512i lo, __m512i hi, int32_t *acc, const int32_t *T,
                                              const int8_t *dir, uint64_t *bits, uint64_t *word)
{
    int32_t oc0 = (int32_t)b * QAT_OC_BLOCK;
    if (oc0 % 64 == 0)
        *word = 0;
    qat_emit16(g, pixel, oc0, base, lo, hi, acc, T, dir, word);
    if (bits && (oc0 % 64 == 64 - QAT_OC_BLOCK || b == nblk - 1))
        bits[pixel * ((g->c_out + 63) / 64) + oc0 / 64] = *word; /* (qat_sign_words, inline) */
}

#endif /* QAT_AVX512_H */
