/* test_tokenizer.c - the tokenizer stage against reference outputs: HF tokenizers ids
 * (tokenizer_cases.json from the fixtures; extra_cases.json from HF tokenizers 0.23.2 on
 * synthetic tokenizers), CPython's str.lower (lower_cases.json), the reference prompt rows
 * (mula_cfg15.*), and bad inputs / unsupported tokenizer files.  Runs from the repo root. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../stages/tokenizer/bpe.h"
#include "../stages/tokenizer/prompt.h"
#include "hm.h"
#include "utf8.h"
#include "safetensors.h"

#define FIX "tests/fixtures/tokenizer/"

static tok_t *g_tok; /* llama3, loaded once */

static cJSON *load_json(const char *path)
{
    char *buf;
    size_t len;
    if (hm_read_file(path, &buf, &len, 0) != HM_OK) fail_msg("%s", hm_errmsg());
    cJSON *j = cJSON_ParseWithLength(buf, len);
    free(buf);
    if (!j) fail_msg("%s: bad JSON", path);
    return j;
}

static size_t json_ids(const cJSON *arr, int32_t *out, size_t cap)
{
    size_t n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        assert_true(n < cap);
        out[n++] = (int32_t)e->valuedouble;
    }
    return n;
}

static void check_encode(tok_t *tok, const char *text, size_t len, int special,
                         const cJSON *want, const char *what)
{
    int32_t exp[4096], *ids;
    size_t nexp = json_ids(want, exp, 4096), n;
    if (tok_encode_ex(tok, text, len, special, &ids, &n) != HM_OK)
        fail_msg("%s: encode failed: %s", what, hm_errmsg());
    if (n != nexp || memcmp(ids, exp, n * sizeof *ids) != 0) {
        fprintf(stderr, "%s: text '%.*s'\n  got :", what, (int)len, text);
        for (size_t i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n  want:");
        for (size_t i = 0; i < nexp; i++) fprintf(stderr, " %d", exp[i]);
        fprintf(stderr, "\n");
        free(ids);
        fail_msg("%s: ids differ", what);
    }
    free(ids);
}

static int setup(void **state)
{
    double t0 = hm_now();
    if (tok_load(FIX "llama3-tokenizer.json", &g_tok) != HM_OK) {
        fprintf(stderr, "load: %s\n", hm_errmsg());
        return -1;
    }
    fprintf(stderr, "llama3 tokenizer.json loaded in %.1f ms\n", (hm_now() - t0) * 1e3);
    return 0;
}

static int teardown(void **state)
{
    tok_free(g_tok);
    return 0;
}

/* Every case of the fixture: ids of the text, and ids_lower of Python's text.lower(). */
static void test_fixture_cases(void **state)
{
    cJSON *doc = load_json(FIX "tokenizer_cases.json");
    const cJSON *c;
    int n = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(doc, "cases")) {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        check_encode(g_tok, text, strlen(text), 0, cJSON_GetObjectItem(c, "ids"), "ids");
        char *low;
        size_t nl;
        assert_int_equal(tok_lower(text, strlen(text), &low, &nl), HM_OK);
        check_encode(g_tok, low, nl, 0, cJSON_GetObjectItem(c, "ids_lower"), "ids_lower");
        free(low);
        n++;
    }
    assert_true(n >= 15);
    cJSON_Delete(doc);
    assert_int_equal(tok_vocab_size(g_tok), 128000);
    assert_int_equal(tok_token_id(g_tok, "<|begin_of_text|>"), 128000);
    assert_int_equal(tok_token_id(g_tok, "\xc4\xa0the"), 279); /* "Ġthe": " the" in case 2 */
    assert_int_equal(tok_token_id(g_tok, "no such token"), -1);
}

/* The text of an extra case with its NULs: cJSON's C strings stop at a NUL, so hf_expect.js
 * also stores such texts as "text_nul", the list of their NUL-separated parts. */
static size_t text_with_nuls(const cJSON *c, char *buf, size_t cap)
{
    const cJSON *t = cJSON_GetObjectItem(c, "text");
    const cJSON *nul = cJSON_GetObjectItem(c, "text_nul");
    if (!cJSON_IsArray(nul)) {
        size_t n = strlen(t->valuestring);
        assert_true(n < cap);
        memcpy(buf, t->valuestring, n);
        return n;
    }
    size_t n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, nul) {
        size_t k = strlen(e->valuestring);
        assert_true(n + k + 1 < cap);
        memcpy(buf + n, e->valuestring, k);
        n += k;
        if (e->next) buf[n++] = 0;
    }
    return n;
}

static void test_extra_synthetic(void **state)
{
    cJSON *doc = load_json(FIX "extra_cases.json");
    const cJSON *t;
    int ntok = 0;
    cJSON_ArrayForEach(t, cJSON_GetObjectItem(doc, "tokenizers")) {
        const char *name = cJSON_GetObjectItem(t, "name")->valuestring;
        char *json = cJSON_PrintUnformatted(cJSON_GetObjectItem(t, "tokenizer"));
        tok_t *tok;
        if (tok_load_mem(json, strlen(json), name, &tok) != HM_OK)
            fail_msg("%s: %s", name, hm_errmsg());
        free(json);
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItem(t, "cases")) {
            const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
            check_encode(tok, text, strlen(text), 0, cJSON_GetObjectItem(c, "ids"), name);
            check_encode(tok, text, strlen(text), 1, cJSON_GetObjectItem(c, "ids_special"), name);
        }
        tok_free(tok);
        ntok++;
    }
    assert_true(ntok >= 9);
    cJSON_Delete(doc);
}

/* Llama3 edge texts; NUL is an ordinary character (as in HF). */
static void test_extra_llama3(void **state)
{
    cJSON *doc = load_json(FIX "extra_cases.json");
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(doc, "llama3")) {
        char buf[256];
        size_t n = text_with_nuls(c, buf, sizeof buf);
        check_encode(g_tok, buf, n, 0, cJSON_GetObjectItem(c, "ids"), "llama3 extra");
    }
    cJSON_Delete(doc);
}

static int in_ranges(const cJSON *ranges, uint32_t cp)
{
    const cJSON *r;
    cJSON_ArrayForEach(r, ranges) {
        if (cp >= (uint32_t)r->child->valuedouble && cp <= (uint32_t)r->child->next->valuedouble)
            return 1;
    }
    return 0;
}


static int ends_final_sigma(const char *s, size_t n)
{
    char *low;
    size_t nl;
    assert_int_equal(tok_lower(s, n, &low, &nl), HM_OK);
    int r = nl >= 2 && (uint8_t)low[nl - 2] == 0xCF && (uint8_t)low[nl - 1] == 0x82;
    free(low);
    return r;
}

/* tok_lower against CPython's str.lower: every changing code point, sample strings, and the
 * Final_Sigma context for every assigned code point (probes described in gen_lower_cases.py). */
static void test_lower_python(void **state)
{
    cJSON *doc = load_json(FIX "lower_cases.json");
    const cJSON *e;
    int nmap = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(doc, "map")) {
        char in[8], *low;
        size_t nin = (size_t)hm_utf8_encode((uint32_t)e->child->valuedouble, in), nl;
        const char *want = e->child->next->valuestring;
        assert_int_equal(tok_lower(in, nin, &low, &nl), HM_OK);
        if (nl != strlen(want) || memcmp(low, want, nl) != 0)
            fail_msg("lower(U+%04X) differs from Python", (unsigned)e->child->valuedouble);
        free(low);
        nmap++;
    }
    assert_true(nmap > 1000);
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(doc, "strings")) {
        char *low;
        size_t nl;
        const char *in = e->child->valuestring, *want = e->child->next->valuestring;
        assert_int_equal(tok_lower(in, strlen(in), &low, &nl), HM_OK);
        assert_string_equal(low, want);
        free(low);
    }
    const cJSON *ign = cJSON_GetObjectItem(doc, "ignorable"), *cased = cJSON_GetObjectItem(doc, "cased"),
                *assigned = cJSON_GetObjectItem(doc, "assigned");
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        if ((cp >= 0xD800 && cp <= 0xDFFF) || !in_ranges(assigned, cp)) continue;
        int is_ign = in_ranges(ign, cp), is_cased = in_ranges(cased, cp);
        char s[16];
        size_t n = 0;
        s[n++] = 'A';
        n += (size_t)hm_utf8_encode(cp, s + n);
        s[n++] = (char)0xCE; s[n++] = (char)0xA3; /* Σ */
        if (ends_final_sigma(s, n) != (is_ign || is_cased))
            fail_msg("Final_Sigma: U+%04X after a cased letter", cp);
        s[0] = ' ';
        if (ends_final_sigma(s, n) != (!is_ign && is_cased))
            fail_msg("Final_Sigma: U+%04X after a space", cp);
    }
    cJSON_Delete(doc);
}

static void expect_err(int rc, const char *needle)
{
    assert_int_equal(rc, HM_ERR);
    if (!strstr(hm_errmsg(), needle)) fail_msg("message '%s' lacks '%s'", hm_errmsg(), needle);
}

static void test_bad_utf8(void **state)
{
    static const struct { const char *s; size_t n; const char *where; } bad[] = {
        {"ab\x80", 3, "byte 2"},           /* lone continuation */
        {"abc\xC3", 4, "byte 3"},          /* truncated */
        {"\xC0\x80", 2, "byte 0"},         /* overlong NUL */
        {"x\xE0\x80\x80", 4, "byte 1"},    /* overlong */
        {"xy\xED\xA0\x80", 5, "byte 2"},   /* surrogate */
        {"\xF4\x90\x80\x80", 4, "byte 0"}, /* > U+10FFFF */
        {"a\xFF", 2, "byte 1"},
        {"okok okok \xE2\x82", 12, "byte 10"},
    };
    for (size_t i = 0; i < HM_ARRAY_LEN(bad); i++) {
        int32_t *ids = NULL;
        size_t n;
        char *low = NULL;
        expect_err(tok_encode(g_tok, bad[i].s, bad[i].n, &ids, &n), bad[i].where);
        assert_null(ids);
        expect_err(tok_lower(bad[i].s, bad[i].n, &low, &n), bad[i].where);
        assert_null(low);
        prompt_t p;
        expect_err(prompt_from_text(g_tok, bad[i].s, bad[i].n, "x", 1, 1, 2, 8, &p), "tags");
        expect_err(prompt_from_text(g_tok, "x", 1, bad[i].s, bad[i].n, 1, 2, 8, &p), "lyrics");
    }
    int32_t *ids;
    size_t n;
    assert_int_equal(tok_encode(g_tok, "", 0, &ids, &n), HM_OK); /* empty: no ids */
    assert_int_equal(n, 0);
    free(ids);
}

/* 1 MB of lyrics: a unit whose pieces cannot join across copies (it starts with a letter and
 * ends with a newline), so the reference ids are the fixture's ids repeated. */
static void test_big_inputs(void **state)
{
    static const char unit[] = "line1\n\n\n  line2 \n";
    static const int32_t unit_ids[] = {1074, 16, 1432, 220, 1584, 17, 720}; /* fixture case */
    size_t ul = sizeof unit - 1, reps = (1u << 20) / ul;
    char *big = hm_malloc(reps * ul);
    for (size_t r = 0; r < reps; r++) memcpy(big + r * ul, unit, ul);
    int32_t *ids;
    size_t n;
    double t0 = hm_now();
    assert_int_equal(tok_encode(g_tok, big, reps * ul, &ids, &n), HM_OK);
    fprintf(stderr, "1 MiB encoded in %.1f ms\n", (hm_now() - t0) * 1e3);
    assert_int_equal(n, reps * 7);
    for (size_t i = 0; i < n; i++) assert_int_equal(ids[i], unit_ids[i % 7]);
    free(ids);
    /* One 1 MiB piece (a single \p{L}+ run): BPE must stay near-linear. */
    memset(big, 'a', reps * ul);
    t0 = hm_now();
    assert_int_equal(tok_encode(g_tok, big, reps * ul, &ids, &n), HM_OK);
    fprintf(stderr, "1 MiB single piece in %.1f ms, %zu ids\n", (hm_now() - t0) * 1e3, n);
    assert_true(hm_now() - t0 < 20.0);
    free(ids);
    /* Field limits: checked before the text is read, so a short buffer is safe here. */
    expect_err(tok_encode(g_tok, big, TOK_MAX_TEXT_BYTES + 1, &ids, &n), "limit");
    prompt_t p;
    expect_err(prompt_from_text(g_tok, big, PROMPT_MAX_FIELD_BYTES + 1, "x", 1, 1, 2, 8, &p),
               "tags");
    /* 1 MB of lyrics is within the field limit. */
    memcpy(big, unit, ul);
    for (size_t r = 0; r < reps; r++) memcpy(big + r * ul, unit, ul);
    assert_int_equal(prompt_from_text(g_tok, "pop", 3, big, 1000000, 128000, 128001, 8, &p), HM_OK);
    assert_true(p.len > 300000);
    prompt_free(&p);
    free(big);
}

static const char *tokjson(const char *model_type, const char *normalizer, const char *pretok,
                           const char *post, char *buf, size_t cap)
{
    snprintf(buf, cap,
             "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[],"
             "\"normalizer\":%s,\"pre_tokenizer\":%s,\"post_processor\":%s,\"decoder\":null,"
             "\"model\":{\"type\":\"%s\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},"
             "\"merges\":[\"a b\"]}}",
             normalizer, pretok, post, model_type);
    return buf;
}

static void test_load_errors(void **state)
{
    char buf[2048];
    tok_t *t = NULL;
    const char *bl = "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}";
    /* a valid minimal one first */
    tokjson("BPE", "null", bl, "null", buf, sizeof buf);
    assert_int_equal(tok_load_mem(buf, strlen(buf), "mini", &t), HM_OK);
    int32_t *ids;
    size_t n;
    assert_int_equal(tok_encode(t, "abba", 4, &ids, &n), HM_OK);
    assert_int_equal(n, 3); /* ab b a */
    assert_int_equal(ids[0], 2);
    free(ids);
    tok_free(t);

    tokjson("WordPiece", "null", bl, "null", buf, sizeof buf);
    expect_err(tok_load_mem(buf, strlen(buf), "x", &t), "WordPiece");
    assert_null(t);
    tokjson("BPE", "{\"type\":\"NFC\"}", bl, "null", buf, sizeof buf);
    expect_err(tok_load_mem(buf, strlen(buf), "x", &t), "NFC");
    tokjson("BPE", "null", "{\"type\":\"Metaspace\",\"replacement\":\"_\"}", "null", buf, sizeof buf);
    expect_err(tok_load_mem(buf, strlen(buf), "x", &t), "Metaspace");
    tokjson("BPE", "null", "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Digits\"}]}",
            "null", buf, sizeof buf);
    expect_err(tok_load_mem(buf, strlen(buf), "x", &t), "Digits");
    tokjson("BPE", "null", bl, "{\"type\":\"BertProcessing\"}", buf, sizeof buf);
    expect_err(tok_load_mem(buf, strlen(buf), "x", &t), "BertProcessing");
    tokjson("BPE", "null", "null", "null", buf, sizeof buf);
    expect_err(tok_load_mem(buf, strlen(buf), "x", &t), "ByteLevel");
    tokjson("BPE", "null",
            "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
            "\"(unclosed\"},\"behavior\":\"Isolated\",\"invert\":false}," "{\"type\":\"ByteLevel\"}]}",
            "null", buf, sizeof buf);
    expect_err(tok_load_mem(buf, strlen(buf), "x", &t), "regex");
    const char *bad_merge = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a c\"]},"
                            "\"pre_tokenizer\":{\"type\":\"ByteLevel\"}}";
    expect_err(tok_load_mem(bad_merge, strlen(bad_merge), "x", &t), "merges[0]");
    const char *trunc = "{\"truncation\":{\"max_length\":5},\"model\":{\"vocab\":{},\"merges\":[]}}";
    expect_err(tok_load_mem(trunc, strlen(trunc), "x", &t), "truncation");
    expect_err(tok_load_mem("{\"model\":", 9, "x", &t), "JSON");
    expect_err(tok_load("tests/fixtures/tokenizer/does-not-exist.json", &t), "does-not-exist");
}

/* prompt_build against the reference prompt of mula_cfg15 (tiny LM: bos 1000, eos 1001). */
static void test_prompt_fixture(void **state)
{
    cJSON *doc = load_json(FIX "mula_cfg15.json");
    int32_t tags[64], lyr[64];
    size_t nt = json_ids(cJSON_GetObjectItem(doc, "tags"), tags, 64);
    size_t nl = json_ids(cJSON_GetObjectItem(doc, "lyrics"), lyr, 64);
    size_t muq = (size_t)cJSON_GetObjectItem(doc, "muq_index")->valuedouble;
    cJSON_Delete(doc);
    st_file *f;
    if (st_open(FIX "mula_cfg15.safetensors", &f) != HM_OK) fail_msg("%s", hm_errmsg());
    st_tensor *tt, *tm;
    assert_int_equal(st_get(f, "prompt_tokens", 2, (int64_t[]){21, 9}, &tt), HM_OK);
    assert_int_equal(st_get(f, "prompt_mask", 2, (int64_t[]){21, 9}, &tm), HM_OK);
    int32_t rows[21 * 9], mask[21 * 9];
    assert_int_equal(st_to_i32(tt, rows), HM_OK);
    assert_int_equal(st_to_i32(tm, mask), HM_OK);
    st_close(f);

    /* the json's ids already carry bos/eos; also build from the bare ids: same rows */
    for (int bare = 0; bare < 2; bare++) {
        prompt_t p;
        const int32_t *tp = bare ? tags + 1 : tags, *lp = bare ? lyr + 1 : lyr;
        size_t tn = bare ? nt - 2 : nt, ln = bare ? nl - 2 : nl;
        assert_int_equal(prompt_build(tp, tn, lp, ln, 1000, 1001, 8, &p), HM_OK);
        assert_int_equal(p.len, 21);
        assert_int_equal(p.ncols, 9);
        assert_int_equal(p.muq_index, muq);
        for (int i = 0; i < 21 * 9; i++) {
            assert_int_equal(p.rows[i], rows[i]);
            assert_int_equal(p.mask[i], mask[i]);
        }
        prompt_free(&p);
    }
}

/* prompt_from_text: lower, wrap, tokenize, bos/eos, against the fixture's HF ids. */
static void test_prompt_text(void **state)
{
    const int32_t bos = 128000, eos = 128001;
    static const int32_t tag_ids[] = {17224, 29, 8539, 11, 8954, 26480, 11, 27374, 11, 6380,
                                      524, 4681, 29}; /* tokenizer_cases.json case 0 */
    const char *forms[] = {"POP, Female Vocal, piano, HAPPY",
                           "<TAG>pop, female vocal, piano, happy</Tag>",
                           "<tag>pop, female vocal, piano, happy", "pop, female vocal, piano, happy</tag>"};
    for (size_t f = 0; f < HM_ARRAY_LEN(forms); f++) {
        prompt_t p;
        assert_int_equal(prompt_from_text(g_tok, forms[f], strlen(forms[f]), "", 0, bos, eos, 8, &p),
                         HM_OK);
        assert_int_equal(p.ntag, 15);
        assert_int_equal(p.nlyr, 2); /* empty lyrics: [bos, eos] */
        assert_int_equal(p.muq_index, 15);
        assert_int_equal(p.len, 15 + 1 + 2);
        assert_int_equal(p.rows[0 * 9 + 8], bos);
        for (int i = 0; i < 13; i++) assert_int_equal(p.rows[(1 + i) * 9 + 8], tag_ids[i]);
        assert_int_equal(p.rows[14 * 9 + 8], eos);
        assert_int_equal(p.rows[15 * 9 + 8], 0); /* MuQ slot */
        assert_int_equal(p.mask[15 * 9 + 8], 1);
        assert_int_equal(p.mask[15 * 9 + 0], 0);
        assert_int_equal(p.rows[16 * 9 + 8], bos);
        assert_int_equal(p.rows[17 * 9 + 8], eos);
        prompt_free(&p);
    }
    /* empty tags become "<tag></tag>" (extra_cases.json: 17224 1500 4681 29); lyrics lowered */
    prompt_t p;
    const char *lyr = "[verse]\nI walked along the river's edge\nWhere the willows weep and sway\n\n"
                      "[chorus]\nOh, don't you know, I'm coming home!";
    static const int32_t lyr_low[] = {58, 4550, 933, 72, 15203, 3235, 279, 15140, 596, 6964, 198,
                                      2940, 279, 690, 4336, 584, 752, 323, 61229, 271, 58, 6279,
                                      355, 933, 2319, 11, 1541, 956, 499, 1440, 11, 602, 2846,
                                      5108, 2162, 0};
    assert_int_equal(prompt_from_text(g_tok, "", 0, lyr, strlen(lyr), bos, eos, 8, &p), HM_OK);
    static const int32_t empty_tags[] = {bos, 17224, 1500, 4681, 29, eos};
    assert_int_equal(p.ntag, 6);
    for (int i = 0; i < 6; i++) assert_int_equal(p.rows[i * 9 + 8], empty_tags[i]);
    assert_int_equal(p.nlyr, 36 + 2);
    for (int i = 0; i < 36; i++) assert_int_equal(p.rows[(7 + 1 + i) * 9 + 8], lyr_low[i]);
    assert_int_equal(p.rows[(p.len - 1) * 9 + 8], eos);
    prompt_free(&p);
    /* special-token strings in the text: a leading <|begin_of_text|> is the bos itself */
    const char *lb = "<|begin_of_text|>oh<|end_of_text|>";
    assert_int_equal(prompt_from_text(g_tok, "x", 1, lb, strlen(lb), bos, eos, 8, &p), HM_OK);
    assert_int_equal(p.nlyr, 3);
    prompt_free(&p);
    /* bad arguments */
    expect_err(prompt_build(NULL, 0, NULL, 0, 1, 2, 0, &p), "num_codebooks");
    assert_int_equal(prompt_build(NULL, 0, NULL, 0, 1, 2, 1, &p), HM_OK);
    assert_int_equal(p.len, 5);
    assert_int_equal(p.ncols, 2);
    prompt_free(&p);
}

/* tok_cli_tokenize prints HF's ids for the whole input (fixture case 2; --lower: ids_lower). */
static void test_cli(void **state)
{
    cJSON *doc = load_json(FIX "tokenizer_cases.json");
    const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "cases"), 2);
    const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
    for (int lower = 0; lower < 2; lower++) {
        char want[4096] = "", got[4096] = "";
        size_t k = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItem(c, lower ? "ids_lower" : "ids"))
            k += (size_t)snprintf(want + k, sizeof want - k, k ? " %d" : "%d", (int)e->valuedouble);
        snprintf(want + k, sizeof want - k, "\n");
        FILE *in = fmemopen((void *)text, strlen(text), "r"), *out = fmemopen(got, sizeof got, "w");
        assert_int_equal(tok_cli_tokenize(FIX "llama3-tokenizer.json", lower, in, out), HM_OK);
        fclose(in);
        fclose(out);
        assert_string_equal(got, want);
    }
    FILE *in = fmemopen((void *)"a\xff", 2, "r");
    expect_err(tok_cli_tokenize(FIX "llama3-tokenizer.json", 0, in, stdout), "byte 1");
    fclose(in);
    cJSON_Delete(doc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_cases),   cmocka_unit_test(test_extra_synthetic),
        cmocka_unit_test(test_extra_llama3),    cmocka_unit_test(test_lower_python),
        cmocka_unit_test(test_bad_utf8),        cmocka_unit_test(test_big_inputs),
        cmocka_unit_test(test_load_errors),     cmocka_unit_test(test_prompt_fixture),
        cmocka_unit_test(test_prompt_text),     cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
