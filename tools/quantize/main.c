/* main.c - bin/quantize: write a HeartMuLa LM with its linear weights quantised (fp8 or NVFP4) the
 * way the CUDA engine quantises them at load (kernels/wquant.h: the same bytes), so lm_cuda_load
 * takes the file as it is and skips quantising.  Tensor names and dtypes: docs/QUANTIZED.md.
 *
 *   quantize --precision fp8|nvfp4 [--version V] IN_MODEL_DIR OUT_MODEL_DIR
 *
 * OUT_MODEL_DIR/HeartMuLa-oss-<V>/ gets config.json and model.safetensors (one file, written
 * atomically); gen_config.json and tokenizer.json of IN_MODEL_DIR are copied beside it when
 * present.  Only the CUDA engine reads quantised tensors (the CPU backend refuses them). */
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hm.h"
#include "modelcfg.h"
#include "safetensors.h"
#include "wquant.h"

typedef enum { Q_FP8, Q_NVFP4 } qkind;

/* What the engine quantises: layer matrices, codebook-0 head, projection (audio_head apart). */
static int is_linear(const char *name)
{
    static const char *const suffix[] = {".attn.q_proj.weight", ".attn.k_proj.weight", ".attn.v_proj.weight",
                                         ".attn.output_proj.weight", ".mlp.w1.weight", ".mlp.w2.weight",
                                         ".mlp.w3.weight"};
    if (!strcmp(name, "codebook0_head.weight") || !strcmp(name, "projection.weight")) return 1;
    if (strncmp(name, "backbone.layers.", 16) && strncmp(name, "decoder.layers.", 15)) return 0;
    const size_t n = strlen(name);
    for (size_t i = 0; i < HM_ARRAY_LEN(suffix); i++) {
        const size_t s = strlen(suffix[i]);
        if (n > s && !strcmp(name + n - s, suffix[i])) return 1;
    }
    return 0;
}

/* The names whose rows the engine stacks into one matrix with `name` (NVFP4: one tensor scale for
 * all of them): q/k/v of a layer, w1/w3 of a layer; else just name.  Returns the count. */
static int group_of(const char *name, char out[3][256])
{
    const char *p;
    int n = 0;
    if ((p = strstr(name, ".attn.q_proj.")) || (p = strstr(name, ".attn.k_proj.")) || (p = strstr(name, ".attn.v_proj."))) {
        const int pre = (int)(p - name);
        for (int i = 0; i < 3; i++) snprintf(out[n++], 256, "%.*s.attn.%c_proj.weight", pre, name, "qkv"[i]);
    } else if ((p = strstr(name, ".mlp.w1.")) || (p = strstr(name, ".mlp.w3."))) {
        const int pre = (int)(p - name);
        snprintf(out[n++], 256, "%.*s.mlp.w1.weight", pre, name);
        snprintf(out[n++], 256, "%.*s.mlp.w3.weight", pre, name);
    } else {
        snprintf(out[n++], 256, "%s", name);
    }
    return n;
}

/* bf16 bits of a tensor (any float dtype), as the engine rounds it before quantising */
static uint16_t *to_bf16(const st_tensor *t)
{
    float *f = hm_malloc(sizeof(float) * (size_t)t->numel);
    if (st_to_f32(t, f) != HM_OK) {
        free(f);
        return NULL;
    }
    uint16_t *b = hm_malloc(sizeof(uint16_t) * (size_t)t->numel);
    for (int64_t i = 0; i < t->numel; i++) b[i] = hm_f32_to_bf16(f[i]);
    free(f);
    return b;
}

typedef struct {
    st_wtensor *t;
    size_t n, cap;
    void **owned; /* buffers and names to free after writing */
    size_t n_owned, cap_owned;
} out_list;

static void *own(out_list *o, void *p)
{
    if (o->n_owned == o->cap_owned) {
        o->cap_owned = o->cap_owned ? 2 * o->cap_owned : 256;
        o->owned = realloc(o->owned, sizeof(void *) * o->cap_owned);
        if (!o->owned) abort();
    }
    return o->owned[o->n_owned++] = p;
}

static void add(out_list *o, const char *name, st_dtype dt, int ndim, const int64_t *shape, const void *data, int copy_name)
{
    if (o->n == o->cap) {
        o->cap = o->cap ? 2 * o->cap : 256;
        o->t = realloc(o->t, sizeof(st_wtensor) * o->cap);
        if (!o->t) abort();
    }
    st_wtensor *w = &o->t[o->n++];
    memset(w, 0, sizeof *w);
    w->name = copy_name ? own(o, strdup(name)) : name;
    w->dtype = dt, w->ndim = ndim, w->data = data;
    memcpy(w->shape, shape, sizeof(int64_t) * (size_t)ndim);
}

static char *cat(const char *a, const char *b)
{
    char *s = hm_malloc(strlen(a) + strlen(b) + 1);
    strcpy(s, a);
    strcat(s, b);
    return s;
}

/* Quantise the [N, K] bf16 matrix w as `name` (NVFP4 under tensor scale ts) into o. */
static void add_quant(out_list *o, const char *name, const uint16_t *w, int64_t N, int64_t K, qkind q, float ts)
{
    if (q == Q_FP8) {
        uint8_t *v = own(o, hm_malloc((size_t)(N * K)));
        float *s = own(o, hm_malloc(sizeof(float) * (size_t)N));
        wq_fp8_rows(w, N, K, v, s);
        add(o, name, ST_F8_E4M3, 2, (int64_t[]){N, K}, v, 1);
        add(o, own(o, cat(name, "_scale")), ST_F32, 1, (int64_t[]){N}, s, 0);
    } else {
        uint8_t *v = own(o, hm_malloc((size_t)(N * K / 2))), *bs = own(o, hm_malloc((size_t)(N * K / 16)));
        float *s = own(o, hm_malloc(sizeof(float)));
        wq_nvfp4_rows(w, N, K, ts, v, bs);
        *s = ts;
        add(o, name, ST_U8, 2, (int64_t[]){N, K / 2}, v, 1);
        add(o, own(o, cat(name, "_block_scale")), ST_F8_E4M3, 2, (int64_t[]){N, K / 16}, bs, 0);
        add(o, own(o, cat(name, "_scale")), ST_F32, 1, (int64_t[]){1}, s, 0);
    }
}

static int quant_linear(out_list *o, st_file *f, st_tensor *t, qkind q)
{
    if (t->ndim != 2) return hm_err("tensor '%s': rank %d, expected a matrix", t->name, t->ndim);
    const int64_t N = t->shape[0], K = t->shape[1];
    if (K % (q == Q_FP8 ? 16 : 32)) return hm_err("tensor '%s': %lld columns, not a multiple of %d", t->name, (long long)K, q == Q_FP8 ? 16 : 32);
    uint16_t *w = to_bf16(t);
    if (!w) return HM_ERR;
    float ts = 1.0f;
    if (q == Q_NVFP4) { /* the amax of the whole stacked matrix the engine builds */
        char g[3][256];
        const int ng = group_of(t->name, g);
        float amax = 0.0f;
        for (int i = 0; i < ng; i++) {
            st_tensor *gt = st_find(f, g[i]);
            if (!gt) {
                free(w);
                return hm_err("tensor '%s': its group member '%s' is missing", t->name, g[i]);
            }
            uint16_t *gw = gt == t ? w : to_bf16(gt);
            if (!gw) {
                free(w);
                return HM_ERR;
            }
            amax = fmaxf(amax, wq_bf16_amax(gw, (size_t)gt->numel));
            if (gw != w) free(gw);
        }
        ts = wq_nvfp4_tensor_scale(amax);
    }
    add_quant(o, t->name, w, N, K, q, ts);
    free(w);
    return HM_OK;
}

/* audio_head [nc-1, Dd, Va] is used as h @ A[i]: the engine stores each A[i] transposed ([Va, Dd],
 * out x in) and quantises each on its own; the file holds the transposed, quantised matrices. */
static int quant_audio_head(out_list *o, st_tensor *t, qkind q)
{
    if (t->ndim != 3) return hm_err("tensor 'audio_head': rank %d, expected 3", t->ndim);
    const int64_t C = t->shape[0], Dd = t->shape[1], Va = t->shape[2];
    if (Dd % (q == Q_FP8 ? 16 : 32)) return hm_err("tensor 'audio_head': width %lld", (long long)Dd);
    uint16_t *w = to_bf16(t);
    if (!w) return HM_ERR;
    uint16_t *tr = hm_malloc(sizeof(uint16_t) * (size_t)(Va * Dd));
    const size_t nv = (size_t)(Va * Dd);
    uint8_t *v = own(o, hm_malloc(q == Q_FP8 ? C * nv : C * nv / 2)), *bs = q == Q_NVFP4 ? own(o, hm_malloc(C * nv / 16)) : NULL;
    float *s = own(o, hm_malloc(sizeof(float) * (size_t)(q == Q_FP8 ? C * Va : C)));
    for (int64_t i = 0; i < C; i++) {
        for (int64_t d = 0; d < Dd; d++)
            for (int64_t a = 0; a < Va; a++) tr[a * Dd + d] = w[(i * Dd + d) * Va + a];
        if (q == Q_FP8) {
            wq_fp8_rows(tr, Va, Dd, v + i * nv, s + i * Va);
        } else {
            s[i] = wq_nvfp4_tensor_scale(wq_bf16_amax(tr, nv));
            wq_nvfp4_rows(tr, Va, Dd, s[i], v + i * nv / 2, bs + i * nv / 16);
        }
    }
    free(tr);
    free(w);
    if (q == Q_FP8) {
        add(o, "audio_head", ST_F8_E4M3, 3, (int64_t[]){C, Va, Dd}, v, 0);
        add(o, "audio_head_scale", ST_F32, 2, (int64_t[]){C, Va}, s, 0);
    } else {
        add(o, "audio_head", ST_U8, 3, (int64_t[]){C, Va, Dd / 2}, v, 0);
        add(o, "audio_head_block_scale", ST_F8_E4M3, 3, (int64_t[]){C, Va, Dd / 16}, bs, 0);
        add(o, "audio_head_scale", ST_F32, 1, (int64_t[]){C}, s, 0);
    }
    return HM_OK;
}

static int copy_file(const char *from, const char *to)
{
    char *txt;
    size_t len;
    if (hm_read_file(from, &txt, &len, 0) != HM_OK) return HM_ERR;
    FILE *fp = fopen(to, "wb");
    int rc = HM_OK;
    if (!fp || fwrite(txt, 1, len, fp) != len) rc = hm_err("%s: %s", to, strerror(errno));
    if (fp && fclose(fp) != 0 && rc == HM_OK) rc = hm_err("%s: %s", to, strerror(errno));
    free(txt);
    return rc;
}

static int run(const char *in, const char *version, const char *out, qkind q)
{
    hm_lm_config cfg;
    if (hm_lm_config_load(in, version, &cfg) != HM_OK) return HM_ERR;
    char lmname[4096], odir[8192], path[8400];
    snprintf(lmname, sizeof lmname, "%s", cfg.dir);
    const size_t L = strlen(lmname);
    if (L > 1 && lmname[L - 1] == '/') lmname[L - 1] = 0;
    snprintf(odir, sizeof odir, "%s/%s", out, basename(lmname));
    if ((mkdir(out, 0755) && errno != EEXIST) || (mkdir(odir, 0755) && errno != EEXIST))
        return hm_err("%s: %s", odir, strerror(errno));
    st_file *f;
    if (st_open(cfg.dir, &f) != HM_OK) return HM_ERR;
    out_list o = {0};
    int rc = HM_OK;
    size_t nq = 0;
    for (size_t i = 0; rc == HM_OK && i < st_count(f); i++) {
        st_tensor *t = st_at(f, i);
        if (t->dtype == ST_F8_E4M3 || t->dtype == ST_U8) {
            rc = hm_err("tensor '%s': %s: the input is already quantised", t->name, st_dtype_name(t->dtype));
        } else if (is_linear(t->name)) {
            rc = quant_linear(&o, f, t, q), nq++;
        } else if (!strcmp(t->name, "audio_head")) {
            rc = quant_audio_head(&o, t, q), nq++;
        } else {
            add(&o, t->name, t->dtype, t->ndim, t->shape, t->data, 0); /* as it is (mapping) */
        }
    }
    const char *meta[] = {"format", "pt", "heartmula.quantization", q == Q_FP8 ? "fp8" : "nvfp4",
                          "heartmula.quantization.version", "1"};
    snprintf(path, sizeof path, "%s/model.safetensors", odir);
    if (rc == HM_OK) rc = st_write(path, o.t, o.n, meta, 3);
    st_close(f);
    for (size_t i = 0; i < o.n_owned; i++) free(o.owned[i]);
    free(o.owned);
    free(o.t);
    if (rc != HM_OK) return rc;
    snprintf(path, sizeof path, "%s/config.json", cfg.dir);
    char dst[8400];
    snprintf(dst, sizeof dst, "%s/config.json", odir);
    if (copy_file(path, dst) != HM_OK) return HM_ERR;
    static const char *const extra[] = {"gen_config.json", "tokenizer.json"};
    for (size_t i = 0; i < HM_ARRAY_LEN(extra); i++) {
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", in, extra[i]);
        snprintf(dst, sizeof dst, "%s/%s", out, extra[i]);
        if (stat(path, &st) == 0 && copy_file(path, dst) != HM_OK) return HM_ERR;
    }
    LOG_INFO("%zu matrices quantised to %s into %s", nq, q == Q_FP8 ? "fp8" : "nvfp4", odir);
    return HM_OK;
}

static void usage(FILE *fp)
{
    fprintf(fp, "usage: quantize --precision fp8|nvfp4 [--version V] IN_MODEL_DIR OUT_MODEL_DIR\n"
                "  writes OUT_MODEL_DIR/HeartMuLa-oss-<V>/{config.json,model.safetensors} with the LM's linear\n"
                "  weights quantised exactly as the CUDA engine does at load (docs/QUANTIZED.md)\n");
}

int main(int argc, char **argv)
{
    hm_log_set_name("quantize");
    const char *prec = NULL, *version = NULL;
    static const struct option opts[] = {{"precision", required_argument, 0, 'p'},
                                         {"version", required_argument, 0, 'v'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "p:v:h", opts, NULL)) != -1) {
        switch (c) {
        case 'p': prec = optarg; break;
        case 'v': version = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!prec || optind + 2 != argc) {
        usage(stderr);
        return 2;
    }
    qkind q;
    if (!strcmp(prec, "fp8")) q = Q_FP8;
    else if (!strcmp(prec, "nvfp4")) q = Q_NVFP4;
    else {
        fprintf(stderr, "quantize: precision '%s' (fp8 or nvfp4)\n", prec);
        return 2;
    }
    double t0 = hm_now();
    if (run(argv[optind], version, argv[optind + 1], q) != HM_OK) {
        fprintf(stderr, "quantize: %s\n", hm_errmsg());
        return 1;
    }
    LOG_INFO("done in %.1f s", hm_now() - t0);
    return 0;
}
