/* vocoder_cuda.cu - the HeartCodec vocoder on the GPU (see vocoder_cuda.h): im2col + cuBLASLt
 * GEMM (hmc_gemm) per conv, small fp32 kernels for quantisation, bias/PReLU/residual, the
 * transposed conv's overlap-add and the final 1-channel conv. */
#include "common_cuda.h"
#include "vocoder_cuda.h"

#include <mma.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "../stages/vocoder/vocoder.h"
}

#define VCC_PROF_MAX_EVENTS 1024
/* Time tiles (vcc_set_tiling): the blocks of at most VCC_TILE_MAX_C output channels (the long,
 * narrow ones at high sample rates, whose whole-window activations are the large ones) and the
 * post / final convs run tile by tile, each tile's activations within about VCC_TILE_BYTES (the
 * tile length rounded down to whole waves of the fused residual units: see wave_unit); the wider
 * blocks before them run over the whole window (their GEMMs want the rows).  Every conv's im2col
 * goes through a column buffer of at most VCC_COL_BYTES (row chunks of the GEMM).  Release sizes,
 * bf16, H100 (`gpu_vocoder mem`, process / window as a graph): untiled 2790 MiB of workspace, 20.8
 * ms; blocks of <= 256 channels at 128 / 64 MiB 1036 MiB / 22.4 ms, at 64 / 32 MiB 988 / 24.1 ms
 * (stops 15-21); blocks of <= 512 channels (block 2 too) at 128 / 32 MiB 908 MiB / 26.5 ms, the
 * default since stop 22: it pays for the MPS server that hm-launch starts, within issue 8's 7 GB
 * with NVFP4 LM weights.  The bf16 output is the same bits in every layout. */
#define VCC_TILE_MAX_C voc_tile_max_c()
#define VCC_TILE_BYTES voc_budget("HM_VOC_TILE_MB", 128)
#define VCC_COL_BYTES voc_budget("HM_VOC_COL_MB", 32)
/* the widest block in time tiles: HM_VOC_TILE_MAX_C (A/B) or 512 */
static int voc_tile_max_c()
{
    const char *e = getenv("HM_VOC_TILE_MAX_C");
    return e && atoi(e) > 0 ? atoi(e) : 512;
}
/* a budget in MiB, from the environment (A/B of memory against window time) or the default */
static size_t voc_budget(const char *env, int def_mib)
{
    const char *e = getenv(env);
    const int v = e && atoi(e) > 0 ? atoi(e) : def_mib;
    return (size_t)v << 20;
}
enum { PK_START, PK_IM2COL, PK_GEMM, PK_EPI, PK_GEMM1, PK_RESID, PK_FUSED, PK_CONVERT, PK_GEMM_UP, PK_OADD, PK_OUT1, PK_QUANT, PK_N };
static const char *const pk_name[PK_N] = {"", "im2col", "GEMM conv k>1", "bias+PReLU", "GEMM conv k1", "bias+PReLU+resid",
                                          "fused res unit", "to bf16", "GEMM upsample", "overlap-add", "conv ->1", "quantise"};

namespace {

/* A conv on the device: W [cout, k*cin] (column j*cin + i = tap j, input channel i) in the
 * weight dtype, bias fp32 [cout]. */
struct dconv {
    int cin, cout, k, dil, pad_l;
    void *w;
    float *b;
};
/* A causal transposed conv: W [k*cout, cin] (row j*cout + o), bias fp32 [cout]. */
struct dtconv {
    int cin, cout, k, s;
    void *w;
    float *b;
};
struct dblock {
    dtconv up;
    dconv c1[VOC_RES_UNITS], c2[VOC_RES_UNITS];
    float a1[VOC_RES_UNITS], a2[VOC_RES_UNITS];
};

int grid_for(size_t n, int threads = 256)
{
    size_t g = (n + threads - 1) / threads;
    return (int)(g < 1 ? 1 : g > 65535u * 16 ? 65535u * 16 : g);
}

} // namespace

struct vcc_model {
    hm_codec_config cfg;
    hmc_dtype wdt;
    int hop, n_up, has_post, post_rep;
    dconv first;
    dblock blk[8];
    dconv post;
    float post_a;
    float *last_w; /* fp32 [k*cin] */
    float last_b;
    int last_k, last_cin;
    /* time tiles: blocks tile_from.. (-1: the layers cannot be tiled), then post + final conv,
     * over tiles of the tiled part's input (rate = output samples per input sample); each tile
     * recomputes `halo` input samples before it (the causal layers' reach, see tile_setup) */
    int tiling, tile_force, tile_from, halo, rate;
    int tile_cap;  /* input samples a tile may process (halo included), as the workspace holds */
    /* workspace for ws_n frames */
    int ws_n;
    float *x, *h;  /* residual stream; GEMM outputs */
    float *x2;     /* the fused residual unit's output (ping-pong with x) */
    float *xa;     /* tiled: the whole-window stream of the blocks before tile_from (the tiles' input) */
    int fused;     /* use vcc_res_unit_fused where it applies (bf16, 64 or 128 channels) */
    void *hb, *col; /* GEMM inputs in the weight dtype */
    size_t col_elems, ws_bytes, w_bytes;
    /* optional per-op timing (vcc_profile): an event after every op, tagged (stage, kind) */
    int prof, npev;
    cudaEvent_t pev[VCC_PROF_MAX_EVENTS];
    unsigned char pstage[VCC_PROF_MAX_EVENTS], pkind[VCC_PROF_MAX_EVENTS];
};

/* ---- kernels ------------------------------------------------------------------------------ */

__global__ void quantize_split_kernel(const float *lat, int n, int H, float *x)
{
    size_t total = (size_t)2 * n * H;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int h = (int)(i % H);
        size_t r = i / H;
        int b = (int)(r / n), t = (int)(r % n);
        float v = lat[(size_t)t * 2 * H + (size_t)b * H + h];
        x[i] = rintf(9.0f * v) / 9.0f; /* IEEE division: exactly the CPU's value */
    }
}

__device__ __forceinline__ void st4(float *p, float4 v) { *(float4 *)p = v; }
__device__ __forceinline__ void st4(__nv_bfloat16 *p, float4 v)
{
    __nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y), b = __floats2bfloat162_rn(v.z, v.w);
    uint2 u;
    u.x = *(uint32_t *)&a;
    u.y = *(uint32_t *)&b;
    *(uint2 *)p = u;
}

/* One thread per 4 channels of one (output row, tap). */
template <typename T>
__global__ void im2col4_kernel(const float *__restrict__ x, int Tin, int C, int k, int dil, int pad_l, int rep,
                               size_t q0, size_t nq, T *__restrict__ col)
{
    const int C4 = C / 4;
    const long To = (long)Tin * rep;
    size_t total = nq * k * C4;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int c = (int)(i % C4) * 4;
        size_t r = i / C4;
        int j = (int)(r % k);
        size_t q = q0 + r / k;
        int b = (int)(q / To);
        long t = (long)(q % To);
        long u = t + (long)j * dil - pad_l;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (u >= 0 && u < To) v = __ldg((const float4 *)(x + ((size_t)b * Tin + u / rep) * C + c));
        st4(col + r * C + c, v);
    }
}

/* Scalar fallback for C not a multiple of 4. */
template <typename T>
__global__ void im2col1_kernel(const float *__restrict__ x, int Tin, int C, int k, int dil, int pad_l, int rep,
                               size_t q0, size_t nq, T *__restrict__ col)
{
    const long To = (long)Tin * rep;
    size_t total = nq * k * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int c = (int)(i % C);
        size_t r = i / C;
        int j = (int)(r % k);
        size_t q = q0 + r / k;
        int b = (int)(q / To);
        long t = (long)(q % To);
        long u = t + (long)j * dil - pad_l;
        float v = (u >= 0 && u < To) ? x[((size_t)b * Tin + u / rep) * C + c] : 0.0f;
        hmc_st(col + i, v);
    }
}

/* Fast path (B*T*rep*C/4 < 2^31): one thread per (output row, 4 channels) writes all k taps,
 * so the index divisions (32-bit) are paid once per row instead of once per tap.  Rows q0 ..
 * q0 + n/C4 - 1 of the B*T*rep (col row 0 = row q0). */
template <typename T>
__global__ void im2col4_rows_kernel(const float *__restrict__ x, int Tin, int C4, int k, int dil, int pad_l, int rep,
                                    unsigned q0, unsigned n, T *__restrict__ col)
{
    const unsigned To = (unsigned)Tin * rep, C = 4u * C4;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        unsigned c = (i % C4) * 4, q = q0 + i / C4, b = q / To, t = q - b * To;
        T *dst = col + (size_t)(q - q0) * k * C + c;
        const float *src = x + (size_t)b * Tin * C + c;
        for (int j = 0; j < k; j++) {
            int u = (int)t + j * dil - pad_l;
            float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
            if (u >= 0 && u < (int)To) v = __ldg((const float4 *)(src + (size_t)(rep == 1 ? u : u / rep) * C));
            st4(dst + (size_t)j * C, v);
        }
    }
}

__device__ __forceinline__ float prelu(float v, float a) { return v < 0.0f ? a * v : v; }

template <typename T>
__global__ void bias_prelu_kernel(const float *h, const float *__restrict__ bias, float a, size_t n, int C, T *y,
                                  float *resid)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = prelu(h[i] + bias[i % C], a);
        if (resid) resid[i] += v;
        else hmc_st(y + i, v);
    }
}

/* Vector version (C % 4 == 0): 4 channels per thread. */
template <typename T>
__global__ void bias_prelu4_kernel(const float *h, const float *__restrict__ bias, float a, size_t n4, int C, T *y,
                                   float *resid)
{
    const unsigned C4 = (unsigned)C / 4;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
        size_t e = i * 4;
        int c = (int)((n4 < (1ull << 32) ? (unsigned)i % C4 : (unsigned)(i % C4)) * 4); /* 32-bit modulo when it fits */
        float4 v = *(const float4 *)(h + e), bb = __ldg((const float4 *)(bias + c));
        v.x = prelu(v.x + bb.x, a), v.y = prelu(v.y + bb.y, a), v.z = prelu(v.z + bb.z, a), v.w = prelu(v.w + bb.w, a);
        if (resid) {
            float4 r = *(float4 *)(resid + e);
            r.x += v.x, r.y += v.y, r.z += v.z, r.w += v.w;
            *(float4 *)(resid + e) = r;
        } else {
            st4(y + e, v);
        }
    }
}

/* Fast path (C % 4 == 0, B*T*C/4 < 2^31): one thread per (input row, 4 channels) writes the s
 * output rows that row starts. */
__global__ void overlap_add4_kernel(const float *__restrict__ z, const float *__restrict__ bias, int T, int C4, int s,
                                    unsigned n, float *__restrict__ y)
{
    const unsigned C = 4u * C4;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        unsigned c = (i % C4) * 4, r = i / C4, t = r % T; /* r = b*T + t */
        const float *zr = z + (size_t)r * 2 * s * C + c;
        const float4 bb = __ldg((const float4 *)(bias + c));
        for (int j = 0; j < s; j++) {
            float4 v = __ldg((const float4 *)(zr + (size_t)j * C));
            v.x += bb.x, v.y += bb.y, v.z += bb.z, v.w += bb.w; /* bias first, as the CPU */
            if (t > 0) {
                float4 w = __ldg((const float4 *)(zr - (size_t)2 * s * C + (size_t)(j + s) * C));
                v.x += w.x, v.y += w.y, v.z += w.z, v.w += w.w;
            }
            *(float4 *)(y + ((size_t)r * s + j) * C + c) = v;
        }
    }
}

__global__ void overlap_add_kernel(const float *__restrict__ z, const float *__restrict__ bias, int B, int T, int C,
                                   int s, float *y)
{
    const size_t Ts = (size_t)T * s, total = (size_t)B * Ts * C;
    const size_t zr = (size_t)2 * s * C; /* z row width */
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int o = (int)(i % C);
        size_t q = i / C;
        int b = (int)(q / Ts);
        size_t p = q % Ts, t = p / s;
        int j = (int)(p % s);
        const float *zt = z + ((size_t)b * T + t) * zr;
        float v = bias[o] + zt[(size_t)j * C + o];
        if (t > 0) v += zt[(size_t)(j + s) * C + o - zr];
        y[i] = v;
    }
}

/* One thread per output sample; the weights in shared memory (k*C floats). */
__global__ void conv_out1_kernel(const float *__restrict__ x, int B, int T, int C, int k, const float *__restrict__ w,
                                 float bias, size_t t_first, size_t n_out, float *pcm, size_t ld)
{
    extern __shared__ float sw[];
    for (int i = threadIdx.x; i < k * C; i += blockDim.x) sw[i] = w[i];
    __syncthreads();
    const size_t total = (size_t)B * n_out;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int b = (int)(i / n_out);
        long t = (long)(t_first + i % n_out);
        float acc = 0.0f;
        for (int j = 0; j < k; j++) {
            long u = t - (k - 1 - j);
            if (u < 0) continue;
            const float *xr = x + ((size_t)b * T + u) * C;
            const float *wj = sw + j * C;
            if ((C & 3) == 0) {
                for (int c = 0; c < C; c += 4) {
                    float4 v = __ldg((const float4 *)(xr + c));
                    acc += wj[c] * v.x + wj[c + 1] * v.y + wj[c + 2] * v.z + wj[c + 3] * v.w;
                }
            } else {
                for (int c = 0; c < C; c++) acc += wj[c] * __ldg(xr + c);
            }
        }
        pcm[(size_t)b * ld + (size_t)t - t_first] = acc + bias;
    }
}

/* Tiled version: a block stages rows [t0 - (k-1), t0 + OUT1_TILE) of its batch row in shared
 * memory (pitch C + 1: conflict-free column reads), applying the previous layer's bias + PReLU
 * on the way in when pre_bias is set (zero padding stays zero: it pads the activation), then
 * every thread makes one sample from shared memory. */
#define OUT1_TILE 128
__global__ void conv_out1_tiled_kernel(const float *__restrict__ x, int T, int C, int k, const float *__restrict__ w,
                                       float bias, const float *__restrict__ pre_bias, float pre_a, int t_first,
                                       int n_out, float *__restrict__ pcm, size_t ld)
{
    extern __shared__ float sm[];
    float *sw = sm, *sx = sm + k * C;
    const int b = blockIdx.y, t0 = t_first + blockIdx.x * OUT1_TILE, rows = OUT1_TILE + k - 1, P = C + 1;
    for (int i = threadIdx.x; i < k * C; i += blockDim.x) sw[i] = w[i];
    const float *xb = x + (size_t)b * T * C;
    for (int i = threadIdx.x; i < rows * C; i += blockDim.x) {
        int r = i / C, c = i - r * C, u = t0 - (k - 1) + r;
        float v = 0.0f;
        if (u >= 0 && u < T) {
            v = __ldg(xb + (size_t)u * C + c);
            if (pre_bias) v = prelu(v + pre_bias[c], pre_a);
        }
        sx[r * P + c] = v;
    }
    __syncthreads();
    const int t = t0 + threadIdx.x;
    if (t >= t_first + n_out) return;
    float acc = 0.0f;
    for (int j = 0; j < k; j++) {
        const float *xr = sx + (threadIdx.x + j) * P, *wj = sw + j * C;
        for (int c = 0; c < C; c++) acc += wj[c] * xr[c];
    }
    pcm[(size_t)b * ld + (t - t_first)] = acc + bias;
}

/* One whole residual unit, bf16 weights, C in {64, 128}:
 *   xout = xin + PReLU_a2(W2 · bf16(PReLU_a1(conv_k,dil(bf16(xin)) + b1)) + b2)
 * as an implicit GEMM on tensor cores (WMMA 16x16x16, fp32 accumulation): a block takes RU_BM
 * time rows of one batch row, stages its input rows and the (k-1)*dil halo before them in shared
 * memory as bf16 (zero before the row's start: causal padding), and accumulates the k taps from
 * shifted views of that tile (no im2col in memory); the taps' weights go through shared memory one
 * tap at a time.  Each of the 8 warps owns 16 rows: its conv-1 result goes through shared memory
 * for bias + PReLU (the accumulator layout is opaque), becomes the A operand of the k1 conv, and
 * the k1 result gets bias + PReLU + the fp32 residual on the way out.  Same roundings as the
 * unfused bf16 path (bf16 GEMM inputs, fp32 everything else).  xout must not alias xin (the
 * halo of one block is another block's output rows). */
#define RU_BM 128
#define RU_THREADS 256
#define RU_MAX_SMEM ((size_t)227 * 1024) /* sm_90's per-block opt-in limit */
namespace wm = nvcuda::wmma;

__host__ __device__ constexpr size_t ru_align(size_t b) { return (b + 127) & ~(size_t)127; }
/* shared bytes: x tile [(BM + halo) x P] bf16 (later the k1 input), weights [C x P] bf16, fp32 results [BM x PF] */
__host__ __device__ constexpr size_t ru_smem(int C, int halo)
{
    return ru_align((size_t)(RU_BM + halo) * (C + 16) * 2) + ru_align((size_t)C * (C + 16) * 2) + (size_t)RU_BM * (C + 8) * 4;
}

template <int C>
__global__ void __launch_bounds__(RU_THREADS) res_unit_kernel(const float *__restrict__ xin, float *__restrict__ xout,
                                                              int T, int k, int dil, const __nv_bfloat16 *__restrict__ W1,
                                                              const float *__restrict__ b1, float a1,
                                                              const __nv_bfloat16 *__restrict__ W2,
                                                              const float *__restrict__ b2, float a2)
{
    constexpr int P = C + 16, PF = C + 8, NT = C / 16, C4 = C / 4, C8 = C / 8;
    extern __shared__ __align__(128) unsigned char ru_sm[];
    const int halo = (k - 1) * dil, rows = RU_BM + halo;
    __nv_bfloat16 *xs = (__nv_bfloat16 *)ru_sm;
    __nv_bfloat16 *ws = (__nv_bfloat16 *)(ru_sm + ru_align((size_t)rows * P * 2));
    float *hf = (float *)((unsigned char *)ws + ru_align((size_t)C * P * 2));
    const int b = blockIdx.y, t0 = blockIdx.x * RU_BM, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const float *xb = xin + (size_t)b * T * C;

    for (int i = threadIdx.x; i < rows * C4; i += RU_THREADS) {
        int r = i / C4, c = (i % C4) * 4, u = t0 - halo + r;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (u >= 0 && u < T) v = __ldg((const float4 *)(xb + (size_t)u * C + c));
        st4(xs + r * P + c, v);
    }
    wm::fragment<wm::accumulator, 16, 16, 16, float> acc[NT];
    for (int n = 0; n < NT; n++) wm::fill_fragment(acc[n], 0.0f);
    wm::fragment<wm::matrix_a, 16, 16, 16, __nv_bfloat16, wm::row_major> fa;
    wm::fragment<wm::matrix_b, 16, 16, 16, __nv_bfloat16, wm::col_major> fb;
    for (int j = 0; j < k; j++) {
        __syncthreads(); /* the x tile is in; nobody reads the previous tap's weights any more */
        for (int i = threadIdx.x; i < C * C8; i += RU_THREADS) {
            int o = i / C8, c = (i % C8) * 8;
            *(uint4 *)(ws + o * P + c) = __ldg((const uint4 *)(W1 + (size_t)o * k * C + (size_t)j * C + c));
        }
        __syncthreads();
        /* output row i reads input row i - (k-1-j)*dil = tile row i + j*dil */
        const __nv_bfloat16 *a0 = xs + (warp * 16 + j * dil) * P;
        for (int kk = 0; kk < NT; kk++) {
            wm::load_matrix_sync(fa, a0 + kk * 16, P);
            for (int n = 0; n < NT; n++) {
                wm::load_matrix_sync(fb, ws + n * 16 * P + kk * 16, P); /* B[c][o] = W_j[o][c] */
                wm::mma_sync(acc[n], fa, fb, acc[n]);
            }
        }
    }
    float *hw = hf + warp * 16 * PF;
    for (int n = 0; n < NT; n++) wm::store_matrix_sync(hw + n * 16, acc[n], PF, wm::mem_row_major);
    __syncthreads(); /* the x tile and the conv-1 weights are dead: W2 into ws, the k1 input over xs */
    for (int i = threadIdx.x; i < C * C8; i += RU_THREADS) {
        int o = i / C8, c = (i % C8) * 8;
        *(uint4 *)(ws + o * P + c) = __ldg((const uint4 *)(W2 + (size_t)o * C + c));
    }
    __nv_bfloat16 *hs = xs + warp * 16 * P;
    for (int e = lane; e < 16 * C; e += 32) {
        int r = e / C, c = e % C;
        hs[r * P + c] = __float2bfloat16(prelu(hw[r * PF + c] + b1[c], a1));
    }
    __syncthreads();
    for (int n = 0; n < NT; n++) wm::fill_fragment(acc[n], 0.0f);
    for (int kk = 0; kk < NT; kk++) {
        wm::load_matrix_sync(fa, hs + kk * 16, P);
        for (int n = 0; n < NT; n++) {
            wm::load_matrix_sync(fb, ws + n * 16 * P + kk * 16, P);
            wm::mma_sync(acc[n], fa, fb, acc[n]);
        }
    }
    for (int n = 0; n < NT; n++) wm::store_matrix_sync(hw + n * 16, acc[n], PF, wm::mem_row_major);
    __syncwarp();
    for (int e = lane; e < 16 * C4; e += 32) {
        int r = e / C4, c = (e % C4) * 4, t = t0 + warp * 16 + r;
        if (t >= T) continue;
        size_t g = ((size_t)b * T + t) * C + c;
        float4 x = __ldg((const float4 *)(xin + g)), bb = __ldg((const float4 *)(b2 + c));
        const float *h = hw + r * PF + c;
        x.x += prelu(h[0] + bb.x, a2), x.y += prelu(h[1] + bb.y, a2), x.z += prelu(h[2] + bb.z, a2),
            x.w += prelu(h[3] + bb.w, a2);
        *(float4 *)(xout + g) = x;
    }
}

/* ---- kernel entries ----------------------------------------------------------------------- */

extern "C" int vcc_quantize_split(const float *lat, int n, int H, float *x, cudaStream_t s)
{
    quantize_split_kernel<<<grid_for((size_t)2 * n * H), 256, 0, s>>>(lat, n, H, x);
    CK_LAUNCH();
    return HM_OK;
}

/* vcc_im2col for the rows q0 .. q0+nq-1 of the B*T*rep output rows only (col row 0 = row q0):
 * a conv's GEMM can then run in row chunks through a smaller column buffer. */
static int im2col_rows(const float *x, int T, int C, int k, int dil, int pad_l, int rep, size_t q0, size_t nq, void *col,
                       hmc_dtype ct, cudaStream_t s)
{
    size_t n = nq * k * C;
    if (ct != HMC_BF16 && ct != HMC_F32) return hm_err("%s:%d: im2col: bad dtype", __FILE__, __LINE__);
    const size_t rows4 = nq * (C / 4);
    if (C % 4 == 0 && (q0 + nq) * (C / 4) < (1u << 31)) {
        if (ct == HMC_BF16)
            im2col4_rows_kernel<<<grid_for(rows4), 256, 0, s>>>(x, T, C / 4, k, dil, pad_l, rep, (unsigned)q0,
                                                                (unsigned)rows4, (__nv_bfloat16 *)col);
        else
            im2col4_rows_kernel<<<grid_for(rows4), 256, 0, s>>>(x, T, C / 4, k, dil, pad_l, rep, (unsigned)q0,
                                                                (unsigned)rows4, (float *)col);
    } else if (C % 4 == 0) {
        if (ct == HMC_BF16)
            im2col4_kernel<<<grid_for(n / 4), 256, 0, s>>>(x, T, C, k, dil, pad_l, rep, q0, nq, (__nv_bfloat16 *)col);
        else im2col4_kernel<<<grid_for(n / 4), 256, 0, s>>>(x, T, C, k, dil, pad_l, rep, q0, nq, (float *)col);
    } else {
        if (ct == HMC_BF16)
            im2col1_kernel<<<grid_for(n), 256, 0, s>>>(x, T, C, k, dil, pad_l, rep, q0, nq, (__nv_bfloat16 *)col);
        else im2col1_kernel<<<grid_for(n), 256, 0, s>>>(x, T, C, k, dil, pad_l, rep, q0, nq, (float *)col);
    }
    CK_LAUNCH();
    return HM_OK;
}

extern "C" int vcc_im2col(const float *x, int B, int T, int C, int k, int dil, int pad_l, int rep, void *col,
                          hmc_dtype ct, cudaStream_t s)
{
    return im2col_rows(x, T, C, k, dil, pad_l, rep, 0, (size_t)B * T * rep, col, ct, s);
}

extern "C" int vcc_bias_prelu(const float *h, const float *bias, float a, int M, int C, void *y, hmc_dtype yt,
                              float *resid, cudaStream_t s)
{
    size_t n = (size_t)M * C;
    if (yt != HMC_BF16 && yt != HMC_F32) return hm_err("%s:%d: bias_prelu: bad dtype", __FILE__, __LINE__);
    if (C % 4 == 0) {
        if (yt == HMC_BF16)
            bias_prelu4_kernel<<<grid_for(n / 4), 256, 0, s>>>(h, bias, a, n / 4, C, (__nv_bfloat16 *)y, resid);
        else bias_prelu4_kernel<<<grid_for(n / 4), 256, 0, s>>>(h, bias, a, n / 4, C, (float *)y, resid);
    } else {
        if (yt == HMC_BF16)
            bias_prelu_kernel<<<grid_for(n), 256, 0, s>>>(h, bias, a, n, C, (__nv_bfloat16 *)y, resid);
        else bias_prelu_kernel<<<grid_for(n), 256, 0, s>>>(h, bias, a, n, C, (float *)y, resid);
    }
    CK_LAUNCH();
    return HM_OK;
}

/* Allow res_unit_kernel<C> the most dynamic shared memory once (its launches ask for less). */
static int ru_prepare(int C)
{
    static int done[2];
    const int i = C == 128;
    if (!done[i]) {
        const void *f = C == 64 ? (const void *)res_unit_kernel<64> : (const void *)res_unit_kernel<128>;
        CK(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)RU_MAX_SMEM));
        done[i] = 1;
    }
    return HM_OK;
}

/* Blocks of the fused residual unit (C 64 or 128, this halo) one SM holds at once; 0 if unknown. */
static int ru_occupancy(int C, int halo)
{
    int occ = 0;
    if ((C != 64 && C != 128) || ru_prepare(C)) return 0;
    const void *f = C == 64 ? (const void *)res_unit_kernel<64> : (const void *)res_unit_kernel<128>;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, f, RU_THREADS, ru_smem(C, halo)) != cudaSuccess) return 0;
    return occ;
}

extern "C" int vcc_res_unit_fused(const float *xin, float *xout, int B, int T, int C, int k, int dil, const void *W1,
                                   const float *b1, float a1, const void *W2, const float *b2, float a2, cudaStream_t s)
{
    const int halo = (k - 1) * dil;
    const size_t smem = ru_smem(C, halo);
    if (smem > RU_MAX_SMEM) return hm_err("%s:%d: fused residual unit: halo %d too long", __FILE__, __LINE__, halo);
    dim3 grid((unsigned)((T + RU_BM - 1) / RU_BM), (unsigned)B);
    const __nv_bfloat16 *w1 = (const __nv_bfloat16 *)W1, *w2 = (const __nv_bfloat16 *)W2;
    if (C == 64) {
        CKH(ru_prepare(64));
        res_unit_kernel<64><<<grid, RU_THREADS, smem, s>>>(xin, xout, T, k, dil, w1, b1, a1, w2, b2, a2);
    } else if (C == 128) {
        CKH(ru_prepare(128));
        res_unit_kernel<128><<<grid, RU_THREADS, smem, s>>>(xin, xout, T, k, dil, w1, b1, a1, w2, b2, a2);
    } else {
        return hm_err("%s:%d: fused residual unit: %d channels (64 or 128 only)", __FILE__, __LINE__, C);
    }
    CK_LAUNCH();
    return HM_OK;
}

extern "C" int vcc_overlap_add(const float *z, const float *bias, int B, int T, int C, int s, float *y, cudaStream_t st)
{
    const size_t n4 = (size_t)B * T * (C / 4);
    if (C % 4 == 0 && n4 < (1u << 31))
        overlap_add4_kernel<<<grid_for(n4), 256, 0, st>>>(z, bias, T, C / 4, s, (unsigned)n4, y);
    else overlap_add_kernel<<<grid_for((size_t)B * T * s * C), 256, 0, st>>>(z, bias, B, T, C, s, y);
    CK_LAUNCH();
    return HM_OK;
}

/* vcc_conv_out1 for the samples t_first .. t_first+n_out-1 of each row only:
 * pcm[b*ld + t - t_first] (a time tile writes its part of the window). */
static int conv_out1_range(const float *x, int B, int T, int C, int k, const float *w, float bias,
                           const float *pre_bias, float pre_a, size_t t_first, size_t n_out, float *pcm, size_t ld,
                           cudaStream_t s)
{
    if (t_first + n_out > (size_t)T)
        return hm_err("%s:%d: conv_out1: samples %zu..%zu of %d", __FILE__, __LINE__, t_first, t_first + n_out, T);
    if (n_out == 0) return HM_OK;
    size_t tiled = sizeof(float) * ((size_t)k * C + (size_t)(OUT1_TILE + k - 1) * (C + 1));
    if (tiled <= 48 * 1024) {
        dim3 grid((unsigned)((n_out + OUT1_TILE - 1) / OUT1_TILE), (unsigned)B);
        conv_out1_tiled_kernel<<<grid, OUT1_TILE, tiled, s>>>(x, T, C, k, w, bias, pre_bias, pre_a, (int)t_first,
                                                              (int)n_out, pcm, ld);
        CK_LAUNCH();
        return HM_OK;
    }
    if (pre_bias) return hm_err("%s:%d: conv_out1: %d channels too wide for the fused PReLU", __FILE__, __LINE__, C);
    size_t smem = sizeof(float) * (size_t)k * C;
    if (smem > 48 * 1024) return hm_err("%s:%d: conv_out1: %d x %d weights do not fit shared memory", __FILE__, __LINE__, k, C);
    conv_out1_kernel<<<grid_for((size_t)B * n_out, 128), 128, smem, s>>>(x, B, T, C, k, w, bias, t_first, n_out, pcm, ld);
    CK_LAUNCH();
    return HM_OK;
}

extern "C" int vcc_conv_out1(const float *x, int B, int T, int C, int k, const float *w, float bias,
                             const float *pre_bias, float pre_a, size_t n_keep, float *pcm, cudaStream_t s)
{
    return conv_out1_range(x, B, T, C, k, w, bias, pre_bias, pre_a, 0, n_keep, pcm, n_keep, s);
}

/* ---- loading ------------------------------------------------------------------------------ */

namespace {

/* n floats to the device as type t (NULL + error on failure). */
void *upload(const float *v, size_t n, hmc_dtype t)
{
    void *d = nullptr;
    size_t bytes = n * hmc_dtype_size(t);
    cudaError_t e = cudaMalloc(&d, bytes ? bytes : 4);
    if (e != cudaSuccess) {
        hm_err("%s:%d: cudaMalloc(%zu): %s", __FILE__, __LINE__, bytes, cudaGetErrorString(e));
        return nullptr;
    }
    if (t == HMC_BF16) {
        uint16_t *h = (uint16_t *)hm_malloc(2 * n + 2);
        for (size_t i = 0; i < n; i++) h[i] = hm_f32_to_bf16(v[i]);
        e = cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice);
        free(h);
    } else {
        e = cudaMemcpy(d, v, bytes, cudaMemcpyHostToDevice);
    }
    if (e != cudaSuccess) {
        cudaFree(d);
        hm_err("%s:%d: cudaMemcpy: %s", __FILE__, __LINE__, cudaGetErrorString(e));
        return nullptr;
    }
    return d;
}

int upload_conv(const voc_conv *c, hmc_dtype t, dconv *d)
{
    d->cin = c->cin, d->cout = c->cout, d->k = c->k, d->dil = c->dil, d->pad_l = c->pad_l;
    if (c->pad_l + c->pad_r != c->dil * (c->k - 1))
        return hm_err("%s:%d: vocoder conv with padding %d+%d != dil*(k-1)", __FILE__, __LINE__, c->pad_l, c->pad_r);
    const size_t K = (size_t)c->k * c->cin;
    float *w = (float *)hm_malloc(sizeof(float) * K * c->cout);
    for (int o = 0; o < c->cout; o++)
        for (int j = 0; j < c->k; j++)
            memcpy(w + o * K + (size_t)j * c->cin, c->w + ((size_t)j * c->cout + o) * c->cin, sizeof(float) * c->cin);
    d->w = upload(w, K * c->cout, t);
    free(w);
    d->b = (float *)upload(c->b, c->cout, HMC_F32);
    return d->w && d->b ? HM_OK : HM_ERR;
}

int upload_tconv(const voc_tconv *c, hmc_dtype t, dtconv *d)
{
    d->cin = c->cin, d->cout = c->cout, d->k = c->k, d->s = c->s;
    float *w = (float *)hm_malloc(sizeof(float) * (size_t)c->k * c->cout * c->cin);
    for (int i = 0; i < c->cin; i++)
        for (int o = 0; o < c->cout; o++)
            for (int j = 0; j < c->k; j++)
                w[((size_t)j * c->cout + o) * c->cin + i] = c->w[((size_t)i * c->cout + o) * c->k + j];
    d->w = upload(w, (size_t)c->k * c->cout * c->cin, t);
    free(w);
    d->b = (float *)upload(c->b, c->cout, HMC_F32);
    return d->w && d->b ? HM_OK : HM_ERR;
}

int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

/* The post conv runs over every sample repeated rep times: output rep*t + r reads source samples
 * t + floor((r - (k-1) + j) / rep), so it equals a causal conv over the un-repeated input with
 * k' = 1 - floor(-(k-1) / rep) taps and rep*cout outputs (phase r in columns r*cout..), the taps
 * that land on the same source sample summed (fp32).  Its time-major output [rows, rep*cout] is
 * the repeated sequence's [rows*rep, cout]: no repeat, k'/(rep k) of the im2col and GEMM. */
int upload_post_folded(const voc_conv *c, int rep, hmc_dtype t, dconv *d)
{
    if (c->pad_r != 0 || c->pad_l != c->dil * (c->k - 1) || c->dil != 1)
        return hm_err("%s:%d: the post conv must be causal with dilation 1", __FILE__, __LINE__);
    const int kf = 1 - floor_div(-(c->k - 1), rep), cin = c->cin, cout = c->cout;
    const size_t K = (size_t)kf * cin;
    d->cin = cin, d->cout = rep * cout, d->k = kf, d->dil = 1, d->pad_l = kf - 1;
    float *w = (float *)hm_calloc((size_t)rep * cout * K, sizeof(float));
    for (int r = 0; r < rep; r++)
        for (int j = 0; j < c->k; j++) {
            int m = floor_div(r - (c->k - 1) + j, rep) + kf - 1; /* folded tap */
            for (int o = 0; o < cout; o++)
                for (int i = 0; i < cin; i++)
                    w[((size_t)r * cout + o) * K + (size_t)m * cin + i] += c->w[((size_t)j * cout + o) * cin + i];
        }
    d->w = upload(w, (size_t)rep * cout * K, t);
    free(w);
    d->b = (float *)upload(c->b, cout, HMC_F32); /* [cout]: the epilogue runs on the [rows*rep, cout] view */
    return d->w && d->b ? HM_OK : HM_ERR;
}

void free_conv(dconv *c)
{
    cudaFree(c->w);
    cudaFree(c->b);
}

/* Workspace sizes (elements) for n frames: residual stream x, GEMM outputs h, GEMM inputs hb
 * (weight dtype), im2col columns. */
void ws_sizes(const vcc_model *m, int n, size_t *sx, size_t *sh, size_t *shb, size_t *scol)
{
    const size_t B = 2;
    size_t T = (size_t)n, C = (size_t)m->first.cout;
    size_t x = B * T * C, h = B * T * (size_t)m->first.cin, hb = 0, col = B * T * m->first.k * m->first.cin;
    h = HM_MAX(h, x);
    for (int i = 0; i < m->n_up; i++) {
        const dtconv *u = &m->blk[i].up;
        hb = HM_MAX(hb, B * T * u->cin);
        h = HM_MAX(h, B * T * u->k * u->cout);
        T *= u->s;
        C = u->cout;
        x = HM_MAX(x, B * T * C);
        h = HM_MAX(h, B * T * C);
        hb = HM_MAX(hb, B * T * C);
        col = HM_MAX(col, B * T * m->blk[i].c1[0].k * C);
    }
    if (m->has_post) {
        h = HM_MAX(h, B * T * m->post.cout);
        col = HM_MAX(col, B * T * m->post.k * C);
    }
    *sx = x, *sh = h, *shb = hb, *scol = col;
}

/* Rows per chunk of a conv GEMM over M rows with K im2col columns through a column buffer of
 * cap elements: all M when they fit, else the fewest chunks, balanced. */
size_t col_chunk_rows(size_t M, size_t K, size_t cap)
{
    size_t fit = HM_MAX((size_t)1, cap / K);
    if (fit >= M) return M;
    size_t nch = (M + fit - 1) / fit;
    return (M + nch - 1) / nch;
}

/* Where the time tiles start and how far back they reach.  A tile starting at input sample a0 > 0
 * sees zeros before a0 where the window has values, so its first outputs are wrong: e counts the
 * wrong leading samples at each layer's rate (a causal conv adds its reach dil*(k-1); the causal
 * transposed conv reads input p/s - 1, so e -> (e + 1)*s; the post conv is folded, causal over the
 * un-repeated samples).  A tile recomputes halo = ceil(e / rate) input samples before its own
 * part, so every sample it keeps equals the whole window's.  Non-causal layers: no tiling. */
void tile_setup(vcc_model *m)
{
    m->tile_from = m->n_up;
    const int max_c = VCC_TILE_MAX_C;
    for (int i = m->n_up - 1; i >= 0 && m->blk[i].up.cout <= max_c; i--) m->tile_from = i;
    if (m->tile_from == m->n_up) { /* nothing narrow to tile */
        m->tile_from = -1;
        return;
    }
    long e = 0, rate = 1;
    for (int i = m->tile_from; i < m->n_up; i++) {
        const dblock *b = &m->blk[i];
        e = (e + 1) * b->up.s, rate *= b->up.s;
        for (int r = 0; r < VOC_RES_UNITS; r++) {
            const dconv *c[2] = {&b->c1[r], &b->c2[r]};
            for (int j = 0; j < 2; j++) {
                if (c[j]->pad_l != c[j]->dil * (c[j]->k - 1)) {
                    m->tile_from = -1;
                    return;
                }
                e += c[j]->pad_l;
            }
        }
    }
    if (m->has_post) e = (e + m->post.pad_l) * m->post_rep, rate *= m->post_rep;
    e += m->last_k - 1;
    m->rate = (int)rate;
    m->halo = (int)((e + rate - 1) / rate);
}

/* Input samples of the tiled part for n frames (the whole-window blocks upsample first). */
size_t tile_input_len(const vcc_model *m, int n)
{
    size_t T = (size_t)n;
    for (int i = 0; i < m->tile_from; i++) T *= m->blk[i].up.s;
    return T;
}

int res_fusable(const vcc_model *m, const dblock *b, int C);

/* Buffer needs (elements) of blocks [i0, i1) and (post) the post conv, over T input
 * samples of 2 rows; max-accumulated into the stream xs, GEMM outputs h, GEMM inputs hb and
 * columns col (chunked to colcap); *fusable set when a block may use the fused residual unit
 * (which needs the ping-pong stream). */
void walk_needs(const vcc_model *m, int i0, int i1, int post, size_t T, size_t colcap, size_t *xs, size_t *h,
                size_t *hb, size_t *col, int *fusable)
{
    const size_t B = 2;
    for (int i = i0; i < i1; i++) {
        const dblock *b = &m->blk[i];
        const dtconv *u = &b->up;
        *hb = HM_MAX(*hb, B * T * u->cin);
        *h = HM_MAX(*h, B * T * u->k * u->cout);
        T *= u->s;
        const size_t C = u->cout, K = (size_t)b->c1[0].k * C;
        *xs = HM_MAX(*xs, B * T * C);
        *h = HM_MAX(*h, B * T * C); /* the unfused path too: vcc_set_fused may switch at any call */
        *hb = HM_MAX(*hb, B * T * C);
        *col = HM_MAX(*col, col_chunk_rows(B * T, K, colcap) * K);
        if (res_fusable(m, b, (int)C)) *fusable = 1;
    }
    if (post && m->has_post) {
        const size_t K = (size_t)m->post.k * m->post.cin;
        *h = HM_MAX(*h, B * T * m->post.cout);
        *col = HM_MAX(*col, col_chunk_rows(B * T, K, colcap) * K);
    }
}

size_t gcd_z(size_t a, size_t b) { return b ? gcd_z(b, a % b) : a; }

/* A tile length (input samples) that makes every launch of the fused residual units in the tiled
 * blocks whole waves: a unit's grid is 2 * ceil(r*T / RU_BM) blocks at rate r (its samples per
 * input sample), the device runs SMs x occupancy of them at once, and a last partial wave costs
 * nearly a whole one (up to ~20 % at ~4 waves a launch).  The lcm of the blocks' units, widest
 * block first, as long as it stays <= cap; 0: none (no fused units, or unknown occupancy). */
size_t wave_unit(const vcc_model *m, size_t cap)
{
    int dev, sms;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
        return 0;
    size_t U = 0, r = 1;
    for (int i = m->tile_from; i < m->n_up; i++) {
        const dblock *b = &m->blk[i];
        r *= b->up.s;
        if (!res_fusable(m, b, b->up.cout)) continue;
        for (int j = 0; j < VOC_RES_UNITS; j++) {
            const int occ = ru_occupancy(b->up.cout, (b->c1[j].k - 1) * b->c1[j].dil);
            if (occ < 1) return U;
            const size_t wave = (size_t)sms * occ * RU_BM / 2, u = wave / gcd_z(wave, r); /* r*T a multiple of wave */
            const size_t nu = U ? U / gcd_z(U, u) * u : u;
            if (nu > cap) return U;
            U = nu;
        }
    }
    return U;
}

/* Tiled workspace for n frames: the whole-window part (quantised input, first conv, blocks before
 * tile_from: stream xa) and one tile of the rest (streams x, x2) share h, hb and col.  A tile
 * processes Tp input samples (halo included): x + x2 + h + hb about VCC_TILE_BYTES, rounded down
 * to whole waves of the fused units (wave_unit), or tile_force + halo; *cap = Tp. */
void ws_tiled(const vcc_model *m, int n, size_t *sxa, size_t *sx, size_t *sx2, size_t *sh, size_t *shb, size_t *scol,
              int *cap)
{
    const size_t es = hmc_dtype_size(m->wdt), colcap = VCC_COL_BYTES / es, B = 2;
    size_t xa = B * n * m->first.cout, h = B * n * HM_MAX(m->first.cin, m->first.cout), hb = 0, col = 0;
    col = col_chunk_rows(B * n, (size_t)m->first.k * m->first.cin, colcap) * m->first.k * m->first.cin;
    int fz = 0;
    walk_needs(m, 0, m->tile_from, 0, (size_t)n, colcap, &xa, &h, &hb, &col, &fz);
    /* bytes per tile input sample (linear in the tile length; col has its own budget) */
    size_t x1 = 0, h1 = 0, hb1 = 0, c1 = 0;
    int f1 = 0;
    walk_needs(m, m->tile_from, m->n_up, 1, 1, (size_t)-1, &x1, &h1, &hb1, &c1, &f1);
    const size_t per = 4 * (x1 * (f1 ? 2 : 1) + h1) + es * hb1, Tin = tile_input_len(m, n);
    size_t tp;
    if (m->tile_force > 0) {
        tp = (size_t)m->tile_force + m->halo;
    } else {
        tp = HM_MAX(VCC_TILE_BYTES / HM_MAX(per, (size_t)1), (size_t)4 * m->halo + 4);
        const size_t U = wave_unit(m, tp);
        if (U > (size_t)m->halo && U <= tp) tp = tp / U * U;
    }
    size_t Tp = HM_MIN(Tin, tp), x = 0;
    walk_needs(m, m->tile_from, m->n_up, 1, Tp, colcap, &x, &h, &hb, &col, &f1);
    *sxa = xa, *sx = x, *sx2 = f1 ? x : 0, *sh = h, *shb = hb, *scol = col, *cap = (int)Tp;
}

} // namespace

extern "C" int vcc_precision(const char *precision, hmc_dtype *out)
{
    if (!precision || !precision[0] || !strcmp(precision, "bf16")) *out = HMC_BF16;
    else if (!strcmp(precision, "fp32")) *out = HMC_F32;
    else return hm_err("precision '%s': the cuda vocoder supports bf16 and fp32", precision);
    return HM_OK;
}

extern "C" void vcc_free(vcc_model *m)
{
    if (!m) return;
    cudaDeviceSynchronize();
    free_conv(&m->first);
    for (int i = 0; i < m->n_up; i++) {
        cudaFree(m->blk[i].up.w);
        cudaFree(m->blk[i].up.b);
        for (int r = 0; r < VOC_RES_UNITS; r++) {
            free_conv(&m->blk[i].c1[r]);
            free_conv(&m->blk[i].c2[r]);
        }
    }
    if (m->has_post) free_conv(&m->post);
    cudaFree(m->last_w);
    cudaFree(m->x);
    cudaFree(m->xa);
    cudaFree(m->x2);
    cudaFree(m->h);
    cudaFree(m->hb);
    cudaFree(m->col);
    for (int i = 0; i < VCC_PROF_MAX_EVENTS && m->pev[0]; i++) cudaEventDestroy(m->pev[i]);
    free(m);
}

extern "C" int vcc_upload(const voc_model *host, hmc_dtype wdt, vcc_model **out)
{
    *out = nullptr;
    if (wdt != HMC_BF16 && wdt != HMC_F32) return hm_err("%s:%d: vocoder weights must be bf16 or fp32", __FILE__, __LINE__);
    vcc_model *m = (vcc_model *)hm_calloc(1, sizeof *m);
    m->cfg = host->cfg;
    m->wdt = wdt;
    m->fused = 1;
    m->hop = host->hop;
    m->n_up = host->n_up;
    m->has_post = host->has_post;
    m->post_rep = host->post_rep;
    int rc = upload_conv(&host->first, wdt, &m->first);
    for (int i = 0; !rc && i < host->n_up; i++) {
        rc = upload_tconv(&host->blk[i].up, wdt, &m->blk[i].up);
        for (int r = 0; !rc && r < VOC_RES_UNITS; r++) {
            const voc_res *u = &host->blk[i].res[r];
            rc = upload_conv(&u->c1, wdt, &m->blk[i].c1[r]) || upload_conv(&u->c2, wdt, &m->blk[i].c2[r]);
            m->blk[i].a1[r] = u->a1;
            m->blk[i].a2[r] = u->a2;
        }
    }
    if (!rc && host->has_post) {
        rc = upload_post_folded(&host->post, host->post_rep, wdt, &m->post);
        m->post_a = host->post_a;
    }
    if (!rc) {
        const voc_conv *l = &host->last;
        if (l->cout != 1 || l->pad_r != 0 || l->pad_l != l->dil * (l->k - 1) || l->dil != 1)
            rc = hm_err("%s:%d: the last vocoder conv must be causal, dilation 1, one output channel", __FILE__, __LINE__);
        else if (!(m->last_w = (float *)upload(l->w, (size_t)l->k * l->cin, HMC_F32)))
            rc = HM_ERR;
        m->last_b = l->b[0];
        m->last_k = l->k;
        m->last_cin = l->cin;
    }
    if (rc) {
        vcc_free(m);
        return HM_ERR;
    }
    tile_setup(m);
    m->tiling = 1;
    /* device bytes of the weights (upload_* above: weights in wdt, biases fp32) */
    const size_t es = hmc_dtype_size(wdt);
    auto conv_bytes = [es](const dconv *c) { return (size_t)c->cout * c->k * c->cin * es + (size_t)c->cout * 4; };
    m->w_bytes = conv_bytes(&m->first) + (size_t)m->last_k * m->last_cin * 4 + (m->has_post ? conv_bytes(&m->post) : 0);
    for (int i = 0; i < m->n_up; i++) {
        const dtconv *u = &m->blk[i].up;
        m->w_bytes += (size_t)u->k * u->cout * u->cin * es + (size_t)u->cout * 4;
        for (int r = 0; r < VOC_RES_UNITS; r++) m->w_bytes += conv_bytes(&m->blk[i].c1[r]) + conv_bytes(&m->blk[i].c2[r]);
    }
    *out = m;
    return HM_OK;
}

extern "C" int vcc_load(const char *model_dir, hmc_dtype wdt, vcc_model **out)
{
    voc_model *h;
    *out = nullptr;
    if (voc_load(model_dir, &h)) return HM_ERR;
    int rc = vcc_upload(h, wdt, out);
    voc_free(h);
    return rc;
}

extern "C" int vcc_init_random(const hm_codec_config *cfg, hmc_dtype wdt, uint64_t seed, vcc_model **out)
{
    voc_model *h;
    *out = nullptr;
    if (voc_init_random(cfg, seed, 1, &h)) return HM_ERR;
    int rc = vcc_upload(h, wdt, out);
    voc_free(h);
    return rc;
}

extern "C" const hm_codec_config *vcc_config(const vcc_model *m) { return &m->cfg; }
extern "C" int vcc_hop(const vcc_model *m) { return m->hop; }
extern "C" hmc_dtype vcc_weights_dtype(const vcc_model *m) { return m->wdt; }

static int tiled(const vcc_model *m) { return m->tiling && m->tile_from >= 0; }

extern "C" int vcc_reserve(vcc_model *m, int n)
{
    if (n <= m->ws_n) return HM_OK;
    size_t sxa = 0, sx, sx2, sh, shb, scol, es = hmc_dtype_size(m->wdt);
    if (tiled(m)) {
        ws_tiled(m, n, &sxa, &sx, &sx2, &sh, &shb, &scol, &m->tile_cap);
    } else { /* the whole window at every stage */
        ws_sizes(m, n, &sx, &sh, &shb, &scol);
        sx2 = sx;
    }
    CK(cudaDeviceSynchronize());
    cudaFree(m->x), cudaFree(m->x2), cudaFree(m->xa), cudaFree(m->h), cudaFree(m->hb), cudaFree(m->col);
    m->x = m->x2 = m->xa = m->h = nullptr, m->hb = m->col = nullptr, m->ws_n = 0, m->ws_bytes = 0;
    CK(cudaMalloc(&m->x, sx * 4));
    if (sx2) CK(cudaMalloc(&m->x2, sx2 * 4));
    if (sxa) CK(cudaMalloc(&m->xa, sxa * 4));
    CK(cudaMalloc(&m->h, sh * 4));
    CK(cudaMalloc(&m->hb, shb * es + 16));
    CK(cudaMalloc(&m->col, scol * es));
    m->col_elems = scol;
    m->ws_bytes = 4 * (sx + sx2 + sxa + sh) + shb * es + 16 + scol * es;
    m->ws_n = n;
    return HM_OK;
}

extern "C" void vcc_set_tiling(vcc_model *m, int on, int tile_len)
{
    if (on != m->tiling || tile_len != m->tile_force) m->ws_n = 0; /* re-sized at the next call */
    m->tiling = on, m->tile_force = tile_len > 0 ? tile_len : 0;
}

extern "C" size_t vcc_weight_bytes(const vcc_model *m) { return m->w_bytes; }
extern "C" size_t vcc_workspace_bytes(const vcc_model *m) { return m->ws_bytes; }

/* Tiles of a window of n frames (tiled; after vcc_reserve(m, n)): every tile processes Tp input
 * samples (the last fewer): the first [0, Tp), then L = Tp - halo new ones each. */
static void tile_plan(const vcc_model *m, int n, size_t *Tin, size_t *Tp, size_t *L, size_t *tiles)
{
    *Tin = tile_input_len(m, n);
    *Tp = HM_MIN(*Tin, (size_t)m->tile_cap);
    *L = *Tp > (size_t)m->halo ? *Tp - m->halo : 1;
    *tiles = *Tin <= *Tp ? 1 : 1 + (*Tin - *Tp + *L - 1) / *L;
}

extern "C" int vcc_describe(const vcc_model *m, int n, char *buf, size_t cap)
{
    if (!tiled(m)) {
        snprintf(buf, cap, "whole window at every stage (%s)", m->tile_from < 0 ? "layers not causal" : "tiling off");
        return HM_OK;
    }
    size_t Tin, Tp, L, nt;
    tile_plan(m, n, &Tin, &Tp, &L, &nt);
    snprintf(buf, cap, "blocks %d..%d + post + final conv in %zu tiles of %zu input samples (the first %zu; + %d halo "
             "after it; 1 : %d output) of %zu; blocks before over the whole window",
             m->tile_from + 1, m->n_up, nt, L, Tp, m->halo, m->rate, Tin);
    return HM_OK;
}

static void mark(vcc_model *m, cudaStream_t s, int stage, int kind)
{
    if (!m->prof || m->npev >= VCC_PROF_MAX_EVENTS) return;
    cudaEventRecord(m->pev[m->npev], s);
    m->pstage[m->npev] = (unsigned char)stage, m->pkind[m->npev] = (unsigned char)kind;
    m->npev++;
}

extern "C" void vcc_set_fused(vcc_model *m, int on) { m->fused = on; }

extern "C" int vcc_profile(vcc_model *m, int on)
{
    if (on && !m->pev[0])
        for (int i = 0; i < VCC_PROF_MAX_EVENTS; i++) CK(cudaEventCreate(&m->pev[i]));
    m->prof = on;
    m->npev = 0;
    return HM_OK;
}

extern "C" int vcc_profile_table(vcc_model *m, char *buf, size_t cap)
{
    if (!m->npev) return hm_err("vocoder profile: no profiled decode yet");
    CK(cudaEventSynchronize(m->pev[m->npev - 1]));
    const int ns = m->n_up + 2;
    double t[10][PK_N] = {{0}}, tot = 0;
    for (int i = 1; i < m->npev; i++) {
        float ms;
        CK(cudaEventElapsedTime(&ms, m->pev[i - 1], m->pev[i]));
        t[m->pstage[i]][m->pkind[i]] += ms;
        tot += ms;
    }
    size_t o = 0;
    o += snprintf(buf + o, cap - o, "| op (ms) |");
    for (int st = 0; st < ns; st++)
        o += snprintf(buf + o, o < cap ? cap - o : 0, st == 0 ? " in |" : st == ns - 1 ? " out |" : " up%d |", st);
    o += snprintf(buf + o, o < cap ? cap - o : 0, " sum |\n|---|");
    for (int st = 0; st <= ns; st++) o += snprintf(buf + o, o < cap ? cap - o : 0, "---|");
    o += snprintf(buf + o, o < cap ? cap - o : 0, "\n");
    for (int k = 1; k < PK_N; k++) {
        double sum = 0;
        for (int st = 0; st < ns; st++) sum += t[st][k];
        if (sum == 0) continue;
        o += snprintf(buf + o, o < cap ? cap - o : 0, "| %s |", pk_name[k]);
        for (int st = 0; st < ns; st++) o += snprintf(buf + o, o < cap ? cap - o : 0, " %.3f |", t[st][k]);
        o += snprintf(buf + o, o < cap ? cap - o : 0, " %.3f |\n", sum);
    }
    o += snprintf(buf + o, o < cap ? cap - o : 0, "| all |");
    for (int st = 0; st < ns; st++) {
        double sum = 0;
        for (int k = 1; k < PK_N; k++) sum += t[st][k];
        o += snprintf(buf + o, o < cap ? cap - o : 0, " %.3f |", sum);
    }
    snprintf(buf + o, o < cap ? cap - o : 0, " %.3f |\n", tot);
    return HM_OK;
}

namespace {

int res_fusable(const vcc_model *m, const dblock *b, int C)
{
    if (m->wdt != HMC_BF16 || (C != 64 && C != 128)) return 0;
    for (int r = 0; r < VOC_RES_UNITS; r++)
        if (ru_smem(C, (b->c1[r].k - 1) * b->c1[r].dil) > RU_MAX_SMEM) return 0;
    return 1;
}

/* conv c over x [2T, cin] -> y [2T, cout] (no bias): im2col + GEMM, in row chunks that fit the
 * column buffer (one chunk, all rows, whenever it holds them). */
int conv_gemm(vcc_model *m, const dconv *c, const float *x, int T, float *y, int stage, cudaStream_t s)
{
    const size_t M = (size_t)2 * T, K = (size_t)c->k * c->cin, rows = col_chunk_rows(M, K, m->col_elems);
    for (size_t q0 = 0; q0 < M; q0 += rows) {
        const size_t nq = HM_MIN(rows, M - q0);
        CKH(im2col_rows(x, T, c->cin, c->k, c->dil, c->pad_l, 1, q0, nq, m->col, m->wdt, s));
        mark(m, s, stage, PK_IM2COL);
        CKH(hmc_gemm(m->col, c->w, m->wdt, y + q0 * c->cout, (int)nq, c->cout, (int)K, 0, s));
        mark(m, s, stage, PK_GEMM);
    }
    return HM_OK;
}

/* Block i over T input samples: rows b*in_T + in_off + t (t < T) of `in` -> upsampling ->
 * residual units; the result [2*T*s, cout] ends in *xp (*x2p: the fused units' ping-pong partner,
 * NULL: unfused).  in may be *xp (it is read before the stream is written). */
int block_forward(vcc_model *m, int i, const float *in, int in_T, int in_off, int T, float **xp, float **x2p,
                  cudaStream_t s)
{
    const dblock *b = &m->blk[i];
    const dtconv *u = &b->up;
    const hmc_dtype t = m->wdt;
    /* upsampling: input (weight dtype) -> z [2T, k*cout] (in h) -> overlap-add -> x [2T*s, cout] */
    if (in_T == T && in_off == 0) {
        CKH(hmc_convert(in, m->hb, t, (size_t)2 * T * u->cin, s));
    } else {
        for (int r = 0; r < 2; r++)
            CKH(hmc_convert(in + ((size_t)r * in_T + in_off) * u->cin, (char *)m->hb + (size_t)r * T * u->cin * hmc_dtype_size(t),
                            t, (size_t)T * u->cin, s));
    }
    mark(m, s, i + 1, PK_CONVERT);
    CKH(hmc_gemm(m->hb, u->w, t, m->h, 2 * T, u->k * u->cout, u->cin, 0, s));
    mark(m, s, i + 1, PK_GEMM_UP);
    CKH(vcc_overlap_add(m->h, u->b, 2, T, u->cout, u->s, *xp, s));
    mark(m, s, i + 1, PK_OADD);
    T *= u->s;
    const int C = u->cout, M = 2 * T;
    const int fuse = m->fused && x2p && res_fusable(m, b, C);
    for (int r = 0; r < VOC_RES_UNITS; r++) {
        const dconv *c1 = &b->c1[r];
        if (fuse) {
            CKH(vcc_res_unit_fused(*xp, *x2p, 2, T, C, c1->k, c1->dil, c1->w, c1->b, b->a1[r], b->c2[r].w, b->c2[r].b,
                                   b->a2[r], s));
            float *tmp = *xp;
            *xp = *x2p, *x2p = tmp;
            mark(m, s, i + 1, PK_FUSED);
            continue;
        }
        CKH(conv_gemm(m, c1, *xp, T, m->h, i + 1, s));
        CKH(vcc_bias_prelu(m->h, c1->b, b->a1[r], M, C, m->hb, t, nullptr, s));
        mark(m, s, i + 1, PK_EPI);
        CKH(hmc_gemm(m->hb, b->c2[r].w, t, m->h, M, C, C, 0, s));
        mark(m, s, i + 1, PK_GEMM1);
        CKH(vcc_bias_prelu(m->h, b->c2[r].b, b->a2[r], M, C, nullptr, HMC_F32, *xp, s));
        mark(m, s, i + 1, PK_RESID);
    }
    return HM_OK;
}

/* Post conv (x post_rep) + PReLU + the final conv over x [2T, C] at the last block's rate; writes
 * the output samples t_first .. t_first+n_out-1 of each row to pcm[b*ld + t - t_first]. */
int tail_forward(vcc_model *m, const float *x, int T, size_t t_first, size_t n_out, float *pcm, size_t ld, cudaStream_t s)
{
    const int last = m->n_up + 1; /* profile stage of the post and final convs */
    const float *last_in = x;
    if (m->has_post) {
        /* repeat x post_rep times + causal conv = the folded conv (see upload_post_folded) */
        CKH(conv_gemm(m, &m->post, x, T, m->h, last, s));
        T *= m->post_rep;
        last_in = m->h; /* its bias + PReLU happen inside conv_out1 */
    }
    const int C = m->last_cin;
    const size_t fused = sizeof(float) * ((size_t)m->last_k * C + (size_t)(OUT1_TILE + m->last_k - 1) * (C + 1));
    const float *pre_b = m->has_post && fused <= 48 * 1024 ? m->post.b : nullptr;
    if (m->has_post && !pre_b) {
        CKH(vcc_bias_prelu(m->h, m->post.b, m->post_a, 2 * T, C, m->h, HMC_F32, nullptr, s));
        mark(m, s, last, PK_EPI);
    }
    CKH(conv_out1_range(last_in, 2, T, C, m->last_k, m->last_w, m->last_b, pre_b, m->post_a, t_first, n_out, pcm, ld, s));
    mark(m, s, last, PK_OUT1);
    return HM_OK;
}

} // namespace

extern "C" int vcc_decode_window(vcc_model *m, const float *lat_dev, int n, size_t n_keep, float *pcm_dev,
                                 cudaStream_t s)
{
    hmc_nvtx nvtx_("voc_decode");
    if (n < 1 || n > (1 << 20) || n_keep > (size_t)n * m->hop)
        return hm_err("vocoder: %zu samples asked of %d frames (%zu made)", n_keep, n, (size_t)n * m->hop);
    CKH(vcc_reserve(m, n));
    const int tl = tiled(m);
    m->npev = 0;
    mark(m, s, 0, PK_START);
    /* latents -> quantised [2n, H] (in h) -> first conv -> the stream [2n, C] */
    float *x = tl ? m->xa : m->x, *x2 = tl ? nullptr : m->x2;
    CKH(vcc_quantize_split(lat_dev, n, m->first.cin, m->h, s));
    mark(m, s, 0, PK_QUANT);
    CKH(conv_gemm(m, &m->first, m->h, n, x, 0, s));
    CKH(vcc_bias_prelu(x, m->first.b, 1.0f, 2 * n, m->first.cout, x, HMC_F32, nullptr, s));
    mark(m, s, 0, PK_EPI);
    int T = n;
    const int whole = tl ? m->tile_from : m->n_up; /* blocks over the whole window */
    for (int i = 0; i < whole; i++) {
        CKH(block_forward(m, i, x, T, 0, T, &x, x2 ? &x2 : nullptr, s));
        T *= m->blk[i].up.s;
    }
    if (!tl) return tail_forward(m, x, T, 0, n_keep, pcm_dev, n_keep, s);
    /* time tiles over the rest: tile [a, b) of the T input samples recomputes [a0, a) before it */
    size_t Tin, Tp, L, nt;
    tile_plan(m, n, &Tin, &Tp, &L, &nt);
    for (size_t a = 0, b; a < Tin && a * m->rate < n_keep; a = b) {
        b = HM_MIN(Tin, a ? a + L : Tp);
        const size_t a0 = a ? a - m->halo : 0;
        int Tt = (int)(b - a0);
        if (Tt > m->tile_cap) return hm_err("%s:%d: vocoder tile of %d samples, workspace for %d", __FILE__, __LINE__, Tt, m->tile_cap);
        float *y = m->x, *y2 = m->x2;
        for (int i = m->tile_from; i < m->n_up; i++) {
            CKH(block_forward(m, i, i == m->tile_from ? m->xa : y, i == m->tile_from ? T : Tt, i == m->tile_from ? (int)a0 : 0,
                              Tt, &y, y2 ? &y2 : nullptr, s));
            Tt *= m->blk[i].up.s;
        }
        const size_t o0 = a * m->rate, o1 = HM_MIN(b * m->rate, n_keep);
        CKH(tail_forward(m, y, Tt, (a - a0) * m->rate, o1 - o0, pcm_dev + o0, n_keep, s));
    }
    return HM_OK;
}

/* ---- cost model ----------------------------------------------------------------------------- */

namespace {
/* Walk the layers of cfg for n frames, both rows: MACs and the floor's activation/weight counts. */
void cost(const hm_codec_config *c, int n, double *macs, double *acts, double *weights)
{
    const double B = 2;
    double T = n, C = (double)(c->init_channel << c->n_up), H = c->latent_hidden_dim;
    double mac = B * T * H * C * c->delay_kernel_size, act = B * T * (H + C), w = H * C * c->delay_kernel_size;
    for (int i = 0; i < c->n_up; i++) {
        double s = c->upsample_factors[i], k = c->upsample_kernel_sizes[i], Co = C / 2;
        mac += B * T * C * Co * k;
        act += B * T * C + B * T * s * Co;
        w += C * Co * k;
        T *= s;
        C = Co;
        double rk = c->res_kernel_size;
        mac += VOC_RES_UNITS * B * T * C * C * (rk + 1);
        act += VOC_RES_UNITS * 4 * B * T * C; /* two convs, each reads its input and writes its output */
        w += VOC_RES_UNITS * C * C * (rk + 1);
    }
    if (c->num_samples > 1) {
        double k = c->default_kernel_size;
        mac += B * T * c->num_samples * C * C * k;
        act += B * T * C + B * T * c->num_samples * C;
        w += C * C * k;
        T *= c->num_samples;
    }
    mac += B * T * C * c->default_kernel_size;
    act += B * T * C + B * T;
    *macs = mac, *acts = act, *weights = w;
}
} // namespace

extern "C" double vcc_flops(const hm_codec_config *cfg, int n)
{
    double mac, act, w;
    cost(cfg, n, &mac, &act, &w);
    return 2.0 * mac;
}

extern "C" double vcc_min_bytes(const hm_codec_config *cfg, int n, hmc_dtype act_dtype)
{
    double mac, act, w;
    cost(cfg, n, &mac, &act, &w);
    return (act + w) * (double)hmc_dtype_size(act_dtype);
}
