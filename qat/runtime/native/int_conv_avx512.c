/* Integer (8-bit codes) convolution, AVX-512 VNNI path. vpdpbusd multiplies 4 unsigned bytes by 4
 * signed bytes and adds the 4 products (each within int16, their sum within int32) to an int32
 * lane without saturation: exact. Operands (qat_kernels.h):
 *   activations: the im2col row of the codes as unsigned bytes u (x, or x + 128 for int8 codes),
 *     padded positions holding the zero point's byte zu, so that u - zu = 0 there;
 *   weights: wu - 128 as int8 (qat_int8_pack_weights), with per-channel constants A, B;
 *   acc = sum_k u_k (wu_k - 128) + A[o] Su + zu B[o]  (mod 2^32, hence exact: |acc| < 2^31),
 *   Su = sum_k u_k of the pixel's row (vpsadbw).
 * Register block: 4 pixels x 32 output channels (8 zmm accumulators; one weight vector serves 4
 * pixels, one broadcast activation dword 32 channels), 16-channel blocks at the tail; a layer of at
 * most 16 output channels takes 8 pixels x 16 channels, so that it too has 8 independent
 * accumulators to cover vpdpbusd's latency. The fused
 * requantization runs on 8 int64 lanes (vpmullq, vpsravq), the scalar path's arithmetic. */
#include "qat_internal.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#include <string.h>

#define QAT_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#define PIX 4
#define PIX1 8 /* pixels of a block when the layer has one 16-channel block (scratch: qat_int8_conv_scratch_bytes) */

/* n bytes from src (xor flip: int8 codes to their unsigned byte) and n bytes of value v, with
 * 64-byte (masked) vector moves instead of library calls for these short runs */
QAT_VNNI static inline void copy_bytes(uint8_t *dst, const uint8_t *src, int64_t n, uint8_t flip)
{
    __m512i f = _mm512_set1_epi8((char)flip);
    int64_t i;
    for (i = 0; i + 64 <= n; i += 64)
        _mm512_storeu_si512(dst + i, _mm512_xor_si512(_mm512_loadu_si512(src + i), f));
    if (i < n) {
        __mmask64 k = ~(__mmask64)0 >> (64 - (n - i));
        _mm512_mask_storeu_epi8(dst + i, k, _mm512_xor_si512(_mm512_maskz_loadu_epi8(k, src + i), f));
    }
}

QAT_VNNI static inline void fill_bytes(uint8_t *dst, uint8_t v, int64_t n)
{
    __m512i b = _mm512_set1_epi8((char)v);
    int64_t i;
    for (i = 0; i + 64 <= n; i += 64)
        _mm512_storeu_si512(dst + i, b);
    if (i < n)
        _mm512_mask_storeu_epi8(dst + i, ~(__mmask64)0 >> (64 - (n - i)), b);
}

/* the im2col row of output pixel (img, oy, ox) as unsigned bytes: k4 bytes */
QAT_VNNI static inline void u8_row(const qat_conv_geom *g, const void *x, int32_t x_type, uint8_t zu, int32_t img,
                                   int32_t oy, int32_t ox, int64_t k4, uint8_t *row)
{
    int32_t ky, kx, c = g->c_in, iy0 = oy * g->sh - g->ph, ix0 = ox * g->sw - g->pw;
    int64_t k = (int64_t)g->kh * g->kw * c, run = (int64_t)g->kw * c;
    uint8_t flip = x_type == QAT_U8 ? 0 : 0x80, *dst = row;
    const uint8_t *xb = (const uint8_t *)x;
    for (ky = 0; ky < g->kh; ky++) {
        int32_t iy = iy0 + ky * g->dh;
        int64_t line = ((int64_t)img * g->h + iy) * g->w;
        if (iy < 0 || iy >= g->h) {
            fill_bytes(dst, zu, run);
        } else if (g->dw == 1 && ix0 >= 0 && ix0 + g->kw <= g->w) { /* one run of bytes */
            copy_bytes(dst, xb + (line + ix0) * c, run, flip);
        } else {
            for (kx = 0; kx < g->kw; kx++) {
                int32_t ix = ix0 + kx * g->dw;
                if (ix < 0 || ix >= g->w)
                    fill_bytes(dst + (int64_t)kx * c, zu, c);
                else
                    copy_bytes(dst + (int64_t)kx * c, xb + (line + ix) * c, c, flip);
            }
        }
        dst += run;
    }
    fill_bytes(row + k, 0, k4 - k);
}

/* The constants of one block of 16 output channels from oc0 (fewer at the end: keep), loaded once
 * for the pixels that share them: A and zu B of the accumulator, and the requantization's per
 * channel operands in int64 lanes (lo: channels 0..7, hi: 8..15) */
typedef struct block16 {
    __m512i a, corr, f[2], n[2], b[2], m[2], half[2], zp, lo, hi;
    __mmask16 keep;
    int32_t oc0;
} block16;

QAT_VNNI static inline void block16_load(const qat_conv_geom *g, const int32_t *consta, const int32_t *constb,
                                         int32_t zu, const qat_requant *rq, int32_t oc0, block16 *k)
{
    int32_t m = g->c_out - oc0 < QAT_OC_BLOCK ? g->c_out - oc0 : QAT_OC_BLOCK;
    k->oc0 = oc0;
    k->keep = (__mmask16)((1u << m) - 1u);
    k->a = _mm512_loadu_si512(consta + oc0); /* mod 2^32: vpmulld keeps the low 32 bits */
    k->corr = _mm512_mullo_epi32(_mm512_set1_epi32(zu), _mm512_loadu_si512(constb + oc0));
    if (!rq) { /* accumulators out: no requantization */
        k->f[0] = k->f[1] = k->n[0] = k->n[1] = k->b[0] = k->b[1] = k->m[0] = k->m[1] = _mm512_setzero_si512();
        k->half[0] = k->half[1] = k->zp = k->lo = k->hi = _mm512_setzero_si512();
        return;
    }
    for (int h = 0; h < 2; h++) {
        __mmask8 keep = (__mmask8)(k->keep >> (8 * h));
        int32_t c0 = oc0 + 8 * h;
        k->f[h] = _mm512_cvtepi8_epi64(_mm_maskz_loadu_epi8(keep, rq->bias_shift + c0));
        k->n[h] = _mm512_cvtepi8_epi64(_mm_maskz_loadu_epi8(keep, rq->shift + c0));
        k->b[h] = _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(keep, rq->bias + c0));
        k->m[h] = _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(keep, rq->m0 + c0));
        k->half[h] = _mm512_srli_epi64(_mm512_sllv_epi64(_mm512_set1_epi64(1), k->n[h]), 1); /* 2^(n-1), 0 for n = 0 */
    }
    k->zp = _mm512_set1_epi64(rq->zero_point);
    k->lo = _mm512_set1_epi64(rq->lo);
    k->hi = _mm512_set1_epi64(rq->hi);
}

/* requantized codes of 8 channels (int64 lanes, half h of a block) of one pixel:
 * clamp(Z + floor((((acc << f) + b) M0 + 2^(n-1)) / 2^n)) exactly as qat_requant1 */
QAT_VNNI static inline __m256i requant8(__m256i acc, const block16 *k, int h)
{
    __m512i v = _mm512_mullo_epi64(_mm512_add_epi64(_mm512_sllv_epi64(_mm512_cvtepi32_epi64(acc), k->f[h]), k->b[h]),
                                   k->m[h]);
    v = _mm512_add_epi64(_mm512_srav_epi64(_mm512_add_epi64(v, k->half[h]), k->n[h]), k->zp);
    return _mm512_cvtepi64_epi32(_mm512_min_epi64(_mm512_max_epi64(v, k->lo), k->hi));
}

QAT_VNNI static inline __m512i bcast4(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}

/* A pixel's window as the weights read it: nseg segments of len bytes (len a multiple of 4), in
 * place in the input for a window inside the image (one segment per kernel row), else segments of
 * the pixel's im2col row in the scratch */
#define QAT_SEGS 7 /* kernel rows read in place at most */
typedef struct window {
    const uint8_t *seg[QAT_SEGS];
} window;

/* the dot products of 8 windows with one 16-channel weight block */
QAT_VNNI static inline void dot8(const window *win, int nseg, int64_t len, const int8_t *w0, __m512i *d)
{
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0;
    for (int sg = 0; sg < nseg; sg++) {
        const uint8_t *a0 = win[0].seg[sg], *a1 = win[1].seg[sg], *a2 = win[2].seg[sg], *a3 = win[3].seg[sg];
        const uint8_t *a4 = win[4].seg[sg], *a5 = win[5].seg[sg], *a6 = win[6].seg[sg], *a7 = win[7].seg[sg];
        const int8_t *ws = w0 + sg * len * 16; /* len / 4 vectors of 64 bytes */
        for (int64_t i = 0; i < len / 4; i++) {
            __m512i v0 = _mm512_loadu_si512(ws + i * 64);
            s0 = _mm512_dpbusd_epi32(s0, bcast4(a0 + 4 * i), v0);
            s1 = _mm512_dpbusd_epi32(s1, bcast4(a1 + 4 * i), v0);
            s2 = _mm512_dpbusd_epi32(s2, bcast4(a2 + 4 * i), v0);
            s3 = _mm512_dpbusd_epi32(s3, bcast4(a3 + 4 * i), v0);
            s4 = _mm512_dpbusd_epi32(s4, bcast4(a4 + 4 * i), v0);
            s5 = _mm512_dpbusd_epi32(s5, bcast4(a5 + 4 * i), v0);
            s6 = _mm512_dpbusd_epi32(s6, bcast4(a6 + 4 * i), v0);
            s7 = _mm512_dpbusd_epi32(s7, bcast4(a7 + 4 * i), v0);
        }
    }
    d[0] = s0, d[1] = s1, d[2] = s2, d[3] = s3, d[4] = s4, d[5] = s5, d[6] = s6, d[7] = s7;
}

/* the dot products of 4 windows with one weight block (the odd last block of a wider layer) */
QAT_VNNI static inline void dot4(const window *win, int nseg, int64_t len, const int8_t *w0, __m512i *d)
{
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    for (int sg = 0; sg < nseg; sg++) {
        const uint8_t *a0 = win[0].seg[sg], *a1 = win[1].seg[sg], *a2 = win[2].seg[sg], *a3 = win[3].seg[sg];
        const int8_t *ws = w0 + sg * len * 16;
        for (int64_t i = 0; i < len / 4; i++) {
            __m512i v0 = _mm512_loadu_si512(ws + i * 64);
            s0 = _mm512_dpbusd_epi32(s0, bcast4(a0 + 4 * i), v0);
            s1 = _mm512_dpbusd_epi32(s1, bcast4(a1 + 4 * i), v0);
            s2 = _mm512_dpbusd_epi32(s2, bcast4(a2 + 4 * i), v0);
            s3 = _mm512_dpbusd_epi32(s3, bcast4(a3 + 4 * i), v0);
        }
    }
    d[0] = s0, d[1] = s1, d[2] = s2, d[3] = s3;
}

/* the dot products of 4 windows with two weight blocks */
QAT_VNNI static inline void dot4x2(const window *win, int nseg, int64_t len, const int8_t *w0, const int8_t *w1,
                                   __m512i *d0, __m512i *d1)
{
    __m512i s00 = _mm512_setzero_si512(), s01 = s00, s10 = s00, s11 = s00, s20 = s00, s21 = s00, s30 = s00, s31 = s00;
    for (int sg = 0; sg < nseg; sg++) {
        const uint8_t *a0 = win[0].seg[sg], *a1 = win[1].seg[sg], *a2 = win[2].seg[sg], *a3 = win[3].seg[sg];
        const int8_t *ws0 = w0 + sg * len * 16, *ws1 = w1 + sg * len * 16;
/* one pixel's broadcast dword against the two weight vectors */
#define QAT_DP2(sa, sb, row)                                                                           \
    do {                                                                                               \
        __m512i a = bcast4(row + 4 * i);                                                               \
        sa = _mm512_dpbusd_epi32(sa, a, v0);                                                           \
        sb = _mm512_dpbusd_epi32(sb, a, v1);                                                           \
    } while (0)
        for (int64_t i = 0; i < len / 4; i++) {
            __m512i v0 = _mm512_loadu_si512(ws0 + i * 64), v1 = _mm512_loadu_si512(ws1 + i * 64);
            QAT_DP2(s00, s01, a0);
            QAT_DP2(s10, s11, a1);
            QAT_DP2(s20, s21, a2);
            QAT_DP2(s30, s31, a3);
        }
#undef QAT_DP2
    }
    d0[0] = s00, d0[1] = s10, d0[2] = s20, d0[3] = s30;
    d1[0] = s01, d1[1] = s11, d1[2] = s21, d1[3] = s31;
}

/* Su: the sum of a row's k4 bytes */
QAT_VNNI static inline int32_t row_sum(const uint8_t *row, int64_t k4)
{
    __m512i t = _mm512_setzero_si512();
    int64_t i;
    for (i = 0; i + 64 <= k4; i += 64)
        t = _mm512_add_epi64(t, _mm512_sad_epu8(_mm512_loadu_si512(row + i), _mm512_setzero_si512()));
    if (i < k4)
        t = _mm512_add_epi64(t, _mm512_sad_epu8(_mm512_maskz_loadu_epi8(~(__mmask64)0 >> (64 - (k4 - i)), row + i),
                                                _mm512_setzero_si512()));
    return (int32_t)(uint32_t)_mm512_reduce_add_epi64(t); /* mod 2^32 */
}

/* Su of a window read in place: the sum of its segments' bytes */
QAT_VNNI static inline int32_t seg_sum(const window *win, int nseg, int64_t len)
{
    __m512i t = _mm512_setzero_si512();
    for (int sg = 0; sg < nseg; sg++) {
        const uint8_t *a = win->seg[sg];
        int64_t i;
        for (i = 0; i + 64 <= len; i += 64)
            t = _mm512_add_epi64(t, _mm512_sad_epu8(_mm512_loadu_si512(a + i), _mm512_setzero_si512()));
        if (i < len) /* a masked load reads no byte outside the mask */
            t = _mm512_add_epi64(t, _mm512_sad_epu8(_mm512_maskz_loadu_epi8(~(__mmask64)0 >> (64 - (len - i)), a + i),
                                                    _mm512_setzero_si512()));
    }
    return (int32_t)(uint32_t)_mm512_reduce_add_epi64(t); /* mod 2^32 */
}

/* The window of output pixel (img, oy, ox) and its Su. In place (direct: uint8 codes, dw = 1,
 * kernel rows of whole dwords, at most QAT_SEGS of them) when the window is inside the image, else
 * the im2col row built in row, as kh segments (direct) or one of k4 bytes. */
QAT_VNNI static inline int32_t window_at(const qat_conv_geom *g, const void *x, int32_t x_type, uint8_t zu,
                                         int32_t img, int32_t oy, int32_t ox, int64_t k4, int direct, uint8_t *row,
                                         window *win)
{
    int32_t iy0 = oy * g->sh - g->ph, ix0 = ox * g->sw - g->pw, ky;
    int64_t run = (int64_t)g->kw * g->c_in;
    if (direct && iy0 >= 0 && iy0 + (g->kh - 1) * g->dh < g->h && ix0 >= 0 && ix0 + g->kw <= g->w) {
        for (ky = 0; ky < g->kh; ky++)
            win->seg[ky] = (const uint8_t *)x + (((int64_t)img * g->h + iy0 + ky * g->dh) * g->w + ix0) * g->c_in;
        return seg_sum(win, g->kh, run);
    }
    u8_row(g, x, x_type, zu, img, oy, ox, k4, row);
    if (direct)
        for (ky = 0; ky < g->kh; ky++)
            win->seg[ky] = row + ky * run;
    else
        win->seg[0] = row;
    return row_sum(row, k4);
}

/* output stage of one pixel and one block: dot + A Su + zu B, stored or requantized */
QAT_VNNI static inline void emit16(const qat_conv_geom *g, int64_t pixel, __m512i dot, int32_t su, const block16 *k,
                                   int32_t *acc, const qat_requant *rq, void *out)
{
    __m512i v = _mm512_add_epi32(_mm512_add_epi32(dot, k->corr), _mm512_mullo_epi32(k->a, _mm512_set1_epi32(su)));
    int64_t at = pixel * g->c_out + k->oc0;
    if (acc) {
        _mm512_mask_storeu_epi32(acc + at, k->keep, v);
        return;
    }
    v = _mm512_inserti64x4(_mm512_castsi256_si512(requant8(_mm512_castsi512_si256(v), k, 0)),
                           requant8(_mm512_extracti64x4_epi64(v, 1), k, 1), 1);
    switch (rq->out_type) {
    case QAT_U8: _mm512_mask_cvtepi32_storeu_epi8((uint8_t *)out + at, k->keep, v); break;
    case QAT_I8: _mm512_mask_cvtepi32_storeu_epi8((int8_t *)out + at, k->keep, v); break;
    case QAT_I16: _mm512_mask_cvtepi32_storeu_epi16((int16_t *)out + at, k->keep, v); break;
    default: _mm512_mask_storeu_epi32((int32_t *)out + at, k->keep, v); break;
    }
}

QAT_VNNI int qat_int_conv2d_avx512(const qat_conv_geom *g, const void *x, int32_t x_type, int32_t zx,
                                   const int8_t *w, uint8_t *scratch, int32_t *acc, const qat_requant *rq,
                                   void *out, int32_t row0, int32_t row1)
{
    int64_t k4, nblk, wblk, len;
    const int32_t *consta, *constb;
    int32_t r, zu, pix;
    int direct, nseg;
    block16 first; /* the constants of block 0: those of every pixel when it is the only block */
    int rc = qat_int_args_check(g, x, x_type, zx, (const int16_t *)w, (const int16_t *)scratch, acc, rq, out,
                                row0, row1);
    if (rc != QAT_OK)
        return rc;
    zu = x_type == QAT_U8 ? zx : zx + 128;
    if (zu < 0 || zu > 255)
        return QAT_ERANGE;
    k4 = qat_int8_k4(g);
    direct = x_type == QAT_U8 && g->dw == 1 && ((int64_t)g->kw * g->c_in) % 4 == 0 && g->kh <= QAT_SEGS;
    nseg = direct ? g->kh : 1;
    len = direct ? (int64_t)g->kw * g->c_in : k4;
    nblk = (g->c_out + QAT_OC_BLOCK - 1) / QAT_OC_BLOCK;
    wblk = k4 * QAT_OC_BLOCK; /* bytes of one 16-channel block */
    consta = (const int32_t *)(const void *)(w + nblk * wblk);
    constb = consta + nblk * QAT_OC_BLOCK;
    pix = nblk == 1 ? PIX1 : PIX;
    block16_load(g, consta, constb, zu, rq, 0, &first); /* (used when nblk = 1) */
    for (r = row0; r < row1; r++) {
        int32_t img = r / g->ho, oy = r % g->ho, ox;
        for (ox = 0; ox < g->wo; ox += pix) {
            int32_t np = g->wo - ox < pix ? g->wo - ox : pix, p, su[PIX1];
            int64_t b;
            window win[PIX1] = {{{NULL}}};
            for (p = 0; p < np; p++)
                su[p] = window_at(g, x, x_type, (uint8_t)zu, img, oy, ox + p, k4, direct, scratch + p * k4, &win[p]);
            for (p = np; p < pix; p++) /* a partial block computes on copies of its first window */
                win[p] = win[0];
            if (nblk == 1) {
                __m512i d[PIX1];
                dot8(win, nseg, len, w, d);
                for (p = 0; p < np; p++)
                    emit16(g, (int64_t)r * g->wo + ox + p, d[p], su[p], &first, acc, rq, out);
                continue;
            }
            for (b = 0; b + 1 < nblk; b += 2) { /* pairs of blocks: 8 accumulators */
                __m512i d0[PIX], d1[PIX];
                block16 k0, k1;
                dot4x2(win, nseg, len, w + b * wblk, w + (b + 1) * wblk, d0, d1);
                block16_load(g, consta, constb, zu, rq, (int32_t)b * QAT_OC_BLOCK, &k0);
                block16_load(g, consta, constb, zu, rq, (int32_t)(b + 1) * QAT_OC_BLOCK, &k1);
                for (p = 0; p < np; p++) {
                    int64_t pixel = (int64_t)r * g->wo + ox + p;
                    emit16(g, pixel, d0[p], su[p], &k0, acc, rq, out);
                    emit16(g, pixel, d1[p], su[p], &k1, acc, rq, out);
                }
            }
            if (b < nblk) { /* an odd last block */
                __m512i d[PIX];
                block16 k;
                dot4(win, nseg, len, w + b * wblk, d);
                block16_load(g, consta, constb, zu, rq, (int32_t)b * QAT_OC_BLOCK, &k);
                for (p = 0; p < np; p++)
                    emit16(g, (int64_t)r * g->wo + ox + p, d[p], su[p], &k, acc, rq, out);
            }
        }
    }
    return QAT_OK;
}

#endif
