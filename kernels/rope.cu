/* rope.cu - interleaved rotary embedding (Llama-3.1 scaled frequencies, MODEL.md §2) of q and k,
 * and the append of k, v to the KV cache.  CPU twin: cpu_rope_interleaved (+ a plain copy).
 * The position comes from device memory so a captured graph can replay at a moving position. */
#include "common_cuda.h"
#include "ops_cuda.h"

namespace {

template <typename CT>
__global__ void rope_append_kernel(float *__restrict__ qkv, int T, int H, int KVH, int hd, const int *pos_dev,
                                   int pos_add, const float *__restrict__ freqs, CT *__restrict__ kc,
                                   CT *__restrict__ vc, int max_seq)
{
    pdl_trigger();
    pdl_wait();
    const int row = blockIdx.x; /* b*T + t */
    const int b = row / T, t = row % T;
    const int pos = (pos_dev ? *pos_dev : 0) + pos_add + t;
    const int half = hd / 2, width = (H + 2 * KVH) * hd;
    float *r = qkv + (size_t)row * width;
    /* pairs of q and k heads, then plain elements of v */
    const int npairs = (H + KVH) * half;
    for (int j = threadIdx.x; j < npairs + KVH * hd; j += blockDim.x) {
        if (j < npairs) {
            int h = j / half, i = j % half;
            float ang = (float)pos * freqs[i];
            float c, s;
            sincosf(ang, &s, &c);
            float *p = r + h * hd + 2 * i;
            float a = p[0], bb = p[1];
            float o0 = a * c - bb * s, o1 = bb * c + a * s;
            if (h < H) {
                p[0] = o0;
                p[1] = o1;
            } else {
                int kh = h - H;
                CT *dst = kc + (((size_t)b * KVH + kh) * max_seq + pos) * hd + 2 * i;
                hmc_st(dst, o0);
                hmc_st(dst + 1, o1);
            }
        } else {
            int e = j - npairs, kh = e / hd, d = e % hd;
            hmc_st(vc + (((size_t)b * KVH + kh) * max_seq + pos) * hd + d, r[(H + KVH) * hd + e]);
        }
    }
}

} // namespace

extern "C" int hmc_rope_append(const hmc_rope_args *a, cudaStream_t s)
{
    if (a->hd % 2) return hm_err("%s:%d: rope: odd head_dim %d", __FILE__, __LINE__, a->hd);
    if (a->B * a->T <= 0) return HM_OK;
    int n = (a->H + a->KVH) * a->hd / 2 + a->KVH * a->hd;
    int threads = n < 1024 ? ((n + 31) / 32) * 32 : 1024;
    if (a->ct == HMC_BF16)
        return launch_pdl(rope_append_kernel<__nv_bfloat16>, dim3(a->B * a->T), dim3(threads), 0, s, a->qkv, a->T, a->H,
                          a->KVH, a->hd, a->pos_dev, a->pos_add, a->freqs, (__nv_bfloat16 *)a->k_cache,
                          (__nv_bfloat16 *)a->v_cache, a->max_seq);
    if (a->ct == HMC_F32)
        return launch_pdl(rope_append_kernel<float>, dim3(a->B * a->T), dim3(threads), 0, s, a->qkv, a->T, a->H, a->KVH,
                          a->hd, a->pos_dev, a->pos_add, a->freqs, (float *)a->k_cache, (float *)a->v_cache,
                          a->max_seq);
    return hm_err("%s:%d: rope: bad cache dtype", __FILE__, __LINE__);
}
