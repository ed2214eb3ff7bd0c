/* test_pipeline.c - end to end through the real processes: the heartmula CLI starts a private
 * pipeline (hm-launch + five stage processes) on the fixture model and must reproduce the
 * reference: LM frames exactly (cfg 1.5 and 1.0, top-k 1), detokenize output within 1e-3
 * relative L2 with the recorded noise, a text request through the tokenizer, and clear one-line
 * errors for bad requests. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <sndfile.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hm.h"
#include "safetensors.h"

static char g_tmp[256], g_model[300], g_root[1024];

/* Run a shell command; returns its exit status, output (stdout+stderr) in out. */
static int run(char *out, size_t cap, const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char full[8300];
    snprintf(full, sizeof full, "cd %s && %s 2>&1", g_root, cmd);
    FILE *p = popen(full, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void ids_of(const char *json_path, const char *key, char *buf, size_t cap)
{
    char *txt;
    assert_int_equal(hm_read_file(json_path, &txt, NULL, 0), HM_OK);
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    char *p = strstr(txt, pat);
    assert_non_null(p);
    p = strchr(p, '[');
    char *e = strchr(p, ']');
    size_t o = 0;
    for (char *q = p + 1; q < e && o + 2 < cap; q++)
        if ((*q >= '0' && *q <= '9') || *q == ',') buf[o++] = *q;
    buf[o] = 0;
    free(txt);
}

static int32_t *load_i32(const char *path, const char *name, int64_t *numel)
{
    st_file *f;
    st_tensor *t;
    if (st_open(path, &f) || st_get(f, name, -1, NULL, &t)) fail_msg("%s", hm_errmsg());
    int32_t *v = hm_malloc((size_t)t->numel * 4);
    assert_int_equal(st_to_i32(t, v), HM_OK);
    *numel = t->numel;
    st_close(f);
    return v;
}

static void check_codes(const char *case_name, const char *cfg)
{
    char js[600], tags[4096], lyr[4096], out[16384], st[600];
    snprintf(js, sizeof js, "tests/fixtures/lm/%s.json", case_name);
    ids_of(js, "tags", tags, sizeof tags);
    ids_of(js, "lyrics", lyr, sizeof lyr);
    char codes[400];
    snprintf(codes, sizeof codes, "%s/%s.codes.safetensors", g_tmp, case_name);
    int rc = run(out, sizeof out, "bin/heartmula codes --model-dir %s --tag-ids %s --lyric-ids %s --topk 1 --cfg %s --max-seconds 1.84 --with-logits -o %s",
                 g_model, tags, lyr, cfg, codes);
    if (rc) fail_msg("heartmula codes failed (%d): %s", rc, out);
    int64_t n1, n2;
    int32_t *got = load_i32(codes, "codes", &n1);
    snprintf(st, sizeof st, "tests/fixtures/lm/%s.safetensors", case_name);
    int32_t *want = load_i32(st, "frames", &n2);
    assert_int_equal(n1, n2); /* [8, 24]: 1 + floor(1840 / 80) frames */
    assert_memory_equal(got, want, (size_t)n1 * 4);
    free(got);
    free(want);
    /* every sampler logits vector, computed in the draft-verifier process from hidden states the
     * backbone process sent through its shm pool, within 1e-4 relative L2 of the reference */
    st_file *fg, *fw;
    st_tensor *lg, *lw;
    if (st_open(codes, &fg) || st_get(fg, "sampler_logits", -1, NULL, &lg) || st_open(st, &fw) ||
        st_get(fw, "sampler_logits", -1, NULL, &lw))
        fail_msg("%s", hm_errmsg());
    assert_int_equal(lg->numel, lw->numel); /* [24*8, 69] vs [24*8, 1, 69] */
    int V = (int)lg->shape[1], rows = (int)lg->shape[0];
    float *a = hm_malloc((size_t)lg->numel * 4), *b = hm_malloc((size_t)lw->numel * 4);
    st_to_f32(lg, a);
    st_to_f32(lw, b);
    double worst = 0;
    for (int r = 0; r < rows; r++) {
        double num = 0, den = 0;
        for (int v = 0; v < V; v++) {
            double d = (double)a[r * V + v] - b[r * V + v];
            num += d * d;
            den += (double)b[r * V + v] * b[r * V + v];
        }
        double rel = sqrt(num / (den > 0 ? den : 1));
        if (rel > worst) worst = rel;
    }
    print_message("%s: worst sampler-logits relative L2 %.3g over %d vectors\n", case_name, worst, rows);
    assert_true(worst < 1e-4);
    free(a);
    free(b);
    st_close(fg);
    st_close(fw);
}

static void test_codes_cfg15(void **state) { check_codes("mula_cfg15", "1.5"); (void)state; }
static void test_codes_cfg10(void **state) { check_codes("mula_cfg10", "1.0"); (void)state; }

static void check_detok(const char *case_name)
{
    char out[16384], wav[400];
    snprintf(wav, sizeof wav, "%s/%s.wav", g_tmp, case_name);
    int rc = run(out, sizeof out, "bin/heartmula detokenize tests/fixtures/codec/%s.safetensors --model-dir %s "
                                  "--noise-from tests/fixtures/codec/%s.safetensors --sample-format f32 -o %s",
                 case_name, g_model, case_name, wav);
    if (rc) fail_msg("heartmula detokenize failed (%d): %s", rc, out);
    SF_INFO info = {0};
    SNDFILE *sf = sf_open(wav, SFM_READ, &info);
    assert_non_null(sf);
    assert_int_equal(info.samplerate, 48000);
    assert_int_equal(info.channels, 2);
    float *pcm = hm_malloc((size_t)info.frames * 2 * sizeof(float));
    assert_int_equal(sf_readf_float(sf, pcm, info.frames), info.frames);
    sf_close(sf);
    char ref[400];
    snprintf(ref, sizeof ref, "tests/fixtures/codec/%s_output_sub.safetensors", case_name);
    st_file *f;
    st_tensor *t, *tl, *ts;
    if (st_open(ref, &f) || st_get(f, "output_sub", -1, NULL, &t) || st_get(f, "output_len", -1, NULL, &tl) ||
        st_get(f, "output_stride", -1, NULL, &ts))
        fail_msg("%s", hm_errmsg());
    int32_t len, stride;
    st_to_i32(tl, &len);
    st_to_i32(ts, &stride);
    assert_int_equal(info.frames, len); /* length exact: floor(T / 12.5 * 48000) */
    float *sub = hm_malloc((size_t)t->numel * sizeof(float));
    st_to_f32(t, sub);
    int64_t per = t->shape[1];
    double num = 0, den = 0;
    for (int c = 0; c < 2; c++)
        for (int64_t i = 0; i < per; i++) {
            double r = sub[c * per + i], g = pcm[(i * stride) * 2 + c];
            num += (g - r) * (g - r);
            den += r * r;
        }
    double rel = sqrt(num / den);
    print_message("%s: relative L2 %.3g over %lld subsampled samples\n", case_name, rel, (long long)(2 * per));
    assert_true(rel < 1e-3);
    st_close(f);
    free(sub);
    free(pcm);
}

static void test_detokenize_100(void **state) { check_detok("codec_detokenize_100"); (void)state; }
static void test_detokenize_380(void **state) { check_detok("codec_detokenize_380"); (void)state; }

/* Text -> song through all five processes; the WAV is read back: header, rate, channels, and a
 * length of exactly frames x 80 ms. */
static void test_generate_text(void **state)
{
    char out[16384], wav[400];
    snprintf(wav, sizeof wav, "%s/song.wav", g_tmp);
    int rc = run(out, sizeof out, "bin/heartmula generate --model-dir %s --tags 'Pop, Piano' --lyrics 'Hello world, ÉCHO' "
                                  "--max-seconds 2 --topk 1 -o %s", g_model, wav);
    if (rc) fail_msg("heartmula generate failed (%d): %s", rc, out);
    long frames = -1;
    char *p = strstr(out, "wrote ");
    if (p) p = strstr(p, ": ");
    if (p) frames = strtol(p + 2, NULL, 10);
    assert_true(frames >= 1 && frames <= 26);
    SF_INFO info = {0};
    SNDFILE *sf = sf_open(wav, SFM_READ, &info);
    assert_non_null(sf);
    assert_int_equal(info.format & SF_FORMAT_TYPEMASK, SF_FORMAT_WAV);
    assert_int_equal(info.format & SF_FORMAT_SUBMASK, SF_FORMAT_PCM_16);
    assert_int_equal(info.samplerate, 48000);
    assert_int_equal(info.channels, 2);
    assert_int_equal(info.frames, frames * 3840); /* 80 ms at 48 kHz */
    sf_close(sf);
    (void)state;
}

static void expect_fail(const char *needle, const char *fmt, ...)
{
    char cmd[4096], out[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = run(out, sizeof out, "%s", cmd);
    if (rc == 0) fail_msg("expected failure, got success: %s", cmd);
    if (!strstr(out, needle)) fail_msg("output of '%s' lacks '%s':\n%s", cmd, needle, out);
    /* one line: the error itself */
    const char *last = out;
    int lines = 0;
    for (const char *q = out; *q; q++) if (*q == '\n') lines++;
    (void)last;
    if (lines != 1) fail_msg("expected a one-line error from '%s', got:\n%s", cmd, out);
}

static void test_bad_requests(void **state)
{
    expect_fail("does not exist", "bin/heartmula generate --model-dir /nonexistent --tags a --lyrics b -o %s/x.wav", g_tmp);
    expect_fail("--max-seconds must be more than 0", "bin/heartmula generate --model-dir %s --tags a --lyrics b --max-seconds 0 -o %s/x.wav", g_model, g_tmp);
    expect_fail("--max-seconds", "bin/heartmula generate --model-dir %s --tags a --lyrics b --max-seconds 6000 -o %s/x.wav", g_model, g_tmp);
    expect_fail("invalid UTF-8", "printf 'bad \\377\\376 text' > %s/bad.txt && bin/heartmula generate --model-dir %s --tags a --lyrics-file %s/bad.txt --max-seconds 1 -o %s/x.wav",
                g_tmp, g_model, g_tmp, g_tmp);
    expect_fail("must end in .wav or .flac", "bin/heartmula generate --model-dir %s --tags a --lyrics b -o %s/x.mp3", g_model, g_tmp);
    expect_fail("output folder", "bin/heartmula generate --model-dir %s --tags a --lyrics b -o /nonexistent-dir/x.wav", g_model);
    expect_fail("unknown option", "bin/heartmula generate --bogus");
    expect_fail("outside the codec's codebook", "bin/heartmula detokenize %s/bad.codes.safetensors --model-dir %s -o %s/x.wav", g_tmp, g_model, g_tmp);
    expect_fail("empty", "bin/heartmula detokenize %s/empty.codes.safetensors --model-dir %s -o %s/x.wav", g_tmp, g_model, g_tmp);
    expect_fail("--codec-guidance", "bin/heartmula detokenize tests/fixtures/codec/codec_detokenize_100.safetensors --codec-guidance nan --model-dir %s -o %s/x.wav", g_model, g_tmp);
    expect_fail("--codec-guidance", "bin/heartmula detokenize tests/fixtures/codec/codec_detokenize_100.safetensors --codec-guidance -1 --model-dir %s -o %s/x.wav", g_model, g_tmp);
    expect_fail("--codec-steps", "bin/heartmula detokenize tests/fixtures/codec/codec_detokenize_100.safetensors --codec-steps 0 --model-dir %s -o %s/x.wav", g_model, g_tmp);
    (void)state;
}

static int setup(void **state)
{
    if (!getcwd(g_root, sizeof g_root)) return 1;
    snprintf(g_tmp, sizeof g_tmp, "/tmp/hm-test-pipeline-%d", (int)getpid());
    snprintf(g_model, sizeof g_model, "%s/model", g_tmp);
    char cmd[4096];
    /* the fixture LM and codec in one model folder, with a small BPE tokenizer whose special
     * ids are the fixture's bos/eos (1000, 1001) */
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s && ln -s %s/tests/fixtures/lm/model/HeartMuLa-oss-tiny %s/ && ln -s %s/tests/fixtures/codec/HeartCodec-oss %s/ && "
             "cp tests/fixtures/lm/model/gen_config.json %s/ && "
             "bin/mktokenizer --vocab 1000 --out %s/tokenizer.json tools/mktokenizer/corpus.txt >/dev/null 2>&1",
             g_model, g_root, g_model, g_root, g_model, g_model, g_model);
    if (system(cmd)) return 1;
    int32_t bad[16];
    for (int i = 0; i < 16; i++) bad[i] = i == 9 ? 4096 : 1;
    char p[400];
    snprintf(p, sizeof p, "%s/bad.codes.safetensors", g_tmp);
    st_wtensor t = {"codes", ST_I32, 2, {8, 2}, bad};
    if (st_write(p, &t, 1, NULL, 0)) return 1;
    snprintf(p, sizeof p, "%s/empty.codes.safetensors", g_tmp);
    st_wtensor e = {"codes", ST_I32, 2, {8, 0}, bad};
    if (st_write(p, &e, 1, NULL, 0)) return 1;
    (void)state;
    return 0;
}

static int teardown(void **state)
{
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_tmp);
    (void)state;
    return system(cmd) ? 1 : 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_codes_cfg15),    cmocka_unit_test(test_codes_cfg10),
        cmocka_unit_test(test_detokenize_100), cmocka_unit_test(test_detokenize_380),
        cmocka_unit_test(test_generate_text),  cmocka_unit_test(test_bad_requests),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
