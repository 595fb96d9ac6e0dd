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
#include <string.h>

#include "qat_avx512.h"
#define QAT_B512_PIXELS 4
#define XOR_AND 0x28 /* vpternlogq immediate of (a ^ b) & c */

/* ---- reduction rows of the dense layout (c_in not a multiple of 64) from row streams: the input
 * line iy as one bit array of (pw + w + pw) c_in bits (pixels concatenated, zero padding at both
 * ends), so that the kw positions of a window in that line are one contiguous run of kw c_in bits,
 * copied into the reduction row in pieces of at most 57 bits (one unaligned 8-byte load each).
 * The line's streams are built once per output row instead of one insertion per kernel position
 * per pixel. x86-64 only (little-endian byte addressing of the words). */
#define QAT_STREAM_WORDS 2048 /* all kh streams of one output row, the column mask, a zero stream */
#define PIECE 57

static inline uint64_t get_bits(const uint64_t *s, int64_t off, int n) /* bits [off, off + n), n <= 57 */
{
    uint64_t v;
    memcpy(&v, (const unsigned char *)s + (off >> 3), sizeof v);
    return (v >> (off & 7)) & ((((uint64_t)1) << n) - 1);
}

static inline void or_bits(uint64_t *d, int64_t off, uint64_t v, int n) /* d[off, off + n) |= v */
{
    int64_t wi = off >> 6;
    int sh = (int)(off & 63);
    d[wi] |= v << sh;
    if (sh + n > 64)
        d[wi + 1] |= v >> (64 - sh);
}

static inline void set_ones(uint64_t *d, int64_t off, int64_t n) /* d[off, off + n) |= 1 */
{
    int64_t done;
    for (done = 0; done < n; done += PIECE) {
        int k = n - done < PIECE ? (int)(n - done) : PIECE;
        or_bits(d, off + done, (((uint64_t)1) << k) - 1, k);
    }
}

/* words of one stream, with 64 bytes of slack for the loads at its end (8 bytes, and 64 bytes for
 * the rows of 8 pixels) */
static inline int64_t stream_words(const qat_conv_geom *g)
{
    return ((int64_t)(g->w + 2 * g->pw) * g->c_in + 63) / 64 + 8;
}

static inline int streams_fit(const qat_conv_geom *g)
{
    return g->dw == 1 && qat_binary_dense(g) && (g->kh + 2) * stream_words(g) <= QAT_STREAM_WORDS;
}

/* A bit writer that stores each word of its output once (no read-modify-write of words just
 * written, whose store-to-load forwarding stalls) */
typedef struct bitwriter {
    uint64_t *out, cur;
    int64_t at; /* words stored */
    int fill;   /* bits in cur */
} bitwriter;

static inline void put_bits(bitwriter *b, uint64_t v, int n) /* n <= 64, v < 2^n */
{
    b->cur |= v << b->fill;
    if (b->fill + n >= 64) {
        b->out[b->at++] = b->cur;
        b->cur = b->fill ? v >> (64 - b->fill) : 0;
        b->fill += n - 64;
    } else {
        b->fill += n;
    }
}

static inline void put_run(bitwriter *b, const uint64_t *s, int64_t soff, int64_t n, int zeros)
{
    int64_t done;
    for (done = 0; done < n; done += PIECE) {
        int k = n - done < PIECE ? (int)(n - done) : PIECE;
        put_bits(b, zeros ? 0 : get_bits(s, soff + done, k), k);
    }
}

static inline void finish(bitwriter *b, int64_t words)
{
    if (b->fill)
        b->out[b->at++] = b->cur;
    while (b->at < words)
        b->out[b->at++] = 0;
}

/* the stream of input line (img, iy), inside the image */
static void build_stream(const qat_conv_geom *g, const uint64_t *x, int32_t img, int32_t iy, uint64_t *s)
{
    int64_t sw = stream_words(g), cw = qat_sign_words(g->c_in), ix, pad = (int64_t)g->pw * g->c_in;
    bitwriter b = {s, 0, 0, 0};
    put_run(&b, s, 0, pad, 1);
    for (ix = 0; ix < g->w; ix++) { /* the pixel's words, read whole (never past its last word) */
        const uint64_t *src = x + (((int64_t)img * g->h + iy) * g->w + ix) * cw;
        for (int64_t done = 0; done < g->c_in; done += 64) {
            int k = g->c_in - done < 64 ? (int)(g->c_in - done) : 64;
            put_bits(&b, k == 64 ? src[done / 64] : src[done / 64] & ((((uint64_t)1) << k) - 1), k);
        }
    }
    finish(&b, sw);
}

/* The kh line streams of output row r, kept from the previous row where they are the same lines:
 * consecutive output rows of an image share kh - 1 lines at stride 1 (the lines of a row are
 * consecutive when dh = 1, so line iy lives in slot iy mod kh; with dh > 1 every row rebuilds). */
typedef struct line_cache {
    int64_t tag[QAT_STREAM_WORDS / 2]; /* img * h + iy of the line in each slot, or -1 */
} line_cache;

/* line[ky]: the stream of each of the kh lines of output row oy, or zero (an all-zero stream) for a
 * line outside the image */
static void row_lines(const qat_conv_geom *g, const uint64_t *x, uint64_t *streams, const uint64_t *zero,
                      line_cache *c, int32_t img, int32_t oy, const uint64_t **line)
{
    int64_t sw = stream_words(g);
    for (int32_t ky = 0; ky < g->kh; ky++) {
        int32_t iy = oy * g->sh - g->ph + ky * g->dh;
        int32_t slot = g->dh == 1 ? ((iy % g->kh) + g->kh) % g->kh : ky;
        int64_t tag = (int64_t)img * g->h + iy;
        if (iy < 0 || iy >= g->h) {
            line[ky] = zero;
            continue;
        }
        if (g->dh != 1 || c->tag[slot] != tag) {
            build_stream(g, x, img, iy, streams + slot * sw);
            c->tag[slot] = g->dh == 1 ? tag : -1;
        }
        line[ky] = streams + slot * sw;
    }
}

/* bits [off, off + n) of a stream, n <= 64: an unaligned 8-byte load and the next byte */
static inline uint64_t get_bits64(const uint64_t *s, int64_t off, int n)
{
    const unsigned char *b = (const unsigned char *)s + (off >> 3);
    int sh = (int)(off & 7);
    uint64_t lo, v;
    memcpy(&lo, b, sizeof lo);
    v = (lo >> sh) | (((uint64_t)b[8] << 1) << (63 - sh)); /* (b[8] << 1) << 63 = 0 when sh = 0 */
    return n == 64 ? v : v & ((((uint64_t)1) << n) - 1);
}

/* How the words of a dense reduction row are cut from the kh line streams: kernel row ky's run of
 * kw c_in bits sits at row bit ky * run, so row word j is the OR of the pieces of the runs it
 * overlaps (at most rw + kh pieces in all). The pieces are found once per call; a pixel's row is
 * then one register-built word after another, each stored once. */
#define QAT_MAX_PIECES 256

typedef struct piece {
    int64_t rel;   /* first bit, relative to the window's start in line ky */
    int32_t ky, n; /* line, bits (<= 64) */
    int32_t shift; /* where the bits go in their row word */
} piece;

typedef struct recipe {
    piece p[QAT_MAX_PIECES];
    int32_t first[QAT_DENSE_WORDS + 1]; /* pieces of row word j: first[j] .. first[j + 1] - 1 */
} recipe;

static int make_recipe(const qat_conv_geom *g, int64_t rw, recipe *rc)
{
    int64_t run = (int64_t)g->kw * g->c_in;
    int32_t np = 0, j = 0;
    if (rw > QAT_DENSE_WORDS || rw + g->kh > QAT_MAX_PIECES)
        return 0;
    for (int32_t ky = 0; ky < g->kh; ky++)
        for (int64_t done = 0; done < run;) {
            int64_t pos = ky * run + done;
            int32_t sh = (int32_t)(pos & 63), n = 64 - sh;
            if (n > run - done)
                n = (int32_t)(run - done);
            while (j <= pos >> 6)
                rc->first[j++] = np;
            rc->p[np].rel = done, rc->p[np].ky = ky, rc->p[np].n = n, rc->p[np].shift = sh;
            np++;
            done += n;
        }
    while (j <= rw)
        rc->first[j++] = np;
    return 1;
}

/* the rw words of a row cut from the streams src[ky] at the window's start bit */
static inline void cut_row(const recipe *rc, const uint64_t *const *src, int64_t start, int64_t rw, uint64_t *row)
{
    for (int64_t j = 0; j < rw; j++) {
        uint64_t v = 0;
        for (int32_t k = rc->first[j]; k < rc->first[j + 1]; k++) {
            const piece *pc = &rc->p[k];
            v |= get_bits64(src[pc->ky], start + pc->rel, pc->n) << pc->shift;
        }
        row[j] = v;
    }
}

/* the reduction row (and mask) of output pixel (oy, ox) from the streams of its kh lines (line[ky];
 * mline[ky]: the column mask, or the all-zero stream of a line outside the image); returns the
 * number of valid kernel positions; no mask when *full (vy: the valid lines of this output row) */
static inline int32_t stream_row(const qat_conv_geom *g, const recipe *rc, const uint64_t *const *line,
                                 const uint64_t *const *mline, int32_t vy, int32_t ox, int64_t rw, uint64_t *row,
                                 uint64_t *mask, int *full)
{
    int64_t start = (int64_t)ox * g->sw * g->c_in;
    int32_t ix0 = ox * g->sw - g->pw, lo = ix0 < 0 ? -ix0 : 0, hi = g->w - ix0 < g->kw ? g->w - ix0 : g->kw;
    int32_t vx = hi > lo ? hi - lo : 0;
    cut_row(rc, line, start, rw, row);
    *full = vy == g->kh && vx == g->kw;
    if (!*full)
        cut_row(rc, mline, start, rw, mask);
    return vy * vx;
}

/* ---- the rows of 8 pixels at once when c_in is a multiple of 8 (VBMI): every piece is then whole
 * bytes, and a piece's bytes for 8 consecutive windows of a line lie within 64 bytes of its stream
 * (7 sw c_in / 8 + kw c_in / 8 <= 64), so one VPERMB of one 64-byte load cuts the piece for all 8
 * pixels, already at its place in the row word. Rows come out transposed: word j of pixel p at
 * rows[8 j + p]. */
#define QAT_BYTE_PIECES 64

typedef struct byte_recipe {
    __m512i idx[QAT_BYTE_PIECES]; /* byte 8 p + d of a row word <- byte idx of the loaded 64 */
    __mmask64 keep[QAT_BYTE_PIECES]; /* the bytes the piece fills */
    int32_t ky[QAT_BYTE_PIECES];
    int32_t first[QAT_DENSE_WORDS + 1];
    int64_t step; /* bytes from one output pixel's window to the next */
} byte_recipe;

QAT_AVX512 static int make_byte_recipe(const qat_conv_geom *g, const recipe *rc, int64_t rw, byte_recipe *br)
{
    int64_t step = (int64_t)g->sw * g->c_in / 8, run = (int64_t)g->kw * g->c_in / 8;
    if (g->c_in % 8 || 7 * step + run > 64 || rc->first[rw] > QAT_BYTE_PIECES)
        return 0;
    for (int64_t j = 0; j <= rw; j++)
        br->first[j] = rc->first[j];
    for (int32_t k = 0; k < rc->first[rw]; k++) {
        const piece *pc = &rc->p[k];
        unsigned char idx[64] = {0};
        uint64_t keep = 0;
        for (int32_t p = 0; p < 8; p++)
            for (int32_t b = 0; b < pc->n / 8; b++) {
                int32_t d = 8 * p + pc->shift / 8 + b;
                idx[d] = (unsigned char)(p * step + pc->rel / 8 + b);
                keep |= (uint64_t)1 << d;
            }
        br->idx[k] = _mm512_loadu_si512(idx);
        br->keep[k] = (__mmask64)keep;
        br->ky[k] = pc->ky;
    }
    br->step = step;
    return 1;
}

/* the rw words of the rows of output pixels ox .. ox + 7, from the streams src[ky] */
QAT_AVX512 static inline void byte_rows(const byte_recipe *br, const uint64_t *const *src, int32_t ox, int64_t rw,
                                        uint64_t *rows)
{
    int64_t off = (int64_t)ox * br->step;
    for (int64_t j = 0; j < rw; j++) {
        __m512i v = _mm512_setzero_si512();
        for (int32_t k = br->first[j]; k < br->first[j + 1]; k++)
            v = _mm512_or_si512(v, _mm512_maskz_permutexvar_epi8(
                                       br->keep[k], br->idx[k], _mm512_loadu_si512((const unsigned char *)src[br->ky[k]] + off)));
        _mm512_storeu_si512(rows + 8 * j, v);
    }
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
    int32_t oc0 = (int32_t)b * QAT_OC_BLOCK;
    int64_t cwo = qat_sign_words(g->c_out);
    for (int32_t p = 0; p < np; p++) {
        if (oc0 % 64 == 0)
            word[p] = 0;
        qat_emit16(g, pixel0 + p, oc0, _mm512_set1_epi32(nvalid[p]), t[2 * p], t[2 * p + 1], acc, T, dir, &word[p]);
        if (bits && (oc0 % 64 == 64 - QAT_OC_BLOCK || b == nblk - 1)) /* the word is complete */
            bits[(pixel0 + p) * cwo + oc0 / 64] = word[p];
    }
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
            int32_t ix0 = (ox + p) * g->sw - g->pw, lo = ix0 < 0 ? -ix0 : 0;
            int32_t hi = g->w - ix0 < g->kw ? g->w - ix0 : g->kw, vx = hi > lo ? hi - lo : 0;
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
    uint64_t rows[QAT_B512_PIXELS][QAT_ROW_WORDS], masks[QAT_B512_PIXELS][QAT_ROW_WORDS];
    uint64_t streams[QAT_STREAM_WORDS], full_mask[QAT_ROW_WORDS];
    const uint64_t *line[QAT_STREAM_WORDS / 2], *mline[QAT_STREAM_WORDS / 2];
    line_cache cache;
    recipe rc;
    byte_recipe br;
    int64_t rw = qat_binary_args_check(g, x, w, acc, T, dir, bits, row0, row1), nblk, sw;
    int32_t r;
    int use_streams, use_bytes;
    if (rw < 0)
        return QAT_EARG;
    nblk = (g->c_out + QAT_OC_BLOCK - 1) / QAT_OC_BLOCK;
    use_streams = streams_fit(g) && make_recipe(g, rw, &rc);
    br.step = 0; /* (set by make_byte_recipe; GCC cannot see that byte_row runs only then) */
    use_bytes = use_streams && make_byte_recipe(g, &rc, rw, &br);
    for (int64_t j = 0; j < rw; j++) /* the mask of a window without padding, in a masked block */
        full_mask[j] = 0;
    if (use_streams)
        set_ones(full_mask, 0, (int64_t)g->kh * g->kw * g->c_in);
    sw = stream_words(g);
    if (use_streams) { /* the column mask: ones over the image's columns, after the kh streams */
        uint64_t *colmask = streams + g->kh * sw; /* and an all-zero stream after it */
        memset(colmask, 0, 2 * (size_t)sw * sizeof *colmask);
        set_ones(colmask, (int64_t)g->pw * g->c_in, (int64_t)g->w * g->c_in);
        for (int32_t k = 0; k < g->kh; k++)
            cache.tag[k] = -1;
    }
    for (r = row0; r < row1; r++) {
        int32_t img = r / g->ho, oy = r % g->ho, ox, vy = 0;
        if (use_streams) {
            row_lines(g, x, streams, streams + (g->kh + 1) * sw, &cache, img, oy, line);
            for (int32_t ky = 0; ky < g->kh; ky++) {
                int32_t iy = oy * g->sh - g->ph + ky * g->dh;
                int in = iy >= 0 && iy < g->h;
                vy += in;
                mline[ky] = in ? streams + g->kh * sw : line[ky]; /* a line outside: the zero stream */
            }
        }
        if (use_bytes) {
            byte_row(g, &br, line, mline, vy, r, w, rw, acc, T, dir, bits);
            continue;
        }
        for (ox = 0; ox < g->wo; ox += QAT_B512_PIXELS) {
            int32_t np = g->wo - ox < QAT_B512_PIXELS ? g->wo - ox : QAT_B512_PIXELS, p;
            int32_t nvalid[QAT_B512_PIXELS];
            const uint64_t *rp[QAT_B512_PIXELS], *mp[QAT_B512_PIXELS];
            int all_full = 1;
            for (p = 0; p < QAT_B512_PIXELS; p++) {
                int full = 1;
                if (p < np && use_streams)
                    nvalid[p] = stream_row(g, &rc, line, mline, vy, ox + p, rw, rows[p], masks[p], &full) * g->c_in;
                else if (p < np)
                    nvalid[p] = qat_window_row(g, x, img, oy, ox + p, rows[p], masks[p], &full) * g->c_in;
                all_full &= full;
                /* a partial block counts copies of its first pixel and emits only its own */
                rp[p] = rows[p < np ? p : 0];
                mp[p] = use_streams && full ? full_mask : masks[p < np ? p : 0]; /* stream_row: no mask when full */
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
