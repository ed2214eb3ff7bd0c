/* lm.h - the whole autoregressive loop in one process (MODEL.md §2 "One frame" step 4): prompt
 * step, then one backbone extend + one depth-decoder frame per step, EOS and length policy.
 * Used by the tests and as the reference for the two-process split (backbone <-> draft-verifier),
 * which must produce the same frames for the same seed. */
#ifndef HM_DV_LM_H
#define HM_DV_LM_H

#include <stdint.h>

#include "../backbone/backbone.h"
#include "depth.h"
#include "modelcfg.h"

typedef struct {
    uint64_t seed;
    uint32_t stream;   /* RNG stream (see dv_rng); 0 normally */
    float temperature; /* default 1.0 */
    int topk;          /* default 50; 1 = argmax */
    float cfg_scale;   /* default 1.5; > 1 runs 2 rows (guidance), <= 1 one row */
    int max_frames;    /* at most this many frames in all: 1 + floor(max_ms / 80) */
    int audio_eos_id;  /* gen_config.json; a generated frame with any code >= it ends the song */
} lm_params;

/* Defaults of MODEL.md §2 / DESIGN.md: temperature 1, top-k 50, cfg 1.5, 120 s
 * (1 + 120000/80 frames), seed 0, audio_eos_id from gen_config.json. */
void lm_params_init(lm_params *p, const hm_gen_config *gen);

/* The stop rule for a generated (not the prompt's) frame: any code >= audio_eos_id. */
int lm_is_eos(const int32_t *codes, int ncb, int audio_eos_id);

/* Called once per kept frame, in order; codes [ncb] valid during the call only. */
typedef void (*lm_frame_cb)(void *user, int frame_index, const int32_t *codes);

/* Generate a song.  rows/mask [S, ncb+1] and muq_index/muq as bb_prefill.  frames_out
 * [max_frames, ncb] (frame-major: codes of frame f at frames_out[f*ncb ..]); *nframes_out the
 * number kept.  logits_out (NULL allowed) [max_frames * ncb, Va]: row f*ncb + k holds the
 * combined logits codebook k of frame f was drawn from.  The prompt frame is always kept; a later
 * frame with any code >= audio_eos_id is dropped and ends generation.  Errors: a prompt for
 * which S + max_frames - 1 positions (the last kept frame is never fed back) exceed the
 * backbone's max_seq_len, max_frames < 1, and whatever bb_prefill rejects. */
int lm_generate(const bb_model *bb, dv_model *dv, const int32_t *rows, const uint8_t *mask, int S,
                int muq_index, const float *muq, const lm_params *p, lm_frame_cb cb, void *user,
                int32_t *frames_out, int *nframes_out, float *logits_out);

#endif
