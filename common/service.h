/* service.h - what the five stage processes share on top of the stage runtime (stage.h):
 * one main() for all of them, pool names, and replies to the client.
 *
 * Each stages/<name>/service.c provides a setup function that loads its model, opens its
 * sockets with stage_add_socket (handlers get decoded descriptors), adds its pools and timers,
 * and returns its state; stages/<name>/main.c is one call to hm_stage_main. */
#ifndef HM_SERVICE_H
#define HM_SERVICE_H

#include <stddef.h>

#include "config.h"
#include "desc.h"
#include "stage.h"

/* Load models, open sockets/pools/timers on st.  *state is freed by the matching free function
 * after stage_run returns. */
typedef int (*hm_stage_setup_fn)(stage_t *st, const hm_pipeline_cfg *cfg, int replica, void **state);
typedef void (*hm_stage_free_fn)(void *state);

/* The whole stage process: arguments (stage_parse_args: --config, --stage-name, --replica,
 * --log-level), pipeline.yaml, setup, the control socket ("<control>" or "<control>-r" for
 * replica r), stage_run until SIGTERM/SIGINT/SHUTDOWN.  Returns the exit status: 0 after a
 * graceful stop, 1 when setup failed (its one-line reason logged), 2 for bad arguments. */
int hm_stage_main(int argc, char **argv, const char *name, hm_stage_setup_fn setup, hm_stage_free_fn free_fn);

/* The shm pool name of a stage's output pool: unique per run dir, stage and replica, and stable
 * across restarts (a restarted producer replaces its stale object). */
void hm_service_pool_name(const hm_pipeline_cfg *cfg, const char *stage, int replica, const char *what, char *buf,
                          size_t cap);
/* Send an ERROR for request `req` to the client endpoint `reply` (tp_send_url; a failure to
 * report is logged only). */
void hm_service_reply_error(const char *reply, uint64_t req, const char *stage, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The ERROR of a stage that was sent the rest of a song it never saw (it restarted mid-song), with
 * `lost` = 1: the client sends the request again instead of failing it. */
void hm_service_reply_lost(const char *reply, uint64_t req, const char *stage, const char *msg);
/* Copy every parameter of src into dst except the keys in skip. */
int hm_service_copy_params(desc_t *dst, const desc_t *src, const char *const *skip, size_t nskip);

#endif
