/* config.c - pipeline.yaml parser: libyaml events -> a small node tree -> schema-driven fill. */
#define _GNU_SOURCE
#include "config.h"
#include "hm.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yaml.h>

static const char *k_stage_names[HM_STAGE_COUNT] = {"tokenizer", "backbone", "draft-verifier", "flow-matching",
                                                    "vocoder"};

const char *hm_stage_name(int stage) { return stage >= 0 && stage < HM_STAGE_COUNT ? k_stage_names[stage] : "?"; }
int hm_stage_index(const char *name)
{
    for (int i = 0; i < HM_STAGE_COUNT; i++)
        if (!strcmp(name, k_stage_names[i])) return i;
    return -1;
}

void hm_config_defaults(hm_pipeline_cfg *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->model_dir, sizeof c->model_dir, "out/demo-model");
    snprintf(c->backend, sizeof c->backend, "cpu");
    const char *rt = getenv("XDG_RUNTIME_DIR");
    snprintf(c->run_dir, sizeof c->run_dir, "%s/heartmula", rt && *rt ? rt : "/tmp");
    c->gen.temperature = 1.0;
    c->gen.topk = 50;
    c->gen.cfg = 1.5;
    c->gen.max_seconds = 240.0;
    c->gen.codec_steps = 10;
    c->gen.codec_guidance = 1.25;
    c->gen.seed = 0;
    c->request_timeout_ms = 30000;
    snprintf(c->mps, sizeof c->mps, "auto");
    for (int i = 0; i < HM_STAGE_COUNT; i++) {
        hm_stage_cfg *s = &c->stage[i];
        snprintf(s->name, sizeof s->name, "%s", k_stage_names[i]);
        s->replicas = 1;
        snprintf(s->endpoint, sizeof s->endpoint, "ipc://{run_dir}/%s.sock", k_stage_names[i]);
        snprintf(s->control, sizeof s->control, "ipc://{run_dir}/%s.ctl", k_stage_names[i]);
        s->pool_slots = 8;
        s->watchdog_ms = -1; /* unset: by the stage's backend once it is known (hm_config_parse) */
        s->first_window_yield_ms = 1000;
    }
}

/* ---- a tiny YAML tree (mappings, sequences, scalars) with line numbers ---- */
typedef struct node {
    enum { N_SCALAR, N_MAP, N_SEQ } kind;
    int line;
    char *scalar;          /* N_SCALAR */
    char **keys;           /* N_MAP */
    int *key_lines;
    struct node **kids;    /* N_MAP values / N_SEQ items */
    int n;
} node;

static void node_free(node *n)
{
    if (!n) return;
    free(n->scalar);
    for (int i = 0; i < n->n; i++) {
        if (n->keys) free(n->keys[i]);
        node_free(n->kids[i]);
    }
    free(n->keys);
    free(n->key_lines);
    free(n->kids);
    free(n);
}

static int build(yaml_parser_t *p, yaml_event_t *ev, node **out, const char *label, int depth);

static int next_event(yaml_parser_t *p, yaml_event_t *ev, const char *label)
{
    if (!yaml_parser_parse(p, ev))
        return hm_err("%s:%zu: YAML syntax error: %s", label, p->problem_mark.line + 1,
                      p->problem ? p->problem : "?");
    return HM_OK;
}

static int build(yaml_parser_t *p, yaml_event_t *ev, node **out, const char *label, int depth)
{
    if (depth > 16) return hm_err("%s:%zu: nesting too deep", label, ev->start_mark.line + 1);
    node *n = hm_calloc(1, sizeof *n);
    n->line = (int)ev->start_mark.line + 1;
    *out = n;
    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        n->kind = N_SCALAR;
        n->scalar = hm_strdup((const char *)ev->data.scalar.value);
        return HM_OK;
    case YAML_ALIAS_EVENT:
        return hm_err("%s:%d: YAML aliases are not supported", label, n->line);
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        int is_map = ev->type == YAML_MAPPING_START_EVENT;
        n->kind = is_map ? N_MAP : N_SEQ;
        for (;;) {
            yaml_event_t e;
            if (next_event(p, &e, label)) return HM_ERR;
            if (e.type == YAML_MAPPING_END_EVENT || e.type == YAML_SEQUENCE_END_EVENT) {
                yaml_event_delete(&e);
                return HM_OK;
            }
            if (n->n >= 1024) {
                yaml_event_delete(&e);
                return hm_err("%s:%d: too many entries", label, n->line);
            }
            n->kids = hm_realloc(n->kids, (size_t)(n->n + 1) * sizeof *n->kids);
            if (is_map) {
                if (e.type != YAML_SCALAR_EVENT) {
                    int l = (int)e.start_mark.line + 1;
                    yaml_event_delete(&e);
                    return hm_err("%s:%d: mapping keys must be plain scalars", label, l);
                }
                n->keys = hm_realloc(n->keys, (size_t)(n->n + 1) * sizeof *n->keys);
                n->key_lines = hm_realloc(n->key_lines, (size_t)(n->n + 1) * sizeof *n->key_lines);
                n->keys[n->n] = hm_strdup((const char *)e.data.scalar.value);
                n->key_lines[n->n] = (int)e.start_mark.line + 1;
                for (int i = 0; i < n->n; i++)
                    if (!strcmp(n->keys[i], n->keys[n->n])) {
                        int l = n->key_lines[n->n];
                        char k[128];
                        snprintf(k, sizeof k, "%s", n->keys[n->n]);
                        free(n->keys[n->n]);
                        yaml_event_delete(&e);
                        return hm_err("%s:%d: key '%s' appears twice", label, l, k);
                    }
                yaml_event_delete(&e);
                if (next_event(p, &e, label)) {
                    free(n->keys[n->n]);
                    return HM_ERR;
                }
            }
            n->kids[n->n] = NULL;
            n->n++; /* counted before build() so node_free sees the slot */
            int rc = build(p, &e, &n->kids[n->n - 1], label, depth + 1);
            yaml_event_delete(&e);
            if (rc) return rc;
        }
    }
    default:
        return hm_err("%s:%d: unexpected YAML event", label, n->line);
    }
}

/* ---- schema ---- */
typedef enum { T_STR, T_INT, T_I64, T_DBL, T_ENUM } ftype;
typedef struct {
    const char *key;
    ftype type;
    size_t off, size; /* within the target struct */
    double lo, hi;    /* numeric range */
    const char *choices; /* T_ENUM: "a|b|c" ("" allowed if listed as leading '|') */
} field;

#define F_STR(s, k, m) {k, T_STR, offsetof(s, m), sizeof(((s *)0)->m), 0, 0, NULL}
#define F_ENUM(s, k, m, ch) {k, T_ENUM, offsetof(s, m), sizeof(((s *)0)->m), 0, 0, ch}
#define F_INT(s, k, m, lo, hi) {k, T_INT, offsetof(s, m), sizeof(int), lo, hi, NULL}
#define F_I64(s, k, m, lo, hi) {k, T_I64, offsetof(s, m), sizeof(int64_t), lo, hi, NULL}
#define F_DBL(s, k, m, lo, hi) {k, T_DBL, offsetof(s, m), sizeof(double), lo, hi, NULL}

static const field k_top[] = {
    F_STR(hm_pipeline_cfg, "model_dir", model_dir),
    F_STR(hm_pipeline_cfg, "lm_version", lm_version),
    F_STR(hm_pipeline_cfg, "tokenizer", tokenizer),
    F_ENUM(hm_pipeline_cfg, "backend", backend, "cpu|cuda"),
    F_STR(hm_pipeline_cfg, "run_dir", run_dir),
    F_INT(hm_pipeline_cfg, "request_timeout_ms", request_timeout_ms, 100, 3600000),
    F_ENUM(hm_pipeline_cfg, "mps", mps, "auto|on|off"),
};
static const field k_gen[] = {
    F_DBL(hm_pipeline_cfg, "temperature", gen.temperature, 1e-4, 100),
    F_INT(hm_pipeline_cfg, "topk", gen.topk, 1, 1 << 20),
    F_DBL(hm_pipeline_cfg, "cfg", gen.cfg, 0, 100),
    F_DBL(hm_pipeline_cfg, "max_seconds", gen.max_seconds, 0.08, 3600),
    F_INT(hm_pipeline_cfg, "codec_steps", gen.codec_steps, 1, 1000),
    F_DBL(hm_pipeline_cfg, "codec_guidance", gen.codec_guidance, 0, 100),
    F_I64(hm_pipeline_cfg, "seed", gen.seed, 0, 9.0e15),
    F_ENUM(hm_pipeline_cfg, "sample_format", gen.sample_format, "|pcm16|pcm24|f32"),
};
static const field k_stage[] = {
    F_INT(hm_stage_cfg, "replicas", replicas, 1, 64),
    F_ENUM(hm_stage_cfg, "backend", backend, "|cpu|cuda"),
    F_STR(hm_stage_cfg, "endpoint", endpoint),
    F_STR(hm_stage_cfg, "control", control),
    F_INT(hm_stage_cfg, "pool_slots", pool_slots, 1, 4096),
    F_I64(hm_stage_cfg, "pool_slot_bytes", pool_slot_bytes, 0, 64.0 * (1 << 30)),
    F_ENUM(hm_stage_cfg, "precision", precision, "|fp32|bf16|fp8|nvfp4"),
    F_INT(hm_stage_cfg, "watchdog_ms", watchdog_ms, 0, 3600000),
    F_INT(hm_stage_cfg, "first_window_yield_ms", first_window_yield_ms, 0, 60000),
};

static int enum_ok(const char *choices, const char *v)
{
    const char *p = choices;
    size_t n = strlen(v);
    for (;;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && !strncmp(p, v, n)) return 1;
        if (!bar) return 0;
        p = bar + 1;
    }
}

static int set_field(const field *f, void *base, const node *v, const char *label, const char *path)
{
    if (v->kind != N_SCALAR) return hm_err("%s:%d: %s: expected a scalar value", label, v->line, path);
    char *dst = (char *)base + f->off;
    const char *s = v->scalar;
    char *end;
    switch (f->type) {
    case T_STR:
    case T_ENUM:
        if (strlen(s) >= f->size) return hm_err("%s:%d: %s: value longer than %zu characters", label, v->line, path, f->size - 1);
        if (f->type == T_ENUM && !enum_ok(f->choices, s))
            return hm_err("%s:%d: %s: '%s' is not one of %s", label, v->line, path, s, f->choices[0] == '|' ? f->choices + 1 : f->choices);
        memcpy(dst, s, strlen(s) + 1);
        return HM_OK;
    case T_INT:
    case T_I64: {
        errno = 0;
        long long x = strtoll(s, &end, 10);
        if (errno || end == s || *end || x < f->lo || x > f->hi)
            return hm_err("%s:%d: %s: expected an integer in [%.0f, %.0f], got '%s'", label, v->line, path, f->lo, f->hi, s);
        if (f->type == T_INT) *(int *)dst = (int)x;
        else *(int64_t *)dst = (int64_t)x;
        return HM_OK;
    }
    case T_DBL: {
        errno = 0;
        double x = strtod(s, &end);
        if (errno || end == s || *end || !isfinite(x) || x < f->lo || x > f->hi)
            return hm_err("%s:%d: %s: expected a number in [%g, %g], got '%s'", label, v->line, path, f->lo, f->hi, s);
        *(double *)dst = x;
        return HM_OK;
    }
    }
    return HM_ERR;
}

static int apply(const node *map, const field *fs, size_t nf, void *base, const char *label, const char *prefix)
{
    if (map->kind != N_MAP) return hm_err("%s:%d: %s: expected a mapping", label, map->line, prefix[0] ? prefix : "top level");
    for (int i = 0; i < map->n; i++) {
        char path[256];
        snprintf(path, sizeof path, "%s%s%s", prefix, prefix[0] ? "." : "", map->keys[i]);
        size_t j;
        for (j = 0; j < nf; j++)
            if (!strcmp(fs[j].key, map->keys[i])) break;
        if (j == nf) return hm_err("%s:%d: unknown key '%s'", label, map->key_lines[i], path);
        if (set_field(&fs[j], base, map->kids[i], label, path)) return HM_ERR;
    }
    return HM_OK;
}

/* "{run_dir}" in endpoints -> the run directory */
static int expand(char *s, size_t cap, const char *run_dir)
{
    const char *tok = "{run_dir}";
    char *p = strstr(s, tok);
    if (!p) return HM_OK;
    char tmp[1024];
    int n = snprintf(tmp, sizeof tmp, "%.*s%s%s", (int)(p - s), s, run_dir, p + strlen(tok));
    if (n < 0 || (size_t)n >= cap) return hm_err("endpoint '%s' too long after expanding {run_dir}", s);
    memcpy(s, tmp, (size_t)n + 1);
    return expand(s, cap, run_dir);
}

static int fill(const node *root, const char *label, hm_pipeline_cfg *c)
{
    if (root->kind != N_MAP) return hm_err("%s:%d: top level must be a mapping", label, root->line);
    for (int i = 0; i < root->n; i++) {
        const char *k = root->keys[i];
        const node *v = root->kids[i];
        if (!strcmp(k, "generation")) {
            if (apply(v, k_gen, HM_ARRAY_LEN(k_gen), c, label, "generation")) return HM_ERR;
        } else if (!strcmp(k, "stages")) {
            if (v->kind != N_MAP) return hm_err("%s:%d: stages: expected a mapping of stage names", label, v->line);
            for (int s = 0; s < v->n; s++) {
                int idx = hm_stage_index(v->keys[s]);
                if (idx < 0) return hm_err("%s:%d: unknown key 'stages.%s' (stages are tokenizer, backbone, draft-verifier, flow-matching, vocoder)", label, v->key_lines[s], v->keys[s]);
                char pre[64];
                snprintf(pre, sizeof pre, "stages.%s", v->keys[s]);
                if (v->kids[s]->kind == N_SCALAR && !v->kids[s]->scalar[0]) continue; /* "backbone:" with nothing */
                if (apply(v->kids[s], k_stage, HM_ARRAY_LEN(k_stage), &c->stage[idx], label, pre)) return HM_ERR;
            }
        } else {
            node one = {.kind = N_MAP, .line = root->line, .keys = &root->keys[i], .key_lines = &root->key_lines[i],
                        .kids = &root->kids[i], .n = 1};
            if (apply(&one, k_top, HM_ARRAY_LEN(k_top), c, label, "")) return HM_ERR;
        }
    }
    /* a private pipeline (the CLI's, or hm-launch --run-dir) moves every socket elsewhere */
    const char *ov = getenv("HEARTMULA_RUN_DIR");
    if (ov && *ov) snprintf(c->run_dir, sizeof c->run_dir, "%s", ov);
    if (expand(c->run_dir, sizeof c->run_dir, "")) return HM_ERR;
    for (int i = 0; i < HM_STAGE_COUNT; i++) {
        hm_stage_cfg *s = &c->stage[i];
        if (expand(s->endpoint, sizeof s->endpoint, c->run_dir) || expand(s->control, sizeof s->control, c->run_dir))
            return hm_err_ctx("%s: stages.%s", label, s->name);
        if (!s->backend[0]) snprintf(s->backend, sizeof s->backend, "%s", c->backend);
        /* CPU stages compute whole codec windows between loop turns.  A GPU stage's turn takes at
         * most a window on the device (well under a second), and a GPU stage can hang for good in
         * a wait on an event of a peer that died before the GPU ran its record (seen with MPS off:
         * the backbone after draft-verifier's fault, docs/PERF.md), so it is restarted sooner. */
        if (s->watchdog_ms < 0) s->watchdog_ms = !strcmp(s->backend, "cuda") ? 15000 : 120000;
    }
    return HM_OK;
}

int hm_config_parse(const char *text, size_t len, const char *label, hm_pipeline_cfg *cfg)
{
    hm_config_defaults(cfg);
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) return hm_err("libyaml init failed");
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    node *root = NULL;
    int rc = HM_OK, done = 0;
    while (!done && !rc) {
        yaml_event_t e;
        if (next_event(&p, &e, label)) { rc = HM_ERR; break; }
        switch (e.type) {
        case YAML_STREAM_END_EVENT: done = 1; break;
        case YAML_STREAM_START_EVENT: case YAML_DOCUMENT_START_EVENT: case YAML_DOCUMENT_END_EVENT: break;
        default:
            if (root) rc = hm_err("%s: more than one document", label);
            else rc = build(&p, &e, &root, label, 0);
        }
        yaml_event_delete(&e);
    }
    yaml_parser_delete(&p);
    if (!rc && root && !(root->kind == N_SCALAR && !root->scalar[0])) rc = fill(root, label, cfg);
    else if (!rc) rc = fill(&(node){.kind = N_MAP}, label, cfg);
    node_free(root);
    return rc;
}

int hm_config_load(const char *path, hm_pipeline_cfg *cfg)
{
    char *txt;
    size_t len;
    if (hm_read_file(path, &txt, &len, 1u << 20)) return HM_ERR;
    int rc = hm_config_parse(txt, len, path, cfg);
    free(txt);
    if (!rc) snprintf(cfg->path, sizeof cfg->path, "%s", path);
    return rc;
}

static const char *quoted(const char *s, char *buf, size_t cap)
{
    size_t o = 0;
    buf[o++] = '"';
    for (; *s && o + 3 < cap; s++) {
        if (*s == '"' || *s == '\\') buf[o++] = '\\';
        buf[o++] = *s;
    }
    buf[o++] = '"';
    buf[o] = 0;
    return buf;
}

void hm_config_print(const hm_pipeline_cfg *c, FILE *f)
{
    /* strings are emitted double-quoted with the two characters YAML escapes there */
#define QS(s) quoted(s, q, sizeof q)
    char q[2200];
    fprintf(f, "# written by heartmula from %s\n", c->path[0] ? c->path : "the built-in defaults");
    fprintf(f, "model_dir: %s\n", QS(c->model_dir));
    fprintf(f, "lm_version: %s\n", QS(c->lm_version));
    fprintf(f, "tokenizer: %s\n", QS(c->tokenizer));
    fprintf(f, "backend: %s\n", c->backend);
    fprintf(f, "run_dir: %s\n", QS(c->run_dir));
    fprintf(f, "request_timeout_ms: %d\n", c->request_timeout_ms);
    fprintf(f, "mps: %s\n", c->mps);
    fprintf(f, "generation:\n  temperature: %.17g\n  topk: %d\n  cfg: %.17g\n  max_seconds: %.17g\n"
               "  codec_steps: %d\n  codec_guidance: %.17g\n  seed: %lld\n  sample_format: %s\n",
            c->gen.temperature, c->gen.topk, c->gen.cfg, c->gen.max_seconds, c->gen.codec_steps, c->gen.codec_guidance,
            (long long)c->gen.seed, QS(c->gen.sample_format));
    fprintf(f, "stages:\n");
    for (int i = 0; i < HM_STAGE_COUNT; i++) {
        const hm_stage_cfg *s = &c->stage[i];
        fprintf(f, "  %s:\n    replicas: %d\n    backend: %s\n", s->name, s->replicas, s->backend);
        fprintf(f, "    endpoint: %s\n", QS(s->endpoint));
        fprintf(f, "    control: %s\n", QS(s->control));
        fprintf(f, "    pool_slots: %d\n    pool_slot_bytes: %lld\n    precision: %s\n    watchdog_ms: %d\n",
                s->pool_slots, (long long)s->pool_slot_bytes, QS(s->precision), s->watchdog_ms);
        fprintf(f, "    first_window_yield_ms: %d\n", s->first_window_yield_ms);
    }
#undef QS
}

int hm_config_write(const hm_pipeline_cfg *c, const char *path)
{
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) return hm_err("cannot write '%s': %s", tmp, strerror(errno));
    hm_config_print(c, f);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad || rename(tmp, path) != 0) {
        unlink(tmp);
        return hm_err("cannot write '%s'", path);
    }
    return HM_OK;
}

int hm_stage_endpoint(const hm_pipeline_cfg *c, int stage, int replica, char *buf, size_t cap)
{
    const char *ep = c->stage[stage].endpoint;
    if (replica == 0) {
        snprintf(buf, cap, "%s", ep);
        return HM_OK;
    }
    if (!strncmp(ep, "tcp://", 6)) {
        const char *colon = strrchr(ep, ':');
        long port = colon ? strtol(colon + 1, NULL, 10) : 0;
        if (port <= 0 || port + replica > 65535) return hm_err("stages.%s.endpoint '%s': needs a port for replicas", c->stage[stage].name, ep);
        snprintf(buf, cap, "%.*s:%ld", (int)(colon - ep), ep, port + replica);
        return HM_OK;
    }
    snprintf(buf, cap, "%s-%d", ep, replica);
    return HM_OK;
}
