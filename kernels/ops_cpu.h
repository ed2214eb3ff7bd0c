/* ops_cpu.h - CPU reference ops (the executable specification the CUDA kernels are checked
 * against).  All fp32, row-major.  Linear weights are [out, in] (y = x Wᵀ), as in the checkpoints.
 * Each op's CUDA twin lives beside it as kernels/<op>.cu. */
#ifndef HM_OPS_CPU_H
#define HM_OPS_CPU_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* y[M,N] = x[M,K] · W[N,K]ᵀ (+ bias[N] when non-NULL).  OpenBLAS sgemm. */
void cpu_linear(const float *x, const float *W, const float *bias, float *y, int M, int K, int N);
/* y = x * rsqrt(mean(x²) + eps) * scale  (scale NULL: no affine).  In-place allowed. */
void cpu_rmsnorm(const float *x, const float *scale, float *y, int M, int D, float eps);
/* LayerNorm without affine (mean/variance over D, biased variance).  In-place allowed. */
void cpu_layernorm(const float *x, float *y, int M, int D, float eps);
/* g[i] = silu(g[i]) * u[i] */
void cpu_silu_mul(float *g, const float *u, size_t n);

/* RoPE frequency table, hd/2 entries: f_i = base^(-2i/hd) in fp32 as torch computes it; with
 * scale > 0 the Llama-3.1 scaling of MODEL.md §2 (low 1, high 4, old context 8192) is applied. */
void cpu_rope_freqs(float *freqs, int hd, float base, float llama3_scale);
/* Interleaved RoPE in place on x [T, H, hd] (row stride H*hd): pairs (2i, 2i+1) of row t are
 * rotated by angle pos0+t times freqs[i] (angle and cos/sin in fp32). */
void cpu_rope_interleaved(float *x, int T, int H, int hd, int pos0, const float *freqs);

/* Scaled dot-product attention, softmax in fp32.
 *   q [T, H, hd]            query rows (row stride H*hd)
 *   k, v [S, KVH, hd]       keys/values (row stride KVH*hd), GQA: head h uses kv head h/(H/KVH)
 *   out [T, H, hd]
 * causal: query t (absolute position q_pos0 + t) sees keys 0 .. q_pos0 + t; else all S keys. */
void cpu_attention(const float *q, const float *k, const float *v, float *out, int T, int S, int H,
                   int KVH, int hd, int causal, int q_pos0);

#ifdef __cplusplus
}
#endif

#endif
