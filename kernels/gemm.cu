/* gemm.cu - cuBLASLt GEMM for the prefill path: y[M,N] (+)= x[M,K] · W[N,K]ᵀ, fp32 accumulate.
 * CPU twin: cpu_linear.  Matmul descriptors, layouts and the heuristic's algorithm are built once
 * per (M, N, K, dtype, accumulate, scale mode, output row stride) and reused: a linear cache of
 * MAX_PLANS entries that evicts the least recently used plan when full (a long-lived stage sees one
 * M per prompt length).
 * In cuBLASLt's column-major view: D[N,M] = Wᵀ-op(A = W as [K,N]) · (B = x as [K,M]).
 * hmc_gemm_fp8: the same with e4m3 operands (Hopper's FP8 GEMM takes only this TN layout) and one
 * fp32 scale per weight row and per token row, applied by cuBLASLt's outer-vector scale mode
 * (cuBLAS >= 12.9, sm_90), or by an epilogue kernel after a unit-scale GEMM where that mode has no
 * algorithm. */
#include "common_cuda.h"
#include "ops_cuda.h"

#include <cublasLt.h>
#include <stdlib.h>
#include <string.h>

namespace {

struct plan {
    int M, N, K, accumulate, ldc;
    hmc_dtype dt;
    int mode; /* fp8: FP8_OUTER (cuBLASLt applies the row scales) or FP8_EPILOGUE (unit scales, then
                 scale_kernel); else 0 */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
    uint64_t used; /* g_tick at the last use (LRU eviction) */
};

enum { FP8_AUTO = 0, FP8_OUTER = 1, FP8_EPILOGUE = 2 };
int g_fp8_force;     /* hmc_gemm_fp8_set_mode */
int g_fp8_last_mode; /* the mode of the last fp8 GEMM (reports) */
int g_outer_none;    /* cuBLASLt had no outer-vector algorithm once: auto stops asking (each ask
                        is a heuristic query; cuBLASLt 13.1 on H100 has none) */

constexpr int MAX_PLANS = 256;
/* cuBLASLt's workspace: HM_GEMM_WS_MB, else what the process asked for (hmc_gemm_set_workspace_mb),
 * else 16 MiB; fixed at the first GEMM */
int g_ws_mb_default = 16;
size_t gemm_ws_bytes()
{
    static size_t v;
    if (!v) {
        const char *e = getenv("HM_GEMM_WS_MB");
        v = (size_t)(e && atoi(e) > 0 ? atoi(e) : g_ws_mb_default) << 20;
    }
    return v;
}
#define WORKSPACE gemm_ws_bytes()
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
    cudaDataType_t ab = p->dt == HMC_BF16 ? CUDA_R_16BF : p->dt == HMC_FP8 ? CUDA_R_8F_E4M3 : CUDA_R_32F;
    CKLT(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N; /* TN: the layout Hopper's FP8 GEMM needs */
    CKLT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CKLT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (p->mode == FP8_OUTER) {
        /* one fp32 scale per row of op(A) (a weight row) and per column of op(B) (a token): cuBLAS
         * >= 12.9 on sm_90 ("outer vector" scaling) */
        int32_t sm = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
        CKLT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &sm, sizeof sm));
        CKLT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &sm, sizeof sm));
    }
    CKLT(cublasLtMatrixLayoutCreate(&p->a, ab, p->K, p->N, p->K));
    CKLT(cublasLtMatrixLayoutCreate(&p->b, ab, p->K, p->M, p->K));
    CKLT(cublasLtMatrixLayoutCreate(&p->c, CUDA_R_32F, p->N, p->M, p->ldc));
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

/* The cached plan of (M, N, K, dt, accumulate, mode), built on first use (an error if cuBLASLt has
 * no algorithm for it: then nothing stays cached). */
int get_plan(int M, int N, int K, hmc_dtype dt, int accumulate, int mode, plan **out, int ldc = 0)
{
    if (!ldc) ldc = N;
    if (!g_lt) {
        CKLT(cublasLtCreate(&g_lt));
        CK(cudaMalloc(&g_ws, WORKSPACE));
    }
    plan *p = nullptr;
    for (int i = 0; i < g_nplans; i++) {
        plan *q = &g_plans[i];
        if (q->M == M && q->N == N && q->K == K && q->dt == dt && q->accumulate == accumulate && q->mode == mode &&
            q->ldc == ldc)
            p = q;
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
        p->M = M, p->N = N, p->K = K, p->dt = dt, p->accumulate = accumulate, p->mode = mode, p->ldc = ldc;
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
    *out = p;
    return HM_OK;
}

/* y[m, n] = (accumulate ? y : 0) + t[m, n] · xs[m] · ws[n]  (t may be y when not accumulating) */
__global__ void scale_kernel(const float *t, const float *__restrict__ xs, const float *__restrict__ ws, float *y,
                             int M, int N, int accumulate)
{
    const size_t n4 = (size_t)M * N / 4;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
        const size_t e = 4 * i;
        const int m = (int)(e / N), n = (int)(e % N); /* N % 4 == 0: the 4 values share a row */
        const float4 v = reinterpret_cast<const float4 *>(t)[i], w = *reinterpret_cast<const float4 *>(ws + n);
        const float a = xs[m];
        float4 r = make_float4(v.x * a * w.x, v.y * a * w.y, v.z * a * w.z, v.w * a * w.w);
        if (accumulate) {
            const float4 o = reinterpret_cast<const float4 *>(y)[i];
            r.x += o.x, r.y += o.y, r.z += o.z, r.w += o.w;
        }
        reinterpret_cast<float4 *>(y)[i] = r;
    }
}

} // namespace

extern "C" int hmc_gemm(const void *x, const void *W, hmc_dtype dt, float *y, int M, int N, int K, int accumulate,
                        cudaStream_t stream)
{
    return hmc_gemm_ld(x, W, dt, y, N, M, N, K, accumulate, stream);
}

extern "C" int hmc_gemm_ld(const void *x, const void *W, hmc_dtype dt, float *y, int ldy, int M, int N, int K,
                           int accumulate, cudaStream_t stream)
{
    if (dt != HMC_BF16 && dt != HMC_F32) return hm_err("%s:%d: gemm: dtype must be bf16 or f32", __FILE__, __LINE__);
    if (ldy < N) return hm_err("%s:%d: gemm: row stride %d below N %d", __FILE__, __LINE__, ldy, N);
    plan *p;
    CKH(get_plan(M, N, K, dt, accumulate, 0, &p, ldy));
    float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    CKLT(cublasLtMatmul(g_lt, p->op, &alpha, W, p->a, x, p->b, &beta, y, p->c, y, p->c, &p->algo, g_ws, WORKSPACE,
                        stream));
    return HM_OK;
}

extern "C" void hmc_gemm_set_workspace_mb(int mib)
{
    if (mib > 0 && mib <= 1024) g_ws_mb_default = mib;
}

extern "C" void hmc_gemm_fp8_set_mode(int mode) { g_fp8_force = mode == FP8_OUTER || mode == FP8_EPILOGUE ? mode : 0; }
extern "C" int hmc_gemm_fp8_last_mode(void) { return g_fp8_last_mode; }

extern "C" int hmc_gemm_fp8(const void *xq, const float *x_scale, const void *Wq, const float *w_scale, float *y, int M,
                            int N, int K, int accumulate, float *work, cudaStream_t stream)
{
    if (K % 16 || N % 4 || M <= 0 || ((uintptr_t)xq & 15) || ((uintptr_t)Wq & 15) || ((uintptr_t)y & 15) ||
        ((uintptr_t)w_scale & 15))
        return hm_err("%s:%d: gemm fp8: K %d must be a multiple of 16, N %d of 4, pointers 16-byte aligned", __FILE__,
                      __LINE__, K, N);
    /* outer-vector scales when cuBLASLt has an algorithm for them (and the call succeeds), else unit
     * scales and the epilogue kernel; once a shape had no outer-vector algorithm, auto mode stops
     * asking (a failed plan is not cached) */
    plan *p = nullptr;
    int mode = g_fp8_force;
    const bool ask = mode == FP8_OUTER || (mode == FP8_AUTO && !g_outer_none);
    if (ask && get_plan(M, N, K, HMC_FP8, accumulate, FP8_OUTER, &p) == HM_OK) {
        const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
        cublasStatus_t st = cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scale,
                                                           sizeof w_scale);
        if (st == CUBLAS_STATUS_SUCCESS)
            st = cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &x_scale, sizeof x_scale);
        if (st == CUBLAS_STATUS_SUCCESS)
            st = cublasLtMatmul(g_lt, p->op, &alpha, Wq, p->a, xq, p->b, &beta, y, p->c, y, p->c, &p->algo, g_ws,
                                WORKSPACE, stream);
        if (st == CUBLAS_STATUS_SUCCESS) {
            g_fp8_last_mode = FP8_OUTER;
            return HM_OK;
        }
        if (mode == FP8_OUTER) return hm_err("%s:%d: gemm fp8 (outer-vector scales): cublas status %d", __FILE__, __LINE__, (int)st);
        destroy_plan(p); /* not usable: the slot is free again (zeroed; found by no lookup) */
        p->used = 0;
    } else if (mode == FP8_OUTER) {
        return hm_err_ctx("%s:%d: gemm fp8: no outer-vector algorithm", __FILE__, __LINE__);
    } else if (ask) {
        g_outer_none = 1;
    }
    if (accumulate && !work) return hm_err("%s:%d: gemm fp8: accumulate needs a work buffer here", __FILE__, __LINE__);
    CKH(get_plan(M, N, K, HMC_FP8, 0, FP8_EPILOGUE, &p));
    const float alpha = 1.0f, beta = 0.0f;
    float *t = accumulate ? work : y;
    CKLT(cublasLtMatmul(g_lt, p->op, &alpha, Wq, p->a, xq, p->b, &beta, t, p->c, t, p->c, &p->algo, g_ws, WORKSPACE,
                        stream));
    const size_t n4 = (size_t)M * N / 4;
    scale_kernel<<<(unsigned)HM_MIN((n4 + 255) / 256, (size_t)4096), 256, 0, stream>>>(t, x_scale, w_scale, y, M, N,
                                                                                        accumulate);
    CK_LAUNCH();
    g_fp8_last_mode = FP8_EPILOGUE;
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
