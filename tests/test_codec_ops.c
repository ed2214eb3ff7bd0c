/* test_codec_ops.c - the codec's CPU kernels against naive float64 loops written from the PyTorch
 * definitions (Conv1d with zero padding and dilation, ConvTranspose1d with its output trimmed,
 * PReLU, adaLN modulation), on sizes that hit every code path: the direct AVX2 loop (narrow
 * inputs, output channels not a multiple of 4, lengths not a multiple of 16) and the GEMM path. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adaln.h"
#include "conv1d.h"
#include "hm.h"

static uint64_t g_rng = 88172645463325252ULL;
static float frand(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((double)(g_rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}
static float *rnd(size_t n)
{
    float *p = hm_malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) p[i] = frand();
    return p;
}

/* Relative L2 over the tensor and the worst single error relative to the tensor's RMS (a plain
 * per-element relative error is meaningless where a sum of hundreds of terms cancels to ~0). */
static void check_close(const float *got, const double *ref, size_t n, const char *what)
{
    double num = 0, den = 0, worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(got[i] - ref[i]);
        num += d * d;
        den += ref[i] * ref[i];
        worst = fmax(worst, d);
    }
    double e = sqrt(num / (den + 1e-30)), w = worst / sqrt(den / (double)n + 1e-30);
    if (e > 1e-6 || w > 1e-5) fail_msg("%s: rel L2 %.3g, worst / rms %.3g", what, e, w);
}

static void conv_case(int cin, int cout, int T, int k, int dil, int pad_l, int pad_r)
{
    float *x = rnd((size_t)cin * T), *w = rnd((size_t)cout * cin * k), *b = rnd((size_t)cout);
    float *wt = hm_malloc(sizeof(float) * (size_t)cout * cin * k);
    conv1d_to_tap_major(w, cout, cin, k, wt);
    int tout = T + pad_l + pad_r - dil * (k - 1);
    float *y = hm_malloc(sizeof(float) * (size_t)cout * tout);
    double *ref = hm_malloc(sizeof(double) * (size_t)cout * tout);
    cpu_conv1d(x, cin, T, wt, b, cout, k, dil, pad_l, pad_r, y);
    for (int o = 0; o < cout; o++)
        for (int t = 0; t < tout; t++) {
            double s = b[o];
            for (int i = 0; i < cin; i++)
                for (int j = 0; j < k; j++) {
                    int p = t + j * dil - pad_l; /* input index under zero padding */
                    if (p >= 0 && p < T) s += (double)w[((size_t)o * cin + i) * k + j] * x[(size_t)i * T + p];
                }
            ref[(size_t)o * tout + t] = s;
        }
    char what[128];
    snprintf(what, sizeof what, "conv1d cin %d cout %d T %d k %d dil %d pad %d/%d", cin, cout, T, k, dil, pad_l, pad_r);
    check_close(y, ref, (size_t)cout * tout, what);
    free(x); free(w); free(b); free(wt); free(y); free(ref);
}

static void test_conv1d(void **state)
{
    conv_case(4, 4, 3000, 7, 9, 54, 0);    /* direct, causal dilated (the vocoder's last stage) */
    conv_case(5, 7, 1237, 7, 3, 18, 0);    /* direct, cout % 4 != 0, T % 16 != 0 */
    conv_case(4, 1, 999, 7, 1, 6, 0);      /* direct, one output channel (final conv) */
    conv_case(8, 8, 500, 1, 1, 0, 0);      /* direct, k = 1 */
    conv_case(128, 40, 333, 5, 1, 2, 2);   /* GEMM, symmetric padding (first conv) */
    conv_case(64, 64, 1500, 7, 5, 30, 0);  /* GEMM, causal dilated */
    conv_case(30, 30, 77, 1, 1, 0, 0);     /* GEMM, k = 1 */
}

static void test_conv_transpose(void **state)
{
    const int cases[][5] = {{16, 8, 50, 10, 5}, {128, 64, 33, 8, 4}, {8, 4, 100, 6, 3}, {6, 5, 17, 3, 2}};
    for (size_t c = 0; c < HM_ARRAY_LEN(cases); c++) {
        int cin = cases[c][0], cout = cases[c][1], T = cases[c][2], k = cases[c][3], s = cases[c][4];
        size_t full = (size_t)(T - 1) * s + k, keep = k == 2 * s ? (size_t)T * s : full - 1;
        float *x = rnd((size_t)cin * T), *w = rnd((size_t)cin * cout * k), *b = rnd((size_t)cout);
        float *y = hm_malloc(sizeof(float) * cout * keep);
        double *ref = hm_calloc((size_t)cout * full, sizeof(double)), *refk = hm_malloc(sizeof(double) * cout * keep);
        cpu_conv_transpose1d(x, cin, T, w, b, cout, k, s, keep, y);
        for (int o = 0; o < cout; o++) {
            for (size_t p = 0; p < full; p++) ref[o * full + p] = b[o];
            for (int i = 0; i < cin; i++)
                for (int t = 0; t < T; t++)
                    for (int j = 0; j < k; j++)
                        ref[o * full + (size_t)t * s + j] += (double)x[(size_t)i * T + t] * w[((size_t)i * cout + o) * k + j];
            memcpy(refk + o * keep, ref + o * full, sizeof(double) * keep);
        }
        check_close(y, refk, (size_t)cout * keep, "conv_transpose1d");
        free(x); free(w); free(b); free(y); free(ref); free(refk);
    }
}

static void test_conv_tmajor(void **state)
{
    const int T = 37, cin = 21, cout = 11, k = 3;
    float *x = rnd((size_t)T * cin), *w = rnd((size_t)cout * cin * k), *b = rnd(cout), *wt = hm_malloc(sizeof(float) * cout * cin * k);
    conv1d_to_tap_major(w, cout, cin, k, wt);
    float *y = hm_malloc(sizeof(float) * T * cout);
    double *ref = hm_malloc(sizeof(double) * T * cout);
    cpu_conv1d_tmajor(x, T, cin, wt, b, cout, k, y);
    for (int t = 0; t < T; t++)
        for (int o = 0; o < cout; o++) {
            double s = b[o];
            for (int j = 0; j < k; j++) {
                int p = t + j - k / 2;
                if (p < 0 || p >= T) continue;
                for (int i = 0; i < cin; i++) s += (double)w[((size_t)o * cin + i) * k + j] * x[(size_t)p * cin + i];
            }
            ref[t * cout + o] = s;
        }
    check_close(y, ref, (size_t)T * cout, "conv1d_tmajor");
    free(x); free(w); free(b); free(wt); free(y); free(ref);
}

static void test_prelu_modulate(void **state)
{
    enum { N = 1001 };
    float *x = rnd(N), *y = hm_malloc(sizeof(float) * N);
    memcpy(y, x, sizeof(float) * N);
    y[5] = x[5] = 0.0f;
    cpu_prelu(y, N, 0.25f);
    for (int i = 0; i < N; i++) assert_true(y[i] == (x[i] >= 0.0f ? x[i] : 0.25f * x[i]));
    const int M = 3, D = 7;
    float *a = rnd(M * D), *sh = rnd(D), *sc = rnd(D), *o = hm_malloc(sizeof(float) * M * D), *g = rnd(D), *h = rnd(M * D);
    cpu_modulate(a, sh, sc, o, M, D);
    for (int m = 0; m < M; m++)
        for (int i = 0; i < D; i++) assert_true(o[m * D + i] == a[m * D + i] * (1.0f + sc[i]) + sh[i]);
    memcpy(o, a, sizeof(float) * M * D);
    cpu_gated_add(o, g, h, M, D);
    for (int m = 0; m < M; m++)
        for (int i = 0; i < D; i++) assert_true(o[m * D + i] == a[m * D + i] + g[i] * h[m * D + i]);
    /* timestep features: [cos(1000 t f_j), sin(1000 t f_j)], f_j = exp(-ln(1e4) j / 256) */
    float feat[512];
    cpu_timestep_features(0.3f, 512, feat);
    for (int j = 0; j < 256; j++) {
        double a0 = 1000.0 * 0.3 * exp(-log(10000.0) * j / 256.0);
        assert_true(fabs(feat[j] - cos(a0)) < 2e-4 && fabs(feat[256 + j] - sin(a0)) < 2e-4);
    }
    free(x); free(y); free(a); free(sh); free(sc); free(o); free(g); free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conv1d),
        cmocka_unit_test(test_conv_transpose),
        cmocka_unit_test(test_conv_tmajor),
        cmocka_unit_test(test_prelu_modulate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
