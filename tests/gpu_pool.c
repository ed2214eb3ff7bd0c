/* gpu_pool.c - CUDA IPC buffer pool across two real processes (GPU machine only; built by
 * `make CUDA=1 build/tests/gpu_pool`, not part of `make test`).  The producer fills slots with
 * async copies on its stream and records the slot event; the consumer (this binary re-executed
 * as "gpu_pool consumer ...") maps the pool once, waits on the event on its own stream (no host
 * sync in the producer), copies back and checks every element, then releases.  Also checks that
 * a consumer holding every slot throttles the producer and that a SIGKILLed consumer's slots
 * come back after the lease.  Built by the Makefile's tests/gpu_*.c rule (no cmocka there), so
 * checks are plain REQUIRE()s; exit status 0 = pass, 77 = no GPU. */
#define _GNU_SOURCE
#include <stdint.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "desc.h"
#include "hm.h"
#include "pool.h"
#include "transport.h"

#ifdef HM_CUDA
#include <cuda_runtime_api.h>

#define NSLOTS 4
#define ELEMS (1u << 20) /* 4 MiB per slot */
#define MSGS 200

static char g_data[128], g_rel[128], g_name[64];

static uint32_t pattern(uint64_t seq, uint32_t j) { return (uint32_t)(seq * 2654435761u + j); }

#define REQUIRE(cond, ...)                                              \
    do {                                                                \
        if (!(cond)) {                                                  \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                               \
            fputc('\n', stderr);                                        \
            exit(1);                                                    \
        }                                                               \
    } while (0)
#define fail_msg(...) REQUIRE(0, __VA_ARGS__)
#define assert_int_equal(a, b) REQUIRE((a) == (b), "%lld != %lld", (long long)(a), (long long)(b))
#define assert_true(c) REQUIRE(c, "false")

#define CK(call)                                                                                  \
    do {                                                                                          \
        cudaError_t e_ = (call);                                                                  \
        if (e_ != cudaSuccess) {                                                                  \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            return 1;                                                                             \
        }                                                                                         \
    } while (0)

/* consumer MODE(verify|hold) COUNT DATA_URL */
static int consumer_main(int argc, char **argv)
{
    if (argc != 5) return 2;
    int hold = strcmp(argv[2], "hold") == 0, count = atoi(argv[3]);
    hm_log_set_name("gpu-consumer");
    tp_endpoint_t in_ep = {"data", argv[4], TP_CONNECT, ZMQ_PULL};
    void *in;
    if (tp_open(&in_ep, &in) != HM_OK) {
        fprintf(stderr, "%s\n", hm_errmsg());
        return 2;
    }
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    uint32_t *host;
    CK(cudaMallocHost((void **)&host, ELEMS * 4));
    int bad = 0;
    for (int i = 0; i < count; i++) {
        desc_t d;
        if (tp_recv(in, NULL, &d, 0) != HM_OK) {
            fprintf(stderr, "recv: %s\n", hm_errmsg());
            bad++;
            continue;
        }
        const void *dev;
        if (pool_map(&d, &dev) != HM_OK || pool_wait(&d, s) != HM_OK) {
            fprintf(stderr, "map/wait: %s\n", hm_errmsg());
            bad++;
            desc_free(&d);
            continue;
        }
        CK(cudaMemcpyAsync(host, dev, d.buf.length, cudaMemcpyDeviceToHost, s));
        CK(cudaStreamSynchronize(s)); /* every use of the slot done before releasing it */
        for (uint32_t j = 0; j < d.buf.length / 4; j++)
            if (host[j] != pattern(d.seq, j)) {
                fprintf(stderr, "seq %llu elem %u: %u != %u\n", (unsigned long long)d.seq, j, host[j], pattern(d.seq, j));
                bad++;
                break;
            }
        if (!hold && pool_release(&d) != HM_OK) {
            fprintf(stderr, "release: %s\n", hm_errmsg());
            bad++;
        }
        desc_free(&d);
    }
    if (hold) pause(); /* keep every slot until killed */
    tp_close(in);
    pool_unmap_all();
    tp_term();
    CK(cudaFreeHost(host));
    return bad ? 1 : 0;
}

typedef struct {
    pool_t *pool;
    void *out;
    pid_t pid;
    cudaStream_t s;
    uint32_t *staging[NSLOTS]; /* pinned; reused only after its slot came back */
} rig_t;

static void rig_up(rig_t *r, const char *mode, int count, double lease)
{
    static int n;
    snprintf(g_name, sizeof g_name, "gpu-pool-%d-%d", (int)getpid(), n);
    snprintf(g_data, sizeof g_data, "ipc:///tmp/hm-gpu-pool-%d-%d.data", (int)getpid(), n);
    snprintf(g_rel, sizeof g_rel, "ipc:///tmp/hm-gpu-pool-%d-%d.rel", (int)getpid(), n);
    n++;
    if (pool_create(POOL_CUDA, g_name, NSLOTS, ELEMS * 4, &r->pool) != HM_OK) fail_msg("%s", hm_errmsg());
    pool_set_lease(r->pool, lease);
    if (pool_listen(r->pool, g_rel) != HM_OK) fail_msg("%s", hm_errmsg());
    tp_endpoint_t out = {"data", g_data, TP_BIND, ZMQ_PUSH};
    if (tp_open(&out, &r->out) != HM_OK) fail_msg("%s", hm_errmsg());
    assert_int_equal(cudaStreamCreateWithFlags(&r->s, cudaStreamNonBlocking), cudaSuccess);
    for (int i = 0; i < NSLOTS; i++) assert_int_equal(cudaMallocHost((void **)&r->staging[i], ELEMS * 4), cudaSuccess);
    char c[16];
    snprintf(c, sizeof c, "%d", count);
    r->pid = fork();
    assert_true(r->pid >= 0);
    if (r->pid == 0) {
        char *args[] = {"gpu_pool", "consumer", (char *)mode, c, g_data, NULL};
        execv("/proc/self/exe", args);
        _exit(127);
    }
}

static void rig_down(rig_t *r)
{
    assert_int_equal(cudaStreamSynchronize(r->s), cudaSuccess);
    for (int i = 0; i < NSLOTS; i++) cudaFreeHost(r->staging[i]);
    cudaStreamDestroy(r->s);
    tp_close(r->out);
    pool_destroy(r->pool);
}

static void produce(rig_t *r, uint64_t seq, int timeout_ms)
{
    uint32_t slot;
    if (pool_acquire(r->pool, timeout_ms, &slot) != HM_OK) fail_msg("acquire %llu: %s", (unsigned long long)seq, hm_errmsg());
    uint32_t n = ELEMS - (uint32_t)(seq % 1000u);
    for (uint32_t j = 0; j < n; j++) r->staging[slot][j] = pattern(seq, j);
    assert_int_equal(cudaMemcpyAsync(pool_slot_ptr(r->pool, slot), r->staging[slot], (size_t)n * 4,
                                     cudaMemcpyHostToDevice, r->s), cudaSuccess);
    assert_int_equal(pool_record(r->pool, slot, r->s), HM_OK); /* no host sync: the consumer waits on the event */
    desc_t d;
    desc_init(&d, DESC_LATENTS, 1, seq);
    uint64_t shape[1] = {n};
    assert_int_equal(pool_fill_desc(r->pool, slot, 0, DESC_DT_I32, 1, shape, &d), HM_OK);
    assert_int_equal(tp_send(r->out, NULL, &d, 0), HM_OK);
    desc_free(&d);
}

static void test_cuda_ipc_integrity(void)
{
    rig_t r;
    rig_up(&r, "verify", MSGS, 30.0);
    double t0 = hm_now();
    for (int s = 0; s < MSGS; s++) produce(&r, (uint64_t)s, 10000);
    int status;
    assert_int_equal(waitpid(r.pid, &status, 0), r.pid);
    double dt = hm_now() - t0;
    printf("cuda pool: %d x %u MiB messages in %.3f s (%.2f GB/s end to end incl. host pattern fill)\n", MSGS,
           ELEMS * 4 >> 20, dt, MSGS * (double)ELEMS * 4 / dt / 1e9);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    rig_down(&r);
}

static void test_cuda_hold_throttle_and_reclaim(void)
{
    rig_t r;
    rig_up(&r, "hold", NSLOTS, 1.5);
    for (int s = 0; s < NSLOTS; s++) produce(&r, (uint64_t)s, 10000);
    uint32_t slot;
    assert_int_equal(pool_acquire(r.pool, 200, &slot), HM_ERR); /* consumer holds every slot */
    kill(r.pid, SIGKILL);
    int status;
    waitpid(r.pid, &status, 0);
    for (int i = 0; i < NSLOTS; i++)
        if (pool_acquire(r.pool, 5000, &slot) != HM_OK) fail_msg("slot not reclaimed: %s", hm_errmsg());
    rig_down(&r);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "consumer") == 0) return consumer_main(argc, argv);
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        fprintf(stderr, "gpu_pool: no CUDA device\n");
        return 77;
    }
    test_cuda_ipc_integrity();
    printf("PASS cuda ipc integrity\n");
    test_cuda_hold_throttle_and_reclaim();
    printf("PASS cuda hold/throttle/reclaim\n");
    return 0;
}
#else
int main(void)
{
    fprintf(stderr, "gpu_pool: build with make CUDA=1\n");
    return 77;
}
#endif
