/* Run-time choice between the AVX-512, AVX2 and scalar kernels (the only file that looks at the CPU).
 * qat_int_conv2d chooses between AVX2 and scalar only: the AVX-512 one reads int8 weights. */
#include "qat_internal.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define QAT_X86 1
#else
#define QAT_X86 0
#endif

int qat_cpu_has_avx2(void)
{
#if QAT_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
#else
    return 0;
#endif
}

int qat_cpu_has_avx512(void)
{
#if QAT_X86
    __builtin_cpu_init();
    return qat_cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vpopcntdq") && __builtin_cpu_supports("avx512vnni") &&
           __builtin_cpu_supports("avx512vbmi");
#else
    return 0;
#endif
}

int qat_binary_conv2d(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w, int32_t *acc,
                      const int32_t *T, const int8_t *dir, uint64_t *bits, int32_t row0, int32_t row1)
{
#if QAT_X86
    if (qat_cpu_has_avx512())
        return qat_binary_conv2d_avx512(g, x, w, acc, T, dir, bits, row0, row1);
    if (qat_cpu_has_avx2())
        return qat_binary_conv2d_avx2(g, x, w, acc, T, dir, bits, row0, row1);
#endif
    return qat_binary_conv2d_scalar(g, x, w, acc, T, dir, bits, row0, row1);
}

int qat_ternary_conv2d(const qat_conv_geom *g, const uint64_t *x, const uint64_t *w, int32_t *acc,
                       const int32_t *T, const int8_t *dir, uint64_t *bits, int32_t row0, int32_t row1)
{
#if QAT_X86
    if (qat_cpu_has_avx512())
        return qat_ternary_conv2d_avx512(g, x, w, acc, T, dir, bits, row0, row1);
    if (qat_cpu_has_avx2())
        return qat_ternary_conv2d_avx2(g, x, w, acc, T, dir, bits, row0, row1);
#endif
    return qat_ternary_conv2d_scalar(g, x, w, acc, T, dir, bits, row0, row1);
}

int qat_int_conv2d(const qat_conv_geom *g, const void *x, int32_t x_type, int32_t zx,
                   const int16_t *w, int16_t *scratch, int32_t *acc, const qat_requant *rq,
                   void *out, int32_t row0, int32_t row1)
{
#if QAT_X86
    if (qat_cpu_has_avx2())
        return qat_int_conv2d_avx2(g, x, x_type, zx, w, scratch, acc, rq, out, row0, row1);
#endif
    return qat_int_conv2d_scalar(g, x, x_type, zx, w, scratch, acc, rq, out, row0, row1);
}
