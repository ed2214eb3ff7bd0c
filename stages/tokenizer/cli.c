/* cli.c - `heartmula tokenize` body (DESIGN.md "Interfaces people use"), kept here so the CLI
 * and the stage share one implementation and one output format. */
#include <stdio.h>
#include <stdlib.h>

#include "bpe.h"
#include "hm.h"

int tok_cli_tokenize(const char *tokenizer_path, int lower, FILE *in, FILE *out)
{
    size_t cap = 1 << 16, len = 0;
    char *buf = hm_malloc(cap);
    for (;;) {
        if (len == cap) {
            if (cap > TOK_MAX_TEXT_BYTES) {
                free(buf);
                return hm_err("tokenize: input is larger than the %zu-byte limit",
                              TOK_MAX_TEXT_BYTES);
            }
            cap *= 2;
            buf = hm_realloc(buf, cap);
        }
        size_t r = fread(buf + len, 1, cap - len, in);
        len += r;
        if (r == 0) break;
    }
    if (ferror(in)) {
        free(buf);
        return hm_err("tokenize: reading the input failed");
    }
    tok_t *tok;
    if (tok_load(tokenizer_path, &tok) != HM_OK) {
        free(buf);
        return HM_ERR;
    }
    char *text = buf;
    size_t n = len;
    int rc = HM_OK;
    if (lower) {
        rc = tok_lower(buf, len, &text, &n);
        free(buf);
        buf = NULL;
    }
    int32_t *ids = NULL;
    size_t nids = 0;
    if (rc == HM_OK) rc = tok_encode(tok, text, n, &ids, &nids);
    if (rc == HM_OK) {
        for (size_t i = 0; i < nids; i++) fprintf(out, i ? " %d" : "%d", ids[i]);
        fputc('\n', out);
        if (fflush(out) != 0 || ferror(out)) rc = hm_err("tokenize: writing the ids failed");
    }
    free(ids);
    free(text);
    tok_free(tok);
    return rc;
}
