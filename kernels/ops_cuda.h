/* ops_cuda.h - C-callable entries of the CUDA ops of the language model (the kernels/ .cu files).
 * Each op has a CPU twin in ops_cpu.h (tests/gpu_ops.c checks them against each other).
 * Conventions: weights and KV caches are bf16 (HMC_BF16) or fp32 (HMC_F32, the exactness mode);
 * activations handed between ops are fp32 unless a field says otherwise; all accumulation, norms,
 * rotary angles and softmax are fp32.  Every entry only enqueues work on `stream` (no host sync,
 * graph-capturable) and returns HM_OK, or HM_ERR with "file:line: ..." for a bad argument or a
 * failed launch.  Pointers are device pointers unless named host_*.  The launchers keep small
 * per-kernel caches (shared-memory attribute, occupancy, cuBLASLt plans): call them from one
 * thread at a time. */
#ifndef HM_OPS_CUDA_H
#define HM_OPS_CUDA_H

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* HMC_FP8 / HMC_NVFP4 are weight-only formats (GEMV, dequantise; layouts in kernels/gemv_quant.cu):
 * fp8 e4m3 with an fp32 scale per output row; NVFP4 e2m1 pairs + an e4m3 scale per 16 values in the
 * same allocation + one fp32 scale per tensor.  hmc_dtype_size is per element for bf16/f32/fp8 only. */
typedef enum { HMC_BF16 = 0, HMC_F32 = 1, HMC_FP8 = 2, HMC_NVFP4 = 3 } hmc_dtype;
size_t hmc_dtype_size(hmc_dtype t);

/* ---- GEMV (decode path, kernels/gemv.cu) ------------------------------------------------------
 * y[r, n] (+)= Σ_k in(x)[r, k] · W[n, k]   for r < rows (1..4), n < N.  W is [N, K] row-major.
 * in(x) is x itself (HMC_IN_PLAIN), RMSNorm(x row) · norm_scale (HMC_IN_RMSNORM), or
 * silu(x[r, k]) · x[r, K + k] (HMC_IN_SWIGLU: x rows hold gate then up, 2K wide).
 * K must be a multiple of 8 (16-byte weight loads); fp8 weights carry one fp32 scale per row. */
enum { HMC_IN_PLAIN = 0, HMC_IN_RMSNORM = 1, HMC_IN_SWIGLU = 2 };
typedef struct {
    const void *W; hmc_dtype wdt; int N, K;
    const float *w_scale;          /* fp8: [N] per-output-channel scale; nvfp4: the one tensor scale */
    const float *x; int ldx; int rows;
    int in_mode; const float *norm_scale; float eps;
    float *y; int ldy; int accumulate; /* 1: y += result (residual add) */
    int variant;                       /* 0: auto; 1..HMC_GEMV_VARIANTS: a fixed kernel shape (benchmarks) */
    int out_swiglu;                    /* 1: W rows interleave gate/up (w1 row i = 2i, w3 row i = 2i+1);
                                          y[r, i] = silu(gate_i) · up_i, N/2 outputs (no accumulate) */
    /* Optional, zero when unused (bf16/f32/fp8 kernels of gemv.cu; variants 1-6): */
    const void *pf; size_t pf_bytes;   /* L2 prefetch hint: blocks that have finished their rows ask L2
                                          for a share of [pf, pf + pf_bytes) (the next op's weights;
                                          slower in a whole frame on an H100: the engine passes none) */
    const struct hmc_rope_args *rope;  /* the qkv projection: y rows are (H + 2 KVH) hd wide, rows =
                                          B T; q and k pairs are rotated (as hmc_rope_append, its qkv
                                          field unused) and k, v appended to the caches */
} hmc_gemv_args;
#define HMC_GEMV_VARIANTS 7
/* Cap on resident GEMV blocks per SM (default 2; 1 would leave room for the next op's blocks to
 * prefetch under programmatic dependent launch, but measured slower).  Benchmark knob. */
void hmc_gemv_set_blocks_per_sm(int n);
/* Use kernel variant v for every auto call (0: back to the auto choice).  Benchmark knob. */
void hmc_gemv_force_variant(int v);
/* Rounds of its own upcoming rows a GEMV block asks L2 for before it waits for the previous
 * kernel (default 0: off).  Tuning knob, read at launch (graph capture). */
void hmc_gemv_set_self_prefetch(int rounds);
/* 1: the double-buffered variants (1, 3, 5) also issue their second step's loads before waiting
 * for the previous kernel (default 0).  Tuning knob, read at launch. */
void hmc_gemv_set_early_loads(int on);
/* 1 (default; HM_GEMV_EVICT_FIRST=0 turns it off): the decode GEMVs (bf16, fp8, NVFP4) load their
 * weights with an L2 evict-first policy, 0: evict-normal.  Read at launch (graph capture). */
int hmc_gemv_evict_first(void);
void hmc_gemv_set_evict_first(int on);
int hmc_gemv(const hmc_gemv_args *a, cudaStream_t stream);

/* Quantize a bf16 weight [N, K] to fp8 e4m3 with one fp32 scale per output row
 * (scale = max|row| / 448, w8 = w / scale rounded to nearest). */
int hmc_quantize_fp8(const void *W_bf16, int N, int K, void *W8, float *scale, cudaStream_t stream);

/* ---- quantised weights (kernels/gemv_quant.cu) ------------------------------------------------
 * hmc_gemv sends HMC_FP8 and HMC_NVFP4 here (same arguments; w_scale: [N] fp32 for fp8, one fp32
 * tensor scale for nvfp4; K a multiple of 16 (fp8) or 32 (nvfp4)).  Activations are rounded to f16
 * (per-row power-of-two scaled) for the tensor cores: expect ~3e-4 relative error on top of the
 * weights' own.  variant: a fixed kernel shape of the kernel hmc_gemv_quant_set_impl selects
 * (benchmarks; 0 = auto).  hmc_gemv_args.rope is honoured (the streaming kernel's epilogue, else
 * hmc_rope_append after the GEMV). */
int hmc_gemv_quant(const hmc_gemv_args *a, cudaStream_t stream);
void hmc_gemv_quant_set_blocks_per_sm(int n);
/* 1: each warp asks L2 for the rest of its K segment (and the next tile's) ahead of its loads
 * (cp.async.bulk.prefetch); 0 (default, faster in a whole frame): off.  Benchmark knob, read at launch. */
void hmc_gemv_quant_set_self_prefetch(int on);
/* 1: several independent MMA accumulator chains per warp (2 fp8, 4 nvfp4) instead of one; 0
 * (default: the measured kernels).  Benchmark knob, read at launch. */
void hmc_gemv_quant_set_multi_acc(int on);
/* Which decode kernel: 0 (default) per type, the measured faster one (fp8: the streaming kernel,
 * variant 1..12; NVFP4: the 8-row kernel, variant 1..4 = 1/2/4/8 warps per tile); 1 the 8-row
 * kernel, 2 the streaming kernel for both (see gemv_quant.cu).  A/B knob, read at launch. */
void hmc_gemv_quant_set_impl(int k);
/* Cap on the streaming kernel's resident blocks per SM (n <= 0: the default, 2; shared memory may
 * allow fewer).  Benchmark knob, read at launch. */
void hmc_gemv_quant_set_stream_blocks_per_sm(int n);
/* The streaming kernel's auto shape: 0 (default) or an alternative rule 1..4 (gemv_quant.cu,
 * launch_v3).  A/B knob for whole frames, read at launch. */
void hmc_gemv_quant_set_auto_rule(int r);
/* Bytes of an [N, K] weight of type t (nvfp4: values + block scales) and the number of fp32
 * scales that go with it (fp8: N, nvfp4: 1, else 0). */
size_t hmc_weight_bytes(hmc_dtype t, int N, int K);
size_t hmc_weight_scales(hmc_dtype t, int N);
/* Quantize a bf16 weight [N, K] (K % 32 == 0) to NVFP4: tensor scale = amax / (6 * 448), block scale
 * = e4m3(block amax / 6 / tensor scale), values e2m1 round-to-nearest.  Wq: hmc_weight_bytes
 * bytes; tscale: one fp32 (device). */
int hmc_quantize_nvfp4(const void *W_bf16, int N, int K, void *Wq, float *tscale, cudaStream_t stream);
/* Re-lay, in place, the e2m1 values of an NVFP4 weight [N, K] (the first N·K/2 bytes of Wq; the
 * block scales do not move) into the decode GEMV's layout: each 4-byte word's bits permuted as
 * kernels/wquant.h wq_nvfp4_pack says.  hmc_gemv and hmc_dequantize* take NVFP4 weights only in
 * that layout; hmc_gemm_nvfp4 takes them as hmc_quantize_nvfp4 writes them. */
int hmc_nvfp4_pack(void *Wq, int N, int K, cudaStream_t stream);
/* out [N, K] bf16 = the weight Wq of type t (fp8 or nvfp4, the GEMV layout) with its scales
 * (prefill's GEMM input). */
int hmc_dequantize(const void *Wq, hmc_dtype t, const float *scale, int N, int K, void *out_bf16, cudaStream_t stream);
/* The same for rows n0 .. n0 + rows - 1 of the [N, K] weight -> out [rows, K] (prefill in row
 * chunks, so that the scratch holds a part of the largest matrix). */
int hmc_dequantize_rows(const void *Wq, hmc_dtype t, const float *scale, int N, int K, int n0, int rows,
                        void *out_bf16, cudaStream_t stream);
/* Blackwell (sm_100 / sm_120, cuBLAS >= 12.8) NVFP4 x NVFP4 GEMM through cuBLASLt's block-scaled
 * path: y[M, N] (+)= x[M, K] · W[N, K]ᵀ with both operands NVFP4 as hmc_quantize_nvfp4 writes them
 * (x quantised the same way), their block scales re-laid into cuBLASLt's 128x4 tiles by
 * hmc_nvfp4_swizzle_scales (hmc_nvfp4_swizzled_bytes each) and their tensor scales (device).  Built
 * here, NOT run: on other devices it returns HM_ERR; the engine's prefill does not call it yet. */
size_t hmc_nvfp4_swizzled_bytes(int rows, int K);
int hmc_nvfp4_swizzle_scales(const void *Wq, int rows, int K, void *out, cudaStream_t stream);
int hmc_gemm_nvfp4(const void *xq, const void *x_sw, const float *x_ts, const void *wq, const void *w_sw,
                   const float *w_ts, float *y, int M, int N, int K, int accumulate, cudaStream_t stream);

/* ---- GEMM (prefill, kernels/gemm.cu, cuBLASLt; descriptors + heuristic cached per shape) ------
 * y[M, N] (+)= x[M, K] · W[N, K]ᵀ with x and W of type `dt` (bf16 or fp32), y fp32.
 * Not thread-safe (one shared cache); the workspace is owned by the module. */
int hmc_gemm(const void *x, const void *W, hmc_dtype dt, float *y, int M, int N, int K, int accumulate,
             cudaStream_t stream);
/* The same with y's row stride ldy >= N (the columns of a wider output, e.g. a row chunk of W). */
int hmc_gemm_ld(const void *x, const void *W, hmc_dtype dt, float *y, int ldy, int M, int N, int K, int accumulate,
                cudaStream_t stream);
void hmc_gemm_shutdown(void);
/* cuBLASLt's workspace in MiB for this process (default 16; the environment's HM_GEMM_WS_MB wins);
 * takes effect only before the first GEMM.  The codec stages take 4: their GEMMs are large, and
 * the flow-matching window measured the same (114.6 / 114.3 ms, H100). */
void hmc_gemm_set_workspace_mb(int mib);
/* FP8 prefill GEMM (sm_90+): y[M, N] (+)= (xq[M, K] · xs[m]) · (Wq[N, K] · ws[n])ᵀ with xq and Wq
 * e4m3 (as hmc_quantize_fp8 writes them: the activations quantised per row the same way), x_scale
 * [M] and w_scale [N] fp32 (device), fp32 accumulate.  K % 16 == 0, N % 4 == 0, pointers 16-byte
 * aligned.  The scales go to cuBLASLt's outer-vector scale mode where it has an algorithm, else a
 * unit-scale GEMM + an epilogue kernel, which for accumulate needs work [M, N] fp32 (may be NULL
 * otherwise).  hmc_gemm_fp8_set_mode: 0 auto, 1 outer-vector only (error if none), 2 epilogue
 * only (benchmarks); hmc_gemm_fp8_last_mode: the mode the last call took (1 or 2). */
int hmc_gemm_fp8(const void *xq, const float *x_scale, const void *Wq, const float *w_scale, float *y, int M, int N,
                 int K, int accumulate, float *work, cudaStream_t stream);
void hmc_gemm_fp8_set_mode(int mode);
int hmc_gemm_fp8_last_mode(void);

/* ---- elementwise (kernels/norm.cu) ----------------------------------------------------------- */
/* y[M, D] (type yt) = RMSNorm(x[M, D]) · scale (scale fp32 [D]). */
int hmc_rmsnorm(const float *x, const float *scale, void *y, hmc_dtype yt, int M, int D, float eps,
                cudaStream_t stream);
/* y[M, I] (type yt) = silu(gate_i) · up_i of gu rows 2I wide: gate then up (interleaved 0), or
 * gate_i, up_i at columns 2i, 2i+1 (interleaved 1, the engine's w1|w3 layout). */
int hmc_silu_mul(const float *gu, void *y, hmc_dtype yt, int M, int I, int interleaved, cudaStream_t stream);
/* y[n] (type yt) = x[n] (fp32) converted. */
int hmc_convert(const float *x, void *y, hmc_dtype yt, size_t n, cudaStream_t stream);
/* Fill n values of type t with a seeded uniform(-scale, scale) draw (random benchmark weights,
 * generated on the device: depends only on (seed, index)). */
int hmc_fill_random(void *p, hmc_dtype t, size_t n, uint64_t seed, float scale, cudaStream_t stream);

/* Shrinks what the current device's context reserves (kernels/device.cu: the per-thread stack
 * limit down to HMC_STACK_BYTES, or HM_STACK_BYTES; the driver raises it for a kernel that needs
 * more).  Each stage process calls it once before it loads its model.  HM_OK, or HM_ERR when no
 * device answers. */
#define HMC_STACK_BYTES 0
int hmc_context_trim(void);
/* HM_ERR (the message names the error) when the process's CUDA context is lost: the last runtime
 * error is one after which every call fails (an illegal address, a kernel fault, an MPS server
 * that terminated this client after another client's fault or died, ...), known as such or seen
 * by a query of the legacy stream failing too; HM_OK otherwise, and an error of one call (out of
 * memory) is cleared.  No synchronisation; the query only when an error is pending.  The stage
 * loop asks it after every turn and exits on HM_ERR, so the supervisor restarts the stage with a
 * fresh context (hm_stage_main, common/service.c). */
int hmc_context_check(void);
/* hmc_context_check after a query of the legacy stream, so the driver reports a context that is
 * gone even to a process that makes no other call (an idle stage, under MPS). */
int hmc_context_probe(void);
/* Launches a kernel that writes to an unmapped address on the legacy default stream: the context
 * is lost once it runs (fault injection for the recovery tests: HM_FAULT_INJECT, common/service.c). */
int hmc_fault_inject(void);

/* ---- RoPE + KV append (kernels/rope.cu) -------------------------------------------------------
 * qkv rows [B*T, (H + 2 KVH) hd] (fp32, row b*T + t) hold q, k, v of position pos0 + t where
 * pos0 = (pos_dev ? *pos_dev : 0) + pos_add (read on the device: graphs replay with a moving pos).
 * Rotates q in place (interleaved pairs, angles = pos · freqs[i], freqs fp32 [hd/2]) and writes
 * rotated k and v into the caches k_cache/v_cache [B][KVH][max_seq][hd] (type ct). */
typedef struct hmc_rope_args {
    float *qkv; int B, T, H, KVH, hd;
    const int *pos_dev; int pos_add;
    const float *freqs;
    void *k_cache, *v_cache; hmc_dtype ct; int max_seq;
} hmc_rope_args;
int hmc_rope_append(const hmc_rope_args *a, cudaStream_t stream);

/* ---- attention (kernels/attention.cu) ---------------------------------------------------------
 * GQA attention of T query positions (pos0 + t, pos0 as above) against the cache, causal:
 * query t sees keys 0 .. pos0 + t.  q read from qkv rows (ld = (H + 2 KVH) hd), out [B*T, H*hd]
 * fp32.  Flash-decoding: each query's keys are split in up to 64 chunks whose length follows
 * the current key count (read on the device), partial results and merge counters in `work`
 * (hmc_attention_work_bytes; zero it once after allocating, the kernel leaves the counters at
 * zero), merged by the last chunk to finish.  The grid is fixed by max_keys (so a graph can
 * replay it); chunks past the current keys exit. */
typedef struct {
    const float *qkv; int B, T, H, KVH, hd;
    const int *pos_dev; int pos_add;
    const void *k_cache, *v_cache; hmc_dtype ct; int max_seq;
    int max_keys;      /* upper bound of pos0 + T over the graph's life (<= max_seq) */
    float *out; float *work;
    const void *pf; size_t pf_bytes; /* optional L2 prefetch hint (e.g. the o projection's weights;
                                        slower in a whole frame on an H100: the engine passes none) */
    int early_keys;    /* 1: the caller vouches that *pos_dev and every cache row below pos0 were
                          written before the previous kernel in the stream could start (the
                          backbone's frame graph: earlier launches wrote them).  A T = 1 split
                          launch then reads them before waiting on that kernel (HM_ATTN_EARLY=0:
                          not); only q and the rows from pos0 on are read after the wait. */
} hmc_attn_args;
size_t hmc_attention_work_bytes(int B, int T, int H, int KVH, int hd, int max_keys);
/* Chunks per query at most (1..64, default 64: the work buffer is always sized for 64).  Tuning
 * knob, read at launch (graph capture). */
void hmc_attention_set_max_chunks(int n);
/* Decode launches (B*T <= 4) whose queries have at most max_keys keys (the launch's max_keys: the
 * depth decoder's) run in one pass (a block per query head if per_head, else per kv head; no
 * partial sums, no counter); max_keys 0: always the split path.  A launch that may have longer
 * queries (the backbone's graph, recorded for the longest context) takes the split path, or with
 * `any` a kernel that chooses per query on the device (one pass up to max_keys; slower on an
 * H100, docs/PERF.md).  Defaults 512, 1, 0, or the environment's HM_ATTN_SINGLE /
 * HM_ATTN_PER_HEAD / HM_ATTN_ANY at the first launch.  Read at launch (graph capture). */
void hmc_attention_set_single(int max_keys, int per_head, int any);
/* Decode launches (T = 1, head_dim <= 128) whose max_keys is at most blocks x keys_per_block:
 * the chunks of a (kv head, row) run as one thread-block cluster of `blocks` (8 or 16; 0 off)
 * and merge through distributed shared memory (no work buffer, counter or last-block merge).
 * keys_per_block <= 0 keeps the current value.  Defaults from HM_ATTN_CLUSTER (0),
 * HM_ATTN_CLUSTER_KEYS (64). */
void hmc_attention_set_cluster(int blocks, int keys_per_block);
/* Decode launches of the split kernel with head_dim <= 128: on (the default), a query with at
 * least min_keys keys (< 0: the default, 512) has its keys staged in shared memory by bulk
 * copies instead of warp loads into registers.  Defaults from HM_ATTN_BULK, HM_ATTN_BULK_MIN. */
void hmc_attention_set_bulk(int on, int min_keys);
int hmc_attention(const hmc_attn_args *a, cudaStream_t stream);
/* Diagnostics: HM_ATTN_STAMP=1 makes decode launches stamp their phases (%globaltimer);
 * this prints the last launch's (call after the work, it synchronises the device). */
void hmc_attention_stamp_report(FILE *f);
/* Diagnostics: stamp the phases of the GEMV launches made while on; print the last one's (the fp8
 * and NVFP4 kernels' stamps are compiled only with HM_GEMVQ_STAMPS defined). */
void hmc_gemv_set_stamp(int on);
int hmc_gemv_stamp_on(void);
/* HM_GEMV_Y_EARLY (default on): accumulating GEMVs read their old outputs right after the wait */
int hmc_gemv_y_early(void);
void hmc_gemv_stamp_report(FILE *f);
void hmc_gemv_quant_stamp_report(FILE *f);

/* ---- the decode layer stack as one persistent kernel (kernels/persist.cu) -----------------------
 * An experiment the engine leaves off (lm_cuda_tune.persist): slower than the separate kernels on
 * an H100 (docs/PERF.md).
 * A program of phases run by one block per SM with a grid barrier between phases: GEMV phases
 * (bf16 weights) and attention phases, over R = 1 or 2 activation rows (decode, T = 1).  Each
 * block streams its share of every GEMV's weight rows, in program order, through a ring of
 * shared-memory slots filled by bulk copies, so the weights of the next phases keep arriving
 * while a barrier, the attention or another block's tail is waited for.
 *   GEMV: y[r, n] (out) Σ_k in(x)[r, k] · W[n, k], n < N, in = x (HMC_IN_PLAIN) or RMSNorm(x) ·
 *   nscale (HMC_IN_RMSNORM); out: HMC_PP_STORE (=), HMC_PP_ADD (+=), HMC_PP_SWIGLU (rows 2i, 2i+1
 *   are gate, up: y[r, i] = silu(gate) · up), HMC_PP_ROPE (the qkv projection: rows are
 *   (H + 2 KVH) hd, interleaved q/k pairs rotated by the position, k and v appended to the
 *   caches, as hmc_gemv's rotary epilogue).
 *   ATTN: causal decode attention of the q rows in x (stride ldx: the qkv rows) against keys
 *   0 .. pos of the bf16 caches kc/vc ([R][KVH][max_seq][hd]), output y [R, H hd] (stride ldy).
 * pos = *pos_dev (if non-null) + pos_add.  Reads of one phase's output by the next use L2, so the
 * program may chain any phases whose shapes fit (hmc_persist_create checks and says why not). */
enum { HMC_PP_GEMV = 0, HMC_PP_ATTN = 1 };
enum { HMC_PP_STORE = 0, HMC_PP_ADD = 1, HMC_PP_SWIGLU = 2, HMC_PP_ROPE = 3 };
typedef struct {
    int type;
    const void *w; int N, K;               /* GEMV: bf16 [N, K], 16-byte aligned, K % 8 == 0 */
    const float *x; int ldx; int in_mode;  /* input rows (GEMV: in(x); ATTN: the qkv rows) */
    const float *nscale; float eps;
    float *y; int ldy; int out;
    int H, KVH, hd, max_seq;               /* HMC_PP_ROPE and ATTN */
    const float *freqs;                    /* HMC_PP_ROPE: [hd / 2] */
    const int *pos_dev; int pos_add;
    void *kc, *vc;
} hmc_pp_phase;
typedef struct hmc_persist hmc_persist;
/* Copy the program to the device and size its work buffers (attention partial sums, counters)
 * for R rows and queries of at most max_keys keys.  HM_ERR (nothing allocated) when a phase does
 * not fit the kernel. */
int hmc_persist_create(hmc_persist **out, const hmc_pp_phase *ph, int n, int R, int max_keys);
/* Enqueue the program (graph-capturable; programmatic dependent launch: the first weights are
 * streamed before the previous kernel has finished).  The grid is one block per SM and its
 * barriers spin, so every block must be able to run at once: not under an MPS limit on the
 * context's SMs (CUDA_MPS_ACTIVE_THREAD_PERCENTAGE). */
int hmc_persist_run(const hmc_persist *p, cudaStream_t stream);
void hmc_persist_destroy(hmc_persist *p);
/* Diagnostics: HM_PP_STAMP=1 at create makes every block stamp the end of each phase and its
 * pass of each barrier; this prints the last run's time per phase kind and the barriers' latency
 * (synchronises the device).  Knobs read at create: HM_PP_INFLIGHT (bulk copies in flight a
 * block, default 1), HM_PP_CHUNK_MIN (keys per attention chunk at least, default 64),
 * HM_PP_EVICT_FIRST=0 (no L2 evict-first hint on the weight copies), HM_PP_NOMATH=1 (the weight
 * stream alone, results garbage). */
void hmc_persist_stamp_report(const hmc_persist *p, FILE *f);

/* ---- embeddings (kernels/embed.cu) ------------------------------------------------------------
 * Prompt rows: x[b*S + s, D] = Σ_k mask[s,k] · audio[tok[s,k] + k·Va] + mask[s,nc] · text row,
 * where the text row is text[tok[s,nc]] for b = 0 and uncond (if non-NULL) for b = 1.
 * tok int32 [S, nc+1], mask u8 [S, nc+1]; tables of type wt. */
int hmc_embed_prompt(const int32_t *tok, const uint8_t *mask, int S, int B, int nc, int Va,
                     const void *audio, const void *text, const void *uncond, hmc_dtype wt, int D,
                     float *x, cudaStream_t stream);
/* One frame for every row: x[b, D] = Σ_k audio[codes[k] + k·Va] (codes device int32 [nc]). */
int hmc_embed_frame(const int32_t *codes, int B, int nc, int Va, const void *audio, hmc_dtype wt,
                    int D, float *x, cudaStream_t stream);
/* x[r, D] = audio[codes[ci] + ci·Va] (fp32) for rows r = r0, r0 + rstride, ... (count rows). */
int hmc_embed_code(const int32_t *codes, int ci, int Va, const void *audio, hmc_dtype wt, int D,
                   float *x, int r0, int rstride, int count, cudaStream_t stream);
/* Copy count rows of D floats: dst row i (stride ldd) = src row i (stride lds). */
int hmc_copy_rows(const float *src, int lds, float *dst, int ldd, int D, int count, cudaStream_t stream);
/* out [C, R] = the transpose of in [R, C], 16-bit values (bf16 bytes; not in place). */
int hmc_transpose16(const void *in, int R, int C, void *out, cudaStream_t stream);

/* ---- sampling (kernels/sample.cu) ---------------------------------------------------------------
 * logits [B, V] fp32 (V <= 16384) → g = l0 (B=1) or l1 + (l0 - l1)·cfg (B=2); writes g to
 * logits_out (if non-NULL), then draws one id exactly as kernels/sampling.c does: argmax for
 * topk == 1 or temperature <= 0 (lowest id on ties), else inverse CDF of the top-k (ties with the
 * k-th kept) softmax(g / temperature) in fp64, with the Philox uniform of (seed, *counter_dev,
 * slot).  forced >= 0 overrides the draw (teacher forcing).  Result into codes[slot].
 * Parameters are read from the device struct, written between graph replays (by no kernel of
 * the stream: the kernel reads them before waiting for its predecessor). */
typedef struct {
    float temperature, cfg_scale;
    int topk;
    uint32_t seed_lo, seed_hi;
    int forced[8];
} hmc_sample_params;
int hmc_sample(const float *logits, int B, int V, const hmc_sample_params *params_dev,
               const uint32_t *counter_dev, int slot, float *logits_out, int32_t *codes,
               cudaStream_t stream);
/* Which kernel hmc_sample launches from now on (graphs keep the one they recorded): 0 the
 * cluster sampler (default: 8 blocks of 256 threads), 1 the first exact version (A/B timing), 2
 * the single-pass one-block sampler with its phase profile (hmc_sample_profile), 3 the same
 * without the profile (the default before stop 22).  HM_SAMPLE_IMPL=N in the environment selects
 * one too.  All draw the same ids.  Returns the previous choice. */
int hmc_sample_set_impl(int impl);
/* Draws per path of the single-pass and cluster samplers since the last call, then resets them: [0] octave
 * bound (the fast path), [1] keep-all within 1024 entries, [2] radix select, [3] walk of the
 * whole vocabulary (argmax and forced draws are not counted).  For checkers. */
int hmc_sample_path_counts(unsigned long long out[4]);
/* Phase profile of impl 2 since the last call, then reset: [0..6] SM cycles summed over draws of
 * entry -> dependency wait -> loads, z and maximum -> octave passes -> gather -> kept -> index
 * order and weights -> sum and pick; [7] draws, [8] ns and [9] cycles entry to end (the clock). */
int hmc_sample_profile(unsigned long long out[10]);
/* *p += inc (a device counter, e.g. the position or the RNG counter advanced inside a graph). */
int hmc_add_counter(int *p, int inc, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif
