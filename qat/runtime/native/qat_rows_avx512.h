/* Reduction rows of the dense binary layout (c_in not a multiple of 64) cut from line bit streams,
 * shared by the AVX-512 binary and ternary kernels (static inline: no symbols of their own). */
#ifndef QAT_ROWS_AVX512_H
#define QAT_ROWS_AVX512_H

#include <string.h>

#include "qat_avx512.h"

/* ---- reduction rows of the dense layout (c_in not a multiple of 64) from row streams: the input
 * line iy as one bit array of (pw + w + pw) c_in bits (pixels concatenated, zero padding at both
 * ends), so that the kw positions of a window in that line are one contiguous run of kw c_in bits.
 * A line's stream is built once and kept while the next output rows read it; a window's row is cut
 * from the kh streams by the layer's recipe (below) instead of one insertion per kernel position
 * per pixel. x86-64 only (little-endian byte addressing of the words). */
#define QAT_STREAM_WORDS 2048 /* all kh streams of one output row, the column mask, a zero stream */
#define PIECE 57 /* set_ones' pieces: a mask of k < 64 ones is (1 << k) - 1 */

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

static inline void put_zeros(bitwriter *b, int64_t n)
{
    for (int64_t done = 0; done < n; done += 64)
        put_bits(b, 0, n - done < 64 ? (int)(n - done) : 64);
}

static inline void finish(bitwriter *b, int64_t words)
{
    if (b->fill)
        b->out[b->at++] = b->cur;
    while (b->at < words)
        b->out[b->at++] = 0;
}

/* the stream of input line (img, iy), inside the image */
static inline void build_stream(const qat_conv_geom *g, const uint64_t *x, int32_t img, int32_t iy, uint64_t *s)
{
    int64_t sw = stream_words(g), cw = qat_sign_words(g->c_in), ix, pad = (int64_t)g->pw * g->c_in;
    bitwriter b = {s, 0, 0, 0};
    put_zeros(&b, pad);
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
static inline void row_lines(const qat_conv_geom *g, const uint64_t *x, uint64_t *streams, const uint64_t *zero,
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

static inline int make_recipe(const qat_conv_geom *g, int64_t rw, recipe *rc)
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

QAT_AVX512 static inline int make_byte_recipe(const qat_conv_geom *g, const recipe *rc, int64_t rw, byte_recipe *br)
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

/* The line streams of a call, and how its rows are cut from them */
typedef struct qat_lines {
    uint64_t streams[QAT_STREAM_WORDS]; /* kh streams, the column mask, a zero stream */
    const uint64_t *line[QAT_STREAM_WORDS / 2];  /* of the current output row, by ky */
    const uint64_t *mline[QAT_STREAM_WORDS / 2]; /* its column masks (the zero stream outside the image) */
    line_cache cache;
    recipe rc;
    byte_recipe br;
    int64_t sw;
    int use_streams, use_bytes; /* rows cut from the streams (recipe), 8 at a time (byte recipe) */
} qat_lines;

QAT_AVX512 static inline void qat_lines_init(const qat_conv_geom *g, int64_t rw, qat_lines *l)
{
    l->sw = stream_words(g);
    l->use_streams = streams_fit(g) && make_recipe(g, rw, &l->rc);
    l->br.step = 0; /* (set by make_byte_recipe; GCC cannot see that byte rows are cut only then) */
    l->use_bytes = l->use_streams && make_byte_recipe(g, &l->rc, rw, &l->br);
    if (l->use_streams) { /* the column mask: ones over the image's columns, after the kh streams */
        uint64_t *colmask = l->streams + g->kh * l->sw; /* and an all-zero stream after it */
        memset(colmask, 0, 2 * (size_t)l->sw * sizeof *colmask);
        set_ones(colmask, (int64_t)g->pw * g->c_in, (int64_t)g->w * g->c_in);
        for (int32_t k = 0; k < g->kh; k++)
            l->cache.tag[k] = -1;
    }
}

/* the lines of output row (img, oy) (use_streams only); returns how many are inside the image */
static inline int32_t qat_lines_row(const qat_conv_geom *g, const uint64_t *x, qat_lines *l, int32_t img, int32_t oy)
{
    int32_t vy = 0;
    row_lines(g, x, l->streams, l->streams + (g->kh + 1) * l->sw, &l->cache, img, oy, l->line);
    for (int32_t ky = 0; ky < g->kh; ky++) {
        int32_t iy = oy * g->sh - g->ph + ky * g->dh;
        int in = iy >= 0 && iy < g->h;
        vy += in;
        l->mline[ky] = in ? l->streams + g->kh * l->sw : l->line[ky];
    }
    return vy;
}

/* the kernel columns of output column ox inside the image */
static inline int32_t qat_valid_cols(const qat_conv_geom *g, int32_t ox)
{
    int32_t ix0 = ox * g->sw - g->pw, lo = ix0 < 0 ? -ix0 : 0, hi = g->w - ix0 < g->kw ? g->w - ix0 : g->kw;
    return hi > lo ? hi - lo : 0;
}

#endif /* QAT_ROWS_AVX512_H */
