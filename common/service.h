/* service.h - the shape of a stage's logic, separate from the process around it.
 *
 * Each stages/<name>/service.c fills one hm_service_ops: it opens its own data sockets and pools
 * in init, names the sockets the loop must poll, handles a readable socket, runs timers, and
 * reports counters.  stages/<name>/main.c hands the table to the stage runtime, which owns
 * arguments, logging, signals, sd_notify, the control socket and the poll loop.  Keeping the
 * logic free of process concerns lets tests drive a service in-process too. */
#ifndef HM_SERVICE_H
#define HM_SERVICE_H

#include "config.h"
#include "desc.h"

#define HM_SERVICE_MAX_SOCKETS 16

typedef struct {
    const char *name;
    /* Load models, open sockets/pools.  *state owned by the service (freed by .free). */
    int (*init)(const hm_pipeline_cfg *cfg, int replica, void **state);
    /* The data sockets to poll for input (ZeroMQ sockets); returns how many (<= max). */
    int (*sockets)(void *state, void **socks, int max);
    /* Socket socks[idx] is readable: drain it without blocking.  Errors are handled inside
     * (logged, answered to the requester); a service never exits on bad input. */
    void (*on_readable)(void *state, int idx);
    /* Called at least every 100 ms: retries, lease reclaims, timeouts. */
    void (*tick)(void *state, double now);
    /* Add counters to a STATS reply (desc_set_i64/f64 on *reply). */
    void (*stats)(void *state, desc_t *reply);
    void (*free)(void *state);
} hm_service_ops;

/* The shm pool name of a stage's output pool: unique per run dir, stage and replica, and stable
 * across restarts (a restarted producer replaces its stale object). */
void hm_service_pool_name(const hm_pipeline_cfg *cfg, const char *stage, int replica, const char *what, char *buf,
                          size_t cap);
/* Send an ERROR for request `req` to the client endpoint `reply` (cached PUSH sockets; errors
 * while reporting are logged only). */
void hm_service_reply_error(const char *reply, uint64_t req, const char *stage, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Connect to a client endpoint ahead of the first message (connections take a moment). */
void hm_service_client_touch(const char *reply);
/* Send any descriptor to a client endpoint over the cached PUSH socket. */
int hm_service_send_client(const char *reply, const desc_t *d);
/* Copy every parameter of src into dst except the keys in skip. */
int hm_service_copy_params(desc_t *dst, const desc_t *src, const char *const *skip, size_t nskip);
/* Close the cached client sockets (service shutdown). */
void hm_service_close_clients(void);

/* The whole stage process: parse arguments, load pipeline.yaml, init the service, then serve
 * until SIGTERM/SIGINT or a SHUTDOWN control message.  Returns the exit status. */
int hm_service_main(int argc, char **argv, const hm_service_ops *ops);

#endif
