/* wquant.c - CPU weight quantisers, bit-identical to the device's (see wquant.h). */
#include "wquant.h"

#include <math.h>

#include "hm.h"

uint8_t wq_e4m3_from_f32(float f)
{
    if (isnan(f)) return 0x7F;
    const uint8_t sign = signbit(f) ? 0x80 : 0;
    const float a = fabsf(f);
    if (a > 448.0f) return sign | 0x7E; /* satfinite: anything past the largest finite value */
    if (a < 0x1p-6f) {
        /* subnormal range: multiples of 2^-9; a mantissa that rounds up to 8 is the code of 2^-6 */
        return sign | (uint8_t)rintf(a * 512.0f);
    }
    int e;
    const float fr = frexpf(a, &e);                 /* a = fr · 2^e, fr in [0.5, 1) */
    const int q = (int)rintf((fr * 2.0f - 1.0f) * 8.0f); /* 3 mantissa bits, ties to even; exact */
    /* biased exponent e - 1 + 7; q == 8 carries into the exponent, as the encoding's addition does */
    return sign | (uint8_t)(((e + 6) << 3) + q);
}

float wq_e4m3_to_f32(uint8_t b)
{
    const int e = (b >> 3) & 15, m = b & 7;
    float v;
    if (e == 15 && m == 7) v = NAN;
    else if (e == 0) v = ldexpf((float)m, -9);
    else v = ldexpf(8.0f + (float)m, e - 10);
    return (b & 0x80) ? -v : v;
}

uint8_t wq_e2m1_from_f32(float v)
{
    /* the thresholds of gemv_quant.cu's to_e2m1: midpoints between 0 .5 1 1.5 2 3 4 6, the tie
     * going to the even code (<= vs <) */
    const float a = fabsf(v);
    const uint8_t c = a <= 0.25f ? 0 : a < 0.75f ? 1 : a <= 1.25f ? 2 : a < 1.75f ? 3 : a <= 2.5f ? 4 : a < 3.5f ? 5
                    : a <= 5.0f ? 6 : 7;
    return c | (v < 0.0f && c ? 8 : 0);
}

float wq_e2m1_to_f32(uint8_t c)
{
    static const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    return (c & 8) ? -mag[c & 7] : mag[c & 7];
}

float wq_bf16_amax(const uint16_t *w, size_t n)
{
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) m = fmaxf(m, fabsf(hm_bf16_to_f32(w[i])));
    return m;
}

void wq_fp8_rows(const uint16_t *w, int64_t N, int64_t K, uint8_t *q, float *scale)
{
    for (int64_t n = 0; n < N; n++) {
        const uint16_t *row = w + n * K;
        const float mx = wq_bf16_amax(row, (size_t)K);
        const float s = mx > 0.0f ? mx / 448.0f : 1.0f;
        for (int64_t k = 0; k < K; k++) q[n * K + k] = wq_e4m3_from_f32(hm_bf16_to_f32(row[k]) / s);
        scale[n] = s;
    }
}

float wq_nvfp4_tensor_scale(float amax) { return amax > 0.0f ? amax / (6.0f * 448.0f) : 1.0f; }

void wq_nvfp4_rows(const uint16_t *w, int64_t N, int64_t K, float ts, uint8_t *vals, uint8_t *bscale)
{
    const size_t nb = (size_t)(N * K / 16);
    const float six_ts = 6.0f * ts; /* the kernel's bm / (6.0f * gs): the product rounds first */
    for (size_t b = 0; b < nb; b++) {
        float v[16], bm = 0.0f;
        for (int i = 0; i < 16; i++) v[i] = hm_bf16_to_f32(w[b * 16 + i]), bm = fmaxf(bm, fabsf(v[i]));
        const uint8_t s8 = wq_e4m3_from_f32(fminf(bm / six_ts, 448.0f));
        const float sd = wq_e4m3_to_f32(s8) * ts, inv = sd > 0.0f ? 1.0f / sd : 0.0f;
        for (int j = 0; j < 8; j++)
            vals[b * 8 + j] = (uint8_t)(wq_e2m1_from_f32(v[2 * j] * inv) | wq_e2m1_from_f32(v[2 * j + 1] * inv) << 4);
        bscale[b] = s8;
    }
}

static uint32_t load32(const uint8_t *p) { return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static void store32(uint8_t *p, uint32_t v) { p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8), p[2] = (uint8_t)(v >> 16), p[3] = (uint8_t)(v >> 24); }
static int mag_bit(int e) { return 16 * (e / 4) + 3 * (e % 4); }
static int sign_bit(int e) { return 16 * (e / 4) + (e % 4 == 3 ? 15 : 14 - e % 4); }

void wq_nvfp4_pack(uint8_t *vals, size_t nbytes)
{
    for (size_t i = 0; i + 4 <= nbytes; i += 4) {
        const uint32_t s = load32(vals + i);
        uint32_t p = 0;
        for (int e = 0; e < 8; e++) {
            const uint32_t c = s >> (4 * e) & 15u;
            p |= (c & 7u) << mag_bit(e) | (c >> 3) << sign_bit(e);
        }
        store32(vals + i, p);
    }
}

void wq_nvfp4_unpack(uint8_t *vals, size_t nbytes)
{
    for (size_t i = 0; i + 4 <= nbytes; i += 4) {
        const uint32_t p = load32(vals + i);
        uint32_t s = 0;
        for (int e = 0; e < 8; e++) s |= ((p >> mag_bit(e) & 7u) | (p >> sign_bit(e) & 1u) << 3) << (4 * e);
        store32(vals + i, s);
    }
}
