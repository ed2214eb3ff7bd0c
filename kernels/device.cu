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
