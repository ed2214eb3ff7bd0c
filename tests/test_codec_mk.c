/* test_codec_mk.c - the random-weight codec generator (bin/mkcodec) makes folders the codec stages
 * load and run with sane output, in F32 and BF16, and with either weight-norm naming
 * (parametrizations.weight.original0/1 and the older weight_g/weight_v give identical audio). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hm.h"
#include "../stages/vocoder/detokenize.h"

static char g_dir[64];

static void mk(const char *sub, const char *args)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "bin/mkcodec -o %s/%s %s 2>/dev/null", g_dir, sub, args);
    if (system(cmd) != 0) fail_msg("'%s' failed (build bin/mkcodec first: make bin/mkcodec)", cmd);
}

static void path(char *buf, size_t n, const char *sub) { snprintf(buf, n, "%s/%s", g_dir, sub); }

static void test_weight_norm_names(void **state)
{
    mk("new", "--preset tiny --seed 9");
    mk("old", "--preset tiny --seed 9 --legacy-wn");
    char a[128], b[128];
    path(a, sizeof a, "new");
    path(b, sizeof b, "old");
    voc_model *va, *vb;
    if (voc_load(a, &va) || voc_load(b, &vb)) fail_msg("%s", hm_errmsg());
    const int n = 12, H = voc_config(va)->latent_hidden_dim;
    float *lat = hm_malloc(sizeof(float) * 2 * H * n);
    for (int i = 0; i < 2 * H * n; i++) lat[i] = sinf(0.1f * (float)i);
    size_t ns = (size_t)n * voc_hop(va);
    float *pa = hm_malloc(sizeof(float) * 2 * ns), *pb = hm_malloc(sizeof(float) * 2 * ns);
    assert_int_equal(voc_decode(va, lat, n, pa), HM_OK);
    assert_int_equal(voc_decode(vb, lat, n, pb), HM_OK);
    assert_memory_equal(pa, pb, sizeof(float) * 2 * ns);
    voc_free(va);
    voc_free(vb);
    free(lat);
    free(pa);
    free(pb);
}

static void run_song(const char *sub, int T)
{
    char d[128];
    path(d, sizeof d, sub);
    fm_model *fm;
    voc_model *voc;
    if (fm_load(d, &fm) || voc_load(d, &voc)) fail_msg("%s", hm_errmsg());
    const int nq = fm_config(fm)->num_quantizers;
    int32_t *codes = hm_malloc(sizeof(int32_t) * (size_t)nq * T);
    for (int i = 0; i < nq * T; i++) codes[i] = (i * 7919) % fm_config(fm)->codebook_size;
    codec_noise *nz;
    assert_int_equal(codec_noise_seeded(5, &nz), HM_OK);
    float *pcm;
    size_t n;
    if (codec_detokenize(fm, voc, codes, T, 2, 1.25f, nz, NULL, &pcm, &n)) fail_msg("%s", hm_errmsg());
    assert_int_equal(n, (size_t)T * 3840);
    double ss = 0;
    for (size_t i = 0; i < 2 * n; i++) {
        assert_true(isfinite(pcm[i]));
        ss += (double)pcm[i] * pcm[i];
    }
    double rms = sqrt(ss / (2.0 * n));
    printf("%s: rms %.3f\n", sub, rms);
    assert_true(rms > 1e-3 && rms < 5.0); /* the init scales keep the random model's audio sane */
    free(pcm);
    free(codes);
    codec_noise_free(nz);
    fm_free(fm);
    voc_free(voc);
}

static void test_tiny_song(void **state) { run_song("new", 40); }

static void test_bf16(void **state)
{
    mk("bf16", "--preset tiny --seed 2 --dtype bf16");
    run_song("bf16", 20);
}

static void test_presets(void **state)
{
    /* the release sizes are only counted here (6 GB in F32); a bad preset is refused */
    assert_int_equal(system("bin/mkcodec --preset full --dry-run 2>/dev/null"), 0);
    assert_true(system("bin/mkcodec --preset huge --dry-run 2>/dev/null") != 0);
}

static int setup(void **state)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/hm_mkcodec_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_weight_norm_names),
        cmocka_unit_test(test_tiny_song),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_presets),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
