/* gpu_ops.c - op-level checker (llama.cpp test-backend-ops style): every CUDA op of ops_cuda.h
 * against its CPU twin (ops_cpu.h) on fresh random inputs (seed printed; pass one to replay),
 * outputs poisoned with NaN before each run, released sizes included.  Error is the relative L2
 * ‖gpu − cpu‖ / ‖cpu‖, with the CPU fed exactly the values the GPU saw (bf16-rounded weights,
 * caches, GEMM inputs), so the bound only covers fp32 summation order and fast exp.
 * Prints one PASS/FAIL row per case and exits 1 on any failure.  Needs a GPU.
 * usage: gpu_ops [seed [persist]]   (persist: only the persistent layer stack's checks) */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hm.h"
#include "ops_cpu.h"
#include "ops_cuda.h"

#include "gpu_check.h"

static float fp8_e4m3_to_f32(uint8_t b)
{
    int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
    float v = e == 0 ? ldexpf((float)m, -9) : ldexpf(1.0f + m / 8.0f, e - 7);
    return s ? -v : v;
}
/* Round v in place to what type t stores and return a device copy of type t. */
static void *to_dev(float *v, size_t n, hmc_dtype t)
{
    void *d;
    size_t es = hmc_dtype_size(t);
    CU(cudaMalloc(&d, n * es + 16));
    if (t == HMC_F32) {
        CU(cudaMemcpy(d, v, n * 4, cudaMemcpyHostToDevice));
    } else if (t == HMC_BF16) {
        uint16_t *h = hm_malloc(2 * n + 2);
        for (size_t i = 0; i < n; i++) h[i] = hm_f32_to_bf16(v[i]), v[i] = hm_bf16_to_f32(h[i]);
        CU(cudaMemcpy(d, h, 2 * n, cudaMemcpyHostToDevice));
        free(h);
    } else {
        /* fp8 e4m3 (v pre-scaled to its range by the caller); any rounding will do: the CPU
         * reference uses the decoded byte */
        uint8_t *h = hm_malloc(n + 1);
        for (size_t i = 0; i < n; i++) {
            float a = fabsf(v[i]);
            int e = a > 0 ? (int)floorf(log2f(a)) : -10, m;
            if (e < -6) {
                m = (int)lrintf(a / ldexpf(1.0f, -9));
                e = m >= 8 ? -6 : -7, m = m >= 8 ? 0 : m;
            } else {
                m = (int)lrintf((a / ldexpf(1.0f, e) - 1.0f) * 8.0f);
                if (m == 8) e++, m = 0;
            }
            if (e > 8 || (e == 8 && m > 6)) e = 8, m = 6;
            h[i] = (uint8_t)((v[i] < 0 ? 0x80 : 0) | ((e + 7) << 3) | m);
            v[i] = fp8_e4m3_to_f32(h[i]);
        }
        CU(cudaMemcpy(d, h, n, cudaMemcpyHostToDevice));
        free(h);
    }
    return d;
}
static float *dev_f32(const float *v, size_t n)
{
    float *d;
    CU(cudaMalloc((void **)&d, n * 4 + 16));
    CU(cudaMemcpy(d, v, n * 4, cudaMemcpyHostToDevice));
    return d;
}
static float *dev_poison(size_t n)
{
    float *d;
    CU(cudaMalloc((void **)&d, n * 4 + 16));
    CU(cudaMemset(d, 0xff, n * 4)); /* all-ones bits: NaN */
    return d;
}
static float *from_dev(const float *d, size_t n)
{
    float *h = hm_malloc(n * 4 + 4);
    CU(cudaDeviceSynchronize());
    CU(cudaMemcpy(h, d, n * 4, cudaMemcpyDeviceToHost));
    return h;
}

static int n_pass, n_fail;
static void report(const char *op, const char *shape, const float *gpu, const float *ref, size_t n, double bound)
{
    double num = 0, den = 0;
    int nan = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(gpu[i])) nan++;
        double d = (double)gpu[i] - ref[i];
        num += d * d, den += (double)ref[i] * ref[i];
    }
    double err = den > 0 ? sqrt(num / den) : sqrt(num);
    int ok = !nan && err <= bound;
    ok ? n_pass++ : n_fail++;
    printf("%-4s %-14s %-44s err %.2e (bound %.0e)%s\n", ok ? "PASS" : "FAIL", op, shape, err, bound,
           nan ? "  NON-FINITE/unwritten outputs" : "");
}

static const char *dtn(hmc_dtype t) { return t == HMC_BF16 ? "bf16" : t == HMC_F32 ? "f32" : "fp8"; }

static void check_gemv_v(int N, int K, int rows, int mode, hmc_dtype t, int acc, int variant)
{
    int xw = mode == HMC_IN_SWIGLU ? 2 * K : K;
    float *W = rvec((size_t)N * K, t == HMC_FP8 ? 400.0f : 1.0f / sqrtf((float)K));
    float *x = rvec((size_t)rows * xw, 2.0f), *scale = rvec(K, 1.0f), *y0 = rvec((size_t)rows * N, 1.0f);
    float *ws = NULL, *ws_d = NULL;
    void *Wd = to_dev(W, (size_t)N * K, t);
    if (t == HMC_FP8) {
        ws = hm_malloc(sizeof(float) * N);
        for (int n = 0; n < N; n++) ws[n] = (0.5f + 0.25f * urand()) / (400.0f * sqrtf((float)K));
        ws_d = dev_f32(ws, N);
        for (int n = 0; n < N; n++)
            for (int k = 0; k < K; k++) W[(size_t)n * K + k] *= ws[n];
    }
    float *xd = dev_f32(x, (size_t)rows * xw), *sd = dev_f32(scale, K);
    float *yd = acc ? dev_f32(y0, (size_t)rows * N) : dev_poison((size_t)rows * N);
    hmc_gemv_args a = {Wd, t, N, K, ws_d, xd, xw, rows, mode, sd, 1e-5f, yd, N, acc, variant};
    OK(hmc_gemv(&a, 0));
    float *g = from_dev(yd, (size_t)rows * N);
    float *in = hm_malloc(sizeof(float) * rows * K), *ref = hm_malloc(sizeof(float) * rows * N);
    for (int r = 0; r < rows; r++) {
        if (mode == HMC_IN_RMSNORM) cpu_rmsnorm(x + (size_t)r * xw, scale, in + (size_t)r * K, 1, K, 1e-5f);
        else if (mode == HMC_IN_SWIGLU) {
            memcpy(in + (size_t)r * K, x + (size_t)r * xw, sizeof(float) * K);
            cpu_silu_mul(in + (size_t)r * K, x + (size_t)r * xw + K, K);
        } else memcpy(in + (size_t)r * K, x + (size_t)r * xw, sizeof(float) * K);
    }
    cpu_linear(in, W, NULL, ref, rows, K, N);
    if (acc)
        for (size_t i = 0; i < (size_t)rows * N; i++) ref[i] += y0[i];
    char sh[96];
    snprintf(sh, sizeof sh, "%s N=%d K=%d rows=%d %s%s v%d", dtn(t), N, K, rows,
             mode == 1 ? "rmsnorm" : mode == 2 ? "swiglu" : "plain", acc ? " +=" : "", variant);
    report("gemv", sh, g, ref, (size_t)rows * N, t == HMC_FP8 ? 2e-3 : 1e-4); /* fp8: f16 activations (gemv_quant.cu) */
    cudaFree(Wd), cudaFree(xd), cudaFree(sd), cudaFree(yd), cudaFree(ws_d);
    free(W), free(x), free(scale), free(y0), free(g), free(in), free(ref), free(ws);
}

static void check_gemv(int N, int K, int rows, int mode, hmc_dtype t, int acc)
{
    check_gemv_v(N, K, rows, mode, t, acc, 0);
}

/* w1|w3 rows interleaved, SwiGLU product written directly: y[r, i] = silu(row 2i) · row 2i+1 */
static void check_gemv_swiglu_out(int N, int K, int rows, hmc_dtype t, int variant)
{
    float *W = rvec((size_t)N * K, t == HMC_FP8 ? 400.0f : 1.0f / sqrtf((float)K));
    float *x = rvec((size_t)rows * K, 2.0f), *scale = rvec(K, 1.0f), *ws = NULL, *ws_d = NULL;
    void *Wd = to_dev(W, (size_t)N * K, t);
    if (t == HMC_FP8) {
        ws = hm_malloc(sizeof(float) * N);
        for (int n = 0; n < N; n++) ws[n] = (0.5f + 0.25f * urand()) / (400.0f * sqrtf((float)K));
        ws_d = dev_f32(ws, N);
        for (int n = 0; n < N; n++)
            for (int k = 0; k < K; k++) W[(size_t)n * K + k] *= ws[n];
    }
    float *xd = dev_f32(x, (size_t)rows * K), *sd = dev_f32(scale, K), *yd = dev_poison((size_t)rows * N / 2);
    hmc_gemv_args a = {Wd, t, N, K, ws_d, xd, K, rows, HMC_IN_RMSNORM, sd, 1e-5f, yd, N / 2, 0, variant, 1};
    OK(hmc_gemv(&a, 0));
    float *g = from_dev(yd, (size_t)rows * N / 2);
    float *in = hm_malloc(sizeof(float) * rows * K), *full = hm_malloc(sizeof(float) * rows * N);
    float *ref = hm_malloc(sizeof(float) * rows * N / 2), *up = hm_malloc(sizeof(float) * N / 2);
    cpu_rmsnorm(x, scale, in, rows, K, 1e-5f);
    cpu_linear(in, W, NULL, full, rows, K, N);
    for (int r = 0; r < rows; r++) {
        for (int i = 0; i < N / 2; i++) ref[r * N / 2 + i] = full[(size_t)r * N + 2 * i], up[i] = full[(size_t)r * N + 2 * i + 1];
        cpu_silu_mul(ref + (size_t)r * N / 2, up, N / 2);
    }
    char sh[96];
    snprintf(sh, sizeof sh, "%s N=%d K=%d rows=%d rmsnorm->swiglu v%d", dtn(t), N, K, rows, variant);
    report("gemv", sh, g, ref, (size_t)rows * N / 2, t == HMC_FP8 ? 2e-3 : 1e-4);
    cudaFree(Wd), cudaFree(xd), cudaFree(sd), cudaFree(yd), cudaFree(ws_d);
    free(W), free(x), free(scale), free(ws), free(g), free(in), free(full), free(ref), free(up);
}

static void check_gemm(int M, int N, int K, hmc_dtype t, int acc)
{
    float *W = rvec((size_t)N * K, 1.0f / sqrtf((float)K)), *x = rvec((size_t)M * K, 1.0f);
    float *y0 = rvec((size_t)M * N, 1.0f);
    void *Wd = to_dev(W, (size_t)N * K, t), *xd = to_dev(x, (size_t)M * K, t);
    float *yd = acc ? dev_f32(y0, (size_t)M * N) : dev_poison((size_t)M * N);
    OK(hmc_gemm(xd, Wd, t, yd, M, N, K, acc, 0));
    float *g = from_dev(yd, (size_t)M * N), *ref = hm_malloc(sizeof(float) * M * N);
    cpu_linear(x, W, NULL, ref, M, K, N);
    if (acc)
        for (size_t i = 0; i < (size_t)M * N; i++) ref[i] += y0[i];
    char sh[96];
    snprintf(sh, sizeof sh, "%s M=%d N=%d K=%d%s", dtn(t), M, N, K, acc ? " +=" : "");
    report("gemm cublasLt", sh, g, ref, (size_t)M * N, 1e-4);
    cudaFree(Wd), cudaFree(xd), cudaFree(yd);
    free(W), free(x), free(y0), free(g), free(ref);
}

static void check_rmsnorm_silu(int M, int D)
{
    float *x = rvec((size_t)M * D, 3.0f), *sc = rvec(D, 1.0f), *ref = hm_malloc(sizeof(float) * M * D);
    float *xd = dev_f32(x, (size_t)M * D), *sd = dev_f32(sc, D), *yd = dev_poison((size_t)M * D);
    OK(hmc_rmsnorm(xd, sd, yd, HMC_F32, M, D, 1e-5f, 0));
    float *g = from_dev(yd, (size_t)M * D);
    cpu_rmsnorm(x, sc, ref, M, D, 1e-5f);
    char sh[96];
    snprintf(sh, sizeof sh, "f32 M=%d D=%d", M, D);
    report("rmsnorm", sh, g, ref, (size_t)M * D, 1e-5);
    free(g);
    /* silu_mul over rows of [gate | up], D/2 wide */
    int I = D / 2;
    float *gu = dev_poison((size_t)M * I);
    OK(hmc_silu_mul(xd, gu, HMC_F32, M, I, 0, 0));
    g = from_dev(gu, (size_t)M * I);
    for (int m = 0; m < M; m++) {
        memcpy(ref + (size_t)m * I, x + (size_t)m * D, sizeof(float) * I);
        cpu_silu_mul(ref + (size_t)m * I, x + (size_t)m * D + I, I);
    }
    snprintf(sh, sizeof sh, "f32 M=%d I=%d", M, I);
    report("silu_mul", sh, g, ref, (size_t)M * I, 1e-5);
    /* interleaved gate/up columns */
    free(g);
    OK(hmc_silu_mul(xd, gu, HMC_F32, M, I, 1, 0));
    g = from_dev(gu, (size_t)M * I);
    float *up = hm_malloc(sizeof(float) * I);
    for (int m = 0; m < M; m++) {
        for (int i = 0; i < I; i++) ref[(size_t)m * I + i] = x[(size_t)m * D + 2 * i], up[i] = x[(size_t)m * D + 2 * i + 1];
        cpu_silu_mul(ref + (size_t)m * I, up, I);
    }
    free(up);
    snprintf(sh, sizeof sh, "f32 M=%d I=%d interleaved", M, I);
    report("silu_mul", sh, g, ref, (size_t)M * I, 1e-5);
    cudaFree(xd), cudaFree(sd), cudaFree(yd), cudaFree(gu);
    free(x), free(sc), free(ref), free(g);
}

/* cache layout [B][KVH][max_seq][hd]; CPU view of row b as [S][KVH][hd] */
static void cache_rows(const float *cache, int b, int KVH, int max_seq, int hd, int S, float *out)
{
    for (int s = 0; s < S; s++)
        for (int h = 0; h < KVH; h++)
            memcpy(out + ((size_t)s * KVH + h) * hd, cache + (((size_t)b * KVH + h) * max_seq + s) * hd,
                   sizeof(float) * hd);
}

static void check_rope(int B, int T, int H, int KVH, int hd, int pos0, hmc_dtype ct, int use_pos_dev)
{
    const int W = (H + 2 * KVH) * hd, max_seq = pos0 + T + 3;
    size_t nq = (size_t)B * T * W, nc = (size_t)B * KVH * max_seq * hd;
    float *qkv = rvec(nq, 1.0f), *freqs = hm_malloc(sizeof(float) * hd / 2);
    cpu_rope_freqs(freqs, hd, 500000.0f, 32.0f);
    float *qd = dev_f32(qkv, nq), *fd = dev_f32(freqs, hd / 2);
    float *kinit = rvec(nc, 1.0f), *vinit = rvec(nc, 1.0f);
    void *kc = to_dev(kinit, nc, ct), *vc = to_dev(vinit, nc, ct);
    int *pd = NULL;
    if (use_pos_dev) {
        CU(cudaMalloc((void **)&pd, sizeof(int)));
        int p = pos0 - 5;
        CU(cudaMemcpy(pd, &p, sizeof p, cudaMemcpyHostToDevice));
    }
    hmc_rope_args a = {qd, B, T, H, KVH, hd, pd, use_pos_dev ? 5 : pos0, fd, kc, vc, ct, max_seq};
    OK(hmc_rope_append(&a, 0));
    float *g = from_dev(qd, nq);
    /* CPU: rotate q and k of each row; the GPU k/v land in the cache, compared below */
    float *ref = hm_malloc(sizeof(float) * nq);
    memcpy(ref, qkv, sizeof(float) * nq);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            float *r = ref + ((size_t)b * T + t) * W;
            cpu_rope_interleaved(r, 1, H + KVH, hd, pos0 + t, freqs);
            for (int h = 0; h < KVH; h++) {
                size_t o = (((size_t)b * KVH + h) * max_seq + pos0 + t) * hd;
                for (int d = 0; d < hd; d++) {
                    float kv = r[(H + h) * hd + d], vv = r[(H + KVH + h) * hd + d];
                    if (ct == HMC_BF16) kv = hm_bf16_to_f32(hm_f32_to_bf16(kv)), vv = hm_bf16_to_f32(hm_f32_to_bf16(vv));
                    kinit[o + d] = kv, vinit[o + d] = vv;
                }
            }
        }
    /* q part of the rows */
    float *gq = hm_malloc(sizeof(float) * nq), *rq = hm_malloc(sizeof(float) * nq);
    size_t n = 0;
    for (int row = 0; row < B * T; row++)
        for (int i = 0; i < H * hd; i++, n++) gq[n] = g[(size_t)row * W + i], rq[n] = ref[(size_t)row * W + i];
    char sh[96];
    snprintf(sh, sizeof sh, "B=%d T=%d H=%d/%d hd=%d pos=%d%s", B, T, H, KVH, hd, pos0, use_pos_dev ? " (dev)" : "");
    report("rope q", sh, gq, rq, n, 1e-5);
    /* whole caches (untouched entries must stay as they were) */
    float *gk = gpu_down(kc, nc, ct), *gv = gpu_down(vc, nc, ct);
    snprintf(sh, sizeof sh, "%s cache B=%d T=%d KVH=%d hd=%d", dtn(ct), B, T, KVH, hd);
    report("rope k->cache", sh, gk, kinit, nc, 1e-5);
    report("v->cache", sh, gv, vinit, nc, 1e-6);
    cudaFree(qd), cudaFree(fd), cudaFree(kc), cudaFree(vc), cudaFree(pd);
    free(qkv), free(freqs), free(kinit), free(vinit), free(g), free(ref), free(gq), free(rq), free(gk), free(gv);
}

/* qkv GEMV with the rotary epilogue (hmc_gemv_args.rope): the rows against cpu_rmsnorm ->
 * cpu_linear -> cpu_rope_interleaved, the caches against the rotated k and plain v (cache
 * entries of other positions must stay as they were).  An L2 prefetch hint rides along: it must
 * not change anything. */
static void check_gemv_rope(int B, int T, int H, int KVH, int hd, int pos0, hmc_dtype t, int use_pos_dev, int variant)
{
    const int D = 3 * hd < 64 ? 64 : 3 * hd, N = (H + 2 * KVH) * hd, R = B * T, max_seq = pos0 + T + 3;
    const size_t nc = (size_t)B * KVH * max_seq * hd;
    float *W = rvec((size_t)N * D, 1.0f / sqrtf((float)D)), *x = rvec((size_t)R * D, 2.0f), *scale = rvec(D, 1.0f);
    float *freqs = hm_malloc(sizeof(float) * hd / 2);
    cpu_rope_freqs(freqs, hd, 500000.0f, 32.0f);
    void *Wd = to_dev(W, (size_t)N * D, t);
    float *xd = dev_f32(x, (size_t)R * D), *sd = dev_f32(scale, D), *fd = dev_f32(freqs, hd / 2);
    float *yd = dev_poison((size_t)R * N);
    float *kinit = rvec(nc, 1.0f), *vinit = rvec(nc, 1.0f);
    void *kc = to_dev(kinit, nc, t), *vc = to_dev(vinit, nc, t);
    float *pf = rvec(4096, 1.0f), *pfd = dev_f32(pf, 4096);
    int *pd = NULL;
    if (use_pos_dev) {
        CU(cudaMalloc((void **)&pd, sizeof(int)));
        int p = pos0 - 3;
        CU(cudaMemcpy(pd, &p, sizeof p, cudaMemcpyHostToDevice));
    }
    hmc_rope_args ra = {NULL, B, T, H, KVH, hd, pd, use_pos_dev ? 3 : pos0, fd, kc, vc, t, max_seq};
    hmc_gemv_args a = {Wd, t, N, D, NULL, xd, D, R, HMC_IN_RMSNORM, sd, 1e-5f, yd, N, 0, variant};
    a.rope = &ra, a.pf = pfd, a.pf_bytes = 4096 * 4 - 12; /* odd length: rounded down */
    OK(hmc_gemv(&a, 0));
    float *g = from_dev(yd, (size_t)R * N);
    float *in = hm_malloc(sizeof(float) * R * D), *ref = hm_malloc(sizeof(float) * R * N);
    cpu_rmsnorm(x, scale, in, R, D, 1e-5f);
    cpu_linear(in, W, NULL, ref, R, D, N);
    for (int b = 0; b < B; b++)
        for (int tt = 0; tt < T; tt++) {
            float *r = ref + ((size_t)b * T + tt) * N;
            cpu_rope_interleaved(r, 1, H + KVH, hd, pos0 + tt, freqs);
            for (int h = 0; h < KVH; h++) {
                size_t o = (((size_t)b * KVH + h) * max_seq + pos0 + tt) * hd;
                for (int d = 0; d < hd; d++) {
                    float kv = r[(H + h) * hd + d], vv = r[(H + KVH + h) * hd + d];
                    if (t == HMC_BF16) kv = hm_bf16_to_f32(hm_f32_to_bf16(kv)), vv = hm_bf16_to_f32(hm_f32_to_bf16(vv));
                    kinit[o + d] = kv, vinit[o + d] = vv;
                }
            }
        }
    float *gk = gpu_down(kc, nc, t), *gv = gpu_down(vc, nc, t);
    char sh[96];
    snprintf(sh, sizeof sh, "%s B=%d T=%d H=%d/%d hd=%d pos=%d%s v%d", dtn(t), B, T, H, KVH, hd, pos0,
             use_pos_dev ? " (dev)" : "", variant);
    report("gemv+rope qkv", sh, g, ref, (size_t)R * N, 1e-4);
    /* bf16 caches: a value within an ulp of a rounding boundary may round the other way */
    report("gemv+rope k$", sh, gk, kinit, nc, t == HMC_BF16 ? 2e-3 : 1e-4);
    report("gemv+rope v$", sh, gv, vinit, nc, t == HMC_BF16 ? 2e-3 : 1e-4);
    cudaFree(Wd), cudaFree(xd), cudaFree(sd), cudaFree(fd), cudaFree(yd), cudaFree(kc), cudaFree(vc), cudaFree(pfd);
    cudaFree(pd);
    free(W), free(x), free(scale), free(freqs), free(kinit), free(vinit), free(pf), free(g), free(in), free(ref);
    free(gk), free(gv);
}

/* check_attention's engine-like settings: cache rows (and max_keys, as the graphs are recorded
 * for the longest context) beyond the query's keys, filled with NaN; the position read from the
 * device */
static int g_att_extra, g_att_posdev;
/* ... and g_att_early: the launch says its keys below the position are old (early_keys, as the
 * backbone's frame graph does), while the newest keys reach the cache only through the kernel
 * just before it (hmc_rope_append with zero angles: q unchanged, k and v appended); the device's
 * cache holds NaN there until then, so a kernel that read them before its wait would show it */
static int g_att_early;

static void check_attention(int B, int T, int H, int KVH, int hd, int pos0, hmc_dtype ct)
{
    const int W = (H + 2 * KVH) * hd, S = pos0 + T, max_seq = S + 5 + g_att_extra;
    const int max_keys = g_att_extra ? max_seq : S;
    size_t nq = (size_t)B * T * W, nc = (size_t)B * KVH * max_seq * hd;
    float *qkv = rvec(nq, 1.0f), *kc = rvec(nc, 1.0f), *vc = rvec(nc, 1.0f);
    if (g_att_extra) /* rows past the keys: what a kernel reading them unmasked would show */
        for (int bh = 0; bh < B * KVH; bh++)
            for (size_t i = (size_t)S * hd; i < (size_t)max_seq * hd; i++)
                kc[(size_t)bh * max_seq * hd + i] = vc[(size_t)bh * max_seq * hd + i] = NAN;
    /* make the scores spread: larger q */
    for (size_t i = 0; i < nq; i++) qkv[i] *= 3.0f;
    if (g_att_early) /* the new keys are the rows' k and v: what the append below writes */
        for (int b = 0; b < B; b++)
            for (int tt = 0; tt < T; tt++)
                for (int h = 0; h < KVH; h++) {
                    const float *r = qkv + ((size_t)b * T + tt) * W;
                    const size_t o = (((size_t)b * KVH + h) * max_seq + pos0 + tt) * hd;
                    memcpy(kc + o, r + (size_t)(H + h) * hd, sizeof(float) * hd);
                    memcpy(vc + o, r + (size_t)(H + KVH + h) * hd, sizeof(float) * hd);
                }
    float *qd = dev_f32(qkv, nq);
    void *kd = to_dev(kc, nc, ct), *vd = to_dev(vc, nc, ct);
    float *fzero = NULL;
    if (g_att_early) {
        const size_t es = hmc_dtype_size(ct);
        for (int bh = 0; bh < B * KVH; bh++) {
            const size_t o = ((size_t)bh * max_seq + pos0) * hd * es;
            CU(cudaMemset((char *)kd + o, 0xff, (size_t)T * hd * es)); /* NaN until appended */
            CU(cudaMemset((char *)vd + o, 0xff, (size_t)T * hd * es));
        }
        CU(cudaMalloc((void **)&fzero, sizeof(float) * hd / 2));
        CU(cudaMemset(fzero, 0, sizeof(float) * hd / 2));
    }
    float *work;
    CU(cudaMalloc((void **)&work, hmc_attention_work_bytes(B, T, H, KVH, hd, max_keys)));
    CU(cudaMemset(work, 0, hmc_attention_work_bytes(B, T, H, KVH, hd, max_keys)));
    float *od = dev_poison((size_t)B * T * H * hd);
    int *posd = NULL;
    if (g_att_posdev) {
        CU(cudaMalloc((void **)&posd, sizeof(int)));
        CU(cudaMemcpy(posd, &pos0, sizeof(int), cudaMemcpyHostToDevice));
    }
    hmc_attn_args a = {qd, B, T, H, KVH, hd, posd, posd ? 0 : pos0, kd, vd, ct, max_seq, max_keys, od, work};
    a.pf = vd, a.pf_bytes = nc * hmc_dtype_size(ct); /* a prefetch hint changes nothing */
    a.early_keys = g_att_early;
    hmc_rope_args ra = {qd, B, T, H, KVH, hd, posd, posd ? 0 : pos0, fzero, kd, vd, ct, max_seq};
    if (g_att_early) OK(hmc_rope_append(&ra, 0));
    OK(hmc_attention(&a, 0));
    /* again into a re-poisoned output: the merge counters must be back at zero */
    CU(cudaMemsetAsync(od, 0xff, sizeof(float) * B * T * H * hd, 0));
    if (g_att_early) OK(hmc_rope_append(&ra, 0));
    OK(hmc_attention(&a, 0));
    float *g = from_dev(od, (size_t)B * T * H * hd), *ref = hm_malloc(sizeof(float) * B * T * H * hd);
    float *q = hm_malloc(sizeof(float) * T * H * hd), *k = hm_malloc(sizeof(float) * S * KVH * hd),
          *v = hm_malloc(sizeof(float) * S * KVH * hd);
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) memcpy(q + (size_t)t * H * hd, qkv + ((size_t)b * T + t) * W, sizeof(float) * H * hd);
        cache_rows(kc, b, KVH, max_seq, hd, S, k);
        cache_rows(vc, b, KVH, max_seq, hd, S, v);
        cpu_attention(q, k, v, ref + (size_t)b * T * H * hd, T, S, H, KVH, hd, 1, pos0);
    }
    char sh[96];
    snprintf(sh, sizeof sh, "%s B=%d T=%d H=%d/%d hd=%d keys=%d%s%s", dtn(ct), B, T, H, KVH, hd, S,
             g_att_extra ? " (max_keys +)" : "", g_att_early ? " (early keys)" : "");
    report("attention", sh, g, ref, (size_t)B * T * H * hd, 1e-4);
    cudaFree(fzero), cudaFree(posd), cudaFree(qd), cudaFree(kd), cudaFree(vd), cudaFree(work), cudaFree(od);
    free(qkv), free(kc), free(vc), free(g), free(ref), free(q), free(k), free(v);
}

/* The persistent layer stack (hmc_persist) against the CPU op chain: `layers` decoder layers
 * (bf16 weights, interleaved rotary pairs, w1|w3 rows interleaved, bf16 caches with random keys
 * before the position and NaN after it) over R rows at position pos read from the device.  The
 * program runs twice from the same input (its barrier and merge counters must be back at 0);
 * compared: the residual stream and both caches. */
static void check_persist(int R, int D, int H, int KVH, int hd, int I, int layers, int pos, int max_seq)
{
    const int N = (H + 2 * KVH) * hd, HD = H * hd, S = pos + 1;
    const size_t nc = (size_t)R * KVH * max_seq * hd;
    float *freqs = hm_malloc(sizeof(float) * hd / 2);
    cpu_rope_freqs(freqs, hd, 500000.0f, 32.0f);
    float *fd = dev_f32(freqs, hd / 2);
    float *x = rvec((size_t)R * D, 2.0f), *xd = dev_f32(x, (size_t)R * D);
    float *qkvd = dev_poison((size_t)R * N), *attd = dev_poison((size_t)R * HD), *gud = dev_poison((size_t)R * I);
    int *posd;
    CU(cudaMalloc((void **)&posd, sizeof(int)));
    CU(cudaMemcpy(posd, &pos, sizeof(int), cudaMemcpyHostToDevice));
    float **W = hm_malloc(sizeof(float *) * layers * 6), **kc = hm_malloc(sizeof(float *) * layers * 2);
    void **Wd = hm_malloc(sizeof(void *) * layers * 6), **kcd = hm_malloc(sizeof(void *) * layers * 2);
    hmc_pp_phase *ph = hm_malloc(sizeof(hmc_pp_phase) * layers * 5);
    memset(ph, 0, sizeof(hmc_pp_phase) * layers * 5);
    for (int l = 0; l < layers; l++) {
        float **w = W + 6 * l;
        w[0] = rvec((size_t)N * D, 1.0f / sqrtf((float)D)), w[1] = rvec((size_t)D * HD, 1.0f / sqrtf((float)HD));
        w[2] = rvec((size_t)2 * I * D, 1.0f / sqrtf((float)D)), w[3] = rvec((size_t)D * I, 1.0f / sqrtf((float)I));
        w[4] = rvec(D, 1.0f), w[5] = rvec(D, 1.0f); /* the two norm scales */
        const size_t wn[4] = {(size_t)N * D, (size_t)D * HD, (size_t)2 * I * D, (size_t)D * I};
        for (int i = 0; i < 4; i++) Wd[6 * l + i] = to_dev(w[i], wn[i], HMC_BF16);
        Wd[6 * l + 4] = dev_f32(w[4], D), Wd[6 * l + 5] = dev_f32(w[5], D);
        for (int j = 0; j < 2; j++) {
            kc[2 * l + j] = rvec(nc, 1.0f);
            for (int b = 0; b < R * KVH; b++) /* what an unmasked read past the keys would show */
                for (size_t i = (size_t)S * hd; i < (size_t)max_seq * hd; i++) kc[2 * l + j][(size_t)b * max_seq * hd + i] = NAN;
            kcd[2 * l + j] = to_dev(kc[2 * l + j], nc, HMC_BF16);
        }
        hmc_pp_phase *P = ph + 5 * l;
        for (int i = 0; i < 5; i++)
            P[i].H = H, P[i].KVH = KVH, P[i].hd = hd, P[i].max_seq = max_seq, P[i].pos_dev = posd,
            P[i].kc = kcd[2 * l], P[i].vc = kcd[2 * l + 1], P[i].freqs = fd;
        P[0].type = HMC_PP_GEMV, P[0].w = Wd[6 * l], P[0].N = N, P[0].K = D, P[0].x = xd, P[0].ldx = D;
        P[0].in_mode = HMC_IN_RMSNORM, P[0].nscale = Wd[6 * l + 4], P[0].eps = 1e-5f;
        P[0].y = qkvd, P[0].ldy = N, P[0].out = HMC_PP_ROPE;
        P[1].type = HMC_PP_ATTN, P[1].x = qkvd, P[1].ldx = N, P[1].y = attd, P[1].ldy = HD;
        P[2].type = HMC_PP_GEMV, P[2].w = Wd[6 * l + 1], P[2].N = D, P[2].K = HD, P[2].x = attd, P[2].ldx = HD;
        P[2].y = xd, P[2].ldy = D, P[2].out = HMC_PP_ADD;
        P[3].type = HMC_PP_GEMV, P[3].w = Wd[6 * l + 2], P[3].N = 2 * I, P[3].K = D, P[3].x = xd, P[3].ldx = D;
        P[3].in_mode = HMC_IN_RMSNORM, P[3].nscale = Wd[6 * l + 5], P[3].eps = 1e-5f;
        P[3].y = gud, P[3].ldy = I, P[3].out = HMC_PP_SWIGLU;
        P[4].type = HMC_PP_GEMV, P[4].w = Wd[6 * l + 3], P[4].N = D, P[4].K = I, P[4].x = gud, P[4].ldx = I;
        P[4].y = xd, P[4].ldy = D, P[4].out = HMC_PP_ADD;
    }
    hmc_persist *pp;
    OK(hmc_persist_create(&pp, ph, layers * 5, R, S));
    OK(hmc_persist_run(pp, 0));
    CU(cudaMemcpy(xd, x, sizeof(float) * R * D, cudaMemcpyHostToDevice));
    OK(hmc_persist_run(pp, 0));
    float *g = from_dev(xd, (size_t)R * D);
    /* the CPU: layer by layer, row by row */
    float *xn = hm_malloc(sizeof(float) * D), *qkv = hm_malloc(sizeof(float) * N), *att = hm_malloc(sizeof(float) * HD);
    float *gu = hm_malloc(sizeof(float) * 2 * I), *gg = hm_malloc(sizeof(float) * I), *uu = hm_malloc(sizeof(float) * I);
    float *o = hm_malloc(sizeof(float) * D), *k = hm_malloc(sizeof(float) * S * KVH * hd), *v = hm_malloc(sizeof(float) * S * KVH * hd);
    for (int l = 0; l < layers; l++) {
        float **w = W + 6 * l;
        for (int b = 0; b < R; b++) {
            float *xr = x + (size_t)b * D;
            cpu_rmsnorm(xr, w[4], xn, 1, D, 1e-5f);
            cpu_linear(xn, w[0], NULL, qkv, 1, D, N);
            cpu_rope_interleaved(qkv, 1, H + KVH, hd, pos, freqs);
            for (int h = 0; h < KVH; h++)
                for (int d = 0; d < hd; d++) {
                    size_t c = (((size_t)b * KVH + h) * max_seq + pos) * hd + d;
                    kc[2 * l][c] = hm_bf16_to_f32(hm_f32_to_bf16(qkv[(H + h) * hd + d]));
                    kc[2 * l + 1][c] = hm_bf16_to_f32(hm_f32_to_bf16(qkv[(H + KVH + h) * hd + d]));
                }
            cache_rows(kc[2 * l], b, KVH, max_seq, hd, S, k);
            cache_rows(kc[2 * l + 1], b, KVH, max_seq, hd, S, v);
            cpu_attention(qkv, k, v, att, 1, S, H, KVH, hd, 1, pos);
            cpu_linear(att, w[1], NULL, o, 1, HD, D);
            for (int d = 0; d < D; d++) xr[d] += o[d];
            cpu_rmsnorm(xr, w[5], xn, 1, D, 1e-5f);
            cpu_linear(xn, w[2], NULL, gu, 1, D, 2 * I);
            for (int i = 0; i < I; i++) gg[i] = gu[2 * i], uu[i] = gu[2 * i + 1];
            cpu_silu_mul(gg, uu, I);
            cpu_linear(gg, w[3], NULL, o, 1, I, D);
            for (int d = 0; d < D; d++) xr[d] += o[d];
        }
    }
    char sh[112];
    snprintf(sh, sizeof sh, "R=%d D=%d H=%d/%d hd=%d I=%d L=%d keys=%d", R, D, H, KVH, hd, I, layers, S);
    report("persist x", sh, g, x, (size_t)R * D, 2e-3);
    for (int l = 0; l < layers; l++)
        for (int j = 0; j < 2; j++) {
            /* only the keys: past them the cache holds NaN on both sides */
            const size_t rk = (size_t)S * KVH * hd;
            float *gc = gpu_down(kcd[2 * l + j], nc, HMC_BF16);
            float *a = hm_malloc(sizeof(float) * R * rk), *bref = hm_malloc(sizeof(float) * R * rk);
            for (int b = 0; b < R; b++) {
                cache_rows(gc, b, KVH, max_seq, hd, S, a + b * rk);
                cache_rows(kc[2 * l + j], b, KVH, max_seq, hd, S, bref + b * rk);
            }
            report(j ? "persist v$" : "persist k$", sh, a, bref, R * rk, 2e-3);
            free(gc), free(a), free(bref);
        }
    hmc_persist_destroy(pp);
    for (int l = 0; l < layers; l++) {
        for (int i = 0; i < 6; i++) free(W[6 * l + i]), cudaFree(Wd[6 * l + i]);
        for (int j = 0; j < 2; j++) free(kc[2 * l + j]), cudaFree(kcd[2 * l + j]);
    }
    free(W), free(kc), free(Wd), free(kcd), free(ph), free(freqs), free(x), free(g);
    free(xn), free(qkv), free(att), free(gu), free(gg), free(uu), free(o), free(k), free(v);
    cudaFree(fd), cudaFree(xd), cudaFree(qkvd), cudaFree(attd), cudaFree(gud), cudaFree(posd);
}

/* Timing, not a check: a program of GEMV phases only (w1|w3 and w2 shapes of the 3B backbone,
 * `reps` pairs with their own weights, larger than L2) against the copy bandwidth of the same
 * run: how close the ring's weight stream gets to the floor without attention or small GEMVs. */
static void bench_persist(int reps)
{
    const int D = 3072, I = 8192, R = 2;
    const double copy = gpu_copy_bandwidth();
    float *x, *gu, *ns;
    CU(cudaMalloc((void **)&x, sizeof(float) * R * D));
    CU(cudaMalloc((void **)&gu, sizeof(float) * R * I));
    CU(cudaMalloc((void **)&ns, sizeof(float) * D));
    OK(hmc_fill_random(x, HMC_F32, (size_t)R * D, 1, 1.0f, 0));
    OK(hmc_fill_random(ns, HMC_F32, D, 2, 1.0f, 0));
    hmc_pp_phase *ph = hm_malloc(sizeof(hmc_pp_phase) * 2 * reps);
    memset(ph, 0, sizeof(hmc_pp_phase) * 2 * reps);
    void **w = hm_malloc(sizeof(void *) * 2 * reps);
    double bytes = 0;
    for (int i = 0; i < reps; i++) {
        CU(cudaMalloc(&w[2 * i], (size_t)2 * I * D * 2));
        CU(cudaMalloc(&w[2 * i + 1], (size_t)D * I * 2));
        OK(hmc_fill_random(w[2 * i], HMC_BF16, (size_t)2 * I * D, 3 + i, 0.02f, 0));
        OK(hmc_fill_random(w[2 * i + 1], HMC_BF16, (size_t)D * I, 100 + i, 0.01f, 0));
        hmc_pp_phase *P = ph + 2 * i;
        P[0].type = HMC_PP_GEMV, P[0].w = w[2 * i], P[0].N = 2 * I, P[0].K = D, P[0].x = x, P[0].ldx = D;
        P[0].in_mode = HMC_IN_RMSNORM, P[0].nscale = ns, P[0].eps = 1e-5f, P[0].y = gu, P[0].ldy = I;
        P[0].out = HMC_PP_SWIGLU;
        P[1].type = HMC_PP_GEMV, P[1].w = w[2 * i + 1], P[1].N = D, P[1].K = I, P[1].x = gu, P[1].ldx = I;
        P[1].y = x, P[1].ldy = D, P[1].out = HMC_PP_ADD;
        bytes += 3.0 * I * D * 2;
    }
    hmc_persist *pp;
    OK(hmc_persist_create(&pp, ph, 2 * reps, R, 1));
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    OK(hmc_persist_run(pp, 0));
    CU(cudaEventRecord(e0, 0));
    const int runs = 10;
    for (int i = 0; i < runs; i++) OK(hmc_persist_run(pp, 0));
    CU(cudaEventRecord(e1, 0));
    CU(cudaEventSynchronize(e1));
    float ms;
    CU(cudaEventElapsedTime(&ms, e0, e1));
    const double us = ms * 1e3 / runs, bw = bytes / (us * 1e-6);
    printf("persist bench: %d GEMV phases, %.0f MB: %.1f us a run = %.0f GB/s = %.0f%% of copy (%.0f GB/s)\n", 2 * reps,
           bytes / 1e6, us, bw / 1e9, 100.0 * bw / copy, copy / 1e9);
    if (getenv("HM_PP_STAMP")) hmc_persist_stamp_report(pp, stdout);
    hmc_persist_destroy(pp);
    for (int i = 0; i < 2 * reps; i++) cudaFree(w[i]);
    free(w), free(ph);
    cudaFree(x), cudaFree(gu), cudaFree(ns);
    cudaEventDestroy(e0), cudaEventDestroy(e1);
}

static void check_embed(int S, int B, int nc, int Va, int Vt, int D, hmc_dtype t)
{
    float *audio = rvec((size_t)nc * Va * D, 1.0f), *text = rvec((size_t)Vt * D, 1.0f), *unc = rvec(D, 1.0f);
    void *ad = to_dev(audio, (size_t)nc * Va * D, t), *td = to_dev(text, (size_t)Vt * D, t), *ud = to_dev(unc, D, t);
    int32_t *tok = hm_malloc(sizeof(int32_t) * S * (nc + 1));
    uint8_t *mask = hm_malloc((size_t)S * (nc + 1));
    for (int s = 0; s < S; s++)
        for (int k = 0; k <= nc; k++) {
            tok[s * (nc + 1) + k] = (int)((urand() + 1.0f) * 0.5f * (k < nc ? Va : Vt)) % (k < nc ? Va : Vt);
            mask[s * (nc + 1) + k] = urand() > 0.0f;
        }
    int32_t *tokd;
    uint8_t *maskd;
    CU(cudaMalloc((void **)&tokd, sizeof(int32_t) * S * (nc + 1)));
    CU(cudaMalloc((void **)&maskd, (size_t)S * (nc + 1)));
    CU(cudaMemcpy(tokd, tok, sizeof(int32_t) * S * (nc + 1), cudaMemcpyHostToDevice));
    CU(cudaMemcpy(maskd, mask, (size_t)S * (nc + 1), cudaMemcpyHostToDevice));
    float *xd = dev_poison((size_t)B * S * D);
    OK(hmc_embed_prompt(tokd, maskd, S, B, nc, Va, ad, td, ud, t, D, xd, 0));
    float *g = from_dev(xd, (size_t)B * S * D), *ref = hm_calloc((size_t)B * S * D, sizeof(float));
    for (int b = 0; b < B; b++)
        for (int s = 0; s < S; s++) {
            float *o = ref + ((size_t)b * S + s) * D;
            for (int k = 0; k < nc; k++)
                if (mask[s * (nc + 1) + k])
                    for (int d = 0; d < D; d++) o[d] += audio[((size_t)tok[s * (nc + 1) + k] + (size_t)k * Va) * D + d];
            if (mask[s * (nc + 1) + nc])
                for (int d = 0; d < D; d++) o[d] += b == 1 ? unc[d] : text[(size_t)tok[s * (nc + 1) + nc] * D + d];
        }
    char sh[96];
    snprintf(sh, sizeof sh, "%s S=%d B=%d Va=%d D=%d", dtn(t), S, B, Va, D);
    report("embed prompt", sh, g, ref, (size_t)B * S * D, 1e-6);
    /* a frame: all 8 codebooks, no text, same for every row */
    float *fd = dev_poison((size_t)B * D);
    OK(hmc_embed_frame(tokd, B, nc, Va, ad, t, D, fd, 0));
    free(g);
    g = from_dev(fd, (size_t)B * D);
    memset(ref, 0, sizeof(float) * B * D);
    for (int b = 0; b < B; b++)
        for (int k = 0; k < nc; k++)
            for (int d = 0; d < D; d++) ref[(size_t)b * D + d] += audio[((size_t)tok[k] + (size_t)k * Va) * D + d];
    report("embed frame", sh, g, ref, (size_t)B * D, 1e-6);
    cudaFree(ad), cudaFree(td), cudaFree(ud), cudaFree(tokd), cudaFree(maskd), cudaFree(xd), cudaFree(fd);
    free(audio), free(text), free(unc), free(tok), free(mask), free(g), free(ref);
}

/* hmc_transpose16 against a host transpose of the same 16-bit values: equal to the bit. */
static void check_transpose16(int R, int C)
{
    const size_t n = (size_t)R * C;
    uint16_t *h = hm_malloc(2 * n), *g = hm_malloc(2 * n);
    for (size_t i = 0; i < n; i++) h[i] = (uint16_t)(i * 2654435761u >> 7);
    void *in, *out;
    CU(cudaMalloc(&in, 2 * n));
    CU(cudaMalloc(&out, 2 * n));
    CU(cudaMemcpy(in, h, 2 * n, cudaMemcpyHostToDevice));
    CU(cudaMemset(out, 0xff, 2 * n));
    OK(hmc_transpose16(in, R, C, out, 0));
    CU(cudaMemcpy(g, out, 2 * n, cudaMemcpyDeviceToHost));
    size_t bad = 0;
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) bad += g[(size_t)c * R + r] != h[(size_t)r * C + c];
    float fb = (float)bad, zero = 0.0f;
    char sh[96];
    snprintf(sh, sizeof sh, "%d x %d: %zu values differ", R, C, bad);
    report("transpose16", sh, &fb, &zero, 1, 0.0);
    cudaFree(in), cudaFree(out);
    free(h), free(g);
}

static void check_sample(int V, int B)
{
    float *l = rvec((size_t)B * V, 4.0f), *ld = dev_f32(l, (size_t)B * V), *lo = dev_poison(V);
    hmc_sample_params p;
    memset(&p, 0, sizeof p);
    p.temperature = 1.0f, p.cfg_scale = 1.5f, p.topk = 1, p.seed_lo = 1234;
    for (int i = 0; i < 8; i++) p.forced[i] = -1;
    hmc_sample_params *pd;
    uint32_t *cd;
    int32_t *codes;
    CU(cudaMalloc((void **)&pd, sizeof p));
    CU(cudaMalloc((void **)&cd, 4));
    CU(cudaMalloc((void **)&codes, 32));
    CU(cudaMemcpy(pd, &p, sizeof p, cudaMemcpyHostToDevice));
    CU(cudaMemset(cd, 0, 4));
    OK(hmc_sample(ld, B, V, pd, cd, 3, lo, codes, 0));
    float *g = from_dev(lo, V), *ref = hm_malloc(sizeof(float) * V);
    int best = 0;
    for (int i = 0; i < V; i++) {
        ref[i] = B == 2 ? l[V + i] + (l[i] - l[V + i]) * 1.5f : l[i];
        if (ref[i] > ref[best]) best = i;
    }
    char sh[96];
    snprintf(sh, sizeof sh, "V=%d B=%d cfg 1.5", V, B);
    report("cfg combine", sh, g, ref, V, 1e-7);
    int32_t got;
    CU(cudaMemcpy(&got, codes + 3, 4, cudaMemcpyDeviceToHost));
    float fg = (float)got, fb = (float)best;
    snprintf(sh, sizeof sh, "V=%d argmax id %d vs %d", V, got, best);
    report("sample top1", sh, &fg, &fb, 1, 0.0);
    free(g), free(ref);
    /* top-k distribution: empirical frequencies of many draws vs the renormalised softmax */
    const int k = 5, n = 20000;
    const float temp = 0.7f;
    p.topk = k, p.temperature = temp;
    CU(cudaMemcpy(pd, &p, sizeof p, cudaMemcpyHostToDevice));
    float *comb = hm_malloc(sizeof(float) * V);
    for (int i = 0; i < V; i++) comb[i] = B == 2 ? l[V + i] + (l[i] - l[V + i]) * 1.5f : l[i];
    float kth;
    {
        float *srt = hm_malloc(sizeof(float) * V);
        memcpy(srt, comb, sizeof(float) * V);
        for (int i = 0; i < k; i++)
            for (int j = i + 1; j < V; j++)
                if (srt[j] > srt[i]) { float tt = srt[i]; srt[i] = srt[j]; srt[j] = tt; }
        kth = srt[k - 1];
        free(srt);
    }
    double *pr = hm_calloc(V, sizeof(double)), z = 0;
    for (int i = 0; i < V; i++)
        if (comb[i] >= kth) pr[i] = exp((comb[i] - kth) / temp), z += pr[i];
    double *fr = hm_calloc(V, sizeof(double));
    int32_t *draws = hm_malloc(sizeof(int32_t) * n);
    int32_t *dd;
    CU(cudaMalloc((void **)&dd, sizeof(int32_t) * n));
    for (int i = 0; i < n; i++) {
        CU(cudaMemcpyAsync(cd, &i, 4, cudaMemcpyHostToDevice, 0));
        OK(hmc_sample(ld, B, V, pd, cd, 0, NULL, dd + i, 0));
    }
    CU(cudaMemcpy(draws, dd, sizeof(int32_t) * n, cudaMemcpyDeviceToHost));
    int outside = 0;
    for (int i = 0; i < n; i++) {
        if (draws[i] < 0 || draws[i] >= V || pr[draws[i]] == 0) outside++;
        else fr[draws[i]] += 1.0 / n;
    }
    float fe[8] = {0}, fp[8] = {0};
    int m = 0;
    for (int i = 0; i < V && m < 8; i++)
        if (pr[i] > 0) fe[m] = (float)fr[i], fp[m] = (float)(pr[i] / z), m++;
    snprintf(sh, sizeof sh, "V=%d k=%d T=%.1f %d draws (%d outside)", V, k, temp, n, outside);
    if (outside) fe[0] = NAN;
    report("sample top-k", sh, fe, fp, m, 0.03);
    cudaFree(ld), cudaFree(lo), cudaFree(pd), cudaFree(cd), cudaFree(codes), cudaFree(dd);
    free(l), free(comb), free(pr), free(fr), free(draws);
}

int main(int argc, char **argv)
{
    uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 20);
    g_rng = seed * 2654435761ull + 1;
    printf("gpu_ops seed %llu\n", (unsigned long long)seed);
    CU(cudaSetDevice(0));
    const int only_persist = argc > 2 && !strcmp(argv[2], "persist");
    if (only_persist) goto persist;
    /* GEMV at the released sizes (3B backbone, 300M decoder, heads) and the tiny fixture's */
    check_gemv(5120, 3072, 2, HMC_IN_RMSNORM, HMC_BF16, 0);  /* backbone qkv */
    check_gemv(3072, 3072, 2, HMC_IN_PLAIN, HMC_BF16, 1);    /* o_proj += */
    check_gemv(16384, 3072, 2, HMC_IN_RMSNORM, HMC_BF16, 0); /* w1|w3 */
    check_gemv(3072, 8192, 2, HMC_IN_SWIGLU, HMC_BF16, 1);   /* w2 += */
    check_gemv(8197, 3072, 2, HMC_IN_PLAIN, HMC_BF16, 0);    /* codebook0 head */
    check_gemv(8197, 3072, 1, HMC_IN_RMSNORM, HMC_BF16, 0);  /* audio head, B=1 */
    check_gemv(3072, 8192, 4, HMC_IN_SWIGLU, HMC_BF16, 1);   /* decoder step 1 (2 positions x 2 rows) */
    check_gemv(3072, 8192, 4, HMC_IN_PLAIN, HMC_BF16, 1);    /* ... w2 += as the engine runs it: wide blocks */
    check_gemv(3072, 8192, 4, HMC_IN_PLAIN, HMC_F32, 1);
    check_gemv(3072, 3072, 3, HMC_IN_RMSNORM, HMC_BF16, 0);
    check_gemv(48, 64, 2, HMC_IN_PLAIN, HMC_BF16, 0);        /* tiny projection */
    check_gemv(69, 48, 1, HMC_IN_RMSNORM, HMC_BF16, 0);      /* tiny head */
    for (int v = 1; v <= HMC_GEMV_VARIANTS; v++) {
        check_gemv_v(3072, 3072, 2, HMC_IN_RMSNORM, HMC_BF16, 1, v);
        check_gemv_v(69, 48, 3, HMC_IN_PLAIN, HMC_BF16, 0, v);
        check_gemv_v(3072, 8192, 1, HMC_IN_SWIGLU, HMC_BF16, 0, v);
        check_gemv_v(1000, 3072, 4, HMC_IN_RMSNORM, HMC_FP8, 0, v);
    }
    /* the tuning knobs of the launcher (second-step loads and L2 self-prefetch before the wait)
     * must not change results */
    printf("(GEMV launcher knobs on: early loads, self-prefetch)\n");
    hmc_gemv_set_early_loads(1), hmc_gemv_set_self_prefetch(1);
    for (int v = 1; v <= 5; v += 2) {
        check_gemv_v(3072, 3072, 2, HMC_IN_RMSNORM, HMC_BF16, 1, v);
        check_gemv_v(69, 48, 3, HMC_IN_PLAIN, HMC_BF16, 0, v);
        check_gemv_v(3072, 8192, 4, HMC_IN_SWIGLU, HMC_BF16, 0, v);
        check_gemv_swiglu_out(1000, 128, 3, HMC_BF16, v);
    }
    hmc_gemv_set_early_loads(0), hmc_gemv_set_self_prefetch(0);
    /* the weight loads' L2 policy (evict first by default) must not change results either */
    printf("(GEMV weight loads with an evict-normal L2 policy)\n");
    const int ef = hmc_gemv_evict_first();
    hmc_gemv_set_evict_first(0);
    check_gemv_v(3072, 3072, 2, HMC_IN_RMSNORM, HMC_BF16, 1, 0);
    check_gemv_v(1000, 3072, 4, HMC_IN_RMSNORM, HMC_FP8, 0, 0);
    hmc_gemv_set_evict_first(ef); /* as the environment set it */
    check_gemv_swiglu_out(16384, 3072, 2, HMC_BF16, 0);
    check_gemv_swiglu_out(16384, 3072, 4, HMC_BF16, 0);
    check_gemv_swiglu_out(192, 64, 1, HMC_F32, 0);
    check_gemv_swiglu_out(4096, 3072, 2, HMC_FP8, 0);
    for (int v = 1; v <= HMC_GEMV_VARIANTS; v++) check_gemv_swiglu_out(1000, 128, 3, HMC_BF16, v);
    check_gemv(5120, 3072, 2, HMC_IN_RMSNORM, HMC_F32, 0);
    check_gemv(64, 128, 4, HMC_IN_SWIGLU, HMC_F32, 1);
    check_gemv(3072, 8192, 2, HMC_IN_SWIGLU, HMC_FP8, 1);
    check_gemv(16384, 3072, 2, HMC_IN_RMSNORM, HMC_FP8, 0);
    check_gemm(256, 5120, 3072, HMC_BF16, 0);
    check_gemm(256, 3072, 8192, HMC_BF16, 1);
    check_gemm(42, 128, 64, HMC_F32, 0);
    check_gemm(42, 64, 128, HMC_F32, 1);
    check_rmsnorm_silu(4, 3072);
    check_rmsnorm_silu(3, 96);
    check_rmsnorm_silu(2, 4100); /* rows past 16 values a thread: the loop */
    check_rmsnorm_silu(2, 4096);
    check_rope(2, 1, 24, 8, 128, 8190, HMC_BF16, 1);
    check_rope(2, 2, 8, 4, 384, 0, HMC_BF16, 0);
    check_rope(2, 5, 4, 2, 12, 17, HMC_F32, 0);
    check_gemv_rope(2, 1, 24, 8, 128, 8190, HMC_BF16, 1, 0); /* backbone qkv + rope + append */
    check_gemv_rope(2, 2, 8, 4, 384, 0, HMC_BF16, 0, 0);     /* decoder step 1 */
    check_gemv_rope(2, 1, 8, 4, 384, 5, HMC_BF16, 0, 0);     /* decoder later step */
    check_gemv_rope(1, 1, 4, 2, 16, 20, HMC_F32, 1, 0);      /* tiny backbone, fp32 */
    check_gemv_rope(2, 2, 4, 2, 12, 0, HMC_F32, 0, 0);       /* tiny decoder, fp32 */
    for (int v = 1; v <= 6; v++) check_gemv_rope(2, 1, 8, 4, 64, 77, HMC_BF16, 0, v);
    check_attention(2, 1, 24, 8, 128, 8191, HMC_BF16);  /* decode at 8192 keys */
    check_attention(2, 1, 24, 8, 128, 3799, HMC_BF16);  /* decode at 3800 keys */
    for (int n = 8; n <= 32; n *= 2) { /* the chunk-count knob (also the counters' place) */
        printf("(attention: at most %d chunks)\n", n);
        hmc_attention_set_max_chunks(n);
        check_attention(2, 1, 24, 8, 128, 3799, HMC_BF16);
        check_attention(2, 1, 24, 8, 128, 200, HMC_BF16);
        check_attention(2, 37, 24, 8, 128, 300, HMC_BF16);
    }
    hmc_attention_set_max_chunks(64);
    check_attention(1, 1, 24, 8, 128, 700, HMC_BF16);
    check_attention(2, 2, 8, 4, 384, 0, HMC_BF16);      /* decoder step 1 */
    check_attention(2, 1, 8, 4, 384, 6, HMC_BF16);      /* decoder last step */
    check_attention(2, 37, 24, 8, 128, 300, HMC_BF16);  /* prefill chunk, causal */
    check_attention(2, 21, 4, 2, 16, 0, HMC_F32);       /* tiny backbone prompt */
    check_attention(2, 1, 4, 2, 12, 7, HMC_F32);        /* tiny decoder */
    /* the decode launches around the one-pass threshold, as the engine makes them (position on
     * the device, max_keys the longest context, NaN in the cache past the keys) */
    for (int v = 0; v < 4; v++) { /* device's choice per query head, per kv head; by max_keys; split only */
        const int th = v < 3 ? 512 : 0;
        printf("(attention: one pass up to %d keys, %s, %s)\n", th, v == 1 ? "per kv head" : "per query head",
               v < 2 ? "chosen on the device" : "when max_keys allows");
        hmc_attention_set_single(th, v != 1, v < 2);
        g_att_extra = 300, g_att_posdev = 1;
        const int keys[] = {1, 7, 8, 9, 64, 65, 200, th - 1, th, th + 1};
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
            if (keys[i] < 1) continue;
            check_attention(2, 1, 24, 8, 128, keys[i] - 1, HMC_BF16); /* backbone, G = 3 */
            check_attention(1, 1, 24, 8, 128, keys[i] - 1, HMC_BF16);
        }
        for (int k = 1; k <= 8; k++) check_attention(2, 1, 8, 4, 384, k - 1, HMC_BF16); /* decoder, G = 2 */
        check_attention(2, 2, 8, 4, 384, 0, HMC_BF16);  /* decoder step 1 (B*T = 4) */
        check_attention(1, 2, 8, 4, 384, 5, HMC_BF16);
        check_attention(2, 1, 8, 4, 384, 7, HMC_F32);
        check_attention(2, 1, 16, 4, 64, 199, HMC_F32); /* G = 4 */
        check_attention(2, 1, 8, 8, 128, 199, HMC_BF16); /* G = 1 */
        check_attention(1, 1, 4, 2, 12, 6, HMC_F32);
        check_attention(2, 1, 4, 2, 256, 40, HMC_F32);  /* hd 256 */
        check_attention(2, 1, 24, 8, 128, 3799, HMC_BF16); /* the split path of the same launch */
        g_att_extra = 0, g_att_posdev = 0;
        check_attention(2, 1, 24, 8, 128, 3799, HMC_BF16);
        check_attention(2, 1, 24, 8, 128, 8191, HMC_BF16);
        check_attention(2, 37, 24, 8, 128, 300, HMC_BF16);  /* prefill: never one pass */
    }
    /* the chunks of a short decode context merged in a thread-block cluster (hmc_attention_set_cluster),
     * as the engine launches them (position on the device, NaN past the keys), max_keys up to the
     * cluster's reach; one pass off so that every backbone launch takes the cluster */
    hmc_attention_set_single(0, 1, 0);
    for (int cl = 8; cl <= 16; cl += 8) {
        printf("(attention: chunks merged in a cluster of %d blocks)\n", cl);
        hmc_attention_set_cluster(cl, 64);
        g_att_extra = 300, g_att_posdev = 1;
        const int keys[] = {1, 2, 15, 16, 17, 64, 200, 511, 700};
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
            if (keys[i] + 5 + 300 > cl * 64) continue; /* max_keys past the cluster's reach: the split */
            check_attention(2, 1, 24, 8, 128, keys[i] - 1, HMC_BF16); /* backbone, G = 3 */
            check_attention(1, 1, 24, 8, 128, keys[i] - 1, HMC_BF16);
        }
        check_attention(2, 1, 16, 4, 64, 199, HMC_F32);  /* G = 4 */
        check_attention(2, 1, 8, 8, 128, 199, HMC_BF16); /* G = 1 */
        check_attention(2, 1, 4, 2, 12, 6, HMC_F32);     /* tiny */
        g_att_extra = 0, g_att_posdev = 0;
        check_attention(2, 1, 24, 8, 128, 200, HMC_BF16);
        check_attention(2, 37, 24, 8, 128, 300, HMC_BF16); /* prefill: never the cluster */
    }
    hmc_attention_set_cluster(0, 64);
    /* decode keys staged by bulk copies (hmc_attention_set_bulk), as the engine launches it:
     * position on the device, max_keys the longest context, NaN in the cache past the keys;
     * from key 0 on, from the default 512 on, and off */
    hmc_attention_set_single(0, 1, 0); /* the split kernel for every key count */
    const int bk_min[] = {0, -1, 0};
    for (int v = 0; v < 3; v++) {
        printf("(attention: bulk key tiles %s from %d keys)\n", v < 2 ? "on" : "off", bk_min[v]);
        hmc_attention_set_bulk(v < 2, bk_min[v]);
        g_att_extra = 300, g_att_posdev = 1;
        const int keys[] = {1, 15, 16, 17, 31, 32, 33, 200, 511, 512, 513, 1025, 3800};
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
            check_attention(2, 1, 24, 8, 128, keys[i] - 1, HMC_BF16); /* backbone, G = 3 */
            check_attention(1, 1, 24, 8, 128, keys[i] - 1, HMC_F32);
        }
        check_attention(2, 2, 24, 8, 128, 1099, HMC_BF16); /* B*T = 4, causal */
        check_attention(2, 1, 16, 4, 64, 1999, HMC_F32);   /* G = 4, hd 64 */
        check_attention(2, 1, 8, 8, 128, 1999, HMC_BF16);  /* G = 1 */
        check_attention(1, 1, 4, 2, 12, 1100, HMC_F32);    /* hd 12 f32: 48-byte rows */
        check_attention(1, 1, 4, 2, 12, 1100, HMC_BF16);   /* hd 12 bf16: 24-byte rows, no bulk */
        check_attention(2, 1, 4, 2, 16, 1040, HMC_F32);    /* the tiny fixture's backbone */
        g_att_extra = 0, g_att_posdev = 0;
        check_attention(2, 1, 24, 8, 128, 8191, HMC_BF16);
        check_attention(2, 37, 24, 8, 128, 1300, HMC_BF16); /* prefill: register path */
    }
    hmc_attention_set_bulk(1, -1);
    /* early keys (hmc_attn_args.early_keys): the split decode launch reads the position and the
     * keys below it before its wait, the appended ones after it (register path, bulk tiles from
     * key 0 and from 512 keys on, as the backbone's graph launches it) */
    for (int v = 0; v < 3; v++) {
        printf("(attention: early keys, bulk key tiles %s from %d keys)\n", v < 2 ? "on" : "off", bk_min[v]);
        hmc_attention_set_bulk(v < 2, bk_min[v]);
        g_att_extra = 300, g_att_posdev = 1, g_att_early = 1;
        const int keys[] = {1, 2, 15, 16, 17, 31, 32, 33, 64, 65, 200, 511, 512, 513, 545, 1025, 3800};
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
            check_attention(2, 1, 24, 8, 128, keys[i] - 1, HMC_BF16); /* backbone, G = 3 */
            check_attention(1, 1, 24, 8, 128, keys[i] - 1, HMC_F32);
        }
        check_attention(2, 1, 16, 4, 64, 1999, HMC_F32);   /* G = 4, hd 64 */
        check_attention(2, 1, 8, 8, 128, 199, HMC_BF16);   /* G = 1 */
        check_attention(1, 1, 4, 2, 12, 1100, HMC_BF16);   /* hd 12 bf16: no bulk */
        check_attention(2, 1, 4, 2, 16, 40, HMC_F32);      /* the tiny fixture's backbone */
        check_attention(2, 2, 24, 8, 128, 1099, HMC_BF16); /* T = 2: the flag is not taken */
        g_att_extra = 0, g_att_posdev = 0;
        check_attention(2, 1, 24, 8, 128, 8191, HMC_BF16); /* no position on the device: not taken */
        g_att_early = 0;
    }
    hmc_attention_set_bulk(1, -1);
    hmc_attention_set_single(512, 1, 0);
persist:
    /* the persistent layer stack: backbone and decoder shapes, short and long contexts, one row */
    check_persist(2, 3072, 24, 8, 128, 8192, 2, 199, 8192);
    check_persist(2, 3072, 24, 8, 128, 8192, 1, 3799, 8192);
    check_persist(2, 3072, 24, 8, 128, 8192, 1, 8191, 8192);
    check_persist(2, 3072, 8, 4, 384, 8192, 3, 5, 8);
    check_persist(1, 3072, 24, 8, 128, 8192, 1, 0, 64);
    check_persist(2, 256, 4, 2, 64, 512, 3, 130, 200);  /* rows fewer than blocks x warps */
    check_persist(1, 64, 4, 2, 16, 128, 2, 9, 16);      /* the tiny fixture's shapes */
    if (only_persist) {
        bench_persist(4);
        goto done;
    }
    check_embed(40, 2, 8, 8197, 4096, 3072, HMC_BF16);
    check_embed(21, 2, 8, 69, 1024, 64, HMC_F32);
    check_transpose16(3072, 8197);
    check_transpose16(77, 69);
    check_transpose16(1, 33);
    check_sample(8197, 2);
    check_sample(8197, 1);
    check_sample(69, 2);
done:
    printf("gpu_ops: %d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
