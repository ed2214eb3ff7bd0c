/* lm.c - in-process generation loop: backbone + depth decoder + sampler (see lm.h). */
#include "lm.h"

#include <stdlib.h>

#include "hm.h"

void lm_params_init(lm_params *p, const hm_gen_config *gen)
{
    *p = (lm_params){.seed = 0, .stream = 0, .temperature = 1.0f, .topk = 50, .cfg_scale = 1.5f,
                     .max_frames = 1 + 120000 / 80, .audio_eos_id = gen->audio_eos_id};
}

int lm_is_eos(const int32_t *codes, int ncb, int audio_eos_id)
{
    for (int k = 0; k < ncb; k++)
        if (codes[k] >= audio_eos_id) return 1;
    return 0;
}

int lm_generate(const bb_model *bb, dv_model *dv, const int32_t *rows, const uint8_t *mask, int S,
                int muq_index, const float *muq, const lm_params *p, lm_frame_cb cb, void *user,
                int32_t *frames_out, int *nframes_out, float *logits_out)
{
    const hm_lm_config *c = bb_config(bb);
    const int ncb = c->audio_num_codebooks, Va = c->audio_vocab_size, D = c->backbone.embed_dim;
    const int B = p->cfg_scale > 1.0f ? 2 : 1;
    *nframes_out = 0;
    if (p->max_frames < 1) return hm_err("lm: max_frames %d (need at least 1)", p->max_frames);
    if (S <= 0) return hm_err("lm: empty prompt");
    const hm_lm_config *dc = dv_config(dv);
    if (dc->audio_num_codebooks != ncb || dc->audio_vocab_size != Va || dc->backbone.embed_dim != D)
        return hm_err("lm: backbone (%s) and draft-verifier (%s) come from different models",
                      c->dir, dc->dir);
    if ((int64_t)S + p->max_frames - 1 > c->backbone.max_seq_len)
        return hm_err("lm: prompt of %d positions + %d frames exceeds the backbone's max_seq_len "
                      "%d (shorten the lyrics or the duration)",
                      S, p->max_frames, c->backbone.max_seq_len);
    bb_seq *seq = NULL;
    if (bb_seq_new(bb, B, &seq) != HM_OK) return HM_ERR;
    float *h = hm_malloc(sizeof(float) * (size_t)B * D);
    const dv_sample_params sp = {p->temperature, p->topk, p->cfg_scale};
    dv_rng rng = {p->seed, p->stream, 0};
    int rc = HM_ERR, n = 0;

    if (bb_prefill(bb, seq, rows, mask, S, muq_index, muq, h) != HM_OK) goto out;
    for (int f = 0; f < p->max_frames; f++) {
        if (f > 0 && bb_extend(bb, seq, frames_out + (size_t)(f - 1) * ncb, 1, h) != HM_OK)
            goto out;
        int32_t *codes = frames_out + (size_t)f * ncb;
        rng.frame = (uint64_t)f;
        if (dv_frame(dv, h, B, &sp, &rng, codes,
                     logits_out ? logits_out + (size_t)f * ncb * Va : NULL) != HM_OK)
            goto out;
        if (f > 0 && lm_is_eos(codes, ncb, p->audio_eos_id)) break;
        n = f + 1;
        if (cb) cb(user, f, codes);
    }
    rc = HM_OK;
out:
    *nframes_out = n;
    free(h);
    bb_seq_free(seq);
    return rc;
}
