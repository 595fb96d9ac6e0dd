/* Binary (XNOR-popcount) convolution, AVX2 path (Mula, Kurz and Lemire 2018: popcount by nibble
 * lookup with vpshufb, bytes summed by vpsadbw). One pixel against a block of 16 output channels:
 * each activation word is broadcast and XORed with the 16 channels' weight words (4 ymm), so the
 * counts of 16 channels accumulate in 4 registers with no horizontal sums. */
#include "qat_internal.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>

#define QAT_AVX2 __attribute__((target("avx2,popcnt")))

QAT_AVX2 static inline __m256i popcnt_bytes(__m256i v, __m256i lut, __m256i low)
{
    __m256i lo = _mm256_and_si256(v, low);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

/* 16 channels' popcounts of (a XOR w) [AND mask] over nw words (w: [nw][16]), added to tot[16] */
#define QAT_FLUSH()                                                                                    \
    do {                                                                                               \
        t0 = _mm256_add_epi64(t0, _mm256_sad_epu8(c0, zero));                                         \
        t1 = _mm256_add_epi64(t1, _mm256_sad_epu8(c1, zero));                                         \
        t2 = _mm256_add_epi64(t2, _mm256_sad_epu8(c2, zero));                                         \
        t3 = _mm256_add_epi64(t3, _mm256_sad_epu8(c3, zero));                                         \
        c0 = c1 = c2 = c3 = zero;                                                                      \
    } while (0)

QAT_AVX2 static inline void dense_counts(const uint64_t *row, const uint64_t *mask, const uint64_t *w,
                                         int64_t nw, uint64_t *tot)
{
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1,
                                         2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
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

QAT_AVX2 static int dense_conv(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w,
                               int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                               int32_t row0, int32_t row1)
{
    int64_t rw = ((int64_t)g->kh * g->kw * g->c_in + 63) / 64, cwo = qat_sign_words(g->c_out);
    int64_t nblk = (g->c_out + QAT_OC_BLOCK - 1) / QAT_OC_BLOCK;
    uint64_t row[QAT_DENSE_WORDS], mask[QAT_DENSE_WORDS], tot[QAT_OC_BLOCK];
    int32_t r;
    for (r = row0; r < row1; r++) {
        int32_t img = r / g->ho, oy = r % g->ho, ox;
        for (ox = 0; ox < g->wo; ox++) {
            int64_t pixel = (int64_t)r * g->wo + ox;
            int full, l;
            int32_t nvalid = qat_dense_row(g, x, img, oy, ox, row, mask, &full) * g->c_in, acc16[QAT_OC_BLOCK];
            if (bits)
                for (int64_t j = 0; j < cwo; j++)
                    bits[pixel * cwo + j] = 0;
            for (int64_t b = 0; b < nblk; b++) {
                const uint64_t *wp = w + b * rw * QAT_OC_BLOCK;
                if (full)
                    dense_counts(row, NULL, wp, rw, tot);
                else
                    dense_counts(row, mask, wp, rw, tot);
                for (l = 0; l < QAT_OC_BLOCK; l++)
                    acc16[l] = nvalid - 2 * (int32_t)tot[l];
                qat_binary_emit(g, pixel, (int32_t)b * QAT_OC_BLOCK, acc16, acc, T, dir, bits);
            }
        }
    }
    return QAT_OK;
}

QAT_AVX2 int qat_binary_conv2d_avx2(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w,
                                    int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                                    int32_t row0, int32_t row1)
{
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1,
                                         2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
    int64_t cw, cwo, nblk;
    int32_t r;
    if (qat_rows_check(g, row0, row1) != QAT_OK || !x || !w || (!acc == !bits) ||
        (bits && (!T || !dir)))
        return QAT_EARG;
    if (qat_binary_dense(g))
        return dense_conv(g, x, w, acc, T, dir, bits, row0, row1);
    cw = qat_sign_words(g->c_in);
    cwo = qat_sign_words(g->c_out);
    nblk = (g->c_out + QAT_OC_BLOCK - 1) / QAT_OC_BLOCK;
    for (r = row0; r < row1; r++) {
        int32_t img = r / g->ho, oy = r % g->ho, ox;
        for (ox = 0; ox < g->wo; ox++) {
            int64_t pixel = (int64_t)r * g->wo + ox;
            int32_t iy0 = oy * g->sh - g->ph, ix0 = ox * g->sw - g->pw;
            if (bits)
                for (int64_t j = 0; j < cwo; j++)
                    bits[pixel * cwo + j] = 0;
            for (int64_t b = 0; b < nblk; b++) {
                __m256i t0 = zero, t1 = zero, t2 = zero, t3 = zero; /* u64 lane totals */
                __m256i c0 = zero, c1 = zero, c2 = zero, c3 = zero; /* byte counts, < 32 words */
                int32_t acc16[QAT_OC_BLOCK], npos = 0, pending = 0, ky, kx, l;
                uint64_t tot[QAT_OC_BLOCK];
                for (ky = 0; ky < g->kh; ky++) {
                    int32_t iy = iy0 + ky * g->dh;
                    if (iy < 0 || iy >= g->h)
                        continue;
                    for (kx = 0; kx < g->kw; kx++) {
                        int32_t ix = ix0 + kx * g->dw;
                        const uint64_t *xp, *wp;
                        if (ix < 0 || ix >= g->w)
                            continue;
                        npos++;
                        xp = x + (((int64_t)img * g->h + iy) * g->w + ix) * cw;
                        wp = w + (((b * g->kh + ky) * g->kw + kx) * cw) * QAT_OC_BLOCK;
                        for (int64_t j = 0; j < cw; j++) {
                            const __m256i *wv = (const __m256i *)(wp + j * QAT_OC_BLOCK);
                            __m256i a = _mm256_set1_epi64x((long long)xp[j]);
                            c0 = _mm256_add_epi8(c0, popcnt_bytes(_mm256_xor_si256(a, _mm256_loadu_si256(wv)), lut, low));
                            c1 = _mm256_add_epi8(c1, popcnt_bytes(_mm256_xor_si256(a, _mm256_loadu_si256(wv + 1)), lut, low));
                            c2 = _mm256_add_epi8(c2, popcnt_bytes(_mm256_xor_si256(a, _mm256_loadu_si256(wv + 2)), lut, low));
                            c3 = _mm256_add_epi8(c3, popcnt_bytes(_mm256_xor_si256(a, _mm256_loadu_si256(wv + 3)), lut, low));
                            if (++pending == 31) { /* a byte holds at most 31 * 8 = 248 */
                                t0 = _mm256_add_epi64(t0, _mm256_sad_epu8(c0, zero));
                                t1 = _mm256_add_epi64(t1, _mm256_sad_epu8(c1, zero));
                                t2 = _mm256_add_epi64(t2, _mm256_sad_epu8(c2, zero));
                                t3 = _mm256_add_epi64(t3, _mm256_sad_epu8(c3, zero));
                                c0 = c1 = c2 = c3 = zero;
                                pending = 0;
                            }
                        }
                    }
                }
                t0 = _mm256_add_epi64(t0, _mm256_sad_epu8(c0, zero));
                t1 = _mm256_add_epi64(t1, _mm256_sad_epu8(c1, zero));
                t2 = _mm256_add_epi64(t2, _mm256_sad_epu8(c2, zero));
                t3 = _mm256_add_epi64(t3, _mm256_sad_epu8(c3, zero));
                _mm256_storeu_si256((__m256i *)tot, t0);
                _mm256_storeu_si256((__m256i *)(tot + 4), t1);
                _mm256_storeu_si256((__m256i *)(tot + 8), t2);
                _mm256_storeu_si256((__m256i *)(tot + 12), t3);
                for (l = 0; l < QAT_OC_BLOCK; l++)
                    acc16[l] = npos * g->c_in - 2 * (int32_t)tot[l];
                qat_binary_emit(g, pixel, (int32_t)b * QAT_OC_BLOCK, acc16, acc, T, dir, bits);
            }
        }
    }
    return QAT_OK;
}

#endif
