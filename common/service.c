/* service.c - helpers every stage service shares: pool names, the client reply sockets. */
#define _GNU_SOURCE
#include "service.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "hm.h"
#include "transport.h"

void hm_service_pool_name(const hm_pipeline_cfg *cfg, const char *stage, int replica, const char *what, char *buf,
                          size_t cap)
{
    uint32_t h = 2166136261u; /* FNV-1a of the run dir: two pipelines on one host never collide */
    for (const char *p = cfg->run_dir; *p; p++) h = (h ^ (uint8_t)*p) * 16777619u;
    snprintf(buf, cap, "hm%08x.%s.%d.%s", h, stage, replica, what);
}

/* A few cached PUSH sockets to client endpoints, least recently used evicted. */
#define N_CLIENTS 16
static struct {
    char url[DESC_MAX_STR + 1];
    void *sock;
    double used;
} g_clients[N_CLIENTS];

static void *client_socket(const char *url)
{
    int lru = 0;
    for (int i = 0; i < N_CLIENTS; i++) {
        if (g_clients[i].sock && !strcmp(g_clients[i].url, url)) {
            g_clients[i].used = hm_now();
            return g_clients[i].sock;
        }
        if (!g_clients[i].sock || g_clients[i].used < g_clients[lru].used) lru = i;
        if (!g_clients[i].sock) break;
    }
    if (g_clients[lru].sock) tp_close(g_clients[lru].sock);
    g_clients[lru].sock = NULL;
    tp_endpoint_t ep = {"client", url, TP_CONNECT, ZMQ_PUSH};
    void *s;
    if (tp_open(&ep, &s)) return NULL;
    snprintf(g_clients[lru].url, sizeof g_clients[lru].url, "%s", url);
    g_clients[lru].sock = s;
    g_clients[lru].used = hm_now();
    return s;
}

int hm_service_send_client(const char *reply, const desc_t *d)
{
    if (!reply || !*reply) return hm_err("request has no reply endpoint");
    if (strncmp(reply, "ipc://", 6) && strncmp(reply, "tcp://", 6)) return hm_err("bad reply endpoint '%.80s'", reply);
    void *s = client_socket(reply);
    if (!s) return HM_ERR;
    /* A fresh connection takes a moment (ZMQ_IMMEDIATE queues nothing before it is up); a client
     * that is gone must not stall the stage, so wait at most a second. */
    int rc = tp_send(s, NULL, d, ZMQ_DONTWAIT);
    for (int i = 0; rc == TP_AGAIN && i < 100; i++) {
        usleep(10000);
        rc = tp_send(s, NULL, d, ZMQ_DONTWAIT);
    }
    if (rc == TP_AGAIN) return hm_err("client at %.80s is not listening", reply);
    return rc;
}

void hm_service_client_touch(const char *reply)
{
    if (reply && (!strncmp(reply, "ipc://", 6) || !strncmp(reply, "tcp://", 6))) client_socket(reply);
}

void hm_service_reply_error(const char *reply, uint64_t req, const char *stage, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    LOG_WARN("request %llx: %s", (unsigned long long)req, msg);
    desc_t d;
    desc_init(&d, DESC_ERROR, req, 0);
    desc_set_str(&d, "error", msg);
    desc_set_str(&d, "stage", stage);
    if (hm_service_send_client(reply, &d)) LOG_WARN("could not report the error to the client: %s", hm_errmsg());
    desc_free(&d);
}

void hm_service_close_clients(void)
{
    for (int i = 0; i < N_CLIENTS; i++)
        if (g_clients[i].sock) {
            tp_close(g_clients[i].sock);
            g_clients[i].sock = NULL;
        }
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
