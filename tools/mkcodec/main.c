/* mkcodec - write a random-weight HeartCodec-oss folder (config.json + model.safetensors) with the
 * tensor names and shapes the codec stages load (MODEL.md §3), for tests, demos and benchmarks
 * without the released checkpoint.
 *
 *   mkcodec -o MODEL_DIR [--preset tiny|demo|full] [--seed N] [--dtype f32|bf16] [--legacy-wn] [--dry-run]
 *
 * --legacy-wn names weight-norm pairs weight_g/weight_v (older PyTorch) instead of
 * parametrizations.weight.original0/1; the values are the same for the same seed.
 *
 * Presets: tiny = the fixture sizes; demo = a few times wider; full = the release's sizes (flow
 * matching: VQ 8 x 8192 x 32, dim 512, stack 1 of 24 blocks at 1536 = 24 x 64, stack 2 of 6 at
 * 3072 = 24 x 128; vocoder init_channel 64, i.e. 128 -> 2048 channels at the first conv).
 * Initial scales keep activations O(1) through both stacks and the vocoder (see init_std).
 * The encoder half of the scalar model is not written (generation never reads it). */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <errno.h>

#include "hm.h"
#include "safetensors.h"

typedef struct {
    const char *name;
    int dim, codebook_size, codebook_dim, num_quantizers, head_dim, heads, layers, layers_2, init_channel;
} preset;

static const preset presets[] = {
    {"tiny", 32, 64, 8, 8, 16, 2, 2, 1, 4},
    {"demo", 128, 8192, 16, 8, 32, 4, 4, 2, 8}, /* 8192 codes: what mkmodel --preset demo emits */
    {"full", 512, 8192, 32, 8, 64, 24, 24, 6, 64},
};
static const int up_factors[5] = {5, 4, 4, 4, 3};
static const int latent_hidden = 128, out_channels = 256;

/* ---- deterministic random numbers (splitmix64) ---- */
static uint64_t g_rng;
static uint64_t next64(void)
{
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
/* uniform with the given standard deviation */
static float urand(float std) { return (float)(((double)(next64() >> 11) / 9007199254740992.0 * 2.0 - 1.0) * std * 1.7320508); }

/* ---- tensor list ---- */
typedef enum { INIT_RAND, INIT_CONST, INIT_WN_G, INIT_ZERO_BOOL } init_kind;
typedef struct {
    char name[160];
    int ndim;
    int64_t shape[4];
    init_kind kind;
    float a; /* std (RAND), value (CONST), row norm (WN_G) */
} spec;

static spec *g_specs;
static int g_legacy_wn; /* write weight_g / weight_v (pre-parametrizations PyTorch) */
static size_t g_n, g_cap;

static void add(init_kind kind, float a, int ndim, const int64_t *shape, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void add(init_kind kind, float a, int ndim, const int64_t *shape, const char *fmt, ...)
{
    if (g_n == g_cap) {
        g_cap = g_cap ? 2 * g_cap : 256;
        g_specs = hm_realloc(g_specs, g_cap * sizeof *g_specs);
    }
    spec *s = &g_specs[g_n++];
    memset(s, 0, sizeof *s);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->name, sizeof s->name, fmt, ap);
    va_end(ap);
    s->ndim = ndim;
    memcpy(s->shape, shape, sizeof(int64_t) * (size_t)ndim);
    s->kind = kind;
    s->a = a;
}
#define S(...) (const int64_t[]){__VA_ARGS__}

/* Linear [out, in] (+ bias): weights of std gain/sqrt(in) keep the output's scale. */
static void linear(const char *prefix, int out, int in, int bias, float gain)
{
    add(INIT_RAND, gain / sqrtf((float)in), 2, S(out, in), "%s.weight", prefix);
    if (bias) add(INIT_RAND, 0.02f, 1, S(out), "%s.bias", prefix);
}

static void proj_layer(const char *name, int cin, int cout)
{
    /* conv k3 then x 1/sqrt(3): std 1/sqrt(cin) per tap makes the scaled output O(1) */
    add(INIT_RAND, 1.0f / sqrtf((float)cin), 3, S(cout, cin, 3), "flow_matching.estimator.%s.ffn_1.weight", name);
    add(INIT_RAND, 0.02f, 1, S(cout), "flow_matching.estimator.%s.ffn_1.bias", name);
    char p[128];
    snprintf(p, sizeof p, "flow_matching.estimator.%s.ffn_2", name);
    linear(p, cout, cout, 1, 1.0f);
}

static void stack(const char *blocks, const char *adaln, const char *table, int d, int n)
{
    int hidden = (int)(2.0 * (4.0 * d) / 3.0);
    hidden = 256 * ((hidden + 255) / 256);
    char p[160];
    for (int i = 0; i < n; i++) {
        const char *E = "flow_matching.estimator";
        add(INIT_CONST, 1.0f, 1, S(d), "%s.%s.%d.attn_norm.weight", E, blocks, i);
        add(INIT_CONST, 1.0f, 1, S(d), "%s.%s.%d.mlp_norm.weight", E, blocks, i);
        const char *qkvo[4] = {"q_proj", "k_proj", "v_proj", "o_proj"};
        for (int j = 0; j < 4; j++) {
            snprintf(p, sizeof p, "%s.%s.%d.attn.%s", E, blocks, i, qkvo[j]);
            linear(p, d, d, 0, 1.0f);
        }
        snprintf(p, sizeof p, "%s.%s.%d.mlp.gate", E, blocks, i);
        linear(p, hidden, d, 0, 1.0f);
        snprintf(p, sizeof p, "%s.%s.%d.mlp.up", E, blocks, i);
        linear(p, hidden, d, 0, 1.0f);
        snprintf(p, sizeof p, "%s.%s.%d.mlp.down", E, blocks, i);
        linear(p, d, hidden, 0, 1.0f);
        /* the reference initialises the tables as randn / sqrt(d) */
        add(INIT_RAND, 1.0f / sqrtf((float)d), 2, S(6, d), "%s.%s.%d.scale_shift_table", E, blocks, i);
    }
    snprintf(p, sizeof p, "flow_matching.estimator.%s.emb.timestep_embedder.linear_1", adaln);
    linear(p, d, 512, 1, 1.0f);
    snprintf(p, sizeof p, "flow_matching.estimator.%s.emb.timestep_embedder.linear_2", adaln);
    linear(p, d, d, 1, 1.0f);
    /* small modulation: gates ~0.3 so 30 residual blocks do not blow up */
    snprintf(p, sizeof p, "flow_matching.estimator.%s.linear", adaln);
    linear(p, 6 * d, d, 1, 0.3f);
    add(INIT_RAND, 1.0f / sqrtf((float)d), 2, S(2, d), "flow_matching.estimator.%s", table);
}

/* Weight-normed conv [d0, d1, k]: v random, g = row norm of the folded weight. */
static void wn_conv(const char *prefix, int d0, int d1, int k, float row_norm, int bias_n)
{
    add(INIT_WN_G, row_norm, 3, S(d0, 1, 1), "%s.%s", prefix, g_legacy_wn ? "weight_g" : "parametrizations.weight.original0");
    add(INIT_RAND, 1.0f, 3, S(d0, d1, k), "%s.%s", prefix, g_legacy_wn ? "weight_v" : "parametrizations.weight.original1");
    add(INIT_RAND, 0.01f, 1, S(bias_n), "%s.bias", prefix);
}

static void build(const preset *P)
{
    int d1 = P->heads * P->head_dim, d2 = 2 * d1, in_ch = 2 * out_channels + P->dim;
    for (int q = 0; q < P->num_quantizers; q++) {
        const char *vq = "flow_matching.vq_embed.layers";
        add(INIT_RAND, 1.0f, 3, S(1, P->codebook_size, P->codebook_dim), "%s.%d._codebook.embed", vq, q);
        add(INIT_CONST, 1.0f, 2, S(1, P->codebook_size), "%s.%d._codebook.cluster_size", vq, q);
        add(INIT_RAND, 1.0f, 3, S(1, P->codebook_size, P->codebook_dim), "%s.%d._codebook.embed_avg", vq, q);
        add(INIT_ZERO_BOOL, 1.0f, 0, S(0), "%s.%d._codebook.initted", vq, q);
    }
    /* the sum of num_quantizers unit codebooks has std sqrt(nq) */
    linear("flow_matching.vq_embed.project_out", P->dim, P->codebook_dim, 1, 1.0f / sqrtf((float)P->num_quantizers));
    linear("flow_matching.vq_embed.project_in", P->codebook_dim, P->dim, 1, 1.0f);
    linear("flow_matching.cond_feature_emb", P->dim, P->dim, 1, 1.0f);
    add(INIT_RAND, 1.0f, 1, S(P->dim), "flow_matching.zero_cond_embedding1");
    proj_layer("proj_in", in_ch, d1);
    proj_layer("connection_proj", in_ch + d1, d2);
    proj_layer("proj_out", d2, out_channels);
    stack("transformer_blocks", "adaln_single", "scale_shift_table", d1, P->layers);
    stack("transformer_blocks_2", "adaln_single_2", "scale_shift_table_2", d2, P->layers_2);

    /* vocoder: row norm 1 keeps the variance through a conv; residual branches get 0.3 so the 25
     * residual units do not compound; a transposed conv with k = 2s needs sqrt(s/2) */
    int ch = P->init_channel << 5;
    char p[160];
    wn_conv("scalar_model.decoder.0", ch, latent_hidden, 5, 1.0f, ch);
    for (int i = 0; i < 5; i++) {
        int co = ch / 2, s = up_factors[i];
        snprintf(p, sizeof p, "scalar_model.decoder.%d.up_conv.layer", i + 1);
        wn_conv(p, ch, co, 2 * s, sqrtf((float)s / 2.0f), co);
        for (int r = 0; r < 5; r++) {
            snprintf(p, sizeof p, "scalar_model.decoder.%d.convs.%d.conv1", i + 1, r);
            wn_conv(p, co, co, 7, 1.0f, co);
            snprintf(p, sizeof p, "scalar_model.decoder.%d.convs.%d.conv2", i + 1, r);
            wn_conv(p, co, co, 1, 0.3f, co);
            add(INIT_CONST, 0.25f, 1, S(1), "scalar_model.decoder.%d.convs.%d.activation1.weight", i + 1, r);
            add(INIT_CONST, 0.25f, 1, S(1), "scalar_model.decoder.%d.convs.%d.activation2.weight", i + 1, r);
        }
        ch = co;
    }
    add(INIT_RAND, 1.0f / sqrtf((float)ch * 7), 3, S(ch, ch, 7), "scalar_model.decoder.6.conv.weight");
    add(INIT_RAND, 0.01f, 1, S(ch), "scalar_model.decoder.6.conv.bias");
    add(INIT_CONST, 0.25f, 1, S(1), "scalar_model.decoder.6.activation.weight");
    wn_conv("scalar_model.decoder.7", 1, ch, 7, 0.3f, 1);
}

static int write_config(const char *dir, const preset *P)
{
    cJSON *j = cJSON_CreateObject();
    int d1 = P->heads * P->head_dim;
    (void)d1;
    struct { const char *k; int v; } ints[] = {
        {"dim", P->dim}, {"codebook_size", P->codebook_size}, {"codebook_dim", P->codebook_dim},
        {"num_quantizers", P->num_quantizers}, {"attention_head_dim", P->head_dim},
        {"in_channels", 2 * out_channels + P->dim}, {"num_attention_heads", P->heads}, {"num_layers", P->layers},
        {"num_layers_2", P->layers_2}, {"out_channels", out_channels}, {"latent_hidden_dim", latent_hidden},
        {"init_channel", P->init_channel}, {"sample_rate", 48000}, {"num_samples", 2},
    };
    for (size_t i = 0; i < HM_ARRAY_LEN(ints); i++) cJSON_AddNumberToObject(j, ints[i].k, ints[i].v);
    cJSON_AddBoolToObject(j, "causal", 1);
    const int down[5] = {3, 4, 4, 4, 5}, downk[5] = {6, 8, 8, 8, 10}, upk[5] = {10, 8, 8, 8, 6};
    cJSON_AddItemToObject(j, "downsample_factors", cJSON_CreateIntArray(down, 5));
    cJSON_AddItemToObject(j, "downsample_kernel_sizes", cJSON_CreateIntArray(downk, 5));
    cJSON_AddItemToObject(j, "upsample_factors", cJSON_CreateIntArray(up_factors, 5));
    cJSON_AddItemToObject(j, "upsample_kernel_sizes", cJSON_CreateIntArray(upk, 5));
    cJSON_AddNumberToObject(j, "default_kernel_size", 7);
    cJSON_AddNumberToObject(j, "delay_kernel_size", 5);
    cJSON_AddNumberToObject(j, "res_kernel_size", 7);
    cJSON_AddNumberToObject(j, "num_bands", 1);
    cJSON_AddStringToObject(j, "model_type", "heartcodec");
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    int rc = HM_OK;
    if (!f || fputs(txt, f) < 0 || fputc('\n', f) < 0) rc = hm_err("cannot write '%s': %s", path, strerror(errno));
    if (f && fclose(f) != 0 && !rc) rc = hm_err("cannot write '%s': %s", path, strerror(errno));
    free(txt);
    return rc;
}

static int mkdirs(const char *path)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0755) && errno != EEXIST) return hm_err("cannot create '%s': %s", buf, strerror(errno));
            *p = '/';
        }
    if (mkdir(buf, 0755) && errno != EEXIST) return hm_err("cannot create '%s': %s", buf, strerror(errno));
    return HM_OK;
}

static void usage(void)
{
    fprintf(stderr, "usage: mkcodec -o MODEL_DIR [--preset tiny|demo|full] [--seed N] [--dtype f32|bf16] [--legacy-wn] [--dry-run]\n"
                    "writes MODEL_DIR/HeartCodec-oss/{config.json,model.safetensors} with random weights\n");
}

int main(int argc, char **argv)
{
    const char *out = NULL, *pname = "tiny", *dtype = "f32";
    uint64_t seed = 1;
    int dry = 0;
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-o") || !strcmp(argv[i], "--out")) && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "--preset") && i + 1 < argc) pname = argv[++i];
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) dtype = argv[++i];
        else if (!strcmp(argv[i], "--dry-run")) dry = 1;
        else if (!strcmp(argv[i], "--legacy-wn")) g_legacy_wn = 1;
        else {
            usage();
            return 2;
        }
    }
    const preset *P = NULL;
    for (size_t i = 0; i < HM_ARRAY_LEN(presets); i++)
        if (!strcmp(presets[i].name, pname)) P = &presets[i];
    int bf16 = !strcmp(dtype, "bf16");
    if (!P || (!bf16 && strcmp(dtype, "f32")) || (!out && !dry)) {
        usage();
        return 2;
    }
    g_rng = seed * 0x2545f4914f6cdd1dULL + 1;
    build(P);
    size_t params = 0, bytes = 0;
    for (size_t i = 0; i < g_n; i++) {
        size_t n = 1;
        for (int d = 0; d < g_specs[i].ndim; d++) n *= (size_t)g_specs[i].shape[d];
        params += n;
        bytes += g_specs[i].kind == INIT_ZERO_BOOL ? n : n * (bf16 ? 2 : 4);
    }
    fprintf(stderr, "mkcodec: preset %s, %zu tensors, %.1f M parameters, %.1f MB (%s)\n", P->name, g_n, params / 1e6,
            bytes / 1e6, dtype);
    if (dry) return 0;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/HeartCodec-oss", out);
    if (mkdirs(dir) || write_config(dir, P)) {
        fprintf(stderr, "mkcodec: %s\n", hm_errmsg());
        return 1;
    }
    st_wtensor *wt = hm_calloc(g_n, sizeof *wt);
    for (size_t i = 0; i < g_n; i++) {
        spec *s = &g_specs[i];
        size_t n = 1;
        for (int d = 0; d < s->ndim; d++) n *= (size_t)s->shape[d];
        wt[i].name = s->name;
        wt[i].ndim = s->ndim;
        memcpy(wt[i].shape, s->shape, sizeof s->shape);
        if (s->kind == INIT_ZERO_BOOL) {
            wt[i].dtype = ST_BOOL;
            wt[i].data = hm_calloc(1, 1);
            continue;
        }
        float *v = hm_malloc(sizeof(float) * n);
        for (size_t k = 0; k < n; k++)
            v[k] = s->kind == INIT_RAND ? urand(s->a) : s->a; /* WN_G: g = the wanted row norm */
        wt[i].dtype = bf16 ? ST_BF16 : ST_F32;
        if (bf16) {
            uint16_t *h = hm_malloc(sizeof(uint16_t) * n);
            for (size_t k = 0; k < n; k++) h[k] = hm_f32_to_bf16(v[k]);
            free(v);
            wt[i].data = h;
        } else {
            wt[i].data = v;
        }
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    const char *meta[2] = {"format", "pt"};
    int rc = st_write(path, wt, g_n, meta, 1);
    for (size_t i = 0; i < g_n; i++) free((void *)wt[i].data);
    free(wt);
    free(g_specs);
    if (rc) {
        fprintf(stderr, "mkcodec: %s\n", hm_errmsg());
        return 1;
    }
    fprintf(stderr, "mkcodec: wrote %s\n", path);
    return 0;
}
