/* fm.c - HeartCodec flow matching on the CPU: conditioning, DiT estimator, Euler + CFG solver
 * (MODEL.md §3; see fm.h).  Layouts are time-major: a sequence is [T, width] rows. */
#include "fm.h"

#include <cblas.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adaln.h"
#include "codec_plan.h"
#include "conv1d.h"
#include "hm.h"
#include "stage.h"
#include "ops_cpu.h"
#include "safetensors.h"
#include "softmax.h"

#define FM_EPS 1e-6f
#define FM_ROPE_BASE 10000.0f
#define FM_TIME_FEATURES 512 /* PixArt flow_t_size */
#define FM_PROJ_K 3

typedef struct { /* ProjectLayer: conv k3 pad 1 (times 1/sqrt(3)) then Linear, both with bias */
    int cin, cout;
    float *w1; /* tap-major [3, cout, cin] */
    float *b1, *w2, *b2;
} fm_proj;

typedef struct {
    float *attn_norm, *wq, *wk, *wv, *wo, *mlp_norm, *gate, *up, *down;
    float *sst; /* scale_shift_table [6, d] */
} fm_block;

typedef struct { /* one transformer stack with its adaLN-single and final modulation table */
    int d, heads, hd, hidden, n;
    fm_block *blk;
    float *l1w, *l1b, *l2w, *l2b; /* timestep_embedder linear_1 [d, 512], linear_2 [d, d] */
    float *lw, *lb;               /* adaln linear [6d, d] */
    float *sst;                   /* final scale_shift_table [2, d] */
    float *rope;                  /* hd/2 frequencies */
} fm_stack;

struct fm_model {
    hm_codec_config cfg;
    int cond_only; /* fm_load_cond: no estimator weights */
    int nq, cbs, cbd, dim, in_ch, out_ch;
    float *codebooks; /* [nq, cbs, cbd] */
    float *po_w, *po_b, *cfe_w, *cfe_b;
    fm_proj proj_in, conn, proj_out;
    fm_stack s1, s2;
};

/* ---- loading ------------------------------------------------------------------------------ */

typedef struct {
    st_file *f;
    int bad;
} loader;

static float *ld(loader *L, int ndim, const int64_t *shape, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static float *ld(loader *L, int ndim, const int64_t *shape, const char *fmt, ...)
{
    if (L->bad) return NULL;
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    float *p = st_load_f32(L->f, name, ndim, shape);
    if (!p) L->bad = 1;
    return p;
}
#define SHAPE(...) (const int64_t[]){__VA_ARGS__}

static void load_proj(loader *L, fm_proj *p, const char *name, int cin, int cout)
{
    p->cin = cin;
    p->cout = cout;
    float *w = ld(L, 3, SHAPE(cout, cin, FM_PROJ_K), "flow_matching.estimator.%s.ffn_1.weight", name);
    if (w) {
        p->w1 = hm_malloc(sizeof(float) * (size_t)cout * cin * FM_PROJ_K);
        conv1d_to_tap_major(w, cout, cin, FM_PROJ_K, p->w1);
        free(w);
    }
    p->b1 = ld(L, 1, SHAPE(cout), "flow_matching.estimator.%s.ffn_1.bias", name);
    p->w2 = ld(L, 2, SHAPE(cout, cout), "flow_matching.estimator.%s.ffn_2.weight", name);
    p->b2 = ld(L, 1, SHAPE(cout), "flow_matching.estimator.%s.ffn_2.bias", name);
}

static void free_proj(fm_proj *p)
{
    free(p->w1);
    free(p->b1);
    free(p->w2);
    free(p->b2);
}

/* LlamaMLP hidden width: int(2 * 4d / 3) rounded up to a multiple of 256. */
static int mlp_hidden(int d)
{
    int h = (int)(2.0 * (4.0 * d) / 3.0);
    return 256 * ((h + 255) / 256);
}

static void load_stack(loader *L, fm_stack *s, int d, int heads, int hd, int n, const char *blocks, const char *adaln,
                       const char *table)
{
    s->d = d;
    s->heads = heads;
    s->hd = hd;
    s->n = n;
    s->hidden = mlp_hidden(d);
    s->blk = hm_calloc((size_t)(n ? n : 1), sizeof(fm_block));
    const char *E = "flow_matching.estimator";
    for (int i = 0; i < n; i++) {
        fm_block *b = &s->blk[i];
        b->attn_norm = ld(L, 1, SHAPE(d), "%s.%s.%d.attn_norm.weight", E, blocks, i);
        b->wq = ld(L, 2, SHAPE(d, d), "%s.%s.%d.attn.q_proj.weight", E, blocks, i);
        b->wk = ld(L, 2, SHAPE(d, d), "%s.%s.%d.attn.k_proj.weight", E, blocks, i);
        b->wv = ld(L, 2, SHAPE(d, d), "%s.%s.%d.attn.v_proj.weight", E, blocks, i);
        b->wo = ld(L, 2, SHAPE(d, d), "%s.%s.%d.attn.o_proj.weight", E, blocks, i);
        b->mlp_norm = ld(L, 1, SHAPE(d), "%s.%s.%d.mlp_norm.weight", E, blocks, i);
        b->gate = ld(L, 2, SHAPE(s->hidden, d), "%s.%s.%d.mlp.gate.weight", E, blocks, i);
        b->up = ld(L, 2, SHAPE(s->hidden, d), "%s.%s.%d.mlp.up.weight", E, blocks, i);
        b->down = ld(L, 2, SHAPE(d, s->hidden), "%s.%s.%d.mlp.down.weight", E, blocks, i);
        b->sst = ld(L, 2, SHAPE(6, d), "%s.%s.%d.scale_shift_table", E, blocks, i);
    }
    s->l1w = ld(L, 2, SHAPE(d, FM_TIME_FEATURES), "%s.%s.emb.timestep_embedder.linear_1.weight", E, adaln);
    s->l1b = ld(L, 1, SHAPE(d), "%s.%s.emb.timestep_embedder.linear_1.bias", E, adaln);
    s->l2w = ld(L, 2, SHAPE(d, d), "%s.%s.emb.timestep_embedder.linear_2.weight", E, adaln);
    s->l2b = ld(L, 1, SHAPE(d), "%s.%s.emb.timestep_embedder.linear_2.bias", E, adaln);
    s->lw = ld(L, 2, SHAPE(6 * (int64_t)d, d), "%s.%s.linear.weight", E, adaln);
    s->lb = ld(L, 1, SHAPE(6 * (int64_t)d), "%s.%s.linear.bias", E, adaln);
    s->sst = ld(L, 2, SHAPE(2, d), "%s.%s", E, table);
    s->rope = hm_malloc(sizeof(float) * (size_t)(hd / 2 ? hd / 2 : 1));
    cpu_rope_freqs(s->rope, hd, FM_ROPE_BASE, 0.0f);
}

static void free_stack(fm_stack *s)
{
    for (int i = 0; s->blk && i < s->n; i++) {
        fm_block *b = &s->blk[i];
        float *p[] = {b->attn_norm, b->wq, b->wk, b->wv, b->wo, b->mlp_norm, b->gate, b->up, b->down, b->sst};
        for (size_t j = 0; j < HM_ARRAY_LEN(p); j++) free(p[j]);
    }
    free(s->blk);
    float *p[] = {s->l1w, s->l1b, s->l2w, s->l2b, s->lw, s->lb, s->sst, s->rope};
    for (size_t j = 0; j < HM_ARRAY_LEN(p); j++) free(p[j]);
}

static int load(const char *model_dir, int cond_only, fm_model **out)
{
    *out = NULL;
    fm_model *m = hm_calloc(1, sizeof *m);
    hm_codec_config *c = &m->cfg;
    if (hm_codec_config_load(model_dir, c)) {
        free(m);
        return HM_ERR;
    }
    m->nq = c->num_quantizers;
    m->cbs = c->codebook_size;
    m->cbd = c->codebook_dim;
    m->dim = c->dim;
    m->in_ch = c->in_channels;
    m->out_ch = c->out_channels;
    int d1 = c->num_attention_heads * c->attention_head_dim, d2 = 2 * d1;
    int bad = 0;
    if (m->in_ch != 2 * m->out_ch + m->dim)
        bad = hm_err("%s/config.json: in_channels %d must be 2*out_channels + dim = %d (latent, in-context, cond)",
                     c->dir, m->in_ch, 2 * m->out_ch + m->dim);
    else if (c->attention_head_dim % 2)
        bad = hm_err("%s/config.json: attention_head_dim %d must be even (RoPE pairs)", c->dir, c->attention_head_dim);
    if (bad) {
        free(m);
        return HM_ERR;
    }
    loader L = {0};
    if (st_open(c->dir, &L.f)) {
        free(m);
        return hm_err_ctx("flow matching");
    }
    m->codebooks = hm_malloc(sizeof(float) * (size_t)m->nq * m->cbs * m->cbd);
    for (int q = 0; q < m->nq && !L.bad; q++) {
        float *e = ld(&L, 3, SHAPE(1, m->cbs, m->cbd), "flow_matching.vq_embed.layers.%d._codebook.embed", q);
        if (e) memcpy(m->codebooks + (size_t)q * m->cbs * m->cbd, e, sizeof(float) * (size_t)m->cbs * m->cbd);
        free(e);
    }
    m->po_w = ld(&L, 2, SHAPE(m->dim, m->cbd), "flow_matching.vq_embed.project_out.weight");
    m->po_b = ld(&L, 1, SHAPE(m->dim), "flow_matching.vq_embed.project_out.bias");
    m->cfe_w = ld(&L, 2, SHAPE(m->dim, m->dim), "flow_matching.cond_feature_emb.weight");
    m->cfe_b = ld(&L, 1, SHAPE(m->dim), "flow_matching.cond_feature_emb.bias");
    m->cond_only = cond_only;
    if (!cond_only) {
        load_proj(&L, &m->proj_in, "proj_in", m->in_ch, d1);
        load_proj(&L, &m->conn, "connection_proj", m->in_ch + d1, d2);
        load_proj(&L, &m->proj_out, "proj_out", d2, m->out_ch);
        load_stack(&L, &m->s1, d1, c->num_attention_heads, c->attention_head_dim, c->num_layers, "transformer_blocks",
                   "adaln_single", "scale_shift_table");
        load_stack(&L, &m->s2, d2, c->num_attention_heads, 2 * c->attention_head_dim, c->num_layers_2,
                   "transformer_blocks_2", "adaln_single_2", "scale_shift_table_2");
    }
    if (L.bad) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", hm_errmsg());
        st_close(L.f);
        fm_free(m);
        return hm_err("flow matching (%s): %s", model_dir, msg);
    }
    /* Never used to decode: the VQ's training state, its encoder-side project_in, the
     * zero-cond embedding (its mask covers no frame of a 744-frame window), the scalar model. */
    static const char *const ignore[] = {"scalar_model.", "cluster_size", "embed_avg", "initted",
                                         "flow_matching.vq_embed.project_in.", "flow_matching.zero_cond_embedding1",
                                         "flow_matching.estimator."};
    st_report_unused(L.f, ignore, HM_ARRAY_LEN(ignore) - (cond_only ? 0 : 1)); /* the estimator is loaded elsewhere */
    st_close(L.f);
    *out = m;
    return HM_OK;
}

int fm_load(const char *model_dir, fm_model **out) { return load(model_dir, 0, out); }

int fm_load_cond(const char *model_dir, fm_model **out) { return load(model_dir, 1, out); }

void fm_free(fm_model *m)
{
    if (!m) return;
    free(m->codebooks);
    free(m->po_w);
    free(m->po_b);
    free(m->cfe_w);
    free(m->cfe_b);
    free_proj(&m->proj_in);
    free_proj(&m->conn);
    free_proj(&m->proj_out);
    free_stack(&m->s1);
    free_stack(&m->s2);
    free(m);
}

const hm_codec_config *fm_config(const fm_model *m) { return &m->cfg; }

/* ---- estimator ---------------------------------------------------------------------------- */

/* ProjectLayer on one sequence: x [T, cin] -> y [T, cout]; tmp [T, cout] scratch. */
static void proj_forward(const fm_proj *p, const float *x, int T, float *tmp, float *y)
{
    cpu_conv1d_tmajor(x, T, p->cin, p->w1, p->b1, p->cout, FM_PROJ_K, tmp);
    const float s = (float)(1.0 / sqrt((double)FM_PROJ_K)); /* kernel_size ** -0.5, after the bias */
    for (size_t i = 0; i < (size_t)T * p->cout; i++) tmp[i] *= s;
    cpu_linear(tmp, p->w2, p->b2, y, T, p->cout, p->cout);
}

static void silu_inplace(float *x, int n)
{
    for (int i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-x[i]));
}

/* adaLN-single for one flow time: emb [d] and mod [6d] = linear(silu(emb)). */
static void adaln_forward(const fm_stack *s, float t, float *emb, float *mod)
{
    float feat[FM_TIME_FEATURES];
    float *h = hm_malloc(sizeof(float) * (size_t)s->d);
    cpu_timestep_features(t, FM_TIME_FEATURES, feat);
    cpu_linear(feat, s->l1w, s->l1b, h, 1, FM_TIME_FEATURES, s->d);
    silu_inplace(h, s->d);
    cpu_linear(h, s->l2w, s->l2b, emb, 1, s->d, s->d);
    memcpy(h, emb, sizeof(float) * (size_t)s->d);
    silu_inplace(h, s->d);
    cpu_linear(h, s->lw, s->lb, mod, 1, s->d, 6 * s->d);
    free(h);
}

/* Full (bidirectional) multi-head attention of one sequence with GEMMs: q, k, v, o [T, H*hd]. */
static void attention_full(const float *q, const float *k, const float *v, float *o, int T, int H, int hd, float *S)
{
    const int ld = H * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int h = 0; h < H; h++) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, q + h * hd, ld, k + h * hd, ld, 0.0f, S, T);
        cpu_softmax_rows(S, T, T);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, S, T, v + h * hd, ld, 0.0f, o + h * hd, ld);
    }
}

/* Run every block of a stack over x [B*T, d] in place; mod [B, 6d] from adaln_forward. */
static void stack_forward(const fm_stack *s, float *x, int B, int T, const float *mod)
{
    const int d = s->d, M = B * T;
    size_t md = (size_t)M * d;
    float *n = hm_malloc(sizeof(float) * md), *q = hm_malloc(sizeof(float) * md);
    float *k = hm_malloc(sizeof(float) * md), *v = hm_malloc(sizeof(float) * md);
    float *a = hm_malloc(sizeof(float) * md), *h = hm_malloc(sizeof(float) * md);
    float *g = hm_malloc(sizeof(float) * (size_t)M * s->hidden), *u = hm_malloc(sizeof(float) * (size_t)M * s->hidden);
    float *S = hm_malloc(sizeof(float) * (size_t)T * T);
    float *mm = hm_malloc(sizeof(float) * 6 * (size_t)d * B);
    for (int l = 0; l < s->n; l++) {
        const fm_block *b = &s->blk[l];
        /* shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = table + mod */
        for (int bi = 0; bi < B; bi++)
            for (int i = 0; i < 6 * d; i++) mm[(size_t)bi * 6 * d + i] = b->sst[i] + mod[(size_t)bi * 6 * d + i];
        cpu_rmsnorm(x, b->attn_norm, n, M, d, FM_EPS);
        for (int bi = 0; bi < B; bi++) {
            const float *c = mm + (size_t)bi * 6 * d;
            cpu_modulate(n + (size_t)bi * T * d, c, c + d, n + (size_t)bi * T * d, T, d);
        }
        cpu_linear(n, b->wq, NULL, q, M, d, d);
        cpu_linear(n, b->wk, NULL, k, M, d, d);
        cpu_linear(n, b->wv, NULL, v, M, d, d);
        for (int bi = 0; bi < B; bi++) {
            size_t o = (size_t)bi * T * d;
            cpu_rope_interleaved(q + o, T, s->heads, s->hd, 0, s->rope);
            cpu_rope_interleaved(k + o, T, s->heads, s->hd, 0, s->rope);
            attention_full(q + o, k + o, v + o, a + o, T, s->heads, s->hd, S);
        }
        cpu_linear(a, b->wo, NULL, h, M, d, d);
        for (int bi = 0; bi < B; bi++)
            cpu_gated_add(x + (size_t)bi * T * d, mm + (size_t)bi * 6 * d + 2 * d, h + (size_t)bi * T * d, T, d);

        cpu_rmsnorm(x, b->mlp_norm, n, M, d, FM_EPS);
        for (int bi = 0; bi < B; bi++) {
            const float *c = mm + (size_t)bi * 6 * d + 3 * d;
            cpu_modulate(n + (size_t)bi * T * d, c, c + d, n + (size_t)bi * T * d, T, d);
        }
        cpu_linear(n, b->gate, NULL, g, M, d, s->hidden);
        cpu_linear(n, b->up, NULL, u, M, d, s->hidden);
        cpu_silu_mul(g, u, (size_t)M * s->hidden);
        cpu_linear(g, b->down, NULL, h, M, s->hidden, d);
        for (int bi = 0; bi < B; bi++)
            cpu_gated_add(x + (size_t)bi * T * d, mm + (size_t)bi * 6 * d + 5 * d, h + (size_t)bi * T * d, T, d);
    }
    free(n); free(q); free(k); free(v); free(a); free(h); free(g); free(u); free(S); free(mm);
}

/* Final LayerNorm (no affine, eps 1e-6) modulated by shift = table[0] + emb, scale = table[1] + emb. */
static void final_norm(const fm_stack *s, float *x, int B, int T, const float *emb)
{
    const int d = s->d;
    float *sh = hm_malloc(sizeof(float) * 2 * (size_t)d), *sc = sh + d;
    cpu_layernorm(x, x, B * T, d, FM_EPS);
    for (int bi = 0; bi < B; bi++) {
        for (int i = 0; i < d; i++) {
            sh[i] = s->sst[i] + emb[(size_t)bi * d + i];
            sc[i] = s->sst[d + i] + emb[(size_t)bi * d + i];
        }
        cpu_modulate(x + (size_t)bi * T * d, sh, sc, x + (size_t)bi * T * d, T, d);
    }
    free(sh);
}

int fm_estimator(const fm_model *m, const float *x, const float *t, int B, int T, float *out)
{
    if (B < 1 || T < 1 || T > (1 << 20)) return hm_err("fm_estimator: bad batch %d x %d frames", B, T);
    if (m->cond_only) return hm_err("fm_estimator: the model was loaded for the conditioning only (fm_load_cond)");
    const int d1 = m->s1.d, d2 = m->s2.d, cin = m->in_ch, cc = m->in_ch + d1;
    float *h1 = hm_malloc(sizeof(float) * (size_t)B * T * d1);
    float *h2 = hm_malloc(sizeof(float) * (size_t)B * T * d2);
    size_t tmpw = (size_t)HM_MAX(HM_MAX(d1, d2), HM_MAX(cc, m->out_ch));
    float *tmp = hm_malloc(sizeof(float) * (size_t)T * tmpw);
    float *cat = hm_malloc(sizeof(float) * (size_t)T * cc);
    float *emb1 = hm_malloc(sizeof(float) * (size_t)B * d1), *mod1 = hm_malloc(sizeof(float) * (size_t)B * 6 * d1);
    float *emb2 = hm_malloc(sizeof(float) * (size_t)B * d2), *mod2 = hm_malloc(sizeof(float) * (size_t)B * 6 * d2);
    for (int b = 0; b < B; b++) {
        proj_forward(&m->proj_in, x + (size_t)b * T * cin, T, tmp, h1 + (size_t)b * T * d1);
        adaln_forward(&m->s1, t[b], emb1 + (size_t)b * d1, mod1 + (size_t)b * 6 * d1);
        adaln_forward(&m->s2, t[b], emb2 + (size_t)b * d2, mod2 + (size_t)b * 6 * d2);
    }
    stack_forward(&m->s1, h1, B, T, mod1);
    final_norm(&m->s1, h1, B, T, emb1);
    for (int b = 0; b < B; b++) {
        /* connection_proj sees [estimator input, stack-1 output] */
        for (int r = 0; r < T; r++) {
            memcpy(cat + (size_t)r * cc, x + ((size_t)b * T + r) * cin, sizeof(float) * (size_t)cin);
            memcpy(cat + (size_t)r * cc + cin, h1 + ((size_t)b * T + r) * d1, sizeof(float) * (size_t)d1);
        }
        proj_forward(&m->conn, cat, T, tmp, h2 + (size_t)b * T * d2);
    }
    stack_forward(&m->s2, h2, B, T, mod2);
    final_norm(&m->s2, h2, B, T, emb2);
    for (int b = 0; b < B; b++)
        proj_forward(&m->proj_out, h2 + (size_t)b * T * d2, T, tmp, out + (size_t)b * T * m->out_ch);
    free(h1); free(h2); free(tmp); free(cat); free(emb1); free(mod1); free(emb2); free(mod2);
    return HM_OK;
}

/* ---- conditioning and solver -------------------------------------------------------------- */

int fm_cond(const fm_model *m, const int32_t *codes, int n, float *cond)
{
    if (n < 1) return hm_err("fm_cond: no codes");
    for (int q = 0; q < m->nq; q++)
        for (int i = 0; i < n; i++) {
            int32_t c = codes[(size_t)q * n + i];
            if (c < 0 || c >= m->cbs)
                return hm_err("codec: code %d at codebook %d, frame %d is outside [0, %d)", (int)c, q, i, m->cbs);
        }
    float *e = hm_calloc((size_t)n * m->cbd, sizeof(float));
    float *p = hm_malloc(sizeof(float) * (size_t)n * m->dim), *c = hm_malloc(sizeof(float) * (size_t)n * m->dim);
    for (int i = 0; i < n; i++)
        for (int q = 0; q < m->nq; q++) {
            const float *row = m->codebooks + ((size_t)q * m->cbs + codes[(size_t)q * n + i]) * m->cbd;
            for (int j = 0; j < m->cbd; j++) e[(size_t)i * m->cbd + j] += row[j];
        }
    cpu_linear(e, m->po_w, m->po_b, p, n, m->cbd, m->dim);
    cpu_linear(p, m->cfe_w, m->cfe_b, c, n, m->dim, m->dim);
    for (int i = 0; i < n; i++) {
        memcpy(cond + (size_t)(2 * i) * m->dim, c + (size_t)i * m->dim, sizeof(float) * (size_t)m->dim);
        memcpy(cond + (size_t)(2 * i + 1) * m->dim, c + (size_t)i * m->dim, sizeof(float) * (size_t)m->dim);
    }
    free(e); free(p); free(c);
    return HM_OK;
}

/* torch.linspace(0, 1, n) in fp32 as its kernels compute it: from the start for the first half,
 * from the end for the rest. */
static float linspace01(int i, int n)
{
    if (n == 1) return 0.0f;
    float step = 1.0f / (float)(n - 1);
    int halfway = n / 2;
    return i < halfway ? step * (float)i : 1.0f - step * (float)(n - 1 - i);
}

int fm_solve(const fm_model *m, int T, const float *cond, const float *ctx, int L, const float *noise, int steps,
             float guidance, float *latents_out)
{
    if (steps < 1 || steps > FM_MAX_STEPS)
        return hm_err("codec: %d flow-matching steps (1 to %d)", steps, FM_MAX_STEPS);
    if (!isfinite(guidance) || guidance < 0.0f) return hm_err("codec: guidance %g must be a finite number >= 0", (double)guidance);
    if (T < 1 || L < 0 || L > T) return hm_err("codec: in-context length %d outside [0, %d]", L, T);
    if (m->cond_only) return hm_err("fm_solve: the model was loaded for the conditioning only (fm_load_cond)");
    const int C = m->out_ch, D = m->dim, cin = m->in_ch;
    const int cfg = guidance > 1.0f, B = cfg ? 2 : 1;
    size_t tc = (size_t)T * C;
    float *x = latents_out;
    memcpy(x, noise, sizeof(float) * tc);
    float *inp = hm_malloc(sizeof(float) * (size_t)B * T * cin);
    float *v = hm_malloc(sizeof(float) * (size_t)B * tc);
    /* The parts of the input that do not change over the steps: in-context latent and cond
     * (zero in the unconditional row 0). */
    for (int b = 0; b < B; b++)
        for (int r = 0; r < T; r++) {
            float *row = inp + ((size_t)b * T + r) * cin;
            if (r < L) memcpy(row + C, ctx + (size_t)r * C, sizeof(float) * (size_t)C);
            else memset(row + C, 0, sizeof(float) * (size_t)C);
            if (cfg && b == 0) memset(row + 2 * C, 0, sizeof(float) * (size_t)D);
            else memcpy(row + 2 * C, cond + (size_t)r * D, sizeof(float) * (size_t)D);
        }
    float t = linspace01(0, steps + 1), dt = linspace01(1, steps + 1) - t;
    const float keep = 0.999999f; /* (1 - 1e-6) as an fp32 scalar */
    for (int step = 1; step <= steps; step++) {
        float a = 1.0f - keep * t;
        for (size_t i = 0; i < (size_t)L * C; i++) x[i] = a * noise[i] + t * ctx[i];
        for (int b = 0; b < B; b++)
            for (int r = 0; r < T; r++) memcpy(inp + ((size_t)b * T + r) * cin, x + (size_t)r * C, sizeof(float) * (size_t)C);
        float tt[2] = {t, t};
        if (fm_estimator(m, inp, tt, B, T, v)) {
            free(inp);
            free(v);
            return HM_ERR;
        }
        stage_alive(); /* one estimator call at the released sizes takes seconds on a CPU */
        if (cfg) {
            const float *vu = v, *vc = v + tc;
            for (size_t i = 0; i < tc; i++) x[i] = x[i] + dt * (vu[i] + guidance * (vc[i] - vu[i]));
        } else {
            for (size_t i = 0; i < tc; i++) x[i] = x[i] + dt * v[i];
        }
        t = t + dt;
        if (step < steps) dt = linspace01(step + 1, steps + 1) - t;
    }
    memcpy(x, ctx, sizeof(float) * (size_t)L * C);
    free(inp);
    free(v);
    return HM_OK;
}

int fm_solve_window(const fm_model *m, const float *cond, const float *ctx, int L, const float *noise, int steps,
                    float guidance, float *latents_out)
{
    return fm_solve(m, CODEC_WIN_FRAMES, cond, ctx, L, noise, steps, guidance, latents_out);
}

int fm_window_inputs(const fm_model *m, const int32_t *win_codes, codec_noise *noise, int k, float *cond,
                     float *noise_out, int *L)
{
    *L = k > 0 ? CODEC_CTX_FRAMES : 0;
    if (fm_cond(m, win_codes, CODEC_WIN_CODES, cond) ||
        codec_noise_draw_at(noise, codec_noise_index_solver(k), noise_out, CODEC_WIN_FRAMES, m->out_ch))
        return HM_ERR;
    return HM_OK;
}

int fm_window(const fm_model *m, const int32_t *win_codes, const float *prev, codec_noise *noise, int k, int steps,
              float guidance, float *out)
{
    const int W = CODEC_WIN_FRAMES, C = m->out_ch;
    if (k > 0 && !prev) return hm_err("codec window %d: needs the previous window's latents", k);
    float *cond = hm_malloc(sizeof(float) * (size_t)W * m->dim);
    float *ctx = hm_calloc((size_t)W * C, sizeof(float));
    float *nz = hm_malloc(sizeof(float) * (size_t)W * C);
    int L;
    int rc = fm_window_inputs(m, win_codes, noise, k, cond, nz, &L);
    if (!rc && L) memcpy(ctx, prev + (size_t)(W - L) * C, sizeof(float) * (size_t)L * C);
    if (!rc) rc = fm_solve_window(m, cond, ctx, L, nz, steps, guidance, out);
    free(cond);
    free(ctx);
    free(nz);
    return rc ? HM_ERR : HM_OK;
}
