/* transport.h - ZeroMQ helpers: open an endpoint, send/receive one descriptor, request/reply
 * with a timeout, heartbeat liveness counters, and a table of unacknowledged work to resend.
 *
 * Message framing: [envelope frames...][descriptor].  The last frame is always one msgpack
 * descriptor (desc.h); every frame before it is routing envelope (a ROUTER's peer identity,
 * a REQ/DEALER empty delimiter) which tp_recv hands back in a tp_peer_t so a reply can be
 * routed with tp_send(sock, &peer, ...).  Bulk data never travels here (pool.h).
 *
 * Patterns (DESIGN.md): data edges PUSH/PULL; backbone <-> draft-verifier DEALER/ROUTER
 * (several requests in flight, matched by req_id/seq); each stage's control socket is a ROUTER
 * that answers HEALTH/STATS/DRAIN/SHUTDOWN (stage.h does that); clients use tp_request.
 *
 * Loss: ZeroMQ reconnects by itself, but a message already queued to a peer that dies is gone.
 * tp_open sets ZMQ_IMMEDIATE on connecting sockets (nothing is queued to a peer that is not
 * connected: a send then returns TP_AGAIN instead of vanishing) and ZMQ_ROUTER_MANDATORY on
 * ROUTERs (sending to an unknown/dead peer is an error, not a silent drop).  Work that must
 * survive a peer restart is kept in a tp_pending_t until the peer's answer acknowledges it and
 * resent when tp_live_t declares the peer dead/reconnected; that policy is the stage's.
 *
 * Usage:
 *   tp_endpoint_t ep = {"hidden-in", "ipc:///tmp/hm/bb.sock", TP_CONNECT, ZMQ_DEALER};
 *   void *s;  if (tp_open(&ep, &s) != HM_OK) return HM_ERR;
 *   tp_send(s, NULL, &desc, 0);
 *   desc_t in; tp_peer_t from;
 *   int rc = tp_recv(s, &from, &in, ZMQ_DONTWAIT);   // HM_OK, TP_AGAIN or HM_ERR (logged by caller)
 *   ...  desc_free(&in);  tp_close(s);
 * Sockets are not thread-safe: use each from one thread. */
#ifndef HM_TRANSPORT_H
#define HM_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#include "desc.h"

#define TP_AGAIN 1 /* non-blocking call: nothing to receive / cannot send now */
#define TP_BIND 1
#define TP_CONNECT 0
#define TP_MAX_ENVELOPE 4
#define TP_MAX_ID 255

typedef struct {
    const char *name; /* for log/error messages ("frames-out") */
    const char *url;  /* "ipc:///tmp/hm/x.sock", "tcp://host:5555" */
    int bind;         /* TP_BIND or TP_CONNECT */
    int type;         /* ZMQ_PUSH, ZMQ_PULL, ZMQ_DEALER, ZMQ_ROUTER, ZMQ_REQ, ZMQ_REP */
} tp_endpoint_t;

/* Routing envelope of a received message (copied out of ZeroMQ, no ownership). */
typedef struct {
    int nframes;
    size_t len[TP_MAX_ENVELOPE];
    uint8_t id[TP_MAX_ENVELOPE][TP_MAX_ID];
} tp_peer_t;

/* The process-wide ZeroMQ context, created on first use (NULL + message on failure).
 * tp_term() destroys it once every socket is closed (optional at exit). */
void *tp_ctx(void);
void tp_term(void);

/* Create, configure (linger 500 ms, reconnect 100 ms..2 s, the loss options above) and
 * bind/connect a socket.  *sock is owned by the caller (tp_close).  For a bound ipc:// path the
 * directory must exist.  HM_ERR names the endpoint and the zmq error. */
int tp_open(const tp_endpoint_t *ep, void **sock);
void tp_close(void *sock);

/* Encode and send one descriptor, preceded by `to`'s envelope when non-NULL (ROUTER replies).
 * flags: 0 (block) or ZMQ_DONTWAIT.  HM_OK, TP_AGAIN (would block / no connected peer), HM_ERR. */
int tp_send(void *sock, const tp_peer_t *to, const desc_t *d, int flags);
/* Same with already-encoded bytes (resends from tp_pending_t).  Copies buf. */
int tp_send_raw(void *sock, const tp_peer_t *to, const void *buf, size_t len, int flags);
/* Receive one message and decode its last frame into *d (caller desc_free()s on HM_OK).
 * from may be NULL.  HM_OK; TP_AGAIN when ZMQ_DONTWAIT and nothing is queued; HM_ERR when the
 * socket failed or the message was malformed (the message is consumed; the caller logs
 * hm_errmsg() and carries on - a bad peer must never stop a stage). */
int tp_recv(void *sock, tp_peer_t *from, desc_t *d, int flags);

/* Send d to a URL that is known only at run time (a request's "reply" endpoint, a pool's
 * release endpoint): PUSH sockets connected on first use and cached per URL (at most 32; the
 * least recently used is closed beyond that).  Unlike tp_open's connecting sockets these queue
 * messages (up to the HWM) until the connection is up, so the first message is not refused.
 * Non-blocking: HM_ERR "queue to URL full" when the peer has been unreachable for a while. */
int tp_send_url(const char *url, const desc_t *d);
/* Close every socket tp_send_url cached (shutdown, tests). */
void tp_url_cache_clear(void);

/* One request/reply round trip on a private DEALER connected to url (a stage's control socket
 * or any ROUTER/REP): sends req, waits up to timeout_ms for one reply.  HM_ERR on timeout
 * ("no reply from URL within N ms"), on a socket error or a malformed reply. */
int tp_request(const char *url, const desc_t *req, desc_t *reply, int timeout_ms);

/* Heartbeat liveness (ZeroMQ guide "Paranoid Pirate"): every interval without any traffic from
 * the peer costs one point; at zero the peer is dead.  Any message from it restores all. */
typedef struct {
    double interval, next_tick;
    int liveness, max_missed;
} tp_live_t;
void tp_live_init(tp_live_t *l, double interval_s, int max_missed, double now);
void tp_live_seen(tp_live_t *l, double now);
/* Call whenever the poll loop wakes.  Returns 1 when an interval has elapsed (the caller sends a
 * HEARTBEAT now), 0 otherwise. */
int tp_live_tick(tp_live_t *l, double now);
int tp_live_dead(const tp_live_t *l);
/* Milliseconds until the next tick (>= 0), for the poll timeout. */
long tp_live_wait_ms(const tp_live_t *l, double now);

/* Unacknowledged work, kept encoded so it can be resent verbatim after a peer restarts.
 * Keyed by (req_id, seq); adding an existing key replaces it. */
typedef struct tp_pending tp_pending_t;
tp_pending_t *tp_pending_new(void);
void tp_pending_free(tp_pending_t *p);
int tp_pending_add(tp_pending_t *p, const desc_t *d); /* HM_ERR if d does not encode */
int tp_pending_ack(tp_pending_t *p, uint64_t req_id, uint64_t seq); /* 1 removed, 0 unknown */
void tp_pending_drop_req(tp_pending_t *p, uint64_t req_id);          /* all seqs of a request */
size_t tp_pending_count(const tp_pending_t *p);
/* Resend everything in the order it was added; stops at the first failure (HM_ERR/TP_AGAIN
 * returned, the rest stays pending). */
int tp_pending_resend(tp_pending_t *p, void *sock, const tp_peer_t *to, int flags);

#endif
