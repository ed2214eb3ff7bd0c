/* conv1d.c - CPU 1-D convolutions for the codec (see conv1d.h).
 *
 * Large channel counts go through OpenBLAS: a conv is k GEMMs, one per tap, each reading the
 * padded input shifted by j*dil columns (no im2col copy), accumulated into the output with
 * beta = 1; a transposed conv is one GEMM into per-tap columns followed by a scatter-add.
 * Small channel counts (the vocoder's last stages have 4..16 channels at 0.2-1.4 M samples)
 * would waste OpenBLAS's blocking, so they use a direct loop over time tiles that the compiler
 * vectorises (an AVX2+FMA clone is picked at run time when the CPU has it). */
#include "conv1d.h"

#include <cblas.h>
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "hm.h"

/* Output columns processed per tile: keeps a tile of every touched row in L1/L2. */
#define CONV_TILE 1024
/* Below this many input channels the direct loop beats k thin GEMMs. */
#define CONV_DIRECT_MAX_CIN 24

void conv1d_to_tap_major(const float *src, int cout, int cin, int k, float *dst)
{
    for (int o = 0; o < cout; o++)
        for (int i = 0; i < cin; i++)
            for (int j = 0; j < k; j++)
                dst[((size_t)j * cout + o) * cin + i] = src[((size_t)o * cin + i) * k + j];
}

/* Direct conv over output columns [t0, t0 + nb) of the padded input xp (row stride tp).
 * Portable version: the compiler may vectorise the loop over time. */
static void direct_tile_generic(const float *restrict xp, size_t tp, const float *restrict w, const float *bias, int cin,
                                int cout, int k, int dil, size_t t0, int nb, float *restrict y, size_t tout)
{
    float acc[CONV_TILE];
    for (int o = 0; o < cout; o++) {
        float b0 = bias ? bias[o] : 0.0f;
        for (int t = 0; t < nb; t++) acc[t] = b0;
        for (int j = 0; j < k; j++) {
            const float *wj = w + ((size_t)j * cout + o) * cin;
            for (int i = 0; i < cin; i++) {
                const float wv = wj[i];
                const float *restrict xr = xp + (size_t)i * tp + t0 + (size_t)j * dil;
                for (int t = 0; t < nb; t++) acc[t] += wv * xr[t];
            }
        }
        memcpy(y + (size_t)o * tout + t0, acc, sizeof(float) * (size_t)nb);
    }
}

/* AVX2+FMA version: register blocks of 4 output channels x 16 samples (8 accumulators), so each
 * input vector load feeds 4 FMAs and accumulators never leave registers. */
__attribute__((target("avx2,fma"))) static void direct_tile_avx2(const float *restrict xp, size_t tp, const float *restrict w,
                                                                  const float *bias, int cin, int cout, int k, int dil,
                                                                  size_t t0, int nb, float *restrict y, size_t tout)
{
    int t = 0;
    for (; t + 16 <= nb; t += 16) {
        const float *xb = xp + t0 + t;
        int o = 0;
        for (; o + 4 <= cout; o += 4) {
            __m256 a[4][2];
            for (int r = 0; r < 4; r++) a[r][0] = a[r][1] = _mm256_set1_ps(bias ? bias[o + r] : 0.0f);
            for (int j = 0; j < k; j++) {
                const float *wj = w + ((size_t)j * cout + o) * cin;
                const float *xj = xb + (size_t)j * dil;
                for (int i = 0; i < cin; i++) {
                    __m256 x0 = _mm256_loadu_ps(xj + (size_t)i * tp), x1 = _mm256_loadu_ps(xj + (size_t)i * tp + 8);
                    for (int r = 0; r < 4; r++) {
                        __m256 wv = _mm256_broadcast_ss(wj + (size_t)r * cin + i);
                        a[r][0] = _mm256_fmadd_ps(wv, x0, a[r][0]);
                        a[r][1] = _mm256_fmadd_ps(wv, x1, a[r][1]);
                    }
                }
            }
            for (int r = 0; r < 4; r++) {
                float *yr = y + (size_t)(o + r) * tout + t0 + t;
                _mm256_storeu_ps(yr, a[r][0]);
                _mm256_storeu_ps(yr + 8, a[r][1]);
            }
        }
        for (; o < cout; o++) {
            __m256 a0 = _mm256_set1_ps(bias ? bias[o] : 0.0f), a1 = a0;
            for (int j = 0; j < k; j++) {
                const float *wj = w + ((size_t)j * cout + o) * cin;
                const float *xj = xb + (size_t)j * dil;
                for (int i = 0; i < cin; i++) {
                    __m256 wv = _mm256_broadcast_ss(wj + i);
                    a0 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xj + (size_t)i * tp), a0);
                    a1 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xj + (size_t)i * tp + 8), a1);
                }
            }
            float *yr = y + (size_t)o * tout + t0 + t;
            _mm256_storeu_ps(yr, a0);
            _mm256_storeu_ps(yr + 8, a1);
        }
    }
    if (t < nb) direct_tile_generic(xp, tp, w, bias, cin, cout, k, dil, t0 + t, nb - t, y, tout);
}

static int have_avx2(void)
{
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return cached;
}

void cpu_conv1d(const float *x, int cin, int T, const float *w, const float *bias, int cout, int k, int dil,
                int pad_l, int pad_r, float *y)
{
    size_t tp = (size_t)T + (size_t)pad_l + (size_t)pad_r;
    size_t tout = tp - (size_t)dil * (size_t)(k - 1);
    const float *xp = x;
    float *pad = NULL;
    if (pad_l || pad_r) {
        pad = hm_malloc(sizeof(float) * (size_t)cin * tp);
        for (int i = 0; i < cin; i++) {
            float *r = pad + (size_t)i * tp;
            memset(r, 0, sizeof(float) * (size_t)pad_l);
            memcpy(r + pad_l, x + (size_t)i * T, sizeof(float) * (size_t)T);
            memset(r + pad_l + T, 0, sizeof(float) * (size_t)pad_r);
        }
        xp = pad;
    }
    if (cin <= CONV_DIRECT_MAX_CIN) {
        int fast = have_avx2();
        for (size_t t0 = 0; t0 < tout; t0 += CONV_TILE) {
            int nb = (int)HM_MIN((size_t)CONV_TILE, tout - t0);
            if (fast) direct_tile_avx2(xp, tp, w, bias, cin, cout, k, dil, t0, nb, y, tout);
            else direct_tile_generic(xp, tp, w, bias, cin, cout, k, dil, t0, nb, y, tout);
        }
    } else {
        /* Tiles of output columns so the k passes over y hit cache. */
        size_t tile = HM_MAX((size_t)256, ((size_t)1 << 20) / ((size_t)cout * 4 + 1));
        for (size_t t0 = 0; t0 < tout; t0 += tile) {
            int nb = (int)HM_MIN(tile, tout - t0);
            for (int j = 0; j < k; j++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cout, nb, cin, 1.0f,
                            w + (size_t)j * cout * cin, cin, xp + t0 + (size_t)j * dil, (int)tp, j ? 1.0f : 0.0f,
                            y + t0, (int)tout);
        }
        if (bias)
            for (int o = 0; o < cout; o++) {
                float *r = y + (size_t)o * tout;
                for (size_t t = 0; t < tout; t++) r[t] += bias[o];
            }
    }
    free(pad);
}

void cpu_conv_transpose1d(const float *x, int cin, int T, const float *w, const float *bias, int cout, int k, int s,
                          size_t n_out, float *y)
{
    for (int o = 0; o < cout; o++) {
        float b0 = bias ? bias[o] : 0.0f;
        float *r = y + (size_t)o * n_out;
        for (size_t t = 0; t < n_out; t++) r[t] = b0;
    }
    const int m = cout * k;
    int tile = (int)HM_MAX((size_t)64, ((size_t)4 << 20) / ((size_t)m * 4));
    float *z = hm_malloc(sizeof(float) * (size_t)m * (size_t)HM_MIN(tile, T));
    for (int t0 = 0; t0 < T; t0 += tile) {
        int nb = HM_MIN(tile, T - t0);
        /* z[(o,j), t] = sum_i w[i, o, j] x[i, t0 + t] */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, nb, cin, 1.0f, w, m, x + t0, T, 0.0f, z, nb);
        for (int o = 0; o < cout; o++) {
            float *r = y + (size_t)o * n_out;
            for (int j = 0; j < k; j++) {
                const float *zr = z + ((size_t)o * k + j) * nb;
                for (int t = 0; t < nb; t++) {
                    size_t p = (size_t)(t0 + t) * s + j;
                    if (p < n_out) r[p] += zr[t];
                }
            }
        }
    }
    free(z);
}

void cpu_conv1d_tmajor(const float *x, int T, int cin, const float *w, const float *bias, int cout, int k, float *y)
{
    const int p = k / 2;
    for (int t = 0; t < T; t++)
        for (int o = 0; o < cout; o++) y[(size_t)t * cout + o] = bias ? bias[o] : 0.0f;
    for (int j = 0; j < k; j++) {
        /* output rows t read input row t + j - p; keep both inside [0, T) */
        int lo = HM_MAX(0, p - j), hi = HM_MIN(T, T + p - j);
        if (hi <= lo) continue;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, hi - lo, cout, cin, 1.0f,
                    x + (size_t)(lo + j - p) * cin, cin, w + (size_t)j * cout * cin, cin, 1.0f,
                    y + (size_t)lo * cout, cout);
    }
}

__attribute__((target("avx2,fma"))) static void prelu_avx2(float *x, size_t n, float a)
{
    const __m256 av = _mm256_set1_ps(a), zero = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        _mm256_storeu_ps(x + i, _mm256_blendv_ps(v, _mm256_mul_ps(v, av), _mm256_cmp_ps(v, zero, _CMP_LT_OQ)));
    }
    for (; i < n; i++)
        if (x[i] < 0.0f) x[i] *= a;
}

void cpu_prelu(float *x, size_t n, float a)
{
    if (have_avx2()) {
        prelu_avx2(x, n, a);
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (x[i] < 0.0f) x[i] *= a;
}
