/* modelcfg.c - config.json / gen_config.json of a model folder -> typed structs (MODEL.md §1). */
#define _GNU_SOURCE
#include "modelcfg.h"
#include "hm.h"

#include <cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const hm_flavor k_flavors[] = {
    {"llama-3B", 28, 24, 8, 3072, 8192, 8192, 500000.0f, 32.0f, 1e-5f},
    {"llama-300M", 3, 8, 4, 3072, 8192, 2048, 500000.0f, 32.0f, 1e-5f},
    {"llama-7B", 32, 32, 8, 4096, 14336, 8192, 500000.0f, 32.0f, 1e-5f},
    {"llama-400M", 4, 8, 4, 3072, 8192, 2048, 500000.0f, 32.0f, 1e-5f},
};

const hm_flavor *hm_flavor_builtin(const char *name)
{
    for (size_t i = 0; i < HM_ARRAY_LEN(k_flavors); i++)
        if (!strcmp(k_flavors[i].name, name)) return &k_flavors[i];
    return NULL;
}

static int load_json(const char *path, cJSON **out)
{
    char *txt;
    if (hm_read_file(path, &txt, NULL, 16u << 20)) return HM_ERR;
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    if (!j || !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return hm_err("'%s' is not a valid JSON object", path);
    }
    *out = j;
    return HM_OK;
}

/* Integer field: must exist, be a whole number and lie in [lo, hi]. */
static int get_int(const cJSON *o, const char *key, int lo, int hi, int *out, const char *where)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) return hm_err("%s: missing \"%s\"", where, key);
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)(long long)v->valuedouble || v->valuedouble < lo ||
        v->valuedouble > hi)
        return hm_err("%s: \"%s\" must be an integer in [%d, %d]", where, key, lo, hi);
    *out = (int)v->valuedouble;
    return HM_OK;
}

static int get_float(const cJSON *o, const char *key, float *out, const char *where)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) return hm_err("%s: missing \"%s\"", where, key);
    if (!cJSON_IsNumber(v)) return hm_err("%s: \"%s\" must be a number", where, key);
    *out = (float)v->valuedouble;
    return HM_OK;
}

/* Fields of a "flavors" entry; a present entry overrides the built-in of the same name,
 * keys it omits keep the built-in's values (or are an error for a new flavor). */
static int parse_flavor(const cJSON *o, const char *name, hm_flavor *fl, int have_base, const char *where)
{
    char w[512];
    snprintf(w, sizeof w, "%s: flavor '%s'", where, name);
    snprintf(fl->name, sizeof fl->name, "%s", name);
    struct { const char *k; int *p; int lo, hi; } ints[] = {
        {"num_layers", &fl->num_layers, 1, 1024},        {"num_heads", &fl->num_heads, 1, 1024},
        {"num_kv_heads", &fl->num_kv_heads, 1, 1024},    {"embed_dim", &fl->embed_dim, 1, 65536},
        {"intermediate_dim", &fl->intermediate_dim, 1, 1 << 20}, {"max_seq_len", &fl->max_seq_len, 1, 1 << 20},
    };
    for (size_t i = 0; i < HM_ARRAY_LEN(ints); i++) {
        if (have_base && !cJSON_GetObjectItemCaseSensitive(o, ints[i].k)) continue;
        if (get_int(o, ints[i].k, ints[i].lo, ints[i].hi, ints[i].p, w)) return HM_ERR;
    }
    struct { const char *k; float *p; float def; } fls[] = {
        {"rope_base", &fl->rope_base, 500000.0f}, {"rope_scale_factor", &fl->rope_scale_factor, 32.0f},
        {"norm_eps", &fl->norm_eps, 1e-5f},
    };
    for (size_t i = 0; i < HM_ARRAY_LEN(fls); i++) {
        if (!cJSON_GetObjectItemCaseSensitive(o, fls[i].k)) {
            if (!have_base) *fls[i].p = fls[i].def; /* MODEL.md: all flavors share these */
            continue;
        }
        if (get_float(o, fls[i].k, fls[i].p, w)) return HM_ERR;
    }
    return HM_OK;
}

static int check_flavor(const hm_flavor *f, const char *where)
{
    if (f->embed_dim % f->num_heads) return hm_err("%s: flavor '%s': embed_dim %d not divisible by num_heads %d", where, f->name, f->embed_dim, f->num_heads);
    if (f->num_heads % f->num_kv_heads) return hm_err("%s: flavor '%s': num_heads %d not divisible by num_kv_heads %d", where, f->name, f->num_heads, f->num_kv_heads);
    if ((f->embed_dim / f->num_heads) % 2) return hm_err("%s: flavor '%s': odd head_dim", where, f->name);
    return HM_OK;
}

static int resolve_flavor(const cJSON *cfg, const char *key, hm_flavor *out, const char *where)
{
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (!cJSON_IsString(n)) return hm_err("%s: missing string \"%s\"", where, key);
    const hm_flavor *base = hm_flavor_builtin(n->valuestring);
    const cJSON *fl = cJSON_GetObjectItemCaseSensitive(cfg, "flavors");
    const cJSON *o = fl ? cJSON_GetObjectItemCaseSensitive(fl, n->valuestring) : NULL;
    if (fl && !cJSON_IsObject(fl)) return hm_err("%s: \"flavors\" must be an object", where);
    if (!base && !o) return hm_err("%s: unknown flavor '%s' (not built in and not in \"flavors\")", where, n->valuestring);
    if (base) *out = *base;
    if (o && parse_flavor(o, n->valuestring, out, base != NULL, where)) return HM_ERR;
    return check_flavor(out, where);
}

int hm_lm_config_load(const char *model_dir, const char *version, hm_lm_config *out)
{
    memset(out, 0, sizeof *out);
    struct stat st;
    if (stat(model_dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return hm_err("model folder '%s' does not exist (see README: downloading the checkpoints)", model_dir);
    if (version) {
        snprintf(out->dir, sizeof out->dir, "%s/HeartMuLa-oss-%s", model_dir, version);
    } else {
        DIR *d = opendir(model_dir);
        struct dirent *e;
        int found = 0;
        char names[512] = "";
        while (d && (e = readdir(d))) {
            if (strncmp(e->d_name, "HeartMuLa-oss-", 14)) continue;
            if (found++) strncat(names, ", ", sizeof names - strlen(names) - 1);
            strncat(names, e->d_name, sizeof names - strlen(names) - 1);
            snprintf(out->dir, sizeof out->dir, "%s/%s", model_dir, e->d_name);
        }
        if (d) closedir(d);
        if (!found) return hm_err("model folder '%s' has no HeartMuLa-oss-* folder", model_dir);
        if (found > 1) return hm_err("model folder '%s' has several LM folders (%s): choose one with --lm-version", model_dir, names);
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", out->dir);
    cJSON *j;
    if (load_json(path, &j)) return HM_ERR;
    int rc = resolve_flavor(j, "backbone_flavor", &out->backbone, path) ||
             resolve_flavor(j, "decoder_flavor", &out->decoder, path) ||
             get_int(j, "text_vocab_size", 1, 1 << 24, &out->text_vocab_size, path) ||
             get_int(j, "audio_vocab_size", 2, 1 << 24, &out->audio_vocab_size, path) ||
             get_int(j, "audio_num_codebooks", 2, 64, &out->audio_num_codebooks, path) ||
             get_int(j, "muq_dim", 1, 1 << 16, &out->muq_dim, path);
    cJSON_Delete(j);
    return rc ? HM_ERR : HM_OK;
}

int hm_gen_config_load(const char *model_dir, hm_gen_config *out)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/gen_config.json", model_dir);
    cJSON *j;
    if (load_json(path, &j)) return HM_ERR;
    int rc = get_int(j, "text_bos_id", 0, 1 << 24, &out->text_bos_id, path) ||
             get_int(j, "text_eos_id", 0, 1 << 24, &out->text_eos_id, path) ||
             get_int(j, "audio_eos_id", 0, 1 << 24, &out->audio_eos_id, path) ||
             get_int(j, "empty_id", 0, 1 << 24, &out->empty_id, path);
    cJSON_Delete(j);
    return rc ? HM_ERR : HM_OK;
}

static int get_int_list(const cJSON *o, const char *key, int *dst, int max, int *n, const char *where)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsArray(a)) return hm_err("%s: missing array \"%s\"", where, key);
    int c = cJSON_GetArraySize(a);
    if (c < 1 || c > max) return hm_err("%s: \"%s\" must have 1..%d entries", where, key, max);
    int i = 0;
    for (const cJSON *v = a->child; v; v = v->next, i++) {
        if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble > 4096 || v->valuedouble != (int)v->valuedouble)
            return hm_err("%s: \"%s\"[%d] must be a positive integer", where, key, i);
        dst[i] = (int)v->valuedouble;
    }
    *n = c;
    return HM_OK;
}

int hm_codec_config_load(const char *model_dir, hm_codec_config *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->dir, sizeof out->dir, "%s/HeartCodec-oss", model_dir);
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", out->dir);
    cJSON *j;
    if (load_json(path, &j)) return HM_ERR;
    int nk = 0;
    int rc = get_int(j, "dim", 1, 1 << 16, &out->dim, path) ||
             get_int(j, "codebook_size", 1, 1 << 24, &out->codebook_size, path) ||
             get_int(j, "codebook_dim", 1, 1 << 16, &out->codebook_dim, path) ||
             get_int(j, "num_quantizers", 1, 64, &out->num_quantizers, path) ||
             get_int(j, "attention_head_dim", 2, 4096, &out->attention_head_dim, path) ||
             get_int(j, "in_channels", 1, 1 << 16, &out->in_channels, path) ||
             get_int(j, "num_attention_heads", 1, 1024, &out->num_attention_heads, path) ||
             get_int(j, "num_layers", 0, 1024, &out->num_layers, path) ||
             get_int(j, "num_layers_2", 0, 1024, &out->num_layers_2, path) ||
             get_int(j, "out_channels", 1, 1 << 16, &out->out_channels, path) ||
             get_int(j, "latent_hidden_dim", 1, 1 << 16, &out->latent_hidden_dim, path) ||
             get_int(j, "init_channel", 1, 1 << 16, &out->init_channel, path) ||
             get_int(j, "sample_rate", 1, 1 << 22, &out->sample_rate, path) ||
             get_int_list(j, "upsample_factors", out->upsample_factors, 8, &out->n_up, path) ||
             get_int_list(j, "upsample_kernel_sizes", out->upsample_kernel_sizes, 8, &nk, path);
    if (!rc && nk != out->n_up) rc = hm_err("%s: upsample_factors and upsample_kernel_sizes differ in length", path);
    /* optional fields with the release's values as defaults */
    struct { const char *k; int *p; int def; } opt[] = {
        {"num_samples", &out->num_samples, 2}, {"causal", &out->causal, 1},
        {"default_kernel_size", &out->default_kernel_size, 7}, {"delay_kernel_size", &out->delay_kernel_size, 5},
        {"res_kernel_size", &out->res_kernel_size, 7}, {"num_bands", &out->num_bands, 1},
    };
    for (size_t i = 0; !rc && i < HM_ARRAY_LEN(opt); i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, opt[i].k);
        if (!v) *opt[i].p = opt[i].def;
        else if (cJSON_IsBool(v)) *opt[i].p = cJSON_IsTrue(v);
        else rc = get_int(j, opt[i].k, 0, 4096, opt[i].p, path);
    }
    cJSON_Delete(j);
    return rc ? HM_ERR : HM_OK;
}
