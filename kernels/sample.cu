/* sample.cu - classifier-free-guidance combine and top-k / temperature sampling on the GPU
 * (MODEL.md §2 "Sampling").  CPU twin: kernels/sampling.c (smp_uniform + smp_topk_sample, as
 * stages/draft-verifier's dv_sample calls them); tests/gpu_sample.c checks that both draw the
 * same ids from the same logits, seed and counters.
 *
 * One block of 1024 threads per draw holds the V logits in registers (V <= 16384) and follows
 * the CPU step for step, so that a song does not depend on the backend:
 *   g = the CFG combine rounded step by step (no FMA); z = g / temperature (NaN -> -inf);
 *   kept = every z >= the k-th largest z (ties with it are kept); p_i = exp((double)z_i - zmax)
 *   in fp64; u = the Philox4x32-10 uniform of (seed, stream 0, frame = *counter_dev, codebook =
 *   slot, lane 0); inverse CDF in index order.
 * The CPU's fp64 sum runs over the kept entries in index order, and its walk compares
 * cum + p_i, which is the same rounded value as that sum's prefix S_i; so one thread forms the
 * prefix sums S_i of the kept entries (put in index order) exactly as the CPU adds them, and a
 * warp finds the first S_i > u * S_last.  The only possible difference from the CPU is the last
 * bit of exp() in fp64 (CUDA's vs libm's), which moves a pick only if u * sum falls within
 * ~1e-16 of a CDF step.
 *
 * Finding the kept set without a full sort (sample_kernel): with d = zmax - z in fp32 (monotone
 * in z), a histogram of d's octaves (one 16-bin pass, counters packed in registers and summed by
 * warp reductions: no shared atomics, whose same-bin contention made the first version slow)
 * gives a bound on d that holds at least k and usually < ~3k entries; more than 256: one more
 * pass splits the crossing octave in 16.  Every entry below the bound is a candidate; the
 * k-th largest z lies among them and a candidate is kept iff fewer than k candidates are
 * strictly larger (so exact, whatever d's rounding).  Where that fails (the k-th largest more
 * than 256 below the maximum, over 1024 candidates, an infinite maximum) the k-th largest comes
 * from the first version's radix select; keep-all (or ties) with more than 1024 kept entries
 * takes the CPU's two scans over the whole vocabulary, 1024 entries at a time (~0.1 ms, exact).
 * sample_kernel_v1 is the first exact version, kept for A/B timing (hmc_sample_set_impl).
 * H100, a graph of 200 draws at V 8197, B 2, CFG 1.5, top-k 50 (gpu_sample time): 12.1 us a
 * draw (v1: 17.5); phases: loads + z + max 2.8 us, octave passes 5.2 (two: the crossing octave
 * split once), gather 0.8, rank filter 1.3, index order + exp 0.6, sum + pick 0.8.
 * The default since stop 22 is the same algorithm over a cluster of 8 blocks (sample_kernel_cl,
 * below): 9.45 us a draw there, 10.8 instead of 12.0 us of a frame's critical path. */
#include <stdlib.h>

#include <cooperative_groups.h>

#include "common_cuda.h"
#include "ops_cuda.h"

namespace {

constexpr int NT = 1024;
constexpr int PER = 16;
constexpr int KEEP_MAX = 1024; /* kept entries the fast path holds (top-k <= 1024 and ties); more: a slow exact walk */
/* Philox4x32-10 and the 53-bit uniform of kernels/sampling.c (smp_uniform), bit for bit. */
__device__ double philox_uniform(uint64_t seed, uint32_t stream, uint64_t frame, uint32_t codebook)
{
    uint32_t c0 = (uint32_t)frame, c1 = (uint32_t)(frame >> 32), c2 = codebook & 0xFFFFu, c3 = stream;
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        if (r > 0) k0 += 0x9E3779B9u, k1 += 0xBB67AE85u;
        const uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        const uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n1 = (uint32_t)p1;
        const uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1, n3 = (uint32_t)p0;
        c0 = n0, c1 = n1, c2 = n2, c3 = n3;
    }
    const uint64_t bits = ((uint64_t)c0 << 21) ^ (uint64_t)(c1 >> 11);
    return (double)(bits & ((1ull << 53) - 1)) * 0x1.0p-53;
}

__device__ __forceinline__ uint32_t order_key(float f)
{
    uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* block argmax of (v, i), lowest i on ties; result valid in every thread */
__device__ void block_argmax(float v, int i, float *sv, int *si, float *ov, int *oi)
{
    for (int o = 16; o > 0; o >>= 1) {
        float v2 = __shfl_xor_sync(0xffffffffu, v, o);
        int i2 = __shfl_xor_sync(0xffffffffu, i, o);
        if (v2 > v || (v2 == v && i2 < i)) v = v2, i = i2;
    }
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sv[w] = v, si[w] = i;
    __syncthreads();
    v = sv[lane], i = si[lane]; /* NT/32 == 32 warps */
    for (int o = 16; o > 0; o >>= 1) {
        float v2 = __shfl_xor_sync(0xffffffffu, v, o);
        int i2 = __shfl_xor_sync(0xffffffffu, i, o);
        if (v2 > v || (v2 == v && i2 < i)) v = v2, i = i2;
    }
    *ov = v, *oi = i;
}

/* Warp 0 of a radix select round: the digit d of a 256-bin histogram where the kk-th largest key
 * lies, (count of larger digits) < kk <= (count of digits >= d), into sel[0], and kk among the keys
 * with that digit into sel[1]. */
__device__ __forceinline__ void radix_pick_digit(const unsigned *hist, unsigned kk, unsigned *sel)
{
    const int lane = threadIdx.x & 31;
    unsigned s = 0; /* lane owns digits 255-8*lane down to 248-8*lane */
    for (int i = 0; i < 8; i++) s += hist[255 - 8 * lane - i];
    unsigned incl = s;
    for (int o = 1; o < 32; o <<= 1) {
        const unsigned v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
    }
    unsigned above = incl - s;
    if (above < kk && kk <= incl) {
        for (int i = 0; i < 8; i++) {
            const unsigned d = 255 - 8 * lane - i, h = hist[d];
            if (above + h >= kk) {
                sel[0] = d, sel[1] = kk - above;
                break;
            }
            above += h;
        }
    }
}

/* The kk-th largest order key of z[0..V): radix select, 8 bits at a time from the top (256-bin
 * shared histograms); among keys matching the digits found so far, the digit d where (count of
 * larger digits) < kk <= (count of digits >= d).  Called by the whole block; sample_kernel_v1's
 * select and sample_kernel's slow path. */
template <int P>
__device__ __forceinline__ uint32_t radix_kth(const float (&z)[P], int V, unsigned kk, unsigned *hist, unsigned *sel)
{
    uint32_t T = 0, hmask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        if (threadIdx.x < 256) hist[threadIdx.x] = 0;
        __syncthreads();
#pragma unroll
        for (int j = 0; j < P; j++) {
            const uint32_t key = order_key(z[j]);
            if (threadIdx.x + j * NT < V && (key & hmask) == T) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x < 32) radix_pick_digit(hist, kk, sel);
        __syncthreads();
        T |= sel[0] << shift;
        hmask |= 255u << shift;
        kk = sel[1];
        __syncthreads();
    }
    return T;
}

/* The first exact version (one radix select with shared-atomic histograms, ~21 us a draw on
 * H100), kept for A/B timing: hmc_sample_set_impl(1). */
__global__ void __launch_bounds__(NT)
sample_kernel_v1(const float *__restrict__ logits, int B, int V, const hmc_sample_params *__restrict__ prm,
              const uint32_t *counter_dev, int slot, float *__restrict__ logits_out, int32_t *__restrict__ codes)
{
    __shared__ float sv[32];
    __shared__ int si[32];
    pdl_trigger();
    pdl_wait();
    const float cfg = prm->cfg_scale;
    float g[PER];
#pragma unroll
    for (int j = 0; j < PER; j++) {
        int i = threadIdx.x + j * NT;
        float v = -INFINITY;
        if (i < V) {
            float c = logits[i];
            /* dv_cfg_combine's u + (c - u) * cfg, rounded step by step as the CPU does (no FMA) */
            v = B == 2 && cfg > 1.0f ? __fadd_rn(logits[V + i], __fmul_rn(__fsub_rn(c, logits[V + i]), cfg)) : c;
            if (logits_out) logits_out[i] = v;
        }
        g[j] = v;
    }
    const int forced = slot < 8 ? prm->forced[slot] : -1;
    if (forced >= 0) {
        if (threadIdx.x == 0) codes[slot] = forced;
        return;
    }
    const int k = prm->topk;
    float bv;
    int bi;
    const float temp = prm->temperature;
    if (k == 1 || !(temp > 0.0f)) {
        /* argmax of g, NaN never chosen (as -inf), lowest index on ties */
        float v = -INFINITY;
        int vi = 0x7fffffff;
#pragma unroll
        for (int j = 0; j < PER; j++) {
            int i = threadIdx.x + j * NT;
            float x = isnan(g[j]) ? -INFINITY : g[j];
            if (i < V && (x > v || vi == 0x7fffffff)) v = x, vi = i;
        }
        block_argmax(v, vi, sv, si, &bv, &bi);
        if (threadIdx.x == 0) codes[slot] = bi;
        return;
    }
    /* z = g / T as the CPU computes it (a division, not a multiply by 1/T) */
    float zmax_l = -INFINITY;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        float z = __fdiv_rn(g[j], temp);
        g[j] = (threadIdx.x + j * NT < V && !isnan(z)) ? z : -INFINITY;
        zmax_l = fmaxf(zmax_l, g[j]);
    }
    block_argmax(zmax_l, 0, sv, si, &bv, &bi);
    const float zmax = bv;
    if (zmax == -INFINITY) { /* nothing finite: the CPU falls back to argmax of the logits (all NaN/-inf: 0) */
        if (threadIdx.x == 0) codes[slot] = 0;
        return;
    }
    /* T = the k-th largest order key (radix_kth); the kept entries are the keys >= T */
    uint32_t key[PER];
#pragma unroll
    for (int j = 0; j < PER; j++) key[j] = threadIdx.x + j * NT < V ? order_key(g[j]) : 0u;
    __shared__ unsigned hist[256], sel[2];
    const bool all = k <= 0 || k >= V;
    const uint32_t T = all ? 0u : radix_kth<PER>(g, V, (unsigned)k, hist, sel);
    /* gather the kept entries (unordered, one shared atomic each), then put them in index order:
     * each entry's rank is the number of kept indices below it (n is small: top-k) */
    __shared__ double kp_u[KEEP_MAX], kp[KEEP_MAX];
    __shared__ int ki_u[KEEP_MAX], ki[KEEP_MAX];
    __shared__ int nkept_s;
    if (threadIdx.x == 0) nkept_s = 0;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < PER; j++) {
        if (g[j] > -INFINITY && key[j] >= T) { /* all: T = 0, every finite z */
            const int pos = atomicAdd(&nkept_s, 1);
            if (pos < KEEP_MAX) {
                kp_u[pos] = exp((double)g[j] - (double)zmax);
                ki_u[pos] = threadIdx.x + j * NT;
            }
        }
    }
    __syncthreads();
    if (nkept_s <= KEEP_MAX) {
        const int n = nkept_s;
        for (int q = threadIdx.x; q < n; q += NT) {
            const int idx = ki_u[q];
            int rank = 0;
            for (int r = 0; r < n; r++) rank += ki_u[r] < idx;
            ki[rank] = idx;
            kp[rank] = kp_u[q];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0 && nkept_s > KEEP_MAX) {
        /* more kept entries than the list holds (top-k above ~2300, or keep-all): one thread walks
         * the whole vocabulary in index order, recomputing each entry exactly as above (slow,
         * ~0.3 ms, but identical to the CPU) */
        const uint64_t seed = ((uint64_t)prm->seed_hi << 32) | prm->seed_lo;
        const double u = philox_uniform(seed, 0u, *counter_dev, (uint32_t)slot);
        double sum = 0.0;
        for (int pass = 0, pick = -1, last = 0; pass < 2; pass++) {
            const double target = u * sum;
            double cum = 0.0;
            for (int i = 0; i < V; i++) {
                const float c = logits[i];
                const float gi = B == 2 && cfg > 1.0f ? __fadd_rn(logits[V + i], __fmul_rn(__fsub_rn(c, logits[V + i]), cfg)) : c;
                float z = __fdiv_rn(gi, temp);
                if (isnan(z)) z = -INFINITY;
                if (!(z > -INFINITY) || order_key(z) < T) continue;
                const double pz = exp((double)z - (double)zmax);
                if (pass == 0) {
                    sum += pz;
                } else {
                    last = i;
                    if (pick < 0 && cum + pz > target) pick = i;
                    cum += pz;
                }
            }
            if (pass == 1) codes[slot] = pick >= 0 ? pick : last;
        }
    } else if (threadIdx.x == 0) {
        const int n = nkept_s;
        const uint64_t seed = ((uint64_t)prm->seed_hi << 32) | prm->seed_lo;
        const double u = philox_uniform(seed, 0u, *counter_dev, (uint32_t)slot);
        double sum = 0.0;
        for (int q = 0; q < n; q++) sum += kp[q];
        const double target = u * sum;
        double cum = 0.0;
        int pick = -1;
        for (int q = 0; q < n && pick < 0; q++) {
            if (cum + kp[q] > target) pick = ki[q];
            cum += kp[q];
        }
        codes[slot] = pick >= 0 ? pick : ki[n - 1]; /* rounding at u -> 1: the last kept entry */
    }
}

/* ---- the single-pass sampler ---------------------------------------------------------------- */

constexpr int NW = NT / 32;
constexpr int CAP = 1024;       /* candidates held in shared memory (one per thread) */
constexpr unsigned SMALL = 256; /* split the crossing octave again while more candidates than this */
constexpr uint32_t E0 = 120;    /* octave bins of d: exponent <= E0 (d < 2^-6) bin 0, E0 + b bin b, >= 2^8 far (15) */

/* draws per path since the last hmc_sample_path_counts: 0 octave bound, 1 keep-all, 2 radix
 * select, 3 vocabulary walk */
__device__ unsigned long long g_paths[4];

__device__ __forceinline__ float combine_at(const float *__restrict__ logits, int B, int V, int i, float cfg)
{
    const float c = logits[i];
    /* dv_cfg_combine's u + (c - u) * cfg, rounded step by step as the CPU does (no FMA) */
    return B == 2 && cfg > 1.0f ? __fadd_rn(logits[V + i], __fmul_rn(__fsub_rn(c, logits[V + i]), cfg)) : c;
}

/* z = g / T as the CPU computes it (a division; by 1 it is g itself), NaN -> -inf, and -0 -> +0:
 * every comparison of the CPU treats them as equal, and one order key must too */
__device__ __forceinline__ float to_z(float g, float temp)
{
    float z = temp == 1.0f ? g : __fdiv_rn(g, temp);
    if (isnan(z)) z = -INFINITY;
    return z == 0.0f ? 0.0f : z;
}

__device__ __forceinline__ float from_order_key(uint32_t k)
{
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

/* smp_argmax's order as one 64-bit key: larger value first, then the lower index; NaN never
 * (key 0: every other key is above it) */
__device__ __forceinline__ unsigned long long argmax_key(float g, int i)
{
    if (isnan(g)) return 0ull;
    if (g == 0.0f) g = 0.0f;
    return ((unsigned long long)order_key(g) << 32) | (0xffffffffu - (uint32_t)i);
}

/* the CPU's smp_argmax of g: the block's largest argmax_key, 0 when every entry is NaN */
__device__ int block_argmax_index(unsigned long long v, unsigned long long *s)
{
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w > v ? w : v;
    }
    if ((threadIdx.x & 31) == 0) s[threadIdx.x >> 5] = v;
    __syncthreads();
    v = s[threadIdx.x & 31];
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w > v ? w : v;
    }
    return v ? (int)(0xffffffffu - (uint32_t)v) : 0;
}

/* which entries the draw considers (see sample_kernel): mode 0 every finite z, 1 d = zmax - z
 * below `bound` (then filtered by rank), 2 order key >= T (exactly the kept set) */
__device__ __forceinline__ bool is_candidate(float z, int mode, float zmax, uint32_t bound, uint32_t T)
{
    if (!(z > -INFINITY)) return false;
    if (mode == 0) return true;
    if (mode == 1) return __float_as_uint(__fsub_rn(zmax, z)) < bound;
    return order_key(z) >= T;
}

/* Keep-all (or a radix threshold) with more entries than the lists hold: the CPU's two scans in
 * index order (the sum, then the walk to u * sum), 1024 entries at a time through shared memory:
 * the block computes the weights (-1: not kept), thread 0 adds them in order (adding +0.0 for the
 * others leaves the sum's bits as they are).  ~0.1 ms at V = 8197.  The pick, in thread 0. */
template <int P>
__device__ __forceinline__ int block_walk(const float (&z)[P], int V, int mode, float zmax, uint32_t bound, uint32_t T,
                                          double u, double *pb)
{
    double target = 0.0;
    int pick = -1, last = 0;
    for (int pass = 0; pass < 2; pass++) {
        double s = 0.0;
#pragma unroll
        for (int j = 0; j < P; j++) {
            if (j * NT >= V) break;
            __syncthreads(); /* the previous chunk is consumed */
            const int i = threadIdx.x + j * NT;
            pb[threadIdx.x] = i < V && is_candidate(z[j], mode, zmax, bound, T) ? exp((double)z[j] - (double)zmax) : -1.0;
            __syncthreads();
            if (threadIdx.x == 0) {
                const int cnt = min(NT, V - j * NT);
#pragma unroll 8
                for (int q = 0; q < cnt; q++) {
                    const double v = pb[q];
                    const bool kept = v != -1.0; /* a NaN weight (infinite maximum) is kept, as the CPU adds it */
                    s += kept ? v : 0.0;
                    if (pass == 1 && kept) {
                        last = j * NT + q;
                        if (pick < 0 && s > target) pick = last;
                    }
                }
            }
        }
        target = u * s;
    }
    return pick >= 0 ? pick : last;
}

/* per-phase clock64 cycles of sample_kernel<P, true> (hmc_sample_profile): [0..6] entry -> after
 * the dependency wait -> loads, z, maximum -> octave passes -> gather -> kept -> index order and
 * weights -> the sum and pick; [7] draws, [8] globaltimer ns, [9] cycles (together: the clock) */
__device__ unsigned long long g_prof[10];

__device__ __forceinline__ unsigned long long global_ns()
{
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

/* the draw's uniform: Philox of (seed, stream 0, frame = *counter_dev, codebook = slot) */
__device__ __forceinline__ double draw_uniform(const hmc_sample_params *prm, const uint32_t *counter_dev, int slot)
{
    const uint64_t seed = ((uint64_t)prm->seed_hi << 32) | prm->seed_lo;
    return philox_uniform(seed, 0u, *counter_dev, (uint32_t)slot);
}

/* Entries first + j * stride (j < P) of the vocabulary: g (into logits_out when given), z, and the
 * warp's largest finite order key and count of finite z. */
template <int P>
__device__ __forceinline__ void load_z(const float *__restrict__ logits, int B, int V, float cfg, float temp,
                                       float *__restrict__ logits_out, int first, int stride, float (&z)[P],
                                       uint32_t &kmax, uint32_t &nfin)
{
#pragma unroll
    for (int j = 0; j < P; j++) {
        const int i = first + j * stride;
        float v = -INFINITY;
        if (i < V) {
            const float g = combine_at(logits, B, V, i, cfg);
            if (logits_out) logits_out[i] = g;
            v = to_z(g, temp);
            if (v > -INFINITY) {
                const uint32_t key = order_key(v);
                kmax = key > kmax ? key : kmax;
                nfin++;
            }
        }
        z[j] = v;
    }
    kmax = __reduce_max_sync(0xffffffffu, kmax);
    nfin = __reduce_add_sync(0xffffffffu, nfin);
}

/* The same entries' largest argmax_key of g (g into logits_out when given). */
template <int P>
__device__ __forceinline__ unsigned long long argmax_keys(const float *__restrict__ logits, int B, int V, float cfg,
                                                          float *__restrict__ logits_out, int first, int stride)
{
    unsigned long long best = 0;
#pragma unroll
    for (int j = 0; j < P; j++) {
        const int i = first + j * stride;
        if (i < V) {
            const float g = combine_at(logits, B, V, i, cfg);
            if (logits_out) logits_out[i] = g;
            const unsigned long long a = argmax_key(g, i);
            best = a > best ? a : best;
        }
    }
    return best;
}

/* An entry's octave bin in pass `pass` (0: the exponent of d; then the region [A, A + 2^wb) split
 * in 16), counted into 16 bins of 8-bit counts (lo: bins 0-7, hi: 8-15) when it is in the region. */
__device__ __forceinline__ void octave_count(uint32_t kdj, int pass, uint32_t A, uint32_t wb, uint64_t &lo,
                                             uint64_t &hi)
{
    uint32_t b;
    bool in = true;
    if (pass == 0) {
        const uint32_t e = kdj >> 23;
        b = e <= E0 ? 0u : min(e - E0, 15u);
    } else {
        in = kdj - A < (1u << wb);
        b = (kdj - A) >> (wb - 4);
    }
    if (in) {
        const uint64_t inc = 1ull << ((b & 7u) * 8u);
        if (b & 8u) hi += inc;
        else lo += inc;
    }
}

/* The warp's sums of those counts in 16-bit fields, two bins a word (c[q]: bins 2q, 2q + 1). */
__device__ __forceinline__ void octave_warp_sums(uint64_t lo, uint64_t hi, uint32_t (&c)[8])
{
#pragma unroll
    for (int q = 0; q < 8; q++) {
        const uint64_t src = q < 4 ? lo : hi;
        const int sh = 16 * (q & 3);
        c[q] = __reduce_add_sync(0xffffffffu,
                                 (uint32_t)((src >> sh) & 0xffu) | ((uint32_t)((src >> (sh + 8)) & 0xffu) << 16));
    }
}

/* One octave pass's decision, the same in every thread, from the pass's 16 bin counts c (two 16-bit
 * counts a word; region [A, A + 2^wb) split in 16 after pass 0; c0 entries below A): the first bin
 * where the count from the top reaches k (pass 0: not the far bin) becomes the region.  True when
 * the passes stop: the k-th largest is >= 2^8 below the maximum (mode stays 2), or the region's
 * candidates are few enough or cannot be split (mode 1 when the lists hold them).  The bin chosen
 * (-1: none) into *bsel_out when given. */
__device__ __forceinline__ bool octave_step(const uint32_t (&c)[8], int pass, int k, uint32_t &A, uint32_t &bound,
                                            uint32_t &wb, unsigned &c0, int &mode, int *bsel_out = nullptr)
{
    const int nb = pass == 0 ? 15 : 16;
    unsigned acc = c0, cb = 0;
    int bsel = -1;
#pragma unroll
    for (int b = 0; b < 16; b++) {
        const unsigned cnt = (c[b >> 1] >> (16 * (b & 1))) & 0xffffu;
        if (bsel < 0 && b < nb) {
            if (acc + cnt >= (unsigned)k) bsel = b, cb = cnt;
            else acc += cnt;
        }
    }
    if (bsel_out) *bsel_out = bsel;
    if (bsel < 0) return true;
    bool refinable;
    if (pass == 0) {
        A = bsel == 0 ? 0u : (E0 + (uint32_t)bsel) << 23;
        bound = (E0 + (uint32_t)bsel + 1u) << 23;
        wb = 23;
        refinable = bsel > 0;
    } else {
        wb -= 4;
        A += (uint32_t)bsel << wb;
        bound = A + (1u << wb);
        refinable = wb >= 4;
    }
    c0 = acc;
    const unsigned m = acc + cb;
    if (m <= SMALL || !refinable) {
        if (m <= CAP) mode = 1;
        return true;
    }
    return false;
}

/* The kept entries (z, index in any order, n of them) into index order, with their fp64 weights:
 * each one's rank is the number of kept indices below it. */
__device__ __forceinline__ void kept_in_index_order(int n, const float *z, const int *idx, float zmax, double *kp,
                                                    int *ki)
{
    for (int q = threadIdx.x; q < n; q += blockDim.x) {
        const int id = idx[q], n4 = n & ~3;
        int rank = 0;
        for (int p = 0; p < n4; p += 4) {
            const int4 v = *reinterpret_cast<const int4 *>(idx + p);
            rank += (v.x < id) + (v.y < id) + (v.z < id) + (v.w < id);
        }
        for (int p = n4; p < n; p++) rank += idx[p] < id;
        kp[rank] = exp((double)z[q] - (double)zmax);
        ki[rank] = id;
    }
}

/* Warp 0: the weights kp[0..n) (index order) summed as the CPU sums them, their prefix sums into
 * kc (the CPU's walk compares cum + p, which is that prefix), and the index of the first prefix
 * above u * sum (the last kept entry when rounding leaves none, u -> 1). */
__device__ __forceinline__ int kept_pick(int n, const double *kp, const int *ki, double *kc, double u)
{
    const int lane = threadIdx.x & 31;
    if (lane == 0) { /* 8 weights loaded ahead of the adds */
        double s = 0.0, a[8];
#pragma unroll
        for (int v = 0; v < 8; v++) a[v] = v < n ? kp[v] : 0.0;
        for (int q0 = 0; q0 < n; q0 += 8) {
            double b[8];
#pragma unroll
            for (int v = 0; v < 8; v++) b[v] = q0 + 8 + v < n ? kp[q0 + 8 + v] : 0.0;
#pragma unroll
            for (int v = 0; v < 8; v++) {
                s += a[v]; /* + 0.0 past n: the same bits */
                if (q0 + v < n) kc[q0 + v] = s;
            }
#pragma unroll
            for (int v = 0; v < 8; v++) a[v] = b[v];
        }
    }
    __syncwarp();
    const double target = u * kc[n - 1];
    for (int b0 = 0; b0 < n; b0 += 32) {
        const int q = b0 + lane;
        const unsigned bal = __ballot_sync(0xffffffffu, q < n && kc[q] > target);
        if (bal) return ki[b0 + __ffs(bal) - 1];
    }
    return ki[n - 1];
}

/* the phase stamps tm[0..6] of one draw, its end now, and its ns since ns0 into g_prof */
__device__ __forceinline__ void prof_add(const long long (&tm)[8], unsigned long long ns0)
{
    const long long end = clock64();
#pragma unroll
    for (int q = 0; q < 6; q++) atomicAdd(&g_prof[q], (unsigned long long)(tm[q + 1] - tm[q]));
    atomicAdd(&g_prof[6], (unsigned long long)(end - tm[6]));
    atomicAdd(&g_prof[7], 1ull);
    atomicAdd(&g_prof[8], global_ns() - ns0);
    atomicAdd(&g_prof[9], (unsigned long long)(end - tm[0]));
}

/* how many of z[0..m) are larger than own (z 16-byte aligned) */
__device__ __forceinline__ int count_larger(const float *z, int m, float own)
{
    int gt = 0;
    const int m4 = m & ~3;
    for (int q = 0; q < m4; q += 4) {
        const float4 v = *reinterpret_cast<const float4 *>(z + q);
        gt += (v.x > own) + (v.y > own) + (v.z > own) + (v.w > own);
    }
    for (int q = m4; q < m; q++) gt += z[q] > own;
    return gt;
}

/* The draw from the n kept entries (z, index; any order): index order and weights, the pick into
 * codes[slot] and the path count (mode), by the whole block; thread 0 records the phase stamps. */
template <bool PROF>
__device__ __forceinline__ void finish_draw(int n, const float *z, const int *idx, float zmax, double *kp, int *ki,
                                            double *kc, double u, int32_t *codes, int slot, int mode, bool stamp,
                                            long long (&tm)[8], unsigned long long ns0)
{
    kept_in_index_order(n, z, idx, zmax, kp, ki);
    __syncthreads();
    if (stamp) tm[6] = clock64();
    if (threadIdx.x < 32) {
        const int code = kept_pick(n, kp, ki, kc, u);
        if (threadIdx.x == 0) {
            codes[slot] = code;
            atomicAdd(&g_paths[mode == 1 ? 0 : mode == 0 ? 1 : 2], 1ull);
            if (PROF) prof_add(tm, ns0);
        }
    }
}

/* The single-pass sampler (see the top of the file).  A block of NT threads, V <= NT * P. */
template <int P, bool PROF>
__global__ void __launch_bounds__(NT)
sample_kernel(const float *__restrict__ logits, int B, int V, const hmc_sample_params *__restrict__ prm,
              const uint32_t *counter_dev, int slot, float *__restrict__ logits_out, int32_t *__restrict__ codes)
{
    __shared__ unsigned long long s_amax[NW];
    __shared__ uint32_t s_red[2][NW];
    __shared__ uint32_t s_hist[2][NW][8];
    __shared__ __align__(16) unsigned char cbuf[CAP * 8]; /* candidates (z, index), later the prefix sums */
    __shared__ __align__(16) float kz[CAP];
    __shared__ __align__(16) int kiu[CAP];
    __shared__ __align__(16) double kp[CAP];
    __shared__ int ki[CAP];
    __shared__ unsigned hist[256], sel[2];
    __shared__ double s_u;
    __shared__ int s_m, s_n;
    float *cz = reinterpret_cast<float *>(cbuf);
    int *ci = reinterpret_cast<int *>(cbuf + CAP * 4);
    double *kc = reinterpret_cast<double *>(cbuf);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    long long tm[8];
    unsigned long long ns0 = 0;
    if (PROF && tid == 0) tm[0] = clock64(), ns0 = global_ns();
    pdl_trigger();
    /* the parameters before the wait (they are written between graph replays, by no kernel of
     * the chain), so the logits loads go out right after it */
    const float cfg = prm->cfg_scale, temp = prm->temperature;
    const int k = prm->topk;
    const int forced = slot < 8 ? prm->forced[slot] : -1;
    pdl_wait();
    if (PROF && tid == 0) tm[1] = clock64();
    if (forced >= 0 || k == 1 || !(temp > 0.0f)) {
        /* teacher forcing (g still goes to logits_out) or the CPU's argmax of g */
        unsigned long long best = argmax_keys<P>(logits, B, V, cfg, logits_out, tid, NT);
        if (forced >= 0) {
            if (tid == 0) codes[slot] = forced;
            return;
        }
        const int bi = block_argmax_index(best, s_amax);
        if (tid == 0) codes[slot] = bi;
        return;
    }
    if (tid == 32) s_u = draw_uniform(prm, counter_dev, slot); /* off the critical path (read after several barriers) */
    if (tid == 0) s_m = 0, s_n = 0;
    /* g, z, the maximum z and the number of finite z */
    float z[P];
    uint32_t kmax = 0, nfin = 0;
    load_z<P>(logits, B, V, cfg, temp, logits_out, tid, NT, z, kmax, nfin);
    if (lane == 0) s_red[0][warp] = kmax, s_red[1][warp] = nfin;
    __syncthreads();
    if (PROF && tid == 0) tm[2] = clock64();
    kmax = __reduce_max_sync(0xffffffffu, s_red[0][lane]);
    nfin = __reduce_add_sync(0xffffffffu, s_red[1][lane]);
    if (nfin == 0) { /* nothing finite: the CPU falls back to smp_argmax of g */
        const unsigned long long best = argmax_keys<P>(logits, B, V, cfg, nullptr, tid, NT);
        const int bi = block_argmax_index(best, s_amax);
        if (tid == 0) codes[slot] = bi;
        return;
    }
    const float zmax = from_order_key(kmax);

    /* the candidates: every finite z (keep-all), or an octave bound on d = zmax - z */
    int mode = 0;
    uint32_t bound = 0, T = 0;
    /* the order of d: its bits (d >= 0); not finite: above every bound.  Kept in registers for
     * V <= 9216; recomputed above (the registers would spill) */
    constexpr bool KD_REGS = P <= 9;
    uint32_t kd[KD_REGS ? P : 1] = {};
    auto kd_at = [&](int j) -> uint32_t {
        if (KD_REGS) return kd[KD_REGS ? j : 0];
        return z[j] > -INFINITY ? __float_as_uint(__fsub_rn(zmax, z[j])) : 0xffffffffu;
    };
    if (!(k <= 0 || k >= V || nfin <= (unsigned)k)) { /* else the CPU's threshold is -inf or all: keep all */
        mode = 2;
        if (zmax < INFINITY) {
            if (KD_REGS)
#pragma unroll
                for (int j = 0; j < P; j++)
                    kd[KD_REGS ? j : 0] = z[j] > -INFINITY ? __float_as_uint(__fsub_rn(zmax, z[j])) : 0xffffffffu;
            uint32_t A = 0, wb = 0; /* region split by a refinement pass: keys [A, A + 2^wb) */
            unsigned c0 = 0;        /* entries below A (all candidates) */
            for (int pass = 0;; pass++) {
                uint64_t lo = 0, hi = 0; /* 16 bins of 8-bit counts (at most 16 entries a thread) */
#pragma unroll
                for (int j = 0; j < P; j++) octave_count(kd_at(j), pass, A, wb, lo, hi);
                /* warp sums (<= 512 a bin); then over the 32 warps (<= 16384) */
                uint32_t c[8];
                octave_warp_sums(lo, hi, c);
                if (lane == 0)
#pragma unroll
                    for (int q = 0; q < 8; q++) s_hist[pass & 1][warp][q] = c[q];
                __syncthreads();
#pragma unroll
                for (int q = 0; q < 8; q++) c[q] = __reduce_add_sync(0xffffffffu, s_hist[pass & 1][lane][q]);
                if (octave_step(c, pass, k, A, bound, wb, c0, mode)) break;
            }
        }
        if (mode == 2) T = radix_kth<P>(z, V, (unsigned)k, hist, sel);
    }
    if (PROF && tid == 0) tm[3] = clock64();

    /* gather the candidates (unordered: one shared atomic per warp and slot that has any) */
#pragma unroll
    for (int j = 0; j < P; j++) {
        const bool p = mode == 1 ? kd_at(j) < bound : is_candidate(z[j], mode, zmax, bound, T);
        const unsigned bal = __ballot_sync(0xffffffffu, p);
        if (bal) {
            int base = 0;
            if (lane == 0) base = atomicAdd(&s_m, __popc(bal));
            base = __shfl_sync(0xffffffffu, base, 0);
            const int pos = base + __popc(bal & ((1u << lane) - 1u));
            if (p && pos < CAP) cz[pos] = z[j], ci[pos] = tid + j * NT;
        }
    }
    __syncthreads();
    if (PROF && tid == 0) tm[4] = clock64();
    const int m = s_m;
    if (m > CAP) {
        const int pick = block_walk<P>(z, V, mode, zmax, bound, T, s_u, kp);
        if (tid == 0) codes[slot] = pick, atomicAdd(&g_paths[3], 1ull);
        return;
    }
    /* kept = candidates with fewer than k larger ones (octave bound; otherwise all are kept), put
     * into kz / kiu by one shared atomic per warp */
    if (warp * 32 < m) {
        bool keep = false;
        float own = 0.0f;
        int idx = 0;
        if (tid < m) {
            own = cz[tid], idx = ci[tid];
            keep = true;
            if (mode == 1) keep = count_larger(cz, m, own) < k;
        }
        const unsigned bal = __ballot_sync(0xffffffffu, keep);
        if (bal) {
            int base = 0;
            if (lane == 0) base = atomicAdd(&s_n, __popc(bal));
            base = __shfl_sync(0xffffffffu, base, 0);
            if (keep) {
                const int pos = base + __popc(bal & ((1u << lane) - 1u));
                kz[pos] = own, kiu[pos] = idx;
            }
        }
    }
    __syncthreads();
    if (PROF && tid == 0) tm[5] = clock64();
    /* the kept entries into index order (a rank among n ~ k), with their fp64 weights; the draw */
    finish_draw<PROF>(s_n, kz, kiu, zmax, kp, ki, kc, s_u, codes, slot, mode, PROF && tid == 0, tm, ns0);
}

/* ---- the cluster sampler ------------------------------------------------------------------ */
/* The single-pass sampler's steps spread over a thread-block cluster of CLB blocks of NC threads
 * (sample_kernel_cl; the default since stop 22).  One block did every step with 1024 threads, and
 * its time went to issuing the same per-entry work and reductions in 32 warps (docs/PERF.md).
 * Here each block holds V / CLB of the logits; a block's counts (maximum, finite entries, octave
 * bins, argmax keys) are stored into every block's shared memory (rank 0's only, for the last
 * steps), so after one cluster barrier each block reduces them locally and all take the same
 * decisions.  The candidates go to rank 0, split in two lists: those below the crossing bin (kept:
 * fewer than k entries lie below it) and those inside it, which need the rank filter only against
 * each other.  Rank 0 then puts the kept entries in index order and draws, as sample_kernel does;
 * the rare paths (radix select, keep-all over CAP entries) follow sample_kernel's rules, with the
 * radix histograms summed over the cluster and the vocabulary walk recomputed by rank 0. */
#ifndef HM_SAMPLE_CLB
#define HM_SAMPLE_CLB 8 /* blocks a cluster (a build-time knob for A/B: 4 or 8) */
#endif
constexpr int CLB = HM_SAMPLE_CLB, NC = 256, NWC = NC / 32;
constexpr int CL_PS = (9 * NT + CLB * NC - 1) / (CLB * NC); /* entries a thread for V <= 9216 (5 with 8 blocks) */
constexpr int CL_PL = NT * PER / (CLB * NC);                /* for V <= 16384 (8) */

__device__ __forceinline__ void cl_arrive() { asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory"); }
__device__ __forceinline__ void cl_wait() { asm volatile("barrier.cluster.wait.aligned;" ::: "memory"); }
__device__ __forceinline__ void cl_sync()
{
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
__device__ __forceinline__ uint32_t cl_rank()
{
    uint32_t r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
/* the address of `p` (this block's shared memory) in block `rank`'s, as a generic pointer */
template <typename T>
__device__ __forceinline__ T *cl_map(T *p, uint32_t rank)
{
    return cooperative_groups::this_cluster().map_shared_rank(p, (unsigned)rank);
}

/* the largest of a 64-bit key over the block, valid in every thread */
__device__ __forceinline__ unsigned long long cl_block_max64(unsigned long long v, unsigned long long *s)
{
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w > v ? w : v;
    }
    if ((threadIdx.x & 31) == 0) s[threadIdx.x >> 5] = v;
    __syncthreads();
    v = s[0];
#pragma unroll
    for (int w = 1; w < NWC; w++) v = s[w] > v ? s[w] : v;
    return v;
}

/* smp_argmax over the cluster: each block's largest argmax key into rank 0, which writes the code
 * (0 when every key is 0: all NaN) */
__device__ __forceinline__ void cl_argmax(unsigned long long best, unsigned long long *s_k64, unsigned long long *s_akey,
                                          uint32_t rank, int32_t *codes, int slot)
{
    best = cl_block_max64(best, s_k64);
    if (threadIdx.x == 0) *cl_map(&s_akey[rank], 0) = best;
    cl_sync();
    if (rank == 0 && threadIdx.x == 0) {
        unsigned long long v = 0;
        for (int r = 0; r < CLB; r++) v = s_akey[r] > v ? s_akey[r] : v;
        codes[slot] = v ? (int)(0xffffffffu - (uint32_t)v) : 0;
    }
}

/* the vocabulary walk of block_walk, in rank 0 alone: z recomputed from the logits a chunk of NC
 * entries at a time (the same operations as the other steps, so the same values) */
__device__ int cl_walk(const float *__restrict__ logits, int B, int V, float cfg, float temp, int mode, float zmax,
                       uint32_t bound, uint32_t T, double u, double *pb)
{
    double target = 0.0;
    int pick = -1, last = 0;
    for (int pass = 0; pass < 2; pass++) {
        double s = 0.0;
        for (int c0 = 0; c0 < V; c0 += NC) {
            __syncthreads();
            const int i = c0 + threadIdx.x;
            float z = -INFINITY;
            if (i < V) z = to_z(combine_at(logits, B, V, i, cfg), temp);
            pb[threadIdx.x] = i < V && is_candidate(z, mode, zmax, bound, T) ? exp((double)z - (double)zmax) : -1.0;
            __syncthreads();
            if (threadIdx.x == 0) {
                const int cnt = min(NC, V - c0);
                for (int q = 0; q < cnt; q++) {
                    const double v = pb[q];
                    const bool kept = v != -1.0;
                    s += kept ? v : 0.0;
                    if (pass == 1 && kept) {
                        last = c0 + q;
                        if (pick < 0 && s > target) pick = last;
                    }
                }
            }
        }
        target = u * s;
    }
    return pick >= 0 ? pick : last;
}

template <int P, bool PROF>
__global__ void __launch_bounds__(NC)
sample_kernel_cl(const float *__restrict__ logits, int B, int V, const hmc_sample_params *__restrict__ prm,
                 const uint32_t *counter_dev, int slot, float *__restrict__ logits_out, int32_t *__restrict__ codes)
{
    __shared__ unsigned long long s_k64[NWC], s_akey[CLB];
    __shared__ uint32_t s_wred[2][NWC], s_bred[CLB][2];
    __shared__ uint32_t s_hw[NWC][8], s_hb[2][CLB][8];
    __shared__ unsigned hist[256], htot[256], sel[2];
    /* rank 0: the candidates below the crossing bin, later every kept entry (lz, li), those in it
     * (cbuf: cz, ci; later the prefix sums), the kept entries in index order (kp, ki) */
    __shared__ __align__(16) float lz[CAP];
    __shared__ __align__(16) int li[CAP];
    __shared__ __align__(16) unsigned char cbuf[CAP * 8];
    __shared__ __align__(16) double kp[CAP];
    __shared__ int ki[CAP];
    __shared__ double s_u;
    __shared__ int s_nl;
    __shared__ unsigned s_cnt[2][CLB], s_wsum[NWC];
    float *cz = reinterpret_cast<float *>(cbuf);
    int *ci = reinterpret_cast<int *>(cbuf + CAP * 4);
    double *kc = reinterpret_cast<double *>(cbuf);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const uint32_t rank = cl_rank();
    const int gt = (int)rank * NC + tid;
    constexpr int STRIDE = CLB * NC;
    const bool stamp = PROF && rank == 0 && tid == 0;
    long long tm[8];
    unsigned long long ns0 = 0;
    if (stamp) tm[0] = clock64(), ns0 = global_ns();
    if (tid == 0) s_nl = 0;
    cl_arrive(); /* every block has started before any stores into its shared memory (cl_wait) */
    pdl_trigger();
    const float cfg = prm->cfg_scale, temp = prm->temperature;
    const int k = prm->topk;
    const int forced = slot < 8 ? prm->forced[slot] : -1;
    pdl_wait();
    if (stamp) tm[1] = clock64();
    if (forced >= 0 || k == 1 || !(temp > 0.0f)) {
        const unsigned long long best = argmax_keys<P>(logits, B, V, cfg, logits_out, gt, STRIDE);
        cl_wait();
        if (forced >= 0) {
            if (rank == 0 && tid == 0) codes[slot] = forced;
            return;
        }
        cl_argmax(best, s_k64, s_akey, rank, codes, slot);
        return;
    }
    if (rank == 0 && tid == 32) s_u = draw_uniform(prm, counter_dev, slot);
    float z[P];
    uint32_t kmax = 0, nfin = 0;
    load_z<P>(logits, B, V, cfg, temp, logits_out, gt, STRIDE, z, kmax, nfin);
    if (lane == 0) s_wred[0][warp] = kmax, s_wred[1][warp] = nfin;
    __syncthreads();
    cl_wait();
    if (tid < CLB) { /* the block's maximum and count into every block's shared memory */
        uint32_t a = 0, b = 0;
#pragma unroll
        for (int w = 0; w < NWC; w++) a = max(a, s_wred[0][w]), b += s_wred[1][w];
        uint32_t *d = cl_map(&s_bred[rank][0], (uint32_t)tid);
        d[0] = a, d[1] = b;
    }
    cl_sync();
    if (stamp) tm[2] = clock64();
    kmax = 0, nfin = 0;
#pragma unroll
    for (int r = 0; r < CLB; r++) kmax = max(kmax, s_bred[r][0]), nfin += s_bred[r][1];
    if (nfin == 0) { /* nothing finite: the CPU's smp_argmax of g */
        const unsigned long long best = argmax_keys<P>(logits, B, V, cfg, nullptr, gt, STRIDE);
        cl_argmax(best, s_k64, s_akey, rank, codes, slot);
        return;
    }
    const float zmax = from_order_key(kmax);

    int mode = 0;
    uint32_t bound = 0, A = 0, T = 0;
    unsigned c0 = 0, c0r = 0, cbr = 0; /* c0r, cbr: in thread r < CLB, block r's share of c0 and of the bin */
    uint32_t kd[P];
#pragma unroll
    for (int j = 0; j < P; j++) kd[j] = z[j] > -INFINITY ? __float_as_uint(__fsub_rn(zmax, z[j])) : 0xffffffffu;
    if (!(k <= 0 || k >= V || nfin <= (unsigned)k)) {
        mode = 2;
        if (zmax < INFINITY) {
            uint32_t wb = 0;
            for (int pass = 0;; pass++) {
                uint64_t lo = 0, hi = 0; /* 16 bins of 8-bit counts */
#pragma unroll
                for (int j = 0; j < P; j++) octave_count(kd[j], pass, A, wb, lo, hi);
                /* warp sums (<= 256 a bin); the block's (<= 2048) into every block's shared memory; the
                 * cluster's (<= 16384) summed by each block */
                uint32_t c[8];
                octave_warp_sums(lo, hi, c);
                if (lane == 0)
#pragma unroll
                    for (int q = 0; q < 8; q++) s_hw[warp][q] = c[q];
                __syncthreads();
                if (tid < CLB * 8) { /* thread (destination block, word) */
                    const int q = tid & 7;
                    uint32_t s = 0;
#pragma unroll
                    for (int w = 0; w < NWC; w++) s += s_hw[w][q];
                    *cl_map(&s_hb[pass & 1][rank][q], (uint32_t)(tid >> 3)) = s;
                }
                cl_sync();
#pragma unroll
                for (int q = 0; q < 8; q++) {
                    uint32_t s = 0;
#pragma unroll
                    for (int r = 0; r < CLB; r++) s += s_hb[pass & 1][r][q];
                    c[q] = s;
                }
                int bsel = -1;
                const bool stop = octave_step(c, pass, k, A, bound, wb, c0, mode, &bsel);
                if (tid < CLB && bsel >= 0) { /* block tid's entries below the new region, and in it */
                    const uint32_t *h = s_hb[pass & 1][tid];
                    for (int b = 0; b < bsel; b++) c0r += (h[b >> 1] >> (16 * (b & 1))) & 0xffffu;
                    cbr = (h[bsel >> 1] >> (16 * (bsel & 1))) & 0xffffu;
                }
                if (stop) break;
            }
        }
        if (mode == 2) { /* the k-th largest order key: radix_kth over the cluster */
            uint32_t hmask = 0;
            unsigned kk = (unsigned)k;
            for (int shift = 24; shift >= 0; shift -= 8) {
                hist[tid] = 0;
                __syncthreads();
#pragma unroll
                for (int j = 0; j < P; j++) {
                    const uint32_t key = order_key(z[j]);
                    if (gt + j * STRIDE < V && (key & hmask) == T) atomicAdd(&hist[(key >> shift) & 255u], 1u);
                }
                cl_sync();
                unsigned s = 0;
                for (int r = 0; r < CLB; r++) s += *cl_map(&hist[tid], (uint32_t)r);
                htot[tid] = s;
                cl_sync(); /* every block has read the histograms before the next round clears them */
                if (tid < 32) radix_pick_digit(htot, kk, sel);
                __syncthreads();
                T |= sel[0] << shift;
                hmask |= 255u << shift;
                kk = sel[1];
                __syncthreads();
            }
        }
    }
    if (stamp) tm[3] = clock64();

    /* the candidates into rank 0: list L (kept whatever the rank: below the crossing bin in mode 1,
     * every candidate in modes 0 and 2) and list C (mode 1's crossing bin) */
    float *rlz = cl_map(lz, 0), *rcz = cl_map(cz, 0);
    int *rli = cl_map(li, 0), *rci = cl_map(ci, 0);
    unsigned nc_all = 0;
    if (mode == 1) {
        /* each block's place in the lists from the pushed bins (every block has them all), a thread's
         * from a scan of the block's counts (L in the low 16 bits, C in the high): no atomics */
        if (tid < CLB) s_cnt[0][tid] = c0r, s_cnt[1][tid] = cbr;
        uint32_t mine = 0;
#pragma unroll
        for (int j = 0; j < P; j++)
            if (kd[j] < bound) mine += kd[j] < A ? 1u : 0x10000u;
        uint32_t incl = mine;
        for (int o = 1; o < 32; o <<= 1) {
            const uint32_t v = __shfl_up_sync(0xffffffffu, incl, o);
            if (lane >= o) incl += v;
        }
        if (lane == 31) s_wsum[warp] = incl;
        __syncthreads();
        uint32_t before = incl - mine;
        for (int w = 0; w < warp; w++) before += s_wsum[w];
        int pl = (int)(before & 0xffffu), pc = (int)(before >> 16);
        for (int r = 0; r < CLB; r++) {
            if (r < (int)rank) pl += (int)s_cnt[0][r], pc += (int)s_cnt[1][r];
            nc_all += s_cnt[1][r];
        }
#pragma unroll
        for (int j = 0; j < P; j++)
            if (kd[j] < bound) {
                if (kd[j] < A) rlz[pl] = z[j], rli[pl] = gt + j * STRIDE, pl++;
                else rcz[pc] = z[j], rci[pc] = gt + j * STRIDE, pc++;
            }
    } else {
        int *rnl = cl_map(&s_nl, 0);
#pragma unroll
        for (int j = 0; j < P; j++) {
            const bool inl = is_candidate(z[j], mode, zmax, bound, T);
            const unsigned bl = __ballot_sync(0xffffffffu, inl);
            if (bl) {
                int basel = 0;
                if (lane == 0) basel = atomicAdd(rnl, __popc(bl));
                basel = __shfl_sync(0xffffffffu, basel, 0);
                const int pos = basel + __popc(bl & ((1u << lane) - 1u));
                if (inl && pos < CAP) rlz[pos] = z[j], rli[pos] = gt + j * STRIDE;
            }
        }
    }
    cl_sync(); /* the lists are complete; no block touches another's shared memory after this */
    if (rank != 0) return;
    if (stamp) tm[4] = clock64();
    const int nl = mode == 1 ? (int)c0 : s_nl, nc = (int)nc_all;
    if (nl + nc > CAP) { /* keep-all or a radix threshold with more entries than the lists hold */
        const int pick = cl_walk(logits, B, V, cfg, temp, mode, zmax, bound, T, s_u, kp);
        if (tid == 0) codes[slot] = pick, atomicAdd(&g_paths[3], 1ull);
        return;
    }
    __syncthreads(); /* every thread has read s_nl */
    if (tid == 0) s_nl = nl;
    __syncthreads();
    /* mode 1: an entry of the crossing bin is kept when fewer than k - c0 of the bin are larger */
    for (int q = tid; q < nc; q += NC) {
        const float own = cz[q];
        if (c0 + (unsigned)count_larger(cz, nc, own) < (unsigned)k) {
            const int pos = atomicAdd(&s_nl, 1);
            lz[pos] = own, li[pos] = ci[q];
        }
    }
    __syncthreads();
    if (stamp) tm[5] = clock64();
    finish_draw<PROF>(s_nl, lz, li, zmax, kp, ki, kc, s_u, codes, slot, mode, stamp, tm, ns0);
}

int g_impl = -1; /* hmc_sample_set_impl; -1: not read from HM_SAMPLE_IMPL yet */

int sample_impl()
{
    if (g_impl < 0) {
        const char *e = getenv("HM_SAMPLE_IMPL");
        g_impl = e && *e ? atoi(e) : 0;
    }
    return g_impl;
}

/* whether a cluster of the sampler's CLB blocks can be resident on this device (asked once) */
bool cluster_fits()
{
    static int fits = -1;
    if (fits < 0) {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(CLB), cfg.blockDim = dim3(NC);
        cudaLaunchAttribute at[1];
        at[0].id = cudaLaunchAttributeClusterDimension;
        at[0].val.clusterDim.x = CLB, at[0].val.clusterDim.y = 1, at[0].val.clusterDim.z = 1;
        cfg.attrs = at, cfg.numAttrs = 1;
        int n = 0;
        fits = cudaOccupancyMaxActiveClusters(&n, sample_kernel_cl<CL_PL, false>, &cfg) == cudaSuccess && n > 0;
        (void)cudaGetLastError();
    }
    return fits == 1;
}

} // namespace

extern "C" int hmc_sample_set_impl(int impl)
{
    const int was = sample_impl();
    g_impl = impl >= 1 && impl <= 4 ? impl : 0;
    return was;
}

extern "C" int hmc_sample_path_counts(unsigned long long out[4])
{
    CK(cudaMemcpyFromSymbol(out, g_paths, sizeof(unsigned long long) * 4));
    static const unsigned long long zero[4] = {0, 0, 0, 0};
    CK(cudaMemcpyToSymbol(g_paths, zero, sizeof zero));
    return HM_OK;
}

extern "C" int hmc_sample_profile(unsigned long long out[10])
{
    CK(cudaMemcpyFromSymbol(out, g_prof, sizeof(unsigned long long) * 10));
    static const unsigned long long zero[10] = {0};
    CK(cudaMemcpyToSymbol(g_prof, zero, sizeof zero));
    return HM_OK;
}

extern "C" int hmc_sample(const float *logits, int B, int V, const hmc_sample_params *params_dev,
                          const uint32_t *counter_dev, int slot, float *logits_out, int32_t *codes, cudaStream_t s)
{
    if (V <= 0 || V > NT * PER) return hm_err("%s:%d: sample: vocab %d not in 1..%d", __FILE__, __LINE__, V, NT * PER);
    if (B != 1 && B != 2) return hm_err("%s:%d: sample: B %d", __FILE__, __LINE__, B);
    const int impl = sample_impl();
    const bool small = V <= 9 * NT;
    if (impl == 1)
        return launch_pdl(sample_kernel_v1, dim3(1), dim3(NT), 0, s, logits, B, V, params_dev, counter_dev, slot,
                          logits_out, codes);
    if (impl == 2)
        return launch_pdl(small ? sample_kernel<9, true> : sample_kernel<16, true>, dim3(1), dim3(NT), 0, s, logits,
                          B, V, params_dev, counter_dev, slot, logits_out, codes);
    if (impl == 3)
        return launch_pdl(small ? sample_kernel<9, false> : sample_kernel<16, false>, dim3(1), dim3(NT), 0, s, logits,
                          B, V, params_dev, counter_dev, slot, logits_out, codes);
    const bool v5 = V <= CL_PS * CLB * NC;
    if (impl == 0 && !cluster_fits()) /* a device (or an MPS share) without room for a cluster */
        return launch_pdl(small ? sample_kernel<9, false> : sample_kernel<16, false>, dim3(1), dim3(NT), 0, s, logits,
                          B, V, params_dev, counter_dev, slot, logits_out, codes);
    if (impl == 4)
        return launch_pdl_cluster(v5 ? sample_kernel_cl<CL_PS, true> : sample_kernel_cl<CL_PL, true>, dim3(CLB), dim3(NC), 0,
                                  s, CLB, logits, B, V, params_dev, counter_dev, slot, logits_out, codes);
    return launch_pdl_cluster(v5 ? sample_kernel_cl<CL_PS, false> : sample_kernel_cl<CL_PL, false>, dim3(CLB), dim3(NC), 0, s,
                              CLB, logits, B, V, params_dev, counter_dev, slot, logits_out, codes);
}
