/* lm_cuda.cu - the HeartMuLa language model engine on CUDA (see lm_cuda.h, MODEL.md §2).
 * Weights: q/k/v are concatenated and w1/w3 interleaved row by row at load, so a layer's decode
 * step is 4 GEMVs (qkv, o, w1|w3, w2) with RMSNorm fused into the GEMV input and SwiGLU into the
 * w1|w3 output (gate and up rows land in the same warp); audio_head is stored
 * transposed ([nc-1][Va][Dd]) so every head is a plain [out, in] GEMV.  The residual stream is
 * fp32; decode uses the GEMV kernel, prefill cuBLASLt. */
#include "common_cuda.h"
#include "lm_cuda.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "ops_cpu.h"
#include "safetensors.h"
}

namespace {

constexpr int PREFILL_CHUNK = 128; /* prompt positions per prefill pass (bounds attention scratch) */

struct layer_w {
    void *wqkv, *wo, *w13, *w2;
    float *sa_norm, *mlp_norm;
};

struct xfm {
    hm_flavor f;
    int D, H, KVH, hd, I, qkvw;
    layer_w *L;
    float *norm, *freqs;
};

/* scratch of one pass over R rows */
struct scratch {
    int R;
    float *x, *qkv, *att, *gu, *work;
    void *xn; /* GEMM input (weight dtype), prefill only */
    size_t work_bytes;
};

enum {
    P_EMBED, P_BB_QKV, P_BB_ROPE, P_BB_ATTN, P_BB_O, P_BB_W13, P_BB_W2, P_BB_NORM, P_C0, P_SAMPLE, P_DEC_IN,
    P_DEC_QKV, P_DEC_ROPE, P_DEC_ATTN, P_DEC_O, P_DEC_W13, P_DEC_W2, P_HEADS, P_COUNT
};
const char *const P_NAMES[P_COUNT] = {"embed frame", "bb qkv gemv", "bb rope+kv", "bb attention", "bb o gemv",
                                      "bb w1|w3 gemv", "bb w2 gemv", "bb final norm", "c0 head gemv", "cfg+sample x8",
                                      "dec input+proj", "dec qkv gemv", "dec rope+kv", "dec attention", "dec o gemv",
                                      "dec w1|w3 gemv", "dec w2 gemv", "audio heads x7"};

struct prof_state {
    int on;
    int n;
    int cat[4096];
    double bytes[4096];
    cudaEvent_t ev[8192];
};

} // namespace

struct lm_cuda {
    hm_lm_config cfg;
    hmc_dtype wdt;
    xfm bb, dec;
    void *text_emb, *audio_emb, *uncond, *muq_w, *c0_head, *proj, *audio_head;
    float *muq_b, *uncond_f32;
    unsigned skip; /* LM_CUDA_SKIP_* (profiling) */
};

struct lm_cuda_req {
    lm_cuda *m;
    int B, max_seq, pos;
    cudaStream_t st;
    void **bk, **bv, **dk, **dv;
    int *pos_dev;
    uint32_t *rng_dev;
    hmc_sample_params *prm_dev;
    int32_t *codes_dev;
    float *h_last, *logits, *logits_out, *stage;
    scratch sd_bb, sd_dec, sp; /* decode backbone, decode decoder, prefill (grown on demand) */
    int32_t *tok_dev;
    uint8_t *mask_dev;
    float *muq_dev;
    int tok_cap;
    int uses_extend, uses_frame;
    cudaGraphExec_t g_extend, g_frame;
    prof_state *prof;
};

namespace {

size_t wsz(hmc_dtype t) { return hmc_dtype_size(t); }

/* ---- profiling: events around each op when r->prof->on ---- */
#define OP(r, cat_, wbytes_, call)                                                                         \
    do {                                                                                                 \
        if (skipped((r)->m->skip, (cat_))) break;                                                        \
        prof_state *ps_ = (r)->prof;                                                                     \
        int pi_ = -1;                                                                                    \
        if (ps_ && ps_->on && ps_->n < 4096) {                                                           \
            pi_ = ps_->n++;                                                                              \
            ps_->cat[pi_] = (cat_);                                                                       \
            ps_->bytes[pi_] = (double)(wbytes_);                                                          \
            CK(cudaEventRecord(ps_->ev[2 * pi_], (r)->st));                                              \
        }                                                                                                \
        CKH(call);                                                                                       \
        if (pi_ >= 0) CK(cudaEventRecord(ps_->ev[2 * pi_ + 1], (r)->st));                                \
    } while (0)

bool skipped(unsigned mask, int cat)
{
    switch (cat) {
    case P_BB_ROPE: case P_BB_ATTN: case P_DEC_ROPE: case P_DEC_ATTN: return mask & LM_CUDA_SKIP_ATTN;
    case P_SAMPLE: return mask & LM_CUDA_SKIP_SAMPLE;
    case P_BB_QKV: case P_BB_O: case P_BB_W13: case P_BB_W2: return mask & LM_CUDA_SKIP_BB_GEMV;
    case P_C0: case P_DEC_QKV: case P_DEC_O: case P_DEC_W13: case P_DEC_W2: case P_HEADS: return mask & LM_CUDA_SKIP_DEC_GEMV;
    }
    return false;
}

int dev_alloc(void **p, size_t n)
{
    CK(cudaMalloc(p, n ? n : 16));
    return HM_OK;
}

int xfm_init(xfm *X, const hm_flavor *f)
{
    X->f = *f;
    X->D = f->embed_dim, X->H = f->num_heads, X->KVH = f->num_kv_heads, X->I = f->intermediate_dim;
    if (X->H <= 0 || X->KVH <= 0 || X->D % X->H || X->H % X->KVH)
        return hm_err("flavor '%s': %d heads, %d kv heads, width %d do not divide", f->name, X->H, X->KVH, X->D);
    X->hd = X->D / X->H;
    X->qkvw = (X->H + 2 * X->KVH) * X->hd;
    X->L = (layer_w *)hm_calloc((size_t)f->num_layers, sizeof(layer_w));
    float *fr = (float *)hm_malloc(sizeof(float) * (size_t)(X->hd / 2));
    cpu_rope_freqs(fr, X->hd, f->rope_base, f->rope_scale_factor);
    if (dev_alloc((void **)&X->freqs, sizeof(float) * (X->hd / 2)) ||
        cudaMemcpy(X->freqs, fr, sizeof(float) * (X->hd / 2), cudaMemcpyHostToDevice) != cudaSuccess) {
        free(fr);
        return hm_err("%s:%d: uploading rope table failed", __FILE__, __LINE__);
    }
    free(fr);
    return HM_OK;
}

void xfm_free(xfm *X)
{
    if (X->L)
        for (int l = 0; l < X->f.num_layers; l++) {
            cudaFree(X->L[l].wqkv), cudaFree(X->L[l].wo), cudaFree(X->L[l].w13), cudaFree(X->L[l].w2);
            cudaFree(X->L[l].sa_norm), cudaFree(X->L[l].mlp_norm);
        }
    free(X->L);
    cudaFree(X->norm), cudaFree(X->freqs);
}

/* ---- loading from safetensors ---- */

/* Fetch tensors `names` (each [rows_i, cols]) and upload them stacked as one [Σ rows, cols]
 * matrix of type t.  transpose3: the tensor is [n, cols_in, rows] and is stored as [n][rows][cols_in]. */
int upload_stacked(st_file *f, const char *const *names, const int64_t *rows, int n, int64_t cols, hmc_dtype t,
                   void **out, int interleave = 0)
{
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += rows[i];
    float *h = (float *)hm_malloc(sizeof(float) * (size_t)(total * cols));
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        st_tensor *ts;
        int64_t shape[2] = {rows[i], cols};
        if (st_get(f, names[i], 2, shape, &ts) != HM_OK || st_to_f32(ts, h + off * cols) != HM_OK) {
            free(h);
            return HM_ERR;
        }
        off += rows[i];
    }
    size_t ne = (size_t)(total * cols);
    if (interleave) { /* two equal blocks of rows A, B -> A0 B0 A1 B1 ... */
        float *il = (float *)hm_malloc(sizeof(float) * ne);
        const int64_t half = total / 2;
        for (int64_t i = 0; i < half; i++) {
            memcpy(il + (2 * i) * cols, h + i * cols, sizeof(float) * cols);
            memcpy(il + (2 * i + 1) * cols, h + (half + i) * cols, sizeof(float) * cols);
        }
        free(h);
        h = il;
    }
    void *hb = h;
    uint16_t *b16 = nullptr;
    if (t == HMC_BF16) {
        b16 = (uint16_t *)hm_malloc(2 * ne);
        for (size_t i = 0; i < ne; i++) b16[i] = hm_f32_to_bf16(h[i]);
        hb = b16;
    }
    int rc = dev_alloc(out, ne * wsz(t));
    if (rc == HM_OK && cudaMemcpy(*out, hb, ne * wsz(t), cudaMemcpyHostToDevice) != cudaSuccess)
        rc = hm_err("%s:%d: upload of '%s' failed", __FILE__, __LINE__, names[0]);
    free(h);
    free(b16);
    return rc;
}

int upload1(st_file *f, const char *name, int64_t rows, int64_t cols, hmc_dtype t, void **out)
{
    const char *names[1] = {name};
    return upload_stacked(f, names, &rows, 1, cols, t, out);
}

int upload_vec_f32(st_file *f, const char *name, int64_t n, float **out)
{
    float *h = st_load_f32(f, name, 1, &n);
    if (!h) return HM_ERR;
    int rc = dev_alloc((void **)out, sizeof(float) * (size_t)n);
    if (rc == HM_OK && cudaMemcpy(*out, h, sizeof(float) * (size_t)n, cudaMemcpyHostToDevice) != cudaSuccess)
        rc = hm_err("%s:%d: upload of '%s' failed", __FILE__, __LINE__, name);
    free(h);
    return rc;
}

int load_xfm(st_file *f, const char *pfx, xfm *X, hmc_dtype t)
{
    char n[6][160];
    for (int l = 0; l < X->f.num_layers; l++) {
        layer_w *L = &X->L[l];
        snprintf(n[0], sizeof n[0], "%s.layers.%d.attn.q_proj.weight", pfx, l);
        snprintf(n[1], sizeof n[1], "%s.layers.%d.attn.k_proj.weight", pfx, l);
        snprintf(n[2], sizeof n[2], "%s.layers.%d.attn.v_proj.weight", pfx, l);
        const char *qkv[3] = {n[0], n[1], n[2]};
        int64_t qr[3] = {X->H * X->hd, X->KVH * X->hd, X->KVH * X->hd};
        CKH(upload_stacked(f, qkv, qr, 3, X->D, t, &L->wqkv));
        snprintf(n[0], sizeof n[0], "%s.layers.%d.attn.output_proj.weight", pfx, l);
        CKH(upload1(f, n[0], X->D, X->H * X->hd, t, &L->wo));
        snprintf(n[0], sizeof n[0], "%s.layers.%d.mlp.w1.weight", pfx, l);
        snprintf(n[1], sizeof n[1], "%s.layers.%d.mlp.w3.weight", pfx, l);
        const char *w13[2] = {n[0], n[1]};
        int64_t r13[2] = {X->I, X->I};
        CKH(upload_stacked(f, w13, r13, 2, X->D, t, &L->w13, 1)); /* gate/up rows interleaved */
        snprintf(n[0], sizeof n[0], "%s.layers.%d.mlp.w2.weight", pfx, l);
        CKH(upload1(f, n[0], X->D, X->I, t, &L->w2));
        snprintf(n[0], sizeof n[0], "%s.layers.%d.sa_norm.scale", pfx, l);
        CKH(upload_vec_f32(f, n[0], X->D, &L->sa_norm));
        snprintf(n[0], sizeof n[0], "%s.layers.%d.mlp_norm.scale", pfx, l);
        CKH(upload_vec_f32(f, n[0], X->D, &L->mlp_norm));
    }
    snprintf(n[0], sizeof n[0], "%s.norm.scale", pfx);
    CKH(upload_vec_f32(f, n[0], X->D, &X->norm));
    return HM_OK;
}

int load_weights(lm_cuda *m, st_file *f)
{
    const hm_lm_config *c = &m->cfg;
    const int D = m->bb.D, Dd = m->dec.D, Va = c->audio_vocab_size, nc = c->audio_num_codebooks;
    hmc_dtype t = m->wdt;
    CKH(load_xfm(f, "backbone", &m->bb, t));
    CKH(load_xfm(f, "decoder", &m->dec, t));
    CKH(upload1(f, "text_embeddings.weight", c->text_vocab_size, D, t, &m->text_emb));
    CKH(upload1(f, "audio_embeddings.weight", (int64_t)Va * nc, D, t, &m->audio_emb));
    CKH(upload1(f, "unconditional_text_embedding.weight", 1, D, t, &m->uncond));
    CKH(upload1(f, "unconditional_text_embedding.weight", 1, D, HMC_F32, (void **)&m->uncond_f32));
    CKH(upload1(f, "muq_linear.weight", D, c->muq_dim, t, &m->muq_w));
    CKH(upload_vec_f32(f, "muq_linear.bias", D, &m->muq_b));
    CKH(upload1(f, "codebook0_head.weight", Va, D, t, &m->c0_head));
    CKH(upload1(f, "projection.weight", Dd, D, t, &m->proj));
    /* audio_head [nc-1, Dd, Va] is used as h @ A[i]: store each A[i] transposed, [Va, Dd] */
    int64_t ahs[3] = {nc - 1, Dd, Va};
    float *ah = st_load_f32(f, "audio_head", 3, ahs);
    if (!ah) return HM_ERR;
    size_t ne = (size_t)(nc - 1) * Dd * Va;
    float *tr = (float *)hm_malloc(sizeof(float) * ne);
    for (int i = 0; i < nc - 1; i++)
        for (int d = 0; d < Dd; d++)
            for (int v = 0; v < Va; v++)
                tr[((size_t)i * Va + v) * Dd + d] = ah[((size_t)i * Dd + d) * Va + v];
    free(ah);
    void *hb = tr;
    uint16_t *b16 = nullptr;
    if (t == HMC_BF16) {
        b16 = (uint16_t *)hm_malloc(2 * ne);
        for (size_t i = 0; i < ne; i++) b16[i] = hm_f32_to_bf16(tr[i]);
        hb = b16;
    }
    int rc = dev_alloc(&m->audio_head, ne * wsz(t));
    if (rc == HM_OK && cudaMemcpy(m->audio_head, hb, ne * wsz(t), cudaMemcpyHostToDevice) != cudaSuccess)
        rc = hm_err("%s:%d: upload of audio_head failed", __FILE__, __LINE__);
    free(tr);
    free(b16);
    return rc;
}

/* ---- random weights (benchmarks) ---- */
int rnd(void **p, size_t n, hmc_dtype t, uint64_t *seed, float scale)
{
    CKH(dev_alloc(p, n * wsz(t)));
    CKH(hmc_fill_random(*p, t, n, (*seed)++, scale, 0));
    return HM_OK;
}
int ones(float **p, int n)
{
    float *h = (float *)hm_malloc(sizeof(float) * n);
    for (int i = 0; i < n; i++) h[i] = 1.0f;
    int rc = dev_alloc((void **)p, sizeof(float) * n);
    if (rc == HM_OK && cudaMemcpy(*p, h, sizeof(float) * n, cudaMemcpyHostToDevice) != cudaSuccess)
        rc = hm_err("%s:%d: upload failed", __FILE__, __LINE__);
    free(h);
    return rc;
}
int random_xfm(xfm *X, hmc_dtype t, uint64_t *seed)
{
    for (int l = 0; l < X->f.num_layers; l++) {
        layer_w *L = &X->L[l];
        float sd = 1.0f / sqrtf((float)X->D), si = 1.0f / sqrtf((float)X->I);
        CKH(rnd(&L->wqkv, (size_t)X->qkvw * X->D, t, seed, sd));
        CKH(rnd(&L->wo, (size_t)X->D * X->H * X->hd, t, seed, sd));
        CKH(rnd(&L->w13, (size_t)2 * X->I * X->D, t, seed, sd));
        CKH(rnd(&L->w2, (size_t)X->D * X->I, t, seed, si));
        CKH(ones(&L->sa_norm, X->D));
        CKH(ones(&L->mlp_norm, X->D));
    }
    CKH(ones(&X->norm, X->D));
    return HM_OK;
}

int model_init(lm_cuda *m, const hm_lm_config *cfg, const lm_cuda_opts *o)
{
    m->cfg = *cfg;
    m->wdt = o ? o->wdt : HMC_BF16;
    if (m->wdt != HMC_BF16 && m->wdt != HMC_F32) return hm_err("lm_cuda: weight dtype must be bf16 or f32");
    if (cfg->audio_num_codebooks < 2 || cfg->audio_num_codebooks > 8)
        return hm_err("lm_cuda: %d codebooks (2..8 supported)", cfg->audio_num_codebooks);
    CKH(xfm_init(&m->bb, &cfg->backbone));
    CKH(xfm_init(&m->dec, &cfg->decoder));
    return HM_OK;
}

/* ---- the layer stack ---- */

/* One transformer layer over R = B*T rows of s->x.  Decode (gemv) for R <= 4, else cuBLASLt. */
int layer_fwd(lm_cuda_req *r, const xfm *X, int l, scratch *s, int B, int T, const int *pos_dev, int pos_add,
              void *kc, void *vc, int max_seq, int max_keys, int is_dec)
{
    const layer_w *L = &X->L[l];
    const hmc_dtype t = r->m->wdt;
    const int R = B * T, D = X->D, I = X->I, HD = X->H * X->hd;
    const float eps = X->f.norm_eps;
    const size_t ws = wsz(t);
    cudaStream_t st = r->st;
    const int gemm = R > 4;
    const int c0 = is_dec ? P_DEC_QKV - P_BB_QKV : 0;

    if (!gemm) {
        hmc_gemv_args g = {L->wqkv, t, X->qkvw, D, nullptr, s->x, D, R, HMC_IN_RMSNORM, L->sa_norm, eps,
                           s->qkv, X->qkvw, 0};
        OP(r, P_BB_QKV + c0, (double)X->qkvw * D * ws, hmc_gemv(&g, st));
    } else {
        CKH(hmc_rmsnorm(s->x, L->sa_norm, s->xn, t, R, D, eps, st));
        CKH(hmc_gemm(s->xn, L->wqkv, t, s->qkv, R, X->qkvw, D, 0, st));
    }
    hmc_rope_args ra = {s->qkv, B, T, X->H, X->KVH, X->hd, pos_dev, pos_add, X->freqs, kc, vc, t, max_seq};
    OP(r, P_BB_ROPE + c0, 0, hmc_rope_append(&ra, st));
    hmc_attn_args aa = {s->qkv, B, T, X->H, X->KVH, X->hd, pos_dev, pos_add, kc, vc, t, max_seq, max_keys,
                        s->att, s->work};
    OP(r, P_BB_ATTN + c0, 0, hmc_attention(&aa, st));
    if (!gemm) {
        hmc_gemv_args g = {L->wo, t, D, HD, nullptr, s->att, HD, R, HMC_IN_PLAIN, nullptr, 0.0f, s->x, D, 1};
        OP(r, P_BB_O + c0, (double)D * HD * ws, hmc_gemv(&g, st));
        hmc_gemv_args g13 = {L->w13, t, 2 * I, D, nullptr, s->x, D, R, HMC_IN_RMSNORM, L->mlp_norm, eps,
                             s->gu, I, 0, 0, 1};
        OP(r, P_BB_W13 + c0, (double)2 * I * D * ws, hmc_gemv(&g13, st));
        hmc_gemv_args g2 = {L->w2, t, D, I, nullptr, s->gu, I, R, HMC_IN_PLAIN, nullptr, 0.0f, s->x, D, 1};
        OP(r, P_BB_W2 + c0, (double)D * I * ws, hmc_gemv(&g2, st));
    } else {
        CKH(hmc_convert(s->att, s->xn, t, (size_t)R * HD, st));
        CKH(hmc_gemm(s->xn, L->wo, t, s->x, R, D, HD, 1, st));
        CKH(hmc_rmsnorm(s->x, L->mlp_norm, s->xn, t, R, D, eps, st));
        CKH(hmc_gemm(s->xn, L->w13, t, s->gu, R, 2 * I, D, 0, st));
        CKH(hmc_silu_mul(s->gu, s->xn, t, R, I, 1, st));
        CKH(hmc_gemm(s->xn, L->w2, t, s->x, R, D, I, 1, st));
    }
    return HM_OK;
}

void scratch_free(scratch *s)
{
    cudaFree(s->x), cudaFree(s->qkv), cudaFree(s->att), cudaFree(s->gu), cudaFree(s->work), cudaFree(s->xn);
    memset(s, 0, sizeof *s);
}

int scratch_alloc(scratch *s, const xfm *X, int B, int T, int max_keys, hmc_dtype t)
{
    scratch_free(s);
    const size_t R = (size_t)B * T;
    s->R = (int)R;
    CKH(dev_alloc((void **)&s->x, R * X->D * 4));
    CKH(dev_alloc((void **)&s->qkv, R * X->qkvw * 4));
    CKH(dev_alloc((void **)&s->att, R * X->H * X->hd * 4));
    CKH(dev_alloc((void **)&s->gu, R * 2 * X->I * 4));
    size_t xw = (size_t)HM_MAX(HM_MAX(X->D, X->I), X->H * X->hd);
    CKH(dev_alloc(&s->xn, R * xw * wsz(t)));
    s->work_bytes = hmc_attention_work_bytes(B, T, X->H, X->KVH, X->hd, max_keys);
    CKH(dev_alloc((void **)&s->work, s->work_bytes));
    CK(cudaMemset(s->work, 0, s->work_bytes)); /* attention merge counters start at 0 */
    return HM_OK;
}

/* backbone step over one frame (graph body) */
int extend_body(lm_cuda_req *r)
{
    lm_cuda *m = r->m;
    const xfm *X = &m->bb;
    scratch *s = &r->sd_bb;
    const hm_lm_config *c = &m->cfg;
    OP(r, P_EMBED, 0,
       hmc_embed_frame(r->codes_dev, r->B, c->audio_num_codebooks, c->audio_vocab_size, m->audio_emb, m->wdt, X->D,
                       s->x, r->st));
    for (int l = 0; l < X->f.num_layers; l++)
        CKH(layer_fwd(r, X, l, s, r->B, 1, r->pos_dev, 0, r->bk[l], r->bv[l], r->max_seq, r->max_seq, 0));
    OP(r, P_BB_NORM, 0, hmc_rmsnorm(s->x, X->norm, r->h_last, HMC_F32, r->B, X->D, X->f.norm_eps, r->st));
    CKH(hmc_add_counter(r->pos_dev, 1, r->st));
    return HM_OK;
}

/* codebook-0 head, sampling, depth decoder and audio heads (graph body) */
int frame_body(lm_cuda_req *r)
{
    lm_cuda *m = r->m;
    const xfm *X = &m->dec;
    const hm_lm_config *c = &m->cfg;
    const int B = r->B, D = m->bb.D, Dd = X->D, Va = c->audio_vocab_size, nc = c->audio_num_codebooks;
    const hmc_dtype t = m->wdt;
    const size_t ws = wsz(t);
    scratch *s = &r->sd_dec;
    cudaStream_t st = r->st;

    hmc_gemv_args g0 = {m->c0_head, t, Va, D, nullptr, r->h_last, D, B, HMC_IN_PLAIN, nullptr, 0.0f, r->logits, Va, 0};
    OP(r, P_C0, (double)Va * D * ws, hmc_gemv(&g0, st));
    OP(r, P_SAMPLE, 0,
       hmc_sample(r->logits, B, Va, r->prm_dev, r->rng_dev, 0, r->logits_out, r->codes_dev, st));
    for (int i = 1; i < nc; i++) {
        /* decoder input rows: step 1 feeds positions 0 (h) and 1 (codebook-0 embedding) per row */
        const int T = i == 1 ? 2 : 1;
        if (i == 1) {
            OP(r, P_DEC_IN, 0, hmc_copy_rows(r->h_last, D, r->stage, 2 * D, D, B, st));
            OP(r, P_DEC_IN, 0, hmc_embed_code(r->codes_dev, 0, Va, m->audio_emb, t, D, r->stage, 1, 2, B, st));
        } else {
            OP(r, P_DEC_IN, 0, hmc_embed_code(r->codes_dev, i - 1, Va, m->audio_emb, t, D, r->stage, 0, 1, B, st));
        }
        hmc_gemv_args gp = {m->proj, t, Dd, D, nullptr, r->stage, D, B * T, HMC_IN_PLAIN, nullptr, 0.0f, s->x, Dd, 0};
        OP(r, P_DEC_IN, (double)Dd * D * ws, hmc_gemv(&gp, st));
        const int pos_add = i == 1 ? 0 : i;
        for (int l = 0; l < X->f.num_layers; l++)
            CKH(layer_fwd(r, X, l, s, B, T, nullptr, pos_add, r->dk[l], r->dv[l], nc, nc, 1));
        /* last position of each row → final norm (fused) → audio head i-1 */
        hmc_gemv_args gh = {(const char *)m->audio_head + (size_t)(i - 1) * Va * Dd * ws, t, Va, Dd, nullptr,
                            s->x + (size_t)(T - 1) * Dd, T * Dd, B, HMC_IN_RMSNORM, X->norm, X->f.norm_eps,
                            r->logits, Va, 0};
        OP(r, P_HEADS, (double)Va * Dd * ws, hmc_gemv(&gh, st));
        OP(r, P_SAMPLE, 0,
           hmc_sample(r->logits, B, Va, r->prm_dev, r->rng_dev, i, r->logits_out + (size_t)i * Va, r->codes_dev,
                      st));
    }
    return HM_OK;
}

/* Run body eagerly the first time, record it into *g the second time, replay after that. */
int run_graph(lm_cuda_req *r, int *uses, cudaGraphExec_t *g, int (*body)(lm_cuda_req *))
{
    if (*uses == 0) {
        (*uses)++;
        return body(r);
    }
    if (!*g) {
        cudaGraph_t graph;
        CK(cudaStreamBeginCapture(r->st, cudaStreamCaptureModeThreadLocal));
        int rc = body(r);
        cudaError_t e = cudaStreamEndCapture(r->st, &graph);
        if (rc != HM_OK) return hm_err_ctx("%s:%d: while capturing", __FILE__, __LINE__);
        if (e != cudaSuccess) return hm_err("%s:%d: capture: %s", __FILE__, __LINE__, cudaGetErrorString(e));
        e = cudaGraphInstantiate(g, graph, 0);
        cudaGraphDestroy(graph);
        if (e != cudaSuccess) return hm_err("%s:%d: graph instantiate: %s", __FILE__, __LINE__, cudaGetErrorString(e));
    }
    CK(cudaGraphLaunch(*g, r->st));
    return HM_OK;
}

int set_params(lm_cuda_req *r, const lm_cuda_sampling *s)
{
    hmc_sample_params p;
    memset(&p, 0, sizeof p);
    p.temperature = s->temperature > 0 ? s->temperature : 1.0f;
    p.topk = s->topk;
    p.cfg_scale = s->cfg_scale;
    p.seed_lo = (uint32_t)s->seed, p.seed_hi = (uint32_t)(s->seed >> 32);
    for (int i = 0; i < 8; i++) p.forced[i] = s->forced && i < r->m->cfg.audio_num_codebooks ? s->forced[i] : -1;
    /* pageable source: the copy has consumed `p` when the call returns */
    CK(cudaMemcpyAsync(r->prm_dev, &p, sizeof p, cudaMemcpyHostToDevice, r->st));
    CK(cudaMemcpyAsync(r->rng_dev, &s->counter, sizeof s->counter, cudaMemcpyHostToDevice, r->st));
    return HM_OK;
}

} // namespace

/* ================================ public API ================================ */

extern "C" int lm_cuda_load(const char *model_dir, const lm_cuda_opts *opts, lm_cuda **out)
{
    *out = nullptr;
    hm_lm_config cfg;
    CKH(hm_lm_config_load(model_dir, opts ? opts->version : nullptr, &cfg));
    lm_cuda *m = (lm_cuda *)hm_calloc(1, sizeof *m);
    st_file *f = nullptr;
    if (model_init(m, &cfg, opts) != HM_OK || st_open(cfg.dir, &f) != HM_OK || load_weights(m, f) != HM_OK) {
        if (f) st_close(f);
        lm_cuda_free(m);
        return hm_err_ctx("lm_cuda_load '%s'", model_dir);
    }
    st_close(f);
    *out = m;
    return HM_OK;
}

extern "C" int lm_cuda_random(const hm_lm_config *cfg, uint64_t seed, const lm_cuda_opts *opts, lm_cuda **out)
{
    *out = nullptr;
    lm_cuda *m = (lm_cuda *)hm_calloc(1, sizeof *m);
    const int D = cfg->backbone.embed_dim, Dd = cfg->decoder.embed_dim, Va = cfg->audio_vocab_size,
              nc = cfg->audio_num_codebooks;
    int rc = model_init(m, cfg, opts);
    hmc_dtype t = m->wdt;
    float sD = 1.0f / sqrtf((float)D);
    if (rc == HM_OK) rc = random_xfm(&m->bb, t, &seed);
    if (rc == HM_OK) rc = random_xfm(&m->dec, t, &seed);
    if (rc == HM_OK) rc = rnd(&m->text_emb, (size_t)cfg->text_vocab_size * D, t, &seed, 1.0f);
    if (rc == HM_OK) rc = rnd(&m->audio_emb, (size_t)Va * nc * D, t, &seed, 1.0f);
    if (rc == HM_OK) rc = rnd(&m->uncond, (size_t)D, t, &seed, 1.0f);
    if (rc == HM_OK) rc = rnd((void **)&m->uncond_f32, (size_t)D, HMC_F32, &seed, 1.0f);
    if (rc == HM_OK) rc = rnd(&m->muq_w, (size_t)D * cfg->muq_dim, t, &seed, 0.05f);
    if (rc == HM_OK) rc = rnd((void **)&m->muq_b, (size_t)D, HMC_F32, &seed, 0.05f);
    if (rc == HM_OK) rc = rnd(&m->c0_head, (size_t)Va * D, t, &seed, sD);
    if (rc == HM_OK) rc = rnd(&m->proj, (size_t)Dd * D, t, &seed, sD);
    if (rc == HM_OK) rc = rnd(&m->audio_head, (size_t)(nc - 1) * Va * Dd, t, &seed, 1.0f / sqrtf((float)Dd));
    if (rc == HM_OK && cudaDeviceSynchronize() != cudaSuccess) rc = hm_err("%s:%d: random init failed", __FILE__, __LINE__);
    if (rc != HM_OK) {
        lm_cuda_free(m);
        return hm_err_ctx("lm_cuda_random");
    }
    *out = m;
    return HM_OK;
}

extern "C" void lm_cuda_free(lm_cuda *m)
{
    if (!m) return;
    xfm_free(&m->bb);
    xfm_free(&m->dec);
    cudaFree(m->text_emb), cudaFree(m->audio_emb), cudaFree(m->uncond), cudaFree(m->uncond_f32);
    cudaFree(m->muq_w), cudaFree(m->muq_b), cudaFree(m->c0_head), cudaFree(m->proj), cudaFree(m->audio_head);
    free(m);
}

extern "C" void lm_cuda_set_skip(lm_cuda *m, unsigned mask) { m->skip = mask; }

extern "C" const hm_lm_config *lm_cuda_config(const lm_cuda *m) { return &m->cfg; }

static double xfm_bytes(const xfm *X, size_t ws)
{
    double per = (double)X->qkvw * X->D + (double)X->D * X->H * X->hd + 3.0 * X->I * X->D;
    return per * X->f.num_layers * ws;
}

extern "C" double lm_cuda_frame_bytes(const lm_cuda *m)
{
    const hm_lm_config *c = &m->cfg;
    size_t ws = wsz(m->wdt);
    double heads = ((double)c->audio_vocab_size * m->bb.D + (double)(c->audio_num_codebooks - 1) *
                    (c->audio_vocab_size * m->dec.D + (double)m->dec.D * m->bb.D)) * ws;
    return xfm_bytes(&m->bb, ws) + (c->audio_num_codebooks - 1) * xfm_bytes(&m->dec, ws) + heads;
}

extern "C" int lm_cuda_req_new(lm_cuda *m, int B, int max_seq, lm_cuda_req **out)
{
    *out = nullptr;
    if (B != 1 && B != 2) return hm_err("lm_cuda_req_new: B = %d (1 or 2)", B);
    if (max_seq <= 0 || max_seq > m->cfg.backbone.max_seq_len)
        return hm_err("lm_cuda_req_new: max_seq %d not in 1..%d", max_seq, m->cfg.backbone.max_seq_len);
    lm_cuda_req *r = (lm_cuda_req *)hm_calloc(1, sizeof *r);
    r->m = m, r->B = B, r->max_seq = max_seq;
    const hm_lm_config *c = &m->cfg;
    const size_t ws = wsz(m->wdt);
    const int nc = c->audio_num_codebooks, Va = c->audio_vocab_size;
    int rc = HM_OK;
#define TRY(x) \
    if (rc == HM_OK) rc = (x)
    TRY(cudaStreamCreateWithFlags(&r->st, cudaStreamNonBlocking) == cudaSuccess
            ? HM_OK
            : hm_err("%s:%d: stream create failed", __FILE__, __LINE__));
    const int Lb = m->bb.f.num_layers, Ld = m->dec.f.num_layers;
    r->bk = (void **)hm_calloc(Lb, sizeof(void *));
    r->bv = (void **)hm_calloc(Lb, sizeof(void *));
    r->dk = (void **)hm_calloc(Ld, sizeof(void *));
    r->dv = (void **)hm_calloc(Ld, sizeof(void *));
    size_t bcache = (size_t)B * m->bb.KVH * max_seq * m->bb.hd * ws;
    size_t dcache = (size_t)B * m->dec.KVH * nc * m->dec.hd * ws;
    for (int l = 0; l < Lb; l++) {
        TRY(dev_alloc(&r->bk[l], bcache));
        TRY(dev_alloc(&r->bv[l], bcache));
    }
    for (int l = 0; l < Ld; l++) {
        TRY(dev_alloc(&r->dk[l], dcache));
        TRY(dev_alloc(&r->dv[l], dcache));
    }
    TRY(dev_alloc((void **)&r->pos_dev, sizeof(int)));
    TRY(dev_alloc((void **)&r->rng_dev, sizeof(uint32_t)));
    TRY(dev_alloc((void **)&r->prm_dev, sizeof(hmc_sample_params)));
    TRY(dev_alloc((void **)&r->codes_dev, sizeof(int32_t) * 8));
    TRY(dev_alloc((void **)&r->h_last, sizeof(float) * B * m->bb.D));
    TRY(dev_alloc((void **)&r->logits, sizeof(float) * B * Va));
    TRY(dev_alloc((void **)&r->logits_out, sizeof(float) * nc * Va));
    TRY(dev_alloc((void **)&r->stage, sizeof(float) * 2 * B * m->bb.D));
    TRY(dev_alloc((void **)&r->muq_dev, sizeof(float) * HM_MAX(c->muq_dim, 1)));
    TRY(scratch_alloc(&r->sd_bb, &m->bb, B, 1, max_seq, m->wdt));
    TRY(scratch_alloc(&r->sd_dec, &m->dec, B, 2, nc, m->wdt));
    if (rc == HM_OK && cudaMemset(r->pos_dev, 0, sizeof(int)) != cudaSuccess)
        rc = hm_err("%s:%d: memset failed", __FILE__, __LINE__);
    if (rc == HM_OK && cudaMemset(r->codes_dev, 0, sizeof(int32_t) * 8) != cudaSuccess)
        rc = hm_err("%s:%d: memset failed", __FILE__, __LINE__);
#undef TRY
    if (rc != HM_OK) {
        lm_cuda_req_free(r);
        return hm_err_ctx("lm_cuda_req_new");
    }
    *out = r;
    return HM_OK;
}

extern "C" void lm_cuda_req_free(lm_cuda_req *r)
{
    if (!r) return;
    if (r->st) cudaStreamSynchronize(r->st);
    if (r->g_extend) cudaGraphExecDestroy(r->g_extend);
    if (r->g_frame) cudaGraphExecDestroy(r->g_frame);
    for (int l = 0; r->bk && l < r->m->bb.f.num_layers; l++) cudaFree(r->bk[l]), cudaFree(r->bv[l]);
    for (int l = 0; r->dk && l < r->m->dec.f.num_layers; l++) cudaFree(r->dk[l]), cudaFree(r->dv[l]);
    free(r->bk), free(r->bv), free(r->dk), free(r->dv);
    cudaFree(r->pos_dev), cudaFree(r->rng_dev), cudaFree(r->prm_dev), cudaFree(r->codes_dev);
    cudaFree(r->h_last), cudaFree(r->logits), cudaFree(r->logits_out), cudaFree(r->stage), cudaFree(r->muq_dev);
    cudaFree(r->tok_dev), cudaFree(r->mask_dev);
    scratch_free(&r->sd_bb), scratch_free(&r->sd_dec), scratch_free(&r->sp);
    if (r->st) cudaStreamDestroy(r->st);
    free(r->prof);
    free(r);
}

extern "C" int lm_cuda_pos(const lm_cuda_req *r) { return r->pos; }
extern "C" const float *lm_cuda_hidden(const lm_cuda_req *r) { return r->h_last; }

extern "C" int lm_cuda_prefill(lm_cuda_req *r, const int32_t *tok, const uint8_t *mask, int S, int muq_index,
                               const float *muq)
{
    lm_cuda *m = r->m;
    const hm_lm_config *c = &m->cfg;
    const xfm *X = &m->bb;
    const int B = r->B, D = X->D, nc = c->audio_num_codebooks, Va = c->audio_vocab_size;
    if (S <= 0) return hm_err("lm_cuda_prefill: empty prompt");
    if (r->pos + S > r->max_seq) return hm_err("lm_cuda_prefill: %d + %d positions exceed %d", r->pos, S, r->max_seq);
    if (muq_index >= S) return hm_err("lm_cuda_prefill: muq slot %d outside %d rows", muq_index, S);
    for (int i = 0; i < S * (nc + 1); i++) {
        int k = i % (nc + 1);
        int lim = k < nc ? Va : c->text_vocab_size;
        if (mask[i] && (tok[i] < 0 || tok[i] >= lim))
            return hm_err("lm_cuda_prefill: row %d column %d: token %d outside 0..%d", i / (nc + 1), k, tok[i], lim - 1);
    }
    if (S > r->tok_cap) {
        cudaFree(r->tok_dev), cudaFree(r->mask_dev);
        CKH(dev_alloc((void **)&r->tok_dev, sizeof(int32_t) * S * (nc + 1)));
        CKH(dev_alloc((void **)&r->mask_dev, (size_t)S * (nc + 1)));
        r->tok_cap = S;
    }
    const int P = HM_MIN(S, PREFILL_CHUNK);
    if (r->sp.R < B * P) CKH(scratch_alloc(&r->sp, X, B, P, r->max_seq, m->wdt));
    CK(cudaMemcpyAsync(r->tok_dev, tok, sizeof(int32_t) * S * (nc + 1), cudaMemcpyHostToDevice, r->st));
    CK(cudaMemcpyAsync(r->mask_dev, mask, (size_t)S * (nc + 1), cudaMemcpyHostToDevice, r->st));
    if (muq) CK(cudaMemcpyAsync(r->muq_dev, muq, sizeof(float) * c->muq_dim, cudaMemcpyHostToDevice, r->st));
    scratch *s = &r->sp;
    for (int s0 = 0; s0 < S; s0 += P) {
        const int T = HM_MIN(P, S - s0);
        CKH(hmc_embed_prompt(r->tok_dev + (size_t)s0 * (nc + 1), r->mask_dev + (size_t)s0 * (nc + 1), T, B, nc, Va,
                             m->audio_emb, m->text_emb, B == 2 ? m->uncond : nullptr, m->wdt, D, s->x, r->st));
        if (muq_index >= s0 && muq_index < s0 + T) {
            float *row0 = s->x + (size_t)(muq_index - s0) * D;
            CKH(hmc_copy_rows(m->muq_b, D, row0, D, D, 1, r->st));
            if (muq) {
                hmc_gemv_args g = {m->muq_w, m->wdt, D, c->muq_dim, nullptr, r->muq_dev, c->muq_dim, 1, HMC_IN_PLAIN,
                                   nullptr, 0.0f, row0, D, 1};
                CKH(hmc_gemv(&g, r->st));
            }
            if (B == 2) CKH(hmc_copy_rows(m->uncond_f32, D, row0 + (size_t)T * D, D, D, 1, r->st));
        }
        for (int l = 0; l < X->f.num_layers; l++)
            CKH(layer_fwd(r, X, l, s, B, T, nullptr, r->pos + s0, r->bk[l], r->bv[l], r->max_seq, r->pos + s0 + T, 0));
        if (s0 + T == S) {
            CKH(hmc_copy_rows(s->x + (size_t)(T - 1) * D, T * D, r->stage, D, D, B, r->st));
            CKH(hmc_rmsnorm(r->stage, X->norm, r->h_last, HMC_F32, B, D, X->f.norm_eps, r->st));
        }
    }
    r->pos += S;
    CK(cudaMemcpyAsync(r->pos_dev, &r->pos, sizeof(int), cudaMemcpyHostToDevice, r->st));
    CK(cudaStreamSynchronize(r->st));
    return HM_OK;
}

extern "C" int lm_cuda_extend(lm_cuda_req *r, const int32_t *codes)
{
    const hm_lm_config *c = &r->m->cfg;
    if (r->pos >= r->max_seq) return hm_err("lm_cuda_extend: cache full (%d positions)", r->max_seq);
    if (codes) {
        for (int k = 0; k < c->audio_num_codebooks; k++)
            if (codes[k] < 0 || codes[k] >= c->audio_vocab_size)
                return hm_err("lm_cuda_extend: code %d of codebook %d outside 0..%d", codes[k], k,
                              c->audio_vocab_size - 1);
        CK(cudaMemcpyAsync(r->codes_dev, codes, sizeof(int32_t) * c->audio_num_codebooks, cudaMemcpyHostToDevice,
                           r->st));
    }
    CKH(run_graph(r, &r->uses_extend, &r->g_extend, extend_body));
    r->pos++;
    return HM_OK;
}

extern "C" int lm_cuda_rollback(lm_cuda_req *r, int n)
{
    if (n < 0 || n > r->pos) return hm_err("lm_cuda_rollback: %d of %d positions", n, r->pos);
    r->pos -= n;
    CK(cudaMemcpyAsync(r->pos_dev, &r->pos, sizeof(int), cudaMemcpyHostToDevice, r->st));
    return HM_OK;
}

extern "C" int lm_cuda_frame(lm_cuda_req *r, const lm_cuda_sampling *s, int32_t *codes, float *logits)
{
    const hm_lm_config *c = &r->m->cfg;
    if (r->pos == 0) return hm_err("lm_cuda_frame: no hidden state (prefill first)");
    CKH(set_params(r, s));
    CKH(run_graph(r, &r->uses_frame, &r->g_frame, frame_body));
    CK(cudaMemcpyAsync(codes, r->codes_dev, sizeof(int32_t) * c->audio_num_codebooks, cudaMemcpyDeviceToHost, r->st));
    if (logits)
        CK(cudaMemcpyAsync(logits, r->logits_out, sizeof(float) * c->audio_num_codebooks * c->audio_vocab_size,
                           cudaMemcpyDeviceToHost, r->st));
    CK(cudaStreamSynchronize(r->st));
    return HM_OK;
}

extern "C" int lm_cuda_precision(const char *precision, hmc_dtype *out)
{
    if (!precision || !precision[0] || !strcmp(precision, "bf16")) *out = HMC_BF16;
    else if (!strcmp(precision, "fp32")) *out = HMC_F32;
    else return hm_err("precision '%s': the cuda language model supports bf16 and fp32", precision);
    return HM_OK;
}

extern "C" void *lm_cuda_stream(const lm_cuda_req *r) { return (void *)r->st; }

extern "C" int lm_cuda_copy_hidden(lm_cuda_req *r, float *dst)
{
    CK(cudaMemcpyAsync(dst, r->h_last, sizeof(float) * r->B * r->m->bb.D, cudaMemcpyDeviceToDevice, r->st));
    return HM_OK;
}

extern "C" int lm_cuda_depth_frame(lm_cuda_req *r, const float *h, const lm_cuda_sampling *s, int32_t *codes,
                                   float *logits)
{
    const hm_lm_config *c = &r->m->cfg;
    /* into h_last, the address the recorded frame graph reads */
    CK(cudaMemcpyAsync(r->h_last, h, sizeof(float) * r->B * r->m->bb.D, cudaMemcpyDeviceToDevice, r->st));
    CKH(set_params(r, s));
    CKH(run_graph(r, &r->uses_frame, &r->g_frame, frame_body));
    CK(cudaMemcpyAsync(codes, r->codes_dev, sizeof(int32_t) * c->audio_num_codebooks, cudaMemcpyDeviceToHost, r->st));
    if (logits)
        CK(cudaMemcpyAsync(logits, r->logits_out, sizeof(float) * c->audio_num_codebooks * c->audio_vocab_size,
                           cudaMemcpyDeviceToHost, r->st));
    CK(cudaStreamSynchronize(r->st));
    return HM_OK;
}

extern "C" int lm_cuda_profile_frame(lm_cuda_req *r, const lm_cuda_sampling *s, lm_cuda_prof *out)
{
    memset(out, 0, sizeof *out);
    if (r->pos == 0 || r->pos >= r->max_seq) return hm_err("lm_cuda_profile_frame: needs 1..max_seq-1 positions");
    if (!r->prof) {
        r->prof = (prof_state *)hm_calloc(1, sizeof(prof_state));
        for (int i = 0; i < 8192; i++) CK(cudaEventCreate(&r->prof->ev[i]));
    }
    prof_state *ps = r->prof;
    ps->n = 0;
    ps->on = 1;
    CKH(set_params(r, s));
    int rc = frame_body(r);
    if (rc == HM_OK) rc = extend_body(r);
    ps->on = 0;
    if (rc != HM_OK) return rc;
    r->pos++;
    CK(cudaStreamSynchronize(r->st));
    out->n = P_COUNT;
    for (int i = 0; i < P_COUNT; i++) out->name[i] = P_NAMES[i];
    for (int i = 0; i < ps->n; i++) {
        float ms;
        CK(cudaEventElapsedTime(&ms, ps->ev[2 * i], ps->ev[2 * i + 1]));
        out->ms[ps->cat[i]] += ms;
        out->bytes[ps->cat[i]] += ps->bytes[i];
    }
    return HM_OK;
}
