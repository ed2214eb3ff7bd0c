/* crossfade.h - the codec's linear cross-fade between consecutive audio segments (MODEL.md §3):
 * out = prev * (1 - r) + next * r, r = linspace(0, 1, n) in float64 as numpy makes it, the
 * products and sum in float64 (the reference multiplies fp32 audio by a float64 window). */
#ifndef HM_CROSSFADE_H
#define HM_CROSSFADE_H

#include <stddef.h>

/* numpy.linspace(0, 1, n)[i]: i * (1/(n-1)), the last element exactly 1 (n >= 2). */
double crossfade_ramp(size_t i, size_t n);
/* out[i] = (float)(prev[i] * (1 - r_i) + next[i] * r_i), i < n.  out may alias prev or next. */
void cpu_crossfade(const float *prev, const float *next, size_t n, float *out);

#endif
