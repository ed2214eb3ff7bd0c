/* gpu_quant.c - quantised language-model weights on the GPU (kernels/gemv_quant.cu, lm_cuda fp8/nvfp4).
 *   gpu_quant ops
 *       GEMV op checks: weights drawn as bf16 on the device and quantised there (fp8 per-row, NVFP4),
 *       against a CPU twin that decodes the same bytes and takes the dot products in double (relative
 *       L2 <= 2e-3: the kernels round activations to f16); the bf16 dequantiser (prefill) likewise;
 *       the quantisation error itself (informational); then time per layer shape, every variant
 *       and the self-prefetch / multi-accumulator knobs, GB/s of the quantised bytes against the
 *       copy bandwidth, bf16 of the same shape beside it.
 *   gpu_quant guard [FRAMES]
 *       The quality guard: a seeded random model of the released shapes (3B backbone, 300M decoder)
 *       as bf16, then as fp8 and nvfp4 quantised from the same bf16 values.  The bf16 model samples
 *       FRAMES (200) frames (CFG 1.5, top-k 50); each quantised model is teacher-forced with them
 *       (lm_cuda_sampling.forced) and KL(bf16 || quant) of softmax(logits) (temperature 1, full
 *       vocabulary) is taken for codebook 0 and codebooks 1..7, with the top-1 agreement.  Also ms
 *       per frame (same run, same card; the GEMV knobs A/B), the model's resident bytes whole and per half
 *       (lm_cuda_opts.parts), device memory in use, and a two-half run (backbone-only and
 *       depth-only models, as the two stage processes) that must reproduce the whole model's codes.
 *   gpu_quant all        ops, then guard.
 * Prints a summary table last; exit status 1 on a failed check. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hm.h"
#include "lm_cuda.h"
#include "modelcfg.h"
#include "ops_cpu.h"
#include "ops_cuda.h"

#include "gpu_check.h"

static int n_pass, n_fail;
static char g_summary[8192];
static size_t g_sum_len;

static void verdict(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void verdict(int ok, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    ok ? n_pass++ : n_fail++;
    printf("%-4s %s\n", ok ? "PASS" : "FAIL", line);
    if (!ok && g_sum_len + strlen(line) + 8 < sizeof g_summary)
        g_sum_len += (size_t)snprintf(g_summary + g_sum_len, sizeof g_summary - g_sum_len, "FAIL %s\n", line);
}

/* ---- CPU decoding of the device formats (ops_cuda.h / gemv_quant.cu layouts) ---- */
static float e4m3_f(uint8_t b)
{
    const int e = (b >> 3) & 15, m = b & 7;
    float v = e == 0 ? ldexpf((float)m / 8.0f, -6) : (e == 15 && m == 7) ? NAN : ldexpf(1.0f + (float)m / 8.0f, e - 7);
    return (b & 0x80) ? -v : v;
}
static float e2m1_f(int c)
{
    static const float t[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    return (c & 8) ? -t[c & 7] : t[c & 7];
}
/* [N][K] fp32 of a quantised weight on the device (wq: hmc_weight_bytes, sc: its scales) */
static float *decode(const void *wq_d, const float *sc_d, hmc_dtype t, int N, int K)
{
    const size_t n = (size_t)N * K, wb = hmc_weight_bytes(t, N, K), ns = hmc_weight_scales(t, N);
    uint8_t *wq = hm_malloc(wb);
    float *sc = hm_malloc(sizeof(float) * ns), *w = hm_malloc(sizeof(float) * n);
    CU(cudaMemcpy(wq, wq_d, wb, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(sc, sc_d, sizeof(float) * ns, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) {
        if (t == HMC_FP8) w[i] = e4m3_f(wq[i]) * sc[i / K];
        else w[i] = e2m1_f((wq[i / 2] >> (4 * (i & 1))) & 15) * e4m3_f(wq[n / 2 + i / 16]) * sc[0];
    }
    free(wq), free(sc);
    return w;
}
static float *bf16_dev_to_f32(const void *d, size_t n)
{
    uint16_t *h = hm_malloc(2 * n);
    float *f = hm_malloc(sizeof(float) * n);
    CU(cudaMemcpy(h, d, 2 * n, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) f[i] = hm_bf16_to_f32(h[i]);
    free(h);
    return f;
}
static double rel_l2(const float *a, const float *ref, size_t n, int *nonfinite)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i])) { *nonfinite = 1; return INFINITY; }
        double d = (double)a[i] - ref[i];
        num += d * d, den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}
static const char *qname(hmc_dtype t)
{
    return t == HMC_FP8 ? "fp8" : t == HMC_NVFP4 ? "nvfp4" : t == HMC_BF16 ? "bf16" : "f32";
}

/* quantised copy of a bf16 device weight: *wq and *sc allocated here */
static void quantize_dev(const void *wb, hmc_dtype t, int N, int K, void **wq, float **sc)
{
    CU(cudaMalloc(wq, hmc_weight_bytes(t, N, K)));
    CU(cudaMalloc((void **)sc, sizeof(float) * hmc_weight_scales(t, N)));
    if (t == HMC_FP8) OK(hmc_quantize_fp8(wb, N, K, *wq, *sc, 0));
    else OK(hmc_quantize_nvfp4(wb, N, K, *wq, *sc, 0));
}

/* One GEMV check: quantised weights vs the CPU twin on the decoded bytes. */
static void check_gemv(hmc_dtype t, int N, int K, int rows, int mode, int acc, int oswi, int variant)
{
    const int xw = mode == HMC_IN_SWIGLU ? 2 * K : K, nout = oswi ? N / 2 : N;
    void *wb, *wq;
    float *sc;
    CU(cudaMalloc(&wb, (size_t)N * K * 2));
    OK(hmc_fill_random(wb, HMC_BF16, (size_t)N * K, 1000 + N + K, 1.0f / sqrtf((float)K), 0));
    quantize_dev(wb, t, N, K, &wq, &sc);
    float *x = rvec((size_t)rows * xw, 2.0f), *ns = rvec(K, 1.0f), *y0 = rvec((size_t)rows * nout, 1.0f);
    for (int i = 0; i < K; i++) ns[i] += 1.5f; /* norm scales around 1.5 */
    float *xd, *nsd, *yd;
    CU(cudaMalloc((void **)&xd, sizeof(float) * rows * xw));
    CU(cudaMalloc((void **)&nsd, sizeof(float) * K));
    CU(cudaMalloc((void **)&yd, sizeof(float) * rows * nout));
    CU(cudaMemcpy(xd, x, sizeof(float) * rows * xw, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(nsd, ns, sizeof(float) * K, cudaMemcpyHostToDevice));
    if (acc) CU(cudaMemcpy(yd, y0, sizeof(float) * rows * nout, cudaMemcpyHostToDevice));
    else CU(cudaMemset(yd, 0xff, sizeof(float) * rows * nout)); /* NaN: unwritten outputs show */
    hmc_gemv_args a = {wq, t, N, K, sc, xd, xw, rows, mode, nsd, 1e-5f, yd, nout, acc, variant, oswi};
    OK(hmc_gemv(&a, 0));
    CU(cudaDeviceSynchronize());
    float *g = hm_malloc(sizeof(float) * rows * nout);
    CU(cudaMemcpy(g, yd, sizeof(float) * rows * nout, cudaMemcpyDeviceToHost));
    float *w = decode(wq, sc, t, N, K), *in = hm_malloc(sizeof(float) * K), *ref = hm_malloc(sizeof(float) * rows * nout);
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * xw;
        if (mode == HMC_IN_RMSNORM) cpu_rmsnorm(xr, ns, in, 1, K, 1e-5f);
        else {
            memcpy(in, xr, sizeof(float) * K);
            if (mode == HMC_IN_SWIGLU) cpu_silu_mul(in, xr + K, K);
        }
        for (int n = 0; n < N; n++) {
            double d = 0;
            for (int k = 0; k < K; k++) d += (double)in[k] * w[(size_t)n * K + k];
            if (!oswi) ref[(size_t)r * nout + n] = (float)d + (acc ? y0[(size_t)r * nout + n] : 0.0f);
            else if (n % 2) {
                float gt = ref[(size_t)r * nout + n / 2];
                ref[(size_t)r * nout + n / 2] = gt / (1.0f + expf(-gt)) * (float)d;
            } else ref[(size_t)r * nout + n / 2] = (float)d;
        }
    }
    int nf = 0;
    double err = rel_l2(g, ref, (size_t)rows * nout, &nf);
    verdict(!nf && err <= 2e-3, "gemv %-5s N=%5d K=%5d rows=%d %-7s%s%s v%d  rel L2 %.2e (<= 2e-3)%s", qname(t), N, K,
            rows, mode == 1 ? "rmsnorm" : mode == 2 ? "swiglu" : "plain", acc ? " +=" : "", oswi ? " ->swiglu" : "",
            variant, err, nf ? " NON-FINITE" : "");
    cudaFree(wb), cudaFree(wq), cudaFree(sc), cudaFree(xd), cudaFree(nsd), cudaFree(yd);
    free(x), free(ns), free(y0), free(g), free(w), free(in), free(ref);
}

/* Quantisation error of the format itself and the dequantiser (prefill) vs the CPU decode. */
static void check_format(hmc_dtype t, int N, int K)
{
    void *wb, *wq, *dq;
    float *sc;
    CU(cudaMalloc(&wb, (size_t)N * K * 2));
    CU(cudaMalloc(&dq, (size_t)N * K * 2));
    OK(hmc_fill_random(wb, HMC_BF16, (size_t)N * K, 77, 1.0f / sqrtf((float)K), 0));
    quantize_dev(wb, t, N, K, &wq, &sc);
    OK(hmc_dequantize(wq, t, sc, N, K, dq, 0));
    CU(cudaDeviceSynchronize());
    float *w0 = bf16_dev_to_f32(wb, (size_t)N * K), *wd = bf16_dev_to_f32(dq, (size_t)N * K);
    float *w = decode(wq, sc, t, N, K);
    int nf = 0;
    double eq = rel_l2(w, w0, (size_t)N * K, &nf), ed = rel_l2(wd, w, (size_t)N * K, &nf);
    verdict(!nf && ed <= 4e-3, "dequantise %-5s N=%d K=%d  rel L2 vs CPU decode %.2e (<= 4e-3, bf16 rounding)", qname(t),
            N, K, ed);
    printf("     quantisation error of %s (uniform random weights): rel L2 %.3e\n", qname(t), eq);
    cudaFree(wb), cudaFree(wq), cudaFree(sc), cudaFree(dq);
    free(w0), free(wd), free(w);
}

static char g_table[8192];
static size_t g_tab_len;

static void bench_shape(const char *name, int N, int K, int mode, int oswi, double bw)
{
    const int rows = 2, xw = mode == HMC_IN_SWIGLU ? 2 * K : K, nout = oswi ? N / 2 : N;
    const int copies = (int)HM_MAX(2, (256u << 20) / ((size_t)N * K * 2) + 1);
    cudaStream_t st;
    CU(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    void **wb = hm_malloc(sizeof(void *) * copies), **w8 = hm_malloc(sizeof(void *) * copies),
         **w4 = hm_malloc(sizeof(void *) * copies);
    float **s8 = hm_malloc(sizeof(float *) * copies), **s4 = hm_malloc(sizeof(float *) * copies);
    for (int i = 0; i < copies; i++) {
        CU(cudaMalloc(&wb[i], (size_t)N * K * 2));
        OK(hmc_fill_random(wb[i], HMC_BF16, (size_t)N * K, 50 + i, 1.0f / sqrtf((float)K), 0));
        quantize_dev(wb[i], HMC_FP8, N, K, &w8[i], &s8[i]);
        quantize_dev(wb[i], HMC_NVFP4, N, K, &w4[i], &s4[i]);
    }
    float *x, *ns, *y;
    CU(cudaMalloc((void **)&x, sizeof(float) * rows * xw));
    CU(cudaMalloc((void **)&ns, sizeof(float) * K));
    CU(cudaMalloc((void **)&y, sizeof(float) * rows * N));
    OK(hmc_fill_random(x, HMC_F32, (size_t)rows * xw, 5, 2.0f, 0));
    OK(hmc_fill_random(ns, HMC_F32, K, 6, 1.0f, 0));
    CU(cudaDeviceSynchronize());
    hmc_gemv_args a = {NULL, HMC_BF16, N, K, NULL, x, xw, rows, mode, ns, 1e-5f, y, nout, 0, 0, oswi};
    const double bb = (double)N * K * 2, b8 = hmc_weight_bytes(HMC_FP8, N, K) + 4.0 * N,
                 b4 = hmc_weight_bytes(HMC_NVFP4, N, K) + 4.0;
    double ub = gpu_time_gemv(&a, wb, NULL, copies, st);
    double u8[5], u4[5];
    for (int v = 0; v <= 4; v++) {
        a.variant = v, a.wdt = HMC_FP8;
        u8[v] = gpu_time_gemv(&a, w8, s8, copies, st);
        a.wdt = HMC_NVFP4;
        u4[v] = gpu_time_gemv(&a, w4, s4, copies, st);
    }
    hmc_gemv_quant_set_self_prefetch(1);
    a.variant = 0, a.wdt = HMC_FP8;
    const double n8 = gpu_time_gemv(&a, w8, s8, copies, st);
    a.wdt = HMC_NVFP4;
    const double n4 = gpu_time_gemv(&a, w4, s4, copies, st);
    hmc_gemv_quant_set_self_prefetch(0);
    hmc_gemv_quant_set_multi_acc(1);
    a.wdt = HMC_FP8;
    const double m8 = gpu_time_gemv(&a, w8, s8, copies, st);
    a.wdt = HMC_NVFP4;
    const double m4 = gpu_time_gemv(&a, w4, s4, copies, st);
    hmc_gemv_quant_set_multi_acc(0);
    printf("gemv %-9s N=%5d K=%5d  bf16 %.1f us (%.0f%% of copy)  fp8 auto/KS1/2/4/8 us: %.1f %.1f %.1f %.1f %.1f"
           " (self-prefetch on %.1f, multi-acc %.1f)  nvfp4: %.1f %.1f %.1f %.1f %.1f (self-prefetch on %.1f, multi-acc"
           " %.1f)\n",
           name, N, K, ub, 100 * bb / (ub * 1e-6) / bw, u8[0], u8[1], u8[2], u8[3], u8[4], n8, m8, u4[0], u4[1], u4[2],
           u4[3], u4[4], n4, m4);
    g_tab_len += (size_t)snprintf(g_table + g_tab_len, sizeof g_table - g_tab_len,
                                  "| %s | %d x %d | %.1f | %.0f%% | %.1f | %.0f | %.0f%% | %.1f | %.0f | %.0f%% |\n", name,
                                  N, K, ub, 100 * bb / (ub * 1e-6) / bw, u8[0], b8 / u8[0] / 1e3,
                                  100 * b8 / (u8[0] * 1e-6) / bw, u4[0], b4 / u4[0] / 1e3, 100 * b4 / (u4[0] * 1e-6) / bw);
    for (int i = 0; i < copies; i++) cudaFree(wb[i]), cudaFree(w8[i]), cudaFree(w4[i]), cudaFree(s8[i]), cudaFree(s4[i]);
    cudaFree(x), cudaFree(ns), cudaFree(y);
    cudaStreamDestroy(st);
    free(wb), free(w8), free(w4), free(s8), free(s4);
}

static int ops(void)
{
    const hmc_dtype ts[2] = {HMC_FP8, HMC_NVFP4};
    for (int i = 0; i < 2; i++) {
        hmc_dtype t = ts[i];
        check_format(t, 3072, 3072);
        check_gemv(t, 5120, 3072, 2, HMC_IN_RMSNORM, 0, 0, 0);  /* qkv */
        check_gemv(t, 3072, 3072, 2, HMC_IN_PLAIN, 1, 0, 0);    /* o += */
        check_gemv(t, 16384, 3072, 2, HMC_IN_RMSNORM, 0, 1, 0); /* w1|w3 -> swiglu */
        check_gemv(t, 3072, 8192, 2, HMC_IN_PLAIN, 1, 0, 0);    /* w2 += */
        check_gemv(t, 8197, 3072, 1, HMC_IN_RMSNORM, 0, 0, 0);  /* audio head, odd N */
        check_gemv(t, 3072, 8192, 4, HMC_IN_SWIGLU, 1, 0, 0);   /* gate|up input */
        check_gemv(t, 3072, 512, 1, HMC_IN_PLAIN, 0, 0, 0);     /* MuQ-sized */
        check_gemv(t, 69, 64, 3, HMC_IN_RMSNORM, 0, 0, 0);      /* tiny, ragged tile */
        for (int v = 1; v <= 4; v++) {
            check_gemv(t, 1000, 3072, 3, HMC_IN_RMSNORM, 0, 0, v);
            check_gemv(t, 200, 1024, 4, HMC_IN_PLAIN, 1, 0, v);
        }
    }
    double bw = gpu_copy_bandwidth();
    struct cudaDeviceProp p;
    CU(cudaGetDeviceProperties(&p, 0));
    printf("device %s, copy bandwidth %.0f GB/s (read + write)\n", p.name, bw / 1e9);
    g_tab_len += (size_t)snprintf(g_table + g_tab_len, sizeof g_table - g_tab_len,
                                  "device %s, copy %.0f GB/s; B = 2 rows, graph of 200 calls over weight copies > L2\n"
                                  "| GEMV | N x K | bf16 us | of copy | fp8 us | fp8 GB/s | of copy | nvfp4 us | nvfp4 GB/s"
                                  " | of copy |\n|---|---|---|---|---|---|---|---|---|---|\n",
                                  p.name, bw / 1e9);
    bench_shape("qkv", 5120, 3072, HMC_IN_RMSNORM, 0, bw);
    bench_shape("o", 3072, 3072, HMC_IN_PLAIN, 0, bw);
    bench_shape("w1|w3", 16384, 3072, HMC_IN_RMSNORM, 1, bw);
    bench_shape("w2", 3072, 8192, HMC_IN_PLAIN, 0, bw);
    bench_shape("head", 8197, 3072, HMC_IN_RMSNORM, 0, bw);
    bench_shape("big", 32768, 3072, HMC_IN_RMSNORM, 0, bw);
    return 0;
}

/* ---------------------------------------------------------------- quality guard ---------------- */

static double used_bytes(void)
{
    size_t fr, tot;
    CU(cudaMemGetInfo(&fr, &tot));
    return (double)(tot - fr);
}

/* KL(p || q) of softmax(a), softmax(b) over n, in double */
static double kl(const float *a, const float *b, int n)
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
static int argmax(const float *a, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (a[i] > a[b]) b = i;
    return b;
}

static double frames_ms(lm_cuda_req *r, int n)
{
    int32_t codes[8];
    lm_cuda_sampling s = {1.0f, 50, 1.5f, 42, 0, NULL};
    for (int i = 0; i < 3; i++) { /* eager run, graph capture */
        s.counter = 10000 + i;
        OK(lm_cuda_frame(r, &s, codes, NULL));
        OK(lm_cuda_extend(r, NULL));
    }
    double t0 = hm_now();
    for (int i = 0; i < n; i++) {
        s.counter = 20000 + i;
        OK(lm_cuda_frame(r, &s, codes, NULL));
        OK(lm_cuda_extend(r, NULL));
    }
    CU(cudaDeviceSynchronize());
    return (hm_now() - t0) * 1e3 / n;
}

typedef struct {
    hmc_dtype t;
    double res[3];          /* resident bytes: whole, backbone half, depth half */
    double used, prefill_ms, ms, ms_pf, ms_ma, fbytes;
    double kl0_mean, kl0_max, kl1_mean, kl1_max, top0, top1;
    int nonfinite;
} prec_row;

static void half_sizes(const hm_lm_config *cfg, prec_row *pr)
{
    for (unsigned parts = 1; parts <= 2; parts++) {
        lm_cuda_opts o = {pr->t, NULL, parts};
        lm_cuda *m;
        OK(lm_cuda_random(cfg, 1234, &o, &m));
        pr->res[parts] = (double)lm_cuda_resident_bytes(m);
        lm_cuda_free(m);
    }
}

/* the two halves as separate models (the two stage processes) must give the whole model's codes */
static void check_halves(const hm_lm_config *cfg, const int32_t *tok, const uint8_t *mask, int S, int F)
{
    const int nc = cfg->audio_num_codebooks, Va = cfg->audio_vocab_size;
    lm_cuda_opts ob = {HMC_BF16, NULL, LM_CUDA_PART_BACKBONE}, od = {HMC_BF16, NULL, LM_CUDA_PART_DEPTH},
                 oa = {HMC_BF16, NULL, 0};
    lm_cuda *mb, *md, *ma;
    OK(lm_cuda_random(cfg, 1234, &ob, &mb));
    OK(lm_cuda_random(cfg, 1234, &od, &md));
    lm_cuda_req *rb, *rd;
    OK(lm_cuda_req_new(mb, 2, S + F + 4, &rb));
    OK(lm_cuda_req_new(md, 2, 1, &rd));
    /* wrong half: an error, not a crash */
    int32_t codes[8] = {0};
    lm_cuda_sampling s = {1.0f, 50, 1.5f, 7, 0, NULL};
    int e1 = lm_cuda_frame(rb, &s, codes, NULL), e2 = lm_cuda_prefill(rd, tok, mask, S, -1, NULL),
        e3 = lm_cuda_extend(rd, codes);
    verdict(e1 == HM_ERR && e2 == HM_ERR && e3 == HM_ERR,
            "an entry of the half that is not loaded returns an error (frame on backbone-only, prefill/extend on "
            "depth-only): %d %d %d", e1, e2, e3);
    float *hd;
    CU(cudaMalloc((void **)&hd, sizeof(float) * 2 * cfg->backbone.embed_dim));
    int32_t *split = hm_malloc(sizeof(int32_t) * nc * F), *whole = hm_malloc(sizeof(int32_t) * nc * F);
    float *lsplit = hm_malloc(sizeof(float) * nc * Va), *lwhole = hm_malloc(sizeof(float) * nc * Va);
    OK(lm_cuda_prefill(rb, tok, mask, S, -1, NULL));
    double maxd = 0;
    for (int f = 0; f < F; f++) {
        if (f > 0) OK(lm_cuda_extend(rb, split + (f - 1) * nc));
        OK(lm_cuda_copy_hidden(rb, hd));
        CU(cudaStreamSynchronize((cudaStream_t)lm_cuda_stream(rb)));
        s.counter = (uint32_t)f;
        OK(lm_cuda_depth_frame(rd, hd, &s, split + f * nc, f == F - 1 ? lsplit : NULL));
    }
    lm_cuda_req_free(rb), lm_cuda_req_free(rd);
    printf("     resident: backbone-only %.3f GB, depth-only %.3f GB\n", lm_cuda_resident_bytes(mb) / 1e9,
           lm_cuda_resident_bytes(md) / 1e9);
    lm_cuda_free(mb), lm_cuda_free(md);
    OK(lm_cuda_random(cfg, 1234, &oa, &ma));
    lm_cuda_req *r;
    OK(lm_cuda_req_new(ma, 2, S + F + 4, &r));
    OK(lm_cuda_prefill(r, tok, mask, S, -1, NULL));
    for (int f = 0; f < F; f++) {
        if (f > 0) OK(lm_cuda_extend(r, whole + (f - 1) * nc));
        s.counter = (uint32_t)f;
        OK(lm_cuda_frame(r, &s, whole + f * nc, f == F - 1 ? lwhole : NULL));
    }
    lm_cuda_req_free(r);
    lm_cuda_free(ma);
    for (int i = 0; i < nc * Va; i++) maxd = fmax(maxd, fabs((double)lsplit[i] - lwhole[i]));
    verdict(!memcmp(split, whole, sizeof(int32_t) * nc * F) && maxd == 0.0,
            "backbone-only + depth-only models reproduce the whole model: %d frames, codes %s, last logits max |diff| %.3g",
            F, memcmp(split, whole, sizeof(int32_t) * nc * F) ? "DIFFER" : "equal", maxd);
    cudaFree(hd);
    free(split), free(whole), free(lsplit), free(lwhole);
}

static int guard(int F)
{
    hm_lm_config cfg;
    memset(&cfg, 0, sizeof cfg);
    const hm_flavor *fb = hm_flavor_builtin("llama-3B"), *fd = hm_flavor_builtin("llama-300M");
    if (!fb || !fd) { fprintf(stderr, "no built-in flavors\n"); return 2; }
    cfg.backbone = *fb, cfg.decoder = *fd;
    cfg.text_vocab_size = 128256, cfg.audio_vocab_size = 8197, cfg.audio_num_codebooks = 8, cfg.muq_dim = 512;
    const int nc = 8, Va = cfg.audio_vocab_size, S = 64;
    struct cudaDeviceProp p;
    CU(cudaGetDeviceProperties(&p, 0));
    double bw = gpu_copy_bandwidth();
    int32_t *tok = hm_calloc((size_t)S * (nc + 1), sizeof(int32_t));
    uint8_t *mask = hm_calloc((size_t)S * (nc + 1), 1);
    for (int s = 0; s < S; s++) tok[s * (nc + 1) + nc] = (s * 7919 + 13) % 128256, mask[s * (nc + 1) + nc] = 1;

    check_halves(&cfg, tok, mask, S, 12);

    const size_t nl = (size_t)F * nc * Va;
    float *lref = hm_malloc(sizeof(float) * nl), *lq = hm_malloc(sizeof(float) * nc * Va);
    int32_t *frames = hm_malloc(sizeof(int32_t) * F * nc), codes[8];
    prec_row rows[3] = {{.t = HMC_BF16}, {.t = HMC_FP8}, {.t = HMC_NVFP4}};
    const double base = used_bytes();
    for (int pi = 0; pi < 3; pi++) {
        prec_row *pr = &rows[pi];
        lm_cuda_opts o = {pr->t, NULL, 0};
        lm_cuda *m;
        OK(lm_cuda_random(&cfg, 1234, &o, &m));
        pr->res[0] = (double)lm_cuda_resident_bytes(m);
        pr->fbytes = lm_cuda_frame_bytes(m);
        lm_cuda_req *r;
        OK(lm_cuda_req_new(m, 2, 1024, &r));
        double t0 = hm_now();
        OK(lm_cuda_prefill(r, tok, mask, S, 10, NULL));
        pr->prefill_ms = (hm_now() - t0) * 1e3;
        double k0 = 0, k1 = 0;
        int a0 = 0, a1 = 0;
        for (int f = 0; f < F; f++) {
            if (f > 0) OK(lm_cuda_extend(r, frames + (f - 1) * nc));
            lm_cuda_sampling s = {1.0f, 50, 1.5f, 99, (uint32_t)f, pi ? frames + f * nc : NULL};
            OK(lm_cuda_frame(r, &s, pi ? codes : frames + f * nc, pi ? lq : lref + (size_t)f * nc * Va));
            if (!pi) continue;
            for (int k = 0; k < nc; k++) {
                const float *a = lref + ((size_t)f * nc + k) * Va, *b = lq + (size_t)k * Va;
                for (int i = 0; i < Va; i++) pr->nonfinite |= !isfinite(b[i]);
                double d = kl(a, b, Va);
                int same = argmax(a, Va) == argmax(b, Va);
                if (k == 0) k0 += d, pr->kl0_max = fmax(pr->kl0_max, d), a0 += same;
                else k1 += d, pr->kl1_max = fmax(pr->kl1_max, d), a1 += same;
            }
        }
        pr->kl0_mean = k0 / F, pr->kl1_mean = k1 / (F * (nc - 1.0));
        pr->top0 = (double)a0 / F, pr->top1 = (double)a1 / (F * (nc - 1.0));
        pr->ms = frames_ms(r, 50);
        {
            lm_cuda_prof pf;
            lm_cuda_sampling ps = {1.0f, 50, 1.5f, 42, 30000, NULL};
            OK(lm_cuda_profile_frame(r, &ps, &pf));
            printf("%-5s per piece (eager, events around each op):", qname(pr->t));
            for (int i = 0; i < pf.n; i++)
                if (pf.bytes[i] > 0)
                    printf(" %s %.3f ms %.0f GB/s;", pf.name[i], pf.ms[i], pf.bytes[i] / (pf.ms[i] * 1e-3) / 1e9);
                else printf(" %s %.3f ms;", pf.name[i], pf.ms[i]);
            printf("\n");
        }
        if (pi) { /* A/B: the quantised GEMV's own L2 prefetch on (fresh request: graphs record it) */
            lm_cuda_req *r2;
            hmc_gemv_quant_set_self_prefetch(1);
            OK(lm_cuda_req_new(m, 2, 1024, &r2));
            OK(lm_cuda_prefill(r2, tok, mask, S, 10, NULL));
            pr->ms_pf = frames_ms(r2, 50);
            lm_cuda_req_free(r2);
            hmc_gemv_quant_set_self_prefetch(0);
            hmc_gemv_quant_set_multi_acc(1); /* A/B: several MMA accumulator chains */
            OK(lm_cuda_req_new(m, 2, 1024, &r2));
            OK(lm_cuda_prefill(r2, tok, mask, S, 10, NULL));
            pr->ms_ma = frames_ms(r2, 50);
            lm_cuda_req_free(r2);
            hmc_gemv_quant_set_multi_acc(0);
        }
        pr->used = used_bytes() - base;
        lm_cuda_req_free(r);
        lm_cuda_free(m);
        half_sizes(&cfg, pr);
        printf("%-5s resident %.3f GB (backbone %.3f, depth %.3f), device memory in use with a B=2 request of 1024 "
               "positions %.3f GB, prefill %d rows %.1f ms, %.3f ms/frame (GEMV self-prefetch on %.3f, multi-acc %.3f)\n",
               qname(pr->t), pr->res[0] / 1e9, pr->res[1] / 1e9, pr->res[2] / 1e9, pr->used / 1e9, S, pr->prefill_ms,
               pr->ms, pr->ms_pf, pr->ms_ma);
    }
    /* bounds: fp8 is near-lossless, NVFP4 (4.5 bits) visibly not; non-finite logits fail both */
    const double kl_bound[3] = {0, 5e-3, 5e-2};
    printf("\nquality guard: random 3B+300M model, %d frames teacher-forced with the bf16 model's own samples "
           "(CFG 1.5, top-k 50), KL(bf16 || quant) of softmax(CFG logits), temperature 1, vocab %d; device %s\n",
           F, Va, p.name);
    printf("| precision | resident GB (whole / backbone / depth) | weights read per frame GB | ms/frame B=2 | floor ms "
           "| KL c0 mean / max | KL c1..7 mean / max | top-1 agree c0 / c1..7 | device mem in use GB |\n"
           "|---|---|---|---|---|---|---|---|---|\n");
    for (int pi = 0; pi < 3; pi++) {
        prec_row *pr = &rows[pi];
        printf("| %s | %.2f / %.2f / %.2f | %.2f | %.3f | %.3f | %.2e / %.2e | %.2e / %.2e | %.1f%% / %.1f%% | %.2f |\n",
               qname(pr->t), pr->res[0] / 1e9, pr->res[1] / 1e9, pr->res[2] / 1e9, pr->fbytes / 1e9, pr->ms,
               pr->fbytes / bw * 1e3, pr->kl0_mean, pr->kl0_max, pr->kl1_mean, pr->kl1_max, 100 * pr->top0,
               100 * pr->top1, pr->used / 1e9);
    }
    for (int pi = 1; pi < 3; pi++) {
        prec_row *pr = &rows[pi];
        verdict(!pr->nonfinite && pr->kl0_mean <= kl_bound[pi] && pr->kl1_mean <= kl_bound[pi],
                "guard %-5s mean KL c0 %.2e, c1..7 %.2e (<= %.0e), finite logits", qname(pr->t), pr->kl0_mean,
                pr->kl1_mean, kl_bound[pi]);
    }
    free(lref), free(lq), free(frames), free(tok), free(mask);
    return 0;
}

int main(int argc, char **argv)
{
    CU(cudaSetDevice(0));
    const char *mode = argc >= 2 ? argv[1] : "all";
    int F = argc >= 3 ? atoi(argv[2]) : 200;
    if (F < 1) F = 200;
    if (!strcmp(mode, "ops") || !strcmp(mode, "all")) ops();
    if (!strcmp(mode, "guard") || !strcmp(mode, "all")) guard(F);
    if (strcmp(mode, "ops") && strcmp(mode, "guard") && strcmp(mode, "all")) {
        fprintf(stderr, "usage: gpu_quant ops | guard [FRAMES] | all [FRAMES]\n");
        return 2;
    }
    printf("\n==== gpu_quant summary: %d passed, %d failed ====\n", n_pass, n_fail);
    if (g_tab_len) printf("%s", g_table);
    printf("%s", g_summary);
    hmc_gemm_shutdown();
    return n_fail ? 1 : 0;
}
