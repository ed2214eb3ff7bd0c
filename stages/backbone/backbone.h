/* backbone.h - the HeartMuLa backbone on the CPU (MODEL.md §2): prompt/frame embeddings, MuQ
 * slot, the llama backbone with a per-request KV cache, final norm.  A pure compute service:
 * prefill, extend by k frames, roll back; every token decision lives in draft-verifier.
 *
 * Rows: B = 2 with classifier-free guidance (row 0 conditional, row 1 unconditional: its text
 * embeddings are `unconditional_text_embedding`), B = 1 without.
 *
 * Threads: a bb_model is read-only after bb_load, so several bb_seq may be driven concurrently
 * (one thread per sequence); a bb_seq itself is not thread-safe. */
#ifndef HM_BACKBONE_H
#define HM_BACKBONE_H

#include <stdint.h>

#include "modelcfg.h"

typedef struct bb_model bb_model;
typedef struct bb_seq bb_seq;

/* Load MODEL_DIR/HeartMuLa-oss-<lm_version> (NULL: the only one): backbone layers and norm,
 * text/audio embeddings, unconditional_text_embedding, muq_linear.  Missing tensors are listed
 * by name in the error; tensors no stage of the backbone uses are logged (not an error: the
 * decoder's live in the same file).  *out owned by the caller (bb_free). */
int bb_load(const char *model_dir, const char *lm_version, bb_model **out);
void bb_free(bb_model *m);
const hm_lm_config *bb_config(const bb_model *m);

/* Per-request state: KV cache of B rows (1 or 2) up to the flavor's max_seq_len positions.
 * The cache is reserved, not touched, so unused capacity costs no resident memory. */
int bb_seq_new(const bb_model *m, int B, bb_seq **out);
void bb_seq_free(bb_seq *s);
int bb_seq_pos(const bb_seq *s); /* positions held in the cache */
int bb_seq_rows(const bb_seq *s);

/* Run the prompt (the sequence must be empty).  rows/mask [S, ncb+1] (8 audio codes + 1 text
 * id per position, MODEL.md "Prompt").  muq_index: the MuQ slot (row 0 gets muq_linear(muq),
 * muq NULL = zeros; row 1 gets the unconditional embedding), -1 = no slot.  h_out [B, D]: the
 * normed hidden state of the last position.  Errors (cache unchanged): S <= 0, S beyond
 * max_seq_len, an id out of range (text >= text_vocab, code >= audio_vocab, negative),
 * muq_index >= S. */
int bb_prefill(const bb_model *m, bb_seq *s, const int32_t *rows, const uint8_t *mask, int S,
               int muq_index, const float *muq, float *h_out);

/* Append k frames (frames [k, ncb], audio columns on, text off) at positions pos .. pos+k-1.
 * h_out [k, B, D]: the normed hidden state of every new position (h_out[j] is what the frame
 * after frames[j] is generated from).  Errors (cache unchanged): k <= 0, past max_seq_len, a
 * code out of range. */
int bb_extend(const bb_model *m, bb_seq *s, const int32_t *frames, int k, float *h_out);

/* Forget every position >= npos (0 <= npos <= bb_seq_pos), e.g. rejected draft frames. */
int bb_rollback(bb_seq *s, int npos);

#endif
