/* prompt.c - MODEL.md §2 prompt rows from ids or from text (heartlib's preprocess). */
#include "prompt.h"

#include <stdlib.h>
#include <string.h>

#include "hm.h"

/* Copy ids into dst with bos/eos ensured; returns the count written (dst has n + 2 slots). */
static size_t ensure_bos_eos(const int32_t *ids, size_t n, int32_t bos, int32_t eos, int32_t *dst)
{
    size_t k = 0;
    if (n == 0 || ids[0] != bos) dst[k++] = bos;
    if (n) memcpy(dst + k, ids, n * sizeof *ids);
    k += n;
    if (dst[k - 1] != eos) dst[k++] = eos;
    return k;
}

int prompt_build(const int32_t *tag_ids, size_t ntag, const int32_t *lyric_ids, size_t nlyr,
                 int32_t bos, int32_t eos, int num_codebooks, prompt_t *out)
{
    memset(out, 0, sizeof *out);
    if (num_codebooks < 1 || num_codebooks > 64)
        return hm_err("prompt: num_codebooks %d out of range [1, 64]", num_codebooks);
    if (ntag > PROMPT_MAX_IDS || nlyr > PROMPT_MAX_IDS)
        return hm_err("prompt: %zu tag ids / %zu lyric ids, more than the %zu-id limit", ntag,
                      nlyr, PROMPT_MAX_IDS);
    if ((ntag && !tag_ids) || (nlyr && !lyric_ids)) return hm_err("prompt: NULL id list");
    int32_t *t = hm_malloc((ntag + 2) * sizeof *t), *l = hm_malloc((nlyr + 2) * sizeof *l);
    size_t nt = ensure_bos_eos(tag_ids, ntag, bos, eos, t);
    size_t nl = ensure_bos_eos(lyric_ids, nlyr, bos, eos, l);
    size_t S = nt + 1 + nl, C = (size_t)num_codebooks + 1;
    out->rows = hm_calloc(S * C, sizeof *out->rows);
    out->mask = hm_calloc(S * C, 1);
    out->len = S;
    out->ncols = (int)C;
    out->muq_index = nt;
    out->ntag = nt;
    out->nlyr = nl;
    for (size_t r = 0; r < S; r++) {
        int32_t id = r < nt ? t[r] : r == nt ? 0 : l[r - nt - 1]; /* MuQ row: text id 0 */
        out->rows[r * C + C - 1] = id;
        out->mask[r * C + C - 1] = 1;
    }
    free(t);
    free(l);
    return HM_OK;
}

static int encode_field(tok_t *tok, const char *what, const char *s, size_t n, int wrap,
                        int32_t **ids, size_t *nids)
{
    *ids = NULL;
    *nids = 0;
    if (n > PROMPT_MAX_FIELD_BYTES)
        return hm_err("%s: %zu bytes, more than the %zu-byte limit", what, n,
                      PROMPT_MAX_FIELD_BYTES);
    if (n && !s) return hm_err("%s: NULL text", what);
    if (tok_utf8_check(s, n, what) != HM_OK) return HM_ERR;
    char *low;
    size_t nlow;
    if (tok_lower(s, n, &low, &nlow) != HM_OK) return hm_err_ctx("%s", what);
    char *text = low;
    size_t ntext = nlow;
    if (wrap) {
        static const char open[] = "<tag>", close[] = "</tag>";
        const size_t no = sizeof open - 1, nc = sizeof close - 1;
        int has_open = nlow >= no && memcmp(low, open, no) == 0;
        int has_close = nlow >= nc && memcmp(low + nlow - nc, close, nc) == 0;
        text = hm_malloc(nlow + no + nc + 1);
        ntext = 0;
        if (!has_open) { memcpy(text, open, no); ntext = no; }
        memcpy(text + ntext, low, nlow);
        ntext += nlow;
        if (!has_close) { memcpy(text + ntext, close, nc); ntext += nc; }
        free(low);
    }
    int rc = tok_encode_ex(tok, text, ntext, 1, ids, nids);
    free(text);
    if (rc != HM_OK) return hm_err_ctx("%s", what);
    return HM_OK;
}

int prompt_from_text(tok_t *tok, const char *tags, size_t tags_len, const char *lyrics,
                     size_t lyrics_len, int32_t bos, int32_t eos, int num_codebooks,
                     prompt_t *out)
{
    memset(out, 0, sizeof *out);
    int32_t *tid = NULL, *lid = NULL;
    size_t nt = 0, nl = 0;
    int rc = encode_field(tok, "tags", tags, tags_len, 1, &tid, &nt);
    if (rc == HM_OK) rc = encode_field(tok, "lyrics", lyrics, lyrics_len, 0, &lid, &nl);
    if (rc == HM_OK) rc = prompt_build(tid, nt, lid, nl, bos, eos, num_codebooks, out);
    free(tid);
    free(lid);
    return rc;
}

void prompt_free(prompt_t *p)
{
    if (!p) return;
    free(p->rows);
    free(p->mask);
    memset(p, 0, sizeof *p);
}
