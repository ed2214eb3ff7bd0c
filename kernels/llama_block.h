/* llama_block.h - the torchtune llama3.2 decoder stack on the CPU (MODEL.md §2 "Transformer
 * layer"), shared by the backbone and the depth decoder: weights loaded from a safetensors file
 * under a name prefix ("backbone." / "decoder."), a forward pass over T new positions of B rows
 * with a caller-owned KV cache.  fp32 throughout (weights converted at load).
 * Its CUDA twin will be kernels/llama_block.cu. */
#ifndef HM_LLAMA_BLOCK_H
#define HM_LLAMA_BLOCK_H

#include "modelcfg.h"
#include "safetensors.h"

typedef struct {
    float *sa_norm, *wq, *wk, *wv, *wo; /* wq [H*hd, D], wk/wv [KVH*hd, D], wo [D, H*hd] */
    float *mlp_norm, *w1, *w3, *w2;     /* w1/w3 [I, D] (gate/up), w2 [D, I] */
} llama_layer;

typedef struct {
    hm_flavor fl;
    int D, H, KVH, hd, ffn, L; /* ffn: MLP hidden width */
    llama_layer *layers;
    float *norm;  /* final norm scale [D] */
    float *freqs; /* RoPE frequencies after Llama-3.1 scaling [hd/2] */
} llama_stack;

/* Per-call work buffers, sized for up to `rows` = B*T positions at once.  Grown (never shrunk)
 * by llama_scratch_reserve; the per-frame path reserves once and then never allocates. */
typedef struct {
    int rows;
    float *x2, *n, *q, *k, *v, *att, *g, *u;
} llama_scratch;

/* Load `<prefix>layers.N.*` and `<prefix>norm.scale` with the flavor's shapes.  Fails (message
 * names the tensor) on a missing tensor or a wrong shape; also rejects flavors where embed_dim is
 * not a multiple of num_heads or num_heads not a multiple of num_kv_heads.  On failure *out is
 * left freed.  Free with llama_free. */
int llama_load(st_file *f, const char *prefix, const hm_flavor *fl, llama_stack *out);
void llama_free(llama_stack *s);

/* Tensor names llama_load needs, for st_require-style reporting: fills names[] (caller frees
 * each string and the array) and returns the count. */
int llama_tensor_names(const char *prefix, int num_layers, char ***names);

void llama_scratch_reserve(llama_scratch *ws, const llama_stack *s, int rows);
void llama_scratch_free(llama_scratch *ws);

/* Run every layer (not the final norm) over x [B, T, D] (in place): row b's T positions are
 * pos0 .. pos0+T-1.  kcache/vcache hold, per layer, B rows of `cap` positions of [KVH, hd]
 * (layout [L][B][cap][KVH][hd]); positions 0 .. pos0-1 must already be filled, pos0 .. pos0+T-1
 * are written here.  The caller checks pos0 + T <= cap.  Causal attention over 0 .. pos. */
void llama_forward(const llama_stack *s, float *x, int B, int T, int pos0, float *kcache,
                   float *vcache, int cap, llama_scratch *ws);


/* Final RMSNorm of `M` rows of x into y (in place allowed). */
void llama_final_norm(const llama_stack *s, const float *x, float *y, int M);

#endif
