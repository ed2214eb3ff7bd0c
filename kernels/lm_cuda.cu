/* lm_cuda.cu - the HeartMuLa language model engine on CUDA (see lm_cuda.h, MODEL.md §2).
 * Weights: q/k/v are concatenated and w1/w3 interleaved row by row at load, so a layer's decode
 * step is 4 GEMVs (qkv, o, w1|w3, w2) with RMSNorm fused into the GEMV input and SwiGLU into the
 * w1|w3 output (gate and up rows land in the same warp); audio_head is stored
 * transposed ([nc-1][Va][Dd]) so every head is a plain [out, in] GEMV.  The residual stream is
 * fp32; decode uses the GEMV kernel, prefill cuBLASLt. */
#include "common_cuda.h"
#include "lm_cuda.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "ops_cpu.h"
#include "safetensors.h"
}

namespace {

constexpr int PREFILL_CHUNK = 128; /* prompt positions per prefill pass (bounds attention scratch) */
/* fp8 weights: prefill by the FP8 GEMM (1) or dequantise + bf16 GEMM (0) unless HM_LM_FP8_PREFILL
 * says otherwise (lm_cuda_tune.prefill_fp8; docs/PERF.md has the measurement) */
constexpr int PREFILL_FP8_DEFAULT = 1;
/* lm_cuda_tune.persist's default (bit 0 backbone, bit 1 decoder; docs/PERF.md) */
constexpr int LM_CUDA_PERSIST_DEFAULT = 0;

struct layer_w {
    void *wqkv, *wo, *w13, *w2;
    float *sa_norm, *mlp_norm;
    float *s_qkv, *s_o, *s_13, *s_2; /* fp8 / nvfp4 scales of the four matrices (else null) */
};

struct xfm {
    hm_flavor f;
    int D, H, KVH, hd, I, qkvw;
    layer_w *L;
    float *norm, *freqs;
};

/* scratch of one pass over R rows */
struct scratch {
    int R;
    float *x, *qkv, *att, *gu, *work;
    void *xn; /* GEMM input (weight dtype), prefill only */
    void *xq; /* fp8 prefill GEMM: xn quantised to e4m3 per row, with xs [R] the row scales */
    float *xs;
    size_t work_bytes;
};

enum {
    P_EMBED, P_BB_QKV, P_BB_ROPE, P_BB_ATTN, P_BB_O, P_BB_W13, P_BB_W2, P_BB_NORM, P_C0, P_SAMPLE, P_DEC_IN,
    P_DEC_QKV, P_DEC_ROPE, P_DEC_ATTN, P_DEC_O, P_DEC_W13, P_DEC_W2, P_HEADS, P_BB_STACK, P_DEC_STACK, P_COUNT
};
const char *const P_NAMES[P_COUNT] = {"embed frame", "bb qkv gemv", "bb rope+kv", "bb attention", "bb o gemv",
                                      "bb w1|w3 gemv", "bb w2 gemv", "bb final norm", "c0 head gemv", "cfg+sample x8",
                                      "dec input+proj", "dec qkv gemv", "dec rope+kv", "dec attention", "dec o gemv",
                                      "dec w1|w3 gemv", "dec w2 gemv", "audio heads x7",
                                      "bb layers (persistent)", "dec layers (persistent)"};

struct prof_state {
    int on;
    int n;
    int cat[4096];
    double bytes[4096];
    cudaEvent_t ev[8192];
};

} // namespace

struct lm_cuda {
    hm_lm_config cfg;
    hmc_dtype wdt;  /* embeddings, KV caches, GEMM inputs: bf16 or f32 */
    hmc_dtype qdt;  /* layer matrices and heads: wdt, or fp8 / nvfp4 (then wdt is bf16) */
    unsigned parts; /* LM_CUDA_PART_* loaded */
    size_t wbytes;  /* device bytes the model holds (lm_cuda_resident_bytes) */
    float *s_c0, *s_proj, *s_ah; /* quantised heads' scales (audio heads: hmc_weight_scales each) */
    void *deq;      /* quantised backbone: bf16 scratch of one matrix for the prefill GEMMs */
    size_t deq_bytes;
    xfm bb, dec;
    void *audio_emb, *uncond, *muq_w, *c0_head, *proj, *audio_head;
    int emb_host;   /* audio_emb is pinned host memory mapped into the device's address space */
    size_t hbytes;  /* pinned host bytes the model holds */
    float *muq_b, *uncond_f32;
    /* Text embeddings stay in host memory (0.79 GB at 3B in bf16): a request reads only its
     * prompt's rows, once, gathered into lm_cuda_req.text_rows.  A loaded model reads them from the
     * file's mapping (tf stays open), a random one from text_host (wdt). */
    st_file *tf;
    const st_tensor *text_t;
    void *text_host;
    unsigned skip; /* LM_CUDA_SKIP_* (profiling) */
    lm_cuda_tune tune;
};

struct lm_cuda_req {
    lm_cuda *m;
    int B, max_seq, pos;
    cudaStream_t st;
    void **bk, **bv, **dk, **dv;
    int *pos_dev;
    uint32_t *rng_dev;
    hmc_sample_params *prm_dev;
    int32_t *codes_dev;
    float *h_last, *logits, *logits_out, *stage;
    scratch sd_bb, sd_dec, sp; /* decode backbone, decode decoder, prefill (grown on demand) */
    int32_t *tok_dev;
    uint8_t *mask_dev;
    float *muq_dev;
    int tok_cap;
    void *text_rows; /* the prompt's distinct text-embedding rows (wdt), text_cap of them */
    int text_cap;
    int uses_extend, uses_frame;
    cudaGraphExec_t g_extend, g_frame;
    /* decode layer stacks as persistent programs (lm_cuda_tune.persist): the backbone's, and the
     * depth decoder's for each step with one position per row (steps 2 .. nc - 1) */
    hmc_persist *pp_bb, *pp_dec[8];
    prof_state *prof;
};

static double xfm_bytes(const xfm *X, hmc_dtype t);

namespace {

size_t wsz(hmc_dtype t) { return hmc_dtype_size(t); }

/* Distance between the matrices of one allocation (the audio heads): hmc_weight_bytes rounded up
 * to 16, since the GEMV loads 16-byte words (NVFP4's [Va, Dd] with Va odd is not a multiple of
 * 16 bytes, e.g. 8197 x 128). */
size_t mat_stride(hmc_dtype t, int N, int K) { return (hmc_weight_bytes(t, N, K) + 15) & ~(size_t)15; }

/* ---- profiling: events around each op when r->prof->on ---- */
#define OP(r, cat_, wbytes_, call)                                                                         \
    do {                                                                                                 \
        if (skipped((r)->m->skip, (cat_))) break;                                                        \
        prof_state *ps_ = (r)->prof;                                                                     \
        int pi_ = -1;                                                                                    \
        if (ps_ && ps_->on && ps_->n < 4096) {                                                           \
            pi_ = ps_->n++;                                                                              \
            ps_->cat[pi_] = (cat_);                                                                       \
            ps_->bytes[pi_] = (double)(wbytes_);                                                          \
            CK(cudaEventRecord(ps_->ev[2 * pi_], (r)->st));                                              \
        }                                                                                                \
        CKH(call);                                                                                       \
        if (pi_ >= 0) CK(cudaEventRecord(ps_->ev[2 * pi_ + 1], (r)->st));                                \
    } while (0)

bool skipped(unsigned mask, int cat)
{
    switch (cat) {
    case P_BB_ROPE: case P_BB_ATTN: case P_DEC_ROPE: case P_DEC_ATTN: return mask & LM_CUDA_SKIP_ATTN;
    case P_SAMPLE: return mask & LM_CUDA_SKIP_SAMPLE;
    case P_BB_QKV: case P_BB_O: case P_BB_W13: case P_BB_W2: return mask & LM_CUDA_SKIP_BB_GEMV;
    case P_C0: case P_DEC_QKV: case P_DEC_O: case P_DEC_W13: case P_DEC_W2: case P_HEADS: return mask & LM_CUDA_SKIP_DEC_GEMV;
    }
    return false;
}

int dev_alloc(void **p, size_t n)
{
    CK(cudaMalloc(p, n ? n : 16));
    return HM_OK;
}

int xfm_init(xfm *X, const hm_flavor *f)
{
    X->f = *f;
    X->D = f->embed_dim, X->H = f->num_heads, X->KVH = f->num_kv_heads, X->I = f->intermediate_dim;
    if (X->H <= 0 || X->KVH <= 0 || X->D % X->H || X->H % X->KVH)
        return hm_err("flavor '%s': %d heads, %d kv heads, width %d do not divide", f->name, X->H, X->KVH, X->D);
    X->hd = X->D / X->H;
    X->qkvw = (X->H + 2 * X->KVH) * X->hd;
    X->L = (layer_w *)hm_calloc((size_t)f->num_layers, sizeof(layer_w));
    float *fr = (float *)hm_malloc(sizeof(float) * (size_t)(X->hd / 2));
    cpu_rope_freqs(fr, X->hd, f->rope_base, f->rope_scale_factor);
    if (dev_alloc((void **)&X->freqs, sizeof(float) * (X->hd / 2)) ||
        cudaMemcpy(X->freqs, fr, sizeof(float) * (X->hd / 2), cudaMemcpyHostToDevice) != cudaSuccess) {
        free(fr);
        return hm_err("%s:%d: uploading rope table failed", __FILE__, __LINE__);
    }
    free(fr);
    return HM_OK;
}

void xfm_free(xfm *X)
{
    if (X->L)
        for (int l = 0; l < X->f.num_layers; l++) {
            cudaFree(X->L[l].wqkv), cudaFree(X->L[l].wo), cudaFree(X->L[l].w13), cudaFree(X->L[l].w2);
            cudaFree(X->L[l].sa_norm), cudaFree(X->L[l].mlp_norm);
            cudaFree(X->L[l].s_qkv), cudaFree(X->L[l].s_o), cudaFree(X->L[l].s_13), cudaFree(X->L[l].s_2);
        }
    free(X->L);
    cudaFree(X->norm), cudaFree(X->freqs);
}

/* ---- loading from safetensors ---- */

bool quantised(hmc_dtype t) { return t == HMC_FP8 || t == HMC_NVFP4; }

/* An error unless the model holds `part` (a process that loaded one half calls the other's entry). */
int need_part(const lm_cuda *m, unsigned part, const char *fn)
{
    if (m->parts & part) return HM_OK;
    return hm_err("%s: the model was loaded without its %s half (lm_cuda_opts.parts)", fn,
                  part == LM_CUDA_PART_BACKBONE ? "backbone" : "depth");
}

/* A device allocation that the model keeps: counted in lm_cuda_resident_bytes. */
int walloc(lm_cuda *m, void **p, size_t n)
{
    CKH(dev_alloc(p, n));
    m->wbytes += n ? n : 16;
    return HM_OK;
}

/* bf16 [N, K] on the device -> type t (fp8: per-row scales, nvfp4: tensor scale) into out/scale */
int quantize(const void *w16, hmc_dtype t, int N, int K, void *out, float *scale)
{
    if (t == HMC_FP8) return hmc_quantize_fp8(w16, N, K, out, scale, 0);
    CKH(hmc_quantize_nvfp4(w16, N, K, out, scale, 0));
    return hmc_nvfp4_pack(out, N, K, 0); /* the GEMV layout */
}

/* Upload nmat matrices [N, K] (host fp32, one after the other) as type t into one allocation
 * *out (matrix i at i · mat_stride); for fp8 / nvfp4 also their scales into *scale (matrix
 * i's at i · hmc_weight_scales): the values go up as bf16 and are quantised on the device, one
 * matrix at a time, so the model never holds a bf16 copy. */
int put_weight(lm_cuda *m, const float *h, int nmat, int64_t N, int64_t K, hmc_dtype t, void **out, float **scale)
{
    const size_t ne = (size_t)N * K;
    int rc = HM_OK;
    if (t == HMC_F32) {
        CKH(walloc(m, out, nmat * ne * 4));
        CK(cudaMemcpy(*out, h, nmat * ne * 4, cudaMemcpyHostToDevice));
        return HM_OK;
    }
    uint16_t *b16 = (uint16_t *)hm_malloc(2 * ne);
    if (t == HMC_BF16) {
        rc = walloc(m, out, nmat * ne * 2);
        for (int i = 0; rc == HM_OK && i < nmat; i++) {
            for (size_t j = 0; j < ne; j++) b16[j] = hm_f32_to_bf16(h[i * ne + j]);
            if (cudaMemcpy((char *)*out + i * ne * 2, b16, ne * 2, cudaMemcpyHostToDevice) != cudaSuccess)
                rc = hm_err("%s:%d: weight upload failed", __FILE__, __LINE__);
        }
        free(b16);
        return rc;
    }
    const size_t wb = mat_stride(t, (int)N, (int)K), ns = hmc_weight_scales(t, (int)N);
    void *tmp = nullptr;
    rc = walloc(m, out, nmat * wb);
    if (rc == HM_OK) rc = walloc(m, (void **)scale, sizeof(float) * nmat * ns);
    if (rc == HM_OK) rc = dev_alloc(&tmp, ne * 2);
    for (int i = 0; rc == HM_OK && i < nmat; i++) {
        for (size_t j = 0; j < ne; j++) b16[j] = hm_f32_to_bf16(h[i * ne + j]);
        if (cudaMemcpy(tmp, b16, ne * 2, cudaMemcpyHostToDevice) != cudaSuccess)
            rc = hm_err("%s:%d: weight upload failed", __FILE__, __LINE__);
        if (rc == HM_OK) rc = quantize(tmp, t, (int)N, (int)K, (char *)*out + i * wb, *scale + i * ns);
        if (rc == HM_OK && cudaStreamSynchronize(0) != cudaSuccess) /* tmp is reused */
            rc = hm_err("%s:%d: quantising failed", __FILE__, __LINE__);
    }
    cudaFree(tmp);
    free(b16);
    return rc;
}

/* Fetch tensors `names` (each [rows_i, cols]) and upload them stacked as one [Σ rows, cols]
 * matrix of type t (put_weight; scale: see there, may be null for bf16/f32).  interleave: two
 * equal blocks of rows A, B are stored A0 B0 A1 B1 ... (w1|w3). */
/* ---- pre-quantised tensors (tools/quantize, docs/QUANTIZED.md) ----
 * A linear weight NAME the file holds quantised: fp8 = NAME F8_E4M3 [N, K] + NAME_scale F32 [N];
 * nvfp4 = NAME U8 [N, K/2] + NAME_block_scale F8_E4M3 [N, K/16] + NAME_scale F32 [1] (the tensor
 * scale of the whole matrix the engine stacks NAME into).  The bytes are what put_weight would
 * make on the device, so they go up as they are. */

/* The precision a tensor's dtype says it was quantised to (its data), or HMC_BF16 if it is not. */
hmc_dtype file_qdt(const st_tensor *t)
{
    return t->dtype == ST_F8_E4M3 ? HMC_FP8 : t->dtype == ST_U8 ? HMC_NVFP4 : HMC_BF16;
}

/* An error unless file precision fq is the model's (a quantised file needs that precision). */
int check_qdt(const lm_cuda *m, const char *name, hmc_dtype fq)
{
    if (fq == m->qdt) return HM_OK;
    return hm_err("tensor '%s' is stored quantised to %s (tools/quantize): load the model with precision %s, not %s",
                  name, fq == HMC_FP8 ? "fp8" : "nvfp4", fq == HMC_FP8 ? "fp8" : "nvfp4",
                  m->qdt == HMC_FP8 ? "fp8" : m->qdt == HMC_NVFP4 ? "nvfp4" : m->qdt == HMC_F32 ? "fp32" : "bf16");
}

/* st_get of `base` + `suffix` with dtype dt and the given shape */
int get_part(st_file *f, const char *base, const char *suffix, st_dtype dt, int ndim, const int64_t *shape,
             st_tensor **out)
{
    char nm[256];
    snprintf(nm, sizeof nm, "%s%s", base, suffix);
    CKH(st_get(f, nm, ndim, shape, out));
    if ((*out)->dtype != dt)
        return hm_err("tensor '%s': dtype %s, expected %s", nm, st_dtype_name((*out)->dtype), st_dtype_name(dt));
    return HM_OK;
}

/* Host copy, then upload, of one stacked quantised matrix from the file's tensors (see
 * upload_stacked): values row by row (interleaved for w1|w3), then the NVFP4 block scales likewise;
 * fp8 row scales follow their rows, NVFP4's tensor scale must be one value for the group. */
int upload_stacked_q(lm_cuda *m, st_file *f, const char *const *names, const int64_t *rows, int n, int64_t cols,
                     hmc_dtype t, void **out, float **scale, int interleave)
{
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += rows[i];
    const size_t wb = hmc_weight_bytes(t, (int)total, (int)cols), ns = hmc_weight_scales(t, (int)total);
    const size_t rb = t == HMC_FP8 ? (size_t)cols : (size_t)cols / 2, sb = (size_t)cols / 16;
    uint8_t *h = (uint8_t *)hm_malloc(wb);
    float *hs = (float *)hm_malloc(sizeof(float) * ns);
    int rc = HM_OK;
    int64_t off = 0;
    for (int i = 0; rc == HM_OK && i < n; i++) {
        st_tensor *tv, *ts, *tb = nullptr;
        const int64_t sv[2] = {rows[i], (int64_t)rb}, sbs[2] = {rows[i], (int64_t)sb};
        const int64_t ss[1] = {t == HMC_FP8 ? rows[i] : 1};
        rc = get_part(f, names[i], "", t == HMC_FP8 ? ST_F8_E4M3 : ST_U8, 2, sv, &tv);
        if (rc == HM_OK) rc = get_part(f, names[i], "_scale", ST_F32, 1, ss, &ts);
        if (rc == HM_OK && t == HMC_NVFP4) rc = get_part(f, names[i], "_block_scale", ST_F8_E4M3, 2, sbs, &tb);
        if (rc != HM_OK) break;
        if (t == HMC_NVFP4) {
            float v;
            memcpy(&v, ts->data, sizeof v);
            if (i == 0) hs[0] = v;
            else if (memcmp(&v, hs, sizeof v))
                rc = hm_err("tensor '%s_scale': %g, but '%s_scale' is %g: the engine stacks them under one tensor scale",
                            names[i], (double)v, names[0], (double)hs[0]);
        }
        for (int64_t r = 0; rc == HM_OK && r < rows[i]; r++) {
            const int64_t d = interleave ? 2 * r + i : off + r; /* interleave: two equal blocks A0 B0 A1 B1 ... */
            memcpy(h + d * rb, (const uint8_t *)tv->data + r * rb, rb);
            if (t == HMC_FP8) memcpy(hs + d, (const float *)ts->data + r, sizeof(float));
            else memcpy(h + total * rb + d * sb, (const uint8_t *)tb->data + r * sb, sb);
        }
        off += rows[i];
    }
    if (rc == HM_OK) rc = walloc(m, out, wb);
    if (rc == HM_OK) rc = walloc(m, (void **)scale, sizeof(float) * ns);
    if (rc == HM_OK && (cudaMemcpy(*out, h, wb, cudaMemcpyHostToDevice) != cudaSuccess ||
                        cudaMemcpy(*scale, hs, sizeof(float) * ns, cudaMemcpyHostToDevice) != cudaSuccess))
        rc = hm_err("%s:%d: weight upload failed", __FILE__, __LINE__);
    if (rc == HM_OK && t == HMC_NVFP4) rc = hmc_nvfp4_pack(*out, (int)total, (int)cols, 0); /* the GEMV layout */
    free(h), free(hs);
    return rc;
}

/* upload_stacked's path for a file that holds the tensors in bf16 (the released checkpoints) and
 * a bf16, fp8 or nvfp4 model: the bytes go from the file's mapping straight into their rows on the
 * device (interleaved rows by one strided copy), and a quantised type is made there from them.
 * The values are those of the path through f32 (bf16 -> f32 -> bf16 is exact), without its two
 * conversions and the f32 copy on the host: at 3B parameters those took most of a backbone's
 * ~25 s start (H100 host).  1 when the tensors are not all bf16 (the caller converts). */
int upload_stacked_bf16(lm_cuda *m, st_file *f, const char *const *names, const int64_t *rows, int n, int64_t cols,
                        hmc_dtype t, void **out, float **scale, int interleave)
{
    st_tensor *ts[8];
    int64_t total = 0;
    if (n > 8 || (interleave && (n != 2 || rows[0] != rows[1]))) return 1;
    for (int i = 0; i < n; i++) {
        const int64_t shape[2] = {rows[i], cols};
        CKH(st_get(f, names[i], 2, shape, &ts[i]));
        if (ts[i]->dtype != ST_BF16) return 1;
        total += rows[i];
    }
    const size_t rb = (size_t)cols * 2;
    void *dst = nullptr;
    int rc;
    if (t == HMC_BF16) { /* the allocations in put_weight's order */
        rc = walloc(m, out, (size_t)total * rb);
        dst = *out;
    } else {
        rc = walloc(m, out, mat_stride(t, (int)total, (int)cols));
        if (rc == HM_OK) rc = walloc(m, (void **)scale, sizeof(float) * hmc_weight_scales(t, (int)total));
        if (rc == HM_OK) rc = dev_alloc(&dst, (size_t)total * rb);
    }
    int64_t off = 0;
    for (int i = 0; rc == HM_OK && i < n; i++) {
        const cudaError_t e = interleave ? cudaMemcpy2D((char *)dst + i * rb, 2 * rb, ts[i]->data, rb, rb, (size_t)rows[i],
                                                        cudaMemcpyHostToDevice)
                                         : cudaMemcpy((char *)dst + off * rb, ts[i]->data, (size_t)rows[i] * rb,
                                                      cudaMemcpyHostToDevice);
        if (e != cudaSuccess) rc = hm_err("%s:%d: weight upload failed: %s", __FILE__, __LINE__, cudaGetErrorString(e));
        off += rows[i];
    }
    if (t != HMC_BF16) {
        if (rc == HM_OK) rc = quantize(dst, t, (int)total, (int)cols, *out, *scale);
        if (rc == HM_OK && cudaStreamSynchronize(0) != cudaSuccess) rc = hm_err("%s:%d: quantising failed", __FILE__, __LINE__);
        cudaFree(dst);
    }
    return rc;
}

int upload_stacked(lm_cuda *m, st_file *f, const char *const *names, const int64_t *rows, int n, int64_t cols,
                   hmc_dtype t, void **out, float **scale, int interleave = 0)
{
    if (const st_tensor *t0 = st_find(f, names[0])) {
        const hmc_dtype fq = file_qdt(t0);
        if (fq != HMC_BF16) {
            if (check_qdt(m, names[0], fq) != HM_OK ||
                upload_stacked_q(m, f, names, rows, n, cols, t, out, scale, interleave) != HM_OK)
                return hm_err_ctx("tensor '%s'", names[0]);
            return HM_OK;
        }
    }
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += rows[i];
    if (t != HMC_F32) {
        const int rc = upload_stacked_bf16(m, f, names, rows, n, cols, t, out, scale, interleave);
        if (rc != 1) return rc == HM_OK ? HM_OK : hm_err_ctx("tensor '%s'", names[0]);
    }
    float *h = (float *)hm_malloc(sizeof(float) * (size_t)(total * cols));
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        st_tensor *ts;
        int64_t shape[2] = {rows[i], cols};
        if (st_get(f, names[i], 2, shape, &ts) != HM_OK || st_to_f32(ts, h + off * cols) != HM_OK) {
            free(h);
            return HM_ERR;
        }
        off += rows[i];
    }
    if (interleave) {
        const size_t ne = (size_t)(total * cols);
        float *il = (float *)hm_malloc(sizeof(float) * ne);
        const int64_t half = total / 2;
        for (int64_t i = 0; i < half; i++) {
            memcpy(il + (2 * i) * cols, h + i * cols, sizeof(float) * cols);
            memcpy(il + (2 * i + 1) * cols, h + (half + i) * cols, sizeof(float) * cols);
        }
        free(h);
        h = il;
    }
    int rc = put_weight(m, h, 1, total, cols, t, out, scale);
    free(h);
    if (rc != HM_OK) return hm_err_ctx("tensor '%s'", names[0]);
    return HM_OK;
}

int upload1(lm_cuda *m, st_file *f, const char *name, int64_t rows, int64_t cols, hmc_dtype t, void **out,
            float **scale = nullptr)
{
    const char *names[1] = {name};
    return upload_stacked(m, f, names, &rows, 1, cols, t, out, scale);
}

/* A table the kernels read a few rows of per frame (the audio embeddings), in type t (bf16 / f32) in
 * pinned host memory mapped into the device's address space: *out is its device address. */
int host_alloc(lm_cuda *m, void **out, size_t bytes)
{
    void *h = nullptr;
    CK(cudaHostAlloc(&h, bytes ? bytes : 16, cudaHostAllocMapped));
    if (cudaHostGetDevicePointer(out, h, 0) != cudaSuccess || *out != h) { /* UVA: the same address */
        cudaFreeHost(h);
        return hm_err("%s:%d: pinned table not mapped at its host address", __FILE__, __LINE__);
    }
    m->hbytes += bytes;
    return HM_OK;
}
int host_table(lm_cuda *m, st_file *f, const char *name, int64_t rows, int64_t cols, hmc_dtype t, void **out)
{
    int64_t shape[2] = {rows, cols};
    const size_t n = (size_t)rows * cols;
    st_tensor *ts;
    if (t == HMC_BF16 && st_get(f, name, 2, shape, &ts) == HM_OK && ts->dtype == ST_BF16) { /* as stored */
        CKH(host_alloc(m, out, n * 2));
        memcpy(*out, ts->data, n * 2);
        return HM_OK;
    }
    float *h = st_load_f32(f, name, 2, shape);
    if (!h) return HM_ERR;
    int rc = host_alloc(m, out, n * wsz(t));
    if (rc == HM_OK && t == HMC_F32) memcpy(*out, h, n * 4);
    else if (rc == HM_OK)
        for (size_t i = 0; i < n; i++) ((uint16_t *)*out)[i] = hm_f32_to_bf16(h[i]);
    free(h);
    return rc == HM_OK ? HM_OK : hm_err_ctx("tensor '%s'", name);
}

int upload_vec_f32(lm_cuda *m, st_file *f, const char *name, int64_t n, float **out)
{
    float *h = st_load_f32(f, name, 1, &n);
    if (!h) return HM_ERR;
    int rc = walloc(m, (void **)out, sizeof(float) * (size_t)n);
    if (rc == HM_OK && cudaMemcpy(*out, h, sizeof(float) * (size_t)n, cudaMemcpyHostToDevice) != cudaSuccess)
        rc = hm_err("%s:%d: upload of '%s' failed", __FILE__, __LINE__, name);
    free(h);
    return rc;
}

int load_xfm(lm_cuda *m, st_file *f, const char *pfx, xfm *X)
{
    const hmc_dtype t = m->qdt;
    char n[6][160];
    for (int l = 0; l < X->f.num_layers; l++) {
        layer_w *L = &X->L[l];
        snprintf(n[0], sizeof n[0], "%s.layers.%d.attn.q_proj.weight", pfx, l);
        snprintf(n[1], sizeof n[1], "%s.layers.%d.attn.k_proj.weight", pfx, l);
        snprintf(n[2], sizeof n[2], "%s.layers.%d.attn.v_proj.weight", pfx, l);
        const char *qkv[3] = {n[0], n[1], n[2]};
        int64_t qr[3] = {X->H * X->hd, X->KVH * X->hd, X->KVH * X->hd};
        CKH(upload_stacked(m, f, qkv, qr, 3, X->D, t, &L->wqkv, &L->s_qkv));
        snprintf(n[0], sizeof n[0], "%s.layers.%d.attn.output_proj.weight", pfx, l);
        CKH(upload1(m, f, n[0], X->D, X->H * X->hd, t, &L->wo, &L->s_o));
        snprintf(n[0], sizeof n[0], "%s.layers.%d.mlp.w1.weight", pfx, l);
        snprintf(n[1], sizeof n[1], "%s.layers.%d.mlp.w3.weight", pfx, l);
        const char *w13[2] = {n[0], n[1]};
        int64_t r13[2] = {X->I, X->I};
        CKH(upload_stacked(m, f, w13, r13, 2, X->D, t, &L->w13, &L->s_13, 1)); /* gate/up rows interleaved */
        snprintf(n[0], sizeof n[0], "%s.layers.%d.mlp.w2.weight", pfx, l);
        CKH(upload1(m, f, n[0], X->D, X->I, t, &L->w2, &L->s_2));
        snprintf(n[0], sizeof n[0], "%s.layers.%d.sa_norm.scale", pfx, l);
        CKH(upload_vec_f32(m, f, n[0], X->D, &L->sa_norm));
        snprintf(n[0], sizeof n[0], "%s.layers.%d.mlp_norm.scale", pfx, l);
        CKH(upload_vec_f32(m, f, n[0], X->D, &L->mlp_norm));
    }
    snprintf(n[0], sizeof n[0], "%s.norm.scale", pfx);
    CKH(upload_vec_f32(m, f, n[0], X->D, &X->norm));
    return HM_OK;
}

/* audio_head as tools/quantize writes it: already transposed, [nc-1] matrices [Va, Dd] quantised
 * one by one (fp8: audio_head F8_E4M3 [nc-1, Va, Dd] + audio_head_scale F32 [nc-1, Va]; nvfp4:
 * audio_head U8 [nc-1, Va, Dd/2] + audio_head_block_scale F8_E4M3 [nc-1, Va, Dd/16] +
 * audio_head_scale F32 [nc-1]); matrix i goes to i · mat_stride as put_weight places it. */
int load_audio_head_q(lm_cuda *m, st_file *f, hmc_dtype fq)
{
    const hm_lm_config *c = &m->cfg;
    const int Dd = m->dec.D, Va = c->audio_vocab_size, C = c->audio_num_codebooks - 1;
    CKH(check_qdt(m, "audio_head", fq));
    const size_t wb = mat_stride(fq, Va, Dd), ns = hmc_weight_scales(fq, Va);
    const size_t vb = fq == HMC_FP8 ? (size_t)Va * Dd : (size_t)Va * Dd / 2, bb = (size_t)Va * Dd / 16;
    st_tensor *tv, *ts, *tb = nullptr;
    const int64_t sv[3] = {C, Va, fq == HMC_FP8 ? Dd : Dd / 2}, sbs[3] = {C, Va, Dd / 16}, s8[2] = {C, Va}, s4[1] = {C};
    CKH(get_part(f, "audio_head", "", fq == HMC_FP8 ? ST_F8_E4M3 : ST_U8, 3, sv, &tv));
    if (fq == HMC_FP8) CKH(get_part(f, "audio_head", "_scale", ST_F32, 2, s8, &ts));
    else CKH(get_part(f, "audio_head", "_scale", ST_F32, 1, s4, &ts));
    if (fq == HMC_NVFP4) CKH(get_part(f, "audio_head", "_block_scale", ST_F8_E4M3, 3, sbs, &tb));
    uint8_t *h = (uint8_t *)hm_calloc(wb * C, 1);
    for (int i = 0; i < C; i++) {
        memcpy(h + i * wb, (const uint8_t *)tv->data + i * vb, vb);
        if (tb) memcpy(h + i * wb + vb, (const uint8_t *)tb->data + i * bb, bb);
    }
    int rc = walloc(m, &m->audio_head, wb * C);
    if (rc == HM_OK) rc = walloc(m, (void **)&m->s_ah, sizeof(float) * ns * C);
    if (rc == HM_OK && (cudaMemcpy(m->audio_head, h, wb * C, cudaMemcpyHostToDevice) != cudaSuccess ||
                        cudaMemcpy(m->s_ah, ts->data, sizeof(float) * ns * C, cudaMemcpyHostToDevice) != cudaSuccess))
        rc = hm_err("%s:%d: audio_head upload failed", __FILE__, __LINE__);
    for (int i = 0; rc == HM_OK && fq == HMC_NVFP4 && i < C; i++) /* the GEMV layout */
        rc = hmc_nvfp4_pack((char *)m->audio_head + i * wb, (int)Va, (int)Dd, 0);
    free(h);
    return rc == HM_OK ? HM_OK : hm_err_ctx("audio_head");
}

/* audio_head in bf16 in the file [nc-1, Dd, Va] (shape: ahs) for a bf16, fp8 or nvfp4 model: each
 * matrix goes up as it is and is turned to [Va, Dd] on the device (then quantised), into the places
 * and allocations put_weight gives it.  The same bytes as put_weight's path through f32, without
 * its host transpose: ~0.7 GB of f32 written a column at a time, most of a draft-verifier's start.
 * 1 when the tensor is not bf16 (the caller converts). */
int audio_head_bf16(lm_cuda *m, st_file *f, const int64_t *ahs)
{
    st_tensor *ts;
    CKH(st_get(f, "audio_head", 3, ahs, &ts));
    if (ts->dtype != ST_BF16) return 1;
    const int C = (int)ahs[0], Dd = (int)ahs[1], Va = (int)ahs[2];
    const hmc_dtype q = m->qdt;
    const size_t ne = (size_t)Dd * Va, wb = q == HMC_BF16 ? ne * 2 : mat_stride(q, Va, Dd);
    const size_t ns = q == HMC_BF16 ? 0 : hmc_weight_scales(q, Va);
    void *src = nullptr, *tr = nullptr;
    int rc = walloc(m, &m->audio_head, C * wb);
    if (rc == HM_OK && q != HMC_BF16) rc = walloc(m, (void **)&m->s_ah, sizeof(float) * ns * C);
    if (rc == HM_OK) rc = dev_alloc(&src, ne * 2);
    if (rc == HM_OK && q != HMC_BF16) rc = dev_alloc(&tr, ne * 2);
    for (int i = 0; rc == HM_OK && i < C; i++) {
        if (cudaMemcpy(src, (const char *)ts->data + i * ne * 2, ne * 2, cudaMemcpyHostToDevice) != cudaSuccess)
            rc = hm_err("%s:%d: audio_head upload failed", __FILE__, __LINE__);
        if (rc == HM_OK)
            rc = hmc_transpose16(src, Dd, Va, q == HMC_BF16 ? (char *)m->audio_head + i * wb : tr, 0);
        if (rc == HM_OK && q != HMC_BF16)
            rc = quantize(tr, q, Va, Dd, (char *)m->audio_head + i * wb, m->s_ah + i * ns);
        if (rc == HM_OK && cudaStreamSynchronize(0) != cudaSuccess) /* src and tr are reused */
            rc = hm_err("%s:%d: audio_head transpose failed", __FILE__, __LINE__);
    }
    cudaFree(src), cudaFree(tr);
    return rc;
}

/* The tensors of the halves in m->parts: backbone = backbone layers + norm, text embeddings,
 * unconditional embedding, MuQ projection; depth = decoder layers + norm, codebook-0 head,
 * projection, audio heads; both use the audio embeddings (frame input / decoder input).  Layer
 * matrices and heads in m->qdt, embeddings in m->wdt, norms and biases fp32. */
int load_weights(lm_cuda *m, st_file *f)
{
    const hm_lm_config *c = &m->cfg;
    const int D = m->bb.D, Dd = m->dec.D, Va = c->audio_vocab_size, nc = c->audio_num_codebooks;
    const hmc_dtype t = m->wdt, q = m->qdt;
    const bool bb = m->parts & LM_CUDA_PART_BACKBONE, dp = m->parts & LM_CUDA_PART_DEPTH;
    if (bb) CKH(load_xfm(m, f, "backbone", &m->bb));
    if (dp) CKH(load_xfm(m, f, "decoder", &m->dec));
    if (bb) {
        st_tensor *ts;
        int64_t shape[2] = {c->text_vocab_size, D};
        CKH(st_get(f, "text_embeddings.weight", 2, shape, &ts));
        if (ts->dtype != ST_BF16 && ts->dtype != ST_F16 && ts->dtype != ST_F32)
            return hm_err("tensor 'text_embeddings.weight': dtype %s (bf16, f16 or f32)", st_dtype_name(ts->dtype));
        m->text_t = ts;
    }
    if (m->emb_host) CKH(host_table(m, f, "audio_embeddings.weight", (int64_t)Va * nc, D, t, &m->audio_emb));
    else CKH(upload1(m, f, "audio_embeddings.weight", (int64_t)Va * nc, D, t, &m->audio_emb));
    if (bb) {
        CKH(upload1(m, f, "unconditional_text_embedding.weight", 1, D, t, &m->uncond));
        CKH(upload1(m, f, "unconditional_text_embedding.weight", 1, D, HMC_F32, (void **)&m->uncond_f32));
        CKH(upload1(m, f, "muq_linear.weight", D, c->muq_dim, t, &m->muq_w));
        CKH(upload_vec_f32(m, f, "muq_linear.bias", D, &m->muq_b));
    }
    if (!dp) return HM_OK;
    CKH(upload1(m, f, "codebook0_head.weight", Va, D, q, &m->c0_head, &m->s_c0));
    CKH(upload1(m, f, "projection.weight", Dd, D, q, &m->proj, &m->s_proj));
    /* audio_head [nc-1, Dd, Va] is used as h @ A[i]: store each A[i] transposed, [Va, Dd] */
    if (const st_tensor *a0 = st_find(f, "audio_head"))
        if (file_qdt(a0) != HMC_BF16) return load_audio_head_q(m, f, file_qdt(a0));
    int64_t ahs[3] = {nc - 1, Dd, Va};
    if (q != HMC_F32 && !getenv("HM_LM_AUDIO_HEAD_HOST")) { /* the knob: the host path, for an A/B */
        const int rc = audio_head_bf16(m, f, ahs);
        if (rc != 1) return rc == HM_OK ? HM_OK : hm_err_ctx("audio_head");
    }
    float *ah = st_load_f32(f, "audio_head", 3, ahs);
    if (!ah) return HM_ERR;
    size_t ne = (size_t)(nc - 1) * Dd * Va;
    float *tr = (float *)hm_malloc(sizeof(float) * ne);
    for (int i = 0; i < nc - 1; i++)
        for (int d = 0; d < Dd; d++)
            for (int v = 0; v < Va; v++)
                tr[((size_t)i * Va + v) * Dd + d] = ah[((size_t)i * Dd + d) * Va + v];
    free(ah);
    int rc = put_weight(m, tr, nc - 1, Va, Dd, q, &m->audio_head, &m->s_ah);
    free(tr);
    return rc == HM_OK ? HM_OK : hm_err_ctx("audio_head");
}

/* ---- random weights (benchmarks) ----
 * Every draw takes the next seed whether or not its half is loaded, so a half (or a quantised
 * model) holds exactly the values of the full bf16 model of the same seed (quantised from them). */
int rnd(lm_cuda *m, bool keep, void **p, size_t n, hmc_dtype t, uint64_t *seed, float scale)
{
    const uint64_t s = (*seed)++;
    if (!keep) return HM_OK;
    CKH(walloc(m, p, n * wsz(t)));
    CKH(hmc_fill_random(*p, t, n, s, scale, 0));
    return HM_OK;
}
/* rnd into host memory (the text embeddings: see lm_cuda.text_host), drawn on the device */
int rnd_host(lm_cuda *m, bool keep, void **p, size_t n, hmc_dtype t, uint64_t *seed, float scale)
{
    const uint64_t s = (*seed)++;
    if (!keep) return HM_OK;
    void *tmp = nullptr;
    CKH(dev_alloc(&tmp, n * wsz(t)));
    *p = hm_malloc(n * wsz(t));
    int rc = hmc_fill_random(tmp, t, n, s, scale, 0);
    if (rc == HM_OK && cudaMemcpy(*p, tmp, n * wsz(t), cudaMemcpyDeviceToHost) != cudaSuccess)
        rc = hm_err("%s:%d: random text embeddings failed", __FILE__, __LINE__);
    cudaFree(tmp);
    (void)m;
    return rc;
}
/* nmat random matrices [N, K] of type t (+ scales when quantised, as put_weight) from one draw */
int rnd_w(lm_cuda *m, bool keep, void **p, float **sc, int nmat, int N, int K, hmc_dtype t, uint64_t *seed,
          float scale)
{
    if (!quantised(t)) return rnd(m, keep, p, (size_t)nmat * N * K, t, seed, scale);
    const uint64_t s = (*seed)++;
    if (!keep) return HM_OK;
    const size_t ne = (size_t)N * K, wb = mat_stride(t, N, K), ns = hmc_weight_scales(t, N);
    void *tmp = nullptr;
    int rc = walloc(m, p, nmat * wb);
    if (rc == HM_OK) rc = walloc(m, (void **)sc, sizeof(float) * nmat * ns);
    if (rc == HM_OK) rc = dev_alloc(&tmp, nmat * ne * 2);
    if (rc == HM_OK) rc = hmc_fill_random(tmp, HMC_BF16, nmat * ne, s, scale, 0);
    for (int i = 0; rc == HM_OK && i < nmat; i++)
        rc = quantize((const char *)tmp + i * ne * 2, t, N, K, (char *)*p + i * wb, *sc + i * ns);
    if (rc == HM_OK && cudaStreamSynchronize(0) != cudaSuccess) rc = hm_err("%s:%d: quantising failed", __FILE__, __LINE__);
    cudaFree(tmp);
    return rc;
}
int ones(lm_cuda *m, bool keep, float **p, int n)
{
    if (!keep) return HM_OK;
    float *h = (float *)hm_malloc(sizeof(float) * n);
    for (int i = 0; i < n; i++) h[i] = 1.0f;
    int rc = walloc(m, (void **)p, sizeof(float) * n);
    if (rc == HM_OK && cudaMemcpy(*p, h, sizeof(float) * n, cudaMemcpyHostToDevice) != cudaSuccess)
        rc = hm_err("%s:%d: upload failed", __FILE__, __LINE__);
    free(h);
    return rc;
}
int random_xfm(lm_cuda *m, bool keep, xfm *X, uint64_t *seed)
{
    const hmc_dtype t = m->qdt;
    for (int l = 0; l < X->f.num_layers; l++) {
        layer_w *L = &X->L[l];
        float sd = 1.0f / sqrtf((float)X->D), si = 1.0f / sqrtf((float)X->I);
        CKH(rnd_w(m, keep, &L->wqkv, &L->s_qkv, 1, X->qkvw, X->D, t, seed, sd));
        CKH(rnd_w(m, keep, &L->wo, &L->s_o, 1, X->D, X->H * X->hd, t, seed, sd));
        CKH(rnd_w(m, keep, &L->w13, &L->s_13, 1, 2 * X->I, X->D, t, seed, sd));
        CKH(rnd_w(m, keep, &L->w2, &L->s_2, 1, X->D, X->I, t, seed, si));
        CKH(ones(m, keep, &L->sa_norm, X->D));
        CKH(ones(m, keep, &L->mlp_norm, X->D));
    }
    CKH(ones(m, keep, &X->norm, X->D));
    return HM_OK;
}

int model_init(lm_cuda *m, const hm_lm_config *cfg, const lm_cuda_opts *o)
{
    m->cfg = *cfg;
    m->tune = {1, 0, 0, 0, 0, 1, 32}; /* measured best on an H100 (docs/PERF.md; the L2 prefetch hints were slower) */
    m->tune.persist = LM_CUDA_PERSIST_DEFAULT;
    if (const char *e = getenv("HM_LM_PERSIST")) {
        char *end;
        long v = strtol(e, &end, 0);
        if (*e == '\0' || *end || v < 0 || v > 3) return hm_err("HM_LM_PERSIST='%s' (0..3: bit 0 backbone, bit 1 decoder)", e);
        m->tune.persist = (int)v;
    }
    /* fp8 prefill: the FP8 GEMM or dequantise + bf16 GEMM (HM_LM_FP8_PREFILL=gemm|dequant) */
    m->tune.prefill_fp8 = PREFILL_FP8_DEFAULT;
    if (const char *e = getenv("HM_LM_FP8_PREFILL")) {
        if (!strcmp(e, "gemm")) m->tune.prefill_fp8 = 1;
        else if (!strcmp(e, "dequant")) m->tune.prefill_fp8 = 0;
        else return hm_err("HM_LM_FP8_PREFILL='%s' (gemm or dequant)", e);
    }
    const hmc_dtype w = o ? o->wdt : HMC_BF16;
    if (w != HMC_BF16 && w != HMC_F32 && !quantised(w))
        return hm_err("lm_cuda: weight dtype %d (bf16, f32, fp8 or nvfp4)", (int)w);
    /* quantised models keep embeddings, KV caches and GEMM inputs in bf16 */
    m->qdt = w, m->wdt = quantised(w) ? HMC_BF16 : w;
    m->parts = o && o->parts ? o->parts : LM_CUDA_PART_BACKBONE | LM_CUDA_PART_DEPTH;
    const char *ed = getenv("HM_LM_EMB_DEVICE");
    m->emb_host = !(o && o->emb_device) && !(ed && !strcmp(ed, "1"));
    if (m->parts & ~(unsigned)(LM_CUDA_PART_BACKBONE | LM_CUDA_PART_DEPTH))
        return hm_err("lm_cuda: parts 0x%x (LM_CUDA_PART_BACKBONE | LM_CUDA_PART_DEPTH)", m->parts);
    if (cfg->audio_num_codebooks < 2 || cfg->audio_num_codebooks > 8)
        return hm_err("lm_cuda: %d codebooks (2..8 supported)", cfg->audio_num_codebooks);
    CKH(xfm_init(&m->bb, &cfg->backbone));
    CKH(xfm_init(&m->dec, &cfg->decoder));
    const int kq = w == HMC_NVFP4 ? 32 : 16;
    if (quantised(w)) {
        const xfm *Xs[2] = {&m->bb, &m->dec};
        for (int i = 0; i < 2; i++)
            if (Xs[i]->D % kq || Xs[i]->I % kq || (Xs[i]->H * Xs[i]->hd) % kq)
                return hm_err("lm_cuda: %s weights need widths that are multiples of %d (%s: %d, %d, %d)",
                              w == HMC_FP8 ? "fp8" : "nvfp4", kq, Xs[i]->f.name, Xs[i]->D, Xs[i]->I,
                              Xs[i]->H * Xs[i]->hd);
    }
    return HM_OK;
}

/* After the weights: the bf16 scratch a quantised backbone dequantises its matrices into for the
 * prefill GEMMs, one row chunk at a time: a quarter of the largest backbone matrix (25 MB at the
 * release's sizes instead of 101; HM_LM_DEQ_CHUNKS=1 gives the whole matrix, for A/B). */
int model_finish(lm_cuda *m)
{
    if (!quantised(m->qdt) || !(m->parts & LM_CUDA_PART_BACKBONE)) return HM_OK;
    const xfm *X = &m->bb;
    size_t n = HM_MAX(HM_MAX((size_t)X->qkvw * X->D, (size_t)X->D * X->H * X->hd), (size_t)2 * X->I * X->D);
    const char *e = getenv("HM_LM_DEQ_CHUNKS");
    const size_t chunks = e && atoi(e) >= 1 && atoi(e) <= 64 ? (size_t)atoi(e) : 4;
    const size_t kmax = HM_MAX(HM_MAX((size_t)X->D, (size_t)X->I), (size_t)X->H * X->hd);
    m->deq_bytes = 2 * HM_MAX((n + chunks - 1) / chunks, 64 * kmax); /* at least 64 rows of any matrix */
    return walloc(m, &m->deq, m->deq_bytes);
}

/* Prefill GEMM y (+)= x · Wᵀ on a layer matrix (x = s->xn, bf16 for quantised weights).  fp8
 * weights with tune.prefill_fp8: x is quantised to e4m3 per row (into s->xq, s->xs) and the FP8
 * GEMM applies both scales; work: [M, N] fp32 free during the call (the epilogue fallback of an
 * accumulating GEMM).  Otherwise quantised weights are first dequantised into the model's bf16
 * scratch (one matrix at a time, on the request's stream), then the bf16 GEMM. */
int gemm_w(lm_cuda_req *r, scratch *s, const void *W, const float *scale, float *y, int M, int N, int K, int acc,
           float *work)
{
    const lm_cuda *m = r->m;
    const void *x = s->xn;
    if (!quantised(m->qdt)) return hmc_gemm(x, W, m->wdt, y, M, N, K, acc, r->st);
    if (m->qdt == HMC_FP8 && m->tune.prefill_fp8) {
        CKH(hmc_quantize_fp8(x, M, K, s->xq, s->xs, r->st));
        return hmc_gemm_fp8(s->xq, s->xs, W, scale, y, M, N, K, acc, work, r->st);
    }
    /* rows of W a chunk holds (a multiple of 64 where it splits: the chunks' output columns start
     * 256-byte aligned, as cuBLASLt's heuristic assumes of its pointers) */
    int rows = (int)HM_MIN((size_t)N, m->deq_bytes / ((size_t)K * 2));
    if (rows < N) rows = HM_MAX(64, rows / 64 * 64);
    if ((size_t)rows * K * 2 > m->deq_bytes) return hm_err("%s:%d: dequantise scratch too small", __FILE__, __LINE__);
    for (int n0 = 0; n0 < N; n0 += rows) {
        const int nr = HM_MIN(rows, N - n0);
        CKH(hmc_dequantize_rows(W, m->qdt, scale, N, K, n0, nr, m->deq, r->st));
        CKH(hmc_gemm_ld(x, m->deq, HMC_BF16, y + n0, N, M, nr, K, acc, r->st));
    }
    return HM_OK;
}

/* ---- the layer stack ---- */

/* GEMV roles, the bits of lm_cuda_tune.self_pf */
enum { G_QKV, G_O, G_W13, G_W2, G_HEAD };

/* out[role] = the integer in the environment variable <prefix><ROLE> (ROLE: QKV, O, W13, W2, HEAD), or 0 */
void role_env(const char *prefix, int *out)
{
    static const char *const roles[] = {"QKV", "O", "W13", "W2", "HEAD"};
    for (int i = 0; i <= G_HEAD; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s%s", prefix, roles[i]);
        const char *e = getenv(name);
        out[i] = e ? atoi(e) : 0;
    }
}

/* hmc_gemv with its role's tuning: self-prefetch on or off (a launcher setting read at launch,
 * i.e. at graph capture) and a forced kernel variant (lm_cuda_tune.variant: gemv.cu's bf16 / f32
 * kernels only; the per-role A/B knobs below: any weight type). */
int gemv_tuned(const lm_cuda *m, int role, hmc_gemv_args *g, cudaStream_t st)
{
    hmc_gemv_set_self_prefetch((m->tune.self_pf >> role) & 1);
    hmc_gemv_set_early_loads(m->tune.early);
    if (m->tune.variant && (g->wdt == HMC_BF16 || g->wdt == HMC_F32)) g->variant = m->tune.variant;
    /* diagnostics: HM_GEMV_STAMP=<role + 1> stamps that role's launches (hmc_gemv_stamp_report) */
    static int stamp_role = -2;
    if (stamp_role == -2) {
        const char *e = getenv("HM_GEMV_STAMP");
        stamp_role = e ? atoi(e) - 1 : -1;
    }
    hmc_gemv_set_stamp(role == stamp_role);
    /* A/B knobs per role, read once: HM_GEMV_VARIANT_<ROLE> (QKV, O, W13, W2, HEAD) forces a bf16
     * variant for one role (HM_GEMV_VARIANT4_<ROLE>: for its 4-row launches, the depth decoder's
     * first step, only; no variant measured better there, docs/PERF.md); HM_GEMVQ_VARIANT_<ROLE> the same for fp8 / NVFP4 weights (gemv_quant.cu:
     * the 8-row kernel's 1..4, the streaming kernel's 1..12); HM_GEMV_BPS_<ROLE> = resident blocks per
     * SM for one role's bf16 launches (the next kernel's blocks land beside a 1-block launch and
     * start their loads early) */
    static int role_variant[G_HEAD + 1] = {-1}, role_qvariant[G_HEAD + 1], role_bps[G_HEAD + 1];
    static int role_variant4[G_HEAD + 1];
    if (role_variant[0] < 0) {
        role_env("HM_GEMV_VARIANT4_", role_variant4);
        role_env("HM_GEMV_VARIANT_", role_variant);
        role_env("HM_GEMVQ_VARIANT_", role_qvariant);
        role_env("HM_GEMV_BPS_", role_bps);
    }
    if (role_variant[role] > 0 && g->wdt == HMC_BF16) g->variant = role_variant[role];
    if (role_variant4[role] > 0 && g->wdt == HMC_BF16 && g->rows == 4) g->variant = role_variant4[role];
    if (role_qvariant[role] > 0 && quantised(g->wdt)) g->variant = role_qvariant[role];
    const int bps = role_bps[role] > 0 && (g->wdt == HMC_BF16 || g->wdt == HMC_F32) ? role_bps[role] : 0;
    if (bps) hmc_gemv_set_blocks_per_sm(bps);
    int rc = hmc_gemv(g, st);
    if (bps) hmc_gemv_set_blocks_per_sm(2);
    hmc_gemv_set_stamp(0);
    hmc_gemv_set_self_prefetch(0);
    hmc_gemv_set_early_loads(0);
    return rc;
}

/* Bytes of the L2 prefetch hint a GEMV gives for the next GEMV's weights (first pf_next_kb). */
size_t pf_next(const lm_cuda *m, size_t bytes)
{
    return HM_MIN(bytes, (size_t)m->tune.pf_next_kb << 10);
}

/* One transformer layer over R = B*T rows of s->x.  Decode (gemv) for R <= 4, else cuBLASLt.
 * next_w / next_bytes: the weights the op after this layer streams (L2 prefetch hint, or null). */
int layer_fwd(lm_cuda_req *r, const xfm *X, int l, scratch *s, int B, int T, const int *pos_dev, int pos_add,
              void *kc, void *vc, int max_seq, int max_keys, int is_dec, const void *next_w = nullptr,
              size_t next_bytes = 0)
{
    const layer_w *L = &X->L[l];
    const lm_cuda *m = r->m;
    const hmc_dtype t = m->wdt, qt = m->qdt;
    const int R = B * T, D = X->D, I = X->I, HD = X->H * X->hd;
    const float eps = X->f.norm_eps;
    const size_t b_qkv = hmc_weight_bytes(qt, X->qkvw, D), b_o = hmc_weight_bytes(qt, D, HD),
                 b_13 = hmc_weight_bytes(qt, 2 * I, D), b_2 = hmc_weight_bytes(qt, D, I);
    cudaStream_t st = r->st;
    const int gemm = R > 4;
    const int c0 = is_dec ? P_DEC_QKV - P_BB_QKV : 0;
    /* rotary + cache append in the qkv GEMV epilogue (gemv.cu's and gemv_quant.cu's kernels) */
    const int fuse = !gemm && m->tune.fuse_rope;

    hmc_rope_args ra = {s->qkv, B, T, X->H, X->KVH, X->hd, pos_dev, pos_add, X->freqs, kc, vc, t, max_seq};
    if (!gemm) {
        hmc_gemv_args g = {L->wqkv, qt, X->qkvw, D, L->s_qkv, s->x, D, R, HMC_IN_RMSNORM, L->sa_norm, eps,
                           s->qkv, X->qkvw, 0};
        g.pf = L->wo, g.pf_bytes = pf_next(m, b_o);
        if (fuse) g.rope = &ra;
        OP(r, P_BB_QKV + c0, (double)b_qkv, gemv_tuned(m, G_QKV, &g, st));
    } else {
        CKH(hmc_rmsnorm(s->x, L->sa_norm, s->xn, t, R, D, eps, st));
        CKH(gemm_w(r, s, L->wqkv, L->s_qkv, s->qkv, R, X->qkvw, D, 0, nullptr));
    }
    if (!fuse) OP(r, P_BB_ROPE + c0, 0, hmc_rope_append(&ra, st));
    hmc_attn_args aa = {s->qkv, B, T, X->H, X->KVH, X->hd, pos_dev, pos_add, kc, vc, t, max_seq, max_keys,
                        s->att, s->work};
    if (!gemm && m->tune.attn_pf) aa.pf = L->wo, aa.pf_bytes = b_o;
    /* only the backbone's frame graph passes pos_dev: its cache rows below the position and the
     * position itself come from earlier graph launches */
    aa.early_keys = !gemm && pos_dev && T == 1;
    static int env_chunks = -1; /* A/B: HM_LM_ATTN_CHUNKS overrides the tuned chunk count */
    if (env_chunks < 0) env_chunks = getenv("HM_LM_ATTN_CHUNKS") ? atoi(getenv("HM_LM_ATTN_CHUNKS")) : 0;
    if (!gemm) hmc_attention_set_max_chunks(env_chunks > 0 ? env_chunks : m->tune.attn_chunks > 0 ? m->tune.attn_chunks : 64);
    OP(r, P_BB_ATTN + c0, 0, hmc_attention(&aa, st));
    hmc_attention_set_max_chunks(64);
    if (!gemm) {
        hmc_gemv_args g = {L->wo, qt, D, HD, L->s_o, s->att, HD, R, HMC_IN_PLAIN, nullptr, 0.0f, s->x, D, 1};
        g.pf = L->w13, g.pf_bytes = pf_next(m, b_13);
        OP(r, P_BB_O + c0, (double)b_o, gemv_tuned(m, G_O, &g, st));
        hmc_gemv_args g13 = {L->w13, qt, 2 * I, D, L->s_13, s->x, D, R, HMC_IN_RMSNORM, L->mlp_norm, eps,
                             s->gu, I, 0, 0, 1};
        g13.pf = L->w2, g13.pf_bytes = pf_next(m, b_2);
        OP(r, P_BB_W13 + c0, (double)b_13, gemv_tuned(m, G_W13, &g13, st));
        hmc_gemv_args g2 = {L->w2, qt, D, I, L->s_2, s->gu, I, R, HMC_IN_PLAIN, nullptr, 0.0f, s->x, D, 1};
        /* the next layer's qkv, or what the caller streams next */
        if (l + 1 < X->f.num_layers) g2.pf = X->L[l + 1].wqkv, g2.pf_bytes = pf_next(m, b_qkv);
        else if (next_w) g2.pf = next_w, g2.pf_bytes = pf_next(m, next_bytes);
        OP(r, P_BB_W2 + c0, (double)b_2, gemv_tuned(m, G_W2, &g2, st));
    } else {
        CKH(hmc_convert(s->att, s->xn, t, (size_t)R * HD, st));
        CKH(gemm_w(r, s, L->wo, L->s_o, s->x, R, D, HD, 1, s->gu)); /* gu is free until w1|w3 */
        CKH(hmc_rmsnorm(s->x, L->mlp_norm, s->xn, t, R, D, eps, st));
        CKH(gemm_w(r, s, L->w13, L->s_13, s->gu, R, 2 * I, D, 0, nullptr));
        CKH(hmc_silu_mul(s->gu, s->xn, t, R, I, 1, st));
        CKH(gemm_w(r, s, L->w2, L->s_2, s->x, R, D, I, 1, s->qkv)); /* qkv is free after attention */
    }
    return HM_OK;
}

void scratch_free(scratch *s)
{
    cudaFree(s->x), cudaFree(s->qkv), cudaFree(s->att), cudaFree(s->gu), cudaFree(s->work), cudaFree(s->xn);
    cudaFree(s->xq), cudaFree(s->xs);
    memset(s, 0, sizeof *s);
}

int scratch_alloc(scratch *s, const xfm *X, int B, int T, int max_keys, hmc_dtype t)
{
    scratch_free(s);
    const size_t R = (size_t)B * T;
    s->R = (int)R;
    CKH(dev_alloc((void **)&s->x, R * X->D * 4));
    CKH(dev_alloc((void **)&s->qkv, R * X->qkvw * 4));
    CKH(dev_alloc((void **)&s->att, R * X->H * X->hd * 4));
    CKH(dev_alloc((void **)&s->gu, R * 2 * X->I * 4));
    size_t xw = (size_t)HM_MAX(HM_MAX(X->D, X->I), X->H * X->hd);
    CKH(dev_alloc(&s->xn, R * xw * wsz(t)));
    CKH(dev_alloc(&s->xq, R * xw));
    CKH(dev_alloc((void **)&s->xs, R * sizeof(float)));
    s->work_bytes = hmc_attention_work_bytes(B, T, X->H, X->KVH, X->hd, max_keys);
    CKH(dev_alloc((void **)&s->work, s->work_bytes));
    CK(cudaMemset(s->work, 0, s->work_bytes)); /* attention merge counters start at 0 */
    return HM_OK;
}

/* The phases of a decode layer stack over B rows at one position each (hmc_persist): per layer
 * qkv (+ rotary, cache append), attention, o (+=), w1|w3 (SwiGLU), w2 (+=), on scratch s. */
int persist_program(lm_cuda_req *r, const xfm *X, scratch *s, void **kc, void **vc, int max_seq, const int *pos_dev,
                    int pos_add, hmc_persist **out)
{
    const int L = X->f.num_layers, D = X->D, I = X->I, HD = X->H * X->hd;
    hmc_pp_phase *ph = (hmc_pp_phase *)hm_calloc((size_t)L * 5, sizeof *ph);
    for (int l = 0; l < L; l++) {
        const layer_w *W = &X->L[l];
        hmc_pp_phase *P = ph + 5 * l;
        for (int i = 0; i < 5; i++)
            P[i].H = X->H, P[i].KVH = X->KVH, P[i].hd = X->hd, P[i].max_seq = max_seq, P[i].freqs = X->freqs,
            P[i].pos_dev = pos_dev, P[i].pos_add = pos_add, P[i].kc = kc[l], P[i].vc = vc[l], P[i].eps = X->f.norm_eps;
        P[0].type = HMC_PP_GEMV, P[0].w = W->wqkv, P[0].N = X->qkvw, P[0].K = D, P[0].x = s->x, P[0].ldx = D;
        P[0].in_mode = HMC_IN_RMSNORM, P[0].nscale = W->sa_norm, P[0].y = s->qkv, P[0].ldy = X->qkvw;
        P[0].out = HMC_PP_ROPE;
        P[1].type = HMC_PP_ATTN, P[1].x = s->qkv, P[1].ldx = X->qkvw, P[1].y = s->att, P[1].ldy = HD;
        P[2].type = HMC_PP_GEMV, P[2].w = W->wo, P[2].N = D, P[2].K = HD, P[2].x = s->att, P[2].ldx = HD;
        P[2].y = s->x, P[2].ldy = D, P[2].out = HMC_PP_ADD;
        P[3].type = HMC_PP_GEMV, P[3].w = W->w13, P[3].N = 2 * I, P[3].K = D, P[3].x = s->x, P[3].ldx = D;
        P[3].in_mode = HMC_IN_RMSNORM, P[3].nscale = W->mlp_norm, P[3].y = s->gu, P[3].ldy = I;
        P[3].out = HMC_PP_SWIGLU;
        P[4].type = HMC_PP_GEMV, P[4].w = W->w2, P[4].N = D, P[4].K = I, P[4].x = s->gu, P[4].ldx = I;
        P[4].y = s->x, P[4].ldy = D, P[4].out = HMC_PP_ADD;
    }
    int rc = hmc_persist_create(out, ph, L * 5, r->B, max_seq);
    free(ph);
    return rc;
}

/* The request's persistent programs, as lm_cuda_tune.persist asks: bf16 weights only (the
 * kernel streams bf16 rows); a program the kernel cannot take is an error. */
int persist_setup(lm_cuda_req *r)
{
    const lm_cuda *m = r->m;
    const int want = m->tune.persist, nc = m->cfg.audio_num_codebooks;
    if (!want) return HM_OK;
    if (m->qdt != HMC_BF16)
        return hm_err("lm_cuda: persistent layer stacks (HM_LM_PERSIST=%d) need bf16 weights", want);
    if ((want & 1) && (m->parts & LM_CUDA_PART_BACKBONE))
        CKH(persist_program(r, &m->bb, &r->sd_bb, r->bk, r->bv, r->max_seq, r->pos_dev, 0, &r->pp_bb));
    if (want & 2)
        for (int i = 2; i < nc; i++)
            CKH(persist_program(r, &m->dec, &r->sd_dec, r->dk, r->dv, nc, nullptr, i, &r->pp_dec[i]));
    return HM_OK;
}

/* backbone step over one frame (graph body) */
int extend_body(lm_cuda_req *r)
{
    hmc_nvtx nvtx_("lm_backbone_step");
    lm_cuda *m = r->m;
    const xfm *X = &m->bb;
    scratch *s = &r->sd_bb;
    const hm_lm_config *c = &m->cfg;
    OP(r, P_EMBED, 0,
       hmc_embed_frame(r->codes_dev, r->B, c->audio_num_codebooks, c->audio_vocab_size, m->audio_emb, m->wdt, X->D,
                       s->x, r->st));
    /* the frame graph that usually follows starts with the codebook-0 head */
    const size_t c0_bytes = hmc_weight_bytes(m->qdt, c->audio_vocab_size, X->D);
    if (r->pp_bb)
        OP(r, P_BB_STACK, (double)xfm_bytes(X, m->qdt), hmc_persist_run(r->pp_bb, r->st));
    else
        for (int l = 0; l < X->f.num_layers; l++)
            CKH(layer_fwd(r, X, l, s, r->B, 1, r->pos_dev, 0, r->bk[l], r->bv[l], r->max_seq, r->max_seq, 0,
                          m->c0_head, c0_bytes));
    OP(r, P_BB_NORM, 0, hmc_rmsnorm(s->x, X->norm, r->h_last, HMC_F32, r->B, X->D, X->f.norm_eps, r->st));
    CKH(hmc_add_counter(r->pos_dev, 1, r->st));
    return HM_OK;
}

/* codebook-0 head, sampling, depth decoder and audio heads (graph body) */
int frame_body(lm_cuda_req *r)
{
    hmc_nvtx nvtx_("lm_depth_frame");
    lm_cuda *m = r->m;
    const xfm *X = &m->dec;
    const hm_lm_config *c = &m->cfg;
    const int B = r->B, D = m->bb.D, Dd = X->D, Va = c->audio_vocab_size, nc = c->audio_num_codebooks;
    const hmc_dtype t = m->wdt, qt = m->qdt;
    const size_t ws = wsz(t);
    scratch *s = &r->sd_dec;
    cudaStream_t st = r->st;

    const size_t proj_bytes = hmc_weight_bytes(qt, Dd, D), head_bytes = hmc_weight_bytes(qt, Va, Dd);
    hmc_gemv_args g0 = {m->c0_head, qt, Va, D, m->s_c0, r->h_last, D, B, HMC_IN_PLAIN, nullptr, 0.0f, r->logits, Va, 0};
    g0.pf = m->proj, g0.pf_bytes = pf_next(m, proj_bytes);
    OP(r, P_C0, (double)hmc_weight_bytes(qt, Va, D), gemv_tuned(m, G_HEAD, &g0, st));
    OP(r, P_SAMPLE, 0,
       hmc_sample(r->logits, B, Va, r->prm_dev, r->rng_dev, 0, r->logits_out, r->codes_dev, st));
    for (int i = 1; i < nc; i++) {
        /* decoder input rows: step 1 feeds positions 0 (h) and 1 (codebook-0 embedding) per row */
        const int T = i == 1 ? 2 : 1;
        if (i == 1) {
            OP(r, P_DEC_IN, 0, hmc_copy_rows(r->h_last, D, r->stage, 2 * D, D, B, st));
            OP(r, P_DEC_IN, 0, hmc_embed_code(r->codes_dev, 0, Va, m->audio_emb, t, D, r->stage, 1, 2, B, st));
        } else {
            OP(r, P_DEC_IN, 0, hmc_embed_code(r->codes_dev, i - 1, Va, m->audio_emb, t, D, r->stage, 0, 1, B, st));
        }
        hmc_gemv_args gp = {m->proj, qt, Dd, D, m->s_proj, r->stage, D, B * T, HMC_IN_PLAIN, nullptr, 0.0f, s->x, Dd, 0};
        gp.pf = X->L[0].wqkv, gp.pf_bytes = pf_next(m, hmc_weight_bytes(qt, X->qkvw, Dd));
        OP(r, P_DEC_IN, (double)proj_bytes, gemv_tuned(m, G_HEAD, &gp, st));
        const int pos_add = i == 1 ? 0 : i;
        const char *head = (const char *)m->audio_head + (size_t)(i - 1) * mat_stride(qt, Va, Dd);
        const float *head_s = m->s_ah ? m->s_ah + (size_t)(i - 1) * hmc_weight_scales(qt, Va) : nullptr;
        if (T == 1 && r->pp_dec[i])
            OP(r, P_DEC_STACK, (double)xfm_bytes(X, qt), hmc_persist_run(r->pp_dec[i], st));
        else
            for (int l = 0; l < X->f.num_layers; l++)
                CKH(layer_fwd(r, X, l, s, B, T, nullptr, pos_add, r->dk[l], r->dv[l], nc, nc, 1, head, head_bytes));
        /* last position of each row → final norm (fused) → audio head i-1 */
        hmc_gemv_args gh = {head, qt, Va, Dd, head_s, s->x + (size_t)(T - 1) * Dd, T * Dd, B, HMC_IN_RMSNORM, X->norm,
                            X->f.norm_eps, r->logits, Va, 0};
        /* then the next step's projection, or the next backbone step's first layer */
        if (i + 1 < nc) gh.pf = m->proj, gh.pf_bytes = pf_next(m, proj_bytes);
        else if (m->bb.L) gh.pf = m->bb.L[0].wqkv, gh.pf_bytes = pf_next(m, hmc_weight_bytes(qt, m->bb.qkvw, D));
        OP(r, P_HEADS, (double)head_bytes, gemv_tuned(m, G_HEAD, &gh, st));
        OP(r, P_SAMPLE, 0,
           hmc_sample(r->logits, B, Va, r->prm_dev, r->rng_dev, i, r->logits_out + (size_t)i * Va, r->codes_dev,
                      st));
    }
    return HM_OK;
}

/* Run body eagerly the first time, record it into *g the second time, replay after that. */
int run_graph(lm_cuda_req *r, int *uses, cudaGraphExec_t *g, int (*body)(lm_cuda_req *))
{
    if (*uses == 0) {
        (*uses)++;
        return body(r);
    }
    if (!*g) {
        cudaGraph_t graph;
        CK(cudaStreamBeginCapture(r->st, cudaStreamCaptureModeThreadLocal));
        int rc = body(r);
        cudaError_t e = cudaStreamEndCapture(r->st, &graph);
        if (rc != HM_OK) return hm_err_ctx("%s:%d: while capturing", __FILE__, __LINE__);
        if (e != cudaSuccess) return hm_err("%s:%d: capture: %s", __FILE__, __LINE__, cudaGetErrorString(e));
        e = cudaGraphInstantiate(g, graph, 0);
        cudaGraphDestroy(graph);
        if (e != cudaSuccess) return hm_err("%s:%d: graph instantiate: %s", __FILE__, __LINE__, cudaGetErrorString(e));
    }
    CK(cudaGraphLaunch(*g, r->st));
    return HM_OK;
}

int set_params(lm_cuda_req *r, const lm_cuda_sampling *s)
{
    hmc_sample_params p;
    memset(&p, 0, sizeof p);
    p.temperature = s->temperature; /* <= 0: argmax, as the CPU sampler */
    p.topk = s->topk;
    p.cfg_scale = s->cfg_scale;
    p.seed_lo = (uint32_t)s->seed, p.seed_hi = (uint32_t)(s->seed >> 32);
    for (int i = 0; i < 8; i++) p.forced[i] = s->forced && i < r->m->cfg.audio_num_codebooks ? s->forced[i] : -1;
    /* pageable source: the copy has consumed `p` when the call returns */
    CK(cudaMemcpyAsync(r->prm_dev, &p, sizeof p, cudaMemcpyHostToDevice, r->st));
    CK(cudaMemcpyAsync(r->rng_dev, &s->counter, sizeof s->counter, cudaMemcpyHostToDevice, r->st));
    return HM_OK;
}

} // namespace

/* ================================ public API ================================ */

extern "C" int lm_cuda_load(const char *model_dir, const lm_cuda_opts *opts, lm_cuda **out)
{
    *out = nullptr;
    hm_lm_config cfg;
    CKH(hm_lm_config_load(model_dir, opts ? opts->version : nullptr, &cfg));
    lm_cuda *m = (lm_cuda *)hm_calloc(1, sizeof *m);
    st_file *f = nullptr;
    if (model_init(m, &cfg, opts) != HM_OK || st_open(cfg.dir, &f) != HM_OK || load_weights(m, f) != HM_OK ||
        model_finish(m) != HM_OK) {
        if (f) st_close(f);
        lm_cuda_free(m);
        return hm_err_ctx("lm_cuda_load '%s'", model_dir);
    }
    if (m->text_t) m->tf = f; /* the prompt's text rows are read from the mapping */
    else st_close(f);
    *out = m;
    return HM_OK;
}

extern "C" int lm_cuda_random(const hm_lm_config *cfg, uint64_t seed, const lm_cuda_opts *opts, lm_cuda **out)
{
    *out = nullptr;
    lm_cuda *m = (lm_cuda *)hm_calloc(1, sizeof *m);
    const int D = cfg->backbone.embed_dim, Dd = cfg->decoder.embed_dim, Va = cfg->audio_vocab_size,
              nc = cfg->audio_num_codebooks;
    int rc = model_init(m, cfg, opts);
    const hmc_dtype t = m->wdt, q = m->qdt;
    const bool bb = m->parts & LM_CUDA_PART_BACKBONE, dp = m->parts & LM_CUDA_PART_DEPTH;
    float sD = 1.0f / sqrtf((float)D);
    if (rc == HM_OK) rc = random_xfm(m, bb, &m->bb, &seed);
    if (rc == HM_OK) rc = random_xfm(m, dp, &m->dec, &seed);
    if (rc == HM_OK) rc = rnd_host(m, bb, &m->text_host, (size_t)cfg->text_vocab_size * D, t, &seed, 1.0f);
    if (rc == HM_OK) rc = rnd(m, true, &m->audio_emb, (size_t)Va * nc * D, t, &seed, 1.0f);
    if (rc == HM_OK && m->emb_host) { /* drawn on the device, kept in pinned host memory */
        void *d = m->audio_emb;
        const size_t b = (size_t)Va * nc * D * wsz(t);
        m->audio_emb = nullptr;
        rc = host_alloc(m, &m->audio_emb, b);
        if (rc == HM_OK && cudaMemcpy(m->audio_emb, d, b, cudaMemcpyDeviceToHost) != cudaSuccess)
            rc = hm_err("%s:%d: random audio embeddings failed", __FILE__, __LINE__);
        cudaFree(d);
        m->wbytes -= b;
    }
    if (rc == HM_OK) rc = rnd(m, bb, &m->uncond, (size_t)D, t, &seed, 1.0f);
    if (rc == HM_OK) rc = rnd(m, bb, (void **)&m->uncond_f32, (size_t)D, HMC_F32, &seed, 1.0f);
    if (rc == HM_OK) rc = rnd(m, bb, &m->muq_w, (size_t)D * cfg->muq_dim, t, &seed, 0.05f);
    if (rc == HM_OK) rc = rnd(m, bb, (void **)&m->muq_b, (size_t)D, HMC_F32, &seed, 0.05f);
    if (rc == HM_OK) rc = rnd_w(m, dp, &m->c0_head, &m->s_c0, 1, Va, D, q, &seed, sD);
    if (rc == HM_OK) rc = rnd_w(m, dp, &m->proj, &m->s_proj, 1, Dd, D, q, &seed, sD);
    if (rc == HM_OK) rc = rnd_w(m, dp, &m->audio_head, &m->s_ah, nc - 1, Va, Dd, q, &seed, 1.0f / sqrtf((float)Dd));
    if (rc == HM_OK) rc = model_finish(m);
    if (rc == HM_OK && cudaDeviceSynchronize() != cudaSuccess) rc = hm_err("%s:%d: random init failed", __FILE__, __LINE__);
    if (rc != HM_OK) {
        lm_cuda_free(m);
        return hm_err_ctx("lm_cuda_random");
    }
    *out = m;
    return HM_OK;
}

extern "C" size_t lm_cuda_resident_bytes(const lm_cuda *m) { return m->wbytes; }
extern "C" unsigned lm_cuda_parts(const lm_cuda *m) { return m->parts; }

extern "C" void lm_cuda_free(lm_cuda *m)
{
    if (!m) return;
    xfm_free(&m->bb);
    xfm_free(&m->dec);
    if (m->tf) st_close(m->tf);
    free(m->text_host);
    if (m->emb_host) cudaFreeHost(m->audio_emb);
    else cudaFree(m->audio_emb);
    cudaFree(m->uncond), cudaFree(m->uncond_f32);
    cudaFree(m->muq_w), cudaFree(m->muq_b), cudaFree(m->c0_head), cudaFree(m->proj), cudaFree(m->audio_head);
    cudaFree(m->s_c0), cudaFree(m->s_proj), cudaFree(m->s_ah), cudaFree(m->deq);
    free(m);
}

extern "C" void lm_cuda_set_skip(lm_cuda *m, unsigned mask) { m->skip = mask; }

extern "C" void lm_cuda_get_tune(const lm_cuda *m, lm_cuda_tune *t) { *t = m->tune; }
extern "C" void lm_cuda_set_tune(lm_cuda *m, const lm_cuda_tune *t)
{
    m->tune = *t;
}

extern "C" void lm_cuda_persist_stamp_report(const lm_cuda_req *r, FILE *f)
{
    if (r->pp_bb) fprintf(f, "-- backbone layers --\n"), hmc_persist_stamp_report(r->pp_bb, f);
    for (int i = 0; i < 8; i++)
        if (r->pp_dec[i]) fprintf(f, "-- decoder layers, step %d --\n", i), hmc_persist_stamp_report(r->pp_dec[i], f);
}

extern "C" const hm_lm_config *lm_cuda_config(const lm_cuda *m) { return &m->cfg; }

static double xfm_bytes(const xfm *X, hmc_dtype t)
{
    double per = (double)hmc_weight_bytes(t, X->qkvw, X->D) + hmc_weight_bytes(t, X->D, X->H * X->hd) +
                 hmc_weight_bytes(t, 2 * X->I, X->D) + hmc_weight_bytes(t, X->D, X->I);
    return per * X->f.num_layers;
}

extern "C" double lm_cuda_frame_bytes(const lm_cuda *m)
{
    const hm_lm_config *c = &m->cfg;
    const hmc_dtype q = m->qdt;
    const int Va = c->audio_vocab_size, nc = c->audio_num_codebooks;
    double heads = (double)hmc_weight_bytes(q, Va, m->bb.D) +
                   (double)(nc - 1) * (hmc_weight_bytes(q, Va, m->dec.D) + hmc_weight_bytes(q, m->dec.D, m->bb.D));
    return xfm_bytes(&m->bb, q) + (nc - 1) * xfm_bytes(&m->dec, q) + heads;
}

extern "C" int lm_cuda_req_new(lm_cuda *m, int B, int max_seq, lm_cuda_req **out)
{
    *out = nullptr;
    if (B != 1 && B != 2) return hm_err("lm_cuda_req_new: B = %d (1 or 2)", B);
    if (max_seq <= 0 || max_seq > m->cfg.backbone.max_seq_len)
        return hm_err("lm_cuda_req_new: max_seq %d not in 1..%d", max_seq, m->cfg.backbone.max_seq_len);
    lm_cuda_req *r = (lm_cuda_req *)hm_calloc(1, sizeof *r);
    r->m = m, r->B = B, r->max_seq = max_seq;
    const hm_lm_config *c = &m->cfg;
    const size_t ws = wsz(m->wdt);
    const int nc = c->audio_num_codebooks, Va = c->audio_vocab_size;
    int rc = HM_OK;
#define TRY(x) \
    if (rc == HM_OK) rc = (x)
    TRY(cudaStreamCreateWithFlags(&r->st, cudaStreamNonBlocking) == cudaSuccess
            ? HM_OK
            : hm_err("%s:%d: stream create failed", __FILE__, __LINE__));
    const int Lb = m->bb.f.num_layers, Ld = m->dec.f.num_layers;
    r->bk = (void **)hm_calloc(Lb, sizeof(void *));
    r->bv = (void **)hm_calloc(Lb, sizeof(void *));
    r->dk = (void **)hm_calloc(Ld, sizeof(void *));
    r->dv = (void **)hm_calloc(Ld, sizeof(void *));
    size_t bcache = (size_t)B * m->bb.KVH * max_seq * m->bb.hd * ws;
    size_t dcache = (size_t)B * m->dec.KVH * nc * m->dec.hd * ws;
    for (int l = 0; l < Lb && (m->parts & LM_CUDA_PART_BACKBONE); l++) { /* no backbone: no cache */
        TRY(dev_alloc(&r->bk[l], bcache));
        TRY(dev_alloc(&r->bv[l], bcache));
    }
    for (int l = 0; l < Ld; l++) {
        TRY(dev_alloc(&r->dk[l], dcache));
        TRY(dev_alloc(&r->dv[l], dcache));
    }
    TRY(dev_alloc((void **)&r->pos_dev, sizeof(int)));
    TRY(dev_alloc((void **)&r->rng_dev, sizeof(uint32_t)));
    TRY(dev_alloc((void **)&r->prm_dev, sizeof(hmc_sample_params)));
    TRY(dev_alloc((void **)&r->codes_dev, sizeof(int32_t) * 8));
    TRY(dev_alloc((void **)&r->h_last, sizeof(float) * B * m->bb.D));
    TRY(dev_alloc((void **)&r->logits, sizeof(float) * B * Va));
    TRY(dev_alloc((void **)&r->logits_out, sizeof(float) * nc * Va));
    TRY(dev_alloc((void **)&r->stage, sizeof(float) * 2 * B * m->bb.D));
    TRY(dev_alloc((void **)&r->muq_dev, sizeof(float) * HM_MAX(c->muq_dim, 1)));
    TRY(scratch_alloc(&r->sd_bb, &m->bb, B, 1, max_seq, m->wdt));
    TRY(scratch_alloc(&r->sd_dec, &m->dec, B, 2, nc, m->wdt));
    TRY(persist_setup(r));
    if (rc == HM_OK && cudaMemset(r->pos_dev, 0, sizeof(int)) != cudaSuccess)
        rc = hm_err("%s:%d: memset failed", __FILE__, __LINE__);
    if (rc == HM_OK && cudaMemset(r->codes_dev, 0, sizeof(int32_t) * 8) != cudaSuccess)
        rc = hm_err("%s:%d: memset failed", __FILE__, __LINE__);
#undef TRY
    if (rc != HM_OK) {
        lm_cuda_req_free(r);
        return hm_err_ctx("lm_cuda_req_new");
    }
    *out = r;
    return HM_OK;
}

extern "C" void lm_cuda_req_free(lm_cuda_req *r)
{
    if (!r) return;
    if (r->st) cudaStreamSynchronize(r->st);
    if (r->g_extend) cudaGraphExecDestroy(r->g_extend);
    if (r->g_frame) cudaGraphExecDestroy(r->g_frame);
    hmc_persist_destroy(r->pp_bb);
    for (int i = 0; i < 8; i++) hmc_persist_destroy(r->pp_dec[i]);
    for (int l = 0; r->bk && l < r->m->bb.f.num_layers; l++) cudaFree(r->bk[l]), cudaFree(r->bv[l]);
    for (int l = 0; r->dk && l < r->m->dec.f.num_layers; l++) cudaFree(r->dk[l]), cudaFree(r->dv[l]);
    free(r->bk), free(r->bv), free(r->dk), free(r->dv);
    cudaFree(r->pos_dev), cudaFree(r->rng_dev), cudaFree(r->prm_dev), cudaFree(r->codes_dev);
    cudaFree(r->h_last), cudaFree(r->logits), cudaFree(r->logits_out), cudaFree(r->stage), cudaFree(r->muq_dev);
    cudaFree(r->tok_dev), cudaFree(r->mask_dev), cudaFree(r->text_rows);
    scratch_free(&r->sd_bb), scratch_free(&r->sd_dec), scratch_free(&r->sp);
    if (r->st) cudaStreamDestroy(r->st);
    free(r->prof);
    free(r);
}

extern "C" int lm_cuda_pos(const lm_cuda_req *r) { return r->pos; }
extern "C" const float *lm_cuda_hidden(const lm_cuda_req *r) { return r->h_last; }

/* Row id of the text embeddings in wdt into dst (D values), converted as put_weight converts. */
static void text_row(const lm_cuda *m, int id, void *dst)
{
    const int D = m->bb.D;
    const bool f32 = m->wdt == HMC_F32;
    if (m->text_host) {
        memcpy(dst, (const char *)m->text_host + (size_t)id * D * wsz(m->wdt), (size_t)D * wsz(m->wdt));
        return;
    }
    const st_tensor *t = m->text_t;
    const size_t off = (size_t)id * D;
    for (int d = 0; d < D; d++) {
        float v;
        if (t->dtype == ST_BF16) v = hm_bf16_to_f32(((const uint16_t *)t->data)[off + d]);
        else if (t->dtype == ST_F16) v = hm_f16_to_f32(((const uint16_t *)t->data)[off + d]);
        else v = ((const float *)t->data)[off + d];
        if (f32) ((float *)dst)[d] = v;
        else ((uint16_t *)dst)[d] = hm_f32_to_bf16(v);
    }
}

/* The prompt's distinct text tokens (masked-in text column of tk) are given indices 0..U-1 in order
 * of first use, their rows gathered into r->text_rows (uploaded on r->st, waited for by the
 * caller), and tk's text column rewritten to those indices. */
static int gather_text(lm_cuda_req *r, int32_t *tk, const uint8_t *mask, int S)
{
    const lm_cuda *m = r->m;
    const int nc = m->cfg.audio_num_codebooks, D = m->bb.D;
    const size_t row = (size_t)D * wsz(m->wdt);
    int32_t *ids = (int32_t *)hm_malloc(sizeof(int32_t) * (S + 1));
    int U = 0;
    for (int s = 0; s < S; s++) {
        const size_t i = (size_t)s * (nc + 1) + nc;
        if (!mask[i]) continue;
        int u = 0;
        while (u < U && ids[u] != tk[i]) u++;
        if (u == U) ids[U++] = tk[i];
        tk[i] = u;
    }
    if (U > r->text_cap) {
        cudaFree(r->text_rows);
        r->text_rows = nullptr, r->text_cap = 0;
        if (dev_alloc(&r->text_rows, row * U) != HM_OK) {
            free(ids);
            return HM_ERR;
        }
        r->text_cap = U;
    }
    char *h = (char *)hm_malloc(row * (U ? U : 1));
    for (int u = 0; u < U; u++) text_row(m, ids[u], h + row * u);
    int rc = HM_OK;
    if (U && (cudaMemcpyAsync(r->text_rows, h, row * U, cudaMemcpyHostToDevice, r->st) != cudaSuccess ||
              cudaStreamSynchronize(r->st) != cudaSuccess))
        rc = hm_err("%s:%d: text rows upload failed", __FILE__, __LINE__);
    free(h), free(ids);
    return rc;
}

extern "C" int lm_cuda_prefill(lm_cuda_req *r, const int32_t *tok, const uint8_t *mask, int S, int muq_index,
                               const float *muq)
{
    hmc_nvtx nvtx_("lm_prefill");
    CKH(need_part(r->m, LM_CUDA_PART_BACKBONE, "lm_cuda_prefill"));
    lm_cuda *m = r->m;
    const hm_lm_config *c = &m->cfg;
    const xfm *X = &m->bb;
    const int B = r->B, D = X->D, nc = c->audio_num_codebooks, Va = c->audio_vocab_size;
    if (S <= 0) return hm_err("lm_cuda_prefill: empty prompt");
    if (r->pos + S > r->max_seq) return hm_err("lm_cuda_prefill: %d + %d positions exceed %d", r->pos, S, r->max_seq);
    if (muq_index >= S) return hm_err("lm_cuda_prefill: muq slot %d outside %d rows", muq_index, S);
    for (int i = 0; i < S * (nc + 1); i++) {
        int k = i % (nc + 1);
        int lim = k < nc ? Va : c->text_vocab_size;
        if (mask[i] && (tok[i] < 0 || tok[i] >= lim))
            return hm_err("lm_cuda_prefill: row %d column %d: token %d outside 0..%d", i / (nc + 1), k, tok[i], lim - 1);
    }
    if (S > r->tok_cap) {
        cudaFree(r->tok_dev), cudaFree(r->mask_dev);
        CKH(dev_alloc((void **)&r->tok_dev, sizeof(int32_t) * S * (nc + 1)));
        CKH(dev_alloc((void **)&r->mask_dev, (size_t)S * (nc + 1)));
        r->tok_cap = S;
    }
    const int P = HM_MIN(S, PREFILL_CHUNK);
    if (r->sp.R < B * P) CKH(scratch_alloc(&r->sp, X, B, P, r->max_seq, m->wdt));
    /* the text column renumbered into the prompt's distinct rows, which go up into text_rows */
    int32_t *tk = (int32_t *)hm_malloc(sizeof(int32_t) * S * (nc + 1));
    memcpy(tk, tok, sizeof(int32_t) * S * (nc + 1));
    int rc = gather_text(r, tk, mask, S);
    if (rc == HM_OK &&
        cudaMemcpyAsync(r->tok_dev, tk, sizeof(int32_t) * S * (nc + 1), cudaMemcpyHostToDevice, r->st) != cudaSuccess)
        rc = hm_err("%s:%d: token upload failed", __FILE__, __LINE__);
    if (cudaStreamSynchronize(r->st) != cudaSuccess && rc == HM_OK)
        rc = hm_err("%s:%d: token upload failed", __FILE__, __LINE__);
    free(tk);
    CKH(rc);
    CK(cudaMemcpyAsync(r->mask_dev, mask, (size_t)S * (nc + 1), cudaMemcpyHostToDevice, r->st));
    if (muq) CK(cudaMemcpyAsync(r->muq_dev, muq, sizeof(float) * c->muq_dim, cudaMemcpyHostToDevice, r->st));
    scratch *s = &r->sp;
    for (int s0 = 0; s0 < S; s0 += P) {
        const int T = HM_MIN(P, S - s0);
        CKH(hmc_embed_prompt(r->tok_dev + (size_t)s0 * (nc + 1), r->mask_dev + (size_t)s0 * (nc + 1), T, B, nc, Va,
                             m->audio_emb, r->text_rows, B == 2 ? m->uncond : nullptr, m->wdt, D, s->x, r->st));
        if (muq_index >= s0 && muq_index < s0 + T) {
            float *row0 = s->x + (size_t)(muq_index - s0) * D;
            CKH(hmc_copy_rows(m->muq_b, D, row0, D, D, 1, r->st));
            if (muq) {
                hmc_gemv_args g = {m->muq_w, m->wdt, D, c->muq_dim, nullptr, r->muq_dev, c->muq_dim, 1, HMC_IN_PLAIN,
                                   nullptr, 0.0f, row0, D, 1};
                CKH(hmc_gemv(&g, r->st));
            }
            if (B == 2) CKH(hmc_copy_rows(m->uncond_f32, D, row0 + (size_t)T * D, D, D, 1, r->st));
        }
        for (int l = 0; l < X->f.num_layers; l++)
            CKH(layer_fwd(r, X, l, s, B, T, nullptr, r->pos + s0, r->bk[l], r->bv[l], r->max_seq, r->pos + s0 + T, 0));
        if (s0 + T == S) {
            CKH(hmc_copy_rows(s->x + (size_t)(T - 1) * D, T * D, r->stage, D, D, B, r->st));
            CKH(hmc_rmsnorm(r->stage, X->norm, r->h_last, HMC_F32, B, D, X->f.norm_eps, r->st));
        }
    }
    r->pos += S;
    CK(cudaMemcpyAsync(r->pos_dev, &r->pos, sizeof(int), cudaMemcpyHostToDevice, r->st));
    CK(cudaStreamSynchronize(r->st));
    return HM_OK;
}

/* One backbone step on the codes at src (kind: host, device, or none: the frame the last
 * lm_cuda_frame sampled, already in codes_dev). */
static int extend_from(lm_cuda_req *r, const int32_t *src, cudaMemcpyKind kind, const char *who)
{
    CKH(need_part(r->m, LM_CUDA_PART_BACKBONE, who));
    const hm_lm_config *c = &r->m->cfg;
    if (r->pos >= r->max_seq) return hm_err("%s: cache full (%d positions)", who, r->max_seq);
    if (src) CK(cudaMemcpyAsync(r->codes_dev, src, sizeof(int32_t) * c->audio_num_codebooks, kind, r->st));
    CKH(run_graph(r, &r->uses_extend, &r->g_extend, extend_body));
    r->pos++;
    return HM_OK;
}

extern "C" int lm_cuda_extend(lm_cuda_req *r, const int32_t *codes)
{
    const hm_lm_config *c = &r->m->cfg;
    if (codes)
        for (int k = 0; k < c->audio_num_codebooks; k++)
            if (codes[k] < 0 || codes[k] >= c->audio_vocab_size)
                return hm_err("lm_cuda_extend: code %d of codebook %d outside 0..%d", codes[k], k,
                              c->audio_vocab_size - 1);
    return extend_from(r, codes, cudaMemcpyHostToDevice, "lm_cuda_extend");
}

extern "C" int lm_cuda_rollback(lm_cuda_req *r, int n)
{
    if (n < 0 || n > r->pos) return hm_err("lm_cuda_rollback: %d of %d positions", n, r->pos);
    r->pos -= n;
    CK(cudaMemcpyAsync(r->pos_dev, &r->pos, sizeof(int), cudaMemcpyHostToDevice, r->st));
    return HM_OK;
}

extern "C" int lm_cuda_frame(lm_cuda_req *r, const lm_cuda_sampling *s, int32_t *codes, float *logits)
{
    CKH(need_part(r->m, LM_CUDA_PART_DEPTH, "lm_cuda_frame"));
    if (r->pos == 0) return hm_err("lm_cuda_frame: no hidden state (prefill first)");
    CKH(set_params(r, s));
    CKH(run_graph(r, &r->uses_frame, &r->g_frame, frame_body));
    return lm_cuda_frame_wait(r, codes, logits);
}

extern "C" int lm_cuda_precision(const char *precision, hmc_dtype *out)
{
    if (!precision || !precision[0] || !strcmp(precision, "bf16")) *out = HMC_BF16;
    else if (!strcmp(precision, "fp32")) *out = HMC_F32;
    else if (!strcmp(precision, "fp8")) *out = HMC_FP8;
    else if (!strcmp(precision, "nvfp4")) *out = HMC_NVFP4;
    else return hm_err("precision '%s': the cuda language model supports bf16, fp32, fp8 and nvfp4", precision);
    return HM_OK;
}

extern "C" void *lm_cuda_stream(const lm_cuda_req *r) { return (void *)r->st; }

extern "C" int lm_cuda_copy_hidden(lm_cuda_req *r, float *dst)
{
    CKH(need_part(r->m, LM_CUDA_PART_BACKBONE, "lm_cuda_copy_hidden"));
    CK(cudaMemcpyAsync(dst, r->h_last, sizeof(float) * r->B * r->m->bb.D, cudaMemcpyDeviceToDevice, r->st));
    return HM_OK;
}

extern "C" int lm_cuda_depth_frame(lm_cuda_req *r, const float *h, const lm_cuda_sampling *s, int32_t *codes,
                                   float *logits)
{
    CKH(lm_cuda_depth_frame_async(r, h, s, nullptr));
    return lm_cuda_frame_wait(r, codes, logits);
}

extern "C" int lm_cuda_depth_frame_async(lm_cuda_req *r, const float *h, const lm_cuda_sampling *s, int32_t *codes_dev)
{
    CKH(need_part(r->m, LM_CUDA_PART_DEPTH, "lm_cuda_depth_frame_async"));
    const hm_lm_config *c = &r->m->cfg;
    /* into h_last, the address the recorded frame graph reads */
    CK(cudaMemcpyAsync(r->h_last, h, sizeof(float) * r->B * r->m->bb.D, cudaMemcpyDeviceToDevice, r->st));
    CKH(set_params(r, s));
    CKH(run_graph(r, &r->uses_frame, &r->g_frame, frame_body));
    if (codes_dev)
        CK(cudaMemcpyAsync(codes_dev, r->codes_dev, sizeof(int32_t) * c->audio_num_codebooks, cudaMemcpyDeviceToDevice,
                           r->st));
    return HM_OK;
}

extern "C" int lm_cuda_frame_wait(lm_cuda_req *r, int32_t *codes, float *logits)
{
    const hm_lm_config *c = &r->m->cfg;
    CK(cudaMemcpyAsync(codes, r->codes_dev, sizeof(int32_t) * c->audio_num_codebooks, cudaMemcpyDeviceToHost, r->st));
    if (logits)
        CK(cudaMemcpyAsync(logits, r->logits_out, sizeof(float) * c->audio_num_codebooks * c->audio_vocab_size,
                           cudaMemcpyDeviceToHost, r->st));
    CK(cudaStreamSynchronize(r->st));
    return HM_OK;
}

extern "C" int lm_cuda_extend_dev(lm_cuda_req *r, const int32_t *codes_dev)
{
    return extend_from(r, codes_dev, cudaMemcpyDeviceToDevice, "lm_cuda_extend_dev");
}

extern "C" int lm_cuda_profile_frame(lm_cuda_req *r, const lm_cuda_sampling *s, lm_cuda_prof *out)
{
    CKH(need_part(r->m, LM_CUDA_PART_BACKBONE, "lm_cuda_profile_frame"));
    CKH(need_part(r->m, LM_CUDA_PART_DEPTH, "lm_cuda_profile_frame"));
    memset(out, 0, sizeof *out);
    if (r->pos == 0 || r->pos >= r->max_seq) return hm_err("lm_cuda_profile_frame: needs 1..max_seq-1 positions");
    if (!r->prof) {
        r->prof = (prof_state *)hm_calloc(1, sizeof(prof_state));
        for (int i = 0; i < 8192; i++) CK(cudaEventCreate(&r->prof->ev[i]));
    }
    prof_state *ps = r->prof;
    ps->n = 0;
    ps->on = 1;
    CKH(set_params(r, s));
    int rc = frame_body(r);
    if (rc == HM_OK) rc = extend_body(r);
    ps->on = 0;
    if (rc != HM_OK) return rc;
    r->pos++;
    CK(cudaStreamSynchronize(r->st));
    out->n = P_COUNT;
    for (int i = 0; i < P_COUNT; i++) out->name[i] = P_NAMES[i];
    for (int i = 0; i < ps->n; i++) {
        float ms;
        CK(cudaEventElapsedTime(&ms, ps->ev[2 * i], ps->ev[2 * i + 1]));
        out->ms[ps->cat[i]] += ms;
        out->bytes[ps->cat[i]] += ps->bytes[i];
        if (i < LM_CUDA_PROF_OPS)
            out->op_piece[i] = (unsigned char)ps->cat[i], out->op_bytes[i] = (float)ps->bytes[i], out->op_ms[i] = ms;
    }
    out->nop = HM_MIN(ps->n, LM_CUDA_PROF_OPS);
    return HM_OK;
}
