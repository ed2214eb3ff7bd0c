/* codec_plan.c - codec window planning and noise sources (see codec_plan.h). */
#include "codec_plan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hm.h"
#include "safetensors.h"

/* The reference's `duration` argument: every window size derives from it. */
#define CODEC_DURATION 29.76

int codec_plan_make(int T, int sample_rate, codec_plan *p)
{
    memset(p, 0, sizeof *p);
    if (T < 1) return hm_err("codec: no codes to decode (T = %d)", T);
    if (T > (1 << 24)) return hm_err("codec: %d codes is beyond any song length", T);
    if (sample_rate < 1 || sample_rate > (1 << 22)) return hm_err("codec: bad sample rate %d", sample_rate);
    p->T = T;
    p->sample_rate = sample_rate;
    int len = T < CODEC_WIN_CODES ? CODEC_WIN_CODES : T;
    if ((len - 2 * CODEC_OVL_CODES) % CODEC_HOP_CODES > 0) {
        /* python: math.ceil((len - 52) / float(320)) * 320 + 52 */
        int nh = (len - CODEC_OVL_CODES + CODEC_HOP_CODES - 1) / CODEC_HOP_CODES;
        len = nh * CODEC_HOP_CODES + CODEC_OVL_CODES;
    }
    p->padded_len = len;
    /* range(0, len - 320 + 1, 320) */
    p->n_windows = (len - CODEC_HOP_CODES) / CODEC_HOP_CODES + 1;
    p->target_len = (size_t)floor((double)T / 12.5 * (double)sample_rate);
    p->seg_samples = (size_t)(CODEC_DURATION * (double)sample_rate);
    p->hop_samples = p->seg_samples / 93 * 80;
    p->ovl_samples = p->seg_samples - p->hop_samples;
    size_t covered = (size_t)(p->n_windows - 1) * p->hop_samples + p->seg_samples;
    p->out_len = HM_MIN(p->target_len, covered);
    return HM_OK;
}

int codec_plan_windows_ready(int n_known, int is_final)
{
    if (n_known < 1) return 0;
    if (is_final) {
        codec_plan p;
        if (codec_plan_make(n_known, 48000, &p)) return 0;
        return p.n_windows;
    }
    if (n_known < CODEC_WIN_CODES) return 0;
    return (n_known - CODEC_WIN_CODES) / CODEC_HOP_CODES + 1;
}

void codec_plan_window_codes(const codec_plan *p, const int32_t *codes, int ncb, int k, int32_t *dst)
{
    int s = codec_plan_window_start(k);
    for (int q = 0; q < ncb; q++)
        for (int i = 0; i < CODEC_WIN_CODES; i++)
            dst[(size_t)q * CODEC_WIN_CODES + i] = codes[(size_t)q * p->T + codec_plan_src(p, s + i)];
}

/* ---- noise sources ---------------------------------------------------------------------- */

struct codec_noise {
    int next;        /* draws made so far (codec_noise_draw) */
    uint64_t seed;
    st_file *replay; /* NULL: seeded generator */
};

int codec_noise_seeded(uint64_t seed, codec_noise **out)
{
    codec_noise *n = hm_calloc(1, sizeof *n);
    n->seed = seed;
    *out = n;
    return HM_OK;
}

int codec_noise_replay(const char *path, codec_noise **out)
{
    codec_noise *n = hm_calloc(1, sizeof *n);
    if (st_open(path, &n->replay)) {
        free(n);
        return hm_err_ctx("noise file '%s'", path);
    }
    *out = n;
    return HM_OK;
}

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

int codec_noise_draw_at(codec_noise *n, int index, float *dst, int rows, int cols)
{
    size_t cnt = (size_t)rows * (size_t)cols;
    if (index < 0 || rows < 0 || cols < 0) return hm_err("noise: bad draw %d [%d, %d]", index, rows, cols);
    if (n->replay) {
        char name[32];
        snprintf(name, sizeof name, "noise_%02d", index);
        st_tensor *t;
        if (st_get(n->replay, name, -1, NULL, &t)) return hm_err("noise replay: draw %d needs tensor '%s', absent", index, name);
        if ((size_t)t->numel != cnt)
            return hm_err("noise replay: '%s' has %lld values, draw %d needs [%d, %d]", name, (long long)t->numel, index, rows, cols);
        return st_to_f32(t, dst);
    }
    /* One 64-bit hash per pair of outputs: two 32-bit uniforms in (0, 1), Box-Muller. */
    uint64_t base = mix64(n->seed ^ 0x6a09e667f3bcc909ULL) ^ mix64(((uint64_t)index + 1) * 0x9e3779b97f4a7c15ULL);
    for (size_t i = 0; i < cnt; i += 2) {
        uint64_t h = mix64(base + (uint64_t)(i / 2) * 0xd1b54a32d192ed03ULL);
        double u1 = ((double)(h >> 32) + 0.5) / 4294967296.0;
        double u2 = ((double)(h & 0xffffffffu) + 0.5) / 4294967296.0;
        double r = sqrt(-2.0 * log(u1)), a = 6.283185307179586 * u2;
        dst[i] = (float)(r * cos(a));
        if (i + 1 < cnt) dst[i + 1] = (float)(r * sin(a));
    }
    return HM_OK;
}

int codec_noise_draw(codec_noise *n, float *dst, int rows, int cols)
{
    if (codec_noise_draw_at(n, n->next, dst, rows, cols)) return HM_ERR;
    n->next++;
    return HM_OK;
}

void codec_noise_free(codec_noise *n)
{
    if (!n) return;
    if (n->replay) st_close(n->replay);
    free(n);
}
