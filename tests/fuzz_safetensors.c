/* fuzz_safetensors.c - libFuzzer target: any byte string given to the safetensors parser is
 * either rejected with a message or yields tensors whose byte ranges lie inside the input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    st_file *f;
    if (st_open_mem(data, size, "fuzz", &f)) return 0;
    for (size_t i = 0; i < st_count(f); i++) {
        st_tensor *t = st_at(f, i);
        const uint8_t *p = t->data;
        if (p < data || p + t->nbytes > data + size) abort();
        if (t->numel <= 4096) {
            float *tmp = malloc(sizeof(float) * (size_t)(t->numel + 1));
            st_to_f32(t, tmp);
            free(tmp);
        }
    }
    st_close(f);
    return 0;
}
