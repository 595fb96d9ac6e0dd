/* Ternary-weight, sign-input convolution, AVX-512 path: VPOPCNTDQ counts 8 words in one instruction
 * and vpternlogq forms (x XOR pos) AND nz in one. Register block: QAT_T512_PIXELS output pixels x 16
 * output channels (8 zmm of u64 counts); each weight vector loaded serves every pixel of the block.
 * A block with a padded window runs its pixels one at a time, counting the non-zero weights at
 * valid positions too (border blocks only). Windows and the output stage are those of the scalar path (qat_internal.h). */
#include "qat_internal.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>

#define QAT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq,popcnt")))
#define QAT_T512_PIXELS 4
#define XOR_AND 0x28 /* vpternlogq immediate of (a ^ b) & c */

/* counts of (row[p] XOR pos) AND nz for the block's pixels, channels l in t[2p] (0..7), t[2p+1] (8..15) */
QAT_AVX512 static inline void counts4(const uint64_t *const *rp, const uint64_t *nz, const uint64_t *pos,
                                      int64_t nw, __m512i *t)
{
    int p;
    for (p = 0; p < 2 * QAT_T512_PIXELS; p++)
        t[p] = _mm512_setzero_si512();
    for (int64_t j = 0; j < nw; j++) {
        __m512i n0 = _mm512_loadu_si512(nz + j * QAT_OC_BLOCK), n1 = _mm512_loadu_si512(nz + j * QAT_OC_BLOCK + 8);
        __m512i p0 = _mm512_loadu_si512(pos + j * QAT_OC_BLOCK), p1 = _mm512_loadu_si512(pos + j * QAT_OC_BLOCK + 8);
        for (p = 0; p < QAT_T512_PIXELS; p++) {
            __m512i a = _mm512_set1_epi64((long long)rp[p][j]);
            t[2 * p] = _mm512_add_epi64(t[2 * p], _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(a, p0, n0, XOR_AND)));
            t[2 * p + 1] = _mm512_add_epi64(t[2 * p + 1],
                                            _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(a, p1, n1, XOR_AND)));
        }
    }
}

/* one pixel with a padded window: disagreements in t[0..1], non-zero weights at valid positions in e[0..1] */
QAT_AVX512 static inline void counts1(const uint64_t *row, const uint64_t *mask, const uint64_t *nz,
                                      const uint64_t *pos, int64_t nw, __m512i *t, __m512i *e)
{
    t[0] = t[1] = e[0] = e[1] = _mm512_setzero_si512();
    for (int64_t j = 0; j < nw; j++) {
        __m512i a = _mm512_set1_epi64((long long)row[j]), m = _mm512_set1_epi64((long long)mask[j]);
        __m512i n0 = _mm512_and_si512(_mm512_loadu_si512(nz + j * QAT_OC_BLOCK), m);
        __m512i n1 = _mm512_and_si512(_mm512_loadu_si512(nz + j * QAT_OC_BLOCK + 8), m);
        t[0] = _mm512_add_epi64(t[0], _mm512_popcnt_epi64(
                                          _mm512_ternarylogic_epi64(a, _mm512_loadu_si512(pos + j * QAT_OC_BLOCK), n0, XOR_AND)));
        t[1] = _mm512_add_epi64(t[1], _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(
                                          a, _mm512_loadu_si512(pos + j * QAT_OC_BLOCK + 8), n1, XOR_AND)));
        e[0] = _mm512_add_epi64(e[0], _mm512_popcnt_epi64(n0));
        e[1] = _mm512_add_epi64(e[1], _mm512_popcnt_epi64(n1));
    }
}

/* acc16[l] = nonzero[l] - 2 dis[l] for one pixel (counts below 2^31: the reduction is at most QAT_ROW_WORDS words) */
QAT_AVX512 static inline void acc_of(__m512i d0, __m512i d1, __m512i n0, __m512i n1, int32_t *acc16)
{
    __m256i lo = _mm512_cvtepi64_epi32(_mm512_sub_epi64(n0, _mm512_add_epi64(d0, d0)));
    __m256i hi = _mm512_cvtepi64_epi32(_mm512_sub_epi64(n1, _mm512_add_epi64(d1, d1)));
    _mm256_storeu_si256((__m256i *)acc16, lo);
    _mm256_storeu_si256((__m256i *)(acc16 + 8), hi);
}

QAT_AVX512 int qat_ternary_conv2d_avx512(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w,
                                         int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                                         int32_t row0, int32_t row1)
{
    uint64_t rows[QAT_T512_PIXELS][QAT_ROW_WORDS], masks[QAT_T512_PIXELS][QAT_ROW_WORDS];
    int64_t rw = qat_binary_args_check(g, x, w, acc, T, dir, bits, row0, row1), cwo, nblk;
    const uint64_t *nnz;
    int32_t r;
    if (rw < 0)
        return QAT_EARG;
    cwo = qat_sign_words(g->c_out);
    nblk = (g->c_out + QAT_OC_BLOCK - 1) / QAT_OC_BLOCK;
    nnz = w + nblk * 2 * rw * QAT_OC_BLOCK;
    for (r = row0; r < row1; r++) {
        int32_t img = r / g->ho, oy = r % g->ho, ox;
        for (ox = 0; ox < g->wo; ox += QAT_T512_PIXELS) {
            int32_t np = g->wo - ox < QAT_T512_PIXELS ? g->wo - ox : QAT_T512_PIXELS, p;
            const uint64_t *rp[QAT_T512_PIXELS];
            int full, all_full = 1;
            for (p = 0; p < np; p++) {
                qat_window_row(g, x, img, oy, ox + p, rows[p], masks[p], &full);
                all_full &= full;
                if (bits)
                    for (int64_t j = 0; j < cwo; j++)
                        bits[((int64_t)r * g->wo + ox + p) * cwo + j] = 0;
            }
            for (p = 0; p < QAT_T512_PIXELS; p++) /* a partial block counts copies of its first pixel */
                rp[p] = rows[p < np ? p : 0];
            for (int64_t b = 0; b < nblk; b++) {
                const uint64_t *nz = w + b * 2 * rw * QAT_OC_BLOCK, *pos = nz + rw * QAT_OC_BLOCK;
                __m512i n0 = _mm512_loadu_si512(nnz + b * QAT_OC_BLOCK), n1 = _mm512_loadu_si512(nnz + b * QAT_OC_BLOCK + 8);
                __m512i t[2 * QAT_T512_PIXELS], e[2];
                int32_t acc16[QAT_OC_BLOCK];
                if (all_full)
                    counts4(rp, nz, pos, rw, t);
                for (p = 0; p < np; p++) {
                    if (all_full) {
                        acc_of(t[2 * p], t[2 * p + 1], n0, n1, acc16);
                    } else { /* the mask of a full window covers the whole reduction */
                        counts1(rows[p], masks[p], nz, pos, rw, t, e);
                        acc_of(t[0], t[1], e[0], e[1], acc16);
                    }
                    qat_binary_emit(g, (int64_t)r * g->wo + ox + p, (int32_t)b * QAT_OC_BLOCK, acc16, acc, T, dir, bits);
                }
            }
        }
    }
    return QAT_OK;
}

#endif
