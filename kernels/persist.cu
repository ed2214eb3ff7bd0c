/* persist.cu - the decode layer stack as one persistent kernel (hmc_persist_*, ops_cuda.h).
 * An experiment, off in the engine by default (lm_cuda_tune.persist, HM_LM_PERSIST): on an H100
 * it made frames slower (docs/PERF.md, "The layer stack as one persistent kernel").
 * CPU twin: the op chain cpu_rmsnorm -> cpu_linear -> cpu_rope_interleaved -> cpu_attention ->
 * cpu_linear (+ residual) -> ..., which gpu_ops checks it against.
 *
 * The idea: a frame of separate kernels loses ~1.5 ms to what happens between them, although
 * programmatic dependent launch hides the launches.  Every GEMV holds the whole register file,
 * so the next kernel streams only on SMs the current one has left; the attention, the small
 * GEMVs' tails and each kernel's ramp leave DRAM idle.  Here one block per SM runs the whole
 * program, with a grid barrier between phases.  Its weight stream never waits for a barrier: a
 * producer warp copies the block's share of every GEMV's rows, in program order, into a ring of
 * shared-memory slots (bulk copies completing on mbarriers).  8 consumer warps compute from the
 * ring; while a barrier, the attention or a slow block is waited for, the ring fills with the
 * next phases' rows.
 *
 * Work split.
 * - A GEMV's rows go in units: one row, or the pair an epilogue needs (the rotary pair
 *   (2i, 2i+1) of the qkv projection; gate and up of w1|w3).  A slot (a tile) holds whole units,
 *   at most TROWS rows; tiles are dealt to the blocks round-robin.
 * - Thread t owns the 16-byte words t, t + 256, ... of every row, with its slice of the input in
 *   registers (RMSNorm fused as in gemv.cu: x · scale, 1/rms applied to the sums).  Each warp
 *   reduces its tile sums by transposed halving and adds them into the slot's accumulators in
 *   shared memory; the last warp done with the slot applies the epilogue.  There is no
 *   block-wide barrier per tile.  The epilogue's inputs (residuals, rotations) are loaded at the
 *   phase's start.
 * - The attention splits every (row, kv head) into chunks of at least chunk_min keys over the
 *   blocks.  A warp takes 8 keys (K and V rows) a step, reduces the scores of all query heads
 *   sharing the kv head together, and keeps an online softmax.  The warps merge in shared memory;
 *   the last chunk block of a (row, kv head) merges the chunks (a counter, back to 0 afterwards).
 * Every read of data another block wrote in this launch bypasses L1 (ld.global.cg). */
#include "common_cuda.h"
#include "ops_cuda.h"

#include <stdio.h>
#include <stdlib.h>

namespace {

constexpr int CW = 8;                 /* consumer warps */
constexpr int NT = (CW + 1) * 32;     /* + one producer warp */
constexpr int SLOT = 48 * 1024;       /* ring slot: 8 rows of 3072 bf16 (4 pairs), 3 of 8192 */
constexpr int NSLOT = 4;
constexpr int TROWS = 8;              /* rows a slot holds at most */
constexpr int WJ = 4;                 /* 16-byte words of a row per thread: K <= 8192 */
constexpr int RING = SLOT * NSLOT;
/* attention: a lane owns dims lane*4 + 128 j of a head; hd <= 128 with up to 4 query heads per
 * kv head, or hd <= 384 with up to 2 (9 warps a block leave 168 registers a thread) */
constexpr int CHUNK_MIN_DEFAULT = 64; /* keys per attention chunk at least (HM_PP_CHUNK_MIN) */
constexpr int INFLIGHT_DEFAULT = 1;   /* slots being filled at once per block (HM_PP_INFLIGHT) */

struct pp_params {
    const hmc_pp_phase *ph;
    int nph, nch, chunk_min;
    float *work;              /* attention partial sums: [groups][nch][G (hd + 2)] */
    int *cnt;                 /* per (row, kv head) merge counters */
    unsigned *bar;            /* grid barrier counter (back to 0 at exit) */
    unsigned xbytes;          /* attention scratch bytes after the ring */
    int inflight;             /* bulk copies in flight per block at most (HM_PP_INFLIGHT) */
    int nomath;               /* diagnostics: consumers only release the slots (HM_PP_NOMATH=1) */
    int evict_first;          /* the weight copies ask L2 to evict them first (HM_PP_EVICT_FIRST=0: not) */
    unsigned long long *stamps; /* [2][nblocks][nph] %globaltimer (stamp()), or null */
};

__device__ __forceinline__ void cbar() { asm volatile("bar.sync 1, %0;" ::"n"(CW * 32) : "memory"); }

__device__ __forceinline__ void mbar_arrive(uint64_t *bar)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(bar)) : "memory");
#endif
}

__device__ __forceinline__ unsigned ld_acquire(const unsigned *p)
{
    unsigned v;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
#else
    v = *(volatile const unsigned *)p;
#endif
    return v;
}

/* All consumer threads of all blocks: every write before it is visible to every read after it. */
__device__ __forceinline__ void grid_sync(unsigned *bar, unsigned target)
{
    cbar();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(bar, 1u);
        while (ld_acquire(bar) < target) {
        }
        __threadfence();
    }
    cbar();
}

/* stamps[b][p]: block b's end of phase p; stamps[nb + b][p]: when it passed the barrier before p */
__device__ __forceinline__ void stamp(const pp_params &pp, int p, int passed = 0)
{
    if (!pp.stamps || threadIdx.x) return;
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)::"memory");
    pp.stamps[((size_t)passed * gridDim.x + blockIdx.x) * pp.nph + p] = t;
}

/* A GEMV's rows in units (one row, or the pair an epilogue needs), upt units a slot (a tile),
 * tiles dealt to the blocks round-robin (the blocks read one window of the matrix at a time;
 * contiguous ranges per block measured the same).  This block has nt tiles; its j-th starts at
 * unit first(j) and holds count(j) units. */
struct gshape {
    int unit, ub, upt, KW, U, nt;
    __device__ __forceinline__ int first(int j) const { return (int)(blockIdx.x + j * gridDim.x) * upt; }
    __device__ __forceinline__ int count(int j) const { return min(upt, U - first(j)); }
};
__device__ __forceinline__ gshape gemv_shape(const hmc_pp_phase &P)
{
    gshape g;
    g.unit = (P.out == HMC_PP_SWIGLU || P.out == HMC_PP_ROPE) ? 2 : 1;
    g.KW = P.K / 8;
    g.ub = g.unit * P.K * 2;
    g.upt = min(SLOT / g.ub, TROWS / g.unit);
    g.U = P.N / g.unit;
    const int T = (g.U + g.upt - 1) / g.upt, b = blockIdx.x, nb = gridDim.x;
    g.nt = b < T ? (T - b + nb - 1) / nb : 0;
    return g;
}

/* The producer: lane 0 of the last warp streams every GEMV phase's rows of this block. */
__device__ void producer(const pp_params &pp, unsigned char *ring, uint64_t *full, uint64_t *empty)
{
    if ((threadIdx.x & 31) != 0) return;
    uint32_t tile = 0;
    for (int p = 0; p < pp.nph; p++) {
        const hmc_pp_phase &P = pp.ph[p];
        if (P.type != HMC_PP_GEMV) continue;
        const gshape g = gemv_shape(P);
        for (int j = 0; j < g.nt; j++, tile++) {
            const int u = g.first(j);
            const int s = tile % NSLOT;
            if (tile >= NSLOT) mbar_wait(&empty[s], ((tile / NSLOT) - 1) & 1);
            /* no more than `inflight` copies on their way (1 measured best: more only queue) */
            if (tile >= (uint32_t)pp.inflight) {
                const uint32_t t = tile - pp.inflight;
                mbar_wait(&full[t % NSLOT], (t / NSLOT) & 1);
            }
            const uint32_t bytes = (uint32_t)(g.count(j) * g.ub);
            mbar_expect(&full[s], bytes);
            unsigned char *dst = ring + (size_t)s * SLOT;
            const char *src = (const char *)P.w + (size_t)u * g.ub;
            if (pp.evict_first) bulk_load_evict_first(dst, src, bytes, &full[s]);
            else bulk_load(dst, src, bytes, &full[s]);
        }
    }
}

/* Sums of N values (a power of two <= 32) over the warp by transposed halving (N - 1 + 5 - log2 N
 * shuffles instead of 5 N): lane l returns the sum of value l / (32 / N).  Call with OFF = 16. */
template <int N, int OFF>
__device__ __forceinline__ float warp_sumT(const float (&a)[N], int lane)
{
    if constexpr (N == 1) {
        float d = a[0];
#pragma unroll
        for (int o = OFF; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
        return d;
    } else {
        float b[N / 2];
        const bool hi = lane & OFF;
#pragma unroll
        for (int i = 0; i < N / 2; i++) {
            const float keep = hi ? a[i + N / 2] : a[i], send = hi ? a[i] : a[i + N / 2];
            b[i] = keep + __shfl_xor_sync(0xffffffffu, send, OFF);
        }
        return warp_sumT<N / 2, OFF / 2>(b, lane);
    }
}

__device__ __forceinline__ void bf16x8(const uint4 w, float *o)
{
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&w);
#pragma unroll
    for (int j = 0; j < 4; j++) {
        float2 f = __bfloat1622float2(h[j]);
        o[2 * j] = f.x, o[2 * j + 1] = f.y;
    }
}

/* One GEMV phase.  Thread t owns the 16-byte words t, t + 256, ... of every row (its slice of
 * the input in registers, RMSNorm's scale applied); a slot's rows are dotted by all threads, each
 * warp adds its sums into the slot's accumulators in shared memory, and the last warp to finish
 * the slot (a counter) applies the epilogue: no block-wide barrier per slot, so warps drift
 * freely within the ring. */
template <int R>
__device__ void gemv_phase(const hmc_pp_phase &P, unsigned char *ring, uint64_t *full, uint64_t *empty,
                           float (*red)[CW], float (*tacc)[TROWS * 2], int *tcnt, float *epi, int nomath,
                           uint32_t &tile)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, tid = threadIdx.x;
    const gshape g = gemv_shape(P);
    const int K = P.K, KW = g.KW;
    const bool norm = P.in_mode == HMC_IN_RMSNORM;
    float xr[WJ][R][8];
    float ss[R];
#pragma unroll
    for (int r = 0; r < R; r++) ss[r] = 0.0f;
#pragma unroll
    for (int j = 0; j < WJ; j++) {
        const int w = tid + j * CW * 32;
        float4 s0 = make_float4(1.f, 1.f, 1.f, 1.f), s1 = s0;
        if (norm && w < KW)
            s0 = __ldg(reinterpret_cast<const float4 *>(P.nscale) + 2 * w),
            s1 = __ldg(reinterpret_cast<const float4 *>(P.nscale) + 2 * w + 1);
#pragma unroll
        for (int r = 0; r < R; r++) {
            float4 a = make_float4(0.f, 0.f, 0.f, 0.f), b = a;
            if (w < KW) {
                const float4 *x4 = reinterpret_cast<const float4 *>(P.x + (size_t)r * P.ldx);
                a = __ldcg(x4 + 2 * w), b = __ldcg(x4 + 2 * w + 1);
            }
            ss[r] += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w + b.x * b.x + b.y * b.y + b.z * b.z + b.w * b.w;
            xr[j][r][0] = a.x * s0.x, xr[j][r][1] = a.y * s0.y, xr[j][r][2] = a.z * s0.z, xr[j][r][3] = a.w * s0.w;
            xr[j][r][4] = b.x * s1.x, xr[j][r][5] = b.y * s1.y, xr[j][r][6] = b.z * s1.z, xr[j][r][7] = b.w * s1.w;
        }
    }
    float rs[R];
    if (norm) {
#pragma unroll
        for (int r = 0; r < R; r++) {
            const float t = warp_sum(ss[r]);
            if (lane == 0) red[r][warp] = t;
        }
        cbar();
#pragma unroll
        for (int r = 0; r < R; r++) {
            float t = 0.0f;
#pragma unroll
            for (int w = 0; w < CW; w++) t += red[r][w];
            rs[r] = rsqrtf(t / (float)K + P.eps);
        }
    } else {
#pragma unroll
        for (int r = 0; r < R; r++) rs[r] = 1.0f;
    }
    int pos0 = 0;
    if (P.out == HMC_PP_ROPE) pos0 = (P.pos_dev ? __ldcg(P.pos_dev) : 0) + P.pos_add;
    const int rb = K * 2; /* bytes of a row */
    /* what the epilogues would otherwise wait for (a dependent load a tile): the residuals of the
     * block's rows, the rotations of its pairs, by local unit ul = j upt + k (tile j, its k-th
     * unit).  Every warp writes its share before it counts itself done with any tile, so a
     * tile's last warp sees all of it (the counter's fences). */
    const int nu = g.nt * g.upt;
    if (P.out == HMC_PP_ADD) {
        for (int i = tid; i < nu * R; i += CW * 32) {
            const int ul = i / R, un = g.first(ul / g.upt) + ul % g.upt;
            if (un < g.U) epi[i] = __ldcg(P.y + (size_t)(i % R) * P.ldy + un);
        }
    } else if (P.out == HMC_PP_ROPE) {
        for (int ul = tid; ul < nu; ul += CW * 32) {
            const int un = g.first(ul / g.upt) + ul % g.upt;
            if (un >= g.U) continue;
            const int n0 = un * 2, h = n0 / P.hd, i = (n0 % P.hd) / 2;
            float c = 1.0f, sn = 0.0f;
            if (h < P.H + P.KVH) sincosf((float)pos0 * P.freqs[i], &sn, &c);
            epi[2 * ul] = c, epi[2 * ul + 1] = sn;
        }
    }

    for (int j = 0; j < g.nt; j++, tile++) {
        const int u = g.first(j), s = tile % NSLOT, n = g.count(j), rows = n * g.unit;
        mbar_wait(&full[s], (tile / NSLOT) & 1);
        if (nomath) { /* diagnostics (HM_PP_NOMATH=1, results garbage): the weight stream alone */
            __syncwarp();
            if (lane == 0) mbar_arrive(&empty[s]);
            continue;
        }
        const unsigned char *sl = ring + (size_t)s * SLOT;
        float acc[TROWS * 2]; /* [row][r], r padded to 2 */
#pragma unroll
        for (int q = 0; q < TROWS; q++) {
            acc[2 * q] = acc[2 * q + 1] = 0.0f;
            if (q < rows) {
                const uint4 *wr = reinterpret_cast<const uint4 *>(sl + (size_t)q * rb);
#pragma unroll
                for (int jw = 0; jw < WJ; jw++) {
                    const int w = tid + jw * CW * 32;
                    if (w < KW) {
                        float f[8];
                        bf16x8(wr[w], f);
#pragma unroll
                        for (int r = 0; r < R; r++)
#pragma unroll
                            for (int e = 0; e < 8; e++) acc[2 * q + r] += f[e] * xr[jw][r][e];
                    }
                }
            }
        }
        /* the warp's sums: lane (32 / NVAL) v holds sum v = 2 row + r */
        constexpr int NVAL = TROWS * 2, LPV = 32 / NVAL;
        const float d = warp_sumT<NVAL, 16>(acc, lane);
        const int vi = lane / LPV;
        if (lane % LPV == 0 && (vi >> 1) < rows && (vi & 1) < R) atomicAdd(&tacc[s][vi], d);
        __syncwarp();
        int lastw = 0;
        if (lane == 0) {
            __threadfence_block();
            lastw = atomicAdd(&tcnt[s], 1) == CW - 1;
        }
        lastw = __shfl_sync(0xffffffffu, lastw, 0);
        /* the last warp to finish the tile applies its epilogue and clears its sums before the slot
         * can be refilled (its empty arrival comes after) */
        if (lastw) {
            __threadfence_block();
            if (lane < n * R) {
                const int ui = lane / R, r = lane % R, un = u + ui, n0 = un * g.unit;
                float v[2] = {0.0f, 0.0f};
#pragma unroll
                for (int i = 0; i < 2; i++) {
                    if (i >= g.unit) break;
                    v[i] = atomicExch(&tacc[s][(ui * g.unit + i) * 2 + r], 0.0f) * rs[r];
                }
                if (P.out == HMC_PP_SWIGLU) {
                    P.y[(size_t)r * P.ldy + un] = v[0] / (1.0f + __expf(-v[0])) * v[1];
                } else if (P.out == HMC_PP_ROPE) {
                    /* as gemv.cu's rope_pair: the pair (2i, 2i+1) of head h */
                    const int hd = P.hd, h = n0 / hd, i = (n0 % hd) / 2;
                    float a = v[0], b = v[1];
                    if (h < P.H + P.KVH) {
                        const float c = epi[2 * (j * g.upt + ui)], sn = epi[2 * (j * g.upt + ui) + 1];
                        a = v[0] * c - v[1] * sn, b = v[1] * c + v[0] * sn;
                    }
                    P.y[(size_t)r * P.ldy + n0] = a, P.y[(size_t)r * P.ldy + n0 + 1] = b;
                    if (h >= P.H) {
                        const bool isk = h < P.H + P.KVH;
                        const int kh = isk ? h - P.H : h - P.H - P.KVH;
                        __nv_bfloat16 *dst = (__nv_bfloat16 *)(isk ? P.kc : P.vc) +
                                             (((size_t)r * P.KVH + kh) * P.max_seq + pos0) * hd + 2 * i;
                        dst[0] = __float2bfloat16(a), dst[1] = __float2bfloat16(b);
                    }
                } else {
                    float *y = P.y + (size_t)r * P.ldy + n0;
                    *y = P.out == HMC_PP_ADD ? epi[(j * g.upt + ui) * R + r] + v[0] : v[0];
                }
            }
            if (lane == 0) tcnt[s] = 0;
            __syncwarp();
        }
        if (lane == 0) mbar_arrive(&empty[s]);
    }
}

/* One attention phase (see the file comment): J 128-dim slices of a head per lane, U keys (K and
 * V rows) in flight per warp, an online softmax per warp, then the warps' and the chunks' merges. */
template <int R, int J, int U, int GMAX>
__device__ void attn_phase(const hmc_pp_phase &P, const pp_params &pp, float *xs)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, tid = threadIdx.x;
    const int H = P.H, KVH = P.KVH, hd = P.hd, G = H / KVH, groups = R * KVH, nch = pp.nch;
    if ((int)blockIdx.x >= groups * nch) return;
    const int pos = (P.pos_dev ? __ldcg(P.pos_dev) : 0) + P.pos_add, nk = pos + 1;
    const int CL = max((nk + nch - 1) / nch, pp.chunk_min), nce = (nk + CL - 1) / CL;
    const int grp = blockIdx.x / nch, c = blockIdx.x % nch;
    if (c >= nce) return;
    const int b = grp / KVH, kvh = grp % KVH, k0 = c * CL, n = min(nk, k0 + CL) - k0;
    /* scratch: the warps' sums [CW][G][hd], then their (m, l) [CW][G][2] */
    float *wacc = xs, *wml = wacc + CW * G * hd;
    __shared__ int last;
    __shared__ float wsc[CW][32]; /* a warp's scores of one step */
    const float scale = rsqrtf((float)hd);
    const float *qrow = P.x + (size_t)b * P.ldx + (size_t)kvh * G * hd;
    float qv[GMAX][J][4];
#pragma unroll
    for (int gq = 0; gq < GMAX; gq++)
#pragma unroll
        for (int j = 0; j < J; j++) {
            const int d = lane * 4 + 128 * j;
            float4 t = make_float4(0.f, 0.f, 0.f, 0.f);
            if (gq < G && d < hd) t = __ldcg(reinterpret_cast<const float4 *>(qrow + gq * hd + d));
            qv[gq][j][0] = t.x * scale, qv[gq][j][1] = t.y * scale, qv[gq][j][2] = t.z * scale, qv[gq][j][3] = t.w * scale;
        }
    const size_t hoff = ((size_t)b * KVH + kvh) * P.max_seq + k0;
    const __nv_bfloat16 *kb = (const __nv_bfloat16 *)P.kc + hoff * hd, *vb = (const __nv_bfloat16 *)P.vc + hoff * hd;
    /* 4 bf16 at d of a cache row (ld.cg: this launch wrote the newest key) */
    auto ld4 = [&](const __nv_bfloat16 *row, int d, float *o) {
        const uint2 v = __ldcg(reinterpret_cast<const uint2 *>(row + d));
        const float2 x = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&v.x)),
                     y = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&v.y));
        o[0] = x.x, o[1] = x.y, o[2] = y.x, o[3] = y.y;
    };
    float m[GMAX], l[GMAX], acc[GMAX][J][4];
#pragma unroll
    for (int gq = 0; gq < GMAX; gq++) {
        m[gq] = -INFINITY, l[gq] = 0.0f;
#pragma unroll
        for (int j = 0; j < J; j++) acc[gq][j][0] = acc[gq][j][1] = acc[gq][j][2] = acc[gq][j][3] = 0.0f;
    }
    for (int kb0 = warp * U; kb0 < n; kb0 += CW * U) {
        float kk[U][J][4], vv[U][J][4];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int j = 0; j < J; j++) {
                const int d = lane * 4 + 128 * j, key = kb0 + u;
                if (d < hd && key < n) {
                    ld4(kb + (size_t)key * hd, d, kk[u][j]);
                    ld4(vb + (size_t)key * hd, d, vv[u][j]);
                } else {
#pragma unroll
                    for (int e = 0; e < 4; e++) kk[u][j][e] = 0.0f, vv[u][j][e] = 0.0f;
                }
            }
        /* the U x GMAX scores reduced together, through shared memory to every lane */
        constexpr int NV = U * GMAX;
        float sv[NV];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int gq = 0; gq < GMAX; gq++) sv[u * GMAX + gq] = dot_j4<J>(qv[gq], kk[u]);
        const float dsum = warp_sumT<NV, 16>(sv, lane);
        if (lane % (32 / NV) == 0) wsc[warp][lane / (32 / NV)] = dsum;
        __syncwarp();
#pragma unroll
        for (int gq = 0; gq < GMAX; gq++) {
            if (gq >= G) break;
            float sc[U], mx = -INFINITY;
#pragma unroll
            for (int u = 0; u < U; u++) {
                sc[u] = kb0 + u < n ? wsc[warp][u * GMAX + gq] : -INFINITY;
                mx = fmaxf(mx, sc[u]);
            }
            const float mn = fmaxf(m[gq], mx), cr = __expf(m[gq] - mn);
            float ps = 0.0f, p[U];
#pragma unroll
            for (int u = 0; u < U; u++) p[u] = __expf(sc[u] - mn), ps += p[u]; /* 0 past the keys */
            fold_values<J, U>(acc[gq], cr, p, vv);
            l[gq] = l[gq] * cr + ps, m[gq] = mn;
        }
        __syncwarp();
    }
#pragma unroll
    for (int gq = 0; gq < GMAX; gq++) {
        if (gq >= G) break;
#pragma unroll
        for (int j = 0; j < J; j++) {
            const int d = lane * 4 + 128 * j;
            if (d < hd)
                *reinterpret_cast<float4 *>(wacc + ((size_t)warp * G + gq) * hd + d) =
                    make_float4(acc[gq][j][0], acc[gq][j][1], acc[gq][j][2], acc[gq][j][3]);
        }
        if (lane == 0) wml[(warp * G + gq) * 2] = m[gq], wml[(warp * G + gq) * 2 + 1] = l[gq];
    }
    cbar();
    float *out = P.y + (size_t)b * P.ldy + (size_t)kvh * G * hd;
    const int W = G * (hd + 2);
    float *part = pp.work + ((size_t)grp * nch + c) * W;
    for (int i = tid; i < G * hd; i += CW * 32) {
        const int gq = i / hd;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < CW; w++) M = fmaxf(M, wml[(w * G + gq) * 2]);
        float A = 0.0f, L = 0.0f;
#pragma unroll
        for (int w = 0; w < CW; w++) {
            const float wm = wml[(w * G + gq) * 2], e = wm == -INFINITY ? 0.0f : __expf(wm - M);
            A += wacc[((size_t)w * G + gq) * hd + (i - gq * hd)] * e, L += wml[(w * G + gq) * 2 + 1] * e;
        }
        if (nce == 1) {
            out[i] = A / L;
        } else {
            part[i] = A;
            if (i % hd == 0) part[G * hd + 2 * gq] = M, part[G * hd + 2 * gq + 1] = L;
        }
    }
    if (nce == 1) return;
    __threadfence();
    cbar();
    if (tid == 0) {
        last = atomicAdd(&pp.cnt[grp], 1) == nce - 1;
        if (last) atomicExch(&pp.cnt[grp], 0);
    }
    cbar();
    if (!last) return;
    __threadfence();
    const float *base = pp.work + (size_t)grp * nch * W;
    for (int i = tid; i < G * hd; i += CW * 32) {
        const int gq = i / hd;
        float M = -INFINITY;
        for (int cc = 0; cc < nce; cc++) M = fmaxf(M, __ldcg(base + (size_t)cc * W + G * hd + 2 * gq));
        float L = 0.0f, A = 0.0f;
        for (int cc = 0; cc < nce; cc++) {
            const float *pc = base + (size_t)cc * W;
            const float wgt = __expf(__ldcg(pc + G * hd + 2 * gq) - M);
            L += __ldcg(pc + G * hd + 2 * gq + 1) * wgt, A += __ldcg(pc + i) * wgt;
        }
        out[i] = A / L;
    }
}

template <int R>
__global__ void __launch_bounds__(NT, 1) persist_kernel(const pp_params pp)
{
    extern __shared__ __align__(128) unsigned char sm[];
    unsigned char *ring = sm;
    float *xs = reinterpret_cast<float *>(sm + RING);
    uint64_t *full = reinterpret_cast<uint64_t *>(sm + RING + pp.xbytes), *empty = full + NSLOT;
    float *epi = reinterpret_cast<float *>(empty + NSLOT);
    __shared__ float red[2][CW];
    __shared__ float tacc[NSLOT][TROWS * 2]; /* per slot: its rows' sums over the warps */
    __shared__ int tcnt[NSLOT];              /* per slot: warps done with it */
    if (threadIdx.x < NSLOT * TROWS * 2) tacc[threadIdx.x / (TROWS * 2)][threadIdx.x % (TROWS * 2)] = 0.0f;
    if (threadIdx.x < NSLOT) tcnt[threadIdx.x] = 0;
    if (threadIdx.x == 0) {
        for (int i = 0; i < NSLOT; i++) mbar_init(&full[i], 1), mbar_init(&empty[i], CW);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
    }
    __syncthreads();
    pdl_trigger(); /* the next kernel's blocks can only start where this one's have exited */
    if (threadIdx.x >= CW * 32) { /* weights do not depend on the previous kernel: no wait */
        producer(pp, ring, full, empty);
        return;
    }
    pdl_wait();
    uint32_t tile = 0;
    const unsigned nb = gridDim.x;
    for (int p = 0; p < pp.nph; p++) {
        if (p) grid_sync(pp.bar, nb * (unsigned)p), stamp(pp, p, 1);
        const hmc_pp_phase &P = pp.ph[p];
        if (P.type == HMC_PP_GEMV) gemv_phase<R>(P, ring, full, empty, red, tacc, tcnt, epi, pp.nomath, tile);
        else if (P.hd <= 128) attn_phase<R, 1, 8, 4>(P, pp, xs);
        else attn_phase<R, 3, 2, 2>(P, pp, xs); /* the depth decoder's 384-wide heads, G <= 2 */
        stamp(pp, p);
    }
    /* one more arrival each; the last block's puts the counter back to 0 for the next launch */
    cbar();
    if (threadIdx.x == 0) {
        const unsigned total = nb * (unsigned)pp.nph;
        if (atomicAdd(pp.bar, 1u) == total - 1) atomicExch(pp.bar, 0u);
    }
}

} // namespace

struct hmc_persist {
    pp_params pp;
    int R, nb;
    size_t smem;
    hmc_pp_phase *ph_host; /* for the stamp report */
};

extern "C" int hmc_persist_create(hmc_persist **out, const hmc_pp_phase *ph, int n, int R, int max_keys)
{
    *out = nullptr;
    if (n < 1 || !ph) return hm_err("persist: empty program");
    if (R < 1 || R > 2) return hm_err("persist: %d rows (1 or 2)", R);
    if (max_keys < 1) return hm_err("persist: max_keys %d", max_keys);
    int dev, sms, cc;
    CK(cudaGetDevice(&dev));
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    CK(cudaDeviceGetAttribute(&cc, cudaDevAttrComputeCapabilityMajor, dev));
    if (cc < 9) return hm_err("persist: needs sm_90 or newer (bulk copies), device is sm_%d", cc * 10);
    int chunk_min = CHUNK_MIN_DEFAULT, inflight = INFLIGHT_DEFAULT;
    if (const char *e = getenv("HM_PP_CHUNK_MIN")) chunk_min = atoi(e) > 0 ? atoi(e) : CHUNK_MIN_DEFAULT;
    if (const char *e = getenv("HM_PP_INFLIGHT")) inflight = atoi(e) > 0 ? HM_MIN(atoi(e), NSLOT) : INFLIGHT_DEFAULT;
    size_t xb = 0, work = 0;
    int groups_max = 0, nch_min = 1 << 30;
    for (int i = 0; i < n; i++) {
        const hmc_pp_phase *P = &ph[i];
        if (P->type == HMC_PP_GEMV) {
            const int unit = (P->out == HMC_PP_SWIGLU || P->out == HMC_PP_ROPE) ? 2 : 1;
            if (P->N < 1 || P->K < 8 || P->K % 8 || P->N % unit)
                return hm_err("persist: phase %d: GEMV %d x %d (K a multiple of 8, N of %d)", i, P->N, P->K, unit);
            if ((size_t)unit * P->K * 2 > SLOT || P->K > WJ * CW * 32 * 8)
                return hm_err("persist: phase %d: rows of %d (at most %d, and %d-byte slots)", i, P->K, WJ * CW * 32 * 8, SLOT);
            if (((uintptr_t)P->w | (uintptr_t)P->x) % 16 || P->ldx % 4)
                return hm_err("persist: phase %d: weights and input need 16-byte alignment", i);
            if (P->in_mode != HMC_IN_PLAIN && P->in_mode != HMC_IN_RMSNORM)
                return hm_err("persist: phase %d: input mode %d", i, P->in_mode);
            if (P->out < HMC_PP_STORE || P->out > HMC_PP_ROPE) return hm_err("persist: phase %d: output mode %d", i, P->out);
            if (P->out == HMC_PP_ROPE &&
                (P->hd < 2 || P->hd % 2 || P->N != (P->H + 2 * P->KVH) * P->hd || !P->freqs || !P->kc || !P->vc))
                return hm_err("persist: phase %d: rotary qkv shape", i);
        } else if (P->type == HMC_PP_ATTN) {
            if (P->KVH < 1 || P->H % P->KVH || P->hd % 4 || P->hd > 384 || P->H / P->KVH > (P->hd <= 128 ? 4 : 2))
                return hm_err("persist: phase %d: attention heads %d/%d, head_dim %d", i, P->H, P->KVH, P->hd);
            if (max_keys > P->max_seq) return hm_err("persist: phase %d: max_keys %d > cache %d", i, max_keys, P->max_seq);
            const int G = P->H / P->KVH, groups = R * P->KVH, nch = HM_MAX(1, sms / groups);
            xb = HM_MAX(xb, (size_t)4 * ((size_t)CW * G * P->hd + (size_t)CW * G * 2));
            work = HM_MAX(work, (size_t)groups * nch * G * (P->hd + 2) * 4);
            groups_max = HM_MAX(groups_max, groups), nch_min = HM_MIN(nch_min, nch);
        } else {
            return hm_err("persist: phase %d: type %d", i, P->type);
        }
    }
    xb = (xb + 127) & ~(size_t)127;
    size_t epi = 0; /* epilogue inputs: 2 floats a unit of a block */
    for (int i = 0; i < n; i++)
        if (ph[i].type == HMC_PP_GEMV) {
            const int unit = (ph[i].out == HMC_PP_SWIGLU || ph[i].out == HMC_PP_ROPE) ? 2 : 1;
            const int upt = HM_MIN(SLOT / (unit * ph[i].K * 2), TROWS / unit), U = ph[i].N / unit;
            const int tiles = (U + upt - 1) / upt; /* a block has at most ceil(tiles / sms) */
            epi = HM_MAX(epi, (size_t)(tiles + sms - 1) / sms * upt * 2 * sizeof(float));
        }
    const size_t smem = RING + xb + 2 * NSLOT * sizeof(uint64_t) + epi;
    /* every attention phase uses the same chunk count (the grid's split for its groups) */
    int nch = nch_min == (1 << 30) ? 1 : nch_min;
    for (int i = 0; i < n; i++)
        if (ph[i].type == HMC_PP_ATTN && HM_MAX(1, sms / (R * ph[i].KVH)) != nch)
            return hm_err("persist: attention phases with different kv head counts");
    auto kern = R == 1 ? persist_kernel<1> : persist_kernel<2>;
    /* the largest dynamic size any program may ask: the device's opt-in less the static part */
    cudaFuncAttributes fa;
    int optin;
    CK(cudaFuncGetAttributes(&fa, kern));
    CK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    if (smem + fa.sharedSizeBytes > (size_t)optin)
        return hm_err("persist: %zu + %zu bytes of shared memory needed (%d at most)", smem, fa.sharedSizeBytes, optin);
    CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, optin - (int)fa.sharedSizeBytes));
    int occ = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kern, NT, smem));
    if (occ < 1) return hm_err("persist: no block fits an SM with %zu bytes of shared memory", smem);

    hmc_persist *p = (hmc_persist *)calloc(1, sizeof *p);
    if (!p) return hm_err("persist: out of memory");
    p->R = R, p->nb = sms, p->smem = smem;
    p->pp.nph = n, p->pp.nch = nch, p->pp.chunk_min = chunk_min, p->pp.xbytes = (unsigned)xb;
    p->pp.inflight = inflight;
    if (const char *e = getenv("HM_PP_NOMATH")) p->pp.nomath = !strcmp(e, "1");
    p->pp.evict_first = 1; /* measured: the stream alone 83 -> 85% of copy, a frame -1% */
    if (const char *e = getenv("HM_PP_EVICT_FIRST")) p->pp.evict_first = strcmp(e, "0") != 0;
    p->ph_host = (hmc_pp_phase *)malloc(sizeof(hmc_pp_phase) * n);
    const size_t cnt_bytes = (size_t)HM_MAX(groups_max, 1) * sizeof(int) + 64;
    cudaError_t e = p->ph_host ? cudaSuccess : cudaErrorMemoryAllocation;
    if (e == cudaSuccess) memcpy(p->ph_host, ph, sizeof(hmc_pp_phase) * n);
    if (e == cudaSuccess) e = cudaMalloc((void **)&p->pp.ph, sizeof(hmc_pp_phase) * n);
    if (e == cudaSuccess) e = cudaMemcpy((void *)p->pp.ph, ph, sizeof(hmc_pp_phase) * n, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaMalloc((void **)&p->pp.work, HM_MAX(work, (size_t)16));
    if (e == cudaSuccess) e = cudaMalloc((void **)&p->pp.cnt, cnt_bytes);
    if (e == cudaSuccess) e = cudaMemset(p->pp.cnt, 0, cnt_bytes);
    if (e == cudaSuccess) p->pp.bar = (unsigned *)(p->pp.cnt + HM_MAX(groups_max, 1)); /* in the same allocation */
    const char *st = getenv("HM_PP_STAMP");
    if (e == cudaSuccess && st && !strcmp(st, "1")) {
        e = cudaMalloc((void **)&p->pp.stamps, sizeof(unsigned long long) * 2 * sms * n);
        if (e == cudaSuccess) e = cudaMemset(p->pp.stamps, 0, sizeof(unsigned long long) * 2 * sms * n);
    }
    if (e != cudaSuccess) {
        hmc_persist_destroy(p);
        return hm_err("persist: %s", cudaGetErrorString(e));
    }
    *out = p;
    return HM_OK;
}

extern "C" int hmc_persist_run(const hmc_persist *p, cudaStream_t stream)
{
    if (p->R == 1) return launch_pdl(persist_kernel<1>, dim3(p->nb), dim3(NT), p->smem, stream, p->pp);
    return launch_pdl(persist_kernel<2>, dim3(p->nb), dim3(NT), p->smem, stream, p->pp);
}

extern "C" void hmc_persist_destroy(hmc_persist *p)
{
    if (!p) return;
    cudaFree((void *)p->pp.ph), cudaFree(p->pp.work), cudaFree(p->pp.cnt), cudaFree(p->pp.stamps);
    free(p->ph_host);
    free(p);
}

/* Per phase: the latest block's end minus the previous phase's latest end (what the phase adds to
 * the launch), and the spread of the blocks' ends; summed per kind (GEMV by output mode and K). */
extern "C" void hmc_persist_stamp_report(const hmc_persist *p, FILE *f)
{
    if (!p->pp.stamps) {
        fprintf(f, "persist: no stamps (HM_PP_STAMP=1 before hmc_persist_create)\n");
        return;
    }
    const int n = p->pp.nph, nb = p->nb;
    unsigned long long *h = (unsigned long long *)hm_malloc(sizeof *h * 2 * (size_t)nb * n);
    if (cudaDeviceSynchronize() != cudaSuccess ||
        cudaMemcpy(h, p->pp.stamps, sizeof *h * 2 * (size_t)nb * n, cudaMemcpyDeviceToHost) != cudaSuccess) {
        fprintf(f, "persist: stamps unreadable\n");
        free(h);
        return;
    }
    enum { KINDS = 6 };
    const char *names[KINDS] = {"gemv =", "gemv +=", "gemv swiglu", "gemv rope qkv", "attention", "?"};
    double add[KINDS] = {0}, spread[KINDS] = {0}, med[KINDS] = {0};
    unsigned long long *col = (unsigned long long *)hm_malloc(sizeof *col * nb);
    int cnt[KINDS] = {0};
    unsigned long long prev = ~0ull;
    for (int b = 0; b < nb; b++) /* the start: the earliest end of phase 0 minus nothing */
        if (h[(size_t)b * n] && h[(size_t)b * n] < prev) prev = h[(size_t)b * n];
    double total = 0, bfirst = 0, blast = 0;
    int nbar = 0;
    for (int i = 0; i < n; i++) {
        unsigned long long lo = ~0ull, hi = 0;
        int m = 0;
        for (int b = 0; b < nb; b++) {
            const unsigned long long t = h[(size_t)b * n + i];
            if (!t) continue;
            lo = t < lo ? t : lo, hi = t > hi ? t : hi;
            col[m++] = t;
        }
        for (int a = 1; a < m; a++) /* insertion sort: a few hundred blocks */
            for (int c = a; c > 0 && col[c - 1] > col[c]; c--) { unsigned long long x = col[c]; col[c] = col[c - 1]; col[c - 1] = x; }
        const int k = p->ph_host[i].type == HMC_PP_ATTN ? 4 : p->ph_host[i].out;
        const double a = i ? ((double)hi - (double)prev) / 1e3 : 0.0;
        add[k] += a, spread[k] += ((double)hi - (double)lo) / 1e3, cnt[k]++, total += a;
        if (i && m) med[k] += ((double)col[m / 2] - (double)prev) / 1e3;
        if (i) { /* the barrier before phase i: the last arrival to the first and last release */
            unsigned long long r0 = ~0ull, r1 = 0;
            for (int b = 0; b < nb; b++) {
                const unsigned long long t = h[((size_t)nb + b) * n + i];
                if (t) r0 = t < r0 ? t : r0, r1 = t > r1 ? t : r1;
            }
            if (r1) bfirst += ((double)r0 - (double)prev) / 1e3, blast += ((double)r1 - (double)prev) / 1e3, nbar++;
        }
        prev = hi;
    }
    for (int k = 0; k < KINDS; k++)
        if (cnt[k])
            fprintf(f, "persist %-14s phases %4d  adds %8.1f us (%6.2f a phase; median block %6.2f)  block spread %6.2f us\n",
                    names[k], cnt[k], add[k], add[k] / cnt[k], med[k] / cnt[k], spread[k] / cnt[k]);
    fprintf(f, "persist total after phase 0: %.1f us; a barrier: the last arrival to the first release %.2f us, to the last %.2f us\n",
            total, nbar ? bfirst / nbar : 0.0, nbar ? blast / nbar : 0.0);
    free(h), free(col);
}
