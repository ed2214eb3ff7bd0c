/* gpu_quant.c - quantised language-model weights on the GPU (kernels/gemv_quant.cu, lm_cuda fp8/nvfp4).
 *   gpu_quant ops
 *       GEMV op checks: weights drawn as bf16 on the device and quantised there (fp8 per-row, NVFP4),
 *       against a CPU twin that decodes the same bytes and takes the dot products in double (relative
 *       L2 <= 2e-3: the kernels round activations to f16); the bf16 dequantiser (prefill) likewise;
 *       the quantisation error itself (informational); both decode kernels (the 8-row and the
 *       streaming one, every variant), the rotary epilogue against hmc_rope_append, the streaming
 *       kernel against the 8-row one; then per layer shape (backbone, depth decoder with T = 2):
 *       us and GB/s against the copy bandwidth of the 8-row kernel, the default and every
 *       streaming variant, bf16 of the same shape beside them.
 *   gpu_quant rope
 *       The rotary epilogue's checks alone, on both kernels (fp8 and NVFP4).
 *   gpu_quant guard [FRAMES]
 *       The quality guard: a seeded random model of the released shapes (3B backbone, 300M decoder)
 *       as bf16, then as fp8 and nvfp4 quantised from the same bf16 values.  The bf16 model samples
 *       FRAMES (200) frames (CFG 1.5, top-k 50); each quantised model is teacher-forced with them
 *       (lm_cuda_sampling.forced) and KL(bf16 || quant) of softmax(logits) (temperature 1, full
 *       vocabulary) is taken for codebook 0 and codebooks 1..7, with the top-1 agreement.  Also ms
 *       per frame (same run, same card; A/B: the 8-row kernel, the streaming kernel and its
 *       settings, the rotary epilogue off), the model's resident bytes whole and per half
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
#include "wquant.h"

#include "gpu_check.h"

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
    if (t == HMC_NVFP4) wq_nvfp4_unpack(wq, n / 2); /* from the GEMV layout (the CPU twin's inverse) */
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
    else {
        OK(hmc_quantize_nvfp4(wb, N, K, *wq, *sc, 0));
        OK(hmc_nvfp4_pack(*wq, N, K, 0)); /* the GEMV layout, as the engine loads it */
    }
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
    double err = gpu_relerr(g, ref, (size_t)rows * nout, &nf);
    gpu_verdict(!nf && err <= 2e-3, "gemv %-5s N=%5d K=%5d rows=%d %-7s%s%s v%d  rel L2 %.2e (<= 2e-3)%s", qname(t), N, K,
            rows, mode == 1 ? "rmsnorm" : mode == 2 ? "swiglu" : "plain", acc ? " +=" : "", oswi ? " ->swiglu" : "",
            variant, err, nf ? " NON-FINITE" : "");
    cudaFree(wb), cudaFree(wq), cudaFree(sc), cudaFree(xd), cudaFree(nsd), cudaFree(yd);
    free(x), free(ns), free(y0), free(g), free(w), free(in), free(ref);
}

/* The rotary epilogue (hmc_gemv_args.rope; the streaming or the 8-row kernel, as the impl knob
 * routes) against the same GEMV without it followed by hmc_rope_append: q rows of y and both
 * caches must be the same bits (same arithmetic, the same roundings). */
static void check_rope(hmc_dtype t, int H, int KVH, int hd, int B, int T, int use_pos_dev)
{
    const int N = (H + 2 * KVH) * hd, K = 3072, rows = B * T, max_seq = 16;
    void *wb, *wq;
    float *sc;
    CU(cudaMalloc(&wb, (size_t)N * K * 2));
    OK(hmc_fill_random(wb, HMC_BF16, (size_t)N * K, 4242 + N, 1.0f / sqrtf((float)K), 0));
    quantize_dev(wb, t, N, K, &wq, &sc);
    float *x = rvec((size_t)rows * K, 2.0f), *ns = rvec(K, 1.0f), *fr = hm_malloc(sizeof(float) * hd / 2);
    for (int i = 0; i < hd / 2; i++) fr[i] = powf(500000.0f, -2.0f * i / hd);
    float *xd, *nsd, *frd, *y1, *y2;
    int *posd, pos = 7;
    const size_t cache = (size_t)B * KVH * max_seq * hd;
    void *k1, *v1, *k2, *v2;
    CU(cudaMalloc((void **)&xd, sizeof(float) * rows * K));
    CU(cudaMalloc((void **)&nsd, sizeof(float) * K));
    CU(cudaMalloc((void **)&frd, sizeof(float) * hd / 2));
    CU(cudaMalloc((void **)&y1, sizeof(float) * rows * N));
    CU(cudaMalloc((void **)&y2, sizeof(float) * rows * N));
    CU(cudaMalloc((void **)&posd, sizeof(int)));
    void **cs[4] = {&k1, &v1, &k2, &v2};
    for (int i = 0; i < 4; i++) {
        CU(cudaMalloc(cs[i], cache * 2));
        CU(cudaMemset(*cs[i], 0, cache * 2));
    }
    CU(cudaMemcpy(xd, x, sizeof(float) * rows * K, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(nsd, ns, sizeof(float) * K, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(frd, fr, sizeof(float) * hd / 2, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(posd, &pos, sizeof(int), cudaMemcpyHostToDevice));
    hmc_rope_args ra = {y1, B, T, H, KVH, hd, use_pos_dev ? posd : NULL, use_pos_dev ? 0 : 1, frd, k1, v1, HMC_BF16, max_seq};
    hmc_gemv_args a = {wq, t, N, K, sc, xd, K, rows, HMC_IN_RMSNORM, nsd, 1e-5f, y1, N, 0};
    OK(hmc_gemv(&a, 0));
    OK(hmc_rope_append(&ra, 0));
    hmc_rope_args rb = ra;
    rb.qkv = NULL, rb.k_cache = k2, rb.v_cache = v2;
    a.y = y2, a.rope = &rb;
    OK(hmc_gemv(&a, 0));
    float *g1 = gpu_down(y1, (size_t)rows * N, HMC_F32), *g2 = gpu_down(y2, (size_t)rows * N, HMC_F32);
    float *ck1 = gpu_down(k1, cache, HMC_BF16), *ck2 = gpu_down(k2, cache, HMC_BF16);
    float *cv1 = gpu_down(v1, cache, HMC_BF16), *cv2 = gpu_down(v2, cache, HMC_BF16);
    double dq = 0, dk = 0, dv = 0, mq = 0;
    int nz = 0;
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < H * hd; i++) {
            const size_t o = (size_t)r * N + i;
            dq = fmax(dq, fabs((double)g1[o] - g2[o])), mq = fmax(mq, fabs((double)g1[o]));
        }
    for (size_t i = 0; i < cache; i++) {
        dk = fmax(dk, fabs((double)ck1[i] - ck2[i])), dv = fmax(dv, fabs((double)cv1[i] - cv2[i]));
        nz += ck2[i] != 0.0f;
    }
    gpu_verdict(dq == 0.0 && dk == 0.0 && dv == 0.0 && nz > 0,
            "gemv %-5s + rotary epilogue (H %d, KVH %d, hd %d, B %d, T %d, pos %s) vs gemv + hmc_rope_append: max |diff| q "
            "%.2g (|q| %.2g), k cache %.2g (bf16), v cache %.2g", qname(t), H, KVH, hd, B, T, use_pos_dev ? "device" : "add",
            dq, mq, dk, dv);
    cudaFree(wb), cudaFree(wq), cudaFree(sc), cudaFree(xd), cudaFree(nsd), cudaFree(frd), cudaFree(y1), cudaFree(y2);
    cudaFree(posd), cudaFree(k1), cudaFree(v1), cudaFree(k2), cudaFree(v2);
    free(x), free(ns), free(fr), free(g1), free(g2), free(ck1), free(ck2), free(cv1), free(cv2);
}

/* The streaming kernel against the 8-row kernel on the same bytes: only the fp32 summation order
 * differs, so the outputs agree to ~1e-7 relative. */
static void check_old_new(hmc_dtype t, int N, int K, int rows, int mode, int oswi)
{
    const int xw = mode == HMC_IN_SWIGLU ? 2 * K : K, nout = oswi ? N / 2 : N;
    void *wb, *wq;
    float *sc;
    CU(cudaMalloc(&wb, (size_t)N * K * 2));
    OK(hmc_fill_random(wb, HMC_BF16, (size_t)N * K, 99 + N, 1.0f / sqrtf((float)K), 0));
    quantize_dev(wb, t, N, K, &wq, &sc);
    float *xd, *nsd, *y1, *y2;
    CU(cudaMalloc((void **)&xd, sizeof(float) * rows * xw));
    CU(cudaMalloc((void **)&nsd, sizeof(float) * K));
    CU(cudaMalloc((void **)&y1, sizeof(float) * rows * nout));
    CU(cudaMalloc((void **)&y2, sizeof(float) * rows * nout));
    OK(hmc_fill_random(xd, HMC_F32, (size_t)rows * xw, 5, 2.0f, 0));
    OK(hmc_fill_random(nsd, HMC_F32, K, 6, 1.0f, 0));
    hmc_gemv_args a = {wq, t, N, K, sc, xd, xw, rows, mode, nsd, 1e-5f, y1, nout, 0, 0, oswi};
    hmc_gemv_quant_set_impl(1);
    OK(hmc_gemv(&a, 0));
    hmc_gemv_quant_set_impl(2);
    a.y = y2;
    OK(hmc_gemv(&a, 0));
    hmc_gemv_quant_set_impl(0);
    float *g1 = gpu_down(y1, (size_t)rows * nout, HMC_F32), *g2 = gpu_down(y2, (size_t)rows * nout, HMC_F32);
    int nf = 0;
    double e = gpu_relerr(g2, g1, (size_t)rows * nout, &nf);
    gpu_verdict(!nf && e <= 1e-5, "gemv %-5s N=%5d K=%5d rows=%d%s%s streaming vs 8-row kernel: rel L2 %.2e (<= 1e-5, fp32 "
            "summation order)", qname(t), N, K, rows, mode == 1 ? " rmsnorm" : mode == 2 ? " swiglu" : "",
            oswi ? " ->swiglu" : "", e);
    cudaFree(wb), cudaFree(wq), cudaFree(sc), cudaFree(xd), cudaFree(nsd), cudaFree(y1), cudaFree(y2);
    free(g1), free(g2);
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
    int nf = 0, nf2 = 0;
    double eq = gpu_relerr(w, w0, (size_t)N * K, &nf), ed = gpu_relerr(wd, w, (size_t)N * K, &nf2);
    gpu_verdict(!nf && !nf2 && ed <= 4e-3, "dequantise %-5s N=%d K=%d  rel L2 vs CPU decode %.2e (<= 4e-3, bf16 rounding)", qname(t),
            N, K, ed);
    printf("     quantisation error of %s (uniform random weights): rel L2 %.3e\n", qname(t), eq);
    /* the prefill's row chunks (lm_cuda gemm_w): rows n0.. dequantised alone equal the whole
     * matrix's, and the chunked GEMM into y's columns (hmc_gemm_ld) equals the whole GEMM */
    {
        const int M = 37, rows = HM_MAX(64, N / 3 / 64 * 64);
        void *part, *xb;
        float *y1, *y2;
        CU(cudaMalloc(&part, (size_t)rows * K * 2));
        CU(cudaMalloc(&xb, (size_t)M * K * 2));
        CU(cudaMalloc((void **)&y1, sizeof(float) * (size_t)M * N));
        CU(cudaMalloc((void **)&y2, sizeof(float) * (size_t)M * N));
        OK(hmc_fill_random(xb, HMC_BF16, (size_t)M * K, 78, 1.0f, 0));
        OK(hmc_fill_random(y1, HMC_F32, (size_t)M * N, 79, 1.0f, 0));
        CU(cudaMemcpy(y2, y1, sizeof(float) * (size_t)M * N, cudaMemcpyDeviceToDevice));
        OK(hmc_gemm(xb, dq, HMC_BF16, y1, M, N, K, 1, 0)); /* accumulate, as o and w2 do */
        size_t differ = 0;
        for (int n0 = 0; n0 < N; n0 += rows) {
            const int nr = HM_MIN(rows, N - n0);
            OK(hmc_dequantize_rows(wq, t, sc, N, K, n0, nr, part, 0));
            CU(cudaDeviceSynchronize());
            float *a = bf16_dev_to_f32(part, (size_t)nr * K);
            float *b = bf16_dev_to_f32((char *)dq + (size_t)n0 * K * 2, (size_t)nr * K);
            for (size_t i = 0; i < (size_t)nr * K; i++) differ += a[i] != b[i];
            free(a), free(b);
            OK(hmc_gemm_ld(xb, part, HMC_BF16, y2 + n0, N, M, nr, K, 1, 0));
        }
        CU(cudaDeviceSynchronize());
        float *g1 = gpu_down(y1, (size_t)M * N, HMC_F32), *g2 = gpu_down(y2, (size_t)M * N, HMC_F32);
        int nf3 = 0;
        double eg = gpu_relerr(g2, g1, (size_t)M * N, &nf3);
        gpu_verdict(!differ && !nf3 && eg <= 1e-6, "dequantise %-5s N=%d K=%d in chunks of %d rows: %zu values differ; chunked "
                    "GEMM (+=) vs whole: rel L2 %.2e (<= 1e-6)", qname(t), N, K, rows, differ, eg);
        cudaFree(part), cudaFree(xb), cudaFree(y1), cudaFree(y2);
        free(g1), free(g2);
    }
    cudaFree(wb), cudaFree(wq), cudaFree(sc), cudaFree(dq);
    free(w0), free(wd), free(w);
}

static char g_table[32768];
static size_t g_tab_len;

static void bench_shape(const char *name, int N, int K, int rows, int mode, int oswi, double bw)
{
    const int xw = mode == HMC_IN_SWIGLU ? 2 * K : K, nout = oswi ? N / 2 : N;
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
    const double ub = gpu_time_gemv(&a, wb, NULL, copies, st);
    /* the 8-row kernel (auto), the default (per type: fp8 streaming, NVFP4 8-row), then the
     * streaming kernel's variants 1..12 with 1 and 2 resident blocks per SM */
    double o8, o4, u8[40], u4[40];
    hmc_gemv_quant_set_impl(1);
    a.wdt = HMC_FP8, o8 = gpu_time_gemv(&a, w8, s8, copies, st);
    a.wdt = HMC_NVFP4, o4 = gpu_time_gemv(&a, w4, s4, copies, st);
    hmc_gemv_quant_set_impl(0);
    static const int bpss[2] = {1, 2};
    int b8v = 0, b4v = 0; /* index into u8 / u4: 0 default, 1 + 13 * bi + (v - 1) */
    a.variant = 0, a.wdt = HMC_FP8, u8[0] = gpu_time_gemv(&a, w8, s8, copies, st);
    a.wdt = HMC_NVFP4, u4[0] = gpu_time_gemv(&a, w4, s4, copies, st);
    hmc_gemv_quant_set_impl(2);
    for (int bi = 0; bi < 2; bi++) {
        hmc_gemv_quant_set_stream_blocks_per_sm(bpss[bi]);
        for (int v = 1; v <= 12; v++) {
            const int k = 1 + 13 * bi + v - 1;
            a.variant = v, a.wdt = HMC_FP8;
            u8[k] = gpu_time_gemv(&a, w8, s8, copies, st);
            a.wdt = HMC_NVFP4;
            u4[k] = gpu_time_gemv(&a, w4, s4, copies, st);
            if (!b8v || u8[k] < u8[b8v]) b8v = k;
            if (!b4v || u4[k] < u4[b4v]) b4v = k;
        }
    }
    hmc_gemv_quant_set_stream_blocks_per_sm(0);
    hmc_gemv_quant_set_impl(0);
    a.variant = 0;
#define PC(b, us) (100 * (b) / ((us) * 1e-6) / bw)
    printf("gemv %-12s N=%5d K=%5d rows=%d  bf16 %.1f us (%.0f%%)  fp8 8-row %.1f us (%.0f%%), default %.1f us "
           "(%.0f%%), streaming best v%d/bps%d %.1f us (%.0f%%)  nvfp4 8-row %.1f us (%.0f%%), default %.1f us (%.0f%%), "
           "streaming best v%d/bps%d %.1f us (%.0f%%)\n", name, N, K, rows, ub, PC(bb, ub), o8, PC(b8, o8), u8[0], PC(b8, u8[0]),
           (b8v - 1) % 13 + 1, bpss[(b8v - 1) / 13], u8[b8v], PC(b8, u8[b8v]), o4, PC(b4, o4), u4[0], PC(b4, u4[0]),
           (b4v - 1) % 13 + 1, bpss[(b4v - 1) / 13], u4[b4v], PC(b4, u4[b4v]));
    for (int q = 0; q < 2; q++)
        for (int bi = 0; bi < 2; bi++) {
            printf("     %s %-12s bps %d  v1..12 us:", q ? "nvfp4" : "fp8  ", name, bpss[bi]);
            for (int v = 1; v <= 12; v++) printf(" %.1f", (q ? u4 : u8)[1 + 13 * bi + v - 1]);
            printf("\n");
        }
    g_tab_len += (size_t)snprintf(g_table + g_tab_len, sizeof g_table - g_tab_len,
                                  "| %s | %d x %d | %d | %.1f | %.0f%% | %.1f / %.1f | %.0f / %.0f | %.0f%% / %.0f%% | "
                                  "v%d/%d %.0f%% | %.1f / %.1f | %.0f / %.0f | %.0f%% / %.0f%% | v%d/%d %.0f%% |\n",
                                  name, N, K, rows, ub, PC(bb, ub), o8, u8[0], b8 / o8 / 1e3, b8 / u8[0] / 1e3,
                                  PC(b8, o8), PC(b8, u8[0]), (b8v - 1) % 13 + 1, bpss[(b8v - 1) / 13], PC(b8, u8[b8v]),
                                  o4, u4[0], b4 / o4 / 1e3, b4 / u4[0] / 1e3, PC(b4, o4), PC(b4, u4[0]),
                                  (b4v - 1) % 13 + 1, bpss[(b4v - 1) / 13], PC(b4, u4[b4v]));
#undef PC
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
        check_gemv(t, 16384, 3072, 4, HMC_IN_RMSNORM, 0, 1, 0); /* decoder w1|w3 with T = 2 */
        check_rope(t, 24, 8, 128, 2, 1, 1);                    /* backbone qkv */
        check_rope(t, 8, 4, 384, 2, 2, 0);                     /* decoder qkv, first step */
        hmc_gemv_quant_set_impl(2); /* the streaming kernel (the fp8 default), every shape */
        for (int v = 1; v <= 12; v++) {
            check_gemv(t, 1000, 3072, 3, HMC_IN_RMSNORM, 0, 0, v);
            check_gemv(t, 200, 1024, 4, HMC_IN_PLAIN, 1, 0, v);
        }
        if (t == HMC_NVFP4) { /* fp8 ran these above */
            check_gemv(t, 16384, 3072, 2, HMC_IN_RMSNORM, 0, 1, 0);
            check_rope(t, 24, 8, 128, 2, 1, 1);
            check_rope(t, 8, 4, 384, 2, 2, 0);
        } else { /* the 8-row kernel's rotary epilogue in fp8 (NVFP4 ran it above) */
            hmc_gemv_quant_set_impl(1);
            check_rope(t, 24, 8, 128, 2, 1, 1);
            check_rope(t, 8, 4, 384, 2, 2, 0);
        }
        hmc_gemv_quant_set_impl(0);
        check_old_new(t, 5120, 3072, 2, HMC_IN_RMSNORM, 0);
        check_old_new(t, 16384, 3072, 2, HMC_IN_RMSNORM, 1);
        check_old_new(t, 3072, 8192, 4, HMC_IN_SWIGLU, 0);
        hmc_gemv_quant_set_impl(1); /* the 8-row kernel (the NVFP4 default) */
        check_gemv(t, 5120, 3072, 2, HMC_IN_RMSNORM, 0, 0, 0);
        check_gemv(t, 16384, 3072, 2, HMC_IN_RMSNORM, 0, 1, 0);
        check_gemv(t, 69, 64, 3, HMC_IN_RMSNORM, 0, 0, 0);
        hmc_gemv_quant_set_impl(0);
    }
    double bw = gpu_copy_bandwidth();
    struct cudaDeviceProp p;
    CU(cudaGetDeviceProperties(&p, 0));
    printf("device %s, copy bandwidth %.0f GB/s (read + write)\n", p.name, bw / 1e9);
    g_tab_len += (size_t)snprintf(g_table + g_tab_len, sizeof g_table - g_tab_len,
                                  "device %s, copy %.0f GB/s; graph of 200 calls over weight copies > L2; old = the 8-row "
                                  "kernel (auto), new = the default (fp8: streaming kernel, NVFP4: 8-row kernel); best = "
                                  "fastest forced streaming variant / blocks per SM\n"
                                  "| GEMV | N x K | rows | bf16 us | of copy | fp8 us old / new | fp8 GB/s old / new | of "
                                  "copy old / new | fp8 best | nvfp4 us old / new | nvfp4 GB/s old / new | of copy old / "
                                  "new | nvfp4 best |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
                                  p.name, bw / 1e9);
    bench_shape("qkv", 5120, 3072, 2, HMC_IN_RMSNORM, 0, bw);
    bench_shape("o", 3072, 3072, 2, HMC_IN_PLAIN, 0, bw);
    bench_shape("w1|w3", 16384, 3072, 2, HMC_IN_RMSNORM, 1, bw);
    bench_shape("w2", 3072, 8192, 2, HMC_IN_PLAIN, 0, bw);
    bench_shape("head", 8197, 3072, 2, HMC_IN_RMSNORM, 0, bw);
    bench_shape("dec qkv", 6144, 3072, 2, HMC_IN_RMSNORM, 0, bw);
    bench_shape("dec qkv T2", 6144, 3072, 4, HMC_IN_RMSNORM, 0, bw);
    bench_shape("dec o T2", 3072, 3072, 4, HMC_IN_PLAIN, 0, bw);
    bench_shape("dec w1|w3 T2", 16384, 3072, 4, HMC_IN_RMSNORM, 1, bw);
    bench_shape("dec w2 T2", 3072, 8192, 4, HMC_IN_PLAIN, 0, bw);
    bench_shape("big", 32768, 3072, 2, HMC_IN_RMSNORM, 0, bw);
    return 0;
}

/* ---------------------------------------------------------------- quality guard ---------------- */

static double used_bytes(void)
{
    size_t fr, tot;
    CU(cudaMemGetInfo(&fr, &tot));
    return (double)(tot - fr);
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
    double used, prefill_ms, ms, ms_old, ms_nofuse, ms_ab[6], fbytes;
    double kl0_mean, kl0_max, kl1_mean, kl1_max, top0, top1;
    double okl0, okl1, otop0, otop1; /* the same with the 8-row kernel */
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
    gpu_verdict(e1 == HM_ERR && e2 == HM_ERR && e3 == HM_ERR,
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
    gpu_verdict(!memcmp(split, whole, sizeof(int32_t) * nc * F) && maxd == 0.0,
            "backbone-only + depth-only models reproduce the whole model: %d frames, codes %s, last logits max |diff| %.3g",
            F, memcmp(split, whole, sizeof(int32_t) * nc * F) ? "DIFFER" : "equal", maxd);
    cudaFree(hd);
    free(split), free(whole), free(lsplit), free(lwhole);
}

static int guard(int F)
{
    hm_lm_config cfg = gpu_lm_cfg_3b();
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
        lm_cuda_req *r = NULL;
        /* quantised: the 8-row kernel first (same teacher forcing), then the default kernel */
        for (int impl = pi ? 1 : 0; impl >= 0; impl--) {
            hmc_gemv_quant_set_impl(impl);
            if (r) lm_cuda_req_free(r);
            OK(lm_cuda_req_new(m, 2, 1024, &r));
            double t0 = hm_now();
            OK(lm_cuda_prefill(r, tok, mask, S, 10, NULL));
            pr->prefill_ms = (hm_now() - t0) * 1e3;
            double k0 = 0, k1 = 0, x0 = 0, x1 = 0;
            int a0 = 0, a1 = 0;
            for (int f = 0; f < F; f++) {
                if (f > 0) OK(lm_cuda_extend(r, frames + (f - 1) * nc));
                lm_cuda_sampling s = {1.0f, 50, 1.5f, 99, (uint32_t)f, pi ? frames + f * nc : NULL};
                OK(lm_cuda_frame(r, &s, pi ? codes : frames + f * nc, pi ? lq : lref + (size_t)f * nc * Va));
                if (!pi) continue;
                for (int k = 0; k < nc; k++) {
                    const float *a = lref + ((size_t)f * nc + k) * Va, *b = lq + (size_t)k * Va;
                    for (int i = 0; i < Va; i++) pr->nonfinite |= !isfinite(b[i]);
                    double d = gpu_kl(a, b, Va);
                    int same = argmax(a, Va) == argmax(b, Va);
                    if (k == 0) k0 += d, x0 = fmax(x0, d), a0 += same;
                    else k1 += d, x1 = fmax(x1, d), a1 += same;
                }
            }
            if (impl) {
                pr->okl0 = k0 / F, pr->okl1 = k1 / (F * (nc - 1.0));
                pr->otop0 = (double)a0 / F, pr->otop1 = (double)a1 / (F * (nc - 1.0));
                pr->ms_old = frames_ms(r, 100);
                continue;
            }
            pr->kl0_mean = k0 / F, pr->kl1_mean = k1 / (F * (nc - 1.0)), pr->kl0_max = x0, pr->kl1_max = x1;
            pr->top0 = (double)a0 / F, pr->top1 = (double)a1 / (F * (nc - 1.0));
        }
        pr->ms = frames_ms(r, 100);
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
        { /* A/B: the rotary epilogue off (a separate rope + append op after the qkv GEMV) */
            lm_cuda_tune tu, t0;
            lm_cuda_get_tune(m, &tu);
            t0 = tu, tu.fuse_rope = 0;
            lm_cuda_set_tune(m, &tu);
            lm_cuda_req *r2;
            OK(lm_cuda_req_new(m, 2, 1024, &r2));
            OK(lm_cuda_prefill(r2, tok, mask, S, 10, NULL));
            frames_ms(r2, F); /* to the positions the others were timed at */
            pr->ms_nofuse = frames_ms(r2, 100);
            lm_cuda_req_free(r2);
            lm_cuda_set_tune(m, &t0);
        }
        /* A/B of the streaming kernel (for both types) and its settings: 1 resident block per SM;
         * the auto rules 1..4 */
        for (int k = 0; pi && k < 6; k++) {
            lm_cuda_req *r2;
            hmc_gemv_quant_set_impl(2);
            if (k == 1) hmc_gemv_quant_set_stream_blocks_per_sm(1);
            else if (k > 1) hmc_gemv_quant_set_auto_rule(k - 1);
            OK(lm_cuda_req_new(m, 2, 1024, &r2));
            OK(lm_cuda_prefill(r2, tok, mask, S, 10, NULL));
            frames_ms(r2, F);
            pr->ms_ab[k] = frames_ms(r2, 100);
            lm_cuda_req_free(r2);
            hmc_gemv_quant_set_stream_blocks_per_sm(0);
            hmc_gemv_quant_set_auto_rule(0);
            hmc_gemv_quant_set_impl(0);
        }
        pr->used = used_bytes() - base;
        lm_cuda_req_free(r);
        lm_cuda_free(m);
        half_sizes(&cfg, pr);
        printf("%-5s resident %.3f GB (backbone %.3f, depth %.3f), device memory in use with a B=2 request of 1024 "
               "positions %.3f GB, prefill %d rows %.1f ms, %.3f ms/frame (rotary epilogue off %.3f; 8-row quantised "
               "GEMV %.3f; streaming GEMV %.3f, with 1 block per SM %.3f, auto rules 1..4: %.3f %.3f %.3f %.3f)\n",
               qname(pr->t), pr->res[0] / 1e9, pr->res[1] / 1e9, pr->res[2] / 1e9, pr->used / 1e9, S, pr->prefill_ms,
               pr->ms, pr->ms_nofuse, pr->ms_old, pr->ms_ab[0], pr->ms_ab[1], pr->ms_ab[2], pr->ms_ab[3], pr->ms_ab[4],
               pr->ms_ab[5]);
    }
    /* bounds: fp8 is near-lossless, NVFP4 (4.5 bits) visibly not; non-finite logits fail both */
    const double kl_bound[3] = {0, 5e-3, 5e-2};
    printf("\nquality guard: random 3B+300M model, %d frames teacher-forced with the bf16 model's own samples "
           "(CFG 1.5, top-k 50), KL(bf16 || quant) of softmax(CFG logits), temperature 1, vocab %d; device %s\n",
           F, Va, p.name);
    printf("| precision | resident GB (whole / backbone / depth) | weights read per frame GB | ms/frame B=2 (8-row "
           "quantised GEMV / default / default, rope not fused) | floor ms | KL c0 mean / max | KL c1..7 mean / max | "
           "top-1 agree c0 / c1..7 | 8-row kernel: KL c0 / c1..7 mean, top-1 c0 / c1..7 | device mem in use GB |\n"
           "|---|---|---|---|---|---|---|---|---|---|\n");
    for (int pi = 0; pi < 3; pi++) {
        prec_row *pr = &rows[pi];
        printf("| %s | %.2f / %.2f / %.2f | %.2f | %.3f / %.3f / %.3f | %.3f | %.2e / %.2e | %.2e / %.2e | %.1f%% / "
               "%.1f%% | %.2e / %.2e, %.1f%% / %.1f%% | %.2f |\n",
               qname(pr->t), pr->res[0] / 1e9, pr->res[1] / 1e9, pr->res[2] / 1e9, pr->fbytes / 1e9,
               pi ? pr->ms_old : pr->ms, pr->ms, pr->ms_nofuse, pr->fbytes / bw * 1e3, pr->kl0_mean, pr->kl0_max,
               pr->kl1_mean, pr->kl1_max, 100 * pr->top0, 100 * pr->top1, pr->okl0, pr->okl1, 100 * pr->otop0,
               100 * pr->otop1, pr->used / 1e9);
    }
    for (int pi = 1; pi < 3; pi++) {
        prec_row *pr = &rows[pi];
        gpu_verdict(!pr->nonfinite && pr->kl0_mean <= kl_bound[pi] && pr->kl1_mean <= kl_bound[pi],
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
    g_chk.fail_only = 1; /* the summary lists the failures (the table has the rest) */
    int F = argc >= 3 ? atoi(argv[2]) : 200;
    if (F < 1) F = 200;
    if (!strcmp(mode, "rope")) { /* the rotary epilogue's checks alone, both kernels */
        const hmc_dtype ts[2] = {HMC_FP8, HMC_NVFP4};
        for (int i = 0; i < 2; i++)
            for (int impl = 1; impl <= 2; impl++) {
                hmc_gemv_quant_set_impl(impl);
                check_rope(ts[i], 24, 8, 128, 2, 1, 1);
                check_rope(ts[i], 8, 4, 384, 2, 2, 0);
            }
        hmc_gemv_quant_set_impl(0);
        mode = "done";
    }
    if (!strcmp(mode, "ops") || !strcmp(mode, "all")) ops();
    if (!strcmp(mode, "guard") || !strcmp(mode, "all")) guard(F);
    if (strcmp(mode, "ops") && strcmp(mode, "guard") && strcmp(mode, "all") && strcmp(mode, "done")) {
        fprintf(stderr, "usage: gpu_quant ops | rope | guard [FRAMES] | all [FRAMES]\n");
        return 2;
    }
    printf("\n==== gpu_quant summary: %d passed, %d failed ====\n", g_chk.pass, g_chk.fail);
    if (g_tab_len) printf("%s", g_table);
    printf("%s", g_chk.sum);
    hmc_gemm_shutdown();
    return g_chk.fail ? 1 : 0;
}
