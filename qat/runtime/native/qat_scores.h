/* Fixed-point logits of a standalone program: the last layer's int32 accumulators through the
 * per-class affine map the export keeps in float (dequantize, and BatchNorm where the model has
 * one), folded at generation (qat/export/c/fold.py) into a 31-bit multiplier, a shift and a bias:
 *
 *   scores[k] = floor((acc[k] * m0[k] + 2^(s[k]-1)) / 2^s[k]) + bias[k]     (int64 product)
 *
 * so that scores[k] / 2^F is the float logit to within 2^-F (F: QAT_MODEL_SCORE_FRAC_BITS in the
 * generated model.h). C99, integers only. */
#ifndef QAT_SCORES_H
#define QAT_SCORES_H

#include <stdint.h>

#include "qat_kernels.h"

/* Writes scores[0 .. c) and returns the index of the first largest score (the predicted class),
 * or QAT_EARG when an argument is out of range (s[k] outside [0, 62]). */
int qat_scores(const int32_t *acc, int32_t c, const int32_t *m0, const int8_t *s, const int32_t *bias,
               int32_t *scores);

#endif
