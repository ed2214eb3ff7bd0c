/* prompt.h - the prompt rows of MODEL.md §2: tag ids, one MuQ slot, lyric ids.
 *
 *   rows  [len, ncols] int32, ncols = num_codebooks + 1: audio codes 0, text id in the last column
 *   mask  [len, ncols] uint8: 1 in the text column of every row (the MuQ row included), else 0
 *   muq_index = number of tag ids (bos/eos included): the row the backbone overwrites with the
 *   MuQ projection (conditional) / the unconditional embedding (CFG row).
 *
 * Both builders "ensure" bos/eos on each id list as the reference does: prepend bos if the first
 * id is not bos, append eos if the last is not eos.  An empty list becomes [bos, eos] (the
 * reference would raise IndexError on empty lyrics; we define it). */
#ifndef HM_TOKENIZER_PROMPT_H
#define HM_TOKENIZER_PROMPT_H

#include <stddef.h>
#include <stdint.h>

#include "bpe.h"

/* Largest tags or lyrics text prompt_from_text accepts (bytes, before lower-casing). */
#define PROMPT_MAX_FIELD_BYTES ((size_t)1 << 20)
/* Largest id list (per field) prompt_build accepts. */
#define PROMPT_MAX_IDS ((size_t)1 << 20)

typedef struct {
    int32_t *rows;    /* [len * ncols], row-major; owned (prompt_free) */
    uint8_t *mask;    /* [len * ncols], row-major; owned */
    size_t len;       /* S = ntag + 1 + nlyr after bos/eos are ensured */
    int ncols;        /* num_codebooks + 1 */
    size_t muq_index; /* row of the MuQ slot */
    size_t ntag, nlyr;/* id counts after bos/eos are ensured */
} prompt_t;

/* Build the prompt from token ids (no tokenizer needed: `--tag-ids/--lyric-ids`).  Ids may be
 * NULL when the count is 0.  HM_ERR on num_codebooks < 1 or more than PROMPT_MAX_IDS ids; on
 * success *out holds heap buffers released by prompt_free. */
int prompt_build(const int32_t *tag_ids, size_t ntag, const int32_t *lyric_ids, size_t nlyr,
                 int32_t bos, int32_t eos, int num_codebooks, prompt_t *out);

/* Text front end: lower-case (Python str.lower) both fields, wrap the tags as "<tag>...</tag>"
 * (prepend "<tag>" unless the lowered tags start with it, append "</tag>" unless they end with
 * it: empty tags become "<tag></tag>"), tokenize each with the post-processor template applied
 * (HF `encode(text)`, as the reference calls it), then prompt_build.  Texts are UTF-8 of the
 * given length (NUL bytes allowed: ordinary characters).  HM_ERR naming the field on invalid
 * UTF-8 (with byte offset) or a field over PROMPT_MAX_FIELD_BYTES. */
int prompt_from_text(tok_t *tok, const char *tags, size_t tags_len, const char *lyrics,
                     size_t lyrics_len, int32_t bos, int32_t eos, int num_codebooks,
                     prompt_t *out);

void prompt_free(prompt_t *p);

#endif
