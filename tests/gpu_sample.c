/* gpu_sample.c - the GPU sampler (kernels/sample.cu, hmc_sample) draws the same ids as the CPU
 * sampler of draft-verifier (kernels/sampling.c: smp_uniform + smp_topk_sample, after the CFG
 * combine of stages/draft-verifier/sampler.c) from the same logits, seed, frame and codebook.
 * Cases: vocabularies 69 / 8197 / 16384, B = 1 and 2, CFG 1.0 / 1.5 / 3, top-k 1 .. all,
 * temperatures 0.7 .. 1.3, logits with exact ties, NaNs and -inf.  Every draw must agree.
 * Usage: gpu_sample [draws per case, default 100].  Exit 0 when every case agrees.
 *        (HM_SAMPLE_IMPL=N checks another kernel: see hmc_sample_set_impl.)
 *        gpu_sample time: us per draw in a CUDA graph of 200 draws (as a decode frame runs them:
 *        V = 8197 = the codebook-0 and the depth decoder's vocabulary, B = 2, CFG 1.5, top-k 50;
 *        and a few variations), the first exact kernel, the one-block single-pass one and the
 *        cluster sampler in the same run, and the one-block kernel's phase profile; the graphs'
 *        draws are checked against the CPU too.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gpu_check.h"
#include "ops_cuda.h"
#include "sampling.h"

/* g = the logits the sampler sees: the reference's CFG combine (stages/draft-verifier/sampler.c,
 * dv_cfg_combine: uncond + (cond - uncond) * scale when B = 2 and scale > 1, else cond). */
static void combine(const float *l, int B, int V, float cfg, float *g)
{
    for (int i = 0; i < V; i++) g[i] = B == 2 && cfg > 1.0f ? l[V + i] + (l[i] - l[V + i]) * cfg : l[i];
}

/* The CPU sampler's draws for slots 0, 3, 6 of frames d * 37 + 5 (d < draws), spread over the
 * machine's cores (the reference is the slow part of this check). */
typedef struct {
    const float *g;
    int V, k, draws, t, nt;
    float temp;
    uint64_t seed;
    int32_t *want;
} cpu_job;

static void *cpu_worker(void *arg)
{
    cpu_job *j = arg;
    float *work = hm_malloc(sizeof(float) * j->V);
    for (int q = j->t; q < j->draws * 3; q += j->nt) {
        const int d = q / 3, slot = (q % 3) * 3;
        const double u = smp_uniform(j->seed, 0, (uint32_t)(d * 37 + 5), (uint32_t)slot, 0);
        j->want[(size_t)d * 8 + slot] = smp_topk_sample(j->g, j->V, j->k, j->temp, u, work, NULL);
    }
    free(work);
    return NULL;
}

static void cpu_draws(const float *g, int V, int k, float temp, uint64_t seed, int draws, int32_t *want)
{
    long nc = sysconf(_SC_NPROCESSORS_ONLN);
    const int nt = nc < 1 ? 1 : nc > 32 ? 32 : (int)nc;
    pthread_t th[32];
    cpu_job jobs[32];
    int started[32];
    for (int t = 0; t < nt; t++) {
        jobs[t] = (cpu_job){g, V, k, draws, t, nt, temp, seed, want};
        started[t] = pthread_create(&th[t], NULL, cpu_worker, &jobs[t]) == 0;
        if (!started[t]) cpu_worker(&jobs[t]); /* no thread: this share here */
    }
    for (int t = 0; t < nt; t++)
        if (started[t]) pthread_join(th[t], NULL);
}

/* LM-like logits: a bell of width ~2 with a few dozen entries 6..12 above it; the unconditional
 * row a little off the conditional one */
static float *lm_like(int V)
{
    float *l = hm_malloc(sizeof(float) * 2 * V);
    for (int i = 0; i < V; i++) l[i] = 2.0f * (urand() + urand() + urand());
    for (int j = 0; j < 40; j++) l[(int)((urand() * 0.5f + 0.5f) * (V - 1))] += 6.0f + 6.0f * fabsf(urand());
    for (int i = 0; i < V; i++) l[V + i] = l[i] + 0.5f * urand();
    return l;
}

/* one graph of `n` draws (slots 0..7 in turn) with kernel `impl`; us per draw over `reps` replays,
 * then 4 replays with other frame counters checked against the CPU (mismatches into *bad) */
static double time_graph(int impl, const float *ld, const float *lh, int B, int V, float cfg, int k, float temp,
                         int n, int reps, int *bad)
{
    hmc_sample_set_impl(impl);
    const uint64_t seed = 0x243f6a8885a308d3ull;
    hmc_sample_params p;
    memset(&p, 0, sizeof p);
    p.temperature = temp, p.cfg_scale = cfg, p.topk = k;
    p.seed_lo = (uint32_t)seed, p.seed_hi = (uint32_t)(seed >> 32);
    for (int i = 0; i < 8; i++) p.forced[i] = -1;
    hmc_sample_params *pd;
    uint32_t *cd;
    int32_t *codes_d;
    float *out_d;
    CU(cudaMalloc((void **)&pd, sizeof p));
    CU(cudaMalloc((void **)&cd, 4));
    CU(cudaMalloc((void **)&codes_d, sizeof(int32_t) * 8));
    CU(cudaMalloc((void **)&out_d, sizeof(float) * 8 * V));
    CU(cudaMemcpy(pd, &p, sizeof p, cudaMemcpyHostToDevice));
    cudaStream_t st;
    CU(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CU(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int d = 0; d < n; d++) OK(hmc_sample(ld, B, V, pd, cd, d % 8, out_d + (size_t)(d % 8) * V, codes_d, st));
    CU(cudaStreamEndCapture(st, &g));
    CU(cudaGraphInstantiate(&ge, g, 0));
    uint32_t frame = 7;
    CU(cudaMemcpy(cd, &frame, 4, cudaMemcpyHostToDevice));
    for (int r = 0; r < 3; r++) CU(cudaGraphLaunch(ge, st));
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    CU(cudaEventRecord(e0, st));
    for (int r = 0; r < reps; r++) CU(cudaGraphLaunch(ge, st));
    CU(cudaEventRecord(e1, st));
    CU(cudaEventSynchronize(e1));
    float ms;
    CU(cudaEventElapsedTime(&ms, e0, e1));
    float *gv = hm_malloc(sizeof(float) * V), *work = hm_malloc(sizeof(float) * V);
    combine(lh, B, V, cfg, gv);
    for (int r = 0; r < 4; r++) {
        frame = 1000 + 17 * r;
        CU(cudaMemcpy(cd, &frame, 4, cudaMemcpyHostToDevice));
        CU(cudaGraphLaunch(ge, st));
        int32_t got[8];
        CU(cudaMemcpyAsync(got, codes_d, sizeof got, cudaMemcpyDeviceToHost, st));
        CU(cudaStreamSynchronize(st));
        for (int slot = 0; slot < 8; slot++) {
            const int want = smp_topk_sample(gv, V, k, temp, smp_uniform(seed, 0, frame, (uint32_t)slot, 0), work, NULL);
            if (got[slot] != want) {
                fprintf(stderr, "time V=%d impl %d frame %u slot %d: gpu %d cpu %d\n", V, impl, frame, slot, got[slot], want);
                (*bad)++;
            }
        }
    }
    free(gv), free(work);
    CU(cudaEventDestroy(e0));
    CU(cudaEventDestroy(e1));
    CU(cudaGraphExecDestroy(ge));
    CU(cudaGraphDestroy(g));
    CU(cudaStreamDestroy(st));
    cudaFree(pd), cudaFree(cd), cudaFree(codes_d), cudaFree(out_d);
    hmc_sample_set_impl(0);
    return ms * 1e3 / ((double)reps * n);
}

static int time_mode(void)
{
    struct cudaDeviceProp prop;
    CU(cudaGetDeviceProperties(&prop, 0));
    printf("device %s; us per draw in a graph of 200 draws (slots 0..7 in turn), 20 replays; v1 the first exact\n"
           "kernel, one block the single-pass kernel, cluster the cluster sampler (default)\n\n", prop.name);
    printf("| logits | V | B | cfg | top-k | T | v1 us/draw | one block us/draw | cluster us/draw | one block/cluster | fast-path draws |\n"
           "|---|---|---|---|---|---|---|---|---|---|---|\n");
    struct { int lm, V, B; float cfg; int k; float temp; } c[] = {
        {1, 8197, 2, 1.5f, 50, 1.0f}, {0, 8197, 2, 1.5f, 50, 1.0f}, {1, 8197, 2, 1.5f, 50, 0.9f},
        {1, 8197, 1, 1.0f, 50, 1.0f}, {1, 8197, 2, 1.5f, 250, 1.0f}, {1, 16384, 2, 1.5f, 50, 1.0f},
        {1, 8197, 2, 1.5f, 1, 1.0f}, {2, 8197, 2, 1.5f, 50, 1.0f}};
    int bad = 0;
    unsigned long long pr[10] = {0}, pc[10] = {0};
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        g_rng = 0x9e3779b97f4a7c15ull + i;
        /* uniform +-60000: the k-th largest is far below the maximum, so the radix select path */
        float *l = c[i].lm == 1 ? lm_like(c[i].V) : rvec((size_t)2 * c[i].V, c[i].lm ? 60000.0f : 6.0f), *ld;
        CU(cudaMalloc((void **)&ld, sizeof(float) * 2 * c[i].V));
        CU(cudaMemcpy(ld, l, sizeof(float) * 2 * c[i].V, cudaMemcpyHostToDevice));
        unsigned long long paths[4];
        const double t1 = time_graph(1, ld, l, c[i].B, c[i].V, c[i].cfg, c[i].k, c[i].temp, 200, 20, &bad);
        OK(hmc_sample_path_counts(paths));
        const double t3 = time_graph(3, ld, l, c[i].B, c[i].V, c[i].cfg, c[i].k, c[i].temp, 200, 20, &bad);
        OK(hmc_sample_path_counts(paths));
        const double t0 = time_graph(0, ld, l, c[i].B, c[i].V, c[i].cfg, c[i].k, c[i].temp, 200, 20, &bad);
        OK(hmc_sample_path_counts(paths));
        const unsigned long long all = paths[0] + paths[1] + paths[2] + paths[3];
        printf("| %s | %d | %d | %g | %d | %g | %.2f | %.2f | %.2f | %.2fx | %llu/%llu |\n",
               c[i].lm == 1 ? "LM-like" : c[i].lm ? "uniform +-60000" : "uniform +-6", c[i].V, c[i].B, c[i].cfg, c[i].k,
               c[i].temp, t1, t3, t0, t3 / t0, paths[0], all);
        if (i == 0) /* the phase profiles on the first case (instrumented copies: impl 2 one block, 4 cluster) */
            for (int w = 0; w < 2; w++) {
                unsigned long long *q = w ? pc : pr;
                OK(hmc_sample_profile(q));
                const double tp = time_graph(w ? 4 : 2, ld, l, c[i].B, c[i].V, c[i].cfg, c[i].k, c[i].temp, 200, 20, &bad);
                OK(hmc_sample_profile(q));
                OK(hmc_sample_path_counts(paths));
                q[7] = q[7] ? q[7] : 1;
                char v[32];
                snprintf(v, sizeof v, "%.2f", tp);
                printf("| (%s, with its phase profile) | | | | | | | %s | %s | | |\n", w ? "cluster" : "one block",
                       w ? "" : v, w ? v : "");
            }
        cudaFree(ld);
        free(l);
    }
    static const char *ph[2][7] = {{"start -> dependency wait done", "loads, CFG, z, max (1st barrier)", "octave passes",
                                    "gather candidates", "kept (rank filter)", "index order + exp", "sum + pick"},
                                   {"start -> dependency wait done", "loads, CFG, z, max (cluster barrier)",
                                    "octave passes", "gather into rank 0 (cluster barrier)",
                                    "kept (rank filter of the crossing bin)", "index order + exp", "sum + pick"}};
    for (int w = 0; w < 2; w++) {
        const unsigned long long *q = w ? pc : pr;
        const double n = (double)q[7], ghz = q[8] ? (double)q[9] / (double)q[8] : 0.0;
        printf("\nphases of the %s (LM-like, V 8197, B 2, CFG 1.5, top-k 50), %.0f draws, SM clock %.2f GHz (cycles / globaltimer):\n",
               w ? "cluster sampler, its rank 0" : "one-block kernel", n, ghz);
        printf("| phase | cycles | us |\n|---|---|---|\n");
        for (int p = 0; p < 7; p++)
            printf("| %s | %.0f | %.2f |\n", ph[w][p], q[p] / n, ghz > 0 ? q[p] / n / ghz / 1e3 : 0.0);
        printf("| entry to end | %.0f | %.2f (globaltimer %.2f) |\n", q[9] / n, ghz > 0 ? q[9] / n / ghz / 1e3 : 0.0,
               q[8] / n / 1e3);
    }
    printf("\n%s: graph draws vs CPU sampler: %d mismatches\n", bad ? "FAIL" : "PASS", bad);
    return bad ? 1 : 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* a run cut short by a timeout keeps its lines */
    if (argc > 1 && !strcmp(argv[1], "time")) return time_mode();
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
                float *ld, *g = hm_malloc(sizeof(float) * V);
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
                            int32_t *want = hm_malloc(sizeof(int32_t) * draws * 8);
                            cpu_draws(g, V, k, temp, seed, draws, want);
                            int bad = 0, n = 0;
                            for (int d = 0; d < draws; d++)
                                for (int slot = 0; slot < 8; slot += 3) {
                                    const size_t q = (size_t)d * 8 + slot;
                                    if (got[q] != want[q]) {
                                        if (bad < 3)
                                            fprintf(stderr, "V=%d B=%d cfg=%g k=%d T=%g frame %d slot %d: gpu %d cpu %d\n", V,
                                                    B, cfgs[ci], k, temp, d * 37 + 5, slot, got[q], want[q]);
                                        bad++;
                                    }
                                    n++;
                                }
                            free(got), free(want);
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
                free(l), free(g);
            }
    }
    unsigned long long paths[4];
    OK(hmc_sample_path_counts(paths));
    printf("\nsingle-pass sampler paths (draws): octave bound %llu, keep-all %llu, radix select %llu, vocabulary walk %llu\n",
           paths[0], paths[1], paths[2], paths[3]);
    printf("\n%s: %d cases, %ld draws, %ld mismatches (GPU vs CPU sampler)\n", bad_cases ? "FAIL" : "PASS", cases, total,
           mism);
    return bad_cases ? 1 : 0;
}
