/* test_config.c - pipeline.yaml parsing: the shipped file loads, and every kind of mistake is an
 * error that names the key and the line. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "hm.h"

static void test_shipped_file(void **state)
{
    hm_pipeline_cfg c;
    if (hm_config_load("pipeline.yaml", &c)) fail_msg("%s", hm_errmsg());
    assert_string_equal(c.backend, "cpu");
    assert_int_equal(c.gen.topk, 50);
    assert_float_equal(c.gen.cfg, 1.5, 0);
    assert_int_equal(c.stage[HM_STAGE_BACKBONE].pool_slots, 8);
    assert_string_equal(c.stage[HM_STAGE_VOCODER].endpoint, "ipc:///tmp/heartmula/vocoder.sock");
    assert_string_equal(c.stage[HM_STAGE_VOCODER].backend, "cpu"); /* inherited */
    assert_string_equal(c.mps, "auto");
    (void)state;
}

static void expect_error(const char *yaml, const char *needle)
{
    hm_pipeline_cfg c;
    assert_int_equal(hm_config_parse(yaml, strlen(yaml), "p.yaml", &c), HM_ERR);
    if (!strstr(hm_errmsg(), needle)) fail_msg("message '%s' lacks '%s'", hm_errmsg(), needle);
}

static void test_errors(void **state)
{
    expect_error("backend: cpu\nbogus: 1\n", "p.yaml:2: unknown key 'bogus'");
    expect_error("generation:\n  topk: fifty\n", "p.yaml:2: generation.topk: expected an integer");
    expect_error("generation:\n  topk: 0\n", "generation.topk");
    expect_error("generation:\n  cfg: nan\n", "generation.cfg");
    expect_error("backend: tpu\n", "'tpu' is not one of cpu|cuda");
    expect_error("stages:\n  backbone:\n    replicas: 2\n    colour: red\n", "p.yaml:4: unknown key 'stages.backbone.colour'");
    expect_error("stages:\n  decoder: {}\n", "p.yaml:2: unknown key 'stages.decoder'");
    expect_error("backend: cpu\nbackend: cuda\n", "p.yaml:2: key 'backend' appears twice");
    expect_error("generation: [1, 2]\n", "generation: expected a mapping");
    expect_error("a: [\n", "YAML syntax error");
    expect_error("model_dir: *x\n", "");
    expect_error("stages:\n  draft-verifier:\n    first_window_yield_ms: -1\n", "first_window_yield_ms");
    expect_error("mps: yes\n", "p.yaml:1: mps: 'yes' is not one of auto|on|off");
    (void)state;
}

static void test_overrides(void **state)
{
    const char *y = "backend: cuda\nrun_dir: /run/hm\nstages:\n  vocoder:\n    backend: cpu\n    replicas: 3\n";
    hm_pipeline_cfg c;
    if (hm_config_parse(y, strlen(y), "p.yaml", &c)) fail_msg("%s", hm_errmsg());
    assert_string_equal(c.stage[HM_STAGE_BACKBONE].backend, "cuda");
    assert_string_equal(c.stage[HM_STAGE_VOCODER].backend, "cpu");
    assert_int_equal(c.stage[HM_STAGE_VOCODER].replicas, 3);
    assert_string_equal(c.stage[HM_STAGE_TOKENIZER].endpoint, "ipc:///run/hm/tokenizer.sock");
    /* the watchdog by the stage's backend, unless given */
    assert_int_equal(c.stage[HM_STAGE_BACKBONE].watchdog_ms, 15000);
    assert_int_equal(c.stage[HM_STAGE_VOCODER].watchdog_ms, 120000);
    const char *w = "backend: cuda\nstages:\n  backbone:\n    watchdog_ms: 0\n  vocoder:\n    watchdog_ms: 90000\n";
    if (hm_config_parse(w, strlen(w), "p.yaml", &c)) fail_msg("%s", hm_errmsg());
    assert_int_equal(c.stage[HM_STAGE_BACKBONE].watchdog_ms, 0);
    assert_int_equal(c.stage[HM_STAGE_VOCODER].watchdog_ms, 90000);
    assert_int_equal(c.stage[HM_STAGE_FLOW_MATCHING].watchdog_ms, 15000);
    /* an empty file means the defaults */
    assert_int_equal(hm_config_parse("", 0, "empty", &c), HM_OK);
    assert_int_equal(c.gen.codec_steps, 10);
    assert_int_equal(c.stage[HM_STAGE_BACKBONE].watchdog_ms, 120000); /* cpu */
    (void)state;
}

static void test_write_round_trip(void **state)
{
    const char *y = "backend: cuda\nmps: off\nmodel_dir: \"/m/a \\\"q\\\"\"\ngeneration:\n  seed: 77\n  cfg: 1.25\nstages:\n  vocoder:\n    replicas: 2\n  draft-verifier:\n    first_window_yield_ms: 250\n";
    hm_pipeline_cfg a, b;
    if (hm_config_parse(y, strlen(y), "p.yaml", &a)) fail_msg("%s", hm_errmsg());
    char path[64];
    snprintf(path, sizeof path, "/tmp/hm-cfg-%d.yaml", (int)getpid());
    assert_int_equal(hm_config_write(&a, path), HM_OK);
    if (hm_config_load(path, &b)) fail_msg("%s", hm_errmsg());
    remove(path);
    assert_string_equal(b.model_dir, "/m/a \"q\"");
    assert_int_equal(b.gen.seed, 77);
    assert_string_equal(b.mps, "off");
    assert_float_equal(b.gen.cfg, 1.25, 0);
    assert_int_equal(b.stage[HM_STAGE_VOCODER].replicas, 2);
    assert_int_equal(b.stage[HM_STAGE_DRAFT_VERIFIER].first_window_yield_ms, 250);
    assert_int_equal(b.stage[HM_STAGE_BACKBONE].first_window_yield_ms, 1000); /* the default */
    assert_string_equal(b.stage[HM_STAGE_BACKBONE].backend, "cuda");
    assert_string_equal(b.stage[HM_STAGE_TOKENIZER].endpoint, a.stage[HM_STAGE_TOKENIZER].endpoint);
    (void)state;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shipped_file),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_overrides),
        cmocka_unit_test(test_write_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
