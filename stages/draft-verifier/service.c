/* service.c - the draft-verifier stage: drives the autoregressive loop of every song.
 *
 * PROMPT (from the tokenizer) -> PREFILL to the backbone -> HIDDEN -> one frame (codebook-0 head,
 * CFG, sampling, depth decoder: depth.c) -> FRAMES downstream + EXTEND to the backbone -> ...
 * until the EOS rule or the length limit ends the song (docs/PROTOCOL.md).
 *
 * The frames generated so far are the durable state of a song: when the backbone does not
 * answer within request_timeout_ms, or answers "unknown request" (it was restarted), the song is
 * re-sent as one PREFILL of prompt + frames so far.  Draws come from a counter-based RNG keyed by
 * (seed, frame), so the song continues exactly as it would have.
 *
 * Backend cuda (HM_CUDA builds, stages.draft-verifier.backend: cuda): the frame runs on the GPU
 * (lm_cuda_depth_frame_async) from the hidden state in the backbone's cuda pool slot, read in
 * place after our stream waits on the slot's event.  The sampled codes are copied on the device
 * into a slot of our own cuda pool, and the EXTEND naming that slot is sent before we wait for
 * the frame: the backbone queues its next step behind ours on the GPU, so the hop between the
 * two processes leaves no GPU idle time.  Sampling on the GPU (kernels/sample.cu) is the CPU's
 * Philox + inverse CDF: the same seed gives the same song on either backend (for the same
 * logits).  This process loads only the depth half of the model when lm_cuda supports it.
 *
 * The first audio of a song waits for its first codec window.  With flow-matching on cuda too,
 * the song pauses after the frame that completes that window (372 frames) until flow-matching
 * reports the window done (a REPLY to the `notify` endpoint the first FRAMES carried), at most
 * first_window_yield_ms: the window then has the GPU to itself instead of sharing it with the
 * next frames (H200, fp8: first audio 1.73 -> 1.53 s, docs/PERF.md). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec_plan.h"
#include "depth.h"
#include "desc.h"
#include "hm.h"
#include "modelcfg.h"
#include "pool.h"
#include "safetensors.h"
#include "service.h"
#include "stage.h"
#include "transport.h"
#ifdef HM_CUDA
#include "lm_cuda.h"
#endif

#define DV_MAX_REQUESTS 64
#define DV_PROGRESS_EVERY 6 /* frames between progress messages to the client */

enum { MODE_GENERATE, MODE_CODES };

typedef struct {
    int used;
    uint64_t req;
    desc_t params;          /* the request's parameters (type DESC_NONE: a parameter bag) */
    char reply[DESC_MAX_ENDPOINT + 1];
    int mode;
    int32_t *rows;          /* prompt [S, ncb+1] */
    int S, muq_index;
    int32_t *frames;        /* [max_frames, ncb] */
    float *logits;          /* [max_frames * ncb, V] sampler logits, only when the request asks
                             * ("with_logits": codes mode, for parity checks against the reference) */
    int nframes, max_frames;
    int B;
    dv_sample_params sp;
    dv_rng rng;
    uint64_t op_seq;        /* sequence number of the backbone operation we wait for */
    double sent_at, retry_at;
    int waiting, retries;
    int sent_down, done;    /* frames sent to flow-matching; song complete */
    double t0;
    pool_t *cpool;          /* backend cuda: the codes pool holding the in-flight EXTEND's codes */
    uint32_t cslot, cgen;   /* ... its slot and generation (cpool NULL: none in flight) */
    double hold_until, hold_t0; /* paused after the first codec window's frames (0: not paused) */
    int yielded;            /* ... that pause is over (once a song) */
} dv_req;

typedef struct {
    stage_t *st;
    double timeout_s;       /* request_timeout_ms */
    dv_model *model;
    hm_gen_config gen;
    int ncb, V, D;
    int *bb; int nbb;       /* stage socket index of the DEALER to each backbone replica */
    int *fm; int nfm;       /* ... of the PUSH to each flow-matching replica */
    dv_req reqs[DV_MAX_REQUESTS];
    int32_t codes[64];
    int max_seq;            /* the backbone's positions */
    double yield_s;         /* first_window_yield_ms (0: never pause) */
    char notify[DESC_MAX_ENDPOINT + 1]; /* our endpoint, for flow-matching's "window 0 done" */
#ifdef HM_CUDA
    lm_cuda *gm;            /* backend cuda: the engine (model stays NULL) */
    lm_cuda_req *gr[3];     /* ... one depth request per row count B (1, 2), reused by every song */
    pool_t *cpool;          /* ... the codes of each EXTEND, read by the backbone on the device */
#endif
} dv_service;

/* The backbone / flow-matching replica that owns request r (all of a song meets one replica). */
static void *bb_sock(dv_service *s, uint64_t req) { return stage_socket(s->st, s->bb[req % (uint64_t)s->nbb]); }
static void *fm_sock(dv_service *s, uint64_t req) { return stage_socket(s->st, s->fm[req % (uint64_t)s->nfm]); }

static dv_req *find_req(dv_service *s, uint64_t req)
{
    for (int i = 0; i < DV_MAX_REQUESTS; i++)
        if (s->reqs[i].used && s->reqs[i].req == req) return &s->reqs[i];
    return NULL;
}

/* The codes slot of the EXTEND in flight goes back to the pool: the backbone has read it (its
 * answer to the next operation proves it), or the song no longer needs that EXTEND's result (a
 * late read of a reused slot only feeds a cache that is dropped or re-filled). */
static void codes_take_back(dv_req *r)
{
    if (r->cpool) pool_take_back(r->cpool, r->cslot, r->cgen);
    r->cpool = NULL;
}

static void drop_req(dv_req *r)
{
    codes_take_back(r);
    desc_free(&r->params);
    free(r->rows);
    free(r->frames);
    free(r->logits);
    memset(r, 0, sizeof *r);
}

static void fail_req(dv_service *s, dv_req *r, const char *fmt, const char *msg)
{
    stage_exit_if_broken(s->st); /* a lost CUDA context: no request is failed for it */
    hm_service_reply_error(r->reply, r->req, "draft-verifier", fmt, msg);
    stage_stat_add(s->st, "errors", 1);
    /* the backbone may hold a cache for it */
    desc_t d;
    desc_init(&d, DESC_FREE, r->req, ++r->op_seq);
    tp_send(bb_sock(s, r->req), NULL, &d, ZMQ_DONTWAIT);
    desc_free(&d);
    drop_req(r);
}

/* PREFILL with the prompt and every frame so far (a first fill, or a refill after a restart). */
static void send_prefill(dv_service *s, dv_req *r)
{
    codes_take_back(r);
    int cols = s->ncb + 1, S = r->S + r->nframes;
    int32_t *rows = hm_calloc((size_t)S * cols, sizeof *rows);
    memcpy(rows, r->rows, (size_t)r->S * cols * sizeof *rows);
    for (int f = 0; f < r->nframes; f++)
        memcpy(rows + (size_t)(r->S + f) * cols, r->frames + (size_t)f * s->ncb, (size_t)s->ncb * sizeof *rows);
    desc_t d;
    desc_init(&d, DESC_PREFILL, r->req, ++r->op_seq);
    uint64_t shape[2] = {(uint64_t)S, (uint64_t)cols};
    desc_set_i64(&d, "B", r->B);
    desc_set_i64(&d, "muq_index", r->muq_index);
    desc_set_i64(&d, "prompt_len", r->S);
    desc_set_i64(&d, "max_positions", (int64_t)r->S + r->max_frames + 1); /* + the EXTEND after the last frame */
    desc_set_tensor(&d, DESC_DT_I32, 2, shape);
    desc_set_inline(&d, rows, (uint64_t)S * cols * sizeof *rows);
    free(rows);
    int rc = tp_send(bb_sock(s, r->req), NULL, &d, ZMQ_DONTWAIT);
    desc_free(&d);
    r->sent_at = hm_now();
    r->waiting = 1;
    if (rc != HM_OK) r->sent_at = 0; /* backbone not connected yet: the tick retries soon */
}

static void send_extend(dv_service *s, dv_req *r)
{
    desc_t d;
    desc_init(&d, DESC_EXTEND, r->req, ++r->op_seq);
    uint64_t shape[2] = {1, (uint64_t)s->ncb};
    desc_set_i64(&d, "pos", r->S + r->nframes - 1);
    desc_set_tensor(&d, DESC_DT_I32, 2, shape);
    desc_set_inline(&d, r->frames + (size_t)(r->nframes - 1) * s->ncb, (uint64_t)s->ncb * 4);
    int rc = tp_send(bb_sock(s, r->req), NULL, &d, ZMQ_DONTWAIT);
    desc_free(&d);
    r->sent_at = hm_now();
    r->waiting = 1;
    if (rc != HM_OK) r->sent_at = 0;
}

#ifdef HM_CUDA
/* EXTEND by the frame being sampled into codes slot cslot (recorded on our stream): a cuda
 * buffer [1, ncb] int32 the backbone reads on the device.  The backbone does not RELEASE it; the
 * slot comes back through codes_take_back (docs/PROTOCOL.md). */
static int send_extend_dev(dv_service *s, dv_req *r, uint32_t cslot, uint32_t *gen)
{
    desc_t d;
    desc_init(&d, DESC_EXTEND, r->req, r->op_seq + 1);
    uint64_t shape[2] = {1, (uint64_t)s->ncb};
    desc_set_i64(&d, "pos", r->S + r->nframes);
    int rc = pool_fill_desc(s->cpool, cslot, 0, DESC_DT_I32, 2, shape, &d);
    if (!rc) rc = tp_send(bb_sock(s, r->req), NULL, &d, ZMQ_DONTWAIT);
    *gen = d.buf.gen;
    desc_free(&d);
    if (rc != HM_OK) return HM_ERR; /* the caller falls back to the inline EXTEND */
    r->op_seq++;
    r->sent_at = hm_now();
    r->waiting = 1;
    return HM_OK;
}
#endif

/* Send flow-matching every frame it has not had yet (and the end marker once done). */
static void flush_down(dv_service *s, dv_req *r)
{
    if (r->mode != MODE_GENERATE) return;
    void *sock = fm_sock(s, r->req);
    if (r->nframes > r->sent_down) {
        int n = r->nframes - r->sent_down;
        desc_t d;
        desc_init(&d, DESC_FRAMES, r->req, (uint64_t)r->sent_down);
        uint64_t shape[2] = {(uint64_t)n, (uint64_t)s->ncb};
        desc_set_tensor(&d, DESC_DT_I32, 2, shape);
        desc_set_inline(&d, r->frames + (size_t)r->sent_down * s->ncb, (uint64_t)n * s->ncb * 4);
        desc_set_i64(&d, "first", r->sent_down);
        if (r->sent_down == 0) {
            hm_service_copy_params(&d, &r->params, NULL, 0);
            if (s->yield_s > 0) desc_set_str(&d, "notify", s->notify);
        }
        int rc = tp_send(sock, NULL, &d, ZMQ_DONTWAIT);
        desc_free(&d);
        if (rc != HM_OK) return; /* not connected: retried by the tick */
        r->sent_down = r->nframes;
    }
    if (r->done && r->sent_down == r->nframes) {
        desc_t d;
        desc_init(&d, DESC_FRAMES, r->req, (uint64_t)r->nframes);
        desc_set_i64(&d, "first", r->nframes);
        desc_set_i64(&d, "final", 1);
        desc_set_i64(&d, "total", r->nframes);
        hm_service_copy_params(&d, &r->params, NULL, 0);
        int rc = tp_send(sock, NULL, &d, ZMQ_DONTWAIT);
        desc_free(&d);
        if (rc == HM_OK) drop_req(r);
    }
}

static void write_codes(dv_service *s, dv_req *r)
{
    const char *out = "";
    desc_get_str(&r->params, "out", &out);
    int T = r->nframes;
    int32_t *cm = hm_malloc((size_t)T * s->ncb * sizeof *cm); /* [ncb, T] as DESIGN.md's codes file */
    for (int f = 0; f < T; f++)
        for (int k = 0; k < s->ncb; k++) cm[(size_t)k * T + f] = r->frames[(size_t)f * s->ncb + k];
    st_wtensor t[2] = {{"codes", ST_I32, 2, {s->ncb, T}, cm},
                       {"sampler_logits", ST_F32, 2, {(int64_t)T * s->ncb, s->V}, r->logits}};
    int rc = st_write(out, t, r->logits ? 2 : 1, NULL, 0);
    free(cm);
    if (rc) return fail_req(s, r, "%s", hm_errmsg());
    desc_t d;
    desc_init(&d, DESC_AUDIO_DONE, r->req, 0);
    desc_set_str(&d, "out", out);
    desc_set_i64(&d, "frames", T);
    if (tp_send_url(r->reply, &d)) LOG_WARN("%s", hm_errmsg());
    desc_free(&d);
    drop_req(r);
}

static void finish(dv_service *s, dv_req *r)
{
    r->done = 1;
    r->waiting = 0;
    stage_stat_add(s->st, "songs", 1);
    desc_t d;
    desc_init(&d, DESC_FREE, r->req, ++r->op_seq);
    tp_send(bb_sock(s, r->req), NULL, &d, ZMQ_DONTWAIT);
    desc_free(&d);
    LOG_INFO("request %llx: %d frames in %.2f s", (unsigned long long)r->req, r->nframes, hm_now() - r->t0);
    if (r->mode == MODE_CODES) write_codes(s, r);
    else flush_down(s, r);
}

static void on_prompt(dv_service *s, const desc_t *in)
{
    const char *reply = "", *mode = "generate";
    if (desc_get_str(in, "reply", &reply)) {
        LOG_WARN("prompt %llx without a reply endpoint: dropped", (unsigned long long)in->req_id);
        pool_release(in);
        return;
    }
    const void *ptr;
    int cols = s->ncb + 1;
    const desc_buf_t *b = &in->buf;
    if (in->type != DESC_PROMPT || b->dtype != DESC_DT_I32 || b->ndim != 2 || b->shape[1] != (uint64_t)cols || b->shape[0] < 1 ||
        pool_map(in, &ptr)) {
        hm_service_reply_error(reply, in->req_id, "draft-verifier", "malformed prompt: %s", in->type == DESC_PROMPT ? hm_errmsg() : "not a PROMPT");
        if (b->kind == DESC_BUF_SHM) pool_release(in);
        stage_stat_add(s->st, "errors", 1);
        return;
    }
    dv_req *r = find_req(s, in->req_id);
    if (r) drop_req(r); /* the same request again (the client retried): start over */
    for (int i = 0; i < DV_MAX_REQUESTS && !r; i++)
        if (!s->reqs[i].used) r = &s->reqs[i];
    if (!r) {
        pool_release(in);
        hm_service_reply_error(reply, in->req_id, "draft-verifier", "%s", "too many songs in progress; retry later");
        return;
    }
    r->used = 1;
    r->req = in->req_id;
    r->t0 = hm_now();
    snprintf(r->reply, sizeof r->reply, "%s", reply);
    desc_init(&r->params, DESC_NONE, in->req_id, 0);
    static const char *const skip[] = {"muq_index"};
    hm_service_copy_params(&r->params, in, skip, 1);
    r->S = (int)b->shape[0];
    r->rows = hm_malloc((size_t)r->S * cols * sizeof *r->rows);
    memcpy(r->rows, ptr, (size_t)r->S * cols * sizeof *r->rows);
    pool_release(in);
    desc_get_str(in, "mode", &mode);
    r->mode = !strcmp(mode, "codes") ? MODE_CODES : MODE_GENERATE;
    r->muq_index = (int)desc_i64_or(in, "muq_index", -1);
    r->max_frames = (int)HM_MIN(desc_i64_or(in, "max_frames", 0), (int64_t)1 << 30);
    r->sp.temperature = (float)desc_f64_or(in, "temperature", 1.0);
    r->sp.topk = (int)desc_i64_or(in, "topk", 50);
    r->sp.cfg_scale = (float)desc_f64_or(in, "cfg", 1.5);
    r->B = r->sp.cfg_scale > 1.0f ? 2 : 1;
    r->rng.seed = (uint64_t)desc_i64_or(in, "seed", 0);
    int max_seq = s->max_seq;
    char msg[300];
    if (r->max_frames < 1) return fail_req(s, r, "%s", "a song needs at least one frame (--max-seconds > 0)");
    if (!(r->sp.temperature > 0) || r->sp.topk < 1) return fail_req(s, r, "%s", "temperature must be > 0 and topk >= 1");
    if (r->S + r->max_frames - 1 > max_seq) {
        snprintf(msg, sizeof msg,
                 "a prompt of %d positions plus %d frames exceeds the backbone's %d positions: ask for at most %.2f s (--max-seconds)",
                 r->S, r->max_frames, max_seq, (max_seq - r->S) * 0.08);
        return fail_req(s, r, "%s", msg);
    }
    r->frames = hm_malloc((size_t)r->max_frames * s->ncb * sizeof *r->frames);
    if (r->mode == MODE_CODES && desc_i64_or(in, "with_logits", 0)) {
        if ((int64_t)r->max_frames * s->ncb * s->V > ((int64_t)1 << 28))
            return fail_req(s, r, "%s", "with_logits: too many frames to keep every logits vector");
        r->logits = hm_malloc((size_t)r->max_frames * s->ncb * s->V * sizeof(float));
    }
    send_prefill(s, r);
}

static void on_hidden(dv_service *s, dv_req *r, const desc_t *in)
{
    const void *ptr;
    const desc_buf_t *b = &in->buf;
    if (b->dtype != DESC_DT_F32 || b->ndim != 3 || b->shape[1] != (uint64_t)r->B || b->shape[2] != (uint64_t)s->D ||
        b->shape[0] < 1 || pool_map(in, &ptr)) {
        pool_release(in);
        return fail_req(s, r, "backbone sent a malformed hidden state: %s", hm_errmsg());
    }
    const float *h = (const float *)ptr + (b->shape[0] - 1) * (uint64_t)r->B * s->D;
    double t0 = hm_now();
    HM_NVTX_PUSH("dv_frame");
    r->rng.frame = (uint64_t)r->nframes;
    float *lg = r->logits ? r->logits + (size_t)r->nframes * s->ncb * s->V : NULL;
    int rc, extend_sent = 0;
    /* this frame completes the song's first codec window: no EXTEND goes out early, the next frame
     * waits for flow-matching's report (dv_on_prompt_msg, resume) */
    const int hold = s->yield_s > 0 && !r->yielded && r->mode == MODE_GENERATE &&
                     r->nframes + 1 == CODEC_WIN_CODES && r->nframes + 1 < r->max_frames;
#ifdef HM_CUDA
    if (s->gm) {
        /* h is a device pointer into the backbone's slot: our stream waits for its writes.  The
         * sampled codes go straight into a slot of our codes pool and the EXTEND carrying it
         * leaves before we wait for the frame, so the backbone's next step is queued behind ours
         * on the GPU while the host still waits (no GPU idle time for the hop).  If the song ends
         * with this frame, that EXTEND was for nothing: its answer is dropped. */
        lm_cuda_req *gr = s->gr[r->B];
        lm_cuda_sampling smp = {r->sp.temperature, r->sp.topk, r->sp.cfg_scale, r->rng.seed, (uint32_t)r->nframes, NULL};
        uint32_t cslot = 0;
        int fast = !lg && !hold && pool_acquire(s->cpool, 0, &cslot) == HM_OK;
        rc = pool_wait(in, lm_cuda_stream(gr));
        if (!rc && fast) {
            rc = lm_cuda_depth_frame_async(gr, h, &smp, pool_slot_ptr(s->cpool, cslot));
            if (!rc) rc = pool_record(s->cpool, cslot, lm_cuda_stream(gr));
            if (!rc) {
                uint32_t gen = 0;
                extend_sent = send_extend_dev(s, r, cslot, &gen) == HM_OK;
                if (extend_sent) {
                    codes_take_back(r); /* the previous EXTEND's codes: this HIDDEN came from them */
                    r->cpool = s->cpool, r->cslot = cslot, r->cgen = gen;
                } else {
                    pool_cancel(s->cpool, cslot);
                }
            } else {
                pool_cancel(s->cpool, cslot);
            }
            if (!rc) rc = lm_cuda_frame_wait(gr, s->codes, NULL);
        } else if (!rc) {
            if (fast) pool_cancel(s->cpool, cslot);
            rc = lm_cuda_depth_frame(gr, h, &smp, s->codes, lg);
        }
    } else
#endif
    rc = dv_frame(s->model, h, r->B, &r->sp, &r->rng, s->codes, lg);
    pool_release(in);
    HM_NVTX_POP();
    stage_stat_time(s->st, "frame", hm_now() - t0);
    if (rc) return fail_req(s, r, "%s", hm_errmsg());
    r->waiting = extend_sent; /* the next EXTEND is already out (cuda fast path) */
    r->retries = 0;
    int eos = 0;
    for (int k = 0; k < s->ncb; k++) eos |= s->codes[k] >= s->gen.audio_eos_id;
    if (eos && r->nframes > 0) return finish(s, r); /* MODEL.md: stop before appending it */
    memcpy(r->frames + (size_t)r->nframes * s->ncb, s->codes, (size_t)s->ncb * sizeof *s->codes);
    r->nframes++;
    stage_stat_add(s->st, "frames", 1);
    if (r->nframes % DV_PROGRESS_EVERY == 0) {
        desc_t d;
        desc_init(&d, DESC_REPLY, r->req, (uint64_t)r->nframes);
        desc_set_i64(&d, "frames", r->nframes);
        desc_set_str(&d, "stage", "draft-verifier");
        tp_send_url(r->reply, &d); /* progress is best effort */
        desc_free(&d);
    }
    if (r->nframes >= r->max_frames) return finish(s, r);
    flush_down(s, r);
    if (hold) { /* the GPU is flow-matching's until its window 0 is done (or yield_s passed) */
        r->hold_t0 = hm_now();
        r->hold_until = r->hold_t0 + s->yield_s;
        return;
    }
    if (!extend_sent) send_extend(s, r);
}

/* The pause after the first window's frames ends: flow-matching said that window is done, or
 * the wait ran out. */
static void resume(dv_service *s, dv_req *r, int timed_out)
{
    r->hold_until = 0;
    r->yielded = 1;
    stage_stat_time(s->st, "first_window_wait", hm_now() - r->hold_t0);
    if (timed_out) stage_stat_add(s->st, "first_window_wait_timeouts", 1);
    send_extend(s, r);
}

static void on_backbone(dv_service *s, const desc_t *in)
{
    dv_req *r = find_req(s, in->req_id);
    if (!r || r->done || in->seq != r->op_seq || !r->waiting) {
        if (in->type == DESC_HIDDEN) pool_release(in); /* an answer we gave up on */
        return;
    }
    if (in->type == DESC_HIDDEN) return on_hidden(s, r, in);
    if (in->type == DESC_ERROR) {
        const char *code = "", *err = "?";
        desc_get_str(in, "code", &code);
        desc_get_str(in, "error", &err);
        if (!strcmp(code, "unknown") || !strcmp(code, "stale")) {
            LOG_WARN("request %llx: backbone lost it (%s); refilling %d frames", (unsigned long long)r->req, err, r->nframes);
            stage_stat_add(s->st, "refills", 1);
            return send_prefill(s, r);
        }
        if (!strcmp(code, "busy")) {
            r->waiting = 0;
            r->retry_at = hm_now() + 0.5;
            return;
        }
        return fail_req(s, r, "backbone: %s", err);
    }
}

static int dv_on_prompt_msg(stage_t *st, int sock, const tp_peer_t *from, desc_t *in, void *user)
{
    (void)st;
    (void)sock;
    (void)from;
    if (in->type == DESC_REPLY) { /* flow-matching: a song's first window is done */
        dv_service *s = user;
        const char *stage = "";
        desc_get_str(in, "stage", &stage);
        dv_req *r = find_req(s, in->req_id);
        if (r && r->hold_until > 0 && !r->done && !strcmp(stage, "flow-matching") && desc_i64_or(in, "window", -1) == 0)
            resume(s, r, 0);
        return HM_OK; /* late or stray notices change nothing */
    }
    on_prompt(user, in);
    return HM_OK;
}

static int dv_on_backbone_msg(stage_t *st, int sock, const tp_peer_t *from, desc_t *in, void *user)
{
    (void)st;
    (void)sock;
    (void)from;
    on_backbone(user, in);
    return HM_OK;
}

static void dv_tick(stage_t *st, void *user)
{
    dv_service *s = user;
    double now = hm_now();
    (void)st;
    for (int i = 0; i < DV_MAX_REQUESTS; i++) {
        dv_req *r = &s->reqs[i];
        if (!r->used) continue;
        if (r->done) { flush_down(s, r); continue; }
        if (r->hold_until > 0) {
            if (now >= r->hold_until) {
                LOG_WARN("request %llx: flow-matching did not report its first window in %.1f s; going on",
                         (unsigned long long)r->req, s->yield_s);
                resume(s, r, 1);
            } else {
                flush_down(s, r);
            }
            continue;
        }
        if (r->waiting && now - r->sent_at > (r->sent_at == 0 ? 0.2 : s->timeout_s)) {
            if (r->sent_at != 0) {
                LOG_WARN("request %llx: no answer from the backbone for %.0f s; refilling", (unsigned long long)r->req, now - r->sent_at);
                stage_stat_add(s->st, "refills", 1);
            }
            if (++r->retries > 1000) { fail_req(s, r, "%s", "the backbone does not answer"); continue; }
            send_prefill(s, r);
        } else if (!r->waiting && r->retry_at > 0 && now >= r->retry_at) {
            r->retry_at = 0;
            send_prefill(s, r);
        }
        if (r->used && !r->done) flush_down(s, r);
    }
}

void dv_service_free(void *state)
{
    dv_service *s = state;
    for (int i = 0; i < DV_MAX_REQUESTS; i++)
        if (s->reqs[i].used) drop_req(&s->reqs[i]);
    free(s->bb);
    free(s->fm);
    if (s->model) dv_free(s->model);
    pool_unmap_all();
#ifdef HM_CUDA
    for (int b = 1; b <= 2; b++) lm_cuda_req_free(s->gr[b]);
    if (s->cpool) pool_destroy(s->cpool);
    if (s->gm) lm_cuda_free(s->gm);
#endif
    free(s);
}

int dv_service_setup(stage_t *st, const hm_pipeline_cfg *cfg, int replica, void **state)
{
    dv_service *s = hm_calloc(1, sizeof *s);
    s->st = st;
    s->timeout_s = cfg->request_timeout_ms / 1000.0;
    *state = s;
    char url[600];
    const char *version = cfg->lm_version[0] ? cfg->lm_version : NULL;
    const hm_lm_config *lc;
    if (hm_gen_config_load(cfg->model_dir, &s->gen)) return HM_ERR;
#ifdef HM_CUDA
    const hm_stage_cfg *sc = &cfg->stage[HM_STAGE_DRAFT_VERIFIER];
    /* the hidden state is read where the backbone's pool keeps it: host shm or device memory */
    if (strcmp(sc->backend, cfg->stage[HM_STAGE_BACKBONE].backend))
        return hm_err("draft-verifier backend %s with backbone backend %s: the two must match (the hidden state "
                      "stays in the backbone's %s memory)",
                      sc->backend, cfg->stage[HM_STAGE_BACKBONE].backend,
                      strcmp(cfg->stage[HM_STAGE_BACKBONE].backend, "cuda") ? "host" : "device");
    if (!strcmp(sc->backend, "cuda")) {
        lm_cuda_opts o = {HMC_BF16, version, LM_CUDA_PART_DEPTH};
        if (hmc_context_trim() || lm_cuda_precision(sc->precision, &o.wdt) || lm_cuda_load(cfg->model_dir, &o, &s->gm))
            return HM_ERR;
        /* max_seq 1: the depth requests never use their backbone cache */
        for (int b = 1; b <= 2; b++)
            if (lm_cuda_req_new(s->gm, b, 1, &s->gr[b])) return HM_ERR;
        char pname[96];
        hm_service_pool_name(cfg, "draft-verifier", replica, "codes", pname, sizeof pname);
        if (pool_create(POOL_CUDA, pname, 2 * DV_MAX_REQUESTS, 256, &s->cpool)) return HM_ERR;
        pool_set_lease(s->cpool, 3600.0); /* slots come back through codes_take_back, not RELEASE */
        lc = lm_cuda_config(s->gm);
        LOG_INFO("backend cuda, %s weights, depth half: %.2f GB on the device", sc->precision[0] ? sc->precision : "bf16", lm_cuda_resident_bytes(s->gm) / 1e9);
    } else
#endif
    {
        if (dv_load(cfg->model_dir, version, &s->model)) return HM_ERR;
        lc = dv_config(s->model);
    }
    s->max_seq = lc->backbone.max_seq_len;
    s->ncb = lc->audio_num_codebooks;
    s->V = lc->audio_vocab_size;
    s->D = lc->backbone.embed_dim;
    if (s->ncb > 64) return hm_err("more than 64 codebooks");
    hm_stage_endpoint(cfg, HM_STAGE_DRAFT_VERIFIER, replica, url, sizeof url);
    /* pause for the first window only where both stages share the GPU and flow-matching can
     * reach our endpoint (not a wildcard bind) */
    if (cfg->stage[HM_STAGE_DRAFT_VERIFIER].first_window_yield_ms > 0 &&
        !strcmp(cfg->stage[HM_STAGE_DRAFT_VERIFIER].backend, "cuda") &&
        !strcmp(cfg->stage[HM_STAGE_FLOW_MATCHING].backend, "cuda") && !strchr(url, '*') &&
        strlen(url) < sizeof s->notify) {
        s->yield_s = cfg->stage[HM_STAGE_DRAFT_VERIFIER].first_window_yield_ms / 1000.0;
        snprintf(s->notify, sizeof s->notify, "%s", url);
    }
    tp_endpoint_t ep = {"draft-verifier", url, TP_BIND, ZMQ_PULL};
    if (stage_add_socket(st, &ep, dv_on_prompt_msg, s) < 0) return HM_ERR;
    s->nbb = cfg->stage[HM_STAGE_BACKBONE].replicas;
    s->bb = hm_calloc((size_t)s->nbb, sizeof *s->bb);
    for (int i = 0; i < s->nbb; i++) {
        hm_stage_endpoint(cfg, HM_STAGE_BACKBONE, i, url, sizeof url);
        tp_endpoint_t o = {"backbone", url, TP_CONNECT, ZMQ_DEALER};
        if ((s->bb[i] = stage_add_socket(st, &o, dv_on_backbone_msg, s)) < 0) return HM_ERR;
    }
    s->nfm = cfg->stage[HM_STAGE_FLOW_MATCHING].replicas;
    s->fm = hm_calloc((size_t)s->nfm, sizeof *s->fm);
    for (int i = 0; i < s->nfm; i++) {
        hm_stage_endpoint(cfg, HM_STAGE_FLOW_MATCHING, i, url, sizeof url);
        tp_endpoint_t o = {"flow-matching", url, TP_CONNECT, ZMQ_PUSH};
        if ((s->fm[i] = stage_add_socket(st, &o, NULL, NULL)) < 0) return HM_ERR;
    }
    return stage_add_timer(st, 0.1, dv_tick, s);
}
