/* softmax.h - row softmax in place (fp32), the attention's score normalisation.  The AVX2 path
 * uses a degree-6 polynomial exp (Cephes' expf, ~1 ulp); the portable path uses expf. */
#ifndef HM_SOFTMAX_H
#define HM_SOFTMAX_H

/* x[r, :] = exp(x[r, :] - max) / sum for each of `rows` rows of n values. */
void cpu_softmax_rows(float *x, int rows, int n);

#endif
