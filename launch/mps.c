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
 * launcher itself needs no CUDA); if that fails, "auto" goes on without MPS and "on" stops. */
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
            LOG_INFO("MPS: a private control daemon in %s serves the GPU stages", g_pipe);
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

void hm_mps_stop(void)
{
    if (!g_pipe[0]) return;
    char msg[256] = "";
    const int rc = mps_control("quit\n", msg, sizeof msg);
    if (rc != 0) LOG_WARN("MPS: stopping the daemon in %s: status %d %s", g_pipe, rc, msg);
    g_pipe[0] = g_log[0] = 0;
}
