/* mkmodel.h - random-weight model folders for tests, demos and benchmarks: a streaming
 * safetensors writer (tensor by tensor, chunk by chunk, so a 3B model never sits in memory) and
 * the hook through which codec generation plugs into bin/mkmodel. */
#ifndef HM_MKMODEL_H
#define HM_MKMODEL_H

#include <stdint.h>

#include "safetensors.h"

/* One tensor to generate: values mean + std * U(-sqrt3, sqrt3) (uniform with that standard
 * deviation), except entries whose index along axis `zero_axis` is >= zero_from, which are 0
 * (zero_axis < 0: none).  The stream of values depends only on (seed, name). */
typedef struct {
    char name[192];
    int ndim;
    int64_t shape[4];
    float mean, std;
    int zero_axis, zero_from;
} mk_tensor;

/* Write `n` tensors to `path` in `dtype` (ST_BF16, ST_F16 or ST_F32), atomically
 * ("<path>.tmp" then rename).  HM_ERR with a message on I/O failure. */
int mk_write_safetensors(const char *path, const mk_tensor *t, int n, st_dtype dtype,
                         uint64_t seed);

/* Codec hook: writes MODEL_DIR/HeartCodec-oss/{config.json, model.safetensors} for the preset.
 * bin/mkmodel calls it for --codec.  The default (weak) definition in main.c only reports that
 * codec generation is not implemented; the codec owner adds a strong definition in another
 * .c file in tools/mkmodel (every one is linked into bin/mkmodel) - main.c needs no edit. */
int mkmodel_write_codec(const char *model_dir, const char *preset, uint64_t seed, st_dtype dtype);

#endif
