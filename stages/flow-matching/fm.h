/* fm.h - HeartCodec flow matching on the CPU (MODEL.md §3): codes -> conditioning (VQ codebook
 * sum, project_out, cond_feature_emb, nearest x2), the DiT velocity estimator, and the per-window
 * Euler solver with classifier-free guidance.  fp32 throughout.
 *
 * A loaded fm_model is read-only during inference: the functions below allocate their scratch
 * per call, so one model may serve several threads at once. */
#ifndef HM_FM_H
#define HM_FM_H

#include <stdint.h>

#include "codec_plan.h"
#include "modelcfg.h"

typedef struct fm_model fm_model;

/* Load MODEL_DIR/HeartCodec-oss (config.json + safetensors, any float dtype -> fp32).  Sizes come
 * from the config; a missing tensor or a shape that disagrees with it is an error naming it.
 * Tensors the codec never uses for decoding (VQ cluster_size/embed_avg/initted, project_in,
 * zero_cond_embedding1, the scalar model's encoder) are ignored.  *out owned by the caller. */
int fm_load(const char *model_dir, fm_model **out);
/* Load only what the conditioning needs (VQ codebooks, project_out, cond_feature_emb), for a
 * stage whose estimator runs elsewhere (backend cuda): fm_cond and fm_window_inputs work on it,
 * fm_estimator / fm_solve* / fm_window answer HM_ERR. */
int fm_load_cond(const char *model_dir, fm_model **out);
void fm_free(fm_model *m);
const hm_codec_config *fm_config(const fm_model *m);

/* One estimator call: x [B, T, in_channels] (latent, in-context latent, conditioning), t [B]
 * flow times -> out [B, T, out_channels]. */
int fm_estimator(const fm_model *m, const float *x, const float *t, int B, int T, float *out);

/* Conditioning for n codes: codes [ncb, n] (ncb = num_quantizers, each in [0, codebook_size))
 * -> cond [2n, dim] (every code's row twice).  HM_ERR naming the first bad code. */
int fm_cond(const fm_model *m, const int32_t *codes, int n, float *cond);

/* Solve one window of CODEC_WIN_FRAMES (744) latent frames.
 *   cond [744, dim], ctx [744, C] in-context latents (only rows < L are read), noise [744, C]
 *   start noise, C = out_channels -> latents_out [744, C] (rows < L equal ctx).
 * Euler over t = 0, 1/steps, ... as the reference accumulates it; guidance > 1 batches an
 * unconditional and a conditional estimator call and mixes v_u + g (v_c - v_u); guidance <= 1
 * makes one conditional call.  HM_ERR for steps < 1, NaN/negative/infinite guidance, or L
 * outside [0, 744].  latents_out must not alias noise or ctx (noise is re-read at every step). */
int fm_solve_window(const fm_model *m, const float *cond, const float *ctx, int L, const float *noise, int steps,
                    float guidance, float *latents_out);

/* One codec window k, as the reference's detokenize loop runs it: conditioning from the window's
 * codes win_codes [ncb, 372], in-context = the last 104 frames of the previous window's latents
 * prev [744, C] (NULL and ignored for k = 0), start noise = draw codec_noise_index_solver(k) of
 * `noise` -> out [744, C].  The masked draws (first latent, appended part) are not needed. */
int fm_window(const fm_model *m, const int32_t *win_codes, const float *prev, codec_noise *noise, int k, int steps,
              float guidance, float *out);

/* What fm_window feeds its solver: cond [744, dim] from the window's codes win_codes [ncb, 372],
 * the start noise [744, C] = draw codec_noise_index_solver(k) of `noise` (drawn after the
 * conditioning, as fm_window does), and *L = the in-context length (0 for k = 0, else
 * CODEC_CTX_FRAMES: the last rows of the previous window's latents go to rows [0, L)). */
int fm_window_inputs(const fm_model *m, const int32_t *win_codes, codec_noise *noise, int k, float *cond,
                     float *noise_out, int *L);

#define FM_MAX_STEPS 1000 /* flow-matching steps a solve accepts (the request and pipeline.yaml bound) */

/* The general form (any T frames) behind fm_solve_window. */
int fm_solve(const fm_model *m, int T, const float *cond, const float *ctx, int L, const float *noise, int steps,
             float guidance, float *latents_out);

#endif
