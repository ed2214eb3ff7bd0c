/* fuzz_tokenizer.c - libFuzzer target for the tokenizer stage.  Input starting with '{' is a
 * tokenizer.json for the loader (then a fixed text is encoded with it); anything else is text
 * for the llama3 tokenizer (tok_encode, tok_lower, prompt_from_text).  Runs from the repo root. */
#include <stdint.h>
#include <stdlib.h>

#include "../stages/tokenizer/bpe.h"
#include "../stages/tokenizer/prompt.h"
#include "hm.h"

static const char SAMPLE[] = "Hello <s> world</s> 123 4567 ÜnÏcödé-ΣΑΣ <mask>ony\n\n  x\t";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static tok_t *llama;
    if (!llama) {
        hm_log_set_level(HM_LOG_ERROR);
        if (tok_load("tests/fixtures/tokenizer/llama3-tokenizer.json", &llama) != HM_OK) abort();
    }
    const char *s = (const char *)data;
    int32_t *ids;
    size_t n;
    if (size > 0 && data[0] == '{') {
        tok_t *t;
        if (tok_load_mem(s, size, "fuzz", &t) == HM_OK) {
            for (int sp = 0; sp < 2; sp++)
                if (tok_encode_ex(t, SAMPLE, sizeof SAMPLE - 1, sp, &ids, &n) == HM_OK) free(ids);
            tok_free(t);
        }
        return 0;
    }
    if (tok_encode(llama, s, size, &ids, &n) == HM_OK) {
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= 128256) abort(); /* llama3 ids: 128000 BPE + 256 added */
        if (size > 0 && n == 0) abort();                  /* non-empty text never vanishes */
        free(ids);
    }
    char *low;
    size_t nl;
    if (tok_lower(s, size, &low, &nl) == HM_OK) {
        if (tok_encode(llama, low, nl, &ids, &n) == HM_OK) free(ids);
        free(low);
    }
    prompt_t p;
    if (prompt_from_text(llama, s, size / 2, s + size / 2, size - size / 2, 128000, 128001, 8,
                         &p) == HM_OK) {
        if (p.len != p.ntag + 1 + p.nlyr || p.ntag < 2 || p.nlyr < 2) abort();
        prompt_free(&p);
    }
    return 0;
}
