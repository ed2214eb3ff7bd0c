/* adaln.h - the adaLN-single pieces of the codec's DiT estimator (MODEL.md §3): sinusoidal
 * timestep features, modulation y = x*(1+scale)+shift, and the gated residual x += g*h.
 * fp32, row-major; CPU twins of the future kernels/adaln.cu. */
#ifndef HM_ADALN_H
#define HM_ADALN_H

/* out[0..n/2) = cos(1000 t f_j), out[n/2..n) = sin(1000 t f_j), f_j = exp(-ln(10000) j/(n/2)),
 * evaluated in fp32 in the reference's order of operations (n even, 512 in the release). */
void cpu_timestep_features(float t, int n, float *out);
/* y[m, :] = x[m, :] * (1 + scale) + shift for every row m of [M, D] (in place allowed). */
void cpu_modulate(const float *x, const float *shift, const float *scale, float *y, int M, int D);
/* x[m, :] += gate * h[m, :] for every row m of [M, D]. */
void cpu_gated_add(float *x, const float *gate, const float *h, int M, int D);

#endif
