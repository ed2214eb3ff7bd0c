/* crossfade.c - linear segment cross-fade in float64 (see crossfade.h). */
#include "crossfade.h"

double crossfade_ramp(size_t i, size_t n)
{
    if (n < 2) return 0.0;
    if (i == n - 1) return 1.0;
    double step = 1.0 / (double)(n - 1);
    return (double)i * step;
}

void cpu_crossfade(const float *prev, const float *next, size_t n, float *out)
{
    for (size_t i = 0; i < n; i++) {
        double r = crossfade_ramp(i, n);
        out[i] = (float)((double)prev[i] * (1.0 - r) + (double)next[i] * r);
    }
}
