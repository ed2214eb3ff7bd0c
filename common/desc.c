/* desc.c - descriptor encode/decode/validation (wire layout in desc.h). */
#include "desc.h"

#include "hm.h"

#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

static const struct { const char *name; size_t size; } g_dtypes[DESC_DT_COUNT] = {
    [DESC_DT_U8] = {"u8", 1},   [DESC_DT_I16] = {"i16", 2}, [DESC_DT_I32] = {"i32", 4},
    [DESC_DT_I64] = {"i64", 8}, [DESC_DT_F16] = {"f16", 2}, [DESC_DT_BF16] = {"bf16", 2},
    [DESC_DT_F32] = {"f32", 4},
};

static const char *g_type_names[DESC_TYPE_COUNT] = {
    [DESC_NONE] = "none",         [DESC_REQUEST] = "request",   [DESC_PROMPT] = "prompt",
    [DESC_HIDDEN] = "hidden",     [DESC_FRAMES] = "frames",     [DESC_LATENTS] = "latents",
    [DESC_AUDIO_DONE] = "audio_done", [DESC_RELEASE] = "release", [DESC_ERROR] = "error",
    [DESC_HEALTH] = "health",     [DESC_STATS] = "stats",       [DESC_DRAIN] = "drain",
    [DESC_SHUTDOWN] = "shutdown", [DESC_HEARTBEAT] = "heartbeat", [DESC_REPLY] = "reply",
    [DESC_PREFILL] = "prefill",   [DESC_EXTEND] = "extend",     [DESC_ROLLBACK] = "rollback",
    [DESC_FREE] = "free",         [DESC_CANCEL] = "cancel",
};

size_t desc_dtype_size(desc_dtype_t dt) { return (unsigned)dt < DESC_DT_COUNT ? g_dtypes[dt].size : 0; }
const char *desc_dtype_name(desc_dtype_t dt) { return (unsigned)dt < DESC_DT_COUNT ? g_dtypes[dt].name : "?"; }
const char *desc_type_name(desc_type_t t)
{
    return (unsigned)t < DESC_TYPE_COUNT && g_type_names[t] ? g_type_names[t] : "?";
}

void desc_init(desc_t *d, desc_type_t type, uint64_t req_id, uint64_t seq)
{
    memset(d, 0, sizeof *d);
    d->version = HM_DESC_VERSION;
    d->type = type;
    d->req_id = req_id;
    d->seq = seq;
}

static void param_clear(desc_param_t *p)
{
    free(p->s);
    free(p->v);
    p->s = NULL;
    p->v = NULL;
    p->n = 0;
}

void desc_free(desc_t *d)
{
    for (uint32_t i = 0; i < d->nparams; i++) param_clear(&d->params[i]);
    free(d->params);
    free(d->buf.data);
    desc_init(d, DESC_NONE, 0, 0);
}

void desc_move(desc_t *dst, desc_t *src)
{
    *dst = *src;
    desc_init(src, DESC_NONE, 0, 0);
}

void desc_copy(desc_t *dst, const desc_t *src)
{
    *dst = *src;
    dst->params = NULL;
    dst->cap = dst->nparams = 0;
    dst->buf.data = NULL;
    if (src->buf.data) {
        dst->buf.data = hm_malloc(src->buf.length ? src->buf.length : 1);
        if (src->buf.length) memcpy(dst->buf.data, src->buf.data, src->buf.length);
    }
    if (src->nparams) {
        dst->params = hm_calloc(src->nparams, sizeof *dst->params);
        dst->cap = src->nparams;
    }
    for (uint32_t i = 0; i < src->nparams; i++) {
        const desc_param_t *p = &src->params[i];
        desc_param_t *q = &dst->params[i];
        *q = *p;
        q->s = p->s ? hm_strdup(p->s) : NULL;
        q->v = NULL;
        if (p->type == DESC_P_I32S) {
            q->v = hm_malloc((size_t)(p->n ? p->n : 1) * sizeof *p->v);
            if (p->n) memcpy(q->v, p->v, (size_t)p->n * sizeof *p->v);
        }
    }
    dst->nparams = src->nparams;
}

/* ---- parameters ---- */

static int find_param(const desc_t *d, const char *key)
{
    for (uint32_t i = 0; i < d->nparams; i++)
        if (strcmp(d->params[i].key, key) == 0) return (int)i;
    return -1;
}

/* Slot for key (existing one cleared, or a new one); NULL with message when full/bad key. */
static desc_param_t *param_slot(desc_t *d, const char *key)
{
    size_t kl = strlen(key);
    if (kl == 0 || kl > DESC_MAX_KEY) {
        hm_err("param key '%.40s' must be 1..%d bytes", key, DESC_MAX_KEY);
        return NULL;
    }
    int i = find_param(d, key);
    if (i >= 0) {
        param_clear(&d->params[i]);
        return &d->params[i];
    }
    if (d->nparams >= DESC_MAX_PARAMS) {
        hm_err("too many params (max %d) adding '%s'", DESC_MAX_PARAMS, key);
        return NULL;
    }
    if (d->nparams == d->cap) {
        d->cap = d->cap ? d->cap * 2 : 8;
        if (d->cap > DESC_MAX_PARAMS) d->cap = DESC_MAX_PARAMS;
        d->params = hm_realloc(d->params, d->cap * sizeof *d->params);
    }
    desc_param_t *p = &d->params[d->nparams++];
    memset(p, 0, sizeof *p);
    memcpy(p->key, key, kl + 1);
    return p;
}

int desc_set_i64(desc_t *d, const char *key, int64_t v)
{
    desc_param_t *p = param_slot(d, key);
    if (!p) return HM_ERR;
    p->type = DESC_P_I64;
    p->i = v;
    return HM_OK;
}

int desc_set_f64(desc_t *d, const char *key, double v)
{
    desc_param_t *p = param_slot(d, key);
    if (!p) return HM_ERR;
    p->type = DESC_P_F64;
    p->f = v;
    return HM_OK;
}

int desc_set_str(desc_t *d, const char *key, const char *s)
{
    size_t n = strlen(s);
    if (n > DESC_MAX_STR) return hm_err("param '%s': string of %zu bytes (max %u)", key, n, DESC_MAX_STR);
    desc_param_t *p = param_slot(d, key);
    if (!p) return HM_ERR;
    p->type = DESC_P_STR;
    p->s = hm_strdup(s);
    return HM_OK;
}

int desc_set_i32s(desc_t *d, const char *key, const int32_t *v, uint32_t n)
{
    if (n > DESC_MAX_I32S) return hm_err("param '%s': %u ints (max %d)", key, n, DESC_MAX_I32S);
    desc_param_t *p = param_slot(d, key);
    if (!p) return HM_ERR;
    p->type = DESC_P_I32S;
    p->v = hm_malloc((size_t)n * sizeof *v);
    if (n) memcpy(p->v, v, (size_t)n * sizeof *v);
    p->n = n;
    return HM_OK;
}

const desc_param_t *desc_param(const desc_t *d, const char *key)
{
    int i = find_param(d, key);
    return i >= 0 ? &d->params[i] : NULL;
}

static const char *ptype_name(desc_ptype_t t)
{
    switch (t) {
    case DESC_P_I64: return "int";
    case DESC_P_F64: return "float";
    case DESC_P_STR: return "str";
    case DESC_P_I32S: return "int32 array";
    }
    return "?";
}

static const desc_param_t *get_typed(const desc_t *d, const char *key, desc_ptype_t want, int or_int)
{
    const desc_param_t *p = desc_param(d, key);
    if (!p) {
        hm_err("%s: param '%s' missing", desc_type_name(d->type), key);
        return NULL;
    }
    if (p->type != want && !(or_int && p->type == DESC_P_I64)) {
        hm_err("%s: param '%s' is a %s, want %s", desc_type_name(d->type), key, ptype_name(p->type),
               ptype_name(want));
        return NULL;
    }
    return p;
}

int desc_get_i64(const desc_t *d, const char *key, int64_t *out)
{
    const desc_param_t *p = get_typed(d, key, DESC_P_I64, 0);
    if (!p) return HM_ERR;
    *out = p->i;
    return HM_OK;
}

int desc_get_f64(const desc_t *d, const char *key, double *out)
{
    const desc_param_t *p = get_typed(d, key, DESC_P_F64, 1);
    if (!p) return HM_ERR;
    *out = p->type == DESC_P_I64 ? (double)p->i : p->f;
    return HM_OK;
}

int desc_get_str(const desc_t *d, const char *key, const char **out)
{
    const desc_param_t *p = get_typed(d, key, DESC_P_STR, 0);
    if (!p) return HM_ERR;
    *out = p->s;
    return HM_OK;
}

int desc_get_i32s(const desc_t *d, const char *key, const int32_t **v, uint32_t *n)
{
    const desc_param_t *p = get_typed(d, key, DESC_P_I32S, 0);
    if (!p) return HM_ERR;
    *v = p->v;
    *n = p->n;
    return HM_OK;
}

int64_t desc_i64_or(const desc_t *d, const char *key, int64_t dflt)
{
    const desc_param_t *p = desc_param(d, key);
    return p && p->type == DESC_P_I64 ? p->i : dflt;
}

double desc_f64_or(const desc_t *d, const char *key, double dflt)
{
    const desc_param_t *p = desc_param(d, key);
    if (p && p->type == DESC_P_F64) return p->f;
    if (p && p->type == DESC_P_I64) return (double)p->i;
    return dflt;
}

/* ---- tensors and validation ---- */

/* prod(shape) * size, or UINT64_MAX when it overflows / exceeds DESC_MAX_BYTES. */
static uint64_t tensor_bytes(desc_dtype_t dt, uint32_t ndim, const uint64_t *shape)
{
    uint64_t n = desc_dtype_size(dt);
    for (uint32_t i = 0; i < ndim; i++) {
        if (shape[i] != 0 && n > DESC_MAX_BYTES / shape[i]) return UINT64_MAX;
        n *= shape[i];
    }
    return n > DESC_MAX_BYTES ? UINT64_MAX : n;
}

int desc_set_tensor(desc_t *d, desc_dtype_t dt, uint32_t ndim, const uint64_t *shape)
{
    if (!desc_dtype_size(dt)) return hm_err("unknown dtype %d", (int)dt);
    if (ndim > DESC_MAX_NDIM) return hm_err("ndim %u out of range (max %d)", ndim, DESC_MAX_NDIM);
    uint64_t n = tensor_bytes(dt, ndim, shape);
    if (n == UINT64_MAX) return hm_err("tensor too large (max %llu bytes)", (unsigned long long)DESC_MAX_BYTES);
    d->buf.dtype = dt;
    d->buf.ndim = ndim;
    memset(d->buf.shape, 0, sizeof d->buf.shape);
    if (ndim) memcpy(d->buf.shape, shape, ndim * sizeof *shape);
    d->buf.length = n;
    return HM_OK;
}

int desc_set_inline(desc_t *d, const void *data, uint64_t len)
{
    if (len != d->buf.length)
        return hm_err("inline data of %llu bytes, tensor is %llu bytes", (unsigned long long)len,
                      (unsigned long long)d->buf.length);
    if (len > DESC_MAX_INLINE) return hm_err("inline data of %llu bytes (max %u)", (unsigned long long)len, DESC_MAX_INLINE);
    free(d->buf.data);
    d->buf.data = hm_malloc(len ? len : 1);
    if (len) memcpy(d->buf.data, data, len);
    d->buf.kind = DESC_BUF_INLINE;
    return HM_OK;
}

int desc_validate(const desc_t *d)
{
    if (d->version != HM_DESC_VERSION)
        return hm_err("descriptor version %u, this build speaks %d", d->version, HM_DESC_VERSION);
    if (d->type <= DESC_NONE || d->type >= DESC_TYPE_COUNT) return hm_err("unknown descriptor type %d", (int)d->type);
    if (d->nparams > DESC_MAX_PARAMS) return hm_err("too many params");
    const desc_buf_t *b = &d->buf;
    if (b->kind == DESC_BUF_NONE) return HM_OK;
    if (b->kind != DESC_BUF_SHM && b->kind != DESC_BUF_CUDA && b->kind != DESC_BUF_INLINE)
        return hm_err("unknown buffer kind %d", (int)b->kind);
    if (!desc_dtype_size(b->dtype)) return hm_err("unknown dtype %d", (int)b->dtype);
    if (b->ndim > DESC_MAX_NDIM) return hm_err("ndim %u out of range (max %d)", b->ndim, DESC_MAX_NDIM);
    uint64_t n = tensor_bytes(b->dtype, b->ndim, b->shape);
    if (n == UINT64_MAX) return hm_err("tensor shape too large");
    if (n != b->length)
        return hm_err("shape x %s size = %llu bytes but length is %llu", desc_dtype_name(b->dtype),
                      (unsigned long long)n, (unsigned long long)b->length);
    if (b->kind == DESC_BUF_INLINE) {
        if (b->length > DESC_MAX_INLINE) return hm_err("inline buffer of %llu bytes (max %u)", (unsigned long long)b->length, DESC_MAX_INLINE);
        if (!b->data && b->length) return hm_err("inline buffer without data");
        return HM_OK;
    }
    if (!b->pool[0] || memchr(b->pool, 0, sizeof b->pool) == NULL) return hm_err("buffer without pool name");
    for (const char *c = b->pool; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '-' ||
              *c == '_' || *c == '.'))
            return hm_err("pool name '%s': only [A-Za-z0-9._-] allowed", b->pool);
    if (memchr(b->release_ep, 0, sizeof b->release_ep) == NULL) return hm_err("release endpoint too long");
    if (b->nslots == 0 || b->slot_bytes == 0 || b->slot_bytes > DESC_MAX_BYTES) return hm_err("bad pool geometry");
    if (b->offset > DESC_MAX_BYTES) return hm_err("offset %llu too large", (unsigned long long)b->offset);
    return desc_check_bounds(d, b->nslots, b->slot_bytes);
}

int desc_check_bounds(const desc_t *d, uint32_t nslots, uint64_t slot_bytes)
{
    const desc_buf_t *b = &d->buf;
    if (b->kind != DESC_BUF_SHM && b->kind != DESC_BUF_CUDA) return hm_err("buffer is not in a pool");
    if (b->nslots != nslots || b->slot_bytes != slot_bytes)
        return hm_err("pool '%s': descriptor says %u x %llu bytes, mapped pool is %u x %llu", b->pool, b->nslots,
                      (unsigned long long)b->slot_bytes, nslots, (unsigned long long)slot_bytes);
    if (b->slot >= nslots) return hm_err("pool '%s': slot %u out of range (%u slots)", b->pool, b->slot, nslots);
    if (b->offset > slot_bytes || b->length > slot_bytes - b->offset)
        return hm_err("pool '%s' slot %u: bytes [%llu, +%llu) outside the %llu-byte slot", b->pool, b->slot,
                      (unsigned long long)b->offset, (unsigned long long)b->length, (unsigned long long)slot_bytes);
    return HM_OK;
}

/* ---- encode ---- */

static void pack_key(msgpack_packer *pk, const char *k)
{
    size_t n = strlen(k);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, k, n);
}

int desc_encode(const desc_t *d, char **out, size_t *len)
{
    if (desc_validate(d) != HM_OK) return hm_err_ctx("encode %s", desc_type_name(d->type));
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    const desc_buf_t *b = &d->buf;
    /* msgpack_sbuffer_write only fails on OOM, which hm's policy treats as fatal anyway; the
     * packer's return codes are OR-ed so a failure is still reported. */
    int rc = msgpack_pack_map(&pk, 4 + (b->kind != DESC_BUF_NONE) + (d->nparams > 0));
    pack_key(&pk, "v");
    rc |= msgpack_pack_uint32(&pk, d->version);
    pack_key(&pk, "t");
    rc |= msgpack_pack_uint32(&pk, (uint32_t)d->type);
    pack_key(&pk, "r");
    rc |= msgpack_pack_uint64(&pk, d->req_id);
    pack_key(&pk, "s");
    rc |= msgpack_pack_uint64(&pk, d->seq);
    if (b->kind != DESC_BUF_NONE) {
        size_t nk = 4;
        if (b->kind == DESC_BUF_INLINE) nk += 1;
        else nk += 8 + (b->kind == DESC_BUF_CUDA ? 2 : 0);
        pack_key(&pk, "b");
        rc |= msgpack_pack_map(&pk, nk);
        pack_key(&pk, "k");
        rc |= msgpack_pack_uint32(&pk, (uint32_t)b->kind);
        pack_key(&pk, "dt");
        rc |= msgpack_pack_uint32(&pk, (uint32_t)b->dtype);
        pack_key(&pk, "sh");
        rc |= msgpack_pack_array(&pk, b->ndim);
        for (uint32_t i = 0; i < b->ndim; i++) rc |= msgpack_pack_uint64(&pk, b->shape[i]);
        pack_key(&pk, "n");
        rc |= msgpack_pack_uint64(&pk, b->length);
        if (b->kind == DESC_BUF_INLINE) {
            pack_key(&pk, "d");
            rc |= msgpack_pack_bin(&pk, b->length);
            if (b->length) rc |= msgpack_pack_bin_body(&pk, b->data, b->length);
        } else {
            pack_key(&pk, "pool");
            pack_key(&pk, b->pool);
            pack_key(&pk, "pid");
            rc |= msgpack_pack_uint64(&pk, b->pool_id);
            pack_key(&pk, "ns");
            rc |= msgpack_pack_uint32(&pk, b->nslots);
            pack_key(&pk, "sb");
            rc |= msgpack_pack_uint64(&pk, b->slot_bytes);
            pack_key(&pk, "sl");
            rc |= msgpack_pack_uint32(&pk, b->slot);
            pack_key(&pk, "g");
            rc |= msgpack_pack_uint32(&pk, b->gen);
            pack_key(&pk, "o");
            rc |= msgpack_pack_uint64(&pk, b->offset);
            pack_key(&pk, "rel");
            pack_key(&pk, b->release_ep);
            if (b->kind == DESC_BUF_CUDA) {
                pack_key(&pk, "mh");
                rc |= msgpack_pack_bin(&pk, DESC_IPC_HANDLE_BYTES);
                rc |= msgpack_pack_bin_body(&pk, b->mem_handle, DESC_IPC_HANDLE_BYTES);
                pack_key(&pk, "eh");
                rc |= msgpack_pack_bin(&pk, DESC_IPC_HANDLE_BYTES);
                rc |= msgpack_pack_bin_body(&pk, b->event_handle, DESC_IPC_HANDLE_BYTES);
            }
        }
    }
    if (d->nparams) {
        pack_key(&pk, "p");
        rc |= msgpack_pack_map(&pk, d->nparams);
        for (uint32_t i = 0; i < d->nparams; i++) {
            const desc_param_t *p = &d->params[i];
            pack_key(&pk, p->key);
            switch (p->type) {
            case DESC_P_I64: rc |= msgpack_pack_int64(&pk, p->i); break;
            case DESC_P_F64: rc |= msgpack_pack_double(&pk, p->f); break;
            case DESC_P_STR: pack_key(&pk, p->s); break;
            case DESC_P_I32S:
                rc |= msgpack_pack_array(&pk, p->n);
                for (uint32_t j = 0; j < p->n; j++) rc |= msgpack_pack_int32(&pk, p->v[j]);
                break;
            default: rc = -1;
            }
        }
    }
    if (rc != 0) {
        msgpack_sbuffer_destroy(&sb);
        return hm_err("msgpack encode of %s failed", desc_type_name(d->type));
    }
    *len = sb.size;
    *out = msgpack_sbuffer_release(&sb);
    return HM_OK;
}

/* ---- decode ---- */

/* Walk the raw msgpack bytes before msgpack-c sees them.  msgpack-c allocates
 * count * sizeof(msgpack_object) as soon as it reads an array/map header, so a 5-byte message
 * claiming 4 billion elements would ask for ~100 GB.  Every element needs at least one byte, so
 * requiring (elements still owed) <= (bytes left) bounds the allocation by O(len).  Also rejects
 * ext types, the reserved 0xc1 byte, truncation and trailing bytes. */
static int prescan(const uint8_t *p, size_t len)
{
    size_t pos = 0;
    uint64_t owed = 1;
    while (owed) {
        if (pos >= len) return hm_err("truncated msgpack at byte %zu", pos);
        uint8_t c = p[pos++];
        owed--;
        uint64_t skip = 0, items = 0;
        int lenbytes = 0, pairs = 0, is_len = 0;
        if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
        } else if (c >= 0x80 && c <= 0x8f) {
            items = c & 0x0f;
            pairs = 1;
        } else if (c >= 0x90 && c <= 0x9f) {
            items = c & 0x0f;
        } else if (c >= 0xa0 && c <= 0xbf) {
            skip = c & 0x1f;
        } else {
            switch (c) {
            case 0xc4: case 0xd9: lenbytes = 1; is_len = 1; break;
            case 0xc5: case 0xda: lenbytes = 2; is_len = 1; break;
            case 0xc6: case 0xdb: lenbytes = 4; is_len = 1; break;
            case 0xca: skip = 4; break;
            case 0xcb: skip = 8; break;
            case 0xcc: case 0xd0: skip = 1; break;
            case 0xcd: case 0xd1: skip = 2; break;
            case 0xce: case 0xd2: skip = 4; break;
            case 0xcf: case 0xd3: skip = 8; break;
            case 0xdc: lenbytes = 2; break;
            case 0xdd: lenbytes = 4; break;
            case 0xde: lenbytes = 2; pairs = 1; break;
            case 0xdf: lenbytes = 4; pairs = 1; break;
            default: return hm_err("msgpack byte 0x%02x at %zu not allowed in a descriptor", c, pos - 1);
            }
        }
        if (lenbytes) {
            if (len - pos < (size_t)lenbytes) return hm_err("truncated msgpack length at byte %zu", pos);
            uint64_t n = 0;
            for (int i = 0; i < lenbytes; i++) n = (n << 8) | p[pos++];
            if (is_len) skip = n;
            else items = n;
        }
        if (skip > len - pos) return hm_err("msgpack item of %llu bytes overruns the message", (unsigned long long)skip);
        pos += skip;
        if (pairs) items *= 2;
        owed += items;
        if (owed > len - pos) return hm_err("msgpack container claims more elements than bytes left");
    }
    if (pos != len) return hm_err("%zu trailing bytes after the descriptor", len - pos);
    return HM_OK;
}

static int key_is(const msgpack_object_kv *kv, const char *k)
{
    size_t n = strlen(k);
    return kv->key.via.str.size == n && memcmp(kv->key.via.str.ptr, k, n) == 0;
}

static int get_uint(const msgpack_object *o, const char *what, uint64_t max, uint64_t *out)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) return hm_err("'%s' must be an unsigned int", what);
    if (o->via.u64 > max) return hm_err("'%s' = %llu out of range (max %llu)", what, (unsigned long long)o->via.u64,
                                        (unsigned long long)max);
    *out = o->via.u64;
    return HM_OK;
}

static int get_strcpy(const msgpack_object *o, const char *what, char *dst, size_t cap)
{
    if (o->type != MSGPACK_OBJECT_STR) return hm_err("'%s' must be a string", what);
    if (o->via.str.size >= cap) return hm_err("'%s' longer than %zu bytes", what, cap - 1);
    if (o->via.str.size && memchr(o->via.str.ptr, 0, o->via.str.size)) return hm_err("'%s' contains NUL", what);
    memcpy(dst, o->via.str.ptr, o->via.str.size);
    dst[o->via.str.size] = 0;
    return HM_OK;
}

/* Reject duplicate and non-string keys in a map (msgpack-c keeps duplicates). */
static int check_keys(const msgpack_object *m, const char *what)
{
    const msgpack_object_map *map = &m->via.map;
    for (uint32_t i = 0; i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key;
        if (k->type != MSGPACK_OBJECT_STR) return hm_err("%s: non-string key", what);
        for (uint32_t j = 0; j < i; j++)
            if (map->ptr[j].key.via.str.size == k->via.str.size &&
                memcmp(map->ptr[j].key.via.str.ptr, k->via.str.ptr, k->via.str.size) == 0)
                return hm_err("%s: duplicate key '%.*s'", what, (int)HM_MIN(k->via.str.size, 32), k->via.str.ptr);
    }
    return HM_OK;
}

static int decode_buf(const msgpack_object *m, desc_buf_t *b)
{
    if (m->type != MSGPACK_OBJECT_MAP) return hm_err("'b' must be a map");
    if (check_keys(m, "buffer") != HM_OK) return HM_ERR;
    enum { K, DT, SH, N, POOL, PID, NS, SB, SL, G, O, REL, MH, EH, D, NKEYS };
    static const char *names[NKEYS] = {"k", "dt", "sh", "n", "pool", "pid", "ns", "sb", "sl", "g", "o", "rel", "mh", "eh", "d"};
    const msgpack_object *f[NKEYS] = {0};
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object_kv *kv = &m->via.map.ptr[i];
        int k = 0;
        while (k < NKEYS && !key_is(kv, names[k])) k++;
        if (k == NKEYS)
            return hm_err("buffer: unknown key '%.*s'", (int)HM_MIN(kv->key.via.str.size, 32), kv->key.via.str.ptr);
        f[k] = &kv->val;
    }
    uint64_t u = 0;
    for (int k = K; k <= N; k++)
        if (!f[k]) return hm_err("buffer: missing '%s'", names[k]);
    if (get_uint(f[K], "k", DESC_BUF_INLINE, &u) || u == DESC_BUF_NONE) return hm_err("buffer: unknown kind");
    b->kind = (desc_buf_kind_t)u;
    if (get_uint(f[DT], "dt", DESC_DT_COUNT - 1, &u)) return HM_ERR;
    b->dtype = (desc_dtype_t)u;
    if (f[SH]->type != MSGPACK_OBJECT_ARRAY) return hm_err("'sh' must be an array");
    if (f[SH]->via.array.size > DESC_MAX_NDIM)
        return hm_err("ndim %u out of range (max %d)", f[SH]->via.array.size, DESC_MAX_NDIM);
    b->ndim = f[SH]->via.array.size;
    for (uint32_t i = 0; i < b->ndim; i++)
        if (get_uint(&f[SH]->via.array.ptr[i], "sh[i]", DESC_MAX_BYTES, &b->shape[i])) return HM_ERR;
    if (get_uint(f[N], "n", DESC_MAX_BYTES, &b->length)) return HM_ERR;
    int pooled = b->kind != DESC_BUF_INLINE;
    for (int k = POOL; k <= EH; k++) {
        int want = pooled && (k < MH || b->kind == DESC_BUF_CUDA);
        if (want && !f[k]) return hm_err("%s buffer: missing '%s'", b->kind == DESC_BUF_CUDA ? "cuda" : "shm", names[k]);
        if (!want && f[k]) return hm_err("buffer: '%s' not allowed for this kind", names[k]);
    }
    if (!pooled && !f[D]) return hm_err("inline buffer: missing 'd'");
    if (pooled && f[D]) return hm_err("buffer: 'd' only allowed inline");
    if (pooled) {
        if (get_strcpy(f[POOL], "pool", b->pool, sizeof b->pool)) return HM_ERR;
        if (get_uint(f[PID], "pid", UINT64_MAX, &b->pool_id)) return HM_ERR;
        if (get_uint(f[NS], "ns", UINT32_MAX, &u)) return HM_ERR;
        b->nslots = (uint32_t)u;
        if (get_uint(f[SB], "sb", DESC_MAX_BYTES, &b->slot_bytes)) return HM_ERR;
        if (get_uint(f[SL], "sl", UINT32_MAX, &u)) return HM_ERR;
        b->slot = (uint32_t)u;
        if (get_uint(f[G], "g", UINT32_MAX, &u)) return HM_ERR;
        b->gen = (uint32_t)u;
        if (get_uint(f[O], "o", DESC_MAX_BYTES, &b->offset)) return HM_ERR;
        if (get_strcpy(f[REL], "rel", b->release_ep, sizeof b->release_ep)) return HM_ERR;
        if (b->kind == DESC_BUF_CUDA) {
            for (int k = MH; k <= EH; k++)
                if (f[k]->type != MSGPACK_OBJECT_BIN || f[k]->via.bin.size != DESC_IPC_HANDLE_BYTES)
                    return hm_err("'%s' must be %d bytes of bin", names[k], DESC_IPC_HANDLE_BYTES);
            memcpy(b->mem_handle, f[MH]->via.bin.ptr, DESC_IPC_HANDLE_BYTES);
            memcpy(b->event_handle, f[EH]->via.bin.ptr, DESC_IPC_HANDLE_BYTES);
        }
    } else {
        if (f[D]->type != MSGPACK_OBJECT_BIN) return hm_err("'d' must be bin");
        if (f[D]->via.bin.size != b->length)
            return hm_err("inline 'd' has %u bytes, 'n' says %llu", f[D]->via.bin.size, (unsigned long long)b->length);
        if (b->length > DESC_MAX_INLINE) return hm_err("inline buffer too large");
        /* length is bounded by the (already size-checked) message, so this allocation is too */
        b->data = hm_malloc(b->length ? b->length : 1);
        if (b->length) memcpy(b->data, f[D]->via.bin.ptr, b->length);
    }
    return HM_OK;
}

static int decode_params(const msgpack_object *m, desc_t *d)
{
    if (m->type != MSGPACK_OBJECT_MAP) return hm_err("'p' must be a map");
    if (m->via.map.size > DESC_MAX_PARAMS) return hm_err("%u params (max %d)", m->via.map.size, DESC_MAX_PARAMS);
    if (check_keys(m, "params") != HM_OK) return HM_ERR;
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object_kv *kv = &m->via.map.ptr[i];
        char key[DESC_MAX_KEY + 1];
        if (get_strcpy(&kv->key, "param key", key, sizeof key)) return HM_ERR;
        if (!key[0]) return hm_err("empty param key");
        const msgpack_object *v = &kv->val;
        switch (v->type) {
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
            if (v->via.u64 > INT64_MAX) return hm_err("param '%s' exceeds int64", key);
            if (desc_set_i64(d, key, (int64_t)v->via.u64)) return HM_ERR;
            break;
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
            if (desc_set_i64(d, key, v->via.i64)) return HM_ERR;
            break;
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
            if (desc_set_f64(d, key, v->via.f64)) return HM_ERR;
            break;
        case MSGPACK_OBJECT_STR: {
            if (v->via.str.size > DESC_MAX_STR) return hm_err("param '%s': string longer than %u bytes", key, DESC_MAX_STR);
            if (v->via.str.size && memchr(v->via.str.ptr, 0, v->via.str.size)) return hm_err("param '%s' contains NUL", key);
            desc_param_t *p = param_slot(d, key);
            if (!p) return HM_ERR;
            p->type = DESC_P_STR;
            p->s = hm_malloc(v->via.str.size + 1);
            memcpy(p->s, v->via.str.ptr, v->via.str.size);
            p->s[v->via.str.size] = 0;
            break;
        }
        case MSGPACK_OBJECT_ARRAY: {
            uint32_t n = v->via.array.size;
            if (n > DESC_MAX_I32S) return hm_err("param '%s': %u ints (max %d)", key, n, DESC_MAX_I32S);
            desc_param_t *p = param_slot(d, key);
            if (!p) return HM_ERR;
            p->type = DESC_P_I32S;
            p->v = hm_malloc((size_t)(n ? n : 1) * sizeof(int32_t));
            p->n = n;
            for (uint32_t j = 0; j < n; j++) {
                const msgpack_object *e = &v->via.array.ptr[j];
                if (e->type == MSGPACK_OBJECT_POSITIVE_INTEGER && e->via.u64 <= INT32_MAX) p->v[j] = (int32_t)e->via.u64;
                else if (e->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && e->via.i64 >= INT32_MIN) p->v[j] = (int32_t)e->via.i64;
                else return hm_err("param '%s'[%u] is not an int32", key, j);
            }
            break;
        }
        default: return hm_err("param '%s' has an unsupported msgpack type %d", key, (int)v->type);
        }
    }
    return HM_OK;
}

static int decode_obj(const msgpack_object *root, desc_t *d)
{
    if (root->type != MSGPACK_OBJECT_MAP) return hm_err("descriptor is not a msgpack map");
    if (check_keys(root, "descriptor") != HM_OK) return HM_ERR;
    const msgpack_object *v = NULL, *t = NULL, *r = NULL, *s = NULL, *b = NULL, *p = NULL;
    for (uint32_t i = 0; i < root->via.map.size; i++) {
        const msgpack_object_kv *kv = &root->via.map.ptr[i];
        if (key_is(kv, "v")) v = &kv->val;
        else if (key_is(kv, "t")) t = &kv->val;
        else if (key_is(kv, "r")) r = &kv->val;
        else if (key_is(kv, "s")) s = &kv->val;
        else if (key_is(kv, "b")) b = &kv->val;
        else if (key_is(kv, "p")) p = &kv->val;
        else return hm_err("descriptor: unknown key '%.*s'", (int)HM_MIN(kv->key.via.str.size, 32), kv->key.via.str.ptr);
    }
    if (!v) return hm_err("descriptor: missing version 'v'");
    uint64_t u = 0;
    if (get_uint(v, "v", UINT32_MAX, &u)) return HM_ERR;
    if (u != HM_DESC_VERSION) return hm_err("descriptor version %llu, this build speaks %d", (unsigned long long)u, HM_DESC_VERSION);
    if (!t || !r || !s) return hm_err("descriptor: missing '%s'", !t ? "t" : !r ? "r" : "s");
    if (get_uint(t, "t", DESC_TYPE_COUNT - 1, &u) || u == DESC_NONE) return hm_err("unknown descriptor type");
    d->type = (desc_type_t)u;
    if (get_uint(r, "r", UINT64_MAX, &d->req_id) || get_uint(s, "s", UINT64_MAX, &d->seq)) return HM_ERR;
    if (b && decode_buf(b, &d->buf)) return HM_ERR;
    if (p && decode_params(p, d)) return HM_ERR;
    return desc_validate(d);
}

int desc_decode(const void *buf, size_t len, desc_t *d)
{
    desc_init(d, DESC_NONE, 0, 0);
    if (len == 0) return hm_err("empty descriptor");
    if (len > DESC_MAX_WIRE) return hm_err("descriptor of %zu bytes (max %u)", len, DESC_MAX_WIRE);
    if (prescan(buf, len) != HM_OK) return hm_err_ctx("descriptor");
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack_next(&up, buf, len, &off);
    int rc;
    if (ur != MSGPACK_UNPACK_SUCCESS) rc = hm_err("descriptor: msgpack unpack failed (%d)", (int)ur);
    else if (off != len) rc = hm_err("descriptor: %zu trailing bytes", len - off);
    else rc = decode_obj(&up.data, d);
    msgpack_unpacked_destroy(&up);
    if (rc != HM_OK) desc_free(d);
    return rc;
}

int desc_equal(const desc_t *a, const desc_t *b)
{
    if (a->version != b->version || a->type != b->type || a->req_id != b->req_id || a->seq != b->seq) return 0;
    const desc_buf_t *x = &a->buf, *y = &b->buf;
    if (x->kind != y->kind) return 0;
    if (x->kind != DESC_BUF_NONE) {
        if (x->dtype != y->dtype || x->ndim != y->ndim || x->length != y->length) return 0;
        if (memcmp(x->shape, y->shape, x->ndim * sizeof x->shape[0])) return 0;
        if (x->kind == DESC_BUF_INLINE) {
            if (x->length && memcmp(x->data, y->data, x->length)) return 0;
        } else {
            if (strcmp(x->pool, y->pool) || x->pool_id != y->pool_id || x->nslots != y->nslots ||
                x->slot_bytes != y->slot_bytes || x->slot != y->slot || x->gen != y->gen || x->offset != y->offset ||
                strcmp(x->release_ep, y->release_ep))
                return 0;
            if (x->kind == DESC_BUF_CUDA && (memcmp(x->mem_handle, y->mem_handle, DESC_IPC_HANDLE_BYTES) ||
                                             memcmp(x->event_handle, y->event_handle, DESC_IPC_HANDLE_BYTES)))
                return 0;
        }
    }
    if (a->nparams != b->nparams) return 0;
    for (uint32_t i = 0; i < a->nparams; i++) {
        const desc_param_t *p = &a->params[i], *q = desc_param(b, p->key);
        if (!q || p->type != q->type) return 0;
        switch (p->type) {
        case DESC_P_I64: if (p->i != q->i) return 0; break;
        case DESC_P_F64: if (memcmp(&p->f, &q->f, sizeof p->f)) return 0; break; /* NaN-safe */
        case DESC_P_STR: if (strcmp(p->s, q->s)) return 0; break;
        case DESC_P_I32S: if (p->n != q->n || (p->n && memcmp(p->v, q->v, p->n * sizeof *p->v))) return 0; break;
        }
    }
    return 1;
}
