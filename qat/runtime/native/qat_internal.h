/* Helpers shared by the kernel files (static inline: no symbols of their own). */
#ifndef QAT_INTERNAL_H
#define QAT_INTERNAL_H

#include "qat_kernels.h"

#define QAT_MAX_ELEMS ((int64_t)1 << 40) /* any one buffer: far above a real network, far below overflow */

/* the reduction length of the int8 (VNNI) layout: K = kh kw c_in rounded up to a multiple of 4 */
static inline int64_t qat_int8_k4(const qat_conv_geom *g)
{
    return ((int64_t)g->kh * g->kw * g->c_in + 3) / 4 * 4;
}

/* qat_binary_dense of a geometry already checked (no check: the row builders call it per pixel) */
static inline int qat_dense_layout(const qat_conv_geom *g)
{
    return g->c_in % 64 != 0 && ((int64_t)g->kh * g->kw * g->c_in + 63) / 64 <= QAT_DENSE_WORDS;
}

static inline int64_t qat_floor_shift(int64_t v, int n)
{
    /* floor(v / 2^n) without relying on >> of a negative number (implementation-defined in C99) */
    return v >= 0 ? (v >> n) : ~((~v) >> n);
}

static inline int32_t qat_clamp32(int64_t v, int32_t lo, int32_t hi)
{
    return v < lo ? lo : (v > hi ? hi : (int32_t)v);
}

/* one requantized code (see qat_kernels.h) */
static inline int32_t qat_requant1(int32_t acc, const qat_requant *rq, int32_t c)
{
    int n = rq->shift[c];
    int64_t v = (int64_t)acc * ((int64_t)1 << rq->bias_shift[c]) + rq->bias[c];
    v = v * rq->m0[c];
    if (n > 0)
        v += (int64_t)1 << (n - 1);
    return qat_clamp32(qat_floor_shift(v, n) + rq->zero_point, rq->lo, rq->hi);
}

static inline void qat_store_code(void *out, int64_t i, int32_t type, int32_t v)
{
    switch (type) {
    case QAT_U8: ((uint8_t *)out)[i] = (uint8_t)v; break;
    case QAT_I8: ((int8_t *)out)[i] = (int8_t)v; break;
    case QAT_I16: ((int16_t *)out)[i] = (int16_t)v; break;
    default: ((int32_t *)out)[i] = v; break;
    }
}

static inline int qat_requant_check(const qat_requant *rq, int32_t c)
{
    int32_t i;
    if (!rq || !rq->m0 || !rq->shift || !rq->bias || !rq->bias_shift || rq->lo > rq->hi)
        return QAT_EARG;
    if (rq->out_type < QAT_U8 || rq->out_type > QAT_I32)
        return QAT_EARG;
    for (i = 0; i < c; i++)
        if (rq->shift[i] < 0 || rq->shift[i] > 62 || rq->bias_shift[i] < 0 || rq->bias_shift[i] > 30)
            return QAT_ERANGE;
    return QAT_OK;
}

/* Output stage of one pixel and one block of QAT_OC_BLOCK output channels starting at channel
 * oc0 (acc16[l] for channel oc0 + l): int32 accumulators, or threshold bits (the pixel's words
 * were zeroed by the caller before its first block). */
static inline void qat_binary_emit(const qat_conv_geom *g, int64_t pixel, int32_t oc0,
                                   const int32_t *acc16, int32_t *acc, const int32_t *T,
                                   const int8_t *dir, uint64_t *bits)
{
    int32_t l, m = g->c_out - oc0 < QAT_OC_BLOCK ? g->c_out - oc0 : QAT_OC_BLOCK;
    if (acc) {
        int32_t *dst = acc + pixel * g->c_out + oc0;
        for (l = 0; l < m; l++)
            dst[l] = acc16[l];
    } else {
        uint64_t word = 0;
        for (l = 0; l < m; l++) {
            int32_t c = oc0 + l;
            int on = (acc16[l] >= T[c]) ^ (dir[c] < 0);
            word |= (uint64_t)on << l;
        }
        bits[pixel * qat_sign_words(g->c_out) + oc0 / 64] |= word << (oc0 % 64);
    }
}

static inline int qat_rows_check(const qat_conv_geom *g, int32_t row0, int32_t row1)
{
    if (qat_conv_geom_check(g) != QAT_OK)
        return QAT_EARG;
    if (row0 < 0 || row1 < row0 || (int64_t)row1 > (int64_t)g->n * g->ho)
        return QAT_EARG;
    return QAT_OK;
}

/* The reduction row of output pixel (img, oy, ox) of a binary convolution, in the layout of the
 * packed weights (qat_kernels.h): kernel positions in (ky, kx) order, each c_in bits wide (dense)
 * or cw whole words wide (per position); 0 at padded positions, and mask = 1 at valid positions.
 * Returns the number of valid kernel positions; *full = 1 when all are valid. */
static inline int32_t qat_window_row(const qat_conv_geom *g, const uint64_t *x, int32_t img, int32_t oy,
                                     int32_t ox, uint64_t *row, uint64_t *mask, int *full)
{
    int32_t ky, kx, c = g->c_in, npos = 0, iy0 = oy * g->sh - g->ph, ix0 = ox * g->sw - g->pw;
    int64_t cw = qat_sign_words(c), step = qat_dense_layout(g) ? c : 64 * cw, off = 0, j;
    int64_t rw = ((int64_t)g->kh * g->kw * step + 63) / 64;
    for (j = 0; j < rw; j++)
        row[j] = mask[j] = 0;
    for (ky = 0; ky < g->kh; ky++) {
        int32_t iy = iy0 + ky * g->dh;
        for (kx = 0; kx < g->kw; kx++, off += step) {
            int32_t ix = ix0 + kx * g->dw;
            const uint64_t *src;
            int64_t done;
            if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w)
                continue;
            npos++;
            src = x + (((int64_t)img * g->h + iy) * g->w + ix) * cw;
            for (done = 0; done < c; done += 64) { /* one source word: up to 64 channels */
                int32_t nb = c - done < 64 ? (int32_t)(c - done) : 64;
                uint64_t v = src[done / 64], m = nb == 64 ? ~(uint64_t)0 : (((uint64_t)1 << nb) - 1);
                int64_t at = off + done, wi = at / 64;
                int sh = (int)(at % 64);
                row[wi] |= v << sh;
                mask[wi] |= m << sh;
                if (sh && sh + nb > 64) {
                    row[wi + 1] |= v >> (64 - sh);
                    mask[wi + 1] |= m >> (64 - sh);
                }
            }
        }
    }
    *full = npos == g->kh * g->kw;
    return npos;
}

/* The arguments of a binary convolution (qat_kernels.h): the reduction row's words, or -1 */
static inline int64_t qat_binary_args_check(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w,
                                            const int32_t *acc, const int32_t *T, const int8_t *dir,
                                            const uint64_t *bits, int32_t row0, int32_t row1)
{
    int64_t rw;
    if (qat_rows_check(g, row0, row1) != QAT_OK || !x || !w || (!acc == !bits) || (bits && (!T || !dir)))
        return -1;
    rw = qat_binary_row_words(g);
    return rw > QAT_ROW_WORDS ? -1 : rw;
}

/* popcounts of (row XOR w[j][l]) [AND mask] summed over nw words, for the 16 channels l of a block */
typedef void (*qat_count_fn)(const uint64_t *row, const uint64_t *mask, const uint64_t *w, int64_t nw,
                             uint64_t *tot);

/* The binary convolution over rows [row0, row1), given a count function (scalar or AVX2): the loop
 * both paths share, inlined into each so that the count function inlines too. */
static inline int qat_binary_conv_rows(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w,
                                       int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                                       int32_t row0, int32_t row1, qat_count_fn count)
{
    uint64_t row[QAT_ROW_WORDS], mask[QAT_ROW_WORDS], tot[QAT_OC_BLOCK];
    int64_t rw = qat_binary_args_check(g, x, w, acc, T, dir, bits, row0, row1), cwo, nblk;
    int32_t r;
    if (rw < 0)
        return QAT_EARG;
    cwo = qat_sign_words(g->c_out);
    nblk = (g->c_out + QAT_OC_BLOCK - 1) / QAT_OC_BLOCK;
    for (r = row0; r < row1; r++) {
        int32_t img = r / g->ho, oy = r % g->ho, ox;
        for (ox = 0; ox < g->wo; ox++) {
            int64_t pixel = (int64_t)r * g->wo + ox;
            int full, l;
            int32_t nvalid = qat_window_row(g, x, img, oy, ox, row, mask, &full) * g->c_in;
            int32_t acc16[QAT_OC_BLOCK];
            if (bits)
                for (int64_t j = 0; j < cwo; j++)
                    bits[pixel * cwo + j] = 0;
            for (int64_t b = 0; b < nblk; b++) {
                count(row, full ? NULL : mask, w + b * rw * QAT_OC_BLOCK, rw, tot);
                for (l = 0; l < QAT_OC_BLOCK; l++)
                    acc16[l] = nvalid - 2 * (int32_t)tot[l];
                qat_binary_emit(g, pixel, (int32_t)b * QAT_OC_BLOCK, acc16, acc, T, dir, bits);
            }
        }
    }
    return QAT_OK;
}


/* Ternary x sign convolution (qat_kernels.h). Padded activation bits are 0, so over a whole row
 * popcount((x XOR pos) AND nz) counts the positive weights at padded positions as disagreements
 * and popcount(nz) counts all non-zero weights; both are corrected by the sum of the weights at the
 * padded positions: acc = nnz - 2 popcount((x XOR pos) AND nz) + sum_{padded k} w_k, the sums per
 * kernel position of each channel being stored with the weights. */

/* popcounts of (row XOR pos[j][l]) AND nz[j][l] summed over nw words, for the 16 channels l of a block */
typedef void (*qat_tcount_fn)(const uint64_t *row, const uint64_t *nz, const uint64_t *pos, int64_t nw,
                              uint64_t *dis);

/* the parts of packed ternary weights (qat_kernels.h), found once per call (rw: the row words) */
typedef struct qat_ternary_parts {
    const uint64_t *planes, *counts, *sums; /* block b: planes + b * 2 rw 16, sums + b * kh kw 16 */
    int64_t rw;
} qat_ternary_parts;

static inline qat_ternary_parts qat_ternary_split(const qat_conv_geom *g, const uint64_t *w, int64_t rw)
{
    int64_t nblk = (g->c_out + QAT_OC_BLOCK - 1) / QAT_OC_BLOCK;
    qat_ternary_parts t;
    t.planes = w;
    t.counts = w + nblk * 2 * rw * QAT_OC_BLOCK;
    t.sums = t.counts + nblk * QAT_OC_BLOCK;
    t.rw = rw;
    return t;
}

/* add to add16 the sum of the weights at the padded positions of output pixel (oy, ox), for the
 * 16 channels of block b (the position sums are int64 values stored as uint64 words) */
static inline void qat_ternary_padded(const qat_conv_geom *g, const qat_ternary_parts *t, int64_t b, int32_t oy,
                                      int32_t ox, int32_t *add16)
{
    int32_t l, ky, kx, iy0 = oy * g->sh - g->ph, ix0 = ox * g->sw - g->pw;
    for (ky = 0; ky < g->kh; ky++) {
        int32_t iy = iy0 + ky * g->dh;
        for (kx = 0; kx < g->kw; kx++) {
            int32_t ix = ix0 + kx * g->dw;
            const uint64_t *s;
            if (iy >= 0 && iy < g->h && ix >= 0 && ix < g->w)
                continue;
            s = t->sums + ((b * g->kh + ky) * g->kw + kx) * QAT_OC_BLOCK;
            for (l = 0; l < QAT_OC_BLOCK; l++)
                add16[l] += (int32_t)(int64_t)s[l];
        }
    }
}

/* acc16 of one pixel and block: nnz - 2 dis, plus the padded positions' weights when its window is not full */
static inline void qat_ternary_acc(const qat_conv_geom *g, const qat_ternary_parts *t, int64_t b, int32_t oy,
                                   int32_t ox, int full, const uint64_t *dis, int32_t *acc16)
{
    const uint64_t *nnz = t->counts + b * QAT_OC_BLOCK;
    int32_t l;
    for (l = 0; l < QAT_OC_BLOCK; l++)
        acc16[l] = (int32_t)nnz[l] - 2 * (int32_t)dis[l];
    if (!full)
        qat_ternary_padded(g, t, b, oy, ox, acc16);
}

/* The ternary x sign convolution over rows [row0, row1), given a count function: the loop of the
 * binary one on the planes of each block */
static inline int qat_ternary_conv_rows(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w,
                                        int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                                        int32_t row0, int32_t row1, qat_tcount_fn count)
{
    uint64_t row[QAT_ROW_WORDS], mask[QAT_ROW_WORDS], dis[QAT_OC_BLOCK];
    int64_t rw = qat_binary_args_check(g, x, w, acc, T, dir, bits, row0, row1), cwo, nblk;
    qat_ternary_parts t;
    int32_t r;
    if (rw < 0)
        return QAT_EARG;
    t = qat_ternary_split(g, w, rw);
    cwo = qat_sign_words(g->c_out);
    nblk = (g->c_out + QAT_OC_BLOCK - 1) / QAT_OC_BLOCK;
    for (r = row0; r < row1; r++) {
        int32_t img = r / g->ho, oy = r % g->ho, ox;
        for (ox = 0; ox < g->wo; ox++) {
            int64_t pixel = (int64_t)r * g->wo + ox;
            int full;
            int32_t acc16[QAT_OC_BLOCK];
            qat_window_row(g, x, img, oy, ox, row, mask, &full);
            if (bits)
                for (int64_t j = 0; j < cwo; j++)
                    bits[pixel * cwo + j] = 0;
            for (int64_t b = 0; b < nblk; b++) {
                const uint64_t *nz = t.planes + b * 2 * rw * QAT_OC_BLOCK;
                count(row, nz, nz + rw * QAT_OC_BLOCK, rw, dis);
                qat_ternary_acc(g, &t, b, oy, ox, full, dis, acc16);
                qat_binary_emit(g, pixel, (int32_t)b * QAT_OC_BLOCK, acc16, acc, T, dir, bits);
            }
        }
    }
    return QAT_OK;
}

/* One im2col row of an integer convolution: x - zx as int16 in (ky, kx, c_in) order, 0 at padded
 * positions and in the pad column of an odd K. */
static inline void qat_int_im2col_row(const qat_conv_geom *g, const void *x, int32_t x_type,
                                      int32_t zx, int32_t img, int32_t oy, int32_t ox, int16_t *row)
{
    int32_t ky, kx, ch, c = g->c_in, iy0 = oy * g->sh - g->ph, ix0 = ox * g->sw - g->pw;
    int64_t k = (int64_t)g->kh * g->kw * c;
    int16_t *dst = row;
    for (ky = 0; ky < g->kh; ky++) {
        int32_t iy = iy0 + ky * g->dh;
        for (kx = 0; kx < g->kw; kx++, dst += c) {
            int32_t ix = ix0 + kx * g->dw;
            int64_t base;
            if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w) {
                for (ch = 0; ch < c; ch++)
                    dst[ch] = 0;
                continue;
            }
            base = (((int64_t)img * g->h + iy) * g->w + ix) * c;
            if (x_type == QAT_U8) {
                const uint8_t *src = (const uint8_t *)x + base;
                for (ch = 0; ch < c; ch++)
                    dst[ch] = (int16_t)(src[ch] - zx);
            } else {
                const int8_t *src = (const int8_t *)x + base;
                for (ch = 0; ch < c; ch++)
                    dst[ch] = (int16_t)(src[ch] - zx);
            }
        }
    }
    if (k & 1)
        row[k] = 0;
}

/* Output stage of an integer convolution for one pixel and one block of output channels. */
static inline void qat_int_emit(const qat_conv_geom *g, int64_t pixel, int32_t oc0,
                                const int32_t *acc16, int32_t *acc, const qat_requant *rq, void *out)
{
    int32_t l, m = g->c_out - oc0 < QAT_OC_BLOCK ? g->c_out - oc0 : QAT_OC_BLOCK;
    int64_t base = pixel * g->c_out + oc0;
    if (acc) {
        for (l = 0; l < m; l++)
            acc[base + l] = acc16[l];
    } else {
        for (l = 0; l < m; l++)
            qat_store_code(out, base + l, rq->out_type, qat_requant1(acc16[l], rq, oc0 + l));
    }
}

static inline int qat_int_args_check(const qat_conv_geom *g, const void *x, int32_t x_type,
                                     int32_t zx, const int16_t *w, const int16_t *scratch,
                                     const int32_t *acc, const qat_requant *rq, const void *out,
                                     int32_t row0, int32_t row1)
{
    if (qat_rows_check(g, row0, row1) != QAT_OK || !x || !w || !scratch)
        return QAT_EARG;
    if ((x_type != QAT_U8 && x_type != QAT_I8) || zx < -255 || zx > 255)
        return QAT_EARG;
    if (!acc == !out || (out && !rq))
        return QAT_EARG;
    return out ? qat_requant_check(rq, g->c_out) : QAT_OK;
}

#endif /* QAT_INTERNAL_H */
