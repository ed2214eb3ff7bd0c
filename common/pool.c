/* pool.c - shm and CUDA buffer pools with credit-based flow control (protocol in pool.h). */
#define _GNU_SOURCE
#include "pool.h"

#include "hm.h"
#include "transport.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef HM_CUDA
#include <cuda_runtime_api.h>
#define CU_CHECK(call)                                                                                    \
    do {                                                                                                  \
        cudaError_t e_ = (call);                                                                          \
        if (e_ != cudaSuccess) return hm_err("%s:%d: %s: %s", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
    } while (0)
#define CU_WARN(call)                                                                                     \
    do {                                                                                                  \
        cudaError_t e_ = (call);                                                                          \
        if (e_ != cudaSuccess) LOG_WARN("%s:%d: %s: %s", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
    } while (0)
#endif

#define POOL_HDR_BYTES 4096u
#define POOL_MAGIC "HMPOOL1"
#define POOL_MAX_SLOTS 4096u

/* First page of an shm pool; the consumer trusts only this, never the descriptor's geometry. */
typedef struct {
    char magic[8];
    uint64_t pool_id;
    uint32_t nslots, pad;
    uint64_t slot_bytes, stride;
} shm_header_t;

enum { SLOT_FREE = 0, SLOT_HELD, SLOT_OUT };

struct pool {
    pool_kind_t kind;
    char name[DESC_MAX_POOL_NAME + 1];
    uint64_t id;
    uint32_t nslots, next;
    uint64_t slot_bytes, stride;
    uint8_t *base;      /* shm: data start (after header); cuda: device pointer */
    void *map;          /* shm: whole mapping */
    size_t map_bytes;
    uint8_t *state;
    uint32_t *gen;
    double *deadline;
    double lease;
    char release_url[DESC_MAX_ENDPOINT + 1];
    void *rel_sock;
    uint64_t n_acquired, n_released, n_reclaimed;
#ifdef HM_CUDA
    cudaIpcMemHandle_t mem_handle;
    cudaEvent_t *events;
    cudaIpcEventHandle_t *event_handles;
#endif
};

static int check_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > DESC_MAX_POOL_NAME) return hm_err("pool name '%s' must be 1..%d chars", name, DESC_MAX_POOL_NAME);
    for (const char *c = name; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '-' ||
              *c == '_' || *c == '.'))
            return hm_err("pool name '%s': only [A-Za-z0-9._-] allowed", name);
    return HM_OK;
}

static void shm_path(char *dst, size_t cap, const char *name) { snprintf(dst, cap, "/hm.%s", name); }

static uint64_t new_pool_id(void)
{
    uint64_t id = 0;
    if (getrandom(&id, sizeof id, GRND_NONBLOCK) != (ssize_t)sizeof id)
        id = ((uint64_t)getpid() << 32) ^ (uint64_t)(hm_now() * 1e9);
    return id ? id : 1;
}

/* ---- producer ---- */

static int create_shm(pool_t *p)
{
    char path[96];
    shm_path(path, sizeof path, p->name);
    if (p->nslots > (SIZE_MAX - POOL_HDR_BYTES) / p->stride) return hm_err("pool '%s' too large", p->name);
    p->map_bytes = POOL_HDR_BYTES + (size_t)p->nslots * p->stride;
    shm_unlink(path); /* a killed producer's leftover; a live one would have a different name */
    int fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return hm_err("pool '%s': shm_open %s: %s", p->name, path, strerror(errno));
    if (ftruncate(fd, (off_t)p->map_bytes) != 0) {
        int e = errno;
        close(fd);
        shm_unlink(path);
        return hm_err("pool '%s': ftruncate %zu bytes: %s (is /dev/shm big enough?)", p->name, p->map_bytes, strerror(e));
    }
    void *m = mmap(NULL, p->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED) {
        shm_unlink(path);
        return hm_err("pool '%s': mmap %zu bytes: %s", p->name, p->map_bytes, strerror(e));
    }
    p->map = m;
    p->base = (uint8_t *)m + POOL_HDR_BYTES;
    shm_header_t *h = m;
    memcpy(h->magic, POOL_MAGIC, sizeof h->magic);
    h->pool_id = p->id;
    h->nslots = p->nslots;
    h->slot_bytes = p->slot_bytes;
    h->stride = p->stride;
    return HM_OK;
}

#ifdef HM_CUDA
static int create_cuda(pool_t *p)
{
    void *dev = NULL;
    CU_CHECK(cudaMalloc(&dev, (size_t)p->nslots * p->stride));
    p->base = dev;
    CU_CHECK(cudaIpcGetMemHandle(&p->mem_handle, dev));
    p->events = hm_calloc(p->nslots, sizeof *p->events);
    p->event_handles = hm_calloc(p->nslots, sizeof *p->event_handles);
    for (uint32_t i = 0; i < p->nslots; i++) {
        CU_CHECK(cudaEventCreateWithFlags(&p->events[i], cudaEventInterprocess | cudaEventDisableTiming));
        CU_CHECK(cudaIpcGetEventHandle(&p->event_handles[i], p->events[i]));
    }
    return HM_OK;
}
#endif

int pool_create(pool_kind_t kind, const char *name, uint32_t nslots, uint64_t slot_bytes, pool_t **out)
{
    *out = NULL;
    if (check_name(name) != HM_OK) return HM_ERR;
    if (nslots == 0 || nslots > POOL_MAX_SLOTS) return hm_err("pool '%s': %u slots (1..%u)", name, nslots, POOL_MAX_SLOTS);
    if (slot_bytes == 0 || slot_bytes > DESC_MAX_BYTES) return hm_err("pool '%s': slot size %llu", name, (unsigned long long)slot_bytes);
    if (kind != POOL_SHM && kind != POOL_CUDA) return hm_err("pool '%s': unknown kind %d", name, (int)kind);
#ifndef HM_CUDA
    if (kind == POOL_CUDA) return hm_err("pool '%s': cuda pools need a CUDA build (make CUDA=1)", name);
#endif
    pool_t *p = hm_calloc(1, sizeof *p);
    p->kind = kind;
    snprintf(p->name, sizeof p->name, "%s", name);
    p->id = new_pool_id();
    p->nslots = nslots;
    p->slot_bytes = slot_bytes;
    p->stride = (slot_bytes + 4095) & ~(uint64_t)4095; /* page-aligned slots */
    p->lease = 30.0;
    p->state = hm_calloc(nslots, 1);
    p->gen = hm_calloc(nslots, sizeof *p->gen);
    p->deadline = hm_calloc(nslots, sizeof *p->deadline);
    int rc = HM_ERR;
    if (kind == POOL_SHM) rc = create_shm(p);
#ifdef HM_CUDA
    else rc = create_cuda(p);
#endif
    if (rc != HM_OK) {
        pool_destroy(p);
        return HM_ERR;
    }
    *out = p;
    return HM_OK;
}

void pool_destroy(pool_t *p)
{
    if (!p) return;
    if (p->rel_sock) tp_close(p->rel_sock);
    if (p->kind == POOL_SHM && p->map) {
        if (munmap(p->map, p->map_bytes) != 0) LOG_WARN("pool '%s': munmap: %s", p->name, strerror(errno));
        char path[96];
        shm_path(path, sizeof path, p->name);
        shm_unlink(path);
    }
#ifdef HM_CUDA
    if (p->kind == POOL_CUDA) {
        if (p->events)
            for (uint32_t i = 0; i < p->nslots; i++)
                if (p->events[i]) CU_WARN(cudaEventDestroy(p->events[i]));
        if (p->base) CU_WARN(cudaFree(p->base));
        free(p->events);
        free(p->event_handles);
    }
#endif
    free(p->state);
    free(p->gen);
    free(p->deadline);
    free(p);
}

int pool_listen(pool_t *p, const char *url)
{
    if (strlen(url) > DESC_MAX_ENDPOINT) return hm_err("pool '%s': release url longer than %d", p->name, DESC_MAX_ENDPOINT);
    tp_endpoint_t ep = {"release", url, TP_BIND, ZMQ_PULL};
    void *s;
    if (tp_open(&ep, &s) != HM_OK) return hm_err_ctx("pool '%s'", p->name);
    if (p->rel_sock) tp_close(p->rel_sock);
    p->rel_sock = s;
    snprintf(p->release_url, sizeof p->release_url, "%s", url);
    return HM_OK;
}

void pool_set_lease(pool_t *p, double seconds) { p->lease = seconds; }
void *pool_release_socket(pool_t *p) { return p->rel_sock; }
uint32_t pool_nslots(const pool_t *p) { return p->nslots; }
uint64_t pool_slot_bytes(const pool_t *p) { return p->slot_bytes; }
const char *pool_name(const pool_t *p) { return p->name; }

uint32_t pool_free_slots(const pool_t *p)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < p->nslots; i++) n += p->state[i] == SLOT_FREE;
    return n;
}

void pool_counters(const pool_t *p, uint64_t *acquired, uint64_t *released, uint64_t *reclaimed)
{
    if (acquired) *acquired = p->n_acquired;
    if (released) *released = p->n_released;
    if (reclaimed) *reclaimed = p->n_reclaimed;
}

int pool_reclaim_expired(pool_t *p)
{
    double now = hm_now();
    int n = 0;
    for (uint32_t i = 0; i < p->nslots; i++)
        if (p->state[i] == SLOT_OUT && now >= p->deadline[i]) {
            LOG_WARN("pool '%s': slot %u not released within %.1f s lease, reclaimed", p->name, i, p->lease);
            p->state[i] = SLOT_FREE;
            p->n_reclaimed++;
            n++;
        }
    return n;
}

int pool_reclaim_all(pool_t *p)
{
    int n = 0;
    for (uint32_t i = 0; i < p->nslots; i++)
        if (p->state[i] == SLOT_OUT) {
            p->state[i] = SLOT_FREE;
            p->n_reclaimed++;
            n++;
        }
    if (n) LOG_WARN("pool '%s': reclaimed %d slots of a dead consumer", p->name, n);
    return n;
}

int pool_on_release(pool_t *p, const desc_t *rel)
{
    const desc_buf_t *b = &rel->buf;
    if (rel->type != DESC_RELEASE) return hm_err("pool '%s': %s is not a release", p->name, desc_type_name(rel->type));
    if ((b->kind != DESC_BUF_SHM && b->kind != DESC_BUF_CUDA) || strcmp(b->pool, p->name) != 0 || b->pool_id != p->id)
        return hm_err("pool '%s': release for another pool ('%s')", p->name, b->pool);
    if (b->slot >= p->nslots) return hm_err("pool '%s': release of slot %u out of range", p->name, b->slot);
    if (p->state[b->slot] != SLOT_OUT || p->gen[b->slot] != b->gen)
        return hm_err("pool '%s': stale release of slot %u generation %u (current %u)", p->name, b->slot, b->gen,
                      p->gen[b->slot]);
    p->state[b->slot] = SLOT_FREE;
    p->n_released++;
    return HM_OK;
}

int pool_poll_releases(pool_t *p)
{
    if (!p->rel_sock) return 0;
    int n = 0;
    for (;;) {
        desc_t d;
        int rc = tp_recv(p->rel_sock, NULL, &d, ZMQ_DONTWAIT);
        if (rc == TP_AGAIN) break;
        if (rc != HM_OK) {
            LOG_WARN("pool '%s': bad message on release socket: %s", p->name, hm_errmsg());
            continue;
        }
        if (pool_on_release(p, &d) == HM_OK) n++;
        else LOG_WARN("%s", hm_errmsg());
        desc_free(&d);
    }
    return n;
}

static int take_free(pool_t *p, uint32_t *slot)
{
    for (uint32_t k = 0; k < p->nslots; k++) {
        uint32_t i = (p->next + k) % p->nslots;
        if (p->state[i] == SLOT_FREE) {
            p->state[i] = SLOT_HELD;
            p->gen[i]++;
            p->next = (i + 1) % p->nslots;
            p->n_acquired++;
            *slot = i;
            return 1;
        }
    }
    return 0;
}

int pool_acquire(pool_t *p, int timeout_ms, uint32_t *slot)
{
    double start = hm_now(), end = timeout_ms < 0 ? 1e300 : start + timeout_ms / 1000.0;
    for (;;) {
        pool_poll_releases(p);
        pool_reclaim_expired(p);
        if (take_free(p, slot)) return HM_OK;
        double now = hm_now();
        if (now >= end)
            return hm_err("pool '%s': no free slot within %d ms (%u slots all out: consumer slow or gone)", p->name,
                          timeout_ms, p->nslots);
        /* sleep until a release arrives, the earliest lease expires, or the timeout */
        double wake = end;
        for (uint32_t i = 0; i < p->nslots; i++)
            if (p->state[i] == SLOT_OUT && p->deadline[i] < wake) wake = p->deadline[i];
        long ms = (long)((wake - now) * 1000.0) + 1;
        if (ms > 1000) ms = 1000;
        if (p->rel_sock) {
            zmq_pollitem_t pi = {p->rel_sock, 0, ZMQ_POLLIN, 0};
            if (zmq_poll(&pi, 1, ms) < 0 && errno != EINTR)
                return hm_err("pool '%s': poll release socket: %s", p->name, zmq_strerror(errno));
        } else {
            struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
}

void *pool_slot_ptr(pool_t *p, uint32_t slot)
{
    if (slot >= p->nslots) return NULL;
    return p->base + (size_t)slot * p->stride;
}

int pool_record(pool_t *p, uint32_t slot, void *stream)
{
    if (slot >= p->nslots) return hm_err("pool '%s': slot %u out of range", p->name, slot);
#ifdef HM_CUDA
    if (p->kind == POOL_CUDA) CU_CHECK(cudaEventRecord(p->events[slot], (cudaStream_t)stream));
#else
    (void)stream;
#endif
    return HM_OK;
}

int pool_fill_desc(pool_t *p, uint32_t slot, uint64_t offset, desc_dtype_t dt, uint32_t ndim, const uint64_t *shape,
                   desc_t *d)
{
    if (slot >= p->nslots || p->state[slot] != SLOT_HELD)
        return hm_err("pool '%s': slot %u was not acquired", p->name, slot);
    free(d->buf.data);
    memset(&d->buf, 0, sizeof d->buf);
    if (desc_set_tensor(d, dt, ndim, shape) != HM_OK) return hm_err_ctx("pool '%s'", p->name);
    desc_buf_t *b = &d->buf;
    b->kind = p->kind == POOL_CUDA ? DESC_BUF_CUDA : DESC_BUF_SHM;
    snprintf(b->pool, sizeof b->pool, "%s", p->name);
    b->pool_id = p->id;
    b->nslots = p->nslots;
    b->slot_bytes = p->slot_bytes;
    b->slot = slot;
    b->gen = p->gen[slot];
    b->offset = offset;
    snprintf(b->release_ep, sizeof b->release_ep, "%s", p->release_url);
#ifdef HM_CUDA
    if (p->kind == POOL_CUDA) {
        memcpy(b->mem_handle, &p->mem_handle, DESC_IPC_HANDLE_BYTES);
        memcpy(b->event_handle, &p->event_handles[slot], DESC_IPC_HANDLE_BYTES);
    }
#endif
    if (desc_check_bounds(d, p->nslots, p->slot_bytes) != HM_OK) return HM_ERR;
    p->state[slot] = SLOT_OUT;
    p->deadline[slot] = hm_now() + p->lease;
    return HM_OK;
}

void pool_cancel(pool_t *p, uint32_t slot)
{
    if (slot < p->nslots && p->state[slot] != SLOT_FREE) p->state[slot] = SLOT_FREE;
}

int pool_take_back(pool_t *p, uint32_t slot, uint32_t gen)
{
    if (slot >= p->nslots || p->state[slot] != SLOT_OUT || p->gen[slot] != gen) return 0;
    p->state[slot] = SLOT_FREE;
    p->gen[slot]++; /* a late RELEASE of this hand-out is stale from now on */
    p->n_released++;
    return 1;
}

/* ---- consumer ---- */

#define MAP_CACHE 32

typedef struct {
    int used;
    desc_buf_kind_t kind;
    char name[DESC_MAX_POOL_NAME + 1];
    uint64_t id;
    uint32_t nslots;
    uint64_t slot_bytes, stride;
    void *map;          /* shm: whole read-only mapping */
    size_t map_bytes;
    uint8_t *base;      /* data start (shm) / device pointer (cuda) */
    double last_use;
#ifdef HM_CUDA
    cudaEvent_t *events; /* opened lazily per slot */
#endif
} mapped_t;

static mapped_t g_maps[MAP_CACHE];
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

static void unmap_entry(mapped_t *m)
{
    if (!m->used) return;
    if (m->kind == DESC_BUF_SHM && m->map && munmap(m->map, m->map_bytes) != 0)
        LOG_WARN("pool '%s': munmap: %s", m->name, strerror(errno));
#ifdef HM_CUDA
    if (m->kind == DESC_BUF_CUDA) {
        if (m->events)
            for (uint32_t i = 0; i < m->nslots; i++)
                if (m->events[i]) CU_WARN(cudaEventDestroy(m->events[i]));
        free(m->events);
        if (m->base) CU_WARN(cudaIpcCloseMemHandle(m->base));
    }
#endif
    memset(m, 0, sizeof *m);
}

static int map_shm(const desc_t *d, mapped_t *m)
{
    const desc_buf_t *b = &d->buf;
    char path[96];
    shm_path(path, sizeof path, b->pool);
    int fd = shm_open(path, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) return hm_err("pool '%s': shm_open %s: %s (producer gone?)", b->pool, path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < (off_t)POOL_HDR_BYTES) {
        close(fd);
        return hm_err("pool '%s': shm object too small", b->pool);
    }
    size_t bytes = (size_t)st.st_size;
    void *map = mmap(NULL, bytes, PROT_READ, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the object alive; no fd is cached */
    if (map == MAP_FAILED) return hm_err("pool '%s': mmap: %s", b->pool, strerror(e));
    shm_header_t h;
    memcpy(&h, map, sizeof h);
    const char *bad = NULL;
    if (memcmp(h.magic, POOL_MAGIC, sizeof h.magic) != 0) bad = "bad magic";
    else if (h.pool_id != b->pool_id) bad = "descriptor is from another incarnation of the pool (producer restarted)";
    else if (h.nslots == 0 || h.nslots > POOL_MAX_SLOTS || h.slot_bytes == 0 || h.stride < h.slot_bytes ||
             h.stride > DESC_MAX_BYTES || (bytes - POOL_HDR_BYTES) / h.nslots < h.stride)
        bad = "header geometry does not fit the shm object";
    if (bad) {
        munmap(map, bytes);
        return hm_err("pool '%s': %s", b->pool, bad);
    }
    m->kind = DESC_BUF_SHM;
    m->map = map;
    m->map_bytes = bytes;
    m->base = (uint8_t *)map + POOL_HDR_BYTES;
    m->nslots = h.nslots;
    m->slot_bytes = h.slot_bytes;
    m->stride = h.stride;
    return HM_OK;
}

#ifdef HM_CUDA
static int map_cuda(const desc_t *d, mapped_t *m)
{
    const desc_buf_t *b = &d->buf;
    cudaIpcMemHandle_t h;
    memcpy(&h, b->mem_handle, sizeof h);
    void *dev = NULL;
    CU_CHECK(cudaIpcOpenMemHandle(&dev, h, cudaIpcMemLazyEnablePeerAccess));
    /* The runtime API cannot tell the size of an IPC allocation: the geometry of the first
     * descriptor is cached and later descriptors must agree with it. */
    m->kind = DESC_BUF_CUDA;
    m->base = dev;
    m->nslots = b->nslots;
    m->slot_bytes = b->slot_bytes;
    m->stride = (b->slot_bytes + 4095) & ~(uint64_t)4095;
    m->events = hm_calloc(b->nslots, sizeof *m->events);
    return HM_OK;
}
#endif

/* Cached mapping for d's pool (creating it); NULL + message on failure.  Caller holds g_lock. */
static mapped_t *lookup(const desc_t *d)
{
    const desc_buf_t *b = &d->buf;
    if (b->kind != DESC_BUF_SHM && b->kind != DESC_BUF_CUDA) {
        hm_err("descriptor has no pool buffer");
        return NULL;
    }
    mapped_t *hit = NULL, *victim = &g_maps[0];
    for (int i = 0; i < MAP_CACHE; i++) {
        mapped_t *m = &g_maps[i];
        if (m->used && strcmp(m->name, b->pool) == 0) hit = m;
        if (!m->used) victim = m;
        else if (victim->used && m->last_use < victim->last_use) victim = m;
    }
    if (hit && hit->id == b->pool_id && hit->kind == b->kind) {
        hit->last_use = hm_now();
        return hit;
    }
    if (hit) {
        LOG_INFO("pool '%s' was recreated by its producer: remapping", b->pool);
        unmap_entry(hit);
        victim = hit;
    }
    unmap_entry(victim);
    mapped_t m = {0};
    if (b->pool_id == 0 && b->kind == DESC_BUF_SHM) { /* never produced by pool_create */
        hm_err("pool '%s': zero incarnation id", b->pool);
        return NULL;
    }
    int rc = HM_ERR;
    if (b->kind == DESC_BUF_SHM) rc = map_shm(d, &m);
#ifdef HM_CUDA
    else rc = map_cuda(d, &m);
#else
    else hm_err("pool '%s': cuda buffer received by a build without CUDA", b->pool);
#endif
    if (rc != HM_OK) return NULL;
    m.used = 1;
    snprintf(m.name, sizeof m.name, "%s", b->pool);
    m.id = b->pool_id;
    m.last_use = hm_now();
    *victim = m;
    return victim;
}

int pool_map(const desc_t *d, const void **ptr)
{
    *ptr = NULL;
    pthread_mutex_lock(&g_lock);
    mapped_t *m = lookup(d);
    int rc = m ? desc_check_bounds(d, m->nslots, m->slot_bytes) : HM_ERR;
    if (rc == HM_OK) *ptr = m->base + (size_t)d->buf.slot * m->stride + d->buf.offset;
    pthread_mutex_unlock(&g_lock);
    return rc;
}

int pool_wait(const desc_t *d, void *stream)
{
    if (d->buf.kind != DESC_BUF_CUDA) return HM_OK;
#ifdef HM_CUDA
    pthread_mutex_lock(&g_lock);
    mapped_t *m = lookup(d);
    int rc = m ? desc_check_bounds(d, m->nslots, m->slot_bytes) : HM_ERR;
    cudaEvent_t ev = NULL;
    if (rc == HM_OK && !m->events[d->buf.slot]) {
        cudaIpcEventHandle_t h;
        memcpy(&h, d->buf.event_handle, sizeof h);
        cudaError_t e = cudaIpcOpenEventHandle(&m->events[d->buf.slot], h);
        if (e != cudaSuccess) rc = hm_err("pool '%s': cudaIpcOpenEventHandle: %s", d->buf.pool, cudaGetErrorString(e));
    }
    if (rc == HM_OK) ev = m->events[d->buf.slot];
    pthread_mutex_unlock(&g_lock);
    if (rc != HM_OK) return HM_ERR;
    CU_CHECK(cudaStreamWaitEvent((cudaStream_t)stream, ev, 0));
    return HM_OK;
#else
    (void)stream;
    return hm_err("pool '%s': cuda buffer received by a build without CUDA", d->buf.pool);
#endif
}

int pool_release_msg(const desc_t *d, desc_t *rel)
{
    desc_init(rel, DESC_RELEASE, d->req_id, d->seq);
    if (d->buf.kind != DESC_BUF_SHM && d->buf.kind != DESC_BUF_CUDA) return hm_err("release of a descriptor without a pool buffer");
    rel->buf = d->buf;
    rel->buf.data = NULL;
    return HM_OK;
}

int pool_release(const desc_t *d)
{
    if (d->buf.kind == DESC_BUF_INLINE || d->buf.kind == DESC_BUF_NONE) return HM_OK;
    if (!d->buf.release_ep[0]) return hm_err("pool '%s': descriptor has no release endpoint", d->buf.pool);
    desc_t rel;
    if (pool_release_msg(d, &rel) != HM_OK) return HM_ERR;
    /* tp_send_url, not tp_open: ZMQ_IMMEDIATE would refuse the first RELEASE sent before the
     * connection is up; these sockets queue until the producer's socket accepts them */
    int rc = tp_send_url(d->buf.release_ep, &rel);
    desc_free(&rel);
    if (rc != HM_OK) return hm_err_ctx("pool '%s': release", d->buf.pool);
    return HM_OK;
}

void pool_unmap_all(void)
{
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < MAP_CACHE; i++) unmap_entry(&g_maps[i]);
    pthread_mutex_unlock(&g_lock);
    tp_url_cache_clear();
}
