/* test_safetensors.c - reader/writer round trip, sharded folders, dtype conversion, and the
 * strict header validation (every corrupt form must be rejected with a message, never crash). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <unistd.h>

#include "hm.h"
#include "modelcfg.h"
#include "safetensors.h"

static char g_dir[256];

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

/* Build a raw safetensors image from a header string and a data region. */
static size_t raw_image(uint8_t *buf, const char *hdr, const void *data, size_t dlen)
{
    uint64_t hl = strlen(hdr);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(hl >> (8 * i));
    memcpy(buf + 8, hdr, hl);
    memcpy(buf + 8 + hl, data, dlen);
    return 8 + hl + dlen;
}

static void test_round_trip(void **state)
{
    float a[6] = {1, -2, 3.5f, 0.25f, -0.0f, 1e-3f};
    uint16_t b[4];
    for (int i = 0; i < 4; i++) b[i] = hm_f32_to_bf16(a[i]);
    int64_t c[3] = {7, -9, 1LL << 40};
    st_wtensor w[] = {
        {"a", ST_F32, 2, {2, 3}, a},
        {"b.bf16", ST_BF16, 1, {4}, b},
        {"c", ST_I64, 1, {3}, c},
    };
    char path[300];
    snprintf(path, sizeof path, "%s/rt.safetensors", g_dir);
    const char *meta[] = {"format", "pt"};
    assert_int_equal(st_write(path, w, 3, meta, 1), HM_OK);
    st_file *f;
    assert_int_equal(st_open(path, &f), HM_OK);
    assert_int_equal(st_count(f), 3);
    float *af = st_load_f32(f, "a", 2, (int64_t[]){2, 3});
    assert_non_null(af);
    assert_memory_equal(af, a, sizeof a);
    free(af);
    float *bf = st_load_f32(f, "b.bf16", 1, (int64_t[]){4});
    for (int i = 0; i < 4; i++) assert_float_equal(bf[i], a[i], fabsf(a[i]) * 1e-2f + 1e-6f);
    free(bf);
    /* wrong shape is reported with both shapes */
    assert_null(st_load_f32(f, "a", 2, (int64_t[]){3, 2}));
    assert_non_null(strstr(hm_errmsg(), "[2, 3]"));
    assert_non_null(strstr(hm_errmsg(), "expected [3, 2]"));
    assert_int_equal(st_report_unused(f, NULL, 0), 1); /* "a" and "b.bf16" were fetched, "c" not yet */
    /* i64 -> i32 overflow is an error */
    st_tensor *t;
    assert_int_equal(st_get(f, "c", -1, NULL, &t), HM_OK);
    int32_t ci[3];
    assert_int_equal(st_to_i32(t, ci), HM_ERR);
    /* missing names are listed together */
    const char *need[] = {"a", "zz.weight", "yy.bias"};
    assert_int_equal(st_require(f, need, 3), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "'zz.weight'"));
    assert_non_null(strstr(hm_errmsg(), "'yy.bias'"));
    st_close(f);
    (void)state;
}

static void test_sharded(void **state)
{
    char sub[300], p[400];
    snprintf(sub, sizeof sub, "%s/sharded", g_dir);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", sub);
    assert_int_equal(system(cmd), 0);
    float x[2] = {1, 2}, y[3] = {3, 4, 5};
    snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", sub);
    assert_int_equal(st_write(p, (st_wtensor[]){{"x", ST_F32, 1, {2}, x}}, 1, NULL, 0), HM_OK);
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", sub);
    assert_int_equal(st_write(p, (st_wtensor[]){{"y", ST_F32, 1, {3}, y}}, 1, NULL, 0), HM_OK);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", sub);
    const char *idx = "{\"metadata\":{},\"weight_map\":{\"x\":\"model-00001-of-00002.safetensors\","
                      "\"y\":\"model-00002-of-00002.safetensors\"}}";
    write_bytes(p, idx, strlen(idx));
    st_file *f;
    assert_int_equal(st_open(sub, &f), HM_OK);
    float *yy = st_load_f32(f, "y", 1, (int64_t[]){3});
    assert_non_null(yy);
    assert_float_equal(yy[2], 5.0f, 0);
    free(yy);
    st_close(f);
    /* an index naming a tensor its shard lacks */
    const char *bad = "{\"weight_map\":{\"x\":\"model-00001-of-00002.safetensors\","
                      "\"q\":\"model-00002-of-00002.safetensors\"}}";
    write_bytes(p, bad, strlen(bad));
    assert_int_equal(st_open(sub, &f), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "'q'"));
    (void)state;
}

static void expect_reject(const char *hdr, size_t dlen, const char *needle)
{
    uint8_t buf[1024] = {0}, data[256] = {0};
    size_t n = raw_image(buf, hdr, data, dlen);
    st_file *f = NULL;
    assert_int_equal(st_open_mem(buf, n, "t", &f), HM_ERR);
    assert_null(f);
    if (needle && !strstr(hm_errmsg(), needle)) fail_msg("message '%s' lacks '%s'", hm_errmsg(), needle);
}

static void test_corrupt(void **state)
{
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8, "needs 8");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "outside");
    expect_reject("{\"a\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "shape");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}", 8, "overlap");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 8, NULL);
    expect_reject("[1,2,3]", 0, "JSON object");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 8, "data_offsets");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8, NULL);
    /* header length beyond the file */
    uint8_t b[16] = {0xff, 0xff, 0, 0, 0, 0, 0, 0};
    st_file *f;
    assert_int_equal(st_open_mem(b, sizeof b, "t", &f), HM_ERR);
    assert_int_equal(st_open_mem(b, 3, "t", &f), HM_ERR);
    /* truncated file on disk */
    char p[300];
    snprintf(p, sizeof p, "%s/trunc.safetensors", g_dir);
    float x[64] = {0};
    assert_int_equal(st_write(p, (st_wtensor[]){{"x", ST_F32, 1, {64}, x}}, 1, NULL, 0), HM_OK);
    assert_int_equal(truncate(p, 100), 0);
    assert_int_equal(st_open(p, &f), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "trunc.safetensors"));
    assert_int_equal(st_open("/nonexistent/x.safetensors", &f), HM_ERR);
    (void)state;
}

static void test_half_conversions(void **state)
{
    /* bf16: round-to-nearest-even on the truncated 16 bits */
    assert_int_equal(hm_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(hm_f32_to_bf16(1.00390625f), 0x3f80); /* halfway between 0x3f80 and 0x3f81: even */
    assert_int_equal(hm_f32_to_bf16(1.01171875f), 0x3f82); /* halfway between 0x3f81 and 0x3f82: even */
    assert_float_equal(hm_bf16_to_f32(0xc040), -3.0f, 0);
    /* f16 */
    assert_int_equal(hm_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(hm_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(hm_f32_to_f16(1e6f), 0x7c00);
    assert_float_equal(hm_f16_to_f32(0x0001), 5.960464477539063e-08f, 0);
    assert_float_equal(hm_f16_to_f32(0xc400), -4.0f, 0);
    for (int i = 0; i < 0x7c00; i += 7) assert_int_equal(hm_f32_to_f16(hm_f16_to_f32((uint16_t)i)), i);
    (void)state;
}

static void write_text(const char *dir, const char *name, const char *txt)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    write_bytes(p, txt, strlen(txt));
}

static void test_model_config(void **state)
{
    char md[300], cmd[400];
    snprintf(md, sizeof md, "%s/model", g_dir);
    snprintf(cmd, sizeof cmd, "mkdir -p %s/HeartMuLa-oss-3B %s/HeartCodec-oss", md, md);
    assert_int_equal(system(cmd), 0);
    char lm[400];
    snprintf(lm, sizeof lm, "%s/HeartMuLa-oss-3B", md);
    write_text(lm, "config.json",
               "{\"backbone_flavor\":\"llama-3B\",\"decoder_flavor\":\"tiny\",\"text_vocab_size\":128256,"
               "\"audio_vocab_size\":8197,\"audio_num_codebooks\":8,\"muq_dim\":512,"
               "\"flavors\":{\"tiny\":{\"num_layers\":2,\"num_heads\":4,\"num_kv_heads\":2,\"embed_dim\":48,"
               "\"intermediate_dim\":96,\"max_seq_len\":64},\"llama-3B\":{\"num_layers\":3}}}");
    hm_lm_config c;
    assert_int_equal(hm_lm_config_load(md, NULL, &c), HM_OK);
    assert_int_equal(c.backbone.num_layers, 3);   /* override of one key */
    assert_int_equal(c.backbone.embed_dim, 3072); /* the rest from the built-in table */
    assert_int_equal(c.backbone.max_seq_len, 8192);
    assert_int_equal(c.decoder.embed_dim, 48);
    assert_float_equal(c.decoder.rope_base, 500000.0f, 0);
    assert_int_equal(c.audio_vocab_size, 8197);
    write_text(lm, "config.json", "{\"backbone_flavor\":\"llama-9B\",\"decoder_flavor\":\"llama-300M\"}");
    assert_int_equal(hm_lm_config_load(md, NULL, &c), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "llama-9B"));
    write_text(lm, "config.json", "{\"backbone_flavor\":\"llama-3B\",\"decoder_flavor\":\"llama-300M\","
                                  "\"text_vocab_size\":\"many\"}");
    assert_int_equal(hm_lm_config_load(md, NULL, &c), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "text_vocab_size"));
    assert_int_equal(hm_lm_config_load("/nonexistent-model", NULL, &c), HM_ERR);
    snprintf(cmd, sizeof cmd, "mkdir -p %s/HeartMuLa-oss-7B", md);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(hm_lm_config_load(md, NULL, &c), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "--lm-version"));
    write_text(md, "gen_config.json", "{\"text_bos_id\":128000,\"text_eos_id\":128001,\"audio_eos_id\":8193,\"empty_id\":0}");
    hm_gen_config g;
    assert_int_equal(hm_gen_config_load(md, &g), HM_OK);
    assert_int_equal(g.audio_eos_id, 8193);
    (void)state;
}

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/hm-test-st-%d", (int)getpid());
    char cmd[300];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", g_dir);
    if (system(cmd)) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),      cmocka_unit_test(test_sharded),
        cmocka_unit_test(test_corrupt),         cmocka_unit_test(test_half_conversions),
        cmocka_unit_test(test_model_config),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (system(cmd)) rc = rc ? rc : 1;
    return rc;
}
