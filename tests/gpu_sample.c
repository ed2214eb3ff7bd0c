/* gpu_sample.c - the GPU sampler (kernels/sample.cu, hmc_sample) draws the same ids as the CPU
 * sampler of draft-verifier (kernels/sampling.c: smp_uniform + smp_topk_sample, after the CFG
 * combine of stages/draft-verifier/sampler.c) from the same logits, seed, frame and codebook.
 * Cases: vocabularies 69 / 8197 / 16384, B = 1 and 2, CFG 1.0 / 1.5 / 3, top-k 1 .. all,
 * temperatures 0.7 .. 1.3, logits with exact ties, NaNs and -inf.  Every draw must agree.
 * Usage: gpu_sample [draws per case, default 100].  Exit 0 when every case agrees. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_check.h"
#include "ops_cuda.h"
#include "sampling.h"

/* g = the logits the sampler sees: the reference's CFG combine (stages/draft-verifier/sampler.c,
 * dv_cfg_combine: uncond + (cond - uncond) * scale when B = 2 and scale > 1, else cond). */
static void combine(const float *l, int B, int V, float cfg, float *g)
{
    for (int i = 0; i < V; i++) g[i] = B == 2 && cfg > 1.0f ? l[V + i] + (l[i] - l[V + i]) * cfg : l[i];
}

int main(int argc, char **argv)
{
    const int draws = argc > 1 ? atoi(argv[1]) : 100;
    const int Vs[] = {69, 8197, 16384};
    const int ks[] = {1, 2, 5, 50, 250, 0};
    const float temps[] = {0.7f, 1.0f, 1.3f};
    const float cfgs[] = {1.0f, 1.5f, 3.0f};
    g_rng = 0x5eed5a3b1e5ull;
    int cases = 0, bad_cases = 0;
    long total = 0, mism = 0;
    hmc_sample_params *pd;
    uint32_t *cd;
    int32_t *codes_d;
    CU(cudaMalloc((void **)&pd, sizeof(hmc_sample_params)));
    CU(cudaMalloc((void **)&cd, sizeof(uint32_t) * 8));
    CU(cudaMalloc((void **)&codes_d, sizeof(int32_t) * 8 * 4096));
    printf("| V | B | cfg | top-k | T | logits | draws | mismatches |\n|---|---|---|---|---|---|---|---|\n");
    for (size_t vi = 0; vi < sizeof Vs / sizeof *Vs; vi++) {
        const int V = Vs[vi];
        for (int B = 1; B <= 2; B++)
            for (int kind = 0; kind < 2; kind++) { /* 0: continuous logits, 1: coarse (ties) + NaN/-inf */
                float *l = rvec((size_t)B * V, 6.0f);
                if (kind == 1)
                    for (int i = 0; i < B * V; i++) {
                        l[i] = roundf(l[i] * 2.0f) * 0.5f;
                        if (i % 997 == 13) l[i] = NAN;
                        if (i % 991 == 7) l[i] = -INFINITY;
                    }
                float *ld, *g = hm_malloc(sizeof(float) * V), *work = hm_malloc(sizeof(float) * V);
                CU(cudaMalloc((void **)&ld, sizeof(float) * B * V));
                CU(cudaMemcpy(ld, l, sizeof(float) * B * V, cudaMemcpyHostToDevice));
                for (size_t ci = 0; ci < sizeof cfgs / sizeof *cfgs; ci++) {
                    if (B == 1 && ci > 0) continue;
                    combine(l, B, V, cfgs[ci], g);
                    for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++)
                        for (size_t ti = 0; ti < sizeof temps / sizeof *temps; ti++) {
                            const int k = ks[ki];
                            const float temp = temps[ti];
                            const uint64_t seed = 0x1234567890abcdefull + 77 * (uint64_t)cases;
                            hmc_sample_params p;
                            memset(&p, 0, sizeof p);
                            p.temperature = temp, p.cfg_scale = cfgs[ci], p.topk = k;
                            p.seed_lo = (uint32_t)seed, p.seed_hi = (uint32_t)(seed >> 32);
                            for (int i = 0; i < 8; i++) p.forced[i] = -1;
                            CU(cudaMemcpy(pd, &p, sizeof p, cudaMemcpyHostToDevice));
                            int32_t *got = hm_malloc(sizeof(int32_t) * draws * 8);
                            for (int d = 0; d < draws; d++) {
                                uint32_t frame = (uint32_t)(d * 37 + 5);
                                CU(cudaMemcpy(cd, &frame, 4, cudaMemcpyHostToDevice));
                                for (int slot = 0; slot < 8; slot += 3)
                                    OK(hmc_sample(ld, B, V, pd, cd, slot, NULL, codes_d + (size_t)d * 8, 0));
                                CU(cudaMemcpy(got + (size_t)d * 8, codes_d + (size_t)d * 8, 32, cudaMemcpyDeviceToHost));
                            }
                            CU(cudaDeviceSynchronize());
                            int bad = 0, n = 0;
                            for (int d = 0; d < draws; d++)
                                for (int slot = 0; slot < 8; slot += 3) {
                                    uint32_t frame = (uint32_t)(d * 37 + 5);
                                    double u = smp_uniform(seed, 0, frame, (uint32_t)slot, 0);
                                    int want = smp_topk_sample(g, V, k, temp, u, work, NULL);
                                    if (got[(size_t)d * 8 + slot] != want) {
                                        if (bad < 3)
                                            fprintf(stderr, "V=%d B=%d cfg=%g k=%d T=%g frame %u slot %d: gpu %d cpu %d\n", V,
                                                    B, cfgs[ci], k, temp, frame, slot, got[(size_t)d * 8 + slot], want);
                                        bad++;
                                    }
                                    n++;
                                }
                            free(got);
                            cases++;
                            total += n;
                            mism += bad;
                            if (bad) bad_cases++;
                            if (bad || (ki == 3 && ti == 1))
                                printf("| %d | %d | %g | %d | %g | %s | %d | %d |\n", V, B, cfgs[ci], k, temp,
                                       kind ? "ties+NaN" : "random", n, bad);
                        }
                }
                cudaFree(ld);
                free(l), free(g), free(work);
            }
    }
    printf("\n%s: %d cases, %ld draws, %ld mismatches (GPU vs CPU sampler)\n", bad_cases ? "FAIL" : "PASS", cases, total,
           mism);
    return bad_cases ? 1 : 0;
}
