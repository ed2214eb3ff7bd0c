/* stage.c - stage runtime: arguments, signals, poll loop, control socket, stats (stage.h). */
#define _GNU_SOURCE
#include "stage.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

/* ---- arguments ---- */

static const stage_opt_t g_base_opts[] = {
    {"config", STAGE_OPT_STR, NULL, "pipeline configuration file"},
    {"stage-name", STAGE_OPT_STR, NULL, "name in logs and stats"},
    {"replica", STAGE_OPT_INT, NULL, "replica index of this stage (0..)"},
    {"log-level", STAGE_OPT_STR, NULL, "debug|info|warn|error"},
    {0},
};

static void usage(const char *prog, const stage_opt_t *extra)
{
    printf("usage: %s [options]\n", prog);
    for (int pass = 0; pass < 2; pass++)
        for (const stage_opt_t *o = pass ? extra : g_base_opts; o && o->name; o++)
            printf("  --%-20s %s %s\n", o->name, o->type == STAGE_OPT_FLAG ? "     " : "VALUE", o->help ? o->help : "");
    printf("  --%-20s       this text\n", "help");
}

static int parse_long(const char *opt, const char *v, long *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end) return hm_err("--%s: '%s' is not an integer", opt, v);
    *out = x;
    return HM_OK;
}

int stage_parse_args(int argc, char **argv, const char *default_name, const stage_opt_t *extra, stage_args_t *out)
{
    memset(out, 0, sizeof *out);
    out->stage_name = default_name;
    out->log_level = HM_LOG_INFO;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(argv[0], extra);
            return STAGE_HELP;
        }
        if (strncmp(a, "--", 2) != 0) return hm_err("unexpected argument '%s' (options start with --)", a);
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nl = eq ? (size_t)(eq - name) : strlen(name);
        const stage_opt_t *o = NULL;
        int base = -1;
        for (int k = 0; g_base_opts[k].name && !o; k++)
            if (strlen(g_base_opts[k].name) == nl && strncmp(g_base_opts[k].name, name, nl) == 0) o = &g_base_opts[base = k];
        for (const stage_opt_t *e = extra; e && e->name && !o; e++)
            if (strlen(e->name) == nl && strncmp(e->name, name, nl) == 0) o = e;
        if (!o) return hm_err("unknown option --%.*s (see --help)", (int)nl, name);
        const char *val = NULL;
        if (o->type == STAGE_OPT_FLAG) {
            if (eq) return hm_err("--%s takes no value", o->name);
        } else if (eq) val = eq + 1;
        else if (i + 1 < argc) val = argv[++i];
        else return hm_err("--%s needs a value", o->name);
        long l;
        switch (base) {
        case 0: out->config = val; continue;
        case 1:
            if (!val[0]) return hm_err("--stage-name must not be empty");
            out->stage_name = val;
            continue;
        case 2:
            if (parse_long(o->name, val, &l) || l < 0 || l > 1000) return hm_err("--replica: '%s' is not 0..1000", val);
            out->replica = (int)l;
            continue;
        case 3: {
            static const char *lv[] = {"debug", "info", "warn", "error"};
            int k = 0;
            while (k < 4 && strcmp(val, lv[k])) k++;
            if (k == 4) return hm_err("--log-level: '%s' is not debug|info|warn|error", val);
            out->log_level = (enum hm_log_level)k;
            continue;
        }
        }
        switch (o->type) {
        case STAGE_OPT_STR: *(const char **)o->dst = val; break;
        case STAGE_OPT_INT:
            if (parse_long(o->name, val, &l)) return HM_ERR;
            *(long *)o->dst = l;
            break;
        case STAGE_OPT_DOUBLE: {
            char *end;
            errno = 0;
            double d = strtod(val, &end);
            if (errno || end == val || *end || !isfinite(d)) return hm_err("--%s: '%s' is not a number", o->name, val);
            *(double *)o->dst = d;
            break;
        }
        case STAGE_OPT_FLAG: *(int *)o->dst = 1; break;
        }
    }
    hm_log_set_level(out->log_level);
    return HM_OK;
}

/* ---- stats ---- */

#define STAT_MAX 64
#define STAT_NAME 41
#define HIST_BUCKETS 90 /* 10 per decade, 1 us .. 1000 s */

typedef struct {
    char name[STAT_NAME];
    int64_t v;
} counter_t;

typedef struct {
    char name[STAT_NAME];
    uint64_t n;
    double max, sum;
    uint64_t b[HIST_BUCKETS];
} hist_t;

/* ---- stage ---- */

#define MAX_SOCKS 16
#define MAX_TIMERS 16
#define MAX_POOLS 8

typedef struct {
    void *s;
    char name[48];
    int type;
    stage_msg_fn fn;
    void *user;
    int watched;
    tp_live_t live;
    int dead;
    stage_peer_fn on_peer;
    void *peer_user;
} sock_t;

typedef struct {
    double period, next;
    stage_timer_fn fn;
    void *user;
} timer_t_;

struct stage {
    char name[64];
    int replica;
    int sigfd;
    double started;
    double ctl_replied; /* hm_now() of the last answer on the control socket (0: none) */
    volatile int stop;
    int draining;
    sock_t socks[MAX_SOCKS];
    int nsocks;
    void *ctl;
    pool_t *pools[MAX_POOLS];
    int npools;
    timer_t_ timers[MAX_TIMERS];
    int ntimers;
    stage_timer_fn on_drain;
    void *drain_user;
    stage_check_fn check;
    void *check_user;
    int lost; /* the check said the process must go */
    counter_t counters[STAT_MAX];
    int ncounters;
    hist_t hists[STAT_MAX];
    int nhists;
    int stat_full_warned;
};

int stage_new(const char *name, int replica, stage_t **out)
{
    *out = NULL;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0) return hm_err("pthread_sigmask: %s", strerror(errno));
    int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0) return hm_err("signalfd: %s", strerror(errno));
    signal(SIGPIPE, SIG_IGN);
    signal(SIGCHLD, SIG_IGN);
    stage_t *st = hm_calloc(1, sizeof *st);
    st->sigfd = fd;
    st->replica = replica;
    if (replica > 0) snprintf(st->name, sizeof st->name, "%s.%d", name, replica);
    else snprintf(st->name, sizeof st->name, "%s", name);
    hm_log_set_name(st->name);
    st->started = hm_now();
    *out = st;
    return HM_OK;
}

void stage_free(stage_t *st)
{
    if (!st) return;
    for (int i = 0; i < st->nsocks; i++) tp_close(st->socks[i].s);
    tp_close(st->ctl);
    if (st->sigfd >= 0) close(st->sigfd);
    free(st);
}

const char *stage_name(const stage_t *st) { return st->name; }
int stage_draining(const stage_t *st) { return st->draining; }
void stage_stop(stage_t *st) { st->stop = 1; }

void stage_on_check(stage_t *st, stage_check_fn fn, void *user)
{
    st->check = fn;
    st->check_user = user;
}

void stage_exit_if_broken(stage_t *st)
{
    if (!st || !st->check || st->check(st->check_user, 1) == HM_OK) return;
    LOG_ERROR("%s: exiting, to be restarted; the requests in flight are not failed (their clients "
              "recover them as after a crash)", hm_errmsg());
    sd_notify(0, "STOPPING=1");
    _exit(HM_EXIT_LOST);
}

int stage_lost(const stage_t *st) { return st && st->lost; }

void stage_on_drain(stage_t *st, stage_timer_fn fn, void *user)
{
    st->on_drain = fn;
    st->drain_user = user;
}

int stage_add_socket(stage_t *st, const tp_endpoint_t *ep, stage_msg_fn on_msg, void *user)
{
    if (st->nsocks >= MAX_SOCKS) return hm_err("stage '%s': more than %d sockets", st->name, MAX_SOCKS);
    void *s;
    if (tp_open(ep, &s) != HM_OK) return HM_ERR;
    sock_t *k = &st->socks[st->nsocks];
    memset(k, 0, sizeof *k);
    k->s = s;
    snprintf(k->name, sizeof k->name, "%s", ep->name ? ep->name : ep->url);
    k->type = ep->type;
    k->fn = on_msg;
    k->user = user;
    return st->nsocks++;
}

void *stage_socket(stage_t *st, int sock) { return sock >= 0 && sock < st->nsocks ? st->socks[sock].s : NULL; }

int stage_reply(stage_t *st, int sock, const tp_peer_t *from, const desc_t *d)
{
    if (sock < 0 || sock >= st->nsocks) return hm_err("stage '%s': no socket %d", st->name, sock);
    sock_t *k = &st->socks[sock];
    int routed = k->type == ZMQ_ROUTER || k->type == ZMQ_REP;
    int rc = tp_send(k->s, routed ? from : NULL, d, ZMQ_DONTWAIT);
    if (rc == TP_AGAIN) return hm_err("'%s': peer not connected or its queue is full", k->name);
    if (rc != HM_OK) return hm_err_ctx("'%s': reply", k->name);
    return HM_OK;
}

int stage_add_control(stage_t *st, const char *url)
{
    tp_endpoint_t ep = {"control", url, TP_BIND, ZMQ_ROUTER};
    if (st->ctl) return hm_err("stage '%s': control socket already open", st->name);
    return tp_open(&ep, &st->ctl);
}

int stage_add_pool(stage_t *st, pool_t *p)
{
    if (st->npools >= MAX_POOLS) return hm_err("stage '%s': more than %d pools", st->name, MAX_POOLS);
    st->pools[st->npools++] = p;
    return HM_OK;
}

int stage_add_timer(stage_t *st, double period_s, stage_timer_fn fn, void *user)
{
    if (st->ntimers >= MAX_TIMERS) return hm_err("stage '%s': more than %d timers", st->name, MAX_TIMERS);
    if (!(period_s > 0)) return hm_err("timer period must be > 0");
    st->timers[st->ntimers++] = (timer_t_){period_s, hm_now() + period_s, fn, user};
    return HM_OK;
}

int stage_watch(stage_t *st, int sock, double interval_s, int max_missed, stage_peer_fn on_dead, void *user)
{
    if (sock < 0 || sock >= st->nsocks) return hm_err("stage '%s': no socket %d", st->name, sock);
    if (!(interval_s > 0)) return hm_err("heartbeat interval must be > 0");
    sock_t *k = &st->socks[sock];
    k->watched = 1;
    tp_live_init(&k->live, interval_s, max_missed, hm_now());
    k->on_peer = on_dead;
    k->peer_user = user;
    return HM_OK;
}

/* ---- stats ---- */

static counter_t *find_counter(stage_t *st, const char *name, int create)
{
    for (int i = 0; i < st->ncounters; i++)
        if (strcmp(st->counters[i].name, name) == 0) return &st->counters[i];
    if (!create) return NULL;
    if (st->ncounters >= STAT_MAX || strlen(name) >= STAT_NAME) {
        if (!st->stat_full_warned++) LOG_WARN("stats: dropping counter '%s' (table full or name too long)", name);
        return NULL;
    }
    counter_t *c = &st->counters[st->ncounters++];
    snprintf(c->name, sizeof c->name, "%s", name);
    c->v = 0;
    return c;
}

static hist_t *find_hist(const stage_t *st, const char *name)
{
    for (int i = 0; i < st->nhists; i++)
        if (strcmp(st->hists[i].name, name) == 0) return (hist_t *)&st->hists[i];
    return NULL;
}

void stage_stat_add(stage_t *st, const char *name, int64_t n)
{
    counter_t *c = find_counter(st, name, 1);
    if (c) c->v += n;
}

int64_t stage_stat_get(const stage_t *st, const char *name)
{
    counter_t *c = find_counter((stage_t *)st, name, 0);
    return c ? c->v : 0;
}

void stage_stat_time(stage_t *st, const char *name, double seconds)
{
    hist_t *h = find_hist(st, name);
    if (!h) {
        if (st->nhists >= STAT_MAX || strlen(name) >= STAT_NAME) {
            if (!st->stat_full_warned++) LOG_WARN("stats: dropping histogram '%s' (table full or name too long)", name);
            return;
        }
        h = &st->hists[st->nhists++];
        memset(h, 0, sizeof *h);
        snprintf(h->name, sizeof h->name, "%s", name);
    }
    int b = seconds > 1e-6 ? (int)floor(10.0 * log10(seconds / 1e-6)) : 0;
    if (b < 0) b = 0;
    if (b >= HIST_BUCKETS) b = HIST_BUCKETS - 1;
    h->b[b]++;
    h->n++;
    h->sum += seconds;
    if (seconds > h->max) h->max = seconds;
}

double stage_stat_percentile(const stage_t *st, const char *name, double q)
{
    const hist_t *h = find_hist(st, name);
    if (!h || !h->n) return -1;
    uint64_t want = (uint64_t)ceil(q * (double)h->n);
    if (want < 1) want = 1;
    uint64_t cum = 0;
    for (int b = 0; b < HIST_BUCKETS; b++) {
        cum += h->b[b];
        if (cum >= want) {
            /* geometric middle of the bucket, never above the largest value seen */
            double mid = 1e-6 * pow(10.0, (b + 0.5) / 10.0);
            return mid < h->max ? mid : h->max;
        }
    }
    return h->max;
}

/* ---- control ---- */

static void reply_stats(stage_t *st, desc_t *r)
{
    char key[DESC_MAX_KEY + 1];
    for (int i = 0; i < st->ncounters; i++) {
        snprintf(key, sizeof key, "c.%s", st->counters[i].name);
        if (desc_set_i64(r, key, st->counters[i].v) != HM_OK) break;
    }
    for (int i = 0; i < st->nhists; i++) {
        const hist_t *h = &st->hists[i];
        snprintf(key, sizeof key, "l.%s.n", h->name);
        if (desc_set_i64(r, key, (int64_t)h->n) != HM_OK) break;
        snprintf(key, sizeof key, "l.%s.p50_ms", h->name);
        desc_set_f64(r, key, stage_stat_percentile(st, h->name, 0.50) * 1e3);
        snprintf(key, sizeof key, "l.%s.p99_ms", h->name);
        desc_set_f64(r, key, stage_stat_percentile(st, h->name, 0.99) * 1e3);
        snprintf(key, sizeof key, "l.%s.max_ms", h->name);
        desc_set_f64(r, key, h->max * 1e3);
        snprintf(key, sizeof key, "l.%s.sum_ms", h->name); /* busy time: per-stage RTF = sum / audio seconds */
        desc_set_f64(r, key, h->sum * 1e3);
    }
}

static void handle_control(stage_t *st)
{
    for (int budget = 0; budget < 64; budget++) {
        desc_t d;
        tp_peer_t from;
        int rc = tp_recv(st->ctl, &from, &d, ZMQ_DONTWAIT);
        if (rc == TP_AGAIN) return;
        if (rc != HM_OK) {
            LOG_WARN("control: %s", hm_errmsg());
            stage_stat_add(st, "bad.control", 1);
            if (from.nframes) { /* answer so the client does not wait for its timeout */
                desc_t e;
                desc_init(&e, DESC_ERROR, 0, 0);
                desc_set_str(&e, "error", "malformed descriptor");
                tp_send(st->ctl, &from, &e, ZMQ_DONTWAIT);
                desc_free(&e);
            }
            continue;
        }
        desc_t r;
        desc_init(&r, DESC_REPLY, d.req_id, d.seq);
        switch (d.type) {
        case DESC_HEALTH: {
            desc_set_str(&r, "status", st->draining ? "draining" : "ok");
            desc_set_str(&r, "stage", st->name);
            desc_set_i64(&r, "replica", st->replica);
            desc_set_i64(&r, "pid", getpid());
            desc_set_f64(&r, "uptime_s", hm_now() - st->started);
            char key[DESC_MAX_KEY + 1];
            for (int i = 0; i < st->nsocks; i++)
                if (st->socks[i].watched) {
                    snprintf(key, sizeof key, "live.%.24s", st->socks[i].name);
                    desc_set_i64(&r, key, st->socks[i].live.liveness);
                }
            break;
        }
        case DESC_STATS: reply_stats(st, &r); break;
        case DESC_DRAIN:
            if (!st->draining) {
                st->draining = 1;
                LOG_INFO("draining");
                if (st->on_drain) st->on_drain(st, st->drain_user);
            }
            desc_set_str(&r, "status", "draining");
            break;
        case DESC_SHUTDOWN:
            LOG_INFO("shutdown requested on the control socket");
            desc_set_str(&r, "status", "ok");
            st->stop = 1;
            break;
        case DESC_HEARTBEAT: r.type = DESC_HEARTBEAT; break;
        default:
            r.type = DESC_ERROR;
            desc_set_str(&r, "error", "unsupported control message");
            break;
        }
        if (tp_send(st->ctl, &from, &r, ZMQ_DONTWAIT) != HM_OK) LOG_WARN("control reply: %s", hm_errmsg());
        else st->ctl_replied = hm_now();
        desc_free(&r);
        desc_free(&d);
    }
}

/* libzmq can drop the messages queued on a bound socket when it closes, its LINGER notwithstanding
 * (libzmq issues 1264 and 4660).  Here that lost the answer to SHUTDOWN: 5 of 20 runs of
 * test_transport with three CPU hogs on two cores timed out waiting for it, and none of 20 with the
 * socket left open 300 ms longer.  So a stage that answered on its control socket within the last
 * CTL_EXIT_LINGER seconds keeps it open until that much after the answer.  What arrives meanwhile
 * gets an ERROR ("stage stopping"), so no client waits for its timeout, and is flushed the same way
 * (the whole wait is at most 4 x CTL_EXIT_LINGER from the loop's end). */
#define CTL_EXIT_LINGER 0.3

static void flush_control(stage_t *st)
{
    if (!st->ctl || !(st->ctl_replied > 0)) return;
    const double cap = hm_now() + 4 * CTL_EXIT_LINGER; /* a client that keeps asking cannot hold the exit */
    double until = st->ctl_replied + CTL_EXIT_LINGER;
    for (double now = hm_now(); now < until; now = hm_now()) {
        zmq_pollitem_t pi = {st->ctl, 0, ZMQ_POLLIN, 0};
        int n = zmq_poll(&pi, 1, (long)((until - now) * 1000.0) + 1);
        if (n < 0 && errno != EINTR) return;
        if (n <= 0) continue;
        desc_t d;
        tp_peer_t from;
        int rc = tp_recv(st->ctl, &from, &d, ZMQ_DONTWAIT);
        if (rc == TP_AGAIN) continue;
        uint64_t req = 0, seq = 0;
        if (rc == HM_OK) req = d.req_id, seq = d.seq, desc_free(&d);
        if (!from.nframes) continue;
        desc_t e;
        desc_init(&e, DESC_ERROR, req, seq);
        desc_set_str(&e, "error", "stage stopping");
        if (tp_send(st->ctl, &from, &e, ZMQ_DONTWAIT) == HM_OK) until = HM_MIN(hm_now() + CTL_EXIT_LINGER, cap);
        desc_free(&e);
    }
}

/* ---- loop ---- */

static void handle_socket(stage_t *st, int idx)
{
    sock_t *k = &st->socks[idx];
    char key[64];
    /* bounded batch so one busy socket cannot starve the others or the control socket */
    for (int budget = 0; budget < 64 && !st->stop; budget++) {
        desc_t d;
        tp_peer_t from;
        int rc = tp_recv(k->s, &from, &d, ZMQ_DONTWAIT);
        if (rc == TP_AGAIN) return;
        if (k->watched) {
            if (k->dead) {
                k->dead = 0;
                LOG_INFO("peer on '%s' is back", k->name);
                if (k->on_peer) k->on_peer(st, idx, 1, k->peer_user);
            }
            tp_live_seen(&k->live, hm_now());
        }
        if (rc != HM_OK) {
            LOG_WARN("'%s': rejected message: %s", k->name, hm_errmsg());
            snprintf(key, sizeof key, "bad.%s", k->name);
            stage_stat_add(st, key, 1);
            continue;
        }
        if (d.type == DESC_HEARTBEAT) {
            if (k->type == ZMQ_ROUTER || k->type == ZMQ_REP) tp_send(k->s, &from, &d, ZMQ_DONTWAIT);
            desc_free(&d);
            continue;
        }
        snprintf(key, sizeof key, "rx.%s", k->name);
        stage_stat_add(st, key, 1);
        if (k->fn) {
            desc_type_t type = d.type;
            double t0 = hm_now();
            HM_NVTX_PUSH(desc_type_name(type));
            rc = k->fn(st, idx, &from, &d, k->user);
            HM_NVTX_POP();
            snprintf(key, sizeof key, "msg.%s", desc_type_name(type));
            stage_stat_time(st, key, hm_now() - t0);
            if (rc != HM_OK) {
                LOG_WARN("'%s': %s req %llu seq %llu failed: %s", k->name, desc_type_name(type),
                         (unsigned long long)d.req_id, (unsigned long long)d.seq, hm_errmsg());
                snprintf(key, sizeof key, "err.%s", desc_type_name(type));
                stage_stat_add(st, key, 1);
            }
        }
        desc_free(&d);
    }
}

static void handle_signals(stage_t *st)
{
    struct signalfd_siginfo si;
    while (read(st->sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
        LOG_INFO("signal %d (%s): stopping", (int)si.ssi_signo, strsignal((int)si.ssi_signo));
        st->stop = 1;
    }
}

static void run_watches(stage_t *st, double now)
{
    for (int i = 0; i < st->nsocks; i++) {
        sock_t *k = &st->socks[i];
        if (!k->watched || !tp_live_tick(&k->live, now)) continue;
        if (k->type == ZMQ_DEALER || k->type == ZMQ_PUSH) {
            desc_t hb;
            desc_init(&hb, DESC_HEARTBEAT, 0, 0);
            tp_send(k->s, NULL, &hb, ZMQ_DONTWAIT); /* TP_AGAIN: peer not connected, nothing to do */
            desc_free(&hb);
        }
        int can_recv = k->type != ZMQ_PUSH;
        if (can_recv && !k->dead && tp_live_dead(&k->live)) {
            k->dead = 1;
            LOG_WARN("peer on '%s' missed %d heartbeats: declared dead", k->name, k->live.max_missed);
            if (k->on_peer) k->on_peer(st, i, 0, k->peer_user);
        }
    }
}

void stage_alive(void)
{
    static int enabled = -1;
    static double last;
    if (enabled < 0) {
        uint64_t usec = 0;
        enabled = sd_watchdog_enabled(0, &usec) > 0 && usec > 0;
    }
    double now = hm_now();
    if (!enabled || now - last < 1.0) return;
    last = now;
    sd_notify(0, "WATCHDOG=1");
}

int stage_run(stage_t *st)
{
    uint64_t wd_usec = 0;
    double wd_period = 0, wd_next = 0;
    if (sd_watchdog_enabled(0, &wd_usec) > 0 && wd_usec > 0) {
        wd_period = (double)wd_usec / 3e6; /* a third: one long handler must not eat the margin */
        wd_next = hm_now();
    }
    sd_notify(0, "READY=1");
    LOG_INFO("ready");
    zmq_pollitem_t items[MAX_SOCKS + MAX_POOLS + 2];
    int rc = HM_OK;
    while (!st->stop) {
        int n = 0;
        items[n++] = (zmq_pollitem_t){NULL, st->sigfd, ZMQ_POLLIN, 0};
        int ctl_i = -1, sock0 = 0, pool0 = 0;
        if (st->ctl) {
            ctl_i = n;
            items[n++] = (zmq_pollitem_t){st->ctl, 0, ZMQ_POLLIN, 0};
        }
        sock0 = n;
        for (int i = 0; i < st->nsocks; i++)
            items[n++] = (zmq_pollitem_t){st->socks[i].s, 0, st->socks[i].fn || st->socks[i].watched ? ZMQ_POLLIN : 0, 0};
        pool0 = n;
        for (int i = 0; i < st->npools; i++) /* a pool without a release socket polls nothing */
            items[n++] = (zmq_pollitem_t){pool_release_socket(st->pools[i]), st->sigfd,
                                          pool_release_socket(st->pools[i]) ? ZMQ_POLLIN : 0, 0};
        /* poll until the next timer, heartbeat or watchdog deadline (at most 1 s for leases) */
        double now = hm_now(), next = now + 1.0;
        for (int i = 0; i < st->ntimers; i++) next = HM_MIN(next, st->timers[i].next);
        for (int i = 0; i < st->nsocks; i++)
            if (st->socks[i].watched) next = HM_MIN(next, st->socks[i].live.next_tick);
        if (wd_period > 0) next = HM_MIN(next, wd_next);
        long ms = next > now ? (long)((next - now) * 1000.0) + 1 : 0;
        int pr = zmq_poll(items, n, ms);
        if (pr < 0) {
            if (errno == EINTR) continue;
            rc = hm_err("stage '%s': zmq_poll: %s", st->name, zmq_strerror(errno));
            break;
        }
        if (items[0].revents & ZMQ_POLLIN) handle_signals(st);
        if (ctl_i >= 0 && (items[ctl_i].revents & ZMQ_POLLIN)) handle_control(st);
        for (int i = 0; i < st->nsocks && !st->stop; i++)
            if (items[sock0 + i].revents & ZMQ_POLLIN) handle_socket(st, i);
        for (int i = 0; i < st->npools; i++) {
            if (items[pool0 + i].revents & ZMQ_POLLIN) pool_poll_releases(st->pools[i]);
            pool_reclaim_expired(st->pools[i]);
        }
        now = hm_now();
        for (int i = 0; i < st->ntimers; i++) {
            timer_t_ *t = &st->timers[i];
            if (now < t->next) continue;
            while (t->next <= now) t->next += t->period;
            t->fn(st, t->user);
        }
        run_watches(st, now);
        if (st->check && st->check(st->check_user, 0) != HM_OK) {
            LOG_ERROR("%s: exiting, to be restarted", hm_errmsg());
            st->lost = 1;
            rc = HM_ERR;
            break;
        }
        now = hm_now(); /* the timers above may have run for seconds */
        if (wd_period > 0 && now >= wd_next) {
            sd_notify(0, "WATCHDOG=1");
            wd_next = now + wd_period;
        }
    }
    sd_notify(0, "STOPPING=1");
    LOG_INFO("stopping");
    flush_control(st);
    return rc;
}
