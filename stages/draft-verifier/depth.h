/* depth.h - draft-verifier's model half (MODEL.md §2 "One frame", steps 2-3): codebook-0 head,
 * projection, the depth decoder (fresh KV cache per frame), audio heads; turns the backbone's
 * last hidden state h into one frame of ncb codes.  CPU, fp32. */
#ifndef HM_DV_DEPTH_H
#define HM_DV_DEPTH_H

#include <stdint.h>

#include "modelcfg.h"
#include "sampler.h"

typedef struct dv_model dv_model;

/* Load codebook0_head, projection, decoder layers + norm, audio_head and audio_embeddings from
 * MODEL_DIR/HeartMuLa-oss-<version> (NULL: the only one).  Missing tensors are listed by name.
 * *out owned by the caller (dv_free).  The model holds the per-frame scratch, so one dv_model
 * computes one frame at a time (not thread-safe). */
int dv_load(const char *model_dir, const char *version, dv_model **out);
void dv_free(dv_model *m);
const hm_lm_config *dv_config(const dv_model *m);

/* One frame from h [B, D] (B = 2: row 0 conditional, row 1 unconditional, combined with
 * p->cfg_scale; B = 1: no guidance).  Draws use rng->frame.  codes_out [ncb].  logits_out
 * (NULL allowed) [ncb, Va]: the (combined) logits handed to the sampler for each codebook.
 * Never allocates.  Errors: B not 1 or 2. */
int dv_frame(dv_model *m, const float *h, int B, const dv_sample_params *p, const dv_rng *rng,
             int32_t *codes_out, float *logits_out);

#endif
