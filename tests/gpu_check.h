/* gpu_check.h - what the GPU check programs (tests/gpu_*.c) share: abort-on-failure wrappers for
 * CUDA and project calls (a checker has nothing to recover) and a seeded random source. */
#ifndef HM_GPU_CHECK_H
#define HM_GPU_CHECK_H

#include <cuda_runtime_api.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hm.h"
#include "modelcfg.h"

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

/* PASS / FAIL lines of a checker: printed as they come, counted, and kept for the summary it prints
 * last (every line, or only the failures when g_chk.fail_only; gpu_keep adds a note). */
static struct {
    int pass, fail, fail_only;
    size_t len;
    char sum[16384];
} g_chk;
static inline void gpu_keep(const char *tag, const char *line)
{
    if (g_chk.len + strlen(line) + 8 < sizeof g_chk.sum)
        g_chk.len += (size_t)snprintf(g_chk.sum + g_chk.len, sizeof g_chk.sum - g_chk.len, "%s%s%s\n", tag,
                                      *tag ? " " : "", line);
}
static inline void gpu_verdict(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void gpu_verdict(int ok, const char *fmt, ...)
{
    char line[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    ok ? g_chk.pass++ : g_chk.fail++;
    printf("%-4s %s\n", ok ? "PASS" : "FAIL", line);
    fflush(stdout);
    if (!ok || !g_chk.fail_only) gpu_keep(ok ? "PASS" : "FAIL", line);
}

/* The released LM's shapes (3B backbone, 300M decoder: MODEL.md) for the random-weight models of
 * the benchmarks; exits when the built-in flavors are missing. */
static inline hm_lm_config gpu_lm_cfg_3b(void)
{
    hm_lm_config cfg;
    memset(&cfg, 0, sizeof cfg);
    const hm_flavor *fb = hm_flavor_builtin("llama-3B"), *fd = hm_flavor_builtin("llama-300M");
    if (!fb || !fd) {
        fprintf(stderr, "no built-in flavors\n");
        exit(2);
    }
    cfg.backbone = *fb, cfg.decoder = *fd;
    cfg.text_vocab_size = 128256, cfg.audio_vocab_size = 8197, cfg.audio_num_codebooks = 8, cfg.muq_dim = 512;
    return cfg;
}

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

/* ---- device buffers of the codec checkers (tests/gpu_codec.c, tests/gpu_vocoder.c) ---- */
#include <math.h>
#include <string.h>

#include "ops_cuda.h"

/* Device copy of v as type t; for bf16, v itself is rounded to what the device holds. */
static inline void *gpu_up(float *v, size_t n, hmc_dtype t)
{
    void *d;
    CU(cudaMalloc(&d, n * hmc_dtype_size(t) + 16));
    if (t == HMC_F32) {
        CU(cudaMemcpy(d, v, n * 4, cudaMemcpyHostToDevice));
    } else {
        uint16_t *h = hm_malloc(2 * n + 2);
        for (size_t i = 0; i < n; i++) h[i] = hm_f32_to_bf16(v[i]), v[i] = hm_bf16_to_f32(h[i]);
        CU(cudaMemcpy(d, h, 2 * n, cudaMemcpyHostToDevice));
        free(h);
    }
    return d;
}
/* n values of type t, all NaN (0xff bytes in f32 and bf16): an output the kernel forgot shows. */
static inline void *gpu_poison(size_t n, hmc_dtype t)
{
    void *d;
    CU(cudaMalloc(&d, n * hmc_dtype_size(t) + 16));
    CU(cudaMemset(d, 0xff, n * hmc_dtype_size(t)));
    return d;
}
/* Synchronise and read n values of type t back as floats (caller frees). */
static inline float *gpu_down(const void *d, size_t n, hmc_dtype t)
{
    float *h = hm_malloc(n * 4 + 4);
    CU(cudaDeviceSynchronize());
    if (t == HMC_F32) {
        CU(cudaMemcpy(h, d, n * 4, cudaMemcpyDeviceToHost));
    } else {
        uint16_t *b = hm_malloc(2 * n + 2);
        CU(cudaMemcpy(b, d, 2 * n, cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < n; i++) h[i] = hm_bf16_to_f32(b[i]);
        free(b);
    }
    return h;
}
/* Relative L2 error of g against r (absolute when r is all zero); counts non-finite g. */
static inline double gpu_relerr(const float *g, const float *r, size_t n, int *nonfinite)
{
    double num = 0, den = 0;
    *nonfinite = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(g[i])) ++*nonfinite;
        double d = (double)g[i] - r[i];
        num += d * d, den += (double)r[i] * r[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* KL(p || q) of softmax(a), softmax(b) over n, in double (entries where p's log is not finite are
 * skipped: they carry no mass). */
static inline double gpu_kl(const float *a, const float *b, int n)
{
    double ma = -INFINITY, mb = -INFINITY;
    for (int i = 0; i < n; i++) ma = fmax(ma, a[i]), mb = fmax(mb, b[i]);
    double sa = 0, sb = 0;
    for (int i = 0; i < n; i++) sa += exp(a[i] - ma), sb += exp(b[i] - mb);
    const double la = ma + log(sa), lb = mb + log(sb);
    double k = 0;
    for (int i = 0; i < n; i++) {
        double lp = a[i] - la;
        if (!isfinite(lp)) continue;
        k += exp(lp) * (lp - (b[i] - lb));
    }
    return k;
}

/* Device-to-device copy bandwidth in bytes/s (read + write counted), best of 10 copies of
 * 2 GiB: the ceiling a bandwidth-bound kernel is measured against. */
static inline double gpu_copy_bandwidth(void)
{
    size_t n = (size_t)2 << 30;
    void *a, *b;
    CU(cudaMalloc(&a, n));
    CU(cudaMalloc(&b, n));
    CU(cudaMemset(a, 1, n));
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    CU(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
    double best = 0;
    for (int i = 0; i < 10; i++) {
        CU(cudaEventRecord(e0, 0));
        CU(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
        CU(cudaEventRecord(e1, 0));
        CU(cudaEventSynchronize(e1));
        float ms;
        CU(cudaEventElapsedTime(&ms, e0, e1));
        double bw = 2.0 * n / (ms * 1e-3);
        if (bw > best) best = bw;
    }
    cudaFree(a), cudaFree(b);
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    return best;
}

/* bf16 tensor-core peak in FLOP/s: an 8192^3 GEMM through hmc_gemm (the same cuBLASLt wrapper
 * the code under test uses), mean of 10 after 3 warm-ups on stream s; *ms_out: ms per GEMM. */
static inline double gpu_gemm_peak(cudaStream_t s, double *ms_out)
{
    const int G = 8192;
    void *ga, *gb;
    float *gc;
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    CU(cudaMalloc(&ga, (size_t)G * G * 2));
    CU(cudaMalloc(&gb, (size_t)G * G * 2));
    CU(cudaMalloc((void **)&gc, (size_t)G * G * 4));
    OK(hmc_fill_random(ga, HMC_BF16, (size_t)G * G, 1, 1.0f, s));
    OK(hmc_fill_random(gb, HMC_BF16, (size_t)G * G, 2, 1.0f, s));
    for (int i = 0; i < 3; i++) OK(hmc_gemm(ga, gb, HMC_BF16, gc, G, G, G, 0, s));
    const int reps = 10;
    CU(cudaEventRecord(e0, s));
    for (int i = 0; i < reps; i++) OK(hmc_gemm(ga, gb, HMC_BF16, gc, G, G, G, 0, s));
    CU(cudaEventRecord(e1, s));
    CU(cudaEventSynchronize(e1));
    float ms;
    CU(cudaEventElapsedTime(&ms, e0, e1));
    CU(cudaFree(ga));
    CU(cudaFree(gb));
    CU(cudaFree(gc));
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    if (ms_out) *ms_out = ms / reps;
    return 2.0 * G * G * (double)G / (ms / reps * 1e-3);
}

/* Microseconds per call of the GEMV a, rotating over `copies` weights (w[i], and scales sc[i]
 * when sc is non-NULL) so the reads miss the L2, timed as a graph of 200 calls (as in the engine:
 * the host launch cost is excluded). */
static inline double gpu_time_gemv(hmc_gemv_args *a, void **w, float **sc, int copies, cudaStream_t st)
{
    const int reps = 200;
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    for (int i = 0; i < copies; i++) { /* warm-up */
        a->W = w[i], a->w_scale = sc ? sc[i] : NULL;
        OK(hmc_gemv(a, st));
    }
    /* the calls recorded in a graph, as in the engine (host launch cost excluded) */
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CU(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < reps; i++) {
        a->W = w[i % copies], a->w_scale = sc ? sc[i % copies] : NULL;
        OK(hmc_gemv(a, st));
    }
    CU(cudaStreamEndCapture(st, &g));
    CU(cudaGraphInstantiate(&ge, g, 0));
    CU(cudaGraphLaunch(ge, st));
    CU(cudaEventRecord(e0, st));
    CU(cudaGraphLaunch(ge, st));
    CU(cudaEventRecord(e1, st));
    CU(cudaEventSynchronize(e1));
    float ms;
    CU(cudaEventElapsedTime(&ms, e0, e1));
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    cudaGraphExecDestroy(ge), cudaGraphDestroy(g);
    return ms * 1e3 / reps; /* us per call */
}

/* ---- memory accounting (the `mem` modes) ---------------------------------------------------- */

/* Device bytes in use (cudaMemGetInfo: total - free; on a machine of its own this is the process). */
static inline size_t gpu_mem_used(void)
{
    size_t fr, tot;
    CU(cudaMemGetInfo(&fr, &tot));
    return tot - fr;
}

/* The first two rows of a stage's memory table: u[0] after the context (cudaFree(0)), u[1] after
 * cuBLASLt's handle and workspace (one small GEMM). */
/* The table of a `mem` check: device MiB in use after each of the 7 steps what[i] (u[i] bytes)
 * with the model's own count of step 2 (weights) and of step ws_step (its workspace), then the
 * process's whole use from nvidia-smi. */
static inline void gpu_mem_table(const char *const what[7], const size_t u[7], double weights, int ws_step,
                                 const char *ws_label, double workspace, long smi)
{
    printf("| step | device MiB used after | + MiB | model's own count |\n|---|---|---|---|\n");
    for (int i = 0; i < 7; i++) {
        char own[48] = "";
        if (i == 2) snprintf(own, sizeof own, "%.1f MiB", weights / 1048576.0);
        if (i == ws_step) snprintf(own, sizeof own, "%s%.1f MiB", ws_label, workspace / 1048576.0);
        printf("| %s | %.1f | %.1f | %s |\n", what[i], u[i] / 1048576.0, (u[i] - (i ? u[i - 1] : 0)) / 1048576.0, own);
    }
    printf("| **process, nvidia-smi** | **%ld** | | |\n", smi);
}

static inline void gpu_mem_base(size_t u[2])
{
    CU(cudaFree(0));
    u[0] = gpu_mem_used();
    void *a = gpu_poison(64 * 64, HMC_BF16);
    float *y = (float *)gpu_poison(64 * 64, HMC_F32);
    OK(hmc_gemm(a, a, HMC_BF16, y, 64, 64, 64, 0, 0));
    CU(cudaDeviceSynchronize());
    CU(cudaFree(a));
    CU(cudaFree(y));
    u[1] = gpu_mem_used();
}

/* This process's device memory as nvidia-smi reports it (MiB; -1 when it cannot tell): what the
 * pipeline's "memory per process" figures are. */
static inline long gpu_smi_mib(void)
{
    FILE *p = popen("nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null", "r");
    if (!p) return -1;
    long pid, mib, found = -1;
    while (fscanf(p, "%ld, %ld", &pid, &mib) == 2)
        if (pid == (long)getpid()) found = mib;
    pclose(p);
    return found;
}

#endif
