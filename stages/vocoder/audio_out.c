/* audio_out.c - segment cross-fade and the progressive, atomic WAV/FLAC writer (see audio_out.h). */
#include "audio_out.h"

#include <signal.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sndfile.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "crossfade.h"
#include "hm.h"

#define AUDIO_MAX_CH 8

/* ---- cross-fade ---------------------------------------------------------------------------- */

int xfade_init_external(xfade *x, int channels, size_t seg_len, size_t overlap)
{
    memset(x, 0, sizeof *x);
    if (channels < 1 || channels > AUDIO_MAX_CH || seg_len < 1 || 2 * overlap >= seg_len)
        return hm_err("xfade: bad geometry (%d channels, segment %zu, overlap %zu)", channels, seg_len, overlap);
    x->channels = channels;
    x->seg_len = seg_len;
    x->overlap = overlap;
    x->limit = SIZE_MAX;
    return HM_OK;
}

int xfade_init(xfade *x, int channels, size_t seg_len, size_t overlap)
{
    if (xfade_init_external(x, channels, seg_len, overlap)) return HM_ERR;
    x->tail = hm_malloc(sizeof(float) * (size_t)channels * (overlap ? overlap : 1));
    x->buf = hm_malloc(sizeof(float) * (size_t)channels * seg_len);
    return HM_OK;
}

void xfade_free(xfade *x)
{
    free(x->tail);
    free(x->buf);
    x->tail = x->buf = NULL;
}

void xfade_set_limit(xfade *x, size_t total) { x->limit = total; }

int xfade_emit(xfade *x, const float *const *ch, size_t n, audio_sink_fn sink, void *ctx)
{
    size_t room = x->limit > x->emitted ? x->limit - x->emitted : 0;
    if (n > room) n = room;
    if (!n) return HM_OK;
    x->emitted += n;
    return sink ? sink(ctx, ch, n) : HM_OK;
}

/* Hand n staged samples (x->buf rows, stride seg_len) to the sink, clipped to the limit. */
static int emit(xfade *x, size_t n, audio_sink_fn sink, void *ctx)
{
    const float *ch[AUDIO_MAX_CH];
    for (int c = 0; c < x->channels; c++) ch[c] = x->buf + (size_t)c * x->seg_len;
    return xfade_emit(x, ch, n, sink, ctx);
}

int xfade_push(xfade *x, const float *seg, size_t seg_stride, audio_sink_fn sink, void *ctx)
{
    const size_t L = x->seg_len, O = x->overlap, body = L - O;
    for (int c = 0; c < x->channels; c++) {
        const float *s = seg + (size_t)c * seg_stride;
        float *b = x->buf + (size_t)c * L, *t = x->tail + (size_t)c * O;
        if (x->have_tail) {
            cpu_crossfade(t, s, O, b); /* previous tail * (1 - ramp) + this head * ramp */
            memcpy(b + O, s + O, sizeof(float) * (body - O));
        } else {
            memcpy(b, s, sizeof(float) * body);
        }
        memcpy(t, s + body, sizeof(float) * O);
    }
    x->have_tail = 1;
    return emit(x, body, sink, ctx);
}

int xfade_finish(xfade *x, audio_sink_fn sink, void *ctx)
{
    if (!x->have_tail) return HM_OK;
    for (int c = 0; c < x->channels; c++)
        memcpy(x->buf + (size_t)c * x->seg_len, x->tail + (size_t)c * x->overlap, sizeof(float) * x->overlap);
    x->have_tail = 0;
    return emit(x, x->overlap, sink, ctx);
}

/* ---- writer -------------------------------------------------------------------------------- */

struct audio_writer {
    SNDFILE *sf;
    char *path, *tmp;
    int channels, failed;
    size_t frames;
    float *il; /* interleave buffer */
};

#define IL_FRAMES 8192

int audio_sample_fmt_parse(const char *s, audio_sample_fmt *out)
{
    if (!strcmp(s, "pcm16")) *out = AUDIO_PCM16;
    else if (!strcmp(s, "pcm24")) *out = AUDIO_PCM24;
    else if (!strcmp(s, "f32")) *out = AUDIO_F32;
    else return hm_err("sample format '%s': use pcm16, pcm24 or f32", s);
    return HM_OK;
}

/* A writer killed mid-song (kill -9 of the vocoder) leaves "<path>.tmp.<pid>" behind; the retried
 * song would add its own.  Remove such files whose writer process no longer exists. */
static void remove_stale_parts(const char *path)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    const char *base = slash ? path + (slash - dir) + 1 : path;
    if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    if (slash == dir) snprintf(dir, sizeof dir, "/");
    size_t bl = strlen(base);
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, base, bl) || strncmp(e->d_name + bl, ".tmp.", 5)) continue;
        char *end;
        long pid = strtol(e->d_name + bl + 5, &end, 10);
        if (*end || pid <= 0 || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        char full[8300];
        snprintf(full, sizeof full, "%s/%s", dir, e->d_name);
        if (unlink(full) == 0) LOG_WARN("removed '%s', left by a writer that died", full);
    }
    closedir(d);
}

int audio_writer_open(const char *path, int sample_rate, int channels, audio_sample_fmt fmt, audio_writer **out)
{
    *out = NULL;
    const char *dot = strrchr(path, '.');
    int flac;
    if (dot && !strcasecmp(dot, ".wav")) flac = 0;
    else if (dot && !strcasecmp(dot, ".flac")) flac = 1;
    else return hm_err("output '%s': unknown extension (use .wav or .flac)", path);
    if (channels < 1 || channels > AUDIO_MAX_CH || sample_rate < 1) return hm_err("output '%s': bad stream %d Hz x %d", path, sample_rate, channels);
    if (fmt == AUDIO_FMT_DEFAULT) fmt = flac ? AUDIO_PCM24 : AUDIO_PCM16;
    if (flac && fmt == AUDIO_F32) return hm_err("output '%s': FLAC holds integer samples only (use pcm16 or pcm24)", path);
    SF_INFO info = {0};
    info.samplerate = sample_rate;
    info.channels = channels;
    info.format = (flac ? SF_FORMAT_FLAC : SF_FORMAT_WAV) |
                  (fmt == AUDIO_PCM16 ? SF_FORMAT_PCM_16 : fmt == AUDIO_PCM24 ? SF_FORMAT_PCM_24 : SF_FORMAT_FLOAT);
    if (!sf_format_check(&info)) return hm_err("output '%s': libsndfile cannot write this format", path);
    remove_stale_parts(path);
    audio_writer *w = hm_calloc(1, sizeof *w);
    w->path = hm_strdup(path);
    size_t tl = strlen(path) + 32;
    w->tmp = hm_malloc(tl);
    snprintf(w->tmp, tl, "%s.tmp.%d", path, (int)getpid());
    w->channels = channels;
    w->sf = sf_open(w->tmp, SFM_WRITE, &info);
    if (!w->sf) {
        int rc = hm_err("cannot create '%s': %s", w->tmp, sf_strerror(NULL));
        unlink(w->tmp);
        free(w->path);
        free(w->tmp);
        free(w);
        return rc;
    }
    /* Keep the header valid after every write, so the growing file plays. */
    sf_command(w->sf, SFC_SET_UPDATE_HEADER_AUTO, NULL, SF_TRUE);
    if (fmt != AUDIO_F32) sf_command(w->sf, SFC_SET_CLIPPING, NULL, SF_TRUE);
    w->il = hm_malloc(sizeof(float) * IL_FRAMES * (size_t)channels);
    *out = w;
    return HM_OK;
}

int audio_writer_write(audio_writer *w, const float *const *ch, size_t n)
{
    if (w->failed) return hm_err("output '%s': writer already failed", w->path);
    for (size_t o = 0; o < n; o += IL_FRAMES) {
        size_t k = HM_MIN((size_t)IL_FRAMES, n - o);
        for (size_t i = 0; i < k; i++)
            for (int c = 0; c < w->channels; c++) w->il[i * w->channels + c] = ch[c][o + i];
        errno = 0;
        sf_count_t got = sf_writef_float(w->sf, w->il, (sf_count_t)k);
        if (got != (sf_count_t)k) {
            int e = errno;
            w->failed = 1;
            return hm_err("cannot write '%s': %s%s%s", w->tmp, sf_strerror(w->sf), e ? ": " : "", e ? strerror(e) : "");
        }
        w->frames += k;
    }
    return HM_OK;
}

int audio_writer_sink(void *ctx, const float *const *ch, size_t n) { return audio_writer_write(ctx, ch, n); }

static void writer_free(audio_writer *w)
{
    free(w->path);
    free(w->tmp);
    free(w->il);
    free(w);
}

int audio_writer_close(audio_writer *w, size_t *frames_out)
{
    int rc = HM_OK;
    if (w->failed) rc = hm_err("output '%s' not written: an earlier write failed", w->path);
    errno = 0;
    int cerr = sf_close(w->sf);
    if (!rc && cerr) rc = hm_err("cannot finish '%s': %s", w->tmp, sf_error_number(cerr));
    if (!rc) {
        int fd = open(w->tmp, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || fsync(fd) != 0) rc = hm_err("cannot sync '%s': %s", w->tmp, strerror(errno));
        if (fd >= 0) close(fd);
    }
    if (!rc && rename(w->tmp, w->path) != 0) rc = hm_err("cannot rename '%s' to '%s': %s", w->tmp, w->path, strerror(errno));
    if (rc) unlink(w->tmp);
    else if (frames_out) *frames_out = w->frames;
    writer_free(w);
    return rc;
}

void audio_writer_abort(audio_writer *w)
{
    if (!w) return;
    sf_close(w->sf);
    unlink(w->tmp);
    writer_free(w);
}
