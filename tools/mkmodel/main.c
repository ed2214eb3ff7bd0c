/* main.c - bin/mkmodel: write a random-weight HeartMuLa model folder (MODEL.md §1 layout:
 * gen_config.json, HeartMuLa-oss-<version>/{config.json, model.safetensors}) for a preset, seeded.
 * Weights are uniform with std 1/sqrt(fan_in) for linears (activations stay O(1)), 1 for
 * embeddings, ~1 for norm scales; the heads' rows for the 5 special audio ids are zero (as in the
 * tiny fixture) so greedy decoding never ends a song by accident. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hm.h"
#include "mkmodel.h"
#include "modelcfg.h"

typedef struct {
    const char *name, *version;
    hm_flavor bb, dec;
    int custom; /* write the flavors into config.json ("flavors") */
    int Vt, Va, ncb, muq;
    int bos, eos, audio_eos;
} preset;

#define FL(n, L, H, KV, E, I, S) {n, L, H, KV, E, I, S, 500000.0f, 32.0f, 1e-5f}
static const preset k_presets[] = {
    /* the fixture's tiny LM (tests/fixtures/lm) with other weights */
    {"tiny", "tiny", FL("tiny-backbone", 2, 4, 2, 64, 128, 512), FL("tiny-decoder", 2, 4, 2, 48, 96, 64),
     1, 1024, 69, 8, 32, 1000, 1001, 65},
    /* real vocabularies (Llama-3 text ids, 8197 audio ids) with small transformers: end-to-end demos */
    {"demo", "demo", FL("demo-backbone", 4, 8, 4, 256, 768, 8192), FL("demo-decoder", 2, 4, 2, 128, 384, 64),
     1, 128256, 8197, 8, 512, 128000, 128001, 8193},
    /* the released architecture: llama-3B backbone + llama-300M decoder (~3.3 G params) */
    {"3b", "3B", FL("llama-3B", 0, 0, 0, 0, 0, 0), FL("llama-300M", 0, 0, 0, 0, 0, 0),
     0, 128256, 8197, 8, 512, 128000, 128001, 8193},
};

__attribute__((weak)) int mkmodel_write_codec(const char *model_dir, const char *preset,
                                              uint64_t seed, st_dtype dtype)
{
    return hm_err("--codec: codec generation is not built into this mkmodel yet (its owner adds "
                  "mkmodel_write_codec in tools/mkmodel/)");
}

static void add(mk_tensor *t, int *n, const char *name, int ndim, const int64_t *shape, float mean,
                float std)
{
    mk_tensor *x = &t[(*n)++];
    memset(x, 0, sizeof *x);
    snprintf(x->name, sizeof x->name, "%s", name);
    x->ndim = ndim;
    memcpy(x->shape, shape, sizeof(int64_t) * (size_t)ndim);
    x->mean = mean;
    x->std = std;
    x->zero_axis = -1;
}

static void add_stack(mk_tensor *t, int *n, const char *prefix, const hm_flavor *f)
{
    const int64_t D = f->embed_dim, hd = f->embed_dim / f->num_heads, I = f->intermediate_dim;
    const int64_t qd = f->num_heads * hd, kvd = f->num_kv_heads * hd;
    char nm[192];
    for (int l = 0; l < f->num_layers; l++) {
#define LAYER(part, nd, mean, std, ...)                                          \
    snprintf(nm, sizeof nm, "%slayers.%d.%s", prefix, l, part);                  \
    add(t, n, nm, nd, (int64_t[]){__VA_ARGS__}, mean, std)
        LAYER("sa_norm.scale", 1, 1.0f, 0.05f, D);
        LAYER("attn.q_proj.weight", 2, 0.0f, 1.0f / sqrtf((float)D), qd, D);
        LAYER("attn.k_proj.weight", 2, 0.0f, 1.0f / sqrtf((float)D), kvd, D);
        LAYER("attn.v_proj.weight", 2, 0.0f, 1.0f / sqrtf((float)D), kvd, D);
        LAYER("attn.output_proj.weight", 2, 0.0f, 1.0f / sqrtf((float)qd), D, qd);
        LAYER("mlp_norm.scale", 1, 1.0f, 0.05f, D);
        LAYER("mlp.w1.weight", 2, 0.0f, 1.0f / sqrtf((float)D), I, D);
        LAYER("mlp.w3.weight", 2, 0.0f, 1.0f / sqrtf((float)D), I, D);
        LAYER("mlp.w2.weight", 2, 0.0f, 1.0f / sqrtf((float)I), D, I);
#undef LAYER
    }
    snprintf(nm, sizeof nm, "%snorm.scale", prefix);
    add(t, n, nm, 1, (int64_t[]){D}, 1.0f, 0.05f);
}

static int write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) return hm_err("cannot write '%s'", path);
    return HM_OK;
}

static void flavor_json(char *buf, size_t cap, const hm_flavor *f)
{
    snprintf(buf, cap,
             "    \"%s\": {\"num_layers\": %d, \"num_heads\": %d, \"num_kv_heads\": %d, "
             "\"embed_dim\": %d, \"max_seq_len\": %d, \"intermediate_dim\": %d, \"rope_base\": %g, "
             "\"rope_scale_factor\": %g, \"norm_eps\": %g}",
             f->name, f->num_layers, f->num_heads, f->num_kv_heads, f->embed_dim, f->max_seq_len,
             f->intermediate_dim, f->rope_base, f->rope_scale_factor, f->norm_eps);
}

static int write_lm(const char *out, const preset *p, uint64_t seed, st_dtype dtype)
{
    hm_flavor bb = p->bb, dec = p->dec;
    if (!p->custom) {
        const hm_flavor *a = hm_flavor_builtin(bb.name), *b = hm_flavor_builtin(dec.name);
        if (!a || !b) return hm_err("built-in flavor '%s' or '%s' unknown", bb.name, dec.name);
        bb = *a;
        dec = *b;
    }
    char dir[4200], path[4300], buf[4096], f1[512], f2[512];
    snprintf(dir, sizeof dir, "%s/HeartMuLa-oss-%s", out, p->version);
    if (mkdir(out, 0755) != 0 && errno != EEXIST) return hm_err("cannot create '%s'", out);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) return hm_err("cannot create '%s'", dir);

    snprintf(path, sizeof path, "%s/gen_config.json", out);
    snprintf(buf, sizeof buf,
             "{\n  \"text_bos_id\": %d,\n  \"text_eos_id\": %d,\n  \"audio_eos_id\": %d,\n"
             "  \"empty_id\": 0\n}\n", p->bos, p->eos, p->audio_eos);
    if (write_text(path, buf) != HM_OK) return HM_ERR;

    f1[0] = f2[0] = 0;
    if (p->custom) {
        flavor_json(f1, sizeof f1, &bb);
        flavor_json(f2, sizeof f2, &dec);
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    snprintf(buf, sizeof buf,
             "{\n  \"backbone_flavor\": \"%s\",\n  \"decoder_flavor\": \"%s\",\n"
             "  \"text_vocab_size\": %d,\n  \"audio_vocab_size\": %d,\n  \"audio_num_codebooks\": %d,\n"
             "  \"muq_dim\": %d,\n  \"model_type\": \"heartmula\",\n  \"architectures\": [\"HeartMuLa\"]%s%s%s%s%s\n}\n",
             bb.name, dec.name, p->Vt, p->Va, p->ncb, p->muq, p->custom ? ",\n  \"flavors\": {\n" : "",
             f1, p->custom ? ",\n" : "", f2, p->custom ? "\n  }" : "");
    if (write_text(path, buf) != HM_OK) return HM_ERR;

    const int64_t D = bb.embed_dim, Dd = dec.embed_dim, Va = p->Va, ncb = p->ncb;
    const int special = 5; /* audio ids >= Va - 5 are specials (EOS at Va - 4) */
    int cap = 16 + 9 * (bb.num_layers + dec.num_layers) + 2, n = 0;
    mk_tensor *t = hm_calloc((size_t)cap, sizeof *t);
    add(t, &n, "text_embeddings.weight", 2, (int64_t[]){p->Vt, D}, 0.0f, 1.0f);
    add(t, &n, "audio_embeddings.weight", 2, (int64_t[]){Va * ncb, D}, 0.0f, 1.0f);
    add(t, &n, "unconditional_text_embedding.weight", 2, (int64_t[]){1, D}, 0.0f, 1.0f);
    add(t, &n, "muq_linear.weight", 2, (int64_t[]){D, p->muq}, 0.0f, 1.0f / sqrtf((float)p->muq));
    add(t, &n, "muq_linear.bias", 1, (int64_t[]){D}, 0.0f, 1.0f);
    add_stack(t, &n, "backbone.", &bb);
    add(t, &n, "codebook0_head.weight", 2, (int64_t[]){Va, D}, 0.0f, 1.0f / sqrtf((float)D));
    t[n - 1].zero_axis = 0;
    t[n - 1].zero_from = (int)(Va - special);
    add(t, &n, "projection.weight", 2, (int64_t[]){Dd, D}, 0.0f, 1.0f / sqrtf((float)D));
    add_stack(t, &n, "decoder.", &dec);
    add(t, &n, "audio_head", 3, (int64_t[]){ncb - 1, Dd, Va}, 0.0f, 1.0f / sqrtf((float)Dd));
    t[n - 1].zero_axis = 2;
    t[n - 1].zero_from = (int)(Va - special);

    double params = 0;
    for (int i = 0; i < n; i++) {
        double e = 1;
        for (int d = 0; d < t[i].ndim; d++) e *= (double)t[i].shape[d];
        params += e;
    }
    LOG_INFO("writing %s: %d tensors, %.3f G params, %s", dir, n, params / 1e9, st_dtype_name(dtype));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int rc = mk_write_safetensors(path, t, n, dtype, seed);
    free(t);
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: mkmodel --preset tiny|demo|3b -o MODEL_DIR [--seed N] [--dtype bf16|f16|f32]\n"
            "               [--version V] [--codec]\n"
            "  writes MODEL_DIR/gen_config.json and MODEL_DIR/HeartMuLa-oss-<V>/ (config.json,\n"
            "  model.safetensors) with random weights; --codec also writes MODEL_DIR/HeartCodec-oss.\n");
}

int main(int argc, char **argv)
{
    hm_log_set_name("mkmodel");
    const char *out = NULL, *pname = "tiny", *version = NULL, *dt = "bf16";
    uint64_t seed = 1;
    int codec = 0;
    static const struct option opts[] = {
        {"preset", required_argument, 0, 'p'}, {"out", required_argument, 0, 'o'},
        {"seed", required_argument, 0, 's'},   {"dtype", required_argument, 0, 'd'},
        {"version", required_argument, 0, 'v'}, {"codec", no_argument, 0, 'c'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "p:o:s:d:v:ch", opts, NULL)) != -1) {
        switch (c) {
        case 'p': pname = optarg; break;
        case 'o': out = optarg; break;
        case 's': seed = strtoull(optarg, NULL, 0); break;
        case 'd': dt = optarg; break;
        case 'v': version = optarg; break;
        case 'c': codec = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!out || optind != argc) {
        usage(stderr);
        return 2;
    }
    const preset *p = NULL;
    for (size_t i = 0; i < HM_ARRAY_LEN(k_presets); i++)
        if (!strcmp(k_presets[i].name, pname)) p = &k_presets[i];
    if (!p) {
        fprintf(stderr, "mkmodel: unknown preset '%s' (tiny, demo, 3b)\n", pname);
        return 2;
    }
    st_dtype dtype;
    if (st_dtype_parse(!strcmp(dt, "bf16") ? "BF16" : !strcmp(dt, "f16") ? "F16"
                       : !strcmp(dt, "f32") ? "F32" : dt, &dtype) != HM_OK ||
        (dtype != ST_BF16 && dtype != ST_F16 && dtype != ST_F32)) {
        fprintf(stderr, "mkmodel: dtype '%s' (bf16, f16, f32)\n", dt);
        return 2;
    }
    preset pp = *p;
    if (version) pp.version = version;
    double t0 = hm_now();
    if (write_lm(out, &pp, seed, dtype) != HM_OK ||
        (codec && mkmodel_write_codec(out, pname, seed, dtype) != HM_OK)) {
        fprintf(stderr, "mkmodel: %s\n", hm_errmsg());
        return 1;
    }
    LOG_INFO("done in %.1f s", hm_now() - t0);
    return 0;
}
