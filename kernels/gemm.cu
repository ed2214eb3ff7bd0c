/* gemm.cu - cuBLASLt GEMM for the prefill path: y[M,N] (+)= x[M,K] · W[N,K]ᵀ, fp32 accumulate.
 * CPU twin: cpu_linear.  Matmul descriptors, layouts and the heuristic's algorithm are built once
 * per (M, N, K, dtype, accumulate) and reused (a small linear cache: prefill sees a handful of
 * shapes).  In cuBLASLt's column-major view: D[N,M] = Wᵀ-op(A = W as [K,N]) · (B = x as [K,M]). */
#include "common_cuda.h"
#include "ops_cuda.h"

#include <cublasLt.h>
#include <string.h>

namespace {

struct plan {
    int M, N, K, accumulate;
    hmc_dtype dt;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
};

constexpr int MAX_PLANS = 64;
constexpr size_t WORKSPACE = 32u << 20;
cublasLtHandle_t g_lt;
void *g_ws;
plan g_plans[MAX_PLANS];
int g_nplans;

int make_plan(plan *p)
{
    cudaDataType_t ab = p->dt == HMC_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    CKLT(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    CKLT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CKLT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    CKLT(cublasLtMatrixLayoutCreate(&p->a, ab, p->K, p->N, p->K));
    CKLT(cublasLtMatrixLayoutCreate(&p->b, ab, p->K, p->M, p->K));
    CKLT(cublasLtMatrixLayoutCreate(&p->c, CUDA_R_32F, p->N, p->M, p->N));
    cublasLtMatmulPreference_t pref;
    CKLT(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = WORKSPACE;
    CKLT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    cublasLtMatmulHeuristicResult_t res;
    int n = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(g_lt, p->op, p->a, p->b, p->c, p->c, pref, 1, &res, &n);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || n == 0)
        return hm_err("%s:%d: cuBLASLt has no algorithm for M=%d N=%d K=%d (status %d)", __FILE__, __LINE__,
                      p->M, p->N, p->K, (int)st);
    p->algo = res.algo;
    return HM_OK;
}

} // namespace

extern "C" int hmc_gemm(const void *x, const void *W, hmc_dtype dt, float *y, int M, int N, int K, int accumulate,
                        cudaStream_t stream)
{
    if (dt != HMC_BF16 && dt != HMC_F32) return hm_err("%s:%d: gemm: dtype must be bf16 or f32", __FILE__, __LINE__);
    if (!g_lt) {
        CKLT(cublasLtCreate(&g_lt));
        CK(cudaMalloc(&g_ws, WORKSPACE));
    }
    plan *p = nullptr;
    for (int i = 0; i < g_nplans; i++) {
        plan *q = &g_plans[i];
        if (q->M == M && q->N == N && q->K == K && q->dt == dt && q->accumulate == accumulate) p = q;
    }
    if (!p) {
        if (g_nplans == MAX_PLANS) return hm_err("%s:%d: gemm: plan cache full", __FILE__, __LINE__);
        p = &g_plans[g_nplans];
        memset(p, 0, sizeof *p);
        p->M = M, p->N = N, p->K = K, p->dt = dt, p->accumulate = accumulate;
        CKH(make_plan(p));
        g_nplans++;
    }
    float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    CKLT(cublasLtMatmul(g_lt, p->op, &alpha, W, p->a, x, p->b, &beta, y, p->c, y, p->c, &p->algo, g_ws, WORKSPACE,
                        stream));
    return HM_OK;
}

extern "C" void hmc_gemm_shutdown(void)
{
    for (int i = 0; i < g_nplans; i++) {
        cublasLtMatrixLayoutDestroy(g_plans[i].a);
        cublasLtMatrixLayoutDestroy(g_plans[i].b);
        cublasLtMatrixLayoutDestroy(g_plans[i].c);
        cublasLtMatmulDescDestroy(g_plans[i].op);
    }
    g_nplans = 0;
    if (g_ws) cudaFree(g_ws);
    if (g_lt) cublasLtDestroy(g_lt);
    g_ws = nullptr;
    g_lt = nullptr;
}
