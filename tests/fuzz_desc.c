/* fuzz_desc.c - libFuzzer target: desc_decode must reject or accept any bytes without crashing
 * or over-allocating, and anything it accepts must survive encode -> decode unchanged and
 * re-encode to the identical bytes. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "desc.h"
#include "hm.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    desc_t d;
    if (desc_decode(data, size, &d) != HM_OK) return 0;
    char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    if (desc_encode(&d, &a, &na) != HM_OK) {
        fprintf(stderr, "accepted descriptor does not re-encode: %s\n", hm_errmsg());
        abort();
    }
    desc_t e;
    if (desc_decode(a, na, &e) != HM_OK) {
        fprintf(stderr, "re-encoded descriptor rejected: %s\n", hm_errmsg());
        abort();
    }
    if (!desc_equal(&d, &e)) {
        fprintf(stderr, "round trip changed the descriptor\n");
        abort();
    }
    if (desc_encode(&e, &b, &nb) != HM_OK || na != nb || memcmp(a, b, na) != 0) {
        fprintf(stderr, "encoding is not canonical\n");
        abort();
    }
    free(a);
    free(b);
    desc_free(&d);
    desc_free(&e);
    return 0;
}
