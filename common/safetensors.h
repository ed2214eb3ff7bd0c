/* safetensors.h - strict, mmap-based reader (single file or sharded) and an atomic writer.
 *
 * Format: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets:
 * [begin, end]}, "__metadata__": {...}}, then the data region.  Every tensor is validated on
 * open: known dtype, shape product x dtype size == end - begin, range inside the data region,
 * no two ranges overlap.  A file that fails is rejected with a message naming the file and the
 * tensor.  Tensors point into the mmap: valid until st_close(). */
#ifndef HM_SAFETENSORS_H
#define HM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ST_MAX_DIMS 8

typedef enum {
    ST_BOOL, ST_U8, ST_I8, ST_I16, ST_U16, ST_I32, ST_U32, ST_I64, ST_U64,
    ST_F16, ST_BF16, ST_F32, ST_F64, ST_F8_E4M3, ST_F8_E5M2, ST_DTYPE_COUNT
} st_dtype;

typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    const void *data; /* into the mapping; little-endian */
    size_t nbytes;
    int used;         /* set by st_get*(): lets st_report_unused() list what no one asked for */
} st_tensor;

typedef struct st_file st_file;

/* Open `path`: a .safetensors file, a model.safetensors.index.json, or a directory holding either
 * (model.safetensors, or model.safetensors.index.json with its shards, or else every
 * *.safetensors in it).  *out is owned by the caller (st_close). */
int st_open(const char *path, st_file **out);
/* Parse an in-memory image (no copy: `data` must outlive the st_file).  Used by the fuzzer. */
int st_open_mem(const void *data, size_t len, const char *label, st_file **out);
void st_close(st_file *f);

size_t st_count(const st_file *f);
st_tensor *st_at(st_file *f, size_t i);
st_tensor *st_find(st_file *f, const char *name);

/* Look a tensor up and check its shape (ndim < 0: any shape; shape NULL: only the rank).  Marks it used.  Errors name the
 * tensor and the expected/actual shape: "tensor 'x.weight': shape [3, 4], expected [4, 4]". */
int st_get(st_file *f, const char *name, int ndim, const int64_t *shape, st_tensor **out);
/* Convert any numeric dtype to f32 / i32 (dst has t->numel elements). */
int st_to_f32(const st_tensor *t, float *dst);
int st_to_i32(const st_tensor *t, int32_t *dst);
/* st_get + allocate + convert; NULL on error.  Caller frees. */
float *st_load_f32(st_file *f, const char *name, int ndim, const int64_t *shape);
/* Convenience for shapes written inline: st_load_f32v(f, "w", 2, (int64_t[]){out, in}) */

/* Check that every name in `names` exists; one error message lists all missing names. */
int st_require(st_file *f, const char *const *names, size_t n);
/* Log (warn) every tensor not fetched via st_get*, except names starting with one of the
 * `ignore_prefixes` or containing one of `ignore_substrings`.  Returns how many were listed. */
int st_report_unused(st_file *f, const char *const *ignore, size_t n_ignore);

const char *st_dtype_name(st_dtype d);
size_t st_dtype_size(st_dtype d);
int st_dtype_parse(const char *s, st_dtype *out);

/* Writer: tensors are written in the order given, with optional metadata (string pairs).  The
 * file appears atomically (written to "<path>.tmp.<pid>", fsync'd, renamed). */
typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
} st_wtensor;
int st_write(const char *path, const st_wtensor *t, size_t n, const char *const *meta_kv, size_t n_meta);

#ifdef __cplusplus
}
#endif

#endif
