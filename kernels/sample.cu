/* sample.cu - classifier-free-guidance combine and top-k / temperature sampling on the GPU
 * (MODEL.md §2 "Sampling").  CPU twin: the same combine, a sort-free top-k threshold and argmax
 * in tests/gpu_ops.c.
 *
 * One block of 1024 threads holds the V logits in registers (V ≤ 16384).  Top-k: the k-th largest
 * value is found by a radix select over order-preserving integer keys (4 passes of 8 bits, each a
 * 256-bin shared histogram),
 * every logit ≥ it is kept (ties with the k-th are kept, as "drop strictly below" says), and the
 * draw is Gumbel-max over the kept logits / temperature, i.e. an exact categorical draw from the
 * renormalised softmax.  The uniforms come from a counter-based hash of (seed, counter, slot,
 * index), so a draw needs no generator state and replays identically. */
#include "common_cuda.h"
#include "ops_cuda.h"

namespace {

constexpr int NT = 1024;
constexpr int PER = 16;

__device__ __forceinline__ uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
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
            v = B == 2 ? logits[V + i] + (c - logits[V + i]) * cfg : c;
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
    if (k <= 1) {
        float v = -INFINITY;
        int vi = 0x7fffffff;
#pragma unroll
        for (int j = 0; j < PER; j++) {
            int i = threadIdx.x + j * NT;
            if (i < V && (g[j] > v || vi == 0x7fffffff)) v = g[j], vi = i;
        }
        block_argmax(v, vi, sv, si, &bv, &bi);
        if (threadIdx.x == 0) codes[slot] = bi;
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
    unsigned kk = (unsigned)(k < V ? k : V);
    for (int shift = 24; shift >= 0; shift -= 8) {
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
    const float inv_t = 1.0f / prm->temperature;
    const uint64_t seed = ((uint64_t)prm->seed_hi << 32) | prm->seed_lo;
    const uint64_t stream = mix64(seed ^ (((uint64_t)*counter_dev << 8) | (uint64_t)slot));
    float v = -INFINITY;
    int vi = 0x7fffffff;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        int i = threadIdx.x + j * NT;
        if (i < V && key[j] >= T) {
            float u = ((float)(mix64(stream + (uint64_t)i) >> 40) + 0.5f) * (1.0f / 16777216.0f);
            float sc = g[j] * inv_t - logf(-logf(u));
            if (sc > v || vi == 0x7fffffff) v = sc, vi = i;
        }
    }
    block_argmax(v, vi, sv, si, &bv, &bi);
    if (threadIdx.x == 0) codes[slot] = bi;
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
