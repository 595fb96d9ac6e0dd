/* Binary (XNOR-popcount) convolution, AVX-512 path: VPOPCNTDQ counts the bits of 8 words in one
 * instruction, so a 64-bit XOR-popcount-accumulate costs 3 vector instructions per 8 words and 16
 * output channels' words fill 2 zmm. Register block: QAT_B512_PIXELS output pixels x 16 output
 * channels (8 zmm accumulators of u64 counts); each weight vector loaded is used by every pixel of
 * the block, each broadcast activation word by 16 channels. Padding, the reduction rows and the
 * output stage are those of the scalar path (qat_internal.h), the threshold compare vectorised.
 * Dense rows (c_in not a multiple of 64) are cut from line bit streams instead of being assembled
 * pixel by pixel: with c_in a multiple of 8, by one VPERMB per piece for 8 pixels at once. */
#include "qat_internal.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include "qat_rows_avx512.h"
#define QAT_B512_PIXELS 4
#define XOR_AND 0x28 /* vpternlogq immediate of (a ^ b) & c */

/* the reduction row (and mask) of output pixel (oy, ox) from the streams of its kh lines (line[ky];
 * mline[ky]: the column mask, or the all-zero stream of a line outside the image); returns the
 * number of valid kernel positions; no mask when *full (vy: the valid lines of this output row) */
static inline int32_t stream_row(const qat_conv_geom *g, const recipe *rc, const uint64_t *const *line,
                                 const uint64_t *const *mline, int32_t vy, int32_t ox, int64_t rw, uint64_t *row,
                                 uint64_t *mask, int *full)
{
    int64_t start = (int64_t)ox * g->sw * g->c_in;
    int32_t vx = qat_valid_cols(g, ox);
    cut_row(rc, line, start, rw, row);
    *full = vy == g->kh && vx == g->kw;
    if (!*full)
        cut_row(rc, mline, start, rw, mask);
    return vy * vx;
}

/* the counts of 4 pixels (rows r0..r3, masks m0..m3 or none; word j of a row at r[j st]) against the 16 channels of one weight
 * block: t[2 p], t[2 p + 1] = channels 0..7, 8..15 of pixel p */
QAT_AVX512 static inline void counts4(const uint64_t *const *rp, const uint64_t *const *mp, int64_t st,
                                      const uint64_t *w, int64_t nw, __m512i *t)
{
    __m512i t0 = _mm512_setzero_si512(), t1 = t0, t2 = t0, t3 = t0, t4 = t0, t5 = t0, t6 = t0, t7 = t0;
    const uint64_t *r0 = rp[0], *r1 = rp[1], *r2 = rp[2], *r3 = rp[3];
    int64_t j;
    if (mp) {
        const uint64_t *m0 = mp[0], *m1 = mp[1], *m2 = mp[2], *m3 = mp[3];
#define QAT_MSTEP(ta, tb, r, m)                                                                        \
    do {                                                                                               \
        __m512i a = _mm512_set1_epi64((long long)r[j * st]), mm = _mm512_set1_epi64((long long)m[j * st]); \
        ta = _mm512_add_epi64(ta, _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(a, w0, mm, XOR_AND))); \
        tb = _mm512_add_epi64(tb, _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(a, w1, mm, XOR_AND))); \
    } while (0)
        for (j = 0; j < nw; j++) {
            __m512i w0 = _mm512_loadu_si512(w + j * QAT_OC_BLOCK), w1 = _mm512_loadu_si512(w + j * QAT_OC_BLOCK + 8);
            QAT_MSTEP(t0, t1, r0, m0);
            QAT_MSTEP(t2, t3, r1, m1);
            QAT_MSTEP(t4, t5, r2, m2);
            QAT_MSTEP(t6, t7, r3, m3);
        }
#undef QAT_MSTEP
    } else {
#define QAT_STEP(ta, tb, r)                                                                            \
    do {                                                                                               \
        __m512i a = _mm512_set1_epi64((long long)r[j * st]);                                          \
        ta = _mm512_add_epi64(ta, _mm512_popcnt_epi64(_mm512_xor_si512(a, w0)));                       \
        tb = _mm512_add_epi64(tb, _mm512_popcnt_epi64(_mm512_xor_si512(a, w1)));                       \
    } while (0)
        for (j = 0; j < nw; j++) {
            __m512i w0 = _mm512_loadu_si512(w + j * QAT_OC_BLOCK), w1 = _mm512_loadu_si512(w + j * QAT_OC_BLOCK + 8);
            QAT_STEP(t0, t1, r0);
            QAT_STEP(t2, t3, r1);
            QAT_STEP(t4, t5, r2);
            QAT_STEP(t6, t7, r3);
        }
#undef QAT_STEP
    }
    t[0] = t0, t[1] = t1, t[2] = t2, t[3] = t3, t[4] = t4, t[5] = t5, t[6] = t6, t[7] = t7;
}

/* the output stage of block b (of nblk) of np pixels from pixel0: t[2 p], t[2 p + 1] the counts of
 * pixel p, word[p] its packed bits of the current 64 channels */
QAT_AVX512 static inline void emit_block(const qat_conv_geom *g, int64_t pixel0, int32_t np, int64_t b, int64_t nblk,
                                         const int32_t *nvalid, const __m512i *t, int32_t *acc, const int32_t *T,
                                         const int8_t *dir, uint64_t *bits, uint64_t *word)
{
    for (int32_t p = 0; p < np; p++)
        qat_emit16_word(g, pixel0 + p, b, nblk, _mm512_set1_epi32(nvalid[p]), t[2 * p], t[2 * p + 1], acc, T, dir,
                        bits, &word[p]);
}

/* output row r from the rows of 8 pixels at a time (byte_rows) */
QAT_AVX512 static void byte_row(const qat_conv_geom *g, const byte_recipe *br, const uint64_t *const *line,
                                const uint64_t *const *mline, int32_t vy, int32_t r, const uint64_t *w, int64_t rw,
                                int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits)
{
    uint64_t rows[8 * QAT_DENSE_WORDS], masks[8 * QAT_DENSE_WORDS];
    const uint64_t *rp[8], *mp[8];
    int64_t nblk = (g->c_out + QAT_OC_BLOCK - 1) / QAT_OC_BLOCK;
    for (int32_t p = 0; p < 8; p++)
        rp[p] = rows + p, mp[p] = masks + p;
    for (int32_t ox = 0; ox < g->wo; ox += 8) {
        int32_t np = g->wo - ox < 8 ? g->wo - ox : 8, nvalid[8];
        int all_full = vy == g->kh;
        uint64_t word[8] = {0};
        byte_rows(br, line, ox, rw, rows);
        for (int32_t p = 0; p < np; p++) {
            int32_t vx = qat_valid_cols(g, ox + p);
            nvalid[p] = vy * vx * g->c_in;
            all_full &= vx == g->kw;
        }
        if (!all_full) /* the column masks of the lines inside the image, zero for the others */
            byte_rows(br, mline, ox, rw, masks);
        for (int64_t b = 0; b < nblk; b++) {
            __m512i t[16];
            const uint64_t *wb = w + b * rw * QAT_OC_BLOCK;
            counts4(rp, all_full ? NULL : mp, 8, wb, rw, t);
            if (np > 4)
                counts4(rp + 4, all_full ? NULL : mp + 4, 8, wb, rw, t + 8);
            emit_block(g, (int64_t)r * g->wo + ox, np, b, nblk, nvalid, t, acc, T, dir, bits, word);
        }
    }
}

QAT_AVX512 int qat_binary_conv2d_avx512(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w,
                                        int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                                        int32_t row0, int32_t row1)
{
    uint64_t rows[QAT_B512_PIXELS][QAT_ROW_WORDS], masks[QAT_B512_PIXELS][QAT_ROW_WORDS], full_mask[QAT_ROW_WORDS];
    qat_lines lines;
    int64_t rw = qat_binary_args_check(g, x, w, acc, T, dir, bits, row0, row1), nblk;
    int32_t r;
    if (rw < 0)
        return QAT_EARG;
    nblk = (g->c_out + QAT_OC_BLOCK - 1) / QAT_OC_BLOCK;
    qat_lines_init(g, rw, &lines);
    for (int64_t j = 0; j < rw; j++) /* the mask of a window without padding, in a masked block */
        full_mask[j] = 0;
    if (lines.use_streams)
        set_ones(full_mask, 0, (int64_t)g->kh * g->kw * g->c_in);
    for (r = row0; r < row1; r++) {
        int32_t img = r / g->ho, oy = r % g->ho, ox, vy = 0;
        if (lines.use_streams)
            vy = qat_lines_row(g, x, &lines, img, oy);
        if (lines.use_bytes) {
            byte_row(g, &lines.br, lines.line, lines.mline, vy, r, w, rw, acc, T, dir, bits);
            continue;
        }
        for (ox = 0; ox < g->wo; ox += QAT_B512_PIXELS) {
            int32_t np = g->wo - ox < QAT_B512_PIXELS ? g->wo - ox : QAT_B512_PIXELS, p;
            int32_t nvalid[QAT_B512_PIXELS];
            const uint64_t *rp[QAT_B512_PIXELS], *mp[QAT_B512_PIXELS];
            int all_full = 1;
            for (p = 0; p < QAT_B512_PIXELS; p++) {
                int full = 1;
                if (p < np && lines.use_streams)
                    nvalid[p] = stream_row(g, &lines.rc, lines.line, lines.mline, vy, ox + p, rw, rows[p], masks[p],
                                           &full) * g->c_in;
                else if (p < np)
                    nvalid[p] = qat_window_row(g, x, img, oy, ox + p, rows[p], masks[p], &full) * g->c_in;
                all_full &= full;
                /* a partial block counts copies of its first pixel and emits only its own */
                rp[p] = rows[p < np ? p : 0];
                mp[p] = lines.use_streams && full ? full_mask : masks[p < np ? p : 0]; /* stream_row: no mask when full */
            }
            uint64_t word[QAT_B512_PIXELS] = {0}; /* packed bits of 64 channels, per pixel */
            for (int64_t b = 0; b < nblk; b++) {
                __m512i t[2 * QAT_B512_PIXELS];
                counts4(rp, all_full ? NULL : mp, 1, w + b * rw * QAT_OC_BLOCK, rw, t);
                emit_block(g, (int64_t)r * g->wo + ox, np, b, nblk, nvalid, t, acc, T, dir, bits, word);
            }
        }
    }
    return QAT_OK;
}

#endif
