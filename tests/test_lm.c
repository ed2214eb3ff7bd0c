/* test_lm.c - HeartMuLa LM on the CPU against the reference fixtures (tests/fixtures/lm: the
 * tiny BF16 model and heartlib's mula_cfg15 / mula_cfg10 runs): exact argmax frames, sampler
 * logits within 1e-4 relative L2, EOS / length policy, backbone errors, roll-back, and seeded
 * reproducibility (same seed, same song; a frame re-drawn from its index alone). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hm.h"
#include "modelcfg.h"
#include "safetensors.h"
#include "../stages/backbone/backbone.h"
#include "../stages/draft-verifier/depth.h"
#include "../stages/draft-verifier/lm.h"

#define FIX "tests/fixtures/lm"
#define MODEL FIX "/model"

typedef struct {
    int S, muq_index, nf, ncb, V;
    float cfg;
    int32_t *rows;   /* [S, ncb+1] */
    uint8_t *mask;   /* [S, ncb+1] */
    int32_t *frames; /* [nf, ncb] frame-major (transposed from the fixture's [ncb, nf]) */
    float *logits;   /* [nf*ncb, V] */
} lm_case;

static bb_model *g_bb;
static dv_model *g_dv;
static hm_gen_config g_gen;
static lm_case g_c15, g_c10;

static void load_case(const char *name, lm_case *c)
{
    char path[512];
    snprintf(path, sizeof path, FIX "/%s.json", name);
    char *txt;
    size_t len;
    assert_int_equal(hm_read_file(path, &txt, &len, 0), HM_OK);
    cJSON *j = cJSON_Parse(txt);
    assert_non_null(j);
    c->muq_index = cJSON_GetObjectItem(j, "muq_index")->valueint;
    c->cfg = (float)cJSON_GetObjectItem(j, "cfg_scale")->valuedouble;
    cJSON_Delete(j);
    free(txt);

    snprintf(path, sizeof path, FIX "/%s.safetensors", name);
    st_file *f;
    assert_int_equal(st_open(path, &f), HM_OK);
    st_tensor *pt, *pm, *fr, *lg;
    assert_int_equal(st_get(f, "prompt_tokens", -1, NULL, &pt), HM_OK);
    assert_int_equal(pt->ndim, 2);
    assert_int_equal(st_get(f, "prompt_mask", 2, pt->shape, &pm), HM_OK);
    assert_int_equal(st_get(f, "frames", -1, NULL, &fr), HM_OK);
    assert_int_equal(fr->ndim, 2);
    assert_int_equal(st_get(f, "sampler_logits", -1, NULL, &lg), HM_OK);
    assert_int_equal(lg->ndim, 3);
    c->S = (int)pt->shape[0];
    c->ncb = (int)fr->shape[0];
    c->nf = (int)fr->shape[1];
    c->V = (int)lg->shape[2];
    assert_int_equal(pt->shape[1], c->ncb + 1);
    assert_int_equal(lg->shape[0], (int64_t)c->nf * c->ncb);
    c->rows = malloc(sizeof(int32_t) * (size_t)pt->numel);
    assert_int_equal(st_to_i32(pt, c->rows), HM_OK);
    int32_t *m32 = malloc(sizeof(int32_t) * (size_t)pm->numel);
    assert_int_equal(st_to_i32(pm, m32), HM_OK);
    c->mask = malloc((size_t)pm->numel);
    for (int64_t i = 0; i < pm->numel; i++) c->mask[i] = (uint8_t)(m32[i] != 0);
    free(m32);
    int32_t *fk = malloc(sizeof(int32_t) * (size_t)fr->numel);
    assert_int_equal(st_to_i32(fr, fk), HM_OK);
    c->frames = malloc(sizeof(int32_t) * (size_t)fr->numel);
    for (int k = 0; k < c->ncb; k++)
        for (int t = 0; t < c->nf; t++) c->frames[t * c->ncb + k] = fk[k * c->nf + t];
    free(fk);
    c->logits = malloc(sizeof(float) * (size_t)lg->numel);
    assert_int_equal(st_to_f32(lg, c->logits), HM_OK);
    st_close(f);
}

static void free_case(lm_case *c)
{
    free(c->rows); free(c->mask); free(c->frames); free(c->logits);
}

static int setup(void **state)
{
    if (bb_load(MODEL, NULL, &g_bb) != HM_OK || dv_load(MODEL, NULL, &g_dv) != HM_OK) {
        fprintf(stderr, "load: %s\n", hm_errmsg());
        return -1;
    }
    if (hm_gen_config_load(MODEL, &g_gen) != HM_OK) return -1;
    load_case("mula_cfg15", &g_c15);
    load_case("mula_cfg10", &g_c10);
    return 0;
}

static int teardown(void **state)
{
    bb_free(g_bb);
    dv_free(g_dv);
    free_case(&g_c15);
    free_case(&g_c10);
    return 0;
}

static lm_params argmax_params(const lm_case *c, int max_frames)
{
    lm_params p = {.seed = 1, .temperature = 1.0f, .topk = 1, .cfg_scale = c->cfg,
                   .max_frames = max_frames, .audio_eos_id = g_gen.audio_eos_id};
    return p;
}

typedef struct {
    int calls;
    int last_index;
    int ok;
    const int32_t *expect; /* frame-major, or NULL */
    int ncb;
} cb_log;

static void on_frame(void *user, int idx, const int32_t *codes)
{
    cb_log *l = user;
    if (idx != l->calls) l->ok = 0;
    if (l->expect && memcmp(codes, l->expect + (size_t)idx * l->ncb, sizeof(int32_t) * l->ncb))
        l->ok = 0;
    l->calls++;
    l->last_index = idx;
}

static double rel_l2(const float *a, const float *ref, int n)
{
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1e-300));
}

static void check_case(const lm_case *c)
{
    const hm_lm_config *cfg = bb_config(g_bb);
    assert_int_equal(cfg->audio_num_codebooks, c->ncb);
    assert_int_equal(cfg->audio_vocab_size, c->V);
    int32_t *frames = calloc((size_t)c->nf * c->ncb, sizeof(int32_t));
    float *logits = calloc((size_t)c->nf * c->ncb * c->V, sizeof(float));
    int n = -1;
    lm_params p = argmax_params(c, c->nf);
    cb_log log = {.ok = 1, .expect = c->frames, .ncb = c->ncb};
    int rc = lm_generate(g_bb, g_dv, c->rows, c->mask, c->S, c->muq_index, NULL, &p, on_frame,
                         &log, frames, &n, logits);
    if (rc != HM_OK) fail_msg("lm_generate: %s", hm_errmsg());
    assert_int_equal(n, c->nf);
    double worst = 0;
    for (int r = 0; r < c->nf * c->ncb; r++) {
        double e = rel_l2(logits + (size_t)r * c->V, c->logits + (size_t)r * c->V, c->V);
        if (e > worst) worst = e;
        if (e > 1e-4) fail_msg("frame %d codebook %d: logits rel L2 %.3g > 1e-4", r / c->ncb,
                               r % c->ncb, e);
    }
    for (int t = 0; t < c->nf; t++)
        for (int k = 0; k < c->ncb; k++)
            if (frames[t * c->ncb + k] != c->frames[t * c->ncb + k])
                fail_msg("frame %d codebook %d: %d, reference %d", t, k, frames[t * c->ncb + k],
                         c->frames[t * c->ncb + k]);
    assert_int_equal(log.calls, c->nf);
    assert_true(log.ok);
    print_message("cfg %.1f: %d frames exact, worst logits rel L2 %.2e\n", c->cfg, n, worst);
    free(frames);
    free(logits);
}

static void test_mula_cfg15(void **state) { check_case(&g_c15); }
static void test_mula_cfg10(void **state) { check_case(&g_c10); }

/* Length policy: exactly max_frames, each one the reference's. */
static void test_max_frames(void **state)
{
    const lm_case *c = &g_c15;
    int32_t frames[5 * 8];
    int n = -1;
    lm_params p = argmax_params(c, 5);
    cb_log log = {.ok = 1, .expect = c->frames, .ncb = c->ncb};
    assert_int_equal(lm_generate(g_bb, g_dv, c->rows, c->mask, c->S, c->muq_index, NULL, &p,
                                 on_frame, &log, frames, &n, NULL),
                     HM_OK);
    assert_int_equal(n, 5);
    assert_int_equal(log.calls, 5);
    assert_true(log.ok);
    assert_memory_equal(frames, c->frames, sizeof frames);

    lm_params d;
    lm_params_init(&d, &g_gen);
    assert_int_equal(d.topk, 50);
    assert_int_equal(d.max_frames, 1501);
    assert_int_equal(d.audio_eos_id, 65);
    assert_true(d.cfg_scale == 1.5f && d.temperature == 1.0f);

    p.max_frames = 1; /* the prompt frame alone */
    assert_int_equal(lm_generate(g_bb, g_dv, c->rows, c->mask, c->S, c->muq_index, NULL, &p,
                                 NULL, NULL, frames, &n, NULL),
                     HM_OK);
    assert_int_equal(n, 1);
    assert_memory_equal(frames, c->frames, sizeof(int32_t) * 8);
}

/* EOS on the reference frames: with the EOS threshold set to the largest code of some later
 * frame, generation must keep exactly the frames before the first frame (after the prompt
 * frame) reaching it. */
static void test_eos_threshold(void **state)
{
    const lm_case *c = &g_c10;
    int best = -1, fstar = -1;
    for (int t = 1; t < c->nf; t++)
        for (int k = 0; k < c->ncb; k++)
            if (c->frames[t * c->ncb + k] > best) {
                best = c->frames[t * c->ncb + k];
                fstar = t;
            }
    assert_true(fstar >= 1);
    int32_t *frames = calloc((size_t)c->nf * c->ncb, sizeof(int32_t));
    int n = -1;
    lm_params p = argmax_params(c, c->nf);
    p.audio_eos_id = best;
    cb_log log = {.ok = 1, .expect = c->frames, .ncb = c->ncb};
    assert_int_equal(lm_generate(g_bb, g_dv, c->rows, c->mask, c->S, c->muq_index, NULL, &p,
                                 on_frame, &log, frames, &n, NULL),
                     HM_OK);
    assert_int_equal(n, fstar);
    assert_int_equal(log.calls, fstar);
    assert_true(log.ok);
    assert_memory_equal(frames, c->frames, sizeof(int32_t) * (size_t)fstar * c->ncb);

    /* The prompt frame is kept even when it reaches the threshold. */
    int m0 = 0;
    for (int k = 0; k < c->ncb; k++) m0 = HM_MAX(m0, c->frames[k]);
    p.audio_eos_id = HM_MIN(m0, best);
    assert_int_equal(lm_generate(g_bb, g_dv, c->rows, c->mask, c->S, c->muq_index, NULL, &p, NULL,
                                 NULL, frames, &n, NULL),
                     HM_OK);
    assert_true(n >= 1);
    assert_memory_equal(frames, c->frames, sizeof(int32_t) * c->ncb);
    free(frames);
}

static void write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

/* A copy of the tiny model whose codebook-0 head makes an id >= audio EOS win at every frame:
 * rows eos and eos+1 are +/- a large multiple of the prompt's last hidden state direction v, so
 * one of them scores 1e3 |v.h| and beats every ordinary row unless h is orthogonal to v.  The
 * prompt frame (EOS, kept anyway) is followed by an EOS frame, which must be dropped: a song of
 * exactly 1 frame. */
static void test_eos_model(void **state)
{
    const lm_case *c = &g_c10;
    const hm_lm_config *cfg = bb_config(g_bb);
    const int D = cfg->backbone.embed_dim, eos = g_gen.audio_eos_id;
    float *h0 = malloc(sizeof(float) * D);
    bb_seq *s;
    assert_int_equal(bb_seq_new(g_bb, 1, &s), HM_OK);
    assert_int_equal(bb_prefill(g_bb, s, c->rows, c->mask, c->S, c->muq_index, NULL, h0), HM_OK);
    bb_seq_free(s);
    double nn = 0;
    for (int i = 0; i < D; i++) nn += (double)h0[i] * h0[i];

    char dir[] = "/tmp/test_lm_eos.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[600], sub[600];
    snprintf(sub, sizeof sub, "%s/HeartMuLa-oss-tiny", dir);
    assert_int_equal(mkdir(sub, 0755), 0);
    char *txt;
    size_t len;
    assert_int_equal(hm_read_file(MODEL "/HeartMuLa-oss-tiny/config.json", &txt, &len, 0), HM_OK);
    snprintf(path, sizeof path, "%s/config.json", sub);
    write_file(path, txt, len);
    free(txt);
    assert_int_equal(hm_read_file(MODEL "/gen_config.json", &txt, &len, 0), HM_OK);
    snprintf(path, sizeof path, "%s/gen_config.json", dir);
    write_file(path, txt, len);
    free(txt);

    st_file *f;
    assert_int_equal(st_open(MODEL "/HeartMuLa-oss-tiny", &f), HM_OK);
    size_t nt = st_count(f);
    st_wtensor *w = calloc(nt, sizeof *w);
    uint16_t *head = NULL;
    for (size_t i = 0; i < nt; i++) {
        st_tensor *t = st_at(f, i);
        w[i].name = t->name;
        w[i].dtype = t->dtype;
        w[i].ndim = t->ndim;
        memcpy(w[i].shape, t->shape, sizeof t->shape);
        w[i].data = t->data;
        if (!strcmp(t->name, "codebook0_head.weight")) {
            assert_int_equal(t->dtype, ST_BF16);
            head = malloc(t->nbytes);
            memcpy(head, t->data, t->nbytes);
            for (int d = 0; d < D; d++) {
                head[(size_t)eos * D + d] = hm_f32_to_bf16((float)(1e3 * h0[d] / sqrt(nn)));
                head[(size_t)(eos + 1) * D + d] = hm_f32_to_bf16((float)(-1e3 * h0[d] / sqrt(nn)));
            }
            w[i].data = head;
        }
    }
    assert_non_null(head);
    snprintf(path, sizeof path, "%s/model.safetensors", sub);
    assert_int_equal(st_write(path, w, nt, NULL, 0), HM_OK);
    free(w);
    free(head);
    st_close(f);

    bb_model *bb;
    dv_model *dv;
    assert_int_equal(bb_load(dir, NULL, &bb), HM_OK);
    assert_int_equal(dv_load(dir, "tiny", &dv), HM_OK);
    int32_t frames[24 * 8];
    float *logits = malloc(sizeof(float) * 24 * 8 * (size_t)c->V);
    int n = -1;
    lm_params p = argmax_params(c, 24);
    assert_int_equal(lm_generate(bb, dv, c->rows, c->mask, c->S, c->muq_index, NULL, &p, NULL,
                                 NULL, frames, &n, logits),
                     HM_OK);
    assert_int_equal(n, 1);
    assert_int_equal(frames[0], eos); /* the prompt frame is kept even though it is EOS */
    /* frame 1 was EOS too (then dropped) */
    assert_true(fabsf(logits[(size_t)8 * c->V + eos]) > 100.0f);
    bb_free(bb);
    dv_free(dv);
    free(logits);
    free(h0);
    snprintf(path, sizeof path, "%s/model.safetensors", sub);
    unlink(path);
    snprintf(path, sizeof path, "%s/config.json", sub);
    unlink(path);
    rmdir(sub);
    snprintf(path, sizeof path, "%s/gen_config.json", dir);
    unlink(path);
    rmdir(dir);
}

static void test_too_long(void **state)
{
    const lm_case *c = &g_c10;
    const int cap = bb_config(g_bb)->backbone.max_seq_len;
    int32_t *frames = malloc(sizeof(int32_t) * (size_t)(cap + 2) * c->ncb);
    int n = -1;
    lm_params p = argmax_params(c, cap - c->S + 2);
    assert_int_equal(lm_generate(g_bb, g_dv, c->rows, c->mask, c->S, c->muq_index, NULL, &p, NULL,
                                 NULL, frames, &n, NULL),
                     HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "max_seq_len"));
    assert_int_equal(n, 0);
    /* The longest allowed song fills the cache exactly. */
    p.max_frames = cap - c->S + 1;
    p.audio_eos_id = 1 << 30;
    assert_int_equal(lm_generate(g_bb, g_dv, c->rows, c->mask, c->S, c->muq_index, NULL, &p, NULL,
                                 NULL, frames, &n, NULL),
                     HM_OK);
    assert_int_equal(n, p.max_frames);
    assert_memory_equal(frames, c->frames, sizeof(int32_t) * (size_t)c->nf * c->ncb);
    p.max_frames = 0;
    assert_int_equal(lm_generate(g_bb, g_dv, c->rows, c->mask, c->S, c->muq_index, NULL, &p, NULL,
                                 NULL, frames, &n, NULL),
                     HM_ERR);
    free(frames);
}

static void test_backbone_errors(void **state)
{
    const lm_case *c = &g_c15;
    const hm_lm_config *cfg = bb_config(g_bb);
    const int D = cfg->backbone.embed_dim, W = c->ncb + 1, cap = cfg->backbone.max_seq_len;
    float *h = malloc(sizeof(float) * 2 * D * 4);
    bb_seq *s;
    assert_int_equal(bb_seq_new(g_bb, 3, &s), HM_ERR);
    assert_int_equal(bb_seq_new(g_bb, 2, &s), HM_OK);
    assert_int_equal(bb_prefill(g_bb, s, c->rows, c->mask, 0, -1, NULL, h), HM_ERR);
    int32_t *rows = malloc(sizeof(int32_t) * (size_t)c->S * W);
    memcpy(rows, c->rows, sizeof(int32_t) * (size_t)c->S * W);
    rows[3 * W + c->ncb] = cfg->text_vocab_size;
    assert_int_equal(bb_prefill(g_bb, s, rows, c->mask, c->S, c->muq_index, NULL, h), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "text id"));
    rows[3 * W + c->ncb] = -1;
    assert_int_equal(bb_prefill(g_bb, s, rows, c->mask, c->S, c->muq_index, NULL, h), HM_ERR);
    memcpy(rows, c->rows, sizeof(int32_t) * (size_t)c->S * W);
    rows[2 * W + 5] = cfg->audio_vocab_size;
    assert_int_equal(bb_prefill(g_bb, s, rows, c->mask, c->S, c->muq_index, NULL, h), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "code"));
    assert_int_equal(bb_prefill(g_bb, s, c->rows, c->mask, c->S, c->S, NULL, h), HM_ERR);
    assert_int_equal(bb_seq_pos(s), 0);
    assert_int_equal(bb_prefill(g_bb, s, c->rows, c->mask, c->S, c->muq_index, NULL, h), HM_OK);
    assert_int_equal(bb_seq_pos(s), c->S);
    /* a second prefill on a used sequence */
    assert_int_equal(bb_prefill(g_bb, s, c->rows, c->mask, c->S, c->muq_index, NULL, h), HM_ERR);
    int32_t bad[8] = {0, 1, 2, 3, 4, 5, 6, cfg->audio_vocab_size};
    assert_int_equal(bb_extend(g_bb, s, bad, 1, h), HM_ERR);
    bad[7] = -3;
    assert_int_equal(bb_extend(g_bb, s, bad, 1, h), HM_ERR);
    assert_int_equal(bb_extend(g_bb, s, c->frames, 0, h), HM_ERR);
    assert_int_equal(bb_seq_pos(s), c->S);
    /* past max_seq_len */
    assert_int_equal(bb_rollback(s, c->S + 1), HM_ERR);
    assert_int_equal(bb_rollback(s, -1), HM_ERR);
    int32_t *fill = calloc((size_t)cap * c->ncb, sizeof(int32_t));
    float *hb = malloc(sizeof(float) * (size_t)cap * 2 * D);
    assert_int_equal(bb_extend(g_bb, s, fill, cap - c->S + 1, hb), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "max_seq_len"));
    assert_int_equal(bb_extend(g_bb, s, fill, cap - c->S, hb), HM_OK);
    assert_int_equal(bb_seq_pos(s), cap);
    assert_int_equal(bb_extend(g_bb, s, fill, 1, hb), HM_ERR);
    free(fill);
    free(hb);
    free(rows);
    free(h);
    bb_seq_free(s);
}

/* MuQ slot: an all-zero MuQ vector is the same as none given (muq_linear(0) = bias); a real one
 * changes row 0 only where the slot is; the guided batch's row 0 equals the one-row run. */
static void test_muq_and_rows(void **state)
{
    const lm_case *c = &g_c15;
    const hm_lm_config *cfg = bb_config(g_bb);
    const int D = cfg->backbone.embed_dim;
    float *h1 = malloc(sizeof(float) * 2 * D), *h2 = malloc(sizeof(float) * 2 * D);
    float *h3 = malloc(sizeof(float) * 2 * D), *one = malloc(sizeof(float) * D);
    float *muq = calloc((size_t)cfg->muq_dim, sizeof(float));
    bb_seq *s;
#define PREFILL(B_, mi, mq, out)                                                               \
    assert_int_equal(bb_seq_new(g_bb, B_, &s), HM_OK);                                         \
    assert_int_equal(bb_prefill(g_bb, s, c->rows, c->mask, c->S, mi, mq, out), HM_OK);         \
    bb_seq_free(s)
    PREFILL(2, c->muq_index, NULL, h1);
    PREFILL(2, c->muq_index, muq, h2);
    assert_memory_equal(h1, h2, sizeof(float) * 2 * D);
    for (int i = 0; i < cfg->muq_dim; i++) muq[i] = (float)((i % 5) - 2);
    PREFILL(2, c->muq_index, muq, h3);
    assert_true(rel_l2(h3, h1, D) > 1e-3);                     /* row 0 sees the MuQ vector */
    assert_memory_equal(h3 + D, h1 + D, sizeof(float) * D);    /* row 1 has the uncond slot */
    PREFILL(2, -1, NULL, h3);
    assert_true(rel_l2(h3, h1, D) > 1e-3);
    PREFILL(1, c->muq_index, NULL, one);
    assert_true(rel_l2(one, h1, D) < 1e-6);
#undef PREFILL
    free(h1); free(h2); free(h3); free(one); free(muq);
}

/* Teacher-forced extend: k frames at once equal k single extends, and a roll-back followed by a
 * re-extend reproduces the same hidden states (what speculative decoding relies on). */
static void test_extend_rollback(void **state)
{
    const lm_case *c = &g_c15;
    const int D = bb_config(g_bb)->backbone.embed_dim, B = 2, K = 6;
    float h0[2 * 64 * 2];
    assert_true(D <= 64);
    float *one = malloc(sizeof(float) * K * B * D), *many = malloc(sizeof(float) * K * B * D);
    bb_seq *s;
    assert_int_equal(bb_seq_new(g_bb, B, &s), HM_OK);
    assert_int_equal(bb_prefill(g_bb, s, c->rows, c->mask, c->S, c->muq_index, NULL, h0), HM_OK);
    for (int j = 0; j < K; j++)
        assert_int_equal(bb_extend(g_bb, s, c->frames + j * c->ncb, 1, one + (size_t)j * B * D),
                         HM_OK);
    assert_int_equal(bb_seq_pos(s), c->S + K);
    assert_int_equal(bb_rollback(s, c->S), HM_OK);
    assert_int_equal(bb_extend(g_bb, s, c->frames, K, many), HM_OK);
    assert_true(rel_l2(many, one, K * B * D) < 1e-5);
    assert_int_equal(bb_rollback(s, c->S + 2), HM_OK);
    assert_int_equal(bb_extend(g_bb, s, c->frames + 2 * c->ncb, K - 2, many), HM_OK);
    assert_true(rel_l2(many, one + (size_t)2 * B * D, (K - 2) * B * D) < 1e-5);

    /* The frame after frames[0..K-1] decoded from the last hidden state is the reference's
     * frame K (teacher-forced step, argmax). */
    dv_sample_params sp = {1.0f, 1, c->cfg};
    dv_rng rng = {1, 0, (uint64_t)K};
    int32_t codes[8];
    float lg[8 * 69];
    assert_int_equal(dv_frame(g_dv, many + (size_t)(K - 3) * B * D, B, &sp, &rng, codes, lg),
                     HM_OK);
    assert_memory_equal(codes, c->frames + K * c->ncb, sizeof codes);
    for (int k = 0; k < c->ncb; k++)
        assert_true(rel_l2(lg + k * c->V, c->logits + (size_t)(K * c->ncb + k) * c->V, c->V) < 1e-4);
    assert_int_equal(dv_frame(g_dv, many, 3, &sp, &rng, codes, NULL), HM_ERR);
    bb_seq_free(s);
    free(one);
    free(many);
}

/* Sampling (top-k 50): the same seed gives the same song, another seed another; any frame can be
 * re-drawn from (seed, frame index) alone after re-feeding the earlier frames. */
static void test_seeded_song(void **state)
{
    const lm_case *c = &g_c15;
    const int F = 16, ncb = c->ncb, D = bb_config(g_bb)->backbone.embed_dim;
    int32_t a[16 * 8], b[16 * 8], d[16 * 8];
    int na, nb, nd;
    lm_params p = {.seed = 20260126, .temperature = 1.0f, .topk = 50, .cfg_scale = 1.5f,
                   .max_frames = F, .audio_eos_id = 1 << 30 /* no EOS: policy tested above */};
    assert_int_equal(lm_generate(g_bb, g_dv, c->rows, c->mask, c->S, c->muq_index, NULL, &p, NULL,
                                 NULL, a, &na, NULL),
                     HM_OK);
    assert_int_equal(lm_generate(g_bb, g_dv, c->rows, c->mask, c->S, c->muq_index, NULL, &p, NULL,
                                 NULL, b, &nb, NULL),
                     HM_OK);
    assert_int_equal(na, nb);
    assert_true(na >= 4);
    assert_memory_equal(a, b, sizeof(int32_t) * (size_t)na * ncb);
    /* sampled, not argmax: differs from the argmax song */
    assert_memory_not_equal(a, c->frames, sizeof(int32_t) * (size_t)HM_MIN(na, c->nf) * ncb);
    p.seed++;
    assert_int_equal(lm_generate(g_bb, g_dv, c->rows, c->mask, c->S, c->muq_index, NULL, &p, NULL,
                                 NULL, d, &nd, NULL),
                     HM_OK);
    assert_memory_not_equal(a, d, sizeof(int32_t) * 4 * ncb);
    p.seed--;

    /* Restart: a fresh sequence re-fed frames 0..f-1 re-draws frame f. */
    const int f = na - 1;
    float *h = malloc(sizeof(float) * (size_t)(f + 1) * 2 * D);
    bb_seq *s;
    assert_int_equal(bb_seq_new(g_bb, 2, &s), HM_OK);
    assert_int_equal(bb_prefill(g_bb, s, c->rows, c->mask, c->S, c->muq_index, NULL, h), HM_OK);
    assert_int_equal(bb_extend(g_bb, s, a, f, h), HM_OK);
    dv_sample_params sp = {p.temperature, p.topk, p.cfg_scale};
    dv_rng rng = {p.seed, p.stream, (uint64_t)f};
    int32_t codes[8];
    assert_int_equal(dv_frame(g_dv, h + (size_t)(f - 1) * 2 * D, 2, &sp, &rng, codes, NULL), HM_OK);
    assert_memory_equal(codes, a + (size_t)f * ncb, sizeof codes);
    bb_seq_free(s);
    free(h);
}

/* A model folder written by bin/mkmodel (the random-weight generator) loads and generates. */
static void test_mkmodel_folder(void **state)
{
    if (access("bin/mkmodel", X_OK) != 0) skip();
    char dir[] = "/tmp/test_lm_mk.XXXXXX", cmd[600];
    assert_non_null(mkdtemp(dir));
    snprintf(cmd, sizeof cmd, "bin/mkmodel --preset tiny --seed 5 -o %s/m 2>/dev/null", dir);
    assert_int_equal(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s/m", dir);
    bb_model *bb;
    dv_model *dv;
    if (bb_load(cmd, NULL, &bb) != HM_OK || dv_load(cmd, "tiny", &dv) != HM_OK)
        fail_msg("%s", hm_errmsg());
    const lm_case *c = &g_c15;
    int32_t frames[12 * 8];
    int n;
    lm_params p = {.seed = 9, .temperature = 1.0f, .topk = 1, .cfg_scale = 1.5f, .max_frames = 12,
                   .audio_eos_id = 65};
    assert_int_equal(lm_generate(bb, dv, c->rows, c->mask, c->S, c->muq_index, NULL, &p, NULL,
                                 NULL, frames, &n, NULL),
                     HM_OK);
    assert_int_equal(n, 12); /* the special ids' head rows are zero: argmax never ends the song */
    for (int i = 0; i < 12 * 8; i++) assert_true(frames[i] >= 0 && frames[i] < 64);
    bb_free(bb);
    dv_free(dv);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static void stamp_frame(void *user, int idx, const int32_t *codes)
{
    ((double *)user)[idx] = hm_now();
}

/* Timing, not a check: HM_LM_BENCH_MODEL=DIR [HM_LM_BENCH_FRAMES=N] [HM_LM_BENCH_CFG=1.5] runs
 * N frames (default 32) of argmax generation on that model with the fixture prompt and prints
 * load time and ms per frame.  Without the variable it times the tiny fixture model. */
static void test_bench(void **state)
{
    const char *dir = getenv("HM_LM_BENCH_MODEL");
    const char *fe = getenv("HM_LM_BENCH_FRAMES"), *ce = getenv("HM_LM_BENCH_CFG");
    int F = fe ? atoi(fe) : 200;
    float cfg = ce ? (float)atof(ce) : 1.5f;
    bb_model *bb = g_bb;
    dv_model *dv = g_dv;
    double t0 = hm_now();
    if (dir && (bb_load(dir, NULL, &bb) != HM_OK || dv_load(dir, NULL, &dv) != HM_OK))
        fail_msg("%s", hm_errmsg());
    double tl = hm_now() - t0;
    const lm_case *c = &g_c15;
    const int ncb = bb_config(bb)->audio_num_codebooks;
    int32_t *frames = malloc(sizeof(int32_t) * (size_t)F * ncb);
    int n;
    double *stamp = calloc((size_t)F, sizeof(double));
    lm_params p = {.seed = 9, .temperature = 1.0f, .topk = 50, .cfg_scale = cfg, .max_frames = F,
                   .audio_eos_id = 1 << 30};
    t0 = hm_now();
    assert_int_equal(lm_generate(bb, dv, c->rows, c->mask, c->S, c->muq_index, NULL, &p,
                                 stamp_frame, stamp, frames, &n, NULL),
                     HM_OK);
    print_message("bench %s cfg %.2f: load %.2f s, prompt (%d positions) + frame 0 %.1f ms, "
                  "%.2f ms/frame over frames 1..%d\n",
                  dir ? dir : "tiny fixture", cfg, tl, c->S, (stamp[0] - t0) * 1e3,
                  (stamp[n - 1] - stamp[0]) * 1e3 / (n > 1 ? n - 1 : 1), n - 1);
    free(stamp);
    free(frames);
    if (dir) {
        bb_free(bb);
        dv_free(dv);
    }
}

int main(void)
{
    hm_log_set_level(HM_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mula_cfg15),      cmocka_unit_test(test_mula_cfg10),
        cmocka_unit_test(test_max_frames),      cmocka_unit_test(test_eos_threshold),
        cmocka_unit_test(test_eos_model),       cmocka_unit_test(test_too_long),
        cmocka_unit_test(test_backbone_errors), cmocka_unit_test(test_muq_and_rows),
        cmocka_unit_test(test_extend_rollback),
        cmocka_unit_test(test_seeded_song),     cmocka_unit_test(test_mkmodel_folder),
        cmocka_unit_test(test_bench),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
