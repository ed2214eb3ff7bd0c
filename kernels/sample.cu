/* sample.cu - classifier-free-guidance combine and top-k / temperature sampling on the GPU
 * (MODEL.md §2 "Sampling").  CPU twin: kernels/sampling.c (smp_uniform + smp_topk_sample, as
 * stages/draft-verifier's dv_sample calls them); tests/gpu_sample.c checks that both draw the
 * same ids from the same logits, seed and counters.
 *
 * One block of 1024 threads holds the V logits in registers (V <= 16384).  The draw follows the
 * CPU step for step so that a song does not depend on the backend:
 *   z = g / temperature (NaN -> -inf); the k-th largest z by a radix select over order-preserving
 *   integer keys (4 passes of 8 bits, each a 256-bin shared histogram); every z >= it is kept
 *   (ties with the k-th are kept); p_i = exp((double)z_i - zmax) in fp64; u = the Philox4x32-10
 *   uniform of (seed, stream 0, frame = *counter_dev, codebook = slot, lane 0); inverse CDF in
 *   index order.  The kept entries are compacted in index order into shared memory and one
 *   thread does the two short fp64 scans (sum, then the pick) in exactly the CPU's order.
 * The only possible difference from the CPU is the last bit of exp() in fp64 (CUDA's vs libm's),
 * which moves a pick only if u * sum falls within ~1e-16 of a CDF step. */
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

__global__ void __launch_bounds__(NT)
sample_kernel(const float *__restrict__ logits, int B, int V, const hmc_sample_params *__restrict__ prm,
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
    /* k-th largest key, 8 bits at a time from the top: among keys matching the digits found so
     * far, the digit d where (count of larger digits) < kk <= (count of digits >= d) */
    uint32_t key[PER];
#pragma unroll
    for (int j = 0; j < PER; j++) key[j] = threadIdx.x + j * NT < V ? order_key(g[j]) : 0u;
    __shared__ unsigned hist[256];
    __shared__ unsigned sel_digit, sel_kk;
    uint32_t T = 0, hmask = 0;
    const bool all = k <= 0 || k >= V;
    unsigned kk = (unsigned)(all ? V : k);
    for (int shift = 24; shift >= 0 && !all; shift -= 8) {
        if (threadIdx.x < 256) hist[threadIdx.x] = 0;
        __syncthreads();
#pragma unroll
        for (int j = 0; j < PER; j++)
            if (threadIdx.x + j * NT < V && (key[j] & hmask) == T) atomicAdd(&hist[(key[j] >> shift) & 255u], 1u);
        __syncthreads();
        if (threadIdx.x < 32) {
            const int lane = threadIdx.x;
            unsigned s = 0; /* lane owns digits 255-8*lane down to 248-8*lane */
            for (int i = 0; i < 8; i++) s += hist[255 - 8 * lane - i];
            unsigned incl = s;
            for (int o = 1; o < 32; o <<= 1) {
                unsigned v = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += v;
            }
            unsigned excl = incl - s;
            if (excl < kk && kk <= incl) {
                unsigned above = excl;
                for (int i = 0; i < 8; i++) {
                    unsigned d = 255 - 8 * lane - i, h = hist[d];
                    if (above + h >= kk) {
                        sel_digit = d, sel_kk = kk - above;
                        break;
                    }
                    above += h;
                }
            }
        }
        __syncthreads();
        T |= sel_digit << shift;
        hmask |= 255u << shift;
        kk = sel_kk;
        __syncthreads();
    }
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

} // namespace

extern "C" int hmc_sample(const float *logits, int B, int V, const hmc_sample_params *params_dev,
                          const uint32_t *counter_dev, int slot, float *logits_out, int32_t *codes, cudaStream_t s)
{
    if (V <= 0 || V > NT * PER) return hm_err("%s:%d: sample: vocab %d not in 1..%d", __FILE__, __LINE__, V, NT * PER);
    if (B != 1 && B != 2) return hm_err("%s:%d: sample: B %d", __FILE__, __LINE__, B);
    return launch_pdl(sample_kernel, dim3(1), dim3(NT), 0, s, logits, B, V, params_dev, counter_dev, slot, logits_out,
                      codes);
}
