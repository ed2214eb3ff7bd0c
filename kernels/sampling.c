/* sampling.c - Philox4x32-10 counters and the top-k sampler on the CPU (see sampling.h). */
#include "sampling.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

void smp_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        if (r > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n1 = (uint32_t)p1;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1, n3 = (uint32_t)p0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

double smp_uniform(uint64_t seed, uint32_t stream, uint64_t frame, uint32_t codebook,
                   uint32_t lane)
{
    uint32_t ctr[4] = {(uint32_t)frame, (uint32_t)(frame >> 32), (codebook & 0xFFFFu) | (lane << 16),
                       stream};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t r[4];
    smp_philox4x32(ctr, key, r);
    uint64_t bits = ((uint64_t)r[0] << 21) ^ (uint64_t)(r[1] >> 11); /* 53 bits */
    return (double)(bits & ((1ull << 53) - 1)) * 0x1.0p-53;
}

int smp_argmax(const float *logits, int V)
{
    int best = -1;
    float bv = 0.0f;
    for (int i = 0; i < V; i++) {
        if (isnan(logits[i])) continue;
        if (best < 0 || logits[i] > bv) { /* strict >: the first maximum wins */
            bv = logits[i];
            best = i;
        }
    }
    return best < 0 ? 0 : best;
}

/* k-th largest (k >= 1) of a[0..n) by quickselect; reorders a. */
static float kth_largest(float *a, int n, int k)
{
    int lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        float piv = a[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (a[i] > piv) i++;
            while (a[j] < piv) j--;
            if (i <= j) {
                float t = a[i]; a[i] = a[j]; a[j] = t;
                i++; j--;
            }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else break;
    }
    return a[want];
}

int smp_topk_sample(const float *logits, int V, int topk, float temperature, double u,
                    float *work, double *probs)
{
    if (topk == 1 || temperature <= 0.0f) {
        int a = smp_argmax(logits, V);
        if (probs) {
            for (int i = 0; i < V; i++) probs[i] = 0.0;
            probs[a] = 1.0;
        }
        return a;
    }
    /* z = logits / T in fp32 as the reference; NaN counts as -inf. */
    for (int i = 0; i < V; i++) {
        float z = logits[i] / temperature;
        work[i] = isnan(z) ? -INFINITY : z;
    }
    float thr = -INFINITY, zmax = -INFINITY;
    for (int i = 0; i < V; i++) zmax = work[i] > zmax ? work[i] : zmax;
    if (zmax == -INFINITY) return smp_argmax(logits, V); /* nothing finite to sample from */
    if (topk > 0 && topk < V) {
        /* Selection reorders the scratch copy, so the threshold is taken before the z's are
         * recomputed in index order below. */
        thr = kth_largest(work, V, topk);
        for (int i = 0; i < V; i++) {
            float z = logits[i] / temperature;
            work[i] = isnan(z) ? -INFINITY : z;
        }
    }
    double sum = 0.0;
    for (int i = 0; i < V; i++)
        if (work[i] >= thr && work[i] > -INFINITY) sum += exp((double)work[i] - (double)zmax);
    double target = u * sum, cum = 0.0;
    int pick = -1, last = 0;
    for (int i = 0; i < V; i++) {
        double p = 0.0;
        if (work[i] >= thr && work[i] > -INFINITY) {
            p = exp((double)work[i] - (double)zmax);
            last = i;
            if (pick < 0 && cum + p > target) pick = i;
            cum += p;
        }
        if (probs) probs[i] = p / sum;
    }
    return pick >= 0 ? pick : last; /* rounding at u -> 1 */
}
