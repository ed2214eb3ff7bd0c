/* gpu_vocoder.c - checker for the CUDA vocoder (kernels/vocoder_cuda.{h,cu}); needs a GPU.
 *   ops      each kernel (im2col + GEMM conv, transposed conv, bias/PReLU/residual, quantiser,
 *            the fused residual unit, the final 1-channel conv with and without the fused
 *            PReLU) against its CPU twin (kernels/conv1d.c) on fresh random
 *            inputs (seed printed; pass one to replay), outputs poisoned with NaN first, the
 *            release's widths included (2048-channel convs);
 *   fixture  vcc_decode_window on the reference fixture tests/fixtures/codec/codec_vocoder
 *            (tiny model, fp32 and bf16 weights) and against the CPU voc_decode_window;
 *   full     a random release-size decoder (voc_init_random: bf16-exact weights, so both
 *            precisions hold the same model): GPU vs CPU on a short window (VOC_CPU_FRAMES,
 *            default 96 frames; bf16 with and without fused residual units, fp32), then the
 *            timing of one 744-frame window (eager and as a CUDA graph, plus a per-op table) against the
 *            tensor-core floor (FLOPs / a measured 8192³ bf16 GEMM) and the bandwidth floor
 *            (vcc_min_bytes / a measured device-to-device copy); time tiles against the whole
 *            window (744 frames, bf16 and fp32; timed as "untiled (before)") and small forced
 *            tiles against the CPU;
 *   mem      where a vocoder process's device memory goes at the release's sizes (context,
 *            cuBLASLt, weights, workspace, the stage's buffers, first decode, CUDA graph:
 *            cudaMemGetInfo steps, and nvidia-smi's figure for this process) and the graph's
 *            window time; `mem untiled`: the same with every stage over the whole window.
 *   xfade    the segment cross-fade hmc_crossfade(_rows) (kernels/crossfade_cuda.cu) against
 *            cpu_crossfade bit for bit: n = 1, 2, 3, small, odd, around the released overlap
 *            (199680), one and two rows with strides, in place (out = prev, out = next), inside a
 *            CUDA graph, and the vocoder stage's exact call (tail [2, O] into the window [2, seg]).
 * Error = relative L2 ‖gpu − ref‖ / ‖ref‖; the CPU is fed exactly the values the GPU saw
 * (bf16-rounded inputs where the GPU reads bf16).  Exits 1 on any failure (2 on a hard error).
 * Run from the repo root:  gpu_vocoder [seed] [ops] [fixture] [full] [xfade]   (none named: all)
 *                    or:  gpu_vocoder mem [untiled]   (alone: it measures its own process) */

#include <cuda_runtime.h>
#include <time.h>

#include "ops_cuda.h"
#include "vocoder_cuda.h"

/* The CPU decoder lives in the vocoder stage library, which the Makefile's gpu_* rule does not
 * link: compile it into this program (vocoder_cuda.cu calls its loader too). */
#include "../stages/vocoder/vocoder.c"
#include "codec_plan.h"
#include "crossfade.h"
#include "safetensors.h"

#define FIX "tests/fixtures/codec"

#include "gpu_check.h"

static int n_pass, n_fail;

static double report(const char *what, const char *shape, const float *g, const float *r, size_t n, double bound)
{
    int nf;
    double e = gpu_relerr(g, r, n, &nf);
    int ok = !nf && e <= bound;
    ok ? n_pass++ : n_fail++;
    printf("%-4s %-14s %-46s err %.2e (bound %.0e)%s\n", ok ? "PASS" : "FAIL", what, shape, e, bound,
           nf ? "  NON-FINITE/unwritten outputs" : "");
    fflush(stdout);
    return e;
}
static const char *dn(hmc_dtype t) { return t == HMC_BF16 ? "bf16" : "f32"; }
static void gemm_reset(void)
{
    CU(cudaDeviceSynchronize());
    hmc_gemm_shutdown();
}
static void round_bf16(float *v, size_t n)
{
    for (size_t i = 0; i < n; i++) v[i] = hm_bf16_to_f32(hm_f32_to_bf16(v[i]));
}
/* time-major [B*T, C] -> channel-major [B][C][T] */
static float *tm_to_cm(const float *x, int B, int T, int C)
{
    float *y = hm_malloc(sizeof(float) * (size_t)B * T * C);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int c = 0; c < C; c++) y[((size_t)b * C + c) * T + t] = x[((size_t)b * T + t) * C + c];
    return y;
}

/* ---- ops -------------------------------------------------------------------------------------- */

static void check_quantize(int n, int H)
{
    size_t N = (size_t)n * 2 * H;
    float *lat = rvec(N, 3.0f);
    for (size_t i = 0; i < N; i += 7) lat[i] = (float)((int)(urand() * 40) + 0.5) / 9.0f; /* near half-way cases */
    float *ld = gpu_up(lat, N, HMC_F32), *xd = gpu_poison(N, HMC_F32);
    OK(vcc_quantize_split(ld, n, H, xd, 0));
    float *g = gpu_down(xd, N, HMC_F32), *ref = hm_malloc(sizeof(float) * N);
    for (int b = 0; b < 2; b++)
        for (int t = 0; t < n; t++)
            for (int h = 0; h < H; h++)
                ref[((size_t)b * n + t) * H + h] = rintf(9.0f * lat[(size_t)t * 2 * H + (size_t)b * H + h]) / 9.0f;
    size_t bad = 0;
    for (size_t i = 0; i < N; i++) bad += memcmp(&g[i], &ref[i], 4) != 0;
    char sh[64];
    snprintf(sh, sizeof sh, "n%d H%d (bit-exact: %zu differ)", n, H, bad);
    report("quantize", sh, g, ref, N, bad ? -1.0 : 0.0);
    free(lat); free(g); free(ref);
    CU(cudaFree(ld)); CU(cudaFree(xd));
}

/* conv = im2col + GEMM (+ bias through vcc_bias_prelu with a = 1) vs cpu_conv1d.  causal: left
 * pad dil*(k-1), else symmetric; rep: every input sample repeated (the post conv). */
static void check_conv(int T, int cin, int cout, int k, int dil, int causal, int rep, hmc_dtype t)
{
    const int B = 2, To = T * rep, span = dil * (k - 1), pl = causal ? span : span / 2;
    float *x = rvec((size_t)B * T * cin, 1.0f), *w = rvec((size_t)cout * k * cin, 1.0f / sqrtf((float)k * cin)),
          *b = rvec(cout, 0.5f);
    float *xd = gpu_up(x, (size_t)B * T * cin, HMC_F32);
    if (t == HMC_BF16) round_bf16(x, (size_t)B * T * cin); /* the im2col stores bf16 */
    void *wd = gpu_up(w, (size_t)cout * k * cin, t); /* device layout [cout, k*cin] */
    float *bd = gpu_up(b, cout, HMC_F32);
    void *col = gpu_poison((size_t)B * To * k * cin, t);
    float *y = gpu_poison((size_t)B * To * cout, HMC_F32);
    OK(vcc_im2col(xd, B, T, cin, k, dil, pl, rep, col, t, 0));
    OK(hmc_gemm(col, wd, t, y, B * To, cout, k * cin, 0, 0));
    OK(vcc_bias_prelu(y, bd, 1.0f, B * To, cout, y, HMC_F32, NULL, 0));
    float *g = gpu_down(y, (size_t)B * To * cout, HMC_F32);
    /* CPU: tap-major weights, channel-major rows, the repeated input built explicitly */
    float *wt = hm_malloc(sizeof(float) * (size_t)cout * k * cin);
    for (int o = 0; o < cout; o++)
        for (int j = 0; j < k; j++)
            for (int i = 0; i < cin; i++) wt[((size_t)j * cout + o) * cin + i] = w[(size_t)o * k * cin + (size_t)j * cin + i];
    float *xc = tm_to_cm(x, B, T, cin), *xr = hm_malloc(sizeof(float) * (size_t)B * To * cin);
    for (size_t r = 0; r < (size_t)B * cin; r++)
        for (int u = 0; u < To; u++) xr[r * To + u] = xc[r * T + u / rep];
    float *yc = hm_malloc(sizeof(float) * (size_t)B * To * cout), *ref = hm_malloc(sizeof(float) * (size_t)B * To * cout);
    for (int bi = 0; bi < B; bi++)
        cpu_conv1d(xr + (size_t)bi * cin * To, cin, To, wt, b, cout, k, dil, pl, span - pl, yc + (size_t)bi * cout * To);
    for (int bi = 0; bi < B; bi++) /* back to time-major */
        for (int o = 0; o < cout; o++)
            for (int u = 0; u < To; u++) ref[((size_t)bi * To + u) * cout + o] = yc[((size_t)bi * cout + o) * To + u];
    char sh[80];
    snprintf(sh, sizeof sh, "T%d %d->%d k%d d%d%s%s %s", T, cin, cout, k, dil, causal ? " causal" : " same",
             rep > 1 ? " rep2" : "", dn(t));
    report("conv", sh, g, ref, (size_t)B * To * cout, 1e-5);
    free(x); free(w); free(b); free(g); free(wt); free(xc); free(xr); free(yc); free(ref);
    CU(cudaFree(xd)); CU(cudaFree(wd)); CU(cudaFree(bd)); CU(cudaFree(col)); CU(cudaFree(y));
}

/* causal transposed conv (k = 2s): GEMM + overlap-add vs cpu_conv_transpose1d */
static void check_tconv(int T, int cin, int cout, int s, hmc_dtype t)
{
    const int B = 2, k = 2 * s;
    float *x = rvec((size_t)B * T * cin, 1.0f), *w = rvec((size_t)cin * cout * k, 1.0f / sqrtf((float)cin)),
          *b = rvec(cout, 0.5f);
    if (t == HMC_BF16) round_bf16(x, (size_t)B * T * cin), round_bf16(w, (size_t)cin * cout * k);
    void *xd = gpu_up(x, (size_t)B * T * cin, t);
    float *wg = hm_malloc(sizeof(float) * (size_t)cin * cout * k); /* [k*cout, cin] */
    for (int i = 0; i < cin; i++)
        for (int o = 0; o < cout; o++)
            for (int j = 0; j < k; j++) wg[((size_t)j * cout + o) * cin + i] = w[((size_t)i * cout + o) * k + j];
    void *wd = gpu_up(wg, (size_t)cin * cout * k, t);
    float *bd = gpu_up(b, cout, HMC_F32);
    float *z = gpu_poison((size_t)B * T * k * cout, HMC_F32), *y = gpu_poison((size_t)B * T * s * cout, HMC_F32);
    OK(hmc_gemm(xd, wd, t, z, B * T, k * cout, cin, 0, 0));
    OK(vcc_overlap_add(z, bd, B, T, cout, s, y, 0));
    float *g = gpu_down(y, (size_t)B * T * s * cout, HMC_F32);
    float *xc = tm_to_cm(x, B, T, cin), *yc = hm_malloc(sizeof(float) * (size_t)B * T * s * cout);
    for (int bi = 0; bi < B; bi++)
        cpu_conv_transpose1d(xc + (size_t)bi * cin * T, cin, T, w, b, cout, k, s, (size_t)T * s,
                             yc + (size_t)bi * cout * T * s);
    float *ref = hm_malloc(sizeof(float) * (size_t)B * T * s * cout); /* [B][cout][Ts] -> [B*Ts, cout] */
    for (int bi = 0; bi < B; bi++)
        for (int o = 0; o < cout; o++)
            for (int p = 0; p < T * s; p++) ref[((size_t)bi * T * s + p) * cout + o] = yc[((size_t)bi * cout + o) * T * s + p];
    char sh[80];
    snprintf(sh, sizeof sh, "T%d %d->%d s%d %s", T, cin, cout, s, dn(t));
    report("tconv", sh, g, ref, (size_t)B * T * s * cout, 1e-5);
    free(x); free(w); free(b); free(wg); free(g); free(xc); free(yc); free(ref);
    CU(cudaFree(xd)); CU(cudaFree(wd)); CU(cudaFree(bd)); CU(cudaFree(z)); CU(cudaFree(y));
}

static void check_bias_prelu(int M, int C, int mode, hmc_dtype t) /* mode 0: y, 1: residual add */
{
    size_t n = (size_t)M * C;
    float *h = rvec(n, 2.0f), *b = rvec(C, 0.5f), *r = rvec(n, 1.0f);
    const float a = 0.23f;
    float *hd = gpu_up(h, n, HMC_F32), *bd = gpu_up(b, C, HMC_F32), *rd = gpu_up(r, n, HMC_F32);
    void *yd = gpu_poison(n, t);
    OK(vcc_bias_prelu(hd, bd, a, M, C, mode ? NULL : yd, t, mode ? rd : NULL, 0));
    float *g = gpu_down(mode ? (void *)rd : yd, n, mode ? HMC_F32 : t), *ref = hm_malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) {
        float v = h[i] + b[i % C];
        v = v < 0 ? a * v : v;
        ref[i] = mode ? r[i] + v : v;
    }
    if (!mode && t == HMC_BF16) round_bf16(ref, n);
    char sh[64];
    snprintf(sh, sizeof sh, "%dx%d %s", M, C, mode ? "resid += (f32)" : dn(t));
    report("bias_prelu", sh, g, ref, n, 1e-7);
    free(h); free(b); free(r); free(g); free(ref);
    CU(cudaFree(hd)); CU(cudaFree(bd)); CU(cudaFree(rd)); CU(cudaFree(yd));
}

/* pre: the post conv's bias + PReLU fused in front */
static void check_out1(int T, int C, int k, size_t n_keep, int pre)
{
    const int B = 2;
    float *x = rvec((size_t)B * T * C, 1.0f), *w = rvec((size_t)k * C, 0.2f), *pb = rvec(C, 0.5f);
    const float bias = 0.125f, pa = 0.3f;
    float *xd = gpu_up(x, (size_t)B * T * C, HMC_F32), *wd = gpu_up(w, (size_t)k * C, HMC_F32), *pd = gpu_poison(B * n_keep, HMC_F32),
          *pbd = gpu_up(pb, C, HMC_F32);
    OK(vcc_conv_out1(xd, B, T, C, k, wd, bias, pre ? pbd : NULL, pa, n_keep, pd, 0));
    if (pre)
        for (size_t i = 0; i < (size_t)B * T * C; i++) {
            float v = x[i] + pb[i % C];
            x[i] = v < 0 ? pa * v : v;
        }
    float *g = gpu_down(pd, B * n_keep, HMC_F32), *xc = tm_to_cm(x, B, T, C), *yc = hm_malloc(sizeof(float) * T),
          *ref = hm_malloc(sizeof(float) * B * n_keep);
    for (int b = 0; b < B; b++) {
        cpu_conv1d(xc + (size_t)b * C * T, C, T, w, &bias, 1, k, 1, k - 1, 0, yc);
        memcpy(ref + b * n_keep, yc, sizeof(float) * n_keep);
    }
    char sh[64];
    snprintf(sh, sizeof sh, "T%d %d->1 k%d keep %zu%s", T, C, k, n_keep, pre ? " +bias,PReLU" : "");
    report("conv_out1", sh, g, ref, B * n_keep, 1e-6);
    free(x); free(w); free(pb); free(g); free(xc); free(yc); free(ref);
    CU(cudaFree(xd)); CU(cudaFree(wd)); CU(cudaFree(pd)); CU(cudaFree(pbd));
}

/* vcc_res_unit_fused vs the CPU unit: x + PReLU(conv_k1(bf16(PReLU(conv_k7_causal(bf16(x)) + b1))) + b2) */
static void check_res_unit(int T, int C, int dil)
{
    const int B = 2, k = 7;
    const size_t n = (size_t)B * T * C;
    float *x = rvec(n, 1.0f), *w1 = rvec((size_t)C * k * C, 1.0f / sqrtf(7.0f * C)), *w2 = rvec((size_t)C * C, 0.5f / sqrtf(C)),
          *b1 = rvec(C, 0.2f), *b2 = rvec(C, 0.2f);
    const float a1 = 0.21f, a2 = 0.17f;
    float *xd = gpu_up(x, n, HMC_F32), *yd = gpu_poison(n, HMC_F32), *b1d = gpu_up(b1, C, HMC_F32), *b2d = gpu_up(b2, C, HMC_F32);
    void *w1d = gpu_up(w1, (size_t)C * k * C, HMC_BF16), *w2d = gpu_up(w2, (size_t)C * C, HMC_BF16); /* rounds w1, w2 */
    OK(vcc_res_unit_fused(xd, yd, B, T, C, k, dil, w1d, b1d, a1, w2d, b2d, a2, 0));
    float *g = gpu_down(yd, n, HMC_F32);
    float *w1t = hm_malloc(sizeof(float) * (size_t)C * k * C), *xc = tm_to_cm(x, B, T, C);
    for (int o = 0; o < C; o++)
        for (int j = 0; j < k; j++)
            for (int i = 0; i < C; i++) w1t[((size_t)j * C + o) * C + i] = w1[(size_t)o * k * C + (size_t)j * C + i];
    float *xb = hm_malloc(sizeof(float) * n), *h = hm_malloc(sizeof(float) * n), *h2 = hm_malloc(sizeof(float) * n),
          *ref = hm_malloc(sizeof(float) * n);
    memcpy(xb, xc, sizeof(float) * n);
    round_bf16(xb, n);
    for (int b = 0; b < B; b++) {
        size_t o = (size_t)b * C * T;
        cpu_conv1d(xb + o, C, T, w1t, b1, C, k, dil, dil * (k - 1), 0, h + o);
        cpu_prelu(h + o, (size_t)C * T, a1);
        round_bf16(h + o, (size_t)C * T);
        cpu_conv1d(h + o, C, T, w2, b2, C, 1, 1, 0, 0, h2 + o);
        cpu_prelu(h2 + o, (size_t)C * T, a2);
    }
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int t = 0; t < T; t++)
                ref[((size_t)b * T + t) * C + c] = x[((size_t)b * T + t) * C + c] + h2[((size_t)b * C + c) * T + t];
    char sh[64];
    snprintf(sh, sizeof sh, "T%d C%d k7 d%d bf16", T, C, dil);
    report("res_unit_fused", sh, g, ref, n, 1e-4);
    free(x); free(w1); free(w2); free(b1); free(b2); free(g); free(w1t); free(xc); free(xb); free(h); free(h2); free(ref);
    CU(cudaFree(xd)); CU(cudaFree(yd)); CU(cudaFree(b1d)); CU(cudaFree(b2d)); CU(cudaFree(w1d)); CU(cudaFree(w2d));
}

static void ops(void)
{
    check_quantize(744, 128);
    for (int k = 0; k < 2; k++) {
        hmc_dtype t = k ? HMC_BF16 : HMC_F32;
        check_conv(50, 128, 2048, 5, 1, 0, 1, t);   /* the first conv, release widths */
        check_conv(40, 2048, 2048, 7, 3, 1, 1, t);  /* 2048-channel causal dilated conv */
        check_conv(300, 1024, 1024, 7, 9, 1, 1, t); /* block 1 residual conv1 */
        check_conv(300, 512, 512, 1, 1, 1, 1, t);   /* conv k1 */
        check_conv(5000, 64, 64, 7, 5, 1, 1, t);    /* last block, narrow and long */
        check_conv(2000, 64, 64, 7, 1, 1, 2, t);    /* post conv over the x2 repeat */
        check_conv(301, 6, 6, 7, 7, 1, 1, t);       /* C % 4 != 0: scalar im2col */
        check_tconv(37, 2048, 1024, 5, t);
        check_tconv(500, 128, 64, 3, t);
        check_tconv(101, 6, 3, 4, t);
        check_bias_prelu(1000, 64, 0, t);
    }
    check_res_unit(1000, 64, 1);
    check_res_unit(1000, 64, 9);
    check_res_unit(333, 128, 5);
    check_res_unit(4000, 128, 9);
    check_bias_prelu(1000, 64, 1, HMC_F32);
    check_bias_prelu(333, 6, 0, HMC_BF16);
    check_bias_prelu(333, 6, 1, HMC_F32);
    check_out1(20000, 64, 7, 19993, 0);
    check_out1(20000, 64, 7, 19993, 1);
    check_out1(999, 6, 7, 999, 1);
    check_out1(3000, 128, 7, 2999, 0); /* too wide for the tiled kernel: the plain one */
    gemm_reset();
}

/* ---- xfade: the segment cross-fade, bit for bit ------------------------------------------------ */

/* Audio-like values of mixed magnitudes (loud, quiet, exact zeros, subnormals): the fade must
 * round every one of them as the CPU does. */
static float *xf_samples(size_t n)
{
    float *v = hm_malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) {
        float u = urand();
        switch (i % 7) {
        case 0: v[i] = 20.0f * u; break;
        case 1: v[i] = 1e-3f * u; break;
        case 2: v[i] = (i % 14 == 2) ? 0.0f : 3e-39f * u; break; /* zero or subnormal */
        case 3: v[i] = 1e6f * u; break;
        default: v[i] = u;
        }
    }
    return v;
}

/* hmc_crossfade(_rows) against cpu_crossfade on `rows` rows of n samples.  alias: 0 a separate
 * out (rows padded and poisoned: nothing outside the n samples may be written), 1 out == prev,
 * 2 out == next.  graph: enqueue inside a CUDA graph capture and replay it.  Counts samples whose
 * bits differ (and writes outside the rows); any is a failure. */
static void check_xfade(size_t n, int rows, int alias, int graph)
{
    const size_t ldp = rows > 1 ? n + 3 : n, ldn = rows > 1 ? 2 * n + 5 : n, ldo0 = rows > 1 ? n + 1 : n;
    float *P = xf_samples((size_t)rows * ldp), *Q = xf_samples((size_t)rows * ldn);
    float *pd = gpu_up(P, (size_t)rows * ldp, HMC_F32), *qd = gpu_up(Q, (size_t)rows * ldn, HMC_F32), *od = NULL;
    size_t ldo = ldo0;
    if (alias == 1) od = pd, ldo = ldp;
    else if (alias == 2) od = qd, ldo = ldn;
    else od = gpu_poison((size_t)rows * ldo, HMC_F32);
    cudaStream_t st;
    CU(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    if (graph) {
        cudaGraph_t gr;
        cudaGraphExec_t ex;
        CU(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
        OK(hmc_crossfade_rows(pd, ldp, qd, ldn, od, ldo, n, rows, st));
        CU(cudaStreamEndCapture(st, &gr));
        CU(cudaGraphInstantiate(&ex, gr, 0));
        CU(cudaGraphLaunch(ex, st));
        CU(cudaStreamSynchronize(st));
        CU(cudaGraphExecDestroy(ex));
        CU(cudaGraphDestroy(gr));
    } else if (rows == 1) {
        OK(hmc_crossfade(pd, qd, n, od, st));
    } else {
        OK(hmc_crossfade_rows(pd, ldp, qd, ldn, od, ldo, n, rows, st));
    }
    CU(cudaStreamSynchronize(st));
    float *g = gpu_down(od, (size_t)rows * ldo, HMC_F32), *ref = hm_malloc(sizeof(float) * (n ? n : 1));
    const float *keep = alias == 1 ? P : alias == 2 ? Q : NULL; /* what the padding must still hold */
    size_t bad = 0, outside = 0;
    double maxd = 0;
    for (int r = 0; r < rows; r++) {
        cpu_crossfade(P + (size_t)r * ldp, Q + (size_t)r * ldn, n, ref);
        const float *gr = g + (size_t)r * ldo;
        for (size_t i = 0; i < n; i++)
            if (memcmp(&gr[i], &ref[i], 4)) bad++, maxd = fmax(maxd, fabs((double)gr[i] - ref[i]));
        for (size_t i = n; i < ldo; i++) /* each row's padding */
            outside += keep ? memcmp(&gr[i], &keep[(size_t)r * ldo + i], 4) != 0 : !isnan(gr[i]);
    }
    int ok = !bad && !outside;
    ok ? n_pass++ : n_fail++;
    char sh[96];
    snprintf(sh, sizeof sh, "n %zu x %d rows%s%s", n, rows, alias == 1 ? ", out = prev" : alias == 2 ? ", out = next" : "",
             graph ? ", graph" : "");
    printf("%-4s %-14s %-46s %zu of %zu differ bitwise (max |d| %.3g)%s\n", ok ? "PASS" : "FAIL", "xfade", sh, bad,
           n * (size_t)rows, maxd, outside ? ", WROTE OUTSIDE THE ROWS" : "");
    fflush(stdout);
    free(P); free(Q); free(g); free(ref);
    CU(cudaFree(pd)); CU(cudaFree(qd));
    if (!alias) CU(cudaFree(od));
    CU(cudaStreamDestroy(st));
}

static void xfade_phase(void)
{
    codec_plan p; /* the released geometry: 1428480-sample segments, 199680 cross-faded */
    OK(codec_plan_make(1, 48000, &p));
    const size_t O = p.ovl_samples;
    const size_t sizes[] = {1, 2, 3, 4, 5, 17, 255, 256, 257, 1001, 4097, O - 1, O, O + 1};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) check_xfade(sizes[k], 1, 0, 0);
    for (int alias = 0; alias <= 2; alias++) {
        check_xfade(3, 1, alias, 0);
        check_xfade(1001, 1, alias, 0);
        check_xfade(O, 2, alias, 0); /* both channels of the released overlap, strided rows */
    }
    check_xfade(O, 2, 2, 1);
    check_xfade(0, 1, 0, 0); /* nothing to do, nothing written */
    /* the stage's exact layout: prev = the song's tail [2, O], next = the window [2, seg], faded in place */
    const size_t L = p.seg_samples;
    float *T = xf_samples(2 * O), *W = xf_samples(2 * L);
    float *td = gpu_up(T, 2 * O, HMC_F32), *wd = gpu_up(W, 2 * L, HMC_F32);
    OK(hmc_crossfade_rows(td, O, wd, L, wd, L, O, 2, 0));
    float *g = gpu_down(wd, 2 * L, HMC_F32), *ref = hm_malloc(sizeof(float) * L);
    size_t bad = 0;
    for (int c = 0; c < 2; c++) {
        memcpy(ref, W + (size_t)c * L, sizeof(float) * L);
        cpu_crossfade(T + (size_t)c * O, ref, O, ref);
        bad += memcmp(g + (size_t)c * L, ref, sizeof(float) * L) != 0;
    }
    bad ? n_fail++ : n_pass++;
    printf("%-4s %-14s %-46s %s\n", bad ? "FAIL" : "PASS", "xfade", "stage layout: tail [2, 199680] into window [2, 1428480]",
           bad ? "differs from cpu_crossfade in place" : "whole windows identical (faded head + untouched rest)");
    free(T); free(W); free(g); free(ref);
    CU(cudaFree(td)); CU(cudaFree(wd));
}

/* ---- fixture ---------------------------------------------------------------------------------- */

static void fixture(hmc_dtype t)
{
    st_file *f;
    OK(st_open(FIX "/codec_vocoder.safetensors", &f));
    st_tensor *tl, *to, *tn, *ts;
    OK(st_get(f, "latent", -1, NULL, &tl));
    OK(st_get(f, "output_sub", -1, NULL, &to));
    OK(st_get(f, "output_len", -1, NULL, &tn));
    OK(st_get(f, "output_stride", -1, NULL, &ts));
    float *lat = hm_malloc(sizeof(float) * tl->numel), *ref = hm_malloc(sizeof(float) * to->numel);
    int32_t len, stride;
    OK(st_to_f32(tl, lat));
    OK(st_to_f32(to, ref));
    OK(st_to_i32(tn, &len));
    OK(st_to_i32(ts, &stride));
    voc_model *cpu;
    vcc_model *g;
    OK(voc_load(FIX, &cpu));
    OK(vcc_upload(cpu, t, &g));
    const int H = cpu->first.cin, n = (int)(tl->numel / 2 / H);
    const size_t ns = (size_t)n * voc_hop(cpu);
    float *tm = hm_malloc(sizeof(float) * 2 * H * n); /* [2, H, n] -> time-major [n, 2H] */
    for (int c = 0; c < 2; c++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < n; i++) tm[(size_t)i * 2 * H + (size_t)c * H + h] = lat[((size_t)c * H + h) * n + i];
    float *ld = gpu_up(tm, (size_t)2 * H * n, HMC_F32), *pd = gpu_poison(2 * ns, HMC_F32);
    OK(vcc_decode_window(g, ld, n, ns, pd, 0));
    float *pcm = gpu_down(pd, 2 * ns, HMC_F32);
    /* the reference keeps every stride-th sample of each channel */
    size_t nsub = (size_t)to->numel / 2;
    float *sub = hm_malloc(sizeof(float) * 2 * nsub);
    for (int c = 0; c < 2; c++)
        for (size_t i = 0; i < nsub; i++) sub[c * nsub + i] = pcm[c * ns + i * (size_t)stride];
    char sh[96];
    snprintf(sh, sizeof sh, "tiny, %d frames -> 2 x %zu (ref len %d) %s", n, ns, len, dn(t));
    report("fixture/ref", sh, sub, ref, 2 * nsub, t == HMC_F32 ? 1e-5 : 3e-2);
    float *cref = hm_malloc(sizeof(float) * 2 * ns);
    OK(voc_decode_window(cpu, tm, n, ns, cref));
    report("fixture/cpu", sh, pcm, cref, 2 * ns, t == HMC_F32 ? 1e-5 : 3e-2);
    /* a shorter n_keep gives the same leading samples, bit for bit */
    size_t keep = ns - 997;
    float *pk = gpu_poison(2 * keep, HMC_F32);
    OK(vcc_decode_window(g, ld, n, keep, pk, 0));
    float *pkh = gpu_down(pk, 2 * keep, HMC_F32), *lead = hm_malloc(sizeof(float) * 2 * keep);
    for (int c = 0; c < 2; c++) memcpy(lead + c * keep, pcm + c * ns, sizeof(float) * keep);
    snprintf(sh, sizeof sh, "n_keep %zu of %zu %s", keep, ns, dn(t));
    report("fixture/keep", sh, pkh, lead, 2 * keep, 0.0);
    /* time tiles with a seam inside the window (tiles of 7 new frames after a first one of 7 + the
     * 42-frame halo) and every stage over the whole window: the same samples up to the GEMMs' row
     * count (the release-size seams: `full`) */
    for (int k = 0; k < 2; k++) {
        vcc_set_tiling(g, k, 7);
        OK(vcc_decode_window(g, ld, n, keep, pk, 0));
        float *pt = gpu_down(pk, 2 * keep, HMC_F32);
        char d[200];
        OK(vcc_describe(g, n, d, sizeof d));
        snprintf(sh, sizeof sh, "%s %s", k ? "7-frame tiles" : "untiled", dn(t));
        printf("     (%s)\n", d);
        report("fixture/tiles", sh, pt, lead, 2 * keep, t == HMC_F32 ? 1e-6 : 1e-5);
        free(pt);
    }
    vcc_set_tiling(g, 1, 0);
    free(lat); free(ref); free(tm); free(pcm); free(sub); free(cref); free(pkh); free(lead);
    CU(cudaFree(ld)); CU(cudaFree(pd)); CU(cudaFree(pk));
    vcc_free(g);
    voc_free(cpu);
    st_close(f);
    gemm_reset();
}

/* ---- full: release sizes --------------------------------------------------------------------- */

static hm_codec_config release_cfg(void)
{
    hm_codec_config c;
    memset(&c, 0, sizeof c);
    snprintf(c.dir, sizeof c.dir, "(random release-size decoder)");
    c.out_channels = 256, c.latent_hidden_dim = 128, c.init_channel = 64, c.sample_rate = 48000, c.num_samples = 2;
    c.causal = 1, c.n_up = 5, c.default_kernel_size = 7, c.delay_kernel_size = 5, c.res_kernel_size = 7, c.num_bands = 1;
    const int f[5] = {5, 4, 4, 4, 3};
    for (int i = 0; i < 5; i++) c.upsample_factors[i] = f[i], c.upsample_kernel_sizes[i] = 2 * f[i];
    return c;
}

static double elapsed_ms(cudaEvent_t a, cudaEvent_t b)
{
    float ms;
    CU(cudaEventSynchronize(b));
    CU(cudaEventElapsedTime(&ms, a, b));
    return ms;
}

static void full(uint64_t seed)
{
    const hm_codec_config cfg = release_cfg();
    const int W = 744;
    const char *ev = getenv("VOC_CPU_FRAMES");
    const int ncpu = ev ? atoi(ev) : 96;
    double t0 = hm_now();
    voc_model *cpu;
    OK(voc_init_random(&cfg, seed, 1, &cpu));
    vcc_model *g[2];
    OK(vcc_upload(cpu, HMC_BF16, &g[0]));
    OK(vcc_upload(cpu, HMC_F32, &g[1]));
    const int hop = voc_hop(cpu), H = cfg.latent_hidden_dim;
    printf("full: random release decoder (hop %d, %.2f TFLOP per %d-frame window), init + upload %.2f s\n", hop,
           vcc_flops(&cfg, W) / 1e12, W, hm_now() - t0);
    float *lat = rvec((size_t)W * 2 * H, 2.0f);
    float *ld = gpu_up(lat, (size_t)W * 2 * H, HMC_F32);

    /* (1) correctness on ncpu frames against the CPU decoder (same weights: bf16-exact) */
    if (ncpu > 0) {
        const size_t ns = (size_t)ncpu * hop;
        float *ref = hm_malloc(sizeof(float) * 2 * ns);
        t0 = hm_now();
        OK(voc_decode_window(cpu, lat, ncpu, ns, ref));
        double cpu_s = hm_now() - t0;
        for (int k = 0; k < 5; k++) { /* bf16 fused, bf16 unfused, f32; then 300-sample tiles (bf16, f32) */
            float *pd = gpu_poison(2 * ns, HMC_F32);
            if (k < 2) vcc_set_fused(g[0], k == 0);
            if (k >= 3) vcc_set_tiling(g[k == 4], 1, 300);
            OK(vcc_decode_window(g[k == 2 || k == 4], ld, ncpu, ns, pd, 0));
            float *pcm = gpu_down(pd, 2 * ns, HMC_F32);
            char sh[96];
            snprintf(sh, sizeof sh, "release widths, %d frames (CPU %.1f s) %s", ncpu, cpu_s,
                     k == 0 ? "bf16 fused" : k == 1 ? "bf16 unfused" : k == 2 ? "f32" : k == 3 ? "bf16 300-sample tiles" : "f32 300-sample tiles");
            if (k >= 3) {
                char d[200];
                OK(vcc_describe(g[k == 4], ncpu, d, sizeof d));
                printf("     (%s)\n", d);
            }
            report("full/cpu", sh, pcm, ref, 2 * ns, k == 2 || k == 4 ? 1e-4 : 3e-2);
            free(pcm);
            CU(cudaFree(pd));
        }
        vcc_set_fused(g[0], 1);
        vcc_set_tiling(g[0], 1, 0);
        vcc_set_tiling(g[1], 1, 0);
        free(ref);
    }

    /* (2) timing of one window */
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    cudaStream_t s;
    CU(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    struct cudaDeviceProp prop;
    int dev;
    CU(cudaGetDevice(&dev));
    CU(cudaGetDeviceProperties(&prop, dev));
    const int G = 8192; /* gpu_gemm_peak's size, named in the output */
    double gms, peak = gpu_gemm_peak(s, &gms);
    const double bw = gpu_copy_bandwidth(); /* device to device, read + write */

    const size_t ns = (size_t)W * hop;
    float *pd;
    CU(cudaMalloc((void **)&pd, sizeof(float) * 2 * ns));
    const double fl = vcc_flops(&cfg, W), audio_ms = 1000.0 * ns / cfg.sample_rate;
    /* time tiles (default) against every stage over the whole window, one 744-frame window */
    for (int k = 0; k < 2; k++) {
        float *pt[2];
        for (int u = 0; u < 2; u++) {
            vcc_set_tiling(g[k], u == 0, 0);
            OK(vcc_decode_window(g[k], ld, W, ns, pd, s));
            CU(cudaStreamSynchronize(s));
            pt[u] = gpu_down(pd, 2 * ns, HMC_F32);
        }
        size_t diff = 0;
        for (size_t i = 0; i < 2 * ns; i++) diff += memcmp(&pt[0][i], &pt[1][i], 4) != 0;
        char d[200], sh[120];
        vcc_set_tiling(g[k], 1, 0);
        OK(vcc_reserve(g[k], W));
        OK(vcc_describe(g[k], W, d, sizeof d));
        printf("     (%s)\n", d);
        snprintf(sh, sizeof sh, "tiled vs untiled, %d frames %s (%zu of %zu differ)", W, k ? "f32" : "bf16", diff, 2 * ns);
        report("full/tiles", sh, pt[0], pt[1], 2 * ns, 1e-5);
        free(pt[0]), free(pt[1]);
    }
    double ms[4][2] = {{0}};
    static char prof[4][4096];
    int finite[4] = {1, 1, 1, 1};
    const int reps = 5;
    const char *cname[4] = {"bf16 weights", "f32 weights", "bf16 weights, unfused", "bf16 weights, untiled (before)"};
    for (int kk = 0; kk < 4; kk++) { /* bf16 (fused residual units), f32, bf16 unfused, bf16 whole window */
        const int k = kk == 1;
        vcc_set_fused(g[0], kk != 2);
        vcc_set_tiling(g[k], kk != 3, 0);
        OK(vcc_decode_window(g[k], ld, W, ns, pd, s)); /* warm-up: workspace, GEMM plans */
        CU(cudaStreamSynchronize(s));
        CU(cudaEventRecord(e0, s));
        for (int i = 0; i < reps; i++) OK(vcc_decode_window(g[k], ld, W, ns, pd, s));
        CU(cudaEventRecord(e1, s));
        ms[kk][0] = elapsed_ms(e0, e1) / reps;
        /* the same as one CUDA graph */
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CU(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
        OK(vcc_decode_window(g[k], ld, W, ns, pd, s));
        CU(cudaStreamEndCapture(s, &graph));
        CU(cudaGraphInstantiate(&exec, graph, 0));
        CU(cudaGraphLaunch(exec, s));
        CU(cudaStreamSynchronize(s));
        CU(cudaEventRecord(e0, s));
        for (int i = 0; i < reps; i++) CU(cudaGraphLaunch(exec, s));
        CU(cudaEventRecord(e1, s));
        ms[kk][1] = elapsed_ms(e0, e1) / reps;
        CU(cudaGraphExecDestroy(exec));
        CU(cudaGraphDestroy(graph));
        /* where the time goes: one eager decode with an event after every op */
        OK(vcc_profile(g[k], 1));
        OK(vcc_decode_window(g[k], ld, W, ns, pd, s));
        OK(vcc_profile_table(g[k], prof[kk], sizeof prof[kk]));
        OK(vcc_profile(g[k], 0));
        float *pcm = gpu_down(pd, 2 * ns, HMC_F32);
        for (size_t i = 0; i < 2 * ns; i++)
            if (!isfinite(pcm[i])) {
                finite[kk] = 0;
                break;
            }
        free(pcm);
    }
    vcc_set_tiling(g[0], 1, 0);
    printf("\ndevice: %s (%d SMs); random release-size vocoder, one window = %d frames x 2 rows -> 2 x %zu samples "
           "(%.2f s of audio); outputs %s / %s / %s / %s (bf16 / fp32 / bf16 unfused / bf16 untiled)\n",
           prop.name, prop.multiProcessorCount, W, ns, audio_ms / 1000, finite[0] ? "finite" : "NON-FINITE",
           finite[1] ? "finite" : "NON-FINITE", finite[2] ? "finite" : "NON-FINITE", finite[3] ? "finite" : "NON-FINITE");
    printf("measured: cuBLASLt bf16 GEMM %d^3 %.3f ms = %.1f TFLOP/s (tensor-core peak); D2D copy %.0f GB/s\n", G, gms,
           peak / 1e12, bw / 1e9);
    printf("| vocoder window | ms | TFLOP | TFLOP/s | tc floor ms | x tc floor | bw floor ms | x bw floor | RTF |\n");
    printf("|---|---|---|---|---|---|---|---|---|\n");
    for (int kk = 0; kk < 4; kk++)
        for (int gr = 0; gr < 2; gr++) {
            hmc_dtype t = kk == 1 ? HMC_F32 : HMC_BF16;
            double tc = fl / peak * 1e3, bwf = vcc_min_bytes(&cfg, W, t) / bw * 1e3, m = ms[kk][gr];
            printf("| %s, %s | %.2f | %.2f | %.1f | %.2f | %.1f | %.2f | %.1f | %.5f |\n", cname[kk],
                   gr ? "CUDA graph" : "eager", m, fl / 1e12, fl / (m * 1e-3) / 1e12, tc, m / tc, bwf, m / bwf,
                   m / audio_ms);
        }
    printf("(tc floor = FLOPs / bf16 peak also for fp32 weights; bw floor = each conv's input read + output written "
           "once, %s activations, + weights)\n", "bf16 (fp32 for the fp32 rows)");
    for (int kk = 0; kk < 4; kk++)
        printf("\nper op, %s (eager, an event after every op; in = quantise + first conv, upN = "
               "block N, out = x2 repeat + conv + PReLU + conv ->1):\n%s", cname[kk], prof[kk]);
    vcc_set_fused(g[0], 1);
    CU(cudaFree(pd));
    CU(cudaFree(ld));
    CU(cudaStreamDestroy(s));
    free(lat);
    vcc_free(g[0]);
    vcc_free(g[1]);
    voc_free(cpu);
    gemm_reset();
}

/* ---- mem: a vocoder process's device memory, step by step ------------------------------------- */

/* Builds what the vocoder stage holds with backend cuda, bf16 (the model at the release's sizes,
 * its workspace for one 744-frame window, the latents and PCM buffers) in this fresh process and
 * prints where each MiB went (cudaMemGetInfo after every step; the device must be otherwise idle),
 * nvidia-smi's figure for the process, then one window's time as a CUDA graph.  tiling 0: every
 * stage over the whole window (the layout before time tiles). */
static int mem_phase(int tiling)
{
    const hm_codec_config cfg = release_cfg();
    const int W = 744, H = cfg.latent_hidden_dim;
    const char *what[8] = {"CUDA context (cudaFree(0))", "cuBLASLt handle + its workspace (first GEMM)",
                           "weights (bf16; biases fp32)", "workspace for one window (activations, im2col)",
                           "the stage's latents [744, 256] + PCM [2, 1428480] (fp32)",
                           "first decode (GEMM plans, kernels loaded on first use)", "one window as a CUDA graph", ""};
    size_t u[8];
    gpu_mem_base(u);
    vcc_model *m;
    OK(vcc_init_random(&cfg, HMC_BF16, 5, &m));
    u[2] = gpu_mem_used();
    vcc_set_tiling(m, tiling, 0);
    OK(vcc_reserve(m, W));
    u[3] = gpu_mem_used();
    const size_t ns = (size_t)W * vcc_hop(m);
    float *lat = rvec((size_t)W * 2 * H, 2.0f), *ld = gpu_up(lat, (size_t)W * 2 * H, HMC_F32), *pd;
    CU(cudaMalloc((void **)&pd, sizeof(float) * 2 * ns));
    u[4] = gpu_mem_used();
    cudaStream_t s;
    CU(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    OK(vcc_decode_window(m, ld, W, ns, pd, s));
    CU(cudaStreamSynchronize(s));
    u[5] = gpu_mem_used();
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CU(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    OK(vcc_decode_window(m, ld, W, ns, pd, s));
    CU(cudaStreamEndCapture(s, &graph));
    CU(cudaGraphInstantiate(&exec, graph, 0));
    CU(cudaGraphLaunch(exec, s));
    CU(cudaStreamSynchronize(s));
    u[6] = gpu_mem_used();
    const long smi = gpu_smi_mib();
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    const int reps = 10;
    CU(cudaEventRecord(e0, s));
    for (int i = 0; i < reps; i++) CU(cudaGraphLaunch(exec, s));
    CU(cudaEventRecord(e1, s));
    const double ms = elapsed_ms(e0, e1) / reps;
    float *pcm = gpu_down(pd, 2 * ns, HMC_F32);
    int finite = 1;
    for (size_t i = 0; i < 2 * ns && finite; i++) finite = isfinite(pcm[i]);
    struct cudaDeviceProp prop;
    CU(cudaGetDeviceProperties(&prop, 0));
    char d[200];
    OK(vcc_describe(m, W, d, sizeof d));
    printf("mem: %s, random release-size vocoder, bf16, %s\n(%s)\n", prop.name, tiling ? "time tiles" : "untiled (before)", d);
    gpu_mem_table(what, u, (double)vcc_weight_bytes(m), 3, "", (double)vcc_workspace_bytes(m), smi);
    printf("mem %s: process %ld MiB (nvidia-smi), workspace %.1f MiB, window %.2f ms as a graph, output %s\n",
           tiling ? "tiled" : "untiled", smi, vcc_workspace_bytes(m) / 1048576.0, ms, finite ? "finite" : "NON-FINITE");
    free(lat);
    free(pcm);
    CU(cudaGraphExecDestroy(exec));
    CU(cudaGraphDestroy(graph));
    CU(cudaFree(ld));
    CU(cudaFree(pd));
    CU(cudaStreamDestroy(s));
    vcc_free(m);
    hmc_gemm_shutdown();
    return finite ? 0 : 1;
}

int main(int argc, char **argv)
{
    uint64_t seed = (uint64_t)time(NULL);
    if (argc >= 2 && !strcmp(argv[1], "mem")) { /* a process of its own: nothing else on the device */
        g_rng = 12345;
        return mem_phase(argc >= 3 && !strcmp(argv[2], "untiled") ? 0 : 1);
    }
    int phases = 0; /* bits: 1 ops, 2 fixture, 4 full, 8 xfade */
    const char *names[4] = {"ops", "fixture", "full", "xfade"};
    for (int i = 1; i < argc; i++) {
        int hit = 0;
        for (int k = 0; k < 4; k++)
            if (!strcmp(argv[i], names[k])) phases |= 1 << k, hit = 1;
        if (!hit) seed = strtoull(argv[i], NULL, 0);
    }
    if (!phases) phases = 15;
    g_rng = seed * 2654435761u + 1;
    printf("gpu_vocoder: seed %llu\n", (unsigned long long)seed);
    double t0 = hm_now();
    if (phases & 1) ops();
    if (phases & 2) {
        fixture(HMC_F32);
        fixture(HMC_BF16);
    }
    if (phases & 4) full(seed);
    if (phases & 8) xfade_phase();
    printf("gpu_vocoder: %d passed, %d failed (%.1f s)\n", n_pass, n_fail, hm_now() - t0);
    hmc_gemm_shutdown();
    return n_fail ? 1 : 0;
}
