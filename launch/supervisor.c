/* supervisor.c - hm-launch: the foreground supervisor of a pipeline (DESIGN.md "Operations").
 *
 * Starts every stage of pipeline.yaml (each replica a process: bin/hm-<stage>), waits for each to
 * report READY, restarts a stage that dies (exponential back-off, reset after a minute of
 * health) or stops pinging its watchdog, and stops them all on SIGINT/SIGTERM.
 *
 * Readiness and watchdog use the systemd notification protocol, so a stage behaves the same under
 * systemd and here: the supervisor binds a datagram socket, hands its path to each child in
 * NOTIFY_SOCKET (plus WATCHDOG_USEC/WATCHDOG_PID), and reads "READY=1", "WATCHDOG=1" and
 * "STOPPING=1" with the sender's pid from SCM_CREDENTIALS.
 *
 * When every stage is ready it writes "<run_dir>/ready" (the pid of the supervisor) and prints
 * "ready" on stdout; the heartmula CLI waits for that file when it starts a private pipeline.
 * With a GPU stage among those it starts, it first starts an MPS control daemon of its own in
 * <run_dir>/mps (pipeline.yaml `mps`, launch/mps.c), starts it again if it dies, and quits it
 * after the last stage stopped. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "hm.h"
#include "mps.h"
#include "stage.h" /* HM_EXIT_LOST */

#define MAX_PROCS 256

typedef struct {
    int stage, replica;
    pid_t pid;          /* 0: not running */
    int ready;
    double started, last_ping, next_start, ready_at;
    double backoff;         /* the wait before the next restart: 1 s, doubled after each quick exit */
    int restarts;
    int early_fails;    /* exits before ever reporting READY, in a row */
} proc_t;

static proc_t g_p[MAX_PROCS];
static int g_np;
static char g_bin_dir[PATH_MAX] = "bin";
static char g_config[PATH_MAX] = "pipeline.yaml";
static char g_run_dir_override[512];

static int start_proc(proc_t *p, const hm_pipeline_cfg *cfg, const char *notify_path)
{
    char exe[PATH_MAX + 64], rep[16];
    snprintf(exe, sizeof exe, "%s/hm-%s", g_bin_dir, hm_stage_name(p->stage));
    snprintf(rep, sizeof rep, "%d", p->replica);
    pid_t pid = fork();
    if (pid < 0) return hm_err("fork: %s", strerror(errno));
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        setenv("NOTIFY_SOCKET", notify_path, 1);
        if (cfg->stage[p->stage].watchdog_ms > 0) {
            char us[32], pidb[32];
            snprintf(us, sizeof us, "%lld", (long long)cfg->stage[p->stage].watchdog_ms * 1000LL);
            snprintf(pidb, sizeof pidb, "%d", (int)getpid());
            setenv("WATCHDOG_USEC", us, 1);
            setenv("WATCHDOG_PID", pidb, 1);
        }
        if (g_run_dir_override[0]) setenv("HEARTMULA_RUN_DIR", g_run_dir_override, 1);
        execl(exe, exe, "--config", g_config, "--stage-name", hm_stage_name(p->stage), "--replica", rep, (char *)NULL);
        fprintf(stderr, "hm-launch: cannot exec %s: %s (run `make` first)\n", exe, strerror(errno));
        _exit(127);
    }
    p->pid = pid;
    p->ready = 0;
    p->started = p->last_ping = hm_now();
    LOG_INFO("started %s[%d] pid %d", hm_stage_name(p->stage), p->replica, (int)pid);
    return HM_OK;
}

static proc_t *by_pid(pid_t pid)
{
    for (int i = 0; i < g_np; i++)
        if (g_p[i].pid == pid) return &g_p[i];
    return NULL;
}

static void usage(void)
{
    fprintf(stderr, "usage: hm-launch [--config pipeline.yaml] [--bin-dir DIR] [--run-dir DIR]\n"
                    "                 [--only STAGE]... [--except STAGE]... [--ready-timeout S]\n"
                    "       hm-launch [--config pipeline.yaml] --print-config   (every key, defaults resolved)\n");
}

int main(int argc, char **argv)
{
    hm_log_set_name("launch");
    int only[HM_STAGE_COUNT] = {0}, except[HM_STAGE_COUNT] = {0}, any_only = 0;
    double ready_timeout = 300;
    int print_config = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--config") && v) snprintf(g_config, sizeof g_config, "%s", argv[++i]);
        else if (!strcmp(a, "--bin-dir") && v) snprintf(g_bin_dir, sizeof g_bin_dir, "%s", argv[++i]);
        else if (!strcmp(a, "--run-dir") && v) snprintf(g_run_dir_override, sizeof g_run_dir_override, "%s", argv[++i]);
        else if (!strcmp(a, "--ready-timeout") && v) ready_timeout = atof(argv[++i]);
        else if (!strcmp(a, "--print-config")) print_config = 1;
        else if ((!strcmp(a, "--only") || !strcmp(a, "--except")) && v) {
            int s = hm_stage_index(argv[++i]);
            if (s < 0) { fprintf(stderr, "hm-launch: unknown stage '%s'\n", argv[i]); return 2; }
            if (a[2] == 'o') { only[s] = 1; any_only = 1; } else except[s] = 1;
        } else { usage(); return 2; }
    }
    hm_pipeline_cfg cfg;
    if (hm_config_load(g_config, &cfg)) {
        fprintf(stderr, "hm-launch: %s\n", hm_errmsg());
        return 1;
    }
    if (print_config) { /* what the stages will read (launch/install-systemd takes the watchdogs from it) */
        hm_config_print(&cfg, stdout);
        return fflush(stdout) == 0 && !ferror(stdout) ? 0 : 1;
    }
    if (g_run_dir_override[0]) {
        /* re-expand endpoints against the private run dir: stages do the same from the env var */
        snprintf(cfg.run_dir, sizeof cfg.run_dir, "%s", g_run_dir_override);
    }
    if (mkdir(cfg.run_dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "hm-launch: cannot create run dir '%s': %s\n", cfg.run_dir, strerror(errno));
        return 1;
    }
    /* a supervisor already running on this run dir would fight over the sockets */
    char ready_path[600], notify_path[600], lock_path[600];
    snprintf(ready_path, sizeof ready_path, "%s/ready", cfg.run_dir);
    snprintf(notify_path, sizeof notify_path, "%s/launch.notify", cfg.run_dir);
    snprintf(lock_path, sizeof lock_path, "%s/launch.lock", cfg.run_dir);
    int lock = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock < 0 || lockf(lock, F_TLOCK, 0) != 0) {
        fprintf(stderr, "hm-launch: another pipeline already runs in '%s' (stop it, or use --run-dir)\n", cfg.run_dir);
        return 1;
    }
    unlink(ready_path);
    unlink(notify_path);
    int ns = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(notify_path) >= sizeof sa.sun_path) {
        fprintf(stderr, "hm-launch: run dir path too long for a unix socket: %s\n", cfg.run_dir);
        return 1;
    }
    strcpy(sa.sun_path, notify_path);
    int one = 1;
    if (ns < 0 || bind(ns, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        setsockopt(ns, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0) {
        fprintf(stderr, "hm-launch: notify socket %s: %s\n", notify_path, strerror(errno));
        return 1;
    }
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);

    /* the GPU stages share one MPS server unless pipeline.yaml says otherwise (launch/mps.c) */
    int any_cuda = 0;
    for (int s = 0; s < HM_STAGE_COUNT; s++)
        if (!((any_only && !only[s]) || except[s]) && !strcmp(cfg.stage[s].backend, "cuda")) any_cuda = 1;
    if (any_cuda && hm_mps_start(cfg.mps, cfg.run_dir)) {
        fprintf(stderr, "hm-launch: %s\n", hm_errmsg());
        return 1;
    }
    for (int s = 0; s < HM_STAGE_COUNT; s++) {
        if ((any_only && !only[s]) || except[s]) continue;
        for (int r = 0; r < cfg.stage[s].replicas && g_np < MAX_PROCS; r++)
            g_p[g_np++] = (proc_t){.stage = s, .replica = r, .backoff = 1.0};
    }
    for (int i = 0; i < g_np; i++)
        if (start_proc(&g_p[i], &cfg, notify_path)) {
            fprintf(stderr, "hm-launch: %s\n", hm_errmsg());
            hm_mps_stop();
            return 1;
        }
    double t0 = hm_now();
    int all_ready_announced = 0, stopping = 0, rc = 0;
    double stop_deadline = 0;
    for (;;) {
        struct pollfd pf[2] = {{.fd = sfd, .events = POLLIN}, {.fd = ns, .events = POLLIN}};
        poll(pf, 2, 200);
        double now = hm_now();
        struct signalfd_siginfo si;
        while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
            if (si.ssi_signo == SIGINT || si.ssi_signo == SIGTERM) {
                if (!stopping) {
                    LOG_INFO("stopping the pipeline");
                    stopping = 1;
                    stop_deadline = now + 10.0;
                    unlink(ready_path);
                    for (int i = 0; i < g_np; i++)
                        if (g_p[i].pid) kill(g_p[i].pid, SIGTERM);
                }
            }
        }
        /* reap */
        int st;
        pid_t pid;
        while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
            proc_t *p = by_pid(pid);
            if (!p) continue;
            int was_ready = p->ready;
            p->pid = 0;
            p->ready = 0;
            if (stopping) continue;
            p->early_fails = was_ready ? 0 : p->early_fails + 1;
            if (p->early_fails >= 3 && !all_ready_announced) {
                /* a stage that cannot even start (bad model folder, bad config) will not get
                 * better by retrying: stop now, its own error line is in the log above */
                LOG_ERROR("%s[%d] failed to start 3 times in a row; stopping the pipeline", hm_stage_name(p->stage), p->replica);
                rc = 1;
                kill(getpid(), SIGTERM);
            }
            /* a process that ran a minute, or served for 10 s, was no crash loop: the wait starts
             * over (GPU faults a few tens of seconds apart would otherwise meet waits of 4-8 s).
             * Nor was one that served and left because its device context was lost (HM_EXIT_LOST):
             * the GPU or the MPS server failed, not the process (an H200 run's draft-verifier,
             * through a device fault, its own SIGKILL, the MPS server's and the daemon's, met 16 s) */
            const int lost = WIFEXITED(st) && WEXITSTATUS(st) == HM_EXIT_LOST;
            if (now - p->started > 60.0 || (was_ready && (lost || now - p->ready_at >= 10.0))) p->backoff = 1.0;
            p->next_start = now + p->backoff;
            p->backoff = p->backoff * 2 > 30 ? 30 : p->backoff * 2;
            p->restarts++;
            if (WIFSIGNALED(st))
                LOG_WARN("%s[%d] killed by signal %d; restarting in %.0f s", hm_stage_name(p->stage), p->replica, WTERMSIG(st), p->next_start - now);
            else
                LOG_WARN("%s[%d] exited with status %d%s; restarting in %.0f s", hm_stage_name(p->stage), p->replica,
                         WEXITSTATUS(st), lost ? " (its device context was lost)" : "", p->next_start - now);
        }
        /* notifications */
        for (;;) {
            char buf[512];
            union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(struct ucred))]; } cm;
            struct iovec iov = {buf, sizeof buf - 1};
            struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = &cm, .msg_controllen = sizeof cm};
            ssize_t n = recvmsg(ns, &mh, MSG_DONTWAIT);
            if (n <= 0) break;
            buf[n] = 0;
            struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
            if (!c || c->cmsg_type != SCM_CREDENTIALS) continue;
            struct ucred uc;
            memcpy(&uc, CMSG_DATA(c), sizeof uc);
            proc_t *p = by_pid(uc.pid);
            if (!p) continue;
            if (strstr(buf, "READY=1") && !p->ready) {
                p->ready = 1;
                p->ready_at = now;
                LOG_INFO("%s[%d] ready (%.1f s)", hm_stage_name(p->stage), p->replica, now - p->started);
            }
            if (strstr(buf, "WATCHDOG=1") || strstr(buf, "READY=1")) p->last_ping = now;
        }
        if (stopping) {
            int alive = 0;
            for (int i = 0; i < g_np; i++) alive += g_p[i].pid != 0;
            if (!alive) break;
            if (now > stop_deadline) {
                for (int i = 0; i < g_np; i++)
                    if (g_p[i].pid) {
                        LOG_WARN("%s[%d] did not stop in time: SIGKILL", hm_stage_name(g_p[i].stage), g_p[i].replica);
                        kill(g_p[i].pid, SIGKILL);
                    }
                stop_deadline = now + 5.0;
            }
            continue;
        }
        /* the MPS daemon first: a stage started while it is down would run without MPS */
        hm_mps_watch(now);
        /* restarts and watchdogs */
        for (int i = 0; i < g_np; i++) {
            proc_t *p = &g_p[i];
            int wd = cfg.stage[p->stage].watchdog_ms;
            if (!p->pid && now >= p->next_start) {
                if (start_proc(p, &cfg, notify_path)) LOG_ERROR("%s", hm_errmsg());
            } else if (p->pid && p->ready && wd > 0 && now - p->last_ping > wd / 1000.0) {
                LOG_WARN("%s[%d] missed its watchdog (%.1f s silent): SIGKILL", hm_stage_name(p->stage), p->replica, now - p->last_ping);
                kill(p->pid, SIGKILL);
            }
        }
        int nready = 0;
        for (int i = 0; i < g_np; i++) nready += g_p[i].ready && g_p[i].pid;
        if (!all_ready_announced && nready == g_np) {
            all_ready_announced = 1;
            FILE *f = fopen(ready_path, "w");
            if (f) { fprintf(f, "%d\n", (int)getpid()); fclose(f); }
            LOG_INFO("pipeline ready: %d process(es) in %.1f s", g_np, now - t0);
            printf("ready\n");
            fflush(stdout);
        } else if (!all_ready_announced && now - t0 > ready_timeout) {
            LOG_ERROR("not every stage became ready within %.0f s; stopping", ready_timeout);
            rc = 1;
            kill(getpid(), SIGTERM);
        }
    }
    unlink(notify_path);
    unlink(ready_path);
    hm_mps_stop();
    LOG_INFO("pipeline stopped");
    return rc;
}
