/* safetensors.c - strict mmap reader and atomic writer for the safetensors format (see header). */
#define _GNU_SOURCE
#include "safetensors.h"
#include "hm.h"

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER (100u << 20) /* the format's own limit is 100 MB */
#define ST_MAX_TENSORS 1000000

typedef struct {
    void *map;     /* whole file mapping (NULL for st_open_mem) */
    size_t map_len;
    char *path;
} st_shard;

struct st_file {
    st_shard *shards;
    size_t nshards;
    st_tensor *t;
    size_t n, cap;
    /* open-addressing name -> index+1 */
    uint32_t *hash;
    size_t hcap;
};

static const struct { const char *name; size_t size; } k_dtypes[ST_DTYPE_COUNT] = {
    [ST_BOOL] = {"BOOL", 1}, [ST_U8] = {"U8", 1},     [ST_I8] = {"I8", 1},     [ST_I16] = {"I16", 2},
    [ST_U16] = {"U16", 2},   [ST_I32] = {"I32", 4},   [ST_U32] = {"U32", 4},   [ST_I64] = {"I64", 8},
    [ST_U64] = {"U64", 8},   [ST_F16] = {"F16", 2},   [ST_BF16] = {"BF16", 2}, [ST_F32] = {"F32", 4},
    [ST_F64] = {"F64", 8},   [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E5M2] = {"F8_E5M2", 1},
};

const char *st_dtype_name(st_dtype d) { return (unsigned)d < ST_DTYPE_COUNT ? k_dtypes[d].name : "?"; }
size_t st_dtype_size(st_dtype d) { return (unsigned)d < ST_DTYPE_COUNT ? k_dtypes[d].size : 0; }
int st_dtype_parse(const char *s, st_dtype *out)
{
    for (int i = 0; i < ST_DTYPE_COUNT; i++)
        if (!strcmp(s, k_dtypes[i].name)) {
            *out = (st_dtype)i;
            return HM_OK;
        }
    return hm_err("unknown dtype '%s'", s);
}

static uint32_t fnv1a(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static void hash_rebuild(st_file *f)
{
    free(f->hash);
    f->hcap = 16;
    while (f->hcap < f->n * 2 + 2) f->hcap <<= 1;
    f->hash = hm_calloc(f->hcap, sizeof *f->hash);
    for (size_t i = 0; i < f->n; i++) {
        size_t j = fnv1a(f->t[i].name) & (f->hcap - 1);
        while (f->hash[j]) j = (j + 1) & (f->hcap - 1);
        f->hash[j] = (uint32_t)(i + 1);
    }
}

st_tensor *st_find(st_file *f, const char *name)
{
    if (!f->hash) return NULL;
    size_t j = fnv1a(name) & (f->hcap - 1);
    while (f->hash[j]) {
        st_tensor *t = &f->t[f->hash[j] - 1];
        if (!strcmp(t->name, name)) return t;
        j = (j + 1) & (f->hcap - 1);
    }
    return NULL;
}

size_t st_count(const st_file *f) { return f->n; }
st_tensor *st_at(st_file *f, size_t i) { return i < f->n ? &f->t[i] : NULL; }

typedef struct { size_t b, e; const char *name; } range_t;
static int cmp_range(const void *a, const void *b)
{
    const range_t *x = a, *y = b;
    return x->b < y->b ? -1 : x->b > y->b ? 1 : (x->e < y->e ? -1 : x->e > y->e);
}

/* Parse one file image and append its tensors to f.  `label` names the file in messages. */
static int parse_image(st_file *f, const uint8_t *data, size_t len, const char *label)
{
    if (len < 8) return hm_err("%s: %zu bytes, too short for a safetensors header", label, len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | data[i];
    if (hlen < 2 || hlen > ST_MAX_HEADER || hlen > len - 8)
        return hm_err("%s: header length %llu invalid for a %zu-byte file (corrupt or truncated)", label,
                      (unsigned long long)hlen, len);
    const char *hjson = (const char *)data + 8;
    const uint8_t *body = data + 8 + hlen;
    size_t body_len = len - 8 - hlen;
    cJSON *root = cJSON_ParseWithLength(hjson, (size_t)hlen);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return hm_err("%s: header is not a JSON object", label);
    }
    size_t first = f->n;
    int rc = HM_OK;
    for (cJSON *it = root->child; it; it = it->next) {
        if (!it->string) { rc = hm_err("%s: header entry without a name", label); break; }
        if (!strcmp(it->string, "__metadata__")) continue;
        if (f->n >= ST_MAX_TENSORS) { rc = hm_err("%s: too many tensors", label); break; }
        cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
        cJSON *sh = cJSON_GetObjectItemCaseSensitive(it, "shape");
        cJSON *off = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
        if (!cJSON_IsObject(it) || !cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(off) ||
            cJSON_GetArraySize(off) != 2) {
            rc = hm_err("%s: tensor '%s': needs dtype, shape and data_offsets [begin, end]", label, it->string);
            break;
        }
        st_tensor t = {0};
        t.name = it->string; /* replaced by a copy below */
        if (st_dtype_parse(dt->valuestring, &t.dtype)) {
            rc = hm_err("%s: tensor '%s': unknown dtype '%s'", label, it->string, dt->valuestring);
            break;
        }
        int nd = cJSON_GetArraySize(sh);
        if (nd > ST_MAX_DIMS) { rc = hm_err("%s: tensor '%s': %d dims (max %d)", label, it->string, nd, ST_MAX_DIMS); break; }
        t.ndim = nd;
        unsigned __int128 numel = 1;
        int i = 0;
        for (cJSON *d = sh->child; d; d = d->next, i++) {
            if (!cJSON_IsNumber(d) || d->valuedouble < 0 || d->valuedouble > 9.0e15 ||
                d->valuedouble != (double)(int64_t)d->valuedouble) {
                rc = hm_err("%s: tensor '%s': bad shape entry", label, it->string);
                break;
            }
            t.shape[i] = (int64_t)d->valuedouble;
            numel *= (unsigned __int128)t.shape[i];
            if (numel > ((unsigned __int128)1 << 62)) { rc = hm_err("%s: tensor '%s': absurd shape", label, it->string); break; }
        }
        if (rc) break;
        double b = cJSON_GetArrayItem(off, 0)->valuedouble, e = cJSON_GetArrayItem(off, 1)->valuedouble;
        if (!cJSON_IsNumber(cJSON_GetArrayItem(off, 0)) || !cJSON_IsNumber(cJSON_GetArrayItem(off, 1)) || b < 0 ||
            e < b || e > (double)body_len || b != (double)(uint64_t)b || e != (double)(uint64_t)e) {
            rc = hm_err("%s: tensor '%s': data_offsets [%.0f, %.0f] outside the %zu-byte data region (truncated file?)",
                        label, it->string, b, e, body_len);
            break;
        }
        t.numel = (int64_t)numel;
        t.nbytes = (size_t)(e - b);
        if ((unsigned __int128)t.nbytes != numel * st_dtype_size(t.dtype)) {
            rc = hm_err("%s: tensor '%s': %zu bytes but shape x %s size needs %llu", label, it->string, t.nbytes,
                        st_dtype_name(t.dtype), (unsigned long long)(numel * st_dtype_size(t.dtype)));
            break;
        }
        t.data = body + (size_t)b;
        t.name = hm_strdup(it->string);
        if (f->n == f->cap) {
            f->cap = f->cap ? f->cap * 2 : 64;
            f->t = hm_realloc(f->t, f->cap * sizeof *f->t);
        }
        f->t[f->n++] = t;
    }
    cJSON_Delete(root);
    if (rc) return rc;
    /* overlap check within this file */
    size_t nn = f->n - first;
    if (nn > 1) {
        range_t *r = hm_malloc(nn * sizeof *r);
        for (size_t i = 0; i < nn; i++) {
            const st_tensor *t = &f->t[first + i];
            r[i].b = (size_t)((const uint8_t *)t->data - body);
            r[i].e = r[i].b + t->nbytes;
            r[i].name = t->name;
        }
        qsort(r, nn, sizeof *r, cmp_range);
        for (size_t i = 1; i < nn; i++)
            if (r[i].b < r[i - 1].e && r[i].e > r[i].b) {
                rc = hm_err("%s: tensors '%s' and '%s' overlap", label, r[i - 1].name, r[i].name);
                break;
            }
        free(r);
    }
    if (rc) return rc;
    /* duplicate names (across shards too) */
    hash_rebuild(f);
    for (size_t i = first; i < f->n; i++) {
        st_tensor *t = st_find(f, f->t[i].name);
        if (t != &f->t[i]) return hm_err("%s: tensor '%s' appears twice", label, f->t[i].name);
    }
    return HM_OK;
}

static st_file *st_new(void) { return hm_calloc(1, sizeof(st_file)); }

static int add_shard(st_file *f, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return hm_err("cannot open '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return hm_err("'%s' is not a regular file", path);
    }
    size_t len = (size_t)st.st_size;
    void *map = NULL;
    if (len) {
        map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            close(fd);
            return hm_err("cannot map '%s': %s", path, strerror(errno));
        }
    }
    close(fd);
    f->shards = hm_realloc(f->shards, (f->nshards + 1) * sizeof *f->shards);
    f->shards[f->nshards++] = (st_shard){map, len, hm_strdup(path)};
    return parse_image(f, map ? map : (const void *)"", len, path);
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* model.safetensors.index.json: {"weight_map": {tensor: shard file}} */
static int open_index(st_file *f, const char *index_path)
{
    char *txt;
    if (hm_read_file(index_path, &txt, NULL, 64u << 20)) return HM_ERR;
    cJSON *root = cJSON_Parse(txt);
    free(txt);
    cJSON *wm = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(wm)) {
        cJSON_Delete(root);
        return hm_err("'%s': no \"weight_map\" object", index_path);
    }
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", index_path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0; else snprintf(dir, sizeof dir, ".");
    /* unique shard names, sorted */
    size_t n = 0, cap = 0;
    char **names = NULL;
    int rc = HM_OK;
    for (cJSON *it = wm->child; it; it = it->next) {
        if (!cJSON_IsString(it) || strchr(it->valuestring, '/')) { rc = hm_err("'%s': bad shard name for '%s'", index_path, it->string); break; }
        size_t j;
        for (j = 0; j < n; j++) if (!strcmp(names[j], it->valuestring)) break;
        if (j < n) continue;
        if (n == cap) { cap = cap ? cap * 2 : 8; names = hm_realloc(names, cap * sizeof *names); }
        names[n++] = hm_strdup(it->valuestring);
    }
    qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n && !rc; i++) {
        char p[PATH_MAX * 2];
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        rc = add_shard(f, p);
    }
    /* every tensor the index names must be in the shard it names */
    for (cJSON *it = wm->child; it && !rc; it = it->next)
        if (!st_find(f, it->string)) rc = hm_err("'%s' lists tensor '%s' in '%s' but that shard lacks it", index_path, it->string, it->valuestring);
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    cJSON_Delete(root);
    return rc;
}

int st_open(const char *path, st_file **out)
{
    *out = NULL;
    struct stat st;
    if (stat(path, &st) != 0) return hm_err("'%s': %s", path, strerror(errno));
    st_file *f = st_new();
    int rc;
    if (S_ISDIR(st.st_mode)) {
        char p[PATH_MAX * 2];
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", path);
        if (access(p, R_OK) == 0) rc = open_index(f, p);
        else {
            snprintf(p, sizeof p, "%s/model.safetensors", path);
            if (access(p, R_OK) == 0) rc = add_shard(f, p);
            else { /* every *.safetensors in the folder, sorted */
                DIR *d = opendir(path);
                char **names = NULL;
                size_t n = 0;
                struct dirent *e;
                while (d && (e = readdir(d)))
                    if (ends_with(e->d_name, ".safetensors")) {
                        names = hm_realloc(names, (n + 1) * sizeof *names);
                        names[n++] = hm_strdup(e->d_name);
                    }
                if (d) closedir(d);
                qsort(names, n, sizeof *names, cmp_str);
                rc = n ? HM_OK : hm_err("'%s': no *.safetensors file in this folder", path);
                for (size_t i = 0; i < n; i++) {
                    if (!rc) {
                        snprintf(p, sizeof p, "%s/%s", path, names[i]);
                        rc = add_shard(f, p);
                    }
                    free(names[i]);
                }
                free(names);
            }
        }
    } else if (ends_with(path, ".json")) {
        rc = open_index(f, path);
    } else {
        rc = add_shard(f, path);
    }
    if (rc) {
        st_close(f);
        return HM_ERR;
    }
    if (!f->hash) hash_rebuild(f);
    *out = f;
    return HM_OK;
}

int st_open_mem(const void *data, size_t len, const char *label, st_file **out)
{
    st_file *f = st_new();
    *out = NULL;
    if (parse_image(f, data, len, label ? label : "<memory>")) {
        st_close(f);
        return HM_ERR;
    }
    if (!f->hash) hash_rebuild(f);
    *out = f;
    return HM_OK;
}

void st_close(st_file *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->n; i++) free((char *)f->t[i].name);
    free(f->t);
    free(f->hash);
    for (size_t i = 0; i < f->nshards; i++) {
        if (f->shards[i].map) munmap(f->shards[i].map, f->shards[i].map_len);
        free(f->shards[i].path);
    }
    free(f->shards);
    free(f);
}

static void fmt_shape(char *buf, size_t n, int ndim, const int64_t *shape)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, n - o, "[");
    for (int i = 0; i < ndim && o < n; i++) o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

int st_get(st_file *f, const char *name, int ndim, const int64_t *shape, st_tensor **out)
{
    st_tensor *t = st_find(f, name);
    if (!t) return hm_err("tensor '%s' missing from the checkpoint", name);
    if (ndim >= 0) {
        int ok = t->ndim == ndim;
        for (int i = 0; ok && shape && i < ndim; i++) ok = t->shape[i] == shape[i];
        if (!ok) {
            char a[128], b[128];
            fmt_shape(a, sizeof a, t->ndim, t->shape);
            if (shape) fmt_shape(b, sizeof b, ndim, shape);
            else snprintf(b, sizeof b, "%d dims", ndim);
            return hm_err("tensor '%s': shape %s, expected %s (checkpoint does not match config.json)", name, a, b);
        }
    }
    t->used = 1;
    if (out) *out = t;
    return HM_OK;
}

static inline float fp8_e4m3_to_f32(uint8_t v)
{
    int s = v >> 7, e = (v >> 3) & 15, m = v & 7;
    float r;
    if (e == 15 && m == 7) r = NAN;
    else if (e == 0) r = ldexpf((float)m / 8.0f, -6);
    else r = ldexpf(1.0f + (float)m / 8.0f, e - 7);
    return s ? -r : r;
}

int st_to_f32(const st_tensor *t, float *dst)
{
    const uint8_t *p = t->data;
    int64_t n = t->numel;
    /* element loads go through memcpy: tensor data in a file need not be aligned */
#define CONV(T, EXPR)                                                          \
    for (int64_t i = 0; i < n; i++) {                                          \
        T v;                                                                   \
        memcpy(&v, p + (size_t)i * sizeof(T), sizeof(T));                      \
        dst[i] = (EXPR);                                                       \
    }
    switch (t->dtype) {
    case ST_F32: memcpy(dst, p, (size_t)n * 4); break;
    case ST_F64: CONV(double, (float)v); break;
    case ST_F16: CONV(uint16_t, hm_f16_to_f32(v)); break;
    case ST_BF16: CONV(uint16_t, hm_bf16_to_f32(v)); break;
    case ST_I64: CONV(int64_t, (float)v); break;
    case ST_I32: CONV(int32_t, (float)v); break;
    case ST_U32: CONV(uint32_t, (float)v); break;
    case ST_I16: CONV(int16_t, (float)v); break;
    case ST_U16: CONV(uint16_t, (float)v); break;
    case ST_I8: CONV(int8_t, (float)v); break;
    case ST_U8: case ST_BOOL: CONV(uint8_t, (float)v); break;
    case ST_F8_E4M3: CONV(uint8_t, fp8_e4m3_to_f32(v)); break;
    default: return hm_err("tensor '%s': cannot convert %s to f32", t->name, st_dtype_name(t->dtype));
    }
    return HM_OK;
}

int st_to_i32(const st_tensor *t, int32_t *dst)
{
    const uint8_t *p = t->data;
    int64_t n = t->numel;
    switch (t->dtype) {
    case ST_I32: memcpy(dst, p, (size_t)n * 4); return HM_OK;
    case ST_I64:
        for (int64_t i = 0; i < n; i++) {
            int64_t v;
            memcpy(&v, p + (size_t)i * 8, 8);
            if (v < INT32_MIN || v > INT32_MAX) return hm_err("tensor '%s': value %lld does not fit int32", t->name, (long long)v);
            dst[i] = (int32_t)v;
        }
        return HM_OK;
    case ST_U8: case ST_BOOL: for (int64_t i = 0; i < n; i++) dst[i] = p[i]; return HM_OK;
    case ST_I8: for (int64_t i = 0; i < n; i++) dst[i] = (int8_t)p[i]; return HM_OK;
    case ST_I16: case ST_U16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t v;
            memcpy(&v, p + (size_t)i * 2, 2);
            dst[i] = t->dtype == ST_I16 ? (int16_t)v : v;
        }
        return HM_OK;
    default: return hm_err("tensor '%s': %s is not an integer dtype", t->name, st_dtype_name(t->dtype));
    }
}

float *st_load_f32(st_file *f, const char *name, int ndim, const int64_t *shape)
{
    st_tensor *t;
    if (st_get(f, name, ndim, shape, &t)) return NULL;
    float *d = hm_malloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
    if (st_to_f32(t, d)) {
        free(d);
        return NULL;
    }
    return d;
}

int st_require(st_file *f, const char *const *names, size_t n)
{
    char msg[900];
    size_t o = 0, missing = 0;
    for (size_t i = 0; i < n; i++)
        if (!st_find(f, names[i])) {
            if (o < sizeof msg - 1) o += (size_t)snprintf(msg + o, sizeof msg - o, "%s'%s'", missing ? ", " : "", names[i]);
            missing++;
        }
    if (!missing) return HM_OK;
    return hm_err("checkpoint lacks %zu tensor(s) the model needs: %s", missing, msg);
}

int st_report_unused(st_file *f, const char *const *ignore, size_t n_ignore)
{
    int count = 0;
    for (size_t i = 0; i < f->n; i++) {
        if (f->t[i].used) continue;
        int skip = 0;
        for (size_t j = 0; j < n_ignore && !skip; j++) skip = strstr(f->t[i].name, ignore[j]) != NULL;
        if (skip) continue;
        if (count < 20) LOG_WARN("checkpoint tensor '%s' is not used by this pipeline", f->t[i].name);
        count++;
    }
    if (count > 20) LOG_WARN("... and %d more unused tensors", count - 20);
    return count;
}

static int write_all(int fd, const void *buf, size_t n)
{
    const uint8_t *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int st_write(const char *path, const st_wtensor *t, size_t n, const char *const *meta_kv, size_t n_meta)
{
    cJSON *root = cJSON_CreateObject();
    if (n_meta) {
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        for (size_t i = 0; i < n_meta; i++) cJSON_AddStringToObject(m, meta_kv[2 * i], meta_kv[2 * i + 1]);
    }
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        cJSON *e = cJSON_AddObjectToObject(root, t[i].name);
        cJSON_AddStringToObject(e, "dtype", st_dtype_name(t[i].dtype));
        cJSON *sh = cJSON_AddArrayToObject(e, "shape");
        size_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++) {
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t[i].shape[d]));
            numel *= (size_t)t[i].shape[d];
        }
        size_t nb = numel * st_dtype_size(t[i].dtype);
        cJSON *o = cJSON_AddArrayToObject(e, "data_offsets");
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)(off + nb)));
        off += nb;
    }
    char *hdr = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    size_t hl = strlen(hdr), pad = (8 - (hl % 8)) % 8; /* keep the data region 8-byte aligned */
    char tmp[PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        free(hdr);
        return hm_err("cannot create '%s': %s", tmp, strerror(errno));
    }
    uint8_t lenb[8];
    uint64_t L = hl + pad;
    for (int i = 0; i < 8; i++) lenb[i] = (uint8_t)(L >> (8 * i));
    int bad = write_all(fd, lenb, 8) || write_all(fd, hdr, hl) || write_all(fd, "        ", pad);
    free(hdr);
    for (size_t i = 0; i < n && !bad; i++) {
        size_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++) numel *= (size_t)t[i].shape[d];
        bad = write_all(fd, t[i].data, numel * st_dtype_size(t[i].dtype));
    }
    int err = errno;
    if (!bad && fsync(fd) != 0) { bad = 1; err = errno; }
    if (close(fd) != 0 && !bad) { bad = 1; err = errno; }
    if (bad || rename(tmp, path) != 0) {
        if (!bad) err = errno;
        unlink(tmp);
        return hm_err("cannot write '%s': %s", path, strerror(err));
    }
    return HM_OK;
}
