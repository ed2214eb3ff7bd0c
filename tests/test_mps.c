/* test_mps.c - hm-launch's watch over its MPS control daemon (launch/mps.c), with a stand-in for
 * nvidia-cuda-mps-control: a script that, like the real program (CUDA 13), starts a daemon that
 * writes nvidia-cuda-mps-control.pid into its pipe directory, and stops it on "quit".  The daemon
 * is a copy of sleep(1) named like an MPS program.  The probe through the driver (a CUDA context)
 * needs a GPU, so these tests start the daemon as hm_mps_start does after its checks, by the same
 * internal call; gpu-check fault kills the real daemon under a running pipeline. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "../launch/mps.c"

#include <limits.h>
#include <time.h>

static char g_dir[256], g_fail_flag[400];

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    assert_int_equal(chmod(path, mode), 0);
}

/* Waits up to 3 s for `pid` to stop being a live MPS program (a SIGKILLed daemon becomes a
 * zombie of whatever reaps orphans, or disappears). */
static int wait_gone(int pid)
{
    for (int i = 0; i < 300; i++) {
        if (!daemon_alive(pid)) return 1;
        sleep_ms(10);
    }
    return 0;
}

static int setup(void **state)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/hm-test-mps.%d", (int)getpid());
    char p[512], cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s/bin %s/run/mps %s/run/mps-log", g_dir, g_dir, g_dir, g_dir);
    assert_int_equal(system(cmd), 0);
    /* the daemon: sleep(1) under a name that begins like the MPS programs' */
    snprintf(cmd, sizeof cmd, "cp \"$(command -v sleep)\" %s/bin/nvidia-cuda-mps-fake", g_dir);
    assert_int_equal(system(cmd), 0);
    snprintf(g_fail_flag, sizeof g_fail_flag, "%s/fail-start", g_dir);
    snprintf(p, sizeof p, "%s/bin/nvidia-cuda-mps-control", g_dir);
    write_file(p,
               "#!/bin/sh\n"
               "pf=\"$CUDA_MPS_PIPE_DIRECTORY/nvidia-cuda-mps-control.pid\"\n"
               "if [ \"$1\" = -d ]; then\n"
               "  [ -f \"$FAKE_MPS_FAIL\" ] && { echo 'cannot start the daemon'; exit 3; }\n"
               "  if [ -f \"$pf\" ] && kill -0 \"$(cat \"$pf\")\" 2>/dev/null && ! grep -q '^State:.*Z' /proc/$(cat \"$pf\")/status; then\n"
               "    echo 'An instance of this daemon is already running'; exit 1\n"
               "  fi\n"
               "  \"$(dirname \"$0\")/nvidia-cuda-mps-fake\" 300 </dev/null >/dev/null 2>&1 &\n"
               "  d=$!\n"
               "  if [ -f \"$FAKE_MPS_FAIL.late\" ]; then (sleep 0.3; echo $d >\"$pf\") </dev/null >/dev/null 2>&1 &\n"
               "  else echo $d >\"$pf\"; fi\n"
               "  exit 0\n"
               "fi\n"
               "read c\n"
               "[ \"$c\" = quit ] && [ -f \"$pf\" ] && kill \"$(cat \"$pf\")\" 2>/dev/null\n"
               "exit 0\n",
               0755);
    const char *path = getenv("PATH");
    snprintf(cmd, sizeof cmd, "%s/bin:%s", g_dir, path ? path : "/usr/bin:/bin");
    setenv("PATH", cmd, 1);
    setenv("FAKE_MPS_FAIL", g_fail_flag, 1);
    /* what hm_mps_start sets before it starts the daemon */
    snprintf(g_pipe, sizeof g_pipe, "%s/run/mps", g_dir);
    snprintf(g_log, sizeof g_log, "%s/run/mps-log", g_dir);
    *state = NULL;
    return 0;
}

static int teardown(void **state)
{
    char pipe_dir[sizeof g_pipe];
    snprintf(pipe_dir, sizeof pipe_dir, "%s", g_pipe);
    hm_mps_stop();
    snprintf(g_pipe, sizeof g_pipe, "%s", pipe_dir);
    const int pid = daemon_pid();
    if (pid && daemon_alive(pid)) kill(pid, SIGKILL);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    assert_int_equal(system(cmd), 0);
    return 0;
}

/* Starts the stand-in daemon as hm_mps_start does once its directories exist. */
static void start_daemon(void)
{
    char msg[256];
    assert_int_equal(mps_control(NULL, msg, sizeof msg), 0);
    g_pid = daemon_pid();
    assert_true(g_pid > 0);
    assert_true(daemon_alive(g_pid));
    g_retry_at = 0, g_retry_s = 1.0;
}

static void test_live_daemon_left_alone(void **state)
{
    start_daemon();
    const int pid = g_pid;
    for (int i = 0; i < 5; i++) assert_int_equal(hm_mps_watch(hm_now()), 0);
    assert_int_equal(g_pid, pid);
    assert_int_equal(daemon_pid(), pid);
}

static void test_killed_daemon_started_again(void **state)
{
    start_daemon();
    for (int round = 0; round < 3; round++) {
        const int old = g_pid;
        assert_int_equal(kill(old, SIGKILL), 0);
        assert_true(wait_gone(old));
        assert_int_equal(hm_mps_watch(hm_now()), 1);
        assert_true(g_pid > 0);
        assert_int_not_equal(g_pid, old);
        assert_true(daemon_alive(g_pid));
        assert_int_equal(daemon_pid(), g_pid);
        assert_int_equal(hm_mps_watch(hm_now()), 0);
    }
}

static void test_failed_restart_retried_with_backoff(void **state)
{
    start_daemon();
    write_file(g_fail_flag, "", 0644);
    const int old = g_pid;
    assert_int_equal(kill(old, SIGTERM), 0);
    assert_true(wait_gone(old));
    const double t = hm_now();
    assert_int_equal(hm_mps_watch(t), -1);
    /* not again before the retry is due: the loop turns every 200 ms */
    assert_int_equal(hm_mps_watch(t + 0.2), 0);
    assert_true(g_retry_at >= t + 0.9);
    assert_int_equal(hm_mps_watch(g_retry_at + 0.01), -1); /* fails again: next wait is 2 s */
    assert_true(g_retry_at >= hm_now() + 1.9);
    assert_int_equal(unlink(g_fail_flag), 0);
    assert_int_equal(hm_mps_watch(g_retry_at + 0.01), 1);
    assert_true(daemon_alive(g_pid));
    assert_int_not_equal(g_pid, old);
    assert_true(g_retry_at == 0 && g_retry_s == 1.0); /* a later death starts without a wait */
}

/* The real daemon writes its pid file after `-d` has returned: the watch waits for it, and does
 * not take the dead daemon's pid, still in the file, for the new one's. */
static void test_late_pid_file(void **state)
{
    start_daemon();
    char late[512];
    snprintf(late, sizeof late, "%s.late", g_fail_flag);
    write_file(late, "", 0644);
    const int old = g_pid;
    assert_int_equal(kill(old, SIGKILL), 0);
    assert_true(wait_gone(old));
    assert_int_equal(hm_mps_watch(hm_now()), 1);
    assert_int_not_equal(g_pid, old);
    assert_true(daemon_alive(g_pid));
    assert_int_equal(daemon_pid(), g_pid);
    assert_int_equal(unlink(late), 0);
}

static void test_pid_checks(void **state)
{
    /* this test program is alive but no MPS program: a pid reused by another process is not the daemon */
    assert_false(daemon_alive((int)getpid()));
    assert_false(daemon_alive(INT_MAX));
    char p[700];
    snprintf(p, sizeof p, "%s/nvidia-cuda-mps-control.pid", g_pipe);
    unlink(p);
    assert_int_equal(daemon_pid(), 0);
    write_file(p, "12x\n", 0644);
    assert_int_equal(daemon_pid(), 0);
    write_file(p, "-5\n", 0644);
    assert_int_equal(daemon_pid(), 0);
    write_file(p, "4242\n", 0644);
    assert_int_equal(daemon_pid(), 4242);
    /* nothing to watch: no daemon of ours (mps off, or one the operator runs) */
    g_pid = 0;
    assert_int_equal(hm_mps_watch(hm_now()), 0);
}

static void test_stop_quits_daemon(void **state)
{
    start_daemon();
    const int pid = g_pid;
    hm_mps_stop();
    assert_int_equal(g_pipe[0], 0);
    assert_int_equal(g_pid, 0);
    assert_true(wait_gone(pid));
    assert_int_equal(hm_mps_watch(hm_now()), 0); /* stopped on purpose: not started again */
    snprintf(g_pipe, sizeof g_pipe, "%s/run/mps", g_dir);
}

int main(void)
{
    hm_log_set_name("test_mps");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_live_daemon_left_alone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_killed_daemon_started_again, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_restart_retried_with_backoff, setup, teardown),
        cmocka_unit_test_setup_teardown(test_late_pid_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pid_checks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_quits_daemon, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
