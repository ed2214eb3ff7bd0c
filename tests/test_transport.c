/* test_transport.c - ZeroMQ helpers and the stage runtime: malformed frames are rejected, not
 * fatal; DEALER/ROUTER with several requests in flight; liveness and resend bookkeeping; and a
 * real stage process (this binary re-executed as "test_transport stage ...") answering HEALTH,
 * STATS, DRAIN, SHUTDOWN, detecting a silent peer by heartbeats, and stopping on SIGTERM. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "desc.h"
#include "hm.h"
#include "stage.h"
#include "pool.h"
#include "transport.h"

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* every ipc path handed out, unlinked at exit (libzmq leaves bound ipc files behind) */
static char g_paths[64][128];
static int g_npaths;

static void urls(char *a, char *b, const char *sa, const char *sb)
{
    static int n;
    sprintf(a, "ipc:///tmp/hm-test-tp-%d-%d.%s", (int)getpid(), n, sa);
    sprintf(b, "ipc:///tmp/hm-test-tp-%d-%d.%s", (int)getpid(), n, sb);
    n++;
    if (g_npaths + 2 <= 64) {
        strcpy(g_paths[g_npaths++], a + 6);
        strcpy(g_paths[g_npaths++], b + 6);
    }
}

static void test_pushpull_malformed(void **st)
{
    (void)st;
    char url[128], unused[128];
    urls(url, unused, "pp", "x");
    tp_endpoint_t pe = {"out", url, TP_BIND, ZMQ_PUSH}, le = {"in", url, TP_CONNECT, ZMQ_PULL};
    void *push, *pull;
    assert_int_equal(tp_open(&pe, &push), HM_OK);
    assert_int_equal(tp_open(&le, &pull), HM_OK);
    desc_t d, got;
    assert_int_equal(tp_recv(pull, NULL, &got, ZMQ_DONTWAIT), TP_AGAIN);
    /* garbage, a valid-msgpack non-descriptor, and a 6-frame envelope: all rejected */
    assert_int_equal(zmq_send(push, "\xc1garbage", 8, 0), 8);
    assert_int_equal(zmq_send(push, "\x93\x01\x02\x03", 4, 0), 4);
    for (int i = 0; i < 6; i++) assert_int_equal(zmq_send(push, "id", 2, ZMQ_SNDMORE), 2);
    desc_init(&d, DESC_HEALTH, 1, 1);
    char *buf;
    size_t n;
    assert_int_equal(desc_encode(&d, &buf, &n), HM_OK);
    assert_int_equal(zmq_send(push, buf, n, 0), (int)n);
    free(buf);
    desc_free(&d);
    /* then a good one */
    desc_init(&d, DESC_FRAMES, 5, 6);
    int32_t codes[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    desc_set_i32s(&d, "codes", codes, 8);
    assert_int_equal(tp_send(push, NULL, &d, 0), HM_OK);
    assert_int_equal(tp_recv(pull, NULL, &got, 0), HM_ERR);
    assert_int_equal(tp_recv(pull, NULL, &got, 0), HM_ERR);
    assert_int_equal(tp_recv(pull, NULL, &got, 0), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "envelope"));
    assert_int_equal(tp_recv(pull, NULL, &got, 0), HM_OK);
    assert_true(desc_equal(&d, &got));
    desc_free(&got);
    desc_free(&d);
    tp_close(push);
    tp_close(pull);
    /* bind errors are reported, not fatal */
    tp_endpoint_t bad = {"bad", "ipc:///nonexistent-dir/x/y.sock", TP_BIND, ZMQ_PULL};
    void *s;
    assert_int_equal(tp_open(&bad, &s), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "bad"));
}

static void test_dealer_router_inflight(void **st)
{
    (void)st;
    char url[128], unused[128];
    urls(url, unused, "dr", "x");
    tp_endpoint_t re = {"router", url, TP_BIND, ZMQ_ROUTER}, de = {"dealer", url, TP_CONNECT, ZMQ_DEALER};
    void *router, *dealer;
    assert_int_equal(tp_open(&re, &router), HM_OK);
    assert_int_equal(tp_open(&de, &dealer), HM_OK);
    const int n = 10;
    for (int i = 0; i < n; i++) {
        desc_t d;
        desc_init(&d, DESC_EXTEND, 42, (uint64_t)i);
        int rc;
        for (int tries = 0; (rc = tp_send(dealer, NULL, &d, ZMQ_DONTWAIT)) == TP_AGAIN && tries < 500; tries++)
            sleep_ms(2); /* ZMQ_IMMEDIATE: nothing is queued before the connection is up */
        assert_int_equal(rc, HM_OK);
        desc_free(&d);
    }
    /* the server collects all ten before answering any, in reverse order */
    tp_peer_t from[10];
    uint64_t seqs[10];
    for (int i = 0; i < n; i++) {
        desc_t d;
        assert_int_equal(tp_recv(router, &from[i], &d, 0), HM_OK);
        assert_int_equal(from[i].nframes, 1);
        seqs[i] = d.seq;
        desc_free(&d);
    }
    for (int i = n - 1; i >= 0; i--) {
        desc_t r;
        desc_init(&r, DESC_HIDDEN, 42, seqs[i]);
        assert_int_equal(tp_send(router, &from[i], &r, 0), HM_OK);
        desc_free(&r);
    }
    int seen[10] = {0};
    for (int i = 0; i < n; i++) {
        desc_t r;
        assert_int_equal(tp_recv(dealer, NULL, &r, 0), HM_OK);
        assert_int_equal(r.type, DESC_HIDDEN);
        assert_true(r.seq < 10);
        assert_int_equal(r.seq, (uint64_t)(n - 1 - i));
        seen[r.seq]++;
        desc_free(&r);
    }
    for (int i = 0; i < n; i++) assert_int_equal(seen[i], 1);
    /* ROUTER_MANDATORY: a reply to an unknown peer is an error, not a silent drop */
    tp_peer_t ghost = {.nframes = 1, .len = {5}};
    memcpy(ghost.id[0], "ghost", 5);
    desc_t r;
    desc_init(&r, DESC_HIDDEN, 1, 1);
    assert_int_equal(tp_send(router, &ghost, &r, ZMQ_DONTWAIT), HM_ERR);
    desc_free(&r);
    tp_close(router);
    tp_close(dealer);
}

static void test_liveness(void **st)
{
    (void)st;
    tp_live_t l;
    tp_live_init(&l, 1.0, 3, 100.0);
    assert_int_equal(tp_live_tick(&l, 100.5), 0);
    assert_int_equal(tp_live_wait_ms(&l, 100.5), 501);
    assert_int_equal(tp_live_tick(&l, 101.0), 1);
    assert_int_equal(tp_live_tick(&l, 102.0), 1);
    assert_false(tp_live_dead(&l));
    tp_live_seen(&l, 102.1); /* any traffic restores full liveness */
    assert_int_equal(tp_live_tick(&l, 103.0), 1);
    assert_int_equal(tp_live_tick(&l, 104.0), 1);
    assert_false(tp_live_dead(&l));
    assert_int_equal(tp_live_tick(&l, 105.0), 1);
    assert_true(tp_live_dead(&l));
    /* a long stall counts once, not as a burst of ticks */
    tp_live_init(&l, 1.0, 3, 0.0);
    assert_int_equal(tp_live_tick(&l, 10.0), 1);
    assert_int_equal(tp_live_tick(&l, 10.5), 0);
    assert_false(tp_live_dead(&l));
}

static void test_pending_resend(void **st)
{
    (void)st;
    char url[128], unused[128];
    urls(url, unused, "pend", "x");
    tp_endpoint_t pe = {"out", url, TP_BIND, ZMQ_PUSH}, le = {"in", url, TP_CONNECT, ZMQ_PULL};
    void *push, *pull;
    assert_int_equal(tp_open(&pe, &push), HM_OK);
    assert_int_equal(tp_open(&le, &pull), HM_OK);
    tp_pending_t *p = tp_pending_new();
    for (int req = 1; req <= 2; req++)
        for (int s = 0; s < 3; s++) {
            desc_t d;
            desc_init(&d, DESC_FRAMES, (uint64_t)req, (uint64_t)s);
            assert_int_equal(tp_pending_add(p, &d), HM_OK);
            desc_free(&d);
        }
    assert_int_equal(tp_pending_count(p), 6);
    assert_int_equal(tp_pending_ack(p, 1, 1), 1);
    assert_int_equal(tp_pending_ack(p, 1, 1), 0);
    tp_pending_drop_req(p, 2);
    assert_int_equal(tp_pending_count(p), 2);
    assert_int_equal(tp_pending_resend(p, push, NULL, 0), HM_OK);
    uint64_t want[2] = {0, 2};
    for (int i = 0; i < 2; i++) {
        desc_t d;
        assert_int_equal(tp_recv(pull, NULL, &d, 0), HM_OK);
        assert_int_equal(d.req_id, 1);
        assert_int_equal(d.seq, want[i]);
        desc_free(&d);
    }
    assert_int_equal(tp_pending_count(p), 2); /* resend keeps them until acked */
    tp_pending_free(p);
    tp_close(push);
    tp_close(pull);
}

static void test_send_url(void **st)
{
    (void)st;
    char url[128], unused[128];
    urls(url, unused, "late", "x");
    /* the receiver binds only after the first send: the message must wait, not vanish */
    desc_t d, got;
    desc_init(&d, DESC_AUDIO_DONE, 77, 1);
    desc_set_str(&d, "out", "/tmp/x.wav");
    assert_int_equal(tp_send_url(url, &d), HM_OK);
    tp_endpoint_t le = {"in", url, TP_BIND, ZMQ_PULL};
    void *pull;
    assert_int_equal(tp_open(&le, &pull), HM_OK);
    zmq_pollitem_t pi = {pull, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&pi, 1, 3000), 1);
    assert_int_equal(tp_recv(pull, NULL, &got, 0), HM_OK);
    assert_true(desc_equal(&d, &got));
    desc_free(&got);
    d.seq = 2; /* cached socket reused */
    assert_int_equal(tp_send_url(url, &d), HM_OK);
    assert_int_equal(tp_recv(pull, NULL, &got, 0), HM_OK);
    assert_int_equal(got.seq, 2);
    desc_free(&got);
    assert_int_equal(tp_send_url("bogus://x", &d), HM_ERR);
    assert_int_equal(tp_send_url("", &d), HM_ERR);
    desc_free(&d);
    tp_url_cache_clear();
    tp_close(pull);
}

static void test_parse_args(void **st)
{
    (void)st;
    long frames = 7;
    double cfg = 0;
    const char *out = NULL;
    int dry = 0;
    const stage_opt_t opts[] = {{"max-frames", STAGE_OPT_INT, &frames, "frames"},
                                {"cfg", STAGE_OPT_DOUBLE, &cfg, "guidance"},
                                {"out", STAGE_OPT_STR, &out, "file"},
                                {"dry-run", STAGE_OPT_FLAG, &dry, "no work"},
                                {0}};
    char *argv1[] = {"hm-x", "--config", "p.yaml", "--replica=2", "--max-frames", "12", "--cfg=1.5",
                     "--out", "a.wav", "--dry-run", "--log-level", "warn", "--stage-name", "bb", NULL};
    stage_args_t a;
    assert_int_equal(stage_parse_args(14, argv1, "x", opts, &a), HM_OK);
    assert_string_equal(a.config, "p.yaml");
    assert_string_equal(a.stage_name, "bb");
    assert_int_equal(a.replica, 2);
    assert_int_equal(a.log_level, HM_LOG_WARN);
    assert_int_equal(frames, 12);
    assert_true(cfg == 1.5);
    assert_string_equal(out, "a.wav");
    assert_int_equal(dry, 1);
    hm_log_set_level(HM_LOG_INFO);
    char *bad1[] = {"hm-x", "--bogus", NULL};
    assert_int_equal(stage_parse_args(2, bad1, "x", opts, &a), HM_ERR);
    assert_non_null(strstr(hm_errmsg(), "unknown option --bogus"));
    char *bad2[] = {"hm-x", "--max-frames", "12x", NULL};
    assert_int_equal(stage_parse_args(3, bad2, "x", opts, &a), HM_ERR);
    char *bad3[] = {"hm-x", "--config", NULL};
    assert_int_equal(stage_parse_args(2, bad3, "x", opts, &a), HM_ERR);
    char *bad4[] = {"hm-x", "--log-level", "loud", NULL};
    assert_int_equal(stage_parse_args(3, bad4, "x", opts, &a), HM_ERR);
    char *bad5[] = {"hm-x", "--dry-run=1", NULL};
    assert_int_equal(stage_parse_args(2, bad5, "x", opts, &a), HM_ERR);
    char *none[] = {"hm-x", NULL};
    assert_int_equal(stage_parse_args(1, none, "tok", NULL, &a), HM_OK);
    assert_string_equal(a.stage_name, "tok");
    assert_null(a.config);
    assert_int_equal(a.replica, 0);
}

/* ---- a real stage process ---- */

static int on_data(stage_t *st, int sock, const tp_peer_t *from, desc_t *d, void *user)
{
    (void)sock;
    (void)from;
    (void)user;
    if (desc_param(d, "fail")) return hm_err("asked to fail");
    /* record the latency the test dictates, so the percentiles can be checked exactly */
    stage_stat_time(st, "work", desc_f64_or(d, "ms", 0) / 1000.0);
    stage_stat_add(st, "frames", (int64_t)desc_i64_or(d, "n", 1));
    return HM_OK;
}

/* backbone-style op socket (ROUTER): answer every op with HIDDEN of the same seq; FRAMES with a
 * "reply" param also get a REPLY pushed to that endpoint */
static int on_op(stage_t *st, int sock, const tp_peer_t *from, desc_t *d, void *user)
{
    (void)user;
    desc_t r;
    desc_init(&r, DESC_HIDDEN, d->req_id, d->seq);
    int rc = stage_reply(st, sock, from, &r);
    desc_free(&r);
    return rc;
}

static int on_data_reply(stage_t *st, int sock, const tp_peer_t *from, desc_t *d, void *user)
{
    const char *url;
    if (desc_get_str(d, "reply", &url) == HM_OK) {
        desc_t r;
        desc_init(&r, DESC_REPLY, d->req_id, d->seq);
        desc_set_i64(&r, "frames", stage_stat_get(st, "frames"));
        int rc = tp_send_url(url, &r);
        desc_free(&r);
        return rc;
    }
    return on_data(st, sock, from, d, user);
}

static void on_peer(stage_t *st, int sock, int alive, void *user)
{
    (void)sock;
    (void)user;
    stage_stat_add(st, alive ? "peer_alive" : "peer_dead", 1);
}

static void on_drain(stage_t *st, void *user)
{
    (void)user;
    stage_stat_add(st, "drained", 1);
}

/* stage CTL_URL DATA_URL DEALER_URL OPS_URL */
static int stage_child(int argc, char **argv)
{
    if (argc != 6) return 2;
    stage_t *st;
    if (stage_new("tstage", 1, &st) != HM_OK) return 3;
    tp_endpoint_t data = {"data", argv[3], TP_BIND, ZMQ_PULL}, peer = {"peer", argv[4], TP_CONNECT, ZMQ_DEALER},
                  ops = {"ops", argv[5], TP_BIND, ZMQ_ROUTER};
    int ds = stage_add_socket(st, &data, on_data_reply, NULL);
    int ps = stage_add_socket(st, &peer, NULL, NULL);
    int os = stage_add_socket(st, &ops, on_op, NULL);
    if (ds < 0 || ps < 0 || os < 0 || stage_add_control(st, argv[2]) != HM_OK ||
        stage_watch(st, ps, 0.05, 3, on_peer, NULL) != HM_OK) {
        LOG_ERROR("%s", hm_errmsg());
        return 4;
    }
    stage_on_drain(st, on_drain, NULL);
    int rc = stage_run(st);
    stage_free(st);
    tp_url_cache_clear();
    tp_term();
    return rc == HM_OK ? 0 : 5;
}

typedef struct {
    char ctl[128], data[128], peer[128], ops[128], reply[128];
    pid_t pid;
    void *push, *router;
} child_t;

static void child_up(child_t *c)
{
    urls(c->ctl, c->data, "ctl", "data");
    urls(c->peer, c->ops, "peer", "ops");
    char unused[128];
    urls(c->reply, unused, "reply", "x");
    tp_endpoint_t re = {"router", c->peer, TP_BIND, ZMQ_ROUTER};
    assert_int_equal(tp_open(&re, &c->router), HM_OK);
    c->pid = fork();
    assert_true(c->pid >= 0);
    if (c->pid == 0) {
        char *args[] = {"test_transport", "stage", c->ctl, c->data, c->peer, c->ops, NULL};
        execv("/proc/self/exe", args);
        _exit(127);
    }
    tp_endpoint_t pe = {"data", c->data, TP_CONNECT, ZMQ_PUSH};
    assert_int_equal(tp_open(&pe, &c->push), HM_OK);
    /* wait until it answers HEALTH */
    desc_t q, r;
    desc_init(&q, DESC_HEALTH, 1, 0);
    int ok = 0;
    for (int i = 0; i < 50 && !ok; i++) {
        ok = tp_request(c->ctl, &q, &r, 100) == HM_OK;
        if (ok) {
            const char *s;
            assert_int_equal(desc_get_str(&r, "status", &s), HM_OK);
            assert_string_equal(s, "ok");
            assert_int_equal(desc_get_str(&r, "stage", &s), HM_OK);
            assert_string_equal(s, "tstage.1");
            assert_int_equal(desc_i64_or(&r, "pid", 0), c->pid);
            desc_free(&r);
        }
    }
    desc_free(&q);
    if (!ok) fail_msg("stage never answered HEALTH: %s", hm_errmsg());
}

static int child_wait(child_t *c, int timeout_ms)
{
    int status = -1;
    for (int i = 0; i < timeout_ms / 10; i++) {
        if (waitpid(c->pid, &status, WNOHANG) == c->pid) goto done;
        sleep_ms(10);
    }
    kill(c->pid, SIGKILL);
    waitpid(c->pid, &status, 0);
    status = -1;
done:
    tp_close(c->push);
    tp_close(c->router);
    return status;
}

static void ask(child_t *c, desc_type_t t, desc_t *r)
{
    desc_t q;
    desc_init(&q, t, 9, 0);
    if (tp_request(c->ctl, &q, r, 2000) != HM_OK) fail_msg("%s: %s", desc_type_name(t), hm_errmsg());
    desc_free(&q);
}

static void push_data(child_t *c, double ms, int fail)
{
    desc_t d;
    desc_init(&d, DESC_FRAMES, 3, 0);
    desc_set_f64(&d, "ms", ms);
    desc_set_i64(&d, "n", 2);
    if (fail) desc_set_i64(&d, "fail", 1);
    int rc;
    for (int tries = 0; (rc = tp_send(c->push, NULL, &d, ZMQ_DONTWAIT)) == TP_AGAIN && tries < 500; tries++) sleep_ms(2);
    assert_int_equal(rc, HM_OK);
    desc_free(&d);
}

/* Pump the parent's ROUTER for ms milliseconds; echo heartbeats when echo is set.  Returns the
 * number of heartbeats received. */
static int pump_router(child_t *c, int ms, int echo)
{
    int n = 0;
    double end = hm_now() + ms / 1000.0;
    while (hm_now() < end) {
        zmq_pollitem_t pi = {c->router, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&pi, 1, 10) <= 0) continue;
        desc_t d;
        tp_peer_t from;
        if (tp_recv(c->router, &from, &d, 0) != HM_OK) continue;
        if (d.type == DESC_HEARTBEAT) {
            n++;
            if (echo) tp_send(c->router, &from, &d, ZMQ_DONTWAIT);
        }
        desc_free(&d);
    }
    return n;
}

static void test_stage_process(void **st)
{
    (void)st;
    child_t c;
    child_up(&c);
    /* 90 fast + 10 slow units of work, one failure, and garbage: the stage keeps serving */
    for (int i = 0; i < 90; i++) push_data(&c, 1.0, 0);
    for (int i = 0; i < 10; i++) push_data(&c, 100.0, 0);
    push_data(&c, 1.0, 1);
    assert_int_equal(zmq_send(c.push, "\xdd\xff\xff\xff\xff", 5, 0), 5);
    desc_t r;
    int64_t rx = 0;
    for (int i = 0; i < 100 && rx < 101; i++) {
        ask(&c, DESC_STATS, &r);
        rx = desc_i64_or(&r, "c.rx.data", 0);
        if (rx < 101) {
            desc_free(&r);
            sleep_ms(20);
        }
    }
    assert_int_equal(rx, 101);
    for (int i = 0; i < 100 && desc_i64_or(&r, "c.bad.data", 0) < 1; i++) {
        desc_free(&r);
        sleep_ms(20);
        ask(&c, DESC_STATS, &r);
    }
    assert_int_equal(desc_i64_or(&r, "c.frames", 0), 200);
    assert_int_equal(desc_i64_or(&r, "c.err.frames", 0), 1);
    assert_int_equal(desc_i64_or(&r, "c.bad.data", 0), 1);
    assert_int_equal(desc_i64_or(&r, "l.work.n", 0), 100);
    double p50 = desc_f64_or(&r, "l.work.p50_ms", -1), p99 = desc_f64_or(&r, "l.work.p99_ms", -1);
    if (p50 < 0.88 || p50 > 1.13 || p99 < 88 || p99 > 100.0001)
        fail_msg("work p50 %.3f ms (want ~1), p99 %.3f ms (want ~100)", p50, p99);
    assert_int_equal(desc_i64_or(&r, "l.msg.frames.n", 0), 101);
    desc_free(&r);

    /* several ops in flight on the ROUTER socket, answered through stage_reply */
    tp_endpoint_t de = {"ops", c.ops, TP_CONNECT, ZMQ_DEALER}, re = {"reply", c.reply, TP_BIND, ZMQ_PULL};
    void *dealer, *reply;
    assert_int_equal(tp_open(&de, &dealer), HM_OK);
    assert_int_equal(tp_open(&re, &reply), HM_OK);
    for (int i = 0; i < 5; i++) {
        desc_t q;
        desc_init(&q, DESC_EXTEND, 5, (uint64_t)i);
        int rc;
        for (int tries = 0; (rc = tp_send(dealer, NULL, &q, ZMQ_DONTWAIT)) == TP_AGAIN && tries < 500; tries++) sleep_ms(2);
        assert_int_equal(rc, HM_OK);
        desc_free(&q);
    }
    for (int i = 0; i < 5; i++) {
        zmq_pollitem_t pi = {dealer, 0, ZMQ_POLLIN, 0};
        assert_int_equal(zmq_poll(&pi, 1, 3000), 1);
        desc_t a;
        assert_int_equal(tp_recv(dealer, NULL, &a, 0), HM_OK);
        assert_int_equal(a.type, DESC_HIDDEN);
        assert_int_equal(a.seq, (uint64_t)i);
        desc_free(&a);
    }
    /* a reply endpoint known only from the request (tp_send_url in the stage) */
    desc_t q;
    desc_init(&q, DESC_FRAMES, 8, 1);
    desc_set_str(&q, "reply", c.reply);
    assert_int_equal(tp_send(c.push, NULL, &q, 0), HM_OK);
    desc_free(&q);
    zmq_pollitem_t rpi = {reply, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&rpi, 1, 3000), 1);
    assert_int_equal(tp_recv(reply, NULL, &r, 0), HM_OK);
    assert_int_equal(r.type, DESC_REPLY);
    assert_int_equal(desc_i64_or(&r, "frames", -1), 200);
    desc_free(&r);
    tp_close(dealer);
    tp_close(reply);

    /* heartbeats: the stage's DEALER beats every 50 ms; unanswered it declares the peer dead
     * after 3 misses, answered it comes back */
    int beats = pump_router(&c, 400, 0);
    assert_true(beats >= 3);
    ask(&c, DESC_STATS, &r);
    assert_int_equal(desc_i64_or(&r, "c.peer_dead", 0), 1);
    assert_int_equal(desc_i64_or(&r, "c.peer_alive", 0), 0);
    desc_free(&r);
    pump_router(&c, 300, 1);
    ask(&c, DESC_HEALTH, &r);
    assert_true(desc_i64_or(&r, "live.peer", -1) >= 1);
    desc_free(&r);
    ask(&c, DESC_STATS, &r);
    assert_int_equal(desc_i64_or(&r, "c.peer_dead", 0), 1);
    assert_int_equal(desc_i64_or(&r, "c.peer_alive", 0), 1);
    desc_free(&r);

    /* unknown control message -> ERROR reply; DRAIN; SHUTDOWN */
    ask(&c, DESC_PREFILL, &r);
    assert_int_equal(r.type, DESC_ERROR);
    desc_free(&r);
    ask(&c, DESC_DRAIN, &r);
    const char *s;
    assert_int_equal(desc_get_str(&r, "status", &s), HM_OK);
    assert_string_equal(s, "draining");
    desc_free(&r);
    ask(&c, DESC_HEALTH, &r);
    assert_int_equal(desc_get_str(&r, "status", &s), HM_OK);
    assert_string_equal(s, "draining");
    desc_free(&r);
    ask(&c, DESC_STATS, &r);
    assert_int_equal(desc_i64_or(&r, "c.drained", 0), 1);
    desc_free(&r);
    ask(&c, DESC_SHUTDOWN, &r);
    assert_int_equal(r.type, DESC_REPLY);
    desc_free(&r);
    /* the stage keeps its control socket a moment after that answer (libzmq may drop a closing
     * bound socket's queue): a request now gets an ERROR, not silence */
    ask(&c, DESC_HEALTH, &r);
    assert_int_equal(r.type, DESC_ERROR);
    assert_int_equal(desc_get_str(&r, "error", &s), HM_OK);
    assert_string_equal(s, "stage stopping");
    desc_free(&r);
    int status = child_wait(&c, 5000);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_stage_sigterm(void **st)
{
    (void)st;
    child_t c;
    child_up(&c);
    assert_int_equal(kill(c.pid, SIGTERM), 0);
    int status = child_wait(&c, 3000);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    /* nobody answers now: the request times out with a message instead of hanging */
    desc_t q, r;
    desc_init(&q, DESC_HEALTH, 1, 0);
    double t0 = hm_now();
    assert_int_equal(tp_request(c.ctl, &q, &r, 200), HM_ERR);
    assert_true(hm_now() - t0 < 1.0);
    assert_non_null(strstr(hm_errmsg(), "no reply"));
    desc_free(&q);
}

/* undo stage_new's process-wide signal setup for the rest of this test binary */
static void undo_stage_signals(void)
{
    signal(SIGCHLD, SIG_DFL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

/* ---- a stage in this process: pool releases and lease reclaim driven by stage_run ---- */

typedef struct {
    pool_t *pool;
    int ticks;
    uint64_t t_released;
} inproc_t;

static void inproc_tick(stage_t *st, void *user)
{
    inproc_t *x = user;
    x->ticks++;
    if (x->ticks == 1) {
        /* hand out every slot; release three through the release socket, keep one */
        for (int i = 0; i < 4; i++) {
            uint32_t slot;
            if (pool_acquire(x->pool, 0, &slot) != HM_OK) fail_msg("%s", hm_errmsg());
            desc_t d;
            desc_init(&d, DESC_LATENTS, 1, (uint64_t)i);
            uint64_t shape[1] = {16};
            if (pool_fill_desc(x->pool, slot, 0, DESC_DT_F32, 1, shape, &d) != HM_OK) fail_msg("%s", hm_errmsg());
            const void *p;
            if (pool_map(&d, &p) != HM_OK) fail_msg("%s", hm_errmsg());
            if (i < 3 && pool_release(&d) != HM_OK) fail_msg("%s", hm_errmsg());
            desc_free(&d);
        }
        return;
    }
    uint64_t rel, recl;
    pool_counters(x->pool, NULL, &rel, &recl);
    if (rel == 3 && !x->t_released) x->t_released = (uint64_t)x->ticks;
    if (recl == 1 || x->ticks > 200) stage_stop(st);
}

static void test_stage_inproc_pool(void **st_)
{
    (void)st_;
    stage_t *st;
    assert_int_equal(stage_new("inproc", 0, &st), HM_OK);
    char rel[128], unused[128];
    urls(rel, unused, "inrel", "x");
    char name[64];
    snprintf(name, sizeof name, "test-inproc-%d", (int)getpid());
    inproc_t x = {0};
    assert_int_equal(pool_create(POOL_SHM, name, 4, 4096, &x.pool), HM_OK);
    pool_set_lease(x.pool, 0.3);
    assert_int_equal(pool_listen(x.pool, rel), HM_OK);
    assert_int_equal(stage_add_pool(st, x.pool), HM_OK);
    assert_int_equal(stage_add_timer(st, 0.02, inproc_tick, &x), HM_OK);
    double t0 = hm_now();
    assert_int_equal(stage_run(st), HM_OK);
    double dt = hm_now() - t0;
    uint64_t acq, relc, recl;
    pool_counters(x.pool, &acq, &relc, &recl);
    assert_int_equal(acq, 4);
    assert_int_equal(relc, 3);   /* the loop read the RELEASEs off the pool's socket */
    assert_int_equal(recl, 1);   /* and reclaimed the unreleased slot after its lease */
    assert_true(x.t_released > 0 && x.t_released < 20);
    assert_true(dt >= 0.3 && dt < 3.0);
    assert_int_equal(pool_free_slots(x.pool), 4);
    stage_free(st);
    pool_destroy(x.pool);
    pool_unmap_all();
    undo_stage_signals();
}

/* ---- the loop's check: a process that cannot go on (a lost CUDA context) leaves stage_run ---- */

static int g_checks;
static int check_third(void *user, int thorough)
{
    (void)user, (void)thorough;
    if (++g_checks < 3) return HM_OK;
    return hm_err("context lost (test)");
}
static void tick_nothing(stage_t *st, void *user) { (void)st, (void)user; }

static void test_stage_check(void **st_)
{
    (void)st_;
    stage_t *st;
    assert_int_equal(stage_new("checked", 0, &st), HM_OK);
    assert_int_equal(stage_add_timer(st, 0.01, tick_nothing, NULL), HM_OK);
    stage_on_check(st, check_third, NULL);
    const double t0 = hm_now();
    assert_int_equal(stage_lost(st), 0);
    assert_int_equal(stage_run(st), HM_ERR); /* not a graceful stop: the process exits with 75 */
    assert_int_equal(stage_lost(st), 1);
    assert_int_equal(g_checks, 3);
    assert_true(hm_now() - t0 < 2.0);
    assert_non_null(strstr(hm_errmsg(), "context lost"));
    stage_free(st);
    undo_stage_signals();
}

/* Before a stage fails a request it asks the check: a broken process (a lost CUDA context)
 * exits with status HM_EXIT_LOST there and then, answering nothing; a sound one goes on to fail the
 * request. */
static int g_thorough;
static int check_ok(void *user, int thorough) { (void)user, g_thorough = thorough; return HM_OK; }
static int check_lost(void *user, int thorough) { (void)user, (void)thorough; return hm_err("context lost (test)"); }

static int exit_status_of(stage_check_fn fn)
{
    const pid_t pid = fork();
    if (pid == 0) {
        stage_t *st;
        if (stage_new("gate", 0, &st) != HM_OK) _exit(4);
        if (fn) stage_on_check(st, fn, NULL);
        stage_exit_if_broken(st);
        _exit(0); /* returned: the request would be failed as usual */
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
    return WEXITSTATUS(status);
}

static void test_stage_exit_if_broken(void **st_)
{
    (void)st_;
    assert_int_equal(exit_status_of(NULL), 0);       /* no check registered (a cpu stage) */
    assert_int_equal(exit_status_of(check_ok), 0);   /* the context is fine: fail the request */
    assert_int_equal(exit_status_of(check_lost), HM_EXIT_LOST); /* lost: exit, as after a crash */
    stage_exit_if_broken(NULL);                      /* no stage: nothing to do */
    stage_t *st; /* the gate asks for the thorough check (the loop's turns do not) */
    assert_int_equal(stage_new("gate", 0, &st), HM_OK);
    stage_on_check(st, check_ok, NULL);
    g_thorough = 0;
    stage_exit_if_broken(st);
    assert_int_equal(g_thorough, 1);
    stage_free(st);
    undo_stage_signals();
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "stage") == 0) return stage_child(argc, argv);
    hm_log_set_name("test_transport");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pushpull_malformed), cmocka_unit_test(test_dealer_router_inflight),
        cmocka_unit_test(test_liveness),           cmocka_unit_test(test_pending_resend),
        cmocka_unit_test(test_send_url),
        cmocka_unit_test(test_parse_args),         cmocka_unit_test(test_stage_process),
        cmocka_unit_test(test_stage_sigterm),      cmocka_unit_test(test_stage_inproc_pool),
        cmocka_unit_test(test_stage_check),        cmocka_unit_test(test_stage_exit_if_broken),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    /* a failed test leaves its sockets open (cmocka jumps out of it), and zmq_ctx_term would wait
     * for them forever: a failure then hung the test run instead of failing it */
    if (rc == 0) tp_term();
    for (int i = 0; i < g_npaths; i++) unlink(g_paths[i]);
    return rc;
}
