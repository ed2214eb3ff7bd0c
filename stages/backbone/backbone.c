/* backbone.c - HeartMuLa backbone on the CPU (see backbone.h; math: MODEL.md §2). */
#include "backbone.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hm.h"
#include "llama_block.h"
#include "ops_cpu.h"
#include "safetensors.h"

struct bb_model {
    hm_lm_config cfg;
    llama_stack st;
    int D, ncb, Va, Vt;
    float *text_emb;  /* [Vt, D] */
    float *audio_emb; /* [Va*ncb, D]: code c of codebook k is row c + k*Va */
    float *uncond;    /* [D] */
    float *muq_w;     /* [D, muq_dim] */
    float *muq_b;     /* [D] */
};

struct bb_seq {
    int B, pos, cap;
    float *kc, *vc; /* [L][B][cap][KVH][hd] */
    float *x;       /* [B, rows, D] embeddings / activations */
    int x_rows;
    llama_scratch ws;
};

const hm_lm_config *bb_config(const bb_model *m) { return &m->cfg; }

int bb_load(const char *model_dir, const char *lm_version, bb_model **out)
{
    *out = NULL;
    bb_model *m = hm_calloc(1, sizeof *m);
    st_file *f = NULL;
    char **names = NULL;
    int nnames = 0;
    if (hm_lm_config_load(model_dir, lm_version, &m->cfg) != HM_OK) goto err;
    const hm_lm_config *c = &m->cfg;
    m->D = c->backbone.embed_dim;
    m->ncb = c->audio_num_codebooks;
    m->Va = c->audio_vocab_size;
    m->Vt = c->text_vocab_size;
    if (m->ncb < 1 || m->Va < 1 || m->Vt < 1 || c->muq_dim < 1) {
        hm_err("%s: bad sizes (codebooks %d, audio vocab %d, text vocab %d, muq %d)", c->dir,
               m->ncb, m->Va, m->Vt, c->muq_dim);
        goto err;
    }
    if (st_open(c->dir, &f) != HM_OK) goto err;

    nnames = llama_tensor_names("backbone.", c->backbone.num_layers, &names);
    static const char *const extra[] = {"text_embeddings.weight", "audio_embeddings.weight",
                                        "unconditional_text_embedding.weight",
                                        "muq_linear.weight", "muq_linear.bias"};
    names = hm_realloc(names, sizeof(char *) * (size_t)(nnames + (int)HM_ARRAY_LEN(extra)));
    for (size_t i = 0; i < HM_ARRAY_LEN(extra); i++) names[nnames++] = hm_strdup(extra[i]);
    if (st_require(f, (const char *const *)names, (size_t)nnames) != HM_OK) {
        hm_err_ctx("%s", c->dir);
        goto err;
    }

    const int64_t D = m->D;
    if (llama_load(f, "backbone.", &c->backbone, &m->st) != HM_OK ||
        !(m->text_emb = st_load_f32(f, "text_embeddings.weight", 2, (int64_t[]){m->Vt, D})) ||
        !(m->audio_emb = st_load_f32(f, "audio_embeddings.weight", 2,
                                     (int64_t[]){(int64_t)m->Va * m->ncb, D})) ||
        !(m->uncond = st_load_f32(f, "unconditional_text_embedding.weight", 2,
                                  (int64_t[]){1, D})) ||
        !(m->muq_w = st_load_f32(f, "muq_linear.weight", 2, (int64_t[]){D, c->muq_dim})) ||
        !(m->muq_b = st_load_f32(f, "muq_linear.bias", 1, (int64_t[]){D}))) {
        hm_err_ctx("%s", c->dir);
        goto err;
    }
    /* The decoder side (draft-verifier) lives in the same file. */
    static const char *const other[] = {"decoder.", "codebook0_head.", "projection.", "audio_head"};
    st_report_unused(f, other, HM_ARRAY_LEN(other));
    for (int i = 0; i < nnames; i++) free(names[i]);
    free(names);
    st_close(f);
    *out = m;
    return HM_OK;
err:
    for (int i = 0; i < nnames; i++) free(names[i]);
    free(names);
    if (f) st_close(f);
    bb_free(m);
    return HM_ERR;
}

void bb_free(bb_model *m)
{
    if (!m) return;
    llama_free(&m->st);
    free(m->text_emb);
    free(m->audio_emb);
    free(m->uncond);
    free(m->muq_w);
    free(m->muq_b);
    free(m);
}

int bb_seq_new(const bb_model *m, int B, bb_seq **out)
{
    *out = NULL;
    if (B != 1 && B != 2) return hm_err("backbone: batch rows %d (1, or 2 with guidance)", B);
    bb_seq *s = hm_calloc(1, sizeof *s);
    s->B = B;
    s->cap = m->cfg.backbone.max_seq_len;
    size_t n = (size_t)m->st.L * B * s->cap * m->st.KVH * m->st.hd;
    /* malloc, not calloc: positions are written before they are read, and untouched pages of
     * a large cache stay unbacked. */
    s->kc = hm_malloc(sizeof(float) * n);
    s->vc = hm_malloc(sizeof(float) * n);
    *out = s;
    return HM_OK;
}

void bb_seq_free(bb_seq *s)
{
    if (!s) return;
    free(s->kc);
    free(s->vc);
    free(s->x);
    llama_scratch_free(&s->ws);
    free(s);
}

int bb_seq_pos(const bb_seq *s) { return s->pos; }
int bb_seq_rows(const bb_seq *s) { return s->B; }

int bb_rollback(bb_seq *s, int npos)
{
    if (npos < 0 || npos > s->pos)
        return hm_err("backbone: roll back to position %d, sequence holds %d", npos, s->pos);
    s->pos = npos;
    return HM_OK;
}

static void reserve_x(const bb_model *m, bb_seq *s, int T)
{
    if (T <= s->x_rows) return;
    free(s->x);
    s->x = hm_malloc(sizeof(float) * (size_t)s->B * T * m->D);
    s->x_rows = T;
}

static int check_room(const bb_model *m, const bb_seq *s, int T)
{
    if (T <= 0) return hm_err("backbone: %d new positions (need at least 1)", T);
    if (T > s->cap - s->pos)
        return hm_err("backbone: %d positions + %d new exceed max_seq_len %d of flavor '%s'",
                      s->pos, T, s->cap, m->cfg.backbone.name);
    return HM_OK;
}

static void add_row(float *dst, const float *src, int D)
{
    for (int i = 0; i < D; i++) dst[i] += src[i];
}

/* Transformer over s->x [B, T, D] at the current position, then advance. */
static void run(const bb_model *m, bb_seq *s, int T)
{
    llama_forward(&m->st, s->x, s->B, T, s->pos, s->kc, s->vc, s->cap, &s->ws);
    s->pos += T;
}

int bb_prefill(const bb_model *m, bb_seq *s, const int32_t *rows, const uint8_t *mask, int S,
               int muq_index, const float *muq, float *h_out)
{
    const int D = m->D, ncb = m->ncb, W = ncb + 1, B = s->B;
    if (s->pos != 0) return hm_err("backbone: prefill on a sequence holding %d positions", s->pos);
    if (check_room(m, s, S) != HM_OK) return HM_ERR;
    if (muq_index < -1 || muq_index >= S)
        return hm_err("backbone: MuQ slot %d outside the prompt of %d positions", muq_index, S);
    for (int t = 0; t < S; t++) {
        for (int k = 0; k < ncb; k++) {
            int32_t c = rows[(size_t)t * W + k];
            if (c < 0 || c >= m->Va)
                return hm_err("backbone: prompt position %d codebook %d: code %d outside [0, %d)",
                              t, k, c, m->Va);
        }
        int32_t id = rows[(size_t)t * W + ncb];
        if (id < 0 || id >= m->Vt)
            return hm_err("backbone: prompt position %d: text id %d outside [0, %d)", t, id, m->Vt);
    }
    reserve_x(m, s, S);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < S; t++) {
            float *x = s->x + ((size_t)b * S + t) * D;
            const int32_t *r = rows + (size_t)t * W;
            const uint8_t *mk = mask + (size_t)t * W;
            memset(x, 0, sizeof(float) * D);
            /* Sum in column order (codebooks, then text), as the reference's sum over dim 2. */
            for (int k = 0; k < ncb; k++)
                if (mk[k]) add_row(x, m->audio_emb + ((size_t)r[k] + (size_t)k * m->Va) * D, D);
            if (mk[ncb]) add_row(x, b == 0 ? m->text_emb + (size_t)r[ncb] * D : m->uncond, D);
        }
    if (muq_index >= 0) {
        float *x0 = s->x + (size_t)muq_index * D;
        if (muq) {
            cpu_linear(muq, m->muq_w, m->muq_b, x0, 1, m->cfg.muq_dim, D);
        } else {
            memcpy(x0, m->muq_b, sizeof(float) * D); /* muq_linear(0) is its bias */
        }
        if (B == 2) memcpy(s->x + ((size_t)S + muq_index) * D, m->uncond, sizeof(float) * D);
    }
    run(m, s, S);
    for (int b = 0; b < B; b++)
        llama_final_norm(&m->st, s->x + ((size_t)b * S + S - 1) * D, h_out + (size_t)b * D, 1);
    return HM_OK;
}

int bb_extend(const bb_model *m, bb_seq *s, const int32_t *frames, int k, float *h_out)
{
    const int D = m->D, ncb = m->ncb, B = s->B;
    if (check_room(m, s, k) != HM_OK) return HM_ERR;
    for (int j = 0; j < k; j++)
        for (int q = 0; q < ncb; q++) {
            int32_t c = frames[(size_t)j * ncb + q];
            if (c < 0 || c >= m->Va)
                return hm_err("backbone: frame %d codebook %d: code %d outside [0, %d)", j, q, c,
                              m->Va);
        }
    reserve_x(m, s, k);
    for (int j = 0; j < k; j++) {
        float *x = s->x + (size_t)j * D;
        memset(x, 0, sizeof(float) * D);
        for (int q = 0; q < ncb; q++)
            add_row(x, m->audio_emb + ((size_t)frames[(size_t)j * ncb + q] + (size_t)q * m->Va) * D,
                    D);
    }
    /* Text is masked off in frame positions, so both rows embed identically. */
    for (int b = 1; b < B; b++) memcpy(s->x + (size_t)b * k * D, s->x, sizeof(float) * k * D);
    run(m, s, k);
    for (int b = 0; b < B; b++)
        for (int j = 0; j < k; j++)
            llama_final_norm(&m->st, s->x + ((size_t)b * k + j) * D,
                             h_out + ((size_t)j * B + b) * D, 1);
    return HM_OK;
}
