/* service.c - the tokenizer stage: REQUEST (text or ids) -> PROMPT rows for draft-verifier.
 *
 * Text needs the model's tokenizer.json (loaded once at start when present; a text request
 * without one is answered with an error naming the file).  Rows go to draft-verifier through
 * this stage's shm pool; the request's parameters travel along (less the text itself). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bpe.h"
#include "desc.h"
#include "hm.h"
#include "modelcfg.h"
#include "pool.h"
#include "prompt.h"
#include "service.h"
#include "stage.h"
#include "transport.h"

typedef struct {
    stage_t *st;
    tok_t *tok;             /* NULL: no tokenizer.json, ids only */
    char tok_path[1100];
    hm_gen_config gen;
    hm_lm_config lm;
    int *dv;                /* stage socket index of the PUSH to each draft-verifier replica */
    int ndv;
    pool_t *pool;
} tk_service;

static void forward(tk_service *s, const desc_t *in, const prompt_t *p)
{
    const char *reply = "";
    desc_get_str(in, "reply", &reply);
    size_t bytes = p->len * (size_t)p->ncols * sizeof(int32_t);
    if (bytes > pool_slot_bytes(s->pool)) {
        hm_service_reply_error(reply, in->req_id, "tokenizer", "prompt of %zu rows does not fit the backbone (max_seq_len %d)",
                               p->len, s->lm.backbone.max_seq_len);
        stage_stat_add(s->st, "errors", 1);
        return;
    }
    uint32_t slot;
    if (pool_acquire(s->pool, 30000, &slot)) {
        hm_service_reply_error(reply, in->req_id, "tokenizer", "draft-verifier is not taking prompts: %s", hm_errmsg());
        stage_stat_add(s->st, "errors", 1);
        return;
    }
    memcpy(pool_slot_ptr(s->pool, slot), p->rows, bytes);
    desc_t d;
    desc_init(&d, DESC_PROMPT, in->req_id, 0);
    static const char *const skip[] = {"tags", "lyrics", "tag_ids", "lyric_ids"};
    uint64_t shape[2] = {p->len, (uint64_t)p->ncols};
    int rc = hm_service_copy_params(&d, in, skip, HM_ARRAY_LEN(skip)) || desc_set_i64(&d, "muq_index", (int64_t)p->muq_index) ||
             pool_fill_desc(s->pool, slot, 0, DESC_DT_I32, 2, shape, &d);
    void *sock = stage_socket(s->st, s->dv[in->req_id % (uint64_t)s->ndv]);
    if (!rc) {
        rc = tp_send(sock, NULL, &d, ZMQ_DONTWAIT);
        for (int i = 0; rc == TP_AGAIN && i < 500; i++) { /* draft-verifier restarting: wait a little */
            usleep(20000);
            rc = tp_send(sock, NULL, &d, ZMQ_DONTWAIT);
        }
    }
    if (rc) {
        pool_cancel(s->pool, slot);
        hm_service_reply_error(reply, in->req_id, "tokenizer", "cannot reach draft-verifier: %s", rc == TP_AGAIN ? "not connected" : hm_errmsg());
        stage_stat_add(s->st, "errors", 1);
    }
    desc_free(&d);
}

static void on_request(tk_service *s, const desc_t *in)
{
    const char *reply = "";
    if (desc_get_str(in, "reply", &reply)) {
        LOG_WARN("request %llx without a reply endpoint: dropped", (unsigned long long)in->req_id);
        stage_stat_add(s->st, "errors", 1);
        return;
    }
    if (in->type != DESC_REQUEST) {
        hm_service_reply_error(reply, in->req_id, "tokenizer", "tokenizer takes REQUEST messages, not %s", desc_type_name(in->type));
        return;
    }
    double t0 = hm_now();
    prompt_t p;
    int rc;
    const int32_t *tv = NULL, *lv = NULL;
    uint32_t tn = 0, ln = 0;
    int has_ids = !desc_get_i32s(in, "tag_ids", &tv, &tn) | !desc_get_i32s(in, "lyric_ids", &lv, &ln);
    if (has_ids) {
        rc = prompt_build(tv, tn, lv, ln, s->gen.text_bos_id, s->gen.text_eos_id, s->lm.audio_num_codebooks, &p);
    } else {
        const char *tags = "", *lyr = "";
        desc_get_str(in, "tags", &tags);
        desc_get_str(in, "lyrics", &lyr);
        if (!s->tok) {
            hm_service_reply_error(reply, in->req_id, "tokenizer", "text needs a tokenizer, and '%s' could not be loaded (give --tag-ids/--lyric-ids, or put tokenizer.json in the model folder)", s->tok_path);
            stage_stat_add(s->st, "errors", 1);
            return;
        }
        rc = prompt_from_text(s->tok, tags, strlen(tags), lyr, strlen(lyr), s->gen.text_bos_id, s->gen.text_eos_id,
                              s->lm.audio_num_codebooks, &p);
    }
    if (rc) {
        hm_service_reply_error(reply, in->req_id, "tokenizer", "%s", hm_errmsg());
        stage_stat_add(s->st, "errors", 1);
        return;
    }
    /* ids past the LM's text vocabulary would only fail later, inside the backbone */
    for (size_t i = 0; i < p.len; i++) {
        int32_t id = p.rows[i * (size_t)p.ncols + (size_t)p.ncols - 1];
        if (id < 0 || id >= s->lm.text_vocab_size) {
            hm_service_reply_error(reply, in->req_id, "tokenizer", "token id %d is outside the model's text vocabulary (%d)", id, s->lm.text_vocab_size);
            prompt_free(&p);
            stage_stat_add(s->st, "errors", 1);
            return;
        }
    }
    forward(s, in, &p);
    prompt_free(&p);
    stage_stat_time(s->st, "request", hm_now() - t0);
}

static int tk_on_msg(stage_t *st, int sock, const tp_peer_t *from, desc_t *in, void *user)
{
    (void)st;
    (void)sock;
    (void)from;
    on_request(user, in);
    return HM_OK;
}

void tk_service_free(void *state)
{
    tk_service *s = state;
    free(s->dv);
    if (s->pool) pool_destroy(s->pool);
    if (s->tok) tok_free(s->tok);
    free(s);
}

int tk_service_setup(stage_t *st, const hm_pipeline_cfg *cfg, int replica, void **state)
{
    tk_service *s = hm_calloc(1, sizeof *s);
    s->st = st;
    *state = s;
    char url[600], name[96];
    if (hm_gen_config_load(cfg->model_dir, &s->gen) || hm_lm_config_load(cfg->model_dir, cfg->lm_version[0] ? cfg->lm_version : NULL, &s->lm))
        return HM_ERR;
    if (cfg->tokenizer[0]) snprintf(s->tok_path, sizeof s->tok_path, "%s", cfg->tokenizer);
    else snprintf(s->tok_path, sizeof s->tok_path, "%s/tokenizer.json", cfg->model_dir);
    if (access(s->tok_path, R_OK) == 0) {
        if (tok_load(s->tok_path, &s->tok)) return HM_ERR; /* present but broken: say so at start */
    } else {
        LOG_WARN("no tokenizer at '%s': only token-id requests will work", s->tok_path);
    }
    hm_stage_endpoint(cfg, HM_STAGE_TOKENIZER, replica, url, sizeof url);
    tp_endpoint_t ep = {"tokenizer", url, TP_BIND, ZMQ_PULL};
    if (stage_add_socket(st, &ep, tk_on_msg, s) < 0) return HM_ERR;
    s->ndv = cfg->stage[HM_STAGE_DRAFT_VERIFIER].replicas;
    s->dv = hm_calloc((size_t)s->ndv, sizeof *s->dv);
    for (int r = 0; r < s->ndv; r++) {
        hm_stage_endpoint(cfg, HM_STAGE_DRAFT_VERIFIER, r, url, sizeof url);
        tp_endpoint_t o = {"draft-verifier", url, TP_CONNECT, ZMQ_PUSH};
        if ((s->dv[r] = stage_add_socket(st, &o, NULL, NULL)) < 0) return HM_ERR;
    }
    hm_service_pool_name(cfg, "tokenizer", replica, "prompt", name, sizeof name);
    uint64_t slot = (uint64_t)s->lm.backbone.max_seq_len * (uint64_t)(s->lm.audio_num_codebooks + 1) * 4;
    if (pool_create(POOL_SHM, name, (uint32_t)cfg->stage[HM_STAGE_TOKENIZER].pool_slots, slot, &s->pool)) return HM_ERR;
    snprintf(url, sizeof url, "ipc://%s/tokenizer-%d.rel", cfg->run_dir, replica);
    if (pool_listen(s->pool, url) || stage_add_pool(st, s->pool)) return HM_ERR;
    return HM_OK;
}
