/* common_cuda.h - helpers shared by the CUDA kernels (internal to the kernels/ .cu files): checked CUDA
 * and cuBLASLt calls that report file:line through hm_err, bf16 load/store, warp reductions. */
#ifndef HM_COMMON_CUDA_H
#define HM_COMMON_CUDA_H

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <stdint.h>

extern "C" {
#include "hm.h"
}

/* Return HM_ERR from the enclosing function with "file:line: call: cuda error text". */
#define CK(call)                                                                                \
    do {                                                                                        \
        cudaError_t ck_e_ = (call);                                                             \
        if (ck_e_ != cudaSuccess)                                                               \
            return hm_err("%s:%d: %s: %s", __FILE__, __LINE__, #call, cudaGetErrorString(ck_e_)); \
    } while (0)
/* After a kernel launch: catches bad launch configurations (execution errors show up later). */
#define CK_LAUNCH() CK(cudaGetLastError())
#define CKLT(call)                                                                              \
    do {                                                                                        \
        cublasStatus_t ck_s_ = (call);                                                          \
        if (ck_s_ != CUBLAS_STATUS_SUCCESS)                                                     \
            return hm_err("%s:%d: %s: cublas status %d", __FILE__, __LINE__, #call, (int)ck_s_); \
    } while (0)
/* Propagate an HM_ERR from a callee, adding this location. */
#define CKH(call)                                                                               \
    do {                                                                                        \
        if ((call) != HM_OK) return hm_err_ctx("%s:%d", __FILE__, __LINE__);                   \
    } while (0)

/* An NVTX range over a C++ scope (a kernel group in Nsight Systems: the ranges mark the host
 * calls that enqueue the group, eager runs and graph captures alike). */
#include <nvtx3/nvToolsExt.h>
struct hmc_nvtx {
    explicit hmc_nvtx(const char *name) { nvtxRangePushA(name); }
    ~hmc_nvtx() { nvtxRangePop(); }
    hmc_nvtx(const hmc_nvtx &) = delete;
    hmc_nvtx &operator=(const hmc_nvtx &) = delete;
};

/* What a persistent-grid launcher needs to size its grid, cached per kernel instantiation (one
 * static hmc_occupancy in the launcher template): the kernel's opt-in to 200 KB of dynamic
 * shared memory (once), the device's SM count, and the resident blocks per SM for `smem` bytes
 * (recomputed only when smem changes).  HM_ERR if no block fits. */
struct hmc_occupancy {
    int attr_set = 0, occ = 0, sms = 0;
    size_t smem = (size_t)-1;
};
template <typename K>
static inline int hmc_occupancy_get(hmc_occupancy *c, K kern, int threads, size_t smem, const char *what)
{
    if (!c->attr_set) {
        CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024));
        c->attr_set = 1;
    }
    if (!c->sms) {
        int dev;
        CK(cudaGetDevice(&dev));
        CK(cudaDeviceGetAttribute(&c->sms, cudaDevAttrMultiProcessorCount, dev));
    }
    if (smem != c->smem) {
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&c->occ, kern, threads, smem));
        if (c->occ < 1) return hm_err("%s: no occupancy for %zu bytes of shared memory", what, smem);
        c->smem = smem;
    }
    return HM_OK;
}

__device__ __forceinline__ float hmc_ld(const float *p) { return *p; }
__device__ __forceinline__ float hmc_ld(const __nv_bfloat16 *p) { return __bfloat162float(*p); }
__device__ __forceinline__ void hmc_st(float *p, float v) { *p = v; }
__device__ __forceinline__ void hmc_st(__nv_bfloat16 *p, float v) { *p = __float2bfloat16(v); }
/* The rotary epilogues' cache append (gemv.cu, gemv_quant.cu): the pair (a, b) of head h (a k head
 * when H <= h < H + KVH, a v head above) of batch row bt at position pos, pair i, into its cache
 * (fp32 or bf16). */
__device__ __forceinline__ void hmc_kv_append(void *kc, void *vc, int cache_f32, int h, int H, int KVH, int max_seq,
                                              int hd, int bt, int pos, int i, float a, float b)
{
    const bool isk = h < H + KVH;
    const int kh = isk ? h - H : h - H - KVH;
    const size_t off = (((size_t)bt * KVH + kh) * max_seq + pos) * hd + 2 * i;
    void *base = isk ? kc : vc;
    if (cache_f32) {
        float *d = (float *)base + off;
        d[0] = a, d[1] = b;
    } else {
        __nv_bfloat16 *d = (__nv_bfloat16 *)base + off;
        d[0] = __float2bfloat16(a), d[1] = __float2bfloat16(b);
    }
}

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Σ a[j][e] · b[j][e]: a lane's share of a dot product over J 4-wide slices (a head's dims in
 * the decode attentions), summed in this order. */
template <int J>
__device__ __forceinline__ float dot_j4(const float (&a)[J][4], const float (&b)[J][4])
{
    float d = 0.0f;
#pragma unroll
    for (int j = 0; j < J; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) d += a[j][e] * b[j][e];
    return d;
}

/* One online-softmax step of a lane's output slices: acc = acc · corr + Σ_u p[u] · v[u] (in u
 * order). */
template <int J, int U>
__device__ __forceinline__ void fold_values(float (&acc)[J][4], float corr, const float (&p)[U], const float (&v)[U][J][4])
{
#pragma unroll
    for (int j = 0; j < J; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[j][e] *= corr;
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
        for (int j = 0; j < J; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[j][e] += p[u] * v[u][j][e];
}

/* Block-wide sum for blockDim.x a multiple of 32, at most 1024; every thread gets the result.
 * `red` is 32 floats of shared memory. */
__device__ __forceinline__ float block_sum(float v, float *red)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0.0f;
    return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float *red)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : -INFINITY;
    return warp_max(v);
}

/* Programmatic dependent launch (Hopper+): a kernel of the decode chain lets the next one be
 * scheduled at once (pdl_trigger), and waits for its predecessor's results only where it first
 * reads them (pdl_wait), so e.g. a GEMV streams its first weights while the previous op drains.
 * Both are no-ops when the kernel was launched without the attribute or below sm_90. */
__device__ __forceinline__ void pdl_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* The bulk-copy engine (sm_90): 1-D copies global -> shared memory completing on an mbarrier
 * (transaction bytes), no registers held while they are in flight.  Used by the weight-streaming
 * GEMV (gemv.cu variant 7) and the decode attention's key tiles (attention.cu). */
__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(uint64_t *bar, int count)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count));
#endif
}
/* n stage barriers of one arrival each, made visible to the copy engine (one thread) */
__device__ __forceinline__ void mbar_init_stages(uint64_t *bars, int n)
{
    for (int i = 0; i < n; i++) mbar_init(&bars[i], 1);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_expect(uint64_t *bar, uint32_t bytes)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
#endif
}
__device__ __forceinline__ void bulk_load(void *dst, const void *src, uint32_t bytes, uint64_t *bar)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                     smem_u32(dst)),
                 "l"(src), "r"(bytes), "r"(smem_u32(bar))
                 : "memory");
#endif
}
/* The L2 policy of a decode GEMV's weight loads (`.L2::cache_hint` operand): evict first, so that
 * what L2 holds besides the weights (the KV caches, activations, embeddings) outlives the ~10 GB
 * a frame streams past it, or normal (the same load instructions either way). */
__device__ __forceinline__ uint64_t hmc_l2_weight_policy(int evict_first)
{
    uint64_t pol = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if (evict_first) asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
    else asm volatile("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;" : "=l"(pol));
#endif
    return pol;
}
/* bulk_load with an L2 hint that the bytes go first (weights: read once a frame) */
__device__ __forceinline__ void bulk_load_evict_first(void *dst, const void *src, uint32_t bytes, uint64_t *bar)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    uint64_t pol;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;" ::"r"(
                     smem_u32(dst)),
                 "l"(src), "r"(bytes), "r"(smem_u32(bar)), "l"(pol)
                 : "memory");
#endif
}
__device__ __forceinline__ void mbar_wait(uint64_t *bar, uint32_t parity)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("{\n"
                 ".reg .pred p;\n"
                 "WAIT_%=:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
                 "@!p bra WAIT_%=;\n"
                 "}\n" ::"r"(smem_u32(bar)),
                 "r"(parity)
                 : "memory");
#endif
}

/* Prints per-block phase stamps (kernels' %globaltimer diagnostics): per phase the earliest,
 * median and latest block in us after the earliest stamp `ref` (device.cu). */
void hmc_stamp_summary(FILE *f, const char *who, const unsigned long long *h, int nblk, int nst, int ref,
                       const char *const *names);

/* The GEMV kernels' phase stamps: a device array [blocks][4] of entry, after the wait, activations
 * staged and end (gemv.cu, gemv_quant.cu), summarised after the device is idle. */
template <typename S> void hmc_gemv_phase_report(FILE *f, const char *who, const S &sym)
{
    constexpr int n = (int)(sizeof(S) / sizeof(unsigned long long));
    static unsigned long long h[n];
    if (cudaDeviceSynchronize() != cudaSuccess || cudaMemcpyFromSymbol(h, sym, sizeof h) != cudaSuccess) {
        fprintf(f, "%s stamps: unavailable\n", who);
        return;
    }
    static const char *const name[4] = {"entry", "after wait", "x staged", "end"};
    hmc_stamp_summary(f, who, h, n / 4, 4, 0, name);
}

/* 1 unless HM_NO_PDL is set (for A/B timing). */
int hmc_pdl_enabled(void);

/* Launch `kern` with the programmatic-stream-serialization attribute (see pdl_wait). */
template <typename... KArgs, typename... Args>
static inline int launch_pdl(void (*kern)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                             Args... args)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = s;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at, cfg.numAttrs = hmc_pdl_enabled() ? 1 : 0;
    CK(cudaLaunchKernelEx(&cfg, kern, static_cast<KArgs>(args)...));
    return HM_OK;
}

/* launch_pdl with thread-block clusters of clx blocks along x (gridDim.x a multiple of clx) */
template <typename... KArgs, typename... Args>
static inline int launch_pdl_cluster(void (*kern)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                                     int clx, Args... args)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = s;
    cudaLaunchAttribute at[2];
    at[0].id = cudaLaunchAttributeClusterDimension;
    at[0].val.clusterDim.x = (unsigned)clx, at[0].val.clusterDim.y = 1, at[0].val.clusterDim.z = 1;
    at[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[1].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at, cfg.numAttrs = hmc_pdl_enabled() ? 2 : 1;
    CK(cudaLaunchKernelEx(&cfg, kern, static_cast<KArgs>(args)...));
    return HM_OK;
}

#endif
