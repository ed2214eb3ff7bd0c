/* gpu_check.h - what the GPU check programs (tests/gpu_*.c) share: abort-on-failure wrappers for
 * CUDA and project calls (a checker has nothing to recover) and a seeded random source. */
#ifndef HM_GPU_CHECK_H
#define HM_GPU_CHECK_H

#include <cuda_runtime_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "hm.h"

#define CU(x)                                                                                      \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));    \
            exit(2);                                                                               \
        }                                                                                          \
    } while (0)
#define OK(x)                                                                                      \
    do {                                                                                           \
        if ((x) != HM_OK) {                                                                        \
            fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, hm_errmsg());                       \
            exit(2);                                                                               \
        }                                                                                          \
    } while (0)

static uint64_t g_rng; /* seed it (non-zero) before the first draw */
static inline float urand(void) /* uniform(-1, 1), xorshift64 */
{
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}
/* n uniform(-scale, scale) values; caller frees. */
static inline float *rvec(size_t n, float scale)
{
    float *v = hm_malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) v[i] = urand() * scale;
    return v;
}

#endif
