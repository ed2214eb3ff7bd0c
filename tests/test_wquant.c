/* test_wquant.c - the CPU weight quantisers (kernels/wquant.c) against values fixed by the formats
 * themselves: e4m3 encodings from the OCP 8-bit floating point specification (E4M3: bias 7, no
 * infinities, S.1111.111 NaN, max normal S.1111.110 = 448, min normal 2^-6, min subnormal 2^-9),
 * the e2m1 value set of the OCP microscaling specification (0, 0.5, 1, 1.5, 2, 3, 4, 6), and
 * rows built so that their exact quantised bytes follow from those tables by hand. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <string.h>

#include "hm.h"
#include "wquant.h"

/* (value, encoding) pairs written out from the OCP E4M3 table */
static const struct {
    float v;
    uint8_t b;
} k_e4m3[] = {
    {0.0f, 0x00},        {1.0f, 0x38},         {-1.0f, 0xB8},       {2.0f, 0x40},       {0.5f, 0x30},
    {1.125f, 0x39},      {1.75f, 0x3E},        {448.0f, 0x7E},      {-448.0f, 0xFE},    {256.0f, 0x78},
    {0x1p-6f, 0x08},     {0x1p-9f, 0x01},      {0x7p-9f, 0x07},     {0x1.cp-6f, 0x0E},  {240.0f, 0x77},
    {3.0f, 0x44},        {-0.375f, 0xAC},      {96.0f, 0x6C},       {0x1.ep-1f, 0x37},
};

static void e4m3_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof k_e4m3 / sizeof k_e4m3[0]; i++) {
        assert_int_equal(wq_e4m3_from_f32(k_e4m3[i].v), k_e4m3[i].b);
        assert_true(wq_e4m3_to_f32(k_e4m3[i].b) == k_e4m3[i].v);
    }
    assert_true(isnan(wq_e4m3_to_f32(0x7F)));
    assert_true(isnan(wq_e4m3_to_f32(0xFF)));
}

/* rounding: ties to even on the grid of the binade, saturation to ±448, subnormal ties */
static void e4m3_rounding(void **state)
{
    (void)state;
    assert_int_equal(wq_e4m3_from_f32(1.0625f), 0x38);   /* 1 | 1.125: tie -> even mantissa 0 */
    assert_int_equal(wq_e4m3_from_f32(1.1875f), 0x3A);   /* 1.125 | 1.25: tie -> 1.25 */
    assert_int_equal(wq_e4m3_from_f32(1.07f), 0x39);     /* above the tie */
    assert_int_equal(wq_e4m3_from_f32(1.9375f), 0x40);   /* 1.875 | 2: tie -> 2 (carries into the exponent) */
    assert_int_equal(wq_e4m3_from_f32(449.0f), 0x7E);    /* saturate, not NaN */
    assert_int_equal(wq_e4m3_from_f32(464.0f), 0x7E);
    assert_int_equal(wq_e4m3_from_f32(1e30f), 0x7E);
    assert_int_equal(wq_e4m3_from_f32(-INFINITY), 0xFE);
    assert_int_equal(wq_e4m3_from_f32(0x1p-10f), 0x00);  /* half the smallest subnormal: tie -> 0 */
    assert_int_equal(wq_e4m3_from_f32(0x3p-10f), 0x02);  /* 1.5 subnormal steps: tie -> 2 */
    assert_int_equal(wq_e4m3_from_f32(0xfp-10f), 0x08);  /* 7.5 steps: tie -> 8 = min normal */
    assert_int_equal(wq_e4m3_from_f32(-0.0f), 0x80);
    assert_int_equal(wq_e4m3_from_f32(NAN), 0x7F);
    /* every code round-trips (except NaN) */
    for (int b = 0; b < 256; b++) {
        if ((b & 0x7F) == 0x7F) continue;
        assert_int_equal(wq_e4m3_from_f32(wq_e4m3_to_f32((uint8_t)b)), b);
    }
}

static void e2m1_codes(void **state)
{
    (void)state;
    static const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    for (int c = 0; c < 8; c++) {
        assert_int_equal(wq_e2m1_from_f32(mag[c]), c);
        if (c) assert_int_equal(wq_e2m1_from_f32(-mag[c]), c | 8);
        assert_true(wq_e2m1_to_f32((uint8_t)c) == mag[c]);
    }
    /* ties go to the even code */
    assert_int_equal(wq_e2m1_from_f32(0.25f), 0);
    assert_int_equal(wq_e2m1_from_f32(0.75f), 2);
    assert_int_equal(wq_e2m1_from_f32(1.25f), 2);
    assert_int_equal(wq_e2m1_from_f32(1.75f), 4);
    assert_int_equal(wq_e2m1_from_f32(2.5f), 4);
    assert_int_equal(wq_e2m1_from_f32(3.5f), 6);
    assert_int_equal(wq_e2m1_from_f32(5.0f), 6);
    assert_int_equal(wq_e2m1_from_f32(-5.5f), 15);
    assert_int_equal(wq_e2m1_from_f32(-0.1f), 0); /* rounds to zero: no negative zero code */
}

static uint16_t b16(float f) { return hm_f32_to_bf16(f); }

/* A row whose maximum is 448 · 2^-3 = 56 has scale 1/8 exactly, so every byte is the e4m3 of 8 v. */
static void fp8_rows(void **state)
{
    (void)state;
    const float row0[8] = {56.0f, -56.0f, 1.0f, 0.125f, 0.0f, 3.0f, -0.375f, 12.0f};
    const uint8_t want0[8] = {0x7E, 0xFE, 0x50, 0x38, 0x00, 0x5C, 0xC4, 0x6C};
    uint16_t w[16];
    for (int i = 0; i < 8; i++) w[i] = b16(row0[i]), w[8 + i] = 0;
    uint8_t q[16];
    float s[2];
    wq_fp8_rows(w, 2, 8, q, s);
    assert_true(s[0] == 0.125f);
    assert_memory_equal(q, want0, 8);
    assert_true(s[1] == 1.0f); /* all-zero row */
    for (int i = 8; i < 16; i++) assert_int_equal(q[i], 0);
}

/* General rows: the row maximum maps to 448 (0x7E), signs survive, and decoding is within half an
 * e4m3 step (2^-4 relative for normals) of the input. */
static void fp8_roundtrip(void **state)
{
    (void)state;
    enum { N = 4, K = 64 };
    uint16_t w[N * K];
    uint64_t x = 12345;
    for (int i = 0; i < N * K; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        w[i] = b16(((float)(x >> 40) / (float)(1 << 24) - 0.5f) * (float)(1 << (i / K)));
    }
    uint8_t q[N * K];
    float s[N];
    wq_fp8_rows(w, N, K, q, s);
    for (int n = 0; n < N; n++) {
        float mx = 0;
        int at = 0;
        for (int k = 0; k < K; k++)
            if (fabsf(hm_bf16_to_f32(w[n * K + k])) > mx) mx = fabsf(hm_bf16_to_f32(w[n * K + k])), at = k;
        assert_int_equal(q[n * K + at] & 0x7F, 0x7E);
        for (int k = 0; k < K; k++) {
            const float v = hm_bf16_to_f32(w[n * K + k]), d = wq_e4m3_to_f32(q[n * K + k]) * s[n];
            if (v != 0.0f) assert_int_equal(signbit(v), signbit(d));
            assert_true(fabsf(d - v) <= fmaxf(fabsf(v) * 0.0625f, s[n] * 0x1p-10f) * 1.0001f);
        }
    }
}

/* NVFP4: amax 2688 gives tensor scale 1; a block whose largest value is 6 has block scale 1
 * (e4m3 0x38) and its values' codes are the e2m1 table's; a block of max 3 has scale 0.5 (0x30). */
static void nvfp4_rows(void **state)
{
    (void)state;
    float v[32] = {6.0f, -6.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 0.25f, 0.75f, -1.25f, 0.0f, 5.0f, -3.5f, 0.1f, 2.5f,
                   3.0f, 1.5f, -0.25f, 0.5f, 2.0f, 0.75f, 1.0f, -3.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    uint16_t w[64];
    for (int i = 0; i < 32; i++) w[i] = b16(v[i]);
    for (int i = 32; i < 64; i++) w[i] = 0;
    w[63] = b16(2688.0f); /* the tensor's amax, in the second row's last block */
    const float ts = wq_nvfp4_tensor_scale(wq_bf16_amax(w, 64));
    assert_true(ts == 1.0f);
    uint8_t vals[32], bs[4];
    wq_nvfp4_rows(w, 2, 32, ts, vals, bs);
    assert_int_equal(bs[0], 0x38);
    assert_int_equal(bs[1], 0x30);
    assert_int_equal(bs[2], 0x00); /* all-zero block */
    assert_int_equal(bs[3], 0x7E); /* 2688 / 6 = 448 */
    /* block 0 codes: 6 -6 .5 1 1.5 2 3 4 | .25->0 .75->2 -1.25->-1(0xA) 0 5->4(6) -3.5->-4(0xE) .1->0 2.5->2(4) */
    const uint8_t want0[8] = {0xF7, 0x21, 0x43, 0x65, 0x20, 0x0A, 0xE6, 0x40};
    assert_memory_equal(vals, want0, 8);
    /* block 1 (scale 0.5): 6 3 -.5 1 4 1.5 2 -6 */
    const uint8_t want1[8] = {0x57, 0x29, 0x36, 0xF4, 0, 0, 0, 0};
    assert_memory_equal(vals + 8, want1, 8);
    assert_int_equal(vals[31], 0x70); /* 2688 = 6 · 448 · 1: code 7 in the high nibble */
    assert_true(wq_nvfp4_tensor_scale(0.0f) == 1.0f);
}

/* The GEMV layout (wq_nvfp4_pack): decoded as kernels/gemv_quant.cu e2m1_pair<P> does (the same
 * integer expressions here), every code of every element gives the f16 pair the standard nibble
 * gives (value · 2^-14: sign at bit 15, code bits 0..2 at 9..11), whatever the other seven
 * elements hold (a carry of the multiplies would show); unpack restores the words. */
static uint32_t pair_of(uint32_t x, int P)
{
    const uint32_t M = 0x8E008E00u;
    return P == 3 ? x & M : P == 2 ? (x << 3) & M : P == 1 ? ((x & 0x20382038u) * 68u) & M : ((x & 0x40074007u) * 514u) & M;
}

static void nvfp4_pack(void **state)
{
    (void)state;
    uint64_t r = 0x9E3779B97F4A7C15ull;
    int checked = 0;
    for (int e = 0; e < 8; e++)
        for (uint32_t c = 0; c < 16; c++)
            for (int t = 0; t < 64; t++) {
                r = r * 6364136223846793005ull + 1442695040888963407ull;
                uint32_t s = (uint32_t)(r >> 32);
                s = (s & ~(15u << (4 * e))) | c << (4 * e);
                uint8_t b[4] = {(uint8_t)s, (uint8_t)(s >> 8), (uint8_t)(s >> 16), (uint8_t)(s >> 24)};
                wq_nvfp4_pack(b, 4);
                const uint32_t p = b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
                const uint32_t got = pair_of(p, e % 4) >> (16 * (e / 4)) & 0xFFFFu, want = (c & 8u) << 12 | (c & 7u) << 9;
                if (got != want) fail_msg("element %d code %u (word %08x, packed %08x): f16 %04x, want %04x", e, c, s, p, got, want);
                wq_nvfp4_unpack(b, 4);
                assert_int_equal(b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24, s);
                checked++;
            }
    assert_int_equal(checked, 8 * 16 * 64);
    /* a whole buffer: the words move, the tail past the last whole word does not */
    uint8_t v[10] = {0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE, 0x5A, 0xA5}, v0[10];
    memcpy(v0, v, sizeof v);
    wq_nvfp4_pack(v, 8);
    assert_memory_not_equal(v, v0, 8);
    wq_nvfp4_unpack(v, 8);
    assert_memory_equal(v, v0, sizeof v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(e4m3_table), cmocka_unit_test(e4m3_rounding), cmocka_unit_test(e2m1_codes),
        cmocka_unit_test(fp8_rows),   cmocka_unit_test(fp8_roundtrip), cmocka_unit_test(nvfp4_rows),
        cmocka_unit_test(nvfp4_pack),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
