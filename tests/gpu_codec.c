/* gpu_codec.c - checker for the CUDA flow matching (kernels/codec_cuda.{h,cu}); needs a GPU.
 *   (a) each new kernel against its CPU twin on fresh random inputs (seed printed; pass one to
 *       replay), outputs poisoned with NaN first, released sizes included;
 *   (b) fmc_estimator on the reference fixture tests/fixtures/codec/codec_estimator (f32 and bf16);
 *   (c) fmc_solve_window against the CPU fm_solve_window on the tiny model, same noise;
 *   (d) timing at the released sizes (random bf16 weights made on the device) against the
 *       tensor-core floor = FLOPs / the measured peak of a large cuBLASLt bf16 GEMM, for each
 *       attention path with and without the fused residual-add + norm kernels;
 *   (e) quality guard: one window of a release-size random codec with bf16 vs fp32 weights made
 *       from the same seed (the weights checked equal up to the bf16 rounding first).
 * Error = relative L2 ‖gpu − ref‖ / ‖ref‖; the CPU is fed exactly the values the GPU saw
 * (bf16-rounded inputs where the GPU reads bf16).  Prints PASS/FAIL rows, the timing table last;
 * exits 1 on any failure (2 on a hard error).  Run from the repo root:
 *   gpu_codec [seed] [ops] [fixture] [solve] [bench] [quality]   (no phase named: all; --no-bench: the first three)
 *   gpu_codec detokcmp OUT.wav REF_output_sub.safetensors BOUND   (a CLI song against the reference)
 *   gpu_codec windows CODES.safetensors   (the stage's cuda window chain vs the CPU's, codes + noise_NN inside)
 *   gpu_codec mem [separate]   where a flow-matching process's device memory goes at the release's sizes
 *       (context, cuBLASLt, weights, workspace, the stage's buffers, first window, CUDA graph; alone on
 *       the device: cudaMemGetInfo steps and nvidia-smi's figure), then the graph's window time;
 *       `separate`: every workspace buffer on its own (fmc_set_scratch_sharing(m, 0), the layout before) */

#include <cuda_runtime.h>
#include <sndfile.h>
#include <time.h>

#include "codec_cuda.h"
#include "ops_cuda.h"

/* The CPU reference fm.c lives in the flow-matching stage library, which the Makefile's gpu_*
 * rule does not link: compile it into this program instead.  (After the CUDA headers: fm.c
 * brings in cblas.h -> complex.h, whose macro I clashes with a parameter name there.) */
#include "../stages/flow-matching/fm.c"

#define FIX "tests/fixtures/codec"

#include "gpu_check.h"


static int n_pass, n_fail;
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
    double e = gpu_relerr(g, r, n, &nf);
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
    float *ad = gpu_up(a, (size_t)B * T * ca, HMC_F32), *bd = cb ? gpu_up(b, (size_t)B * T * cb, HMC_F32) : NULL;
    if (t == HMC_BF16) {
        for (size_t i = 0; i < (size_t)B * T * ca; i++) a[i] = hm_bf16_to_f32(hm_f32_to_bf16(a[i]));
        for (size_t i = 0; cb && i < (size_t)B * T * cb; i++) b[i] = hm_bf16_to_f32(hm_f32_to_bf16(b[i]));
    }
    void *wd = gpu_up(w, (size_t)cout * 3 * C, t);
    void *col = gpu_poison((size_t)B * T * 3 * C, t);
    float *y = gpu_poison((size_t)B * T * cout, HMC_F32);
    OK(fmc_im2col3(ad, ca, bd, cb, B, T, col, t, 0));
    OK(hmc_gemm(col, wd, t, y, B * T, cout, 3 * C, 0, 0));
    float *g = gpu_down(y, (size_t)B * T * cout, HMC_F32);
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
    float *yd = gpu_up(y, (size_t)M * N, HMC_F32), *bd = gpu_up(b, N, HMC_F32);
    void *cd = gpu_poison((size_t)M * N, t);
    OK(fmc_bias_act(yd, bd, M, N, s, 1, act, cd, t, 0));
    float *gy = gpu_down(yd, (size_t)M * N, HMC_F32), *gc = gpu_down(cd, (size_t)M * N, t);
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
    float *xd = gpu_up(x, n, HMC_F32), *wd = gpu_up(w, D, HMC_F32), *td = gpu_up(tab, 2 * (size_t)D, HMC_F32),
          *cd = gpu_up(cond, (size_t)B * cs, HMC_F32);
    void *yd = gpu_poison(n, t);
    /* shift = tab[0] + cond[b, D..2D), scale = tab[1] + cond[b, 4D..5D) (offsets as a block uses them) */
    OK(fmc_norm_modulate(xd, rms ? wd : NULL, 1e-6f, td, td + D, cd + D, cd + 4 * D, cs, B, T, D, yd, t, 0));
    float *g = gpu_down(yd, n, t), *ref = hm_malloc(sizeof(float) * n), *sh = hm_malloc(sizeof(float) * 2 * D);
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
    float *xd = gpu_up(x, n, HMC_F32), *hd = gpu_up(h, n, HMC_F32), *td = gpu_up(tab, D, HMC_F32), *cd = gpu_up(cond, (size_t)B * cs, HMC_F32);
    OK(fmc_gated_add(xd, hd, td, cd + 2 * D, cs, B, T, D, 0));
    float *g = gpu_down(xd, n, HMC_F32), *gate = hm_malloc(sizeof(float) * D);
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
    float *qd = gpu_up(qkv, n, HMC_F32), *fd = gpu_up(fr, hd / 2, HMC_F32);
    OK(fmc_rope_qk(qd, B, T, H, hd, fd, 0));
    float *g = gpu_down(qd, n, HMC_F32);
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
    float *qd = gpu_up(qkv, n, HMC_F32);
    void *od = gpu_poison(no, ot);
    OK(fmc_attention(qd, B, T, H, hd, od, ot, 0));
    float *g = gpu_down(od, no, ot), *ref = hm_malloc(sizeof(float) * no);
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

/* the fused residual add + norm vs cpu_gated_add then the norm and modulation */
static void check_add_norm(int B, int T, int D, int rms, hmc_dtype t)
{
    const size_t n = (size_t)B * T * D;
    const int cs = 6 * D;
    float *x = rvec(n, 1.0f), *h = rvec(n, 1.0f), *w = rvec(D, 1.0f), *tab = rvec(3 * (size_t)D, 0.5f);
    float *cond = rvec((size_t)B * cs, 0.5f);
    float *xd = gpu_up(x, n, HMC_F32), *hd = gpu_up(h, n, HMC_F32), *wd = gpu_up(w, D, HMC_F32), *td = gpu_up(tab, 3 * (size_t)D, HMC_F32),
          *cd = gpu_up(cond, (size_t)B * cs, HMC_F32);
    void *yd = gpu_poison(n, t);
    OK(fmc_add_norm_modulate(xd, hd, td + 2 * D, cd + 2 * D, cs, rms ? wd : NULL, 1e-6f, td, td + D, cd + D, cd + 4 * D, cs,
                             B, T, D, yd, t, 0));
    float *gx = gpu_down(xd, n, HMC_F32), *gy = gpu_down(yd, n, t);
    float *ref = hm_malloc(sizeof(float) * n), *gate = hm_malloc(sizeof(float) * D), *sh = hm_malloc(sizeof(float) * 2 * D);
    for (int b = 0; b < B; b++) {
        for (int i = 0; i < D; i++) gate[i] = tab[2 * D + i] + cond[(size_t)b * cs + 2 * D + i];
        cpu_gated_add(x + (size_t)b * T * D, gate, h + (size_t)b * T * D, T, D);
    }
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
    snprintf(s, sizeof s, "B%d T%d D%d x", B, T, D);
    report("add_norm_mod", s, gx, x, n, 1e-6);
    snprintf(s, sizeof s, "B%d T%d D%d %s -> %s", B, T, D, rms ? "rms" : "layer", dn(t));
    report("add_norm_mod", s, gy, ref, n, t == HMC_BF16 ? 5e-3 : 1e-5);
    free(x); free(h); free(w); free(tab); free(cond); free(gx); free(gy); free(ref); free(gate); free(sh);
    CU(cudaFree(xd)); CU(cudaFree(hd)); CU(cudaFree(wd)); CU(cudaFree(td)); CU(cudaFree(cd)); CU(cudaFree(yd));
}

/* RoPE into a bf16 copy + the tensor-core flash kernel vs cpu_rope_interleaved + cpu_attention on
 * the same bf16-rounded q, k, v (the kernel's remaining error: P rounded to bf16 for P·V). */
static void check_flash(int B, int T, int H, int hd, hmc_dtype ot)
{
    const size_t n = (size_t)B * T * 3 * H * hd, no = (size_t)B * T * H * hd;
    float *qkv = rvec(n, 2.0f), *fr = hm_malloc(sizeof(float) * hd / 2);
    cpu_rope_freqs(fr, hd, 10000.0f, 0.0f);
    float *qd = gpu_up(qkv, n, HMC_F32), *fd = gpu_up(fr, hd / 2, HMC_F32);
    void *bd = gpu_poison(n, HMC_BF16), *od = gpu_poison(no, ot);
    OK(fmc_rope_qk_bf16(qd, B, T, H, hd, fd, bd, 0));
    OK(fmc_flash_attention(bd, B, T, H, hd, od, ot, 0));
    float *gb = gpu_down(bd, n, HMC_BF16), *g = gpu_down(od, no, ot), *ref = hm_malloc(sizeof(float) * no);
    double num = 0, den = 0;
    int nf = 0;
    for (int b = 0; b < B; b++) {
        float *p3[3];
        for (int p = 0; p < 3; p++) {
            p3[p] = part(qkv, b, T, H, hd, p);
            if (p < 2) cpu_rope_interleaved(p3[p], T, H, hd, 0, fr);
            for (int r = 0; r < T; r++)
                for (int i = 0; i < H * hd; i++) {
                    size_t k = ((size_t)b * T + r) * 3 * H * hd + (size_t)p * H * hd + i;
                    float want = p3[p][(size_t)r * H * hd + i];
                    if (!isfinite(gb[k])) nf++;
                    num += ((double)gb[k] - want) * ((double)gb[k] - want), den += (double)want * want;
                    p3[p][(size_t)r * H * hd + i] = hm_bf16_to_f32(hm_f32_to_bf16(want)); /* what the kernel reads */
                }
        }
        cpu_attention(p3[0], p3[1], p3[2], ref + (size_t)b * T * H * hd, T, T, H, H, hd, 0, 0);
        for (int p = 0; p < 3; p++) free(p3[p]);
    }
    char s[64];
    snprintf(s, sizeof s, "B%d T%d H%d hd%d -> bf16", B, T, H, hd);
    verdict("rope_qk_bf16", s, sqrt(num / den), nf, 5e-3);
    snprintf(s, sizeof s, "B%d T%d H%d hd%d -> %s", B, T, H, hd, dn(ot));
    report("flash_attention", s, g, ref, no, 1e-2);
    free(qkv); free(fr); free(gb); free(g); free(ref);
    CU(cudaFree(qd)); CU(cudaFree(fd)); CU(cudaFree(bd)); CU(cudaFree(od));
}

static void check_timestep(int B, int n)
{
    float *t = rvec(B, 1.0f);
    for (int b = 0; b < B; b++) t[b] = fabsf(t[b]);
    t[0] = 0.0f;
    float *td = gpu_up(t, B, HMC_F32), *od = gpu_poison((size_t)B * n, HMC_F32);
    OK(fmc_timestep_features(td, B, n, od, 0));
    float *g = gpu_down(od, (size_t)B * n, HMC_F32), *ref = hm_malloc(sizeof(float) * (size_t)B * n);
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

static const char *att_name(int mode)
{
    return mode == FMC_ATT_TILED ? "tiled" : mode == FMC_ATT_GEMM ? "attGEMM" : mode == FMC_ATT_FLASH ? "flash" : "auto";
}

static void check_fixture(hmc_dtype t, int attm)
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
    OK(fmc_set_attention(m, attm));
    const int B = (int)nt, C = fmc_config(m)->out_channels, cin = fmc_config(m)->in_channels, T = (int)(nx / B / cin);
    const size_t n = (size_t)B * T * C;
    float *xd = gpu_up(x, (size_t)nx, HMC_F32), *td = gpu_up(tt, B, HMC_F32), *od = gpu_poison(n, HMC_F32);
    OK(fmc_estimator(m, xd, td, B, T, od, 0));
    float *g = gpu_down(od, n, HMC_F32);
    /* the fixture kept every stride-th value of the whole flattened output (as test_codec.c reads it) */
    const size_t kept = (n + stride - 1) / stride;
    float *gs = hm_malloc(sizeof(float) * kept);
    int nf = 0, nf2;
    for (size_t i = 0; i < n; i++) nf += !isfinite(g[i]);
    for (size_t i = 0; i < kept; i++) gs[i] = g[i * stride];
    double e = gpu_relerr(gs, ref, kept, &nf2);
    char s[64];
    snprintf(s, sizeof s, "codec_estimator [%d,%d,%d] %s w %s", B, T, cin, dn(t), att_name(attm));
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

static void check_solve(const fm_model *cpu, hmc_dtype t, int L, int steps, float guidance, int graphs, int attm)
{
    const int W = CODEC_WIN_FRAMES, C = fm_config(cpu)->out_channels, D = fm_config(cpu)->dim;
    float *cond = rvec((size_t)W * D, 1.0f), *ctx = rvec((size_t)W * C, 1.0f), *noise = rvec((size_t)W * C, 1.0f);
    float *ref = hm_malloc(sizeof(float) * (size_t)W * C);
    double t0 = hm_now();
    OK(fm_solve_window(cpu, cond, ctx, L, noise, steps, guidance, ref));
    double tcpu = hm_now() - t0;
    fmc_model *m;
    OK(fmc_load(FIX, t, &m));
    OK(fmc_set_attention(m, attm));
    float *cd = gpu_up(cond, (size_t)W * D, HMC_F32), *xd = gpu_up(ctx, (size_t)W * C, HMC_F32),
          *nd = gpu_up(noise, (size_t)W * C, HMC_F32), *od = gpu_poison((size_t)W * C, HMC_F32);
    cudaStream_t st; /* a created stream: the legacy default stream cannot be captured */
    CU(cudaStreamCreate(&st));
    OK(fmc_solve_window(m, cd, xd, L, nd, steps, guidance, od, st));
    float *g = gpu_down(od, (size_t)W * C, HMC_F32);
    char s[80];
    snprintf(s, sizeof s, "L%d %d steps g%.2f %s w %s (cpu %.1fs)", L, steps, guidance, dn(t), att_name(attm), tcpu);
    report("solve_window", s, g, ref, (size_t)W * C, t == HMC_BF16 ? 3e-2 : 1e-4);
    if (graphs) { /* eager, then captured (second call), then replayed (third), outputs poisoned between */
        fmc_set_graphs(m, 1);
        for (int r = 0; r < 3; r++) {
            CU(cudaMemset(od, 0xff, sizeof(float) * (size_t)W * C));
            OK(fmc_solve_window(m, cd, xd, L, nd, steps, guidance, od, st));
            free(g);
            g = gpu_down(od, (size_t)W * C, HMC_F32);
            snprintf(s, sizeof s, "L%d %d steps g%.2f %s w %s, %s", L, steps, guidance, dn(t), att_name(attm),
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
    const int G = 8192; /* named in the table */
    double gms, peak = gpu_gemm_peak(s, &gms); /* FLOP/s */

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

    /* flash attention alone (RoPE + bf16 copy, then the kernel) */
    double fatt[2];
    {
        float *q2, *fr;
        void *qb, *ob;
        CU(cudaMalloc((void **)&q2, sizeof(float) * (size_t)B * T * 3 * d2));
        CU(cudaMalloc(&qb, 2 * (size_t)B * T * 3 * d2));
        CU(cudaMalloc(&ob, 2 * (size_t)B * T * d2));
        CU(cudaMalloc((void **)&fr, sizeof(float) * 64));
        OK(hmc_fill_random(q2, HMC_F32, (size_t)B * T * 3 * d2, 9, 1.0f, s));
        OK(hmc_fill_random(fr, HMC_F32, 64, 10, 0.5f, s));
        for (int k = 0; k < 2; k++) {
            int hd = cfg.attention_head_dim << k;
            OK(fmc_rope_qk_bf16(q2, B, T, cfg.num_attention_heads, hd, fr, qb, s));
            OK(fmc_flash_attention(qb, B, T, cfg.num_attention_heads, hd, ob, HMC_BF16, s));
            CU(cudaEventRecord(e0, s));
            for (int i = 0; i < 5; i++) {
                OK(fmc_rope_qk_bf16(q2, B, T, cfg.num_attention_heads, hd, fr, qb, s));
                OK(fmc_flash_attention(qb, B, T, cfg.num_attention_heads, hd, ob, HMC_BF16, s));
            }
            CU(cudaEventRecord(e1, s));
            fatt[k] = elapsed_ms(e0, e1) / 5;
        }
        CU(cudaFree(q2)); CU(cudaFree(qb)); CU(cudaFree(ob)); CU(cudaFree(fr));
    }
    double fatt_ms = cfg.num_layers * fatt[0] + cfg.num_layers_2 * fatt[1];

    const int steps = 10;
    const float guidance = 1.25f;
    /* configurations, the previous default path first ("before") and the new default last ("after") */
    enum { NCONF = 5 };
    const struct { int att, fuse; const char *name; } conf[NCONF] = {
        {FMC_ATT_GEMM, 0, "GEMM attention, unfused (before)"}, {FMC_ATT_TILED, 1, "tiled attention, fused"},
        {FMC_ATT_GEMM, 1, "GEMM attention, fused"}, {FMC_ATT_FLASH, 0, "flash attention, unfused"},
        {FMC_ATT_FLASH, 1, "flash attention, fused (default, after)"}};
    double ems[NCONF], wms[NCONF], gwms[NCONF];
    int nf[NCONF];
    float *o_ref = NULL;
    for (int c = 0; c < NCONF; c++) {
        OK(fmc_set_attention(m, conf[c].att));
        fmc_set_fusion(m, conf[c].fuse);
        OK(fmc_estimator(m, x, t, B, T, o, s)); /* warm-up: cuBLASLt plans, attributes */
        const int ereps = 5;
        CU(cudaEventRecord(e0, s));
        for (int i = 0; i < ereps; i++) OK(fmc_estimator(m, x, t, B, T, o, s));
        CU(cudaEventRecord(e1, s));
        ems[c] = elapsed_ms(e0, e1) / ereps;
        float *oh = gpu_down(o, (size_t)B * T * C, HMC_F32);
        nf[c] = 0;
        for (size_t i = 0; i < (size_t)B * T * C; i++) nf[c] += !isfinite(oh[i]);
        if (c == 0) {
            o_ref = oh;
        } else { /* every path at the released head sizes against the first, same weights and input */
            char sh[96];
            snprintf(sh, sizeof sh, "released bf16, %s vs GEMM unfused", conf[c].name);
            report("estimator", sh, oh, o_ref, (size_t)B * T * C, 5e-2);
            free(oh);
        }
        OK(fmc_solve_window(m, cond, ctx, CODEC_CTX_FRAMES, noise, steps, guidance, lat, s));
        CU(cudaStreamSynchronize(s));
        wms[c] = 1e30;
        for (int r = 0; r < 2; r++) {
            CU(cudaEventRecord(e0, s));
            OK(fmc_solve_window(m, cond, ctx, CODEC_CTX_FRAMES, noise, steps, guidance, lat, s));
            CU(cudaEventRecord(e1, s));
            double ms = elapsed_ms(e0, e1);
            if (ms < wms[c]) wms[c] = ms;
        }
        /* the same window as one CUDA graph (captured at the second call, replayed after) */
        fmc_set_graphs(m, 1);
        for (int r = 0; r < 2; r++) OK(fmc_solve_window(m, cond, ctx, CODEC_CTX_FRAMES, noise, steps, guidance, lat, s));
        CU(cudaStreamSynchronize(s));
        gwms[c] = 1e30;
        for (int r = 0; r < 3; r++) {
            CU(cudaEventRecord(e0, s));
            OK(fmc_solve_window(m, cond, ctx, CODEC_CTX_FRAMES, noise, steps, guidance, lat, s));
            CU(cudaEventRecord(e1, s));
            double ms = elapsed_ms(e0, e1);
            if (ms < gwms[c]) gwms[c] = ms;
        }
        fmc_set_graphs(m, 0);
    }
    free(o_ref);

    const double ef = fmc_estimator_flops(&cfg, B, T), wf = steps * ef;
    const double d1 = (double)cfg.num_attention_heads * cfg.attention_head_dim;
    const double attf = 4.0 * B * (double)T * T * (cfg.num_layers * d1 + cfg.num_layers_2 * 2 * d1);
    const double fl = ef / peak * 1e3, wfl = wf / peak * 1e3; /* floors, ms */
    /* (random weights: a non-finite output is reported, not failed; the checks above cover correctness) */
    int anynf = 0;
    for (int c = 0; c < NCONF; c++) anynf += nf[c];
    printf("\ndevice: %s (%d SMs), random bf16 weights (init %.2f s), estimator outputs %s\n", prop.name,
           prop.multiProcessorCount, tl, anynf ? "HAVE NON-FINITE VALUES" : "finite");
    printf("FLOPs: estimator B=2 x 744 = %.3f TFLOP (attention %.3f of it); window = 10 steps x B=2 = %.2f TFLOP\n",
           ef / 1e12, attf / 1e12, wf / 1e12);
    printf("\n| what (released sizes, bf16 weights) | ms | TFLOP | achieved TFLOP/s | tensor-core floor ms | ratio to floor |\n"
           "|---|---|---|---|---|---|\n");
    printf("| cuBLASLt bf16 GEMM %dx%dx%d (peak) | %.3f | %.3f | %.1f | - | - |\n", G, G, G, gms, 2.0 * G * G * (double)G / 1e12,
           peak / 1e12);
    printf("| attention alone, tiled kernel (24 x hd64 + 6 x hd128) | %.2f | %.3f | %.1f | %.2f | %.2f |\n", att_ms,
           attf / 1e12, attf / (att_ms * 1e-3) / 1e12, attf / peak * 1e3, att_ms / (attf / peak * 1e3));
    printf("| attention alone, RoPE->bf16 + flash kernel (24 x hd64 + 6 x hd128) | %.2f | %.3f | %.1f | %.2f | %.2f |\n",
           fatt_ms, attf / 1e12, attf / (fatt_ms * 1e-3) / 1e12, attf / peak * 1e3, fatt_ms / (attf / peak * 1e3));
    for (int c = 0; c < NCONF; c++) {
        printf("| estimator B=2 T=744, %s | %.2f | %.3f | %.1f | %.2f | %.2f |\n", conf[c].name, ems[c], ef / 1e12,
               ef / (ems[c] * 1e-3) / 1e12, fl, ems[c] / fl);
        printf("| window 10 steps CFG 1.25 L=104, %s | %.1f | %.2f | %.1f | %.2f | %.2f |\n", conf[c].name, wms[c],
               wf / 1e12, wf / (wms[c] * 1e-3) / 1e12, wfl, wms[c] / wfl);
        printf("| same window as one CUDA graph, %s | %.1f | %.2f | %.1f | %.2f | %.2f |\n", conf[c].name, gwms[c],
               wf / 1e12, wf / (gwms[c] * 1e-3) / 1e12, wfl, gwms[c] / wfl);
    }
    fmc_free(m);
    CU(cudaFree(x)); CU(cudaFree(o)); CU(cudaFree(t)); CU(cudaFree(cond)); CU(cudaFree(ctx)); CU(cudaFree(noise));
    CU(cudaFree(lat));
    CU(cudaStreamDestroy(s));
}

/* ---- (e) quality guard: bf16 vs fp32 weights on a release-size random codec ------------------- */

static hm_codec_config release_cfg(void)
{
    hm_codec_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.dim = 512, cfg.attention_head_dim = 64, cfg.num_attention_heads = 24, cfg.num_layers = 24;
    cfg.num_layers_2 = 6, cfg.in_channels = 1024, cfg.out_channels = 256;
    return cfg;
}

static void quality(void)
{
    const hm_codec_config cfg = release_cfg();
    const uint64_t seed = 11;
    fmc_model *m32, *m16;
    OK(fmc_init_random(&cfg, HMC_F32, seed, &m32));
    OK(fmc_init_random(&cfg, HMC_BF16, seed, &m16));
    /* the same weights: every bf16 value is the fp32 model's value rounded (tables: equal) */
    const int nw = fmc_weight_count(m32);
    size_t total = 0, bad = 0;
    if (fmc_weight_count(m16) != nw) bad = 1;
    for (int i = 0; i < nw && !bad; i++) {
        float *a, *b;
        size_t na, nb;
        OK(fmc_weight_get(m32, i, &a, &na));
        OK(fmc_weight_get(m16, i, &b, &nb));
        if (na != nb) bad++;
        for (size_t j = 0; j < na && na == nb; j++)
            if (b[j] != a[j] && b[j] != hm_bf16_to_f32(hm_f32_to_bf16(a[j]))) bad++;
        total += na;
        free(a);
        free(b);
    }
    char s[96];
    snprintf(s, sizeof s, "seed %llu: %d buffers, %zu values", (unsigned long long)seed, nw, total);
    printf("%-4s %-16s %-40s %zu differ\n", bad ? "FAIL" : "PASS", "same_weights", s, bad);
    bad ? n_fail++ : n_pass++;

    const int T = CODEC_WIN_FRAMES, C = cfg.out_channels, L = CODEC_CTX_FRAMES;
    float *cond, *ctx, *noise, *lat;
    CU(cudaMalloc((void **)&cond, sizeof(float) * (size_t)T * cfg.dim));
    CU(cudaMalloc((void **)&ctx, sizeof(float) * (size_t)T * C));
    CU(cudaMalloc((void **)&noise, sizeof(float) * (size_t)T * C));
    CU(cudaMalloc((void **)&lat, sizeof(float) * (size_t)T * C));
    OK(hmc_fill_random(cond, HMC_F32, (size_t)T * cfg.dim, 21, 1.0f, 0));
    OK(hmc_fill_random(ctx, HMC_F32, (size_t)T * C, 22, 1.0f, 0));
    OK(hmc_fill_random(noise, HMC_F32, (size_t)T * C, 23, 1.0f, 0));
    cudaStream_t st;
    CU(cudaStreamCreate(&st));
    double t0 = hm_now();
    OK(fmc_solve_window(m32, cond, ctx, L, noise, 10, 1.25f, lat, st));
    float *ref = gpu_down(lat, (size_t)T * C, HMC_F32);
    double t32 = hm_now() - t0;
    const size_t gen = (size_t)(T - L) * C; /* rows >= L: what the solver made (rows < L are ctx in both) */
    const int modes[2] = {FMC_ATT_FLASH, FMC_ATT_GEMM};
    for (int k = 0; k < 2; k++) {
        OK(fmc_set_attention(m16, modes[k]));
        OK(fmc_solve_window(m16, cond, ctx, L, noise, 10, 1.25f, lat, st));
        float *g = gpu_down(lat, (size_t)T * C, HMC_F32);
        snprintf(s, sizeof s, "window latents, bf16 (%s) vs fp32 weights", att_name(modes[k]));
        report("quality", s, g + (size_t)L * C, ref + (size_t)L * C, gen, 5e-2);
        free(g);
    }
    printf("(quality: release-size random codec seed %llu, 10 steps CFG 1.25 L=104; fp32 window %.2f s; error over the "
           "%d generated rows)\n", (unsigned long long)seed, t32, T - L);
    free(ref);

    /* adaLN tables (the default) against the per-call adaLN, and the adaLN weights on the host
     * against on the device: the same kernels on the same inputs, so the latents must be equal
     * to the bit (eager and as a replayed graph, CFG and not) */
    OK(fmc_set_attention(m16, FMC_ATT_FLASH));
    for (int cfgk = 0; cfgk < 2; cfgk++) {
        const float gd = cfgk ? 1.25f : 1.0f;
        const int steps = cfgk ? 10 : 4;
        float *lat_ref, *lat_t;
        fmc_set_adaln_tables(m16, 0);
        OK(fmc_solve_window(m16, cond, ctx, L, noise, steps, gd, lat, st));
        lat_ref = gpu_down(lat, (size_t)T * C, HMC_F32);
        fmc_set_adaln_tables(m16, 1);
        const size_t wb = fmc_weight_bytes(m16);
        OK(fmc_set_adaln_host(m16, 1));
        const size_t wh = fmc_weight_bytes(m16);
        fmc_set_graphs(m16, 1);
        size_t differ = 0;
        for (int r = 0; r < 3; r++) { /* eager, captured, replayed */
            OK(fmc_solve_window(m16, cond, ctx, L, noise, steps, gd, lat, st));
            lat_t = gpu_down(lat, (size_t)T * C, HMC_F32);
            for (size_t i = 0; i < (size_t)T * C; i++) differ += memcmp(&lat_t[i], &lat_ref[i], 4) != 0;
            free(lat_t);
        }
        fmc_set_graphs(m16, 0);
        snprintf(s, sizeof s, "%d steps %s: tables, weights on host", steps, cfgk ? "CFG 1.25" : "no CFG");
        printf("%-4s %-16s %-40s %zu of %zu values differ; weights %.1f -> %.1f MiB, tables %.2f MiB\n",
               differ ? "FAIL" : "PASS", "adaln", s, differ, 3 * (size_t)T * C, wb / 1048576.0, wh / 1048576.0,
               fmc_adaln_table_bytes(m16) / 1048576.0);
        differ ? n_fail++ : n_pass++;
        /* a direct estimator call brings the weights up for itself: equal to the device-resident run */
        if (cfgk) {
            float *xe, *te, *oe;
            const size_t nx = (size_t)2 * T * cfg.in_channels, no = (size_t)2 * T * C;
            CU(cudaMalloc((void **)&xe, sizeof(float) * nx));
            CU(cudaMalloc((void **)&te, sizeof(float) * 2));
            CU(cudaMalloc((void **)&oe, sizeof(float) * no));
            OK(hmc_fill_random(xe, HMC_F32, nx, 31, 1.0f, st));
            const float th[2] = {0.3f, 0.3f};
            CU(cudaMemcpy(te, th, sizeof th, cudaMemcpyHostToDevice));
            OK(fmc_estimator(m16, xe, te, 2, T, oe, st));
            float *oh = gpu_down(oe, no, HMC_F32);
            OK(fmc_set_adaln_host(m16, 0));
            OK(fmc_estimator(m16, xe, te, 2, T, oe, st));
            float *od = gpu_down(oe, no, HMC_F32);
            size_t dd = 0;
            for (size_t i = 0; i < no; i++) dd += memcmp(&oh[i], &od[i], 4) != 0;
            printf("%-4s %-16s %-40s %zu of %zu values differ\n", dd ? "FAIL" : "PASS", "adaln",
                   "estimator, weights on host vs device", dd, no);
            dd ? n_fail++ : n_pass++;
            free(oh), free(od);
            CU(cudaFree(xe)); CU(cudaFree(te)); CU(cudaFree(oe));
        } else {
            OK(fmc_set_adaln_host(m16, 0));
        }
        free(lat_ref);
    }
    CU(cudaStreamDestroy(st));
    fmc_free(m32);
    fmc_free(m16);
    CU(cudaFree(cond)); CU(cudaFree(ctx)); CU(cudaFree(noise)); CU(cudaFree(lat));
}

/* detokcmp WAV REF BOUND: a song written by `heartmula detokenize --sample-format f32` against the
 * reference's subsampled output (tests/fixtures/codec/NAME_output_sub.safetensors), as
 * tests/test_pipeline.c compares them: exact length, relative L2 over the kept samples. */
static int detokcmp(const char *wav, const char *refp, double bound)
{
    SF_INFO info;
    memset(&info, 0, sizeof info);
    SNDFILE *sf = sf_open(wav, SFM_READ, &info);
    if (!sf || info.channels != 2) {
        printf("FAIL detokenize %s: cannot read a stereo file\n", wav);
        return 1;
    }
    float *pcm = hm_malloc((size_t)info.frames * 2 * sizeof(float));
    sf_count_t got = sf_readf_float(sf, pcm, info.frames);
    sf_close(sf);
    st_file *f;
    OK(st_open(refp, &f));
    int64_t nsub;
    float *sub = st_floats(f, "output_sub", &nsub);
    st_tensor *tl, *ts;
    OK(st_get(f, "output_len", -1, NULL, &tl));
    OK(st_get(f, "output_stride", -1, NULL, &ts));
    int32_t len, stride;
    OK(st_to_i32(tl, &len));
    OK(st_to_i32(ts, &stride));
    const int64_t per = nsub / 2;
    double num = 0, den = 0;
    int ok = got == info.frames && info.frames == len;
    for (int c = 0; c < 2 && ok; c++)
        for (int64_t i = 0; i < per; i++) {
            double r = sub[c * per + i], g = pcm[(i * stride) * 2 + c];
            num += (g - r) * (g - r), den += r * r;
        }
    double rel = ok ? sqrt(num / den) : INFINITY;
    /* where the error sits: window 0 alone, the first cross-fade, and after (48 kHz geometry) */
    const int64_t edge[4] = {0, 1228800, 1428480, INT64_MAX};
    for (int r = 0; r < 3 && got == info.frames && info.frames == len; r++) {
        double nr = 0, dr = 0;
        for (int c = 0; c < 2; c++)
            for (int64_t i = 0; i < per; i++) {
                int64_t sidx = i * stride;
                if (sidx < edge[r] || sidx >= edge[r + 1]) continue;
                double rv = sub[c * per + i], g = pcm[sidx * 2 + c];
                nr += (g - rv) * (g - rv), dr += rv * rv;
            }
        if (dr > 0) printf("  samples [%lld, %s): relative L2 %.3g\n", (long long)edge[r], r == 2 ? "end" : r ? "1428480" : "1228800",
                           sqrt(nr / dr));
    }
    ok = ok && rel <= bound;
    printf("%s detokenize %s: %lld frames (reference %d), relative L2 %.3g over %lld kept samples (bound %.0e)\n",
           ok ? "PASS" : "FAIL", wav, (long long)info.frames, len, rel, (long long)(2 * per), bound);
    free(pcm);
    free(sub);
    st_close(f);
    return ok ? 0 : 1;
}

/* windows CODES_FILE: the flow-matching stage's backend-cuda window chain in one process
 * (fm_window_inputs on the host from an fm_load_cond model, fmc_solve_window with the previous
 * window's last rows kept on the device, graphs on, fixed buffers as the stage has them) against
 * the CPU chain of fm_window, per window, fp32 and bf16, over two songs on one model. */
static int windows(const char *path)
{
    st_file *f;
    st_tensor *t;
    OK(st_open(path, &f));
    OK(st_get(f, "codes", -1, NULL, &t));
    const int T = (int)t->shape[1], ncb = (int)t->shape[0];
    int32_t *codes = hm_malloc(sizeof(int32_t) * (size_t)T * ncb);
    OK(st_to_i32(t, codes));
    st_close(f);
    codec_plan p;
    OK(codec_plan_make(T, 48000, &p));
    fm_model *cpu, *cond; /* the CPU reference; the conditioning-only model the stage loads */
    OK(fm_load(FIX, &cpu));
    OK(fm_load_cond(FIX, &cond));
    const int W = CODEC_WIN_FRAMES, C = fm_config(cpu)->out_channels, D = fm_config(cpu)->dim, L0 = CODEC_CTX_FRAMES;
    int32_t *win = hm_malloc(sizeof(int32_t) * (size_t)ncb * CODEC_WIN_CODES);
    float **ref = hm_calloc((size_t)p.n_windows, sizeof(float *));
    codec_noise *nz;
    OK(codec_noise_replay(path, &nz));
    for (int k = 0; k < p.n_windows; k++) {
        ref[k] = hm_malloc(sizeof(float) * (size_t)W * C);
        codec_plan_window_codes(&p, codes, ncb, k, win);
        OK(fm_window(cpu, win, k ? ref[k - 1] : NULL, nz, k, 10, 1.25f, ref[k]));
    }
    codec_noise_free(nz);
    float *hc = hm_malloc(sizeof(float) * (size_t)W * D), *hn = hm_malloc(sizeof(float) * (size_t)W * C);
    float *dc, *dnz, *dx, *dout, *dprev;
    CU(cudaMalloc((void **)&dc, sizeof(float) * (size_t)W * D));
    CU(cudaMalloc((void **)&dnz, sizeof(float) * (size_t)W * C));
    CU(cudaMalloc((void **)&dx, sizeof(float) * (size_t)W * C));
    CU(cudaMalloc((void **)&dout, sizeof(float) * (size_t)W * C));
    CU(cudaMalloc((void **)&dprev, sizeof(float) * (size_t)L0 * C));
    cudaStream_t st;
    CU(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    for (int dt = 0; dt < 2; dt++) {
        hmc_dtype wt = dt ? HMC_BF16 : HMC_F32;
        fmc_model *m;
        OK(fmc_load(FIX, wt, &m));
        fmc_set_graphs(m, 1);
        for (int rep = 0; rep < 2; rep++) { /* a second song on the same model: graphs captured / replayed */
            OK(codec_noise_replay(path, &nz));
            for (int k = 0; k < p.n_windows; k++) {
                int L;
                codec_plan_window_codes(&p, codes, ncb, k, win);
                OK(fm_window_inputs(cond, win, nz, k, hc, hn, &L));
                CU(cudaMemcpyAsync(dc, hc, sizeof(float) * (size_t)W * D, cudaMemcpyHostToDevice, st));
                CU(cudaMemcpyAsync(dnz, hn, sizeof(float) * (size_t)W * C, cudaMemcpyHostToDevice, st));
                if (L) CU(cudaMemcpyAsync(dx, dprev, sizeof(float) * (size_t)L * C, cudaMemcpyDeviceToDevice, st));
                OK(fmc_solve_window(m, dc, dx, L, dnz, 10, 1.25f, dout, st));
                CU(cudaMemcpyAsync(dprev, dout + (size_t)(W - L0) * C, sizeof(float) * (size_t)L0 * C,
                                   cudaMemcpyDeviceToDevice, st));
                CU(cudaStreamSynchronize(st));
                float *g = gpu_down(dout, (size_t)W * C, HMC_F32);
                char sh[96];
                snprintf(sh, sizeof sh, "%s window %d/%d L%d %s song %d", strrchr(path, '/') ? strrchr(path, '/') + 1 : path,
                         k, p.n_windows, L, dn(wt), rep);
                report("stage_window", sh, g, ref[k], (size_t)W * C, wt == HMC_BF16 ? 3e-2 : 1e-4);
                free(g);
            }
            codec_noise_free(nz);
        }
        fmc_free(m);
        gemm_reset();
    }
    CU(cudaStreamDestroy(st));
    CU(cudaFree(dc)); CU(cudaFree(dnz)); CU(cudaFree(dx)); CU(cudaFree(dout)); CU(cudaFree(dprev));
    for (int k = 0; k < p.n_windows; k++) free(ref[k]);
    free(ref); free(hc); free(hn); free(win); free(codes);
    fm_free(cpu);
    fm_free(cond);
    printf("gpu_codec windows: %d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}

/* ---- mem: a flow-matching process's device memory, step by step ------------------------------ */

/* Builds what the flow-matching stage holds with backend cuda, bf16 (the released estimator, its
 * device buffers for one window, the workspace, the solve's CUDA graph: the stage turns graphs on)
 * in this fresh process and prints where each MiB went, nvidia-smi's figure for the process and
 * one 10-step CFG window's time (graph replay).  sharing 0: no shared scratch (before). */
static int mem_phase(int sharing, int ada_host)
{
    hm_codec_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.dim = 512, cfg.attention_head_dim = 64, cfg.num_attention_heads = 24, cfg.num_layers = 24;
    cfg.num_layers_2 = 6, cfg.in_channels = 1024, cfg.out_channels = 256;
    const int T = CODEC_WIN_FRAMES, C = cfg.out_channels, steps = 10;
    const float guidance = 1.25f;
    const char *what[8] = {"CUDA context (cudaFree(0))", "cuBLASLt handle + its workspace (first GEMM)",
                           "weights (bf16; norms, tables fp32)", "the stage's cond [744, 512] + ctx, noise, out [744, 256]",
                           "first window, eager (workspace, GEMM plans, kernels loaded on first use)",
                           "second window: captured + instantiated as a CUDA graph", "third window (graph replay)", ""};
    size_t u[8];
    gpu_mem_base(u);
    fmc_model *m;
    OK(fmc_init_random(&cfg, HMC_BF16, 7, &m));
    if (ada_host) OK(fmc_set_adaln_host(m, 1)); /* as the stage */
    CU(cudaDeviceSynchronize());
    u[2] = gpu_mem_used();
    OK(fmc_set_attention(m, FMC_ATT_AUTO)); /* as the stage */
    fmc_set_graphs(m, 1);
    fmc_set_scratch_sharing(m, sharing);
    float *cond, *ctx, *noise, *lat;
    cudaStream_t s;
    CU(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CU(cudaMalloc((void **)&cond, sizeof(float) * (size_t)T * cfg.dim));
    CU(cudaMalloc((void **)&ctx, sizeof(float) * (size_t)T * C));
    CU(cudaMalloc((void **)&noise, sizeof(float) * (size_t)T * C));
    CU(cudaMalloc((void **)&lat, sizeof(float) * (size_t)T * C));
    OK(hmc_fill_random(cond, HMC_F32, (size_t)T * cfg.dim, 4, 1.0f, s));
    OK(hmc_fill_random(ctx, HMC_F32, (size_t)T * C, 5, 1.0f, s));
    OK(hmc_fill_random(noise, HMC_F32, (size_t)T * C, 6, 1.0f, s));
    CU(cudaStreamSynchronize(s));
    u[3] = gpu_mem_used();
    for (int k = 0; k < 3; k++) {
        OK(fmc_solve_window(m, cond, ctx, CODEC_CTX_FRAMES, noise, steps, guidance, lat, s));
        CU(cudaStreamSynchronize(s));
        u[4 + k] = gpu_mem_used();
    }
    const long smi = gpu_smi_mib();
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    double ms = 1e30;
    for (int r = 0; r < 3; r++) {
        CU(cudaEventRecord(e0, s));
        OK(fmc_solve_window(m, cond, ctx, CODEC_CTX_FRAMES, noise, steps, guidance, lat, s));
        CU(cudaEventRecord(e1, s));
        double t = elapsed_ms(e0, e1);
        if (t < ms) ms = t;
    }
    float *lh = gpu_down(lat, (size_t)T * C, HMC_F32);
    int finite = 1;
    double sum = 0;
    for (size_t i = 0; i < (size_t)T * C; i++) finite &= isfinite(lh[i]), sum += lh[i] * (double)lh[i];
    struct cudaDeviceProp prop;
    CU(cudaGetDeviceProperties(&prop, 0));
    printf("mem: %s, random release-size flow matching (bf16, flash attention, graphs on), %s, adaLN weights %s\n",
           prop.name, sharing ? "shared scratch" : "separate buffers (before)",
           ada_host ? "on the host" : "on the device");
    gpu_mem_table(what, u, (double)fmc_weight_bytes(m), 4, "workspace ", (double)fmc_workspace_bytes(m), smi);
    printf("mem %s: process %ld MiB (nvidia-smi), workspace %.1f MiB, window %.1f ms as a graph, latents %s "
           "(sum of squares %.6e: the same in both layouts)\n",
           sharing ? "shared" : "separate", smi, fmc_workspace_bytes(m) / 1048576.0, ms, finite ? "finite" : "NON-FINITE", sum);
    free(lh);
    CU(cudaFree(cond)); CU(cudaFree(ctx)); CU(cudaFree(noise)); CU(cudaFree(lat));
    CU(cudaStreamDestroy(s));
    fmc_free(m);
    hmc_gemm_shutdown();
    return finite ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "mem")) { /* mem [separate] [adaln-device] */
        int sharing = 1, ada_host = 1;
        for (int i = 2; i < argc; i++) {
            if (!strcmp(argv[i], "separate")) sharing = 0;
            else if (!strcmp(argv[i], "adaln-device")) ada_host = 0;
            else return fprintf(stderr, "gpu_codec mem: unknown option %s\n", argv[i]), 2;
        }
        return mem_phase(sharing, ada_host);
    }
    if (argc == 3 && !strcmp(argv[1], "windows")) return windows(argv[2]);
    if (argc == 5 && !strcmp(argv[1], "detokcmp")) return detokcmp(argv[2], argv[3], atof(argv[4]));
    uint64_t seed = (uint64_t)time(NULL);
    int phases = 0; /* bits: 1 ops, 2 fixture, 4 solve, 8 bench, 16 quality; none named: all */
    const char *names[5] = {"ops", "fixture", "solve", "bench", "quality"};
    for (int i = 1; i < argc; i++) {
        int hit = 0;
        for (int k = 0; k < 5; k++)
            if (!strcmp(argv[i], names[k])) phases |= 1 << k, hit = 1;
        if (!strcmp(argv[i], "--no-bench")) phases |= 7, hit = 1;
        if (!hit) seed = strtoull(argv[i], NULL, 0);
    }
    if (!phases) phases = 31;
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
        for (int k = 0; k < 2; k++) {
            hmc_dtype t = k ? HMC_BF16 : HMC_F32;
            check_add_norm(2, 75, 96, 1, t);
            check_add_norm(2, 75, 96, 0, t);
        }
        check_add_norm(2, 744, 1536, 1, HMC_BF16);
        check_add_norm(2, 744, 3072, 0, HMC_F32);
        check_flash(2, 75, 2, 16, HMC_F32);
        check_flash(2, 75, 2, 32, HMC_BF16);
        check_flash(2, 130, 3, 64, HMC_BF16);
        check_flash(2, 744, 2, 16, HMC_BF16);
        check_flash(2, 744, 24, 64, HMC_BF16);
        check_flash(1, 744, 24, 128, HMC_BF16);
        check_flash(1, 744, 4, 128, HMC_F32);
        printf("ops done in %.1f s\n", hm_now() - t0);
        gemm_reset();
    }
    if (phases & 2) { /* (b) the reference fixture, every attention path */
        const int am[3] = {FMC_ATT_TILED, FMC_ATT_GEMM, FMC_ATT_FLASH};
        for (int a = 0; a < 3; a++) {
            if (am[a] != FMC_ATT_FLASH) check_fixture(HMC_F32, am[a]);
            gemm_reset();
            check_fixture(HMC_BF16, am[a]);
            gemm_reset();
        }
    }
    if (phases & 4) { /* (c) the solver against fm.c on the tiny model, same noise */
        fm_model *cpu;
        OK(fm_load(FIX, &cpu));
        check_solve(cpu, HMC_F32, CODEC_CTX_FRAMES, 10, 1.25f, 1, FMC_ATT_AUTO);
        gemm_reset();
        check_solve(cpu, HMC_BF16, CODEC_CTX_FRAMES, 10, 1.25f, 1, FMC_ATT_AUTO);
        gemm_reset();
        check_solve(cpu, HMC_F32, 0, 3, 1.0f, 0, FMC_ATT_AUTO);
        gemm_reset();
        check_solve(cpu, HMC_BF16, 0, 3, 1.0f, 0, FMC_ATT_AUTO);
        gemm_reset();
        check_solve(cpu, HMC_F32, CODEC_CTX_FRAMES, 10, 1.25f, 0, FMC_ATT_TILED);
        gemm_reset();
        check_solve(cpu, HMC_BF16, CODEC_CTX_FRAMES, 10, 1.25f, 0, FMC_ATT_GEMM);
        gemm_reset();
        fm_free(cpu);
    }
    if (phases & 16) { /* (e) bf16 vs fp32 weights, release sizes */
        quality();
        gemm_reset();
    }
    if (phases & 23) printf("gpu_codec: %d passed, %d failed (checks %.1f s)\n", n_pass, n_fail, hm_now() - t0);
    if (phases & 8) bench(); /* (d) timing, table last */
    hmc_gemm_shutdown();
    return n_fail ? 1 : 0;
}
