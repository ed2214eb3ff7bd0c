/* sampler.h - draft-verifier's token decisions: CFG combination and the seeded top-k draw
 * (MODEL.md §2 "Classifier-free guidance", "Sampling").  The math is kernels/sampling.h; this
 * adds the request's parameters and its counter-based RNG position. */
#ifndef HM_DV_SAMPLER_H
#define HM_DV_SAMPLER_H

#include <stdint.h>

typedef struct {
    float temperature; /* > 0; <= 0 means argmax */
    int topk;          /* 1 = argmax; <= 0 or >= vocab keeps all */
    float cfg_scale;   /* > 1 with 2 rows: g = u + (c - u) * cfg_scale */
} dv_sample_params;

/* Where a draw sits in the song's random sequence.  No sequential state: the draw for codebook
 * k of frame f is smp_uniform(seed, stream, f, k, 0), so after a restart a frame is re-drawn
 * from (seed, frame) alone.  The caller sets `frame` before each dv_frame. */
typedef struct {
    uint64_t seed;
    uint32_t stream; /* request stream (0 unless one seed drives several songs) */
    uint64_t frame;
} dv_rng;

/* g[V] = l_u + (l_c - l_u) * scale with row 0 = conditional, row 1 = unconditional of l [2, V]
 * (the reference's operation order).  With B == 1 (or scale <= 1) g = row 0. */
void dv_cfg_combine(const float *l, int B, int V, float scale, float *g);

/* Sample one id from g [V] for codebook `codebook` of rng->frame.  work: V floats. */
int dv_sample(const float *g, int V, const dv_sample_params *p, const dv_rng *rng, int codebook,
              float *work);

#endif
