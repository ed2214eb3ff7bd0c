/* gpu_codec.c - checker for the CUDA flow matching (kernels/codec_cuda.{h,cu}); needs a GPU.
 *   (a) each new kernel against its CPU twin on fresh random inputs (seed printed; pass one to
 *       replay), outputs poisoned with NaN first, released sizes included;
 *   (b) fmc_estimator on the reference fixture tests/fixtures/codec/codec_estimator (f32 and bf16);
 *   (c) fmc_solve_window against the CPU fm_solve_window on the tiny model, same noise;
 *   (d) timing at the released sizes (random bf16 weights made on the device) against the
 *       tensor-core floor = FLOPs / the measured peak of a large cuBLASLt bf16 GEMM.
 * Error = relative L2 ‖gpu − ref‖ / ‖ref‖; the CPU is fed exactly the values the GPU saw
 * (bf16-rounded inputs where the GPU reads bf16).  Prints PASS/FAIL rows, the timing table last;
 * exits 1 on any failure (2 on a hard error).  Run from the repo root:
 *   gpu_codec [seed] [ops] [fixture] [solve] [bench]   (no phase named: all; --no-bench: the first three) */

#include <cuda_runtime.h>
#include <time.h>

#include "codec_cuda.h"
#include "ops_cuda.h"

/* The CPU reference fm.c lives in the flow-matching stage library, which the Makefile's gpu_*
 * rule does not link: compile it into this program instead.  (After the CUDA headers: fm.c
 * brings in cblas.h -> complex.h, whose macro I clashes with a parameter name there.) */
#include "../stages/flow-matching/fm.c"

#define FIX "tests/fixtures/codec"

#include "gpu_check.h"

/* Device copy of v as type t; for bf16, v itself is rounded to what the device holds. */
static void *up(float *v, size_t n, hmc_dtype t)
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
static float *poison(size_t n, hmc_dtype t)
{
    void *d;
    CU(cudaMalloc(&d, n * hmc_dtype_size(t) + 16));
    CU(cudaMemset(d, 0xff, n * hmc_dtype_size(t))); /* NaN in f32 and bf16 */
    return d;
}
/* Synchronise and read n values of type t back as floats. */
static float *down(const void *d, size_t n, hmc_dtype t)
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

static int n_pass, n_fail;
static double relerr(const float *g, const float *r, size_t n, int *nonfinite)
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
static void verdict(const char *what, const char *shape, double err, int nonfinite, double bound)
{
    int ok = !nonfinite && err <= bound;
    ok ? n_pass++ : n_fail++;
    printf("%-4s %-16s %-40s err %.2e (bound %.0e)%s\n", ok ? "PASS" : "FAIL", what, shape, err, bound,
           nonfinite ? "  NON-FINITE/unwritten outputs" : "");
    fflush(stdout);
}
static void report(const char *what, const char *shape, const float *g, const float *r, size_t n, double bound)
{
    int nf;
    double e = relerr(g, r, n, &nf);
    verdict(what, shape, e, nf, bound);
}
static const char *dn(hmc_dtype t) { return t == HMC_BF16 ? "bf16" : "f32"; }

/* gemm.cu caches at most 64 cuBLASLt plans per process; each model/batch/dtype here brings ~20
 * shapes, so drop the cache between phases (after the device is idle). */
static void gemm_reset(void)
{
    CU(cudaDeviceSynchronize());
    hmc_gemm_shutdown();
}

/* ---- (a) op checks -------------------------------------------------------------------------- */

/* conv k3 pad 1 as im2col + GEMM (the estimator's ProjectLayer conv) vs cpu_conv1d_tmajor */
static void check_conv(int B, int T, int ca, int cb, int cout, hmc_dtype t)
{
    const int C = ca + cb;
    float *a = rvec((size_t)B * T * ca, 1.0f), *b = cb ? rvec((size_t)B * T * cb, 1.0f) : NULL;
    float *w = rvec((size_t)cout * 3 * C, 1.0f / sqrtf(3.0f * C)); /* device layout [cout, 3*C] */
    /* the GEMM reads bf16 copies of the activations: round them as the im2col does */
    float *ad = up(a, (size_t)B * T * ca, HMC_F32), *bd = cb ? up(b, (size_t)B * T * cb, HMC_F32) : NULL;
    if (t == HMC_BF16) {
        for (size_t i = 0; i < (size_t)B * T * ca; i++) a[i] = hm_bf16_to_f32(hm_f32_to_bf16(a[i]));
        for (size_t i = 0; cb && i < (size_t)B * T * cb; i++) b[i] = hm_bf16_to_f32(hm_f32_to_bf16(b[i]));
    }
    void *wd = up(w, (size_t)cout * 3 * C, t);
    void *col = poison((size_t)B * T * 3 * C, t);
    float *y = poison((size_t)B * T * cout, HMC_F32);
    OK(fmc_im2col3(ad, ca, bd, cb, B, T, col, t, 0));
    OK(hmc_gemm(col, wd, t, y, B * T, cout, 3 * C, 0, 0));
    float *g = down(y, (size_t)B * T * cout, HMC_F32);
    float *wt = hm_malloc(sizeof(float) * (size_t)cout * 3 * C), *x = hm_malloc(sizeof(float) * (size_t)T * C);
    float *ref = hm_malloc(sizeof(float) * (size_t)B * T * cout);
    for (int o = 0; o < cout; o++)
        for (int j = 0; j < 3; j++)
            for (int i = 0; i < C; i++) wt[((size_t)j * cout + o) * C + i] = w[(size_t)o * 3 * C + (size_t)j * C + i];
    for (int bi = 0; bi < B; bi++) {
        for (int r = 0; r < T; r++) {
            memcpy(x + (size_t)r * C, a + ((size_t)bi * T + r) * ca, sizeof(float) * ca);
            if (cb) memcpy(x + (size_t)r * C + ca, b + ((size_t)bi * T + r) * cb, sizeof(float) * cb);
        }
        cpu_conv1d_tmajor(x, T, C, wt, NULL, cout, 3, ref + (size_t)bi * T * cout);
    }
    char sh[64];
    snprintf(sh, sizeof sh, "B%d T%d %d+%d->%d %s", B, T, ca, cb, cout, dn(t));
    report("conv3(im2col)", sh, g, ref, (size_t)B * T * cout, 1e-5);
    free(a); free(b); free(w); free(g); free(wt); free(x); free(ref);
    CU(cudaFree(ad)); if (bd) CU(cudaFree(bd)); CU(cudaFree(wd)); CU(cudaFree(col)); CU(cudaFree(y));
}

static void check_bias_act(int M, int N, int act, hmc_dtype t)
{
    float *y = rvec((size_t)M * N, 3.0f), *b = rvec(N, 1.0f);
    const float s = 0.577f;
    float *yd = up(y, (size_t)M * N, HMC_F32), *bd = up(b, N, HMC_F32);
    void *cd = poison((size_t)M * N, t);
    OK(fmc_bias_act(yd, bd, M, N, s, 1, act, cd, t, 0));
    float *gy = down(yd, (size_t)M * N, HMC_F32), *gc = down(cd, (size_t)M * N, t);
    float *ry = hm_malloc(sizeof(float) * (size_t)M * N), *rc = hm_malloc(sizeof(float) * (size_t)M * N);
    for (size_t i = 0; i < (size_t)M * N; i++) {
        ry[i] = (y[i] + b[i % N]) * s;
        rc[i] = act ? ry[i] / (1.0f + expf(-ry[i])) : ry[i];
    }
    char sh[64];
    snprintf(sh, sizeof sh, "%dx%d y", M, N);
    report("bias_act", sh, gy, ry, (size_t)M * N, 1e-6);
    snprintf(sh, sizeof sh, "%dx%d %s -> %s", M, N, act ? "silu" : "id", dn(t));
    report("bias_act", sh, gc, rc, (size_t)M * N, t == HMC_BF16 ? 5e-3 : 1e-6);
    free(y); free(b); free(gy); free(gc); free(ry); free(rc);
    CU(cudaFree(yd)); CU(cudaFree(bd)); CU(cudaFree(cd));
}

static void check_norm_mod(int B, int T, int D, int rms, hmc_dtype t)
{
    const size_t n = (size_t)B * T * D;
    const int cs = 6 * D;
    float *x = rvec(n, 2.0f), *w = rvec(D, 1.0f), *tab = rvec(2 * (size_t)D, 0.5f), *cond = rvec((size_t)B * cs, 0.5f);
    float *xd = up(x, n, HMC_F32), *wd = up(w, D, HMC_F32), *td = up(tab, 2 * (size_t)D, HMC_F32),
          *cd = up(cond, (size_t)B * cs, HMC_F32);
    void *yd = poison(n, t);
    /* shift = tab[0] + cond[b, D..2D), scale = tab[1] + cond[b, 4D..5D) (offsets as a block uses them) */
    OK(fmc_norm_modulate(xd, rms ? wd : NULL, 1e-6f, td, td + D, cd + D, cd + 4 * D, cs, B, T, D, yd, t, 0));
    float *g = down(yd, n, t), *ref = hm_malloc(sizeof(float) * n), *sh = hm_malloc(sizeof(float) * 2 * D);
    if (rms) cpu_rmsnorm(x, w, ref, B * T, D, 1e-6f);
    else cpu_layernorm(x, ref, B * T, D, 1e-6f);
    for (int b = 0; b < B; b++) {
        for (int i = 0; i < D; i++) {
            sh[i] = tab[i] + cond[(size_t)b * cs + D + i];
            sh[D + i] = tab[D + i] + cond[(size_t)b * cs + 4 * D + i];
        }
        cpu_modulate(ref + (size_t)b * T * D, sh, sh + D, ref + (size_t)b * T * D, T, D);
    }
    char s[64];
    snprintf(s, sizeof s, "B%d T%d D%d %s -> %s", B, T, D, rms ? "rms" : "layer", dn(t));
    report("norm_modulate", s, g, ref, n, t == HMC_BF16 ? 5e-3 : 1e-5);
    free(x); free(w); free(tab); free(cond); free(g); free(ref); free(sh);
    CU(cudaFree(xd)); CU(cudaFree(wd)); CU(cudaFree(td)); CU(cudaFree(cd)); CU(cudaFree(yd));
}

static void check_gated_add(int B, int T, int D)
{
    const size_t n = (size_t)B * T * D;
    const int cs = 6 * D;
    float *x = rvec(n, 1.0f), *h = rvec(n, 1.0f), *tab = rvec(D, 0.5f), *cond = rvec((size_t)B * cs, 0.5f);
    float *xd = up(x, n, HMC_F32), *hd = up(h, n, HMC_F32), *td = up(tab, D, HMC_F32), *cd = up(cond, (size_t)B * cs, HMC_F32);
    OK(fmc_gated_add(xd, hd, td, cd + 2 * D, cs, B, T, D, 0));
    float *g = down(xd, n, HMC_F32), *gate = hm_malloc(sizeof(float) * D);
    for (int b = 0; b < B; b++) {
        for (int i = 0; i < D; i++) gate[i] = tab[i] + cond[(size_t)b * cs + 2 * D + i];
        cpu_gated_add(x + (size_t)b * T * D, gate, h + (size_t)b * T * D, T, D);
    }
    char s[64];
    snprintf(s, sizeof s, "B%d T%d D%d", B, T, D);
    report("gated_add", s, g, x, n, 1e-6);
    free(x); free(h); free(tab); free(cond); free(g); free(gate);
    CU(cudaFree(xd)); CU(cudaFree(hd)); CU(cudaFree(td)); CU(cudaFree(cd));
}

/* part p (0 q, 1 k, 2 v) of batch row b of qkv rows [B*T, 3*H*hd] -> [T, H*hd] */
static float *part(const float *qkv, int b, int T, int H, int hd, int p)
{
    const int w = H * hd;
    float *o = hm_malloc(sizeof(float) * (size_t)T * w);
    for (int r = 0; r < T; r++) memcpy(o + (size_t)r * w, qkv + ((size_t)b * T + r) * 3 * w + (size_t)p * w, sizeof(float) * w);
    return o;
}

static void check_rope(int B, int T, int H, int hd)
{
    const size_t n = (size_t)B * T * 3 * H * hd;
    float *qkv = rvec(n, 1.0f), *fr = hm_malloc(sizeof(float) * hd / 2);
    cpu_rope_freqs(fr, hd, 10000.0f, 0.0f);
    float *qd = up(qkv, n, HMC_F32), *fd = up(fr, hd / 2, HMC_F32);
    OK(fmc_rope_qk(qd, B, T, H, hd, fd, 0));
    float *g = down(qd, n, HMC_F32);
    double num = 0, den = 0;
    int nf = 0;
    for (int b = 0; b < B; b++)
        for (int p = 0; p < 3; p++) {
            float *r = part(qkv, b, T, H, hd, p), *gp = part(g, b, T, H, hd, p);
            if (p < 2) cpu_rope_interleaved(r, T, H, hd, 0, fr);
            for (size_t i = 0; i < (size_t)T * H * hd; i++) {
                if (!isfinite(gp[i])) nf++;
                num += ((double)gp[i] - r[i]) * ((double)gp[i] - r[i]), den += (double)r[i] * r[i];
            }
            free(r); free(gp);
        }
    char s[64];
    snprintf(s, sizeof s, "B%d T%d H%d hd%d", B, T, H, hd);
    verdict("rope_qk", s, sqrt(num / den), nf, 1e-5);
    free(qkv); free(fr); free(g);
    CU(cudaFree(qd)); CU(cudaFree(fd));
}

static void check_attention(int B, int T, int H, int hd, hmc_dtype ot)
{
    const size_t n = (size_t)B * T * 3 * H * hd, no = (size_t)B * T * H * hd;
    float *qkv = rvec(n, 2.0f);
    float *qd = up(qkv, n, HMC_F32);
    void *od = poison(no, ot);
    OK(fmc_attention(qd, B, T, H, hd, od, ot, 0));
    float *g = down(od, no, ot), *ref = hm_malloc(sizeof(float) * no);
    for (int b = 0; b < B; b++) {
        float *q = part(qkv, b, T, H, hd, 0), *k = part(qkv, b, T, H, hd, 1), *v = part(qkv, b, T, H, hd, 2);
        cpu_attention(q, k, v, ref + (size_t)b * T * H * hd, T, T, H, H, hd, 0, 0);
        free(q); free(k); free(v);
    }
    char s[64];
    snprintf(s, sizeof s, "B%d T%d H%d hd%d -> %s", B, T, H, hd, dn(ot));
    report("attention", s, g, ref, no, ot == HMC_BF16 ? 5e-3 : 1e-5);
    free(qkv); free(g); free(ref);
    CU(cudaFree(qd)); CU(cudaFree(od));
}

static void check_timestep(int B, int n)
{
    float *t = rvec(B, 1.0f);
    for (int b = 0; b < B; b++) t[b] = fabsf(t[b]);
    t[0] = 0.0f;
    float *td = up(t, B, HMC_F32), *od = poison((size_t)B * n, HMC_F32);
    OK(fmc_timestep_features(td, B, n, od, 0));
    float *g = down(od, (size_t)B * n, HMC_F32), *ref = hm_malloc(sizeof(float) * (size_t)B * n);
    for (int b = 0; b < B; b++) cpu_timestep_features(t[b], n, ref + (size_t)b * n);
    char s[64];
    snprintf(s, sizeof s, "B%d n%d", B, n);
    report("timestep_feat", s, g, ref, (size_t)B * n, 1e-5);
    free(t); free(g); free(ref);
    CU(cudaFree(td)); CU(cudaFree(od));
}

/* ---- (b) fixture, (c) solver ---------------------------------------------------------------- */

static float *st_floats(st_file *f, const char *name, int64_t *numel)
{
    st_tensor *t;
    OK(st_get(f, name, -1, NULL, &t));
    float *p = hm_malloc(sizeof(float) * (size_t)t->numel);
    OK(st_to_f32(t, p));
    if (numel) *numel = t->numel;
    return p;
}

static void check_fixture(hmc_dtype t, int attg)
{
    st_file *f;
    OK(st_open(FIX "/codec_estimator.safetensors", &f));
    int64_t nx, nt, nr;
    float *x = st_floats(f, "input", &nx), *tt = st_floats(f, "timestep", &nt), *ref = st_floats(f, "output_sub", &nr);
    st_tensor *st;
    int32_t stride = 0;
    OK(st_get(f, "output_stride", -1, NULL, &st));
    OK(st_to_i32(st, &stride));
    fmc_model *m;
    OK(fmc_load(FIX, t, &m));
    OK(fmc_set_attention_gemm(m, attg));
    const int B = (int)nt, C = fmc_config(m)->out_channels, cin = fmc_config(m)->in_channels, T = (int)(nx / B / cin);
    const size_t n = (size_t)B * T * C;
    float *xd = up(x, (size_t)nx, HMC_F32), *td = up(tt, B, HMC_F32), *od = poison(n, HMC_F32);
    OK(fmc_estimator(m, xd, td, B, T, od, 0));
    float *g = down(od, n, HMC_F32);
    /* the fixture kept every stride-th value of the whole flattened output (as test_codec.c reads it) */
    const size_t kept = (n + stride - 1) / stride;
    float *gs = hm_malloc(sizeof(float) * kept);
    int nf = 0, nf2;
    for (size_t i = 0; i < n; i++) nf += !isfinite(g[i]);
    for (size_t i = 0; i < kept; i++) gs[i] = g[i * stride];
    double e = relerr(gs, ref, kept, &nf2);
    char s[64];
    snprintf(s, sizeof s, "codec_estimator [%d,%d,%d] %s w%s", B, T, cin, dn(t), attg ? " attGEMM" : "");
    if ((size_t)nr != kept) {
        printf("FAIL fixture: output_sub has %lld values, expected %zu\n", (long long)nr, kept);
        n_fail++;
    } else {
        verdict("fixture", s, e, nf, t == HMC_BF16 ? 3e-2 : 1e-4);
    }
    fmc_free(m);
    free(x); free(tt); free(ref); free(g); free(gs);
    CU(cudaFree(xd)); CU(cudaFree(td)); CU(cudaFree(od));
    st_close(f);
}

static void check_solve(const fm_model *cpu, hmc_dtype t, int L, int steps, float guidance, int graphs, int attg)
{
    const int W = CODEC_WIN_FRAMES, C = fm_config(cpu)->out_channels, D = fm_config(cpu)->dim;
    float *cond = rvec((size_t)W * D, 1.0f), *ctx = rvec((size_t)W * C, 1.0f), *noise = rvec((size_t)W * C, 1.0f);
    float *ref = hm_malloc(sizeof(float) * (size_t)W * C);
    double t0 = hm_now();
    OK(fm_solve_window(cpu, cond, ctx, L, noise, steps, guidance, ref));
    double tcpu = hm_now() - t0;
    fmc_model *m;
    OK(fmc_load(FIX, t, &m));
    OK(fmc_set_attention_gemm(m, attg));
    float *cd = up(cond, (size_t)W * D, HMC_F32), *xd = up(ctx, (size_t)W * C, HMC_F32),
          *nd = up(noise, (size_t)W * C, HMC_F32), *od = poison((size_t)W * C, HMC_F32);
    cudaStream_t st; /* a created stream: the legacy default stream cannot be captured */
    CU(cudaStreamCreate(&st));
    OK(fmc_solve_window(m, cd, xd, L, nd, steps, guidance, od, st));
    float *g = down(od, (size_t)W * C, HMC_F32);
    char s[80];
    snprintf(s, sizeof s, "L%d %d steps g%.2f %s w%s (cpu %.1fs)", L, steps, guidance, dn(t), attg ? " attGEMM" : "", tcpu);
    report("solve_window", s, g, ref, (size_t)W * C, t == HMC_BF16 ? 3e-2 : 1e-4);
    if (graphs) { /* eager, then captured (second call), then replayed (third), outputs poisoned between */
        fmc_set_graphs(m, 1);
        for (int r = 0; r < 3; r++) {
            CU(cudaMemset(od, 0xff, sizeof(float) * (size_t)W * C));
            OK(fmc_solve_window(m, cd, xd, L, nd, steps, guidance, od, st));
            free(g);
            g = down(od, (size_t)W * C, HMC_F32);
            snprintf(s, sizeof s, "L%d %d steps g%.2f %s w%s, %s", L, steps, guidance, dn(t), attg ? " attGEMM" : "",
                     r == 0 ? "eager" : r == 1 ? "graph captured" : "graph replayed");
            report("solve_window", s, g, ref, (size_t)W * C, t == HMC_BF16 ? 3e-2 : 1e-4);
        }
    }
    CU(cudaStreamDestroy(st));
    fmc_free(m);
    free(cond); free(ctx); free(noise); free(ref); free(g);
    CU(cudaFree(cd)); CU(cudaFree(xd)); CU(cudaFree(nd)); CU(cudaFree(od));
}

/* ---- (d) timing ----------------------------------------------------------------------------- */

static double elapsed_ms(cudaEvent_t a, cudaEvent_t b)
{
    float ms;
    CU(cudaEventSynchronize(b));
    CU(cudaEventElapsedTime(&ms, a, b));
    return ms;
}

static void bench(void)
{
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    cudaStream_t s;
    CU(cudaStreamCreate(&s));
    struct cudaDeviceProp prop;
    int dev;
    CU(cudaGetDevice(&dev));
    CU(cudaGetDeviceProperties(&prop, dev));

    /* peak: a large bf16 GEMM through the same cuBLASLt wrapper */
    const int G = 8192;
    void *ga, *gb;
    float *gc;
    CU(cudaMalloc(&ga, (size_t)G * G * 2));
    CU(cudaMalloc(&gb, (size_t)G * G * 2));
    CU(cudaMalloc((void **)&gc, (size_t)G * G * 4));
    OK(hmc_fill_random(ga, HMC_BF16, (size_t)G * G, 1, 1.0f, s));
    OK(hmc_fill_random(gb, HMC_BF16, (size_t)G * G, 2, 1.0f, s));
    for (int i = 0; i < 3; i++) OK(hmc_gemm(ga, gb, HMC_BF16, gc, G, G, G, 0, s));
    const int greps = 10;
    CU(cudaEventRecord(e0, s));
    for (int i = 0; i < greps; i++) OK(hmc_gemm(ga, gb, HMC_BF16, gc, G, G, G, 0, s));
    CU(cudaEventRecord(e1, s));
    double gms = elapsed_ms(e0, e1) / greps;
    double peak = 2.0 * G * G * (double)G / (gms * 1e-3); /* FLOP/s */
    CU(cudaFree(ga)); CU(cudaFree(gb)); CU(cudaFree(gc));

    /* the released estimator (MODEL.md §3): dim 512, 24 heads x 64, 24 + 6 blocks, 1024 -> 256 */
    hm_codec_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.dim = 512, cfg.attention_head_dim = 64, cfg.num_attention_heads = 24, cfg.num_layers = 24;
    cfg.num_layers_2 = 6, cfg.in_channels = 1024, cfg.out_channels = 256;
    fmc_model *m;
    double tl = hm_now();
    OK(fmc_init_random(&cfg, HMC_BF16, 7, &m));
    tl = hm_now() - tl;
    const int B = 2, T = CODEC_WIN_FRAMES, C = cfg.out_channels, cin = cfg.in_channels;
    float *x, *t, *o, *cond, *ctx, *noise, *lat;
    CU(cudaMalloc((void **)&x, sizeof(float) * (size_t)B * T * cin));
    CU(cudaMalloc((void **)&o, sizeof(float) * (size_t)B * T * C));
    CU(cudaMalloc((void **)&t, sizeof(float) * 2));
    CU(cudaMalloc((void **)&cond, sizeof(float) * (size_t)T * cfg.dim));
    CU(cudaMalloc((void **)&ctx, sizeof(float) * (size_t)T * C));
    CU(cudaMalloc((void **)&noise, sizeof(float) * (size_t)T * C));
    CU(cudaMalloc((void **)&lat, sizeof(float) * (size_t)T * C));
    OK(hmc_fill_random(x, HMC_F32, (size_t)B * T * cin, 3, 1.0f, s));
    OK(hmc_fill_random(cond, HMC_F32, (size_t)T * cfg.dim, 4, 1.0f, s));
    OK(hmc_fill_random(ctx, HMC_F32, (size_t)T * C, 5, 1.0f, s));
    OK(hmc_fill_random(noise, HMC_F32, (size_t)T * C, 6, 1.0f, s));
    const float th[2] = {0.3f, 0.3f};
    CU(cudaMemcpy(t, th, sizeof th, cudaMemcpyHostToDevice));

    /* attention alone (the tiled kernel), to say where the time goes */
    float *qkv;
    void *ao;
    const int d2 = 2 * cfg.num_attention_heads * cfg.attention_head_dim;
    CU(cudaMalloc((void **)&qkv, sizeof(float) * (size_t)B * T * 3 * d2));
    CU(cudaMalloc(&ao, 2 * (size_t)B * T * d2));
    OK(hmc_fill_random(qkv, HMC_F32, (size_t)B * T * 3 * d2, 8, 1.0f, s));
    double att[2];
    for (int k = 0; k < 2; k++) {
        int hd = cfg.attention_head_dim << k;
        OK(fmc_attention(qkv, B, T, cfg.num_attention_heads, hd, ao, HMC_BF16, s));
        CU(cudaEventRecord(e0, s));
        for (int i = 0; i < 5; i++) OK(fmc_attention(qkv, B, T, cfg.num_attention_heads, hd, ao, HMC_BF16, s));
        CU(cudaEventRecord(e1, s));
        att[k] = elapsed_ms(e0, e1) / 5;
    }
    double att_ms = cfg.num_layers * att[0] + cfg.num_layers_2 * att[1];
    CU(cudaFree(qkv)); CU(cudaFree(ao));

    const int steps = 10;
    const float guidance = 1.25f;
    double ems[2], wms[2], gwms[2];
    int nf[2];
    float *o_tiled = NULL;
    for (int mode = 0; mode < 2; mode++) { /* 0: tiled attention kernel, 1: attention through cuBLASLt */
        OK(fmc_set_attention_gemm(m, mode));
        OK(fmc_estimator(m, x, t, B, T, o, s)); /* warm-up: cuBLASLt plans, attributes */
        const int ereps = 5;
        CU(cudaEventRecord(e0, s));
        for (int i = 0; i < ereps; i++) OK(fmc_estimator(m, x, t, B, T, o, s));
        CU(cudaEventRecord(e1, s));
        ems[mode] = elapsed_ms(e0, e1) / ereps;
        float *oh = down(o, (size_t)B * T * C, HMC_F32);
        nf[mode] = 0;
        for (size_t i = 0; i < (size_t)B * T * C; i++) nf[mode] += !isfinite(oh[i]);
        if (mode == 0) {
            o_tiled = oh;
        } else { /* the two attention paths at the released head sizes, same weights and input */
            report("estimator", "released, GEMM vs tiled attention (bf16)", oh, o_tiled, (size_t)B * T * C, 5e-2);
            free(oh);
            free(o_tiled);
        }

        OK(fmc_solve_window(m, cond, ctx, CODEC_CTX_FRAMES, noise, steps, guidance, lat, s));
        CU(cudaStreamSynchronize(s));
        wms[mode] = 1e30;
        for (int r = 0; r < 2; r++) {
            CU(cudaEventRecord(e0, s));
            OK(fmc_solve_window(m, cond, ctx, CODEC_CTX_FRAMES, noise, steps, guidance, lat, s));
            CU(cudaEventRecord(e1, s));
            double ms = elapsed_ms(e0, e1);
            if (ms < wms[mode]) wms[mode] = ms;
        }
        /* the same window as one CUDA graph (captured at the second call, replayed after) */
        fmc_set_graphs(m, 1);
        for (int r = 0; r < 2; r++) OK(fmc_solve_window(m, cond, ctx, CODEC_CTX_FRAMES, noise, steps, guidance, lat, s));
        CU(cudaStreamSynchronize(s));
        gwms[mode] = 1e30;
        for (int r = 0; r < 2; r++) {
            CU(cudaEventRecord(e0, s));
            OK(fmc_solve_window(m, cond, ctx, CODEC_CTX_FRAMES, noise, steps, guidance, lat, s));
            CU(cudaEventRecord(e1, s));
            double ms = elapsed_ms(e0, e1);
            if (ms < gwms[mode]) gwms[mode] = ms;
        }
        fmc_set_graphs(m, 0);
    }

    const double ef = fmc_estimator_flops(&cfg, B, T), wf = steps * ef;
    const double d1 = (double)cfg.num_attention_heads * cfg.attention_head_dim;
    const double attf = 4.0 * B * (double)T * T * (cfg.num_layers * d1 + cfg.num_layers_2 * 2 * d1);
    const double fl = ef / peak * 1e3, wfl = wf / peak * 1e3; /* floors, ms */
    /* (random weights: a non-finite output is reported, not failed; the checks above cover correctness) */
    printf("\ndevice: %s (%d SMs), random bf16 weights (init %.2f s), estimator output %s / %s (tiled / GEMM attention)\n",
           prop.name, prop.multiProcessorCount, tl, nf[0] ? "HAS NON-FINITE VALUES" : "finite",
           nf[1] ? "HAS NON-FINITE VALUES" : "finite");
    printf("FLOPs: estimator B=2 x 744 = %.3f TFLOP (attention %.3f of it); window = 10 steps x B=2 = %.2f TFLOP\n",
           ef / 1e12, attf / 1e12, wf / 1e12);
    printf("\n| what (released sizes, bf16 weights) | ms | TFLOP | achieved TFLOP/s | tensor-core floor ms | ratio to floor |\n"
           "|---|---|---|---|---|---|\n");
    printf("| cuBLASLt bf16 GEMM %dx%dx%d (peak) | %.3f | %.3f | %.1f | - | - |\n", G, G, G, gms, 2.0 * G * G * (double)G / 1e12,
           peak / 1e12);
    printf("| attention alone, tiled kernel (24 x hd64 + 6 x hd128) | %.2f | %.3f | %.1f | %.2f | %.2f |\n", att_ms,
           attf / 1e12, attf / (att_ms * 1e-3) / 1e12, attf / peak * 1e3, att_ms / (attf / peak * 1e3));
    const char *an[2] = {"tiled attention", "GEMM attention"};
    for (int mode = 0; mode < 2; mode++) {
        printf("| estimator B=2 T=744, %s | %.2f | %.3f | %.1f | %.2f | %.2f |\n", an[mode], ems[mode], ef / 1e12,
               ef / (ems[mode] * 1e-3) / 1e12, fl, ems[mode] / fl);
        printf("| window 10 steps CFG 1.25 L=104, %s | %.1f | %.2f | %.1f | %.2f | %.2f |\n", an[mode], wms[mode],
               wf / 1e12, wf / (wms[mode] * 1e-3) / 1e12, wfl, wms[mode] / wfl);
        printf("| same window as one CUDA graph, %s | %.1f | %.2f | %.1f | %.2f | %.2f |\n", an[mode], gwms[mode],
               wf / 1e12, wf / (gwms[mode] * 1e-3) / 1e12, wfl, gwms[mode] / wfl);
    }
    fmc_free(m);
    CU(cudaFree(x)); CU(cudaFree(o)); CU(cudaFree(t)); CU(cudaFree(cond)); CU(cudaFree(ctx)); CU(cudaFree(noise));
    CU(cudaFree(lat));
    CU(cudaStreamDestroy(s));
}

int main(int argc, char **argv)
{
    uint64_t seed = (uint64_t)time(NULL);
    int phases = 0; /* bits: 1 ops, 2 fixture, 4 solve, 8 bench; none named: all */
    const char *names[4] = {"ops", "fixture", "solve", "bench"};
    for (int i = 1; i < argc; i++) {
        int hit = 0;
        for (int k = 0; k < 4; k++)
            if (!strcmp(argv[i], names[k])) phases |= 1 << k, hit = 1;
        if (!strcmp(argv[i], "--no-bench")) phases |= 7, hit = 1;
        if (!hit) seed = strtoull(argv[i], NULL, 0);
    }
    if (!phases) phases = 15;
    g_rng = seed * 2654435761u + 1;
    printf("gpu_codec: seed %llu\n", (unsigned long long)seed);
    double t0 = hm_now();

    if (phases & 1) { /* (a) ops: tiny sizes (T not a multiple of the tiles) and the released ones */
        for (int k = 0; k < 2; k++) {
            hmc_dtype t = k ? HMC_BF16 : HMC_F32;
            check_conv(2, 75, 40, 24, 48, t);
            check_conv(2, 744, 544, 32, 64, t);
            check_bias_act(75, 96, 1, t);
            check_norm_mod(2, 75, 96, 1, t);
        }
        check_conv(1, 744, 1024, 0, 1536, HMC_BF16); /* released proj_in */
        check_bias_act(1488, 1536, 0, HMC_F32);
        check_norm_mod(2, 744, 1536, 1, HMC_F32);
        check_norm_mod(2, 744, 3072, 1, HMC_BF16);
        check_norm_mod(2, 744, 3072, 0, HMC_F32);
        check_gated_add(2, 75, 96);
        check_gated_add(2, 744, 3072);
        check_rope(2, 75, 2, 16);
        check_rope(2, 744, 24, 64);
        check_rope(1, 744, 24, 128);
        check_attention(2, 75, 2, 16, HMC_F32);
        check_attention(2, 75, 2, 32, HMC_BF16);
        check_attention(2, 744, 2, 16, HMC_F32);
        check_attention(1, 744, 24, 64, HMC_F32);
        check_attention(1, 744, 24, 128, HMC_F32);
        check_timestep(2, 512);
        printf("ops done in %.1f s\n", hm_now() - t0);
        gemm_reset();
    }
    if (phases & 2) { /* (b) the reference fixture */
        for (int a = 0; a < 2; a++) {
            check_fixture(HMC_F32, a);
            gemm_reset();
            check_fixture(HMC_BF16, a);
            gemm_reset();
        }
    }
    if (phases & 4) { /* (c) the solver against fm.c on the tiny model, same noise */
        fm_model *cpu;
        OK(fm_load(FIX, &cpu));
        check_solve(cpu, HMC_F32, CODEC_CTX_FRAMES, 10, 1.25f, 1, 0);
        gemm_reset();
        check_solve(cpu, HMC_BF16, CODEC_CTX_FRAMES, 10, 1.25f, 0, 0);
        gemm_reset();
        check_solve(cpu, HMC_F32, 0, 3, 1.0f, 0, 0);
        gemm_reset();
        check_solve(cpu, HMC_F32, CODEC_CTX_FRAMES, 10, 1.25f, 1, 1);
        gemm_reset();
        check_solve(cpu, HMC_BF16, CODEC_CTX_FRAMES, 10, 1.25f, 0, 1);
        gemm_reset();
        fm_free(cpu);
    }
    if (phases & 7) printf("gpu_codec: %d passed, %d failed (checks %.1f s)\n", n_pass, n_fail, hm_now() - t0);
    if (phases & 8) bench(); /* (d) timing, table last */
    hmc_gemm_shutdown();
    return n_fail ? 1 : 0;
}
