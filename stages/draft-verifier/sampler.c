/* sampler.c - CFG combination and seeded top-k draw for draft-verifier (see sampler.h). */
#include "sampler.h"

#include <stddef.h>

#include "sampling.h"

void dv_cfg_combine(const float *l, int B, int V, float scale, float *g)
{
    if (B == 2 && scale > 1.0f) {
        const float *c = l, *u = l + V;
        for (int i = 0; i < V; i++) g[i] = u[i] + (c[i] - u[i]) * scale;
    } else {
        for (int i = 0; i < V; i++) g[i] = l[i];
    }
}

int dv_sample(const float *g, int V, const dv_sample_params *p, const dv_rng *rng, int codebook,
              float *work)
{
    double u = smp_uniform(rng->seed, rng->stream, rng->frame, (uint32_t)codebook, 0);
    return smp_topk_sample(g, V, p->topk, p->temperature, u, work, NULL);
}
