/* service.c - the backbone stage: a pure compute service behind a ROUTER socket (DESIGN.md).
 *
 * draft-verifier sends PREFILL / EXTEND / ROLLBACK / FREE for a request (docs/PROTOCOL.md); the
 * backbone keeps one KV cache per request and answers HIDDEN with the last hidden state(s) in a
 * slot of its shm pool (never inline), or ERROR.  Every answer echoes the request's sequence
 * number so draft-verifier can drop answers to operations it has given up on.  A backbone that
 * was restarted knows no request: it answers EXTEND with ERROR "unknown request", and
 * draft-verifier re-fills it with PREFILL (prompt + frames so far).
 *
 * Backend cuda (HM_CUDA builds, stages.backbone.backend: cuda): the same protocol over the
 * lm_cuda engine (kernels/lm_cuda.h), one lm_cuda_req per request; the output pool is a cuda
 * pool and the hidden states are copied device to device into the slot on the request's stream,
 * then the slot's event is recorded: the activations never visit the host.  This process loads
 * only the backbone half of the model (lm_cuda_opts.parts).  EXTEND may also carry its codes in
 * a cuda buffer of draft-verifier's codes pool (docs/PROTOCOL.md): read on the device, behind
 * draft-verifier's event, so the hop costs the GPU no idle time. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backbone.h"
#include "desc.h"
#include "hm.h"
#include "pool.h"
#include "service.h"
#include "stage.h"
#include "transport.h"
#ifdef HM_CUDA
#include "lm_cuda.h"
#endif

#define BB_MAX_REQUESTS 64
#define BB_MAX_EXTEND 16     /* frames per EXTEND (speculative drafts) */
#define BB_IDLE_FREE_S 600.0 /* a request untouched this long is dropped (its client died) */

typedef struct {
    uint64_t req;
    bb_seq *seq;
    double last_used;
#ifdef HM_CUDA
    lm_cuda_req *gr;           /* backend cuda: the request's caches (seq stays NULL) */
    int rows;                  /* ... and its B */
#endif
} bb_req;

typedef struct {
    stage_t *st;
    int sock;                  /* the ROUTER draft-verifier talks to */
    bb_model *model;
    int D, ncb, text_col;
    pool_t *pool;
    bb_req reqs[BB_MAX_REQUESTS];
    float *h;                  /* scratch [BB_MAX_EXTEND, 2, D] */
#ifdef HM_CUDA
    lm_cuda *gm;               /* backend cuda: the engine (model stays NULL) */
#endif
} bb_service;

/* A slot that holds a request (either backend). */
static int req_live(const bb_req *r)
{
#ifdef HM_CUDA
    if (r->gr) return 1;
#endif
    return r->seq != NULL;
}

static bb_req *find_req(bb_service *s, uint64_t req)
{
    for (int i = 0; i < BB_MAX_REQUESTS; i++)
        if (req_live(&s->reqs[i]) && s->reqs[i].req == req) return &s->reqs[i];
    return NULL;
}

static void drop_req(bb_req *r)
{
    bb_seq_free(r->seq);
#ifdef HM_CUDA
    lm_cuda_req_free(r->gr);
#endif
    memset(r, 0, sizeof *r);
}

static void reply_error(bb_service *s, const tp_peer_t *to, const desc_t *in, const char *code, const char *msg)
{
    stage_exit_if_broken(s->st); /* a lost CUDA context: no request is failed for it */
    LOG_WARN("request %llx: %s %s: %s", (unsigned long long)in->req_id, desc_type_name(in->type), code, msg);
    desc_t d;
    desc_init(&d, DESC_ERROR, in->req_id, in->seq);
    desc_set_str(&d, "error", msg);
    desc_set_str(&d, "code", code);
    desc_set_str(&d, "stage", "backbone");
    if (stage_reply(s->st, s->sock, to, &d) != HM_OK) LOG_WARN("cannot answer draft-verifier: %s", hm_errmsg());
    desc_free(&d);
    stage_stat_add(s->st, "errors", 1);
}

/* Put h [k, B, D] into a pool slot and answer HIDDEN. */
static void reply_hidden(bb_service *s, const tp_peer_t *to, const desc_t *in, int k, int B, int pos)
{
    uint32_t slot;
    if (pool_acquire(s->pool, 5000, &slot)) {
        reply_error(s, to, in, "busy", hm_errmsg());
        return;
    }
    size_t n = (size_t)k * B * s->D;
    memcpy(pool_slot_ptr(s->pool, slot), s->h, n * sizeof(float));
    desc_t d;
    desc_init(&d, DESC_HIDDEN, in->req_id, in->seq);
    uint64_t shape[3] = {(uint64_t)k, (uint64_t)B, (uint64_t)s->D};
    desc_set_i64(&d, "pos", pos);
    if (pool_fill_desc(s->pool, slot, 0, DESC_DT_F32, 3, shape, &d) || stage_reply(s->st, s->sock, to, &d) != HM_OK) {
        LOG_WARN("cannot send hidden state: %s", hm_errmsg());
        pool_cancel(s->pool, slot);
    }
    desc_free(&d);
}

#ifdef HM_CUDA
/* ---- backend cuda: the same operations on the GPU; answers come from a cuda pool slot ---- */

/* The k hidden states of the slot were enqueued on gr's stream: record the slot's event and
 * answer HIDDEN (the consumer's stream waits for that event, no host sync here). */
static void cuda_send_hidden(bb_service *s, const tp_peer_t *to, const desc_t *in, uint32_t slot, int k, bb_req *r)
{
    desc_t d;
    desc_init(&d, DESC_HIDDEN, in->req_id, in->seq);
    uint64_t shape[3] = {(uint64_t)k, (uint64_t)r->rows, (uint64_t)s->D};
    desc_set_i64(&d, "pos", lm_cuda_pos(r->gr));
    if (pool_record(s->pool, slot, lm_cuda_stream(r->gr)) || pool_fill_desc(s->pool, slot, 0, DESC_DT_F32, 3, shape, &d) ||
        stage_reply(s->st, s->sock, to, &d) != HM_OK) {
        LOG_WARN("cannot send hidden state: %s", hm_errmsg());
        pool_cancel(s->pool, slot);
    }
    desc_free(&d);
}

/* Extend by k frames (row stride `stride` int32s, the first ncb are the codes), copying each new
 * hidden state into dst[j], or only the last one into dst[0] with last_only (a refill's frames
 * may outnumber the slot's BB_MAX_EXTEND states).  On an error the cache is rolled back to where
 * it was. */
static int cuda_extend_frames(bb_service *s, bb_req *r, const int32_t *frames, int k, size_t stride, float *dst,
                              int last_only)
{
    const hm_lm_config *c = lm_cuda_config(s->gm);
    for (int j = 0; j < k; j++) /* check every code first: a bad frame leaves the cache as it was */
        for (int i = 0; i < s->ncb; i++) {
            int32_t v = frames[(size_t)j * stride + i];
            if (v < 0 || v >= c->audio_vocab_size)
                return hm_err("frame %d: code %d of codebook %d outside 0..%d", j, v, i, c->audio_vocab_size - 1);
        }
    for (int j = 0; j < k; j++) {
        int done = j, rc = lm_cuda_extend(r->gr, frames + (size_t)j * stride);
        if (!rc) done++;
        if (!rc && (!last_only || j == k - 1))
            rc = lm_cuda_copy_hidden(r->gr, dst + (size_t)(last_only ? 0 : j) * r->rows * s->D);
        if (rc) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", hm_errmsg());
            lm_cuda_rollback(r->gr, done);
            return hm_err("%s", msg);
        }
    }
    return HM_OK;
}

static void cuda_prefill(bb_service *s, const tp_peer_t *to, const desc_t *in, bb_req *r, int B, int plen, int muq_index)
{
    const desc_buf_t *b = &in->buf;
    const int S = (int)b->shape[0], cols = s->ncb + 1;
    const int32_t *rows = (const int32_t *)b->data;
    double t0 = hm_now();
    uint32_t slot;
    if (pool_acquire(s->pool, 5000, &slot)) return reply_error(s, to, in, "busy", hm_errmsg());
    float *dst = pool_slot_ptr(s->pool, slot);
    r->req = in->req_id;
    r->rows = B;
    r->last_used = t0;
    /* the caches hold the positions the song can reach: draft-verifier's "max_positions" (prompt +
     * its frame limit), else the backbone's whole context; KV memory is linear in it (1.9 GB for
     * 8192 positions at B = 2 on the 3B model) */
    int cap = lm_cuda_config(s->gm)->backbone.max_seq_len;
    int64_t want = desc_i64_or(in, "max_positions", 0);
    if (want >= S && want < cap) cap = (int)want;
    int rc = lm_cuda_req_new(s->gm, B, cap, &r->gr);
    if (!rc) {
        uint8_t *mask = hm_calloc((size_t)plen * cols, 1); /* prompt rows: text column only */
        for (int i = 0; i < plen; i++) mask[(size_t)i * cols + s->text_col] = 1;
        rc = lm_cuda_prefill(r->gr, rows, mask, plen, muq_index, NULL);
        free(mask);
    }
    if (!rc && S > plen) rc = cuda_extend_frames(s, r, rows + (size_t)plen * cols, S - plen, (size_t)cols, dst, 1);
    else if (!rc) rc = lm_cuda_copy_hidden(r->gr, dst);
    if (rc) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", hm_errmsg());
        pool_cancel(s->pool, slot);
        drop_req(r);
        return reply_error(s, to, in, "bad", msg);
    }
    stage_stat_time(s->st, "prefill", hm_now() - t0);
    stage_stat_add(s->st, "positions", S);
    cuda_send_hidden(s, to, in, slot, 1, r);
}

/* EXTEND: k hidden states [k, B, D] into one slot.  The slot only holds the last when prefill
 * re-ran frames (k = 1 there), as in the cpu path. */
static void cuda_extend(bb_service *s, const tp_peer_t *to, const desc_t *in, bb_req *r)
{
    const desc_buf_t *b = &in->buf;
    int k = (int)b->shape[0];
    if (desc_i64_or(in, "pos", -1) != lm_cuda_pos(r->gr))
        return reply_error(s, to, in, "stale", "EXTEND at a position the cache does not hold");
    double t0 = hm_now();
    uint32_t slot;
    if (pool_acquire(s->pool, 5000, &slot)) return reply_error(s, to, in, "busy", hm_errmsg());
    if (cuda_extend_frames(s, r, (const int32_t *)b->data, k, (size_t)s->ncb, pool_slot_ptr(s->pool, slot), 0)) {
        pool_cancel(s->pool, slot);
        return reply_error(s, to, in, "bad", hm_errmsg());
    }
    r->last_used = hm_now();
    stage_stat_time(s->st, "extend", r->last_used - t0);
    stage_stat_add(s->st, "frames", k);
    cuda_send_hidden(s, to, in, slot, k, r);
}

/* EXTEND by one frame whose codes are in draft-verifier's codes pool on the device (the frame it
 * is still sampling: our stream waits for its event, the host never sees the codes).  Not
 * RELEASEd: draft-verifier takes the slot back once our answer proves it was read
 * (docs/PROTOCOL.md).  The embedding kernels clamp codes into the table. */
static void cuda_extend_dev(bb_service *s, const tp_peer_t *to, const desc_t *in, bb_req *r)
{
    const desc_buf_t *b = &in->buf;
    const void *codes;
    if (b->dtype != DESC_DT_I32 || b->ndim != 2 || b->shape[0] != 1 || b->shape[1] != (uint64_t)s->ncb)
        return reply_error(s, to, in, "bad", "EXTEND: a cuda buffer must hold int32 codes [1, codebooks]");
    if (pool_map(in, &codes)) return reply_error(s, to, in, "bad", hm_errmsg());
    if (desc_i64_or(in, "pos", -1) != lm_cuda_pos(r->gr))
        return reply_error(s, to, in, "stale", "EXTEND at a position the cache does not hold");
    double t0 = hm_now();
    uint32_t slot;
    if (pool_acquire(s->pool, 5000, &slot)) return reply_error(s, to, in, "busy", hm_errmsg());
    int rc = pool_wait(in, lm_cuda_stream(r->gr));
    if (!rc) rc = lm_cuda_extend_dev(r->gr, codes);
    if (!rc) {
        rc = lm_cuda_copy_hidden(r->gr, pool_slot_ptr(s->pool, slot));
        if (rc) lm_cuda_rollback(r->gr, 1);
    }
    if (rc) {
        pool_cancel(s->pool, slot);
        return reply_error(s, to, in, "bad", hm_errmsg());
    }
    r->last_used = hm_now();
    stage_stat_time(s->st, "extend", r->last_used - t0);
    stage_stat_add(s->st, "frames", 1);
    cuda_send_hidden(s, to, in, slot, 1, r);
}
#endif

static void on_prefill(bb_service *s, const tp_peer_t *to, const desc_t *in)
{
    int64_t B = desc_i64_or(in, "B", 0), muq_index = desc_i64_or(in, "muq_index", -1);
    int64_t plen = desc_i64_or(in, "prompt_len", -1);
    const desc_buf_t *b = &in->buf;
    int cols = s->ncb + 1;
    if (B < 1 || B > 2) return reply_error(s, to, in, "bad", "PREFILL: B must be 1 or 2");
    if (b->kind != DESC_BUF_INLINE || b->dtype != DESC_DT_I32 || b->ndim != 2 || b->shape[1] != (uint64_t)cols ||
        b->shape[0] < 1)
        return reply_error(s, to, in, "bad", "PREFILL: needs inline int32 rows [S, codebooks+1]");
    int S = (int)b->shape[0];
    if (plen < 1 || plen > S) return reply_error(s, to, in, "bad", "PREFILL: prompt_len outside [1, S]");
    bb_req *r = find_req(s, in->req_id);
    if (r) drop_req(r); /* a re-prefill (draft-verifier restarted the song on us) */
    for (int i = 0; i < BB_MAX_REQUESTS && !r; i++)
        if (!req_live(&s->reqs[i])) r = &s->reqs[i];
    if (!r) return reply_error(s, to, in, "busy", "backbone holds its maximum of requests; retry later");
#ifdef HM_CUDA
    if (s->gm) return cuda_prefill(s, to, in, r, (int)B, (int)plen, (int)muq_index);
#endif
    double t0 = hm_now();
    if (bb_seq_new(s->model, (int)B, &r->seq)) return reply_error(s, to, in, "bad", hm_errmsg());
    r->req = in->req_id;
    r->last_used = t0;
    const int32_t *rows = (const int32_t *)b->data;
    /* prompt rows: text column only; rows after the prompt are frames (audio columns only) */
    uint8_t *mask = hm_calloc((size_t)plen * cols, 1);
    for (int64_t i = 0; i < plen; i++) mask[i * cols + s->text_col] = 1;
    int rc = bb_prefill(s->model, r->seq, rows, mask, (int)plen, (int)muq_index, NULL, s->h);
    free(mask);
    int nf = S - (int)plen;
    if (!rc && nf > 0) {
        int32_t *fr = hm_malloc((size_t)nf * s->ncb * sizeof *fr);
        for (int i = 0; i < nf; i++) memcpy(fr + (size_t)i * s->ncb, rows + (size_t)(plen + i) * cols, (size_t)s->ncb * 4);
        float *hall = hm_malloc((size_t)nf * B * s->D * sizeof(float));
        rc = bb_extend(s->model, r->seq, fr, nf, hall);
        if (!rc) memcpy(s->h, hall + (size_t)(nf - 1) * B * s->D, (size_t)B * s->D * sizeof(float));
        free(hall);
        free(fr);
    }
    if (rc) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", hm_errmsg());
        drop_req(r);
        return reply_error(s, to, in, "bad", msg);
    }
    stage_stat_time(s->st, "prefill", hm_now() - t0);
    stage_stat_add(s->st, "positions", S);
    reply_hidden(s, to, in, 1, (int)B, bb_seq_pos(r->seq));
}

static void on_extend(bb_service *s, const tp_peer_t *to, const desc_t *in)
{
    bb_req *r = find_req(s, in->req_id);
    if (!r) return reply_error(s, to, in, "unknown", "unknown request (backbone restarted?)");
    const desc_buf_t *b = &in->buf;
#ifdef HM_CUDA
    if (s->gm && b->kind == DESC_BUF_CUDA) return cuda_extend_dev(s, to, in, r);
#endif
    if (b->kind != DESC_BUF_INLINE || b->dtype != DESC_DT_I32 || b->ndim != 2 || b->shape[1] != (uint64_t)s->ncb ||
        b->shape[0] < 1 || b->shape[0] > BB_MAX_EXTEND)
        return reply_error(s, to, in, "bad", "EXTEND: needs inline int32 frames [k <= 16, codebooks]");
#ifdef HM_CUDA
    if (s->gm) return cuda_extend(s, to, in, r);
#endif
    int64_t pos = desc_i64_or(in, "pos", -1);
    if (pos != bb_seq_pos(r->seq)) return reply_error(s, to, in, "stale", "EXTEND at a position the cache does not hold");
    int k = (int)b->shape[0], B = bb_seq_rows(r->seq);
    double t0 = hm_now();
    if (bb_extend(s->model, r->seq, (const int32_t *)b->data, k, s->h)) return reply_error(s, to, in, "bad", hm_errmsg());
    r->last_used = hm_now();
    stage_stat_time(s->st, "extend", r->last_used - t0);
    stage_stat_add(s->st, "frames", k);
    reply_hidden(s, to, in, k, B, bb_seq_pos(r->seq));
}

static void on_small(bb_service *s, const tp_peer_t *to, const desc_t *in)
{
    bb_req *r = find_req(s, in->req_id);
    if (in->type == DESC_ROLLBACK) {
        if (!r) return reply_error(s, to, in, "unknown", "unknown request (backbone restarted?)");
#ifdef HM_CUDA
        if (s->gm) {
            int64_t npos = desc_i64_or(in, "pos", -1), pos = lm_cuda_pos(r->gr);
            if (npos < 0 || npos > pos) return reply_error(s, to, in, "bad", "ROLLBACK: pos outside the cache");
            if (lm_cuda_rollback(r->gr, (int)(pos - npos))) return reply_error(s, to, in, "bad", hm_errmsg());
        } else
#endif
        if (bb_rollback(r->seq, (int)desc_i64_or(in, "pos", -1))) return reply_error(s, to, in, "bad", hm_errmsg());
    } else if (r) {
        drop_req(r);
    }
    desc_t d;
    desc_init(&d, DESC_REPLY, in->req_id, in->seq);
    if (r && in->type == DESC_ROLLBACK) {
#ifdef HM_CUDA
        if (s->gm) desc_set_i64(&d, "pos", lm_cuda_pos(r->gr));
        else
#endif
        desc_set_i64(&d, "pos", bb_seq_pos(r->seq));
    }
    if (stage_reply(s->st, s->sock, to, &d) != HM_OK) LOG_WARN("cannot answer: %s", hm_errmsg());
    desc_free(&d);
}

static int bb_on_msg(stage_t *st, int sock, const tp_peer_t *from, desc_t *in, void *user)
{
    bb_service *s = user;
    (void)st;
    (void)sock;
    switch (in->type) {
    case DESC_PREFILL: on_prefill(s, from, in); break;
    case DESC_EXTEND: on_extend(s, from, in); break;
    case DESC_ROLLBACK: case DESC_FREE: case DESC_CANCEL: on_small(s, from, in); break;
    default: reply_error(s, from, in, "bad", "backbone takes PREFILL, EXTEND, ROLLBACK, FREE"); break;
    }
    return HM_OK;
}

static void bb_tick(stage_t *st, void *user)
{
    bb_service *s = user;
    double now = hm_now();
    int active = 0;
    for (int i = 0; i < BB_MAX_REQUESTS; i++) {
        if (req_live(&s->reqs[i]) && now - s->reqs[i].last_used > BB_IDLE_FREE_S) {
            LOG_WARN("request %llx idle for %.0f s: dropping its cache", (unsigned long long)s->reqs[i].req, now - s->reqs[i].last_used);
            drop_req(&s->reqs[i]);
        }
        active += req_live(&s->reqs[i]);
    }
    stage_stat_add(st, "requests_active", active - stage_stat_get(st, "requests_active"));
}

void bb_service_free(void *state)
{
    bb_service *s = state;
    for (int i = 0; i < BB_MAX_REQUESTS; i++)
        if (req_live(&s->reqs[i])) drop_req(&s->reqs[i]);
    if (s->pool) pool_destroy(s->pool);
    if (s->model) bb_free(s->model);
#ifdef HM_CUDA
    if (s->gm) lm_cuda_free(s->gm);
#endif
    free(s->h);
    free(s);
}

int bb_service_setup(stage_t *st, const hm_pipeline_cfg *cfg, int replica, void **state)
{
    bb_service *s = hm_calloc(1, sizeof *s);
    s->st = st;
    *state = s;
    const hm_stage_cfg *sc = &cfg->stage[HM_STAGE_BACKBONE];
    const char *version = cfg->lm_version[0] ? cfg->lm_version : NULL;
    pool_kind_t kind = POOL_SHM;
    const hm_lm_config *lc;
#ifdef HM_CUDA
    if (!strcmp(sc->backend, "cuda")) {
        lm_cuda_opts o = {HMC_BF16, version, LM_CUDA_PART_BACKBONE};
        if (hmc_context_trim() || lm_cuda_precision(sc->precision, &o.wdt) || lm_cuda_load(cfg->model_dir, &o, &s->gm))
            return HM_ERR;
        lc = lm_cuda_config(s->gm);
        kind = POOL_CUDA;
        LOG_INFO("backend cuda, %s weights, backbone half: %.2f GB on the device", sc->precision[0] ? sc->precision : "bf16", lm_cuda_resident_bytes(s->gm) / 1e9);
    } else
#endif
    {
        if (bb_load(cfg->model_dir, version, &s->model)) return HM_ERR;
        lc = bb_config(s->model);
    }
    s->D = lc->backbone.embed_dim;
    s->ncb = lc->audio_num_codebooks;
    s->text_col = s->ncb;
    s->h = hm_malloc((size_t)BB_MAX_EXTEND * 2 * s->D * sizeof(float));
    char url[600], name[96];
    hm_stage_endpoint(cfg, HM_STAGE_BACKBONE, replica, url, sizeof url);
    tp_endpoint_t ep = {"backbone", url, TP_BIND, ZMQ_ROUTER};
    if ((s->sock = stage_add_socket(st, &ep, bb_on_msg, s)) < 0) return HM_ERR;
    hm_service_pool_name(cfg, "backbone", replica, "hidden", name, sizeof name);
    uint64_t slot = (uint64_t)BB_MAX_EXTEND * 2 * s->D * sizeof(float);
    if (pool_create(kind, name, (uint32_t)sc->pool_slots, slot, &s->pool)) return HM_ERR;
    snprintf(url, sizeof url, "ipc://%s/backbone-%d.rel", cfg->run_dir, replica);
    if (pool_listen(s->pool, url) || stage_add_pool(st, s->pool) || stage_add_timer(st, 1.0, bb_tick, s)) return HM_ERR;
    return HM_OK;
}
