/* sampling.h - counter-based random numbers and the top-k / temperature sampler (MODEL.md §2
 * "Sampling"), CPU reference.  Its CUDA twin will be kernels/sampling.cu.
 *
 * Randomness is a pure function of (seed, stream, frame, codebook, lane): Philox4x32-10 with
 * key = seed and counter = (frame lo, frame hi, codebook | lane << 16, stream).  So a song is
 * reproducible from its seed, any frame can be re-drawn after a restart from its index alone,
 * and a speculative verifier can ask for extra independent numbers (other lanes) without
 * disturbing the draws of plain sampling (lane 0). */
#ifndef HM_SAMPLING_H
#define HM_SAMPLING_H

#include <stdint.h>

/* Philox4x32 with 10 rounds (Salmon et al., SC'11). */
void smp_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* A uniform double in [0, 1) with 53 random bits. */
double smp_uniform(uint64_t seed, uint32_t stream, uint64_t frame, uint32_t codebook,
                   uint32_t lane);

/* Index of the largest logit; ties go to the lowest index (torch.argmax's convention: it returns
 * the first maximal index).  The reference's top-k 1 path differs only on exact ties: it keeps
 * every logit equal to the maximum and draws among them uniformly (exponential race), which no
 * fixture exercises.  NaNs are never chosen unless every entry is NaN (then 0). */
int smp_argmax(const float *logits, int V);

/* One draw from softmax(topk(logits / temperature)) using the uniform u in [0, 1):
 *   - logits strictly below the k-th largest are dropped (ties with it are kept, as the
 *     reference's `logits < topk(...)[-1]` does); topk <= 0 or >= V keeps all;
 *   - softmax in fp64 over the kept entries, then inverse-CDF in index order;
 *   - topk == 1 or temperature <= 0 is argmax (deterministic, u unused).
 * work: V floats of scratch.  If `probs` is non-NULL it receives the V probabilities
 * actually sampled from (0 for dropped entries). */
int smp_topk_sample(const float *logits, int V, int topk, float temperature, double u,
                    float *work, double *probs);

#endif
