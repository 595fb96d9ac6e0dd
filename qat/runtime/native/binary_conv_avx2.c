/* Binary (XNOR-popcount) convolution, AVX2 path (Mula, Kurz and Lemire 2018: popcount by nibble
 * lookup with vpshufb, bytes summed by vpsadbw). One pixel against a block of 16 output channels:
 * each activation word is broadcast and XORed with the 16 channels' weight words (4 ymm), so the
 * counts of 16 channels accumulate in 4 registers with no horizontal sums. */
#include "qat_internal.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include "qat_avx2.h"

#define popcnt_bytes qat_popcnt_bytes

#define QAT_FLUSH()                                                                                    \
    do {                                                                                               \
        t0 = _mm256_add_epi64(t0, _mm256_sad_epu8(c0, zero));                                         \
        t1 = _mm256_add_epi64(t1, _mm256_sad_epu8(c1, zero));                                         \
        t2 = _mm256_add_epi64(t2, _mm256_sad_epu8(c2, zero));                                         \
        t3 = _mm256_add_epi64(t3, _mm256_sad_epu8(c3, zero));                                         \
        c0 = c1 = c2 = c3 = zero;                                                                      \
    } while (0)

/* qat_count_fn: the 16 channels' counts in 4 ymm of u64 lanes; each row word is broadcast and
 * XORed with the block's 16 weight words, byte counts flushed by vpsadbw every 31 words */
QAT_AVX2 static inline void counts(const uint64_t *row, const uint64_t *mask, const uint64_t *w,
                                         int64_t nw, uint64_t *tot)
{
    const __m256i lut = qat_nibble_lut();
    const __m256i low = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
    __m256i t0 = zero, t1 = zero, t2 = zero, t3 = zero, c0 = zero, c1 = zero, c2 = zero, c3 = zero;
    int64_t j;
    for (j = 0; j < nw; j++) {
        const __m256i *wv = (const __m256i *)(w + j * QAT_OC_BLOCK);
        __m256i a = _mm256_set1_epi64x((long long)row[j]);
        if (mask) {
            __m256i m = _mm256_set1_epi64x((long long)mask[j]);
            c0 = _mm256_add_epi8(c0, popcnt_bytes(_mm256_and_si256(_mm256_xor_si256(a, _mm256_loadu_si256(wv)), m), lut, low));
            c1 = _mm256_add_epi8(c1, popcnt_bytes(_mm256_and_si256(_mm256_xor_si256(a, _mm256_loadu_si256(wv + 1)), m), lut, low));
            c2 = _mm256_add_epi8(c2, popcnt_bytes(_mm256_and_si256(_mm256_xor_si256(a, _mm256_loadu_si256(wv + 2)), m), lut, low));
            c3 = _mm256_add_epi8(c3, popcnt_bytes(_mm256_and_si256(_mm256_xor_si256(a, _mm256_loadu_si256(wv + 3)), m), lut, low));
        } else {
            c0 = _mm256_add_epi8(c0, popcnt_bytes(_mm256_xor_si256(a, _mm256_loadu_si256(wv)), lut, low));
            c1 = _mm256_add_epi8(c1, popcnt_bytes(_mm256_xor_si256(a, _mm256_loadu_si256(wv + 1)), lut, low));
            c2 = _mm256_add_epi8(c2, popcnt_bytes(_mm256_xor_si256(a, _mm256_loadu_si256(wv + 2)), lut, low));
            c3 = _mm256_add_epi8(c3, popcnt_bytes(_mm256_xor_si256(a, _mm256_loadu_si256(wv + 3)), lut, low));
        }
        if (j % 31 == 30) /* a byte holds at most 31 * 8 = 248 */
            QAT_FLUSH();
    }
    QAT_FLUSH();
    _mm256_storeu_si256((__m256i *)tot, t0);
    _mm256_storeu_si256((__m256i *)(tot + 4), t1);
    _mm256_storeu_si256((__m256i *)(tot + 8), t2);
    _mm256_storeu_si256((__m256i *)(tot + 12), t3);
}

QAT_AVX2 int qat_binary_conv2d_avx2(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w,
                                    int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                                    int32_t row0, int32_t row1)
{
    return qat_binary_conv_rows(g, x, w, acc, T, dir, bits, row0, row1, counts);
}

#endif
