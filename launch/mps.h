/* mps.h - hm-launch's private MPS control daemon (see mps.c). */
#ifndef HM_LAUNCH_MPS_H
#define HM_LAUNCH_MPS_H

/* mode: pipeline.yaml's `mps` ("auto" | "on" | "off").  Starts a control daemon in
 * <run_dir>/mps unless the mode is off or CUDA_MPS_PIPE_DIRECTORY is already set, checks that a
 * CUDA context can be made through it and exports its directories to the stages the caller
 * starts next.  "auto" goes on without MPS when any of that fails; "on" returns HM_ERR. */
int hm_mps_start(const char *mode, const char *run_dir);
/* Called each turn of the launcher's loop, before it restarts stages: when the daemon
 * hm_mps_start started has died, starts it again in the same directories (failed starts are
 * retried after 1, 2, 4 .. 30 s).  0 nothing to do, 1 started again, -1 that failed. */
int hm_mps_watch(double now);
/* Quits the daemon hm_mps_start started, if any (after the stages have exited). */
void hm_mps_stop(void);

#endif
