/* gemv.cu - weight-streaming matrix-vector product for the decode path (1-4 activation rows),
 * bf16 / fp32 / fp8-e4m3 (per-row scale) weights, and the fp8 quantiser.
 * CPU twin: cpu_linear (+ cpu_rmsnorm / cpu_silu_mul for the fused transforms).
 *
 * Decode is bound by reading the weights once, so warps stream weight rows with 16-byte loads,
 * several per row in flight, the next step's loads issued before the current ones are used.
 * The activations are staged once per block in shared memory as fp32; RMSNorm is fused there
 * (x·scale staged, 1/rms applied to the dot products), SwiGLU either there (gate|up input) or in
 * the epilogue (interleaved w1/w3 rows -> silu(gate)·up output).  The first weight loads are
 * issued before waiting for the previous kernel (programmatic dependent launch) and staging.
 * Kernel shapes (loads per step, warps per row pair, double buffering, or the bulk-copy engine)
 * are variants; the auto choice per shape is the fastest measured (docs/PERF.md).
 * Weight loads carry an L2 policy operand, evict first (hmc_gemv_evict_first; HM_GEMV_EVICT_FIRST=0
 * gives evict-normal): a frame streams ~10 GB of weights that are read once past what the next
 * kernels do read again from L2 (KV caches, activations, residual stream).  Measured: -8.5% a bf16
 * frame on an H100, -10.5% on an H200; an evict-normal operand alone gives about half of that, so
 * the cause is not only what stays in L2 (docs/PERF.md).
 * The qkv GEMV can apply the rotary embedding in its epilogue and append k, v to the cache
 * (hmc_gemv_args.rope): the rows of a warp are the interleaved pair (2i, 2i+1) a rotation needs.
 * Knobs for keeping DRAM busy across kernel boundaries (a frame is ~280 short kernels), all
 * measured in whole frames by gpu_lm frames: the double-buffered variants may issue their second
 * step's loads before the wait too (early; kept on, ~0.1%); before waiting a block may ask L2 for
 * the rows of its next round (self-prefetch), and blocks out of rows may prefetch a share of the
 * next op's weights into L2 (hmc_gemv_args.pf): both faster for a GEMV alone, slower in a frame
 * on an H100, so off.  Also A/B knobs, off: HM_GEMV_PRELOAD=0 (no loads before the wait: +1.6% a
 * frame), HM_GEMV_KVPF=n (the qkv GEMV asks L2 for the layer's newest n cached keys and values
 * before its wait: <= 0.6% either way); hmc_gemv_set_stamp records each block's phases.
 * Plain activation rows (o, w2, the heads without a norm) are staged by cp.async, every piece in
 * flight at once and no registers held: H100, -0.6% a bf16 frame at 200 positions, -0.9% at 900
 * (HM_GEMV_STAGE_ASYNC=0: loads through registers, 4 a thread in flight).  Where two blocks'
 * staged rows do not fit in an SM's shared memory (4 rows of K = 8192: the depth decoder's first
 * step), one block of twice the warps runs instead (launch_wide; HM_GEMV_WIDE=0: off).
 * Accumulating launches of 1 or 2 rows (o, w2) read the residual they add to right after the wait,
 * beside the staging, instead of in the epilogue (kernel parameter YE; HM_GEMV_Y_EARLY=0: off):
 * -0.4% a bf16 frame at 200 positions on an H100, -0.8% on an H200 (docs/PERF.md). */
#include "common_cuda.h"
#include "ops_cuda.h"

#include <cuda_fp8.h>

namespace {

constexpr int WARPS = 8;          /* warps per block */
int g_sms;                        /* multiprocessors of the current device */
constexpr int RPW = 2;            /* weight rows per warp */

template <typename WT> struct wtraits;
template <> struct wtraits<__nv_bfloat16> { static constexpr int E = 8; };
template <> struct wtraits<float> { static constexpr int E = 4; };
template <> struct wtraits<__nv_fp8_e4m3> { static constexpr int E = 16; };

/* decode the E weights of one 16-byte load to fp32 */
__device__ __forceinline__ void wdec(const uint4 w, float *o, const __nv_bfloat16 *)
{
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&w);
#pragma unroll
    for (int j = 0; j < 4; j++) {
        float2 f = __bfloat1622float2(h[j]);
        o[2 * j] = f.x, o[2 * j + 1] = f.y;
    }
}
__device__ __forceinline__ void wdec(const uint4 w, float *o, const float *)
{
    o[0] = __uint_as_float(w.x), o[1] = __uint_as_float(w.y), o[2] = __uint_as_float(w.z), o[3] = __uint_as_float(w.w);
}
__device__ __forceinline__ void wdec(const uint4 w, float *o, const __nv_fp8_e4m3 *)
{
    const __nv_fp8x2_storage_t *p = reinterpret_cast<const __nv_fp8x2_storage_t *>(&w);
#pragma unroll
    for (int j = 0; j < 8; j++) {
        __half2_raw hr = __nv_cvt_fp8x2_to_halfraw2(p[j], __NV_E4M3);
        float2 f = __half22float2(*reinterpret_cast<__half2 *>(&hr));
        o[2 * j] = f.x, o[2 * j + 1] = f.y;
    }
}

/* weights are read once: stream them past L1, with an L2 policy (hmc_l2_weight_policy) */
__device__ __forceinline__ uint4 ldw(const uint4 *p, uint64_t pol)
{
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0,%1,%2,%3}, [%4], %5;"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p), "l"(pol));
    return v;
}

/* L2 prefetch of [p, p + bytes) by the bulk-copy engine (no registers, nothing to wait for);
 * p and bytes multiples of 16. */
__device__ __forceinline__ void l2_prefetch(const void *p, uint32_t bytes)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

/* A share of [p, p + bytes) into L2: 4 KB pieces dealt round-robin over the threads of `nblk`
 * blocks (this one is `blk`). */
__device__ __forceinline__ void l2_prefetch_share(const char *p, size_t bytes, int blk, int nblk)
{
    constexpr size_t PIECE = 4096;
    const size_t n = (bytes + PIECE - 1) / PIECE;
    for (size_t c = (size_t)blk + (size_t)threadIdx.x * nblk; c < n; c += (size_t)nblk * blockDim.x) {
        const size_t len = HM_MIN(PIECE, bytes - c * PIECE) & ~(size_t)15;
        if (len) l2_prefetch(p + c * PIECE, (uint32_t)len);
    }
}


/* Rotary epilogue of the qkv GEMV (see hmc_gemv_args.rope); freqs == nullptr: off. */
struct rope_ep {
    const float *freqs;
    const int *pos_dev;
    int pos_add, T, H, KVH, hd, max_seq, cache_f32;
    void *kc, *vc;
};

/* Extras of one launch: prefetches and the rotary epilogue. */
struct gemv_ext {
    const char *pf;  /* next op's weights: prefetched by blocks out of rows */
    size_t pf_bytes;
    int self_pf;     /* rounds of this block's own rows asked from L2 before the wait */
    int early;       /* double-buffered variants: the second step's loads before the wait too */
    int late;        /* A/B knob (HM_GEMV_PRELOAD=0): no loads before the wait */
    int stamp;       /* diagnostics: phase stamps of this launch (hmc_gemv_set_stamp) */
    int evict_first; /* the weight loads ask L2 to evict them first (hmc_gemv_evict_first) */
    int kv_pf;       /* with the rotary epilogue: ask L2 for at most this many of the layer's cached
                      * keys and values (the attention's next reads) before the wait; 0 off */
    int stage_async; /* plain activation rows staged by cp.async (default; HM_GEMV_STAGE_ASYNC=0: by
                      * loads through registers, 4 a thread in flight) */
    rope_ep rope;
};

/* The attention after a qkv GEMV with the rotary epilogue reads every cached key and value of
 * the layer; they were written by earlier launches, so this block's share of the B*KVH rows of
 * K and V below the position (at most cap keys, the newest) is asked from L2 before the wait.
 * The position is read without waiting for the previous kernel: a stale value only makes the
 * hint miss (nothing is read into registers). */
__device__ __forceinline__ void kv_prefetch(const rope_ep &e, int rows, int cap, int blk, int nblk)
{
    if (!e.pos_dev) return;
    const int pos = *(volatile const int *)e.pos_dev + e.pos_add, nk = pos < cap ? pos : cap;
    if (nk <= 0) return;
    const size_t es = e.cache_f32 ? 4 : 2, row = (size_t)e.hd * es, bytes = (size_t)nk * row;
    if (row % 16) return; /* the bulk prefetch takes whole 16-byte units */
    const int heads = rows / e.T * e.KVH; /* B * KVH ranges in each of K and V */
    constexpr size_t PIECE = 4096;
    const size_t per = (bytes + PIECE - 1) / PIECE, n = per * heads * 2;
    for (size_t c = (size_t)blk + (size_t)threadIdx.x * nblk; c < n; c += (size_t)nblk * blockDim.x) {
        const size_t h = c / per, piece = c % per, len = HM_MIN(PIECE, bytes - piece * PIECE) & ~(size_t)15;
        const char *base = (const char *)(h & 1 ? e.vc : e.kc) + ((h >> 1) * e.max_seq + (size_t)(pos - nk)) * row;
        if (len) l2_prefetch(base + piece * PIECE, (uint32_t)len);
    }
}

/* Rows n0 = 2i', n0 + 1 of the qkv output hold an interleaved pair of one head: rotate q and k
 * pairs by pos · freqs[i] (as rope_append_kernel, to the bit) and store k, v into the cache. */
template <int R>
__device__ __forceinline__ void rope_pair(const rope_ep &e, int n0, float (&v)[2][R])
{
    const int h = n0 / e.hd, i = (n0 % e.hd) / 2;
    if (h >= e.H + 2 * e.KVH) return;
    const int pos0 = (e.pos_dev ? *e.pos_dev : 0) + e.pos_add;
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int b = r / e.T, pos = pos0 + r % e.T;
        if (h < e.H + e.KVH) {
            float ang = (float)pos * e.freqs[i];
            float c, sn;
            sincosf(ang, &sn, &c);
            const float a = v[0][r], bb = v[1][r];
            v[0][r] = a * c - bb * sn, v[1][r] = bb * c + a * sn;
        }
        if (h >= e.H)
            hmc_kv_append(e.kc, e.vc, e.cache_f32, h, e.H, e.KVH, e.max_seq, e.hd, b, pos, i, v[0][r], v[1][r]);
    }
}

/* Stage the input rows into shared memory (fp32 [R][K]) with one barrier: SwiGLU is applied
 * elementwise; for RMSNorm the rows are staged times the norm scale and each warp's partial sum
 * of squares goes to red[r][warp] (rows_rs() turns them into 1/rms after the barrier, and the
 * GEMV multiplies its result by it, which equals normalising first). */
template <int R, int NW = WARPS>
__device__ __forceinline__ void stage_x(float *xs, const float *__restrict__ x, int ldx, int K, int in_mode,
                                        const float *__restrict__ nscale, float (*red)[NW], int async = 0)
{
    const int K4 = K / 4;
    float4 *xs4 = reinterpret_cast<float4 *>(xs);
    const float4 *s4 = reinterpret_cast<const float4 *>(nscale);
    float ss[R];
#pragma unroll
    for (int r = 0; r < R; r++) ss[r] = 0.0f;
    if (in_mode == HMC_IN_SWIGLU) {
#pragma unroll 2
        for (int i = threadIdx.x; i < K4; i += blockDim.x) {
            float4 g[R], u[R];
#pragma unroll
            for (int r = 0; r < R; r++) {
                const float4 *x4 = reinterpret_cast<const float4 *>(x + (size_t)r * ldx);
                g[r] = x4[i], u[r] = x4[K4 + i];
            }
#pragma unroll
            for (int r = 0; r < R; r++) {
                float4 v = g[r];
                v.x = v.x / (1.0f + __expf(-v.x)) * u[r].x;
                v.y = v.y / (1.0f + __expf(-v.y)) * u[r].y;
                v.z = v.z / (1.0f + __expf(-v.z)) * u[r].z;
                v.w = v.w / (1.0f + __expf(-v.w)) * u[r].w;
                xs4[r * K4 + i] = v;
            }
        }
    } else if (async && in_mode == HMC_IN_PLAIN) {
        /* plain rows copied to shared memory by cp.async: every 16-byte piece in flight at once
         * and no registers held (the weight loads issued before the wait hold them); the
         * register loop of the branch below keeps 4 pieces a thread in flight, two rounds at
         * K = 8192 */
#pragma unroll 4
        for (int i = threadIdx.x; i < K4; i += blockDim.x)
#pragma unroll
            for (int r = 0; r < R; r++) {
                const uint32_t d = (uint32_t)__cvta_generic_to_shared(xs4 + r * K4 + i);
                asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d),
                             "l"(reinterpret_cast<const float4 *>(x + (size_t)r * ldx) + i)
                             : "memory");
            }
        asm volatile("cp.async.wait_all;" ::: "memory");
    } else {
        const bool norm = in_mode == HMC_IN_RMSNORM;
#pragma unroll 4
        for (int i = threadIdx.x; i < K4; i += blockDim.x) {
            float4 v[R];
#pragma unroll
            for (int r = 0; r < R; r++) v[r] = reinterpret_cast<const float4 *>(x + (size_t)r * ldx)[i];
            float4 sc = norm ? s4[i] : make_float4(1.0f, 1.0f, 1.0f, 1.0f);
#pragma unroll
            for (int r = 0; r < R; r++) {
                ss[r] += v[r].x * v[r].x + v[r].y * v[r].y + v[r].z * v[r].z + v[r].w * v[r].w;
                v[r].x *= sc.x, v[r].y *= sc.y, v[r].z *= sc.z, v[r].w *= sc.w;
                xs4[r * K4 + i] = v[r];
            }
        }
        if (norm) {
#pragma unroll
            for (int r = 0; r < R; r++) {
                float t = warp_sum(ss[r]);
                if ((threadIdx.x & 31) == 0) red[r][threadIdx.x >> 5] = t;
            }
        }
    }
    __syncthreads();
}

/* 1/rms of each row from the staged partial sums (all threads, after stage_x's barrier) */
template <int R, int NW = WARPS>
__device__ __forceinline__ void rows_rs(float *rs, int in_mode, const float (*red)[NW], int K, float eps)
{
#pragma unroll
    for (int r = 0; r < R; r++) {
        rs[r] = 1.0f;
        if (in_mode == HMC_IN_RMSNORM) {
            float t = 0.0f;
#pragma unroll
            for (int w = 0; w < NW; w++) t += red[r][w];
            rs[r] = rsqrtf(t / (float)K + eps);
        }
    }
}

/* Persistent blocks: a block takes WARPS/KS row pairs at a time (stride: the whole grid); the KS
 * warps of a pair split its 16-byte words into KS contiguous segments, and each lane owns the
 * words lane, lane + 32, ... of its segment, U per row per step.  With DB the next step's loads
 * (or the next pair's first) are issued before the current ones are used.  KS > 1 merges the
 * segments' partial sums in shared memory.  All loads of a step are independent, so a warp keeps
 * RPW·U·512 bytes in flight. */
/* Phase stamps (diagnostics, hmc_gemv_set_stamp): thread 0 of each block of a stamped launch
 * writes %globaltimer at entry, after the wait, after staging the activations, at the end. */
constexpr int GSTAMP_BLOCKS = 1024;
__device__ unsigned long long g_gstamp[GSTAMP_BLOCKS][4];
int g_stamp_next;

__device__ __forceinline__ void gstamp(int on, int i)
{
    if (!on || threadIdx.x || blockIdx.x >= GSTAMP_BLOCKS) return;
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)::"memory");
    g_gstamp[blockIdx.x][i] = t;
}

/* NW warps a block: WARPS (two blocks an SM, g_bps), or 2 x WARPS in one block an SM where two
 * blocks' staged activations would not fit in shared memory (launch_wide) */
template <typename WT, int R, int U, int KS, bool DB, int NW = WARPS, bool YE = false>
__global__ void __launch_bounds__(NW * 32, NW > WARPS ? 1 : 2)
gemv_kernel(const WT *__restrict__ W, const float *__restrict__ wscale, int N, int K,
            const float *__restrict__ x, int ldx, int in_mode, const float *__restrict__ nscale,
            float eps, float *__restrict__ y, int ldy, int accumulate, int out_swiglu, gemv_ext ex)
{
    constexpr int E = wtraits<WT>::E;
    constexpr int PPB = NW / KS; /* row pairs per block step */
    extern __shared__ float4 xs_raw[]; /* [R][K] floats */
    float *xs = reinterpret_cast<float *>(xs_raw);
    __shared__ float red[R][NW];
    __shared__ float part[KS > 1 ? NW : 1][RPW][R];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int grp = warp / KS, sub = warp % KS;
    const int npairs = (N + RPW - 1) / RPW;
    const int KW = K / E; /* 16-byte words per row */
    const int seg = (KW + KS - 1) / KS, s0 = sub * seg, s1 = min(KW, s0 + seg);
    const int stride = gridDim.x * PPB;
    int base = blockIdx.x * PPB;

    uint4 cur[RPW][U];
    const uint64_t pol = hmc_l2_weight_policy(ex.evict_first);
    auto load_step = [&](uint4 (&dst)[RPW][U], int pp, int w0) {
#pragma unroll
        for (int i = 0; i < RPW; i++) {
            const int n = pp * RPW + i;
            const uint4 *row = reinterpret_cast<const uint4 *>(W + (size_t)(n < N ? n : 0) * K);
#pragma unroll
            for (int u = 0; u < U; u++) {
                int w = w0 + u * 32;
                const bool in = pp < npairs && n < N && w < s1;
                dst[i][u] = in ? ldw(row + w, pol) : make_uint4(0, 0, 0, 0);
            }
        }
    };
    gstamp(ex.stamp, 0);
    pdl_trigger();
    /* first loads (weights only) before waiting for the previous op and staging its output */
    if (ex.late) pdl_wait();
    load_step(cur, base + grp, s0 + lane);
    if (ex.kv_pf && ex.rope.freqs) kv_prefetch(ex.rope, R, ex.kv_pf, blockIdx.x, gridDim.x);
    /* and the rows of the next rounds into L2 (lane i: row i of the pair, this warp's segment) */
    for (int j = 1; j <= ex.self_pf; j++) {
        const int pp = base + grp + j * stride, n = pp * RPW + lane;
        if (lane < RPW && pp < npairs && n < N && s1 > s0)
            l2_prefetch(reinterpret_cast<const uint4 *>(W + (size_t)n * K) + s0, (uint32_t)(s1 - s0) * 16u);
    }
    /* double-buffered kernels: optionally the second step's loads too (registers the loop holds
     * anyway), so the first compute after the wait does not wait on DRAM for the next step */
    uint4 nxt[RPW][U];
    bool have_nxt = DB && ex.early;
    if (have_nxt) {
        if (s0 + lane + 32 * U < s1) load_step(nxt, base + grp, s0 + lane + 32 * U);
        else load_step(nxt, base + grp + stride, s0 + lane);
    }
    pdl_wait();
    gstamp(ex.stamp, 1);
    /* YE (accumulating launches, y_early): the residual a round adds to is read at the round's
     * start, the first round's now, rather than after the dot products.  Earlier kernels wrote it
     * (complete after the wait), and only this lane writes it.  A template parameter, so that the
     * other launches keep the code they had. */
    constexpr bool yearly = YE;
    float yold[RPW][R] = {};
    auto load_y = [&](int p) {
        if constexpr (yearly) {
            if (sub || lane || p >= npairs) return;
#pragma unroll
            for (int i = 0; i < RPW; i++)
#pragma unroll
                for (int r = 0; r < R; r++) yold[i][r] = p * RPW + i < N ? y[(size_t)r * ldy + p * RPW + i] : 0.0f;
        }
    };
    load_y(base + grp);
    stage_x<R, NW>(xs, x, ldx, K, in_mode, nscale, red, ex.stage_async);
    gstamp(ex.stamp, 2);
    float rs[R];
    rows_rs<R, NW>(rs, in_mode, red, K, eps);

    for (bool first = true; base < npairs; base += stride, first = false) {
        const int p = base + grp;
        if (yearly && !first) load_y(p);
        float acc[RPW][R];
#pragma unroll
        for (int i = 0; i < RPW; i++)
#pragma unroll
            for (int r = 0; r < R; r++) acc[i][r] = 0.0f;
        for (int w0 = s0 + lane; w0 < s1 || w0 == s0 + lane; w0 += 32 * U) {
            if (DB && !have_nxt) {
                if (w0 + 32 * U < s1) load_step(nxt, p, w0 + 32 * U);
                else load_step(nxt, p + stride, s0 + lane); /* the next pair's first step */
            }
            have_nxt = false;
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int w = w0 + u * 32;
                if (w < s1) {
                    float wf[RPW][E];
#pragma unroll
                    for (int i = 0; i < RPW; i++) wdec(cur[i][u], wf[i], (const WT *)nullptr);
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        const float4 *xp = reinterpret_cast<const float4 *>(xs + r * K + w * E);
#pragma unroll
                        for (int q = 0; q < E / 4; q++) {
                            float4 a = xp[q];
#pragma unroll
                            for (int i = 0; i < RPW; i++)
                                acc[i][r] += wf[i][4 * q] * a.x + wf[i][4 * q + 1] * a.y + wf[i][4 * q + 2] * a.z +
                                             wf[i][4 * q + 3] * a.w;
                        }
                    }
                }
            }
            if (DB) {
#pragma unroll
                for (int i = 0; i < RPW; i++)
#pragma unroll
                    for (int u = 0; u < U; u++) cur[i][u] = nxt[i][u];
            } else if (w0 + 32 * U < s1) {
                load_step(cur, p, w0 + 32 * U);
            } else {
                load_step(cur, p + stride, s0 + lane);
            }
            if (w0 + 32 * U >= s1) break;
        }
#pragma unroll
        for (int i = 0; i < RPW; i++)
#pragma unroll
            for (int r = 0; r < R; r++) acc[i][r] = warp_sum(acc[i][r]);
        if (KS > 1) {
            if (lane == 0)
#pragma unroll
                for (int i = 0; i < RPW; i++)
#pragma unroll
                    for (int r = 0; r < R; r++) part[warp][i][r] = acc[i][r];
            __syncthreads();
            if (sub == 0 && lane == 0)
#pragma unroll
                for (int i = 0; i < RPW; i++)
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        float v = 0.0f;
#pragma unroll
                        for (int k = 0; k < KS; k++) v += part[warp + k][i][r];
                        acc[i][r] = v;
                    }
            __syncthreads();
        }
        if (out_swiglu && sub == 0 && lane == 0 && p < npairs) {
            /* rows 2p (gate) and 2p+1 (up) of interleaved w1|w3: the SwiGLU product directly */
            const float s0 = wscale ? wscale[2 * p] : 1.0f, s1 = wscale ? wscale[2 * p + 1] : 1.0f;
#pragma unroll
            for (int r = 0; r < R; r++) {
                float g = acc[0][r] * s0 * rs[r], u = acc[RPW - 1][r] * s1 * rs[r];
                y[(size_t)r * ldy + p] = g / (1.0f + __expf(-g)) * u;
            }
        } else if (sub == 0 && lane == 0 && p < npairs) {
            float v[RPW][R];
#pragma unroll
            for (int i = 0; i < RPW; i++) {
                const int n = p * RPW + i;
                const float sc = wscale && n < N ? wscale[n] : 1.0f;
#pragma unroll
                for (int r = 0; r < R; r++) v[i][r] = acc[i][r] * sc * rs[r];
            }
            if (ex.rope.freqs && p * RPW + 1 < N) rope_pair<R>(ex.rope, p * RPW, v);
#pragma unroll
            for (int i = 0; i < RPW; i++) {
                const int n = p * RPW + i;
                if (n >= N) continue;
#pragma unroll
                for (int r = 0; r < R; r++) {
                    float *yp = y + (size_t)r * ldy + n;
                    *yp = accumulate ? (yearly ? yold[i][r] : *yp) + v[i][r] : v[i][r];
                }
            }
        }
    }
    /* out of rows: a share of the next op's weights into L2 while the other blocks finish */
    if (ex.pf_bytes) l2_prefetch_share(ex.pf, ex.pf_bytes, blockIdx.x, gridDim.x);
    gstamp(ex.stamp, 3);
}

int g_force_variant; /* benchmark knob: replaces the auto choice when non-zero */
int g_bps = 2; /* resident GEMV blocks per SM (2 measured faster than 1 in a whole frame) */
int g_self_pf; /* rounds of own rows prefetched to L2 before the wait (knob; slower in a whole frame) */
int g_early;   /* second step's loads before the wait (double-buffered variants; knob) */

/* The launch extras of a call (prefetch share, rotary epilogue). */
gemv_ext make_ext(const hmc_gemv_args *a)
{
    gemv_ext e = {};
    if (a->pf && a->pf_bytes > 16) { /* whole 16-byte units only */
        const uintptr_t p0 = ((uintptr_t)a->pf + 15) & ~(uintptr_t)15, p1 = ((uintptr_t)a->pf + a->pf_bytes) & ~(uintptr_t)15;
        e.pf = (const char *)p0;
        e.pf_bytes = p1 > p0 ? p1 - p0 : 0;
    }
    e.self_pf = g_self_pf;
    e.early = g_early;
    static int late = -1;
    if (late < 0) {
        const char *v = getenv("HM_GEMV_PRELOAD");
        late = v && atoi(v) == 0;
    }
    e.late = late;
    e.stamp = g_stamp_next;
    static int kv_pf = -1;
    if (kv_pf < 0) {
        const char *v = getenv("HM_GEMV_KVPF");
        kv_pf = v ? atoi(v) : 0;
        if (kv_pf < 0) kv_pf = 0;
    }
    e.kv_pf = kv_pf;
    static int stage_async = -1;
    if (stage_async < 0) {
        const char *v = getenv("HM_GEMV_STAGE_ASYNC");
        stage_async = !(v && atoi(v) == 0);
    }
    e.stage_async = stage_async;
    e.evict_first = hmc_gemv_evict_first();
    if (a->rope) {
        const hmc_rope_args *r = a->rope;
        e.rope = {r->freqs, r->pos_dev, r->pos_add, r->T, r->H, r->KVH, r->hd, r->max_seq, r->ct == HMC_F32,
                  r->k_cache, r->v_cache};
    }
    return e;
}

/* The kernel with the early residual reads (YE) for an accumulating launch of 1 or 2 rows (the
 * launcher's choice), unless the knob is off (hmc_gemv_y_early) */
int y_early(const hmc_gemv_args *a) { return hmc_gemv_y_early() && a->accumulate && !a->out_swiglu; }

/* One block an SM of 2 x WARPS warps: as many warps as two blocks, one copy of the activations
 * (4 rows of K = 8192, the depth decoder's first-step w2: 128 KB, which two blocks do not fit) */
template <typename WT, int R, int U, int KS, bool DB>
int launch_wide(const hmc_gemv_args *a, cudaStream_t s)
{
    constexpr int NW = 2 * WARPS;
    auto kern = gemv_kernel<WT, R, U, KS, DB, NW>;
    const size_t smem = (size_t)R * a->K * sizeof(float);
    static hmc_occupancy oc;
    CKH(hmc_occupancy_get(&oc, kern, NW * 32, smem, "gemv (wide)"));
    const int pairs = (a->N + RPW - 1) / RPW, ppb = NW / KS;
    const int blocks = HM_MIN((pairs + ppb - 1) / ppb, oc.sms * HM_MAX(oc.occ, 1));
    return launch_pdl(kern, dim3(blocks), dim3(NW * 32), smem, s, (const WT *)a->W, a->w_scale, a->N, a->K, a->x,
                      a->ldx, a->in_mode, a->norm_scale, a->eps, a->y, a->ldy, a->accumulate, a->out_swiglu,
                      make_ext(a));
}

int g_wide = -1; /* HM_GEMV_WIDE=0: no wide blocks (A/B knob) */

template <typename WT, int R, int U, int KS, bool DB>
int launch(const hmc_gemv_args *a, cudaStream_t s)
{
    int ye = 0;
    auto kern = gemv_kernel<WT, R, U, KS, DB>;
    if constexpr (R <= 2) /* 4 rows: the 8 more registers spill */
        if ((ye = y_early(a))) kern = gemv_kernel<WT, R, U, KS, DB, WARPS, true>;
    size_t smem = (size_t)R * a->K * sizeof(float);
    static hmc_occupancy ocs[2];
    hmc_occupancy &oc = ocs[ye];
    CKH(hmc_occupancy_get(&oc, kern, WARPS * 32, smem, "gemv"));
    if (!g_sms) g_sms = oc.sms;
    const int occ = oc.occ;
    if (g_wide < 0) {
        const char *v = getenv("HM_GEMV_WIDE");
        g_wide = !(v && atoi(v) == 0);
    }
    /* shared memory holds one block where two are asked for: one block of twice the warps */
    if constexpr (R == 4)
        if (g_wide && g_bps == 2 && occ == 1) return launch_wide<WT, R, U, KS, DB>(a, s);
    const int pairs = (a->N + RPW - 1) / RPW, ppb = WARPS / KS;
    const int blocks = HM_MIN((pairs + ppb - 1) / ppb, g_sms * HM_MIN(occ, g_bps));
    return launch_pdl(kern, dim3(blocks), dim3(WARPS * 32), smem, s, (const WT *)a->W, a->w_scale, a->N, a->K, a->x,
                      a->ldx, a->in_mode, a->norm_scale, a->eps, a->y, a->ldy, a->accumulate, a->out_swiglu,
                      make_ext(a));
}

/* ---- variant 7: weights streamed into shared memory by the bulk-copy engine (sm_90) ----------
 * One block per SM; its 8 warps own 8 consecutive rows (warp w: row 8g + w) of a row group g;
 * a tile is the group's rows restricted to a chunk of KC columns, one 1-D bulk copy per row,
 * all completing on the stage's mbarrier.  NS stages in flight; thread 0 refills a stage after
 * the block's barrier at the end of the tile.  The first NS tiles are requested before waiting
 * for the previous op (they are weights only).  No registers hold loads in flight, so the
 * whole ~NS*48 KB per SM stays requested continuously. */
constexpr int BULK_STAGE_BYTES = 6144; /* per row per stage: 8 rows -> 48 KB */

template <typename WT, int R>
__global__ void __launch_bounds__(WARPS * 32, 1)
gemv_bulk_kernel(const WT *__restrict__ W, const float *__restrict__ wscale, int N, int K,
                 const float *__restrict__ x, int ldx, int in_mode, const float *__restrict__ nscale,
                 float eps, float *__restrict__ y, int ldy, int accumulate, int out_swiglu, int KC, int NS)
{
    constexpr int E = wtraits<WT>::E;
    extern __shared__ float4 bulk_raw[]; /* [NS][WARPS][KC] weights, then [R][K] fp32 inputs */
    __shared__ uint64_t bars[4];
    __shared__ float red[R][WARPS];
    __shared__ float res[WARPS][R];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int ngroups = (N + WARPS - 1) / WARPS, nchunks = (K + KC - 1) / KC;
    const size_t stage_elems = (size_t)WARPS * KC;
    WT *wsm = reinterpret_cast<WT *>(bulk_raw);
    float *xs = reinterpret_cast<float *>(reinterpret_cast<char *>(bulk_raw) + NS * stage_elems * sizeof(WT));
    /* this block's tiles: groups blockIdx.x, +gridDim.x, ..., each with nchunks column chunks */
    const int my_groups = blockIdx.x < ngroups ? (ngroups - 1 - blockIdx.x) / gridDim.x + 1 : 0;
    const int ntiles = my_groups * nchunks;

    auto issue = [&](int t) { /* thread 0 only */
        const int g = blockIdx.x + (t / nchunks) * gridDim.x, c = t % nchunks, st = t % NS;
        const int k0 = c * KC, kc = min(KC, K - k0);
        const int rows = min(WARPS, N - g * WARPS);
        mbar_expect(&bars[st], (uint32_t)(rows * kc * sizeof(WT)));
        for (int w = 0; w < rows; w++)
            bulk_load(wsm + st * stage_elems + (size_t)w * KC, W + (size_t)(g * WARPS + w) * K + k0,
                      (uint32_t)(kc * sizeof(WT)), &bars[st]);
    };
    pdl_trigger();
    if (threadIdx.x == 0) {
        mbar_init_stages(bars, NS);
        for (int t = 0; t < NS && t < ntiles; t++) issue(t);
    }
    pdl_wait();
    stage_x<R>(xs, x, ldx, K, in_mode, nscale, red); /* ends with __syncthreads: barriers visible */
    float rs[R];
    rows_rs<R>(rs, in_mode, red, K, eps);

    float acc[R];
    for (int t = 0; t < ntiles; t++) {
        const int g = blockIdx.x + (t / nchunks) * gridDim.x, c = t % nchunks, st = t % NS;
        const int k0 = c * KC, kw = min(KC, K - k0) / E;
        const int n = g * WARPS + warp;
        if (c == 0)
#pragma unroll
            for (int r = 0; r < R; r++) acc[r] = 0.0f;
        mbar_wait(&bars[st], (uint32_t)((t / NS) & 1));
        if (n < N) {
            const uint4 *row = reinterpret_cast<const uint4 *>(wsm + st * stage_elems + (size_t)warp * KC);
#pragma unroll 4
            for (int w = lane; w < kw; w += 32) {
                float wf[E];
                wdec(row[w], wf, (const WT *)nullptr);
#pragma unroll
                for (int r = 0; r < R; r++) {
                    const float4 *xp = reinterpret_cast<const float4 *>(xs + r * K + k0 + w * E);
                    float s = 0.0f;
#pragma unroll
                    for (int q = 0; q < E / 4; q++) {
                        float4 a = xp[q];
                        s += wf[4 * q] * a.x + wf[4 * q + 1] * a.y + wf[4 * q + 2] * a.z + wf[4 * q + 3] * a.w;
                    }
                    acc[r] += s;
                }
            }
        }
        const bool last = c == nchunks - 1;
        if (last) {
#pragma unroll
            for (int r = 0; r < R; r++) acc[r] = warp_sum(acc[r]);
            if (lane == 0 && n < N) {
                float sc = wscale ? wscale[n] : 1.0f;
#pragma unroll
                for (int r = 0; r < R; r++) {
                    float v = acc[r] * sc * rs[r];
                    if (out_swiglu) res[warp][r] = v;
                    else {
                        float *yp = y + (size_t)r * ldy + n;
                        *yp = accumulate ? *yp + v : v;
                    }
                }
            }
        }
        __syncthreads(); /* stage st consumed (and res written) */
        if (threadIdx.x == 0 && t + NS < ntiles) issue(t + NS);
        if (last && out_swiglu && lane == 0 && (warp & 1) == 0 && n + 1 < N + 1 && n < N) {
#pragma unroll
            for (int r = 0; r < R; r++) {
                float gte = res[warp][r], up = res[warp + 1][r];
                y[(size_t)r * ldy + n / 2] = gte / (1.0f + __expf(-gte)) * up;
            }
        }
    }
}

template <typename WT, int R>
int launch_bulk(const hmc_gemv_args *a, cudaStream_t s)
{
    auto kern = gemv_bulk_kernel<WT, R>;
    const size_t es = sizeof(WT);
    int KC = (int)(BULK_STAGE_BYTES / es);
    if (KC > a->K) KC = a->K;
    const size_t xbytes = (size_t)R * a->K * sizeof(float);
    int NS = 4;
    while (NS > 1 && NS * (size_t)WARPS * KC * es + xbytes > 220 * 1024) NS--;
    const size_t smem = NS * (size_t)WARPS * KC * es + xbytes;
    if (smem > 220 * 1024) return hm_err("%s:%d: gemv bulk: K %d too large", __FILE__, __LINE__, a->K);
    static int attr_set;
    if (!attr_set) {
        CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, 220 * 1024));
        attr_set = 1;
    }
    if (!g_sms) {
        int dev;
        CK(cudaGetDevice(&dev));
        CK(cudaDeviceGetAttribute(&g_sms, cudaDevAttrMultiProcessorCount, dev));
    }
    const int groups = (a->N + WARPS - 1) / WARPS;
    const int blocks = HM_MIN(groups, g_sms);
    return launch_pdl(kern, dim3(blocks), dim3(WARPS * 32), smem, s, (const WT *)a->W, a->w_scale, a->N, a->K, a->x,
                      a->ldx, a->in_mode, a->norm_scale, a->eps, a->y, a->ldy, a->accumulate, a->out_swiglu, KC, NS);
}

/* The current device's peak memory bandwidth (2 x memory clock x bus width) is above 4 TB/s. */
bool fast_memory()
{
    static int fast = -1;
    if (fast < 0) {
        int dev = 0, khz = 0, bits = 0;
        fast = cudaGetDevice(&dev) == cudaSuccess &&
               cudaDeviceGetAttribute(&khz, cudaDevAttrMemoryClockRate, dev) == cudaSuccess &&
               cudaDeviceGetAttribute(&bits, cudaDevAttrGlobalMemoryBusWidth, dev) == cudaSuccess &&
               2.0 * khz * 1e3 * bits / 8 > 4e12;
    }
    return fast;
}

/* Variants (U, KS, DB) timed by gpu_lm bench; 0 = auto choice by shape. */
template <typename WT, int R>
int launch_variant(const hmc_gemv_args *a, cudaStream_t s)
{
    constexpr int E = wtraits<WT>::E;
    int v = a->variant ? a->variant : g_force_variant;
    if (v == 0) {
        /* auto: enough warps per row pair that each lane has at most ~2 steps of 8 words */
        const int KW = a->K / E;
        /* K 3072 bf16 -> 4, K 8192 -> 5.  First measured on an H200 (wider than 6144 rows -> 1);
         * with the evict-first loads w1|w3 on 4 measured -0.8% a frame on an H100, the heads
         * the same either way.  Where the memory is faster than 4 TB/s (an H200), bf16 K 8192 (w2)
         * -> 1: -0.3 / -1.2 / -0.7% a frame at 200 / 900 / 3800 positions there, while on an H100
         * it measured no better (docs/PERF.md) */
        v = KW > 512 ? (E == 8 && fast_memory() ? 1 : 5) : 4;
    }
    switch (v) {
    case 1: return launch<WT, R, 4, 1, true>(a, s);
    case 2: return launch<WT, R, 8, 1, false>(a, s);
    case 3: return launch<WT, R, 4, 2, true>(a, s);
    case 4: return launch<WT, R, 8, 2, false>(a, s);
    case 5: return launch<WT, R, 4, 4, true>(a, s);
    case 6: return launch<WT, R, 8, 4, false>(a, s);
    case 7:
        if (a->rope) return hm_err("%s:%d: gemv: variant 7 has no rotary epilogue", __FILE__, __LINE__);
        return launch_bulk<WT, R>(a, s);
    default: return hm_err("%s:%d: gemv: unknown variant %d", __FILE__, __LINE__, v);
    }
}

template <typename WT>
int dispatch_rows(const hmc_gemv_args *a, cudaStream_t s)
{
    switch (a->rows) {
    case 1: return launch_variant<WT, 1>(a, s);
    case 2: return launch_variant<WT, 2>(a, s);
    case 3: return launch_variant<WT, 3>(a, s);
    case 4: return launch_variant<WT, 4>(a, s);
    default: return hm_err("%s:%d: gemv: rows %d not in 1..4", __FILE__, __LINE__, a->rows);
    }
}

__global__ void quantize_fp8_kernel(const __nv_bfloat16 *__restrict__ W, int K, __nv_fp8_e4m3 *__restrict__ W8,
                                    float *__restrict__ scale)
{
    __shared__ float red[32];
    const __nv_bfloat16 *w = W + (size_t)blockIdx.x * K;
    float mx = 0.0f;
    for (int k = threadIdx.x; k < K; k += blockDim.x) mx = fmaxf(mx, fabsf(__bfloat162float(w[k])));
    mx = block_max(mx, red);
    float s = mx > 0.0f ? mx / 448.0f : 1.0f;
    for (int k = threadIdx.x; k < K; k += blockDim.x)
        W8[(size_t)blockIdx.x * K + k] = __nv_fp8_e4m3(__bfloat162float(w[k]) / s);
    if (threadIdx.x == 0) scale[blockIdx.x] = s;
}

} // namespace

extern "C" int hmc_quantize_fp8(const void *W, int N, int K, void *W8, float *scale, cudaStream_t s)
{
    quantize_fp8_kernel<<<N, 256, 0, s>>>((const __nv_bfloat16 *)W, K, (__nv_fp8_e4m3 *)W8, scale);
    CK_LAUNCH();
    return HM_OK;
}

extern "C" void hmc_gemv_set_blocks_per_sm(int n) { g_bps = n > 0 ? n : 1; }
extern "C" void hmc_gemv_set_stamp(int on) { g_stamp_next = on != 0; }
extern "C" int hmc_gemv_stamp_on(void) { return g_stamp_next; }

/* Accumulating launches read their old outputs right after the wait (bf16 and the 8-row quantised
 * kernel): on unless HM_GEMV_Y_EARLY=0 (A/B knob, read once) */
extern "C" int hmc_gemv_y_early(void)
{
    static int on = -1;
    if (on < 0) {
        const char *v = getenv("HM_GEMV_Y_EARLY");
        on = !(v && atoi(v) == 0);
    }
    return on;
}

/* Print the phase stamps of the last stamped launch: per phase the earliest, median and latest
 * block, in us after the earliest block's entry. */
extern "C" void hmc_gemv_stamp_report(FILE *f)
{
    hmc_gemv_phase_report(f, "gemv", g_gstamp);
    hmc_gemv_quant_stamp_report(f); /* the fp8 / NVFP4 launches' (kernels/gemv_quant.cu) */
}
extern "C" void hmc_gemv_force_variant(int v) { g_force_variant = v; }

/* The L2 policy of the decode GEMVs' weight loads (bf16, fp8, NVFP4 kernels). */
static int g_evict_first = -1;
extern "C" int hmc_gemv_evict_first(void)
{
    if (g_evict_first < 0) {
        const char *v = getenv("HM_GEMV_EVICT_FIRST");
        g_evict_first = !(v && strcmp(v, "0") == 0);
    }
    return g_evict_first;
}
extern "C" void hmc_gemv_set_evict_first(int on) { g_evict_first = on != 0; }
extern "C" void hmc_gemv_set_self_prefetch(int rounds) { g_self_pf = rounds > 0 ? rounds : 0; }
extern "C" void hmc_gemv_set_early_loads(int on) { g_early = on != 0; }

extern "C" size_t hmc_dtype_size(hmc_dtype t)
{
    return t == HMC_F32 ? 4 : t == HMC_BF16 ? 2 : 1;
}

extern "C" int hmc_gemv(const hmc_gemv_args *a, cudaStream_t s)
{
    if (a->wdt == HMC_FP8 || a->wdt == HMC_NVFP4) return hmc_gemv_quant(a, s); /* kernels/gemv_quant.cu */
    if (a->K % 16 != 0 && !(a->wdt != HMC_FP8 && a->K % 8 == 0))
        return hm_err("%s:%d: gemv: K %d must be a multiple of 8 (16 for fp8)", __FILE__, __LINE__, a->K);
    if (a->wdt == HMC_F32 && a->K % 4) return hm_err("%s:%d: gemv: bad K", __FILE__, __LINE__);
    if (((uintptr_t)a->x & 15) || a->ldx % 4 || (a->norm_scale && ((uintptr_t)a->norm_scale & 15)))
        return hm_err("%s:%d: gemv: x and norm_scale must be 16-byte aligned, ldx a multiple of 4", __FILE__, __LINE__);
    if ((size_t)a->rows * a->K * 4 > 200 * 1024)
        return hm_err("%s:%d: gemv: rows*K %d*%d too large for shared memory", __FILE__, __LINE__, a->rows, a->K);
    if (a->out_swiglu && (a->N % 2 || a->accumulate))
        return hm_err("%s:%d: gemv: swiglu output needs an even N and no accumulate", __FILE__, __LINE__);
    if (a->wdt == HMC_FP8 && !a->w_scale) return hm_err("%s:%d: gemv: fp8 needs w_scale", __FILE__, __LINE__);
    if (a->rope) {
        const hmc_rope_args *r = a->rope;
        if (a->accumulate || a->out_swiglu || r->hd % 2 || a->N != (r->H + 2 * r->KVH) * r->hd ||
            a->rows != r->B * r->T || (r->ct != HMC_BF16 && r->ct != HMC_F32))
            return hm_err("%s:%d: gemv: rotary epilogue needs N = (H + 2 KVH) hd, even hd, rows = B T, no accumulate",
                          __FILE__, __LINE__);
    }
    switch (a->wdt) {
    case HMC_BF16: return dispatch_rows<__nv_bfloat16>(a, s);
    case HMC_F32: return dispatch_rows<float>(a, s);
    case HMC_FP8: return dispatch_rows<__nv_fp8_e4m3>(a, s); /* unused: the tensor-core kernels above */
    case HMC_NVFP4: break;
    }
    return hm_err("%s:%d: gemv: bad dtype", __FILE__, __LINE__);
}
