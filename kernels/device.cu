/* device.cu - process-wide settings of the CUDA context a stage process creates. */
#include <cuda_runtime.h>

#include "common_cuda.h"
#include "ops_cuda.h"

/* The context reserves local memory for every thread the device can hold at the per-thread stack
 * limit: at the default 1 KiB, 1 KiB x 2048 threads x 132 SMs = 264 MiB on an H100, in each of the
 * pipeline's four GPU processes.  The project's kernels need at most 104 bytes of stack (ptxas
 * --resource-usage); the driver raises the limit by itself before a launch that needs more (a
 * library's kernel), so a small limit only hands back the reservation no kernel uses. */
extern "C" int hmc_context_trim(void)
{
    CK(cudaFree(0));
    CK(cudaDeviceSetLimit(cudaLimitStackSize, HMC_STACK_BYTES));
    return HM_OK;
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
