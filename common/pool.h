/* pool.h - buffer pools: fixed slots of shared memory (shm) or CUDA device memory (cuda) that a
 * producer fills and a consumer in another process reads, with credit-based flow control.
 *
 * Protocol (DESIGN.md "Descriptors and buffers"):
 *   producer                                   consumer
 *   pool_acquire(p, timeout, &slot)  (blocks while every slot is out: a slow consumer throttles us)
 *   write pool_slot_ptr(p, slot) [cuda: kernels on stream, then pool_record(p, slot, stream)]
 *   pool_fill_desc(p, slot, ...,&d); tp_send(d) ───▶ tp_recv(&d); pool_map(&d, &ptr)
 *                                                   [cuda: pool_wait(&d, stream) before use]
 *                                                   use ptr [cuda: finish the stream work first]
 *   RELEASE arrives on p's release socket ◀─────── pool_release(&d)
 *   (pool_acquire / pool_poll_releases read it and free the slot)
 *
 * How RELEASE travels back: each producer pool binds its own PULL socket (pool_listen, e.g.
 * "ipc:///tmp/hm/backbone.hidden.rel") and writes that URL into every descriptor ("rel" field,
 * desc.h).  The consumer's pool_release() PUSHes a RELEASE descriptor (a copy of the buffer
 * reference including the slot generation) to that URL over a cached socket.  This works for
 * replicated PUSH/PULL edges, where the producer does not know which replica took a slot, and
 * needs nothing from the stage's data sockets.
 *
 * Reclaim: a slot that is out longer than the lease (pool_set_lease, default 30 s) is taken back
 * by pool_acquire / pool_reclaim_expired, and pool_reclaim_all() takes back every slot at once
 * when the stage knows its (single) consumer died.  Each hand-out bumps the slot's generation,
 * so a late RELEASE of a reclaimed-and-reused slot is recognised as stale and ignored.  A lease
 * must exceed the longest legitimate hold: a consumer still reading a reclaimed slot would see
 * it overwritten.
 *
 * shm: POSIX shared memory "/hm.<name>", a 4 KiB header (magic, incarnation id, geometry) then
 * nslots page-aligned slots.  The consumer maps it read-only once per (name, incarnation) and
 * closes the fd at once; a restarted producer has a new incarnation, which makes consumers remap.
 * cuda (HM_CUDA builds): one cudaMalloc region and one interprocess event per slot; consumers
 * cudaIpcOpenMemHandle once (cached) and cudaIpcOpenEventHandle per slot on first use.  A CUDA
 * IPC handle cannot be opened by the process that made it, so producer and consumer of a cuda
 * pool must be different processes.
 *
 * Threading: a producer pool is used from one thread; the consumer cache is mutex-protected but
 * pool_release's sockets are not thread-safe either: call the consumer side from one thread. */
#ifndef HM_POOL_H
#define HM_POOL_H

#include <stdint.h>

#include "desc.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { POOL_SHM = 1, POOL_CUDA = 2 } pool_kind_t;
typedef struct pool pool_t;

/* ---- producer ---- */

/* Allocate nslots slots of slot_bytes bytes.  name: 1..63 chars of [A-Za-z0-9._-], unique on the
 * host (a stale shm object of the same name from a killed producer is replaced).  POOL_CUDA
 * needs an HM_CUDA build and the current device.  *out owned by the caller (pool_destroy). */
int pool_create(pool_kind_t kind, const char *name, uint32_t nslots, uint64_t slot_bytes, pool_t **out);
/* Frees the memory, unlinks the shm object, closes the release socket.  Consumers that still
 * have it mapped keep a valid (orphaned) mapping until they unmap. */
void pool_destroy(pool_t *p);
/* Bind the PULL socket RELEASE messages come back on; url goes into every descriptor.  Without
 * it the pool only gets slots back through pool_on_release calls and lease expiry. */
int pool_listen(pool_t *p, const char *url);
void pool_set_lease(pool_t *p, double seconds);

/* Take a free slot, waiting up to timeout_ms (-1: forever) while every slot is out; pumps the
 * release socket and reclaims expired leases while it waits.  HM_ERR "pool 'x': no free slot
 * within N ms" on timeout. */
int pool_acquire(pool_t *p, int timeout_ms, uint32_t *slot);
/* Start of the slot: host pointer (shm) or device pointer (cuda).  slot_bytes are writable. */
void *pool_slot_ptr(pool_t *p, uint32_t slot);
/* cuda: cudaEventRecord(slot event, stream) after the writes were enqueued on stream (cudaStream_t
 * passed as void*).  shm: no-op.  Call before pool_fill_desc. */
int pool_record(pool_t *p, uint32_t slot, void *stream);
/* Fill d->buf for bytes [offset, offset + tensor bytes) of an acquired slot; d keeps its type,
 * ids and params.  The lease starts now.  HM_ERR if the tensor does not fit the slot. */
int pool_fill_desc(pool_t *p, uint32_t slot, uint64_t offset, desc_dtype_t dt, uint32_t ndim, const uint64_t *shape,
                   desc_t *d);
/* Give back an acquired slot that was never sent (e.g. the send failed). */
void pool_cancel(pool_t *p, uint32_t slot);
/* Take back a sent slot without a RELEASE, when the protocol itself proves the consumer is done
 * with it (e.g. draft-verifier's EXTEND codes: the backbone's next answer was computed from them).
 * gen is the d->buf.gen the slot went out with; a slot that was reclaimed and handed out again
 * since (another generation) is left alone.  Returns 1 if the slot came back, else 0. */
int pool_take_back(pool_t *p, uint32_t slot, uint32_t gen);
/* A RELEASE descriptor for this pool arrived: free its slot.  HM_ERR (log and carry on) for a
 * release of another pool/incarnation, a slot that is not out, or a stale generation. */
int pool_on_release(pool_t *p, const desc_t *rel);
/* Read every RELEASE queued on the release socket without blocking; returns how many slots
 * were freed.  The stage loop calls this when pool_release_socket() is readable. */
int pool_poll_releases(pool_t *p);
void *pool_release_socket(pool_t *p); /* NULL before pool_listen */
/* Take back slots whose lease expired; returns how many (each logged once as a warning). */
int pool_reclaim_expired(pool_t *p);
/* Take back every slot that is out (the consumer is known dead); returns how many. */
int pool_reclaim_all(pool_t *p);

uint32_t pool_nslots(const pool_t *p);
uint32_t pool_free_slots(const pool_t *p);
uint64_t pool_slot_bytes(const pool_t *p);
const char *pool_name(const pool_t *p);
/* Counters since creation: slots handed out, released by RELEASE, reclaimed by timeout/all. */
void pool_counters(const pool_t *p, uint64_t *acquired, uint64_t *released, uint64_t *reclaimed);

/* ---- consumer ---- */

/* Pointer to the descriptor's bytes (host pointer for shm, device pointer for cuda), after
 * checking every field against the mapped pool's real geometry (desc_check_bounds).  The
 * mapping is cached; the pointer stays valid until pool_release() of this descriptor (after
 * which the producer may overwrite it) and at most until pool_unmap_all().  shm mappings are
 * read-only.  HM_ERR for a descriptor without a pool buffer, an unknown/stale pool, bad bounds. */
int pool_map(const desc_t *d, const void **ptr);
/* cuda: make stream wait for the slot's event (no host sync).  shm/inline: no-op. */
int pool_wait(const desc_t *d, void *stream);
/* Build the RELEASE message for a received descriptor (caller desc_free()s *rel). */
int pool_release_msg(const desc_t *d, desc_t *rel);
/* Send it to the producer's release endpoint (tp_send_url: cached PUSH per endpoint, non-blocking).
 * No-op for inline buffers.  cuda: the caller must have finished (synchronised) every use of
 * the slot first.  HM_ERR when the descriptor has no release endpoint or the send fails. */
int pool_release(const desc_t *d);
/* Unmap every cached pool and close the cached release sockets (tp_url_cache_clear: every
 * tp_send_url socket) - consumer shutdown, tests. */
void pool_unmap_all(void);

#ifdef __cplusplus
}
#endif

#endif
