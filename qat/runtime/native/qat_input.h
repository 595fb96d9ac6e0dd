/* Input layers of a standalone program: raw uint8 pixels [n][c][h][w] with the export's input
 * normalisation folded in, one 256-entry lookup table per channel computed at generation
 * (qat/export/c/fold.py). C99, integers only, no allocation; sizes and layouts as qat_kernels.h. */
#ifndef QAT_INPUT_H
#define QAT_INPUT_H

#include <stdint.h>

#include "qat_kernels.h"

/* out[((i * h + y) * w + x) * c + ch] = table[ch * 256 + pixels[((i * c + ch) * h + y) * w + x]]:
 * the input codes of an 8-bit first layer, channels last, as qat_int_conv2d reads them. */
int qat_input_codes(const uint8_t *pixels, int64_t n, int32_t c, int32_t h, int32_t w,
                    const uint8_t *table, uint8_t *out);

/* A convolution of the normalised image in fixed point, zero padding (a real zero, as the model):
 * a[i][oy][ox][o] = sum over valid (ky, kx, ch) of w[o][ky][kx][ch] * table[ch * 256 + pixel],
 * w OHWI int8 (g->c_out x g->kh x g->kw x g->c_in), rows [row0, row1) of n * ho. The caller bounds
 * max|table| * sum|w[o]| below 2^31 (checked at generation).
 * Output (exactly one of the two, the other NULL), as qat_binary_conv2d:
 *   acc  int32 [n][ho][wo][c_out], or
 *   bits packed signs [n][ho][wo][cw_out] of the threshold (T, dir) of each output channel, so that
 *        the int32 map is never stored (a microcontroller's RAM holds the bits only). */
int qat_input_conv(const qat_conv_geom *g, const uint8_t *pixels, const int32_t *table,
                   const int8_t *w, int32_t *acc, const int32_t *T, const int8_t *dir, uint64_t *bits,
                   int32_t row0, int32_t row1);

#endif
