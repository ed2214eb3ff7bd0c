/* test_desc.c - descriptor wire format: golden bytes, round trips, and rejection of every class
 * of malformed message listed in desc.h. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "desc.h"
#include "hm.h"

/* Hand-assembled msgpack of HEALTH req 1 seq 2 (written from the msgpack spec, not from our
 * encoder): fixmap(4) "v" 1 "t" 9 "r" 1 "s" 2. */
static const uint8_t golden_health[] = {0x84, 0xa1, 'v', 0x01, 0xa1, 't', 0x09, 0xa1, 'r', 0x01, 0xa1, 's', 0x02};

static void test_golden(void **st)
{
    (void)st;
    desc_t d;
    desc_init(&d, DESC_HEALTH, 1, 2);
    char *buf;
    size_t n;
    assert_int_equal(desc_encode(&d, &buf, &n), HM_OK);
    assert_int_equal(n, sizeof golden_health);
    assert_memory_equal(buf, golden_health, n);
    free(buf);
    desc_t e;
    assert_int_equal(desc_decode(golden_health, sizeof golden_health, &e), HM_OK);
    assert_int_equal(e.type, DESC_HEALTH);
    assert_int_equal(e.req_id, 1);
    assert_int_equal(e.seq, 2);
    assert_int_equal(e.buf.kind, DESC_BUF_NONE);
    desc_free(&e);
    desc_free(&d);
}

static void fill_shm(desc_t *d)
{
    desc_init(d, DESC_HIDDEN, 0x123456789abcdefULL, 77);
    uint64_t shape[2] = {2, 3072};
    assert_int_equal(desc_set_tensor(d, DESC_DT_F32, 2, shape), HM_OK);
    d->buf.kind = DESC_BUF_SHM;
    strcpy(d->buf.pool, "backbone.hidden-0");
    d->buf.pool_id = 0xfeedfacecafebeefULL;
    d->buf.nslots = 8;
    d->buf.slot_bytes = 1 << 20;
    d->buf.slot = 5;
    d->buf.gen = 3;
    d->buf.offset = 4096;
    strcpy(d->buf.release_ep, "ipc:///tmp/hm-test-rel");
}

static void roundtrip(const desc_t *d)
{
    char *buf;
    size_t n;
    assert_int_equal(desc_encode(d, &buf, &n), HM_OK);
    desc_t e;
    if (desc_decode(buf, n, &e) != HM_OK) fail_msg("decode: %s", hm_errmsg());
    assert_true(desc_equal(d, &e));
    free(buf);
    desc_free(&e);
}

static void test_roundtrip_shm_params(void **st)
{
    (void)st;
    desc_t d;
    fill_shm(&d);
    int32_t ids[5] = {128000, -1, 0, 2147483647, -2147483647 - 1};
    assert_int_equal(desc_set_i64(&d, "seed", -42), HM_OK);
    assert_int_equal(desc_set_i64(&d, "big", INT64_MAX), HM_OK);
    assert_int_equal(desc_set_f64(&d, "temperature", 0.75), HM_OK);
    assert_int_equal(desc_set_str(&d, "output", "/tmp/song.wav"), HM_OK);
    assert_int_equal(desc_set_i32s(&d, "tag_ids", ids, 5), HM_OK);
    assert_int_equal(desc_set_i32s(&d, "empty", NULL, 0), HM_OK);
    assert_int_equal(desc_set_i64(&d, "seed", 7), HM_OK); /* replaces */
    assert_int_equal(d.nparams, 6);
    roundtrip(&d);

    int64_t i;
    double f;
    const char *s;
    const int32_t *v;
    uint32_t nv;
    assert_int_equal(desc_get_i64(&d, "seed", &i), HM_OK);
    assert_int_equal(i, 7);
    assert_int_equal(desc_get_f64(&d, "seed", &f), HM_OK); /* int accepted as float */
    assert_true(f == 7.0);
    assert_int_equal(desc_get_str(&d, "output", &s), HM_OK);
    assert_string_equal(s, "/tmp/song.wav");
    assert_int_equal(desc_get_i32s(&d, "tag_ids", &v, &nv), HM_OK);
    assert_int_equal(nv, 5);
    assert_int_equal(v[4], INT32_MIN);
    assert_int_equal(desc_get_i64(&d, "output", &i), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "is a str"));
    assert_int_equal(desc_get_i64(&d, "nope", &i), HM_ERR);
    assert_int_equal(desc_i64_or(&d, "nope", 50), 50);
    assert_true(desc_f64_or(&d, "temperature", 1.0) == 0.75);
    desc_free(&d);
    desc_free(&d); /* twice is safe */
}

static void test_roundtrip_cuda_inline(void **st)
{
    (void)st;
    desc_t d;
    fill_shm(&d);
    d.buf.kind = DESC_BUF_CUDA;
    for (int i = 0; i < DESC_IPC_HANDLE_BYTES; i++) {
        d.buf.mem_handle[i] = (uint8_t)i;
        d.buf.event_handle[i] = (uint8_t)(255 - i);
    }
    roundtrip(&d);
    desc_free(&d);

    desc_init(&d, DESC_LATENTS, 9, 1);
    uint64_t shape[2] = {3, 5};
    uint16_t data[15];
    for (int i = 0; i < 15; i++) data[i] = (uint16_t)(i * 1000);
    assert_int_equal(desc_set_tensor(&d, DESC_DT_BF16, 2, shape), HM_OK);
    assert_int_equal(desc_set_inline(&d, data, sizeof data), HM_OK);
    assert_int_equal(desc_set_inline(&d, data, 3), HM_ERR); /* length must match the tensor */
    roundtrip(&d);
    desc_free(&d);

    /* scalar tensor (ndim 0) is one element */
    desc_init(&d, DESC_FRAMES, 1, 1);
    assert_int_equal(desc_set_tensor(&d, DESC_DT_I32, 0, NULL), HM_OK);
    assert_int_equal(d.buf.length, 4);
    int32_t one = 5;
    assert_int_equal(desc_set_inline(&d, &one, 4), HM_OK);
    roundtrip(&d);
    desc_free(&d);
}

/* ---- hand-built malformed messages ---- */

typedef struct {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} mp_t;

static void mp_init(mp_t *m)
{
    msgpack_sbuffer_init(&m->sb);
    msgpack_packer_init(&m->pk, &m->sb, msgpack_sbuffer_write);
}
static void mp_str(mp_t *m, const char *s)
{
    msgpack_pack_str(&m->pk, strlen(s));
    msgpack_pack_str_body(&m->pk, s, strlen(s));
}
static void mp_kv_u(mp_t *m, const char *k, uint64_t v)
{
    mp_str(m, k);
    msgpack_pack_uint64(&m->pk, v);
}

/* Decoding must fail and the message must contain `want`. */
static void expect_reject(mp_t *m, const char *want)
{
    desc_t d;
    int rc = desc_decode(m->sb.data, m->sb.size, &d);
    if (rc != HM_ERR) fail_msg("accepted a message that should fail with '%s'", want);
    if (!strstr(hm_errmsg(), want)) fail_msg("message '%s' lacks '%s'", hm_errmsg(), want);
    assert_int_equal(d.nparams, 0);
    assert_null(d.buf.data);
    msgpack_sbuffer_destroy(&m->sb);
}

/* header with n extra entries announced beyond v/t/r/s */
static void mp_header(mp_t *m, uint32_t version, uint32_t type, int extra)
{
    mp_init(m);
    msgpack_pack_map(&m->pk, 4 + extra);
    mp_kv_u(m, "v", version);
    mp_kv_u(m, "t", type);
    mp_kv_u(m, "r", 1);
    mp_kv_u(m, "s", 0);
}

/* a shm buffer map with one field overridden (field NULL: none); mode 1 drops the field */
static void mp_shm_buf(mp_t *m, const char *field, uint64_t value, int drop, uint32_t ndim, const uint64_t *shape)
{
    static const char *keys[] = {"k", "dt", "sh", "n", "pool", "pid", "ns", "sb", "sl", "g", "o", "rel"};
    uint64_t vals[] = {DESC_BUF_SHM, DESC_DT_F32, 0, 0, 0, 7, 4, 4096, 1, 0, 0, 0};
    uint64_t len = 4;
    for (uint32_t i = 0; i < ndim; i++) len *= shape[i];
    vals[3] = len;
    mp_str(m, "b");
    msgpack_pack_map(&m->pk, 12 - (drop ? 1 : 0));
    for (int i = 0; i < 12; i++) {
        int is = field && strcmp(field, keys[i]) == 0;
        if (is && drop) continue;
        mp_str(m, keys[i]);
        uint64_t v = is ? value : vals[i];
        if (strcmp(keys[i], "sh") == 0 && !is) {
            msgpack_pack_array(&m->pk, ndim);
            for (uint32_t j = 0; j < ndim; j++) msgpack_pack_uint64(&m->pk, shape[j]);
        } else if (strcmp(keys[i], "pool") == 0 && !is) mp_str(m, "p0");
        else if (strcmp(keys[i], "rel") == 0 && !is) mp_str(m, "");
        else msgpack_pack_uint64(&m->pk, v);
    }
}

static void test_reject_header(void **st)
{
    (void)st;
    mp_t m;
    mp_header(&m, 2, DESC_HEALTH, 0);
    expect_reject(&m, "version 2");
    mp_header(&m, HM_DESC_VERSION, 0, 0);
    expect_reject(&m, "unknown descriptor type");
    mp_header(&m, HM_DESC_VERSION, DESC_TYPE_COUNT, 0);
    expect_reject(&m, "unknown descriptor type");
    /* missing 's' */
    mp_init(&m);
    msgpack_pack_map(&m.pk, 3);
    mp_kv_u(&m, "v", 1);
    mp_kv_u(&m, "t", DESC_HEALTH);
    mp_kv_u(&m, "r", 1);
    expect_reject(&m, "missing 's'");
    /* missing version */
    mp_init(&m);
    msgpack_pack_map(&m.pk, 1);
    mp_kv_u(&m, "t", DESC_HEALTH);
    expect_reject(&m, "missing version");
    /* wrong type for r */
    mp_init(&m);
    msgpack_pack_map(&m.pk, 4);
    mp_kv_u(&m, "v", 1);
    mp_kv_u(&m, "t", DESC_HEALTH);
    mp_str(&m, "r");
    mp_str(&m, "one");
    mp_kv_u(&m, "s", 0);
    expect_reject(&m, "'r' must be an unsigned int");
    /* not a map */
    mp_init(&m);
    msgpack_pack_array(&m.pk, 0);
    expect_reject(&m, "not a msgpack map");
    /* unknown and duplicate keys */
    mp_header(&m, 1, DESC_HEALTH, 1);
    mp_kv_u(&m, "zz", 1);
    expect_reject(&m, "unknown key 'zz'");
    mp_header(&m, 1, DESC_HEALTH, 1);
    mp_kv_u(&m, "s", 1);
    expect_reject(&m, "duplicate key 's'");
    /* trailing bytes after a valid message */
    mp_header(&m, 1, DESC_HEALTH, 0);
    msgpack_pack_nil(&m.pk);
    expect_reject(&m, "trailing");
}

static void test_reject_buffer(void **st)
{
    (void)st;
    mp_t m;
    uint64_t shape[2] = {4, 8};
    /* sanity: the builder's default buffer is accepted */
    mp_header(&m, 1, DESC_HIDDEN, 1);
    mp_shm_buf(&m, NULL, 0, 0, 2, shape);
    desc_t d;
    if (desc_decode(m.sb.data, m.sb.size, &d) != HM_OK) fail_msg("valid buffer rejected: %s", hm_errmsg());
    assert_int_equal(d.buf.length, 128);
    assert_string_equal(d.buf.pool, "p0");
    desc_free(&d);
    msgpack_sbuffer_destroy(&m.sb);

    mp_header(&m, 1, DESC_HIDDEN, 1);
    mp_shm_buf(&m, "n", 100, 0, 2, shape);
    expect_reject(&m, "length is 100");
    mp_header(&m, 1, DESC_HIDDEN, 1);
    mp_shm_buf(&m, "sl", 4, 0, 2, shape);
    expect_reject(&m, "slot 4 out of range");
    mp_header(&m, 1, DESC_HIDDEN, 1);
    mp_shm_buf(&m, "o", 4000, 0, 2, shape);
    expect_reject(&m, "outside the 4096-byte slot");
    mp_header(&m, 1, DESC_HIDDEN, 1);
    mp_shm_buf(&m, "o", UINT64_MAX - 10, 0, 2, shape); /* offset + length would wrap */
    expect_reject(&m, "out of range");
    mp_header(&m, 1, DESC_HIDDEN, 1);
    mp_shm_buf(&m, "k", 9, 0, 2, shape);
    expect_reject(&m, "unknown kind");
    mp_header(&m, 1, DESC_HIDDEN, 1);
    mp_shm_buf(&m, "dt", 99, 0, 2, shape);
    expect_reject(&m, "'dt' = 99");
    mp_header(&m, 1, DESC_HIDDEN, 1);
    mp_shm_buf(&m, "pool", 5, 0, 2, shape); /* int where a string belongs */
    expect_reject(&m, "'pool' must be a string");
    mp_header(&m, 1, DESC_HIDDEN, 1);
    mp_shm_buf(&m, "sb", 0, 1, 2, shape);
    expect_reject(&m, "missing 'sb'");
    mp_header(&m, 1, DESC_HIDDEN, 1);
    mp_shm_buf(&m, "ns", 0, 0, 2, shape);
    expect_reject(&m, "geometry");
    uint64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    mp_header(&m, 1, DESC_HIDDEN, 1);
    mp_shm_buf(&m, NULL, 0, 0, 9, nine);
    expect_reject(&m, "ndim 9");
    uint64_t huge[3] = {1u << 20, 1u << 20, 1u << 20};
    mp_header(&m, 1, DESC_HIDDEN, 1);
    mp_shm_buf(&m, "n", 4, 0, 3, huge);
    expect_reject(&m, "too large");
    /* cuda fields on a shm buffer */
    mp_header(&m, 1, DESC_HIDDEN, 1);
    mp_shm_buf(&m, "k", DESC_BUF_CUDA, 0, 2, shape);
    expect_reject(&m, "missing 'mh'");
}

static void test_reject_params(void **st)
{
    (void)st;
    mp_t m;
    char *big = malloc(DESC_MAX_STR + 2);
    memset(big, 'x', DESC_MAX_STR + 1);
    big[DESC_MAX_STR + 1] = 0;
    mp_header(&m, 1, DESC_REQUEST, 1);
    mp_str(&m, "p");
    msgpack_pack_map(&m.pk, 1);
    mp_str(&m, "lyrics");
    mp_str(&m, big);
    char want[64];
    snprintf(want, sizeof want, "longer than %u", DESC_MAX_STR);
    expect_reject(&m, want);
    free(big);

    mp_header(&m, 1, DESC_REQUEST, 1);
    mp_str(&m, "p");
    msgpack_pack_map(&m.pk, 1);
    mp_str(&m, "ids");
    msgpack_pack_array(&m.pk, 2);
    msgpack_pack_int32(&m.pk, 1);
    msgpack_pack_int64(&m.pk, (int64_t)1 << 40);
    expect_reject(&m, "not an int32");

    mp_header(&m, 1, DESC_REQUEST, 1);
    mp_str(&m, "p");
    msgpack_pack_map(&m.pk, 1);
    mp_str(&m, "flag");
    msgpack_pack_true(&m.pk);
    expect_reject(&m, "unsupported msgpack type");

    mp_header(&m, 1, DESC_REQUEST, 1);
    mp_str(&m, "p");
    msgpack_pack_map(&m.pk, 1);
    mp_str(&m, "a_key_that_is_longer_than_31_bytes_total");
    msgpack_pack_int(&m.pk, 1);
    expect_reject(&m, "longer than 31");

    /* API side limits */
    desc_t d;
    desc_init(&d, DESC_REQUEST, 1, 0);
    char key[16];
    for (int i = 0; i < DESC_MAX_PARAMS; i++) {
        snprintf(key, sizeof key, "k%d", i);
        assert_int_equal(desc_set_i64(&d, key, i), HM_OK);
    }
    assert_int_equal(desc_set_i64(&d, "one_more", 1), HM_ERR);
    assert_int_equal(desc_set_i32s(&d, "k0", NULL, DESC_MAX_I32S + 1), HM_ERR);
    roundtrip(&d);
    desc_free(&d);
}

/* Headers claiming huge containers/strings with no bytes behind them must be rejected before
 * msgpack-c allocates for them; truncating a valid message anywhere must fail cleanly. */
static void test_absurd_and_truncated(void **st)
{
    (void)st;
    static const uint8_t arr32[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    static const uint8_t map32[] = {0xdf, 0x7f, 0xff, 0xff, 0xff, 0xa1, 'v'};
    static const uint8_t str32[] = {0x81, 0xa1, 'p', 0xdb, 0xff, 0xff, 0xff, 0xf0};
    static const uint8_t ext[] = {0xd4, 0x01, 0x02};
    static const uint8_t c1[] = {0xc1};
    desc_t d;
    assert_int_equal(desc_decode(arr32, sizeof arr32, &d), HM_ERR);
    assert_int_equal(desc_decode(map32, sizeof map32, &d), HM_ERR);
    assert_int_equal(desc_decode(str32, sizeof str32, &d), HM_ERR);
    assert_int_equal(desc_decode(ext, sizeof ext, &d), HM_ERR);
    assert_int_equal(desc_decode(c1, sizeof c1, &d), HM_ERR);
    assert_int_equal(desc_decode(c1, 0, &d), HM_ERR);
    assert_int_equal(desc_decode(c1, (size_t)DESC_MAX_WIRE + 1, &d), HM_ERR); /* size checked first */

    desc_t full;
    fill_shm(&full);
    desc_set_str(&full, "error", "boom");
    int32_t ids[3] = {1, 2, 3};
    desc_set_i32s(&full, "ids", ids, 3);
    char *buf;
    size_t n;
    assert_int_equal(desc_encode(&full, &buf, &n), HM_OK);
    for (size_t cut = 0; cut < n; cut++) {
        char *copy = malloc(cut ? cut : 1); /* exact-size copy so ASan sees any overread */
        memcpy(copy, buf, cut);
        if (desc_decode(copy, cut, &d) != HM_ERR) fail_msg("truncated at %zu accepted", cut);
        free(copy);
    }
    free(buf);
    desc_free(&full);
}

static void test_copy_move(void **st)
{
    (void)st;
    desc_t d, c, m;
    fill_shm(&d);
    int32_t ids[3] = {7, 8, 9};
    desc_set_i32s(&d, "ids", ids, 3);
    desc_set_str(&d, "out", "x.wav");
    desc_set_f64(&d, "cfg", 1.5);
    desc_copy(&c, &d);
    assert_true(desc_equal(&c, &d));
    assert_ptr_not_equal(desc_param(&c, "ids")->v, desc_param(&d, "ids")->v);
    desc_set_i64(&c, "extra", 1); /* the copy grows on its own */
    assert_false(desc_equal(&c, &d));
    desc_move(&m, &d);
    assert_int_equal(d.type, DESC_NONE);
    assert_int_equal(d.nparams, 0);
    assert_null(d.params);
    assert_int_equal(m.nparams, 3);
    roundtrip(&m);
    desc_free(&d);
    desc_free(&m);
    desc_free(&c);
    /* inline data is deep-copied too */
    desc_init(&d, DESC_FRAMES, 1, 1);
    uint64_t shape[1] = {4};
    desc_set_tensor(&d, DESC_DT_U8, 1, shape);
    desc_set_inline(&d, "abcd", 4);
    desc_copy(&c, &d);
    assert_ptr_not_equal(c.buf.data, d.buf.data);
    assert_memory_equal(c.buf.data, "abcd", 4);
    desc_free(&d);
    desc_free(&c);
}

static void test_check_bounds(void **st)
{
    (void)st;
    desc_t d;
    fill_shm(&d); /* 8 slots x 1 MiB, offset 4096, 24576 bytes */
    assert_int_equal(desc_check_bounds(&d, 8, 1 << 20), HM_OK);
    assert_int_equal(desc_check_bounds(&d, 8, 16384), HM_ERR); /* mapped pool smaller than claimed */
    assert_int_equal(desc_check_bounds(&d, 4, 1 << 20), HM_ERR);
    d.buf.offset = (1 << 20) - 24575;
    assert_int_equal(desc_check_bounds(&d, 8, 1 << 20), HM_ERR);
    d.buf.offset = (1 << 20) - 24576;
    assert_int_equal(desc_check_bounds(&d, 8, 1 << 20), HM_OK);
    d.buf.kind = DESC_BUF_INLINE;
    assert_int_equal(desc_check_bounds(&d, 8, 1 << 20), HM_ERR);
    d.buf.kind = DESC_BUF_SHM;
    /* encoder refuses what the decoder would reject */
    d.buf.slot = 8;
    char *buf;
    size_t n;
    assert_int_equal(desc_encode(&d, &buf, &n), HM_ERR);
    d.version = 3;
    d.buf.slot = 0;
    assert_int_equal(desc_encode(&d, &buf, &n), HM_ERR);
    desc_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden),          cmocka_unit_test(test_roundtrip_shm_params),
        cmocka_unit_test(test_roundtrip_cuda_inline), cmocka_unit_test(test_reject_header),
        cmocka_unit_test(test_reject_buffer),   cmocka_unit_test(test_reject_params),
        cmocka_unit_test(test_absurd_and_truncated), cmocka_unit_test(test_check_bounds),
        cmocka_unit_test(test_copy_move),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
