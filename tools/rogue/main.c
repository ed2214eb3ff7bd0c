/* rogue - a hostile peer for the bad-input tests: sends malformed messages to a stage endpoint.
 *
 *   rogue URL push|dealer
 * Sends, in order: random bytes, a descriptor of an unknown version, a descriptor of an unknown
 * type, a PROMPT/FRAMES/LATENTS-shaped descriptor whose shm buffer points outside any real pool,
 * an inline buffer whose shape disagrees with its length, and a well-formed message of the wrong
 * type for the stage.  Every one must be rejected with a logged line; the stage must keep serving. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "desc.h"
#include "hm.h"
#include "transport.h"

static void send_raw(void *s, const void *buf, size_t n)
{
    if (tp_send_raw(s, NULL, buf, n, 0) != HM_OK) fprintf(stderr, "rogue: send failed: %s\n", hm_errmsg());
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: rogue URL push|dealer\n");
        return 2;
    }
    tp_endpoint_t ep = {"rogue", argv[1], TP_CONNECT, !strcmp(argv[2], "dealer") ? ZMQ_DEALER : ZMQ_PUSH};
    void *s;
    if (tp_open(&ep, &s)) {
        fprintf(stderr, "rogue: %s\n", hm_errmsg());
        return 1;
    }
    usleep(200000); /* let the connection come up (ZMQ_IMMEDIATE) */
    uint8_t junk[64];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)(i * 37 + 11);
    send_raw(s, junk, sizeof junk);
    /* a valid descriptor re-encoded with version 99: patch the byte after the "v" key */
    desc_t d;
    desc_init(&d, DESC_PROMPT, 0x5eed, 0);
    desc_set_str(&d, "reply", "ipc:///nonexistent/rogue.sock");
    char *buf;
    size_t n;
    if (desc_encode(&d, &buf, &n) == HM_OK) {
        for (size_t i = 0; i + 2 < n; i++)
            if (buf[i] == (char)0xa1 && buf[i + 1] == 'v') { buf[i + 2] = 99; break; }
        send_raw(s, buf, n);
        free(buf);
    }
    desc_free(&d);
    /* unknown type number */
    desc_init(&d, (desc_type_t)(DESC_TYPE_COUNT + 5), 0x5eed, 1);
    if (desc_encode(&d, &buf, &n) == HM_OK) { send_raw(s, buf, n); free(buf); }
    desc_free(&d);
    /* every data type with a buffer far outside any pool */
    desc_type_t types[] = {DESC_PROMPT, DESC_FRAMES, DESC_LATENTS, DESC_HIDDEN, DESC_PREFILL, DESC_EXTEND};
    for (size_t t = 0; t < HM_ARRAY_LEN(types); t++) {
        desc_init(&d, types[t], 0x5eed, 2 + t);
        desc_set_str(&d, "reply", "ipc:///nonexistent/rogue.sock");
        uint64_t shape[2] = {1 << 20, 9};
        desc_set_tensor(&d, DESC_DT_I32, 2, shape);
        d.buf.kind = DESC_BUF_SHM;
        snprintf(d.buf.pool, sizeof d.buf.pool, "no-such-pool");
        d.buf.nslots = 4;
        d.buf.slot_bytes = 4096;
        d.buf.slot = 3;
        d.buf.offset = (uint64_t)1 << 39;
        if (desc_encode(&d, &buf, &n) == HM_OK) { send_raw(s, buf, n); free(buf); }
        else fprintf(stderr, "rogue: (encoder refused the out-of-bounds descriptor: %s)\n", hm_errmsg());
        desc_free(&d);
        /* the same type inline, with a length that disagrees with the shape */
        desc_init(&d, types[t], 0x5eed, 20 + t);
        desc_set_str(&d, "reply", "ipc:///nonexistent/rogue.sock");
        int32_t v[4] = {1, 2, 3, 4};
        desc_set_inline(&d, v, sizeof v);
        uint64_t sh2[2] = {3, 3};
        d.buf.ndim = 2;
        memcpy(d.buf.shape, sh2, sizeof sh2);
        if (desc_encode(&d, &buf, &n) == HM_OK) { send_raw(s, buf, n); free(buf); }
        desc_free(&d);
    }
    /* well formed, but nothing a stage takes on its data socket */
    desc_init(&d, DESC_AUDIO_DONE, 0x5eed, 40);
    desc_set_str(&d, "reply", "ipc:///nonexistent/rogue.sock");
    if (desc_encode(&d, &buf, &n) == HM_OK) { send_raw(s, buf, n); free(buf); }
    desc_free(&d);
    usleep(200000);
    tp_close(s);
    tp_url_cache_clear();
    return 0;
}
