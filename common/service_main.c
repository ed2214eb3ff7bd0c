/* service_main.c - the process around a stage service: arguments, config, logging, signals,
 * sd_notify, the control socket and the poll loop (DESIGN.md "Operations").
 *
 *   hm-<stage> [--config pipeline.yaml] [--stage-name NAME] [--replica N] [--log-level L]
 *
 * READY=1 is sent once the service's init (model loading, sockets) succeeded; WATCHDOG=1 every
 * third of the watchdog interval while the loop turns; STOPPING=1 on SIGTERM/SIGINT, after which
 * the service is freed and the process exits 0.  The control socket (a ROUTER on the stage's
 * `control` endpoint, replica r on "<control>-r") answers HEALTH, STATS, DRAIN and SHUTDOWN. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "config.h"
#include "desc.h"
#include "hm.h"
#include "service.h"
#include "transport.h"

static void usage(const char *prog)
{
    fprintf(stderr, "usage: %s [--config pipeline.yaml] [--stage-name NAME] [--replica N] [--log-level debug|info|warn|error]\n", prog);
}

int hm_service_main(int argc, char **argv, const hm_service_ops *ops)
{
    const char *config = "pipeline.yaml", *name = ops->name;
    int replica = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--config") && v) config = argv[++i];
        else if (!strcmp(a, "--stage-name") && v) name = argv[++i];
        else if (!strcmp(a, "--replica") && v) replica = atoi(argv[++i]);
        else if (!strcmp(a, "--log-level") && v) {
            const char *l = argv[++i];
            hm_log_set_level(!strcmp(l, "debug") ? HM_LOG_DEBUG : !strcmp(l, "warn") ? HM_LOG_WARN : !strcmp(l, "error") ? HM_LOG_ERROR : HM_LOG_INFO);
        } else {
            usage(argv[0]);
            return 2;
        }
    }
    char logname[64];
    snprintf(logname, sizeof logname, replica ? "%s.%d" : "%s", name, replica);
    hm_log_set_name(logname);
    if (strcmp(name, ops->name)) {
        fprintf(stderr, "%s: this binary runs the %s stage, not '%s'\n", logname, ops->name, name);
        return 2;
    }
    static hm_pipeline_cfg cfg;
    if (hm_config_load(config, &cfg)) {
        LOG_ERROR("%s", hm_errmsg());
        return 1;
    }
    int si = hm_stage_index(ops->name);
    if (replica < 0 || replica >= cfg.stage[si].replicas) {
        LOG_ERROR("replica %d of %s: pipeline.yaml has %d", replica, ops->name, cfg.stage[si].replicas);
        return 2;
    }
    if (!strcmp(cfg.stage[si].backend, "cuda")) {
#ifndef HM_CUDA
        LOG_ERROR("backend cuda: this build has no CUDA backend (rebuild with `make CUDA=1`)");
        return 1;
#endif
    }
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) {
        LOG_ERROR("signalfd: %s", strerror(errno));
        return 1;
    }
    double t0 = hm_now();
    void *state = NULL;
    if (ops->init(&cfg, replica, &state)) {
        LOG_ERROR("%s", hm_errmsg());
        return 1;
    }
    char ctl_url[600];
    if (replica) snprintf(ctl_url, sizeof ctl_url, "%s-%d", cfg.stage[si].control, replica);
    else snprintf(ctl_url, sizeof ctl_url, "%s", cfg.stage[si].control);
    tp_endpoint_t cep = {"control", ctl_url, TP_BIND, ZMQ_ROUTER};
    void *ctl;
    if (tp_open(&cep, &ctl)) {
        LOG_ERROR("%s", hm_errmsg());
        ops->free(state);
        return 1;
    }
    uint64_t wd_usec = 0;
    int wd = sd_watchdog_enabled(0, &wd_usec) > 0;
    sd_notify(0, "READY=1");
    LOG_INFO("ready in %.2f s (control %s)", hm_now() - t0, ctl_url);
    double next_wd = 0, next_tick = 0, started = hm_now();
    int draining = 0, stop = 0;
    uint64_t n_ctl = 0;
    while (!stop) {
        void *socks[HM_SERVICE_MAX_SOCKETS];
        int n = ops->sockets(state, socks, HM_SERVICE_MAX_SOCKETS - 2);
        zmq_pollitem_t items[HM_SERVICE_MAX_SOCKETS + 2];
        int ni = 0;
        items[ni++] = (zmq_pollitem_t){NULL, sfd, ZMQ_POLLIN, 0};
        items[ni++] = (zmq_pollitem_t){ctl, 0, ZMQ_POLLIN, 0};
        int first_data = ni;
        for (int i = 0; i < n; i++) items[ni++] = (zmq_pollitem_t){socks[i], 0, draining && i == 0 ? 0 : ZMQ_POLLIN, 0};
        int rc = zmq_poll(items, ni, 100);
        if (rc < 0 && zmq_errno() != EINTR) {
            LOG_ERROR("zmq_poll: %s", zmq_strerror(zmq_errno()));
            break;
        }
        double now = hm_now();
        if (items[0].revents & ZMQ_POLLIN) {
            struct signalfd_siginfo ssi;
            while (read(sfd, &ssi, sizeof ssi) == (ssize_t)sizeof ssi) stop = 1;
        }
        if (items[1].revents & ZMQ_POLLIN) {
            for (;;) {
                desc_t in;
                tp_peer_t from;
                int r = tp_recv(ctl, &from, &in, ZMQ_DONTWAIT);
                if (r == TP_AGAIN) break;
                if (r != HM_OK) {
                    LOG_WARN("control: rejected a message: %s", hm_errmsg());
                    continue;
                }
                n_ctl++;
                desc_t out;
                desc_init(&out, DESC_REPLY, in.req_id, in.seq);
                desc_set_str(&out, "stage", ops->name);
                desc_set_i64(&out, "replica", replica);
                desc_set_i64(&out, "pid", getpid());
                desc_set_f64(&out, "uptime_s", now - started);
                switch (in.type) {
                case DESC_HEALTH: case DESC_HEARTBEAT: desc_set_str(&out, "status", draining ? "draining" : "ok"); break;
                case DESC_STATS: ops->stats(state, &out); break;
                case DESC_DRAIN: draining = 1; desc_set_str(&out, "status", "draining"); break;
                case DESC_SHUTDOWN: stop = 1; desc_set_str(&out, "status", "stopping"); break;
                default: out.type = DESC_ERROR; desc_set_str(&out, "error", "control takes HEALTH, STATS, DRAIN, SHUTDOWN"); break;
                }
                if (tp_send(ctl, &from, &out, ZMQ_DONTWAIT) != HM_OK) LOG_WARN("control: cannot answer: %s", hm_errmsg());
                desc_free(&out);
                desc_free(&in);
            }
        }
        for (int i = first_data; i < ni; i++)
            if (items[i].revents & ZMQ_POLLIN) ops->on_readable(state, i - first_data);
        now = hm_now();
        if (now >= next_tick) {
            ops->tick(state, now);
            next_tick = now + 0.1;
        }
        if (wd && now >= next_wd) {
            sd_notify(0, "WATCHDOG=1");
            next_wd = now + (double)wd_usec / 3e6;
        }
    }
    sd_notify(0, "STOPPING=1");
    LOG_INFO("stopping");
    ops->free(state);
    tp_close(ctl);
    close(sfd);
    return 0;
}
