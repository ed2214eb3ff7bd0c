/* attention.cu - GQA attention against the KV cache for decode (T = 1) and prefill (T query
 * positions, causal), flash-decoding style.  CPU twin: cpu_attention.
 *
 * The keys of a query are split into nch chunks (nch fixed at launch, so a graph can replay it;
 * the chunk length follows the current number of keys, read on the device, so short and long
 * contexts both spread over the machine).
 * One block per (key chunk, query position t, kv head, batch row); its
 * 4 warps stride over the chunk's keys, KU keys at a time (K and V rows loaded together so
 * several loads are in flight), keeping an online softmax (max m, sum l, weighted V sum) for each
 * of the G query heads sharing the kv head; the warps then merge in shared memory and write
 * acc[hd] and (m, l) per head to `work` (two regions: all chunk sums, then all (m, l)).  The last chunk block of a (row, kv head) to finish (a
 * counter in `work`, back to 0 afterwards) merges the chunks and writes the output, so decode
 * attention is one launch; a single chunk writes its output directly.
 * Lane mapping: lane owns dims lane*4 + 128*j (j < J), so hd must be a multiple of 4 and ≤ 128*J.
 * A warp's next KU keys are loaded before the current ones are scored (hd <= 128: two steps in
 * flight), q is loaded while the position is still on its way, and the final merge loads every
 * chunk's (m, l) in one round, turns them into weights in shared memory, then reads the chunk
 * sums as float4, 8 chunks at a time all in flight.  Decode launches with hd <= 128 stage the
 * keys of a long query (>= 512 by default) in shared memory instead: 32-key tiles of K and V, two
 * in flight, each one bulk copy (the register path's ~2 warp steps in flight per warp capped
 * the long-context rate at ~30% of copy bandwidth); those launches have 8 warps a block over
 * half the chunks.  HM_ATTN_STAMP=1 records each phase's time
 * per block (hmc_attention_stamp_report), which is how both were found (docs/PERF.md).
 * Optionally blocks first ask L2 for a share of the next op's weights (pf; measured slower in a
 * whole frame on an H100, so the engine leaves it off).
 * Decode (B*T <= 4) launches whose queries have at most `single` keys (the depth decoder's <= 8)
 * use a second instance: 8 warps of 1 key (hd > 128; 16 warps of 4 keys up to 128), a block per
 * query head (or per kv head), all keys in one pass: warps split the keys, one shared-memory
 * merge, the output written directly (no partial sums, no counter), the first keys loaded
 * together with the position.  The position is only known on the device, so the instance can
 * also choose per query (one pass up to `single` keys, else the split above with a quarter of the
 * chunks); for the backbone's graph that is off by default (hmc_attention_set_single's `any`):
 * on an H100 one block's chain of key steps at 200 keys took longer than the split's round trips
 * (docs/PERF.md).  Opt-in (HM_ATTN_CLUSTER): short decode contexts with the chunks of a query as a
 * thread-block cluster, merged through distributed shared memory; on an H100 1.3 us faster at 200
 * keys, slower from a few hundred on (docs/PERF.md), so off by default.
 * Early keys (hmc_attn_args.early_keys, the backbone's frame graph): a split decode block reads
 * the position and loads its keys below it (or requests its first bulk tiles) before waiting on
 * the qkv GEMV, which only appends the newest key; the last block's merge requests its chunk sums
 * together with the (m, l) pairs.  H100: backbone attention 11.05 -> 9.85 us a call at 200 keys,
 * -0.4 / -1.3 / -1.1% a bf16 frame at 200 / 900 / 3800 positions (docs/PERF.md). */
#include "common_cuda.h"
#include "ops_cuda.h"

#include <cooperative_groups.h>

namespace {

constexpr int CH_MIN = 16;  /* chunk lengths are multiples of this */
constexpr int GMAX = 4;     /* query heads per kv head */

__host__ __device__ __forceinline__ int chunk_len(int nkeys, int nch)
{
    int c = (nkeys + nch - 1) / nch;
    return (c + CH_MIN - 1) / CH_MIN * CH_MIN;
}

constexpr int NCH_MAX = 64; /* chunks per query at most (the work buffer is sized for this) */
int g_max_chunks = NCH_MAX; /* tuning knob (hmc_attention_set_max_chunks) */
/* Decode (B*T <= 4): a query with at most this many keys is done in one pass by one block
 * (measured on an H100, docs/PERF.md); 0: the split path only (hmc_attention_set_single). */
constexpr int SINGLE_DEFAULT = 512;
int g_single = -1; /* < 0: not set yet (HM_ATTN_SINGLE, else SINGLE_DEFAULT) */
constexpr int PER_HEAD_DEFAULT = 1;
int g_per_head = -1; /* one pass: a block per query head (1) or per kv head (0); HM_ATTN_PER_HEAD */
/* A decode launch whose longest query may exceed `single` (the backbone's graph, recorded for the
 * longest context) takes the decode kernel, which picks one pass or split on the device, only
 * with `any` (measured slower on an H100 at 200..3800 keys, docs/PERF.md); else the split kernel.
 * HM_ATTN_ANY. */
constexpr int ANY_DEFAULT = 0;
int g_any = -1;
/* Where a decode block lets the next kernel be scheduled (HM_ATTN_TRIGGER, A/B knob): 0 at its
 * start; 1 after its keys are scored (the default: the next GEMV's blocks then do not take the SMs
 * that this kernel's later blocks still need, nor queue their early weight loads ahead of its
 * dependent loads); 2 at exit.  H100, since the NVFP4 GEMV runs two blocks an SM: 1 against 0 is
 * -1.2% an NVFP4 frame, -1.1% fp8, -0.4% bf16 at 200 positions (docs/PERF.md; at stop 16, in bf16,
 * it measured even). */
int g_trigger = -1;
/* The key tiles' bulk copies carry an L2 evict-first hint (default; HM_ATTN_EVICT_FIRST=0: not):
 * like the weights, a long context's keys are read once a frame.  H100, bf16 frame: 5.233 ->
 * 5.195 ms at 3800 positions, 5.599 -> 5.582 at 7900 (docs/PERF.md). */
int g_kv_ef = -1;
/* Phase stamps (HM_ATTN_STAMP=1, diagnostics): thread 0 of each block of the last decode launch
 * writes %globaltimer at entry, after the wait, once its keys are known, after the warps' merge,
 * after the chunk's partial sums are out, after the counter, and at the end (the merging block). */
constexpr int STAMP_BLOCKS = 2048, NSTAMP = 7;
__device__ unsigned long long g_stamp[STAMP_BLOCKS][NSTAMP];
int g_stamp_on = -1;
/* Decode split launches (hd <= 128) stage the keys of a query with at least g_bk_min keys in
 * shared memory by bulk copies (BK; on an H100 -5.5% a frame at 3800 positions, -9.4% at 7900,
 * -0.5% at 600, no change at 200: docs/PERF.md).  HM_ATTN_BULK, HM_ATTN_BULK_MIN,
 * hmc_attention_set_bulk. */
constexpr int BULK_MIN_DEFAULT = 512;
/* Decode launches whose keys never exceed g_cluster x g_cluster_keys: chunks merged in a cluster of
 * g_cluster blocks (8 or 16; 0 off) through distributed shared memory.  HM_ATTN_CLUSTER,
 * HM_ATTN_CLUSTER_KEYS. */
int g_cluster = -1, g_cluster_keys = 64;
int g_bulk = -1;
int g_bk_min = BULK_MIN_DEFAULT;
/* Split decode launches with hmc_attn_args.early_keys read the position and their keys below it
 * before waiting on the previous kernel (default; HM_ATTN_EARLY=0: after, A/B knob). */
int g_early = -1;
/* The chunk blocks count in with a full fence in every thread before the atomic (1, the first
 * version) or with one acquire-release atomic after the block's barrier (0, default).
 * HM_ATTN_SC_FENCE, A/B knob. */
int g_sc_fence = -1;

/* An on/off knob from the environment: unset -> dflt, "0" -> off, any other number -> on */
int env_flag(const char *name, int dflt)
{
    const char *e = getenv(name);
    return e ? atoi(e) != 0 : dflt;
}

__device__ __forceinline__ void stamp(int on, int i)
{
    if (!on || threadIdx.x) return;
    const unsigned blk = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    if (blk >= STAMP_BLOCKS) return;
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)::"memory");
    g_stamp[blk][i] = t;
}

/* chunks per query: up to max_ch, fewer when many queries (prefill) already fill the machine */
int chunks_for(int B, int T, int KVH, int max_keys, int max_ch)
{
    int n = (max_keys + CH_MIN - 1) / CH_MIN;
    n = n < max_ch ? n : max_ch;
    int cap = 8192 / (B * T * KVH);
    cap = cap < 1 ? 1 : cap;
    return n < cap ? n : cap;
}

/* L2 prefetch of [p, p + bytes) (bytes a multiple of 16) by the bulk-copy engine */
__device__ __forceinline__ void l2_prefetch(const void *p, uint32_t bytes)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

__device__ __forceinline__ void load4(const float *p, float *o)
{
    float4 v = *reinterpret_cast<const float4 *>(p);
    o[0] = v.x, o[1] = v.y, o[2] = v.z, o[3] = v.w;
}
__device__ __forceinline__ void load4(const __nv_bfloat16 *p, float *o)
{
    uint2 v = *reinterpret_cast<const uint2 *>(p);
    float2 a = __bfloat1622float2(*reinterpret_cast<__nv_bfloat162 *>(&v.x));
    float2 b = __bfloat1622float2(*reinterpret_cast<__nv_bfloat162 *>(&v.y));
    o[0] = a.x, o[1] = a.y, o[2] = b.x, o[3] = b.y;
}

/* Bulk-copy key tiles of the decode split kernel (hd <= 128, rows a multiple of 16 bytes): keys a
 * tile, stages in flight (2 x 2 x 32 x 128 bf16 = 32 KB a block) */
constexpr int BK_TILE = 32, BK_STAGES = 2;
/* floats of the warps' merge area at the start of the dynamic shared memory (16-byte multiple) */
__host__ __device__ __forceinline__ int merge_floats(int NW, int hd) { return (2 * NW * GMAX + NW * GMAX * hd + 3) & ~3; }

/* NW warps a block, KU keys a warp step; ngrid chunk blocks a query (nch of them for the split).
 * SP (the decode kernel): a query with at most `single` keys is one pass by chunk block 0 over all
 * G query heads, or with per_head (ngrid >= G) by blocks 0..G-1, one query head each; the other
 * blocks leave at once; no partial sums, no counter.  Blocks that may start at key 0 load their
 * first keys together with the position (speculatively, keys below max_seq; what lies past the
 * query's keys is zeroed once the position is known, reloaded if the block's chunk starts later). */
/* CL > 0 (decode, T = 1, hd <= 128): the nch = CL chunk blocks of a (kv head, batch row) are one
 * thread-block cluster; each block leaves its (m, l) and chunk sums in its shared memory and,
 * after a cluster barrier, block r merges its share of the G x hd outputs from every block's
 * shared memory (distributed shared memory), instead of the work buffer, fence, counter and
 * last-block merge through L2.  Blocks without keys take part with m = -inf. */
template <typename CT, int J, int NW, int KU, bool SP, bool BK = false, int CL = 0>
__global__ void __launch_bounds__(NW * 32)
attn_chunk_kernel(const float *__restrict__ qkv, int T, int H, int KVH, int hd, const int *pos_dev, int pos_add,
                  const CT *__restrict__ kc, const CT *__restrict__ vc, int max_seq, int nch,
                  float *__restrict__ work, int *__restrict__ counters, float *__restrict__ out,
                  const char *pf, size_t pf_bytes, int ngrid, int single, int per_head, int trig, int bk_min)
{
    const int stm = (trig >> 4) & 1, kv_ef = (trig >> 5) & 1, early = (trig >> 6) & 1, sc_fence = (trig >> 7) & 1;
    trig &= 15;
    if (stm && threadIdx.x == 0) {
        const unsigned blk = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
        if (blk < STAMP_BLOCKS)
            for (int i = 0; i < NSTAMP; i++) g_stamp[blk][i] = 0;
    }
    stamp(stm, 0);
    if (trig == 0) pdl_trigger();
    if (pf_bytes) { /* this block's share of the next op's weights, 4 KB pieces over all threads */
        const size_t nblk = (size_t)gridDim.x * gridDim.y * gridDim.z,
                     blk = blockIdx.x + (size_t)gridDim.x * (blockIdx.y + (size_t)gridDim.y * blockIdx.z);
        const size_t n = (pf_bytes + 4095) / 4096;
        for (size_t c = blk + (size_t)threadIdx.x * nblk; c < n; c += nblk * blockDim.x) {
            const size_t len = (pf_bytes - c * 4096 < 4096 ? pf_bytes - c * 4096 : 4096) & ~(size_t)15;
            if (len) l2_prefetch(pf + c * 4096, (uint32_t)len);
        }
    }
    const int c = blockIdx.x % ngrid, t = blockIdx.x / ngrid, kvh = blockIdx.y, b = blockIdx.z, B = gridDim.z;
    const int G = H / KVH, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const float scale = rsqrtf((float)hd);
    const size_t head_off = ((size_t)b * KVH + kvh) * max_seq;
    float kv[KU][J][4], vv[KU][J][4];
    const CT *kbase = kc + head_off * hd, *vbase = vc + head_off * hd; /* key 0 of this kv head */
    /* keys kb.. below lim into kd, vd (zeros from lim on) */
    auto load_keys = [&](int kb, int lim, float (&kd)[KU][J][4], float (&vd)[KU][J][4]) {
#pragma unroll
        for (int u = 0; u < KU; u++)
#pragma unroll
            for (int j = 0; j < J; j++) {
                int d = lane * 4 + 128 * j, key = kb + u;
                if (key < lim && d < hd) {
                    load4(kbase + (size_t)key * hd + d, kd[u][j]);
                    load4(vbase + (size_t)key * hd + d, vd[u][j]);
                } else {
#pragma unroll
                    for (int e = 0; e < 4; e++) kd[u][j][e] = 0.0f, vd[u][j][e] = 0.0f;
                }
            }
    };
    extern __shared__ __align__(16) float sh[];
    __shared__ uint64_t bars[BK ? BK_STAGES : 1];
    CT *tiles = reinterpret_cast<CT *>(sh + merge_floats(NW, hd)); /* BK: [stage][K|V][BK_TILE][hd] */
    /* BK: tile tt of the chunk [kt0, kt1) into its stage, K and V one bulk copy each (thread 0) */
    auto issue = [&](int tt, int kt0, int kt1) {
        const int kt = kt0 + tt * BK_TILE, n = min(BK_TILE, kt1 - kt), st = tt % BK_STAGES;
        const uint32_t bytes = (uint32_t)((size_t)n * hd * sizeof(CT));
        CT *dk = tiles + (size_t)st * 2 * BK_TILE * hd;
        mbar_expect(&bars[st], 2 * bytes);
        if (kv_ef) { /* read once a frame, as the weights: let L2 drop them first */
            bulk_load_evict_first(dk, kbase + (size_t)kt * hd, bytes, &bars[st]);
            bulk_load_evict_first(dk + (size_t)BK_TILE * hd, vbase + (size_t)kt * hd, bytes, &bars[st]);
        } else {
            bulk_load(dk, kbase + (size_t)kt * hd, bytes, &bars[st]);
            bulk_load(dk + (size_t)BK_TILE * hd, vbase + (size_t)kt * hd, bytes, &bars[st]);
        }
    };
    /* Early keys (split decode launches whose caller vouches that the position and every cache
     * row below it were written before the previous kernel could run: the backbone's frame graph,
     * hmc_attn_args.early_keys): the position is read and the chunk's keys below it are loaded
     * (register path) or its first tiles requested (bulk path) before the wait, so only q and the
     * keys the previous kernel appended are read after it.  pre_pos >= 0: done, at that position;
     * pre_tiles: the bulk tiles already requested. */
    int pre_pos = -1, pre_tiles = 0;
    if constexpr (!SP && CL == 0) {
        if (early && pos_dev) {
            const int p = *pos_dev + pos_add, nk = p + t + 1;
            const int CH = chunk_len(nk, nch), kb0 = c * CH, kb1 = min(nk, kb0 + CH);
            if (BK && nk >= bk_min) {
                if (threadIdx.x == 0 && kb0 < kb1) {
                    mbar_init_stages(bars, BK_STAGES);
                    const int ntile = (kb1 - kb0 + BK_TILE - 1) / BK_TILE;
                    /* tiles wholly below the position: the appended keys are the chunk's last */
                    while (pre_tiles < BK_STAGES && pre_tiles < ntile &&
                           min(kb0 + (pre_tiles + 1) * BK_TILE, kb1) <= p)
                        issue(pre_tiles++, kb0, kb1);
                }
            } else if (kb0 < kb1) {
                load_keys(kb0 + warp * KU, min(kb1, p), kv, vv);
            }
            pre_pos = p;
        }
    }
    pdl_wait();
    stamp(stm, 1);
    const int pos0 = pre_pos >= 0 ? pre_pos : (pos_dev ? *pos_dev : 0) + pos_add;
    const bool spec = SP && (c == 0 || (per_head && c < G)); /* may start at key 0 */
    if (spec) load_keys(warp * KU, max_seq, kv, vv);

    /* this lane's slice of each query head (loads issued before the position arrives) */
    float q[GMAX][J][4];
    const float *qrow = qkv + ((size_t)b * T + t) * (size_t)(H + 2 * KVH) * hd;
#pragma unroll
    for (int g = 0; g < GMAX; g++)
#pragma unroll
        for (int j = 0; j < J; j++) {
            int d = lane * 4 + 128 * j;
            if (g < G && d < hd) {
                load4(qrow + (kvh * G + g) * hd + d, q[g][j]);
            } else {
#pragma unroll
                for (int e = 0; e < 4; e++) q[g][j][e] = 0.0f;
            }
        }

    const int nkeys = pos0 + t + 1;
    const bool one = SP && nkeys <= single, ph = one && per_head && ngrid >= G;
    const int gsel = ph ? c : -1; /* the one query head of this block, or all (-1) */
    int nchunks = 1, k0 = 0, k1 = nkeys;
    if (one) {
        if (c >= (ph ? G : 1)) return;
    } else {
        const int CH = chunk_len(nkeys, nch);
        nchunks = (nkeys + CH - 1) / CH;
        k0 = c * CH, k1 = min(nkeys, k0 + CH);
        if (CL) k0 = min(k0, nkeys), k1 = max(k1, k0); /* an empty chunk still joins the cluster's merge */
        else if (k0 >= k1) return;
    }
    stamp(stm, 2);
#pragma unroll
    for (int g = 0; g < GMAX; g++)
#pragma unroll
        for (int j = 0; j < J; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) q[g][j][e] *= scale; /* pre-scaled */

    float m[GMAX], l[GMAX], acc[GMAX][J][4];
#pragma unroll
    for (int g = 0; g < GMAX; g++) {
        m[g] = -INFINITY, l[g] = 0.0f;
#pragma unroll
        for (int j = 0; j < J; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[g][j][e] = 0.0f;
    }

    /* fold the KU keys in kv, vv starting at kb into the running softmax of each query head */
    auto consume = [&](int kb) {
#pragma unroll
        for (int g = 0; g < GMAX; g++) {
            if (g >= G) break;
            if (gsel >= 0 && g != gsel) continue;
            float s[KU];
#pragma unroll
            for (int u = 0; u < KU; u++) s[u] = dot_j4<J>(q[g], kv[u]);
#pragma unroll
            for (int u = 0; u < KU; u++) s[u] = warp_sum(s[u]);
            float mn = m[g];
#pragma unroll
            for (int u = 0; u < KU; u++)
                if (kb + u < k1) mn = fmaxf(mn, s[u]);
            float corr = __expf(m[g] - mn); /* m = -inf the first time: exp(-inf) = 0 */
            l[g] *= corr;
            float p[KU];
#pragma unroll
            for (int u = 0; u < KU; u++) {
                p[u] = kb + u < k1 ? __expf(s[u] - mn) : 0.0f;
                l[g] += p[u];
            }
            fold_values<J, KU>(acc[g], corr, p, vv);
            m[g] = mn;
        }
    };
    if (BK && nkeys >= bk_min) {
        /* keys [k0, k1) through BK_STAGES shared-memory stages of BK_TILE keys, each tile's K and
         * V rows one bulk copy each (contiguous in the cache), so the copies in flight hold no
         * registers: a block keeps BK_STAGES tiles requested (32 KB at hd 128, bf16) where the
         * register path kept ~2 warp steps.  Thread 0 issues; a tile's stage is refilled after
         * every warp has scored it. */
        const int ntile = (k1 - k0 + BK_TILE - 1) / BK_TILE;
        if (threadIdx.x == 0) {
            if (pre_pos < 0) mbar_init_stages(bars, BK_STAGES);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
            /* the cache rows the previous kernel wrote (generic stores) before the copy engine's reads */
            asm volatile("fence.proxy.async;" ::: "memory");
#endif
            for (int tt = pre_tiles; tt < BK_STAGES && tt < ntile; tt++) issue(tt, k0, k1);
        }
        __syncthreads();
        for (int tt = 0; tt < ntile; tt++) {
            const int kt = k0 + tt * BK_TILE, n = min(BK_TILE, k1 - kt), st = tt % BK_STAGES;
            const CT *tk = tiles + (size_t)st * 2 * BK_TILE * hd, *tv = tk + (size_t)BK_TILE * hd;
            mbar_wait(&bars[st], (uint32_t)((tt / BK_STAGES) & 1));
            for (int kb = warp * KU; kb < n; kb += NW * KU) {
#pragma unroll
                for (int u = 0; u < KU; u++) {
                    const int d = lane * 4;
                    if (kb + u < n && d < hd) {
                        load4(tk + (size_t)(kb + u) * hd + d, kv[u][0]);
                        load4(tv + (size_t)(kb + u) * hd + d, vv[u][0]);
                    } else {
#pragma unroll
                        for (int e = 0; e < 4; e++) kv[u][0][e] = 0.0f, vv[u][0][e] = 0.0f;
                    }
                }
                consume(kt + kb);
            }
            __syncthreads(); /* every warp is done with the stage */
            if (threadIdx.x == 0 && tt + BK_STAGES < ntile) issue(tt + BK_STAGES, k0, k1);
        }
    } else {
    if (spec && k0 == 0) { /* past the query's keys: stale cache rows (maybe NaN), zeroed */
#pragma unroll
        for (int u = 0; u < KU; u++)
            if (warp * KU + u >= k1)
#pragma unroll
                for (int j = 0; j < J; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) kv[u][j][e] = 0.0f, vv[u][j][e] = 0.0f;
    } else if (pre_pos >= 0) { /* keys below the position came before the wait; the rest now */
        const int kb = k0 + warp * KU;
#pragma unroll
        for (int u = 0; u < KU; u++)
#pragma unroll
            for (int j = 0; j < J; j++) {
                const int d = lane * 4 + 128 * j, key = kb + u;
                if (key >= pos0 && key < k1 && d < hd) {
                    load4(kbase + (size_t)key * hd + d, kv[u][j]);
                    load4(vbase + (size_t)key * hd + d, vv[u][j]);
                }
            }
    } else {
        load_keys(k0 + warp * KU, k1, kv, vv);
    }
    if constexpr (J * KU <= 4) { /* registers allow the next step's keys in flight (hd <= 128) */
        for (int kb = k0 + warp * KU; kb < k1; kb += NW * KU) {
            float kn[KU][J][4], vn[KU][J][4];
            load_keys(kb + NW * KU, k1, kn, vn); /* zeros past k1 */
            consume(kb);
#pragma unroll
            for (int u = 0; u < KU; u++)
#pragma unroll
                for (int j = 0; j < J; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) kv[u][j][e] = kn[u][j][e], vv[u][j][e] = vn[u][j][e];
        }
    } else {
        for (int kb = k0 + warp * KU; kb < k1; kb += NW * KU) {
            consume(kb);
            if (kb + NW * KU < k1) load_keys(kb + NW * KU, k1, kv, vv);
        }
    }
    }

    if (trig == 1) pdl_trigger();
    __shared__ float cl_ml[CL > 0 ? GMAX : 1][2], cl_acc[CL > 0 ? GMAX * 128 : 1]; /* the block's merged chunk */
    /* merge the warps: shared [NW][G] (m, l) and [NW][G][hd] acc */
    float *sm = sh, *sl = sh + NW * GMAX, *sacc = sh + 2 * NW * GMAX;
#pragma unroll
    for (int g = 0; g < GMAX; g++) {
        if (g >= G) break;
        if (gsel >= 0 && g != gsel) continue;
        if (lane == 0) sm[warp * GMAX + g] = m[g], sl[warp * GMAX + g] = l[g];
#pragma unroll
        for (int j = 0; j < J; j++) {
            int d = lane * 4 + 128 * j;
            if (d < hd)
#pragma unroll
                for (int e = 0; e < 4; e++) sacc[((size_t)warp * GMAX + g) * hd + d + e] = acc[g][j][e];
        }
    }
    __syncthreads();
    stamp(stm, 3);
    for (int i = threadIdx.x; i < G * hd; i += blockDim.x) {
        int g = i / hd, d = i % hd;
        if (gsel >= 0 && g != gsel) continue;
        float M = -INFINITY;
        for (int w = 0; w < NW; w++) M = fmaxf(M, sm[w * GMAX + g]);
        float L = 0.0f, A = 0.0f;
        for (int w = 0; w < NW; w++) {
            float mw = sm[w * GMAX + g];
            float f = mw == -INFINITY ? 0.0f : __expf(mw - M);
            L += sl[w * GMAX + g] * f;
            A += sacc[((size_t)w * GMAX + g) * hd + d] * f;
        }
        int h = kvh * G + g;
        if (CL) {
            cl_acc[g * hd + d] = A;
            if (d == 0) cl_ml[g][0] = M, cl_ml[g][1] = L;
        } else if (nchunks == 1) {
            out[((size_t)b * T + t) * H * hd + (size_t)h * hd + d] = A / L;
        } else { /* work: chunk sums [B][H][T][nch][hd], then (m, l) [B][H][T][nch][2] */
            const size_t row = (((size_t)b * H + h) * T + t) * nch + c;
            work[row * hd + d] = A;
            if (d == 0) {
                float *ml = work + (size_t)B * H * T * nch * hd + row * 2;
                ml[0] = M, ml[1] = L;
            }
        }
    }
    if constexpr (CL > 0) {
        namespace cg = cooperative_groups;
        cg::cluster_group cluster = cg::this_cluster();
        cluster.sync(); /* every block's (m, l) and sums are in its shared memory */
        const int r = (int)cluster.block_rank(), n = G * hd, per = (n + CL - 1) / CL;
        for (int i = r * per + threadIdx.x; i < min(n, (r + 1) * per); i += blockDim.x) {
            const int g = i / hd, d = i % hd;
            float mc[CL], lc[CL], ac[CL];
#pragma unroll
            for (int q = 0; q < CL; q++) { /* all loads in flight before the sums */
                const float *rml = cluster.map_shared_rank(&cl_ml[g][0], q);
                mc[q] = rml[0], lc[q] = rml[1], ac[q] = *cluster.map_shared_rank(&cl_acc[i], q);
            }
            float M = -INFINITY;
#pragma unroll
            for (int q = 0; q < CL; q++) M = fmaxf(M, mc[q]);
            float L = 0.0f, A = 0.0f;
#pragma unroll
            for (int q = 0; q < CL; q++) { /* in chunk order, as the last-block merge */
                const float f = mc[q] == -INFINITY ? 0.0f : __expf(mc[q] - M);
                L += lc[q] * f, A += ac[q] * f;
            }
            out[((size_t)b * T + t) * H * hd + (size_t)(kvh * G + g) * hd + d] = A / L;
        }
        cluster.sync(); /* no block leaves while another may still read its shared memory */
        return;
    }
    if (nchunks == 1) return;

    /* the last block of this (b, kvh, t) to arrive merges the chunks.  Default: the block's
     * barrier, then thread 0's count-in as one acquire-release atomic at GPU scope (the barrier
     * orders every thread's partial sums before it; the last block's reads come after its
     * acquire); sc_fence (HM_ATTN_SC_FENCE=1, A/B knob): a full fence in every thread first. */
    __shared__ int last;
    if (sc_fence) __threadfence();
    __syncthreads();
    stamp(stm, 4);
    if (threadIdx.x == 0) {
        int *cnt = counters + ((size_t)b * KVH + kvh) * T + t;
        int prev;
        if (sc_fence) prev = atomicAdd(cnt, 1);
        else asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], 1;" : "=r"(prev) : "l"(cnt) : "memory");
        last = prev == nchunks - 1;
        if (last) *cnt = 0; /* every chunk has arrived: ready for the next launch */
    }
    __syncthreads();
    stamp(stm, 5);
    if (!last) return;
    if (sc_fence) __threadfence();
    const size_t row0 = (((size_t)b * H + kvh * G) * T + t) * nch; /* chunk 0 of head kvh*G */
    /* 4 dims a thread (hd % 4 == 0).  A thread's first 4 dims: the sums of up to MP chunks are
     * requested before the (m, l) below, so the merge waits for one round of L2 reads, not two */
    const int hd4 = hd / 4;
    constexpr int MP = 16;
    const bool pre = nchunks <= MP && (int)threadIdx.x < G * hd4;
    float4 pv[MP];
    if (pre) {
        const int g = threadIdx.x / hd4, d = (threadIdx.x % hd4) * 4;
        const float *wp = work + (row0 + (size_t)g * T * nch) * hd + d;
#pragma unroll
        for (int u = 0; u < MP; u++)
            pv[u] = u < nchunks ? __ldcg(reinterpret_cast<const float4 *>(wp + (size_t)u * hd))
                                : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    /* chunk weights: warp g (one per query head; G <= GMAX = NW) takes the max over the chunks'
     * m, then f_c = exp(m_c - M) and L = Σ l_c f_c */
    __shared__ float fw[GMAX][64], Ls[GMAX];
    if (warp < G) { /* (m, l) of chunks lane and lane + 32 (nchunks <= NCH_MAX = 64), one round of loads */
        const float2 *ml = reinterpret_cast<const float2 *>(work + (size_t)B * H * T * nch * hd) + row0 +
                           (size_t)warp * T * nch;
        const float2 none = make_float2(-INFINITY, 0.0f);
        const float2 a = lane < nchunks ? __ldcg(ml + lane) : none, b2 = lane + 32 < nchunks ? __ldcg(ml + lane + 32) : none;
        const float M = warp_max(fmaxf(a.x, b2.x));
        const float fa = lane < nchunks ? __expf(a.x - M) : 0.0f, fb = lane + 32 < nchunks ? __expf(b2.x - M) : 0.0f;
        const float L = warp_sum(a.y * fa + b2.y * fb);
        fw[warp][lane] = fa, fw[warp][lane + 32] = fb;
        if (lane == 0) Ls[warp] = L;
    }
    __syncthreads();
    /* the rest: float4 loads of the chunk sums, 8 chunks at a time all in flight (a loop over the
     * run-time count kept them one at a time: ~5 us of a 200-key launch's 13 on an H100); summed
     * in chunk order either way (the chunks past nchunks add 0 * 0) */
    for (int i = threadIdx.x; i < G * hd4; i += blockDim.x) {
        const int g = i / hd4, d = (i % hd4) * 4, h = kvh * G + g;
        const float *wp = work + (row0 + (size_t)g * T * nch) * hd + d;
        float4 A = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (pre && i == (int)threadIdx.x) {
#pragma unroll
            for (int u = 0; u < MP; u++) {
                const float f = u < nchunks ? fw[g][u] : 0.0f;
                A.x += pv[u].x * f, A.y += pv[u].y * f, A.z += pv[u].z * f, A.w += pv[u].w * f;
            }
        } else
        for (int c0 = 0; c0 < nchunks; c0 += 8) {
            float4 v[8];
#pragma unroll
            for (int u = 0; u < 8; u++)
                v[u] = c0 + u < nchunks ? __ldcg(reinterpret_cast<const float4 *>(wp + (size_t)(c0 + u) * hd))
                                        : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
            for (int u = 0; u < 8; u++) {
                const float f = c0 + u < nchunks ? fw[g][c0 + u] : 0.0f;
                A.x += v[u].x * f, A.y += v[u].y * f, A.z += v[u].z * f, A.w += v[u].w * f;
            }
        }
        const float inv = 1.0f / Ls[g];
        float *o = out + ((size_t)b * T + t) * H * hd + (size_t)h * hd + d;
        o[0] = A.x * inv, o[1] = A.y * inv, o[2] = A.z * inv, o[3] = A.w * inv;
    }
    __syncthreads();
    stamp(stm, 6);
}

template <typename CT, int J, int NW, int KU, bool SP, bool BK = false, int CL = 0>
int launch(const hmc_attn_args *a, int nch, cudaStream_t s)
{
    const int G = a->H / a->KVH, ngrid = SP && nch < G ? G : nch; /* room for a block per query head */
    dim3 grid(ngrid * a->T, a->KVH, a->B);
    size_t smem = (size_t)merge_floats(NW, a->hd) * sizeof(float);
    if (BK) smem += (size_t)BK_STAGES * 2 * BK_TILE * a->hd * sizeof(CT);
    static size_t smem_set = 48 * 1024;
    if (smem > smem_set) {
        CK(cudaFuncSetAttribute(attn_chunk_kernel<CT, J, NW, KU, SP, BK, CL>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        smem_set = smem;
    }
    if constexpr (CL > 0) {
        static int big_set;
        if (CL > 8 && !big_set) {
            CK(cudaFuncSetAttribute(attn_chunk_kernel<CT, J, NW, KU, SP, BK, CL>,
                                    cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
            big_set = 1;
        }
        return launch_pdl_cluster(attn_chunk_kernel<CT, J, NW, KU, SP, BK, CL>, grid, dim3(NW * 32), smem, s, CL,
                                  a->qkv, a->T, a->H, a->KVH, a->hd, a->pos_dev, a->pos_add, (const CT *)a->k_cache,
                                  (const CT *)a->v_cache, a->max_seq, nch, a->work, (int *)nullptr, a->out,
                                  (const char *)nullptr, (size_t)0, ngrid, g_single, g_per_head,
                                  g_trigger | (g_stamp_on > 0 ? 16 : 0), g_bk_min);
    }
    /* the counters sit after room for NCH_MAX chunks: the same place whatever the chunk knob */
    const int nmax = chunks_for(a->B, a->T, a->KVH, a->max_keys, NCH_MAX);
    int *counters = reinterpret_cast<int *>(a->work + (size_t)a->B * a->T * a->H * nmax * (a->hd + 2));
    uintptr_t pf = 0, pf_bytes = 0; /* the prefetch hint in whole 16-byte units */
    if (a->pf && a->pf_bytes > 16) {
        const uintptr_t p0 = ((uintptr_t)a->pf + 15) & ~(uintptr_t)15, p1 = ((uintptr_t)a->pf + a->pf_bytes) & ~(uintptr_t)15;
        if (p1 > p0) pf = p0, pf_bytes = p1 - p0;
    }
    return launch_pdl(attn_chunk_kernel<CT, J, NW, KU, SP, BK>, grid, dim3(NW * 32), smem, s, a->qkv, a->T, a->H, a->KVH, a->hd,
                      a->pos_dev, a->pos_add, (const CT *)a->k_cache, (const CT *)a->v_cache, a->max_seq, nch, a->work,
                      counters, a->out, (const char *)pf, pf_bytes, ngrid, g_single, g_per_head,
                      (a->B * a->T <= 4 ? g_trigger : 0) | (a->B * a->T <= 4 && g_stamp_on > 0 ? 16 : 0) |
                          (g_kv_ef > 0 ? 32 : 0) | (a->early_keys && g_early > 0 && a->T == 1 ? 64 : 0) |
                          (g_sc_fence > 0 ? 128 : 0),
                      g_bk_min);
}

template <typename CT>
int launch_j(const hmc_attn_args *a, int nch, cudaStream_t s)
{
    /* decode: every query of the graph in one pass (the decoder's <= 8 keys), or with g_any the
     * device's choice: 16 warps of 4 keys (hd <= 128; a quarter of the chunks keeps the warps of
     * a long context's split as many), 8 warps of 1 key above */
    if (g_single > 0 && a->B * a->T <= 4 && (a->max_keys <= g_single || g_any)) {
        if (a->hd <= 128) return launch<CT, 1, 16, 4, true>(a, (nch + 3) / 4, s);
        if (a->hd <= 256) return launch<CT, 2, 8, 1, true>(a, nch, s);
        return launch<CT, 3, 8, 1, true>(a, nch, s);
    }
    if (a->hd <= 128 && g_cluster > 0 && a->T == 1 && a->B <= 4 && a->max_keys <= g_cluster * g_cluster_keys) {
        /* a short decode context: the chunks of a (kv head, row) as one cluster (HM_ATTN_CLUSTER) */
        if (g_cluster == 8) return launch<CT, 1, 4, 4, false, false, 8>(a, 8, s);
        return launch<CT, 1, 4, 4, false, false, 16>(a, 16, s);
    }
    if (a->hd <= 128) {
        /* 8 warps a block over half the chunks (as many warps): a bulk block's tiles are shared by
         * twice the warps (H100: -1% a frame at 2000-7900 positions, same below) */
        if (g_bulk && a->B * a->T <= 4 && (a->hd * sizeof(CT)) % 16 == 0)
            return launch<CT, 1, 8, 4, false, true>(a, (nch + 1) / 2, s);
        return launch<CT, 1, 4, 4, false>(a, nch, s);
    }
    if (a->hd <= 256) return launch<CT, 2, 4, 4, false>(a, nch, s);
    return launch<CT, 3, 4, 4, false>(a, nch, s);
}

} // namespace

extern "C" size_t hmc_attention_work_bytes(int B, int T, int H, int KVH, int hd, int max_keys)
{
    size_t nch = (size_t)chunks_for(B, T, KVH, max_keys, NCH_MAX);
    return (size_t)B * T * H * nch * (hd + 2) * sizeof(float) + (size_t)B * T * KVH * sizeof(int);
}

extern "C" void hmc_attention_set_max_chunks(int n) { g_max_chunks = n < 1 ? 1 : n > NCH_MAX ? NCH_MAX : n; }

extern "C" void hmc_attention_set_bulk(int on, int min_keys)
{
    g_bulk = on != 0;
    g_bk_min = min_keys < 0 ? BULK_MIN_DEFAULT : min_keys;
}

extern "C" void hmc_attention_set_cluster(int blocks, int keys_per_block)
{
    g_cluster = blocks == 8 || blocks == 16 ? blocks : 0;
    if (keys_per_block > 0) g_cluster_keys = keys_per_block;
}

extern "C" void hmc_attention_set_single(int max_keys, int per_head, int any)
{
    g_single = max_keys < 0 ? 0 : max_keys;
    g_per_head = per_head ? 1 : 0;
    g_any = any ? 1 : 0;
}

extern "C" int hmc_attention(const hmc_attn_args *a, cudaStream_t s)
{
    if (a->hd % 4 || a->hd > 384)
        return hm_err("%s:%d: attention: head_dim %d must be a multiple of 4, at most 384", __FILE__, __LINE__, a->hd);
    if (a->KVH <= 0 || a->H % a->KVH || a->H / a->KVH > GMAX)
        return hm_err("%s:%d: attention: %d heads over %d kv heads (at most %d per kv head)", __FILE__, __LINE__,
                      a->H, a->KVH, GMAX);
    if (a->max_keys > a->max_seq) return hm_err("%s:%d: attention: max_keys > max_seq", __FILE__, __LINE__);
    if (a->B * a->T <= 0) return HM_OK;
    if (g_single < 0) {
        const char *e = getenv("HM_ATTN_SINGLE");
        g_single = e ? atoi(e) : SINGLE_DEFAULT;
        if (g_single < 0) g_single = 0;
    }
    if (g_per_head < 0) {
        const char *e = getenv("HM_ATTN_PER_HEAD");
        g_per_head = e ? atoi(e) != 0 : PER_HEAD_DEFAULT;
    }
    if (g_any < 0) {
        const char *e = getenv("HM_ATTN_ANY");
        g_any = e ? atoi(e) != 0 : ANY_DEFAULT;
    }
    if (g_bulk < 0) {
        const char *e = getenv("HM_ATTN_BULK");
        g_bulk = e ? atoi(e) != 0 : 1;
        const char *m = getenv("HM_ATTN_BULK_MIN");
        if (m) g_bk_min = atoi(m);
    }
    if (g_cluster < 0) {
        const char *e = getenv("HM_ATTN_CLUSTER"), *k = getenv("HM_ATTN_CLUSTER_KEYS");
        g_cluster = e ? atoi(e) : 0;
        if (g_cluster != 8 && g_cluster != 16) g_cluster = 0;
        if (k && atoi(k) > 0) g_cluster_keys = atoi(k);
    }
    if (g_stamp_on < 0) g_stamp_on = env_flag("HM_ATTN_STAMP", 0);
    if (g_kv_ef < 0) g_kv_ef = env_flag("HM_ATTN_EVICT_FIRST", 1);
    if (g_sc_fence < 0) g_sc_fence = env_flag("HM_ATTN_SC_FENCE", 0);
    if (g_early < 0) g_early = env_flag("HM_ATTN_EARLY", 1);
    if (g_trigger < 0) {
        const char *e = getenv("HM_ATTN_TRIGGER");
        g_trigger = e ? atoi(e) : 1;
        if (g_trigger < 0 || g_trigger > 2) g_trigger = 1;
    }
    int nch = chunks_for(a->B, a->T, a->KVH, a->max_keys, g_max_chunks);
    if (a->ct == HMC_BF16) CKH(launch_j<__nv_bfloat16>(a, nch, s));
    else if (a->ct == HMC_F32) CKH(launch_j<float>(a, nch, s));
    else return hm_err("%s:%d: attention: bad cache dtype", __FILE__, __LINE__);
    return HM_OK;
}

/* Print the phase stamps of the last stamped decode launch (HM_ATTN_STAMP=1): per phase the
 * earliest, median and latest block, in us after the earliest block's return from the wait. */
extern "C" void hmc_attention_stamp_report(FILE *f)
{
    static unsigned long long h[STAMP_BLOCKS][NSTAMP];
    if (cudaDeviceSynchronize() != cudaSuccess || cudaMemcpyFromSymbol(h, g_stamp, sizeof h) != cudaSuccess) {
        fprintf(f, "attention stamps: unavailable\n");
        return;
    }
    static const char *name[NSTAMP] = {"entry", "after wait", "keys known", "warps merged", "chunk out + fence",
                                       "counter", "merged out (last)"};
    hmc_stamp_summary(f, "attention", &h[0][0], STAMP_BLOCKS, NSTAMP, 1, name);
}
