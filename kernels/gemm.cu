/* gemm.cu - cuBLASLt GEMM for the prefill path: y[M,N] (+)= x[M,K] · W[N,K]ᵀ, fp32 accumulate.
 * CPU twin: cpu_linear.  Matmul descriptors, layouts and the heuristic's algorithm are built once
 * per (M, N, K, dtype, accumulate) and reused: a linear cache of MAX_PLANS entries that evicts
 * the least recently used plan when full (a long-lived stage sees one M per prompt length).  In cuBLASLt's column-major view: D[N,M] = Wᵀ-op(A = W as [K,N]) · (B = x as [K,M]). */
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
    uint64_t used; /* g_tick at the last use (LRU eviction) */
};

constexpr int MAX_PLANS = 256;
constexpr size_t WORKSPACE = 32u << 20;
cublasLtHandle_t g_lt;
void *g_ws;
plan g_plans[MAX_PLANS];
int g_nplans;
uint64_t g_tick;

void destroy_plan(plan *p)
{
    if (p->a) cublasLtMatrixLayoutDestroy(p->a);
    if (p->b) cublasLtMatrixLayoutDestroy(p->b);
    if (p->c) cublasLtMatrixLayoutDestroy(p->c);
    if (p->op) cublasLtMatmulDescDestroy(p->op);
    memset(p, 0, sizeof *p);
}

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
        if (g_nplans < MAX_PLANS) {
            p = &g_plans[g_nplans++];
        } else { /* full: reuse the least recently used slot (its descriptors are host objects that
                    no enqueued or captured work refers to once cublasLtMatmul has returned) */
            p = &g_plans[0];
            for (int i = 1; i < MAX_PLANS; i++)
                if (g_plans[i].used < p->used) p = &g_plans[i];
            destroy_plan(p);
        }
        memset(p, 0, sizeof *p);
        p->M = M, p->N = N, p->K = K, p->dt = dt, p->accumulate = accumulate;
        if (make_plan(p) != HM_OK) {
            /* leave no half-built plan behind: free what was made, swap the last plan into this slot */
            if (p->op) cublasLtMatmulDescDestroy(p->op);
            if (p->a) cublasLtMatrixLayoutDestroy(p->a);
            if (p->b) cublasLtMatrixLayoutDestroy(p->b);
            if (p->c) cublasLtMatrixLayoutDestroy(p->c);
            plan *last = &g_plans[--g_nplans];
            if (p != last) *p = *last;
            memset(last, 0, sizeof *last);
            return hm_err_ctx("%s:%d", __FILE__, __LINE__);
        }
    }
    p->used = ++g_tick;
    float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    CKLT(cublasLtMatmul(g_lt, p->op, &alpha, W, p->a, x, p->b, &beta, y, p->c, y, p->c, &p->algo, g_ws, WORKSPACE,
                        stream));
    return HM_OK;
}

extern "C" void hmc_gemm_shutdown(void)
{
    for (int i = 0; i < g_nplans; i++) destroy_plan(&g_plans[i]);
    g_nplans = 0;
    if (g_ws) cudaFree(g_ws);
    if (g_lt) cublasLtDestroy(g_lt);
    g_ws = nullptr;
    g_lt = nullptr;
}
