/* conv1d.h - 1-D convolutions on the CPU for the codec: the vocoder's channel-major convs and
 * transposed convs (layout [C, T] per batch row, as PyTorch's Conv1d), the estimator's
 * time-major projection conv (layout [T, C]), and PReLU.  fp32; GEMMs go to OpenBLAS.
 *
 * Weights are passed in "tap-major" layout [k, Cout, Cin] (conv1d_to_tap_major converts the
 * checkpoint's [Cout, Cin, k]); a transposed conv takes the checkpoint's [Cin, Cout, k] as is. */
#ifndef HM_CONV1D_H
#define HM_CONV1D_H

#include <stddef.h>

/* dst[j][o][i] = src[o][i][j]: PyTorch Conv1d weight [Cout, Cin, k] -> tap-major [k, Cout, Cin]. */
void conv1d_to_tap_major(const float *src, int cout, int cin, int k, float *dst);

/* Channel-major conv: x [Cin, T] -> y [Cout, Tout], Tout = T + pad_l + pad_r - dil*(k-1) (> 0).
 * Zero padding: pad_l on the left, pad_r on the right (a causal conv is pad_l = dil*(k-1),
 * pad_r = 0; PyTorch's symmetric padding p is pad_l = pad_r = p).  w tap-major [k, Cout, Cin],
 * bias [Cout] or NULL.  y must not alias x. */
void cpu_conv1d(const float *x, int cin, int T, const float *w, const float *bias, int cout, int k,
                int dil, int pad_l, int pad_r, float *y);

/* Channel-major transposed conv (stride s, kernel k, no padding) keeping the first `n_out`
 * outputs of the full (T-1)*s + k (the reference's causal variant keeps T*s, i.e. drops the last
 * `s` outputs when k = 2s).  x [Cin, T], w [Cin, Cout, k] (PyTorch layout), y [Cout, n_out]. */
void cpu_conv_transpose1d(const float *x, int cin, int T, const float *w, const float *bias, int cout,
                          int k, int s, size_t n_out, float *y);

/* Time-major conv with symmetric zero padding k/2 (odd k): x [T, Cin] -> y [T, Cout],
 * y[t] = bias + sum_j W_j x[t + j - k/2].  w tap-major [k, Cout, Cin].  y must not alias x. */
void cpu_conv1d_tmajor(const float *x, int T, int cin, const float *w, const float *bias, int cout,
                       int k, float *y);

/* PReLU with one learned slope: x = x >= 0 ? x : a*x, in place. */
void cpu_prelu(float *x, size_t n, float a);

#endif
