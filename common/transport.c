/* transport.c - ZeroMQ sockets, descriptor send/receive, liveness and resend table (transport.h). */
#include "transport.h"

#include "hm.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *g_ctx;
static pthread_mutex_t g_ctx_lock = PTHREAD_MUTEX_INITIALIZER;

void *tp_ctx(void)
{
    pthread_mutex_lock(&g_ctx_lock);
    if (!g_ctx) {
        g_ctx = zmq_ctx_new();
        if (!g_ctx) hm_err("zmq_ctx_new: %s", zmq_strerror(errno));
    }
    void *c = g_ctx;
    pthread_mutex_unlock(&g_ctx_lock);
    return c;
}

void tp_term(void)
{
    pthread_mutex_lock(&g_ctx_lock);
    if (g_ctx && zmq_ctx_term(g_ctx) != 0) LOG_WARN("zmq_ctx_term: %s", zmq_strerror(errno));
    g_ctx = NULL;
    pthread_mutex_unlock(&g_ctx_lock);
}

static int setopt_int(void *s, const tp_endpoint_t *ep, int opt, int v, const char *what)
{
    if (zmq_setsockopt(s, opt, &v, sizeof v) != 0)
        return hm_err("endpoint '%s': setsockopt %s: %s", ep->name ? ep->name : ep->url, what, zmq_strerror(errno));
    return HM_OK;
}

int tp_open(const tp_endpoint_t *ep, void **sock)
{
    const char *name = ep->name ? ep->name : "?";
    *sock = NULL;
    if (!ep->url || !ep->url[0]) return hm_err("endpoint '%s': empty url", name);
    void *ctx = tp_ctx();
    if (!ctx) return HM_ERR;
    void *s = zmq_socket(ctx, ep->type);
    if (!s) return hm_err("endpoint '%s': zmq_socket(%d): %s", name, ep->type, zmq_strerror(errno));
    int ok = setopt_int(s, ep, ZMQ_LINGER, 500, "LINGER") == HM_OK &&
             setopt_int(s, ep, ZMQ_RECONNECT_IVL, 100, "RECONNECT_IVL") == HM_OK &&
             setopt_int(s, ep, ZMQ_RECONNECT_IVL_MAX, 2000, "RECONNECT_IVL_MAX") == HM_OK &&
             /* ZMTP-level pings notice a dead tcp peer that never sent FIN */
             setopt_int(s, ep, ZMQ_HEARTBEAT_IVL, 1000, "HEARTBEAT_IVL") == HM_OK &&
             setopt_int(s, ep, ZMQ_HEARTBEAT_TIMEOUT, 3000, "HEARTBEAT_TIMEOUT") == HM_OK;
    if (ok && ep->type == ZMQ_ROUTER) ok = setopt_int(s, ep, ZMQ_ROUTER_MANDATORY, 1, "ROUTER_MANDATORY") == HM_OK;
    if (ok && !ep->bind && (ep->type == ZMQ_PUSH || ep->type == ZMQ_DEALER || ep->type == ZMQ_REQ))
        ok = setopt_int(s, ep, ZMQ_IMMEDIATE, 1, "IMMEDIATE") == HM_OK;
    if (ok) {
        int rc = ep->bind ? zmq_bind(s, ep->url) : zmq_connect(s, ep->url);
        if (rc != 0) {
            hm_err("endpoint '%s': %s %s: %s", name, ep->bind ? "bind" : "connect", ep->url, zmq_strerror(errno));
            ok = 0;
        }
    }
    if (!ok) {
        zmq_close(s);
        return HM_ERR;
    }
    *sock = s;
    return HM_OK;
}

void tp_close(void *sock)
{
    if (sock && zmq_close(sock) != 0) LOG_WARN("zmq_close: %s", zmq_strerror(errno));
}

static void free_buf(void *data, void *hint)
{
    (void)hint;
    free(data);
}

static int send_envelope(void *sock, const tp_peer_t *to, int flags)
{
    if (!to) return HM_OK;
    for (int i = 0; i < to->nframes; i++) {
        if (zmq_send(sock, to->id[i], to->len[i], flags | ZMQ_SNDMORE) < 0) {
            if (errno == EAGAIN && i == 0) return TP_AGAIN;
            return hm_err("send envelope: %s", zmq_strerror(errno));
        }
    }
    return HM_OK;
}

/* Sends the malloc'd buffer buf (ownership passes to ZeroMQ, freed even on failure). */
static int send_owned(void *sock, const tp_peer_t *to, char *buf, size_t len, int flags)
{
    int rc = send_envelope(sock, to, flags);
    if (rc != HM_OK) {
        free(buf);
        return rc;
    }
    zmq_msg_t m;
    if (zmq_msg_init_data(&m, buf, len, free_buf, NULL) != 0) {
        free(buf);
        return hm_err("zmq_msg_init_data: %s", zmq_strerror(errno));
    }
    if (zmq_msg_send(&m, sock, flags) < 0) {
        int e = errno;
        zmq_msg_close(&m);
        if (e == EAGAIN && !(to && to->nframes)) return TP_AGAIN;
        return hm_err("send: %s", zmq_strerror(e));
    }
    return HM_OK;
}

int tp_send(void *sock, const tp_peer_t *to, const desc_t *d, int flags)
{
    char *buf;
    size_t len;
    if (desc_encode(d, &buf, &len) != HM_OK) return HM_ERR;
    return send_owned(sock, to, buf, len, flags);
}

int tp_send_raw(void *sock, const tp_peer_t *to, const void *buf, size_t len, int flags)
{
    char *copy = hm_malloc(len ? len : 1);
    memcpy(copy, buf, len);
    return send_owned(sock, to, copy, len, flags);
}

int tp_recv(void *sock, tp_peer_t *from, desc_t *d, int flags)
{
    tp_peer_t scratch;
    if (!from) from = &scratch;
    from->nframes = 0;
    desc_init(d, DESC_NONE, 0, 0);
    zmq_msg_t m;
    zmq_msg_init(&m);
    int bad = 0;
    for (;;) {
        if (zmq_msg_recv(&m, sock, flags) < 0) {
            int e = errno;
            zmq_msg_close(&m);
            /* EAGAIN can only happen on the first frame: the rest of a multipart arrives atomically */
            if (e == EAGAIN) return TP_AGAIN;
            return hm_err("recv: %s", zmq_strerror(e));
        }
        if (!zmq_msg_more(&m)) break;
        /* envelope frame */
        if (from->nframes >= TP_MAX_ENVELOPE || zmq_msg_size(&m) > TP_MAX_ID) bad = 1;
        else {
            from->len[from->nframes] = zmq_msg_size(&m);
            memcpy(from->id[from->nframes], zmq_msg_data(&m), zmq_msg_size(&m));
            from->nframes++;
        }
    }
    int rc = bad ? hm_err("message with an oversized envelope dropped")
                 : desc_decode(zmq_msg_data(&m), zmq_msg_size(&m), d);
    zmq_msg_close(&m);
    return rc;
}

int tp_request(const char *url, const desc_t *req, desc_t *reply, int timeout_ms)
{
    desc_init(reply, DESC_NONE, 0, 0);
    tp_endpoint_t ep = {"request", url, TP_CONNECT, ZMQ_DEALER};
    void *s;
    if (tp_open(&ep, &s) != HM_OK) return HM_ERR;
    /* zero linger: an unanswered request must not keep the process alive at exit */
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    /* IMMEDIATE would make the first send fail before the connection completes; wait for it */
    tp_peer_t delim = {.nframes = 1, .len = {0}}; /* empty delimiter: REP servers need it, ROUTERs echo it */
    double deadline = hm_now() + timeout_ms / 1000.0;
    int rc;
    for (;;) {
        rc = tp_send(s, &delim, req, ZMQ_DONTWAIT);
        if (rc != TP_AGAIN) break;
        if (hm_now() >= deadline) break;
        zmq_pollitem_t pi = {s, 0, ZMQ_POLLOUT, 0};
        zmq_poll(&pi, 1, 10);
    }
    if (rc == HM_OK) {
        for (;;) {
            long left = (long)((deadline - hm_now()) * 1000.0);
            if (left < 0) left = 0;
            zmq_pollitem_t pi = {s, 0, ZMQ_POLLIN, 0};
            int n = zmq_poll(&pi, 1, left);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) {
                rc = hm_err("poll: %s", zmq_strerror(errno));
                break;
            }
            if (n == 0) {
                rc = TP_AGAIN;
                break;
            }
            rc = tp_recv(s, NULL, reply, ZMQ_DONTWAIT);
            if (rc == TP_AGAIN) continue;
            break;
        }
    }
    tp_close(s);
    if (rc == TP_AGAIN) return hm_err("no reply from %s within %d ms", url, timeout_ms);
    if (rc != HM_OK) return hm_err_ctx("request to %s", url);
    return HM_OK;
}

/* ---- sockets by URL ---- */

#define URL_CACHE 32

static struct {
    char url[DESC_MAX_ENDPOINT + 1];
    void *sock;
    double last_use;
} g_urls[URL_CACHE];
static pthread_mutex_t g_url_lock = PTHREAD_MUTEX_INITIALIZER;

/* Caller holds g_url_lock. */
static void *url_socket(const char *url)
{
    int victim = 0;
    for (int i = 0; i < URL_CACHE; i++) {
        if (g_urls[i].sock && strcmp(g_urls[i].url, url) == 0) {
            g_urls[i].last_use = hm_now();
            return g_urls[i].sock;
        }
        if (!g_urls[i].sock) victim = i;
        else if (g_urls[victim].sock && g_urls[i].last_use < g_urls[victim].last_use) victim = i;
    }
    if (strlen(url) > DESC_MAX_ENDPOINT) {
        hm_err("url longer than %d bytes", DESC_MAX_ENDPOINT);
        return NULL;
    }
    void *ctx = tp_ctx();
    if (!ctx) return NULL;
    void *s = zmq_socket(ctx, ZMQ_PUSH);
    if (!s) {
        hm_err("socket for %s: %s", url, zmq_strerror(errno));
        return NULL;
    }
    int linger = 500;
    if (zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger) != 0 || zmq_connect(s, url) != 0) {
        hm_err("connect %s: %s", url, zmq_strerror(errno));
        zmq_close(s);
        return NULL;
    }
    if (g_urls[victim].sock) zmq_close(g_urls[victim].sock);
    snprintf(g_urls[victim].url, sizeof g_urls[victim].url, "%s", url);
    g_urls[victim].sock = s;
    g_urls[victim].last_use = hm_now();
    return s;
}

int tp_send_url(const char *url, const desc_t *d)
{
    if (!url || !url[0]) return hm_err("send: empty url");
    pthread_mutex_lock(&g_url_lock);
    void *s = url_socket(url);
    int rc = s ? tp_send(s, NULL, d, ZMQ_DONTWAIT) : HM_ERR;
    pthread_mutex_unlock(&g_url_lock);
    if (rc == TP_AGAIN) return hm_err("queue to %s full (peer unreachable)", url);
    return rc;
}

void tp_url_cache_clear(void)
{
    pthread_mutex_lock(&g_url_lock);
    for (int i = 0; i < URL_CACHE; i++) {
        tp_close(g_urls[i].sock);
        g_urls[i].sock = NULL;
    }
    pthread_mutex_unlock(&g_url_lock);
}

/* ---- liveness ---- */

void tp_live_init(tp_live_t *l, double interval_s, int max_missed, double now)
{
    l->interval = interval_s;
    l->max_missed = max_missed > 0 ? max_missed : 1;
    l->liveness = l->max_missed;
    l->next_tick = now + interval_s;
}

void tp_live_seen(tp_live_t *l, double now)
{
    (void)now;
    l->liveness = l->max_missed;
}

int tp_live_tick(tp_live_t *l, double now)
{
    if (now < l->next_tick) return 0;
    if (l->liveness > 0) l->liveness--;
    /* skip intervals lost to a long stall instead of firing a burst */
    while (l->next_tick <= now) l->next_tick += l->interval;
    return 1;
}

int tp_live_dead(const tp_live_t *l) { return l->liveness <= 0; }

long tp_live_wait_ms(const tp_live_t *l, double now)
{
    double w = (l->next_tick - now) * 1000.0;
    return w > 0 ? (long)w + 1 : 0;
}

/* ---- pending table ---- */

typedef struct {
    uint64_t req, seq;
    char *buf;
    size_t len;
} pending_entry_t;

struct tp_pending {
    pending_entry_t *e;
    size_t n, cap;
};

tp_pending_t *tp_pending_new(void) { return hm_calloc(1, sizeof(tp_pending_t)); }

void tp_pending_free(tp_pending_t *p)
{
    if (!p) return;
    for (size_t i = 0; i < p->n; i++) free(p->e[i].buf);
    free(p->e);
    free(p);
}

static void pending_remove(tp_pending_t *p, size_t i)
{
    free(p->e[i].buf);
    memmove(&p->e[i], &p->e[i + 1], (p->n - i - 1) * sizeof *p->e);
    p->n--;
}

int tp_pending_add(tp_pending_t *p, const desc_t *d)
{
    char *buf;
    size_t len;
    if (desc_encode(d, &buf, &len) != HM_OK) return HM_ERR;
    tp_pending_ack(p, d->req_id, d->seq);
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 16;
        p->e = hm_realloc(p->e, p->cap * sizeof *p->e);
    }
    p->e[p->n++] = (pending_entry_t){d->req_id, d->seq, buf, len};
    return HM_OK;
}

int tp_pending_ack(tp_pending_t *p, uint64_t req_id, uint64_t seq)
{
    for (size_t i = 0; i < p->n; i++)
        if (p->e[i].req == req_id && p->e[i].seq == seq) {
            pending_remove(p, i);
            return 1;
        }
    return 0;
}

void tp_pending_drop_req(tp_pending_t *p, uint64_t req_id)
{
    for (size_t i = p->n; i-- > 0;)
        if (p->e[i].req == req_id) pending_remove(p, i);
}

size_t tp_pending_count(const tp_pending_t *p) { return p->n; }

int tp_pending_resend(tp_pending_t *p, void *sock, const tp_peer_t *to, int flags)
{
    for (size_t i = 0; i < p->n; i++) {
        int rc = tp_send_raw(sock, to, p->e[i].buf, p->e[i].len, flags);
        if (rc != HM_OK) return rc;
    }
    return HM_OK;
}
