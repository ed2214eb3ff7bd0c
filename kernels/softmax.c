/* softmax.c - row softmax with a vectorised exp (see softmax.h). */
#include "softmax.h"

#include <immintrin.h>
#include <math.h>

static void softmax_row_generic(float *r, int n)
{
    float mx = -INFINITY, sum = 0.0f;
    for (int j = 0; j < n; j++) mx = r[j] > mx ? r[j] : mx;
    for (int j = 0; j < n; j++) {
        r[j] = expf(r[j] - mx);
        sum += r[j];
    }
    float inv = 1.0f / sum;
    for (int j = 0; j < n; j++) r[j] *= inv;
}

/* exp(x) of 8 floats with x <= 0 (scores minus their max), evaluated in double and rounded once
 * to float, so it agrees with libm's expf to the last bit in all but rare near-tie cases (a
 * cruder float polynomial flips the vocoder's round(9x) levels downstream and costs two digits
 * of agreement with the reference).  x = k ln2 + f, |f| <= ln2/2, degree-10 Taylor for e^f
 * (error < 1e-13), 2^k through the exponent bits. */
__attribute__((target("avx2,fma"))) static inline __m256d exp_pd_avx2(__m256d x)
{
    __m256d k = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(1.4426950408889634)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256d f = _mm256_fnmadd_pd(k, _mm256_set1_pd(6.93147180369123816490e-01), x);
    f = _mm256_fnmadd_pd(k, _mm256_set1_pd(1.90821492927058770002e-10), f);
    __m256d p = _mm256_set1_pd(1.0 / 3628800.0);
    static const double c[10] = {1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0,
                                 1.0 / 24.0,     1.0 / 6.0,     0.5,          1.0,          1.0};
    for (int i = 0; i < 10; i++) p = _mm256_fmadd_pd(p, f, _mm256_set1_pd(c[i]));
    __m128i k32 = _mm256_cvtpd_epi32(k);
    __m256i e = _mm256_slli_epi64(_mm256_add_epi64(_mm256_cvtepi32_epi64(k32), _mm256_set1_epi64x(1023)), 52);
    return _mm256_mul_pd(p, _mm256_castsi256_pd(e));
}

__attribute__((target("avx2,fma"))) static inline __m256 exp_neg_avx2(__m256 x)
{
    /* below -87 expf is at most ~1e-38 (then denormal): return 0, exactly 0 for a -inf score */
    __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ);
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m128 lo = _mm256_cvtpd_ps(exp_pd_avx2(_mm256_cvtps_pd(_mm256_castps256_ps128(x))));
    __m128 hi = _mm256_cvtpd_ps(exp_pd_avx2(_mm256_cvtps_pd(_mm256_extractf128_ps(x, 1))));
    return _mm256_andnot_ps(tiny, _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1));
}

__attribute__((target("avx2,fma"))) static float hsum_avx2(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) static void softmax_row_avx2(float *r, int n)
{
    int j = 0;
    __m256 vm = _mm256_set1_ps(-INFINITY);
    for (; j + 8 <= n; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(r + j));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vm), _mm256_extractf128_ps(vm, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float mx = _mm_cvtss_f32(m4);
    for (; j < n; j++) mx = r[j] > mx ? r[j] : mx;
    __m256 vmx = _mm256_set1_ps(mx), vs = _mm256_setzero_ps();
    float sum = 0.0f;
    for (j = 0; j + 8 <= n; j += 8) {
        __m256 e = exp_neg_avx2(_mm256_sub_ps(_mm256_loadu_ps(r + j), vmx));
        _mm256_storeu_ps(r + j, e);
        vs = _mm256_add_ps(vs, e);
    }
    for (; j < n; j++) {
        r[j] = expf(r[j] - mx);
        sum += r[j];
    }
    sum += hsum_avx2(vs);
    __m256 inv = _mm256_set1_ps(1.0f / sum);
    for (j = 0; j + 8 <= n; j += 8) _mm256_storeu_ps(r + j, _mm256_mul_ps(_mm256_loadu_ps(r + j), inv));
    for (; j < n; j++) r[j] *= 1.0f / sum;
}

void cpu_softmax_rows(float *x, int rows, int n)
{
    static int avx2 = -1;
    if (avx2 < 0) {
        __builtin_cpu_init();
        avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    for (int i = 0; i < rows; i++) {
        if (avx2) softmax_row_avx2(x + (long)i * n, n);
        else softmax_row_generic(x + (long)i * n, n);
    }
}
