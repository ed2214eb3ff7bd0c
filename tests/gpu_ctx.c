/* gpu_ctx.c - what a CUDA context costs in device memory, and what hmc_context_trim saves.
 *   gpu_ctx            memory used (cudaMemGetInfo) before / after the context, after the trim
 *   gpu_ctx keep       the same without the trim (each stage process pays one context)
 * Then a kernel of the project is launched to show the trimmed context still runs it. */
#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>

#include "hm.h"
#include "ops_cuda.h"

#include "gpu_check.h"

static double used_mib(void)
{
    size_t fr, tot;
    CU(cudaMemGetInfo(&fr, &tot));
    return (double)(tot - fr) / (1 << 20);
}

int main(int argc, char **argv)
{
    const int trim = !(argc > 1 && !strcmp(argv[1], "keep"));
    CU(cudaSetDevice(0));
    CU(cudaFree(0));
    size_t st = 0, heap = 0, fifo = 0;
    CU(cudaDeviceGetLimit(&st, cudaLimitStackSize));
    CU(cudaDeviceGetLimit(&heap, cudaLimitMallocHeapSize));
    CU(cudaDeviceGetLimit(&fifo, cudaLimitPrintfFifoSize));
    const double c0 = used_mib();
    printf("context: %.1f MiB used on the device (stack %zu B/thread, malloc heap %zu KiB, printf fifo %zu KiB)\n", c0,
           st, heap >> 10, fifo >> 10);
    if (trim) {
        const size_t sweep[] = {512, 128, 64, 1024};
        for (int i = 0; i < 4; i++) {
            CU(cudaDeviceSetLimit(cudaLimitStackSize, sweep[i]));
            printf("stack limit %4zu B/thread: %.1f MiB used\n", sweep[i], used_mib());
        }
        OK(hmc_context_trim());
        CU(cudaDeviceGetLimit(&st, cudaLimitStackSize));
        printf("after hmc_context_trim: %.1f MiB (%+.1f; stack %zu B/thread)\n", used_mib(), used_mib() - c0, st);
    }
    /* a project kernel and a cuBLASLt GEMM still run */
    float *x;
    CU(cudaMalloc((void **)&x, sizeof(float) * 4096));
    OK(hmc_fill_random(x, HMC_F32, 4096, 3, 1.0f, 0));
    CU(cudaDeviceSynchronize());
    printf("after a kernel: %.1f MiB\n", used_mib());
    cudaFree(x);
    printf("PASS context %s\n", trim ? "trimmed" : "as created");
    return 0;
}
