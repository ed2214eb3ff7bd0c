/* crossfade_cuda.cu - the codec's segment cross-fade on the GPU (see vocoder_cuda.h), bit for
 * bit the CPU's cpu_crossfade (kernels/crossfade.c): the ramp r_i = i * (1 / (n - 1)) in float64
 * with the last element exactly 1 (numpy.linspace), out = (float)(prev * (1 - r) + next * r) with
 * every float64 product, difference and sum rounded on its own (__d*_rn: nvcc may not contract
 * them into an fma, and the CPU side is built without contraction too).  Checked bitwise against
 * the CPU by tests/gpu_vocoder.c (phase xfade).  (Named *_cuda.cu: kernels/crossfade.c already
 * owns the object name crossfade.o in the Makefile's layout.) */
#include "common_cuda.h"
#include "vocoder_cuda.h"

namespace {

/* One row per blockIdx.y, a grid-stride loop over the n samples.  step = 1 / (n - 1) as the host
 * computes it (0 for n < 2, where crossfade_ramp is 0 everywhere).  Each thread reads its prev[i]
 * and next[i] before writing out[i], so out may be prev or next itself. */
__global__ void crossfade_kernel(const float *prev, size_t ld_prev, const float *next, size_t ld_next, float *out,
                                 size_t ld_out, size_t n, double step)
{
    const size_t row = blockIdx.y;
    const float *p = prev + row * ld_prev, *q = next + row * ld_next;
    float *o = out + row * ld_out;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const double r = (n >= 2 && i == n - 1) ? 1.0 : __dmul_rn(__ull2double_rn(i), step);
        const double a = __dmul_rn((double)p[i], __dsub_rn(1.0, r));
        const double b = __dmul_rn((double)q[i], r);
        o[i] = __double2float_rn(__dadd_rn(a, b));
    }
}

} // namespace

extern "C" int hmc_crossfade_rows(const float *prev, size_t ld_prev, const float *next, size_t ld_next, float *out,
                                  size_t ld_out, size_t n, int rows, cudaStream_t stream)
{
    if (rows < 0 || rows > 65535)
        return hm_err("%s:%d: hmc_crossfade_rows: %d rows (1..65535)", __FILE__, __LINE__, rows);
    if (!n || !rows) return HM_OK;
    if (!prev || !next || !out) return hm_err("%s:%d: hmc_crossfade_rows: NULL buffer", __FILE__, __LINE__);
    if (rows > 1 && (ld_prev < n || ld_next < n || ld_out < n))
        return hm_err("%s:%d: hmc_crossfade_rows: a row stride is shorter than the %zu samples", __FILE__, __LINE__, n);
    /* out must be one of the inputs exactly (same rows) or apart from both: a shifted overlap
     * would let one thread's write land on another's input */
    if ((out == prev && ld_out != ld_prev) || (out == next && ld_out != ld_next))
        return hm_err("%s:%d: hmc_crossfade_rows: out aliases an input with another row stride", __FILE__, __LINE__);
    const double step = n >= 2 ? 1.0 / (double)(n - 1) : 0.0; /* crossfade_ramp's step, same IEEE division */
    const int threads = 256;
    size_t blocks = (n + threads - 1) / threads;
    if (blocks > 4096) blocks = 4096; /* grid-stride beyond: plenty for a 199680-sample fade */
    crossfade_kernel<<<dim3((unsigned)blocks, (unsigned)rows), threads, 0, stream>>>(prev, ld_prev, next, ld_next, out,
                                                                                   ld_out, n, step);
    CK_LAUNCH();
    return HM_OK;
}

extern "C" int hmc_crossfade(const float *prev, const float *next, size_t n, float *out, cudaStream_t stream)
{
    return hmc_crossfade_rows(prev, n, next, n, out, n, n, 1, stream);
}
