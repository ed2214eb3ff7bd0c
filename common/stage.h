/* stage.h - the runtime every stages/<name>/main.c is built on: argument parsing, logging name,
 * signals (signalfd in the poll loop), systemd notify/watchdog, the main loop that dispatches
 * received descriptors to callbacks, timers, heartbeats, the control socket (HEALTH / STATS /
 * DRAIN / SHUTDOWN), per-stage counters and latency histograms, and NVTX range macros.
 *
 * Usage (a whole stage main):
 *
 *   static long max_frames = 100;
 *   static const stage_opt_t opts[] = {
 *       {"max-frames", STAGE_OPT_INT, &max_frames, "frames per request"}, {0}};
 *
 *   static int on_frames(stage_t *st, int sock, const tp_peer_t *from, desc_t *d, void *user) {
 *       double t0 = hm_now();
 *       const void *p;
 *       if (pool_map(d, &p) != HM_OK) return HM_ERR;     // logged + counted by the loop
 *       ...                                              // work
 *       pool_release(d);
 *       stage_stat_time(st, "decode", hm_now() - t0);
 *       return HM_OK;                                    // the loop desc_free()s d
 *   }
 *
 *   int main(int argc, char **argv) {
 *       stage_args_t a;
 *       int rc = stage_parse_args(argc, argv, "vocoder", opts, &a);
 *       if (rc == STAGE_HELP) return 0;
 *       if (rc != HM_OK) { fprintf(stderr, "vocoder: %s\n", hm_errmsg()); return 2; }
 *       stage_t *st;
 *       if (stage_new(a.stage_name, a.replica, &st) != HM_OK) ...;   // FIRST: before any zmq use
 *       tp_endpoint_t in = {"latents", "ipc:///tmp/hm/voc.sock", TP_BIND, ZMQ_PULL};
 *       if (stage_add_socket(st, &in, on_frames, NULL) < 0 ||
 *           stage_add_control(st, "ipc:///tmp/hm/voc.ctl") != HM_OK) { LOG_ERROR("%s", hm_errmsg()); return 1; }
 *       rc = stage_run(st);                                 // until SIGTERM/SIGINT or SHUTDOWN
 *       stage_free(st);
 *       return rc == HM_OK ? 0 : 1;
 *   }
 *
 * Control protocol (control socket is a ROUTER; clients use tp_request):
 *   HEALTH   -> REPLY {status: "ok"|"draining", stage, replica, pid, uptime_s,
 *                      live.<socket>: liveness left for each watched socket}
 *   STATS    -> REPLY {c.<name>: counter, l.<name>.n / .p50_ms / .p99_ms / .max_ms} plus the
 *               loop's own: c.rx.<socket>, c.bad.<socket>, c.err.<type>, l.msg.<type>
 *   DRAIN    -> REPLY {status: "draining"}; stage_draining() becomes true, the drain callback runs
 *   SHUTDOWN -> REPLY {status: "ok"}; the loop stops after the reply
 *   anything else -> ERROR {error: "..."}
 *
 * Signals: stage_new blocks SIGTERM/SIGINT (read through a signalfd in the loop: graceful stop)
 * and ignores SIGPIPE and SIGCHLD (children are auto-reaped; a stage that must waitpid() should
 * restore SIGCHLD itself).  Because blocked signals are inherited by threads, stage_new must
 * run before the first ZeroMQ call creates libzmq's I/O threads.
 * Threading: one stage, one thread. */
#ifndef HM_STAGE_H
#define HM_STAGE_H

#include <stdint.h>

#include "desc.h"
#include "hm.h"
#include "pool.h"
#include "transport.h"

#define STAGE_HELP 1 /* stage_parse_args printed --help */

typedef enum { STAGE_OPT_STR, STAGE_OPT_INT, STAGE_OPT_DOUBLE, STAGE_OPT_FLAG } stage_opt_type_t;

/* One extra option of a stage: --name VALUE stored into *dst (const char **, long *, double *,
 * int * set to 1 for a FLAG).  Tables end with {0}. */
typedef struct {
    const char *name;
    stage_opt_type_t type;
    void *dst;
    const char *help;
} stage_opt_t;

typedef struct {
    const char *config;     /* --config FILE (NULL when not given); points into argv */
    const char *stage_name; /* --stage-name NAME, default_name otherwise */
    int replica;            /* --replica N, default 0 */
    enum hm_log_level log_level; /* --log-level debug|info|warn|error, default info (also applied) */
} stage_args_t;

/* Parse argv (--opt VALUE and --opt=VALUE).  HM_OK; STAGE_HELP after printing usage on stdout;
 * HM_ERR with "unknown option --x" / "--replica: 'x' is not an integer" etc. */
int stage_parse_args(int argc, char **argv, const char *default_name, const stage_opt_t *extra, stage_args_t *out);

typedef struct stage stage_t;

/* A received, valid descriptor.  The loop owns d and frees it after the call (to keep it, take
 * it over with desc_move(&mine, d)).  Return HM_ERR with a message to have it logged and counted (c.err.<type>); the
 * loop always carries on.  from: routing envelope for replies on ROUTER sockets. */
typedef int (*stage_msg_fn)(stage_t *st, int sock, const tp_peer_t *from, desc_t *d, void *user);
typedef void (*stage_timer_fn)(stage_t *st, void *user);
/* A watched socket's peer went silent (alive = 0) or came back (alive = 1). */
typedef void (*stage_peer_fn)(stage_t *st, int sock, int alive, void *user);

/* Set the log name ("name" or "name.N" for N > 0), block/ignore signals (see above), open the
 * signalfd.  *out owned by caller (stage_free). */
int stage_new(const char *name, int replica, stage_t **out);
/* Close every socket the stage opened, the signalfd; pools added with stage_add_pool stay the
 * caller's. */
void stage_free(stage_t *st);

/* Answer a message received on socket sock: routed by `from` on ROUTER/REP sockets, plain send
 * on DEALER/PUSH.  Non-blocking; HM_ERR when the peer is gone or its queue is full. */
int stage_reply(stage_t *st, int sock, const tp_peer_t *from, const desc_t *d);

/* Open an endpoint and poll it in the loop; on_msg may be NULL for send-only sockets.
 * Returns the socket index (>= 0) or HM_ERR. */
int stage_add_socket(stage_t *st, const tp_endpoint_t *ep, stage_msg_fn on_msg, void *user);
void *stage_socket(stage_t *st, int sock); /* the zmq socket, for tp_send */
/* Bind the control ROUTER socket at url. */
int stage_add_control(stage_t *st, const char *url);
/* Poll the pool's release socket (pool_listen first) and reclaim its expired leases. */
int stage_add_pool(stage_t *st, pool_t *p);
/* Call fn every period_s seconds from the loop. */
int stage_add_timer(stage_t *st, double period_s, stage_timer_fn fn, void *user);
/* Heartbeats on socket sock: every interval_s the loop sends HEARTBEAT if the socket can send
 * without an address (DEALER, PUSH), and counts an interval without any message received on it
 * (if it can receive) as a miss; after max_missed misses on_dead(alive = 0) runs once, and
 * on_dead(alive = 1) when traffic resumes (then resend unacknowledged work: tp_pending_t).
 * ROUTER and REP sockets echo HEARTBEATs automatically; HEARTBEATs never reach on_msg. */
int stage_watch(stage_t *st, int sock, double interval_s, int max_missed, stage_peer_fn on_dead, void *user);
/* Called once when DRAIN arrives (stop taking new requests, finish the ones in flight). */
void stage_on_drain(stage_t *st, stage_timer_fn fn, void *user);
/* fn(user, 0) after every loop turn: HM_ERR (with hm_errmsg set) when the process cannot go on (a
 * lost CUDA context); the loop then stops, stage_run returns HM_ERR and stage_lost says so, and the
 * process exits with status HM_EXIT_LOST for the supervisor to start a fresh one.
 * stage_exit_if_broken calls fn(user, 1): check thoroughly (ask the driver), whatever it costs. */
typedef int (*stage_check_fn)(void *user, int thorough);
void stage_on_check(stage_t *st, stage_check_fn fn, void *user);
/* The exit status of a stage that leaves because its device context is lost (EX_TEMPFAIL): the
 * process was fine, the GPU (or the MPS server) was not, so hm-launch restarts a stage that had been
 * ready after 1 s, however many restarts came before; an exit before READY still doubles the wait. */
#define HM_EXIT_LOST 75
/* 1 when stage_run stopped because the stage_on_check function said the process must go. */
int stage_lost(const stage_t *st);
/* Call before answering a request with an error.  When the stage_on_check function says the
 * process cannot go on, the error is the process's, not the request's: the process exits at once
 * with status HM_EXIT_LOST and answers nothing, as after a crash, so the clients recover the song as after
 * any restart (the CLI sends it again) where an ERROR would have ended it.  Otherwise it returns. */
void stage_exit_if_broken(stage_t *st);

/* Run until stage_stop, SHUTDOWN, SIGTERM or SIGINT: sd_notify READY=1 on entry, STOPPING=1
 * on exit, WATCHDOG=1 at a third of the systemd watchdog interval when enabled.  HM_OK on a graceful
 * stop, HM_ERR if polling itself failed or the stage_on_check function said the process must go. */
int stage_run(stage_t *st);
void stage_stop(stage_t *st);
/* Called from inside a long computation (a codec window or a long prefill on the CPU can take
 * minutes at the released sizes): the work is progressing, so tell the supervisor (WATCHDOG=1,
 * at most once a second; a no-op without a systemd-style watchdog).  Safe from any code that
 * runs in a stage process, and in programs that are no stage at all. */
void stage_alive(void);
int stage_draining(const stage_t *st);
const char *stage_name(const stage_t *st);

/* Counters and latency histograms reported by STATS (names <= 40 chars; up to 64 of each;
 * further names are dropped with one warning).  Latency buckets are 10 per decade from 1 us
 * to 1000 s, so percentiles are within about 12 %. */
void stage_stat_add(stage_t *st, const char *name, int64_t n);
void stage_stat_time(stage_t *st, const char *name, double seconds);
int64_t stage_stat_get(const stage_t *st, const char *name);
double stage_stat_percentile(const stage_t *st, const char *name, double q); /* seconds; -1 if none */

/* NVTX ranges for Nsight Systems: nothing without HM_CUDA. */
#ifdef HM_CUDA
#include <nvtx3/nvToolsExt.h>
#define HM_NVTX_PUSH(name) nvtxRangePushA(name)
#define HM_NVTX_POP() nvtxRangePop()
#else
#define HM_NVTX_PUSH(name) ((void)0)
#define HM_NVTX_POP() ((void)0)
#endif

#endif
