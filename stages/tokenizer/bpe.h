/* bpe.h - HF tokenizers `tokenizer.json` (byte-level BPE kind) loader and encoder, plus Python's
 * str.lower.  Reproduces `Tokenizer.encode(text, add_special_tokens=...)` of the HF `tokenizers`
 * library for the components listed below; anything else in the file is a load-time error that
 * names the component.
 *
 * Supported:  model BPE (vocab, merges as "a b" strings or [a, b] pairs, ignore_merges, unk_token,
 *             fuse_unk, byte_fallback); normalizer null; added_tokens (matched in the raw text
 *             before pre-tokenization, leftmost-longest, with lstrip/rstrip/single_word);
 *             pre_tokenizer Split (Regex or String pattern, all five behaviours, invert),
 *             ByteLevel (add_prefix_space, use_regex) and Sequence of those, ByteLevel last;
 *             post_processor null, ByteLevel, TemplateProcessing, Sequence; any decoder (unused).
 * Regexes are compiled as given with PCRE2 (UTF + UCP, JIT).  The reference compiles them with
 * Oniguruma; see docs/PERF.md "Tokenizer" for the known class differences.
 *
 * Threading: a tok_t is read-only after tok_load except for its scratch buffers, so one tok_t
 * must not be used by two threads at once (load one per thread if needed). */
#ifndef HM_TOKENIZER_BPE_H
#define HM_TOKENIZER_BPE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Largest text tok_encode / tok_lower accept (bytes); beyond it they fail with a message. */
#define TOK_MAX_TEXT_BYTES ((size_t)16 << 20)
/* Largest tokenizer.json tok_load reads. */
#define TOK_MAX_FILE_BYTES ((size_t)256 << 20)

typedef struct tok tok_t;

/* Load a tokenizer.json.  *out is owned by the caller (tok_free).  HM_ERR with a message naming
 * the file and the offending component ("pre_tokenizer 'Metaspace' is not supported"). */
int tok_load(const char *path, tok_t **out);
/* Same from an in-memory JSON document (not NUL-terminated; copied as needed).  `label` names it
 * in messages.  Used by tests and the fuzzer. */
int tok_load_mem(const char *json, size_t len, const char *label, tok_t **out);
void tok_free(tok_t *tok);

/* HF `encode(text, add_special_tokens=False)`: special/added-token strings in the text still
 * match.  `utf8` need not be NUL-terminated and may contain NUL bytes (a NUL is an ordinary
 * character, as in HF).  Invalid UTF-8 or len > TOK_MAX_TEXT_BYTES: HM_ERR, the message gives
 * the byte offset.  *ids is heap memory owned by the caller (free()); for empty input *n = 0
 * and *ids is a valid pointer to free. */
int tok_encode(tok_t *tok, const char *utf8, size_t len, int32_t **ids, size_t *n);
/* As tok_encode, with add_special != 0 applying the post-processor's template (what HF's
 * default `encode(text)` does, and what the reference pipeline calls). */
int tok_encode_ex(tok_t *tok, const char *utf8, size_t len, int add_special, int32_t **ids,
                  size_t *n);

/* Python's str.lower on UTF-8 text: full Unicode lower-casing (utf8proc's mapping, U+0130 to
 * "i" + U+0307 as Python's SpecialCasing does, and the Final_Sigma rule for U+03A3).  *out is a
 * NUL-terminated heap string owned by the caller (free()); *outlen excludes the NUL.  Invalid
 * UTF-8 or len > TOK_MAX_TEXT_BYTES: HM_ERR with the byte offset. */
int tok_lower(const char *in, size_t len, char **out, size_t *outlen);

/* Check that `s` is valid UTF-8 (no overlongs, surrogates or code points > U+10FFFF).  On
 * failure HM_ERR, "<what>: invalid UTF-8 at byte N". */
int tok_utf8_check(const char *s, size_t len, const char *what);

/* Id of a token given as its vocabulary string (added tokens first, then the BPE vocabulary,
 * whose keys are in byte-level form, e.g. "Ġthe"); -1 if absent. */
int32_t tok_token_id(const tok_t *tok, const char *token);
/* Number of entries in the BPE vocabulary (HF get_vocab_size(with_added_tokens=False)). */
size_t tok_vocab_size(const tok_t *tok);

/* `heartmula tokenize --tokenizer FILE [--lower] < text`: reads all of `in` (verbatim: a final
 * newline is part of the text), optionally lower-cases it, and writes the ids of
 * tok_encode (add_special_tokens=False) space-separated plus a newline to `out`.  HM_ERR with a
 * message on an unreadable/unsupported tokenizer, invalid UTF-8 (byte offset), input over
 * TOK_MAX_TEXT_BYTES or a write error; nothing is printed then. */
int tok_cli_tokenize(const char *tokenizer_path, int lower, FILE *in, FILE *out);

#endif
