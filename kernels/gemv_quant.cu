/* gemv_quant.cu - decode GEMV on quantised weights (fp8 e4m3 with a per-row scale; NVFP4), the
 * quantisers that produce them from bf16 on the device, the bf16 dequantiser used by prefill, and
 * the Blackwell block-scaled NVFP4 GEMM through cuBLASLt (built here, runs only on sm_100/sm_120).
 * CPU twin: dequantise (tests/gpu_quant.c decodes the same bytes) then the dot products.
 *
 * Why tensor cores in a GEMV: the fp32 GEMV converts every weight to fp32 and reads an fp32
 * activation from shared memory per weight; at 1 byte (or half a byte) per weight that work, not
 * the memory, is the limit.  Here each 16-byte weight word is converted to f16 pairs (one
 * cvt.rn.f16x2.e4m3x2 per two fp8; NVFP4 pairs by one to three integer instructions from the
 * GEMV layout, then one multiply by the block scale) and fed as the B operand of mma.m16n8k16 (f16 in, fp32
 * accumulate): a warp covers 8 weight rows (B's 8 columns) and the activation rows are A's first
 * R (<= 4) rows; the other rows feed only outputs that are not read (zero in the fp8 path; in the
 * NVFP4 path whatever the registers hold, so that x's staged 16-byte units are A as loaded).  Accumulation is fp32 in the tensor core, so the only
 * rounding beyond the weights' own is the activations' f16 (2^-11 relative): each activation row
 * is staged times a power of two that puts its largest value just under 2^15, and the result is
 * multiplied back.
 *
 * Weight layouts (what hmc_quantize_* write and hmc_gemv reads):
 *   HMC_FP8    W: e4m3 [N][K];  w_scale: fp32 [N] (w = e4m3 · scale[n]).
 *   HMC_NVFP4  W: e2m1 [N][K/2] (byte b of a row: element 2b in the low nibble, 2b+1 in the high),
 *              then, in the same allocation, e4m3 block scales [N][K/16]; w_scale: one fp32
 *              (w = e2m1 · block scale · tensor scale).  hmc_weight_bytes gives the size.
 *              hmc_quantize_nvfp4 writes this; the decode GEMV and the dequantiser read the
 *              values after hmc_nvfp4_pack (the GEMV layout: each 4-byte word's bits permuted,
 *              e2m1_pair), and the Blackwell GEMM reads them as written.
 * In the MMA, the k order inside a thread's word is free as long as A and B agree: NVFP4 pairs
 * come out of a 32-bit word as elements (i, i+4), so the activations are staged in that order
 * within each group of 8.
 * Two decode kernels: the 8-row kernel (weights as B, loaded into registers in fragment layout;
 * the NVFP4 default) and the streaming kernel (weights as A, staged by cp.async; the fp8 default);
 * both have the rotary + KV-append epilogue of hmc_gemv_args.rope.  hmc_gemv_quant_set_impl
 * switches for A/B timing.  Both load the weights with the L2 policy of hmc_gemv_evict_first
 * (evict first by default, as gemv.cu).
 * After the wait, the streaming kernel stages the activations from registers (stage_hr: every load
 * of x issued at once, one pass) and the 8-row kernel's accumulating launches read their old
 * outputs beside the staging (YE, as gemv.cu); both keep the bits (docs/PERF.md). */
#include "common_cuda.h"
#include "ops_cuda.h"

#include <cublasLt.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

namespace {

constexpr int QWARPS = 8;
int q_sms;
int q_bps = 4;     /* cap on resident blocks per SM (occupancy decides below it) */
int q_impl;        /* 0: per type (fp8 streaming, NVFP4 8-row), 1: 8-row kernel, 2: streaming kernel */
int q_multi_acc;   /* 1: several MMA accumulator chains per warp (knob, off: within +-0.5% of a whole
                      NVFP4 frame on an H100, docs/PERF.md; HM_GEMVQ_MULTI_ACC=1 at first launch) */
int q_self_pf;     /* L2 prefetch of a warp's own segment beyond the loads in flight (knob; off:
                      measured slower in a whole frame on H100, 4.18 -> 4.28 ms fp8) */

/* Phase stamps (diagnostics, hmc_gemv_set_stamp, as gemv.cu's), in a build with HM_GEMVQ_STAMPS
 * defined only: compiled in, the check cost 2.6% of an NVFP4 frame (H100, docs/PERF.md).  Thread
 * 0 of each block of a stamped launch writes %globaltimer at entry, after the wait, after staging
 * the activations and at the end.  The launch passes the flag in bit 1 of its flags argument. */
constexpr int QSTAMP_BLOCKS = 1024;
__device__ unsigned long long g_qstamp[QSTAMP_BLOCKS][4];

__device__ __forceinline__ void qstamp(int on, int i)
{
#ifdef HM_GEMVQ_STAMPS
    if (!on || threadIdx.x || blockIdx.x >= QSTAMP_BLOCKS) return;
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)::"memory");
    g_qstamp[blockIdx.x][i] = t;
#else
    (void)on, (void)i;
#endif
}

/* weights: past L1, with the L2 policy of hmc_l2_weight_policy (evict first by default) */
__device__ __forceinline__ uint4 ldw_q(const uint4 *p, uint64_t pol)
{
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0,%1,%2,%3}, [%4], %5;"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p), "l"(pol));
    return v;
}

/* ask L2 for [p, p + bytes) (16-byte aligned, a multiple of 16; sm_90 bulk prefetch) */
__device__ __forceinline__ void l2_pf(const void *p, uint32_t bytes)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (bytes) asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

/* two e4m3 (low byte -> low half) to f16x2 */
__device__ __forceinline__ uint32_t e4m3x2_to_h2(uint32_t v16)
{
    __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)v16, __NV_E4M3);
    return (uint32_t)h.x | ((uint32_t)h.y << 16);
}

/* Elements P and P+4 of a word x in the GEMV layout (hmc_nvfp4_pack) as f16x2 of value · 2^-14:
 * sign at bit 15, exponent and mantissa at bits 9..11 of each half (the f16 subnormal / normal
 * encodings then scale exactly like e2m1's).  The layout puts element 3 (7) there already and
 * element 2 (6) 3 bits lower; elements 1 and 0 (5, 4) have their magnitude and sign at two other
 * distances, which one multiply moves at once: x · (2^a + 2^b) is the sum of two shifted copies,
 * and the kept and the dropped bits of the copies never overlap, so no carry reaches a kept bit.
 * 1, 2, 3 and 3 integer instructions for the four pairs, where the standard nibble order took four
 * each (two shifts, a mask, a lop3; docs/PERF.md). */
template <int P> __device__ __forceinline__ uint32_t e2m1_pair(uint32_t x)
{
    constexpr uint32_t M = 0x8E008E00u;
    if (P == 3) return x & M;
    if (P == 2) return (x << 3) & M;
    if (P == 1) return ((x & 0x20382038u) * 68u) & M; /* mag 3..5 << 6, sign 13 << 2 */
    return ((x & 0x40074007u) * 514u) & M;            /* mag 0..2 << 9, sign 14 << 1 */
}

__device__ __forceinline__ uint32_t hmul2u(uint32_t a, uint32_t b)
{
    __half2 r = __hmul2(*reinterpret_cast<__half2 *>(&a), *reinterpret_cast<__half2 *>(&b));
    return *reinterpret_cast<uint32_t *>(&r);
}

/* c += A · B for one m16n8k16 tile; A rows 8..15 (a1, a3) are zero here (the fp8 8-row path) */
__device__ __forceinline__ void mma_f16(float (&c)[4], uint32_t a0, uint32_t a2, uint32_t b0, uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
}

/* c += A · B for one m16n8k16 tile, all four A registers given */
__device__ __forceinline__ void mma_a(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                      uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* Between the staging's two passes: each row's sum of squares and largest |value| summed over the
 * block (red), then the power of two p[r] that puts the largest value just under 2^15 in f16, and
 * rs[r] = 1/(rms · p) with RMSNorm, else 1/p */
template <int R>
__device__ __forceinline__ void row_scales(float (*red)[R][QWARPS], const float *ss, const float *mx, bool norm, int K,
                                           float eps, float *p, float *rs)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int r = 0; r < R; r++) {
        float a = warp_sum(ss[r]), b = warp_max(mx[r]);
        if (lane == 0) red[0][r][warp] = a, red[1][r][warp] = b;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < R; r++) {
        float a = 0.0f, b = 0.0f;
#pragma unroll
        for (int w = 0; w < QWARPS; w++) a += red[0][r][w], b = fmaxf(b, red[1][r][w]);
        int e = 0;
        if (b > 0.0f && isfinite(b)) frexpf(b, &e); /* b < 2^e */
        e = min(max(15 - e, -100), 100);
        p[r] = ldexpf(1.0f, e);
        const float rms = norm ? rsqrtf(a / (float)K + eps) : 1.0f;
        rs[r] = rms * ldexpf(1.0f, -e);
    }
}

/* Stage the R input rows as f16 into xs [R][ldxs] (SwiGLU / RMSNorm·scale applied, times a
 * per-row power of two p), with the NVFP4 pair order if PERM (1: each 16-byte unit holds the f16
 * pairs 0, 1, 2, 3 of e2m1_pair; 2: pairs 0, 2, 1, 3, the 8-row kernel's order).  rs[r] gets
 * 1/(rms · p) (RMSNorm) or 1/p: the factor that turns the MMA sums back into the GEMV result.  Two passes over x (it is
 * small and in L2): the first finds each row's largest |value| and sum of squares. */
template <int R, int PERM>
__device__ __forceinline__ void stage_h(__half *xs, int ldxs, const float *__restrict__ x, int ldx, int K, int in_mode,
                                        const float *__restrict__ nscale, float eps, float (*red)[R][QWARPS],
                                        float *rs, float *xc)
{
    const int K8 = K / 8;
    const bool norm = in_mode == HMC_IN_RMSNORM, swi = in_mode == HMC_IN_SWIGLU;
    auto value8 = [&](int r, int i, float *v, float *ss) {
        const float4 *x4 = reinterpret_cast<const float4 *>(x + (size_t)r * ldx) + 2 * i;
        float4 a = x4[0], b = x4[1];
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
        if (swi) {
            const float4 *u4 = reinterpret_cast<const float4 *>(x + (size_t)r * ldx + K) + 2 * i;
            float4 c = u4[0], d = u4[1];
            float u[8] = {c.x, c.y, c.z, c.w, d.x, d.y, d.z, d.w};
#pragma unroll
            for (int j = 0; j < 8; j++) v[j] = v[j] / (1.0f + __expf(-v[j])) * u[j];
        } else if (norm) {
            const float4 *s4 = reinterpret_cast<const float4 *>(nscale) + 2 * i;
            float4 c = s4[0], d = s4[1];
            float sc[8] = {c.x, c.y, c.z, c.w, d.x, d.y, d.z, d.w};
#pragma unroll
            for (int j = 0; j < 8; j++) *ss += v[j] * v[j], v[j] *= sc[j];
        }
    };
    float ss[R], mx[R];
#pragma unroll
    for (int r = 0; r < R; r++) ss[r] = 0.0f, mx[r] = 0.0f;
    for (int i = threadIdx.x; i < K8; i += blockDim.x)
#pragma unroll
        for (int r = 0; r < R; r++) {
            float v[8];
            value8(r, i, v, &ss[r]);
#pragma unroll
            for (int j = 0; j < 8; j++) mx[r] = fmaxf(mx[r], fabsf(v[j]));
            if (xc) { /* the second pass reads shared memory instead of x again */
                float4 *c4 = reinterpret_cast<float4 *>(xc + (size_t)r * K + 8 * i);
                c4[0] = make_float4(v[0], v[1], v[2], v[3]), c4[1] = make_float4(v[4], v[5], v[6], v[7]);
            }
        }
    float p[R];
    row_scales<R>(red, ss, mx, norm, K, eps, p, rs);
    for (int i = threadIdx.x; i < K8; i += blockDim.x)
#pragma unroll
        for (int r = 0; r < R; r++) {
            float v[8], dummy = 0.0f;
            if (xc) {
                const float4 *c4 = reinterpret_cast<const float4 *>(xc + (size_t)r * K + 8 * i);
                float4 a = c4[0], b = c4[1];
                v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
            } else {
                value8(r, i, v, &dummy);
            }
            __half h[8];
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int u = PERM == 2 ? (0x3120 >> (4 * (j & 3))) & 3 : j & 3; /* PERM 2: units 0, 2, 1, 3 */
                const int pos = PERM ? 2 * u + (j >> 2) : j;
                h[pos] = __float2half_rn(v[j] * p[r]);
            }
            *reinterpret_cast<uint4 *>(xs + (size_t)r * ldxs + 8 * i) = *reinterpret_cast<uint4 *>(h);
        }
    __syncthreads();
}

/* stage_h with each thread's values held in registers (NI iterations of the loop at most): every
 * load of x is issued at once after the wait, and the second pass converts the registers instead
 * of reading x or its shared copy again.  Same sums in the same order as stage_h, so the same bits.
 * (HM_GEMVQ_STAGE_REG=0: stage_h; the launch passes the choice in bit 2 of its flags.) */
template <int R, bool PERM, int NI>
__device__ __forceinline__ void stage_hr(__half *xs, int ldxs, const float *__restrict__ x, int ldx, int K, int in_mode,
                                         const float *__restrict__ nscale, float eps, float (*red)[R][QWARPS], float *rs)
{
    const int K8 = K / 8;
    const bool norm = in_mode == HMC_IN_RMSNORM, swi = in_mode == HMC_IN_SWIGLU;
    float v[NI][R][8];
    float4 sc[NI][2]; /* RMSNorm scales (norm) */
    float4 u[NI][R][2]; /* the up half (SwiGLU) */
    const float4 z = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int it = 0; it < NI; it++) { /* the loads first, all of them */
        const int i = threadIdx.x + it * blockDim.x;
        const bool ok = i < K8;
#pragma unroll
        for (int r = 0; r < R; r++) {
            const float4 *x4 = reinterpret_cast<const float4 *>(x + (size_t)r * ldx) + 2 * i;
            const float4 a = ok ? x4[0] : z, b = ok ? x4[1] : z;
            v[it][r][0] = a.x, v[it][r][1] = a.y, v[it][r][2] = a.z, v[it][r][3] = a.w;
            v[it][r][4] = b.x, v[it][r][5] = b.y, v[it][r][6] = b.z, v[it][r][7] = b.w;
            if (swi) {
                const float4 *u4 = reinterpret_cast<const float4 *>(x + (size_t)r * ldx + K) + 2 * i;
                u[it][r][0] = ok ? u4[0] : z, u[it][r][1] = ok ? u4[1] : z;
            }
        }
        if (norm) {
            const float4 *s4 = reinterpret_cast<const float4 *>(nscale) + 2 * i;
            sc[it][0] = ok ? s4[0] : z, sc[it][1] = ok ? s4[1] : z;
        }
    }
    float ss[R], mx[R];
#pragma unroll
    for (int r = 0; r < R; r++) ss[r] = 0.0f, mx[r] = 0.0f;
#pragma unroll
    for (int it = 0; it < NI; it++) {
        if (threadIdx.x + it * blockDim.x >= K8) break;
#pragma unroll
        for (int r = 0; r < R; r++) {
            float *w = v[it][r];
            if (swi) {
                const float uu[8] = {u[it][r][0].x, u[it][r][0].y, u[it][r][0].z, u[it][r][0].w,
                                     u[it][r][1].x, u[it][r][1].y, u[it][r][1].z, u[it][r][1].w};
#pragma unroll
                for (int j = 0; j < 8; j++) w[j] = w[j] / (1.0f + __expf(-w[j])) * uu[j];
            } else if (norm) {
                const float s8[8] = {sc[it][0].x, sc[it][0].y, sc[it][0].z, sc[it][0].w,
                                     sc[it][1].x, sc[it][1].y, sc[it][1].z, sc[it][1].w};
#pragma unroll
                for (int j = 0; j < 8; j++) ss[r] += w[j] * w[j], w[j] *= s8[j];
            }
#pragma unroll
            for (int j = 0; j < 8; j++) mx[r] = fmaxf(mx[r], fabsf(w[j]));
        }
    }
    float p[R];
    row_scales<R>(red, ss, mx, norm, K, eps, p, rs);
#pragma unroll
    for (int it = 0; it < NI; it++) {
        const int i = threadIdx.x + it * blockDim.x;
        if (i >= K8) break;
#pragma unroll
        for (int r = 0; r < R; r++) {
            __half h[8];
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int pos = PERM ? 2 * (j & 3) + (j >> 2) : j;
                h[pos] = __float2half_rn(v[it][r][j] * p[r]);
            }
            *reinterpret_cast<uint4 *>(xs + (size_t)r * ldxs + 8 * i) = *reinterpret_cast<uint4 *>(h);
        }
    }
    __syncthreads();
}

/* stage_hr where the knob asks for it and a thread's values fit (1 or 2 rows, K <= 8192 at 256
 * threads, at most 64 values a thread), else stage_h */
template <int R, bool PERM>
__device__ __forceinline__ void stage_any(int sreg, __half *xs, int ldxs, const float *__restrict__ x, int ldx, int K,
                                          int in_mode, const float *__restrict__ nscale, float eps,
                                          float (*red)[R][QWARPS], float *rs, float *xc)
{
    if constexpr (R <= 2) {
        const int iters = (K / 8 + (int)blockDim.x - 1) / (int)blockDim.x;
        const int width = in_mode == HMC_IN_SWIGLU ? 2 : 1; /* registers per value while loading */
        if (sreg && iters <= 2) return stage_hr<R, PERM, 2>(xs, ldxs, x, ldx, K, in_mode, nscale, eps, red, rs);
        if (sreg && iters <= 4 && R * width <= 2)
            return stage_hr<R, PERM, 4>(xs, ldxs, x, ldx, K, in_mode, nscale, eps, red, rs);
    }
    stage_h<R, PERM ? 1 : 0>(xs, ldxs, x, ldx, K, in_mode, nscale, eps, red, rs, xc);
}

/* Rotary epilogue (hmc_gemv_args.rope) on both kernels' outputs: the lane that holds rows n, n + 1
 * of a head's interleaved pair rotates them (q, k) and appends k, v to the caches; as gemv.cu's
 * rope_pair and rope_append_kernel, to the bit. */
struct q_rope {
    const float *freqs;
    const int *pos_dev;
    int pos_add, T, H, KVH, hd, max_seq, cache_f32;
    void *kc, *vc;
};

/* rotate (a, b) of input row r at output row n (even) when it is q or k; store k, v into the cache */
__device__ __forceinline__ void q_rope_pair(const q_rope &e, int n, int r, float &a, float &b)
{
    const int h = n / e.hd, i = (n % e.hd) / 2;
    if (h >= e.H + 2 * e.KVH) return;
    const int bt = r / e.T, pos = (e.pos_dev ? *e.pos_dev : 0) + e.pos_add + r % e.T;
    if (h < e.H + e.KVH) {
        float ang = (float)pos * e.freqs[i];
        float c, sn;
        sincosf(ang, &sn, &c);
        const float a0 = a, b0 = b;
        /* the roundings written out: rope.cu's kernel has these (its a * c - bb * s became one fma
         * with bb * s rounded, checked against it on an H200); left to the compiler, the 8-row
         * kernel's epilogue contracted the other product (1 ulp apart in q) */
        a = __fmaf_rn(a0, c, -__fmul_rn(b0, sn)), b = __fmaf_rn(a0, sn, __fmul_rn(b0, c));
    }
    if (h >= e.H) hmc_kv_append(e.kc, e.vc, e.cache_f32, h, e.H, e.KVH, e.max_seq, e.hd, bt, pos, i, a, b);
}

/* Q = 0: fp8 (16 weights per 16-byte word), Q = 1: NVFP4 (32 weights per word + 2 block scales).
 * A warp takes a tile of 8 rows (its lane's group g = lane / 4 loads row 8·tile + g; t = lane % 4
 * the words t, t + 4, ... of the warp's K segment, U per step, double-buffered); KS warps split a
 * tile's K and add their sums in shared memory; a block takes 8/KS tiles per step of a
 * persistent loop.  MMA output: lane (g, t) holds rows 2t, 2t+1 of the tile for input row g.
 * Two blocks an SM (the launch bounds: at most 128 registers).  Without them ptxas gave the NVFP4
 * instances of the frame 137-156 registers, so one block (8 warps) an SM ran, 2 warps a
 * scheduler, stalled on their load and MMA chains (Nsight Compute).  With them: 104-128
 * registers, no spills, the same bits, -3.3 to -4.2% an NVFP4 frame on an H100 (docs/PERF.md). */
template <int Q, int R, int KS, int U, int NACC, bool YE, bool RP>
__global__ void __launch_bounds__(QWARPS * 32, 2)
gemvq_kernel(const uint8_t *__restrict__ W, const float *__restrict__ wscale, int N, int K,
             const float *__restrict__ x, int ldx, int in_mode, const float *__restrict__ nscale, float eps,
             float *__restrict__ y, int ldy, int accumulate, int out_swiglu, int xcache, int self_pf,
             const char *__restrict__ pf, size_t pf_bytes, int flags, q_rope rope)
{
    const uint64_t pol = hmc_l2_weight_policy(flags & 1);
    const int stamp = (flags >> 1) & 1;
    constexpr bool yearly = YE; /* accumulating launches with y_early (q_y_early) */
    constexpr int QK = Q == 0 ? 16 : 32;
    constexpr int PPB = QWARPS / KS;
    extern __shared__ uint4 q_smem[];
    __half *xs = reinterpret_cast<__half *>(q_smem);
    __shared__ float red[2][R][QWARPS];
    __shared__ float part[KS > 1 ? QWARPS : 1][R][8];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int grp = warp / KS, sub = warp % KS;
    const int ntiles = (N + 7) >> 3, KW = K / QK, ldxs = K + 8;
    const int seg = (KW + KS - 1) / KS, s0 = min(KW, sub * seg), s1 = min(KW, s0 + seg);
    const size_t rowbytes = Q == 0 ? (size_t)K : (size_t)K / 2;
    const uint8_t *bsc = W + (size_t)N * rowbytes; /* NVFP4 block scales [N][K/16] */
    const int tstride = gridDim.x * PPB;

    uint4 cur[U];
    uint32_t cs[U];
    auto load = [&](uint4 (&d)[U], uint32_t (&ds)[U], int tile, int base) {
        const int row = min(tile * 8 + g, N - 1);
        const uint4 *rp = reinterpret_cast<const uint4 *>(W + (size_t)row * rowbytes);
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int w = base + t + 4 * u;
            const bool ok = tile < ntiles && w < s1;
            d[u] = ok ? ldw_q(rp + w, pol) : make_uint4(0, 0, 0, 0);
            if (Q == 1)
                ds[u] = ok ? (uint32_t)__ldg(reinterpret_cast<const unsigned short *>(bsc + (size_t)row * (K / 16)) + w)
                           : 0u;
        }
    };

    /* the words of a tile's segment past the first step, asked from L2 by one lane per row: the
     * warp's later steps then wait for L2, not DRAM */
    auto prefetch_rest = [&](int tile) {
        const int w0 = s0 + 4 * U;
        if (!self_pf || t != 0 || tile >= ntiles || w0 >= s1) return;
        const size_t row = (size_t)min(tile * 8 + g, N - 1);
        l2_pf(W + row * rowbytes + (size_t)w0 * 16, (uint32_t)(s1 - w0) * 16);
        if (Q == 1) { /* the block scales: 2 bytes per word, whole 16-byte units inside the table */
            const size_t tot = ((size_t)N * (K / 16)) & ~(size_t)15;
            size_t b0 = (row * (K / 16) + 2 * (size_t)w0) & ~(size_t)15, b1 = row * (K / 16) + 2 * (size_t)s1;
            b1 = min((b1 + 15) & ~(size_t)15, tot);
            if (b1 > b0) l2_pf(bsc + b0, (uint32_t)(b1 - b0));
        }
    };

    int bt = blockIdx.x * PPB;
    qstamp(stamp, 0);
    pdl_trigger();
    load(cur, cs, bt + grp, s0); /* weights only: before waiting for the previous op */
    prefetch_rest(bt + grp);
    pdl_wait();
    qstamp(stamp, 1);
    /* accumulating: the old outputs of a tile are read at its start (the first one's right after
     * the wait) instead of in the epilogue; earlier kernels wrote them, only this lane writes them */
    float yo[2] = {0.0f, 0.0f};
    auto load_y = [&](int tile) {
        if constexpr (yearly) {
            const int n = tile * 8 + 2 * t;
            if (sub || g >= R || tile >= ntiles) return;
            if (n < N) yo[0] = y[(size_t)g * ldy + n];
            if (n + 1 < N) yo[1] = y[(size_t)g * ldy + n + 1];
        }
    };
    load_y(bt + grp);
    float rs[R];
    stage_h<R, Q == 1 ? 2 : 0>(xs, ldxs, x, ldx, K, in_mode, nscale, eps, red, rs,
                       xcache ? reinterpret_cast<float *>(xs + (size_t)R * ldxs) : nullptr);
    qstamp(stamp, 2);
    float rsg = 0.0f; /* this lane's input row's factor */
#pragma unroll
    for (int r = 0; r < R; r++)
        if (r == g) rsg = rs[r];
    const float tsc = Q == 1 ? wscale[0] * 128.0f : 1.0f; /* NVFP4: block scales were staged x128 */
    const __half *xrow = xs + (size_t)min(g, R - 1) * ldxs;

    for (bool first = true; bt < ntiles; bt += tstride, first = false) {
        const int tile = bt + grp;
        if (yearly && !first) load_y(tile);
        /* independent accumulators: consecutive MMAs into one would wait for each other */
        float ca[NACC][4];
#pragma unroll
        for (int i = 0; i < NACC; i++) ca[i][0] = ca[i][1] = ca[i][2] = ca[i][3] = 0.0f;
        prefetch_rest(tile + tstride); /* the next tile's rest (its first step comes with the last one here) */
        for (int base = s0;; base += 4 * U) {
            uint4 nxt[U];
            uint32_t ns[U];
            if (base + 4 * U < s1) load(nxt, ns, tile, base + 4 * U);
            else load(nxt, ns, tile + tstride, s0); /* the next tile's first step */
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int w = base + t + 4 * u;
                const bool act = g < R && w < s1;
                const uint32_t wr[4] = {cur[u].x, cur[u].y, cur[u].z, cur[u].w};
                if (Q == 0) {
                    uint4 x0 = make_uint4(0, 0, 0, 0), x1 = x0;
                    if (act) {
                        const uint4 *xp = reinterpret_cast<const uint4 *>(xrow + (size_t)w * 16);
                        x0 = xp[0], x1 = xp[1];
                    }
                    const uint32_t a[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
                    for (int j = 0; j < 4; j++)
                        mma_f16(ca[u % NACC], a[2 * j], a[2 * j + 1], e4m3x2_to_h2(wr[j] & 0xffffu),
                                e4m3x2_to_h2(wr[j] >> 16));
                } else {
                    /* A's rows 8..15 and the rows of lanes g >= R feed only outputs nobody reads, so
                     * they need not be zero: each 16-byte unit of x (staged as pairs 0, 2, 1, 3) is
                     * the first MMA's A as loaded ({0, 2, 1, 3}: a0 = pair 0, a2 = pair 1), and the
                     * second MMA takes pairs 2 and 3 beside two registers of any value.  Past the
                     * segment (zero weights) the lane reads word 0, which is staged and finite. */
                    const uint4 *xp = reinterpret_cast<const uint4 *>(xrow + (size_t)(w < s1 ? w : 0) * 32);
                    const uint32_t s2 = hmul2u(e4m3x2_to_h2(cs[u]), 0x58005800u); /* x128 in f16 */
                    const uint32_t sa = (s2 & 0xffffu) * 0x10001u, sb = (s2 >> 16) * 0x10001u;
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const uint4 v = xp[i];
                        const uint32_t bs = i < 2 ? sa : sb;
                        const uint32_t b0 = hmul2u(e2m1_pair<0>(wr[i]), bs), b1 = hmul2u(e2m1_pair<1>(wr[i]), bs);
                        const uint32_t b2 = hmul2u(e2m1_pair<2>(wr[i]), bs), b3 = hmul2u(e2m1_pair<3>(wr[i]), bs);
                        uint32_t any0, any1; /* registers of no particular value: no instruction sets them */
                        asm volatile("" : "=r"(any0));
                        asm volatile("" : "=r"(any1));
                        mma_a(ca[u % NACC], v.x, v.y, v.z, v.w, b0, b1);
                        mma_a(ca[u % NACC], v.y, any0, v.w, any1, b2, b3);
                    }
                }
            }
#pragma unroll
            for (int u = 0; u < U; u++) cur[u] = nxt[u], cs[u] = ns[u];
            if (base + 4 * U >= s1) break;
        }
        float c[2] = {ca[0][0], ca[0][1]};
#pragma unroll
        for (int i = 1; i < NACC; i++) c[0] += ca[i][0], c[1] += ca[i][1];
        if (KS > 1) {
            if (g < R) part[warp][g][2 * t] = c[0], part[warp][g][2 * t + 1] = c[1];
            __syncthreads();
            if (sub == 0 && g < R)
#pragma unroll
                for (int k = 1; k < KS; k++) c[0] += part[warp + k][g][2 * t], c[1] += part[warp + k][g][2 * t + 1];
            __syncthreads();
        }
        if (sub == 0 && g < R && tile < ntiles) {
            const int n = tile * 8 + 2 * t;
            const float f0 = rsg * (Q == 0 ? wscale[min(n, N - 1)] : tsc);
            const float f1 = rsg * (Q == 0 ? wscale[min(n + 1, N - 1)] : tsc);
            if constexpr (RP) { /* the rotary epilogue: this lane holds the pair (n, n + 1) */
                if (n + 1 < N) {
                    float a = c[0] * f0, b = c[1] * f1;
                    q_rope_pair(rope, n, g, a, b);
                    y[(size_t)g * ldy + n] = a, y[(size_t)g * ldy + n + 1] = b;
                }
            } else if (out_swiglu) {
                if (n >= N) continue;
                const float gt = c[0] * f0, up = c[1] * f1;
                y[(size_t)g * ldy + n / 2] = gt / (1.0f + __expf(-gt)) * up;
            } else {
                /* the fused multiply-add written out: `y + c * f` compiled to one fma.rn before the
                 * early read, and a select in front of the add made the compiler emit a mul and an
                 * add (other bits) */
                float *yp = y + (size_t)g * ldy + n;
                if (n < N) yp[0] = accumulate ? __fmaf_rn(c[0], f0, yearly ? yo[0] : yp[0]) : c[0] * f0;
                if (n + 1 < N) yp[1] = accumulate ? __fmaf_rn(c[1], f1, yearly ? yo[1] : yp[1]) : c[1] * f1;
            }
        }
    }
    /* done with this block's rows: a share of the next op's weights into L2 (hmc_gemv_args.pf) */
    if (pf_bytes && threadIdx.x < 32) {
        const size_t share = ((pf_bytes + gridDim.x - 1) / gridDim.x + 15) & ~(size_t)15, b0 = blockIdx.x * share;
        const size_t len = b0 < pf_bytes ? min(share, pf_bytes - b0) & ~(size_t)15 : 0;
        const size_t piece = ((len + 31) / 32 + 15) & ~(size_t)15; /* a piece per lane */
        const size_t o = (size_t)threadIdx.x * piece;
        if (o < len) l2_pf(pf + b0 + o, (uint32_t)min(piece, len - o));
    }
    qstamp(stamp, 3);
}

/* the rotary epilogue's arguments (all zero without one) */
q_rope q_rope_of(const hmc_gemv_args *a)
{
    q_rope rp = {};
    if (a->rope) {
        const hmc_rope_args *r = a->rope;
        rp = {r->freqs, r->pos_dev, r->pos_add, r->T, r->H, r->KVH, r->hd, r->max_seq, r->ct == HMC_F32, r->k_cache,
              r->v_cache};
    }
    return rp;
}

/* The kernels' flags argument: bit 0 the evict-first weight loads, bit 1 phase stamps, bit 2 the
 * streaming kernel's register staging (stage_hr; HM_GEMVQ_STAGE_REG=0: off, read at the first
 * launch). */
int q_flags()
{
    static int sreg = -1;
    if (sreg < 0) {
        const char *e = getenv("HM_GEMVQ_STAGE_REG");
        sreg = !(e && atoi(e) == 0);
    }
    return hmc_gemv_evict_first() | hmc_gemv_stamp_on() << 1 | sreg << 2;
}

/* The 8-row kernel with the early reads of the old outputs (YE) for an accumulating launch of 1 or
 * 2 rows, unless the knob is off (hmc_gemv_y_early).  Not in the streaming kernel (fp8): there it
 * measured slower in whole frames, both as a second kernel (+6%, the launches after each
 * accumulating one 2-3 us slower) and as a run-time flag (docs/PERF.md). */
int q_y_early(const hmc_gemv_args *a)
{
    return hmc_gemv_y_early() && a->accumulate && !a->out_swiglu && !a->rope && a->rows <= 2;
}

template <int Q, int R, int KS, int NACC>
int launch_q(const hmc_gemv_args *a, cudaStream_t s)
{
    constexpr int U = 4;
    int ye = 0; /* occupancy slot: 0 plain, 1 early residual reads, 2 rotary epilogue */
    auto kern = gemvq_kernel<Q, R, KS, U, NACC, false, false>;
    if constexpr (R <= 2)
        if (q_y_early(a)) kern = gemvq_kernel<Q, R, KS, U, NACC, true, false>, ye = 1;
    if (a->rope) kern = gemvq_kernel<Q, R, KS, U, NACC, false, true>, ye = 2;
    /* room for the fp32 inputs too when small: staging then reads x once */
    const size_t hbytes = (size_t)R * (a->K + 8) * sizeof(__half), cbytes = (size_t)R * a->K * sizeof(float);
    const int xcache = hbytes + cbytes <= 48 * 1024;
    const size_t smem = hbytes + (xcache ? cbytes : 0);
    static hmc_occupancy ocs[3];
    hmc_occupancy &oc = ocs[ye];
    CKH(hmc_occupancy_get(&oc, kern, QWARPS * 32, smem, "gemv quant"));
    if (!q_sms) q_sms = oc.sms;
    const int occ = oc.occ;
    const int tiles = (a->N + 7) / 8, ppb = QWARPS / KS;
    const int blocks = HM_MIN((tiles + ppb - 1) / ppb, q_sms * HM_MIN(occ, q_bps));
    const char *pf = nullptr;
    size_t pf_bytes = 0;
    if (a->pf && a->pf_bytes > 16) { /* whole 16-byte units only */
        const uintptr_t p0 = ((uintptr_t)a->pf + 15) & ~(uintptr_t)15, p1 = ((uintptr_t)a->pf + a->pf_bytes) & ~(uintptr_t)15;
        if (p1 > p0) pf = (const char *)p0, pf_bytes = p1 - p0;
    }
    return launch_pdl(kern, dim3(blocks), dim3(QWARPS * 32), smem, s, (const uint8_t *)a->W, a->w_scale, a->N, a->K,
                      a->x, a->ldx, a->in_mode, a->norm_scale, a->eps, a->y, a->ldy, a->accumulate, a->out_swiglu,
                      xcache, q_self_pf, pf, pf_bytes, q_flags(), q_rope_of(a));
}

/* Warps per tile: as many as keep >= 3 steps (4·U words per row) per warp, doubled (down to 1.5
 * steps) while the tiles times warps stay under 1024 (few rows: more warps on each).  Measured on
 * H100 (tests/gpu_quant.c ops, docs/PERF.md).  variant 1..4 forces 1/2/4/8. */
template <int Q, int R>
int launch_ks(const hmc_gemv_args *a, cudaStream_t s)
{
    int v = a->variant;
    if (v < 1 || v > 4) {
        const int steps = (a->K / (Q == 0 ? 16 : 32) + 15) / 16, tiles = (a->N + 7) / 8;
        int ks = 1;
        while (ks < 8 && steps >= 3 * 2 * ks) ks *= 2;
        while (ks < 8 && tiles * ks < 1024 && 2 * steps >= 3 * 2 * ks) ks *= 2;
        v = ks == 1 ? 1 : ks == 2 ? 2 : ks == 4 ? 3 : 4;
    }
    /* MMA accumulator chains per warp: 1 by default; the knob's 2 (fp8, 80 registers) / 4 (nvfp4,
     * 124-128) shorten the chain of dependent MMAs in a step, measured within +-0.5% of a whole
     * NVFP4 frame (docs/PERF.md); built for 2 input rows only (the B = 2 decode; compile time) */
    constexpr int MA = R != 2 ? 1 : Q == 0 ? 2 : 4;
    static int env_read; /* HM_GEMVQ_MULTI_ACC=0|1 sets the knob's default (A/B in whole frames) */
    if (!env_read) {
        const char *e = getenv("HM_GEMVQ_MULTI_ACC");
        if (e) q_multi_acc = atoi(e) != 0;
        env_read = 1;
    }
    switch (v) {
    case 1: return q_multi_acc ? launch_q<Q, R, 1, MA>(a, s) : launch_q<Q, R, 1, 1>(a, s);
    case 2: return q_multi_acc ? launch_q<Q, R, 2, MA>(a, s) : launch_q<Q, R, 2, 1>(a, s);
    case 3: return q_multi_acc ? launch_q<Q, R, 4, MA>(a, s) : launch_q<Q, R, 4, 1>(a, s);
    default: return q_multi_acc ? launch_q<Q, R, 8, MA>(a, s) : launch_q<Q, R, 8, 1>(a, s);
    }
}

template <int Q>
int launch_rows(const hmc_gemv_args *a, cudaStream_t s)
{
    switch (a->rows) {
    case 1: return launch_ks<Q, 1>(a, s);
    case 2: return launch_ks<Q, 2>(a, s);
    case 3: return launch_ks<Q, 3>(a, s);
    case 4: return launch_ks<Q, 4>(a, s);
    default: return hm_err("%s:%d: gemv quant: rows %d not in 1..4", __FILE__, __LINE__, a->rows);
    }
}

/* ---- the streaming kernel (fp8 default): 16 weight rows per warp as the MMA's A operand -------
 * The 8-row kernel above loads each weight word straight into the MMA fragment layout, so one
 * load instruction reads 64 bytes of each of 8 rows; here the async-copy unit (cp.async) moves
 * whole stages into shared memory with every instruction reading whole 128-byte lines (256
 * contiguous bytes of each of 2 rows with 16-word stages, 512 of one row with 32-word stages),
 * closer to the bf16 GEMV's loads, and the fragments are read from there.
 * Each warp owns a 16-row tile (lane (g, t): rows g and g + 8, the A operand's two row halves;
 * activations are B, input row = B column g, so lanes g >= R feed nothing) and a K segment (KS
 * warps per tile), walked in steps of CW words per row through NS stages of its own; the first
 * NS stages are requested before waiting for the previous kernel (programmatic dependent launch).
 * fp8 row scales travel with a tile's first stage, NVFP4 block scales with every stage, so no
 * scale load sits on the critical path.  Per MMA a lane converts 8 weights (4 of each row) and
 * reads 4 activations: half the MMAs and activation reads per weight of the 8-row kernel.  The
 * arithmetic per product is that kernel's (same f16 weights and activations, fp32 accumulation;
 * only the order of the fp32 sums differs).  Output: lane (g, t) holds rows g (c0, c1) and g + 8
 * (c2, c3) for input rows 2t, 2t + 1; even lanes hold a SwiGLU / rotary pair with their neighbour.
 * Measured on H100 (docs/PERF.md, tests/gpu_quant.c): faster than the 8-row kernel for fp8 (whole
 * frame 4.02 -> 3.74 ms), slower for NVFP4 (3.41 -> 3.87 ms), so hmc_gemv_quant picks per type. */
__device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

/* global -> shared copy of `bytes` (4 or 16) by the async-copy unit, zero-filled past `valid`
 * bytes (0: nothing read) */
template <int BYTES> __device__ __forceinline__ void cp_async(void *dst, const void *src, uint32_t valid)
{
    if (BYTES == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src), "r"(valid) : "memory");
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;" ::"r"(smem_addr(dst)), "l"(src), "n"(BYTES), "r"(valid)
                     : "memory");
}
/* a whole 16-byte weight word with an L2 policy (the form with a source size and a policy stopped
 * the H200 with an illegal instruction, so copies that zero-fill take the plain form) */
__device__ __forceinline__ void cp_async_w(void *dst, const void *src, bool ok, int hint, uint64_t pol)
{
    if (hint && ok)
        asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src), "l"(pol)
                     : "memory");
    else
        cp_async<16>(dst, src, ok ? 16u : 0u);
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

template <int Q, int CW, int NS>
__global__ void __launch_bounds__(QWARPS * 32, 2)
gemvq3_kernel(const uint8_t *__restrict__ W, const float *__restrict__ wscale, int N, int K,
              const float *__restrict__ x, int ldx, int R, int in_mode, const float *__restrict__ nscale, float eps,
              float *__restrict__ y, int ldy, int accumulate, int out_swiglu, int KS, int xcache, q_rope rope,
              const char *__restrict__ pf, size_t pf_bytes, int flags, int l2hint)
{
    const uint64_t pol = hmc_l2_weight_policy(flags & 1);
    const int stamp = (flags >> 1) & 1, sreg = (flags >> 2) & 1;
    constexpr int QK = Q == 0 ? 16 : 32;          /* weights per 16-byte word */
    constexpr int STW = 16 * CW;                   /* words per stage */
    constexpr int STS = Q == 1 ? 16 * CW * 2 : 0;  /* NVFP4 block-scale bytes per stage */
    extern __shared__ uint4 q_smem[];
    __shared__ float red[2][4][QWARPS];
    __shared__ float4 part[QWARPS][8][2]; /* KS > 1: [warp][g][t < 2] partial sums */
    __shared__ float tsl[QWARPS][4][16];  /* fp8: the row scales of a warp's last 4 tiles (ring) */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int PPB = QWARPS / KS, grp = warp / KS, sub = warp % KS;
    const int ntiles = (N + 15) >> 4, KW = K / QK, ldxs = K + 8;
    const int seg = ((KW + KS - 1) / KS + 1) & ~1; /* even: whole 4-byte NVFP4 scale pairs */
    const int s0 = min(KW, sub * seg), s1 = min(KW, s0 + seg);
    const int nst = max(1, (seg + CW - 1) / CW); /* steps per tile (block-uniform) */
    const size_t rowbytes = Q == 0 ? (size_t)K : (size_t)K / 2;
    const uint8_t *bsc = W + (size_t)N * rowbytes; /* NVFP4 block scales [N][K/16] */
    const int tstride = gridDim.x * PPB, bt0 = blockIdx.x * PPB;
    const int total = (bt0 < ntiles ? (ntiles - bt0 + tstride - 1) / tstride : 0) * nst;
    __half *xs = reinterpret_cast<__half *>(q_smem);
    const size_t xbytes = ((size_t)R * ldxs * sizeof(__half) + (xcache ? (size_t)R * K * sizeof(float) : 0) + 15) & ~(size_t)15;
    uint8_t *wst = reinterpret_cast<uint8_t *>(q_smem) + xbytes + (size_t)warp * NS * (STW * 16 + STS);

    /* stage j -> slot j % NS: 16 rows x CW words, row r's word w at (w ^ 4 (r & 1)) (conflict-free
     * fragment reads); a copy instruction covers CW contiguous words of each of 32 / CW rows */
    auto issue = [&](int j) {
        const int it = j / nst, ks = j - it * nst, tile = bt0 + it * tstride + grp, w0 = s0 + ks * CW;
        const bool jok = j < total && tile < ntiles;
        uint8_t *d = wst + (size_t)(j % NS) * (STW * 16 + STS);
#pragma unroll
        for (int i = 0; i < STW / 32; i++) {
            const int c = i * 32 + lane, r = c / CW, w = c % CW, row = tile * 16 + r;
            const bool ok = jok && row < N && w0 + w < s1;
            const uint8_t *src = ok ? W + (size_t)row * rowbytes + (size_t)(w0 + w) * 16 : W;
            cp_async_w(d + (size_t)(r * CW + (w ^ ((r & 1) << 2))) * 16, src, ok, l2hint, pol);
        }
        if (Q == 1) /* the stage's block scales: 2 bytes per word, 4-byte copies */
#pragma unroll
            for (int i = 0; i < 16 * CW / 2 / 32; i++) {
                const int c = i * 32 + lane, r = c / (CW / 2), w = 2 * (c % (CW / 2)), row = tile * 16 + r;
                const bool ok = jok && row < N && w0 + w < s1;
                const uint8_t *src = ok ? bsc + (size_t)row * (K / 16) + 2 * (size_t)(w0 + w) : bsc;
                cp_async<4>(d + STW * 16 + (size_t)(r * CW + w) * 2, src, ok ? 4u : 0u);
            }
        if (Q == 0 && ks == 0 && sub == 0 && lane < 16) { /* the tile's row scales, with its first step */
            const int row = tile * 16 + lane;
            const bool ok = jok && row < N;
            cp_async<4>(&tsl[warp][it & 3][lane], ok ? wscale + row : wscale, ok ? 4u : 0u);
        }
        cp_commit(); /* one group per stage, empty or not: wait_group counts stay aligned */
    };

    qstamp(stamp, 0);
    pdl_trigger();
    for (int j = 0; j < NS; j++) issue(j); /* weights only: before the wait */
    const float tsc = Q == 1 ? __ldg(wscale) * 128.0f : 1.0f; /* NVFP4: block scales were staged x128 */
    pdl_wait();
    qstamp(stamp, 1);
    float rs[4] = {1.0f, 1.0f, 1.0f, 1.0f};
    {
        float *xc = xcache ? reinterpret_cast<float *>(xs + (size_t)R * ldxs) : nullptr;
        switch (R) { /* the 8-row kernel's staging, to the bit */
        case 1: stage_any<1, Q == 1>(sreg, xs, ldxs, x, ldx, K, in_mode, nscale, eps, reinterpret_cast<float (*)[1][QWARPS]>(red), rs, xc); break;
        case 2: stage_any<2, Q == 1>(sreg, xs, ldxs, x, ldx, K, in_mode, nscale, eps, reinterpret_cast<float (*)[2][QWARPS]>(red), rs, xc); break;
        case 3: stage_h<3, Q == 1 ? 1 : 0>(xs, ldxs, x, ldx, K, in_mode, nscale, eps, reinterpret_cast<float (*)[3][QWARPS]>(red), rs, xc); break;
        default: stage_h<4, Q == 1 ? 1 : 0>(xs, ldxs, x, ldx, K, in_mode, nscale, eps, red, rs, xc); break;
        }
    }
    qstamp(stamp, 2);
    const float rs0 = t == 0 ? rs[0] : rs[2], rs1 = t == 0 ? rs[1] : rs[3]; /* input rows 2t, 2t + 1 */
    const __half *xrow = xs + (size_t)min(g, R - 1) * ldxs;
    const int sw = (g & 1) << 2;

    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int j = 0; j < total; j++) { /* block-uniform */
        const int it = j / nst, ks = j - it * nst, tile = bt0 + it * tstride + grp, w0 = s0 + ks * CW;
        cp_wait<NS - 1>(); /* this lane's copies of stage j */
        __syncwarp();      /* and the other lanes' */
        const uint8_t *d = wst + (size_t)(j % NS) * (STW * 16 + STS);
        const uint4 *ws = reinterpret_cast<const uint4 *>(d);
#pragma unroll
        for (int u = 0; u < CW / 4; u++) {
            const int wl = t + 4 * u, w = w0 + wl;
            /* B's columns of lanes g >= R feed only outputs that are not read, so those lanes load
             * row R - 1 instead of zeros; past the segment the weights are zero-filled and the lane
             * reads word 0 (staged, finite) */
            const int wx = w < s1 ? w : 0;
            const uint4 va = ws[g * CW + (wl ^ sw)], vb = ws[(g + 8) * CW + (wl ^ sw)];
            const uint32_t wa[4] = {va.x, va.y, va.z, va.w}, wb[4] = {vb.x, vb.y, vb.z, vb.w};
            if (Q == 0) {
                const uint4 *xp = reinterpret_cast<const uint4 *>(xrow + (size_t)wx * 16);
                const uint4 x0 = xp[0], x1 = xp[1];
                const uint32_t xb[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
                for (int q = 0; q < 4; q++)
                    mma_a(c, e4m3x2_to_h2(wa[q] & 0xffffu), e4m3x2_to_h2(wb[q] & 0xffffu), e4m3x2_to_h2(wa[q] >> 16),
                          e4m3x2_to_h2(wb[q] >> 16), xb[2 * q], xb[2 * q + 1]);
            } else {
                uint32_t xb[16];
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    const uint4 v = reinterpret_cast<const uint4 *>(xrow + (size_t)wx * 32)[q];
                    xb[4 * q] = v.x, xb[4 * q + 1] = v.y, xb[4 * q + 2] = v.z, xb[4 * q + 3] = v.w;
                }
                const unsigned short *sc = reinterpret_cast<const unsigned short *>(d + STW * 16);
                const uint32_t sa2 = hmul2u(e4m3x2_to_h2(sc[g * CW + wl]), 0x58005800u); /* x128 in f16 */
                const uint32_t sb2 = hmul2u(e4m3x2_to_h2(sc[(g + 8) * CW + wl]), 0x58005800u);
                const uint32_t sa[2] = {(sa2 & 0xffffu) * 0x10001u, (sa2 >> 16) * 0x10001u};
                const uint32_t sb[2] = {(sb2 & 0xffffu) * 0x10001u, (sb2 >> 16) * 0x10001u};
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const uint32_t ma = sa[i >> 1], mb = sb[i >> 1];
                    mma_a(c, hmul2u(e2m1_pair<0>(wa[i]), ma), hmul2u(e2m1_pair<0>(wb[i]), mb),
                          hmul2u(e2m1_pair<1>(wa[i]), ma), hmul2u(e2m1_pair<1>(wb[i]), mb), xb[4 * i], xb[4 * i + 1]);
                    mma_a(c, hmul2u(e2m1_pair<2>(wa[i]), ma), hmul2u(e2m1_pair<2>(wb[i]), mb),
                          hmul2u(e2m1_pair<3>(wa[i]), ma), hmul2u(e2m1_pair<3>(wb[i]), mb), xb[4 * i + 2],
                          xb[4 * i + 3]);
                }
            }
        }
        __syncwarp(); /* the slot is read: refill it */
        issue(j + NS);
        if (ks != nst - 1) continue;
        /* end of the tile's segment: merge the KS segments, scale, store */
        if (KS > 1) {
            if (t < 2) part[warp][g][t] = make_float4(c[0], c[1], c[2], c[3]);
            __syncthreads();
            if (sub == 0 && t < 2)
                for (int k = 1; k < KS; k++) {
                    const float4 p = part[warp + k][g][t];
                    c[0] += p.x, c[1] += p.y, c[2] += p.z, c[3] += p.w;
                }
            __syncthreads();
        }
        if (sub == 0 && tile < ntiles) { /* warp-uniform */
            const int n0 = tile * 16 + g, n1 = n0 + 8;
            const float w0s = Q == 0 ? tsl[warp][it & 3][g] : tsc, w1s = Q == 0 ? tsl[warp][it & 3][g + 8] : tsc;
            float v[4] = {c[0] * (rs0 * w0s), c[1] * (rs1 * w0s), c[2] * (rs0 * w1s), c[3] * (rs1 * w1s)};
            float o[4]; /* the odd neighbour's values (row n + 1 of an interleaved pair) */
#pragma unroll
            for (int i = 0; i < 4; i++) o[i] = __shfl_down_sync(0xffffffffu, v[i], 4);
            if (t < 2) {
                const int r0 = 2 * t;
                if (out_swiglu) {
                    if (!(g & 1))
#pragma unroll
                        for (int i = 0; i < 4; i++) {
                            const int n = i < 2 ? n0 : n1, r = r0 + (i & 1);
                            if (n < N && r < R) y[(size_t)r * ldy + n / 2] = v[i] / (1.0f + __expf(-v[i])) * o[i];
                        }
                } else if (rope.freqs) { /* even lanes: the pair (n, n + 1) */
                    if (!(g & 1))
#pragma unroll
                        for (int i = 0; i < 4; i++) {
                            const int n = i < 2 ? n0 : n1, r = r0 + (i & 1);
                            if (n + 1 < N && r < R) {
                                q_rope_pair(rope, n, r, v[i], o[i]);
                                y[(size_t)r * ldy + n] = v[i], y[(size_t)r * ldy + n + 1] = o[i];
                            }
                        }
                } else {
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const int n = i < 2 ? n0 : n1, r = r0 + (i & 1);
                        if (n < N && r < R) {
                            float *yp = y + (size_t)r * ldy + n;
                            *yp = accumulate ? *yp + v[i] : v[i];
                        }
                    }
                }
            }
        }
        c[0] = c[1] = c[2] = c[3] = 0.0f;
    }
    cp_wait<0>();
    /* done with this block's rows: a share of the next op's weights into L2 (hmc_gemv_args.pf) */
    if (pf_bytes && threadIdx.x < 32) {
        const size_t share = ((pf_bytes + gridDim.x - 1) / gridDim.x + 15) & ~(size_t)15, b0 = blockIdx.x * share;
        const size_t len = b0 < pf_bytes ? min(share, pf_bytes - b0) & ~(size_t)15 : 0;
        const size_t piece = ((len + 31) / 32 + 15) & ~(size_t)15;
        const size_t o = (size_t)threadIdx.x * piece;
        if (o < len) l2_pf(pf + b0 + o, (uint32_t)min(piece, len - o));
    }
    qstamp(stamp, 3);
}

int q2_bps = 2; /* resident blocks per SM (at most what shared memory allows) */
/* the streaming kernel's weight copies carry the L2 policy (default; HM_GEMVQ3_L2HINT=0: plain
 * copies).  H100, fp8 frame at 200 positions: 3.552 ms plain -> 3.390 with evict-first copies. */
int q3_l2hint()
{
    static int on = -1;
    if (on < 0) {
        const char *v = getenv("HM_GEMVQ3_L2HINT");
        on = !(v && strcmp(v, "0") == 0);
    }
    return on;
}
int q3_rule;    /* auto kernel shape: 0 the default, 1..4 alternatives (A/B knob) */

template <int Q, int CW, int NS>
int launch_q3(const hmc_gemv_args *a, int KS, cudaStream_t s)
{
    auto kern = gemvq3_kernel<Q, CW, NS>;
    const int R = a->rows;
    const size_t hbytes = (size_t)R * (a->K + 8) * sizeof(__half), cbytes = (size_t)R * a->K * sizeof(float);
    const int xcache = hbytes + cbytes <= 48 * 1024;
    const size_t xbytes = (hbytes + (xcache ? cbytes : 0) + 15) & ~(size_t)15;
    const size_t smem = xbytes + (size_t)QWARPS * NS * (16 * CW * 16 + (Q == 1 ? 16 * CW * 2 : 0));
    if (smem > 200 * 1024) { /* long rows: the smallest stages (hmc_gemv_quant checks that they fit) */
        if (CW == 16 && NS == 2) return hm_err("%s:%d: gemv quant: K %d too large", __FILE__, __LINE__, a->K);
        return launch_q3<Q, 16, 2>(a, KS, s);
    }
    static hmc_occupancy oc;
    CKH(hmc_occupancy_get(&oc, kern, QWARPS * 32, smem, "gemv quant"));
    const int tiles = (a->N + 15) / 16, ppb = QWARPS / KS;
    const int blocks = HM_MIN((tiles + ppb - 1) / ppb, oc.sms * HM_MIN(oc.occ, q2_bps));
    const char *pf = nullptr;
    size_t pf_bytes = 0;
    if (a->pf && a->pf_bytes > 16) { /* whole 16-byte units only */
        const uintptr_t p0 = ((uintptr_t)a->pf + 15) & ~(uintptr_t)15, p1 = ((uintptr_t)a->pf + a->pf_bytes) & ~(uintptr_t)15;
        if (p1 > p0) pf = (const char *)p0, pf_bytes = p1 - p0;
    }
    return launch_pdl(kern, dim3(blocks), dim3(QWARPS * 32), smem, s, (const uint8_t *)a->W, a->w_scale, a->N, a->K,
                      a->x, a->ldx, R, a->in_mode, a->norm_scale, a->eps, a->y, a->ldy, a->accumulate, a->out_swiglu,
                      KS, xcache, q_rope_of(a), pf, pf_bytes, q_flags(), q3_l2hint());
}

/* Kernel shape of the streaming kernel: variant 1..12 = KS 1/2/4/8 warps per tile with (CW, NS) =
 * (16, 2), then (16, 3), then (32, 2); 0 = auto: the fewest warps per tile that still give every
 * SM work (tiles · KS / 8 blocks >= 1.2 per SM), at most 8, with (16, 2) and 2 blocks per SM: the
 * fastest whole fp8 frame of the rules measured on H100 (hmc_gemv_quant_set_auto_rule, 1 block
 * per SM; docs/PERF.md), though single shapes have faster fixed variants. */
template <int Q>
int launch_v3(const hmc_gemv_args *a, cudaStream_t s)
{
    int v = a->variant;
    if (v < 1 || v > 12) {
        static int sms;
        if (!sms) {
            int dev;
            CK(cudaGetDevice(&dev));
            CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
        }
        const int tiles = (a->N + 15) / 16;
        int ks = 1;
        while (ks < 8 && tiles * ks < 8 * sms * 6 / 5) ks *= 2;
        if (q3_rule == 3 && ks < 8) ks *= 2; /* the A/B rules (hmc_gemv_quant_set_auto_rule) */
        if (q3_rule == 4 && ks > 1) ks /= 2;
        v = (ks == 1 ? 1 : ks == 2 ? 2 : ks == 4 ? 3 : 4) + (q3_rule == 1 ? 4 : q3_rule == 2 ? 8 : 0);
    }
    const int ks = 1 << ((v - 1) & 3);
    return v <= 4 ? launch_q3<Q, 16, 2>(a, ks, s) : v <= 8 ? launch_q3<Q, 16, 3>(a, ks, s) : launch_q3<Q, 32, 2>(a, ks, s);
}

/* ---- quantisers and dequantiser ---- */

__device__ __forceinline__ float bf16f(const __nv_bfloat16 *p, size_t i) { return __bfloat162float(p[i]); }

/* tensor amax as float bits (non-negative floats order like their bit patterns) */
__global__ void amax_kernel(const __nv_bfloat16 *__restrict__ W, size_t n, unsigned *out)
{
    __shared__ float red[32];
    float m = 0.0f;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        m = fmaxf(m, fabsf(bf16f(W, i)));
    m = block_max(m, red);
    if (threadIdx.x == 0) atomicMax(out, __float_as_uint(m));
}

/* e2m1 code of v (|v| <= 6 after scaling), round to nearest, ties to the even code */
__device__ __forceinline__ uint32_t to_e2m1(float v)
{
    const float a = fabsf(v);
    uint32_t c = a <= 0.25f ? 0 : a < 0.75f ? 1 : a <= 1.25f ? 2 : a < 1.75f ? 3 : a <= 2.5f ? 4 : a < 3.5f ? 5
               : a <= 5.0f ? 6 : 7;
    return c | (v < 0.0f && c ? 8u : 0u);
}

/* one thread per block of 16: its e4m3 scale and 8 bytes of nibbles */
__global__ void nvfp4_kernel(const __nv_bfloat16 *__restrict__ W, size_t nblocks, const unsigned *amax_bits,
                             uint8_t *__restrict__ Wq, size_t nvals, float *tscale)
{
    const size_t b = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    const float amax = __uint_as_float(*amax_bits);
    const float gs = amax > 0.0f ? amax / (6.0f * 448.0f) : 1.0f;
    if (b == 0) *tscale = gs; /* read by later kernels only */
    if (b >= nblocks) return;
    float v[16], bm = 0.0f;
#pragma unroll
    for (int i = 0; i < 16; i++) v[i] = bf16f(W, b * 16 + i), bm = fmaxf(bm, fabsf(v[i]));
    __nv_fp8_e4m3 s8(fminf(bm / (6.0f * gs), 448.0f));
    const float sd = float(s8) * gs, inv = sd > 0.0f ? 1.0f / sd : 0.0f;
    uint32_t lo = 0, hi = 0;
#pragma unroll
    for (int i = 0; i < 8; i++) lo |= to_e2m1(v[i] * inv) << (4 * i), hi |= to_e2m1(v[8 + i] * inv) << (4 * i);
    reinterpret_cast<uint2 *>(Wq)[b] = make_uint2(lo, hi);
    Wq[nvals / 2 + b] = s8.__x;
}

/* The GEMV layout: element e = 4h + j of each 4-byte word (bits 4e..4e+3 as hmc_quantize_nvfp4
 * writes it) gets its magnitude at bits 16h + 3j.. and its sign at 16h + (j == 3 ? 15 : 14 - j);
 * the CPU twin and the format: kernels/wquant.h wq_nvfp4_pack. */
__device__ __forceinline__ uint32_t nvfp4_pack_word(uint32_t s)
{
    uint32_t p = 0;
#pragma unroll
    for (int e = 0; e < 8; e++) {
        const uint32_t c = s >> (4 * e) & 15u;
        p |= (c & 7u) << (16 * (e / 4) + 3 * (e % 4)) | (c >> 3) << (16 * (e / 4) + (e % 4 == 3 ? 15 : 14 - e % 4));
    }
    return p;
}

__global__ void nvfp4_pack_kernel(uint32_t *__restrict__ w, size_t nwords)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < nwords; i += (size_t)gridDim.x * blockDim.x)
        w[i] = nvfp4_pack_word(w[i]);
}

/* the f16x2 of e2m1_pair (elements P, P+4 of a GEMV-layout word) -> the two values */
__device__ __forceinline__ float2 e2m1_vals(uint32_t h2)
{
    return make_float2(__half2float(__ushort_as_half((unsigned short)(h2 & 0xFFFFu))) * 16384.0f,
                       __half2float(__ushort_as_half((unsigned short)(h2 >> 16))) * 16384.0f);
}

/* 8 values of a GEMV-layout word, times s, into o[0..7] */
__device__ __forceinline__ void e2m1_word(uint32_t w, float s, __nv_bfloat16 *o)
{
    const float2 v0 = e2m1_vals(e2m1_pair<0>(w)), v1 = e2m1_vals(e2m1_pair<1>(w)), v2 = e2m1_vals(e2m1_pair<2>(w)),
                 v3 = e2m1_vals(e2m1_pair<3>(w));
    o[0] = __float2bfloat16(v0.x * s), o[4] = __float2bfloat16(v0.y * s);
    o[1] = __float2bfloat16(v1.x * s), o[5] = __float2bfloat16(v1.y * s);
    o[2] = __float2bfloat16(v2.x * s), o[6] = __float2bfloat16(v2.y * s);
    o[3] = __float2bfloat16(v3.x * s), o[7] = __float2bfloat16(v3.y * s);
}

/* rows n0 .. n0 + N - 1 of a [Ntot, K] weight -> out [N, K] */
__global__ void dequant_kernel(const uint8_t *__restrict__ Wq, int q, const float *__restrict__ scale, int Ntot, int n0,
                               int N, int K, __nv_bfloat16 *__restrict__ out)
{
    const size_t n16 = (size_t)N * K / 16;
    const uint8_t *bscale = Wq + (size_t)Ntot * K / 2 + (size_t)n0 * K / 16; /* nvfp4: the rows' block scales */
    Wq += q ? (size_t)n0 * K / 2 : (size_t)n0 * K;
    if (!q) scale += n0;
    for (size_t b = blockIdx.x * (size_t)blockDim.x + threadIdx.x; b < n16; b += (size_t)gridDim.x * blockDim.x) {
        const size_t row = b * 16 / K;
        __nv_bfloat16 o[16];
        if (q == 0) {
            const uint4 w = reinterpret_cast<const uint4 *>(Wq)[b];
            const uint8_t *p = reinterpret_cast<const uint8_t *>(&w);
            const float s = scale[row];
#pragma unroll
            for (int i = 0; i < 16; i++) {
                __nv_fp8_e4m3 e;
                e.__x = p[i];
                o[i] = __float2bfloat16(float(e) * s);
            }
        } else {
            const uint2 w = reinterpret_cast<const uint2 *>(Wq)[b];
            __nv_fp8_e4m3 e;
            e.__x = bscale[b];
            const float s = float(e) * scale[0];
            e2m1_word(w.x, s, o);
            e2m1_word(w.y, s, o + 8);
        }
        reinterpret_cast<uint4 *>(out)[2 * b] = reinterpret_cast<uint4 *>(o)[0];
        reinterpret_cast<uint4 *>(out)[2 * b + 1] = reinterpret_cast<uint4 *>(o)[1];
    }
}

/* ---- Blackwell: NVFP4 x NVFP4 GEMM by cuBLASLt's block-scaled path (compile-only on this Hopper
 * build machine; sm_100 / sm_120 at run time) ---- */

/* cuBLASLt's 1-D block-scale layout: tiles of 128 rows x 4 scale columns (512 bytes, rows padded to
 * 128, scale columns to 4), tiles along K inner; inside a tile row r, column c sit at
 * (r % 32) * 16 + (r / 32) * 4 + c. */
__global__ void swizzle_kernel(const uint8_t *__restrict__ in, int rows, int cols, int ctiles, uint8_t *__restrict__ out)
{
    const int r = blockIdx.y * 128 + threadIdx.x / 4 % 32 + 32 * (threadIdx.x / 128);
    const int c = blockIdx.x * 4 + threadIdx.x % 4;
    const size_t tile = (size_t)blockIdx.y * ctiles + blockIdx.x;
    const int rr = r % 128;
    out[tile * 512 + (rr % 32) * 16 + (rr / 32) * 4 + c % 4] = r < rows && c < cols ? in[(size_t)r * cols + c] : 0;
}

__global__ void mul_kernel(const float *a, const float *b, float *out) { *out = *a * *b; }

cublasLtHandle_t q_lt;
float *q_consts; /* device: alpha, beta 0, beta 1 */

} // namespace

extern "C" size_t hmc_nvfp4_swizzled_bytes(int rows, int K)
{
    return (size_t)((rows + 127) / 128) * 128 * (size_t)((K / 16 + 3) / 4) * 4;
}

extern "C" int hmc_nvfp4_swizzle_scales(const void *Wq, int rows, int K, void *out, cudaStream_t s)
{
    if (K % 32) return hm_err("%s:%d: nvfp4 swizzle: K %d", __FILE__, __LINE__, K);
    const int cols = K / 16, ctiles = (cols + 3) / 4;
    swizzle_kernel<<<dim3(ctiles, (rows + 127) / 128), 512, 0, s>>>((const uint8_t *)Wq + (size_t)rows * K / 2, rows,
                                                                    cols, ctiles, (uint8_t *)out);
    CK_LAUNCH();
    return HM_OK;
}

extern "C" int hmc_gemm_nvfp4(const void *xq, const void *x_sw, const float *x_ts, const void *wq, const void *w_sw,
                              const float *w_ts, float *y, int M, int N, int K, int accumulate, cudaStream_t s)
{
#if CUBLAS_VER_MAJOR > 12 || (CUBLAS_VER_MAJOR == 12 && CUBLAS_VER_MINOR >= 8)
    int dev, major;
    CK(cudaGetDevice(&dev));
    CK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    if (major != 10 && major != 12)
        return hm_err("%s:%d: block-scaled NVFP4 GEMM needs sm_100 / sm_120 (this device: sm_%d0)", __FILE__, __LINE__,
                      major);
    if (K % 32) return hm_err("%s:%d: nvfp4 gemm: K %d", __FILE__, __LINE__, K);
    if (!q_lt) {
        CKLT(cublasLtCreate(&q_lt));
        const float c[3] = {1.0f, 0.0f, 1.0f};
        CK(cudaMalloc((void **)&q_consts, sizeof c));
        CK(cudaMemcpy(q_consts, c, sizeof c, cudaMemcpyHostToDevice));
    }
    mul_kernel<<<1, 1, 0, s>>>(x_ts, w_ts, q_consts); /* alpha = the two tensor scales */
    CK_LAUNCH();
    /* column-major view as in gemm.cu: D[N, M] = (A = W as [K, N])ᵀ · (B = x as [K, M]) */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    CKLT(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtPointerMode_t pm = CUBLASLT_POINTER_MODE_DEVICE;
    cublasLtMatmulMatrixScale_t sm = CUBLASLT_MATMUL_MATRIX_SCALE_VEC16_UE4M3;
    int rc = HM_OK;
#define TRYLT(x) \
    if (rc == HM_OK && (x) != CUBLAS_STATUS_SUCCESS) rc = hm_err("%s:%d: %s failed", __FILE__, __LINE__, #x)
    TRYLT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    TRYLT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    TRYLT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_POINTER_MODE, &pm, sizeof pm));
    TRYLT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &sm, sizeof sm));
    TRYLT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &sm, sizeof sm));
    TRYLT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_sw, sizeof w_sw));
    TRYLT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &x_sw, sizeof x_sw));
    TRYLT(cublasLtMatrixLayoutCreate(&la, CUDA_R_4F_E2M1, K, N, K));
    TRYLT(cublasLtMatrixLayoutCreate(&lb, CUDA_R_4F_E2M1, K, M, K));
    TRYLT(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, N, M, N));
    cublasLtMatmulPreference_t pref = nullptr;
    cublasLtMatmulHeuristicResult_t res;
    int n = 0;
    TRYLT(cublasLtMatmulPreferenceCreate(&pref));
    TRYLT(cublasLtMatmulAlgoGetHeuristic(q_lt, op, la, lb, lc, lc, pref, 1, &res, &n));
    if (rc == HM_OK && n == 0) rc = hm_err("%s:%d: cuBLASLt has no block-scaled NVFP4 algorithm", __FILE__, __LINE__);
    TRYLT(cublasLtMatmul(q_lt, op, q_consts, wq, la, xq, lb, q_consts + (accumulate ? 2 : 1), y, lc, y, lc, &res.algo,
                         nullptr, 0, s));
#undef TRYLT
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(op);
    return rc;
#else
    (void)xq, (void)x_sw, (void)x_ts, (void)wq, (void)w_sw, (void)w_ts, (void)y, (void)M, (void)N, (void)K,
        (void)accumulate, (void)s;
    return hm_err("%s:%d: block-scaled NVFP4 GEMM needs cuBLAS >= 12.8", __FILE__, __LINE__);
#endif
}

extern "C" size_t hmc_weight_bytes(hmc_dtype t, int N, int K)
{
    const size_t n = (size_t)N * K;
    switch (t) {
    case HMC_F32: return 4 * n;
    case HMC_BF16: return 2 * n;
    case HMC_FP8: return n;
    case HMC_NVFP4: return n / 2 + n / 16;
    }
    return 0;
}

extern "C" size_t hmc_weight_scales(hmc_dtype t, int N) { return t == HMC_FP8 ? (size_t)N : t == HMC_NVFP4 ? 1 : 0; }

/* The phase stamps of the last stamped quantised launch (hmc_gemv_stamp_report prints them). */
extern "C" void hmc_gemv_quant_stamp_report(FILE *f) { hmc_gemv_phase_report(f, "gemvq", g_qstamp); }

extern "C" void hmc_gemv_quant_set_blocks_per_sm(int n) { q_bps = n > 0 ? n : 1; }
extern "C" void hmc_gemv_quant_set_stream_blocks_per_sm(int n) { q2_bps = n > 0 ? n : 2; }
extern "C" void hmc_gemv_quant_set_auto_rule(int r) { q3_rule = r >= 0 && r <= 4 ? r : 0; }
extern "C" void hmc_gemv_quant_set_self_prefetch(int on) { q_self_pf = on ? 1 : 0; }
extern "C" void hmc_gemv_quant_set_multi_acc(int on) { q_multi_acc = on ? 1 : 0; }
extern "C" void hmc_gemv_quant_set_impl(int k) { q_impl = k == 1 || k == 2 ? k : 0; }

/* The 8-row kernel's qkv launches run the rotary epilogue themselves (kernel template RP), as the
 * streaming kernel does; HM_GEMVQ_ROPE_SEP=1 (read at the first launch) runs hmc_rope_append after
 * them instead, the old way (A/B in whole frames, docs/PERF.md). */
int q_rope_sep()
{
    static int sep = -1;
    if (sep < 0) {
        const char *e = getenv("HM_GEMVQ_ROPE_SEP");
        sep = e && atoi(e) == 1;
    }
    return sep;
}

extern "C" int hmc_gemv_quant(const hmc_gemv_args *a, cudaStream_t s)
{
    const int kq = a->wdt == HMC_NVFP4 ? 32 : 16;
    if (a->wdt != HMC_FP8 && a->wdt != HMC_NVFP4) return hm_err("%s:%d: gemv quant: dtype %d", __FILE__, __LINE__, (int)a->wdt);
    if (a->K % kq || a->K <= 0 || a->N <= 0)
        return hm_err("%s:%d: gemv quant: K %d must be a positive multiple of %d", __FILE__, __LINE__, a->K, kq);
    if (!a->w_scale) return hm_err("%s:%d: gemv quant: no w_scale", __FILE__, __LINE__);
    if (((uintptr_t)a->x & 15) || a->ldx % 4 || (a->norm_scale && ((uintptr_t)a->norm_scale & 15)) ||
        ((uintptr_t)a->W & 15))
        return hm_err("%s:%d: gemv quant: W, x and norm_scale must be 16-byte aligned, ldx a multiple of 4", __FILE__,
                      __LINE__);
    if ((size_t)a->rows * (a->K + 8) * 2 > 200 * 1024)
        return hm_err("%s:%d: gemv quant: rows*K %d*%d too large for shared memory", __FILE__, __LINE__, a->rows, a->K);
    if (a->out_swiglu && (a->N % 2 || a->accumulate))
        return hm_err("%s:%d: gemv quant: swiglu output needs an even N and no accumulate", __FILE__, __LINE__);
    /* the 8-row kernel: for NVFP4 (measured faster there) unless the streaming one is asked for,
     * on request, where the streaming kernel's 4-byte NVFP4 scale copies cannot go (K % 64), or
     * where the activations leave no room for its smallest stages */
    static int impl_env; /* HM_GEMVQ_IMPL=1|2 sets hmc_gemv_quant_set_impl's default (A/B in whole frames) */
    if (!impl_env) {
        const char *e = getenv("HM_GEMVQ_IMPL");
        if (e && (atoi(e) == 1 || atoi(e) == 2)) q_impl = atoi(e);
        impl_env = 1;
    }
    const size_t xb = ((size_t)a->rows * (a->K + 8) * 2 + 15) & ~(size_t)15, st = (size_t)QWARPS * 2 * 16 * 16 * 16;
    const int old = q_impl == 1 || (q_impl == 0 && a->wdt == HMC_NVFP4) || (a->wdt == HMC_NVFP4 && a->K % 64) ||
                    xb + st + st / 8 > 200 * 1024;
    if (a->rope) {
        const hmc_rope_args *r = a->rope;
        if (a->accumulate || a->out_swiglu || r->hd % 2 || a->N != (r->H + 2 * r->KVH) * r->hd ||
            a->rows != r->B * r->T || (r->ct != HMC_BF16 && r->ct != HMC_F32))
            return hm_err("%s:%d: gemv quant: rotary epilogue needs N = (H + 2 KVH) hd, even hd, rows = B T, no "
                          "accumulate", __FILE__, __LINE__);
        if (old && q_rope_sep()) { /* HM_GEMVQ_ROPE_SEP=1: the 8-row kernel, then the separate op */
            if (a->ldy != a->N) return hm_err("%s:%d: gemv quant: rotary epilogue needs ldy = N", __FILE__, __LINE__);
            hmc_gemv_args b = *a;
            b.rope = nullptr;
            hmc_rope_args ra = *r;
            ra.qkv = a->y;
            CKH(b.wdt == HMC_FP8 ? launch_rows<0>(&b, s) : launch_rows<1>(&b, s));
            return hmc_rope_append(&ra, s);
        }
    }
    if (old) return a->wdt == HMC_FP8 ? launch_rows<0>(a, s) : launch_rows<1>(a, s);
    return a->wdt == HMC_FP8 ? launch_v3<0>(a, s) : launch_v3<1>(a, s);
}

extern "C" int hmc_quantize_nvfp4(const void *W, int N, int K, void *Wq, float *tscale, cudaStream_t s)
{
    if (K % 32 || N <= 0) return hm_err("%s:%d: nvfp4: K %d must be a multiple of 32", __FILE__, __LINE__, K);
    const size_t n = (size_t)N * K, nb = n / 16;
    unsigned *amax = reinterpret_cast<unsigned *>(tscale); /* the amax bits, then the scale */
    CK(cudaMemsetAsync(amax, 0, sizeof(unsigned), s));
    amax_kernel<<<(unsigned)HM_MIN((n + 255) / 256, (size_t)4096), 256, 0, s>>>((const __nv_bfloat16 *)W, n, amax);
    CK_LAUNCH();
    /* nvfp4_kernel reads the amax from *tscale and block 0 overwrites it with the scale: copy first */
    unsigned *am2;
    CK(cudaMallocAsync((void **)&am2, sizeof(unsigned), s));
    CK(cudaMemcpyAsync(am2, amax, sizeof(unsigned), cudaMemcpyDeviceToDevice, s));
    nvfp4_kernel<<<(unsigned)((nb + 255) / 256), 256, 0, s>>>((const __nv_bfloat16 *)W, nb, am2, (uint8_t *)Wq, n,
                                                               tscale);
    CK_LAUNCH();
    CK(cudaFreeAsync(am2, s));
    return HM_OK;
}

extern "C" int hmc_nvfp4_pack(void *Wq, int N, int K, cudaStream_t s)
{
    if (K % 32 || N <= 0) return hm_err("%s:%d: nvfp4 pack: N %d, K %d (K a multiple of 32)", __FILE__, __LINE__, N, K);
    const size_t nw = (size_t)N * K / 8;
    nvfp4_pack_kernel<<<(unsigned)HM_MIN((nw + 255) / 256, (size_t)8192), 256, 0, s>>>((uint32_t *)Wq, nw);
    CK_LAUNCH();
    return HM_OK;
}

extern "C" int hmc_dequantize_rows(const void *Wq, hmc_dtype t, const float *scale, int N, int K, int n0, int rows,
                                   void *out_bf16, cudaStream_t s)
{
    if ((t != HMC_FP8 && t != HMC_NVFP4) || K % 16)
        return hm_err("%s:%d: dequantize: dtype %d, K %d (fp8 or nvfp4, K a multiple of 16)", __FILE__, __LINE__, (int)t, K);
    if (n0 < 0 || rows < 1 || n0 + rows > N)
        return hm_err("%s:%d: dequantize: rows %d..%d of %d", __FILE__, __LINE__, n0, n0 + rows - 1, N);
    const size_t n16 = (size_t)rows * K / 16;
    dequant_kernel<<<(unsigned)HM_MIN((n16 + 255) / 256, (size_t)8192), 256, 0, s>>>(
        (const uint8_t *)Wq, t == HMC_NVFP4, scale, N, n0, rows, K, (__nv_bfloat16 *)out_bf16);
    CK_LAUNCH();
    return HM_OK;
}

extern "C" int hmc_dequantize(const void *Wq, hmc_dtype t, const float *scale, int N, int K, void *out_bf16,
                              cudaStream_t s)
{
    return hmc_dequantize_rows(Wq, t, scale, N, K, 0, N, out_bf16, s);
}
