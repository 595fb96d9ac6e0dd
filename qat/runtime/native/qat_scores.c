#include "qat_scores.h"

#include "qat_internal.h"

int qat_scores(const int32_t *acc, int32_t c, const int32_t *m0, const int8_t *s, const int32_t *bias,
               int32_t *scores)
{
    int32_t k, best = 0;
    if (!acc || !m0 || !s || !bias || !scores || c <= 0)
        return QAT_EARG;
    for (k = 0; k < c; k++)
        if (s[k] < 0 || s[k] > 62)
            return QAT_EARG;
    for (k = 0; k < c; k++) {
        int64_t v = (int64_t)acc[k] * m0[k];
        if (s[k] > 0)
            v += (int64_t)1 << (s[k] - 1);
        scores[k] = (int32_t)(qat_floor_shift(v, s[k]) + bias[k]);
        if (scores[k] > scores[best])
            best = k;
    }
    return best;
}
