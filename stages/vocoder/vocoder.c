/* vocoder.c - the scalar-model decoder (see vocoder.h).  Activations are channel-major [C, T]
 * per batch row; every conv goes through kernels/conv1d (GEMMs for wide layers, vectorised
 * direct loops for the narrow, long ones). */
#include "vocoder.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conv1d.h"
#include "hm.h"
#include "safetensors.h"
#include "stage.h"

const int voc_dilations[VOC_RES_UNITS] = {1, 3, 5, 7, 9};

/* ---- loading ------------------------------------------------------------------------------ */

/* Fold weight norm: w[r] = g[r] * v[r] / ||v[r]|| over slices of dim 0 (rows of `inner` values). */
static void fold_weight_norm(const float *g, const float *v, int rows, size_t inner, float *w)
{
    for (int r = 0; r < rows; r++) {
        const float *vr = v + (size_t)r * inner;
        double ss = 0.0;
        for (size_t i = 0; i < inner; i++) ss += (double)vr[i] * vr[i];
        float s = g[r] / (float)sqrt(ss);
        for (size_t i = 0; i < inner; i++) w[(size_t)r * inner + i] = vr[i] * s;
    }
}

/* Where the weights come from: a checkpoint (f), or a seeded random draw (f NULL). */
typedef struct {
    st_file *f;
    uint64_t rng;
    int bf16_exact;
} voc_src;

/* uniform(-1, 1) from a xorshift64 stream */
static float src_uniform(voc_src *s)
{
    s->rng ^= s->rng << 13, s->rng ^= s->rng >> 7, s->rng ^= s->rng << 17;
    return (float)((s->rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

static float *src_random(voc_src *s, size_t n, float scale, float offset)
{
    float *v = hm_malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) {
        v[i] = offset + scale * src_uniform(s);
        if (s->bf16_exact) v[i] = hm_bf16_to_f32(hm_f32_to_bf16(v[i]));
    }
    return v;
}

/* Load `prefix`'s weight of shape [d0, d1, k]: a weight-norm pair under either naming, or plain.
 * Returns an owned array in the checkpoint layout, NULL with an error naming the tensors.
 * Random source: uniform(-rscale, rscale). */
static float *load_weight(voc_src *src, const char *prefix, int d0, int d1, int k, float rscale)
{
    st_file *f = src->f;
    if (!f) return src_random(src, (size_t)d0 * d1 * k, rscale, 0.0f);
    char gn[300], vn[300];
    const char *pairs[2][2] = {{"parametrizations.weight.original0", "parametrizations.weight.original1"},
                               {"weight_g", "weight_v"}};
    const int64_t vs[3] = {d0, d1, k}, gs[3] = {d0, 1, 1};
    for (int p = 0; p < 2; p++) {
        snprintf(gn, sizeof gn, "%s.%s", prefix, pairs[p][0]);
        snprintf(vn, sizeof vn, "%s.%s", prefix, pairs[p][1]);
        if (!st_find(f, vn)) continue;
        float *v = st_load_f32(f, vn, 3, vs);
        float *g = v ? st_load_f32(f, gn, 3, gs) : NULL;
        if (!g) {
            free(v);
            return NULL;
        }
        float *w = hm_malloc(sizeof(float) * (size_t)d0 * d1 * k);
        fold_weight_norm(g, v, d0, (size_t)d1 * k, w);
        free(g);
        free(v);
        return w;
    }
    snprintf(vn, sizeof vn, "%s.weight", prefix);
    if (!st_find(f, vn)) {
        hm_err("tensor '%s.parametrizations.weight.original1' (or '%s.weight_v' / '%s.weight') missing from the checkpoint",
               prefix, prefix, prefix);
        return NULL;
    }
    return st_load_f32(f, vn, 3, vs);
}

static float *load_bias(voc_src *src, const char *prefix, int n)
{
    if (!src->f) return src_random(src, (size_t)n, 0.05f, 0.0f);
    char bn[300];
    snprintf(bn, sizeof bn, "%s.bias", prefix);
    return st_load_f32(src->f, bn, 1, (const int64_t[]){n});
}

/* Random weights: uniform(±gain·sqrt(3 / fan_in)), i.e. variance gain² / fan_in. */
static float rand_scale(int fan_in, float gain) { return gain * sqrtf(3.0f / (float)fan_in); }

static int load_conv(voc_src *src, voc_conv *c, int causal, int cin, int cout, int k, int dil, float gain,
                     const char *fmt, ...) __attribute__((format(printf, 9, 10)));
static int load_conv(voc_src *src, voc_conv *c, int causal, int cin, int cout, int k, int dil, float gain,
                     const char *fmt, ...)
{
    char prefix[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    c->cin = cin;
    c->cout = cout;
    c->k = k;
    c->dil = dil;
    int span = dil * (k - 1);
    c->pad_l = causal ? span : span / 2;
    c->pad_r = causal ? 0 : span / 2;
    float *w = load_weight(src, prefix, cout, cin, k, rand_scale(cin * k, gain));
    if (!w) return HM_ERR;
    c->w = hm_malloc(sizeof(float) * (size_t)cout * cin * k);
    conv1d_to_tap_major(w, cout, cin, k, c->w);
    free(w);
    c->b = load_bias(src, prefix, cout);
    return c->b ? HM_OK : HM_ERR;
}

static int load_prelu(voc_src *src, float *a, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int load_prelu(voc_src *src, float *a, const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    float *p = src->f ? st_load_f32(src->f, name, 1, (const int64_t[]){1}) : src_random(src, 1, 0.1f, 0.2f);
    if (!p) return HM_ERR;
    *a = p[0];
    free(p);
    return HM_OK;
}

static void free_conv(voc_conv *c)
{
    free(c->w);
    free(c->b);
}

/* The scalar-model config checks shared by voc_load and voc_init_random. */
static int check_config(const hm_codec_config *c)
{
    if (!c->causal) return hm_err("%s/config.json: only the causal scalar model (\"causal\": true) is supported", c->dir);
    if (c->num_bands != 1) return hm_err("%s/config.json: num_bands %d, only 1 is supported", c->dir, c->num_bands);
    if (c->num_samples < 1) return hm_err("%s/config.json: num_samples %d must be >= 1", c->dir, c->num_samples);
    if (c->n_up < 0 || c->n_up > 8) return hm_err("%s/config.json: %d upsampling blocks (at most 8)", c->dir, c->n_up);
    for (int i = 0; i < c->n_up; i++)
        if (c->upsample_kernel_sizes[i] != 2 * c->upsample_factors[i])
            return hm_err("%s/config.json: upsample kernel %d must be twice its factor %d (causal transposed conv)", c->dir,
                          c->upsample_kernel_sizes[i], c->upsample_factors[i]);
    if (((long)c->init_channel << c->n_up) > (1 << 20))
        return hm_err("%s/config.json: init_channel %d x 2^%d is too wide", c->dir, c->init_channel, c->n_up);
    return HM_OK;
}

/* Fill m's layers from src (m->cfg set).  On error the partly built model is for voc_free. */
static int build(voc_model *m, voc_src *src)
{
    const hm_codec_config *c = &m->cfg;
    const char *D = "scalar_model.decoder";
    int ch = c->init_channel << c->n_up;
    m->n_up = c->n_up;
    m->hop = c->num_samples;
    int rc = load_conv(src, &m->first, 0, c->latent_hidden_dim, ch, c->delay_kernel_size, 1, 1.0f, "%s.0", D);
    for (int i = 0; !rc && i < c->n_up; i++) {
        voc_block *b = &m->blk[i];
        int co = ch / 2, s = c->upsample_factors[i], k = c->upsample_kernel_sizes[i];
        char prefix[128];
        snprintf(prefix, sizeof prefix, "%s.%d.up_conv.layer", D, i + 1);
        b->up = (voc_tconv){.cin = ch, .cout = co, .k = k, .s = s};
        /* each output of the transposed conv sums cin inputs over k / s taps */
        b->up.w = load_weight(src, prefix, ch, co, k, rand_scale(ch * k / s, 1.0f));
        if (!b->up.w) {
            rc = HM_ERR;
            break;
        }
        b->up.b = load_bias(src, prefix, co);
        if (!b->up.b) rc = HM_ERR;
        for (int r = 0; !rc && r < VOC_RES_UNITS; r++) {
            voc_res *u = &b->res[r];
            /* random: a small residual branch gain keeps 25 units from blowing the stream up */
            rc = load_conv(src, &u->c1, 1, co, co, c->res_kernel_size, voc_dilations[r], 1.0f, "%s.%d.convs.%d.conv1", D,
                           i + 1, r) ||
                 load_conv(src, &u->c2, 1, co, co, 1, 1, 0.5f, "%s.%d.convs.%d.conv2", D, i + 1, r) ||
                 load_prelu(src, &u->a1, "%s.%d.convs.%d.activation1.weight", D, i + 1, r) ||
                 load_prelu(src, &u->a2, "%s.%d.convs.%d.activation2.weight", D, i + 1, r);
        }
        ch = co;
        m->hop *= s;
    }
    int idx = c->n_up + 1;
    if (!rc && c->num_samples > 1) {
        m->has_post = 1;
        m->post_rep = c->num_samples;
        rc = load_conv(src, &m->post, 1, ch, ch, c->default_kernel_size, 1, 1.0f, "%s.%d.conv", D, idx) ||
             load_prelu(src, &m->post_a, "%s.%d.activation.weight", D, idx);
        idx++;
    }
    if (!rc) rc = load_conv(src, &m->last, 1, ch, c->num_bands, c->default_kernel_size, 1, 1.0f, "%s.%d", D, idx);
    return rc;
}

int voc_load(const char *model_dir, voc_model **out)
{
    *out = NULL;
    voc_model *m = hm_calloc(1, sizeof *m);
    hm_codec_config *c = &m->cfg;
    if (hm_codec_config_load(model_dir, c) || check_config(c)) {
        free(m);
        return HM_ERR;
    }
    voc_src src = {0};
    if (st_open(c->dir, &src.f)) {
        free(m);
        return hm_err_ctx("vocoder");
    }
    if (build(m, &src)) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", hm_errmsg());
        st_close(src.f);
        voc_free(m);
        return hm_err("vocoder (%s): %s", model_dir, msg);
    }
    static const char *const ignore[] = {"flow_matching.", "scalar_model.encoder."};
    st_report_unused(src.f, ignore, HM_ARRAY_LEN(ignore));
    st_close(src.f);
    *out = m;
    return HM_OK;
}

int voc_init_random(const hm_codec_config *cfg, uint64_t seed, int bf16_exact, voc_model **out)
{
    *out = NULL;
    voc_model *m = hm_calloc(1, sizeof *m);
    m->cfg = *cfg;
    if (check_config(&m->cfg)) {
        free(m);
        return HM_ERR;
    }
    voc_src src = {NULL, seed * 0x9E3779B97F4A7C15ull | 1, bf16_exact};
    if (build(m, &src)) {
        voc_free(m);
        return HM_ERR;
    }
    *out = m;
    return HM_OK;
}

void voc_free(voc_model *m)
{
    if (!m) return;
    free_conv(&m->first);
    for (int i = 0; i < m->n_up; i++) {
        free(m->blk[i].up.w);
        free(m->blk[i].up.b);
        for (int r = 0; r < VOC_RES_UNITS; r++) {
            free_conv(&m->blk[i].res[r].c1);
            free_conv(&m->blk[i].res[r].c2);
        }
    }
    free_conv(&m->post);
    free_conv(&m->last);
    free(m);
}

const hm_codec_config *voc_config(const voc_model *m) { return &m->cfg; }
int voc_hop(const voc_model *m) { return m->hop; }

/* ---- decoding ----------------------------------------------------------------------------- */

static size_t conv_out_len(const voc_conv *c, size_t T) { return T + c->pad_l + c->pad_r - (size_t)c->dil * (c->k - 1); }

static void conv_run(const voc_conv *c, const float *x, size_t T, float *y)
{
    cpu_conv1d(x, c->cin, (int)T, c->w, c->b, c->cout, c->k, c->dil, c->pad_l, c->pad_r, y);
}

/* One batch row: lat [latent_hidden_dim, n] -> pcm [n * hop]. */
static void decode_row(const voc_model *m, const float *lat, int n, float *pcm)
{
    /* Largest activation over the stages: channels x length. */
    size_t T = (size_t)n, cap = (size_t)m->first.cout * T;
    cap = HM_MAX(cap, (size_t)m->first.cin * T);
    for (int i = 0; i < m->n_up; i++) {
        T *= (size_t)m->blk[i].up.s;
        cap = HM_MAX(cap, (size_t)m->blk[i].up.cout * T);
    }
    if (m->has_post) cap = HM_MAX(cap, (size_t)m->post.cout * T * m->post_rep);
    float *x = hm_malloc(sizeof(float) * cap), *h1 = hm_malloc(sizeof(float) * cap), *h2 = hm_malloc(sizeof(float) * cap);

    /* Scalar quantiser: round(9x) / 9 with round-half-even (rintf in the default rounding mode). */
    size_t nin = (size_t)m->first.cin * n;
    for (size_t i = 0; i < nin; i++) h1[i] = rintf(9.0f * lat[i]) / 9.0f;
    T = (size_t)n;
    conv_run(&m->first, h1, T, x);
    T = conv_out_len(&m->first, T);
    for (int i = 0; i < m->n_up; i++) {
        const voc_block *b = &m->blk[i];
        size_t Tn = T * (size_t)b->up.s; /* the causal variant drops the last s outputs */
        cpu_conv_transpose1d(x, b->up.cin, (int)T, b->up.w, b->up.b, b->up.cout, b->up.k, b->up.s, Tn, h1);
        float *t = x;
        x = h1;
        h1 = t;
        T = Tn;
        size_t nn = (size_t)b->up.cout * T;
        for (int r = 0; r < VOC_RES_UNITS; r++) {
            const voc_res *u = &b->res[r];
            conv_run(&u->c1, x, T, h1);
            cpu_prelu(h1, nn, u->a1);
            conv_run(&u->c2, h1, T, h2);
            cpu_prelu(h2, nn, u->a2);
            for (size_t j = 0; j < nn; j++) x[j] += h2[j];
        }
        stage_alive(); /* a block at the released widths takes seconds on a CPU */
    }
    if (m->has_post) {
        int C = m->post.cin, rep = m->post_rep;
        for (int c = 0; c < C; c++) {
            const float *src = x + (size_t)c * T;
            float *dst = h1 + (size_t)c * T * rep;
            for (size_t t = 0; t < T; t++)
                for (int r = 0; r < rep; r++) dst[t * rep + r] = src[t];
        }
        T *= (size_t)rep;
        conv_run(&m->post, h1, T, x);
        cpu_prelu(x, (size_t)m->post.cout * T, m->post_a);
    }
    conv_run(&m->last, x, T, pcm);
    free(x);
    free(h1);
    free(h2);
}

typedef struct {
    const voc_model *m;
    const float *lat;
    int n;
    float *pcm;
} row_job;

static void *row_thread(void *arg)
{
    row_job *j = arg;
    decode_row(j->m, j->lat, j->n, j->pcm);
    return NULL;
}

int voc_decode_rows(const voc_model *m, const float *latent, int rows, int n, float *pcm)
{
    if (rows < 1 || n < 1 || n > (1 << 20)) return hm_err("vocoder: bad latent shape [%d, %d, %d]", rows, m->first.cin, n);
    size_t in_row = (size_t)m->first.cin * n, out_row = (size_t)n * m->hop;
    /* Rows are independent: decode the first in a helper thread while this one does the next
     * (the narrow late stages are single-threaded loops, so two rows use two cores). */
    for (int r = 0; r < rows; r += 2) {
        row_job j = {m, latent + in_row * r, n, pcm + out_row * r};
        pthread_t th;
        int threaded = r + 1 < rows && pthread_create(&th, NULL, row_thread, &j) == 0;
        if (!threaded) decode_row(m, j.lat, n, j.pcm);
        if (r + 1 < rows) decode_row(m, latent + in_row * (r + 1), n, pcm + out_row * (r + 1));
        if (threaded) pthread_join(th, NULL);
    }
    return HM_OK;
}

int voc_decode(const voc_model *m, const float *latent, int n, float *pcm) { return voc_decode_rows(m, latent, 2, n, pcm); }

int voc_decode_window(const voc_model *m, const float *lat, int n, size_t n_keep, float *pcm)
{
    const int H = m->first.cin;
    size_t full = (size_t)n * m->hop;
    if (n < 1 || n_keep > full) return hm_err("vocoder: %zu samples asked of %d frames (%zu made)", n_keep, n, full);
    float *in = hm_malloc(sizeof(float) * 2 * (size_t)H * n);
    for (int c = 0; c < 2; c++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < n; t++) in[((size_t)c * H + h) * n + t] = lat[(size_t)t * 2 * H + (size_t)c * H + h];
    float *out = n_keep == full ? pcm : hm_malloc(sizeof(float) * 2 * full);
    int rc = voc_decode(m, in, n, out);
    if (out != pcm) {
        for (int c = 0; c < 2; c++) memcpy(pcm + (size_t)c * n_keep, out + (size_t)c * full, sizeof(float) * n_keep);
        free(out);
    }
    free(in);
    return rc;
}
