/* codec_plan.h - how a code sequence is cut into codec windows (MODEL.md §3), shared by the
 * flow-matching and vocoder stages and the CLI: padding/repetition of short or ragged code
 * sequences, window starts, streaming readiness, output length, cross-fade geometry, and the
 * order of the standard-normal draws (with a seeded or replayed noise source).
 *
 * The window geometry is the reference's `detokenize(duration=29.76)`: 372 codes per window
 * (744 latent frames at 25 Hz), hop 320, overlap 52 codes = 104 in-context latent frames; at
 * 48 kHz a segment is 1428480 samples and consecutive segments cross-fade over 199680. */
#ifndef HM_CODEC_PLAN_H
#define HM_CODEC_PLAN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CODEC_WIN_CODES 372   /* int(29.76 * 12.5) */
#define CODEC_HOP_CODES 320   /* 372 // 93 * 80 */
#define CODEC_OVL_CODES 52    /* 372 - 320 */
#define CODEC_CTX_FRAMES 104  /* 2 * 52: in-context latent frames of every window after the first */
#define CODEC_WIN_FRAMES 744  /* int(29.76 * 25): latent frames per window */

typedef struct {
    int T;              /* codes given */
    int padded_len;     /* code length after the reference's repetition (>= 372) */
    int n_windows;      /* windows at starts 0, 320, 640, ... */
    int sample_rate;
    size_t target_len;  /* floor(T / 12.5 * sample_rate) samples */
    size_t seg_samples; /* int(29.76 * sample_rate): one window's audio (1428480 at 48 kHz) */
    size_t hop_samples; /* seg_samples // 93 * 80 (1228800) */
    size_t ovl_samples; /* seg_samples - hop_samples: the cross-fade (199680) */
    size_t out_len;     /* samples actually produced: min(target_len, what the windows cover).
                         * Equals target_len except for the reference quirk below. */
} codec_plan;

/* Plan for T >= 1 codes.  Reproduces both reference quirks: T < 372 repeats the codes up to 372;
 * then, if (len - 104) % 320 > 0 (104 = overlap in *frames*), the codes are repeated up to
 * ceil((len - 52) / 320) * 320 + 52 (52 = overlap in *codes*).  For len = 104 (mod 320) nothing
 * is extended and the last len - 52 - 320*(n_windows-1) codes never reach the audio, so out_len
 * can be shorter than target_len (e.g. T = 424).  HM_ERR for T < 1 or absurd sizes. */
int codec_plan_make(int T, int sample_rate, codec_plan *p);
/* Index into the original T codes that padded position i (< padded_len) repeats: i % T. */
static inline int codec_plan_src(const codec_plan *p, int i) { return i % p->T; }
/* First code of window k. */
static inline int codec_plan_window_start(int k) { return k * CODEC_HOP_CODES; }
/* Streaming: how many leading windows can run when n_known codes exist.  Until the sequence is
 * final only windows lying wholly inside the known codes are ready (they cannot depend on the
 * final length); once final (T = n_known) every window of codec_plan_make(T) is. */
int codec_plan_windows_ready(int n_known, int is_final);
/* Gather window k's codes from codes [ncb, T] (row stride T) into dst [ncb, 372]. */
void codec_plan_window_codes(const codec_plan *p, const int32_t *codes, int ncb, int k, int32_t *dst);

/* Noise draw order (the reference's torch.randn calls; fixtures record them as noise_00, ...):
 *   draw 0          first latent [744, C]  (multiplied by a zero mask: never reaches the output)
 *   draw 2k (k>=1)  window k's appended part [744 - 104, C] (masked out as well)
 *   draw 2k+1       window k's solver start noise [744, C]  (the only one that matters)
 * C = the latent width (out_channels, 256). */
static inline int codec_noise_index_first(void) { return 0; }
static inline int codec_noise_index_append(int k) { return 2 * k; }
static inline int codec_noise_index_solver(int k) { return 2 * k + 1; }

/* A source of standard-normal draws.  Not thread-safe; owned by the caller (codec_noise_free). */
typedef struct codec_noise codec_noise;
/* Counter-based generator: draw d element i is a pure function of (seed, d, i) (a splitmix64
 * hash feeding Box-Muller), so any window's noise can be made without the others. */
int codec_noise_seeded(uint64_t seed, codec_noise **out);
/* Replay tensors noise_00, noise_01, ... of a safetensors file (any float dtype; the element count
 * must match the draw's).  HM_ERR if the file does not open. */
int codec_noise_replay(const char *path, codec_noise **out);
/* Fill dst with draw number `index` (rows x cols values).  HM_ERR (replay) when the file lacks
 * noise_<index> or its size differs. */
int codec_noise_draw_at(codec_noise *n, int index, float *dst, int rows, int cols);
/* The next draw in call order (index = number of draws made so far). */
int codec_noise_draw(codec_noise *n, float *dst, int rows, int cols);
void codec_noise_free(codec_noise *n);

#ifdef __cplusplus
}
#endif

#endif
