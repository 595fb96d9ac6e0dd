/* Binary (XNOR-popcount) convolution, AVX-512 path: VPOPCNTDQ counts the bits of 8 words in one
 * instruction, so a 64-bit XOR-popcount-accumulate costs 3 vector instructions per 8 words and 16
 * output channels' words fill 2 zmm. Register block: QAT_B512_PIXELS output pixels x 16 output
 * channels (8 zmm accumulators of u64 counts); each weight vector loaded is used by every pixel of
 * the block, each broadcast activation word by 16 channels. Padding, the reduction rows and the
 * output stage are those of the scalar path (qat_internal.h), the threshold compare vectorised. */
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
#define QAT_STREAM_WORDS 2048 /* all kh streams of one output row, and the column mask */
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

/* words of one stream, with a word of slack for the 8-byte loads at its end */
static inline int64_t stream_words(const qat_conv_geom *g)
{
    return ((int64_t)(g->w + 2 * g->pw) * g->c_in + 63) / 64 + 1;
}

static inline int streams_fit(const qat_conv_geom *g)
{
    return g->dw == 1 && qat_binary_dense(g) && (g->kh + 1) * stream_words(g) <= QAT_STREAM_WORDS;
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

/* the stream of input line (img, iy), or zeros outside the image */
static void build_stream(const qat_conv_geom *g, const uint64_t *x, int32_t img, int32_t iy, uint64_t *s)
{
    int64_t sw = stream_words(g), cw = qat_sign_words(g->c_in), ix, pad = (int64_t)g->pw * g->c_in;
    bitwriter b = {s, 0, 0, 0};
    if (iy < 0 || iy >= g->h) {
        finish(&b, sw);
        return;
    }
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
    int64_t tag[QAT_STREAM_WORDS / 2]; /* img * (h + 2 kh) + iy + kh of the line in each slot, or -1 */
} line_cache;

static void row_lines(const qat_conv_geom *g, const uint64_t *x, uint64_t *streams, line_cache *c, int32_t img,
                      int32_t oy, const uint64_t **line)
{
    int64_t sw = stream_words(g);
    for (int32_t ky = 0; ky < g->kh; ky++) {
        int32_t iy = oy * g->sh - g->ph + ky * g->dh;
        int32_t slot = g->dh == 1 ? ((iy % g->kh) + g->kh) % g->kh : ky;
        int64_t tag = (int64_t)img * (g->h + 2 * g->kh) + iy + g->kh;
        if (g->dh != 1 || c->tag[slot] != tag) {
            build_stream(g, x, img, iy, streams + slot * sw);
            c->tag[slot] = g->dh == 1 ? tag : -1;
        }
        line[ky] = streams + slot * sw;
    }
}

/* the reduction row (and mask) of output pixel (oy, ox) from the streams of its kh lines (line[ky]);
 * returns the number of valid kernel positions; no mask when *full */
static inline int32_t stream_row(const qat_conv_geom *g, const uint64_t *const *line, const uint64_t *colmask,
                                 int32_t oy, int32_t ox, int64_t rw, uint64_t *row, uint64_t *mask, int *full)
{
    int64_t run = (int64_t)g->kw * g->c_in, start = (int64_t)ox * g->sw * g->c_in;
    int32_t ky, vy = 0, vx = 0, kx, ix0 = ox * g->sw - g->pw;
    bitwriter br = {row, 0, 0, 0};
    for (kx = 0; kx < g->kw; kx++)
        vx += ix0 + kx >= 0 && ix0 + kx < g->w;
    for (ky = 0; ky < g->kh; ky++) {
        int32_t iy = oy * g->sh - g->ph + ky * g->dh;
        int in = iy >= 0 && iy < g->h;
        vy += in;
        put_run(&br, line[ky], start, run, !in);
    }
    finish(&br, rw);
    *full = vy == g->kh && vx == g->kw;
    if (!*full) {
        bitwriter bm = {mask, 0, 0, 0};
        for (ky = 0; ky < g->kh; ky++) {
            int32_t iy = oy * g->sh - g->ph + ky * g->dh;
            put_run(&bm, colmask, start, run, !(iy >= 0 && iy < g->h));
        }
        finish(&bm, rw);
    }
    return vy * vx;
}

/* the counts of 4 pixels (rows r0..r3, masks m0..m3 or none) against the 16 channels of one weight
 * block: t[2 p], t[2 p + 1] = channels 0..7, 8..15 of pixel p */
QAT_AVX512 static inline void counts4(const uint64_t *const *rp, const uint64_t *const *mp,
                                      const uint64_t *w, int64_t nw, __m512i *t)
{
    __m512i t0 = _mm512_setzero_si512(), t1 = t0, t2 = t0, t3 = t0, t4 = t0, t5 = t0, t6 = t0, t7 = t0;
    const uint64_t *r0 = rp[0], *r1 = rp[1], *r2 = rp[2], *r3 = rp[3];
    int64_t j;
    if (mp) {
        const uint64_t *m0 = mp[0], *m1 = mp[1], *m2 = mp[2], *m3 = mp[3];
#define QAT_MSTEP(ta, tb, r, m)                                                                        \
    do {                                                                                               \
        __m512i a = _mm512_set1_epi64((long long)r[j]), mm = _mm512_set1_epi64((long long)m[j]);      \
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
        __m512i a = _mm512_set1_epi64((long long)r[j]);                                               \
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

QAT_AVX512 int qat_binary_conv2d_avx512(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w,
                                        int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                                        int32_t row0, int32_t row1)
{
    uint64_t rows[QAT_B512_PIXELS][QAT_ROW_WORDS], masks[QAT_B512_PIXELS][QAT_ROW_WORDS];
    uint64_t streams[QAT_STREAM_WORDS], full_mask[QAT_ROW_WORDS];
    const uint64_t *line[QAT_STREAM_WORDS / 2];
    line_cache cache;
    int64_t rw = qat_binary_args_check(g, x, w, acc, T, dir, bits, row0, row1), cwo, nblk, sw;
    int32_t r;
    int use_streams;
    if (rw < 0)
        return QAT_EARG;
    cwo = qat_sign_words(g->c_out);
    nblk = (g->c_out + QAT_OC_BLOCK - 1) / QAT_OC_BLOCK;
    use_streams = streams_fit(g);
    for (int64_t j = 0; j < rw; j++) /* the mask of a window without padding, in a masked block */
        full_mask[j] = 0;
    if (use_streams)
        set_ones(full_mask, 0, (int64_t)g->kh * g->kw * g->c_in);
    sw = stream_words(g);
    if (use_streams) { /* the column mask: ones over the image's columns, after the kh streams */
        uint64_t *colmask = streams + g->kh * sw;
        memset(colmask, 0, (size_t)sw * sizeof *colmask);
        set_ones(colmask, (int64_t)g->pw * g->c_in, (int64_t)g->w * g->c_in);
        for (int32_t k = 0; k < g->kh; k++)
            cache.tag[k] = -1;
    }
    for (r = row0; r < row1; r++) {
        int32_t img = r / g->ho, oy = r % g->ho, ox;
        if (use_streams)
            row_lines(g, x, streams, &cache, img, oy, line);
        for (ox = 0; ox < g->wo; ox += QAT_B512_PIXELS) {
            int32_t np = g->wo - ox < QAT_B512_PIXELS ? g->wo - ox : QAT_B512_PIXELS, p;
            int32_t nvalid[QAT_B512_PIXELS];
            const uint64_t *rp[QAT_B512_PIXELS], *mp[QAT_B512_PIXELS];
            int all_full = 1;
            for (p = 0; p < QAT_B512_PIXELS; p++) {
                int full = 1;
                if (p < np && use_streams)
                    nvalid[p] = stream_row(g, line, streams + g->kh * sw, oy, ox + p, rw, rows[p], masks[p],
                                           &full) * g->c_in;
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
                int32_t oc0 = (int32_t)b * QAT_OC_BLOCK;
                counts4(rp, all_full ? NULL : mp, w + b * rw * QAT_OC_BLOCK, rw, t);
                for (p = 0; p < np; p++) {
                    int64_t pixel = (int64_t)r * g->wo + ox + p;
                    if (oc0 % 64 == 0)
                        word[p] = 0;
                    qat_emit16(g, pixel, oc0, _mm512_set1_epi32(nvalid[p]), t[2 * p], t[2 * p + 1], acc, T, dir, &word[p]);
                    if (bits && (oc0 % 64 == 64 - QAT_OC_BLOCK || b == nblk - 1)) /* the word is complete */
                        bits[pixel * cwo + oc0 / 64] = word[p];
                }
            }
        }
    }
    return QAT_OK;
}

#endif
