/* mps.c - hm-launch's private MPS control daemon (pipeline.yaml `mps`, DESIGN.md "Operations").
 *
 * Without MPS the CUDA contexts of the GPU stages time-slice the GPU: every frame the backbone's
 * step and draft-verifier's depth frame run in two contexts, and the switches between them cost
 * ~0.3 ms a frame (NVFP4 on an H200: 3.15 ms a frame through the two processes against 2.85 under
 * MPS and 2.82 in one process; docs/PERF.md).  Under MPS the stages' kernels share one server
 * context, and the codec's windows can run beside the language model's frames.
 *
 * The daemon is the launcher's own: its pipe and log directories live in the run directory
 * (<run_dir>/mps, <run_dir>/mps-log), so it serves only the stages this launcher starts, which
 * find it through CUDA_MPS_PIPE_DIRECTORY in their environment.  A daemon the operator runs
 * (CUDA_MPS_PIPE_DIRECTORY already set) is used as it is.  Before the stages start, a probe
 * process creates a CUDA context through the daemon (the driver loaded with dlopen, so the
 * launcher itself needs no CUDA); if that fails, "auto" goes on without MPS and "on" stops.
 *
 * The launcher then watches the daemon (hm_mps_watch, each turn of its loop).  A daemon that dies
 * takes its server with it: every GPU stage's context fails (cudaErrorMpsRpcFailure), and the
 * stages exit to be restarted.  A stage that starts while no daemon listens does not fail: it
 * silently gets a context of its own, without MPS, and keeps it.  So the daemon is started again
 * at once, before the stages come back (H100, CUDA 13: a new daemon starts in the same pipe
 * directory; docs/PERF.md, "Eighth pass"). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hm.h"
#include "mps.h"

static char g_pipe[600], g_log[600]; /* the daemon this launcher started; "" none */
static int g_pid;                     /* its pid (from its pid file); 0 unknown */
static double g_retry_at, g_retry_s;  /* when to try starting it again after a failed start */

/* Wait for child `pid` at most `secs` seconds (then SIGKILL); its exit status, or -1. */
static int wait_child(pid_t pid, double secs)
{
    const double t_end = hm_now() + secs;
    for (;;) {
        int st;
        const pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        if (r < 0 && errno != EINTR) return -1;
        if (hm_now() > t_end) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        usleep(10000);
    }
}

/* nvidia-cuda-mps-control with the daemon's directories: "-d" (start it) when `cmd` is NULL, else
 * `cmd` on its standard input ("quit").  Its first output line goes to out[cap].  The exit status,
 * 127 when the program is missing, -1 when it hung. */
static int mps_control(const char *cmd, char *out, size_t cap)
{
    int in[2], o[2];
    if (pipe2(in, O_CLOEXEC) != 0) return -1;
    if (pipe2(o, O_CLOEXEC) != 0) {
        close(in[0]), close(in[1]);
        return -1;
    }
    const pid_t pid = fork();
    if (pid < 0) {
        close(in[0]), close(in[1]), close(o[0]), close(o[1]);
        return -1;
    }
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        dup2(in[0], 0), dup2(o[1], 1), dup2(o[1], 2);
        setenv("CUDA_MPS_PIPE_DIRECTORY", g_pipe, 1);
        setenv("CUDA_MPS_LOG_DIRECTORY", g_log, 1);
        if (cmd) execlp("nvidia-cuda-mps-control", "nvidia-cuda-mps-control", (char *)NULL);
        else execlp("nvidia-cuda-mps-control", "nvidia-cuda-mps-control", "-d", (char *)NULL);
        _exit(127);
    }
    close(in[0]), close(o[1]);
    if (cmd) {
        const ssize_t w = write(in[1], cmd, strlen(cmd));
        (void)w;
    }
    close(in[1]);
    const int rc = wait_child(pid, 15.0);
    /* the daemon (a grandchild) may hold the write end: read only what is there */
    fcntl(o[0], F_SETFL, O_NONBLOCK);
    ssize_t n = cap ? read(o[0], out, cap - 1) : 0;
    close(o[0]);
    if (cap) {
        out[n > 0 ? n : 0] = 0;
        out[strcspn(out, "\n")] = 0;
    }
    return rc;
}

/* A process that creates a CUDA context through the daemon and exits: 0 when it could. */
static int probe_context(void)
{
    const pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        int dn = open("/dev/null", O_WRONLY);
        if (dn >= 0) dup2(dn, 1), dup2(dn, 2);
        void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
        if (!lib) _exit(3);
        int (*cu_init)(unsigned) = (int (*)(unsigned))dlsym(lib, "cuInit");
        int (*dev_get)(int *, int) = (int (*)(int *, int))dlsym(lib, "cuDeviceGet");
        int (*retain)(void **, int) = (int (*)(void **, int))dlsym(lib, "cuDevicePrimaryCtxRetain");
        if (!cu_init || !dev_get || !retain) _exit(4);
        int dev = 0;
        void *ctx = NULL;
        if (cu_init(0) != 0 || dev_get(&dev, 0) != 0 || retain(&ctx, dev) != 0) _exit(5);
        _exit(0);
    }
    return wait_child(pid, 60.0);
}

/* The start of file `path` into buf[cap] (NUL-terminated): 1 if it had any bytes, else 0. */
static int read_head(const char *path, char *buf, size_t cap)
{
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    const ssize_t n = read(fd, buf, cap - 1);
    close(fd);
    buf[n > 0 ? n : 0] = 0;
    return n > 0;
}

/* The daemon's pid from the file it writes in its pipe directory; 0 when there is none. */
static int daemon_pid(void)
{
    char path[700], buf[32];
    snprintf(path, sizeof path, "%s/nvidia-cuda-mps-control.pid", g_pipe);
    if (!read_head(path, buf, sizeof buf)) return 0;
    char *end;
    const long v = strtol(buf, &end, 10);
    return v > 0 && v < (1L << 30) && (*end == 0 || *end == '\n') ? (int)v : 0;
}

/* 1 while process `pid` runs and is an MPS program (its name begins "nvidia-cuda-mps"); a zombie,
 * which an init that does not reap leaves behind, counts as gone. */
static int daemon_alive(int pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    if (!read_head(path, buf, sizeof buf)) return 0;
    const char *open_paren = strchr(buf, '('), *close_paren = strrchr(buf, ')');
    if (!open_paren || !close_paren || close_paren[1] != ' ') return 0;
    if (strncmp(open_paren + 1, "nvidia-cuda-mps", 15) != 0) return 0;
    const char state = close_paren[2];
    return state != 'Z' && state != 'X' && state != 'x';
}

/* The pid of a live daemon other than `old` in the pid file, waiting up to `secs` for the file
 * (a daemon writes it after the program that started it has returned); 0 if none. */
static int new_daemon_pid(int old, double secs)
{
    const double t_end = hm_now() + secs;
    for (;;) {
        const int pid = daemon_pid();
        if (pid && pid != old && daemon_alive(pid)) return pid;
        if (hm_now() >= t_end) return 0;
        usleep(10000);
    }
}

int hm_mps_start(const char *mode, const char *run_dir)
{
    const char *have = getenv("CUDA_MPS_PIPE_DIRECTORY");
    if (!strcmp(mode, "off")) {
        LOG_INFO("MPS off (pipeline.yaml): the GPU stages' contexts time-slice the GPU");
        return HM_OK;
    }
    if (have && *have) {
        LOG_INFO("MPS: using the daemon of CUDA_MPS_PIPE_DIRECTORY=%s", have);
        return HM_OK;
    }
    const int required = !strcmp(mode, "on");
    if ((size_t)snprintf(g_pipe, sizeof g_pipe, "%s/mps", run_dir) >= sizeof g_pipe - 16 ||
        (size_t)snprintf(g_log, sizeof g_log, "%s/mps-log", run_dir) >= sizeof g_log) {
        g_pipe[0] = g_log[0] = 0;
        return required ? hm_err("MPS: run dir path too long") : HM_OK;
    }
    if ((mkdir(g_pipe, 0700) != 0 && errno != EEXIST) || (mkdir(g_log, 0700) != 0 && errno != EEXIST)) {
        const int e = errno;
        g_pipe[0] = g_log[0] = 0;
        if (required) return hm_err("MPS: cannot create %s/mps: %s", run_dir, strerror(e));
        LOG_WARN("MPS: cannot create its directories in %s (%s): going on without it", run_dir, strerror(e));
        return HM_OK;
    }
    char msg[256] = "";
    /* a daemon left behind by a launcher that was killed goes first (the run dir is ours now: the
     * lock); with none there, this only prints that it found none */
    mps_control("quit\n", NULL, 0);
    int rc = mps_control(NULL, msg, sizeof msg);
    if (rc == 0) {
        setenv("CUDA_MPS_PIPE_DIRECTORY", g_pipe, 1);
        setenv("CUDA_MPS_LOG_DIRECTORY", g_log, 1);
        const int p = probe_context();
        if (p == 0) {
            g_pid = new_daemon_pid(0, 1.0);
            g_retry_at = 0, g_retry_s = 1.0;
            if (g_pid) LOG_INFO("MPS: a private control daemon (pid %d) in %s serves the GPU stages", g_pid, g_pipe);
            else LOG_WARN("MPS: a private control daemon in %s serves the GPU stages; it wrote no pid file, so it is not watched", g_pipe);
            return HM_OK;
        }
        unsetenv("CUDA_MPS_PIPE_DIRECTORY");
        unsetenv("CUDA_MPS_LOG_DIRECTORY");
        mps_control("quit\n", NULL, 0);
        snprintf(msg, sizeof msg, "no CUDA context through it (probe status %d; see %s/control.log)", p, g_log);
    } else if (rc == 127) {
        snprintf(msg, sizeof msg, "nvidia-cuda-mps-control not found");
    } else if (!msg[0]) {
        snprintf(msg, sizeof msg, "nvidia-cuda-mps-control -d: status %d", rc);
    }
    g_pipe[0] = g_log[0] = 0;
    if (required) return hm_err("MPS (mps: on): %s", msg);
    LOG_INFO("MPS not used (%s): the GPU stages' contexts time-slice the GPU", msg);
    return HM_OK;
}

int hm_mps_watch(double now)
{
    if (!g_pipe[0] || !g_pid || daemon_alive(g_pid) || now < g_retry_at) return 0;
    int pid = new_daemon_pid(g_pid, 0); /* one that came up late after the last try */
    int rc = 0;
    char msg[256] = "";
    if (!pid) {
        if (g_retry_at == 0)
            LOG_WARN("MPS: the control daemon (pid %d) is gone, and its server with it: starting it again", g_pid);
        rc = mps_control(NULL, msg, sizeof msg);
        if (rc == 0) pid = new_daemon_pid(g_pid, 2.0);
    }
    if (pid) {
        LOG_INFO("MPS: the control daemon runs again (pid %d)", pid);
        g_pid = pid;
        g_retry_at = 0, g_retry_s = 1.0;
        return 1;
    }
    /* the stages that start meanwhile get contexts without MPS (slower, but they work) */
    g_retry_at = hm_now() + g_retry_s;
    LOG_ERROR("MPS: starting the control daemon again failed (status %d%s%s); next try in %.0f s", rc,
              msg[0] ? ": " : "", rc == 0 && !msg[0] ? ", no pid file" : msg, g_retry_s);
    g_retry_s = g_retry_s * 2 > 30 ? 30 : g_retry_s * 2;
    return -1;
}

void hm_mps_stop(void)
{
    if (!g_pipe[0]) return;
    char msg[256] = "";
    const int rc = mps_control("quit\n", msg, sizeof msg);
    if (rc != 0) LOG_WARN("MPS: stopping the daemon in %s: status %d %s", g_pipe, rc, msg);
    g_pipe[0] = g_log[0] = 0;
    g_pid = 0;
}
