/* test_codec_io.c - the codec's bookkeeping without a model: window planning against the
 * reference's padding rules (expected values from running the reference's Python loop), the
 * incremental cross-fade against a direct evaluation of the reference formula, the noise sources,
 * and the WAV/FLAC writer (round trip through libsndfile, failures leave no file behind). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <sndfile.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "codec_plan.h"
#include "crossfade.h"
#include "hm.h"
#include "safetensors.h"
#include "../stages/vocoder/audio_out.h"
#include "softmax.h"

/* T -> padded length, windows, target_len, out_len, source of padded position 371 and of the last
 * position: printed by the reference's detokenize padding code run on codes = range(T). */
static const struct { int T, len, nwin; size_t target, out; int src371, src_last; } plan_cases[] = {
    {1, 372, 1, 3840, 3840, 0, 0},
    {100, 372, 1, 384000, 384000, 71, 71},
    {371, 372, 1, 1424640, 1424640, 0, 0},
    {372, 372, 1, 1428480, 1428480, 371, 371},
    {373, 692, 2, 1432320, 1432320, 371, 318},
    {380, 692, 2, 1459200, 1459200, 371, 311},
    {424, 424, 1, 1628160, 1428480, 371, 423}, /* (424 - 104) % 320 == 0: nothing extended */
    {692, 692, 2, 2657280, 2657280, 371, 691},
    {693, 1012, 3, 2661120, 2661120, 371, 318},
    {1000, 1012, 3, 3840000, 3840000, 371, 11},
    {2000, 2292, 7, 7680000, 7680000, 371, 291},
};

static void test_plan(void **state)
{
    for (size_t i = 0; i < HM_ARRAY_LEN(plan_cases); i++) {
        codec_plan p;
        assert_int_equal(codec_plan_make(plan_cases[i].T, 48000, &p), HM_OK);
        assert_int_equal(p.padded_len, plan_cases[i].len);
        assert_int_equal(p.n_windows, plan_cases[i].nwin);
        assert_int_equal(p.target_len, plan_cases[i].target);
        assert_int_equal(p.out_len, plan_cases[i].out);
        assert_int_equal(codec_plan_src(&p, 371), plan_cases[i].src371);
        assert_int_equal(codec_plan_src(&p, p.padded_len - 1), plan_cases[i].src_last);
        assert_int_equal(p.seg_samples, 1428480);
        assert_int_equal(p.hop_samples, 1228800);
        assert_int_equal(p.ovl_samples, 199680);
        assert_int_equal(codec_plan_windows_ready(plan_cases[i].T, 1), plan_cases[i].nwin);
    }
    codec_plan p;
    assert_int_equal(codec_plan_make(0, 48000, &p), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "no codes"));
    assert_int_equal(codec_plan_make(-5, 48000, &p), HM_ERR);
    /* streaming: a window is ready once all its 372 codes exist */
    assert_int_equal(codec_plan_windows_ready(0, 0), 0);
    assert_int_equal(codec_plan_windows_ready(371, 0), 0);
    assert_int_equal(codec_plan_windows_ready(372, 0), 1);
    assert_int_equal(codec_plan_windows_ready(691, 0), 1);
    assert_int_equal(codec_plan_windows_ready(692, 0), 2);
    assert_int_equal(codec_plan_windows_ready(100, 1), 1);
    /* a window ready before the end has the same codes whatever the final length */
    int32_t codes[2 * 2000], a[2 * 372], b[2 * 372];
    for (int i = 0; i < 2 * 2000; i++) codes[i] = i % 997;
    codec_plan p1, p2;
    assert_int_equal(codec_plan_make(1000, 48000, &p1), HM_OK);
    assert_int_equal(codec_plan_make(2000, 48000, &p2), HM_OK);
    int32_t c1[2 * 1000];
    for (int q = 0; q < 2; q++) memcpy(c1 + q * 1000, codes + q * 2000, sizeof(int32_t) * 1000);
    for (int k = 0; k < codec_plan_windows_ready(1000, 0); k++) {
        codec_plan_window_codes(&p1, c1, 2, k, a);
        codec_plan_window_codes(&p2, codes, 2, k, b);
        assert_memory_equal(a, b, sizeof a);
    }
}

/* ---- cross-fade ---- */

typedef struct {
    float *buf[2];
    size_t n, cap;
} collect;

static int collect_sink(void *ctx, const float *const *ch, size_t n)
{
    collect *c = ctx;
    assert_true(c->n + n <= c->cap);
    for (int k = 0; k < 2; k++) memcpy(c->buf[k] + c->n, ch[k], sizeof(float) * n);
    c->n += n;
    return HM_OK;
}

/* The reference: output = seg0; for each next seg: output[-O:] = output[-O:] * (1 - r) + seg[:O] * r
 * (float64 products, stored as float32), output += seg[O:]; then output[:limit]. */
static void reference_xfade(float *const *segs, int nseg, size_t L, size_t O, size_t limit, float *out, size_t *n)
{
    size_t len = 0;
    for (int s = 0; s < nseg; s++) {
        if (!s) {
            memcpy(out, segs[0], sizeof(float) * L);
            len = L;
            continue;
        }
        for (size_t i = 0; i < O; i++) {
            double r = i == O - 1 ? 1.0 : (double)i * (1.0 / (double)(O - 1)); /* numpy: arange * step */
            out[len - O + i] = (float)((double)out[len - O + i] * (1.0 - r) + (double)segs[s][i] * r);
        }
        memcpy(out + len, segs[s] + O, sizeof(float) * (L - O));
        len += L - O;
    }
    *n = len < limit ? len : limit;
}

static void test_xfade(void **state)
{
    const size_t L = 40, O = 9;
    for (int nseg = 1; nseg <= 4; nseg++)
        for (size_t limit = 5; limit < 200; limit += 37) {
            float *segs[4], *chunk = hm_malloc(sizeof(float) * 2 * L);
            for (int s = 0; s < nseg; s++) {
                segs[s] = hm_malloc(sizeof(float) * L);
                for (size_t i = 0; i < L; i++) segs[s][i] = sinf(0.37f * (float)(i + 13 * s)) + 0.1f * (float)s;
            }
            float ref[200];
            size_t nref;
            reference_xfade(segs, nseg, L, O, limit, ref, &nref);
            xfade x;
            assert_int_equal(xfade_init(&x, 2, L, O), HM_OK);
            collect c = {{hm_malloc(sizeof(float) * 200), hm_malloc(sizeof(float) * 200)}, 0, 200};
            for (int s = 0; s < nseg; s++) {
                /* streaming: the limit becomes known late, but before anything could pass it */
                if (s == nseg - 1 || limit < (size_t)(s + 1) * (L - O)) xfade_set_limit(&x, limit);
                for (size_t i = 0; i < L; i++) {
                    chunk[i] = segs[s][i];
                    chunk[L + i] = -segs[s][i];
                }
                assert_int_equal(xfade_push(&x, chunk, L, collect_sink, &c), HM_OK);
                if (s < nseg - 1) /* all but the tail is final */
                    assert_int_equal(c.n, HM_MIN(limit, (size_t)(s + 1) * (L - O)));
            }
            assert_int_equal(xfade_finish(&x, collect_sink, &c), HM_OK);
            assert_int_equal(c.n, nref);
            for (size_t i = 0; i < nref; i++) {
                assert_true(c.buf[0][i] == ref[i]);
                assert_true(c.buf[1][i] == -ref[i]);
            }
            xfade_free(&x);
            free(c.buf[0]);
            free(c.buf[1]);
            free(chunk);
            for (int s = 0; s < nseg; s++) free(segs[s]);
        }
    xfade x;
    assert_int_equal(xfade_init(&x, 2, 10, 5), HM_ERR);
}

/* The cuda vocoder's protocol (stages/vocoder/service.c, the fade on the device) replayed on the
 * host: an external xfade, the caller fading each window's head in place with its own copy of the
 * tail, emitting [0, L - O) with xfade_emit and the tail at the end.  Must give exactly what
 * xfade_push / xfade_finish give, limit included. */
static void test_xfade_external(void **state)
{
    const size_t L = 40, O = 9;
    for (int nseg = 1; nseg <= 3; nseg++)
        for (size_t limit = 5; limit < 120; limit += 23) {
            xfade a, b;
            assert_int_equal(xfade_init(&a, 2, L, O), HM_OK);
            assert_int_equal(xfade_init_external(&b, 2, L, O), HM_OK);
            assert_null(b.buf);
            collect ca = {{hm_malloc(sizeof(float) * 200), hm_malloc(sizeof(float) * 200)}, 0, 200};
            collect cb = {{hm_malloc(sizeof(float) * 200), hm_malloc(sizeof(float) * 200)}, 0, 200};
            float win[2 * 40], tail[2 * 9];
            for (int s = 0; s < nseg; s++) {
                if (s == nseg - 1 || limit < (size_t)(s + 1) * (L - O)) /* known before anything could pass it */
                    xfade_set_limit(&a, limit), xfade_set_limit(&b, limit);
                for (size_t i = 0; i < 2 * L; i++) win[i] = sinf(0.29f * (float)(i + 11 * s)) - 0.2f * (float)s;
                assert_int_equal(xfade_push(&a, win, L, collect_sink, &ca), HM_OK);
                for (int c = 0; c < 2; c++) {
                    if (b.have_tail) cpu_crossfade(tail + c * O, win + c * L, O, win + c * L);
                    memcpy(tail + c * O, win + c * L + (L - O), sizeof(float) * O);
                }
                b.have_tail = 1;
                const float *ch[2] = {win, win + L};
                assert_int_equal(xfade_emit(&b, ch, L - O, collect_sink, &cb), HM_OK);
            }
            assert_int_equal(xfade_finish(&a, collect_sink, &ca), HM_OK);
            const float *ch[2] = {tail, tail + O};
            assert_int_equal(xfade_emit(&b, ch, O, collect_sink, &cb), HM_OK);
            assert_int_equal(cb.n, ca.n);
            assert_int_equal(cb.n, HM_MIN(limit, (size_t)nseg * (L - O) + O));
            for (int c = 0; c < 2; c++) assert_memory_equal(cb.buf[c], ca.buf[c], sizeof(float) * ca.n);
            xfade_free(&a);
            xfade_free(&b);
            for (int c = 0; c < 2; c++) free(ca.buf[c]), free(cb.buf[c]);
        }
}

/* ---- noise ---- */

static void test_noise_seeded(void **state)
{
    codec_noise *a, *b;
    assert_int_equal(codec_noise_seeded(42, &a), HM_OK);
    assert_int_equal(codec_noise_seeded(42, &b), HM_OK);
    enum { N = 744 * 256 };
    float *x = hm_malloc(sizeof(float) * N), *y = hm_malloc(sizeof(float) * N);
    assert_int_equal(codec_noise_draw(a, x, 744, 256), HM_OK);
    assert_int_equal(codec_noise_draw_at(b, 0, y, 744, 256), HM_OK);
    assert_memory_equal(x, y, sizeof(float) * N); /* counter-based: draw 0 is draw 0 */
    double s = 0, s2 = 0;
    for (int i = 0; i < N; i++) {
        s += x[i];
        s2 += (double)x[i] * x[i];
    }
    assert_true(fabs(s / N) < 0.01);
    assert_true(fabs(s2 / N - 1.0) < 0.02);
    assert_int_equal(codec_noise_draw(a, y, 744, 256), HM_OK); /* draw 1 differs */
    assert_true(memcmp(x, y, sizeof(float) * N) != 0);
    codec_noise *c;
    assert_int_equal(codec_noise_seeded(43, &c), HM_OK);
    assert_int_equal(codec_noise_draw(c, y, 744, 256), HM_OK);
    assert_true(memcmp(x, y, sizeof(float) * N) != 0);
    codec_noise_free(a);
    codec_noise_free(b);
    codec_noise_free(c);
    free(x);
    free(y);
}

static void test_noise_replay(void **state)
{
    char path[] = "/tmp/hm_noise_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    float a[6] = {1, 2, 3, 4, 5, 6}, b[4] = {-1, -2, -3, -4};
    st_wtensor t[2] = {{"noise_00", ST_F32, 3, {1, 2, 3}, a}, {"noise_01", ST_F32, 2, {2, 2}, b}};
    assert_int_equal(st_write(path, t, 2, NULL, 0), HM_OK);
    codec_noise *n;
    assert_int_equal(codec_noise_replay(path, &n), HM_OK);
    float x[6];
    assert_int_equal(codec_noise_draw(n, x, 2, 3), HM_OK);
    assert_memory_equal(x, a, sizeof a);
    assert_int_equal(codec_noise_draw(n, x, 3, 2), HM_ERR); /* noise_01 has 4 values */
    assert_non_null(strstr(hm_errmsg(), "noise_01"));
    assert_int_equal(codec_noise_draw_at(n, 1, x, 2, 2), HM_OK);
    assert_memory_equal(x, b, sizeof b);
    assert_int_equal(codec_noise_draw_at(n, 2, x, 2, 2), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "noise_02"));
    codec_noise_free(n);
    unlink(path);
    assert_int_equal(codec_noise_replay("/nonexistent/noise.safetensors", &n), HM_ERR);
}

/* ---- softmax (the estimator's attention) against a float64 evaluation ---- */

static void test_softmax(void **state)
{
    enum { R = 7, N = 757 };
    static float x[R * N];
    uint64_t h = 12345;
    for (int i = 0; i < R * N; i++) {
        h = h * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = (float)((double)(h >> 40) / (double)(1 << 24) * 60.0 - 30.0) * (i % 3 ? 1.0f : 0.1f);
    }
    x[3] = -INFINITY; /* masked score */
    static double ref[R * N];
    for (int r = 0; r < R; r++) {
        float mx = -INFINITY;
        double sum = 0;
        for (int j = 0; j < N; j++) mx = fmaxf(mx, x[r * N + j]);
        /* the difference is taken in fp32, as torch does; exp and the sum in float64 */
        for (int j = 0; j < N; j++) sum += ref[r * N + j] = exp((double)(x[r * N + j] - mx));
        for (int j = 0; j < N; j++) ref[r * N + j] /= sum;
    }
    cpu_softmax_rows(x, R, N);
    for (int i = 0; i < R * N; i++) {
        double tol = 2e-6 * ref[i] + 1e-30;
        if (fabs(x[i] - ref[i]) > tol) fail_msg("softmax[%d] = %.9g, float64 %.9g", i, x[i], ref[i]);
    }
    assert_true(x[3] == 0.0f);
}

/* ---- writer ---- */

static char g_dir[64];

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static void round_trip(const char *name, audio_sample_fmt fmt, int sf_major, int sf_sub, double tol)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    enum { N = 48000 + 123 };
    float *l = hm_malloc(sizeof(float) * N), *r = hm_malloc(sizeof(float) * N);
    for (int i = 0; i < N; i++) {
        l[i] = 0.8f * sinf(0.01f * (float)i);
        r[i] = 0.5f * cosf(0.003f * (float)i);
    }
    l[7] = 1.7f; /* out of range: integer formats clip, f32 keeps it */
    audio_writer *w;
    assert_int_equal(audio_writer_open(path, 48000, 2, fmt, &w), HM_OK);
    const float *ch[2] = {l, r};
    assert_int_equal(audio_writer_write(w, ch, 1000), HM_OK);
    const float *ch2[2] = {l + 1000, r + 1000};
    assert_int_equal(audio_writer_write(w, ch2, N - 1000), HM_OK);
    assert_int_equal(access(path, F_OK), -1); /* not published before close */
    size_t frames;
    assert_int_equal(audio_writer_close(w, &frames), HM_OK);
    assert_int_equal(frames, N);
    SF_INFO info = {0};
    SNDFILE *sf = sf_open(path, SFM_READ, &info);
    assert_non_null(sf);
    assert_int_equal(info.samplerate, 48000);
    assert_int_equal(info.channels, 2);
    assert_int_equal(info.frames, N);
    assert_int_equal(info.format & SF_FORMAT_TYPEMASK, sf_major);
    assert_int_equal(info.format & SF_FORMAT_SUBMASK, sf_sub);
    float *il = hm_malloc(sizeof(float) * 2 * N);
    assert_int_equal(sf_readf_float(sf, il, N), N);
    sf_close(sf);
    for (int i = 0; i < N; i++) {
        float el = l[i] > 1.0f && sf_sub != SF_FORMAT_FLOAT ? 1.0f : l[i];
        if (fabs(il[2 * i] - el) > tol || fabs(il[2 * i + 1] - r[i]) > tol)
            fail_msg("%s frame %d: read (%g, %g), wrote (%g, %g)", name, i, il[2 * i], il[2 * i + 1], l[i], r[i]);
    }
    free(il);
    free(l);
    free(r);
    unlink(path);
}

static void test_writer_round_trip(void **state)
{
    round_trip("a.wav", AUDIO_F32, SF_FORMAT_WAV, SF_FORMAT_FLOAT, 0.0);
    round_trip("b.wav", AUDIO_PCM16, SF_FORMAT_WAV, SF_FORMAT_PCM_16, 1.0 / 32768 + 1e-7);
    round_trip("c.wav", AUDIO_PCM24, SF_FORMAT_WAV, SF_FORMAT_PCM_24, 1.0 / 8388608 + 1e-7);
    round_trip("d.flac", AUDIO_PCM16, SF_FORMAT_FLAC, SF_FORMAT_PCM_16, 1.0 / 32768 + 1e-7);
    round_trip("e.FLAC", AUDIO_FMT_DEFAULT, SF_FORMAT_FLAC, SF_FORMAT_PCM_24, 1.0 / 8388608 + 1e-7);
    assert_int_equal(count_entries(g_dir), 0);
}

static void test_writer_errors(void **state)
{
    audio_writer *w;
    char path[128];
    snprintf(path, sizeof path, "%s/x.mp3", g_dir);
    assert_int_equal(audio_writer_open(path, 48000, 2, AUDIO_FMT_DEFAULT, &w), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "extension"));
    snprintf(path, sizeof path, "%s/x.flac", g_dir);
    assert_int_equal(audio_writer_open(path, 48000, 2, AUDIO_F32, &w), HM_ERR);
    assert_int_equal(audio_writer_open("/nonexistent-dir/x.wav", 48000, 2, AUDIO_FMT_DEFAULT, &w), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "/nonexistent-dir/x.wav"));
    audio_sample_fmt f;
    assert_int_equal(audio_sample_fmt_parse("pcm24", &f), HM_OK);
    assert_int_equal(f, AUDIO_PCM24);
    assert_int_equal(audio_sample_fmt_parse("s8", &f), HM_ERR);
    /* abort removes the partial file */
    snprintf(path, sizeof path, "%s/y.wav", g_dir);
    assert_int_equal(audio_writer_open(path, 48000, 2, AUDIO_FMT_DEFAULT, &w), HM_OK);
    float z[16] = {0};
    const float *ch[2] = {z, z};
    assert_int_equal(audio_writer_write(w, ch, 16), HM_OK);
    assert_int_equal(count_entries(g_dir), 1);
    audio_writer_abort(w);
    assert_int_equal(count_entries(g_dir), 0);
}

/* A file-size limit makes the disk "full": the write must fail with a message and leave nothing. */
static void check_full_disk(const char *name, int fail_at_close)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {200000, 200000};
        setrlimit(RLIMIT_FSIZE, &rl);
        char path[128];
        snprintf(path, sizeof path, "%s/%s", g_dir, name);
        audio_writer *w;
        if (audio_writer_open(path, 48000, 2, AUDIO_F32, &w)) _exit(2);
        static float buf[100000];
        const float *ch[2] = {buf, buf};
        int failed = 0;
        for (int i = 0; i < 4 && !failed; i++) failed = audio_writer_write(w, ch, 100000) != HM_OK;
        if (failed && !strstr(hm_errmsg(), "cannot write")) _exit(3);
        if (!failed) _exit(4);
        if (fail_at_close) {
            if (audio_writer_close(w, NULL) == HM_OK) _exit(5);
        } else {
            audio_writer_abort(w);
        }
        _exit(0);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_int_equal(count_entries(g_dir), 0);
}

static void test_writer_disk_full(void **state)
{
    check_full_disk("full.wav", 0);
    check_full_disk("full2.wav", 1);
}

static int setup(void **state)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/hm_codec_io_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state)
{
    rmdir(g_dir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan),          cmocka_unit_test(test_xfade),
        cmocka_unit_test(test_xfade_external),
        cmocka_unit_test(test_noise_seeded),  cmocka_unit_test(test_noise_replay),
        cmocka_unit_test(test_softmax),
        cmocka_unit_test(test_writer_round_trip), cmocka_unit_test(test_writer_errors),
        cmocka_unit_test(test_writer_disk_full),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
