/* desc.h - the descriptor: the small msgpack message every stage sends over ZeroMQ
 * (DESIGN.md "Descriptors and buffers").  Bulk data stays in a buffer pool (pool.h); the
 * descriptor says where it is, what it is, and which request it belongs to.
 *
 * Wire layout (one ZeroMQ frame, a msgpack map with short string keys; a decoder rejects
 * unknown keys, duplicate keys, wrong msgpack types and out-of-range values):
 *
 *   top level map
 *   | key | msgpack type      | required | meaning                                        |
 *   |-----|-------------------|----------|------------------------------------------------|
 *   | "v" | uint              | yes      | HM_DESC_VERSION (other versions are rejected)  |
 *   | "t" | uint              | yes      | desc_type_t                                    |
 *   | "r" | uint64            | yes      | request id                                     |
 *   | "s" | uint64            | yes      | sequence number within the request             |
 *   | "b" | map (below)       | no       | buffer reference                               |
 *   | "p" | map str -> value  | no       | request parameters, <= DESC_MAX_PARAMS entries |
 *
 *   "b" buffer reference map
 *   | key    | type        | kinds      | meaning                                           |
 *   |--------|-------------|------------|---------------------------------------------------|
 *   | "k"    | uint        | all        | 1 shm, 2 cuda, 3 inline                           |
 *   | "dt"   | uint        | all        | desc_dtype_t                                      |
 *   | "sh"   | array uint  | all        | shape, 0..DESC_MAX_NDIM dims (ndim = array size)  |
 *   | "n"    | uint64      | all        | byte length = prod(shape) * dtype size            |
 *   | "pool" | str <= 63   | shm, cuda  | pool name (shm object "/hm.<name>")               |
 *   | "pid"  | uint64      | shm, cuda  | pool incarnation (random per pool_create)         |
 *   | "ns"   | uint        | shm, cuda  | slots in the pool                                 |
 *   | "sb"   | uint64      | shm, cuda  | bytes per slot                                    |
 *   | "sl"   | uint        | shm, cuda  | slot index (< ns)                                 |
 *   | "g"    | uint        | shm, cuda  | slot generation (stale RELEASEs are ignored)      |
 *   | "o"    | uint64      | shm, cuda  | byte offset inside the slot                       |
 *   | "rel"  | str <= 255  | shm, cuda  | producer's release endpoint (PULL), may be ""     |
 *   | "mh"   | bin 64      | cuda       | cudaIpcMemHandle_t of the whole pool              |
 *   | "eh"   | bin 64      | cuda       | cudaIpcEventHandle_t of this slot's event         |
 *   | "d"    | bin n       | inline     | the bytes themselves (<= DESC_MAX_INLINE)         |
 *
 *   "p" values: int (int64), float32/float64 (stored as double), str (<= DESC_MAX_STR bytes),
 *   array of ints each fitting int32 (<= DESC_MAX_I32S elements).  Keys are <= 31 bytes.
 *
 * Usage:
 *   desc_t d;
 *   desc_init(&d, DESC_REQUEST, req_id, 0);
 *   desc_set_i64(&d, "seed", 42);  desc_set_f64(&d, "temperature", 1.0);
 *   char *buf; size_t n;
 *   if (desc_encode(&d, &buf, &n) != HM_OK) ...;   // buf is malloc'd, caller free()s
 *   desc_free(&d);
 *   ...
 *   desc_t in;
 *   if (desc_decode(buf, n, &in) != HM_OK) LOG_WARN("bad descriptor: %s", hm_errmsg());
 *   int64_t seed; if (desc_get_i64(&in, "seed", &seed) != HM_OK) ...;
 *   desc_free(&in);
 */
#ifndef HM_DESC_H
#define HM_DESC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HM_DESC_VERSION 1

#define DESC_MAX_NDIM 8
#define DESC_MAX_PARAMS 128
#define DESC_MAX_KEY 31                    /* bytes, without the NUL */
#define DESC_MAX_STR ((1u << 20) + 4096)  /* bytes of a string parameter: 1 MiB of lyrics and change */
#define DESC_MAX_I32S 65536                /* elements of an int32 array parameter */
#define DESC_MAX_POOL_NAME 63
#define DESC_MAX_ENDPOINT 255
#define DESC_MAX_INLINE (16u << 20)        /* bytes carried inside a descriptor */
#define DESC_MAX_BYTES ((uint64_t)1 << 40) /* any byte length / slot size / offset */
#define DESC_MAX_WIRE (DESC_MAX_INLINE + (1u << 20)) /* an encoded descriptor */
#define DESC_IPC_HANDLE_BYTES 64

typedef enum {
    DESC_NONE = 0,
    /* data path */
    DESC_REQUEST = 1, /* client -> tokenizer: a song request (params) */
    DESC_PROMPT,      /* tokenizer -> draft-verifier: prompt rows */
    DESC_HIDDEN,      /* backbone -> draft-verifier: hidden state(s) h */
    DESC_FRAMES,      /* draft-verifier -> backbone / flow-matching: codes */
    DESC_LATENTS,     /* flow-matching -> vocoder */
    DESC_AUDIO_DONE,  /* vocoder -> client: file written */
    DESC_RELEASE,     /* consumer -> producer: slot may be reused */
    DESC_ERROR,       /* any -> requester: params "error" (str) */
    /* control (every stage's control socket) */
    DESC_HEALTH,
    DESC_STATS,
    DESC_DRAIN,
    DESC_SHUTDOWN,
    DESC_HEARTBEAT,
    DESC_REPLY, /* answer to a control request (params carry the result) */
    /* backbone operations (DEALER/ROUTER edge) */
    DESC_PREFILL,
    DESC_EXTEND,
    DESC_ROLLBACK,
    DESC_FREE,
    DESC_CANCEL, /* abandon a request everywhere */
    DESC_TYPE_COUNT
} desc_type_t;

typedef enum {
    DESC_DT_U8 = 0,
    DESC_DT_I16,
    DESC_DT_I32,
    DESC_DT_I64,
    DESC_DT_F16,
    DESC_DT_BF16,
    DESC_DT_F32,
    DESC_DT_COUNT
} desc_dtype_t;

typedef enum { DESC_BUF_NONE = 0, DESC_BUF_SHM = 1, DESC_BUF_CUDA = 2, DESC_BUF_INLINE = 3 } desc_buf_kind_t;

typedef struct {
    desc_buf_kind_t kind;            /* DESC_BUF_NONE: the descriptor has no buffer */
    desc_dtype_t dtype;
    uint32_t ndim;
    uint64_t shape[DESC_MAX_NDIM];
    uint64_t length;                 /* bytes */
    /* shm / cuda */
    char pool[DESC_MAX_POOL_NAME + 1];
    uint64_t pool_id;
    uint32_t nslots;
    uint64_t slot_bytes;
    uint32_t slot, gen;
    uint64_t offset;
    char release_ep[DESC_MAX_ENDPOINT + 1];
    uint8_t mem_handle[DESC_IPC_HANDLE_BYTES];   /* cuda only */
    uint8_t event_handle[DESC_IPC_HANDLE_BYTES]; /* cuda only */
    /* inline: owned by the descriptor (freed by desc_free) */
    uint8_t *data;
} desc_buf_t;

typedef enum { DESC_P_I64 = 1, DESC_P_F64, DESC_P_STR, DESC_P_I32S } desc_ptype_t;

typedef struct {
    char key[DESC_MAX_KEY + 1];
    desc_ptype_t type;
    int64_t i;
    double f;
    char *s;       /* owned, NUL-terminated */
    int32_t *v;    /* owned */
    uint32_t n;    /* elements of v */
} desc_param_t;

typedef struct {
    uint32_t version;
    desc_type_t type;
    uint64_t req_id, seq;
    desc_buf_t buf;
    uint32_t nparams;
    desc_param_t *params; /* owned, capacity grows to DESC_MAX_PARAMS */
    uint32_t cap;
} desc_t;

/* Zero the descriptor and set version/type/ids.  Never fails.  Pair with desc_free. */
void desc_init(desc_t *d, desc_type_t type, uint64_t req_id, uint64_t seq);
/* Free everything the descriptor owns (params, inline bytes); leaves it as after desc_init
 * with DESC_NONE.  Safe on a zeroed descriptor and twice in a row. */
void desc_free(desc_t *d);

/* Take over everything src owns (src is left as after desc_init with DESC_NONE): how a stage
 * callback keeps a received descriptor past the call (the loop then frees an empty one). */
void desc_move(desc_t *dst, desc_t *src);
/* Deep copy into a fresh dst (caller desc_free()s it).  Never fails. */
void desc_copy(desc_t *dst, const desc_t *src);

/* Parameters.  Setting an existing key replaces its value.  HM_ERR (with message) when the key
 * is too long, the value too big, or DESC_MAX_PARAMS would be exceeded. */
int desc_set_i64(desc_t *d, const char *key, int64_t v);
int desc_set_f64(desc_t *d, const char *key, double v);
int desc_set_str(desc_t *d, const char *key, const char *s);
int desc_set_i32s(desc_t *d, const char *key, const int32_t *v, uint32_t n);
/* NULL when absent.  The pointer is valid until the descriptor is changed or freed. */
const desc_param_t *desc_param(const desc_t *d, const char *key);
/* Typed getters: HM_ERR "param 'k' missing" / "param 'k' is a str, want int" otherwise.
 * desc_get_f64 accepts an int too.  *s / *v point into the descriptor (not copied). */
int desc_get_i64(const desc_t *d, const char *key, int64_t *out);
int desc_get_f64(const desc_t *d, const char *key, double *out);
int desc_get_str(const desc_t *d, const char *key, const char **out);
int desc_get_i32s(const desc_t *d, const char *key, const int32_t **v, uint32_t *n);
/* Defaults when absent (still HM_ERR on a wrong type, which the caller should reject). */
int64_t desc_i64_or(const desc_t *d, const char *key, int64_t dflt);
double desc_f64_or(const desc_t *d, const char *key, double dflt);

/* Describe a tensor: sets dtype/shape/length of d->buf (kind unchanged).  HM_ERR on ndim out of
 * range or a byte length above DESC_MAX_BYTES. */
int desc_set_tensor(desc_t *d, desc_dtype_t dt, uint32_t ndim, const uint64_t *shape);
/* Make the buffer inline: copies len bytes (must equal the tensor's byte length set by
 * desc_set_tensor) into the descriptor.  HM_ERR when len mismatches or exceeds DESC_MAX_INLINE. */
int desc_set_inline(desc_t *d, const void *data, uint64_t len);

/* Encode to msgpack.  *out is malloc'd (caller free()s); HM_ERR if the descriptor is not valid
 * (the same rules as decode), so a stage never sends what its peer would reject. */
int desc_encode(const desc_t *d, char **out, size_t *len);
/* Decode and validate untrusted bytes.  On HM_OK *d owns its params/inline data (desc_free);
 * on HM_ERR *d is left freed/zeroed and hm_errmsg() says what was wrong.  Allocation is bounded
 * by a small multiple of len; len > DESC_MAX_WIRE is rejected before parsing. */
int desc_decode(const void *buf, size_t len, desc_t *d);
/* Validate the descriptor's structure (what decode checks after parsing). */
int desc_validate(const desc_t *d);
/* The buffer must lie inside a pool of nslots slots of slot_bytes each (the geometry the
 * consumer learned when it mapped the pool, not the one the descriptor claims): slot < nslots,
 * offset + length <= slot_bytes without overflow, and the descriptor's own ns/sb must agree. */
int desc_check_bounds(const desc_t *d, uint32_t nslots, uint64_t slot_bytes);

size_t desc_dtype_size(desc_dtype_t dt); /* 0 for an unknown dtype */
const char *desc_dtype_name(desc_dtype_t dt);
const char *desc_type_name(desc_type_t t); /* "?" for unknown */
/* Deep equality (used by tests and the fuzzer's round-trip check). */
int desc_equal(const desc_t *a, const desc_t *b);

#ifdef __cplusplus
}
#endif

#endif
