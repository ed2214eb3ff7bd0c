/* detokenize.c - codes -> 48 kHz stereo in one process, at once or streaming (see detokenize.h). */
#include "detokenize.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hm.h"

struct codec_stream {
    const fm_model *fm;
    const voc_model *voc;
    codec_noise *noise;
    const codec_sink *sink;
    audio_writer *w;
    int steps, ncb, sample_rate, failed;
    float guidance;
    int32_t *codes; /* [ncb, cap], row stride cap */
    int n, cap;
    int done;       /* windows run so far */
    float *prev, *lat, *seg; /* previous window's latents, this one's, its audio [2, seg_samples] */
    int32_t *wc;    /* [ncb, 372] window codes */
    codec_plan geo; /* segment geometry (sizes only: the length is not known until the end) */
    xfade xf;
    size_t delivered;
};

static int stream_sink(void *ctx, const float *const *ch, size_t n)
{
    codec_stream *s = ctx;
    s->delivered += n;
    if (s->w && audio_writer_write(s->w, ch, n)) return HM_ERR;
    if (s->sink && s->sink->cb && s->sink->cb(s->sink->cb_ctx, ch, n)) return HM_ERR;
    return HM_OK;
}

int codec_stream_open(const fm_model *fm, const voc_model *voc, int steps, float guidance, codec_noise *noise,
                      const codec_sink *sink, codec_stream **out)
{
    *out = NULL;
    const hm_codec_config *c = fm_config(fm);
    if (steps < 1) return hm_err("codec: %d flow-matching steps (need at least 1)", steps);
    if (!isfinite(guidance) || guidance < 0.0f) return hm_err("codec: guidance %g must be a finite number >= 0", (double)guidance);
    if (c->out_channels != 2 * voc_config(voc)->latent_hidden_dim)
        return hm_err("codec: latent width %d is not 2 x vocoder latent_hidden_dim %d", c->out_channels,
                      voc_config(voc)->latent_hidden_dim);
    codec_plan geo;
    if (codec_plan_make(1, c->sample_rate, &geo)) return HM_ERR;
    if ((size_t)voc_hop(voc) * CODEC_WIN_FRAMES < geo.seg_samples)
        return hm_err("codec: vocoder makes %d samples per frame, a window needs %zu of %d frames", voc_hop(voc),
                      geo.seg_samples, CODEC_WIN_FRAMES);
    codec_stream *s = hm_calloc(1, sizeof *s);
    *s = (codec_stream){.fm = fm, .voc = voc, .noise = noise, .sink = sink, .steps = steps, .guidance = guidance,
                        .ncb = c->num_quantizers, .sample_rate = c->sample_rate, .geo = geo};
    if (sink && sink->path && audio_writer_open(sink->path, c->sample_rate, 2, sink->fmt, &s->w)) {
        free(s);
        return HM_ERR;
    }
    if (xfade_init(&s->xf, 2, geo.seg_samples, geo.ovl_samples)) {
        audio_writer_abort(s->w);
        free(s);
        return HM_ERR;
    }
    const size_t wf = (size_t)CODEC_WIN_FRAMES * c->out_channels;
    s->prev = hm_malloc(sizeof(float) * wf);
    s->lat = hm_malloc(sizeof(float) * wf);
    s->seg = hm_malloc(sizeof(float) * 2 * geo.seg_samples);
    s->wc = hm_malloc(sizeof(int32_t) * (size_t)s->ncb * CODEC_WIN_CODES);
    *out = s;
    return HM_OK;
}

/* Run window k of the code sequence `p` describes (codes: [ncb, p->T] with row stride `stride`). */
static int run_window(codec_stream *s, const codec_plan *p, int stride, int k)
{
    double t0 = hm_now();
    int s0 = codec_plan_window_start(k);
    for (int q = 0; q < s->ncb; q++)
        for (int i = 0; i < CODEC_WIN_CODES; i++)
            s->wc[(size_t)q * CODEC_WIN_CODES + i] = s->codes[(size_t)q * stride + codec_plan_src(p, s0 + i)];
    if (fm_window(s->fm, s->wc, k ? s->prev : NULL, s->noise, k, s->steps, s->guidance, s->lat)) return HM_ERR;
    double t1 = hm_now();
    if (voc_decode_window(s->voc, s->lat, CODEC_WIN_FRAMES, s->geo.seg_samples, s->seg)) return HM_ERR;
    if (xfade_push(&s->xf, s->seg, s->geo.seg_samples, stream_sink, s)) return HM_ERR;
    LOG_DEBUG("codec window %d: flow matching %.2f s, vocoder %.2f s", k, t1 - t0, hm_now() - t1);
    float *t = s->prev;
    s->prev = s->lat;
    s->lat = t;
    s->done = k + 1;
    return HM_OK;
}

int codec_stream_push(codec_stream *s, const int32_t *frames, int n)
{
    if (s->failed) return hm_err("codec stream: an earlier step failed");
    if (n < 0 || n > (1 << 24) - s->n) return hm_err("codec stream: bad frame count %d", n);
    const int cbs = fm_config(s->fm)->codebook_size;
    for (int i = 0; i < n; i++)
        for (int q = 0; q < s->ncb; q++) {
            int32_t v = frames[(size_t)i * s->ncb + q];
            if (v < 0 || v >= cbs) {
                s->failed = 1;
                return hm_err("codec: code %d at codebook %d, frame %d is outside [0, %d)", (int)v, q, s->n + i, cbs);
            }
        }
    if (s->n + n > s->cap) {
        int cap = HM_MAX(s->n + n, 2 * s->cap + 512);
        int32_t *c = hm_malloc(sizeof(int32_t) * (size_t)s->ncb * cap);
        for (int q = 0; q < s->ncb && s->n; q++)
            memcpy(c + (size_t)q * cap, s->codes + (size_t)q * s->cap, sizeof(int32_t) * s->n);
        free(s->codes);
        s->codes = c;
        s->cap = cap;
    }
    for (int i = 0; i < n; i++)
        for (int q = 0; q < s->ncb; q++) s->codes[(size_t)q * s->cap + s->n + i] = frames[(size_t)i * s->ncb + q];
    s->n += n;
    /* A window lying wholly inside the known codes reads no padding: the plan of any final length
     * >= s->n gives it the same codes, so plan with the codes known now. */
    int ready = codec_plan_windows_ready(s->n, 0);
    if (s->done < ready) {
        codec_plan p;
        if (codec_plan_make(s->n, s->sample_rate, &p)) return HM_ERR;
        for (int k = s->done; k < ready; k++)
            if (run_window(s, &p, s->cap, k)) {
                s->failed = 1;
                return HM_ERR;
            }
    }
    return HM_OK;
}

static void stream_free(codec_stream *s)
{
    xfade_free(&s->xf);
    free(s->codes);
    free(s->prev);
    free(s->lat);
    free(s->seg);
    free(s->wc);
    free(s);
}

int codec_stream_finish(codec_stream *s, size_t *n_out)
{
    int rc = s->failed ? hm_err("codec stream: an earlier step failed") : HM_OK;
    codec_plan p;
    if (!rc) rc = codec_plan_make(s->n, s->sample_rate, &p);
    if (!rc) {
        xfade_set_limit(&s->xf, p.out_len); /* nothing delivered so far can pass it */
        for (int k = s->done; !rc && k < p.n_windows; k++) rc = run_window(s, &p, s->cap, k);
    }
    if (!rc) rc = xfade_finish(&s->xf, stream_sink, s);
    if (!rc && s->delivered != p.out_len) rc = hm_err("codec: produced %zu samples, planned %zu", s->delivered, p.out_len);
    if (s->w) {
        if (rc) audio_writer_abort(s->w);
        else rc = audio_writer_close(s->w, NULL);
    }
    if (!rc && n_out) *n_out = s->delivered;
    stream_free(s);
    return rc ? HM_ERR : HM_OK;
}

void codec_stream_abort(codec_stream *s)
{
    if (!s) return;
    if (s->w) audio_writer_abort(s->w);
    stream_free(s);
}

/* ---- all at once ---------------------------------------------------------------------------- */

typedef struct { /* codec_detokenize's sink: its buffer, then the caller's sink */
    float *pcm[2];
    size_t n, cap;
    const codec_sink *user;
} collect;

static int collect_sink(void *ctx, const float *const *ch, size_t n)
{
    collect *c = ctx;
    if (c->pcm[0]) {
        if (c->n + n > c->cap) return hm_err("codec: more samples than planned");
        for (int k = 0; k < 2; k++) memcpy(c->pcm[k] + c->n, ch[k], sizeof(float) * n);
    }
    c->n += n;
    return c->user && c->user->cb ? c->user->cb(c->user->cb_ctx, ch, n) : HM_OK;
}

int codec_detokenize(const fm_model *fm, const voc_model *voc, const int32_t *codes, int T, int steps, float guidance,
                     codec_noise *noise, const codec_sink *sink, float **pcm_out, size_t *n_out)
{
    if (pcm_out) *pcm_out = NULL;
    if (n_out) *n_out = 0;
    const hm_codec_config *c = fm_config(fm);
    codec_plan p;
    if (codec_plan_make(T, c->sample_rate, &p)) return HM_ERR;
    const int ncb = c->num_quantizers;
    for (int q = 0; q < ncb; q++)
        for (int i = 0; i < T; i++) {
            int32_t v = codes[(size_t)q * T + i];
            if (v < 0 || v >= c->codebook_size)
                return hm_err("codec: code %d at codebook %d, frame %d is outside [0, %d)", (int)v, q, i, c->codebook_size);
        }
    collect col = {.user = sink, .cap = p.out_len};
    codec_sink mine = {.cb = collect_sink, .cb_ctx = &col, .path = sink ? sink->path : NULL,
                       .fmt = sink ? sink->fmt : AUDIO_FMT_DEFAULT};
    codec_stream *s;
    if (codec_stream_open(fm, voc, steps, guidance, noise, &mine, &s)) return HM_ERR;
    if (pcm_out) {
        col.pcm[0] = hm_malloc(sizeof(float) * 2 * p.out_len);
        col.pcm[1] = col.pcm[0] + p.out_len;
    }
    int32_t *frames = hm_malloc(sizeof(int32_t) * (size_t)T * ncb);
    for (int i = 0; i < T; i++)
        for (int q = 0; q < ncb; q++) frames[(size_t)i * ncb + q] = codes[(size_t)q * T + i];
    int rc = codec_stream_push(s, frames, T);
    free(frames);
    if (rc) codec_stream_abort(s);
    else rc = codec_stream_finish(s, NULL);
    if (rc) {
        free(col.pcm[0]);
        return HM_ERR;
    }
    if (pcm_out) *pcm_out = col.pcm[0];
    if (n_out) *n_out = col.n;
    return HM_OK;
}
