#include "qat_scores.h"

/* floor((v + 2^(s-1)) / 2^s) without shifting a negative number (implementation-defined in C99) */
static int64_t round_shift(int64_t v, int s)
{
    if (s == 0)
        return v;
    v += (int64_t)1 << (s - 1);
    return v >= 0 ? v >> s : -((-(v + 1)) >> s) - 1;
}

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
        scores[k] = (int32_t)(round_shift((int64_t)acc[k] * m0[k], s[k]) + bias[k]);
        if (scores[k] > scores[best])
            best = k;
    }
    return best;
}
