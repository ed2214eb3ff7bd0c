/* service.c - the stage process main and helpers every stage service shares (service.h). */
#define _GNU_SOURCE
#include "service.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hm.h"
#include "transport.h"
#ifdef HM_CUDA
#include "ops_cuda.h"
#endif

/* Fault injection for the recovery tests: with HM_FAULT_INJECT="<stage>:<trigger file>", that
 * stage looks for the file after every loop turn; once it appears, the stage deletes it and, on
 * cuda, launches a kernel that writes to an unmapped address (hmc_fault_inject; profiling/gpu-check
 * fault), on cpu acts as if its device context were lost (tests/t_launch.sh).  Once per process;
 * the restarted stage finds no file. */
typedef struct {
    const char *stage;
    char trigger[512];
    int cuda;
    double probed; /* hm_now() of the last hmc_context_probe */
} check_t;

static void fault_setup(check_t *c)
{
    const char *e = getenv("HM_FAULT_INJECT");
    const size_t n = strlen(c->stage);
    if (!e || strncmp(e, c->stage, n) || e[n] != ':') return; /* unset, or another stage's */
    if (!e[n + 1] || strlen(e + n + 1) >= sizeof c->trigger) {
        LOG_WARN("HM_FAULT_INJECT='%s' ignored (<stage>:<trigger file>)", e);
        return;
    }
    snprintf(c->trigger, sizeof c->trigger, "%s", e + n + 1);
    LOG_WARN("fault injection armed: when %s appears", c->trigger);
}

/* a GPU stage whose CUDA context is lost exits, so the supervisor restarts it: every later call
 * would fail, and under MPS the server admits no new client until all affected ones have left.
 * After every turn the last error is read; twice a second, and before a request is failed, the
 * driver is asked as well, so an idle stage leaves too (hmc_context_probe). */
static int stage_check(void *user, int thorough)
{
    check_t *c = user;
    if (c->trigger[0] && access(c->trigger, F_OK) == 0) {
        unlink(c->trigger);
        c->trigger[0] = '\0';
        if (!c->cuda) return hm_err("fault injection: the stage acts as if its device context were lost");
#ifdef HM_CUDA
        LOG_WARN("fault injection: a kernel writes to an unmapped address now");
        if (hmc_fault_inject() != HM_OK) LOG_WARN("fault injection failed: %s", hm_errmsg());
#endif
    }
#ifdef HM_CUDA
    if (c->cuda) {
        const double now = hm_now();
        if (thorough || now - c->probed >= 0.5) {
            c->probed = now;
            return hmc_context_probe();
        }
        return hmc_context_check();
    }
#endif
    (void)thorough;
    return HM_OK;
}

int hm_stage_main(int argc, char **argv, const char *name, hm_stage_setup_fn setup, hm_stage_free_fn free_fn)
{
    stage_args_t a;
    int rc = stage_parse_args(argc, argv, name, NULL, &a);
    if (rc == STAGE_HELP) return 0;
    if (rc != HM_OK) {
        fprintf(stderr, "%s: %s\n", name, hm_errmsg());
        return 2;
    }
    if (strcmp(a.stage_name, name)) {
        fprintf(stderr, "%s: this binary runs the %s stage, not '%s'\n", name, name, a.stage_name);
        return 2;
    }
    stage_t *st;
    if (stage_new(name, a.replica, &st)) { /* first: before any ZeroMQ call (signal mask) */
        fprintf(stderr, "%s: %s\n", name, hm_errmsg());
        return 1;
    }
    /* a full disk or a file-size limit must fail the write, not kill the stage */
    signal(SIGXFSZ, SIG_IGN);
    static hm_pipeline_cfg cfg;
    int si = hm_stage_index(name);
    void *state = NULL;
    rc = 1;
    if (hm_config_load(a.config ? a.config : "pipeline.yaml", &cfg)) {
        LOG_ERROR("%s", hm_errmsg());
        goto out;
    }
    if (a.replica < 0 || a.replica >= cfg.stage[si].replicas) {
        LOG_ERROR("replica %d of %s: pipeline.yaml has %d", a.replica, name, cfg.stage[si].replicas);
        goto out;
    }
#ifndef HM_CUDA
    if (!strcmp(cfg.stage[si].backend, "cuda")) {
        LOG_ERROR("backend cuda: this build has no CUDA backend (rebuild with `make CUDA=1`)");
        goto out;
    }
#endif
    static check_t chk;
    chk.stage = name;
    chk.cuda = !strcmp(cfg.stage[si].backend, "cuda");
    fault_setup(&chk);
    if (chk.cuda || chk.trigger[0]) stage_on_check(st, stage_check, &chk);
    double t0 = hm_now();
    if (setup(st, &cfg, a.replica, &state)) {
        LOG_ERROR("%s", hm_errmsg());
        goto out;
    }
    char ctl[600];
    if (a.replica) snprintf(ctl, sizeof ctl, "%s-%d", cfg.stage[si].control, a.replica);
    else snprintf(ctl, sizeof ctl, "%s", cfg.stage[si].control);
    if (stage_add_control(st, ctl)) {
        LOG_ERROR("%s", hm_errmsg());
        goto out;
    }
    LOG_INFO("ready in %.2f s (control %s)", hm_now() - t0, ctl);
    rc = stage_run(st) == HM_OK ? 0 : stage_lost(st) ? HM_EXIT_LOST : 1;
    LOG_INFO("stopping");
out:
    if (state) free_fn(state);
    tp_url_cache_clear();
    stage_free(st);
    return rc;
}

void hm_service_pool_name(const hm_pipeline_cfg *cfg, const char *stage, int replica, const char *what, char *buf,
                          size_t cap)
{
    uint32_t h = 2166136261u; /* FNV-1a of the run dir: two pipelines on one host never collide */
    for (const char *p = cfg->run_dir; *p; p++) h = (h ^ (uint8_t)*p) * 16777619u;
    snprintf(buf, cap, "hm%08x.%s.%d.%s", h, stage, replica, what);
}

static void reply_error(const char *reply, uint64_t req, const char *stage, const char *msg, int lost)
{
    LOG_WARN("request %llx: %s", (unsigned long long)req, msg);
    desc_t d;
    desc_init(&d, DESC_ERROR, req, 0);
    desc_set_str(&d, "error", msg);
    desc_set_str(&d, "stage", stage);
    if (lost) desc_set_i64(&d, "lost", 1);
    if (tp_send_url(reply, &d)) LOG_WARN("could not report the error to the client: %s", hm_errmsg());
    desc_free(&d);
}

void hm_service_reply_error(const char *reply, uint64_t req, const char *stage, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    reply_error(reply, req, stage, msg, 0);
}

void hm_service_reply_lost(const char *reply, uint64_t req, const char *stage, const char *msg)
{
    reply_error(reply, req, stage, msg, 1);
}

int hm_service_copy_params(desc_t *dst, const desc_t *src, const char *const *skip, size_t nskip)
{
    for (uint32_t i = 0; i < src->nparams; i++) {
        const desc_param_t *p = &src->params[i];
        int skipped = 0;
        for (size_t j = 0; j < nskip && !skipped; j++) skipped = !strcmp(p->key, skip[j]);
        if (skipped) continue;
        int rc = HM_OK;
        switch (p->type) {
        case DESC_P_I64: rc = desc_set_i64(dst, p->key, p->i); break;
        case DESC_P_F64: rc = desc_set_f64(dst, p->key, p->f); break;
        case DESC_P_STR: rc = desc_set_str(dst, p->key, p->s); break;
        case DESC_P_I32S: rc = desc_set_i32s(dst, p->key, p->v, p->n); break;
        }
        if (rc) return HM_ERR;
    }
    return HM_OK;
}
