/* attention.cu - GQA attention against the KV cache for decode (T = 1) and prefill (T query
 * positions, causal), flash-decoding style.  CPU twin: cpu_attention.
 *
 * The keys of a query are split into nch chunks (nch fixed at launch, so a graph can replay it;
 * the chunk length follows the current number of keys, read on the device, so short and long
 * contexts both spread over the machine).
 * One block per (key chunk, query position t, kv head, batch row); its
 * 4 warps stride over the chunk's keys, KU keys at a time (K and V rows loaded together so
 * several loads are in flight), keeping an online softmax (max m, sum l, weighted V sum) for each
 * of the G query heads sharing the kv head; the warps then merge in shared memory and write
 * (m, l, acc[hd]) per head to `work`.  The last chunk block of a (row, kv head) to finish (a
 * counter in `work`, back to 0 afterwards) merges the chunks and writes the output, so decode
 * attention is one launch; a single chunk writes its output directly.
 * Lane mapping: lane owns dims lane*4 + 128*j (j < J), so hd must be a multiple of 4 and ≤ 128*J. */
#include "common_cuda.h"
#include "ops_cuda.h"

namespace {

constexpr int CH_MIN = 16;  /* chunk lengths are multiples of this */
constexpr int NW = 4;       /* warps per block */
constexpr int GMAX = 4;     /* query heads per kv head */
constexpr int KU = 4;       /* keys per warp step */

__host__ __device__ __forceinline__ int chunk_len(int nkeys, int nch)
{
    int c = (nkeys + nch - 1) / nch;
    return (c + CH_MIN - 1) / CH_MIN * CH_MIN;
}

/* chunks per query: up to 64, fewer when many queries (prefill) already fill the machine */
int chunks_for(int B, int T, int KVH, int max_keys)
{
    int n = (max_keys + CH_MIN - 1) / CH_MIN;
    n = n < 64 ? n : 64;
    int cap = 8192 / (B * T * KVH);
    cap = cap < 1 ? 1 : cap;
    return n < cap ? n : cap;
}

__device__ __forceinline__ void load4(const float *p, float *o)
{
    float4 v = *reinterpret_cast<const float4 *>(p);
    o[0] = v.x, o[1] = v.y, o[2] = v.z, o[3] = v.w;
}
__device__ __forceinline__ void load4(const __nv_bfloat16 *p, float *o)
{
    uint2 v = *reinterpret_cast<const uint2 *>(p);
    float2 a = __bfloat1622float2(*reinterpret_cast<__nv_bfloat162 *>(&v.x));
    float2 b = __bfloat1622float2(*reinterpret_cast<__nv_bfloat162 *>(&v.y));
    o[0] = a.x, o[1] = a.y, o[2] = b.x, o[3] = b.y;
}

template <typename CT, int J>
__global__ void __launch_bounds__(NW * 32)
attn_chunk_kernel(const float *__restrict__ qkv, int T, int H, int KVH, int hd, const int *pos_dev, int pos_add,
                  const CT *__restrict__ kc, const CT *__restrict__ vc, int max_seq, int nch,
                  float *__restrict__ work, int *__restrict__ counters, float *__restrict__ out)
{
    pdl_trigger();
    pdl_wait();
    const int c = blockIdx.x % nch, t = blockIdx.x / nch, kvh = blockIdx.y, b = blockIdx.z;
    const int pos0 = (pos_dev ? *pos_dev : 0) + pos_add;
    const int nkeys = pos0 + t + 1;
    const int CH = chunk_len(nkeys, nch);
    const int nchunks = (nkeys + CH - 1) / CH;
    const int k0 = c * CH, k1 = min(nkeys, k0 + CH);
    if (k0 >= k1) return;
    const int G = H / KVH, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const float scale = rsqrtf((float)hd);

    /* this lane's slice of each query head, pre-scaled */
    float q[GMAX][J][4];
    const float *qrow = qkv + ((size_t)b * T + t) * (size_t)(H + 2 * KVH) * hd;
#pragma unroll
    for (int g = 0; g < GMAX; g++)
#pragma unroll
        for (int j = 0; j < J; j++) {
            int d = lane * 4 + 128 * j;
            if (g < G && d < hd) {
                load4(qrow + (kvh * G + g) * hd + d, q[g][j]);
#pragma unroll
                for (int e = 0; e < 4; e++) q[g][j][e] *= scale;
            } else {
#pragma unroll
                for (int e = 0; e < 4; e++) q[g][j][e] = 0.0f;
            }
        }

    float m[GMAX], l[GMAX], acc[GMAX][J][4];
#pragma unroll
    for (int g = 0; g < GMAX; g++) {
        m[g] = -INFINITY, l[g] = 0.0f;
#pragma unroll
        for (int j = 0; j < J; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[g][j][e] = 0.0f;
    }

    const size_t head_off = ((size_t)b * KVH + kvh) * max_seq;
    for (int kb = k0 + warp * KU; kb < k1; kb += NW * KU) {
        float kv[KU][J][4], vv[KU][J][4];
#pragma unroll
        for (int u = 0; u < KU; u++)
#pragma unroll
            for (int j = 0; j < J; j++) {
                int d = lane * 4 + 128 * j, key = kb + u;
                if (key < k1 && d < hd) {
                    load4(kc + (head_off + key) * hd + d, kv[u][j]);
                    load4(vc + (head_off + key) * hd + d, vv[u][j]);
                } else {
#pragma unroll
                    for (int e = 0; e < 4; e++) kv[u][j][e] = 0.0f, vv[u][j][e] = 0.0f;
                }
            }
#pragma unroll
        for (int g = 0; g < GMAX; g++) {
            if (g >= G) break;
            float s[KU];
#pragma unroll
            for (int u = 0; u < KU; u++) {
                float d = 0.0f;
#pragma unroll
                for (int j = 0; j < J; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) d += q[g][j][e] * kv[u][j][e];
                s[u] = d;
            }
#pragma unroll
            for (int u = 0; u < KU; u++) s[u] = warp_sum(s[u]);
            float mn = m[g];
#pragma unroll
            for (int u = 0; u < KU; u++)
                if (kb + u < k1) mn = fmaxf(mn, s[u]);
            float corr = __expf(m[g] - mn); /* m = -inf the first time: exp(-inf) = 0 */
            l[g] *= corr;
#pragma unroll
            for (int j = 0; j < J; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[g][j][e] *= corr;
#pragma unroll
            for (int u = 0; u < KU; u++) {
                float p = kb + u < k1 ? __expf(s[u] - mn) : 0.0f;
                l[g] += p;
#pragma unroll
                for (int j = 0; j < J; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) acc[g][j][e] += p * vv[u][j][e];
            }
            m[g] = mn;
        }
    }

    /* merge the warps: shared [NW][G] (m, l) and [NW][G][hd] acc */
    extern __shared__ float sh[];
    float *sm = sh, *sl = sh + NW * GMAX, *sacc = sh + 2 * NW * GMAX;
#pragma unroll
    for (int g = 0; g < GMAX; g++) {
        if (g >= G) break;
        if (lane == 0) sm[warp * GMAX + g] = m[g], sl[warp * GMAX + g] = l[g];
#pragma unroll
        for (int j = 0; j < J; j++) {
            int d = lane * 4 + 128 * j;
            if (d < hd)
#pragma unroll
                for (int e = 0; e < 4; e++) sacc[((size_t)warp * GMAX + g) * hd + d + e] = acc[g][j][e];
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * hd; i += blockDim.x) {
        int g = i / hd, d = i % hd;
        float M = -INFINITY;
        for (int w = 0; w < NW; w++) M = fmaxf(M, sm[w * GMAX + g]);
        float L = 0.0f, A = 0.0f;
        for (int w = 0; w < NW; w++) {
            float mw = sm[w * GMAX + g];
            float f = mw == -INFINITY ? 0.0f : __expf(mw - M);
            L += sl[w * GMAX + g] * f;
            A += sacc[((size_t)w * GMAX + g) * hd + d] * f;
        }
        int h = kvh * G + g;
        if (nchunks == 1) {
            out[((size_t)b * T + t) * H * hd + (size_t)h * hd + d] = A / L;
        } else {
            float *wp = work + ((((size_t)b * H + h) * T + t) * nch + c) * (hd + 2);
            if (d == 0) wp[0] = M, wp[1] = L;
            wp[2 + d] = A;
        }
    }
    if (nchunks == 1) return;

    /* the last block of this (b, kvh, t) to arrive merges the chunks */
    __shared__ int last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        int *cnt = counters + ((size_t)b * KVH + kvh) * T + t;
        last = atomicAdd(cnt, 1) == nchunks - 1;
        if (last) *cnt = 0; /* every chunk has arrived: ready for the next launch */
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int i = threadIdx.x; i < G * hd; i += blockDim.x) {
        const int g = i / hd, d = i % hd, h = kvh * G + g;
        const float *wp = work + (((size_t)b * H + h) * T + t) * nch * (hd + 2);
        float M = -INFINITY;
        for (int cc = 0; cc < nchunks; cc++) M = fmaxf(M, __ldcg(wp + (size_t)cc * (hd + 2)));
        float L = 0.0f, A = 0.0f;
        for (int cc = 0; cc < nchunks; cc++) {
            const float *p = wp + (size_t)cc * (hd + 2);
            float f = __expf(__ldcg(p) - M);
            L += __ldcg(p + 1) * f;
            A += __ldcg(p + 2 + d) * f;
        }
        out[((size_t)b * T + t) * H * hd + (size_t)h * hd + d] = A / L;
    }
}

template <typename CT, int J>
int launch(const hmc_attn_args *a, int nch, cudaStream_t s)
{
    dim3 grid(nch * a->T, a->KVH, a->B);
    size_t smem = (size_t)(2 * NW * GMAX + NW * GMAX * a->hd) * sizeof(float);
    static size_t smem_set = 48 * 1024;
    if (smem > smem_set) {
        CK(cudaFuncSetAttribute(attn_chunk_kernel<CT, J>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        smem_set = smem;
    }
    int *counters = reinterpret_cast<int *>(a->work + (size_t)a->B * a->T * a->H * nch * (a->hd + 2));
    return launch_pdl(attn_chunk_kernel<CT, J>, grid, dim3(NW * 32), smem, s, a->qkv, a->T, a->H, a->KVH, a->hd,
                      a->pos_dev, a->pos_add, (const CT *)a->k_cache, (const CT *)a->v_cache, a->max_seq, nch, a->work,
                      counters, a->out);
}

template <typename CT>
int launch_j(const hmc_attn_args *a, int nch, cudaStream_t s)
{
    if (a->hd <= 128) return launch<CT, 1>(a, nch, s);
    if (a->hd <= 256) return launch<CT, 2>(a, nch, s);
    return launch<CT, 3>(a, nch, s);
}

} // namespace

extern "C" size_t hmc_attention_work_bytes(int B, int T, int H, int KVH, int hd, int max_keys)
{
    size_t nch = (size_t)chunks_for(B, T, KVH, max_keys);
    return (size_t)B * T * H * nch * (hd + 2) * sizeof(float) + (size_t)B * T * KVH * sizeof(int);
}

extern "C" int hmc_attention(const hmc_attn_args *a, cudaStream_t s)
{
    if (a->hd % 4 || a->hd > 384)
        return hm_err("%s:%d: attention: head_dim %d must be a multiple of 4, at most 384", __FILE__, __LINE__, a->hd);
    if (a->KVH <= 0 || a->H % a->KVH || a->H / a->KVH > GMAX)
        return hm_err("%s:%d: attention: %d heads over %d kv heads (at most %d per kv head)", __FILE__, __LINE__,
                      a->H, a->KVH, GMAX);
    if (a->max_keys > a->max_seq) return hm_err("%s:%d: attention: max_keys > max_seq", __FILE__, __LINE__);
    if (a->B * a->T <= 0) return HM_OK;
    int nch = chunks_for(a->B, a->T, a->KVH, a->max_keys);
    if (a->ct == HMC_BF16) CKH(launch_j<__nv_bfloat16>(a, nch, s));
    else if (a->ct == HMC_F32) CKH(launch_j<float>(a, nch, s));
    else return hm_err("%s:%d: attention: bad cache dtype", __FILE__, __LINE__);
    return HM_OK;
}
