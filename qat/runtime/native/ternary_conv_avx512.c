/* Ternary-weight, sign-input convolution, AVX-512 path: VPOPCNTDQ counts 8 words in one instruction
 * and vpternlogq forms (x XOR pos) AND nz in one. Register block: 4 output pixels x 16 output
 * channels (8 zmm of u64 counts); per row word, 4 weight loads serve the 4 pixels, padded windows
 * included (their correction is added afterwards, qat_internal.h); 8 vpternlogq, 8 vpopcntq and
 * 8 vpaddq for 4,096 MACs, as in the binary kernel. The output stage is the binary kernel's
 * (qat_emit16: int32 stores or the threshold compare into packed bits). */
#include "qat_internal.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include "qat_avx512.h"

#define QAT_T512_PIXELS 4
#define XOR_AND 0x28 /* vpternlogq immediate of (a ^ b) & c */

/* counts of (row[p] XOR pos) AND nz for the block's 4 pixels, channels 0..7 in t[2p], 8..15 in t[2p+1] */
QAT_AVX512 static inline void counts4(const uint64_t *const *rp, const uint64_t *nz, const uint64_t *pos,
                                      int64_t nw, __m512i *t)
{
    __m512i t0 = _mm512_setzero_si512(), t1 = t0, t2 = t0, t3 = t0, t4 = t0, t5 = t0, t6 = t0, t7 = t0;
    const uint64_t *r0 = rp[0], *r1 = rp[1], *r2 = rp[2], *r3 = rp[3];
    int64_t j;
#define QAT_TSTEP(ta, tb, r)                                                                           \
    do {                                                                                               \
        __m512i a = _mm512_set1_epi64((long long)r[j]);                                               \
        ta = _mm512_add_epi64(ta, _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(a, p0, n0, XOR_AND))); \
        tb = _mm512_add_epi64(tb, _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(a, p1, n1, XOR_AND))); \
    } while (0)
    for (j = 0; j < nw; j++) {
        __m512i n0 = _mm512_loadu_si512(nz + j * QAT_OC_BLOCK), n1 = _mm512_loadu_si512(nz + j * QAT_OC_BLOCK + 8);
        __m512i p0 = _mm512_loadu_si512(pos + j * QAT_OC_BLOCK), p1 = _mm512_loadu_si512(pos + j * QAT_OC_BLOCK + 8);
        QAT_TSTEP(t0, t1, r0);
        QAT_TSTEP(t2, t3, r1);
        QAT_TSTEP(t4, t5, r2);
        QAT_TSTEP(t6, t7, r3);
    }
#undef QAT_TSTEP
    t[0] = t0, t[1] = t1, t[2] = t2, t[3] = t3, t[4] = t4, t[5] = t5, t[6] = t6, t[7] = t7;
}

QAT_AVX512 int qat_ternary_conv2d_avx512(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w,
                                         int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                                         int32_t row0, int32_t row1)
{
    uint64_t rows[QAT_T512_PIXELS][QAT_ROW_WORDS], mask[QAT_ROW_WORDS];
    int64_t rw = qat_binary_args_check(g, x, w, acc, T, dir, bits, row0, row1), cwo, nblk;
    qat_ternary_parts tp;
    int32_t r;
    if (rw < 0)
        return QAT_EARG;
    tp = qat_ternary_split(g, w, rw);
    cwo = qat_sign_words(g->c_out);
    nblk = (g->c_out + QAT_OC_BLOCK - 1) / QAT_OC_BLOCK;
    for (r = row0; r < row1; r++) {
        int32_t img = r / g->ho, oy = r % g->ho, ox;
        for (ox = 0; ox < g->wo; ox += QAT_T512_PIXELS) {
            int32_t np = g->wo - ox < QAT_T512_PIXELS ? g->wo - ox : QAT_T512_PIXELS, p;
            const uint64_t *rp[QAT_T512_PIXELS];
            int full[QAT_T512_PIXELS];
            uint64_t word[QAT_T512_PIXELS] = {0}; /* packed bits of 64 channels, per pixel */
            for (p = 0; p < np; p++)
                qat_window_row(g, x, img, oy, ox + p, rows[p], mask, &full[p]);
            for (p = 0; p < QAT_T512_PIXELS; p++) /* a partial block counts copies of its first pixel */
                rp[p] = rows[p < np ? p : 0];
            for (int64_t b = 0; b < nblk; b++) {
                const uint64_t *nz = tp.planes + b * 2 * rw * QAT_OC_BLOCK;
                int32_t oc0 = (int32_t)b * QAT_OC_BLOCK;
                __m512i t[2 * QAT_T512_PIXELS];
                __m512i nnz = _mm512_inserti64x4(
                    _mm512_castsi256_si512(_mm512_cvtepi64_epi32(_mm512_loadu_si512(tp.counts + oc0))),
                    _mm512_cvtepi64_epi32(_mm512_loadu_si512(tp.counts + oc0 + 8)), 1);
                counts4(rp, nz, nz + rw * QAT_OC_BLOCK, rw, t);
                for (p = 0; p < np; p++) {
                    int64_t pixel = (int64_t)r * g->wo + ox + p;
                    __m512i base = nnz;
                    if (!full[p]) {
                        int32_t pad[QAT_OC_BLOCK] = {0};
                        qat_ternary_padded(g, &tp, b, oy, ox + p, pad);
                        base = _mm512_add_epi32(base, _mm512_loadu_si512(pad));
                    }
                    if (oc0 % 64 == 0)
                        word[p] = 0;
                    qat_emit16(g, pixel, oc0, base, t[2 * p], t[2 * p + 1], acc, T, dir, &word[p]);
                    if (bits && (oc0 % 64 == 64 - QAT_OC_BLOCK || b == nblk - 1)) /* the word is complete */
                        bits[pixel * cwo + oc0 / 64] = word[p];
                }
            }
        }
    }
    return QAT_OK;
}

#endif
