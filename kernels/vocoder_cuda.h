/* vocoder_cuda.h - the HeartCodec scalar-model decoder (vocoder, MODEL.md §3) on the GPU.
 * CPU twin: stages/vocoder/vocoder.{h,c} (voc_decode_window), checked against it by
 * tests/gpu_vocoder.c.
 *
 * Layout: activations are time-major [rows, C] with the two stereo rows stacked (row b*T + t),
 * so every conv is one im2col (k shifted copies side by side, zero where the causal / same
 * padding reads outside the row) plus one cuBLASLt GEMM with K = k*C, and a transposed conv is
 * one GEMM [Cin] -> [k*Cout] plus an overlap-add.  With bf16 weights the residual units of the
 * 64- and 128-channel blocks (the long, memory-bound ones) instead run as one tensor-core kernel
 * each (vcc_res_unit_fused: no im2col in memory).  The x2 repeat + post conv is folded at upload
 * into one conv over the un-repeated samples (4 taps, 2*C outputs), and the post PReLU is
 * applied inside the final 1-channel conv.  The residual stream and every GEMM output are fp32;
 * only GEMM inputs (im2col columns, the PReLU output feeding conv k1, the upsampling input) are
 * stored in the weight dtype, so in bf16 mode each GEMM is bf16 x bf16 with fp32 accumulation.
 * Input quantisation round_half_even(9x)/9, bias, PReLU, residual add and the final 1-channel
 * conv are fp32 (the final conv's 7*64 weights stay fp32 in both modes).
 *
 * Memory: the long, narrow blocks at the end (<= 256 channels: 2 x 1.43 M samples x 64 channels
 * at the release's sizes) and the post / final convs run in time tiles with a halo that covers
 * their causal reach (see vcc_set_tiling), so the workspace holds one tile of them plus the
 * whole-window stream of the wide blocks before (418 MiB instead of 2790 MiB for a 744-frame
 * window in bf16); every sample equals the whole-window computation's up to the GEMMs' row count
 * (bit for bit in bf16 at the release's sizes).
 * A model owns its device weights and one workspace (grown on demand, synchronously): calls on
 * one model must come from one thread and must not overlap.  vcc_decode_window only enqueues
 * work on its stream (no host sync) once the workspace fits n and the GEMM plans of its shapes
 * exist, i.e. after one eager call of the same n it can be captured in a CUDA graph.  Every
 * entry returns HM_OK, or HM_ERR with "file:line: ..." via hm_errmsg().  *_dev pointers are
 * device pointers. */
#ifndef HM_VOCODER_CUDA_H
#define HM_VOCODER_CUDA_H

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "modelcfg.h"
#include "ops_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

struct voc_model;
typedef struct vcc_model vcc_model;

/* Upload a CPU-loaded decoder (voc_load / voc_init_random: weight norm already folded) with
 * weights of `weights_dtype` (HMC_BF16 or HMC_F32).  Synchronous; host stays the caller's. */
int vcc_upload(const struct voc_model *host, hmc_dtype weights_dtype, vcc_model **out);
/* voc_load(model_dir) + vcc_upload + voc_free.  *out owned by the caller (vcc_free). */
int vcc_load(const char *model_dir, hmc_dtype weights_dtype, vcc_model **out);
/* voc_init_random(cfg, seed, bf16_exact = 1) + upload: the same model as that CPU one (benchmarks). */
int vcc_init_random(const hm_codec_config *cfg, hmc_dtype weights_dtype, uint64_t seed, vcc_model **out);
/* Synchronises the device, then frees everything. */
void vcc_free(vcc_model *m);
const hm_codec_config *vcc_config(const vcc_model *m);
int vcc_hop(const vcc_model *m);
hmc_dtype vcc_weights_dtype(const vcc_model *m);
/* "bf16" (or "" / NULL) -> HMC_BF16, "fp32" -> HMC_F32, else an error naming it. */
int vcc_precision(const char *precision, hmc_dtype *out);

/* Grow the workspace to n frames (synchronous; decode_window does it itself when needed). */
int vcc_reserve(vcc_model *m, int n);
/* One codec window: lat_dev [n, 2*latent_hidden_dim] time-major (first half of every frame ->
 * left, second -> right, as flow matching writes it) -> pcm_dev [2, n_keep] (the first n_keep
 * <= n*hop samples of each channel).  pcm_dev must not alias lat_dev. */
int vcc_decode_window(vcc_model *m, const float *lat_dev, int n, size_t n_keep, float *pcm_dev, cudaStream_t stream);

/* Time tiles (default on, tile_len 0: sized so a tile's activations stay within ~256 MiB).  Off:
 * every stage over the whole window (the layout before tiling: A/B checks).  tile_len > 0: tiles
 * of that many samples of the tiled part's input (checks of the seams on small windows).
 * The workspace is re-sized at the next call (synchronous). */
void vcc_set_tiling(vcc_model *m, int on, int tile_len);
/* One line on how a window of n frames is split (tiles, halo) into buf (after vcc_reserve(m, n)). */
int vcc_describe(const vcc_model *m, int n, char *buf, size_t cap);
/* Device bytes of the weights, and of the workspace as last reserved (activations, im2col). */
size_t vcc_weight_bytes(const vcc_model *m);
size_t vcc_workspace_bytes(const vcc_model *m);

/* Fused residual units (default on): with bf16 weights, blocks of 64 or 128 channels run each
 * residual unit as one tensor-core kernel (vcc_res_unit_fused) instead of im2col + GEMM + epilogue
 * + GEMM + epilogue.  Off: the unfused path everywhere (A/B checks and timing). */
void vcc_set_fused(vcc_model *m, int on);

/* Per-op timing (benchmarks): on = 1 records an event after every op of the next decodes (eager
 * only: not while capturing a graph); vcc_profile_table then prints a markdown table of ms per op
 * kind and stage of the last decode into buf (synchronises on its last event). */
int vcc_profile(vcc_model *m, int on);
int vcc_profile_table(vcc_model *m, char *buf, size_t cap);

/* Multiply-add FLOPs (2 per MAC) of one window of n frames, both rows: for the tensor-core floor. */
double vcc_flops(const hm_codec_config *cfg, int n);
/* Bytes a decoder must move at least for one window: every conv reads its input and writes its
 * output once (activations of `act_dtype`'s size) plus every weight once: the bandwidth floor. */
double vcc_min_bytes(const hm_codec_config *cfg, int n, hmc_dtype act_dtype);

/* ---- the decoder's own kernels (exposed for tests/gpu_vocoder.c's op checks) ----------------- */

/* x[(b*n + t)*H + h] = rint(9 lat[t*2H + b*H + h]) / 9 in fp32 (round half to even), b < 2. */
int vcc_quantize_split(const float *lat, int n, int H, float *x, cudaStream_t stream);
/* col[(b*To + t)*k*C + j*C + c] = x'[b, t + j*dil - pad_l, c] (type ct), To = T*rep, where x' is
 * x [B*T, C] with every sample repeated rep times and zeros outside [0, To).  A conv with left
 * padding pad_l and right padding dil*(k-1) - pad_l is then one GEMM with weight [cout, k*C]. */
int vcc_im2col(const float *x, int B, int T, int C, int k, int dil, int pad_l, int rep, void *col, hmc_dtype ct,
               cudaStream_t stream);
/* v = PReLU_a(h[m, c] + bias[c]) (a = 1: plain bias add); resid != NULL: resid[m, c] += v, else
 * y[m, c] = v (type yt; y may be h when yt is fp32). */
int vcc_bias_prelu(const float *h, const float *bias, float a, int M, int C, void *y, hmc_dtype yt, float *resid,
                   cudaStream_t stream);
/* One residual unit fused (bf16 weights W1 [C, k*C], W2 [C, C] as the model holds them; C 64 or 128;
 * shared memory (128 + (k-1)*dil) * (C+16) * 2 + C * (C+16) * 2 + 128 * (C+8) * 4 bytes <= 227 KiB): xout = xin + PReLU_a2(W2 · bf16(PReLU_a1(causal dilated conv(bf16(xin)) + b1)) + b2)
 * over x [B*T, C] time-major.  xout must not alias xin. */
int vcc_res_unit_fused(const float *xin, float *xout, int B, int T, int C, int k, int dil, const void *W1,
                       const float *b1, float a1, const void *W2, const float *b2, float a2, cudaStream_t stream);
/* Causal transposed conv (kernel 2s, stride s, the last s outputs dropped) from its GEMM
 * z [B*T, 2s*C] (column j*C + o = tap j, output channel o):
 * y[(b*T*s + p), o] = bias[o] + z[b*T + p/s, (p%s)*C + o] + z[b*T + p/s - 1, (p%s + s)*C + o]. */
int vcc_overlap_add(const float *z, const float *bias, int B, int T, int C, int s, float *y, cudaStream_t stream);
/* Causal conv C -> 1, kernel k, fp32: pcm[b*n_keep + t] = bias + Σ_j,c w[j*C + c] a[b*T + t - (k-1-j), c]
 * (zero before the row's start), t < n_keep <= T, where a = x, or PReLU_pre_a(x + pre_bias[c]) when
 * pre_bias is non-NULL (the post conv's epilogue fused in; needs (k*C + (128+k-1)(C+1))*4 <= 48 KiB). */
int vcc_conv_out1(const float *x, int B, int T, int C, int k, const float *w, float bias, const float *pre_bias,
                  float pre_a, size_t n_keep, float *pcm, cudaStream_t stream);

/* ---- the segment cross-fade (kernels/crossfade_cuda.cu; CPU twin kernels/crossfade.h) ------
 * Bit-identical to cpu_crossfade: out[i] = (float)(prev[i] * (1 - r_i) + next[i] * r_i) with
 * r_i = crossfade_ramp(i, n) (numpy linspace(0, 1, n) in float64), each float64 product and the
 * sum rounded separately.  Only enqueues one kernel on `stream` (graph-capturable); HM_OK, or
 * HM_ERR with "file:line: ..." for bad arguments or a failed launch.  n = 0 does nothing. */
/* out may be prev or next (in place), no other overlap. */
int hmc_crossfade(const float *prev, const float *next, size_t n, float *out, cudaStream_t stream);
/* `rows` fades at once (the stereo channels; rows <= 65535), row r of each buffer at
 * buf + r * ld_buf (strides in floats, each >= n when rows > 1).  out may be prev or next with
 * the same stride. */
int hmc_crossfade_rows(const float *prev, size_t ld_prev, const float *next, size_t ld_next, float *out,
                       size_t ld_out, size_t n, int rows, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif
