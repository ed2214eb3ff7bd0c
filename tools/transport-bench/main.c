/* transport-bench - descriptor round-trip latency between two processes over ZeroMQ (the
 * libzmq perf/ pair in one binary).  The client is a DEALER, the server a ROUTER (the
 * backbone <-> draft-verifier pattern); each round trip encodes, sends, receives and decodes a
 * realistic descriptor both ways (an shm buffer reference plus a few params), so the figure is
 * what a stage pays per message, not bare ZeroMQ.  A second pass sends the same bytes without
 * msgpack work, to show the descriptor's share.
 *
 *   bin/transport-bench [--n 20000] [--warmup 2000] [--url ipc:///tmp/hm-bench.sock]
 *
 * Prints min / median / p99 / max in microseconds for both passes.  The server is this binary
 * re-executed with "--server URL". */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "desc.h"
#include "hm.h"
#include "transport.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void make_request(desc_t *d, uint64_t seq)
{
    desc_init(d, DESC_EXTEND, 7, seq);
    uint64_t shape[2] = {8, 3072};
    desc_set_tensor(d, DESC_DT_BF16, 2, shape);
    d->buf.kind = DESC_BUF_SHM;
    strcpy(d->buf.pool, "draft-verifier.frames");
    d->buf.pool_id = 0x1234567890abcdefULL;
    d->buf.nslots = 16;
    d->buf.slot_bytes = 1 << 20;
    d->buf.slot = (uint32_t)(seq % 16);
    d->buf.gen = (uint32_t)seq;
    strcpy(d->buf.release_ep, "ipc:///tmp/hm/draft-verifier.frames.rel");
    desc_set_i64(d, "k", 4);
    desc_set_i64(d, "pos", (int64_t)seq);
}

static int server(const char *url)
{
    tp_endpoint_t ep = {"bench-server", url, TP_BIND, ZMQ_ROUTER};
    void *s;
    if (tp_open(&ep, &s) != HM_OK) {
        fprintf(stderr, "server: %s\n", hm_errmsg());
        return 1;
    }
    for (;;) {
        /* raw mode frames are echoed untouched; descriptors are decoded and answered */
        zmq_msg_t id, body;
        zmq_msg_init(&id);
        zmq_msg_init(&body);
        if (zmq_msg_recv(&id, s, 0) < 0 || zmq_msg_recv(&body, s, 0) < 0) {
            fprintf(stderr, "server: recv: %s\n", zmq_strerror(errno));
            return 1;
        }
        const uint8_t *b = zmq_msg_data(&body);
        size_t n = zmq_msg_size(&body);
        if (n == 4 && memcmp(b, "QUIT", 4) == 0) break;
        if (n > 0 && b[0] == 'R') { /* raw pass */
            zmq_msg_send(&id, s, ZMQ_SNDMORE);
            zmq_msg_send(&body, s, 0);
            continue;
        }
        desc_t d, r;
        if (desc_decode(b, n, &d) != HM_OK) {
            fprintf(stderr, "server: %s\n", hm_errmsg());
            return 1;
        }
        desc_init(&r, DESC_HIDDEN, d.req_id, d.seq);
        r.buf = d.buf;
        r.buf.data = NULL;
        desc_set_i64(&r, "accepted", 3);
        char *out;
        size_t on;
        if (desc_encode(&r, &out, &on) != HM_OK) return 1;
        zmq_msg_send(&id, s, ZMQ_SNDMORE);
        zmq_send(s, out, on, 0);
        free(out);
        desc_free(&d);
        desc_free(&r);
        zmq_msg_close(&body);
    }
    tp_close(s);
    tp_term();
    return 0;
}

static void report(const char *what, double *t, int n, size_t bytes)
{
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    printf("%-28s %6zu B  min %7.1f  median %7.1f  p99 %7.1f  max %8.1f  us  (n=%d)\n", what, bytes, t[0] * 1e6,
           t[n / 2] * 1e6, t[(int)(n * 0.99)] * 1e6, t[n - 1] * 1e6, n);
}

int main(int argc, char **argv)
{
    int n = 20000, warm = 2000;
    char url[256];
    snprintf(url, sizeof url, "ipc:///tmp/hm-bench-%d.sock", (int)getpid());
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--server") == 0 && i + 1 < argc) return server(argv[i + 1]);
        else if (strcmp(argv[i], "--n") == 0 && i + 1 < argc) n = atoi(argv[++i]);
        else if (strcmp(argv[i], "--warmup") == 0 && i + 1 < argc) warm = atoi(argv[++i]);
        else if (strcmp(argv[i], "--url") == 0 && i + 1 < argc) snprintf(url, sizeof url, "%s", argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--n N] [--warmup N] [--url URL]\n", argv[0]);
            return 2;
        }
    }
    if (n < 100) n = 100;
    pid_t pid = fork();
    if (pid < 0) return perror("fork"), 1;
    if (pid == 0) {
        char *args[] = {argv[0], "--server", url, NULL};
        execv("/proc/self/exe", args);
        _exit(127);
    }
    tp_endpoint_t ep = {"bench-client", url, TP_CONNECT, ZMQ_DEALER};
    void *s;
    if (tp_open(&ep, &s) != HM_OK) {
        fprintf(stderr, "%s\n", hm_errmsg());
        return 1;
    }
    double *t = hm_malloc((size_t)n * sizeof *t);
    size_t req_bytes = 0;
    /* pass 1: descriptors */
    for (int i = -warm; i < n; i++) {
        desc_t q, r;
        make_request(&q, (uint64_t)(i + warm));
        double t0 = hm_now();
        int rc;
        while ((rc = tp_send(s, NULL, &q, ZMQ_DONTWAIT)) == TP_AGAIN) usleep(1000); /* server starting */
        if (rc != HM_OK || tp_recv(s, NULL, &r, 0) != HM_OK) {
            fprintf(stderr, "round trip %d: %s\n", i, hm_errmsg());
            return 1;
        }
        double dt = hm_now() - t0;
        if (r.seq != q.seq) {
            fprintf(stderr, "reply out of order\n");
            return 1;
        }
        if (i >= 0) t[i] = dt;
        if (!req_bytes) {
            char *b;
            desc_encode(&q, &b, &req_bytes);
            free(b);
        }
        desc_free(&q);
        desc_free(&r);
    }
    report("descriptor encode+decode", t, n, req_bytes);
    /* pass 2: the same number of bytes, no msgpack */
    char *raw = hm_calloc(1, req_bytes);
    raw[0] = 'R';
    char back[4096];
    for (int i = -warm; i < n; i++) {
        double t0 = hm_now();
        if (zmq_send(s, raw, req_bytes, 0) < 0 || zmq_recv(s, back, sizeof back, 0) < 0) {
            fprintf(stderr, "raw round trip: %s\n", zmq_strerror(errno));
            return 1;
        }
        if (i >= 0) t[i] = hm_now() - t0;
    }
    report("raw zmq, same size", t, n, req_bytes);
    zmq_send(s, "QUIT", 4, 0);
    int status;
    waitpid(pid, &status, 0);
    tp_close(s);
    tp_term();
    free(t);
    free(raw);
    if (strncmp(url, "ipc://", 6) == 0) unlink(url + 6); /* libzmq leaves the bound file behind */
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
