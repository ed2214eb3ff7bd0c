/* llama_block.c - torchtune llama3.2 decoder layers on the CPU (see llama_block.h). */
#include "llama_block.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hm.h"
#include "ops_cpu.h"

static const char *const k_layer_parts[] = {
    "sa_norm.scale",  "attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight",
    "attn.output_proj.weight", "mlp_norm.scale", "mlp.w1.weight", "mlp.w3.weight",
    "mlp.w2.weight",
};

int llama_tensor_names(const char *prefix, int num_layers, char ***names)
{
    int n = num_layers * (int)HM_ARRAY_LEN(k_layer_parts) + 1, i = 0;
    char **v = hm_calloc((size_t)n, sizeof(char *));
    char buf[512];
    for (int l = 0; l < num_layers; l++)
        for (size_t p = 0; p < HM_ARRAY_LEN(k_layer_parts); p++) {
            snprintf(buf, sizeof buf, "%slayers.%d.%s", prefix, l, k_layer_parts[p]);
            v[i++] = hm_strdup(buf);
        }
    snprintf(buf, sizeof buf, "%snorm.scale", prefix);
    v[i++] = hm_strdup(buf);
    *names = v;
    return n;
}

static float *load2(st_file *f, const char *prefix, int l, const char *part, int64_t a, int64_t b)
{
    char name[512];
    snprintf(name, sizeof name, "%slayers.%d.%s", prefix, l, part);
    /* a file of tools/quantize: its e4m3 bytes would convert without their scales */
    const st_tensor *t = st_find(f, name);
    if (t && (t->dtype == ST_F8_E4M3 || t->dtype == ST_U8)) {
        hm_err("tensor '%s' is quantised (%s, tools/quantize): only the cuda backend loads quantised weights", name,
               st_dtype_name(t->dtype));
        return NULL;
    }
    if (b < 0) return st_load_f32(f, name, 1, (int64_t[]){a});
    return st_load_f32(f, name, 2, (int64_t[]){a, b});
}

int llama_load(st_file *f, const char *prefix, const hm_flavor *fl, llama_stack *out)
{
    memset(out, 0, sizeof *out);
    if (fl->num_heads <= 0 || fl->num_kv_heads <= 0 || fl->embed_dim <= 0 || fl->num_layers <= 0 ||
        fl->intermediate_dim <= 0 || fl->embed_dim % fl->num_heads != 0 ||
        fl->num_heads % fl->num_kv_heads != 0 || (fl->embed_dim / fl->num_heads) % 2 != 0)
        return hm_err("flavor '%s': unusable sizes (embed %d, heads %d, kv heads %d, layers %d)",
                      fl->name, fl->embed_dim, fl->num_heads, fl->num_kv_heads, fl->num_layers);
    out->fl = *fl;
    out->D = fl->embed_dim;
    out->H = fl->num_heads;
    out->KVH = fl->num_kv_heads;
    out->hd = fl->embed_dim / fl->num_heads;
    out->ffn = fl->intermediate_dim;
    out->L = fl->num_layers;
    const int D = out->D, qd = out->H * out->hd, kvd = out->KVH * out->hd, F = out->ffn;
    out->layers = hm_calloc((size_t)out->L, sizeof(llama_layer));
    for (int l = 0; l < out->L; l++) {
        llama_layer *y = &out->layers[l];
        if (!(y->sa_norm = load2(f, prefix, l, "sa_norm.scale", D, -1)) ||
            !(y->wq = load2(f, prefix, l, "attn.q_proj.weight", qd, D)) ||
            !(y->wk = load2(f, prefix, l, "attn.k_proj.weight", kvd, D)) ||
            !(y->wv = load2(f, prefix, l, "attn.v_proj.weight", kvd, D)) ||
            !(y->wo = load2(f, prefix, l, "attn.output_proj.weight", D, qd)) ||
            !(y->mlp_norm = load2(f, prefix, l, "mlp_norm.scale", D, -1)) ||
            !(y->w1 = load2(f, prefix, l, "mlp.w1.weight", F, D)) ||
            !(y->w3 = load2(f, prefix, l, "mlp.w3.weight", F, D)) ||
            !(y->w2 = load2(f, prefix, l, "mlp.w2.weight", D, F)))
            goto err;
    }
    char name[512];
    snprintf(name, sizeof name, "%snorm.scale", prefix);
    if (!(out->norm = st_load_f32(f, name, 1, (int64_t[]){D}))) goto err;
    out->freqs = hm_malloc(sizeof(float) * (size_t)(out->hd / 2));
    cpu_rope_freqs(out->freqs, out->hd, fl->rope_base, fl->rope_scale_factor);
    return HM_OK;
err:
    llama_free(out);
    return HM_ERR;
}

void llama_free(llama_stack *s)
{
    if (s->layers)
        for (int l = 0; l < s->L; l++) {
            llama_layer *y = &s->layers[l];
            free(y->sa_norm); free(y->wq); free(y->wk); free(y->wv); free(y->wo);
            free(y->mlp_norm); free(y->w1); free(y->w3); free(y->w2);
        }
    free(s->layers);
    free(s->norm);
    free(s->freqs);
    memset(s, 0, sizeof *s);
}

void llama_scratch_reserve(llama_scratch *ws, const llama_stack *s, int rows)
{
    if (rows <= ws->rows) return;
    llama_scratch_free(ws);
    size_t r = (size_t)rows, qd = (size_t)s->H * s->hd, kvd = (size_t)s->KVH * s->hd;
    ws->rows = rows;
    ws->x2 = hm_malloc(sizeof(float) * r * s->D);
    ws->n = hm_malloc(sizeof(float) * r * s->D);
    ws->q = hm_malloc(sizeof(float) * r * qd);
    ws->k = hm_malloc(sizeof(float) * r * kvd);
    ws->v = hm_malloc(sizeof(float) * r * kvd);
    ws->att = hm_malloc(sizeof(float) * r * qd);
    ws->g = hm_malloc(sizeof(float) * r * s->ffn);
    ws->u = hm_malloc(sizeof(float) * r * s->ffn);
}

void llama_scratch_free(llama_scratch *ws)
{
    free(ws->x2); free(ws->n); free(ws->q); free(ws->k); free(ws->v); free(ws->att);
    free(ws->g); free(ws->u);
    memset(ws, 0, sizeof *ws);
}


void llama_forward(const llama_stack *s, float *x, int B, int T, int pos0, float *kcache,
                   float *vcache, int cap, llama_scratch *ws)
{
    const int D = s->D, H = s->H, KVH = s->KVH, hd = s->hd, F = s->ffn, M = B * T;
    const int qd = H * hd, kvd = KVH * hd;
    const float eps = s->fl.norm_eps;
    llama_scratch_reserve(ws, s, M);
    const size_t row_cache = (size_t)cap * kvd; /* one batch row of one layer */
    for (int l = 0; l < s->L; l++) {
        const llama_layer *y = &s->layers[l];
        float *kc = kcache + (size_t)l * B * row_cache, *vc = vcache + (size_t)l * B * row_cache;
        cpu_rmsnorm(x, y->sa_norm, ws->n, M, D, eps);
        cpu_linear(ws->n, y->wq, NULL, ws->q, M, D, qd);
        cpu_linear(ws->n, y->wk, NULL, ws->k, M, D, kvd);
        cpu_linear(ws->n, y->wv, NULL, ws->v, M, D, kvd);
        for (int b = 0; b < B; b++) {
            float *qb = ws->q + (size_t)b * T * qd, *kb = ws->k + (size_t)b * T * kvd;
            cpu_rope_interleaved(qb, T, H, hd, pos0, s->freqs);
            cpu_rope_interleaved(kb, T, KVH, hd, pos0, s->freqs);
            float *kcb = kc + (size_t)b * row_cache, *vcb = vc + (size_t)b * row_cache;
            memcpy(kcb + (size_t)pos0 * kvd, kb, sizeof(float) * (size_t)T * kvd);
            memcpy(vcb + (size_t)pos0 * kvd, ws->v + (size_t)b * T * kvd,
                   sizeof(float) * (size_t)T * kvd);
            cpu_attention(qb, kcb, vcb, ws->att + (size_t)b * T * qd, T, pos0 + T, H, KVH, hd, 1,
                          pos0);
        }
        cpu_linear(ws->att, y->wo, NULL, ws->x2, M, qd, D);
        for (size_t i = 0; i < (size_t)M * D; i++) x[i] += ws->x2[i];
        cpu_rmsnorm(x, y->mlp_norm, ws->n, M, D, eps);
        cpu_linear(ws->n, y->w1, NULL, ws->g, M, D, F);
        cpu_linear(ws->n, y->w3, NULL, ws->u, M, D, F);
        cpu_silu_mul(ws->g, ws->u, (size_t)M * F);
        cpu_linear(ws->g, y->w2, NULL, ws->x2, M, F, D);
        for (size_t i = 0; i < (size_t)M * D; i++) x[i] += ws->x2[i];
    }
}

void llama_final_norm(const llama_stack *s, const float *x, float *y, int M)
{
    cpu_rmsnorm(x, s->norm, y, M, s->D, s->fl.norm_eps);
}
