/* Ternary-weight, sign-input convolution, AVX-512 path: VPOPCNTDQ counts 8 words in one instruction
 * and vpternlogq forms (x XOR pos) AND nz in one. Register block: 4 output pixels x 16 output
 * channels (8 zmm of u64 counts); per row word, 4 weight loads serve the 4 pixels, padded windows
 * included (their correction is added afterwards, qat_internal.h); 8 vpternlogq, 8 vpopcntq and
 * 8 vpaddq for 4,096 MACs, as in the binary kernel. The output stage is the binary kernel's
 * (qat_emit16: int32 stores or the threshold compare into packed bits). Dense rows are cut from line
 * bit streams as the binary kernel cuts them (qat_rows_avx512.h). */
#include "qat_internal.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include "qat_rows_avx512.h"

#define QAT_T512_PIXELS 4
#define XOR_AND 0x28 /* vpternlogq immediate of (a ^ b) & c */

/* counts of (row[p] XOR pos) AND nz for the block's 4 pixels (word j of a row at r[j st]), channels
 * 0..7 in t[2p], 8..15 in t[2p+1] */
QAT_AVX512 static inline void counts4(const uint64_t *const *rp, int64_t st, const uint64_t *nz, const uint64_t *pos,
                                      int64_t nw, __m512i *t)
{
    __m512i t0 = _mm512_setzero_si512(), t1 = t0, t2 = t0, t3 = t0, t4 = t0, t5 = t0, t6 = t0, t7 = t0;
    const uint64_t *r0 = rp[0], *r1 = rp[1], *r2 = rp[2], *r3 = rp[3];
    int64_t j;
#define QAT_TSTEP(ta, tb, r)                                                                           \
    do {                                                                                               \
        __m512i a = _mm512_set1_epi64((long long)r[j * st]);                                          \
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

/* the output stage of block b (of nblk) of np pixels from column ox of output row r: nnz - 2 counts,
 * plus the weights at the padded positions where a window is not full */
QAT_AVX512 static inline void emit_block(const qat_conv_geom *g, const qat_ternary_parts *tp, int32_t r, int32_t ox,
                                         int32_t np, int64_t b, int64_t nblk, const int *full, const __m512i *t,
                                         int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                                         uint64_t *word)
{
    int32_t oc0 = (int32_t)b * QAT_OC_BLOCK, oy = r % g->ho;
    __m512i nnz = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(_mm512_loadu_si512(tp->counts + oc0))),
                                     _mm512_cvtepi64_epi32(_mm512_loadu_si512(tp->counts + oc0 + 8)), 1);
    for (int32_t p = 0; p < np; p++) {
        int64_t pixel = (int64_t)r * g->wo + ox + p;
        __m512i base = nnz;
        if (!full[p]) {
            int32_t pad[QAT_OC_BLOCK] = {0};
            qat_ternary_padded(g, tp, b, oy, ox + p, pad);
            base = _mm512_add_epi32(base, _mm512_loadu_si512(pad));
        }
        qat_emit16_word(g, pixel, b, nblk, base, t[2 * p], t[2 * p + 1], acc, T, dir, bits, &word[p]);
    }
}

/* output row r from the rows of 8 pixels at a time (byte_rows; padded bits are 0 in the streams) */
QAT_AVX512 static void byte_row(const qat_conv_geom *g, const qat_ternary_parts *tp, const qat_lines *l, int32_t vy,
                                int32_t r, int64_t rw, int32_t *acc, const int32_t *T, const int8_t *dir,
                                uint64_t *bits)
{
    uint64_t rows[8 * QAT_DENSE_WORDS];
    const uint64_t *rp[8];
    int64_t nblk = (g->c_out + QAT_OC_BLOCK - 1) / QAT_OC_BLOCK;
    for (int32_t p = 0; p < 8; p++)
        rp[p] = rows + p;
    for (int32_t ox = 0; ox < g->wo; ox += 8) {
        int32_t np = g->wo - ox < 8 ? g->wo - ox : 8;
        int full[8];
        uint64_t word[8] = {0};
        byte_rows(&l->br, l->line, ox, rw, rows);
        for (int32_t p = 0; p < np; p++)
            full[p] = vy == g->kh && qat_valid_cols(g, ox + p) == g->kw;
        for (int64_t b = 0; b < nblk; b++) {
            const uint64_t *nz = tp->planes + b * 2 * rw * QAT_OC_BLOCK;
            __m512i t[16];
            counts4(rp, 8, nz, nz + rw * QAT_OC_BLOCK, rw, t);
            if (np > 4)
                counts4(rp + 4, 8, nz, nz + rw * QAT_OC_BLOCK, rw, t + 8);
            emit_block(g, tp, r, ox, np, b, nblk, full, t, acc, T, dir, bits, word);
        }
    }
}

QAT_AVX512 int qat_ternary_conv2d_avx512(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w,
                                         int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                                         int32_t row0, int32_t row1)
{
    uint64_t rows[QAT_T512_PIXELS][QAT_ROW_WORDS], mask[QAT_ROW_WORDS];
    int64_t rw = qat_binary_args_check(g, x, w, acc, T, dir, bits, row0, row1), nblk;
    qat_ternary_parts tp;
    qat_lines lines;
    int32_t r;
    if (rw < 0)
        return QAT_EARG;
    tp = qat_ternary_split(g, w, rw);
    nblk = (g->c_out + QAT_OC_BLOCK - 1) / QAT_OC_BLOCK;
    qat_lines_init(g, rw, &lines);
    for (r = row0; r < row1; r++) {
        int32_t img = r / g->ho, oy = r % g->ho, ox, vy = 0;
        if (lines.use_streams)
            vy = qat_lines_row(g, x, &lines, img, oy);
        if (lines.use_bytes) {
            byte_row(g, &tp, &lines, vy, r, rw, acc, T, dir, bits);
            continue;
        }
        for (ox = 0; ox < g->wo; ox += QAT_T512_PIXELS) {
            int32_t np = g->wo - ox < QAT_T512_PIXELS ? g->wo - ox : QAT_T512_PIXELS, p;
            const uint64_t *rp[QAT_T512_PIXELS];
            int full[QAT_T512_PIXELS];
            uint64_t word[QAT_T512_PIXELS] = {0}; /* packed bits of 64 channels, per pixel */
            for (p = 0; p < np; p++) {
                if (lines.use_streams) {
                    cut_row(&lines.rc, lines.line, (int64_t)(ox + p) * g->sw * g->c_in, rw, rows[p]);
                    full[p] = vy == g->kh && qat_valid_cols(g, ox + p) == g->kw;
                } else {
                    qat_window_row(g, x, img, oy, ox + p, rows[p], mask, &full[p]);
                }
            }
            for (p = 0; p < QAT_T512_PIXELS; p++) /* a partial block counts copies of its first pixel */
                rp[p] = rows[p < np ? p : 0];
            for (int64_t b = 0; b < nblk; b++) {
                const uint64_t *nz = tp.planes + b * 2 * rw * QAT_OC_BLOCK;
                __m512i t[2 * QAT_T512_PIXELS];
                counts4(rp, 1, nz, nz + rw * QAT_OC_BLOCK, rw, t);
                emit_block(g, &tp, r, ox, np, b, nblk, full, t, acc, T, dir, bits, word);
            }
        }
    }
    return QAT_OK;
}

#endif
