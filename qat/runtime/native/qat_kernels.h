/* qat integer kernels: XNOR-popcount binary convolution, ternary-weight sign-input convolution, 8-bit
 * integer convolution, their fused
 * output stages (threshold -> packed bits, fixed-point requantization) and max pooling.
 *
 * C99, integer arithmetic only: no float or double, no malloc, no global state, no Python or torch
 * headers. The caller passes every buffer (scratch included) and every size; each function checks
 * the sizes it is given and returns QAT_OK (0) or a negative QAT_E* code without writing anything
 * when they are inconsistent. Kernels are single-threaded pure functions of their arguments: a
 * caller parallelises by giving threads disjoint output row ranges [row0, row1), where output row
 * r is image r / ho, output line r % ho.
 *
 * Every kernel exists as a portable scalar function (suffix _scalar, __builtin_popcountll) and, on
 * x86-64, an AVX2 function (suffix _avx2, compiled with __attribute__((target("avx2,popcnt"))) only,
 * never with -mavx2 for the whole library) and an AVX-512 function (suffix _avx512: VPOPCNTDQ for
 * the binary convolution, VNNI for the 8-bit one; target attributes only). The unsuffixed names
 * (dispatch.c) choose the best function the CPU runs (__builtin_cpu_supports). All produce
 * bit-identical results.
 *
 * Layouts (all little-endian, C order):
 *
 *   Packed signs (activations of binary layers): NHWC, channels packed 64 to a uint64 word,
 *     cw = ceil(c / 64) words per pixel; channel ch is bit (ch % 64) of word (ch / 64); bit 1 is +1,
 *     bit 0 is -1; the unused high bits of a pixel's last word are 0. Size: n * h * w * cw words.
 *
 *   Binary weights (qat_binary_pack_weights): output channels in blocks of QAT_OC_BLOCK (16),
 *     c_out_pad = 16 ceil(c_out / 16), padded output channels 0. Two layouts, chosen by
 *     qat_binary_dense(g):
 *     - per position (c_in a multiple of 64, or rows longer than QAT_DENSE_WORDS words):
 *       [c_out_pad / 16][kh][kw][cw][16] uint64; word (b, ky, kx, j, l) holds input channels
 *       64 j .. 64 j + 63 of output channel 16 b + l at kernel position (ky, kx);
 *     - dense (otherwise): [c_out_pad / 16][rw][16] uint64, rw = ceil(kh kw c_in / 64); the
 *       reduction's bits in (ky, kx, c_in) order, c_in fastest (the export's OHWI bit order), so
 *       that a 3x3 kernel over 16 channels takes 3 words instead of 9 quarter-filled ones; the
 *       kernel assembles the same dense row from the packed activations of each output pixel.
 *     Unused bits are 0. A reduction row (qat_binary_row_words) longer than QAT_ROW_WORDS is
 *     refused (QAT_EARG).
 *
 *   Integer codes (activations of 8-bit layers): NHWC, one uint8 or int8 per value (QAT_U8 /
 *     QAT_I8), or int16 / int32 for outputs whose code range needs it.
 *
 *   Integer weights (qat_int_pack_weights): w - zw[o] as int16, output channels in blocks of 16
 *     and the reduction (ky, kx, c_in order, c_in fastest; K = kh kw c_in) in pairs:
 *     [c_out_pad / 16][K_pad / 2][16][2] int16, K_pad = 2 ceil(K / 2); padded entries are 0.
 *
 *   int32 accumulators: NHWC [n][ho][wo][c_out].
 *
 * Arithmetic (the reference runtime's, qat.runtime.kernels / ops, bit for bit):
 *   binary:  acc = sum over valid kernel positions of sum_c x_c w_c, x, w in {-1, +1}
 *            = n_valid - 2 popcount(x XOR w), n_valid = c_in * (kernel positions inside the image):
 *            zero padding contributes 0 (the model pads with 0, not with a +-1 value).
 *   integer: acc = sum_k (x_k - zx)(w_k - zw[o]), padded positions contributing 0 (pad code zx).
 *            x is uint8 or int8 and |zx| <= 255; w - zw[o] must fit int16 (qat_int_pack_weights
 *            returns QAT_ERANGE otherwise), so a vpmaddwd pair sum 2 * 511 * 32767 fits int32;
 *            |acc| itself must stay below 2^31: the caller checks the layer's bound (the
 *            manifest's acc_bound, always below 2^30).
 *   threshold: bit = (acc >= T[c]) when dir[c] = +1, (acc < T[c]) when dir[c] = -1.
 *   requantize: q = clamp(Z + floor((((acc << f[c]) + b[c]) M0[c] + 2^(n[c]-1)) / 2^n[c]), lo, hi)
 *            in int64 (the rounding term is 0 when n[c] = 0).
 *   max pooling of packed bits that a threshold produced: the max of acc over a window followed by
 *            the threshold equals the OR of the window's bits for dir = +1 channels and the AND for
 *            dir = -1 channels (the comparison is monotone), given as up_mask (bit set = dir +1).
 */
#ifndef QAT_KERNELS_H
#define QAT_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QAT_API_VERSION 1
#define QAT_OC_BLOCK 16
#define QAT_DENSE_WORDS 64 /* longest dense binary row (4096 bits) */
#define QAT_ROW_WORDS 192  /* longest binary reduction row (3x3 over 1344 channels), on the stack */

#define QAT_OK 0
#define QAT_EARG (-1)   /* a size or argument is out of range or inconsistent */
#define QAT_ERANGE (-2) /* a value does not fit the kernel's arithmetic */

/* element types of integer code buffers */
#define QAT_U8 0
#define QAT_I8 1
#define QAT_I16 2
#define QAT_I32 3

/* Geometry of a convolution (a linear layer reading a flattened [c, h, w] map is the convolution
 * with kernel h x w, no padding, 1 x 1 output; one reading a vector of c features has h = w = 1). */
typedef struct qat_conv_geom {
    int32_t n, h, w, c_in; /* input */
    int32_t c_out;
    int32_t kh, kw;        /* kernel */
    int32_t sh, sw;        /* stride */
    int32_t ph, pw;        /* zero padding, top/left = bottom/right */
    int32_t dh, dw;        /* dilation */
    int32_t ho, wo;        /* output size; must equal (h + 2 ph - dh (kh - 1) - 1) / sh + 1 etc. */
} qat_conv_geom;

/* Geometry of a max pooling (torch.nn.functional.max_pool2d; ceil_mode is the caller's choice of
 * ho, wo: every window must hold at least one input position). */
typedef struct qat_pool_geom {
    int32_t n, h, w, c;
    int32_t kh, kw, sh, sw, ph, pw, dh, dw;
    int32_t ho, wo;
} qat_pool_geom;

/* ------------------------------------------------------------------ CPU features, sizes */
int qat_api_version(void);
int qat_cpu_has_avx2(void); /* 1 when the AVX2 functions may run on this CPU */
/* 1 when the AVX-512 functions may run: F, BW, VL, DQ, VPOPCNTDQ, VNNI, VBMI (Ice Lake, Zen 4 and later) */
int qat_cpu_has_avx512(void);
int qat_conv_geom_check(const qat_conv_geom *g); /* QAT_OK when g is consistent */
int qat_pool_geom_check(const qat_pool_geom *g);
int64_t qat_sign_words(int32_t c); /* cw = ceil(c / 64) */
int64_t qat_binary_weight_words(const qat_conv_geom *g);  /* words of the packed binary weights */
int qat_binary_dense(const qat_conv_geom *g); /* 1: dense weight rows, 0: per position (above) */
int64_t qat_binary_row_words(const qat_conv_geom *g); /* words of one reduction row (<= QAT_ROW_WORDS) */
int64_t qat_int_weight_elems(const qat_conv_geom *g);     /* int16 elements of packed int weights */
int64_t qat_int_conv_scratch_elems(const qat_conv_geom *g); /* int16 scratch per calling thread */
int64_t qat_int8_weight_bytes(const qat_conv_geom *g);   /* bytes of int8 packed weights (VNNI) */
int64_t qat_int8_conv_scratch_bytes(const qat_conv_geom *g); /* byte scratch per calling thread (VNNI) */

/* ------------------------------------------------------------------ packing (binary_pack.c) */
/* int8 codes NHWC [pixels][c] -> packed signs [pixels][cw]: bit = (code > 0) */
int qat_pack_signs(const int8_t *codes, int64_t pixels, int32_t c, uint64_t *out);
/* packed signs [pixels][cw] -> int8 codes +1 / -1 NHWC [pixels][c] */
int qat_unpack_signs(const uint64_t *bits, int64_t pixels, int32_t c, int8_t *out);
/* +-1 weight codes OHWI int8 [c_out][kh][kw][c_in] -> packed binary weights (layout above) */
int qat_binary_pack_weights(const qat_conv_geom *g, const int8_t *codes, uint64_t *out);

/* ------------------------------------------------------------------ binary convolution */
/* x: packed signs [n][h][w][cw_in]; w: packed binary weights.
 * Output (exactly one of the two, the other NULL):
 *   acc  int32 [n][ho][wo][c_out], or
 *   bits packed signs [n][ho][wo][cw_out] of the threshold (T, dir) of each output channel.
 * Rows [row0, row1) of n * ho. */
int qat_binary_conv2d(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w,
                      int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                      int32_t row0, int32_t row1);
int qat_binary_conv2d_scalar(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w,
                             int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                             int32_t row0, int32_t row1);
int qat_binary_conv2d_avx2(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w,
                           int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                           int32_t row0, int32_t row1);
int qat_binary_conv2d_avx512(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w,
                             int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                             int32_t row0, int32_t row1);

/* ------------------------------------------------------------------ ternary x sign convolution */
/* Ternary weights w in {-1, 0, +1} (qat_ternary_pack_weights, from OHWI int8 codes): per block of 16
 * output channels, the non-zero plane (bit = w != 0) then the positive plane (bit = w > 0), each
 * [rw][16] uint64 in the binary weight layout above (rw = qat_binary_row_words, dense or per
 * position as for binary weights); after all blocks, the non-zero count of each output channel,
 * uint64 [c_out_pad], then the sum of each channel's weights at each kernel position,
 * [c_out_pad / 16][kh][kw][16] int64 (two's complement in uint64 words). Size
 * qat_ternary_weight_words(g).
 * Arithmetic: acc = sum over valid kernel positions of sum_c x_c w_c, x in {-1, +1} (padding
 *   contributes 0). Padded activation bits being 0, over the whole row
 *   acc = popcount(nz) - 2 popcount((x XOR pos) AND nz) + sum of w over the padded positions
 *   (a padded +1 weight counted as a disagreement, a padded -1 weight as an agreement).
 *   Inputs, outputs (acc or threshold bits), rows: as qat_binary_conv2d. */
int64_t qat_ternary_weight_words(const qat_conv_geom *g);
int qat_ternary_pack_weights(const qat_conv_geom *g, const int8_t *codes, uint64_t *out);
int qat_ternary_conv2d(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w,
                       int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                       int32_t row0, int32_t row1);
int qat_ternary_conv2d_scalar(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w,
                              int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                              int32_t row0, int32_t row1);
int qat_ternary_conv2d_avx2(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w,
                            int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                            int32_t row0, int32_t row1);
int qat_ternary_conv2d_avx512(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w,
                              int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                              int32_t row0, int32_t row1);

/* ------------------------------------------------------------------ integer convolution */
/* int codes - zero point: w - zw[o] for each (o, k) of OHWI int32 codes [c_out][K] */
int qat_int_pack_weights(const qat_conv_geom *g, const int32_t *codes, const int32_t *zw, int16_t *out);

/* Requantization constants of the fused output stage (per output channel). */
typedef struct qat_requant {
    const int32_t *m0;    /* M0[c] */
    const int8_t *shift;  /* n[c], 0..62 */
    const int32_t *bias;  /* b[c] */
    const int8_t *bias_shift; /* f[c], 0..30 */
    int32_t zero_point, lo, hi;
    int32_t out_type;     /* QAT_U8, QAT_I8, QAT_I16 or QAT_I32 */
} qat_requant;

/* x: codes NHWC [n][h][w][c_in] of x_type (QAT_U8 or QAT_I8) with zero point zx; w: packed int
 * weights; scratch: qat_int_conv_scratch_elems(g) int16.
 * Output (exactly one): acc int32 [n][ho][wo][c_out], or out codes [n][ho][wo][c_out] of rq. */
int qat_int_conv2d(const qat_conv_geom *g, const void *x, int32_t x_type, int32_t zx,
                   const int16_t *w, int16_t *scratch, int32_t *acc, const qat_requant *rq,
                   void *out, int32_t row0, int32_t row1);
int qat_int_conv2d_scalar(const qat_conv_geom *g, const void *x, int32_t x_type, int32_t zx,
                          const int16_t *w, int16_t *scratch, int32_t *acc, const qat_requant *rq,
                          void *out, int32_t row0, int32_t row1);
int qat_int_conv2d_avx2(const qat_conv_geom *g, const void *x, int32_t x_type, int32_t zx,
                        const int16_t *w, int16_t *scratch, int32_t *acc, const qat_requant *rq,
                        void *out, int32_t row0, int32_t row1);

/* The AVX-512 VNNI integer convolution (int_conv_avx512.c) reads int8 weights. Weight codes are read
 * as unsigned bytes wu (w for codes in 0..255, w + 128 for codes in -128..127; other codes:
 * QAT_ERANGE from the packing) with zero point zwu = zw + the same offset, activations likewise as
 * u with zero point zu (zx for uint8 codes, zx + 128 for int8 codes, which must lie in 0..255:
 * QAT_ERANGE from the kernel otherwise). Then, over the K entries of a pixel's reduction,
 *   acc = sum (u - zu)(wu - zwu) = sum u (wu - 128) + A[o] Su + zu B[o],
 *   A[o] = 128 - zwu[o], B[o] = K zwu[o] - sum wu[o], Su = sum u,
 * all mod 2^32 (exact, as |acc| < 2^31). Layout: [c_out_pad / 16][K4 / 4][16][4] int8 wu - 128,
 * K4 = 4 ceil(K / 4), padded entries 0, then A[c_out_pad] and B[c_out_pad] as int32.
 * scratch: qat_int8_conv_scratch_bytes(g). Same outputs as qat_int_conv2d. No unsuffixed
 * dispatcher: the caller packs for the kernel it runs. */
int qat_int8_pack_weights(const qat_conv_geom *g, const int32_t *codes, const int32_t *zw, int8_t *out);
int qat_int_conv2d_avx512(const qat_conv_geom *g, const void *x, int32_t x_type, int32_t zx,
                          const int8_t *w, uint8_t *scratch, int32_t *acc, const qat_requant *rq,
                          void *out, int32_t row0, int32_t row1);

/* ------------------------------------------------------------------ output stages (output.c) */
/* int32 acc [pixels][c] -> packed signs [pixels][cw] */
int qat_threshold_pack(const int32_t *acc, int64_t pixels, int32_t c, const int32_t *T,
                       const int8_t *dir, uint64_t *bits);
/* int32 acc [pixels][c] -> codes [pixels][c] of rq->out_type */
int qat_requantize(const int32_t *acc, int64_t pixels, int32_t c, const qat_requant *rq, void *out);

/* ------------------------------------------------------------------ pooling (pool.c) */
/* max pooling of int32 NHWC; rows [row0, row1) of n * ho */
int qat_maxpool_i32(const qat_pool_geom *g, const int32_t *x, int32_t *out, int32_t row0, int32_t row1);
/* max pooling, through a monotone threshold, of packed signs: OR where up_mask has a 1, AND where
 * it has a 0 (up_mask: cw words, bit = dir[c] > 0) */
int qat_maxpool_bits(const qat_pool_geom *g, const uint64_t *x, const uint64_t *up_mask,
                     uint64_t *out, int32_t row0, int32_t row1);

#ifdef __cplusplus
}
#endif

#endif /* QAT_KERNELS_H */
