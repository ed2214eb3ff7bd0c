/* ops_cpu.c - CPU reference ops shared by the language model and the codec (see ops_cpu.h). */
#include "ops_cpu.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void cpu_linear(const float *x, const float *W, const float *bias, float *y, int M, int K, int N)
{
    if (M <= 4) { /* OpenBLAS sgemm is 2-3x slower than one sgemv per row at a few rows */
        for (int m = 0; m < M; m++)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, 1.0f, W, K, x + (size_t)m * K, 1, 0.0f, y + (size_t)m * N, 1);
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, W, K, 0.0f, y, N);
    }
    if (bias)
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) y[(size_t)m * N + n] += bias[n];
}

void cpu_rmsnorm(const float *x, const float *scale, float *y, int M, int D, float eps)
{
    for (int m = 0; m < M; m++) {
        const float *xr = x + (size_t)m * D;
        float *yr = y + (size_t)m * D;
        float ss = 0.0f;
        for (int i = 0; i < D; i++) ss += xr[i] * xr[i];
        float r = 1.0f / sqrtf(ss / (float)D + eps);
        for (int i = 0; i < D; i++) yr[i] = xr[i] * r * (scale ? scale[i] : 1.0f);
    }
}

void cpu_layernorm(const float *x, float *y, int M, int D, float eps)
{
    for (int m = 0; m < M; m++) {
        const float *xr = x + (size_t)m * D;
        float *yr = y + (size_t)m * D;
        float mean = 0.0f, var = 0.0f;
        for (int i = 0; i < D; i++) mean += xr[i];
        mean /= (float)D;
        for (int i = 0; i < D; i++) var += (xr[i] - mean) * (xr[i] - mean);
        var /= (float)D;
        float r = 1.0f / sqrtf(var + eps);
        for (int i = 0; i < D; i++) yr[i] = (xr[i] - mean) * r;
    }
}

void cpu_silu_mul(float *g, const float *u, size_t n)
{
    for (size_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void cpu_rope_freqs(float *freqs, int hd, float base, float llama3_scale)
{
    const double pi = 3.14159265358979323846;
    for (int i = 0; i < hd / 2; i++) {
        /* torch: 1 / base ** (arange(0, hd, 2).float() / hd), evaluated in fp32 */
        float e = (float)(2 * i) / (float)hd;
        float f = 1.0f / powf(base, e);
        if (llama3_scale > 0.0f) {
            const float low = 1.0f, high = 4.0f, old_ctx = 8192.0f;
            float low_wl = old_ctx / low, high_wl = old_ctx / high;
            float wl = (float)(2.0 * pi) / f;
            if (wl < high_wl) {
                /* keep f */
            } else if (wl > low_wl) {
                f = f / llama3_scale;
            } else {
                float s = (old_ctx / wl - low) / (high - low);
                f = (1.0f - s) * f / llama3_scale + s * f;
            }
        }
        freqs[i] = f;
    }
}

void cpu_rope_interleaved(float *x, int T, int H, int hd, int pos0, const float *freqs)
{
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < hd / 2; i++) {
            float ang = (float)(pos0 + t) * freqs[i];
            float c = cosf(ang), s = sinf(ang);
            for (int h = 0; h < H; h++) {
                float *p = x + ((size_t)t * H + h) * hd + 2 * i;
                float a = p[0], b = p[1];
                p[0] = a * c - b * s;
                p[1] = b * c + a * s;
            }
        }
    }
}

void cpu_attention(const float *q, const float *k, const float *v, float *out, int T, int S, int H,
                   int KVH, int hd, int causal, int q_pos0)
{
    float *sc = malloc(sizeof(float) * (size_t)(S > 0 ? S : 1));
    if (!sc) abort();
    const float scale = 1.0f / sqrtf((float)hd);
    const int group = H / KVH;
    for (int t = 0; t < T; t++) {
        int nk = causal ? (q_pos0 + t + 1 < S ? q_pos0 + t + 1 : S) : S;
        for (int h = 0; h < H; h++) {
            const float *qr = q + ((size_t)t * H + h) * hd;
            int kh = h / group;
            float mx = -INFINITY;
            for (int s = 0; s < nk; s++) {
                const float *kr = k + ((size_t)s * KVH + kh) * hd;
                float d = 0.0f;
                for (int i = 0; i < hd; i++) d += qr[i] * kr[i];
                sc[s] = d * scale;
                if (sc[s] > mx) mx = sc[s];
            }
            float sum = 0.0f;
            for (int s = 0; s < nk; s++) {
                sc[s] = expf(sc[s] - mx);
                sum += sc[s];
            }
            float *o = out + ((size_t)t * H + h) * hd;
            memset(o, 0, sizeof(float) * (size_t)hd);
            for (int s = 0; s < nk; s++) {
                const float *vr = v + ((size_t)s * KVH + kh) * hd;
                float w = sc[s] / sum;
                for (int i = 0; i < hd; i++) o[i] += w * vr[i];
            }
        }
    }
    free(sc);
}
