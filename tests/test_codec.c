/* test_codec.c - HeartCodec on the CPU against the reference fixtures (tests/fixtures/codec, copied
 * from the heartlib runs; big outputs subsampled every `output_stride` samples): the estimator,
 * the vocoder, whole detokenize runs with the recorded noise, window planning, and bad inputs. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sndfile.h>
#include <unistd.h>

#include "codec_plan.h"
#include "hm.h"
#include "safetensors.h"
#include "../stages/flow-matching/fm.h"
#include "../stages/vocoder/vocoder.h"
#include "../stages/vocoder/detokenize.h"

#define FIX "tests/fixtures/codec"

static fm_model *g_fm;
static voc_model *g_voc;

static int setup(void **state)
{
    if (fm_load(FIX, &g_fm) || voc_load(FIX, &g_voc)) {
        fprintf(stderr, "load: %s\n", hm_errmsg());
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    fm_free(g_fm);
    voc_free(g_voc);
    return 0;
}

static float *load(st_file *f, const char *name, int64_t *numel)
{
    st_tensor *t;
    if (st_get(f, name, -1, NULL, &t)) fail_msg("%s", hm_errmsg());
    float *p = hm_malloc(sizeof(float) * (size_t)t->numel);
    assert_int_equal(st_to_f32(t, p), HM_OK);
    if (numel) *numel = t->numel;
    return p;
}

static int32_t load_i32(st_file *f, const char *name)
{
    st_tensor *t;
    if (st_get(f, name, -1, NULL, &t)) fail_msg("%s", hm_errmsg());
    int32_t v;
    assert_int_equal(st_to_i32(t, &v), HM_OK);
    return v;
}

/* ||out - ref|| / ||ref|| over the subsample: out is [rows, n] full length, ref [rows, ceil(n/stride)]. */
static double rel_l2_sub(const float *out, const float *ref, int rows, size_t n, int stride)
{
    size_t m = (n + stride - 1) / stride;
    double num = 0, den = 0;
    for (int r = 0; r < rows; r++)
        for (size_t i = 0; i < m; i++) {
            double a = out[(size_t)r * n + i * stride], b = ref[(size_t)r * m + i];
            num += (a - b) * (a - b);
            den += b * b;
        }
    return sqrt(num / den);
}

static void test_estimator(void **state)
{
    st_file *f;
    assert_int_equal(st_open(FIX "/codec_estimator.safetensors", &f), HM_OK);
    int64_t n;
    float *x = load(f, "input", &n), *t = load(f, "timestep", NULL), *ref = load(f, "output_sub", NULL);
    int rows = 2, T = 744;
    int C = fm_config(g_fm)->out_channels;
    assert_int_equal(n, (int64_t)rows * T * fm_config(g_fm)->in_channels);
    float *out = hm_malloc(sizeof(float) * (size_t)rows * T * C);
    double t0 = hm_now();
    assert_int_equal(fm_estimator(g_fm, x, t, rows, T, out), HM_OK);
    double e = rel_l2_sub(out, ref, 1, (size_t)rows * T * C, load_i32(f, "output_stride"));
    printf("estimator: rel L2 %.3g (%.3f s)\n", e, hm_now() - t0);
    assert_true(e < 1e-4);
    free(x); free(t); free(ref); free(out);
    st_close(f);
}

static void test_vocoder(void **state)
{
    st_file *f;
    assert_int_equal(st_open(FIX "/codec_vocoder.safetensors", &f), HM_OK);
    int64_t n;
    float *lat = load(f, "latent", &n), *ref = load(f, "output_sub", NULL);
    int frames = (int)(n / 2 / 128);
    size_t ns = (size_t)frames * voc_hop(g_voc);
    assert_int_equal(load_i32(f, "output_len"), (int32_t)ns);
    float *pcm = hm_malloc(sizeof(float) * 2 * ns);
    double t0 = hm_now();
    assert_int_equal(voc_decode(g_voc, lat, frames, pcm), HM_OK);
    double e = rel_l2_sub(pcm, ref, 2, ns, load_i32(f, "output_stride"));
    printf("vocoder: rel L2 %.3g (%.3f s)\n", e, hm_now() - t0);
    assert_true(e < 1e-4);
    free(lat); free(ref); free(pcm);
    st_close(f);
}

static int32_t *load_codes(st_file *f, int *T)
{
    st_tensor *t;
    if (st_get(f, "codes", -1, NULL, &t)) fail_msg("%s", hm_errmsg());
    assert_int_equal(t->ndim, 2);
    *T = (int)t->shape[1];
    int32_t *c = hm_malloc(sizeof(int32_t) * (size_t)t->numel);
    assert_int_equal(st_to_i32(t, c), HM_OK);
    return c;
}

/* Whole detokenize with the reference's recorded draws; compares the subsampled output. */
static void check_detokenize(const char *name, int expect_windows)
{
    char in[256], ref_path[256];
    snprintf(in, sizeof in, FIX "/%s.safetensors", name);
    snprintf(ref_path, sizeof ref_path, FIX "/%s_output_sub.safetensors", name);
    st_file *f, *r;
    assert_int_equal(st_open(in, &f), HM_OK);
    assert_int_equal(st_open(ref_path, &r), HM_OK);
    int T;
    int32_t *codes = load_codes(f, &T);
    codec_plan p;
    assert_int_equal(codec_plan_make(T, 48000, &p), HM_OK);
    assert_int_equal(p.n_windows, expect_windows);
    codec_noise *nz;
    assert_int_equal(codec_noise_replay(in, &nz), HM_OK);
    float *pcm = NULL;
    size_t n = 0;
    double t0 = hm_now();
    /* also write the song as f32 WAV on the way: it must hold exactly the returned samples */
    char wav[128];
    snprintf(wav, sizeof wav, "/tmp/hm_test_codec_%d.wav", (int)getpid());
    codec_sink sink = {.path = wav, .fmt = AUDIO_F32};
    if (codec_detokenize(g_fm, g_voc, codes, T, 10, 1.25f, nz, &sink, &pcm, &n)) fail_msg("%s", hm_errmsg());
    SF_INFO info = {0};
    SNDFILE *sf = sf_open(wav, SFM_READ, &info);
    assert_non_null(sf);
    assert_int_equal(info.frames, (sf_count_t)n);
    assert_int_equal(info.channels, 2);
    assert_int_equal(info.samplerate, 48000);
    float *il = hm_malloc(sizeof(float) * 2 * n);
    assert_int_equal(sf_readf_float(sf, il, (sf_count_t)n), (sf_count_t)n);
    sf_close(sf);
    unlink(wav);
    for (size_t i = 0; i < n; i++)
        if (il[2 * i] != pcm[i] || il[2 * i + 1] != pcm[n + i]) fail_msg("wav frame %zu differs", i);
    free(il);
    size_t expect = (size_t)floor(T / 12.5 * 48000);
    assert_int_equal(n, expect);
    assert_int_equal(load_i32(r, "output_len"), (int32_t)n);
    float *ref = load(r, "output_sub", NULL);
    double e = rel_l2_sub(pcm, ref, 2, n, load_i32(r, "output_stride"));
    printf("%s: %zu samples, rel L2 %.3g (%.2f s)\n", name, n, e, hm_now() - t0);
    assert_true(e < 1e-3);
    free(ref); free(pcm); free(codes);
    codec_noise_free(nz);
    st_close(f);
    st_close(r);
}

static void test_detokenize_100(void **state) { check_detokenize("codec_detokenize_100", 1); }
static void test_detokenize_380(void **state) { check_detokenize("codec_detokenize_380", 2); }

/* A random, valid window's inputs for the solver tests. */
static void window_inputs(float **cond, float **ctx, float **noise)
{
    const int W = CODEC_WIN_FRAMES, C = fm_config(g_fm)->out_channels, n = fm_config(g_fm)->num_quantizers;
    int32_t *codes = hm_malloc(sizeof(int32_t) * (size_t)n * CODEC_WIN_CODES);
    for (int i = 0; i < n * CODEC_WIN_CODES; i++) codes[i] = (i * 7919) % fm_config(g_fm)->codebook_size;
    *cond = hm_malloc(sizeof(float) * (size_t)W * fm_config(g_fm)->dim);
    assert_int_equal(fm_cond(g_fm, codes, CODEC_WIN_CODES, *cond), HM_OK);
    *ctx = hm_malloc(sizeof(float) * (size_t)W * C);
    *noise = hm_malloc(sizeof(float) * (size_t)W * C);
    codec_noise *nz;
    assert_int_equal(codec_noise_seeded(7, &nz), HM_OK);
    assert_int_equal(codec_noise_draw(nz, *ctx, W, C), HM_OK);
    assert_int_equal(codec_noise_draw(nz, *noise, W, C), HM_OK);
    codec_noise_free(nz);
    free(codes);
}

static double rel_l2(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / den);
}

static int all_finite(const float *a, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(a[i])) return 0;
    return 1;
}

/* guidance <= 1 takes the single conditional call: with g = 1 it must agree with the batched CFG
 * path at g just above 1 (v_u + g (v_c - v_u) -> v_c), and g = 0.5 must equal g = 1 exactly. */
static void test_guidance_paths(void **state)
{
    const int W = CODEC_WIN_FRAMES, C = fm_config(g_fm)->out_channels, L = CODEC_CTX_FRAMES;
    size_t n = (size_t)W * C;
    float *cond, *ctx, *noise;
    window_inputs(&cond, &ctx, &noise);
    float *a = hm_malloc(sizeof(float) * n), *b = hm_malloc(sizeof(float) * n), *c = hm_malloc(sizeof(float) * n);
    assert_int_equal(fm_solve_window(g_fm, cond, ctx, L, noise, 2, 1.0f, a), HM_OK);
    assert_int_equal(fm_solve_window(g_fm, cond, ctx, L, noise, 2, 1.0001f, b), HM_OK);
    assert_int_equal(fm_solve_window(g_fm, cond, ctx, L, noise, 2, 0.5f, c), HM_OK);
    assert_true(all_finite(a, n));
    double e = rel_l2(a, b, n);
    printf("guidance 1 vs 1.0001: rel L2 %.3g\n", e);
    assert_true(e < 1e-3);
    assert_memory_equal(a, c, sizeof(float) * n);
    /* the in-context rows come back as given; the others moved away from the noise */
    assert_memory_equal(a, ctx, sizeof(float) * (size_t)L * C);
    assert_true(rel_l2(a + (size_t)L * C, noise + (size_t)L * C, n - (size_t)L * C) > 1e-3);
    /* and strong guidance changes the result */
    assert_int_equal(fm_solve_window(g_fm, cond, ctx, L, noise, 2, 3.0f, b), HM_OK);
    assert_true(rel_l2(b, a, n) > 1e-4);
    /* any step count >= 1 runs */
    for (int steps = 1; steps <= 3; steps += 2) {
        assert_int_equal(fm_solve_window(g_fm, cond, ctx, 0, noise, steps, 1.25f, c), HM_OK);
        assert_true(all_finite(c, n));
    }
    free(a); free(b); free(c); free(cond); free(ctx); free(noise);
}

static void test_bad_inputs(void **state)
{
    const int W = CODEC_WIN_FRAMES, C = fm_config(g_fm)->out_channels, nq = fm_config(g_fm)->num_quantizers;
    const int cbs = fm_config(g_fm)->codebook_size;
    float *cond, *ctx, *noise, *out = hm_malloc(sizeof(float) * (size_t)W * C);
    window_inputs(&cond, &ctx, &noise);
    assert_int_equal(fm_solve_window(g_fm, cond, ctx, 0, noise, 0, 1.25f, out), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "steps"));
    assert_int_equal(fm_solve_window(g_fm, cond, ctx, 0, noise, FM_MAX_STEPS + 1, 1.25f, out), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "1001 flow-matching steps"));
    assert_int_equal(fm_solve_window(g_fm, cond, ctx, 0, noise, 10, -1.0f, out), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "guidance"));
    assert_int_equal(fm_solve_window(g_fm, cond, ctx, 0, noise, 10, NAN, out), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "guidance"));
    assert_int_equal(fm_solve_window(g_fm, cond, ctx, W + 1, noise, 10, 1.25f, out), HM_ERR);

    int T = 50;
    int32_t *codes = hm_calloc((size_t)nq * T, sizeof(int32_t));
    codec_noise *nz;
    assert_int_equal(codec_noise_seeded(1, &nz), HM_OK);
    float *pcm = NULL;
    size_t n = 7;
    assert_int_equal(codec_detokenize(g_fm, g_voc, codes, 0, 10, 1.25f, nz, NULL, &pcm, &n), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "no codes"));
    assert_null(pcm);
    assert_int_equal(n, 0);
    assert_int_equal(codec_detokenize(g_fm, g_voc, codes, T, 0, 1.25f, nz, NULL, &pcm, &n), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "steps"));
    assert_int_equal(codec_detokenize(g_fm, g_voc, codes, T, 10, -0.5f, nz, NULL, &pcm, &n), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "guidance"));
    assert_int_equal(codec_detokenize(g_fm, g_voc, codes, T, 10, NAN, nz, NULL, &pcm, &n), HM_ERR);
    assert_int_equal(codec_detokenize(g_fm, g_voc, codes, T, 10, INFINITY, nz, NULL, &pcm, &n), HM_ERR);
    codes[3 * T + 17] = cbs;
    assert_int_equal(codec_detokenize(g_fm, g_voc, codes, T, 10, 1.25f, nz, NULL, &pcm, &n), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "codebook 3, frame 17"));
    codes[3 * T + 17] = -1;
    assert_int_equal(codec_detokenize(g_fm, g_voc, codes, T, 10, 1.25f, nz, NULL, &pcm, &n), HM_ERR);
    codes[3 * T + 17] = 0;
    int32_t *wc = hm_calloc((size_t)nq * CODEC_WIN_CODES, sizeof(int32_t));
    wc[5] = cbs + 100;
    assert_int_equal(fm_cond(g_fm, wc, CODEC_WIN_CODES, cond), HM_ERR);
    /* an unwritable output fails before any work and leaves nothing */
    codec_sink sink = {.path = "/nonexistent-dir/song.wav", .fmt = AUDIO_FMT_DEFAULT};
    assert_int_equal(codec_detokenize(g_fm, g_voc, codes, T, 1, 1.25f, nz, &sink, &pcm, &n), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "/nonexistent-dir/song.wav"));
    assert_null(pcm);
    /* a model folder without a codec */
    fm_model *m;
    voc_model *v;
    assert_int_equal(fm_load("/nonexistent-model", &m), HM_ERR);
    assert_int_equal(voc_load("/nonexistent-model", &v), HM_ERR);
    codec_noise_free(nz);
    free(codes); free(wc); free(out); free(cond); free(ctx); free(noise);
}

/* guidance <= 1 and a short step count through the whole pipeline, seeded noise, with a sink. */
typedef struct { size_t n; int calls; } counter;
static int count_sink(void *ctx, const float *const *ch, size_t n)
{
    counter *c = ctx;
    c->n += n;
    c->calls++;
    return HM_OK;
}

static void test_detokenize_seeded(void **state)
{
    const int nq = fm_config(g_fm)->num_quantizers, T = 30;
    int32_t *codes = hm_malloc(sizeof(int32_t) * (size_t)nq * T);
    for (int i = 0; i < nq * T; i++) codes[i] = (i * 31) % fm_config(g_fm)->codebook_size;
    codec_noise *nz;
    assert_int_equal(codec_noise_seeded(123, &nz), HM_OK);
    counter c = {0};
    codec_sink sink = {.cb = count_sink, .cb_ctx = &c};
    float *pcm;
    size_t n;
    assert_int_equal(codec_detokenize(g_fm, g_voc, codes, T, 1, 1.0f, nz, &sink, &pcm, &n), HM_OK);
    assert_int_equal(n, (size_t)(T * 3840));
    assert_int_equal(c.n, n);
    assert_true(all_finite(pcm, 2 * n));
    free(pcm);
    codec_noise_free(nz);
    free(codes);
}

typedef struct {
    float *pcm[2];
    size_t n, cap;
} grow;

static int grow_sink(void *ctx, const float *const *ch, size_t n)
{
    grow *g = ctx;
    assert_true(g->n + n <= g->cap);
    for (int c = 0; c < 2; c++) memcpy(g->pcm[c] + g->n, ch[c], sizeof(float) * n);
    g->n += n;
    return HM_OK;
}

/* Streaming (codes arriving in uneven chunks) gives the same audio as decoding the whole sequence,
 * and delivers each window's final samples as soon as its codes exist. */
static void test_stream(void **state)
{
    const int nq = fm_config(g_fm)->num_quantizers, T = 700, steps = 1;
    int32_t *codes = hm_malloc(sizeof(int32_t) * (size_t)nq * T), *frames = hm_malloc(sizeof(int32_t) * (size_t)nq * T);
    for (int i = 0; i < T; i++)
        for (int q = 0; q < nq; q++) {
            int32_t v = (int32_t)((i * 131 + q * 17 + (i * i) % 7) % fm_config(g_fm)->codebook_size);
            codes[(size_t)q * T + i] = v;
            frames[(size_t)i * nq + q] = v;
        }
    codec_noise *nz;
    assert_int_equal(codec_noise_seeded(99, &nz), HM_OK);
    float *ref;
    size_t nref;
    assert_int_equal(codec_detokenize(g_fm, g_voc, codes, T, steps, 1.25f, nz, NULL, &ref, &nref), HM_OK);
    assert_int_equal(nref, (size_t)T * 3840);

    grow g = {{hm_malloc(sizeof(float) * nref), hm_malloc(sizeof(float) * nref)}, 0, nref};
    codec_sink sink = {.cb = grow_sink, .cb_ctx = &g};
    codec_stream *st;
    assert_int_equal(codec_stream_open(g_fm, g_voc, steps, 1.25f, nz, &sink, &st), HM_OK);
    const int chunks[] = {1, 50, 320, 1, 7, 300, 21};
    int pushed = 0;
    for (size_t i = 0; pushed < T; i++) {
        int n = HM_MIN(chunks[i % HM_ARRAY_LEN(chunks)], T - pushed);
        assert_int_equal(codec_stream_push(st, frames + (size_t)pushed * nq, n), HM_OK);
        pushed += n;
        /* window k is done once 320k + 372 codes exist; all but its last 199680 samples are final */
        size_t expect = pushed < 372 ? 0 : (size_t)((pushed - 372) / 320 + 1) * 1228800;
        assert_int_equal(g.n, expect);
    }
    size_t n;
    assert_int_equal(codec_stream_finish(st, &n), HM_OK);
    assert_int_equal(n, nref);
    assert_memory_equal(g.pcm[0], ref, sizeof(float) * nref);
    assert_memory_equal(g.pcm[1], ref + nref, sizeof(float) * nref);

    /* a bad code mid-stream stops it */
    assert_int_equal(codec_stream_open(g_fm, g_voc, steps, 1.25f, nz, NULL, &st), HM_OK);
    frames[5] = -3;
    assert_int_equal(codec_stream_push(st, frames, 10), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "frame 0"));
    assert_int_equal(codec_stream_finish(st, &n), HM_ERR);
    free(g.pcm[0]); free(g.pcm[1]); free(ref); free(codes); free(frames);
    codec_noise_free(nz);
}

/* The reference's T = 104 (mod 320) quirk: 424 codes make one window, so the song is 1428480
 * samples, not floor(424 / 12.5 * 48000) = 1628160. */
static void test_quirk_424(void **state)
{
    const int nq = fm_config(g_fm)->num_quantizers, T = 424;
    int32_t *codes = hm_calloc((size_t)nq * T, sizeof(int32_t));
    codec_noise *nz;
    assert_int_equal(codec_noise_seeded(1, &nz), HM_OK);
    float *pcm;
    size_t n;
    assert_int_equal(codec_detokenize(g_fm, g_voc, codes, T, 1, 1.25f, nz, NULL, &pcm, &n), HM_OK);
    assert_int_equal(n, 1428480);
    free(pcm);
    free(codes);
    codec_noise_free(nz);
}

/* Seconds per window on this model (docs/PERF.md "Codec on CPU" quotes these lines): one
 * flow-matching window at 10 steps / guidance 1.25 (20 estimator passes over 744 frames) and one
 * vocoder window (744 frames -> 2 x 1428480 samples).  Best of 3. */
static void test_window_timing(void **state)
{
    const int W = CODEC_WIN_FRAMES, C = fm_config(g_fm)->out_channels;
    float *cond, *ctx, *noise, *lat = hm_malloc(sizeof(float) * (size_t)W * C);
    window_inputs(&cond, &ctx, &noise);
    float *pcm = hm_malloc(sizeof(float) * 2 * (size_t)W * voc_hop(g_voc));
    double best_fm = 1e9, best_voc = 1e9;
    for (int r = 0; r < 3; r++) {
        double t0 = hm_now();
        assert_int_equal(fm_solve_window(g_fm, cond, ctx, CODEC_CTX_FRAMES, noise, 10, 1.25f, lat), HM_OK);
        double t1 = hm_now();
        assert_int_equal(voc_decode_window(g_voc, lat, W, (size_t)W * voc_hop(g_voc), pcm), HM_OK);
        double t2 = hm_now();
        best_fm = HM_MIN(best_fm, t1 - t0);
        best_voc = HM_MIN(best_voc, t2 - t1);
    }
    printf("PERF codec window (%d frames, 29.76 s of audio): flow matching 10 steps cfg 1.25 %.3f s, vocoder %.3f s\n", W,
           best_fm, best_voc);
    free(cond); free(ctx); free(noise); free(lat); free(pcm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_estimator),
        cmocka_unit_test(test_vocoder),
        cmocka_unit_test(test_detokenize_100),
        cmocka_unit_test(test_detokenize_380),
        cmocka_unit_test(test_guidance_paths),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_detokenize_seeded),
        cmocka_unit_test(test_stream),
        cmocka_unit_test(test_quirk_424),
        cmocka_unit_test(test_window_timing),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
