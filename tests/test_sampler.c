/* test_sampler.c - the counter-based RNG (Philox4x32-10 known answers, uniformity) and the top-k
 * sampler: argmax ties, the "strictly below the k-th largest" rule, and a chi-square test that
 * the draws follow softmax(topk(logits / T)), computed here independently of the sampler. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hm.h"
#include "sampling.h"
#include "../stages/draft-verifier/sampler.h"

/* Random123's published known-answer vectors for philox4x32_10. */
static void test_philox_kat(void **state)
{
    uint32_t out[4];
    smp_philox4x32((uint32_t[]){0, 0, 0, 0}, (uint32_t[]){0, 0}, out);
    assert_int_equal(out[0], 0x6627e8d5u);
    assert_int_equal(out[1], 0xe169c58du);
    assert_int_equal(out[2], 0xbc57ac4cu);
    assert_int_equal(out[3], 0x9b00dbd8u);
    smp_philox4x32((uint32_t[]){0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
                   (uint32_t[]){0xffffffffu, 0xffffffffu}, out);
    assert_int_equal(out[0], 0x408f276du);
    assert_int_equal(out[1], 0x41c83b0eu);
    assert_int_equal(out[2], 0xa20bc7c6u);
    assert_int_equal(out[3], 0x6d5451fdu);
    smp_philox4x32((uint32_t[]){0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
                   (uint32_t[]){0xa4093822u, 0x299f31d0u}, out);
    assert_int_equal(out[0], 0xd16cfe09u);
    assert_int_equal(out[1], 0x94fdccebu);
    assert_int_equal(out[2], 0x5001e420u);
    assert_int_equal(out[3], 0x24126ea1u);
}

/* Uniform in [0,1), every input of the counter matters, and 20 equal bins pass chi-square. */
static void test_uniform(void **state)
{
    double a = smp_uniform(7, 0, 3, 2, 0);
    assert_true(a >= 0.0 && a < 1.0);
    assert_true(a == smp_uniform(7, 0, 3, 2, 0));
    assert_true(a != smp_uniform(8, 0, 3, 2, 0));
    assert_true(a != smp_uniform(7, 1, 3, 2, 0));
    assert_true(a != smp_uniform(7, 0, 4, 2, 0));
    assert_true(a != smp_uniform(7, 0, 3 + (1ull << 32), 2, 0));
    assert_true(a != smp_uniform(7, 0, 3, 3, 0));
    assert_true(a != smp_uniform(7, 0, 3, 2, 1));
    enum { N = 200000, BINS = 20 };
    int cnt[BINS] = {0};
    for (int i = 0; i < N; i++) {
        double u = smp_uniform(42, 0, (uint64_t)i, (uint32_t)(i % 8), 0);
        assert_true(u >= 0.0 && u < 1.0);
        cnt[(int)(u * BINS)]++;
    }
    double chi = 0, e = (double)N / BINS;
    for (int b = 0; b < BINS; b++) chi += (cnt[b] - e) * (cnt[b] - e) / e;
    assert_true(chi < 43.82); /* chi-square, 19 dof, p = 0.001 */
}

static void test_argmax(void **state)
{
    float l[6] = {1, 5, 2, 5, -1, 5};
    assert_int_equal(smp_argmax(l, 6), 1); /* ties: lowest index, as torch.argmax */
    float n[4] = {NAN, 0.5f, NAN, 0.25f};
    assert_int_equal(smp_argmax(n, 4), 1);
    float w[6];
    /* top-k 1 and temperature <= 0 are argmax whatever u is */
    assert_int_equal(smp_topk_sample(l, 6, 1, 1.0f, 0.999, w, NULL), 1);
    assert_int_equal(smp_topk_sample(l, 6, 50, 0.0f, 0.999, w, NULL), 1);
}

/* Entries equal to the k-th largest stay; everything strictly below goes. */
static void test_topk_ties(void **state)
{
    float l[6] = {1, 3, 3, 2, 0, 2};
    float w[6];
    double p[6];
    smp_topk_sample(l, 6, 2, 1.0f, 0.5, w, p);
    assert_true(p[1] > 0 && p[2] > 0);
    assert_true(p[0] == 0 && p[3] == 0 && p[4] == 0 && p[5] == 0);
    assert_true(fabs(p[1] - 0.5) < 1e-12);
    smp_topk_sample(l, 6, 3, 1.0f, 0.5, w, p); /* 3rd largest is 2: both 2s are kept */
    assert_true(p[3] > 0 && p[5] > 0 && p[0] == 0 && p[4] == 0);
    double e = exp(-1.0), z = 2 + 2 * e;
    assert_true(fabs(p[3] - e / z) < 1e-12 && fabs(p[1] - 1 / z) < 1e-12);
    smp_topk_sample(l, 6, 0, 1.0f, 0.5, w, p); /* 0: keep all */
    for (int i = 0; i < 6; i++) assert_true(p[i] > 0);
    smp_topk_sample(l, 6, 100, 1.0f, 0.5, w, p);
    for (int i = 0; i < 6; i++) assert_true(p[i] > 0);
    /* u at the ends picks the first / last kept entry in index order */
    assert_int_equal(smp_topk_sample(l, 6, 2, 1.0f, 0.0, w, NULL), 1);
    assert_int_equal(smp_topk_sample(l, 6, 2, 1.0f, 0.9999999, w, NULL), 2);
}

static int cmp_desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* Empirical draws vs softmax(topk(logits / T)) computed here from scratch. */
static void test_chi_square(void **state)
{
    enum { V = 40, K = 9, N = 300000 };
    const float T = 0.7f;
    float l[V], sorted[V], w[V];
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < V; i++) { /* fixed pseudo-random logits in [-3, 3) */
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        l[i] = (float)((double)(x >> 11) * 0x1.0p-53 * 6.0 - 3.0);
    }
    memcpy(sorted, l, sizeof l);
    qsort(sorted, V, sizeof(float), cmp_desc);
    const float thr = sorted[K - 1];
    double expect[V], z = 0;
    for (int i = 0; i < V; i++) {
        expect[i] = l[i] >= thr ? exp((double)(l[i] / T) - (double)(sorted[0] / T)) : 0.0;
        z += expect[i];
    }
    int cnt[V] = {0};
    double t0 = hm_now();
    for (int i = 0; i < N; i++)
        cnt[smp_topk_sample(l, V, K, T, smp_uniform(1234, 0, (uint64_t)i, 5, 0), w, NULL)]++;
    double dt = hm_now() - t0;
    double chi = 0;
    int kept = 0;
    for (int i = 0; i < V; i++) {
        if (expect[i] == 0) {
            assert_int_equal(cnt[i], 0);
            continue;
        }
        kept++;
        double e = expect[i] / z * N;
        chi += (cnt[i] - e) * (cnt[i] - e) / e;
    }
    assert_int_equal(kept, K);
    print_message("chi-square %.2f (%d dof), %d draws in %.2f s\n", chi, kept - 1, N, dt);
    assert_true(chi < 26.12); /* 8 dof, p = 0.001 */
    assert_true(dt < 5.0);
}

static void test_cfg_combine(void **state)
{
    float l[2 * 3] = {1, 2, 3, /* uncond */ 0.5f, 4, -1};
    float g[3];
    dv_cfg_combine(l, 2, 3, 1.5f, g);
    assert_true(g[0] == 0.5f + (1 - 0.5f) * 1.5f);
    assert_true(g[1] == 4 + (2 - 4) * 1.5f);
    assert_true(g[2] == -1 + (3 + 1) * 1.5f);
    dv_cfg_combine(l, 1, 3, 1.5f, g);
    assert_memory_equal(g, l, sizeof g);
    dv_cfg_combine(l, 2, 3, 1.0f, g); /* no guidance: row 0, as the reference */
    assert_memory_equal(g, l, sizeof g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_philox_kat), cmocka_unit_test(test_uniform),
        cmocka_unit_test(test_argmax),     cmocka_unit_test(test_topk_ties),
        cmocka_unit_test(test_chi_square), cmocka_unit_test(test_cfg_combine),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
