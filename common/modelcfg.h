/* modelcfg.h - typed views of a model folder's JSON configs (MODEL.md §1).
 * Every size used by the model code comes from here, never from constants. */
#ifndef HM_MODELCFG_H
#define HM_MODELCFG_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    char name[64];
    int num_layers, num_heads, num_kv_heads, embed_dim, intermediate_dim, max_seq_len;
    float rope_base, rope_scale_factor, norm_eps;
} hm_flavor;

typedef struct {
    char dir[4096];      /* the HeartMuLa-oss-* folder */
    hm_flavor backbone, decoder;
    int text_vocab_size, audio_vocab_size, audio_num_codebooks, muq_dim;
} hm_lm_config;

typedef struct {
    int text_bos_id, text_eos_id, audio_eos_id, empty_id;
} hm_gen_config;

typedef struct {
    char dir[4096];      /* the HeartCodec-oss folder */
    /* flow matching */
    int dim, codebook_size, codebook_dim, num_quantizers, attention_head_dim, in_channels,
        num_attention_heads, num_layers, num_layers_2, out_channels;
    /* scalar model (vocoder) */
    int latent_hidden_dim, init_channel, sample_rate, num_samples, causal;
    int n_up, upsample_factors[8], upsample_kernel_sizes[8];
    int default_kernel_size, delay_kernel_size, res_kernel_size, num_bands;
} hm_codec_config;

/* Look up a built-in flavor (MODEL.md §1 table) by name; NULL if unknown. */
const hm_flavor *hm_flavor_builtin(const char *name);

/* Load MODEL_DIR/HeartMuLa-oss-<version>/config.json.  version NULL: the one HeartMuLa-oss-*
 * folder in model_dir (more than one is an error naming them).  The config's "flavors" object
 * defines or overrides flavors. */
int hm_lm_config_load(const char *model_dir, const char *version, hm_lm_config *out);
/* Load MODEL_DIR/HeartCodec-oss/config.json. */
int hm_codec_config_load(const char *model_dir, hm_codec_config *out);
/* Load MODEL_DIR/gen_config.json. */
int hm_gen_config_load(const char *model_dir, hm_gen_config *out);

#ifdef __cplusplus
}
#endif

#endif
