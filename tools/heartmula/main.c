/* heartmula - the command-line client (DESIGN.md "Interfaces people use").
 *
 *   heartmula generate | codes | detokenize | tokenize | stats  [options]
 *
 * generate/codes/detokenize talk to a running pipeline (the one pipeline.yaml's run_dir names);
 * when none answers, or when --model-dir/--backend/--lm-version ask for a different model than
 * the config's, a private pipeline is started with hm-launch in its own run dir for the duration
 * of the command.  The client binds a PULL socket, sends the request with that endpoint in its
 * "reply" parameter, shows progress, and exits 0 only when a stage reports the file complete. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "desc.h"
#include "hm.h"
#include "modelcfg.h"
#include "safetensors.h"
#include "transport.h"
#include "../../stages/tokenizer/bpe.h"

typedef struct {
    const char *cmd;
    const char *config;
    const char *model_dir, *backend, *lm_version, *tokenizer;
    const char *tags, *tags_file, *lyrics, *lyrics_file, *tag_ids, *lyric_ids;
    const char *out, *noise_from, *sample_format, *input;
    int lower, with_logits;
    int have_seed, have_temp, have_topk, have_cfg, have_maxs, have_steps, have_guid;
    long long seed;
    double temperature, cfg, max_seconds, guidance;
    int topk, steps;
    double timeout_s;
} opts_t;

static void usage(FILE *f)
{
    fprintf(f,
            "usage:\n"
            "  heartmula generate  (--tags TEXT | --tags-file F) (--lyrics TEXT | --lyrics-file F) -o song.wav|.flac\n"
            "  heartmula codes     (same text options) -o song.codes.safetensors\n"
            "  heartmula detokenize song.codes.safetensors -o song.wav\n"
            "  heartmula tokenize  --tokenizer tokenizer.json [--lower] < text\n"
            "  heartmula stats\n"
            "common options:\n"
            "  --config pipeline.yaml  --model-dir DIR  --backend cpu|cuda  --lm-version V  --seed N\n"
            "  --max-seconds S  --temperature T  --topk K  --cfg C        (LM; defaults 1.0, 50, 1.5)\n"
            "  --codec-steps N  --codec-guidance G                        (codec; defaults 10, 1.25)\n"
            "  --tag-ids 1,2,3 --lyric-ids 4,5,6   token ids instead of text\n"
            "  --noise-from F.safetensors   replay the codec's normal draws\n"
            "  --sample-format pcm16|pcm24|f32   --timeout S (give up after S s without progress)\n"
            "  --with-logits   (codes) also store every sampler logits vector, tensor \"sampler_logits\"\n");
}

static int parse_num(const char *opt, const char *v, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(x) || x < lo || x > hi)
        return hm_err("%s: expected a number in [%g, %g], got '%s'", opt, lo, hi, v);
    *out = x;
    return HM_OK;
}

static int parse_args(int argc, char **argv, opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->timeout_s = 600;
    if (argc < 2) return hm_err("missing command (generate, codes, detokenize, tokenize, stats); see --help");
    o->cmd = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        double x;
#define STR(name, field)                                                         \
    if (!strcmp(a, name)) {                                                      \
        if (!v) return hm_err("%s needs a value", name);                         \
        o->field = v;                                                            \
        i++;                                                                     \
        continue;                                                                \
    }
#define NUM(name, lo, hi, field, have)                                           \
    if (!strcmp(a, name)) {                                                      \
        if (!v) return hm_err("%s needs a value", name);                         \
        if (parse_num(name, v, lo, hi, &x)) return HM_ERR;                       \
        o->field = x;                                                            \
        o->have = 1;                                                             \
        i++;                                                                     \
        continue;                                                                \
    }
        STR("--config", config) STR("--model-dir", model_dir) STR("--backend", backend)
        STR("--lm-version", lm_version) STR("--tokenizer", tokenizer) STR("--tags", tags)
        STR("--tags-file", tags_file) STR("--lyrics", lyrics) STR("--lyrics-file", lyrics_file)
        STR("--tag-ids", tag_ids) STR("--lyric-ids", lyric_ids) STR("-o", out) STR("--output", out)
        STR("--noise-from", noise_from) STR("--sample-format", sample_format)
        NUM("--seed", 0, 9.0e15, seed, have_seed) NUM("--temperature", 1e-4, 100, temperature, have_temp)
        NUM("--topk", 1, 1 << 20, topk, have_topk) NUM("--cfg", 0, 100, cfg, have_cfg)
        NUM("--max-seconds", -1e9, 1e9, max_seconds, have_maxs) NUM("--codec-steps", -1e9, 1e6, steps, have_steps)
        NUM("--codec-guidance", -1e9, 1e9, guidance, have_guid)
        if (!strcmp(a, "--timeout")) {
            if (!v || parse_num(a, v, 1, 1e7, &o->timeout_s)) return hm_err("--timeout needs seconds");
            i++;
            continue;
        }
        if (!strcmp(a, "--lower")) { o->lower = 1; continue; }
        if (!strcmp(a, "--with-logits")) { o->with_logits = 1; continue; }
        if (a[0] != '-' && !o->input) { o->input = a; continue; }
        return hm_err("unknown option '%s' (see heartmula --help)", a);
#undef STR
#undef NUM
    }
    if (o->backend && strcmp(o->backend, "cpu") && strcmp(o->backend, "cuda"))
        return hm_err("--backend must be cpu or cuda, not '%s'", o->backend);
    if (o->sample_format && strcmp(o->sample_format, "pcm16") && strcmp(o->sample_format, "pcm24") &&
        strcmp(o->sample_format, "f32"))
        return hm_err("--sample-format must be pcm16, pcm24 or f32");
    if (o->have_maxs && !(o->max_seconds > 0)) return hm_err("--max-seconds must be more than 0 (got %g)", o->max_seconds);
    if (o->have_steps && (o->steps < 1 || o->steps != floor(o->steps))) return hm_err("--codec-steps must be a whole number >= 1");
    if (o->have_guid && !(o->guidance >= 0)) return hm_err("--codec-guidance must be >= 0");
    return HM_OK;
}

/* "1, 2,3" -> int32 array (owned by caller). */
static int parse_ids(const char *opt, const char *s, int32_t **out, uint32_t *n)
{
    size_t cap = 16, k = 0;
    int32_t *v = hm_malloc(cap * sizeof *v);
    const char *p = s;
    while (*p) {
        while (*p == ' ' || *p == ',') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < 0 || x > INT32_MAX) {
            free(v);
            return hm_err("%s: '%s' is not a list of non-negative token ids", opt, s);
        }
        if (k == cap) v = hm_realloc(v, (cap *= 2) * sizeof *v);
        if (k >= DESC_MAX_I32S) {
            free(v);
            return hm_err("%s: more than %d ids", opt, DESC_MAX_I32S);
        }
        v[k++] = (int32_t)x;
        p = end;
    }
    *out = v;
    *n = (uint32_t)k;
    return HM_OK;
}

/* Absolute path for a file that may not exist yet; its folder must exist and be writable. */
static int abs_out_path(const char *path, char *buf, size_t cap)
{
    char dir[PATH_MAX], rdir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    const char *base = path;
    if (slash) {
        base = path + (slash - dir) + 1;
        if (slash == dir) snprintf(dir, sizeof dir, "/");
        else *slash = 0;
    } else snprintf(dir, sizeof dir, ".");
    if (!*base) return hm_err("output '%s' names a folder, not a file", path);
    if (!realpath(dir, rdir)) return hm_err("output folder '%s': %s", dir, strerror(errno));
    if (access(rdir, W_OK) != 0) return hm_err("output folder '%s' is not writable", rdir);
    snprintf(buf, cap, "%s/%s", strcmp(rdir, "/") ? rdir : "", base);
    return HM_OK;
}

static int read_text(const char *inline_text, const char *file, const char *what, char **out)
{
    if (inline_text && file) return hm_err("give --%s or --%s-file, not both", what, what);
    if (file) return hm_read_file(file, out, NULL, 4u << 20);
    *out = hm_strdup(inline_text ? inline_text : "");
    return HM_OK;
}

/* ---- the pipeline: attach to a running one, or start a private one ---- */
typedef struct {
    hm_pipeline_cfg cfg;
    pid_t launcher;      /* private pipeline's hm-launch, 0 if attached */
    char priv_dir[256];
    char log_path[300];
} pipe_t;

static int health(const char *url, int timeout_ms)
{
    desc_t q, r;
    desc_init(&q, DESC_HEALTH, 0, 0);
    int rc = tp_request(url, &q, &r, timeout_ms);
    desc_free(&q);
    if (rc == HM_OK) desc_free(&r);
    return rc;
}

/* A pipeline runs when its supervisor announced it ready and is alive, and its tokenizer (the
 * entry, never busy for long) answers.  Other stages may be deep in a computation. */
static int running(const hm_pipeline_cfg *c)
{
    char ready[600];
    snprintf(ready, sizeof ready, "%s/ready", c->run_dir);
    FILE *f = fopen(ready, "r");
    if (!f) return 0;
    int pid = 0;
    int got = fscanf(f, "%d", &pid);
    fclose(f);
    if (got != 1 || pid <= 0 || kill(pid, 0) != 0) return 0;
    return health(c->stage[HM_STAGE_TOKENIZER].control, 2000) == HM_OK;
}

static void bin_dir(char *buf, size_t cap)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) { snprintf(buf, cap, "bin"); return; }
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (slash) *slash = 0;
    snprintf(buf, cap, "%s", exe);
}

static volatile sig_atomic_t g_interrupted;
static void on_signal(int sig) { g_interrupted = sig; }

static void pipe_stop(pipe_t *p)
{
    if (p->launcher > 0) {
        kill(p->launcher, SIGTERM);
        for (int i = 0; i < 300; i++) {
            if (waitpid(p->launcher, NULL, WNOHANG) == p->launcher) { p->launcher = 0; break; }
            usleep(50000);
        }
        if (p->launcher > 0) {
            kill(p->launcher, SIGKILL);
            waitpid(p->launcher, NULL, 0);
        }
        p->launcher = 0;
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", p->priv_dir);
        if (system(cmd)) { /* best effort */ }
    }
}

/* The first error line a stage logged (what to tell the user when the pipeline fails). */
static void first_stage_error(const char *log, char *buf, size_t cap)
{
    buf[0] = 0;
    FILE *f = fopen(log, "r");
    if (!f) return;
    char line[1200];
    while (fgets(line, sizeof line, f)) {
        char *e = strstr(line, " error: ");
        if (!e || strstr(line, " launch[")) continue;
        line[strcspn(line, "\n")] = 0;
        char *name = strchr(line, ' '); /* "HH:MM:SS.mmm stage[pid] error: msg" */
        char *br = name ? strchr(name + 1, '[') : NULL;
        if (name && br) snprintf(buf, cap, "%.*s: %s", (int)(br - name - 1), name + 1, e + 8);
        else snprintf(buf, cap, "%s", e + 8);
        break;
    }
    fclose(f);
}

static int pipe_open(const opts_t *o, pipe_t *p)
{
    memset(p, 0, sizeof *p);
    const char *cfgpath = o->config ? o->config : "pipeline.yaml";
    if (o->config || access(cfgpath, R_OK) == 0) {
        if (hm_config_load(cfgpath, &p->cfg)) return HM_ERR;
    } else {
        hm_config_defaults(&p->cfg);
        if (hm_config_parse("", 0, "defaults", &p->cfg)) return HM_ERR;
    }
    int override = 0;
    if (o->model_dir) { snprintf(p->cfg.model_dir, sizeof p->cfg.model_dir, "%s", o->model_dir); override = 1; }
    if (o->lm_version) { snprintf(p->cfg.lm_version, sizeof p->cfg.lm_version, "%s", o->lm_version); override = 1; }
    if (o->backend) {
        snprintf(p->cfg.backend, sizeof p->cfg.backend, "%s", o->backend);
        for (int s = 0; s < HM_STAGE_COUNT; s++) snprintf(p->cfg.stage[s].backend, sizeof p->cfg.stage[s].backend, "%s", o->backend);
        override = 1;
    }
    /* stages resolve a relative model_dir against their own cwd, which is ours: make it absolute */
    char abs[PATH_MAX];
    if (realpath(p->cfg.model_dir, abs)) snprintf(p->cfg.model_dir, sizeof p->cfg.model_dir, "%s", abs);
    else return hm_err("model folder '%s' does not exist (run `make demo` for the demo model, or see README: models)", p->cfg.model_dir);
    if (!override && running(&p->cfg)) return HM_OK;

    snprintf(p->priv_dir, sizeof p->priv_dir, "/tmp/heartmula-cli-%d", (int)getpid());
    if (mkdir(p->priv_dir, 0700) != 0 && errno != EEXIST) return hm_err("cannot create '%s': %s", p->priv_dir, strerror(errno));
    snprintf(p->cfg.run_dir, sizeof p->cfg.run_dir, "%s", p->priv_dir);
    for (int s = 0; s < HM_STAGE_COUNT; s++) {
        snprintf(p->cfg.stage[s].endpoint, sizeof p->cfg.stage[s].endpoint, "ipc://%s/%s.sock", p->priv_dir, hm_stage_name(s));
        snprintf(p->cfg.stage[s].control, sizeof p->cfg.stage[s].control, "ipc://%s/%s.ctl", p->priv_dir, hm_stage_name(s));
    }
    char cfgfile[400];
    snprintf(cfgfile, sizeof cfgfile, "%s/pipeline.yaml", p->priv_dir);
    if (hm_config_write(&p->cfg, cfgfile)) return HM_ERR;
    snprintf(p->log_path, sizeof p->log_path, "/tmp/heartmula-cli-%d.log", (int)getpid());
    char bdir[PATH_MAX], launch[PATH_MAX + 16];
    bin_dir(bdir, sizeof bdir);
    snprintf(launch, sizeof launch, "%s/hm-launch", bdir);
    pid_t pid = fork();
    if (pid < 0) return hm_err("fork: %s", strerror(errno));
    if (pid == 0) {
        int fd = open(p->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd >= 0) { dup2(fd, 1); dup2(fd, 2); }
        setpgid(0, 0); /* a ^C on the terminal reaches us, and we stop the pipeline in order */
        unsetenv("HEARTMULA_RUN_DIR");
        execl(launch, launch, "--config", cfgfile, "--bin-dir", bdir, (char *)NULL);
        _exit(127);
    }
    p->launcher = pid;
    char ready[600];
    snprintf(ready, sizeof ready, "%s/ready", p->priv_dir);
    double t0 = hm_now();
    int tty = isatty(2);
    while (access(ready, F_OK) != 0) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            p->launcher = 0;
            char why[1100];
            first_stage_error(p->log_path, why, sizeof why);
            if (why[0]) return hm_err("the pipeline did not start: %s", why);
            return hm_err("the pipeline did not start (log: %s)", p->log_path);
        }
        if (g_interrupted) return hm_err("interrupted");
        if (hm_now() - t0 > 600) return hm_err("the pipeline did not become ready in 600 s (log: %s)", p->log_path);
        if (tty) fprintf(stderr, "\rstarting a private pipeline (%s backend)... %.0f s", p->cfg.backend, hm_now() - t0);
        usleep(50000);
    }
    if (tty) fprintf(stderr, "\r\033[K");
    return HM_OK;
}

/* ---- request / wait ---- */
static uint64_t new_req_id(void)
{
    uint64_t id = 0;
    if (getrandom(&id, sizeof id, 0) != sizeof id) id = (uint64_t)getpid() << 32 ^ (uint64_t)(hm_now() * 1e6);
    return id & ((1ull << 53) - 1); /* keep it exact in JSON/doubles anywhere it is printed */
}

static void progress(int tty, double t0, int64_t frames, int64_t max_frames, const char *what)
{
    if (!tty) return;
    double el = hm_now() - t0, audio = frames * 0.08;
    double rtf = audio > 0 ? el / audio : 0;
    double eta = frames > 0 && max_frames > frames ? (max_frames - frames) * el / frames : 0;
    fprintf(stderr, "\r\033[K%s: %lld frames | %.1f s audio | RTF %.2f | ETA <= %.0f s", what, (long long)frames, audio, rtf, eta);
}

/* The pid of every stage process serving request req (0 where the stage does not answer within
 * timeout_ms, e.g. busy in a long computation), and when given, how long each has run (s). */
static void stage_pids_up(const hm_pipeline_cfg *c, uint64_t req, int timeout_ms, int64_t pids[HM_STAGE_COUNT],
                          double uptime[HM_STAGE_COUNT])
{
    for (int s = 0; s < HM_STAGE_COUNT; s++) {
        int r = (int)(req % (uint64_t)c->stage[s].replicas);
        char url[600];
        if (r) snprintf(url, sizeof url, "%s-%d", c->stage[s].control, r);
        else snprintf(url, sizeof url, "%s", c->stage[s].control);
        desc_t q, a;
        desc_init(&q, DESC_HEALTH, 0, 0);
        pids[s] = 0;
        if (uptime) uptime[s] = -1;
        if (tp_request(url, &q, &a, timeout_ms) == HM_OK) {
            pids[s] = desc_i64_or(&a, "pid", 0);
            if (uptime) desc_get_f64(&a, "uptime_s", &uptime[s]);
            desc_free(&a);
        }
        desc_free(&q);
    }
}

static void stage_pids(const hm_pipeline_cfg *c, uint64_t req, int timeout_ms, int64_t pids[HM_STAGE_COUNT])
{
    stage_pids_up(c, req, timeout_ms, pids, NULL);
}

/* Send the request again after a stage lost the song; HM_ERR after 5 times. */
static int send_again(const char *url, const desc_t *req_desc, const char *who, int *retries)
{
    if (++*retries > 5) return hm_err("stages restarted 5 times during this request; giving up (heartmula stats)");
    LOG_WARN("%s was restarted: sending the request again", who);
    if (tp_send_url(url, req_desc)) LOG_WARN("%s", hm_errmsg());
    return HM_OK;
}

/* Wait for the song.  When a stage serving it was restarted (its pid changed: whatever it held
 * of this song is gone) the request is sent again with the same id: every stage treats a
 * repeated request as a restart of that song, the output file is renamed into place only once,
 * and the counter-based sampler makes the retried song identical.  A busy stage (no answer) is
 * never taken for a dead one.  A restarted stage that is sent the rest of a song it never saw
 * answers ERROR with `lost`: that, too, sends the request again (at most once a second, as
 * messages of the first attempt may still be on their way). */
static int wait_done(void *pull, const pipe_t *p, const desc_t *req_desc, const char *url, int64_t max_frames, double timeout_s,
                     const char *out)
{
    int tty = isatty(2), retries = 0;
    uint64_t req = req_desc->req_id;
    double t0 = hm_now(), last = t0, last_check = t0, last_resend = 0;
    int64_t pids[HM_STAGE_COUNT], now_pids[HM_STAGE_COUNT];
    double first_audio = -1;
    stage_pids(&p->cfg, req, 1000, pids);
    for (;;) {
        if (g_interrupted) return hm_err("interrupted");
        zmq_pollitem_t it = {pull, 0, ZMQ_POLLIN, 0};
        int n = zmq_poll(&it, 1, 200);
        if (n < 0 && zmq_errno() != EINTR) return hm_err("zmq_poll: %s", zmq_strerror(zmq_errno()));
        if (p->launcher > 0 && waitpid(p->launcher, NULL, WNOHANG) == p->launcher)
            return hm_err("the private pipeline stopped unexpectedly (log: %s)", p->log_path);
        if (hm_now() - last > timeout_s) return hm_err("no progress for %.0f s; is the pipeline stuck? (heartmula stats)", timeout_s);
        if (hm_now() - last > 2.0 && hm_now() - last_check > 2.0) {
            last_check = hm_now();
            double up[HM_STAGE_COUNT];
            stage_pids_up(&p->cfg, req, 300, now_pids, up);
            int restarted = -1;
            for (int s = 0; s < HM_STAGE_COUNT; s++) {
                if (now_pids[s] && pids[s] && now_pids[s] != pids[s]) restarted = s;
                /* a stage that did not answer before (down, or busy) and has run for less time
                 * than this request: it started after the request was sent, which may have been
                 * lost with the process before it */
                if (now_pids[s] && !pids[s] && up[s] >= 0 && up[s] < hm_now() - t0) restarted = s;
                if (now_pids[s]) pids[s] = now_pids[s];
            }
            if (restarted >= 0) {
                if (send_again(url, req_desc, hm_stage_name(restarted), &retries) != HM_OK) return HM_ERR;
                last = last_resend = hm_now();
            }
        }
        if (n <= 0) continue;
        desc_t d;
        int rc = tp_recv(pull, NULL, &d, ZMQ_DONTWAIT);
        if (rc == TP_AGAIN) continue;
        if (rc != HM_OK) { LOG_WARN("ignoring a malformed message: %s", hm_errmsg()); continue; }
        if (d.req_id != req) { desc_free(&d); continue; }
        last = hm_now();
        if (d.type == DESC_ERROR) {
            const char *e = "unknown error", *st = "?";
            desc_get_str(&d, "error", &e);
            desc_get_str(&d, "stage", &st);
            if (desc_i64_or(&d, "lost", 0) == 1) { /* that stage lost the song in a restart */
                if (hm_now() - last_resend > 1.0) {
                    int rc = send_again(url, req_desc, st, &retries);
                    desc_free(&d);
                    if (rc != HM_OK) return rc;
                    stage_pids(&p->cfg, req, 300, now_pids); /* the new pid: the check above must not send again */
                    for (int s = 0; s < HM_STAGE_COUNT; s++)
                        if (now_pids[s]) pids[s] = now_pids[s];
                    last = last_resend = hm_now();
                } else {
                    desc_free(&d);
                }
                continue;
            }
            if (tty) fprintf(stderr, "\r\033[K");
            hm_err("%s: %s", st, e);
            desc_free(&d);
            return HM_ERR;
        }
        if (d.type == DESC_REPLY && desc_param(&d, "frames")) progress(tty, t0, desc_i64_or(&d, "frames", 0), max_frames, "generating");
        if (d.type == DESC_REPLY && first_audio < 0 && desc_param(&d, "window")) {
            const char *st = "";
            desc_get_str(&d, "stage", &st);
            if (!strcmp(st, "vocoder")) first_audio = hm_now() - t0; /* the first window's audio is on disk */
        }
        if (d.type == DESC_AUDIO_DONE) {
            if (tty) fprintf(stderr, "\r\033[K");
            int64_t frames = desc_i64_or(&d, "frames", 0), samples = desc_i64_or(&d, "samples", 0);
            double el = hm_now() - t0;
            if (samples > 0)
                fprintf(stderr, "wrote %s: %lld frames, %.2f s of audio in %.2f s (RTF %.3f, first audio after %.2f s)\n", out,
                        (long long)frames, samples / 48000.0, el, el / (samples / 48000.0), first_audio >= 0 ? first_audio : el);
            else
                fprintf(stderr, "wrote %s: %lld frames in %.1f s\n", out, (long long)frames, el);
            desc_free(&d);
            return HM_OK;
        }
        desc_free(&d);
    }
}

static void common_params(desc_t *d, const opts_t *o, const hm_pipeline_cfg *c, const char *out, const char *reply)
{
    desc_set_i64(d, "seed", o->have_seed ? o->seed : c->gen.seed);
    desc_set_f64(d, "temperature", o->have_temp ? o->temperature : c->gen.temperature);
    desc_set_i64(d, "topk", o->have_topk ? o->topk : c->gen.topk);
    desc_set_f64(d, "cfg", o->have_cfg ? o->cfg : c->gen.cfg);
    double ms = o->have_maxs ? o->max_seconds : c->gen.max_seconds;
    desc_set_i64(d, "max_frames", 1 + (int64_t)floor(ms * 1000.0 / 80.0 + 1e-9));
    desc_set_i64(d, "codec_steps", o->have_steps ? o->steps : c->gen.codec_steps);
    desc_set_f64(d, "codec_guidance", o->have_guid ? o->guidance : c->gen.codec_guidance);
    desc_set_str(d, "out", out);
    const char *sf = o->sample_format ? o->sample_format : c->gen.sample_format;
    if (sf && *sf) desc_set_str(d, "sample_format", sf);
    desc_set_str(d, "reply", reply);
}

static int cmd_song(const opts_t *o)
{
    int mode_codes = !strcmp(o->cmd, "codes"), mode_detok = !strcmp(o->cmd, "detokenize");
    if (!o->out) return hm_err("-o OUTPUT is required");
    const char *dot = strrchr(o->out, '.');
    if (mode_codes && !(dot && !strcmp(dot, ".safetensors"))) return hm_err("codes output must end in .safetensors");
    if (!mode_codes && !(dot && (!strcmp(dot, ".wav") || !strcmp(dot, ".flac"))))
        return hm_err("output must end in .wav or .flac");
    char out[PATH_MAX], noise[PATH_MAX] = "";
    if (abs_out_path(o->out, out, sizeof out)) return HM_ERR;
    if (o->noise_from && !realpath(o->noise_from, noise)) return hm_err("--noise-from '%s': %s", o->noise_from, strerror(errno));

    uint64_t req = new_req_id();
    desc_t d;
    int32_t *codes = NULL;
    int64_t T = 0;
    if (mode_detok) {
        if (!o->input) return hm_err("detokenize needs a codes file (heartmula detokenize song.codes.safetensors -o song.wav)");
        st_file *f;
        st_tensor *t;
        if (st_open(o->input, &f)) return HM_ERR;
        if (st_get(f, "codes", -1, NULL, &t) || t->ndim != 2 || t->shape[0] < 1 || t->shape[0] > 64) {
            st_close(f);
            return hm_err("'%s': needs a tensor \"codes\" of shape [codebooks, T]", o->input);
        }
        T = t->shape[1];
        if (T < 1) { st_close(f); return hm_err("'%s': the codes tensor is empty", o->input); }
        if (t->numel > DESC_MAX_I32S) { st_close(f); return hm_err("'%s': %lld codes is more than one request carries", o->input, (long long)T); }
        int ncb = (int)t->shape[0];
        int32_t *cm = hm_malloc((size_t)t->numel * sizeof *cm);
        if (st_to_i32(t, cm)) { free(cm); st_close(f); return HM_ERR; }
        st_close(f);
        codes = hm_malloc((size_t)t->numel * sizeof *codes); /* [ncb, T] -> [T, ncb] frames */
        for (int64_t i = 0; i < T; i++)
            for (int k = 0; k < ncb; k++) codes[i * ncb + k] = cm[(int64_t)k * T + i];
        free(cm);
        desc_init(&d, DESC_FRAMES, req, 0);
        uint64_t shape[2] = {(uint64_t)T, (uint64_t)ncb};
        desc_set_tensor(&d, DESC_DT_I32, 2, shape);
        desc_set_inline(&d, codes, (uint64_t)T * ncb * 4);
        desc_set_i64(&d, "first", 0);
        desc_set_i64(&d, "final", 1);
        desc_set_i64(&d, "total", T);
        desc_set_str(&d, "mode", "detokenize");
    } else {
        desc_init(&d, DESC_REQUEST, req, 0);
        desc_set_str(&d, "mode", mode_codes ? "codes" : "generate");
        if (mode_codes && o->with_logits) desc_set_i64(&d, "with_logits", 1);
        if (o->tag_ids || o->lyric_ids) {
            if (o->tags || o->tags_file || o->lyrics || o->lyrics_file) { desc_free(&d); return hm_err("give token ids or text, not both"); }
            int32_t *v;
            uint32_t n;
            if (parse_ids("--tag-ids", o->tag_ids ? o->tag_ids : "", &v, &n)) { desc_free(&d); return HM_ERR; }
            desc_set_i32s(&d, "tag_ids", v, n);
            free(v);
            if (parse_ids("--lyric-ids", o->lyric_ids ? o->lyric_ids : "", &v, &n)) { desc_free(&d); return HM_ERR; }
            desc_set_i32s(&d, "lyric_ids", v, n);
            free(v);
        } else {
            char *tags, *lyr;
            if (read_text(o->tags, o->tags_file, "tags", &tags)) { desc_free(&d); return HM_ERR; }
            if (read_text(o->lyrics, o->lyrics_file, "lyrics", &lyr)) { free(tags); desc_free(&d); return HM_ERR; }
            int rc = desc_set_str(&d, "tags", tags) || desc_set_str(&d, "lyrics", lyr);
            free(tags);
            free(lyr);
            if (rc) { desc_free(&d); return hm_err_ctx("text too long for one request"); }
        }
    }
    pipe_t p;
    if (pipe_open(o, &p)) { desc_free(&d); free(codes); pipe_stop(&p); return HM_ERR; }
    char reply[600];
    snprintf(reply, sizeof reply, "ipc://%s/client-%d-%llx.sock", p.cfg.run_dir, (int)getpid(), (unsigned long long)req);
    tp_endpoint_t rep = {"reply", reply, TP_BIND, ZMQ_PULL};
    void *pull = NULL;
    int rc = tp_open(&rep, &pull);
    if (!rc) {
        common_params(&d, o, &p.cfg, out, reply);
        if (noise[0]) desc_set_str(&d, "noise_from", noise);
    }
    int stage = mode_detok ? HM_STAGE_FLOW_MATCHING : HM_STAGE_TOKENIZER;
    char url[600];
    hm_stage_endpoint(&p.cfg, stage, (int)(req % (uint64_t)p.cfg.stage[stage].replicas), url, sizeof url);
    if (!rc) rc = tp_send_url(url, &d);
    int64_t mf = desc_i64_or(&d, "max_frames", 0);
    free(codes);
    if (!rc) rc = wait_done(pull, &p, &d, url, mode_detok ? T : mf, o->timeout_s, o->out);
    desc_free(&d);
    if (pull) tp_close(pull);
    tp_url_cache_clear();
    char sockpath[600];
    snprintf(sockpath, sizeof sockpath, "%s", reply + 6);
    unlink(sockpath);
    char msg[1100]; /* stopping the pipeline must not overwrite the reason we failed */
    snprintf(msg, sizeof msg, "%s", hm_errmsg());
    pipe_stop(&p);
    if (rc) hm_err("%s", msg);
    return rc;
}

static int cmd_tokenize(const opts_t *o)
{
    if (!o->tokenizer) return hm_err("tokenize needs --tokenizer tokenizer.json");
    return tok_cli_tokenize(o->tokenizer, o->lower, stdin, stdout);
}

static int cmd_stats(const opts_t *o)
{
    hm_pipeline_cfg c;
    const char *cfgpath = o->config ? o->config : "pipeline.yaml";
    if (hm_config_load(cfgpath, &c)) return HM_ERR;
    if (!running(&c)) return hm_err("no pipeline runs in '%s' (start one: bin/hm-launch --config %s)", c.run_dir, cfgpath);
    printf("%-17s %-6s %s\n", "stage", "state", "counters (c.*) and latencies (l.*: count, p50/p99/max/sum ms)");
    int ok = 0;
    for (int s = 0; s < HM_STAGE_COUNT; s++)
        for (int r = 0; r < c.stage[s].replicas; r++) {
            char url[600], name[40];
            if (r) snprintf(url, sizeof url, "%s-%d", c.stage[s].control, r);
            else snprintf(url, sizeof url, "%s", c.stage[s].control);
            snprintf(name, sizeof name, r ? "%s.%d" : "%s", hm_stage_name(s), r);
            desc_t q, a;
            desc_init(&q, DESC_STATS, 0, 0);
            int rc = tp_request(url, &q, &a, 2000);
            desc_free(&q);
            if (rc) {
                printf("%-17s %-6s %s\n", name, "down", hm_errmsg());
                continue;
            }
            ok++;
            printf("%-17s %-6s", name, "up");
            for (uint32_t i = 0; i < a.nparams; i++) {
                const desc_param_t *pp = &a.params[i];
                if (pp->type == DESC_P_I64) printf(" %s=%lld", pp->key, (long long)pp->i);
                else if (pp->type == DESC_P_F64) printf(" %s=%.4g", pp->key, pp->f);
                else if (pp->type == DESC_P_STR) printf(" %s=%s", pp->key, pp->s);
            }
            printf("\n");
            desc_free(&a);
        }
    return ok ? HM_OK : hm_err("no stage answered: is the pipeline running? (bin/hm-launch --config %s)", cfgpath);
}

int main(int argc, char **argv)
{
    hm_log_set_name("heartmula");
    hm_log_set_level(HM_LOG_WARN);
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help"))) {
        usage(stdout);
        return 0;
    }
    /* options may come before the command (heartmula --config p.yaml generate ...): find the
     * first word that is not an option or an option's value and move it to argv[1] */
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] != '-') {
            char *cmd = argv[i];
            memmove(&argv[2], &argv[1], sizeof(char *) * (size_t)(i - 1));
            argv[1] = cmd;
            break;
        }
        if (strcmp(argv[i], "--lower") && strcmp(argv[i], "--with-logits")) i++; /* the others take a value */
    }
    opts_t o;
    if (parse_args(argc, argv, &o)) {
        fprintf(stderr, "heartmula: %s\n", hm_errmsg());
        return 2;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    int rc;
    if (!strcmp(o.cmd, "generate") || !strcmp(o.cmd, "codes") || !strcmp(o.cmd, "detokenize")) rc = cmd_song(&o);
    else if (!strcmp(o.cmd, "tokenize")) rc = cmd_tokenize(&o);
    else if (!strcmp(o.cmd, "stats")) rc = cmd_stats(&o);
    else {
        fprintf(stderr, "heartmula: unknown command '%s' (generate, codes, detokenize, tokenize, stats)\n", o.cmd);
        return 2;
    }
    if (rc) {
        fprintf(stderr, "heartmula: %s\n", hm_errmsg());
        return 1;
    }
    return 0;
}
