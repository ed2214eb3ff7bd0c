/* gpu_gemm_cache.c - hmc_gemm (kernels/gemm.cu) keeps serving when a process sees more shapes
 * than its plan cache holds (a long-lived stage sees one M per prompt length): 600 distinct
 * (M, accumulate) shapes, then the first ones again after they were evicted, each checked
 * against the CPU twin cpu_linear.  Exit 0 when every product agrees. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_check.h"
#include "ops_cpu.h"
#include "ops_cuda.h"

static double check(int M, int N, int K, int acc, const float *x, const float *W, float *xd, float *Wd, float *yd)
{
    float *y0 = rvec((size_t)M * N, 1.0f), *got = hm_malloc(sizeof(float) * M * N);
    float *ref = hm_malloc(sizeof(float) * M * N);
    CU(cudaMemcpy(yd, y0, sizeof(float) * M * N, cudaMemcpyHostToDevice));
    OK(hmc_gemm(xd, Wd, HMC_F32, yd, M, N, K, acc, 0));
    CU(cudaMemcpy(got, yd, sizeof(float) * M * N, cudaMemcpyDeviceToHost));
    cpu_linear(x, W, NULL, ref, M, K, N);
    double num = 0, den = 0;
    for (int i = 0; i < M * N; i++) {
        double r = ref[i] + (acc ? y0[i] : 0.0f);
        num += (got[i] - r) * (got[i] - r), den += r * r;
    }
    free(y0), free(got), free(ref);
    return sqrt(num / (den > 0 ? den : 1));
}

int main(void)
{
    const int N = 48, K = 64, MMAX = 300;
    g_rng = 0x9e3779b97f4a7c15ull;
    float *x = rvec((size_t)MMAX * K, 1.0f), *W = rvec((size_t)N * K, 1.0f);
    float *xd, *Wd, *yd;
    CU(cudaMalloc((void **)&xd, sizeof(float) * MMAX * K));
    CU(cudaMalloc((void **)&Wd, sizeof(float) * N * K));
    CU(cudaMalloc((void **)&yd, sizeof(float) * MMAX * N));
    CU(cudaMemcpy(xd, x, sizeof(float) * MMAX * K, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(Wd, W, sizeof(float) * N * K, cudaMemcpyHostToDevice));
    double worst = 0;
    int n = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int M = 1; M <= MMAX; M++)
            for (int acc = 0; acc < 2; acc++) {
                if (pass == 1 && M > 40) continue; /* the first shapes again, long evicted */
                double e = check(M, N, K, acc, x, W, xd, Wd, yd);
                worst = e > worst ? e : worst;
                n++;
            }
    int ok = worst < 1e-5;
    printf("%s: gemm plan cache, %d products over %d shapes (cache holds fewer), worst rel L2 %.2e (bound 1e-5)\n",
           ok ? "PASS" : "FAIL", n, 2 * MMAX, worst);
    hmc_gemm_shutdown();
    return ok ? 0 : 1;
}
