/* norm.cu - RMSNorm, SwiGLU product, dtype conversion, seeded random fill and device counters.
 * CPU twins: cpu_rmsnorm, cpu_silu_mul.  Used on the prefill path (the decode path fuses norm and
 * SwiGLU into the GEMV's input staging, see gemv.cu). */
#include "common_cuda.h"
#include "ops_cuda.h"

#include <cuda_fp8.h>
#include <stdlib.h>

namespace {

constexpr int NP = 16; /* rmsnorm_kernel: values a thread holds in registers (rows up to 4096) */

template <typename YT>
__global__ void rmsnorm_kernel(const float *__restrict__ x, const float *__restrict__ scale, YT *__restrict__ y,
                               int D, float eps)
{
    __shared__ float red[32];
    pdl_trigger();
    const float *xr = x + (size_t)blockIdx.x * D;
    YT *yr = y + (size_t)blockIdx.x * D;
    float ss = 0.0f;
    if (D <= NP * (int)blockDim.x) {
        /* a row of up to NP values a thread (the decode path's final norm: 2 x 3072): every load
         * in flight at once, the scales before the wait (constant), the same summation order as
         * the loop below (which took 7.7 us in an H100 frame, 2.6 us now: docs/PERF.md) */
        float v[NP], sc[NP];
#pragma unroll
        for (int j = 0; j < NP; j++) {
            const int i = threadIdx.x + j * blockDim.x;
            sc[j] = i < D ? scale[i] : 0.0f;
        }
        pdl_wait();
#pragma unroll
        for (int j = 0; j < NP; j++) {
            const int i = threadIdx.x + j * blockDim.x;
            v[j] = i < D ? xr[i] : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < NP; j++)
            if (threadIdx.x + j * blockDim.x < D) ss += v[j] * v[j];
        const float rs = rsqrtf(block_sum(ss, red) / (float)D + eps);
#pragma unroll
        for (int j = 0; j < NP; j++) {
            const int i = threadIdx.x + j * blockDim.x;
            if (i < D) hmc_st(yr + i, v[j] * rs * sc[j]);
        }
        return;
    }
    pdl_wait();
    for (int i = threadIdx.x; i < D; i += blockDim.x) ss += xr[i] * xr[i];
    float rs = rsqrtf(block_sum(ss, red) / (float)D + eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x) hmc_st(yr + i, xr[i] * rs * scale[i]);
}

template <typename YT>
__global__ void silu_mul_kernel(const float *__restrict__ gu, YT *__restrict__ y, int I, int il)
{
    const float *g = gu + (size_t)blockIdx.y * 2 * I;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < I; i += gridDim.x * blockDim.x) {
        float a = il ? g[2 * i] : g[i], u = il ? g[2 * i + 1] : g[I + i];
        hmc_st(y + (size_t)blockIdx.y * I + i, a / (1.0f + __expf(-a)) * u);
    }
}

template <typename YT>
__global__ void convert_kernel(const float *__restrict__ x, YT *__restrict__ y, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        hmc_st(y + i, x[i]);
}

/* splitmix64: a counter-based generator, so the weights depend only on (seed, index) */
__device__ __forceinline__ uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

__global__ void fill_kernel(void *p, int t, size_t n, uint64_t seed, float scale)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float u = (float)(mix64(seed * 0x100000001b3ull + i) >> 40) * (1.0f / 16777216.0f);
        float v = (2.0f * u - 1.0f) * scale;
        if (t == HMC_BF16) ((__nv_bfloat16 *)p)[i] = __float2bfloat16(v);
        else if (t == HMC_F32) ((float *)p)[i] = v;
        else ((__nv_fp8_e4m3 *)p)[i] = __nv_fp8_e4m3(v);
    }
}

__global__ void add_counter_kernel(int *p, int inc)
{
    pdl_trigger();
    pdl_wait();
    *p += inc;
}

int g_pdl = -1;

int grid_for(size_t n) { return (int)((n + 255) / 256 < 4096 ? (n + 255) / 256 : 4096); }

} // namespace

int hmc_pdl_enabled(void)
{
    if (g_pdl < 0) g_pdl = getenv("HM_NO_PDL") ? 0 : 1;
    return g_pdl;
}

extern "C" int hmc_rmsnorm(const float *x, const float *scale, void *y, hmc_dtype yt, int M, int D, float eps,
                           cudaStream_t s)
{
    if (M <= 0) return HM_OK;
    if (yt == HMC_BF16) return launch_pdl(rmsnorm_kernel<__nv_bfloat16>, dim3(M), dim3(256), 0, s, x, scale, (__nv_bfloat16 *)y, D, eps);
    if (yt == HMC_F32) return launch_pdl(rmsnorm_kernel<float>, dim3(M), dim3(256), 0, s, x, scale, (float *)y, D, eps);
    return hm_err("%s:%d: rmsnorm: bad output dtype", __FILE__, __LINE__);
}

extern "C" int hmc_silu_mul(const float *gu, void *y, hmc_dtype yt, int M, int I, int il, cudaStream_t s)
{
    if (M <= 0) return HM_OK;
    dim3 grid((I + 255) / 256, M);
    if (yt == HMC_BF16) silu_mul_kernel<<<grid, 256, 0, s>>>(gu, (__nv_bfloat16 *)y, I, il);
    else if (yt == HMC_F32) silu_mul_kernel<<<grid, 256, 0, s>>>(gu, (float *)y, I, il);
    else return hm_err("%s:%d: silu_mul: bad output dtype", __FILE__, __LINE__);
    CK_LAUNCH();
    return HM_OK;
}

extern "C" int hmc_convert(const float *x, void *y, hmc_dtype yt, size_t n, cudaStream_t s)
{
    if (n == 0) return HM_OK;
    if (yt == HMC_BF16) convert_kernel<<<grid_for(n), 256, 0, s>>>(x, (__nv_bfloat16 *)y, n);
    else if (yt == HMC_F32) convert_kernel<<<grid_for(n), 256, 0, s>>>(x, (float *)y, n);
    else return hm_err("%s:%d: convert: bad output dtype", __FILE__, __LINE__);
    CK_LAUNCH();
    return HM_OK;
}

extern "C" int hmc_fill_random(void *p, hmc_dtype t, size_t n, uint64_t seed, float scale, cudaStream_t s)
{
    if (n == 0) return HM_OK;
    fill_kernel<<<grid_for(n), 256, 0, s>>>(p, (int)t, n, seed, scale);
    CK_LAUNCH();
    return HM_OK;
}

extern "C" int hmc_add_counter(int *p, int inc, cudaStream_t s)
{
    return launch_pdl(add_counter_kernel, dim3(1), dim3(1), 0, s, p, inc);
}
