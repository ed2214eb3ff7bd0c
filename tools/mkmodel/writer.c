/* writer.c - streaming safetensors writer with seeded random fill (see mkmodel.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hm.h"
#include "mkmodel.h"

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t name_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h;
}

static int64_t numel(const mk_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

int mk_write_safetensors(const char *path, const mk_tensor *t, int n, st_dtype dtype,
                         uint64_t seed)
{
    const size_t es = st_dtype_size(dtype);
    if (dtype != ST_BF16 && dtype != ST_F16 && dtype != ST_F32)
        return hm_err("mkmodel: dtype %s not supported (bf16, f16, f32)", st_dtype_name(dtype));
    /* Header: offsets follow tensor order; padded with spaces to a multiple of 8. */
    size_t cap = 256 + (size_t)n * 320, len = 0;
    char *hdr = hm_malloc(cap);
    uint64_t off = 0;
    len += (size_t)snprintf(hdr + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < n; i++) {
        uint64_t nb = (uint64_t)numel(&t[i]) * es;
        len += (size_t)snprintf(hdr + len, cap - len, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[",
                                t[i].name, st_dtype_name(dtype));
        for (int d = 0; d < t[i].ndim; d++)
            len += (size_t)snprintf(hdr + len, cap - len, "%s%lld", d ? "," : "",
                                    (long long)t[i].shape[d]);
        len += (size_t)snprintf(hdr + len, cap - len, "],\"data_offsets\":[%llu,%llu]}",
                                (unsigned long long)off, (unsigned long long)(off + nb));
        off += nb;
    }
    len += (size_t)snprintf(hdr + len, cap - len, "}");
    while (len % 8) hdr[len++] = ' ';

    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        free(hdr);
        return hm_err("mkmodel: cannot create '%s'", tmp);
    }
    uint8_t l8[8];
    for (int i = 0; i < 8; i++) l8[i] = (uint8_t)((uint64_t)len >> (8 * i));
    int ok = fwrite(l8, 1, 8, f) == 8 && fwrite(hdr, 1, len, f) == len;
    free(hdr);

    enum { CHUNK = 1 << 20 };
    float *v = hm_malloc(sizeof(float) * CHUNK);
    uint8_t *out = hm_malloc(es * CHUNK);
    for (int i = 0; ok && i < n; i++) {
        const mk_tensor *x = &t[i];
        const int64_t ne = numel(x);
        int64_t inner = 1; /* stride of zero_axis */
        for (int d = x->zero_axis + 1; x->zero_axis >= 0 && d < x->ndim; d++) inner *= x->shape[d];
        uint64_t s = seed ^ name_hash(x->name);
        const double a = x->std * sqrt(3.0);
        for (int64_t c0 = 0; ok && c0 < ne; c0 += CHUNK) {
            int64_t m = HM_MIN((int64_t)CHUNK, ne - c0);
            for (int64_t j = 0; j < m; j++) {
                double u = (double)(splitmix64(&s) >> 11) * 0x1.0p-53;
                float val = (float)(x->mean + a * (2.0 * u - 1.0));
                if (x->zero_axis >= 0 && ((c0 + j) / inner) % x->shape[x->zero_axis] >= x->zero_from)
                    val = 0.0f;
                v[j] = val;
            }
            if (dtype == ST_F32) {
                memcpy(out, v, sizeof(float) * (size_t)m);
            } else {
                uint16_t *o = (uint16_t *)out;
                for (int64_t j = 0; j < m; j++)
                    o[j] = dtype == ST_BF16 ? hm_f32_to_bf16(v[j]) : hm_f32_to_f16(v[j]);
            }
            ok = fwrite(out, es, (size_t)m, f) == (size_t)m;
        }
    }
    free(v);
    free(out);
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return hm_err("mkmodel: writing '%s' failed (disk full?)", path);
    }
    return HM_OK;
}
