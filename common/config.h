/* config.h - pipeline.yaml -> typed struct (libyaml).  Table-driven: every key the file may
 * hold is one row of a schema in config.c; an unknown key, a wrong type or an out-of-range value
 * is an error naming the key and its line ("pipeline.yaml:12: stages.backbone.replicas: expected
 * an integer in [1, 64]").  Strings like "{run_dir}" inside endpoints are expanded on load; the
 * environment variable HEARTMULA_RUN_DIR, when set, replaces run_dir (private pipelines). */
#ifndef HM_CONFIG_H
#define HM_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { HM_STAGE_TOKENIZER, HM_STAGE_BACKBONE, HM_STAGE_DRAFT_VERIFIER, HM_STAGE_FLOW_MATCHING,
       HM_STAGE_VOCODER, HM_STAGE_COUNT };

typedef struct {
    char name[32];          /* "tokenizer", "backbone", ... */
    int replicas;           /* processes the launcher starts (data edges load-balance over them) */
    char backend[8];        /* "cpu" | "cuda"; "" = the pipeline's */
    char endpoint[512];     /* the stage's input socket (bound by the stage) */
    char control[512];      /* control socket (health, stats, drain, shutdown) */
    int pool_slots;         /* output buffer pool: slots */
    int64_t pool_slot_bytes;/* output buffer pool: bytes per slot (0 = the stage picks) */
    char precision[16];     /* weights: "fp32" | "bf16" | "fp8" | "nvfp4" ("" = backend default) */
    int watchdog_ms;        /* the launcher restarts a stage silent for this long (0 = off; default
                             * 15 s for a cuda stage, 120 s for a cpu one) */
    int first_window_yield_ms; /* draft-verifier, with it and flow-matching on cuda: after a song's
                             * first codec window of frames, wait up to this long for flow-matching
                             * to finish that window before the next frame (0 = never wait) */
} hm_stage_cfg;

typedef struct {
    char path[1024];        /* the file this came from */
    char model_dir[1024];
    char lm_version[64];    /* "" = the only HeartMuLa-oss-* folder */
    char tokenizer[1024];   /* "" = MODEL_DIR/tokenizer.json */
    char backend[8];        /* default backend of every stage */
    char run_dir[512];      /* sockets and shared-memory names live here */
    struct {
        double temperature, cfg, max_seconds, codec_guidance;
        int topk, codec_steps;
        int64_t seed;
        char sample_format[8]; /* "" = pcm16 for WAV, pcm24 for FLAC */
    } gen;
    int request_timeout_ms; /* a stage request without an answer for this long is retried */
    char mps[8];            /* hm-launch with a cuda stage: "auto" (default) runs a private MPS
                             * control daemon for its stages when the machine has one, "on" requires
                             * it, "off" lets the stages' contexts time-slice the GPU */
    hm_stage_cfg stage[HM_STAGE_COUNT];
} hm_pipeline_cfg;

const char *hm_stage_name(int stage);
int hm_stage_index(const char *name); /* -1 if unknown */

/* Fill *cfg with the built-in defaults (what an empty pipeline.yaml means). */
void hm_config_defaults(hm_pipeline_cfg *cfg);
/* Parse `path` over the defaults.  On error *cfg is unspecified and hm_errmsg() names the line. */
int hm_config_load(const char *path, hm_pipeline_cfg *cfg);
/* Same from a string (tests, fuzzing); `label` names it in messages. */
int hm_config_parse(const char *text, size_t len, const char *label, hm_pipeline_cfg *cfg);

/* The input endpoint of replica r of a stage: replica 0 binds the configured endpoint, replica r
 * binds "<endpoint>-r" (ipc) or port + r (tcp).  Producers connect to every replica and pick one
 * per request (request id modulo replicas), so all messages of a request meet the same replica. */
int hm_stage_endpoint(const hm_pipeline_cfg *cfg, int stage, int replica, char *buf, size_t cap);

/* Write *cfg as a complete pipeline.yaml (atomically) that hm_config_load reads back to the
 * same values; endpoints are written expanded.  Used for private pipelines with overrides. */
int hm_config_write(const hm_pipeline_cfg *cfg, const char *path);
/* The same YAML (every key, defaults resolved) to f. */
void hm_config_print(const hm_pipeline_cfg *cfg, FILE *f);

#ifdef __cplusplus
}
#endif

#endif
