/* device.cu - process-wide settings of the CUDA context a stage process creates. */
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdlib.h>

#include "common_cuda.h"
#include "ops_cuda.h"

/* The context reserves local memory for every thread the device can hold at the per-thread stack
 * limit: at the default 1 KiB, 1 KiB x 2048 threads x 132 SMs = 264 MiB on an H100, in each of the
 * pipeline's four GPU processes.  The driver raises the limit by itself before a launch that needs
 * more (tests/gpu_ctx checks it), so the limit goes to 0 and each process reserves what its
 * largest kernel needs (ptxas --resource-usage): the bf16 LM's and the codec's kernels 0-8 bytes,
 * the quantised GEMVs' rotary epilogue 32, the sampler at V > 9216 104.  HM_STACK_BYTES=n sets
 * another limit (A/B).  (The malloc heap and printf FIFO limits cost nothing until a kernel uses
 * them: setting them to their minimum freed 0 MiB, H100.) */
extern "C" int hmc_context_trim(void)
{
    CK(cudaFree(0));
    const char *e = getenv("HM_STACK_BYTES");
    const size_t want = e && *e ? (size_t)strtoull(e, nullptr, 10) : (size_t)HMC_STACK_BYTES;
    if (cudaDeviceSetLimit(cudaLimitStackSize, want) != cudaSuccess) {
        (void)cudaGetLastError(); /* a driver that refuses this value: the old 128 bytes */
        CK(cudaDeviceSetLimit(cudaLimitStackSize, 128));
    }
    return HM_OK;
}

/* Errors after which every call of the context fails (the list is not needed to be complete:
 * hmc_context_check also asks the driver whether the context still answers) */
static bool context_lost(cudaError_t e)
{
    switch (e) {
    case cudaErrorIllegalAddress: case cudaErrorLaunchFailure: case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction: case cudaErrorMisalignedAddress: case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc: case cudaErrorAssert: case cudaErrorLaunchTimeout: case cudaErrorECCUncorrectable:
    case cudaErrorContextIsDestroyed: case cudaErrorMpsClientTerminated: case cudaErrorMpsConnectionFailed:
    case cudaErrorMpsServerNotReady: case cudaErrorMpsRpcFailure: case cudaErrorDevicesUnavailable:
    case cudaErrorNoDevice:
        return true;
    default: return false;
    }
}

/* Does the context still answer?  A query of the legacy stream enqueues nothing and returns
 * cudaSuccess or cudaErrorNotReady unless the context is gone, when it returns the sticky error. */
static cudaError_t answers(void)
{
    const cudaError_t q = cudaStreamQuery(cudaStreamLegacy);
    return q == cudaErrorNotReady ? cudaSuccess : q;
}

static int lost_msg(cudaError_t e)
{
    return hm_err("CUDA context lost: %s (%s)", cudaGetErrorName(e), cudaGetErrorString(e));
}

extern "C" int hmc_context_check(void)
{
    const cudaError_t e = cudaPeekAtLastError();
    if (e == cudaSuccess) return HM_OK;
    /* an error of one call (e.g. out of memory) leaves the context answering: that request
     * failed, the context lives; a sticky one (also one this list lacks, e.g. after the MPS server
     * died) makes the query fail too */
    if (context_lost(e) || answers() != cudaSuccess) return lost_msg(e);
    (void)cudaGetLastError();
    return HM_OK;
}

/* hmc_context_check after asking the driver: a process that makes no CUDA call (an idle stage)
 * would not learn otherwise that its context is gone, e.g. that the MPS server terminated it
 * after another client's fault, and the server admits no new client until it has exited.  A
 * failed query counts when it is on the list or fails the same way again. */
extern "C" int hmc_context_probe(void)
{
    const cudaError_t q = answers();
    if (q != cudaSuccess && (context_lost(q) || answers() == q)) return lost_msg(q);
    return hmc_context_check();
}

/* Fault injection (HM_FAULT_INJECT, common/service.c; tests/gpu_ctx): a kernel that writes to an
 * unmapped address, so the context is lost once it runs. */
extern "C" int hmc_fault_inject(void)
{
    return hmc_fill_random((void *)(uintptr_t)0x1000, HMC_F32, 1 << 20, 1, 1.0f, 0);
}

/* Summary of per-block phase stamps (h: nblk rows of nst %globaltimer values, 0 = not reached):
 * per phase the earliest, median and latest block, in us after the earliest block's stamp `ref`. */
void hmc_stamp_summary(FILE *f, const char *who, const unsigned long long *h, int nblk, int nst, int ref,
                       const char *const *names)
{
    unsigned long long t0 = ~0ull;
    for (int b = 0; b < nblk; b++)
        if (h[(size_t)b * nst + ref] && h[(size_t)b * nst + ref] < t0) t0 = h[(size_t)b * nst + ref];
    double *v = (double *)hm_malloc(sizeof(double) * (size_t)nblk);
    for (int i = 0; i < nst; i++) {
        int n = 0;
        for (int b = 0; b < nblk; b++) {
            const unsigned long long t = h[(size_t)b * nst + i];
            if (t) v[n++] = ((double)t - (double)t0) / 1e3;
        }
        if (!n) continue;
        for (int a = 1; a < n; a++) /* insertion sort: a few hundred blocks */
            for (int c = a; c > 0 && v[c - 1] > v[c]; c--) { double x = v[c]; v[c] = v[c - 1]; v[c - 1] = x; }
        fprintf(f, "%s stamp %-18s blocks %4d  min %7.2f  median %7.2f  max %7.2f us\n", who, names[i], n, v[0],
                v[n / 2], v[n - 1]);
    }
    free(v);
}
