/* detokenize.h - the whole codec in one process (MODEL.md §3 `detokenize`): codes -> windows ->
 * flow matching -> vocoder -> cross-fade -> PCM and/or a WAV/FLAC file, either all at once
 * (codec_detokenize) or streaming while the codes are still being generated (codec_stream).
 * Used by tests and the CLI's in-process path; the pipeline's stages run the same per-window
 * functions (fm_window, voc_decode_window, xfade_push) in separate processes, in this order. */
#ifndef HM_DETOKENIZE_H
#define HM_DETOKENIZE_H

#include <stddef.h>
#include <stdint.h>

#include "audio_out.h"
#include "codec_plan.h"
#include "../flow-matching/fm.h"
#include "vocoder.h"

typedef struct {
    audio_sink_fn cb;          /* optional: final stereo samples as each window completes */
    void *cb_ctx;
    const char *path;          /* optional: .wav/.flac written progressively, renamed when complete */
    audio_sample_fmt fmt;      /* AUDIO_FMT_DEFAULT or a format for `path` */
} codec_sink;

/* Decode codes [ncb, T] (ncb = num_quantizers, row stride T) with `steps` Euler steps and CFG
 * `guidance` (defaults 10, 1.25), standard-normal draws from `noise`.  sink may be NULL.
 * pcm_out (optional) gets a malloc'd planar [2, *n_out] buffer (caller frees); *n_out = the plan's
 * out_len (floor(T/12.5*48000) except for the reference's T = 104 (mod 320) quirk).
 * Everything is validated before any work: T < 1, steps < 1, NaN/negative guidance, a code
 * outside [0, codebook_size) -> HM_ERR with the reason; a failed write removes the partial file. */
int codec_detokenize(const fm_model *fm, const voc_model *voc, const int32_t *codes, int T, int steps, float guidance,
                     codec_noise *noise, const codec_sink *sink, float **pcm_out, size_t *n_out);

/* Streaming: feed frames as the language model makes them; every window whose 372 codes exist
 * runs at once (codec_plan_windows_ready) and its final samples reach the sink; the windows that
 * depend on the song's length run in codec_stream_finish.  The audio is identical to
 * codec_detokenize of the whole sequence.  fm, voc, noise and sink must outlive the stream. */
typedef struct codec_stream codec_stream;
int codec_stream_open(const fm_model *fm, const voc_model *voc, int steps, float guidance, codec_noise *noise,
                      const codec_sink *sink, codec_stream **out);
/* Append n frames, frame-major [n, ncb] (one row of ncb codes per 80 ms frame).  HM_ERR for a bad
 * code or a failed window/write; the stream then only accepts _finish (which fails) or _abort. */
int codec_stream_push(codec_stream *s, const int32_t *frames, int n);
/* The song is complete: run the remaining windows, flush the cross-fade, publish the file.
 * Frees s.  n_out (optional) = samples per channel delivered. */
int codec_stream_finish(codec_stream *s, size_t *n_out);
/* Stop and remove any partial file.  Frees s. */
void codec_stream_abort(codec_stream *s);

#endif
