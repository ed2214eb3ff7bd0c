/* codec_cuda.cu - HeartCodec flow matching on the GPU: weight upload, the DiT estimator's kernels
 * (im2col conv, bias/act, modulated norms, gated residual, RoPE, tiled attention, timestep
 * features), the estimator and the Euler + CFG solver (see codec_cuda.h; CPU twin fm.c).
 * GEMMs go through hmc_gemm (kernels/gemm.cu, cuBLASLt).  The weights sit in one device allocation
 * (a sizing pass of the loader first); a solve reads its timestep conditioning from an adaLN table
 * per step count, so the adaLN weights may stay in host memory (fmc_set_adaln_host). */
#include "codec_cuda.h"
#include "common_cuda.h"

#include <cublasLt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "codec_plan.h"
#include "ops_cpu.h"
#include "safetensors.h"
}

#define FMC_EPS 1e-6f
#define FMC_ROPE_BASE 10000.0f
#define FMC_TIME_FEATURES 512 /* PixArt flow_t_size */
#define FMC_PROJ_K 3
#define FMC_GRAPHS 4
#define FMC_ADA_TABLES 4

namespace {

/* ---- kernels -------------------------------------------------------------------------------- */

int grid_for(size_t n, int threads = 256)
{
    size_t g = (n + threads - 1) / threads;
    return (int)(g < 8192 ? (g ? g : 1) : 8192);
}

template <typename CT>
__global__ void im2col3_kernel(const float *__restrict__ a, int ca, const float *__restrict__ b, int cb, int T,
                               CT *__restrict__ col)
{
    const int row = blockIdx.x, bt = row / T, t = row % T, C = ca + cb;
    CT *out = col + (size_t)row * 3 * C;
    for (int i = threadIdx.x; i < 3 * C; i += blockDim.x) {
        int j = i / C, c = i - j * C, ts = t + j - 1;
        float v = 0.0f;
        if (ts >= 0 && ts < T) {
            size_t r = (size_t)bt * T + ts;
            v = c < ca ? a[r * ca + c] : b[r * cb + (c - ca)];
        }
        hmc_st(out + i, v);
    }
}

__device__ __forceinline__ float silu_f(float v) { return v / (1.0f + expf(-v)); }

template <typename CT>
__global__ void bias_act_kernel(float *__restrict__ y, const float *__restrict__ bias, size_t n, int N, float scale,
                                int store_y, int act, CT *__restrict__ conv)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = y[i];
        if (bias) v = v + bias[i % N];
        v = v * scale;
        if (store_y) y[i] = v;
        if (conv) hmc_st(conv + i, act ? silu_f(v) : v);
    }
}

/* One block per row: statistics in fp32 over the row, then the modulated output. */
template <typename YT>
__global__ void norm_mod_kernel(const float *x, const float *__restrict__ w, float eps, const float *__restrict__ tsh,
                                const float *__restrict__ tsc, const float *__restrict__ csh,
                                const float *__restrict__ csc, int cs, int T, int D, YT *y)
{
    __shared__ float red[32];
    const int row = blockIdx.x, b = row / T;
    const float *xr = x + (size_t)row * D;
    YT *yr = y + (size_t)row * D;
    float r, mean = 0.0f;
    if (w) {
        float ss = 0.0f;
        for (int i = threadIdx.x; i < D; i += blockDim.x) ss += xr[i] * xr[i];
        r = rsqrtf(block_sum(ss, red) / (float)D + eps);
    } else {
        float s = 0.0f;
        for (int i = threadIdx.x; i < D; i += blockDim.x) s += xr[i];
        mean = block_sum(s, red) / (float)D;
        float v = 0.0f;
        for (int i = threadIdx.x; i < D; i += blockDim.x) v += (xr[i] - mean) * (xr[i] - mean);
        r = rsqrtf(block_sum(v, red) / (float)D + eps);
    }
    const float *bsh = csh + (size_t)b * cs, *bsc = csc + (size_t)b * cs;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float n = w ? xr[i] * r * w[i] : (xr[i] - mean) * r;
        float sc = tsc[i] + bsc[i], sh = tsh[i] + bsh[i];
        hmc_st(yr + i, n * (1.0f + sc) + sh);
    }
}

/* The gated residual add of one block's branch fused with the norm that follows it (the next
 * branch's, or the stack's final LayerNorm): one block per row, x += (tg + cg[b]) * h written
 * back, then the statistics of the new row, then the modulated output y (which may be x: each
 * thread rewrites only the elements it read). */
template <typename YT>
__global__ void add_norm_mod_kernel(float *x, const float *__restrict__ h, const float *__restrict__ tg,
                                    const float *__restrict__ cg, int gcs, const float *__restrict__ w, float eps,
                                    const float *__restrict__ tsh, const float *__restrict__ tsc,
                                    const float *__restrict__ csh, const float *__restrict__ csc, int cs, int T, int D,
                                    YT *y)
{
    __shared__ float red[32];
    const int row = blockIdx.x, b = row / T;
    float *xr = x + (size_t)row * D;
    const float *hr = h + (size_t)row * D, *bg = cg + (size_t)b * gcs;
    YT *yr = y + (size_t)row * D;
    float acc = 0.0f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float v = xr[i] + (tg[i] + bg[i]) * hr[i];
        xr[i] = v;
        acc += w ? v * v : v;
    }
    float r, mean = 0.0f;
    if (w) {
        r = rsqrtf(block_sum(acc, red) / (float)D + eps);
    } else {
        mean = block_sum(acc, red) / (float)D;
        float v = 0.0f;
        for (int i = threadIdx.x; i < D; i += blockDim.x) v += (xr[i] - mean) * (xr[i] - mean);
        r = rsqrtf(block_sum(v, red) / (float)D + eps);
    }
    const float *bsh = csh + (size_t)b * cs, *bsc = csc + (size_t)b * cs;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float xv = xr[i];
        float n = w ? xv * r * w[i] : (xv - mean) * r;
        float sc = tsc[i] + bsc[i], sh = tsh[i] + bsh[i];
        hmc_st(yr + i, n * (1.0f + sc) + sh);
    }
}

__global__ void gated_add_kernel(float *__restrict__ x, const float *__restrict__ h, const float *__restrict__ tg,
                                 const float *__restrict__ cg, int cs, int T, int D, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        int c = (int)(i % D);
        int b = (int)(i / ((size_t)T * D));
        float g = tg[c] + cg[(size_t)b * cs + c];
        x[i] = x[i] + g * h[i];
    }
}

/* cos and sin of x for |x| up to ~1e5 (positions times frequencies, 1000 t f) without sinf's
 * slow path, whose Payne-Hanek buffer gives every thread of the kernel a 32-byte stack frame and
 * the process the local memory the context then reserves for it (kernels/device.cu): x reduced to
 * [-pi, pi] in two steps, then the hardware approximation (absolute error <= 2^-21.4 there). */
__device__ __forceinline__ void sincos_reduced(float x, float *s, float *c)
{
    const float k = rintf(x * 0.159154943f);
    float r = fmaf(-k, 6.28318548f, x);   /* 2 pi rounded to fp32 */
    r = fmaf(-k, -1.74845560e-7f, r);     /* 2 pi minus that */
    __sincosf(r, s, c);
}

__global__ void rope_qk_kernel(float *qkv, int T, int H, int hd, const float *__restrict__ freqs)
{
    const int row = blockIdx.x, t = row % T, half = hd / 2, np = H * half;
    float *q = qkv + (size_t)row * 3 * H * hd;
    for (int p = threadIdx.x; p < 2 * np; p += blockDim.x) {
        int which = p / np, pp = p - which * np, h = pp / half, i = pp - h * half;
        float ang = (float)t * freqs[i];
        float c, s;
        sincos_reduced(ang, &s, &c);
        float *e = q + (size_t)which * H * hd + h * hd + 2 * i;
        float a = e[0], bb = e[1];
        e[0] = a * c - bb * s;
        e[1] = bb * c + a * s;
    }
}

/* Tiled full attention.  Block = (query tile of ATT_BQ rows, head, batch), 256 threads: thread
 * (qi = tid / 8, g = tid % 8) scores keys g, g+8, g+16, g+24 of each ATT_BK-key tile against query
 * qi, the 8 threads of a row keep its running max / sum (online softmax, fp32), and the same
 * thread owns output columns g, g+8, ... of row qi.  K, V tiles are staged in shared memory
 * (rows padded by one float against bank conflicts). */
constexpr int ATT_BQ = 32, ATT_BK = 32, ATT_THREADS = 256;

template <int HD>
constexpr size_t att_smem() { return sizeof(float) * ((size_t)ATT_BQ * (HD + 1) + (size_t)ATT_BK * (HD + 1) + (size_t)ATT_BK * HD + (size_t)ATT_BQ * (ATT_BK + 1)); }

template <int HD, typename OT>
__global__ void __launch_bounds__(ATT_THREADS) attention_kernel(const float *__restrict__ qkv, int T, int H, float scale,
                                                                OT *__restrict__ out)
{
    extern __shared__ float sm[];
    float *Qs = sm, *Ks = Qs + ATT_BQ * (HD + 1), *Vs = Ks + ATT_BK * (HD + 1), *Ps = Vs + ATT_BK * HD;
    const int q0 = blockIdx.x * ATT_BQ, h = blockIdx.y, b = blockIdx.z, tid = threadIdx.x;
    const int qi = tid >> 3, g = tid & 7;
    const size_t ld = (size_t)3 * H * HD;
    const float *base = qkv + (size_t)b * T * ld + (size_t)h * HD;
    for (int i = tid; i < ATT_BQ * HD; i += ATT_THREADS) {
        int r = i / HD, d = i - r * HD;
        Qs[r * (HD + 1) + d] = q0 + r < T ? base[(size_t)(q0 + r) * ld + d] : 0.0f;
    }
    float acc[HD / 8];
#pragma unroll
    for (int c = 0; c < HD / 8; c++) acc[c] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int k0 = 0; k0 < T; k0 += ATT_BK) {
        __syncthreads(); /* previous tile's readers are done (and Qs is written, first time) */
        for (int i = tid; i < ATT_BK * HD; i += ATT_THREADS) {
            int r = i / HD, d = i - r * HD;
            bool ok = k0 + r < T;
            const float *src = base + (size_t)(k0 + r) * ld + d;
            Ks[r * (HD + 1) + d] = ok ? src[(size_t)H * HD] : 0.0f;
            Vs[r * HD + d] = ok ? src[(size_t)2 * H * HD] : 0.0f;
        }
        __syncthreads();
        float s[4];
#pragma unroll
        for (int j = 0; j < 4; j++) s[j] = 0.0f;
        const float *qr = Qs + qi * (HD + 1);
#pragma unroll 8
        for (int d = 0; d < HD; d++) {
            float qv = qr[d];
#pragma unroll
            for (int j = 0; j < 4; j++) s[j] += qv * Ks[(g + 8 * j) * (HD + 1) + d];
        }
        float tmax = -INFINITY;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            s[j] = k0 + g + 8 * j < T ? s[j] * scale : -INFINITY;
            tmax = fmaxf(tmax, s[j]);
        }
        for (int o = 4; o > 0; o >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
        float mn = fmaxf(m, tmax); /* finite: every tile holds at least one valid key */
        float corr = expf(m - mn), ps = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            float p = expf(s[j] - mn);
            ps += p;
            Ps[qi * (ATT_BK + 1) + g + 8 * j] = p;
        }
        for (int o = 4; o > 0; o >>= 1) ps += __shfl_xor_sync(0xffffffffu, ps, o);
        l = l * corr + ps;
        m = mn;
        __syncwarp(); /* the row's 8 threads share a warp: their Ps writes are what they read next */
#pragma unroll
        for (int c = 0; c < HD / 8; c++) acc[c] *= corr;
        const float *pr = Ps + qi * (ATT_BK + 1);
        for (int kj = 0; kj < ATT_BK; kj++) {
            float p = pr[kj];
            const float *vr = Vs + kj * HD + g;
#pragma unroll
            for (int c = 0; c < HD / 8; c++) acc[c] += p * vr[8 * c];
        }
    }
    if (q0 + qi < T) {
        OT *o = out + ((size_t)b * T + q0 + qi) * H * HD + (size_t)h * HD + g;
        float inv = 1.0f / l;
#pragma unroll
        for (int c = 0; c < HD / 8; c++) hmc_st(o + 8 * c, acc[c] * inv);
    }
}

/* RoPE on q and k of fp32 qkv rows [B*T, 3*H*hd] as rope_qk_kernel computes it, written with v as
 * a bf16 copy (the flash kernel's input): one pass instead of rope in place + a conversion. */
__global__ void rope_bf16_kernel(const float *__restrict__ qkv, int T, int H, int hd, const float *__restrict__ freqs,
                                 __nv_bfloat16 *__restrict__ out)
{
    const int row = blockIdx.x, t = row % T, half = hd / 2, nrot = 2 * H * half, np = 3 * H * half;
    const float2 *in = (const float2 *)(qkv + (size_t)row * 3 * H * hd);
    __nv_bfloat162 *o = (__nv_bfloat162 *)(out + (size_t)row * 3 * H * hd);
    for (int p = threadIdx.x; p < np; p += blockDim.x) {
        float2 v = in[p];
        if (p < nrot) {
            float ang = (float)t * freqs[p % half];
            float c, sn;
            sincos_reduced(ang, &sn, &c);
            v = make_float2(v.x * c - v.y * sn, v.y * c + v.x * sn);
        }
        o[p] = __floats2bfloat162_rn(v.x, v.y);
    }
}

/* Flash attention on tensor cores (FlashAttention-2 layout).  Block = (64-query tile, head,
 * batch row), 4 warps of 16 query rows each; K/V tiles of 64 keys go global -> shared with
 * cp.async, double buffered (rows past T zero-filled).  S = Q Kᵀ and O += P V are
 * mma.sync.m16n8k16 bf16 x bf16 -> fp32; the row max / sum and the rescaling of O are fp32
 * (online softmax, exp2 with the 1/sqrt(hd) scale folded in); P is rounded to bf16 for P V, as
 * the GEMM path rounds it.  Shared rows are padded by 16 bytes so ldmatrix's 8 row addresses
 * fall in different banks. */
constexpr int FA_BQ = 64, FA_BK = 64, FA_THREADS = 128;

template <int HD>
constexpr size_t fa_smem() { return sizeof(__nv_bfloat16) * (size_t)(HD + 8) * (FA_BQ + 4 * FA_BK); }

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool valid)
{
    unsigned sa = (unsigned)__cvta_generic_to_shared(smem);
    int n = valid ? 16 : 0; /* 0 source bytes: the 16 destination bytes are zero-filled */
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sa), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldsm_x4(unsigned r[4], const void *p)
{
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_t(unsigned r[4], const void *p)
{
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ void mma16816(float c[4], const unsigned a[4], unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(unsigned *)&v;
}

template <int HD, typename OT>
__global__ void __launch_bounds__(FA_THREADS) flash_kernel(const __nv_bfloat16 *__restrict__ qkv, int T, int H,
                                                           float sl2, OT *__restrict__ out)
{
    extern __shared__ __align__(16) unsigned char fa_sm[];
    constexpr int LD = HD + 8, CH = HD / 8, NJ = FA_BK / 8, ND = HD / 8;
    __nv_bfloat16 *Qs = (__nv_bfloat16 *)fa_sm, *Ks = Qs + FA_BQ * LD, *Vs = Ks + 2 * FA_BK * LD;
    const int q0 = blockIdx.x * FA_BQ, h = blockIdx.y, b = blockIdx.z;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const int mi = lane >> 3, mr = lane & 7; /* ldmatrix: which 8x8 matrix this lane addresses, and its row */
    const size_t ld = (size_t)3 * H * HD;
    const __nv_bfloat16 *base = qkv + (size_t)b * T * ld + (size_t)h * HD;
    for (int i = tid; i < FA_BQ * CH; i += FA_THREADS) {
        int r = i / CH, c = i - r * CH;
        bool ok = q0 + r < T;
        cp_async16(Qs + r * LD + c * 8, base + (size_t)(ok ? q0 + r : 0) * ld + c * 8, ok);
    }
    auto load_kv = [&](int kt, int buf) {
        const int k0 = kt * FA_BK;
        for (int i = tid; i < FA_BK * CH; i += FA_THREADS) {
            int r = i / CH, c = i - r * CH;
            bool ok = k0 + r < T;
            const __nv_bfloat16 *src = base + (size_t)(ok ? k0 + r : 0) * ld + c * 8;
            cp_async16(Ks + (buf * FA_BK + r) * LD + c * 8, src + (size_t)H * HD, ok);
            cp_async16(Vs + (buf * FA_BK + r) * LD + c * 8, src + (size_t)2 * H * HD, ok);
        }
    };
    load_kv(0, 0);
    cp_async_commit();
    const int nkt = (T + FA_BK - 1) / FA_BK;
    float o[ND][4];
#pragma unroll
    for (int d = 0; d < ND; d++) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
    unsigned qf[HD / 16][4];
    for (int kt = 0; kt < nkt; kt++) {
        if (kt + 1 < nkt) load_kv(kt + 1, (kt + 1) & 1);
        cp_async_commit();
        cp_async_wait<1>(); /* everything but the tile just requested has landed */
        __syncthreads();
        if (kt == 0) {
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++)
                ldsm_x4(qf[kk], Qs + (warp * 16 + (mi & 1) * 8 + mr) * LD + kk * 16 + (mi >> 1) * 8);
        }
        const __nv_bfloat16 *Kb = Ks + (kt & 1) * FA_BK * LD, *Vb = Vs + (kt & 1) * FA_BK * LD;
        float sc[NJ][4];
#pragma unroll
        for (int j = 0; j < NJ; j++) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++)
#pragma unroll
            for (int j = 0; j < NJ; j += 2) {
                unsigned kb[4];
                ldsm_x4(kb, Kb + (j * 8 + (mi >> 1) * 8 + mr) * LD + kk * 16 + (mi & 1) * 8);
                mma16816(sc[j], qf[kk], kb[0], kb[1]);
                mma16816(sc[j + 1], qf[kk], kb[2], kb[3]);
            }
        const int k0 = kt * FA_BK;
        if (k0 + FA_BK > T) {
#pragma unroll
            for (int j = 0; j < NJ; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    if (k0 + j * 8 + 2 * t4 + (e & 1) >= T) sc[j][e] = -INFINITY;
        }
        /* rows g (elements 0, 1) and g + 8 (elements 2, 3); the 4 lanes of a quad share a row */
        float mx[2] = {mrow[0], mrow[1]};
#pragma unroll
        for (int j = 0; j < NJ; j++) {
            mx[0] = fmaxf(mx[0], fmaxf(sc[j][0], sc[j][1]));
            mx[1] = fmaxf(mx[1], fmaxf(sc[j][2], sc[j][3]));
        }
#pragma unroll
        for (int i = 0; i < 2; i++) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
        }
        /* mx is finite: every tile holds at least one key < T */
        float corr[2], rs[2] = {0.0f, 0.0f};
#pragma unroll
        for (int i = 0; i < 2; i++) {
            corr[i] = exp2f((mrow[i] - mx[i]) * sl2);
            mrow[i] = mx[i];
        }
        unsigned pa[FA_BK / 16][4];
#pragma unroll
        for (int j = 0; j < NJ; j++) {
            float p0 = exp2f((sc[j][0] - mx[0]) * sl2), p1 = exp2f((sc[j][1] - mx[0]) * sl2);
            float p2 = exp2f((sc[j][2] - mx[1]) * sl2), p3 = exp2f((sc[j][3] - mx[1]) * sl2);
            rs[0] += p0 + p1;
            rs[1] += p2 + p3;
            pa[j >> 1][(j & 1) * 2] = pack_bf16(p0, p1);
            pa[j >> 1][(j & 1) * 2 + 1] = pack_bf16(p2, p3);
        }
#pragma unroll
        for (int i = 0; i < 2; i++) lrow[i] = lrow[i] * corr[i] + rs[i];
#pragma unroll
        for (int d = 0; d < ND; d++) {
            o[d][0] *= corr[0], o[d][1] *= corr[0];
            o[d][2] *= corr[1], o[d][3] *= corr[1];
        }
#pragma unroll
        for (int kk = 0; kk < FA_BK / 16; kk++)
#pragma unroll
            for (int d = 0; d < ND; d += 2) {
                unsigned vb[4];
                ldsm_x4_t(vb, Vb + (kk * 16 + (mi & 1) * 8 + mr) * LD + d * 8 + (mi >> 1) * 8);
                mma16816(o[d], pa[kk], vb[0], vb[1]);
                mma16816(o[d + 1], pa[kk], vb[2], vb[3]);
            }
        __syncthreads(); /* this buffer is refilled by the next iteration's load */
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        lrow[i] += __shfl_xor_sync(0xffffffffu, lrow[i], 1);
        lrow[i] += __shfl_xor_sync(0xffffffffu, lrow[i], 2);
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int q = q0 + warp * 16 + g + 8 * i;
        if (q >= T) continue;
        const float inv = 1.0f / lrow[i];
        OT *orow = out + ((size_t)b * T + q) * H * HD + (size_t)h * HD + 2 * t4;
#pragma unroll
        for (int d = 0; d < ND; d++) {
            hmc_st(orow + d * 8, o[d][2 * i] * inv);
            hmc_st(orow + d * 8 + 1, o[d][2 * i + 1] * inv);
        }
    }
}

__global__ void timestep_kernel(const float *__restrict__ t, int n, float nl, float *__restrict__ out)
{
    const int b = blockIdx.x, half = n / 2;
    const float tb = t[b];
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        float f = expf(((float)j * nl) / (float)half);
        float a = (tb * f) * 1000.0f;
        float sn, c;
        sincos_reduced(a, &sn, &c);
        out[(size_t)b * n + j] = c;
        out[(size_t)b * n + half + j] = sn;
    }
}

/* Solver pieces.  __fmul_rn / __fadd_rn keep the CPU's rounding (no contraction into FMAs). */
__global__ void euler_input_kernel(float *__restrict__ x, const float *__restrict__ noise,
                                   const float *__restrict__ ctx, const float *__restrict__ cond, int L, float a, float t,
                                   int B, int T, int C, int D, int cfg, float *__restrict__ inp)
{
    const int r = blockIdx.x, cin = 2 * C + D;
    if (r < L)
        for (int i = threadIdx.x; i < C; i += blockDim.x) {
            size_t k = (size_t)r * C + i;
            x[k] = __fadd_rn(__fmul_rn(a, noise[k]), __fmul_rn(t, ctx[k]));
        }
    __syncthreads();
    for (int b = 0; b < B; b++) {
        float *row = inp + ((size_t)b * T + r) * cin;
        for (int i = threadIdx.x; i < cin; i += blockDim.x) {
            float v;
            if (i < C) v = x[(size_t)r * C + i];
            else if (i < 2 * C) v = r < L ? ctx[(size_t)r * C + i - C] : 0.0f;
            else v = cfg && b == 0 ? 0.0f : cond[(size_t)r * D + i - 2 * C];
            row[i] = v;
        }
    }
}

__global__ void euler_update_kernel(float *__restrict__ x, const float *__restrict__ v, size_t n, float dt, float gs,
                                    int cfg)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float vv = cfg ? __fadd_rn(v[i], __fmul_rn(gs, __fsub_rn(v[n + i], v[i]))) : v[i];
        x[i] = __fadd_rn(x[i], __fmul_rn(dt, vv));
    }
}

/* ---- model ---------------------------------------------------------------------------------- */

struct proj { /* ProjectLayer: conv k3 as one GEMM over im2col [cout, 3*cin], then Linear */
    int cin, cout;
    void *w1, *w2;
    float *b1, *b2;
};
struct block {
    float *attn_norm, *mlp_norm, *sst; /* sst [6, d] */
    void *wqkv, *wo, *wgu, *wdown;     /* [3d, d], [d, d], [2 hidden, d] (gate rows then up), [d, hidden] */
};
struct stack {
    int d, heads, hd, hidden, n;
    block *blk;
    void *l1w, *l2w, *lw;
    float *l1b, *l2b, *lb, *sst, *rope;
};

} // namespace

struct FmcAttPlan {
    long long key[14];
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
};

struct fmc_model {
    hm_codec_config cfg;
    hmc_dtype dt;
    int in_ch, out_ch, dim;
    proj pin, conn, pout;
    stack s1, s2;
    void **allocs;
    size_t *alloc_n;       /* elements of each allocation (weights: fmc_weight_get) */
    /* The weights live in one allocation (a sizing pass of the loader counts them first): one
     * cudaMalloc per tensor rounds each up to the allocator's granularity, 52 MiB more at the
     * release's sizes.  The adaLN matrices stay separate (fmc_set_adaln_host frees them). */
    char *arena;
    size_t arena_cap, arena_used;
    int sizing;   /* the sizing pass: dalloc counts, nothing is allocated or written */
    int no_arena; /* dalloc takes its own cudaMalloc (the adaLN matrices) */
    hmc_dtype *alloc_t;
    int nalloc, capalloc;
    /* workspace, sized for ws_M rows / ws_B batch rows / ws_steps solver steps */
    int ws_M, ws_B, ws_T, ws_steps;
    void *ws[18];
    float *x1, *x2, *qkv, *h, *gu, *tmp, *emb1, *mod1, *emb2, *mod2, *feat, *etmp, *inp, *v, *tarr;
    void *gin, *col;
    /* CUDA graphs of whole fmc_solve calls (graphs on), one per key (a stage alternates between
     * the first window, L = 0, and the later ones): captured at the second call with the same
     * key, replayed after; the least recently used key makes way; all dropped when the
     * workspace moves. */
    int use_graph;
    struct {
        int T, L, steps, cfg, seen;
        float guidance;
        const float *cond, *ctx, *noise, *x;
        cudaStream_t s;
        cudaGraphExec_t exec;
        unsigned long long used;
    } graph[FMC_GRAPHS];
    unsigned long long gclock;
    int no_fuse; /* fmc_set_fusion(m, 0): the unfused residual adds and norms (A/B timing) */
    int ws_separate; /* fmc_set_scratch_sharing(m, 0): every workspace buffer on its own (A/B memory) */
    size_t ws_bytes; /* the workspace's device bytes (fmc_workspace_bytes) */
    int att_set; /* FMC_ATT_* as set (fmc_set_attention); att_mode() resolves FMC_ATT_AUTO */
    /* attention through strided-batched cuBLASLt GEMMs (FMC_ATT_GEMM): scores S and
     * probabilities P [B*H, T, T], own handle, workspace and plans */
    float *attS;
    void *attP;
    cublasLtHandle_t lt;
    void *lt_ws;
    FmcAttPlan att[16];
    int natt;
    /* adaLN tables: the timestep conditioning (emb, mod of both stacks) depends only on t, and a
     * solve's t grid only on its step count, so fmc_solve computes it once per (steps, batch rows)
     * into a device table and its estimator calls read the table.  The adaLN weights (85 M at the
     * release's sizes) can then live in host memory (fmc_set_adaln_host): a new table uploads them
     * for its build and frees them again. */
    struct {
        int steps, B;
        float *dev; /* [steps][B*d1 emb1 | B*6*d1 mod1 | B*d2 emb2 | B*6*d2 mod2] */
        unsigned long long used;
    } ada[FMC_ADA_TABLES];
    unsigned long long ada_clock;
    int ada_off;       /* fmc_set_adaln_tables(m, 0): every estimator call computes its adaLN */
    int ada_host;      /* the six adaLN matrices are host copies (fmc_set_adaln_host) */
    void *ada_h[6];    /* their host copies, in ada_slot() order */
    int ada_i[6];      /* their allocation indices (allocs[i] is NULL while on the host) */
};

namespace {

int dalloc(fmc_model *m, void **p, size_t bytes)
{
    if (m->nalloc == m->capalloc) {
        m->capalloc = m->capalloc ? 2 * m->capalloc : 256;
        m->allocs = (void **)realloc(m->allocs, sizeof(void *) * (size_t)m->capalloc);
        m->alloc_n = (size_t *)realloc(m->alloc_n, sizeof(size_t) * (size_t)m->capalloc);
        m->alloc_t = (hmc_dtype *)realloc(m->alloc_t, sizeof(hmc_dtype) * (size_t)m->capalloc);
        if (!m->allocs || !m->alloc_n || !m->alloc_t) abort();
    }
    const size_t al = (HM_MAX(bytes, (size_t)16) + 255) & ~(size_t)255;
    if (m->sizing) {
        *p = NULL;
        if (!m->no_arena) m->arena_cap += al;
    } else if (!m->no_arena && m->arena && m->arena_used + al <= m->arena_cap) {
        *p = m->arena + m->arena_used;
        m->arena_used += al;
    } else {
        CK(cudaMalloc(p, bytes ? bytes : 16));
    }
    m->alloc_n[m->nalloc] = bytes / 4, m->alloc_t[m->nalloc] = HMC_F32; /* upload() says what it holds */
    m->allocs[m->nalloc++] = *p;
    return HM_OK;
}

/* Weight source: a safetensors file, or (f == NULL) seeded random values on the device. */
struct src {
    st_file *f;
    uint64_t seed;
};

/* Upload n host floats as type t into a new device buffer (host == NULL: random fill of `rscale`). */
int upload(fmc_model *m, const src *S, void **dst, const float *host, size_t n, hmc_dtype t, float rscale)
{
    CKH(dalloc(m, dst, n * hmc_dtype_size(t)));
    m->alloc_n[m->nalloc - 1] = n, m->alloc_t[m->nalloc - 1] = t;
    if (m->sizing) return HM_OK;
    if (!host) {
        CKH(hmc_fill_random(*dst, t, n, S->seed * 1000003u + (uint64_t)m->nalloc, rscale, 0));
        return HM_OK;
    }
    if (t == HMC_F32) {
        CK(cudaMemcpy(*dst, host, n * sizeof(float), cudaMemcpyHostToDevice));
        return HM_OK;
    }
    uint16_t *b = (uint16_t *)hm_malloc(2 * n + 2);
    for (size_t i = 0; i < n; i++) b[i] = hm_f32_to_bf16(host[i]);
    cudaError_t e = cudaMemcpy(*dst, b, 2 * n, cudaMemcpyHostToDevice);
    free(b);
    CK(e);
    return HM_OK;
}

/* Load `name` of the given shape as fp32 host data (NULL data with HM_OK in random mode). */
struct shp {
    int64_t v[3];
};
shp SHAPE(int64_t a, int64_t b = 0, int64_t c = 0) { return shp{{a, b, c}}; }

int fetch(const src *S, float **out, int ndim, shp shape, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
int fetch(const src *S, float **out, int ndim, shp shape, const char *fmt, ...)
{
    *out = NULL;
    if (!S->f) return HM_OK;
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    *out = st_load_f32(S->f, name, ndim, shape.v);
    return *out ? HM_OK : HM_ERR;
}

/* A vector/table kept in fp32: tensor `name` of numel n (random mode: uniform in [-rs, rs]). */
int load_f32(fmc_model *m, const src *S, float **dst, int ndim, shp shape, size_t n, float rs,
             const char *name)
{
    float *h;
    if (fetch(S, &h, ndim, shape, "%s", name)) return HM_ERR;
    int rc = upload(m, S, (void **)dst, h, n, HMC_F32, rs);
    free(h);
    return rc;
}

/* load_cat's path for bf16 weights a file holds in bf16 (the released checkpoints): the bytes go
 * from the file's mapping straight to the device, the values of the path through f32 (bf16 -> f32
 * -> bf16 is exact) without its conversions on the host.  1 when it does not apply. */
int load_cat_bf16(fmc_model *m, const src *S, void **dst, int nparts, const int *rows, int cols, const char *const *names)
{
    if (!S->f || m->sizing || m->dt != HMC_BF16 || nparts > 8) return 1;
    st_tensor *ts[8];
    size_t total = 0;
    for (int i = 0; i < nparts; i++) {
        const int64_t shape[2] = {rows[i], cols};
        if (st_get(S->f, names[i], 2, shape, &ts[i])) return HM_ERR;
        if (ts[i]->dtype != ST_BF16) return 1;
        total += (size_t)rows[i] * cols;
    }
    CKH(dalloc(m, dst, total * 2));
    m->alloc_n[m->nalloc - 1] = total, m->alloc_t[m->nalloc - 1] = HMC_BF16;
    size_t off = 0;
    for (int i = 0; i < nparts; i++) {
        CK(cudaMemcpy((uint16_t *)*dst + off, ts[i]->data, ts[i]->nbytes, cudaMemcpyHostToDevice));
        off += (size_t)rows[i] * cols;
    }
    return HM_OK;
}

int load_mat(fmc_model *m, const src *S, void **dst, int rows, int cols, const char *name)
{
    const int rc16 = load_cat_bf16(m, S, dst, 1, &rows, cols, &name);
    if (rc16 != 1) return rc16;
    float *h;
    if (fetch(S, &h, 2, SHAPE(rows, cols), "%s", name)) return HM_ERR;
    int rc = upload(m, S, dst, h, (size_t)rows * cols, m->dt, 1.0f / sqrtf((float)cols));
    free(h);
    return rc;
}

/* Several [rows_i, cols] matrices stacked row-wise into one weight (qkv, gate|up). */
int load_cat(fmc_model *m, const src *S, void **dst, int nparts, const int *rows, int cols, const char *const *names)
{
    size_t total = 0;
    for (int i = 0; i < nparts; i++) total += (size_t)rows[i] * cols;
    if (!S->f) return upload(m, S, dst, NULL, total, m->dt, 1.0f / sqrtf((float)cols));
    const int rc16 = load_cat_bf16(m, S, dst, nparts, rows, cols, names);
    if (rc16 != 1) return rc16;
    float *all = (float *)hm_malloc(sizeof(float) * total);
    size_t off = 0;
    for (int i = 0; i < nparts; i++) {
        float *h;
        if (fetch(S, &h, 2, SHAPE(rows[i], cols), "%s", names[i])) {
            free(all);
            return HM_ERR;
        }
        memcpy(all + off, h, sizeof(float) * (size_t)rows[i] * cols);
        off += (size_t)rows[i] * cols;
        free(h);
    }
    int rc = upload(m, S, dst, all, total, m->dt, 0.0f);
    free(all);
    return rc;
}

int load_proj(fmc_model *m, const src *S, proj *p, const char *name, int cin, int cout)
{
    p->cin = cin, p->cout = cout;
    char nm[256];
    float *w;
    snprintf(nm, sizeof nm, "flow_matching.estimator.%s.ffn_1.weight", name);
    if (fetch(S, &w, 3, SHAPE(cout, cin, FMC_PROJ_K), "%s", nm)) return HM_ERR;
    float *wt = NULL;
    if (w) { /* [cout, cin, k] -> [cout, k*cin]: the im2col column order */
        wt = (float *)hm_malloc(sizeof(float) * (size_t)cout * cin * FMC_PROJ_K);
        for (int o = 0; o < cout; o++)
            for (int i = 0; i < cin; i++)
                for (int j = 0; j < FMC_PROJ_K; j++)
                    wt[((size_t)o * FMC_PROJ_K + j) * cin + i] = w[((size_t)o * cin + i) * FMC_PROJ_K + j];
        free(w);
    }
    int rc = upload(m, S, &p->w1, wt, (size_t)cout * cin * FMC_PROJ_K, m->dt, 1.0f / sqrtf(3.0f * cin));
    free(wt);
    if (rc) return HM_ERR;
    snprintf(nm, sizeof nm, "flow_matching.estimator.%s.ffn_1.bias", name);
    if (load_f32(m, S, &p->b1, 1, SHAPE(cout), cout, 0.1f, nm)) return HM_ERR;
    snprintf(nm, sizeof nm, "flow_matching.estimator.%s.ffn_2.weight", name);
    if (load_mat(m, S, &p->w2, cout, cout, nm)) return HM_ERR;
    snprintf(nm, sizeof nm, "flow_matching.estimator.%s.ffn_2.bias", name);
    return load_f32(m, S, &p->b2, 1, SHAPE(cout), cout, 0.1f, nm);
}

int mlp_hidden(int d)
{
    int h = (int)(2.0 * (4.0 * d) / 3.0);
    return 256 * ((h + 255) / 256);
}

int load_stack(fmc_model *m, const src *S, stack *s, int d, int heads, int hd, int n, const char *blocks,
               const char *adaln, const char *table)
{
    s->d = d, s->heads = heads, s->hd = hd, s->n = n, s->hidden = mlp_hidden(d);
    s->blk = (block *)hm_calloc((size_t)(n ? n : 1), sizeof(block));
    const char *E = "flow_matching.estimator";
    char nm[4][256];
    for (int i = 0; i < n; i++) {
        block *b = &s->blk[i];
        snprintf(nm[0], 256, "%s.%s.%d.attn_norm.weight", E, blocks, i);
        if (load_f32(m, S, &b->attn_norm, 1, SHAPE(d), d, 1.0f, nm[0])) return HM_ERR;
        snprintf(nm[0], 256, "%s.%s.%d.mlp_norm.weight", E, blocks, i);
        if (load_f32(m, S, &b->mlp_norm, 1, SHAPE(d), d, 1.0f, nm[0])) return HM_ERR;
        snprintf(nm[0], 256, "%s.%s.%d.scale_shift_table", E, blocks, i);
        if (load_f32(m, S, &b->sst, 2, SHAPE(6, d), 6 * (size_t)d, 0.1f, nm[0])) return HM_ERR;
        snprintf(nm[0], 256, "%s.%s.%d.attn.q_proj.weight", E, blocks, i);
        snprintf(nm[1], 256, "%s.%s.%d.attn.k_proj.weight", E, blocks, i);
        snprintf(nm[2], 256, "%s.%s.%d.attn.v_proj.weight", E, blocks, i);
        const char *qkvn[3] = {nm[0], nm[1], nm[2]};
        const int r3[3] = {d, d, d};
        if (load_cat(m, S, &b->wqkv, 3, r3, d, qkvn)) return HM_ERR;
        snprintf(nm[0], 256, "%s.%s.%d.attn.o_proj.weight", E, blocks, i);
        if (load_mat(m, S, &b->wo, d, d, nm[0])) return HM_ERR;
        snprintf(nm[0], 256, "%s.%s.%d.mlp.gate.weight", E, blocks, i);
        snprintf(nm[1], 256, "%s.%s.%d.mlp.up.weight", E, blocks, i);
        const char *gun[2] = {nm[0], nm[1]};
        const int r2[2] = {s->hidden, s->hidden};
        if (load_cat(m, S, &b->wgu, 2, r2, d, gun)) return HM_ERR;
        snprintf(nm[0], 256, "%s.%s.%d.mlp.down.weight", E, blocks, i);
        if (load_mat(m, S, &b->wdown, d, s->hidden, nm[0])) return HM_ERR;
    }
    m->no_arena = 1; /* the adaLN matrices: their own allocations (fmc_set_adaln_host frees them) */
    snprintf(nm[0], 256, "%s.%s.emb.timestep_embedder.linear_1.weight", E, adaln);
    if (load_mat(m, S, &s->l1w, d, FMC_TIME_FEATURES, nm[0])) return HM_ERR;
    snprintf(nm[0], 256, "%s.%s.emb.timestep_embedder.linear_1.bias", E, adaln);
    if (load_f32(m, S, &s->l1b, 1, SHAPE(d), d, 0.1f, nm[0])) return HM_ERR;
    snprintf(nm[0], 256, "%s.%s.emb.timestep_embedder.linear_2.weight", E, adaln);
    if (load_mat(m, S, &s->l2w, d, d, nm[0])) return HM_ERR;
    snprintf(nm[0], 256, "%s.%s.emb.timestep_embedder.linear_2.bias", E, adaln);
    if (load_f32(m, S, &s->l2b, 1, SHAPE(d), d, 0.1f, nm[0])) return HM_ERR;
    snprintf(nm[0], 256, "%s.%s.linear.weight", E, adaln);
    if (load_mat(m, S, &s->lw, 6 * d, d, nm[0])) return HM_ERR;
    m->no_arena = 0;
    snprintf(nm[0], 256, "%s.%s.linear.bias", E, adaln);
    if (load_f32(m, S, &s->lb, 1, SHAPE(6 * (int64_t)d), 6 * (size_t)d, 0.1f, nm[0])) return HM_ERR;
    snprintf(nm[0], 256, "%s.%s", E, table);
    if (load_f32(m, S, &s->sst, 2, SHAPE(2, d), 2 * (size_t)d, 0.1f, nm[0])) return HM_ERR;
    float fr[256];
    if (hd / 2 > 256) return hm_err("head dim %d too large", hd);
    cpu_rope_freqs(fr, hd, FMC_ROPE_BASE, 0.0f); /* computed, never loaded or random */
    CKH(dalloc(m, (void **)&s->rope, sizeof(float) * (size_t)(hd / 2)));
    if (m->sizing) return HM_OK;
    CK(cudaMemcpy(s->rope, fr, sizeof(float) * (size_t)(hd / 2), cudaMemcpyHostToDevice));
    return HM_OK;
}

int build(fmc_model *m, const src *S)
{
    const hm_codec_config *c = &m->cfg;
    m->in_ch = c->in_channels, m->out_ch = c->out_channels, m->dim = c->dim;
    int d1 = c->num_attention_heads * c->attention_head_dim, d2 = 2 * d1;
    if (m->in_ch != 2 * m->out_ch + m->dim)
        return hm_err("%s/config.json: in_channels %d must be 2*out_channels + dim = %d", c->dir, m->in_ch,
                      2 * m->out_ch + m->dim);
    int hd = c->attention_head_dim;
    if (hd != 16 && hd != 32 && hd != 64)
        return hm_err("%s/config.json: attention_head_dim %d: the CUDA attention handles 16, 32 or 64 (x2 in stack 2)",
                      c->dir, hd);
    if (load_proj(m, S, &m->pin, "proj_in", m->in_ch, d1) ||
        load_proj(m, S, &m->conn, "connection_proj", m->in_ch + d1, d2) ||
        load_proj(m, S, &m->pout, "proj_out", d2, m->out_ch) ||
        load_stack(m, S, &m->s1, d1, c->num_attention_heads, hd, c->num_layers, "transformer_blocks", "adaln_single",
                   "scale_shift_table") ||
        load_stack(m, S, &m->s2, d2, c->num_attention_heads, 2 * hd, c->num_layers_2, "transformer_blocks_2",
                   "adaln_single_2", "scale_shift_table_2"))
        return HM_ERR;
    CK(cudaDeviceSynchronize());
    return HM_OK;
}

void drop_graphs(fmc_model *m)
{
    for (int i = 0; i < FMC_GRAPHS; i++) {
        if (m->graph[i].exec) cudaGraphExecDestroy(m->graph[i].exec);
        m->graph[i].exec = NULL;
        m->graph[i].seen = 0;
    }
}

/* The attention path a call takes: FMC_ATT_AUTO is flash with bf16 weights, GEMMs with fp32. */
int att_mode(const fmc_model *m)
{
    if (m->att_set != FMC_ATT_AUTO) return m->att_set;
    return m->dt == HMC_BF16 ? FMC_ATT_FLASH : FMC_ATT_GEMM;
}

int ensure_ws(fmc_model *m, int B, int T, int steps)
{
    const int M = B * T;
    if (M <= m->ws_M && B <= m->ws_B && T <= m->ws_T && steps <= m->ws_steps) return HM_OK;
    CK(cudaDeviceSynchronize());
    drop_graphs(m);
    for (int i = 0; i < 18; i++) {
        if (m->ws[i]) CK(cudaFree(m->ws[i]));
        m->ws[i] = NULL;
    }
    m->ws_M = HM_MAX(m->ws_M, M);
    m->ws_B = HM_MAX(m->ws_B, B);
    m->ws_steps = HM_MAX(m->ws_steps, steps);
    m->ws_T = HM_MAX(m->ws_T, T);
    const size_t Mx = (size_t)m->ws_M, Bx = (size_t)m->ws_B;
    const int d1 = m->s1.d, d2 = m->s2.d, hid = HM_MAX(m->s1.hidden, m->s2.hidden), cin = m->in_ch;
    const size_t es = hmc_dtype_size(m->dt);
    size_t wmax = (size_t)HM_MAX(HM_MAX(d2, hid), HM_MAX(m->out_ch, FMC_TIME_FEATURES));
    size_t colw = (size_t)3 * HM_MAX(cin + d1, d2);
    const size_t H = (size_t)HM_MAX(m->s1.heads, m->s2.heads);
    size_t sizes[18] = {
        Mx * d1 * 4, Mx * d2 * 4, Mx * 3 * d2 * 4, Mx * d2 * 4, Mx * 2 * hid * 4,
        Mx * HM_MAX(d2, m->out_ch) * 4, Bx * d1 * 4, Bx * 6 * d1 * 4, Bx * d2 * 4, Bx * 6 * d2 * 4,
        Bx * FMC_TIME_FEATURES * 4, Bx * d2 * 4, Mx * cin * 4, Mx * m->out_ch * 4,
        (size_t)(m->ws_steps + 1) * Bx * 4 + Mx * wmax * es, Mx * colw * es,
        att_mode(m) == FMC_ATT_GEMM ? Mx * H * (size_t)m->ws_T * 4 : 0,
        att_mode(m) == FMC_ATT_GEMM ? Mx * H * (size_t)m->ws_T * es : 0};
    /* One scratch for the buffers whose lives do not overlap (unless fmc_set_scratch_sharing(m, 0)):
     * qkv (a block's attention input), gu (its MLP's gate|up) and tmp (a ProjectLayer's conv output)
     * at offset 0, col (the ProjectLayer's im2col, the bf16 q|k|v of the attention) after the
     * larger of qkv and tmp: col is written from qkv and read into tmp, gu only after both. */
    const size_t al = 256, col_off = (HM_MAX(sizes[2], sizes[5]) + al - 1) / al * al;
    if (!m->ws_separate) {
        sizes[4] = HM_MAX(sizes[4], col_off + sizes[15]);
        sizes[2] = sizes[5] = sizes[15] = 0;
    }
    m->ws_bytes = 0;
    for (int i = 0; i < 18; i++) {
        CK(cudaMalloc(&m->ws[i], sizes[i] + 256));
        m->ws_bytes += sizes[i] + 256;
    }
    m->attS = (float *)m->ws[16];
    m->attP = m->ws[17];
    float **f[14] = {&m->x1, &m->x2, &m->qkv, &m->h, &m->gu, &m->tmp, &m->emb1, &m->mod1,
                     &m->emb2, &m->mod2, &m->feat, &m->etmp, &m->inp, &m->v};
    for (int i = 0; i < 14; i++) *f[i] = (float *)m->ws[i];
    /* the t table and the GEMM-input buffer share one allocation (gin first, 256-byte aligned) */
    m->gin = m->ws[14];
    m->tarr = (float *)((char *)m->ws[14] + ((Mx * wmax * es + 255) & ~(size_t)255));
    m->col = m->ws[15];
    if (!m->ws_separate) {
        m->qkv = m->tmp = m->gu;
        m->col = (char *)m->gu + col_off;
    }
    return HM_OK;
}

/* ---- estimator pieces ----------------------------------------------------------------------- */

int gemm(fmc_model *m, const void *x, const void *W, float *y, int M, int N, int K, cudaStream_t s)
{
    return hmc_gemm(x, W, m->dt, y, M, N, K, 0, s);
}

/* ProjectLayer over rows of [a | b] -> y [B*T, cout]: im2col, conv GEMM, (+b1)·3^-1/2, Linear. */
int proj_forward(fmc_model *m, const proj *p, const float *a, int ca, const float *b, int cb, int B, int T, float *y,
                 cudaStream_t s)
{
    const int M = B * T;
    const float sc = (float)(1.0 / sqrt((double)FMC_PROJ_K));
    CKH(fmc_im2col3(a, ca, b, cb, B, T, m->col, m->dt, s));
    CKH(gemm(m, m->col, p->w1, m->tmp, M, p->cout, FMC_PROJ_K * p->cin, s));
    CKH(fmc_bias_act(m->tmp, p->b1, M, p->cout, sc, 0, 0, m->gin, m->dt, s));
    CKH(gemm(m, m->gin, p->w2, y, M, p->cout, p->cout, s));
    CKH(fmc_bias_act(y, p->b2, M, p->cout, 1.0f, 1, 0, NULL, m->dt, s));
    return HM_OK;
}

/* adaLN-single: feat [B, 512] (fp32, in m->feat) -> emb [B, d], mod [B, 6d]. */
int adaln_forward(fmc_model *m, const stack *st, int B, float *emb, float *mod, cudaStream_t s)
{
    const int d = st->d;
    CKH(hmc_convert(m->feat, m->gin, m->dt, (size_t)B * FMC_TIME_FEATURES, s));
    CKH(gemm(m, m->gin, st->l1w, m->etmp, B, d, FMC_TIME_FEATURES, s));
    CKH(fmc_bias_act(m->etmp, st->l1b, B, d, 1.0f, 0, 1, m->gin, m->dt, s));
    CKH(gemm(m, m->gin, st->l2w, emb, B, d, d, s));
    CKH(fmc_bias_act(emb, st->l2b, B, d, 1.0f, 1, 1, m->gin, m->dt, s));
    CKH(gemm(m, m->gin, st->lw, mod, B, 6 * d, d, s));
    CKH(fmc_bias_act(mod, st->lb, B, 6 * d, 1.0f, 1, 0, NULL, m->dt, s));
    return HM_OK;
}

/* The six adaLN matrices, in the order of fmc_model.ada_h / ada_i. */
void **ada_slot(fmc_model *m, int k)
{
    stack *st = k < 3 ? &m->s1 : &m->s2;
    return k % 3 == 0 ? &st->l1w : k % 3 == 1 ? &st->l2w : &st->lw;
}

size_t alloc_bytes(const fmc_model *m, int i) { return m->alloc_n[i] * hmc_dtype_size(m->alloc_t[i]); }

void ada_down(fmc_model *m);

/* Host-resident adaLN weights back on the device (for a table build or a direct estimator call);
 * ada_down frees them again.  Both synchronous. */
int ada_up(fmc_model *m)
{
    for (int k = 0; k < 6; k++) {
        const int i = m->ada_i[k];
        void *d = NULL;
        cudaError_t e = cudaMalloc(&d, alloc_bytes(m, i));
        *ada_slot(m, k) = d;
        if (e == cudaSuccess) e = cudaMemcpy(d, m->ada_h[k], alloc_bytes(m, i), cudaMemcpyHostToDevice);
        if (e != cudaSuccess) {
            ada_down(m); /* (declared below) leaves every slot NULL again */
            return hm_err("%s:%d: adaLN weights to the device: %s", __FILE__, __LINE__, cudaGetErrorString(e));
        }
    }
    return HM_OK;
}

void ada_down(fmc_model *m)
{
    for (int k = 0; k < 6; k++) {
        cudaFree(*ada_slot(m, k));
        *ada_slot(m, k) = NULL;
    }
}

/* Floats of one step of an adaLN table for B rows. */
size_t ada_stride(const fmc_model *m, int B) { return (size_t)B * 7 * (m->s1.d + m->s2.d); }

/* The adaLN table of (steps, B), built on first use from the t grid in m->tarr (fmc_solve has
 * uploaded it for this step count).  A full cache drops its least recently used table and, since
 * captured solves may read it, every graph. */
int ada_table(fmc_model *m, int steps, int B, cudaStream_t s, const float **out)
{
    int hit = -1, lru = 0;
    for (int i = 0; i < FMC_ADA_TABLES; i++) {
        if (m->ada[i].dev && m->ada[i].steps == steps && m->ada[i].B == B) hit = i;
        if (m->ada[i].used < m->ada[lru].used) lru = i;
    }
    if (hit >= 0) {
        m->ada[hit].used = ++m->ada_clock;
        *out = m->ada[hit].dev;
        return HM_OK;
    }
    auto &e = m->ada[lru];
    if (e.dev) {
        CK(cudaStreamSynchronize(s));
        drop_graphs(m);
        CK(cudaFree(e.dev));
        e.dev = NULL;
    }
    const size_t stride = ada_stride(m, B);
    const int d1 = m->s1.d, d2 = m->s2.d;
    CK(cudaMalloc(&e.dev, sizeof(float) * stride * (size_t)steps));
    int rc = m->ada_host ? ada_up(m) : HM_OK;
    for (int step = 0; step < steps && rc == HM_OK; step++) {
        float *e1 = e.dev + stride * step, *m1 = e1 + (size_t)B * d1, *e2 = m1 + (size_t)B * 6 * d1,
              *m2 = e2 + (size_t)B * d2;
        rc = fmc_timestep_features(m->tarr + (size_t)step * B, B, FMC_TIME_FEATURES, m->feat, s);
        if (!rc) rc = adaln_forward(m, &m->s1, B, e1, m1, s);
        if (!rc) rc = adaln_forward(m, &m->s2, B, e2, m2, s);
    }
    if (m->ada_host) {
        cudaError_t ce = cudaStreamSynchronize(s); /* the build is done with the weights */
        if (ce != cudaSuccess && rc == HM_OK)
            rc = hm_err("%s:%d: adaLN table: %s", __FILE__, __LINE__, cudaGetErrorString(ce));
        ada_down(m);
    }
    if (rc) {
        cudaFree(e.dev);
        e.dev = NULL;
        return hm_err_ctx("%s:%d: adaLN table for %d steps", __FILE__, __LINE__, steps);
    }
    e.steps = steps, e.B = B, e.used = ++m->ada_clock;
    *out = e.dev;
    return HM_OK;
}

/* softmax over rows of n fp32 scores (already scaled) -> P of type PT */
template <typename PT>
__global__ void softmax_rows_kernel(const float *__restrict__ S, int n, PT *__restrict__ P)
{
    __shared__ float red[32];
    const float *r = S + (size_t)blockIdx.x * n;
    PT *p = P + (size_t)blockIdx.x * n;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < n; i += blockDim.x) mx = fmaxf(mx, r[i]);
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sum += expf(r[i] - mx);
    sum = block_sum(sum, red);
    const float inv = 1.0f / sum;
    for (int i = threadIdx.x; i < n; i += blockDim.x) hmc_st(p + i, expf(r[i] - mx) * inv);
}

/* C = alpha op(A) op(B), column-major views, `batch` strided matrices; A, B of type m->dt (or
 * fp32), C fp32.  Plans cached in the model; 16-byte pointer alignment asked of the heuristic
 * (head offsets are not 256-byte aligned). */
int att_gemm(fmc_model *m, cudaDataType_t ab, cublasOperation_t ta, cublasOperation_t tb, int M, int N, int K,
             const void *A, int lda, long long sa, const void *Bm, int ldb, long long sb, float *C, int ldc, long long sc,
             int batch, float alpha, cudaStream_t s)
{
    if (!m->lt) {
        CKLT(cublasLtCreate(&m->lt));
        CK(cudaMalloc(&m->lt_ws, 32u << 20));
    }
    long long key[14] = {(long long)ab, ta, tb, M, N, K, lda, sa, ldb, sb, ldc, sc, batch, 1};
    FmcAttPlan *p = nullptr;
    for (int i = 0; i < m->natt && !p; i++)
        if (!memcmp(m->att[i].key, key, sizeof key)) p = &m->att[i];
    if (!p) {
        if (m->natt == 16) return hm_err("%s:%d: attention GEMM plan cache full", __FILE__, __LINE__);
        p = &m->att[m->natt];
        memset(p, 0, sizeof *p);
        memcpy(p->key, key, sizeof key);
        CKLT(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        CKLT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
        CKLT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
        /* stored shapes: A is [M, K] (or [K, M] when transposed), B [K, N] (or [N, K]) */
        CKLT(cublasLtMatrixLayoutCreate(&p->a, ab, ta == CUBLAS_OP_N ? M : K, ta == CUBLAS_OP_N ? K : M, lda));
        CKLT(cublasLtMatrixLayoutCreate(&p->b, ab, tb == CUBLAS_OP_N ? K : N, tb == CUBLAS_OP_N ? N : K, ldb));
        CKLT(cublasLtMatrixLayoutCreate(&p->c, CUDA_R_32F, M, N, ldc));
        cublasLtMatrixLayout_t ls[3] = {p->a, p->b, p->c};
        long long st[3] = {sa, sb, sc};
        for (int i = 0; i < 3; i++) {
            CKLT(cublasLtMatrixLayoutSetAttribute(ls[i], CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch));
            CKLT(cublasLtMatrixLayoutSetAttribute(ls[i], CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &st[i], sizeof st[i]));
        }
        cublasLtMatmulPreference_t pref;
        CKLT(cublasLtMatmulPreferenceCreate(&pref));
        size_t ws = 32u << 20;
        uint32_t al = 16;
        cublasStatus_t e1 = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
        cublasLtMatmulPreferenceAttributes_t aa[4] = {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
        for (int i = 0; i < 4 && e1 == CUBLAS_STATUS_SUCCESS; i++)
            e1 = cublasLtMatmulPreferenceSetAttribute(pref, aa[i], &al, sizeof al);
        cublasLtMatmulHeuristicResult_t res;
        int n = 0;
        cublasStatus_t e2 = e1 == CUBLAS_STATUS_SUCCESS
                                ? cublasLtMatmulAlgoGetHeuristic(m->lt, p->op, p->a, p->b, p->c, p->c, pref, 1, &res, &n)
                                : e1;
        cublasLtMatmulPreferenceDestroy(pref);
        if (e2 != CUBLAS_STATUS_SUCCESS || n == 0) {
            cublasLtMatrixLayoutDestroy(p->a);
            cublasLtMatrixLayoutDestroy(p->b);
            cublasLtMatrixLayoutDestroy(p->c);
            cublasLtMatmulDescDestroy(p->op);
            return hm_err("%s:%d: cuBLASLt has no batched algorithm for M=%d N=%d K=%d x%d (status %d)", __FILE__,
                          __LINE__, M, N, K, batch, (int)e2);
        }
        p->algo = res.algo;
        m->natt++;
    }
    float beta = 0.0f;
    CKLT(cublasLtMatmul(m->lt, p->op, &alpha, A, p->a, Bm, p->b, &beta, C, p->c, C, p->c, &p->algo, m->lt_ws, 32u << 20, s));
    return HM_OK;
}

/* Attention of qkv rows [B*T, 3d] (RoPE applied) through GEMMs, as fm.c's attention_full:
 * per batch row, S_h = Q_h K_hᵀ / sqrt(hd) for all heads in one batched GEMM (row-major S_h
 * [Tq, Tk] is the column-major [Tk, Tq] = K_h · Q_hᵀ), row softmax in fp32 -> P (weight dtype),
 * O_h = P V_h (column-major Oᵀ [hd, Tq] = V_hᵀ-view · Pᵀ-view) written into out rows [B*T, d]
 * (fp32) at column h*hd.  Then out -> gin (weight dtype). */
int attention_gemm(fmc_model *m, const stack *st, int B, int T, cudaStream_t s)
{
    const int d = st->d, H = st->heads, hd = st->hd;
    const size_t es = hmc_dtype_size(m->dt);
    const cudaDataType_t ab = m->dt == HMC_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    const void *src = m->qkv;
    if (m->dt == HMC_BF16) { /* a bf16 copy of q|k|v (the im2col buffer is free here) */
        CKH(hmc_convert(m->qkv, m->col, HMC_BF16, (size_t)B * T * 3 * d, s));
        src = m->col;
    }
    float *o = m->dt == HMC_F32 ? (float *)m->gin : m->h;
    const long long TT = (long long)T * T;
    for (int b = 0; b < B; b++) {
        const char *base = (const char *)src + (size_t)b * T * 3 * d * es;
        float *S = m->attS + (size_t)b * H * TT;
        CKH(att_gemm(m, ab, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, base + (size_t)d * es, 3 * d, hd, base, 3 * d, hd, S, T, TT,
                     H, 1.0f / sqrtf((float)hd), s));
    }
    if (m->dt == HMC_BF16) softmax_rows_kernel<<<B * H * T, 256, 0, s>>>(m->attS, T, (__nv_bfloat16 *)m->attP);
    else softmax_rows_kernel<<<B * H * T, 256, 0, s>>>(m->attS, T, (float *)m->attP);
    CK_LAUNCH();
    for (int b = 0; b < B; b++) {
        const char *base = (const char *)src + (size_t)b * T * 3 * d * es;
        const char *P = (const char *)m->attP + (size_t)b * H * TT * es;
        CKH(att_gemm(m, ab, CUBLAS_OP_N, CUBLAS_OP_N, hd, T, T, base + (size_t)2 * d * es, 3 * d, hd, P, T, TT,
                     o + (size_t)b * T * d, d, hd, H, 1.0f, s));
    }
    if (m->dt == HMC_BF16) CKH(hmc_convert(m->h, m->gin, HMC_BF16, (size_t)B * T * d, s));
    return HM_OK;
}

int stack_forward(fmc_model *m, const stack *st, float *x, int B, int T, const float *mod, const float *emb,
                  cudaStream_t s)
{
    const int d = st->d, M = B * T, cs = 6 * d, hid = st->hidden;
    const int fuse = !m->no_fuse;
    for (int l = 0; l < st->n; l++) {
        const block *b = &st->blk[l];
        const float *t = b->sst;
        /* (fused: the previous block's last residual add already wrote this norm into gin) */
        if (l == 0 || !fuse)
            CKH(fmc_norm_modulate(x, b->attn_norm, FMC_EPS, t, t + d, mod, mod + d, cs, B, T, d, m->gin, m->dt, s));
        CKH(gemm(m, m->gin, b->wqkv, m->qkv, M, 3 * d, d, s));
        const int am = att_mode(m);
        if (am == FMC_ATT_FLASH) { /* RoPE + bf16 copy of q|k|v into the (free here) im2col buffer */
            CKH(fmc_rope_qk_bf16(m->qkv, B, T, st->heads, st->hd, st->rope, m->col, s));
            CKH(fmc_flash_attention(m->col, B, T, st->heads, st->hd, m->gin, m->dt, s));
        } else {
            CKH(fmc_rope_qk(m->qkv, B, T, st->heads, st->hd, st->rope, s));
            if (am == FMC_ATT_GEMM) CKH(attention_gemm(m, st, B, T, s));
            else CKH(fmc_attention(m->qkv, B, T, st->heads, st->hd, m->gin, m->dt, s));
        }
        CKH(gemm(m, m->gin, b->wo, m->h, M, d, d, s));
        if (fuse) {
            CKH(fmc_add_norm_modulate(x, m->h, t + 2 * d, mod + 2 * d, cs, b->mlp_norm, FMC_EPS, t + 3 * d, t + 4 * d,
                                      mod + 3 * d, mod + 4 * d, cs, B, T, d, m->gin, m->dt, s));
        } else {
            CKH(fmc_gated_add(x, m->h, t + 2 * d, mod + 2 * d, cs, B, T, d, s));
            CKH(fmc_norm_modulate(x, b->mlp_norm, FMC_EPS, t + 3 * d, t + 4 * d, mod + 3 * d, mod + 4 * d, cs, B, T, d,
                                  m->gin, m->dt, s));
        }
        CKH(gemm(m, m->gin, b->wgu, m->gu, M, 2 * hid, d, s));
        CKH(hmc_silu_mul(m->gu, m->gin, m->dt, M, hid, 0, s));
        CKH(gemm(m, m->gin, b->wdown, m->h, M, d, hid, s));
        if (!fuse) {
            CKH(fmc_gated_add(x, m->h, t + 5 * d, mod + 5 * d, cs, B, T, d, s));
        } else if (l + 1 < st->n) { /* + the next block's attention norm */
            const block *nb = &st->blk[l + 1];
            const float *nt = nb->sst;
            CKH(fmc_add_norm_modulate(x, m->h, t + 5 * d, mod + 5 * d, cs, nb->attn_norm, FMC_EPS, nt, nt + d, mod,
                                      mod + d, cs, B, T, d, m->gin, m->dt, s));
        } else { /* + the final LayerNorm (no affine), shift = table[0] + emb, scale = table[1] + emb, in place */
            CKH(fmc_add_norm_modulate(x, m->h, t + 5 * d, mod + 5 * d, cs, NULL, FMC_EPS, st->sst, st->sst + d, emb,
                                      emb, d, B, T, d, x, HMC_F32, s));
            return HM_OK;
        }
    }
    /* final LayerNorm (no affine) modulated by shift = table[0] + emb, scale = table[1] + emb */
    CKH(fmc_norm_modulate(x, NULL, FMC_EPS, st->sst, st->sst + d, emb, emb, d, B, T, d, x, HMC_F32, s));
    return HM_OK;
}

/* One estimator call; ada: this step's adaLN table row (ada_table), or NULL to compute the adaLN
 * from t here (its weights on the device). */
int estimator(fmc_model *m, const float *x, const float *t, int B, int T, float *out, const float *ada,
              cudaStream_t s)
{
    const int cin = m->in_ch, d1 = m->s1.d, d2 = m->s2.d;
    const float *e1 = m->emb1, *m1 = m->mod1, *e2 = m->emb2, *m2 = m->mod2;
    if (ada) {
        e1 = ada, m1 = e1 + (size_t)B * d1, e2 = m1 + (size_t)B * 6 * d1, m2 = e2 + (size_t)B * d2;
    } else {
        CKH(fmc_timestep_features(t, B, FMC_TIME_FEATURES, m->feat, s));
        CKH(adaln_forward(m, &m->s1, B, m->emb1, m->mod1, s));
        CKH(adaln_forward(m, &m->s2, B, m->emb2, m->mod2, s));
    }
    CKH(proj_forward(m, &m->pin, x, cin, NULL, 0, B, T, m->x1, s));
    CKH(stack_forward(m, &m->s1, m->x1, B, T, m1, e1, s));
    CKH(proj_forward(m, &m->conn, x, cin, m->x1, d1, B, T, m->x2, s)); /* [estimator input | stack 1] */
    CKH(stack_forward(m, &m->s2, m->x2, B, T, m2, e2, s));
    CKH(proj_forward(m, &m->pout, m->x2, d2, NULL, 0, B, T, out, s));
    return HM_OK;
}

/* torch.linspace(0, 1, n) in fp32, as fm.c computes it */
float linspace01(int i, int n)
{
    if (n == 1) return 0.0f;
    float step = 1.0f / (float)(n - 1);
    int halfway = n / 2;
    return i < halfway ? step * (float)i : 1.0f - step * (float)(n - 1 - i);
}

} // namespace

/* ---- public entries ------------------------------------------------------------------------- */

extern "C" int fmc_im2col3(const float *a, int ca, const float *b, int cb, int B, int T, void *col, hmc_dtype ct,
                           cudaStream_t s)
{
    if (B < 1 || T < 1 || ca < 1 || cb < 0 || (cb && !b)) return hm_err("%s:%d: im2col3: bad arguments", __FILE__, __LINE__);
    if (ct == HMC_BF16) im2col3_kernel<<<B * T, 256, 0, s>>>(a, ca, b, cb, T, (__nv_bfloat16 *)col);
    else if (ct == HMC_F32) im2col3_kernel<<<B * T, 256, 0, s>>>(a, ca, b, cb, T, (float *)col);
    else return hm_err("%s:%d: im2col3: bad dtype", __FILE__, __LINE__);
    CK_LAUNCH();
    return HM_OK;
}

extern "C" int fmc_bias_act(float *y, const float *bias, int M, int N, float scale, int store_y, int act, void *conv,
                            hmc_dtype ct, cudaStream_t s)
{
    size_t n = (size_t)M * N;
    if (n == 0) return HM_OK;
    if (ct == HMC_BF16) bias_act_kernel<<<grid_for(n), 256, 0, s>>>(y, bias, n, N, scale, store_y, act, (__nv_bfloat16 *)conv);
    else if (ct == HMC_F32) bias_act_kernel<<<grid_for(n), 256, 0, s>>>(y, bias, n, N, scale, store_y, act, (float *)conv);
    else return hm_err("%s:%d: bias_act: bad dtype", __FILE__, __LINE__);
    CK_LAUNCH();
    return HM_OK;
}

extern "C" int fmc_norm_modulate(const float *x, const float *w, float eps, const float *tsh, const float *tsc,
                                 const float *csh, const float *csc, int cs, int B, int T, int D, void *y,
                                 hmc_dtype yt, cudaStream_t s)
{
    if (B < 1 || T < 1 || D < 1) return hm_err("%s:%d: norm_modulate: bad sizes", __FILE__, __LINE__);
    if (yt == HMC_BF16)
        norm_mod_kernel<<<B * T, 256, 0, s>>>(x, w, eps, tsh, tsc, csh, csc, cs, T, D, (__nv_bfloat16 *)y);
    else if (yt == HMC_F32) norm_mod_kernel<<<B * T, 256, 0, s>>>(x, w, eps, tsh, tsc, csh, csc, cs, T, D, (float *)y);
    else return hm_err("%s:%d: norm_modulate: bad dtype", __FILE__, __LINE__);
    CK_LAUNCH();
    return HM_OK;
}

extern "C" int fmc_add_norm_modulate(float *x, const float *h, const float *tg, const float *cg, int gcs,
                                     const float *w, float eps, const float *tsh, const float *tsc, const float *csh,
                                     const float *csc, int cs, int B, int T, int D, void *y, hmc_dtype yt,
                                     cudaStream_t s)
{
    if (B < 1 || T < 1 || D < 1) return hm_err("%s:%d: add_norm_modulate: bad sizes", __FILE__, __LINE__);
    if (yt == HMC_BF16)
        add_norm_mod_kernel<<<B * T, 256, 0, s>>>(x, h, tg, cg, gcs, w, eps, tsh, tsc, csh, csc, cs, T, D,
                                                  (__nv_bfloat16 *)y);
    else if (yt == HMC_F32)
        add_norm_mod_kernel<<<B * T, 256, 0, s>>>(x, h, tg, cg, gcs, w, eps, tsh, tsc, csh, csc, cs, T, D, (float *)y);
    else return hm_err("%s:%d: add_norm_modulate: bad dtype", __FILE__, __LINE__);
    CK_LAUNCH();
    return HM_OK;
}

extern "C" int fmc_gated_add(float *x, const float *h, const float *tg, const float *cg, int cs, int B, int T, int D,
                             cudaStream_t s)
{
    size_t n = (size_t)B * T * D;
    if (n == 0) return HM_OK;
    gated_add_kernel<<<grid_for(n), 256, 0, s>>>(x, h, tg, cg, cs, T, D, n);
    CK_LAUNCH();
    return HM_OK;
}

extern "C" int fmc_rope_qk(float *qkv, int B, int T, int H, int hd, const float *freqs, cudaStream_t s)
{
    if (B < 1 || T < 1 || hd % 2) return hm_err("%s:%d: rope_qk: bad sizes", __FILE__, __LINE__);
    rope_qk_kernel<<<B * T, 256, 0, s>>>(qkv, T, H, hd, freqs);
    CK_LAUNCH();
    return HM_OK;
}

namespace {
template <int HD, typename OT>
int attention_launch(const float *qkv, int B, int T, int H, OT *out, cudaStream_t s)
{
    static bool attr_set = false;
    constexpr size_t smem = att_smem<HD>();
    if (!attr_set) {
        CK(cudaFuncSetAttribute(attention_kernel<HD, OT>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        attr_set = true;
    }
    dim3 grid((T + ATT_BQ - 1) / ATT_BQ, H, B);
    attention_kernel<HD, OT><<<grid, ATT_THREADS, smem, s>>>(qkv, T, H, 1.0f / sqrtf((float)HD), out);
    CK_LAUNCH();
    return HM_OK;
}
template <typename OT>
int attention_hd(const float *qkv, int B, int T, int H, int hd, OT *out, cudaStream_t s)
{
    switch (hd) {
    case 16: return attention_launch<16>(qkv, B, T, H, out, s);
    case 32: return attention_launch<32>(qkv, B, T, H, out, s);
    case 64: return attention_launch<64>(qkv, B, T, H, out, s);
    case 128: return attention_launch<128>(qkv, B, T, H, out, s);
    default: return hm_err("%s:%d: attention: head dim %d not in {16, 32, 64, 128}", __FILE__, __LINE__, hd);
    }
}
} // namespace

extern "C" int fmc_attention(const float *qkv, int B, int T, int H, int hd, void *out, hmc_dtype ot, cudaStream_t s)
{
    if (B < 1 || T < 1 || H < 1 || B > 65535 || H > 65535) return hm_err("%s:%d: attention: bad sizes", __FILE__, __LINE__);
    if (ot == HMC_BF16) return attention_hd(qkv, B, T, H, hd, (__nv_bfloat16 *)out, s);
    if (ot == HMC_F32) return attention_hd(qkv, B, T, H, hd, (float *)out, s);
    return hm_err("%s:%d: attention: bad dtype", __FILE__, __LINE__);
}

extern "C" int fmc_rope_qk_bf16(const float *qkv, int B, int T, int H, int hd, const float *freqs, void *out,
                                cudaStream_t s)
{
    if (B < 1 || T < 1 || hd % 2) return hm_err("%s:%d: rope_qk_bf16: bad sizes", __FILE__, __LINE__);
    rope_bf16_kernel<<<B * T, 256, 0, s>>>(qkv, T, H, hd, freqs, (__nv_bfloat16 *)out);
    CK_LAUNCH();
    return HM_OK;
}

namespace {
template <int HD, typename OT>
int flash_launch(const void *qkv, int B, int T, int H, OT *out, cudaStream_t s)
{
    static bool attr_set = false;
    constexpr size_t smem = fa_smem<HD>();
    if (!attr_set) {
        CK(cudaFuncSetAttribute(flash_kernel<HD, OT>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        attr_set = true;
    }
    dim3 grid((T + FA_BQ - 1) / FA_BQ, H, B);
    const float sl2 = 1.4426950408889634f / sqrtf((float)HD); /* log2(e) / sqrt(hd) */
    flash_kernel<HD, OT><<<grid, FA_THREADS, smem, s>>>((const __nv_bfloat16 *)qkv, T, H, sl2, out);
    CK_LAUNCH();
    return HM_OK;
}
template <typename OT>
int flash_hd(const void *qkv, int B, int T, int H, int hd, OT *out, cudaStream_t s)
{
    switch (hd) {
    case 16: return flash_launch<16>(qkv, B, T, H, out, s);
    case 32: return flash_launch<32>(qkv, B, T, H, out, s);
    case 64: return flash_launch<64>(qkv, B, T, H, out, s);
    case 128: return flash_launch<128>(qkv, B, T, H, out, s);
    default: return hm_err("%s:%d: flash attention: head dim %d not in {16, 32, 64, 128}", __FILE__, __LINE__, hd);
    }
}
} // namespace

extern "C" int fmc_flash_attention(const void *qkv, int B, int T, int H, int hd, void *out, hmc_dtype ot,
                                   cudaStream_t s)
{
    if (B < 1 || T < 1 || H < 1 || B > 65535 || H > 65535) return hm_err("%s:%d: flash attention: bad sizes", __FILE__, __LINE__);
    if (ot == HMC_BF16) return flash_hd(qkv, B, T, H, hd, (__nv_bfloat16 *)out, s);
    if (ot == HMC_F32) return flash_hd(qkv, B, T, H, hd, (float *)out, s);
    return hm_err("%s:%d: flash attention: bad dtype", __FILE__, __LINE__);
}

extern "C" int fmc_timestep_features(const float *t, int B, int n, float *out, cudaStream_t s)
{
    if (B < 1 || n < 2 || n % 2) return hm_err("%s:%d: timestep_features: bad sizes", __FILE__, __LINE__);
    timestep_kernel<<<B, 256, 0, s>>>(t, n, (float)-log(10000.0), out);
    CK_LAUNCH();
    return HM_OK;
}

static int fmc_new(const hm_codec_config *cfg, int dt, const src *S, fmc_model **out)
{
    *out = NULL;
    if (dt != HMC_BF16 && dt != HMC_F32) return hm_err("fmc: weights dtype must be bf16 or f32");
    fmc_model *m = (fmc_model *)hm_calloc(1, sizeof *m);
    m->cfg = *cfg;
    m->dt = (hmc_dtype)dt;
    /* sizing pass (random mode reads no file, and dalloc and upload write nothing), then the arena */
    const src none = {NULL, 0};
    m->sizing = 1;
    int rc = build(m, &none);
    m->sizing = 0;
    free(m->s1.blk), free(m->s2.blk);
    m->s1.blk = m->s2.blk = NULL;
    m->nalloc = 0;
    if (!rc && cudaMalloc((void **)&m->arena, m->arena_cap) != cudaSuccess)
        rc = hm_err("%s:%d: %.1f MiB of device memory for the weights", __FILE__, __LINE__, m->arena_cap / 1048576.0);
    if (rc || build(m, S)) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", hm_errmsg());
        fmc_free(m);
        return hm_err("flow matching (cuda, %s): %s", cfg->dir[0] ? cfg->dir : "random", msg);
    }
    *out = m;
    return HM_OK;
}

extern "C" int fmc_load(const char *model_dir, int dt, fmc_model **out)
{
    *out = NULL;
    hm_codec_config c;
    if (hm_codec_config_load(model_dir, &c)) return HM_ERR;
    src S = {NULL, 0};
    if (st_open(c.dir, &S.f)) return hm_err_ctx("flow matching (cuda)");
    int rc = fmc_new(&c, dt, &S, out);
    st_close(S.f);
    return rc;
}

extern "C" int fmc_init_random(const hm_codec_config *cfg, int dt, uint64_t seed, fmc_model **out)
{
    src S = {NULL, seed};
    return fmc_new(cfg, dt, &S, out);
}

extern "C" void fmc_free(fmc_model *m)
{
    if (!m) return;
    cudaDeviceSynchronize();
    for (int i = 0; i < m->nalloc; i++)
        if (!m->arena || (char *)m->allocs[i] < m->arena || (char *)m->allocs[i] >= m->arena + m->arena_cap)
            cudaFree(m->allocs[i]);
    cudaFree(m->arena);
    for (int i = 0; i < 18; i++)
        if (m->ws[i]) cudaFree(m->ws[i]);
    for (int i = 0; i < FMC_ADA_TABLES; i++) cudaFree(m->ada[i].dev);
    for (int k = 0; k < 6; k++) free(m->ada_h[k]);
    for (int i = 0; i < m->natt; i++) {
        cublasLtMatrixLayoutDestroy(m->att[i].a);
        cublasLtMatrixLayoutDestroy(m->att[i].b);
        cublasLtMatrixLayoutDestroy(m->att[i].c);
        cublasLtMatmulDescDestroy(m->att[i].op);
    }
    if (m->lt_ws) cudaFree(m->lt_ws);
    if (m->lt) cublasLtDestroy(m->lt);
    drop_graphs(m);
    free(m->allocs);
    free(m->alloc_n);
    free(m->alloc_t);
    free(m->s1.blk);
    free(m->s2.blk);
    free(m);
}

extern "C" const hm_codec_config *fmc_config(const fmc_model *m) { return &m->cfg; }

extern "C" int fmc_estimator(fmc_model *m, const float *x, const float *t, int B, int T, float *out, cudaStream_t s)
{
    hmc_nvtx nvtx_("fm_estimator");
    if (B < 1 || T < 1 || T > (1 << 20)) return hm_err("fmc_estimator: bad batch %d x %d frames", B, T);
    if (out == x) return hm_err("fmc_estimator: out must not alias x");
    CKH(ensure_ws(m, B, T, 1));
    if (!m->ada_host) return estimator(m, x, t, B, T, out, NULL, s);
    CKH(ada_up(m)); /* adaLN weights on the host: up for this call */
    int rc = estimator(m, x, t, B, T, out, NULL, s);
    cudaError_t e = cudaStreamSynchronize(s);
    ada_down(m);
    if (e != cudaSuccess && rc == HM_OK) rc = hm_err("%s:%d: %s", __FILE__, __LINE__, cudaGetErrorString(e));
    return rc;
}

namespace {
/* Enqueue the whole solve (t table already on the device in m->tarr). */
int solve_enqueue(fmc_model *m, int T, const float *cond, const float *ctx, int L, const float *noise, int steps,
                  float guidance, float *x, const float *ah, const float *th, const float *dth, const float *ada,
                  cudaStream_t s)
{
    const size_t as = ada ? ada_stride(m, guidance > 1.0f ? 2 : 1) : 0;
    const int C = m->out_ch, D = m->dim, cfg = guidance > 1.0f, B = cfg ? 2 : 1;
    const size_t tc = (size_t)T * C;
    CK(cudaMemcpyAsync(x, noise, sizeof(float) * tc, cudaMemcpyDeviceToDevice, s));
    for (int step = 0; step < steps; step++) {
        euler_input_kernel<<<T, 256, 0, s>>>(x, noise, ctx, cond, L, ah[step], th[(size_t)step * B], B, T, C, D, cfg,
                                             m->inp);
        CK_LAUNCH();
        if (estimator(m, m->inp, m->tarr + (size_t)step * B, B, T, m->v, ada ? ada + as * step : NULL, s))
            return hm_err_ctx("%s:%d: step %d", __FILE__, __LINE__, step + 1);
        euler_update_kernel<<<grid_for(tc), 256, 0, s>>>(x, m->v, tc, dth[step], guidance, cfg);
        CK_LAUNCH();
    }
    if (L > 0) CK(cudaMemcpyAsync(x, ctx, sizeof(float) * (size_t)L * C, cudaMemcpyDeviceToDevice, s));
    return HM_OK;
}

/* Capture solve_enqueue into *exec (relaxed mode: cuBLASLt may still set things up). */
int solve_capture(fmc_model *m, int T, const float *cond, const float *ctx, int L, const float *noise, int steps,
                  float guidance, float *x, const float *ah, const float *th, const float *dth, const float *ada,
                  cudaStream_t s, cudaGraphExec_t *exec)
{
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
    int rc = solve_enqueue(m, T, cond, ctx, L, noise, steps, guidance, x, ah, th, dth, ada, s);
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(s, &g); /* always: leaves the stream out of capture mode */
    if (rc) {
        if (g) cudaGraphDestroy(g);
        return HM_ERR;
    }
    if (e != cudaSuccess) return hm_err("%s:%d: cudaStreamEndCapture: %s", __FILE__, __LINE__, cudaGetErrorString(e));
    e = cudaGraphInstantiate(exec, g, 0);
    cudaGraphDestroy(g);
    if (e != cudaSuccess) {
        *exec = NULL;
        return hm_err("%s:%d: cudaGraphInstantiate: %s", __FILE__, __LINE__, cudaGetErrorString(e));
    }
    return HM_OK;
}
} // namespace

extern "C" void fmc_set_graphs(fmc_model *m, int on) { m->use_graph = on; }

extern "C" int fmc_set_attention(fmc_model *m, int mode)
{
    if (mode < FMC_ATT_AUTO || mode > FMC_ATT_FLASH) return hm_err("fmc_set_attention: unknown mode %d", mode);
    if (mode == FMC_ATT_FLASH && m->dt != HMC_BF16)
        return hm_err("fmc_set_attention: the flash kernel runs bf16 tensor cores; fp32 weights take FMC_ATT_GEMM or TILED");
    if (mode == m->att_set) return HM_OK;
    CK(cudaDeviceSynchronize());
    m->att_set = mode;
    m->ws_M = 0; /* the next call reallocates the workspace (with or without S and P) */
    return HM_OK;
}

extern "C" int fmc_attention_mode(const fmc_model *m) { return att_mode(m); }

extern "C" void fmc_set_fusion(fmc_model *m, int on)
{
    if (!on != m->no_fuse) drop_graphs(m); /* captured with the other kernel sequence */
    m->no_fuse = !on;
}

extern "C" int fmc_set_attention_gemm(fmc_model *m, int on)
{
    return fmc_set_attention(m, on ? FMC_ATT_GEMM : FMC_ATT_TILED);
}

extern "C" int fmc_precision(const char *precision, int *out)
{
    if (!precision || !precision[0] || !strcmp(precision, "bf16")) *out = HMC_BF16;
    else if (!strcmp(precision, "fp32")) *out = HMC_F32;
    else return hm_err("precision '%s': the cuda flow matching supports bf16 and fp32", precision);
    return HM_OK;
}

extern "C" int fmc_weight_count(const fmc_model *m) { return m->nalloc; }

extern "C" void fmc_set_scratch_sharing(fmc_model *m, int on)
{
    if (m->ws_separate == !on) return;
    m->ws_separate = !on;
    m->ws_M = 0; /* the next call reallocates the workspace */
}

extern "C" size_t fmc_weight_bytes(const fmc_model *m)
{
    size_t b = 0;
    for (int i = 0; i < m->nalloc; i++)
        if (m->allocs[i]) b += alloc_bytes(m, i);
    return b;
}

extern "C" size_t fmc_adaln_table_bytes(const fmc_model *m)
{
    size_t b = 0;
    for (int i = 0; i < FMC_ADA_TABLES; i++)
        if (m->ada[i].dev) b += sizeof(float) * ada_stride(m, m->ada[i].B) * (size_t)m->ada[i].steps;
    return b;
}

extern "C" void fmc_set_adaln_tables(fmc_model *m, int on)
{
    if (m->ada_off == !on) return;
    cudaDeviceSynchronize();
    drop_graphs(m); /* captured with the other kernel sequence */
    m->ada_off = !on;
}

extern "C" int fmc_set_adaln_host(fmc_model *m, int on)
{
    if (m->ada_host == !!on) return HM_OK;
    CK(cudaDeviceSynchronize());
    drop_graphs(m);
    if (!on) { /* back to the device for good */
        CKH(ada_up(m));
        for (int k = 0; k < 6; k++) {
            m->allocs[m->ada_i[k]] = *ada_slot(m, k);
            free(m->ada_h[k]);
            m->ada_h[k] = NULL;
        }
        m->ada_host = 0;
        return HM_OK;
    }
    for (int k = 0; k < 6; k++) {
        void *d = *ada_slot(m, k);
        int i = 0;
        while (i < m->nalloc && m->allocs[i] != d) i++;
        if (i == m->nalloc) return hm_err("%s:%d: adaLN weight %d not found", __FILE__, __LINE__, k);
        m->ada_i[k] = i;
    }
    for (int k = 0; k < 6; k++) {
        const int i = m->ada_i[k];
        m->ada_h[k] = hm_malloc(alloc_bytes(m, i));
        CK(cudaMemcpy(m->ada_h[k], m->allocs[i], alloc_bytes(m, i), cudaMemcpyDeviceToHost));
    }
    for (int k = 0; k < 6; k++) {
        CK(cudaFree(m->allocs[m->ada_i[k]]));
        m->allocs[m->ada_i[k]] = NULL;
        *ada_slot(m, k) = NULL;
    }
    m->ada_host = 1;
    return HM_OK;
}

extern "C" int fmc_prepare(fmc_model *m, int T, int steps, float guidance, cudaStream_t s)
{
    /* a solve over a zero window builds what a real one needs (workspace, adaLN table); its
     * output is discarded.  Graphs off for it, so no key is taken. */
    if (T < 1 || steps < 1) return hm_err("fmc_prepare: %d frames, %d steps", T, steps);
    const hm_codec_config *c = &m->cfg;
    const size_t tc = (size_t)T * c->out_channels, td = (size_t)T * m->dim;
    float *buf = NULL;
    CK(cudaMalloc(&buf, sizeof(float) * (3 * tc + td)));
    int rc = HM_OK;
    if (cudaMemsetAsync(buf, 0, sizeof(float) * (3 * tc + td), s) != cudaSuccess)
        rc = hm_err("%s:%d: fmc_prepare: memset", __FILE__, __LINE__);
    const int g = m->use_graph;
    m->use_graph = 0;
    if (!rc) rc = fmc_solve(m, T, buf + 3 * tc, buf, 0, buf + tc, steps, guidance, buf + 2 * tc, s);
    m->use_graph = g;
    cudaError_t e = cudaStreamSynchronize(s);
    if (e != cudaSuccess && !rc) rc = hm_err("%s:%d: fmc_prepare: %s", __FILE__, __LINE__, cudaGetErrorString(e));
    cudaFree(buf);
    return rc;
}

extern "C" size_t fmc_workspace_bytes(const fmc_model *m) { return m->ws_bytes + (m->lt_ws ? (32u << 20) : 0); }

extern "C" int fmc_weight_get(const fmc_model *m, int i, float **host, size_t *n)
{
    *host = NULL;
    *n = 0;
    if (i < 0 || i >= m->nalloc) return hm_err("fmc_weight_get: no weight %d (%d)", i, m->nalloc);
    const size_t k = m->alloc_n[i];
    float *h = (float *)hm_malloc(sizeof(float) * (k ? k : 1));
    const void *hsrc = NULL; /* an adaLN matrix kept on the host */
    for (int q = 0; q < 6 && m->ada_host; q++)
        if (m->ada_i[q] == i) hsrc = m->ada_h[q];
    if (hsrc) {
        if (m->alloc_t[i] == HMC_F32) memcpy(h, hsrc, sizeof(float) * k);
        else
            for (size_t j = 0; j < k; j++) h[j] = hm_bf16_to_f32(((const uint16_t *)hsrc)[j]);
    } else if (m->alloc_t[i] == HMC_F32) {
        cudaError_t e = cudaMemcpy(h, m->allocs[i], sizeof(float) * k, cudaMemcpyDeviceToHost);
        if (e != cudaSuccess) {
            free(h);
            return hm_err("%s:%d: %s", __FILE__, __LINE__, cudaGetErrorString(e));
        }
    } else {
        uint16_t *b = (uint16_t *)hm_malloc(2 * k + 2);
        cudaError_t e = cudaMemcpy(b, m->allocs[i], 2 * k, cudaMemcpyDeviceToHost);
        for (size_t j = 0; j < k; j++) h[j] = hm_bf16_to_f32(b[j]);
        free(b);
        if (e != cudaSuccess) {
            free(h);
            return hm_err("%s:%d: %s", __FILE__, __LINE__, cudaGetErrorString(e));
        }
    }
    *host = h;
    *n = k;
    return HM_OK;
}

extern "C" int fmc_solve(fmc_model *m, int T, const float *cond, const float *ctx, int L, const float *noise,
                         int steps, float guidance, float *x, cudaStream_t s)
{
    hmc_nvtx nvtx_("fm_solve");
    if (steps < 1 || steps > FMC_MAX_STEPS)
        return hm_err("codec: %d flow-matching steps (1 to %d)", steps, FMC_MAX_STEPS);
    if (!isfinite(guidance) || guidance < 0.0f) return hm_err("codec: guidance %g must be a finite number >= 0", (double)guidance);
    if (T < 1 || L < 0 || L > T) return hm_err("codec: in-context length %d outside [0, %d]", L, T);
    if (x == noise || x == ctx) return hm_err("fmc_solve: latents must not alias noise or ctx");
    const int cfg = guidance > 1.0f, B = cfg ? 2 : 1;
    CKH(ensure_ws(m, B, T, steps));
    /* the time grid, computed on the host exactly as fm.c does: t per step (and batch row), the
     * in-context blend factor a = 1 - (1 - 1e-6) t, and dt */
    float *th = (float *)hm_malloc(sizeof(float) * (size_t)steps * B), *ah = (float *)hm_malloc(sizeof(float) * steps),
          *dth = (float *)hm_malloc(sizeof(float) * steps);
    float t = linspace01(0, steps + 1), dt = linspace01(1, steps + 1) - t;
    const float keep = 0.999999f;
    for (int step = 1; step <= steps; step++) {
        ah[step - 1] = 1.0f - keep * t;
        dth[step - 1] = dt;
        for (int b = 0; b < B; b++) th[(size_t)(step - 1) * B + b] = t;
        t = t + dt;
        if (step < steps) dt = linspace01(step + 1, steps + 1) - t;
    }
    int rc = HM_OK;
    cudaError_t e = cudaMemcpyAsync(m->tarr, th, sizeof(float) * (size_t)steps * B, cudaMemcpyHostToDevice, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s); /* th is pageable and freed below */
    if (e != cudaSuccess) rc = hm_err("%s:%d: t table upload: %s", __FILE__, __LINE__, cudaGetErrorString(e));
    const float *ada = NULL;
    if (!rc && (!m->ada_off || m->ada_host)) rc = ada_table(m, steps, B, s, &ada);
    if (!rc && m->use_graph && s != 0) { /* (the legacy default stream cannot be captured) */
        int hit = -1, lru = 0;
        for (int i = 0; i < FMC_GRAPHS && hit < 0; i++) {
            const auto &k = m->graph[i];
            if (k.seen && k.T == T && k.L == L && k.steps == steps && k.cfg == cfg && k.guidance == guidance &&
                k.cond == cond && k.ctx == ctx && k.noise == noise && k.x == x && k.s == s)
                hit = i;
            if (m->graph[i].used < m->graph[lru].used) lru = i;
        }
        if (hit >= 0) {
            auto &k = m->graph[hit];
            k.used = ++m->gclock;
            if (!k.exec)
                rc = solve_capture(m, T, cond, ctx, L, noise, steps, guidance, x, ah, th, dth, ada, s, &k.exec);
            if (!rc) {
                e = cudaGraphLaunch(k.exec, s);
                if (e != cudaSuccess) rc = hm_err("%s:%d: cudaGraphLaunch: %s", __FILE__, __LINE__, cudaGetErrorString(e));
            }
            free(th); free(ah); free(dth);
            return rc;
        }
        /* a new key: run eagerly this time, capture at its next call */
        auto &k = m->graph[lru];
        if (k.exec) cudaGraphExecDestroy(k.exec);
        k.exec = NULL;
        k.seen = 1, k.T = T, k.L = L, k.steps = steps, k.cfg = cfg, k.guidance = guidance;
        k.cond = cond, k.ctx = ctx, k.noise = noise, k.x = x, k.s = s;
        k.used = ++m->gclock;
    }
    if (!rc) rc = solve_enqueue(m, T, cond, ctx, L, noise, steps, guidance, x, ah, th, dth, ada, s);
    free(th);
    free(ah);
    free(dth);
    return rc;
}

extern "C" int fmc_solve_window(fmc_model *m, const float *cond, const float *ctx, int L, const float *noise, int steps,
                                float guidance, float *x, cudaStream_t s)
{
    return fmc_solve(m, CODEC_WIN_FRAMES, cond, ctx, L, noise, steps, guidance, x, s);
}

extern "C" double fmc_estimator_flops(const hm_codec_config *c, int B, int T)
{
    const double M = (double)B * T, cin = c->in_channels, out = c->out_channels;
    const double d1 = (double)c->num_attention_heads * c->attention_head_dim, d2 = 2 * d1;
    const double h1 = mlp_hidden((int)d1), h2 = mlp_hidden((int)d2);
    double f = 2 * M * (3 * cin * d1 + d1 * d1);                                /* proj_in */
    f += 2 * M * (3 * (cin + d1) * d2 + d2 * d2);                              /* connection_proj */
    f += 2 * M * (3 * d2 * out + out * out);                                   /* proj_out */
    f += c->num_layers * (2 * M * (4 * d1 * d1 + 3 * d1 * h1) + 4.0 * B * T * (double)T * d1);
    f += c->num_layers_2 * (2 * M * (4 * d2 * d2 + 3 * d2 * h2) + 4.0 * B * T * (double)T * d2);
    f += 2.0 * B * (FMC_TIME_FEATURES * d1 + 7 * d1 * d1 + FMC_TIME_FEATURES * d2 + 7 * d2 * d2); /* adaLN */
    return f;
}
