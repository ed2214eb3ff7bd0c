/* service.c - the flow-matching stage: codes -> latents, one codec window at a time.
 *
 * FRAMES arrive as draft-verifier produces them (or all at once from `heartmula detokenize`).
 * A window runs as soon as its 372 codes exist (codec_plan_windows_ready), from the FRAMES that
 * completes it; the last windows, which depend on the song's final length through the reference's
 * repetition padding, run when the FRAMES marked final arrives (one window per timer turn).  When
 * the song's first FRAMES named a `notify` endpoint, the REPLY that reports window 0 goes there
 * too: draft-verifier holds the song's next frame until then (docs/PROTOCOL.md).  Each window's latents [744, C] go to the vocoder through this
 * stage's shm pool, followed by an end marker (LATENTS without a buffer, "final" = 1) carrying the
 * window count and the output length.  The previous window's latents stay here as the next
 * window's in-context frames.
 *
 * Backend cuda (HM_CUDA builds, stages.flow-matching.backend: cuda, precision bf16 | fp32): the
 * estimator and the Euler + CFG solver run on the GPU (kernels/codec_cuda.h); the CPU keeps only
 * the conditioning's small tables (fm_load_cond) and per window computes cond from the codes and
 * draws the start noise (fm_window_inputs, exactly as the CPU path), uploads both, and the solve
 * reads the song's in-context frames from a per-song device buffer (the last 104 latent rows of
 * its previous window, never copied to the host).  The window's latents go device to device into
 * a cuda pool slot when the vocoder's backend is cuda too (its stream waits for the slot's event),
 * else to the host into the shm pool slot.  Device memory: the adaLN weights stay in host memory
 * (the solve reads a table per step count, built at start for pipeline.yaml's codec_steps and
 * codec_guidance, and on first use for others) and cuBLASLt gets a 4 MiB workspace. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "codec_plan.h"
#include "desc.h"
#include "fm.h"
#include "hm.h"
#include "pool.h"
#include "service.h"
#include "stage.h"
#include "transport.h"

#ifdef HM_CUDA
#include "codec_cuda.h"
#endif

#define FM_MAX_REQUESTS 64
#define FM_MAX_CODES (1 << 20)
#define FM_IDLE_FREE_S 1800.0

typedef struct {
    int used;
    uint64_t req;
    desc_t params;
    char reply[DESC_MAX_ENDPOINT + 1];
    int32_t *frames;        /* [cap, ncb] frame-major, as they arrive */
    int n, cap, final;
    int windows_done;
    float *prev;            /* [744, C] latents of the previous window (backend cpu) */
#ifdef HM_CUDA
    float *dctx;            /* backend cuda: device [104, C], the previous window's last latent rows */
#endif
    codec_noise *noise;
    int steps;
    float guidance;
    double last_used;
} fm_req;

typedef struct {
    stage_t *st;
    fm_model *model;
    int ncb, C, codebook_size, sample_rate;
    int *voc; int nvoc;     /* stage socket index of the PUSH to each vocoder replica */
    pool_t *pool;
    fm_req reqs[FM_MAX_REQUESTS];
    float *lat;             /* [744, C] */
    int32_t *win;           /* [ncb, 372] */
    int turn;               /* the request slot whose turn it is for a window */
#ifdef HM_CUDA
    fmc_model *gm;          /* backend cuda: the estimator on the device (model: conditioning only) */
    cudaStream_t stream;
    int pool_cuda;          /* the vocoder is on cuda too: latents stay on the device */
    float *hcond, *hnoise;  /* host [744, dim], [744, C] */
    float *dcond, *dnoise, *dctx, *dout; /* device, fixed (the solver's graph replays with these) */
#endif
} fm_service;

static fm_req *find_req(fm_service *s, uint64_t req)
{
    for (int i = 0; i < FM_MAX_REQUESTS; i++)
        if (s->reqs[i].used && s->reqs[i].req == req) return &s->reqs[i];
    return NULL;
}

static void drop_req(fm_req *r)
{
    desc_free(&r->params);
    free(r->frames);
    free(r->prev);
#ifdef HM_CUDA
    if (r->dctx) cudaFree(r->dctx);
#endif
    if (r->noise) codec_noise_free(r->noise);
    memset(r, 0, sizeof *r);
}

static void fail_req(fm_service *s, fm_req *r, const char *msg)
{
    stage_exit_if_broken(s->st); /* a lost CUDA context: no request is failed for it */
    hm_service_reply_error(r->reply, r->req, "flow-matching", "%s", msg);
    stage_stat_add(s->st, "errors", 1);
    drop_req(r);
}

static int send_voc(fm_service *s, fm_req *r, desc_t *d)
{
    void *sock = stage_socket(s->st, s->voc[r->req % (uint64_t)s->nvoc]);
    int rc = tp_send(sock, NULL, d, ZMQ_DONTWAIT);
    for (int i = 0; rc == TP_AGAIN && i < 1500; i++) { /* the vocoder is restarting: wait up to 30 s */
        usleep(20000);
        rc = tp_send(sock, NULL, d, ZMQ_DONTWAIT);
    }
    return rc == HM_OK ? HM_OK : hm_err("cannot reach the vocoder");
}

#ifdef HM_CUDA
static int cuda_ck(cudaError_t e, const char *what)
{
    return e == cudaSuccess ? HM_OK : hm_err("flow-matching (cuda): %s: %s", what, cudaGetErrorString(e));
}

/* Window k of r on the GPU into pool slot `slot` (device or host memory by the pool's kind);
 * s->win holds its codes.  Returns when the slot's bytes are written (shm) or their copy is
 * enqueued and recorded on the slot's event (cuda), with the song's in-context rows updated. */
static int cuda_window(fm_service *s, fm_req *r, int k, uint32_t slot)
{
    const int W = CODEC_WIN_FRAMES, C = s->C, D = fm_config(s->model)->dim, L0 = CODEC_CTX_FRAMES;
    const size_t wc = (size_t)W * C * sizeof(float);
    cudaStream_t st = s->stream;
    int L;
    double t0 = hm_now();
    if (fm_window_inputs(s->model, s->win, r->noise, k, s->hcond, s->hnoise, &L)) return HM_ERR;
    stage_stat_time(s->st, "window_inputs", hm_now() - t0); /* host: conditioning and start noise */
    if (cuda_ck(cudaMemcpyAsync(s->dcond, s->hcond, (size_t)W * D * sizeof(float), cudaMemcpyHostToDevice, st), "cond upload") ||
        cuda_ck(cudaMemcpyAsync(s->dnoise, s->hnoise, wc, cudaMemcpyHostToDevice, st), "noise upload") ||
        (L && cuda_ck(cudaMemcpyAsync(s->dctx, r->dctx, (size_t)L * C * sizeof(float), cudaMemcpyDeviceToDevice, st),
                      "in-context copy")))
        return HM_ERR;
    if (fmc_solve_window(s->gm, s->dcond, s->dctx, L, s->dnoise, r->steps, r->guidance, s->dout, st)) return HM_ERR;
    void *dst = pool_slot_ptr(s->pool, slot);
    if (cuda_ck(cudaMemcpyAsync(r->dctx, s->dout + (size_t)(W - L0) * C, (size_t)L0 * C * sizeof(float),
                                cudaMemcpyDeviceToDevice, st), "in-context save") ||
        cuda_ck(cudaMemcpyAsync(dst, s->dout, wc, s->pool_cuda ? cudaMemcpyDeviceToDevice : cudaMemcpyDeviceToHost, st),
                "latents copy"))
        return HM_ERR;
    if (s->pool_cuda && pool_record(s->pool, slot, st)) return HM_ERR;
    /* wait here: the window's time is then real, a device error fails this song, and the host
     * buffers are free for the next window */
    return cuda_ck(cudaStreamSynchronize(st), "window");
}
#endif

/* Run the next window that is ready, if the vocoder has a free slot for it (never wait for one
 * here: the loop must stay responsive); on the final FRAMES, once every window went out, send the
 * end marker.  The stage's timer calls this again for every song with work left. */
static void advance(fm_service *s, fm_req *r)
{
    int ready = codec_plan_windows_ready(r->n, r->final);
    if (r->windows_done < ready && pool_free_slots(s->pool) > 0) {
        codec_plan plan;
        if (codec_plan_make(r->n, s->sample_rate, &plan)) return fail_req(s, r, hm_errmsg());
        /* codes [ncb, n] as the plan wants them; a window wholly inside the known codes does not
         * depend on the final length, so this plan serves it before the song ends */
        int32_t *cm = hm_malloc((size_t)r->n * s->ncb * sizeof *cm);
        for (int f = 0; f < r->n; f++)
            for (int q = 0; q < s->ncb; q++) cm[(size_t)q * r->n + f] = r->frames[(size_t)f * s->ncb + q];
        int k = r->windows_done;
        codec_plan_window_codes(&plan, cm, s->ncb, k, s->win);
        free(cm);
        uint32_t slot;
        if (pool_acquire(s->pool, 0, &slot)) return;
        float *lat = pool_slot_ptr(s->pool, slot);
        double t0 = hm_now();
        HM_NVTX_PUSH("fm_window");
        int rc;
#ifdef HM_CUDA
        if (s->gm) rc = cuda_window(s, r, k, slot);
        else
#endif
        {
            rc = fm_window(s->model, s->win, k ? r->prev : NULL, r->noise, k, r->steps, r->guidance, lat);
            if (!rc) memcpy(r->prev, lat, (size_t)CODEC_WIN_FRAMES * s->C * sizeof(float));
        }
        HM_NVTX_POP();
        if (rc) {
            pool_cancel(s->pool, slot);
            return fail_req(s, r, hm_errmsg());
        }
        stage_stat_time(s->st, "window", hm_now() - t0);
        desc_t d;
        desc_init(&d, DESC_LATENTS, r->req, (uint64_t)k);
        uint64_t shape[2] = {CODEC_WIN_FRAMES, (uint64_t)s->C};
        hm_service_copy_params(&d, &r->params, NULL, 0);
        desc_set_i64(&d, "window", k);
        if (r->final) desc_set_i64(&d, "out_len", (int64_t)plan.out_len);
        rc = pool_fill_desc(s->pool, slot, 0, DESC_DT_F32, 2, shape, &d) || send_voc(s, r, &d);
        desc_free(&d);
        if (rc) {
            pool_cancel(s->pool, slot);
            return fail_req(s, r, hm_errmsg());
        }
        r->windows_done = k + 1;
        desc_t pr;
        desc_init(&pr, DESC_REPLY, r->req, (uint64_t)k);
        desc_set_str(&pr, "stage", "flow-matching");
        desc_set_i64(&pr, "window", k);
        tp_send_url(r->reply, &pr); /* progress is best effort */
        /* the song's first window is done on the device: the draft-verifier that paused for it
         * (its FRAMES named a "notify" endpoint) goes on */
        const char *nt = NULL;
        if (k == 0 && desc_get_str(&r->params, "notify", &nt) == HM_OK && nt[0]) tp_send_url(nt, &pr);
        desc_free(&pr);
    }
    if (r->final && r->windows_done >= ready) {
        codec_plan plan;
        if (codec_plan_make(r->n, s->sample_rate, &plan)) return fail_req(s, r, hm_errmsg());
        desc_t d;
        desc_init(&d, DESC_LATENTS, r->req, (uint64_t)plan.n_windows);
        hm_service_copy_params(&d, &r->params, NULL, 0);
        desc_set_i64(&d, "final", 1);
        desc_set_i64(&d, "windows", plan.n_windows);
        desc_set_i64(&d, "out_len", (int64_t)plan.out_len);
        desc_set_i64(&d, "frames", r->n);
        int rc = send_voc(s, r, &d);
        desc_free(&d);
        if (rc) return fail_req(s, r, hm_errmsg());
        drop_req(r);
    }
}

static void on_frames(fm_service *s, const desc_t *in)
{
    const char *reply = "";
    fm_req *r = find_req(s, in->req_id);
    if (r && desc_i64_or(in, "first", -1) == 0 && in->buf.kind != DESC_BUF_NONE) {
        LOG_WARN("request %llx started again: dropping its %d codes", (unsigned long long)r->req, r->n);
        drop_req(r); /* the song was restarted upstream (a retried request) */
        r = NULL;
    }
    if (r) reply = r->reply;
    else if (desc_get_str(in, "reply", &reply)) {
        LOG_WARN("frames for %llx without a reply endpoint: dropped", (unsigned long long)in->req_id);
        stage_stat_add(s->st, "errors", 1);
        return;
    }
    if (in->type != DESC_FRAMES) {
        hm_service_reply_error(reply, in->req_id, "flow-matching", "flow-matching takes FRAMES, not %s", desc_type_name(in->type));
        return;
    }
    int64_t first = desc_i64_or(in, "first", -1);
    if (!r) {
        if (first != 0) {
            hm_service_reply_lost(reply, in->req_id, "flow-matching", "frames of an unknown song (flow-matching restarted mid-song)");
            stage_stat_add(s->st, "errors", 1);
            return;
        }
        for (int i = 0; i < FM_MAX_REQUESTS && !r; i++)
            if (!s->reqs[i].used) r = &s->reqs[i];
        if (!r) {
            hm_service_reply_error(reply, in->req_id, "flow-matching", "%s", "too many songs in progress; retry later");
            return;
        }
        r->used = 1;
        r->req = in->req_id;
        snprintf(r->reply, sizeof r->reply, "%s", reply);
        desc_init(&r->params, DESC_NONE, in->req_id, 0);
        static const char *const skip[] = {"first", "final", "total"};
        hm_service_copy_params(&r->params, in, skip, HM_ARRAY_LEN(skip));
        const int64_t steps = desc_i64_or(in, "codec_steps", 10);
        r->steps = steps >= 1 && steps <= FM_MAX_STEPS ? (int)steps : 0; /* 0: refused below */
        r->guidance = (float)desc_f64_or(in, "codec_guidance", 1.25);
#ifdef HM_CUDA
        if (s->gm) {
            if (cuda_ck(cudaMalloc((void **)&r->dctx, (size_t)CODEC_CTX_FRAMES * s->C * sizeof(float)), "in-context buffer"))
                return fail_req(s, r, hm_errmsg());
        } else
#endif
            r->prev = hm_calloc((size_t)CODEC_WIN_FRAMES * s->C, sizeof(float));
        const char *nf = NULL;
        int rc = desc_get_str(in, "noise_from", &nf) == HM_OK ? codec_noise_replay(nf, &r->noise)
                                                               : codec_noise_seeded((uint64_t)desc_i64_or(in, "seed", 0), &r->noise);
        if (rc) return fail_req(s, r, hm_errmsg());
        if (r->steps < 1) return fail_req(s, r, "codec_steps must be in 1..1000");
        if (!(r->guidance >= 0) || r->guidance > 1e6f) return fail_req(s, r, "codec_guidance must be a number >= 0");
    }
    r->last_used = hm_now();
    const desc_buf_t *b = &in->buf;
    if (b->kind != DESC_BUF_NONE) {
        if (b->kind != DESC_BUF_INLINE || b->dtype != DESC_DT_I32 || b->ndim != 2 || b->shape[1] != (uint64_t)s->ncb)
            return fail_req(s, r, "FRAMES: needs inline int32 codes [n, codebooks]");
        int n = (int)b->shape[0];
        if (first != r->n) {
            char m[160];
            snprintf(m, sizeof m, "FRAMES out of order: got frame %lld, expected %d", (long long)first, r->n);
            return fail_req(s, r, m);
        }
        if ((int64_t)r->n + n > FM_MAX_CODES) return fail_req(s, r, "song too long for the codec");
        const int32_t *c = (const int32_t *)b->data;
        for (int i = 0; i < n * s->ncb; i++)
            if (c[i] < 0 || c[i] >= s->codebook_size) {
                char m[160];
                snprintf(m, sizeof m, "code %d at frame %d is outside the codec's codebook [0, %d)", c[i], r->n + i / s->ncb, s->codebook_size);
                return fail_req(s, r, m);
            }
        if (r->n + n > r->cap) {
            r->cap = HM_MAX(r->cap * 2, r->n + n + 256);
            r->frames = hm_realloc(r->frames, (size_t)r->cap * s->ncb * sizeof *r->frames);
        }
        memcpy(r->frames + (size_t)r->n * s->ncb, c, (size_t)n * s->ncb * sizeof *c);
        r->n += n;
    }
    if (desc_i64_or(in, "final", 0)) {
        r->final = 1;
        if (r->n < 1) return fail_req(s, r, "the song has no codes");
    }
    /* a window these codes complete runs now, not at the next tick (up to 50 ms later: the
     * first audio waits for window 0) */
    if (codec_plan_windows_ready(r->n, r->final) > r->windows_done) advance(s, r);
}

static int fm_on_msg(stage_t *st, int sock, const tp_peer_t *from, desc_t *in, void *user)
{
    (void)st;
    (void)sock;
    (void)from;
    on_frames(user, in);
    return HM_OK;
}

/* Songs take turns, one window per timer turn, so the loop answers control messages and takes
 * new frames between windows. */
static void fm_tick(stage_t *st, void *user)
{
    fm_service *s = user;
    double now = hm_now();
    (void)st;
    for (int j = 0; j < FM_MAX_REQUESTS; j++) {
        fm_req *r = &s->reqs[(s->turn + j) % FM_MAX_REQUESTS];
        if (!r->used) continue;
        if (now - r->last_used > FM_IDLE_FREE_S) {
            LOG_WARN("request %llx idle for %.0f s: dropped", (unsigned long long)r->req, now - r->last_used);
            drop_req(r);
            continue;
        }
        int before = r->windows_done;
        advance(s, r);
        if (r->used && r->windows_done != before) {
            s->turn = (s->turn + j + 1) % FM_MAX_REQUESTS;
            return;
        }
    }
}

void fm_service_free(void *state)
{
    fm_service *s = state;
    for (int i = 0; i < FM_MAX_REQUESTS; i++)
        if (s->reqs[i].used) drop_req(&s->reqs[i]);
    free(s->voc);
    if (s->pool) pool_destroy(s->pool);
    if (s->model) fm_free(s->model);
#ifdef HM_CUDA
    if (s->gm) fmc_free(s->gm); /* (synchronises the device first) */
    float *dev[] = {s->dcond, s->dnoise, s->dctx, s->dout};
    for (size_t i = 0; i < HM_ARRAY_LEN(dev); i++)
        if (dev[i]) cudaFree(dev[i]);
    if (s->stream) cudaStreamDestroy(s->stream);
    if (s->hcond) cudaFreeHost(s->hcond);
    if (s->hnoise) cudaFreeHost(s->hnoise);
#endif
    free(s->lat);
    free(s->win);
    free(s);
}

int fm_service_setup(stage_t *st, const hm_pipeline_cfg *cfg, int replica, void **state)
{
    fm_service *s = hm_calloc(1, sizeof *s);
    s->st = st;
    *state = s;
    char url[600], name[96];
    const hm_stage_cfg *sc = &cfg->stage[HM_STAGE_FLOW_MATCHING];
    pool_kind_t kind = POOL_SHM;
#ifdef HM_CUDA
    if (!strcmp(sc->backend, "cuda")) {
        int wdt;
        hmc_gemm_set_workspace_mb(4); /* large GEMMs: a 4 MiB cuBLASLt workspace costs them nothing */
        if (hmc_context_trim() || fmc_precision(sc->precision, &wdt) || fm_load_cond(cfg->model_dir, &s->model) ||
            fmc_load(cfg->model_dir, wdt, &s->gm))
            return HM_ERR;
        /* attention: the flash kernel with bf16 weights, cuBLASLt GEMMs with fp32; one CUDA graph
         * per window shape (the first window, L = 0, and the later ones) */
        if (fmc_set_attention(s->gm, FMC_ATT_AUTO)) return HM_ERR;
        fmc_set_graphs(s->gm, 1);
        const hm_codec_config *cc = fm_config(s->model);
        const size_t wc = (size_t)CODEC_WIN_FRAMES * cc->out_channels * sizeof(float),
                     wd = (size_t)CODEC_WIN_FRAMES * cc->dim * sizeof(float);
        if (cuda_ck(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking), "stream") ||
            cuda_ck(cudaMallocHost((void **)&s->hcond, wd), "host buffer") ||
            cuda_ck(cudaMallocHost((void **)&s->hnoise, wc), "host buffer") ||
            cuda_ck(cudaMalloc((void **)&s->dcond, wd), "device buffer") ||
            cuda_ck(cudaMalloc((void **)&s->dnoise, wc), "device buffer") ||
            cuda_ck(cudaMalloc((void **)&s->dctx, wc), "device buffer") ||
            cuda_ck(cudaMalloc((void **)&s->dout, wc), "device buffer"))
            return HM_ERR;
        /* the adaLN weights stay in host memory (only the t grid feeds them: one table per step
         * count), and the workspace and the default request's table are made now, before any song */
        if (fmc_set_adaln_host(s->gm, 1) ||
            fmc_prepare(s->gm, CODEC_WIN_FRAMES, cfg->gen.codec_steps, (float)cfg->gen.codec_guidance, s->stream))
            return HM_ERR;
        s->pool_cuda = !strcmp(cfg->stage[HM_STAGE_VOCODER].backend, "cuda");
        if (s->pool_cuda) kind = POOL_CUDA;
        LOG_INFO("backend cuda, %s weights, latents to the vocoder in %s memory", wdt == HMC_F32 ? "fp32" : "bf16",
                 s->pool_cuda ? "device" : "host");
    } else
#endif
    if (fm_load(cfg->model_dir, &s->model))
        return HM_ERR;
    const hm_codec_config *cc = fm_config(s->model);
    s->ncb = cc->num_quantizers;
    s->C = cc->out_channels;
    s->codebook_size = cc->codebook_size;
    s->sample_rate = cc->sample_rate;
    s->lat = hm_malloc((size_t)CODEC_WIN_FRAMES * s->C * sizeof(float));
    s->win = hm_malloc((size_t)CODEC_WIN_CODES * s->ncb * sizeof(int32_t));
    hm_stage_endpoint(cfg, HM_STAGE_FLOW_MATCHING, replica, url, sizeof url);
    tp_endpoint_t ep = {"flow-matching", url, TP_BIND, ZMQ_PULL};
    if (stage_add_socket(st, &ep, fm_on_msg, s) < 0) return HM_ERR;
    s->nvoc = cfg->stage[HM_STAGE_VOCODER].replicas;
    s->voc = hm_calloc((size_t)s->nvoc, sizeof *s->voc);
    for (int i = 0; i < s->nvoc; i++) {
        hm_stage_endpoint(cfg, HM_STAGE_VOCODER, i, url, sizeof url);
        tp_endpoint_t o = {"vocoder", url, TP_CONNECT, ZMQ_PUSH};
        if ((s->voc[i] = stage_add_socket(st, &o, NULL, NULL)) < 0) return HM_ERR;
    }
    hm_service_pool_name(cfg, "flow-matching", replica, "latents", name, sizeof name);
    if (pool_create(kind, name, (uint32_t)sc->pool_slots,
                    (uint64_t)CODEC_WIN_FRAMES * s->C * sizeof(float), &s->pool))
        return HM_ERR;
    pool_set_lease(s->pool, 600.0); /* a CPU vocoder may hold a window for minutes */
    snprintf(url, sizeof url, "ipc://%s/flow-matching-%d.rel", cfg->run_dir, replica);
    if (pool_listen(s->pool, url) || stage_add_pool(st, s->pool)) return HM_ERR;
    return stage_add_timer(st, 0.05, fm_tick, s);
}
