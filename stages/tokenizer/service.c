/* service.c - the tokenizer stage: REQUEST (text or ids) -> PROMPT rows for draft-verifier.
 *
 * Text needs the model's tokenizer.json (loaded once at start when present; a text request
 * without one is answered with an error naming the file).  Rows go to draft-verifier through
 * this stage's shm pool; the request's parameters travel along (less the text itself).
 *
 * A draft-verifier replica that is down (restarting: it binds its socket only once its model is
 * loaded, 4-5 s at the released sizes, after the launcher's restart backoff of 1-30 s) does not
 * fail the prompts meant for it: they wait in a queue, in order, and a timer sends them when it
 * is back.  The loop goes on serving meanwhile (the other replicas' prompts too).  A prompt
 * that could not be delivered within TK_WAIT_S is answered with an error; a request sent again
 * (the client's recovery after a restart) replaces its queued copy. */
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

/* How long a prompt waits for its replica: longer than any restart (the launcher's restart backoff
 * grows to 30 s, then the model loads), as the client, which still waits, would only get an error. */
#define TK_WAIT_S 120.0

typedef struct {
    desc_t d;       /* the PROMPT, its pool slot filled */
    uint32_t slot;
    int replica;    /* draft-verifier replica */
    char *reply;    /* the client's endpoint */
    double since, deadline;
} tk_pending;

typedef struct {
    stage_t *st;
    tok_t *tok;             /* NULL: no tokenizer.json, ids only */
    char tok_path[1100];
    hm_gen_config gen;
    hm_lm_config lm;
    int *dv;                /* stage socket index of the PUSH to each draft-verifier replica */
    int ndv;
    pool_t *pool;
    tk_pending *pending;    /* prompts waiting for their replica, oldest first */
    int npending, cap_pending;
} tk_service;

static int waiting_for(const tk_service *s, int replica)
{
    for (int i = 0; i < s->npending; i++)
        if (s->pending[i].replica == replica) return 1;
    return 0;
}

static void drop_pending(tk_service *s, int i, int cancel_slot)
{
    tk_pending *q = &s->pending[i];
    if (cancel_slot) pool_cancel(s->pool, q->slot);
    desc_free(&q->d);
    free(q->reply);
    memmove(q, q + 1, (size_t)(s->npending - i - 1) * sizeof *q);
    s->npending--;
}

/* Takes d (and the slot) into the queue.  A queued copy of the same request goes: the client
 * sent it again, and only the new one is answered. */
static void queue_prompt(tk_service *s, desc_t *d, uint32_t slot, int replica, const char *reply)
{
    for (int i = 0; i < s->npending; i++)
        if (s->pending[i].d.req_id == d->req_id) {
            LOG_INFO("request %llx sent again: its waiting prompt is replaced", (unsigned long long)d->req_id);
            drop_pending(s, i, 1);
            break;
        }
    if (s->npending == s->cap_pending) {
        s->cap_pending = s->cap_pending ? s->cap_pending * 2 : 8;
        s->pending = hm_realloc(s->pending, (size_t)s->cap_pending * sizeof *s->pending);
    }
    const double now = hm_now();
    if (!waiting_for(s, replica))
        LOG_WARN("draft-verifier[%d] is not connected (starting or restarting): its prompts wait, up to %.0f s each", replica, TK_WAIT_S);
    s->pending[s->npending++] = (tk_pending){.d = *d, .slot = slot, .replica = replica, .reply = hm_strdup(reply),
                                             .since = now, .deadline = now + TK_WAIT_S};
    stage_stat_add(s->st, "prompts_waited", 1);
}

/* Timer: send what waits, oldest first; a replica that still cannot take one keeps the rest of
 * its prompts back, in order. */
static void send_pending(stage_t *st, void *user)
{
    tk_service *s = user;
    uint64_t blocked = 0; /* replicas (bit r % 64) that refused a prompt this turn */
    const double now = hm_now();
    for (int i = 0; i < s->npending;) {
        tk_pending *q = &s->pending[i];
        const uint64_t bit = 1ull << (q->replica % 64);
        int rc = TP_AGAIN;
        if (!(blocked & bit)) rc = tp_send(stage_socket(st, s->dv[q->replica]), NULL, &q->d, ZMQ_DONTWAIT);
        if (rc == HM_OK) {
            LOG_INFO("request %llx: prompt delivered to draft-verifier[%d] after %.1f s", (unsigned long long)q->d.req_id,
                     q->replica, now - q->since);
            drop_pending(s, i, 0);
            continue;
        }
        if (rc == TP_AGAIN && now < q->deadline) {
            blocked |= bit;
            i++;
            continue;
        }
        if (rc == TP_AGAIN) hm_err("draft-verifier[%d] not connected for %.0f s", q->replica, now - q->since);
        hm_service_reply_error(q->reply, q->d.req_id, "tokenizer", "cannot reach draft-verifier: %s", hm_errmsg());
        stage_stat_add(st, "errors", 1);
        blocked |= bit; /* the replica's later prompts wait their own time */
        drop_pending(s, i, 1);
    }
}

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
    /* every slot out: wait for one, unless prompts wait for a replica (they hold slots, and the
     * timer that sends them runs only between requests) */
    if (pool_acquire(s->pool, s->npending ? 0 : 30000, &slot)) {
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
    const int replica = (int)(in->req_id % (uint64_t)s->ndv);
    if (!rc && waiting_for(s, replica)) { /* behind the prompts already waiting for this replica */
        queue_prompt(s, &d, slot, replica, reply);
        return;
    }
    if (!rc) {
        rc = tp_send(stage_socket(s->st, s->dv[replica]), NULL, &d, ZMQ_DONTWAIT);
        if (rc == TP_AGAIN) { /* the replica is restarting */
            queue_prompt(s, &d, slot, replica, reply);
            return;
        }
    }
    if (rc) {
        pool_cancel(s->pool, slot);
        hm_service_reply_error(reply, in->req_id, "tokenizer", "cannot reach draft-verifier: %s", hm_errmsg());
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
    while (s->npending) drop_pending(s, s->npending - 1, 0);
    free(s->pending);
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
    if (stage_add_timer(st, 0.05, send_pending, s)) return HM_ERR;
    return HM_OK;
}
