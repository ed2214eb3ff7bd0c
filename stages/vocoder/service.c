/* service.c - the vocoder stage: latents -> 48 kHz stereo PCM -> the song file.
 *
 * Windows arrive in order from flow-matching (LATENTS with a buffer, params "window"), each is
 * decoded, cross-faded with the previous one (4.16 s) and appended to the output file as soon
 * as its samples are final, so a long song is playable while it is being made.  The end marker
 * (LATENTS without a buffer, "final" = 1) closes the file, which is renamed into place
 * atomically, and tells the client (AUDIO_DONE).
 *
 * Backend cuda (HM_CUDA builds, stages.vocoder.backend: cuda, precision bf16 | fp32): the window
 * is decoded on the GPU (kernels/vocoder_cuda).  Its latents are either in the flow-matching
 * stage's host shm pool (copied up first) or, when flow-matching runs on cuda too, in its device
 * pool (read in place after pool_wait).  The cross-fade runs on the device too (hmc_crossfade_rows,
 * bit-identical to the host's cpu_crossfade): each song keeps its previous window's last 199680
 * samples per channel in device memory, the new window's head is faded with them in place, and
 * only the samples that are then final come back to a pinned host buffer, which the host just
 * writes to the file (the new tail stays on the device until the next window or the end marker).
 * HM_VOC_HOST_FADE=1 in the stage's environment brings the whole window back and fades on the
 * host as the CPU backend does: only for checks (profiling/gpu-check vocoder compares the two
 * files, which must be identical). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audio_out.h"
#include "codec_plan.h"
#include "desc.h"
#include "hm.h"
#include "pool.h"
#include "service.h"
#include "stage.h"
#include "transport.h"
#include "vocoder.h"
#ifdef HM_CUDA
#include "vocoder_cuda.h"
#endif

#define VOC_MAX_REQUESTS 64
#define VOC_IDLE_FREE_S 1800.0

typedef struct {
    int used;
    uint64_t req;
    char reply[DESC_MAX_ENDPOINT + 1];
    char out[4096];
    audio_writer *w;
    xfade xf;               /* the host fade; with the device fade only its limit and have_tail */
#ifdef HM_CUDA
    float *tail_dev;        /* device fade: [2, ovl], the previous window's last samples */
#endif
    int windows_done;
    double last_used;
} voc_req;

typedef struct {
    stage_t *st;
    voc_model *model;
    int C, sr;
    size_t seg, ovl;
    voc_req reqs[VOC_MAX_REQUESTS];
    float *pcm;            /* [2, seg] */
#ifdef HM_CUDA
    vcc_model *gm;         /* backend cuda (model stays NULL); pcm is then pinned host memory */
    cudaStream_t stream;
    float *lat_dev;        /* [CODEC_WIN_FRAMES, C]: host latents copied up */
    float *pcm_dev;        /* [2, seg] */
    int host_fade;         /* HM_VOC_HOST_FADE: the whole window to the host, faded there (checks) */
#endif
} voc_service;

/* Backend cuda fades on the device, unless HM_VOC_HOST_FADE asks for the host path. */
static int device_fade(const voc_service *s)
{
#ifdef HM_CUDA
    return s->gm && !s->host_fade;
#else
    (void)s;
    return 0;
#endif
}

static voc_req *find_req(voc_service *s, uint64_t req)
{
    for (int i = 0; i < VOC_MAX_REQUESTS; i++)
        if (s->reqs[i].used && s->reqs[i].req == req) return &s->reqs[i];
    return NULL;
}

static void drop_req(voc_req *r)
{
    if (r->w) audio_writer_abort(r->w);
    xfade_free(&r->xf);
#ifdef HM_CUDA
    if (r->tail_dev) cudaFree(r->tail_dev); /* (synchronises the device: the song's work is done) */
#endif
    memset(r, 0, sizeof *r);
}

static void fail_req(voc_service *s, voc_req *r, const char *msg)
{
    stage_exit_if_broken(s->st); /* a lost CUDA context: no request is failed for it */
    hm_service_reply_error(r->reply, r->req, "vocoder", "%s", msg);
    stage_stat_add(s->st, "errors", 1);
    drop_req(r);
}

#ifdef HM_CUDA
/* The window on the GPU: latents from a device pool slot (wait for its producer's event) or from
 * host memory (copy up), decode into s->pcm_dev.  Host fade: the whole window back to s->pcm
 * [2, seg].  Device fade: the head [0, ovl) faded in place with r's tail (from the second window
 * on), the final samples [0, seg - ovl) of each channel back to s->pcm (row stride seg), the new
 * tail [seg - ovl, seg) kept in r->tail_dev.  Synchronous, so the slot is free to go back when
 * this returns. */
static int decode_window_cuda(voc_service *s, voc_req *r, const desc_t *in, const void *ptr)
{
    const float *lat = ptr;
    const size_t lat_bytes = sizeof(float) * CODEC_WIN_FRAMES * (size_t)s->C;
    if (in->buf.kind == DESC_BUF_CUDA) {
        if (pool_wait(in, s->stream)) return HM_ERR;
    } else {
        cudaError_t e = cudaMemcpyAsync(s->lat_dev, ptr, lat_bytes, cudaMemcpyHostToDevice, s->stream);
        if (e != cudaSuccess) return hm_err("vocoder: latents to the device: %s", cudaGetErrorString(e));
        lat = s->lat_dev;
    }
    if (vcc_decode_window(s->gm, lat, CODEC_WIN_FRAMES, s->seg, s->pcm_dev, s->stream)) return HM_ERR;
    const size_t L = s->seg, O = s->ovl, row = sizeof(float) * L;
    cudaError_t e;
    if (!device_fade(s)) {
        e = cudaMemcpyAsync(s->pcm, s->pcm_dev, 2 * row, cudaMemcpyDeviceToHost, s->stream);
    } else {
        if (r->xf.have_tail && hmc_crossfade_rows(r->tail_dev, O, s->pcm_dev, L, s->pcm_dev, L, O, 2, s->stream))
            return HM_ERR;
        e = cudaMemcpy2DAsync(s->pcm, row, s->pcm_dev, row, sizeof(float) * (L - O), 2, cudaMemcpyDeviceToHost, s->stream);
        if (e == cudaSuccess)
            e = cudaMemcpy2DAsync(r->tail_dev, sizeof(float) * O, s->pcm_dev + (L - O), row, sizeof(float) * O, 2,
                                  cudaMemcpyDeviceToDevice, s->stream);
    }
    if (e == cudaSuccess) e = cudaStreamSynchronize(s->stream);
    if (e != cudaSuccess) return hm_err("vocoder: cuda decode: %s", cudaGetErrorString(e));
    if (device_fade(s)) r->xf.have_tail = 1;
    return HM_OK;
}

/* Device fade, end of the song: the tail [2, ovl] to the host and out (up to the limit). */
static int finish_device_fade(voc_service *s, voc_req *r)
{
    if (!r->xf.have_tail) return HM_OK;
    const size_t L = s->seg, O = s->ovl;
    cudaError_t e = cudaMemcpy2DAsync(s->pcm, sizeof(float) * L, r->tail_dev, sizeof(float) * O, sizeof(float) * O, 2,
                                      cudaMemcpyDeviceToHost, s->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s->stream);
    if (e != cudaSuccess) return hm_err("vocoder: cuda tail to the host: %s", cudaGetErrorString(e));
    r->xf.have_tail = 0;
    const float *ch[2] = {s->pcm, s->pcm + L};
    return xfade_emit(&r->xf, ch, O, audio_writer_sink, r->w);
}
#endif

/* One window of latents (ptr: pool_map's pointer, host or device) -> s->pcm [2, seg] (with the
 * device fade: its final part, see decode_window_cuda). */
static int decode_window(voc_service *s, voc_req *r, const desc_t *in, const void *ptr)
{
#ifdef HM_CUDA
    if (s->gm) return decode_window_cuda(s, r, in, ptr);
#endif
    (void)r;
    if (in->buf.kind != DESC_BUF_SHM && in->buf.kind != DESC_BUF_INLINE)
        return hm_err("vocoder (backend cpu): latents in device memory; run flow-matching on the cpu backend too");
    return voc_decode_window(s->model, ptr, CODEC_WIN_FRAMES, s->seg, s->pcm);
}

static void on_latents(voc_service *s, const desc_t *in)
{
    const char *reply = "";
    voc_req *r = find_req(s, in->req_id);
    const desc_buf_t *b = &in->buf;
    if (r) reply = r->reply;
    else if (desc_get_str(in, "reply", &reply)) {
        LOG_WARN("latents for %llx without a reply endpoint: dropped", (unsigned long long)in->req_id);
        if (b->kind != DESC_BUF_NONE) pool_release(in);
        stage_stat_add(s->st, "errors", 1);
        return;
    }
    if (in->type != DESC_LATENTS) {
        if (b->kind != DESC_BUF_NONE) pool_release(in);
        hm_service_reply_error(reply, in->req_id, "vocoder", "vocoder takes LATENTS, not %s", desc_type_name(in->type));
        return;
    }
    int64_t k = desc_i64_or(in, "window", -1);
    if (r && k == 0 && b->kind != DESC_BUF_NONE) {
        LOG_WARN("request %llx started again: dropping its partial file", (unsigned long long)r->req);
        drop_req(r); /* the song was restarted upstream (a retried request) */
        r = NULL;
    }
    if (!r) {
        if (b->kind == DESC_BUF_NONE || k != 0) {
            if (b->kind != DESC_BUF_NONE) pool_release(in);
            hm_service_reply_lost(reply, in->req_id, "vocoder", "latents of an unknown song (vocoder restarted mid-song)");
            stage_stat_add(s->st, "errors", 1);
            return;
        }
        for (int i = 0; i < VOC_MAX_REQUESTS && !r; i++)
            if (!s->reqs[i].used) r = &s->reqs[i];
        if (!r) {
            pool_release(in);
            hm_service_reply_error(reply, in->req_id, "vocoder", "%s", "too many songs in progress; retry later");
            return;
        }
        r->used = 1;
        r->req = in->req_id;
        snprintf(r->reply, sizeof r->reply, "%s", reply);
        const char *out = "", *fmt = NULL;
        desc_get_str(in, "out", &out);
        snprintf(r->out, sizeof r->out, "%s", out);
        audio_sample_fmt sf = AUDIO_FMT_DEFAULT;
        if (desc_get_str(in, "sample_format", &fmt) == HM_OK && audio_sample_fmt_parse(fmt, &sf)) {
            pool_release(in);
            return fail_req(s, r, hm_errmsg());
        }
        int rc = device_fade(s) ? xfade_init_external(&r->xf, 2, s->seg, s->ovl) : xfade_init(&r->xf, 2, s->seg, s->ovl);
#ifdef HM_CUDA
        if (!rc && device_fade(s)) {
            cudaError_t e = cudaMalloc((void **)&r->tail_dev, sizeof(float) * 2 * s->ovl);
            if (e != cudaSuccess) {
                r->tail_dev = NULL;
                rc = hm_err("vocoder: device cross-fade tail: %s", cudaGetErrorString(e));
            }
        }
#endif
        if (rc || audio_writer_open(r->out, s->sr, 2, sf, &r->w)) {
            pool_release(in);
            return fail_req(s, r, hm_errmsg());
        }
    }
    r->last_used = hm_now();
    int64_t out_len = desc_i64_or(in, "out_len", -1);
    if (out_len >= 0) xfade_set_limit(&r->xf, (size_t)out_len);
    if (b->kind != DESC_BUF_NONE) {
        const void *ptr;
        if (b->dtype != DESC_DT_F32 || b->ndim != 2 || b->shape[0] != CODEC_WIN_FRAMES || b->shape[1] != (uint64_t)s->C ||
            pool_map(in, &ptr)) {
            if (b->kind != DESC_BUF_NONE) pool_release(in);
            return fail_req(s, r, "malformed latents");
        }
        if (k != r->windows_done) {
            pool_release(in);
            char m[120];
            snprintf(m, sizeof m, "window %lld arrived, expected %d", (long long)k, r->windows_done);
            return fail_req(s, r, m);
        }
        double t0 = hm_now();
        HM_NVTX_PUSH("voc_window");
        int rc = decode_window(s, r, in, ptr);
        HM_NVTX_POP();
        pool_release(in);
        const double t1 = hm_now();
        if (!rc) {
            if (device_fade(s)) { /* faded already: the window's final samples, stride seg */
                const float *ch[2] = {s->pcm, s->pcm + s->seg};
                rc = xfade_emit(&r->xf, ch, s->seg - s->ovl, audio_writer_sink, r->w);
            } else {
                rc = xfade_push(&r->xf, s->pcm, s->seg, audio_writer_sink, r->w);
            }
        }
        if (rc) return fail_req(s, r, hm_errmsg());
        stage_stat_time(s->st, "window_write", hm_now() - t1); /* host: cross-fade and the file */
        stage_stat_time(s->st, "window", hm_now() - t0);
        r->windows_done++;
        desc_t pr;
        desc_init(&pr, DESC_REPLY, r->req, (uint64_t)k);
        desc_set_str(&pr, "stage", "vocoder");
        desc_set_i64(&pr, "window", k);
        tp_send_url(r->reply, &pr); /* progress is best effort */
        desc_free(&pr);
    }
    if (desc_i64_or(in, "final", 0)) {
        int64_t windows = desc_i64_or(in, "windows", -1);
        if (windows != r->windows_done) {
            char m[120];
            snprintf(m, sizeof m, "song ended after %d windows, flow-matching announced %lld", r->windows_done, (long long)windows);
            return fail_req(s, r, m);
        }
        size_t frames = 0;
        int rc;
#ifdef HM_CUDA
        if (device_fade(s)) rc = finish_device_fade(s, r);
        else
#endif
            rc = xfade_finish(&r->xf, audio_writer_sink, r->w);
        if (rc) return fail_req(s, r, hm_errmsg());
        rc = audio_writer_close(r->w, &frames);
        r->w = NULL;
        if (rc) return fail_req(s, r, hm_errmsg());
        stage_stat_add(s->st, "songs", 1);
        stage_stat_add(s->st, "audio_ms", (int64_t)(frames * 1000 / (size_t)s->sr));
        desc_t d;
        desc_init(&d, DESC_AUDIO_DONE, r->req, 0);
        desc_set_str(&d, "out", r->out);
        desc_set_i64(&d, "frames", desc_i64_or(in, "frames", 0));
        desc_set_i64(&d, "samples", (int64_t)frames);
        if (tp_send_url(r->reply, &d)) LOG_WARN("%s", hm_errmsg());
        desc_free(&d);
        LOG_INFO("request %llx: wrote %s (%.2f s)", (unsigned long long)r->req, r->out, (double)frames / s->sr);
        drop_req(r);
    }
}

static int voc_on_msg(stage_t *st, int sock, const tp_peer_t *from, desc_t *in, void *user)
{
    (void)st;
    (void)sock;
    (void)from;
    on_latents(user, in);
    return HM_OK;
}

static void voc_tick(stage_t *st, void *user)
{
    voc_service *s = user;
    double now = hm_now();
    (void)st;
    for (int i = 0; i < VOC_MAX_REQUESTS; i++)
        if (s->reqs[i].used && now - s->reqs[i].last_used > VOC_IDLE_FREE_S) {
            LOG_WARN("request %llx idle for %.0f s: dropped", (unsigned long long)s->reqs[i].req, now - s->reqs[i].last_used);
            drop_req(&s->reqs[i]);
        }
}

void voc_service_free(void *state)
{
    voc_service *s = state;
    for (int i = 0; i < VOC_MAX_REQUESTS; i++)
        if (s->reqs[i].used) drop_req(&s->reqs[i]);
    if (s->model) voc_free(s->model);
#ifdef HM_CUDA
    if (s->gm) {
        vcc_free(s->gm);
        cudaFree(s->lat_dev);
        cudaFree(s->pcm_dev);
        cudaFreeHost(s->pcm);
        cudaStreamDestroy(s->stream);
        s->pcm = NULL;
    }
#endif
    free(s->pcm);
    pool_unmap_all();
    free(s);
}

int voc_service_setup(stage_t *st, const hm_pipeline_cfg *cfg, int replica, void **state)
{
    voc_service *s = hm_calloc(1, sizeof *s);
    s->st = st;
    *state = s;
    char url[600];
    const hm_codec_config *cc;
    const hm_stage_cfg *sc = &cfg->stage[HM_STAGE_VOCODER];
#ifdef HM_CUDA
    if (!strcmp(sc->backend, "cuda")) {
        hmc_dtype wdt;
        hmc_gemm_set_workspace_mb(4); /* large GEMMs: a 4 MiB cuBLASLt workspace costs them nothing */
        if (hmc_context_trim() || vcc_precision(sc->precision, &wdt) || vcc_load(cfg->model_dir, wdt, &s->gm))
            return HM_ERR;
        cc = vcc_config(s->gm);
        LOG_INFO("backend cuda, %s weights", wdt == HMC_F32 ? "fp32" : "bf16");
    } else
#endif
    {
        if (!strcmp(sc->backend, "cuda"))
            return hm_err("stages.vocoder.backend cuda: this build has no CUDA (make CUDA=1)");
        if (voc_load(cfg->model_dir, &s->model)) return HM_ERR;
        cc = voc_config(s->model);
    }
    s->C = cc->out_channels;
    s->sr = cc->sample_rate;
    codec_plan p;
    if (codec_plan_make(1, s->sr, &p)) return HM_ERR;
    s->seg = p.seg_samples;
    s->ovl = p.ovl_samples;
    size_t hop = s->model ? (size_t)voc_hop(s->model) : 0;
#ifdef HM_CUDA
    if (s->gm) hop = (size_t)vcc_hop(s->gm);
#endif
    if ((size_t)CODEC_WIN_FRAMES * hop < s->seg)
        return hm_err("vocoder: a window of %d frames makes fewer than the %zu samples of a segment", CODEC_WIN_FRAMES, s->seg);
#ifdef HM_CUDA
    if (s->gm) {
        cudaError_t e = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking);
        if (e == cudaSuccess) e = cudaMalloc((void **)&s->lat_dev, sizeof(float) * CODEC_WIN_FRAMES * (size_t)s->C);
        if (e == cudaSuccess) e = cudaMalloc((void **)&s->pcm_dev, sizeof(float) * 2 * s->seg);
        if (e == cudaSuccess) e = cudaMallocHost((void **)&s->pcm, sizeof(float) * 2 * s->seg);
        if (e != cudaSuccess) return hm_err("vocoder: cuda buffers: %s", cudaGetErrorString(e));
        if (vcc_reserve(s->gm, CODEC_WIN_FRAMES)) return HM_ERR; /* the workspace now, not at the first song */
        const char *hf = getenv("HM_VOC_HOST_FADE");
        s->host_fade = hf && *hf && strcmp(hf, "0");
        LOG_INFO("cross-fade on the %s", s->host_fade ? "host (HM_VOC_HOST_FADE)" : "device");
    } else
#endif
        s->pcm = hm_malloc(2 * s->seg * sizeof(float));
    hm_stage_endpoint(cfg, HM_STAGE_VOCODER, replica, url, sizeof url);
    tp_endpoint_t ep = {"vocoder", url, TP_BIND, ZMQ_PULL};
    if (stage_add_socket(st, &ep, voc_on_msg, s) < 0) return HM_ERR;
    return stage_add_timer(st, 10.0, voc_tick, s);
}
