/* crossfade.c - linear segment cross-fade in float64 (see crossfade.h). */
#include "crossfade.h"

/* The reference rounds each float64 product and the sum separately (torch multiplies, then adds);
 * so does the CUDA twin (kernels/crossfade_cuda.cu: __dmul_rn, __dadd_rn).  The default build targets
 * plain x86-64, which has no FMA, but a -march with FMA would let the compiler contract
 * a * b + c * d into one fma and change the last bit: forbid it here. */
#if defined(__clang__)
#pragma clang fp contract(off)
#define XF_NO_CONTRACT
#elif defined(__GNUC__)
#define XF_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define XF_NO_CONTRACT
#endif

double crossfade_ramp(size_t i, size_t n)
{
    if (n < 2) return 0.0;
    if (i == n - 1) return 1.0;
    double step = 1.0 / (double)(n - 1);
    return (double)i * step;
}

XF_NO_CONTRACT void cpu_crossfade(const float *prev, const float *next, size_t n, float *out)
{
    for (size_t i = 0; i < n; i++) {
        double r = crossfade_ramp(i, n);
        out[i] = (float)((double)prev[i] * (1.0 - r) + (double)next[i] * r);
    }
}
