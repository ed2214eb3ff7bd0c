/* adaln.c - adaLN-single helpers of the codec estimator (see adaln.h). */
#include "adaln.h"

#include <math.h>

void cpu_timestep_features(float t, int n, float *out)
{
    const int half = n / 2;
    /* torch: -math.log(10000) * arange(half) / half in fp32, exp, then (t * f) * 1000 */
    const float nl = (float)-log(10000.0);
    for (int j = 0; j < half; j++) {
        float f = expf(((float)j * nl) / (float)half);
        float a = (t * f) * 1000.0f;
        out[j] = cosf(a);
        out[half + j] = sinf(a);
    }
}

void cpu_modulate(const float *x, const float *shift, const float *scale, float *y, int M, int D)
{
    for (int m = 0; m < M; m++) {
        const float *xr = x + (long)m * D;
        float *yr = y + (long)m * D;
        for (int i = 0; i < D; i++) yr[i] = xr[i] * (1.0f + scale[i]) + shift[i];
    }
}

void cpu_gated_add(float *x, const float *gate, const float *h, int M, int D)
{
    for (int m = 0; m < M; m++) {
        float *xr = x + (long)m * D;
        const float *hr = h + (long)m * D;
        for (int i = 0; i < D; i++) xr[i] += gate[i] * hr[i];
    }
}
