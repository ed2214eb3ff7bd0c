/* vocoder.h - HeartCodec scalar-model decoder on the CPU (MODEL.md §3): latents [2, 128, n]
 * (left/right channel as two batch rows) -> 48 kHz PCM [2, n * hop], hop = 1920 for the release.
 * Weight norm is folded at load.  A loaded voc_model is read-only during voc_decode (scratch is
 * per call), so one model may serve several threads. */
#ifndef HM_VOCODER_H
#define HM_VOCODER_H

#include <stddef.h>
#include <stdint.h>

#include "modelcfg.h"

#ifdef __cplusplus
extern "C" {
#endif

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

/* A model of cfg's sizes (the scalar-model fields; causal, num_bands 1, kernels = 2 x factors)
 * with seeded uniform random weights, biases and PReLU slopes, scaled so activations stay O(1)
 * through the release's depth (benchmarks, GPU checks).  bf16_exact: every weight and bias is a
 * bf16 value, so a device copy in bf16 holds exactly the same model.  *out owned by the caller. */
int voc_init_random(const hm_codec_config *cfg, uint64_t seed, int bf16_exact, voc_model **out);

/* ---- the loaded layers, for device backends (kernels/vocoder_cuda.cu uploads them) ----------
 * Read-only outside vocoder.c.  Weight norm is already folded into every w. */
#define VOC_RES_UNITS 5
extern const int voc_dilations[VOC_RES_UNITS];

typedef struct {
    int cin, cout, k, dil, pad_l, pad_r;
    float *w; /* tap-major [k, cout, cin] */
    float *b;
} voc_conv;

typedef struct {
    int cin, cout, k, s;
    float *w; /* [cin, cout, k] as in the checkpoint, weight norm folded per input channel */
    float *b;
} voc_tconv;

typedef struct {
    voc_conv c1, c2;
    float a1, a2; /* PReLU slopes */
} voc_res;

typedef struct {
    voc_tconv up;
    voc_res res[VOC_RES_UNITS];
} voc_block;

struct voc_model {
    hm_codec_config cfg;
    voc_conv first;   /* latent_hidden_dim -> init_channel << n_up, k delay_kernel_size, not causal */
    int n_up;
    voc_block blk[8];
    int has_post;     /* num_samples > 1: repeat every sample post_rep times, conv, PReLU */
    int post_rep;
    voc_conv post;
    float post_a;
    voc_conv last;    /* -> num_bands (1) channel, causal */
    int hop;          /* output samples per latent frame */
};

#ifdef __cplusplus
}
#endif

#endif
