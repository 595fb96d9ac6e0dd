/* Standalone output stages: threshold -> packed signs, and fixed-point requantization, for
 * accumulators that went through an op between the layer and the stage (max pooling). */
#include "qat_internal.h"

int qat_threshold_pack(const int32_t *acc, int64_t pixels, int32_t c, const int32_t *T,
                       const int8_t *dir, uint64_t *bits)
{
    int64_t p, cw = qat_sign_words(c);
    int32_t ch;
    if (!acc || !T || !dir || !bits || pixels < 0 || c < 1 || pixels > QAT_MAX_ELEMS / c)
        return QAT_EARG;
    for (p = 0; p < pixels; p++) {
        const int32_t *a = acc + p * c;
        uint64_t *dst = bits + p * cw;
        for (int64_t j = 0; j < cw; j++)
            dst[j] = 0;
        for (ch = 0; ch < c; ch++) {
            int on = dir[ch] > 0 ? a[ch] >= T[ch] : a[ch] < T[ch];
            dst[ch / 64] |= (uint64_t)on << (ch % 64);
        }
    }
    return QAT_OK;
}

int qat_requantize(const int32_t *acc, int64_t pixels, int32_t c, const qat_requant *rq, void *out)
{
    int64_t p;
    int32_t ch;
    int rc;
    if (!acc || !out || pixels < 0 || c < 1 || pixels > QAT_MAX_ELEMS / c)
        return QAT_EARG;
    rc = qat_requant_check(rq, c);
    if (rc != QAT_OK)
        return rc;
    for (p = 0; p < pixels; p++)
        for (ch = 0; ch < c; ch++)
            qat_store_code(out, p * c + ch, rq->out_type, qat_requant1(acc[p * c + ch], rq, ch));
    return QAT_OK;
}
