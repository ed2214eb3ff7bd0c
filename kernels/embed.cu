/* embed.cu - embedding gathers of the language model (MODEL.md §2 "Embedding of a position"):
 * prompt rows (8 masked codebook rows + masked text row, unconditional text for the CFG row),
 * a generated frame (all 8 codebooks, no text), one code's row for the depth decoder, a strided
 * row copy, and the 16-bit transpose the loader turns the audio heads with.  CPU twin: the same
 * sums in fp32, and a host transpose (tests/gpu_ops.c). */
#include "common_cuda.h"
#include "ops_cuda.h"

namespace {

template <typename WT>
__global__ void embed_prompt_kernel(const int32_t *__restrict__ tok, const uint8_t *__restrict__ mask, int S, int nc,
                                    int Va, const WT *__restrict__ audio, const WT *__restrict__ text,
                                    const WT *__restrict__ uncond, int D, float *__restrict__ x)
{
    pdl_trigger();
    pdl_wait();
    const int s = blockIdx.x, b = blockIdx.y;
    const int32_t *tr = tok + (size_t)s * (nc + 1);
    const uint8_t *mr = mask + (size_t)s * (nc + 1);
    const WT *trow = nullptr;
    if (mr[nc]) trow = (b == 1 && uncond) ? uncond : text + (size_t)tr[nc] * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float v = 0.0f;
        for (int k = 0; k < nc; k++)
            if (mr[k]) v += hmc_ld(audio + ((size_t)tr[k] + (size_t)k * Va) * D + d);
        if (trow) v += hmc_ld(trow + d);
        x[((size_t)b * S + s) * D + d] = v;
    }
}

template <typename WT>
__global__ void embed_frame_kernel(const int32_t *__restrict__ codes, int nc, int Va, const WT *__restrict__ audio,
                                   int D, float *__restrict__ x)
{
    pdl_trigger();
    pdl_wait();
    for (int d = blockIdx.x * blockDim.x + threadIdx.x; d < D; d += gridDim.x * blockDim.x) {
        float v = 0.0f;
        for (int k = 0; k < nc; k++) {
            /* codes may come from another process's buffer (CUDA IPC): clamp, never read outside the table */
            int c = min(max(codes[k], 0), Va - 1);
            v += hmc_ld(audio + ((size_t)c + (size_t)k * Va) * D + d);
        }
        x[(size_t)blockIdx.y * D + d] = v;
    }
}

template <typename WT>
__global__ void embed_code_kernel(const int32_t *__restrict__ codes, int ci, int Va, const WT *__restrict__ audio,
                                  int D, float *__restrict__ x, int r0, int rstride)
{
    pdl_trigger();
    pdl_wait();
    const WT *row = audio + ((size_t)min(max(codes[ci], 0), Va - 1) + (size_t)ci * Va) * D;
    float *xr = x + (size_t)(r0 + blockIdx.y * rstride) * D;
    for (int d = blockIdx.x * blockDim.x + threadIdx.x; d < D; d += gridDim.x * blockDim.x) xr[d] = hmc_ld(row + d);
}

__global__ void copy_rows_kernel(const float *__restrict__ src, int lds, float *__restrict__ dst, int ldd, int D)
{
    pdl_trigger();
    pdl_wait();
    for (int d = blockIdx.x * blockDim.x + threadIdx.x; d < D; d += gridDim.x * blockDim.x)
        dst[(size_t)blockIdx.y * ldd + d] = src[(size_t)blockIdx.y * lds + d];
}

int blocks_for(int D) { return (D + 255) / 256; }

/* out[c, r] = in[r, c] of 16-bit values, by 32 x 32 tiles through shared memory (a column of the
 * tile padded by one, so a warp's column reads hit 32 banks). */
__global__ void transpose16_kernel(const uint16_t *__restrict__ in, int R, int C, uint16_t *__restrict__ out)
{
    __shared__ uint16_t t[32][33];
    const int c0 = blockIdx.x * 32, r0 = blockIdx.y * 32, tx = threadIdx.x;
    for (int i = threadIdx.y; i < 32; i += blockDim.y)
        if (r0 + i < R && c0 + tx < C) t[i][tx] = in[(size_t)(r0 + i) * C + c0 + tx];
    __syncthreads();
    for (int i = threadIdx.y; i < 32; i += blockDim.y)
        if (c0 + i < C && r0 + tx < R) out[(size_t)(c0 + i) * R + r0 + tx] = t[tx][i];
}

} // namespace

extern "C" int hmc_embed_prompt(const int32_t *tok, const uint8_t *mask, int S, int B, int nc, int Va,
                                const void *audio, const void *text, const void *uncond, hmc_dtype wt, int D,
                                float *x, cudaStream_t s)
{
    if (S <= 0) return HM_OK;
    dim3 grid(S, B);
    if (wt == HMC_BF16)
        embed_prompt_kernel<<<grid, 256, 0, s>>>(tok, mask, S, nc, Va, (const __nv_bfloat16 *)audio,
                                                 (const __nv_bfloat16 *)text, (const __nv_bfloat16 *)uncond, D, x);
    else if (wt == HMC_F32)
        embed_prompt_kernel<<<grid, 256, 0, s>>>(tok, mask, S, nc, Va, (const float *)audio, (const float *)text,
                                                 (const float *)uncond, D, x);
    else return hm_err("%s:%d: embed: bad dtype", __FILE__, __LINE__);
    CK_LAUNCH();
    return HM_OK;
}

extern "C" int hmc_embed_frame(const int32_t *codes, int B, int nc, int Va, const void *audio, hmc_dtype wt, int D,
                               float *x, cudaStream_t s)
{
    dim3 grid(blocks_for(D), B);
    if (wt == HMC_BF16)
        return launch_pdl(embed_frame_kernel<__nv_bfloat16>, grid, dim3(256), 0, s, codes, nc, Va,
                          (const __nv_bfloat16 *)audio, D, x);
    if (wt == HMC_F32)
        return launch_pdl(embed_frame_kernel<float>, grid, dim3(256), 0, s, codes, nc, Va, (const float *)audio, D, x);
    return hm_err("%s:%d: embed: bad dtype", __FILE__, __LINE__);
}

extern "C" int hmc_embed_code(const int32_t *codes, int ci, int Va, const void *audio, hmc_dtype wt, int D, float *x,
                              int r0, int rstride, int count, cudaStream_t s)
{
    dim3 grid(blocks_for(D), count);
    if (wt == HMC_BF16)
        return launch_pdl(embed_code_kernel<__nv_bfloat16>, grid, dim3(256), 0, s, codes, ci, Va,
                          (const __nv_bfloat16 *)audio, D, x, r0, rstride);
    if (wt == HMC_F32)
        return launch_pdl(embed_code_kernel<float>, grid, dim3(256), 0, s, codes, ci, Va, (const float *)audio, D, x, r0,
                          rstride);
    return hm_err("%s:%d: embed: bad dtype", __FILE__, __LINE__);
}

extern "C" int hmc_copy_rows(const float *src, int lds, float *dst, int ldd, int D, int count, cudaStream_t s)
{
    dim3 grid(blocks_for(D), count);
    return launch_pdl(copy_rows_kernel, grid, dim3(256), 0, s, src, lds, dst, ldd, D);
}

extern "C" int hmc_transpose16(const void *in, int R, int C, void *out, cudaStream_t s)
{
    if (R <= 0 || C <= 0 || R > 65535 * 32)
        return hm_err("%s:%d: transpose16: %d x %d", __FILE__, __LINE__, R, C);
    transpose16_kernel<<<dim3((C + 31) / 32, (R + 31) / 32), dim3(32, 8), 0, s>>>((const uint16_t *)in, R, C,
                                                                                  (uint16_t *)out);
    const cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? HM_OK : hm_err("%s:%d: transpose16: %s", __FILE__, __LINE__, cudaGetErrorString(e));
}
