/* gpu_gemm_algos.c - how far cuBLASLt's first heuristic pick is from the fastest algorithm it
 * offers, on the flow-matching estimator's GEMMs (B = 2 x 744 tokens at the released widths, the
 * layout of hmc_gemm: TN, bf16 x bf16 -> fp32, fp32 accumulation).  Per shape: the first pick, the
 * fastest of up to 16 candidates (the same workspace as the stage: HM_GEMM_WS_MB, default 4 MiB),
 * their times and TFLOP/s, and the largest difference between the two outputs relative to the
 * output's largest magnitude.  A measurement, no check: exit 0 unless CUDA fails.
 *   gpu_gemm_algos [M]    M tokens (default 1488) */
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "hm.h"
#include "ops_cuda.h"

#include "gpu_check.h"

#define LT(x)                                                                                                  \
    do {                                                                                                       \
        cublasStatus_t s_ = (x);                                                                               \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                     \
            fprintf(stderr, "%s:%d: cuBLASLt status %d\n", __FILE__, __LINE__, (int)s_);                       \
            exit(1);                                                                                           \
        }                                                                                                      \
    } while (0)

static float time_algo(cublasLtHandle_t lt, cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t a,
                       cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c, const cublasLtMatmulAlgo_t *algo,
                       const void *W, const void *x, float *y, void *ws, size_t wsb, int reps)
{
    const float alpha = 1.0f, beta = 0.0f;
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    for (int i = 0; i < 3; i++)
        if (cublasLtMatmul(lt, op, &alpha, W, a, x, b, &beta, y, c, y, c, algo, ws, wsb, 0) != CUBLAS_STATUS_SUCCESS)
            return -1.0f;
    CU(cudaEventRecord(e0, 0));
    for (int i = 0; i < reps; i++) LT(cublasLtMatmul(lt, op, &alpha, W, a, x, b, &beta, y, c, y, c, algo, ws, wsb, 0));
    CU(cudaEventRecord(e1, 0));
    CU(cudaEventSynchronize(e1));
    float ms;
    CU(cudaEventElapsedTime(&ms, e0, e1));
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    return ms / reps;
}

int main(int argc, char **argv)
{
    const int M = argc > 1 ? atoi(argv[1]) : 1488;
    const char *e = getenv("HM_GEMM_WS_MB");
    const size_t wsb = (size_t)(e && atoi(e) > 0 ? atoi(e) : 4) << 20;
    /* (N, K, calls a window): stack 1 (24 blocks of 1536: q|k|v, o, gate|up, down), stack 2 (6 of
     * 3072), each block once per estimator call, 10 calls a window */
    static const int shapes[][3] = {{4608, 1536, 240}, {1536, 1536, 240}, {8192, 1536, 240}, {1536, 4096, 240},
                                    {9216, 3072, 60},  {3072, 3072, 60},  {16384, 3072, 60}, {3072, 8192, 60}};
    const int ns = (int)(sizeof shapes / sizeof shapes[0]);
    struct cudaDeviceProp p;
    CU(cudaGetDeviceProperties(&p, 0));
    printf("device %s, %d SMs; M = %d tokens, workspace %zu MiB\n", p.name, p.multiProcessorCount, M, wsb >> 20);
    cublasLtHandle_t lt;
    LT(cublasLtCreate(&lt));
    void *ws, *W, *x;
    float *y0, *y1;
    const size_t maxNK = (size_t)16384 * 8192, maxMK = (size_t)M * 8192, maxMN = (size_t)M * 16384;
    CU(cudaMalloc(&ws, wsb));
    CU(cudaMalloc(&W, maxNK * 2));
    CU(cudaMalloc(&x, maxMK * 2));
    CU(cudaMalloc((void **)&y0, maxMN * 4));
    CU(cudaMalloc((void **)&y1, maxMN * 4));
    OK(hmc_fill_random(W, HMC_BF16, maxNK, 1, 0.02f, 0));
    OK(hmc_fill_random(x, HMC_BF16, maxMK, 2, 1.0f, 0));
    float *h0 = hm_malloc(maxMN * 4), *h1 = hm_malloc(maxMN * 4);
    double t_first = 0, t_best = 0;
    printf("| N | K | candidates | first pick ms | TFLOP/s | fastest | ms | TFLOP/s | gain | max diff / max |y| |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|\n");
    for (int s = 0; s < ns; s++) {
        const int N = shapes[s][0], K = shapes[s][1];
        cublasLtMatmulDesc_t op;
        cublasLtMatrixLayout_t a, b, c;
        const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
        LT(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
        LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
        LT(cublasLtMatrixLayoutCreate(&a, CUDA_R_16BF, K, N, K));
        LT(cublasLtMatrixLayoutCreate(&b, CUDA_R_16BF, K, M, K));
        LT(cublasLtMatrixLayoutCreate(&c, CUDA_R_32F, N, M, N));
        cublasLtMatmulPreference_t pref;
        LT(cublasLtMatmulPreferenceCreate(&pref));
        LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb));
        cublasLtMatmulHeuristicResult_t res[16];
        int n = 0;
        LT(cublasLtMatmulAlgoGetHeuristic(lt, op, a, b, c, c, pref, 16, res, &n));
        cublasLtMatmulPreferenceDestroy(pref);
        const double fl = 2.0 * M * N * K;
        float tf = time_algo(lt, op, a, b, c, &res[0].algo, W, x, y0, ws, wsb, 50), tb_ = tf;
        int best = 0;
        for (int i = 1; i < n; i++) {
            const float t = time_algo(lt, op, a, b, c, &res[i].algo, W, x, y1, ws, wsb, 50);
            if (t > 0 && t < tb_) tb_ = t, best = i;
        }
        /* the outputs of the two picks */
        time_algo(lt, op, a, b, c, &res[0].algo, W, x, y0, ws, wsb, 1);
        time_algo(lt, op, a, b, c, &res[best].algo, W, x, y1, ws, wsb, 1);
        CU(cudaMemcpy(h0, y0, (size_t)M * N * 4, cudaMemcpyDeviceToHost));
        CU(cudaMemcpy(h1, y1, (size_t)M * N * 4, cudaMemcpyDeviceToHost));
        double md = 0, my = 0;
        for (size_t i = 0; i < (size_t)M * N; i++) md = fmax(md, fabs(h0[i] - h1[i])), my = fmax(my, fabs(h0[i]));
        printf("| %d | %d | %d | %.4f | %.0f | #%d | %.4f | %.0f | %.1f%% | %.2g |\n", N, K, n, tf, fl / tf / 1e9, best, tb_,
               fl / tb_ / 1e9, 100.0 * (tf - tb_) / tf, md / (my > 0 ? my : 1));
        t_first += tf * shapes[s][2], t_best += tb_ * shapes[s][2];
        cublasLtMatrixLayoutDestroy(a), cublasLtMatrixLayoutDestroy(b), cublasLtMatrixLayoutDestroy(c);
        cublasLtMatmulDescDestroy(op);
    }
    printf("the transformer blocks' GEMMs of one window (10 estimator calls): first picks %.1f ms, fastest %.1f ms\n",
           t_first, t_best);
    free(h0), free(h1);
    cudaFree(ws), cudaFree(W), cudaFree(x), cudaFree(y0), cudaFree(y1);
    cublasLtDestroy(lt);
    return 0;
}
