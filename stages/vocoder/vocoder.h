/* vocoder.h - HeartCodec scalar-model decoder on the CPU (MODEL.md §3): latents [2, 128, n]
 * (left/right channel as two batch rows) -> 48 kHz PCM [2, n * hop], hop = 1920 for the release.
 * Weight norm is folded at load.  A loaded voc_model is read-only during voc_decode (scratch is
 * per call), so one model may serve several threads. */
#ifndef HM_VOCODER_H
#define HM_VOCODER_H

#include <stddef.h>

#include "modelcfg.h"

typedef struct voc_model voc_model;

/* Load the decoder half of MODEL_DIR/HeartCodec-oss.  Accepts weight-norm pairs named
 * `…parametrizations.weight.original0/1` or `…weight_g/weight_v`, or a plain `…weight`.
 * Errors name the missing tensor.  *out owned by the caller (voc_free). */
int voc_load(const char *model_dir, voc_model **out);
void voc_free(voc_model *m);
const hm_codec_config *voc_config(const voc_model *m);
/* Output samples per latent frame: prod(upsample_factors) * num_samples (1920). */
int voc_hop(const voc_model *m);

/* Decode rows independent batch rows: latent [rows, latent_hidden_dim, n] -> pcm [rows, n*hop].
 * voc_decode is the reference's 2-row (stereo) call. */
int voc_decode_rows(const voc_model *m, const float *latent, int rows, int n, float *pcm);
int voc_decode(const voc_model *m, const float *latent, int n, float *pcm);

/* One codec window: time-major latents lat [n, 2*latent_hidden_dim] (first half of every frame
 * -> left, second -> right) -> pcm [2, n_keep] (the first n_keep <= n*hop samples of each
 * channel; the reference keeps 1428480 of 744 frames). */
int voc_decode_window(const voc_model *m, const float *lat, int n, size_t n_keep, float *pcm);

#endif
