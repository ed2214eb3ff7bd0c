/* lm_cuda.h - the HeartMuLa language model on one CUDA GPU (MODEL.md §2), C-callable.
 *
 * An lm_cuda holds the weights on the device (bf16, or fp32 for the exactness mode); an
 * lm_cuda_req is one generation request: its KV caches for B = 1 (no CFG) or 2 rows (row 0
 * conditional, row 1 unconditional), its scratch buffers and its two CUDA graphs:
 *   backbone step  = embed the frame, all backbone layers at the current position, final norm
 *   depth frame    = codebook-0 head, CFG, sampling, depth decoder (fresh cache, positions 0..7),
 *                    the 7 audio heads with CFG and sampling: the 8 codes of a frame
 * Each graph is recorded on its second use (the first runs eagerly) and replayed after that; a
 * frame has no host synchronisation until the codes are copied back.
 *
 * Typical use (stages/backbone + stages/draft-verifier, or one process):
 *   lm_cuda_load(dir, &opts, &m); lm_cuda_req_new(m, 2, 8192, &r);
 *   lm_cuda_prefill(r, tok, mask, S, muq_index, NULL);
 *   loop: lm_cuda_frame(r, &samp, codes, NULL);  ...  lm_cuda_extend(r, NULL);
 * All functions return HM_OK or HM_ERR with hm_errmsg() naming file:line.  Not thread-safe per
 * request; requests of one model may live on different threads only if the cuBLASLt GEMM cache
 * (prefill) is not used concurrently. */
#ifndef HM_LM_CUDA_H
#define HM_LM_CUDA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "modelcfg.h" /* the lead's C header has no C++ guard */
#ifdef __cplusplus
}
#endif
#include "ops_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lm_cuda lm_cuda;
typedef struct lm_cuda_req lm_cuda_req;

/* Which half of the model a process loads (lm_cuda_opts.parts; 0 = both).  Backbone: backbone layers
 * + final norm, text / unconditional / audio embeddings, MuQ projection (lm_cuda_prefill,
 * lm_cuda_extend*, lm_cuda_copy_hidden).  Depth: codebook-0 head, audio embeddings (decoder input),
 * projection, decoder layers + norm, audio heads (lm_cuda_frame, lm_cuda_depth_frame*).  Calling an
 * entry of a half that is not loaded returns HM_ERR. */
enum { LM_CUDA_PART_BACKBONE = 1, LM_CUDA_PART_DEPTH = 2 };

typedef struct {
    hmc_dtype wdt;       /* HMC_BF16 (default, 0), HMC_F32 (holds the reference's fp32 numerics), or
                            HMC_FP8 / HMC_NVFP4: layer matrices and heads quantised on the device at
                            load from the bf16 values (embeddings, norms, KV caches stay bf16/fp32),
                            or taken as they are from a file of tools/quantize (docs/QUANTIZED.md;
                            it must be loaded at its own precision); fp8 prefill runs FP8 GEMMs on
                            per-row e4m3 activations (lm_cuda_tune.prefill_fp8), nvfp4 prefill
                            dequantises one matrix at a time into a bf16 scratch for cuBLASLt */
    const char *version; /* lm_cuda_load: HeartMuLa-oss-<version> (NULL: the only one) */
    unsigned parts;      /* LM_CUDA_PART_* (0: both) */
    int emb_device;      /* 1: the audio embeddings in device memory; 0 (default): in pinned host memory
                            the kernels read over the bus (a frame reads 8 + 7 rows of them, 0.4 GB at 3B
                            saved in each LM process); HM_LM_EMB_DEVICE=1 in the environment forces 1 */
} lm_cuda_opts;

/* Load MODEL_DIR/HeartMuLa-oss-<opts->version> (NULL opts or version: the only such folder; config +
 * safetensors) onto the current device.  opts may be NULL.  *out owned by the caller (lm_cuda_free). */
int lm_cuda_load(const char *model_dir, const lm_cuda_opts *opts, lm_cuda **out);
/* A model of cfg's shapes with seeded random weights generated on the device (benchmarks). */
int lm_cuda_random(const hm_lm_config *cfg, uint64_t seed, const lm_cuda_opts *opts, lm_cuda **out);
void lm_cuda_free(lm_cuda *m);
const hm_lm_config *lm_cuda_config(const lm_cuda *m);
/* Device bytes the model holds: weights and their scales of the loaded halves (+ the prefill
 * dequantise scratch of a quantised backbone), not the requests' caches. */
size_t lm_cuda_resident_bytes(const lm_cuda *m);
/* LM_CUDA_PART_* bits loaded. */
unsigned lm_cuda_parts(const lm_cuda *m);
/* Bytes of weights read per frame at the decode path (backbone once, decoder 7x, heads). */
double lm_cuda_frame_bytes(const lm_cuda *m);

/* A request of B rows (1 or 2) with room for max_seq backbone positions.  Owns its stream. */
int lm_cuda_req_new(lm_cuda *m, int B, int max_seq, lm_cuda_req **out);
void lm_cuda_req_free(lm_cuda_req *r);
/* Positions held in the backbone cache. */
int lm_cuda_pos(const lm_cuda_req *r);

/* Backbone over the S prompt rows (tok int32 [S, nc+1], mask u8 [S, nc+1], host memory), starting
 * at the current position.  muq_index: the MuQ slot row (-1: none); muq [muq_dim] host fp32 or
 * NULL (= zeros, so the slot gets muq_linear's bias).  Leaves the last hidden state for the next
 * lm_cuda_frame.  Synchronous. */
int lm_cuda_prefill(lm_cuda_req *r, const int32_t *tok, const uint8_t *mask, int S, int muq_index, const float *muq);
/* Backbone over one frame at the current position: codes [nc] host, or NULL for the frame that
 * the last lm_cuda_frame sampled (stays on the device).  Asynchronous (no host sync). */
int lm_cuda_extend(lm_cuda_req *r, const int32_t *codes);
/* Forget the last n positions (speculative drafts that the verifier rejected). */
int lm_cuda_rollback(lm_cuda_req *r, int n);

typedef struct {
    float temperature;      /* > 0 */
    int topk;               /* <= 1: argmax */
    float cfg_scale;        /* used when B == 2 */
    uint64_t seed;
    uint32_t counter;       /* RNG counter of this frame (e.g. the frame index) */
    const int32_t *forced;  /* NULL, or nc codes (>= 0 replaces the draw: teacher forcing) */
} lm_cuda_sampling;
/* Sample one frame from the last hidden state: codes [nc] (host) and, if logits is non-NULL, the
 * CFG-combined logits handed to the sampler, [nc][audio_vocab] fp32 (host).  Synchronous. */
int lm_cuda_frame(lm_cuda_req *r, const lm_cuda_sampling *s, int32_t *codes, float *logits);
/* Device pointer to the last hidden state [B, D] fp32 (after the final norm). */
const float *lm_cuda_hidden(const lm_cuda_req *r);

/* ---- the engine split along the process boundary (stages/backbone | stages/draft-verifier) ----
 * The backbone process drives a request with lm_cuda_prefill / lm_cuda_extend(codes != NULL) /
 * lm_cuda_rollback and never calls lm_cuda_frame; after each step it enqueues
 * lm_cuda_copy_hidden into its output buffer.  The draft-verifier process keeps a request (any
 * max_seq: its backbone cache is unused) per row count B and runs lm_cuda_depth_frame on the
 * hidden state it received.  Each process loads only its half (lm_cuda_opts.parts). */

/* Weight dtype of a pipeline.yaml `precision`: "" or "bf16" -> HMC_BF16, "fp32" -> HMC_F32,
 * "fp8" -> HMC_FP8, "nvfp4" -> HMC_NVFP4; any other is an error naming it. */
int lm_cuda_precision(const char *precision, hmc_dtype *out);
/* The request's CUDA stream (a cudaStream_t), for pool_record / pool_wait. */
void *lm_cuda_stream(const lm_cuda_req *r);
/* Enqueue on the request's stream a device-to-device copy of the last hidden state [B, D] fp32
 * into dst (device memory).  Asynchronous: record an event after it before another process reads. */
int lm_cuda_copy_hidden(lm_cuda_req *r, float *dst);
/* One frame from a hidden state produced elsewhere: h [B, D] fp32 device memory (B = the
 * request's rows) replaces the request's last hidden state, then as lm_cuda_frame (codes [nc] and
 * optional logits [nc][audio_vocab], host).  Work on h is ordered on lm_cuda_stream(r): make that
 * stream wait for h's producer first.  Synchronous: h may be reused when it returns.  Does not
 * need (or touch) the request's backbone cache or position. */
int lm_cuda_depth_frame(lm_cuda_req *r, const float *h, const lm_cuda_sampling *s, int32_t *codes, float *logits);

/* The hop without a host round trip (draft-verifier -> backbone):
 * lm_cuda_depth_frame_async = lm_cuda_depth_frame without the sync: enqueues the frame and, if
 * codes_dev is non-NULL, a device-to-device copy of its nc codes there (e.g. a cuda pool slot the
 * backbone reads; record the slot's event after it).  lm_cuda_frame_wait then copies the codes
 * (and optional logits) of the last frame to the host and synchronises.
 * lm_cuda_extend_dev = lm_cuda_extend with the codes in device memory (another process's slot:
 * make the request's stream wait for its producer first).  Codes are not validated on the host;
 * the embedding kernels clamp them into the table. */
int lm_cuda_depth_frame_async(lm_cuda_req *r, const float *h, const lm_cuda_sampling *s, int32_t *codes_dev);
int lm_cuda_frame_wait(lm_cuda_req *r, int32_t *codes, float *logits);
int lm_cuda_extend_dev(lm_cuda_req *r, const int32_t *codes_dev);

/* Profiling only: leave pieces out of the frame (results are garbage) to measure their cost
 * inside the graph.  Applies to graphs recorded afterwards (use a fresh request). */
enum { LM_CUDA_SKIP_ATTN = 1, LM_CUDA_SKIP_SAMPLE = 2, LM_CUDA_SKIP_BB_GEMV = 4, LM_CUDA_SKIP_DEC_GEMV = 8 };
void lm_cuda_set_skip(lm_cuda *m, unsigned mask);

/* Decode tuning, for A/B timing (gpu_lm frames).  The defaults are the best measured on an H100
 * (docs/PERF.md): {1, 0, 0, 0, 0, 1, 32}; the L2 prefetch hints (pf_next_kb, attn_pf, self_pf)
 * were slower in a whole frame and stay off.  Set before lm_cuda_req_new: a request's eager
 * first frame and its graphs use the settings of their time. */
typedef struct {
    int fuse_rope;    /* 1: rotary + KV append in the qkv GEMV's epilogue (every weight type) */
    int pf_next_kb;   /* GEMV blocks that finish early ask L2 for the next GEMV's first KB (0: off) */
    int attn_pf;      /* 1: attention asks L2 for the whole o projection while it runs */
    unsigned self_pf; /* GEMVs whose blocks ask L2 for their second round of rows before waiting:
                         bit 0 qkv, 1 o, 2 w1|w3, 3 w2, 4 heads + projection (0: none) */
    int variant;      /* 0: auto; 1..6 forces that GEMV kernel variant (bf16/f32 weights) */
    int early;        /* 1: double-buffered GEMV variants load two steps before waiting */
    int attn_chunks;  /* decode attention: key chunks per query at most (0: the op's 64) */
    int prefill_fp8;  /* fp8 weights: 1 = prefill GEMMs in FP8 (activations quantised to e4m3 per
                         row, hmc_gemm_fp8), 0 = dequantise each matrix to bf16 + bf16 GEMM; the
                         default is the faster measured one, HM_LM_FP8_PREFILL=gemm|dequant at load
                         overrides it.  Read at each prefill. */
    int persist;      /* decode layer stacks as one persistent kernel each (kernels/persist.cu, bf16
                         weights, B*T <= 2): bit 0 the backbone, bit 1 the depth decoder's steps 2..;
                         default HM_LM_PERSIST at load, else LM_CUDA_PERSIST_DEFAULT.  Read at
                         lm_cuda_req_new. */
} lm_cuda_tune;
void lm_cuda_get_tune(const lm_cuda *m, lm_cuda_tune *t);
/* Diagnostics: the phase times of the request's last persistent backbone and decoder runs
 * (HM_PP_STAMP=1 at lm_cuda_req_new; hmc_persist_stamp_report). */
void lm_cuda_persist_stamp_report(const lm_cuda_req *r, FILE *f);
void lm_cuda_set_tune(lm_cuda *m, const lm_cuda_tune *t);

/* Per-piece GPU time of one frame (extend + frame), run eagerly with an event around each op. */
#define LM_CUDA_PROF_MAX 24
#define LM_CUDA_PROF_OPS 4096
typedef struct {
    int n;
    const char *name[LM_CUDA_PROF_MAX];
    double ms[LM_CUDA_PROF_MAX];
    double bytes[LM_CUDA_PROF_MAX];  /* weight bytes the piece reads (0 if not a GEMV) */
    /* the ops in launch order (a timeline tool maps each op's kernels to these, tests/gpu_timeline.c) */
    int nop;
    unsigned char op_piece[LM_CUDA_PROF_OPS]; /* index into name[] */
    float op_bytes[LM_CUDA_PROF_OPS];
    float op_ms[LM_CUDA_PROF_OPS];
} lm_cuda_prof;
int lm_cuda_profile_frame(lm_cuda_req *r, const lm_cuda_sampling *s, lm_cuda_prof *out);

#ifdef __cplusplus
}
#endif
#endif
