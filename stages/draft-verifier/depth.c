/* depth.c - codebook-0 head + depth decoder on the CPU (see depth.h; MODEL.md §2). */
#include "depth.h"

#include <stdlib.h>
#include <string.h>

#include "hm.h"
#include "llama_block.h"
#include "ops_cpu.h"
#include "safetensors.h"

struct dv_model {
    hm_lm_config cfg;
    llama_stack st; /* the depth decoder */
    int D, Dd, Va, ncb;
    float *c0_head;   /* [Va, D] */
    float *proj;      /* [Dd, D] */
    float *heads;     /* [ncb-1, Va, Dd]: audio_head transposed at load so each is a Linear */
    /* Own copy of audio_embeddings [Va*ncb, D] (DESIGN.md lets either stage load it); the
     * decoder embeds c0 .. c6 with it. */
    float *audio_emb;
    /* per-frame scratch, B <= 2 */
    float *in;        /* [2, 2, D] decoder inputs before projection */
    float *x;         /* [2, 2, Dd] */
    float *dl;        /* [2, Dd] last normed decoder state */
    float *l;         /* [2, Va] */
    float *g;         /* [Va] */
    float *work;      /* [Va] */
    float *kc, *vc;   /* [L][2][ncb][KVH][hd] */
    llama_scratch ws;
};

const hm_lm_config *dv_config(const dv_model *m) { return &m->cfg; }

int dv_load(const char *model_dir, const char *version, dv_model **out)
{
    *out = NULL;
    dv_model *m = hm_calloc(1, sizeof *m);
    st_file *f = NULL;
    char **names = NULL;
    int nnames = 0;
    float *ah = NULL;
    if (hm_lm_config_load(model_dir, version, &m->cfg) != HM_OK) goto err;
    const hm_lm_config *c = &m->cfg;
    m->D = c->backbone.embed_dim;
    m->Dd = c->decoder.embed_dim;
    m->Va = c->audio_vocab_size;
    m->ncb = c->audio_num_codebooks;
    if (m->ncb < 2 || m->Va < 1 || m->D < 1 || m->Dd < 1) {
        hm_err("%s: bad sizes (codebooks %d, audio vocab %d)", c->dir, m->ncb, m->Va);
        goto err;
    }
    if (c->decoder.max_seq_len < m->ncb) {
        hm_err("%s: decoder max_seq_len %d < %d codebooks", c->dir, c->decoder.max_seq_len, m->ncb);
        goto err;
    }
    if (st_open(c->dir, &f) != HM_OK) goto err;
    nnames = llama_tensor_names("decoder.", c->decoder.num_layers, &names);
    static const char *const extra[] = {"codebook0_head.weight", "projection.weight", "audio_head",
                                        "audio_embeddings.weight"};
    names = hm_realloc(names, sizeof(char *) * (size_t)(nnames + (int)HM_ARRAY_LEN(extra)));
    for (size_t i = 0; i < HM_ARRAY_LEN(extra); i++) names[nnames++] = hm_strdup(extra[i]);
    if (st_require(f, (const char *const *)names, (size_t)nnames) != HM_OK) {
        hm_err_ctx("%s", c->dir);
        goto err;
    }
    const int64_t D = m->D, Dd = m->Dd, Va = m->Va, ncb = m->ncb;
    if (llama_load(f, "decoder.", &c->decoder, &m->st) != HM_OK ||
        !(m->c0_head = st_load_f32(f, "codebook0_head.weight", 2, (int64_t[]){Va, D})) ||
        !(m->proj = st_load_f32(f, "projection.weight", 2, (int64_t[]){Dd, D})) ||
        !(ah = st_load_f32(f, "audio_head", 3, (int64_t[]){ncb - 1, Dd, Va})) ||
        !(m->audio_emb = st_load_f32(f, "audio_embeddings.weight", 2, (int64_t[]){Va * ncb, D}))) {
        hm_err_ctx("%s", c->dir);
        goto err;
    }
    m->heads = hm_malloc(sizeof(float) * (size_t)((ncb - 1) * Va * Dd));
    for (int64_t i = 0; i < ncb - 1; i++)
        for (int64_t j = 0; j < Dd; j++)
            for (int64_t v = 0; v < Va; v++)
                m->heads[(i * Va + v) * Dd + j] = ah[(i * Dd + j) * Va + v];
    free(ah);
    ah = NULL;
    static const char *const other[] = {"backbone.", "text_embeddings.", "muq_linear.",
                                        "unconditional_text_embedding."};
    st_report_unused(f, other, HM_ARRAY_LEN(other));
    st_close(f);
    f = NULL;
    for (int i = 0; i < nnames; i++) free(names[i]);
    free(names);

    m->in = hm_malloc(sizeof(float) * 4 * (size_t)D);
    m->x = hm_malloc(sizeof(float) * 4 * (size_t)Dd);
    m->dl = hm_malloc(sizeof(float) * 2 * (size_t)Dd);
    m->l = hm_malloc(sizeof(float) * 2 * (size_t)Va);
    m->g = hm_malloc(sizeof(float) * (size_t)Va);
    m->work = hm_malloc(sizeof(float) * (size_t)Va);
    size_t nc = (size_t)m->st.L * 2 * ncb * m->st.KVH * m->st.hd;
    m->kc = hm_malloc(sizeof(float) * nc);
    m->vc = hm_malloc(sizeof(float) * nc);
    llama_scratch_reserve(&m->ws, &m->st, 4);
    *out = m;
    return HM_OK;
err:
    for (int i = 0; i < nnames; i++) free(names[i]);
    free(names);
    free(ah);
    if (f) st_close(f);
    dv_free(m);
    return HM_ERR;
}

void dv_free(dv_model *m)
{
    if (!m) return;
    llama_free(&m->st);
    llama_scratch_free(&m->ws);
    free(m->c0_head); free(m->proj); free(m->heads); free(m->audio_emb);
    free(m->in); free(m->x); free(m->dl); free(m->l); free(m->g); free(m->work);
    free(m->kc); free(m->vc);
    free(m);
}

/* Combine the rows' logits, keep them for the caller, draw codebook k. */
static int32_t decide(dv_model *m, int B, const dv_sample_params *p, const dv_rng *rng, int k,
                      float *logits_out)
{
    dv_cfg_combine(m->l, B, m->Va, p->cfg_scale, m->g);
    if (logits_out) memcpy(logits_out + (size_t)k * m->Va, m->g, sizeof(float) * m->Va);
    return dv_sample(m->g, m->Va, p, rng, k, m->work);
}

int dv_frame(dv_model *m, const float *h, int B, const dv_sample_params *p, const dv_rng *rng,
             int32_t *codes_out, float *logits_out)
{
    const int D = m->D, Dd = m->Dd, Va = m->Va, ncb = m->ncb;
    if (B != 1 && B != 2) return hm_err("draft-verifier: batch rows %d (1, or 2 with guidance)", B);

    cpu_linear(h, m->c0_head, NULL, m->l, B, D, Va);
    int32_t c = decide(m, B, p, rng, 0, logits_out);
    codes_out[0] = c;

    /* Positions 0, 1 of the fresh decoder sequence: projection(h), projection(emb(c0)); both
     * rows continue from the same c0. */
    for (int b = 0; b < B; b++) {
        memcpy(m->in + (size_t)(2 * b) * D, h + (size_t)b * D, sizeof(float) * D);
        memcpy(m->in + (size_t)(2 * b + 1) * D, m->audio_emb + (size_t)c * D, sizeof(float) * D);
    }
    cpu_linear(m->in, m->proj, NULL, m->x, 2 * B, D, Dd);
    llama_forward(&m->st, m->x, B, 2, 0, m->kc, m->vc, ncb, &m->ws);
    for (int i = 1; i < ncb; i++) {
        const int T = i == 1 ? 2 : 1;
        for (int b = 0; b < B; b++)
            llama_final_norm(&m->st, m->x + ((size_t)b * T + T - 1) * Dd, m->dl + (size_t)b * Dd, 1);
        cpu_linear(m->dl, m->heads + (size_t)(i - 1) * Va * Dd, NULL, m->l, B, Dd, Va);
        c = decide(m, B, p, rng, i, logits_out);
        codes_out[i] = c;
        if (i + 1 == ncb) break;
        /* Position i + 1: projection(emb(c_i of codebook i)). */
        const float *e = m->audio_emb + ((size_t)c + (size_t)i * Va) * D;
        for (int b = 0; b < B; b++) memcpy(m->in + (size_t)b * D, e, sizeof(float) * D);
        cpu_linear(m->in, m->proj, NULL, m->x, B, D, Dd);
        llama_forward(&m->st, m->x, B, 1, i + 1, m->kc, m->vc, ncb, &m->ws);
    }
    return HM_OK;
}
