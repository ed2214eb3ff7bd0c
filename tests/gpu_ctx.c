/* gpu_ctx.c - what a CUDA context costs in device memory, and what hmc_context_trim saves.
 *   gpu_ctx            memory used (cudaMemGetInfo) before / after the context, after the trim
 *   gpu_ctx keep       the same without the trim (each stage process pays one context)
 * Then kernels of the project run in the trimmed context: one without a stack frame, then the
 * one-block sampler at V = 16384, whose kernel needs 104 bytes of stack a thread: it must run and draw the
 * maximum (top-k 1), and the driver must have raised the limit to at least what it needs.  Last,
 * hmc_context_check and hmc_context_probe: usable after a failed allocation, lost after a kernel's
 * illegal address. */
#include <cuda_runtime.h>
#include <stdint.h>
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
        const size_t sweep[] = {512, 128, 64, 32, 0, 1024};
        for (int i = 0; i < 6; i++) {
            CU(cudaDeviceSetLimit(cudaLimitStackSize, sweep[i]));
            printf("stack limit %4zu B/thread: %.1f MiB used\n", sweep[i], used_mib());
        }
        /* the malloc heap and the printf buffer: does the context reserve them up front? */
        const size_t heaps[] = {1 << 20, 64 << 10}, fifos[] = {64 << 10, 4 << 10};
        for (int i = 0; i < 2; i++) {
            const cudaError_t e1 = cudaDeviceSetLimit(cudaLimitMallocHeapSize, heaps[i]);
            const cudaError_t e2 = cudaDeviceSetLimit(cudaLimitPrintfFifoSize, fifos[i]);
            (void)cudaGetLastError();
            printf("malloc heap %zu KiB (%s), printf fifo %zu KiB (%s): %.1f MiB used\n", heaps[i] >> 10,
                   cudaGetErrorName(e1), fifos[i] >> 10, cudaGetErrorName(e2), used_mib());
        }
        OK(hmc_context_trim());
        CU(cudaDeviceGetLimit(&st, cudaLimitStackSize));
        printf("after hmc_context_trim: %.1f MiB (%+.1f; stack %zu B/thread)\n", used_mib(), used_mib() - c0, st);
    }
    /* a project kernel still runs */
    float *x;
    CU(cudaMalloc((void **)&x, sizeof(float) * 4096));
    OK(hmc_fill_random(x, HMC_F32, 4096, 3, 1.0f, 0));
    CU(cudaDeviceSynchronize());
    CU(cudaDeviceGetLimit(&st, cudaLimitStackSize));
    printf("after a kernel without a stack frame: %.1f MiB (stack %zu B/thread)\n", used_mib(), st);
    cudaFree(x);
    /* one that needs a stack: the limit must rise to it */
    enum { V = 16384, WANT = 9999 };
    float *lg, *hl = (float *)hm_malloc(sizeof(float) * V);
    for (int i = 0; i < V; i++) hl[i] = (float)(i % 97) * 0.01f;
    hl[WANT] = 5.0f;
    hmc_sample_params hp = {1.0f, 1.0f, 1, 7, 0, {-1, -1, -1, -1, -1, -1, -1, -1}}, *dp;
    uint32_t *cnt;
    int32_t *codes, got = -1;
    CU(cudaMalloc((void **)&lg, sizeof(float) * V));
    CU(cudaMalloc((void **)&dp, sizeof hp));
    CU(cudaMalloc((void **)&cnt, sizeof(uint32_t)));
    CU(cudaMalloc((void **)&codes, sizeof(int32_t) * 8));
    CU(cudaMemcpy(lg, hl, sizeof(float) * V, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(dp, &hp, sizeof hp, cudaMemcpyHostToDevice));
    CU(cudaMemset(cnt, 0, sizeof(uint32_t)));
    hmc_sample_set_impl(3); /* the one-block sampler: at V = 16384 its kernel has a stack frame (the
                             * cluster sampler, the default, has none) */
    OK(hmc_sample(lg, 1, V, dp, cnt, 0, NULL, codes, 0));
    hmc_sample_set_impl(0);
    CU(cudaDeviceSynchronize());
    CU(cudaMemcpy(&got, codes, sizeof got, cudaMemcpyDeviceToHost));
    CU(cudaDeviceGetLimit(&st, cudaLimitStackSize));
    printf("after the sampler at V = %d (its kernel has a stack frame): %.1f MiB (stack %zu B/thread), drew %d (want %d)\n", V,
           used_mib(), st, got, WANT);
    int ok = got == WANT && st > 0; /* from 0: raised for the sampler */
    cudaFree(lg), cudaFree(dp), cudaFree(cnt), cudaFree(codes), free(hl);
    printf("%s context %s\n", ok ? "PASS" : "FAIL", trim ? "trimmed" : "as created");
    /* hmc_context_check (the stage loop's): an error of one call leaves the context usable, a
     * kernel's illegal address loses it (this process's context is done after that) */
    void *big = NULL;
    const cudaError_t oom = cudaMalloc(&big, (size_t)1 << 50);
    const int c1 = hmc_context_check();
    float *ok_buf;
    const int usable = cudaMalloc((void **)&ok_buf, 64) == cudaSuccess;
    const int p1 = hmc_context_probe(); /* the driver asked: still fine */
    OK(hmc_fault_inject());
    const cudaError_t sync = cudaDeviceSynchronize();
    const int c2 = hmc_context_check(), p2 = hmc_context_probe();
    const int ok2 = oom != cudaSuccess && c1 == HM_OK && usable && p1 == HM_OK && sync != cudaSuccess && c2 == HM_ERR &&
                    p2 == HM_ERR;
    printf("%s context check: %s -> %s (probe %s), then %s -> %s (probe %s)\n", ok2 ? "PASS" : "FAIL",
           cudaGetErrorName(oom), c1 == HM_OK ? "usable" : "lost", p1 == HM_OK ? "usable" : "lost",
           cudaGetErrorName(sync), c2 == HM_OK ? "usable" : hm_errmsg(), p2 == HM_OK ? "usable" : "lost");
    ok = ok && ok2;
    return ok ? 0 : 1;
}
