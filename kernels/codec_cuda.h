/* codec_cuda.h - HeartCodec flow matching on the GPU (MODEL.md §3): the DiT velocity estimator
 * and the per-window Euler + CFG solver.  CPU twin: stages/flow-matching/fm.{h,c} (fm_estimator,
 * fm_solve_window), checked against it by tests/gpu_codec.c.
 *
 * Precision: weights bf16 (HMC_BF16) or fp32 (HMC_F32, the exactness mode); norms, tables, biases
 * and RoPE frequencies always fp32.  The residual streams and every op's output are fp32; only
 * the inputs of the GEMMs (and the attention output that feeds o_proj) are stored in the weight
 * dtype, so in bf16 mode each GEMM reads bf16 x bf16 with fp32 accumulation (cuBLASLt).
 * RoPE angles, norms, softmax statistics and the Euler update are fp32.  Attention (fmc_set_attention):
 * by default the flash kernel on bf16 tensor cores with bf16 weights (q, k, v and P rounded to
 * bf16, fp32 accumulation) and cuBLASLt fp32 GEMMs with fp32 weights.
 *
 * A model owns its device weights and one scratch workspace (grown on demand): calls on one
 * model must come from one thread and, when they use different streams, must not overlap.
 * Every entry only enqueues work on `stream` (except where noted) and returns HM_OK, or HM_ERR
 * with "file:line: ..." via hm_errmsg().  Pointers named *_dev are device pointers. */
#ifndef HM_CODEC_CUDA_H
#define HM_CODEC_CUDA_H

#include <cuda_runtime.h>
#include <stdint.h>

#include "modelcfg.h"
#include "ops_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FMC_MAX_STEPS 1000 /* flow-matching steps a solve accepts (pipeline.yaml's bound too) */

typedef struct fmc_model fmc_model;

/* Load MODEL_DIR/HeartCodec-oss's estimator (config sizes from hm_codec_config_load; any float
 * dtype in the file) into device buffers of `weights_dtype` (HMC_BF16 or HMC_F32).  Synchronous.
 * A missing tensor or a wrong shape is an error naming it.  *out owned by the caller (fmc_free). */
int fmc_load(const char *model_dir, int weights_dtype, fmc_model **out);
/* A model of cfg's sizes with seeded random weights generated on the device (benchmarks). */
int fmc_init_random(const hm_codec_config *cfg, int weights_dtype, uint64_t seed, fmc_model **out);
/* Synchronises the device, then frees everything. */
void fmc_free(fmc_model *m);
const hm_codec_config *fmc_config(const fmc_model *m);

/* One estimator call: x_dev [B, T, in_channels], t_dev [B] flow times -> out_dev [B, T, out_channels].
 * out_dev must not alias x_dev (the input is re-read for connection_proj). */
int fmc_estimator(fmc_model *m, const float *x_dev, const float *t_dev, int B, int T, float *out_dev,
                  cudaStream_t stream);

/* fm_solve on the device: cond_dev [T, dim], ctx_dev [T, C] (rows < L read), noise_dev [T, C]
 * -> latents_dev [T, C] (C = out_channels).  Same time grid, in-context blend, CFG batch
 * (row 0 unconditional, row 1 conditional, guidance > 1) and final in-context copy as fm.c.
 * latents_dev must not alias noise_dev or ctx_dev. */
int fmc_solve(fmc_model *m, int T, const float *cond_dev, const float *ctx_dev, int L, const float *noise_dev,
              int steps, float guidance, float *latents_dev, cudaStream_t stream);
/* Graphs on (default off): fmc_solve runs eagerly at the first call of a given (T, L, steps,
 * guidance, pointers, stream), captures the whole solve as one CUDA graph at the second such call
 * and replays it from then on (4 keys kept, least recently used dropped); on the legacy default
 * stream (0) it always runs eagerly.  Every fmc_solve waits (host) for its small time-table
 * upload before enqueueing. */
void fmc_set_graphs(fmc_model *m, int on);
/* Attention paths.  FMC_ATT_AUTO (the default): FLASH with bf16 weights, GEMM with fp32.
 * TILED: the fp32 CUDA-core kernel (fmc_attention).  GEMM: strided-batched cuBLASLt GEMMs
 * (S = QKᵀ, fp32 row softmax, P·V with P in the weight dtype; B*H*T*T scores of scratch: 106 MB
 * fp32 + P at the release's sizes).  FLASH (bf16 weights only): RoPE writes a bf16 q|k|v copy
 * (fmc_rope_qk_bf16), then fmc_flash_attention.  Synchronises the device when the mode changes;
 * HM_ERR for an unknown mode or FLASH with fp32 weights. */
enum { FMC_ATT_AUTO = 0, FMC_ATT_TILED = 1, FMC_ATT_GEMM = 2, FMC_ATT_FLASH = 3 };
int fmc_set_attention(fmc_model *m, int mode);
int fmc_attention_mode(const fmc_model *m); /* the path calls take now (AUTO resolved) */
/* Fused residual-add + norm kernels (default on); off: the separate fmc_gated_add and
 * fmc_norm_modulate passes (before/after timing).  Drops captured graphs when it changes. */
void fmc_set_fusion(fmc_model *m, int on);
/* Workspace buffers whose lives do not overlap share one scratch (default on: the attention's qkv
 * and bf16 q|k|v, the MLP's gate|up, the ProjectLayer's im2col and conv output; ~100 MB less at
 * the release's sizes); off: each its own (A/B memory).  Reallocated at the next call. */
void fmc_set_scratch_sharing(fmc_model *m, int on);
/* Device bytes of the weights (every buffer fmc_weight_get lists) and of the workspace as last
 * sized (activations, scratch, the GEMM attention's handle workspace when made). */
size_t fmc_weight_bytes(const fmc_model *m);
size_t fmc_workspace_bytes(const fmc_model *m);
/* Older switch: on = FMC_ATT_GEMM, off = FMC_ATT_TILED. */
int fmc_set_attention_gemm(fmc_model *m, int on);
/* Stage config "precision" -> weights dtype: "" or "bf16" -> HMC_BF16, "fp32" -> HMC_F32, else HM_ERR. */
int fmc_precision(const char *precision, int *weights_dtype);
/* The model's device buffers in allocation order (weights, tables, RoPE frequencies) as fp32
 * host copies (*host owned by the caller; bf16 widened exactly).  Two models built from the same
 * config and seed by fmc_init_random list the same buffers in the same order (quality checks). */
int fmc_weight_count(const fmc_model *m);
int fmc_weight_get(const fmc_model *m, int i, float **host, size_t *n);
/* adaLN tables (default on): fmc_solve computes the timestep conditioning of its t grid once per
 * (steps, batch rows) into a device table (~2.6 MB for 10 steps with CFG at the release's sizes;
 * FMC_ADA_TABLES kept, the least recently used dropped together with the captured graphs) and its
 * estimator calls read it; the same kernels on the same inputs, so the latents are those of the
 * per-call adaLN.  Off: every estimator call computes its own (A/B; not while the adaLN weights are
 * on the host, fmc_set_adaln_host).  Drops captured graphs. */
void fmc_set_adaln_tables(fmc_model *m, int on);
/* adaLN weights in host memory (on) or on the device (off, the default).  On frees their device
 * copies (85 M weights, 162 MiB in bf16 at the release's sizes); a new table then uploads them for
 * its build and frees them again, and so does a direct fmc_estimator call (slow: for tests).
 * fmc_weight_get still lists them.  Synchronous. */
int fmc_set_adaln_host(fmc_model *m, int on);
size_t fmc_adaln_table_bytes(const fmc_model *m);
/* Size the workspace and build the adaLN table a solve of (T, steps, guidance) needs, with a solve
 * over zeros (output discarded), so that the first request's window pays neither.  Synchronous. */
int fmc_prepare(fmc_model *m, int T, int steps, float guidance, cudaStream_t stream);

/* fmc_solve over one window of CODEC_WIN_FRAMES (744) frames. */
int fmc_solve_window(fmc_model *m, const float *cond_dev, const float *ctx_dev, int L, const float *noise_dev,
                     int steps, float guidance, float *latents_dev, cudaStream_t stream);

/* Multiply-add FLOPs of one estimator call (GEMMs + attention, 2 per MAC; the small adaLN
 * GEMMs included), for the tensor-core floor. */
double fmc_estimator_flops(const hm_codec_config *cfg, int B, int T);

/* ---- the estimator's own kernels (exposed for tests/gpu_codec.c's op checks) ----------------- */

/* k=3, pad 1 time-major im2col over the concatenation [a | b] of two row sources:
 * col[(bt*T + t), j*(ca+cb) + c] = [a|b](bt, t + j - 1, c), zero outside [0, T).  b may be NULL
 * (cb 0).  col of type ct.  A conv1d k3 is then one GEMM with weight [cout, 3*(ca+cb)]. */
int fmc_im2col3(const float *a, int ca, const float *b, int cb, int B, int T, void *col, hmc_dtype ct,
                cudaStream_t stream);
/* v = (y[m, n] + bias[n]) * scale (bias may be NULL); y = v if store_y; conv[m, n] (type ct) =
 * silu(v) if act_silu else v, when conv is non-NULL. */
int fmc_bias_act(float *y, const float *bias, int M, int N, float scale, int store_y, int act_silu, void *conv,
                 hmc_dtype ct, cudaStream_t stream);
/* y[b*T + t, :] = N(x row) * (1 + (tab_scale + cond_scale[b*cs])) + (tab_shift + cond_shift[b*cs]),
 * N = RMSNorm(·)·norm_w when norm_w is non-NULL, else LayerNorm without affine; eps given.
 * y of type yt; y may be x (fp32). */
int fmc_norm_modulate(const float *x, const float *norm_w, float eps, const float *tab_shift, const float *tab_scale,
                      const float *cond_shift, const float *cond_scale, int cs, int B, int T, int D, void *y,
                      hmc_dtype yt, cudaStream_t stream);
/* x[b*T + t, :] += (tab_gate + cond_gate[b*cs]) * h[b*T + t, :]. */
int fmc_gated_add(float *x, const float *h, const float *tab_gate, const float *cond_gate, int cs, int B, int T, int D,
                  cudaStream_t stream);
/* fmc_gated_add, then fmc_norm_modulate of the updated x: x[b*T + t, :] += (tab_gate +
 * cond_gate[b*gcs]) * h[b*T + t, :] is written back, and y = N(x) * (1 + (tab_scale +
 * cond_scale[b*cs])) + (tab_shift + cond_shift[b*cs]) as fmc_norm_modulate.  y may be x (fp32). */
int fmc_add_norm_modulate(float *x, const float *h, const float *tab_gate, const float *cond_gate, int gcs,
                          const float *norm_w, float eps, const float *tab_shift, const float *tab_scale,
                          const float *cond_shift, const float *cond_scale, int cs, int B, int T, int D, void *y,
                          hmc_dtype yt, cudaStream_t stream);
/* Interleaved RoPE in place on the q and k parts of qkv rows [B*T, 3*H*hd] (q | k | v); frame t of
 * each batch row is position t; angles t * freqs[i] and cos/sin in fp32. */
int fmc_rope_qk(float *qkv, int B, int T, int H, int hd, const float *freqs, cudaStream_t stream);
/* Full bidirectional attention of qkv rows [B*T, 3*H*hd] (q | k | v) -> out [B*T, H*hd] of type
 * ot; softmax(q k^T / sqrt(hd)) v with fp32 scores and online softmax.  hd in {16, 32, 64, 128}. */
int fmc_attention(const float *qkv, int B, int T, int H, int hd, void *out, hmc_dtype ot, cudaStream_t stream);
/* fmc_rope_qk's rotation, written with v as a bf16 copy out_bf16 [B*T, 3*H*hd] (qkv unchanged). */
int fmc_rope_qk_bf16(const float *qkv, int B, int T, int H, int hd, const float *freqs, void *out_bf16,
                     cudaStream_t stream);
/* Flash attention on tensor cores: bf16 qkv rows [B*T, 3*H*hd] (q | k | v, RoPE applied) -> out
 * [B*T, H*hd] of type ot; full bidirectional softmax(q kᵀ / sqrt(hd)) v with bf16 products, fp32
 * accumulation and online softmax; P rounded to bf16 for P·V.  hd in {16, 32, 64, 128}. */
int fmc_flash_attention(const void *qkv_bf16, int B, int T, int H, int hd, void *out, hmc_dtype ot,
                        cudaStream_t stream);
/* out[b, :] = cpu_timestep_features(t_dev[b], n) for b < B (n even). */
int fmc_timestep_features(const float *t_dev, int B, int n, float *out, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif
