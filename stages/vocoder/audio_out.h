/* audio_out.h - the codec's audio end: the incremental segment cross-fade (MODEL.md §3: segments
 * of 29.76 s cut to 1428480 samples, consecutive ones cross-faded over 199680, the whole cut to
 * target_len) and a progressive WAV/FLAC writer (libsndfile) that publishes the file atomically.
 *
 * Audio is passed planar: `ch[c]` points at channel c's n samples. */
#ifndef HM_AUDIO_OUT_H
#define HM_AUDIO_OUT_H

#include <stddef.h>

/* Receives final samples; returns HM_OK or HM_ERR (with hm_err message) to stop the producer. */
typedef int (*audio_sink_fn)(void *ctx, const float *const *ch, size_t n);

/* ---- cross-fade ---- */
typedef struct {
    int channels;
    size_t seg_len, overlap; /* samples of one segment used, and of the cross-fade */
    size_t limit;            /* total samples ever emitted (SIZE_MAX until known) */
    size_t emitted;
    int have_tail;
    float *tail; /* [channels][overlap]: the previous segment's end, waiting for the next head */
    float *buf;  /* [channels][seg_len] staging for one emission */
} xfade;

/* overlap < seg_len / 2 (the reference's 199680 of 1428480).  Free with xfade_free. */
int xfade_init(xfade *x, int channels, size_t seg_len, size_t overlap);
void xfade_free(xfade *x);
/* Cap the total output (the plan's out_len); emissions past it are dropped.  Call before the push
 * that could cross it; streaming callers know it only when the code sequence is final, and until
 * then nothing they emit can pass it. */
void xfade_set_limit(xfade *x, size_t total);
/* Feed the next segment (seg [channels][seg_stride], its first seg_len samples used) and hand
 * every sample that is now final to sink: all but the last `overlap`, which wait for the next
 * segment (or xfade_finish). */
int xfade_push(xfade *x, const float *seg, size_t seg_stride, audio_sink_fn sink, void *ctx);
/* No more segments: emit the held tail (up to the limit). */
int xfade_finish(xfade *x, audio_sink_fn sink, void *ctx);
/* For a caller that fades elsewhere (the cuda vocoder keeps the tail and fades on the device):
 * xfade_init without the host buffers.  Such an xfade takes xfade_set_limit and xfade_emit only
 * (never _push or _finish); have_tail is the caller's to keep.  Free with xfade_free. */
int xfade_init_external(xfade *x, int channels, size_t seg_len, size_t overlap);
/* Hand n final samples (ch[c]: channel c) to sink, clipped to the limit and counted as emitted,
 * as _push and _finish do with theirs. */
int xfade_emit(xfade *x, const float *const *ch, size_t n, audio_sink_fn sink, void *ctx);

/* ---- writer ---- */
typedef enum { AUDIO_FMT_DEFAULT = -1, AUDIO_PCM16 = 0, AUDIO_PCM24, AUDIO_F32 } audio_sample_fmt;

/* "pcm16" | "pcm24" | "f32" -> fmt; HM_ERR otherwise. */
int audio_sample_fmt_parse(const char *s, audio_sample_fmt *out);

typedef struct audio_writer audio_writer;
/* Start writing `path` (.wav or .flac, by extension; WAV: pcm16 (default), pcm24, f32; FLAC: pcm16,
 * pcm24 (default)).  Samples go to "<path>.tmp.<pid>" in the same folder, its header kept current
 * after every write so the partial file plays; audio_writer_close renames it to `path`.  Integer
 * formats clip to [-1, 1].  HM_ERR (no file left) for an unknown extension/format or a folder that
 * cannot be written.  *out owned by the caller: end with audio_writer_close or _abort. */
int audio_writer_open(const char *path, int sample_rate, int channels, audio_sample_fmt fmt, audio_writer **out);
/* Append n frames.  HM_ERR with the reason (disk full, file size limit, ...); the writer then
 * only accepts _abort or _close (which fails and removes the temporary file). */
int audio_writer_write(audio_writer *w, const float *const *ch, size_t n);
/* audio_sink_fn adapter: ctx is the audio_writer. */
int audio_writer_sink(void *ctx, const float *const *ch, size_t n);
/* Finish the file, fsync, rename into place; frees w.  On any failure the temporary file is
 * removed and HM_ERR returned.  frames_out (optional) gets the frames written. */
int audio_writer_close(audio_writer *w, size_t *frames_out);
/* Drop the partial file; frees w. */
void audio_writer_abort(audio_writer *w);

#endif
