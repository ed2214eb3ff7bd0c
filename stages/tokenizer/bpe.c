/* bpe.c - tokenizer.json loader and the HF tokenizers encode algorithm for byte-level BPE.
 *
 * Encode pipeline (HF TokenizerImpl::encode_single_sequence, add_special_tokens aside):
 *   1. added tokens are cut out of the raw text: first the non-normalized ones, then, in the
 *      remaining pieces, the normalized ones (no normalizer is supported, so both match raw
 *      text; the two passes are kept because they can give different cuts);
 *   2. each remaining piece goes through the pre-tokenizer steps: Split steps (regex, with a
 *      delimiter behaviour), then ByteLevel (optional prefix space, optional GPT-2 regex);
 *   3. each final piece is BPE-merged.  We work on raw bytes: the vocabulary is keyed by the
 *      byte-level strings of the file ("Ġthe"), a piece's symbols start as the ids of its
 *      single bytes, merges are a (left id, right id) -> (rank, merged id) table, and the merge
 *      order is HF's: lowest rank first, then leftmost position (a binary heap with lazy
 *      invalidation, as HF's Word::merge_all).
 * Hash tables are open addressing with linear probing over power-of-two capacities. */
#include "bpe.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cJSON.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "hm.h"
#include "utf8.h"

#define MAX_STEPS 16      /* pre-tokenizer steps after flattening Sequences */
#define MAX_NEST 8        /* Sequence nesting depth accepted in the JSON */
#define MAX_POST 8        /* post-processors after flattening */

/* ---------------------------------------------------------------- hashing */

static uint64_t hash_bytes(const void *p, size_t n)
{
    const uint8_t *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 29;
    return h;
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

/* vocab: byte-level key string -> id.  id < 0 marks an empty slot.  Keys of up to VINL bytes
 * (nearly all BPE tokens) live in the slot itself, so a lookup costs one cache miss; loading
 * does ~1M lookups into a table larger than the cache, which is what its time is made of. */
#define VINL 20
typedef struct {
    uint32_t tag;      /* low 32 bits of the hash: skips most memcmp on collisions */
    int32_t id;
    uint32_t len;
    union { char in[VINL]; uint32_t off; } k; /* inline key, or offset in tok->keys */
} vslot;

/* merges: (left id, right id) -> (rank, merged id). */
#define MKEY_EMPTY UINT64_MAX
typedef struct {
    uint64_t key;
    uint32_t rank;
    int32_t new_id;
} mslot;

/* ---------------------------------------------------------------- tokenizer state */

typedef struct {
    char *content;
    size_t len;
    int32_t id;
    uint8_t single_word, lstrip, rstrip, normalized, special;
} added_tok;

/* Trie over added-token bytes: first-child / next-sibling lists (few hundred tokens at most
 * in practice, so a 256-way node would waste memory). */
typedef struct {
    uint8_t byte;
    int32_t child, sibling;
    int32_t tok; /* index into tok->added, or -1 */
} tnode;

typedef struct {
    tnode *nodes;
    size_t n, cap;
    uint8_t first[256]; /* bytes that can start a token: fast skip */
    int empty;
} trie_t;

enum { BEH_REMOVED, BEH_ISOLATED, BEH_MERGED_PREV, BEH_MERGED_NEXT, BEH_CONTIGUOUS };
enum { STEP_SPLIT, STEP_BYTELEVEL };

typedef struct {
    int kind;
    pcre2_code *re;        /* Split pattern, or the GPT-2 regex for ByteLevel use_regex */
    pcre2_match_data *md;
    int jit;               /* JIT compiled */
    int behavior, invert;  /* Split */
    int add_prefix_space, use_regex; /* ByteLevel */
} step_t;

typedef struct { int is_seq; int32_t *ids; size_t n; } tpl_item;
typedef struct { tpl_item *items; size_t n; } post_t; /* one TemplateProcessing (single) */

typedef struct { size_t a, b; int is_match; } span;
typedef struct { span *v; size_t n, cap; } spanvec;
typedef struct { int32_t *v; size_t n, cap; } ivec;
typedef struct { size_t a, b; int32_t id; } seg; /* id < 0: text to pre-tokenize */
typedef struct { seg *v; size_t n, cap; } segvec;
typedef struct { uint32_t rank, pos; int32_t new_id, l, r; } hitem; /* l, r: the pair pushed */

/* Memo of BPE results for short pieces (HF keeps one too): direct-mapped, a collision
 * replaces the entry, so it is bounded (CACHE_N x 80 B = 320 KiB) and needs no eviction. */
#define CACHE_N 4096
#define CACHE_KEY 32
#define CACHE_IDS 8
typedef struct {
    uint8_t len, nids;  /* len 0: empty */
    char key[CACHE_KEY];
    int32_t ids[CACHE_IDS];
} centry;

struct tok {
    char *label;
    /* model */
    char *keys;
    size_t keys_len, keys_cap;
    vslot *vt;
    size_t vcap, vcount;
    mslot *mt;
    size_t mcap;
    int32_t byte_id[256];         /* id of each single byte's byte-level char, -1 if absent */
    char byte_char[256][2];       /* byte-level char of each byte, UTF-8 */
    uint8_t byte_char_len[256];
    int ignore_merges, byte_fallback, fuse_unk;
    char *unk_token;              /* NULL if none */
    int32_t unk_id;               /* -1 if unk_token is not in the vocabulary */
    /* added tokens */
    added_tok *added;
    size_t nadded;
    trie_t trie[2];               /* [0] normalized=false, [1] normalized=true */
    /* pre-tokenizer */
    step_t steps[MAX_STEPS];
    int nsteps;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jstack;
    /* post-processor */
    post_t post[MAX_POST];
    int npost;
    /* scratch, reused across calls (hence: one thread at a time) */
    spanvec lvl[MAX_STEPS + 1];
    char *bl;                     /* byte-level string of a piece */
    size_t bl_cap;
    int32_t *sym_c, *sym_prev, *sym_next;
    uint8_t *sym_dead;
    hitem *heap;
    size_t sym_cap;
    centry *cache;                /* CACHE_N entries, allocated on first encode */
};

/* ---------------------------------------------------------------- small vectors */

static void ivec_push(ivec *v, int32_t x)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 256;
        v->v = hm_realloc(v->v, v->cap * sizeof *v->v);
    }
    v->v[v->n++] = x;
}

static void span_push(spanvec *v, size_t a, size_t b, int m)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 64;
        v->v = hm_realloc(v->v, v->cap * sizeof *v->v);
    }
    v->v[v->n++] = (span){a, b, m};
}

static void seg_push(segvec *v, size_t a, size_t b, int32_t id)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 16;
        v->v = hm_realloc(v->v, v->cap * sizeof *v->v);
    }
    v->v[v->n++] = (seg){a, b, id};
}

/* ---------------------------------------------------------------- UTF-8 */

int tok_utf8_check(const char *s, size_t len, const char *what)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t i = 0;
    while (i < len) {
        if (i + 8 <= len) { /* ASCII fast path */
            uint64_t w;
            memcpy(&w, p + i, 8);
            if (!(w & 0x8080808080808080ull)) {
                i += 8;
                continue;
            }
        }
        uint8_t c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint32_t cp, min;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1; cp = c & 0x1F; min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2; cp = c & 0x0F; min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3; cp = c & 0x07; min = 0x10000;
        } else {
            return hm_err("%s: invalid UTF-8 at byte %zu (byte 0x%02X)", what, i, c);
        }
        if (len - i <= need)
            return hm_err("%s: invalid UTF-8 at byte %zu (truncated sequence)", what, i);
        for (size_t k = 1; k <= need; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return hm_err("%s: invalid UTF-8 at byte %zu (bad continuation byte)", what, i);
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if (cp < min || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
            return hm_err("%s: invalid UTF-8 at byte %zu (overlong, surrogate or > U+10FFFF)",
                          what, i);
        i += need + 1;
    }
    return HM_OK;
}


/* Start of the code point that ends at `end` (end > 0). */
static size_t utf8_prev(const uint8_t *s, size_t end)
{
    size_t i = end - 1;
    while (i > 0 && (s[i] & 0xC0) == 0x80) i--;
    return i;
}


/* Unicode White_Space (what Rust's char::is_whitespace and regex `\s` test). */
static int is_white_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* Rust regex `\w` (Unicode): Alphabetic, marks, decimal digits, connector punctuation,
 * Join_Control.  Alphabetic is approximated by the letter categories + Nl + the Other_Alphabetic
 * symbols outside the mark categories that matter in text (circled/squared Latin letters). */
static int is_word_char(uint32_t c)
{
    if (c == 0x200C || c == 0x200D) return 1;
    if ((c >= 0x24B6 && c <= 0x24E9) || (c >= 0x1F130 && c <= 0x1F149) ||
        (c >= 0x1F150 && c <= 0x1F169) || (c >= 0x1F170 && c <= 0x1F189))
        return 1;
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_PC:
        return 1;
    default:
        return 0;
    }
}

/* ---------------------------------------------------------------- vocabulary */

static inline const char *vkey(const tok_t *t, const vslot *e)
{
    return e->len <= VINL ? e->k.in : t->keys + e->k.off;
}

static inline size_t vslot_index(const tok_t *t, uint64_t h)
{
    return (size_t)(h >> 20) & (t->vcap - 1);
}

static int32_t vocab_get_h(const tok_t *t, const char *s, size_t n, uint64_t h)
{
    size_t mask = t->vcap - 1, i = vslot_index(t, h);
    for (;; i = (i + 1) & mask) {
        const vslot *e = &t->vt[i];
        if (e->id < 0) return -1;
        if (e->tag == (uint32_t)h && e->len == n && memcmp(vkey(t, e), s, n) == 0) return e->id;
    }
}

static int32_t vocab_get(const tok_t *t, const char *s, size_t n)
{
    if (!t->vt) return -1;
    return vocab_get_h(t, s, n, hash_bytes(s, n));
}

/* Insert or overwrite (a later duplicate key wins, as a JSON map into a Rust HashMap). */
static void vocab_put_h(tok_t *t, const char *s, size_t n, int32_t id, uint64_t h)
{
    size_t mask = t->vcap - 1, i = vslot_index(t, h);
    for (;; i = (i + 1) & mask) {
        vslot *e = &t->vt[i];
        if (e->id < 0) break;
        if (e->tag == (uint32_t)h && e->len == n && memcmp(vkey(t, e), s, n) == 0) {
            e->id = id;
            return;
        }
    }
    vslot *e = &t->vt[i];
    e->tag = (uint32_t)h;
    e->id = id;
    e->len = (uint32_t)n;
    if (n <= VINL) {
        memcpy(e->k.in, s, n);
    } else {
        if (t->keys_len + n > t->keys_cap) {
            t->keys_cap = (t->keys_len + n) * 2;
            t->keys = hm_realloc(t->keys, t->keys_cap);
        }
        memcpy(t->keys + t->keys_len, s, n);
        e->k.off = (uint32_t)t->keys_len;
        t->keys_len += n;
    }
    t->vcount++;
}

static inline size_t mslot_index(const tok_t *t, int32_t a, int32_t b)
{
    return (size_t)hash_u64(((uint64_t)(uint32_t)a << 32) | (uint32_t)b) & (t->mcap - 1);
}

static inline const mslot *merge_get(const tok_t *t, int32_t a, int32_t b)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = t->mcap - 1, i = mslot_index(t, a, b);
    for (;; i = (i + 1) & mask) {
        const mslot *e = &t->mt[i];
        if (e->key == key) return e;
        if (e->key == MKEY_EMPTY) return NULL;
    }
}

static void merge_put(tok_t *t, int32_t a, int32_t b, uint32_t rank, int32_t new_id)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = t->mcap - 1, i = (size_t)hash_u64(key) & mask;
    for (;; i = (i + 1) & mask) {
        mslot *e = &t->mt[i];
        if (e->key == key || e->key == MKEY_EMPTY) {
            *e = (mslot){key, rank, new_id};
            return;
        }
    }
}

/* GPT-2's byte -> printable code point table: printable Latin-1 bytes map to themselves, the
 * others (controls, space, 0x7F-0xA0, 0xAD) to 256, 257, ... in byte order. */
static void byte_level_table(tok_t *t)
{
    uint32_t next = 256;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        uint32_t cp = keep ? (uint32_t)b : next++;
        char o[4];
        int n = hm_utf8_encode(cp, o);
        memcpy(t->byte_char[b], o, (size_t)n);
        t->byte_char_len[b] = (uint8_t)n;
    }
}

/* ---------------------------------------------------------------- loading: helpers */

static int json_bool(const cJSON *obj, const char *key, int dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return dflt;
    return cJSON_IsTrue(v) ? 1 : 0;
}

static const char *json_type(const cJSON *obj)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, "type");
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int json_id(const cJSON *v, int32_t *out)
{
    if (!cJSON_IsNumber(v)) return HM_ERR;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= 2147483647.0) || d != (double)(int64_t)d) return HM_ERR;
    *out = (int32_t)d;
    return HM_OK;
}

/* ---------------------------------------------------------------- loading: model */

static int load_model(tok_t *t, const cJSON *m)
{
    if (!cJSON_IsObject(m)) return hm_err("'model' is missing or not an object");
    const char *type = json_type(m);
    if (type && strcmp(type, "BPE") != 0)
        return hm_err("model type '%s' is not supported (only BPE)", type);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(m, "merges");
    if (!cJSON_IsObject(vocab)) return hm_err("model.vocab is missing or not an object");
    if (!cJSON_IsArray(merges)) return hm_err("model.merges is missing or not an array");

    const cJSON *v;
    v = cJSON_GetObjectItemCaseSensitive(m, "dropout");
    if (v && !cJSON_IsNull(v) && !(cJSON_IsNumber(v) && v->valuedouble == 0))
        return hm_err("model.dropout is not supported (must be null: BPE dropout is for training)");
    v = cJSON_GetObjectItemCaseSensitive(m, "continuing_subword_prefix");
    if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && v->valuestring[0] == 0))
        return hm_err("model.continuing_subword_prefix is not supported");
    v = cJSON_GetObjectItemCaseSensitive(m, "end_of_word_suffix");
    if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && v->valuestring[0] == 0))
        return hm_err("model.end_of_word_suffix is not supported");
    t->ignore_merges = json_bool(m, "ignore_merges", 0);
    t->byte_fallback = json_bool(m, "byte_fallback", 0);
    t->fuse_unk = json_bool(m, "fuse_unk", 0);

    /* Pass 1 gathers keys and hashes; pass 2 inserts while prefetching the slot PF entries
     * ahead (the table is bigger than the cache: latency, not work, is the cost). */
    enum { PF = 16 };
    /* Arrays grow as we walk (cJSON_GetArraySize would be one more cold walk of the list). */
    size_t nv = 0, vcap_arr = 1024, i = 0;
    const char **vk = hm_malloc(vcap_arr * sizeof *vk);
    size_t *vl = hm_malloc(vcap_arr * sizeof *vl);
    uint64_t *vh = hm_malloc(vcap_arr * sizeof *vh);
    int32_t *vid = hm_malloc(vcap_arr * sizeof *vid);
    int rc = HM_OK;
    cJSON_ArrayForEach(v, vocab) {
        if (i == vcap_arr) {
            vcap_arr *= 2;
            vk = hm_realloc(vk, vcap_arr * sizeof *vk);
            vl = hm_realloc(vl, vcap_arr * sizeof *vl);
            vh = hm_realloc(vh, vcap_arr * sizeof *vh);
            vid = hm_realloc(vid, vcap_arr * sizeof *vid);
        }
        if (i >= (size_t)INT32_MAX / 4) {
            rc = hm_err("model.vocab: too many entries");
            break;
        }
        if (json_id(v, &vid[i]) != HM_OK) {
            rc = hm_err("model.vocab['%.64s']: id is not an integer in [0, 2^31)", v->string);
            break;
        }
        vk[i] = v->string;
        vl[i] = strlen(v->string);
        vh[i] = hash_bytes(vk[i], vl[i]);
        i++;
    }
    nv = i;
    if (rc == HM_OK) {
        t->vcap = pow2_at_least(nv * 2 + 1);
        t->vt = hm_malloc(t->vcap * sizeof *t->vt);
        for (size_t k = 0; k < t->vcap; k++) t->vt[k].id = -1;
        for (i = 0; i < nv; i++) {
            if (i + PF < nv) __builtin_prefetch(&t->vt[vslot_index(t, vh[i + PF])], 1);
            vocab_put_h(t, vk[i], vl[i], vid[i], vh[i]);
        }
    }
    free(vk);
    free(vl);
    free(vh);
    free(vid);
    if (rc != HM_OK) return rc;

    /* Merges: gather (a, b, a+b) hashes, then resolve all three lookups with prefetching. */
    typedef struct { const char *a, *b; uint32_t na, nb; uint64_t ha, hb, hab; } mrec;
    size_t nm = 0, mcap_arr = 1024;
    mrec *mr = hm_malloc(mcap_arr * sizeof *mr);
    char *cat = NULL;
    size_t cat_cap = 0;
    i = 0;
    cJSON_ArrayForEach(v, merges) {
        const char *a, *b;
        size_t na, nb;
        if (i == mcap_arr) {
            mcap_arr *= 2;
            mr = hm_realloc(mr, mcap_arr * sizeof *mr);
        }
        if (i >= (size_t)UINT32_MAX / 4) {
            rc = hm_err("model.merges: too many entries");
            break;
        }
        if (cJSON_IsString(v)) {
            a = v->valuestring;
            const char *sp = strchr(a, ' ');
            if (!sp) {
                rc = hm_err("model.merges[%zu] '%.64s': expected two tokens separated by a space",
                            i, a);
                break;
            }
            na = (size_t)(sp - a);
            b = sp + 1;
            nb = strlen(b);
        } else if (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 2 &&
                   cJSON_IsString(v->child) && cJSON_IsString(v->child->next)) {
            a = v->child->valuestring;
            b = v->child->next->valuestring;
            na = strlen(a);
            nb = strlen(b);
        } else {
            rc = hm_err("model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", i);
            break;
        }
        if (na + nb + 1 > cat_cap) {
            cat_cap = (na + nb + 1) * 2;
            cat = hm_realloc(cat, cat_cap);
        }
        memcpy(cat, a, na);
        memcpy(cat + na, b, nb);
        mr[i] = (mrec){a, b, (uint32_t)na, (uint32_t)nb, hash_bytes(a, na), hash_bytes(b, nb),
                       hash_bytes(cat, na + nb)};
        i++;
    }
    nm = i;
    t->mcap = pow2_at_least(nm + nm / 2 + 1);
    t->mt = hm_malloc(t->mcap * sizeof *t->mt);
    for (size_t k = 0; k < t->mcap; k++) t->mt[k].key = MKEY_EMPTY;
    for (i = 0; rc == HM_OK && i < nm; i++) {
        if (i + PF < nm) {
            __builtin_prefetch(&t->vt[vslot_index(t, mr[i + PF].ha)]);
            __builtin_prefetch(&t->vt[vslot_index(t, mr[i + PF].hb)]);
            __builtin_prefetch(&t->vt[vslot_index(t, mr[i + PF].hab)]);
        }
        const mrec *m = &mr[i];
        if (m->na + m->nb + 1 > cat_cap) {
            cat_cap = (m->na + m->nb + 1) * 2;
            cat = hm_realloc(cat, cat_cap);
        }
        memcpy(cat, m->a, m->na);
        memcpy(cat + m->na, m->b, m->nb);
        int32_t ia = vocab_get_h(t, m->a, m->na, m->ha), ib = vocab_get_h(t, m->b, m->nb, m->hb);
        int32_t im = vocab_get_h(t, cat, m->na + m->nb, m->hab);
        if (ia < 0 || ib < 0 || im < 0) {
            rc = hm_err("model.merges[%zu] '%.*s' + '%.*s': %s is not in the vocabulary", i,
                        (int)HM_MIN(m->na, 64), m->a, (int)HM_MIN(m->nb, 64), m->b,
                        ia < 0 ? "the left token" : ib < 0 ? "the right token" : "the merged token");
            break;
        }
        mr[i].ha = ((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib; /* reuse: the merge key */
        mr[i].hb = (uint64_t)(uint32_t)im;
    }
    for (i = 0; rc == HM_OK && i < nm; i++) {
        if (i + PF < nm) __builtin_prefetch(&t->mt[hash_u64(mr[i + PF].ha) & (t->mcap - 1)], 1);
        merge_put(t, (int32_t)(mr[i].ha >> 32), (int32_t)(uint32_t)mr[i].ha, (uint32_t)i,
                  (int32_t)mr[i].hb);
    }
    free(mr);
    free(cat);
    if (rc != HM_OK) return rc;

    byte_level_table(t);
    for (int i = 0; i < 256; i++)
        t->byte_id[i] = vocab_get(t, t->byte_char[i], t->byte_char_len[i]);

    v = cJSON_GetObjectItemCaseSensitive(m, "unk_token");
    t->unk_id = -1;
    if (cJSON_IsString(v)) {
        t->unk_token = hm_strdup(v->valuestring);
        t->unk_id = vocab_get(t, v->valuestring, strlen(v->valuestring));
    } else if (v && !cJSON_IsNull(v)) {
        return hm_err("model.unk_token must be a string or null");
    }
    return HM_OK;
}

/* ---------------------------------------------------------------- loading: added tokens */

static int trie_add(trie_t *tr, const char *s, size_t n, int32_t tokidx)
{
    if (!tr->nodes) {
        tr->cap = 64;
        tr->nodes = hm_malloc(tr->cap * sizeof *tr->nodes);
        tr->nodes[0] = (tnode){0, -1, -1, -1};
        tr->n = 1;
    }
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)s[i];
        int32_t ch = tr->nodes[node].child;
        while (ch >= 0 && tr->nodes[ch].byte != c) ch = tr->nodes[ch].sibling;
        if (ch < 0) {
            if (tr->n == tr->cap) {
                tr->cap *= 2;
                tr->nodes = hm_realloc(tr->nodes, tr->cap * sizeof *tr->nodes);
            }
            ch = (int32_t)tr->n++;
            tr->nodes[ch] = (tnode){c, -1, tr->nodes[node].child, -1};
            tr->nodes[node].child = ch;
        }
        node = ch;
    }
    /* The same content twice: the first keeps the slot (both have the same id anyway). */
    if (tr->nodes[node].tok < 0) tr->nodes[node].tok = tokidx;
    tr->first[(uint8_t)s[0]] = 1;
    tr->empty = 0;
    return HM_OK;
}

/* HF AddedVocabulary::add_tokens id rule: an existing added token or model vocab entry keeps its
 * id; otherwise the next id after the largest added one (or the vocab size).  The "id" written
 * in the file is only checked, as HF does (a mismatch is a warning there too). */
static int load_added(tok_t *t, const cJSON *arr)
{
    t->trie[0].empty = t->trie[1].empty = 1;
    if (!arr || cJSON_IsNull(arr)) return HM_OK;
    if (!cJSON_IsArray(arr)) return hm_err("'added_tokens' is not an array");
    size_t n = (size_t)cJSON_GetArraySize(arr);
    t->added = hm_calloc(n ? n : 1, sizeof *t->added);
    const cJSON *e;
    size_t idx = 0;
    int64_t max_added = -1;
    cJSON_ArrayForEach(e, arr) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "content");
        int32_t want = -1;
        if (!cJSON_IsObject(e) || !cJSON_IsString(c) ||
            json_id(cJSON_GetObjectItemCaseSensitive(e, "id"), &want) != HM_OK)
            return hm_err("added_tokens[%zu]: needs a string 'content' and an integer 'id'", idx);
        idx++;
        size_t len = strlen(c->valuestring);
        if (len == 0) continue; /* HF ignores empty tokens */
        added_tok a = {0};
        a.single_word = (uint8_t)json_bool(e, "single_word", 0);
        a.lstrip = (uint8_t)json_bool(e, "lstrip", 0);
        a.rstrip = (uint8_t)json_bool(e, "rstrip", 0);
        a.special = (uint8_t)json_bool(e, "special", 0);
        a.normalized = (uint8_t)json_bool(e, "normalized", !a.special);
        int dup = 0;
        int32_t id = -1;
        for (size_t k = 0; k < t->nadded; k++) {
            added_tok *o = &t->added[k];
            if (o->len == len && memcmp(o->content, c->valuestring, len) == 0) {
                if (o->single_word == a.single_word && o->lstrip == a.lstrip &&
                    o->rstrip == a.rstrip && o->normalized == a.normalized &&
                    o->special == a.special)
                    dup = 1;
                id = o->id;
            }
        }
        if (dup) continue;
        if (id < 0) id = vocab_get(t, c->valuestring, len);
        if (id < 0) {
            if (max_added >= (int64_t)t->vcount || t->vcount == 0)
                id = (int32_t)(max_added + 1);
            else
                id = (int32_t)t->vcount;
        }
        if (id != want)
            LOG_WARN("tokenizer '%s': added token '%.64s' has id %d in the file but gets %d "
                     "(HF rule: vocab id, else next free id)", t->label, c->valuestring, want, id);
        if (id > max_added) max_added = id;
        a.content = hm_strdup(c->valuestring);
        a.len = len;
        a.id = id;
        t->added[t->nadded] = a;
        trie_add(&t->trie[a.normalized ? 1 : 0], a.content, len, (int32_t)t->nadded);
        t->nadded++;
    }
    return HM_OK;
}

/* ---------------------------------------------------------------- loading: pre-tokenizer */

static int compile_re(tok_t *t, step_t *st, const char *pat, size_t n, int literal,
                      const char *what)
{
    int err;
    PCRE2_SIZE off;
    uint32_t opts = literal ? (PCRE2_UTF | PCRE2_LITERAL) : (PCRE2_UTF | PCRE2_UCP);
    st->re = pcre2_compile((PCRE2_SPTR)pat, n, opts, &err, &off, NULL);
    if (!st->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return hm_err("%s: regex does not compile with PCRE2 at offset %zu: %s", what,
                      (size_t)off, (const char *)msg);
    }
    st->jit = pcre2_jit_compile(st->re, PCRE2_JIT_COMPLETE) == 0;
    if (!st->jit) LOG_WARN("tokenizer '%s': %s: PCRE2 JIT unavailable, interpreting", t->label, what);
    st->md = pcre2_match_data_create_from_pattern(st->re, NULL);
    return HM_OK;
}

/* The GPT-2 split regex built into HF's ByteLevel pre-tokenizer (use_regex = true). */
static const char GPT2_RE[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int load_pretok(tok_t *t, const cJSON *p, int depth)
{
    if (depth > MAX_NEST) return hm_err("pre_tokenizer: Sequence nested too deeply");
    if (!cJSON_IsObject(p)) return hm_err("pre_tokenizer: expected an object");
    const char *type = json_type(p);
    if (!type) return hm_err("pre_tokenizer: missing 'type'");
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        if (!cJSON_IsArray(arr)) return hm_err("pre_tokenizer Sequence: 'pretokenizers' missing");
        const cJSON *e;
        cJSON_ArrayForEach(e, arr) {
            if (load_pretok(t, e, depth + 1) != HM_OK) return HM_ERR;
        }
        return HM_OK;
    }
    if (t->nsteps == MAX_STEPS) return hm_err("pre_tokenizer: more than %d steps", MAX_STEPS);
    if (t->nsteps > 0 && t->steps[t->nsteps - 1].kind == STEP_BYTELEVEL)
        return hm_err("pre_tokenizer '%s' after ByteLevel is not supported (ByteLevel must be "
                      "the last step)", type);
    step_t *st = &t->steps[t->nsteps];
    memset(st, 0, sizeof *st);
    if (strcmp(type, "Split") == 0) {
        st->kind = STEP_SPLIT;
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const cJSON *rx = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
        const cJSON *lit = cJSON_GetObjectItemCaseSensitive(pat, "String");
        const cJSON *beh = cJSON_GetObjectItemCaseSensitive(p, "behavior");
        static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious",
                                            "MergedWithNext", "Contiguous"};
        st->behavior = -1;
        for (int i = 0; i < 5 && cJSON_IsString(beh); i++)
            if (strcmp(beh->valuestring, names[i]) == 0) st->behavior = i;
        if (st->behavior < 0)
            return hm_err("pre_tokenizer Split: behavior '%s' is not supported",
                          cJSON_IsString(beh) ? beh->valuestring : "(missing)");
        st->invert = json_bool(p, "invert", 0);
        t->nsteps++; /* counted before compiling so tok_free releases a half-built step */
        if (cJSON_IsString(rx))
            return compile_re(t, st, rx->valuestring, strlen(rx->valuestring), 0,
                              "pre_tokenizer Split");
        if (cJSON_IsString(lit))
            return compile_re(t, st, lit->valuestring, strlen(lit->valuestring), 1,
                              "pre_tokenizer Split");
        return hm_err("pre_tokenizer Split: pattern must be {\"Regex\": ...} or {\"String\": ...}");
    }
    if (strcmp(type, "ByteLevel") == 0) {
        st->kind = STEP_BYTELEVEL;
        st->add_prefix_space = json_bool(p, "add_prefix_space", 1);
        st->use_regex = json_bool(p, "use_regex", 1);
        t->nsteps++;
        if (st->use_regex)
            return compile_re(t, st, GPT2_RE, sizeof GPT2_RE - 1, 0, "pre_tokenizer ByteLevel");
        return HM_OK;
    }
    return hm_err("pre_tokenizer '%s' is not supported (supported: Sequence, Split, ByteLevel)",
                  type);
}

/* ---------------------------------------------------------------- loading: post-processor */

static int load_template(tok_t *t, const cJSON *p)
{
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(p, "single");
    const cJSON *specials = cJSON_GetObjectItemCaseSensitive(p, "special_tokens");
    if (!cJSON_IsArray(single)) return hm_err("post_processor TemplateProcessing: 'single' missing");
    post_t *pp = &t->post[t->npost++];
    size_t n = (size_t)cJSON_GetArraySize(single);
    pp->items = hm_calloc(n ? n : 1, sizeof *pp->items);
    const cJSON *e;
    cJSON_ArrayForEach(e, single) {
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(e, "SpecialToken");
        const cJSON *sq = cJSON_GetObjectItemCaseSensitive(e, "Sequence");
        tpl_item *it = &pp->items[pp->n];
        if (sq) {
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(sq, "id");
            if (!cJSON_IsString(id) || strcmp(id->valuestring, "A") != 0)
                return hm_err("post_processor TemplateProcessing: single template may only use "
                              "sequence A");
            it->is_seq = 1;
        } else if (sp) {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(sp, "id");
            const cJSON *def = cJSON_IsString(name)
                ? cJSON_GetObjectItemCaseSensitive(specials, name->valuestring) : NULL;
            const cJSON *ids = cJSON_GetObjectItemCaseSensitive(def, "ids");
            if (!cJSON_IsArray(ids))
                return hm_err("post_processor TemplateProcessing: special token '%s' has no ids "
                              "in special_tokens", cJSON_IsString(name) ? name->valuestring : "?");
            size_t k = (size_t)cJSON_GetArraySize(ids);
            it->ids = hm_malloc((k ? k : 1) * sizeof *it->ids);
            const cJSON *x;
            cJSON_ArrayForEach(x, ids) {
                if (json_id(x, &it->ids[it->n]) != HM_OK) {
                    /* the item is not counted in pp->n yet: the template's free would miss its ids */
                    free(it->ids), it->ids = NULL, it->n = 0;
                    return hm_err("post_processor TemplateProcessing: bad id for '%s'",
                                  name->valuestring);
                }
                it->n++;
            }
        } else {
            return hm_err("post_processor TemplateProcessing: item is neither SpecialToken nor "
                          "Sequence");
        }
        pp->n++;
    }
    return HM_OK;
}

static int load_post(tok_t *t, const cJSON *p, int depth)
{
    if (!p || cJSON_IsNull(p)) return HM_OK;
    if (depth > MAX_NEST) return hm_err("post_processor: Sequence nested too deeply");
    const char *type = json_type(p);
    if (!type) return hm_err("post_processor: missing 'type'");
    if (strcmp(type, "ByteLevel") == 0) return HM_OK; /* only trims offsets */
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(p, "processors");
        if (!cJSON_IsArray(arr)) return hm_err("post_processor Sequence: 'processors' missing");
        const cJSON *e;
        cJSON_ArrayForEach(e, arr) {
            if (load_post(t, e, depth + 1) != HM_OK) return HM_ERR;
        }
        return HM_OK;
    }
    if (strcmp(type, "TemplateProcessing") == 0) {
        if (t->npost == MAX_POST) return hm_err("post_processor: too many templates");
        return load_template(t, p);
    }
    return hm_err("post_processor '%s' is not supported (supported: ByteLevel, "
                  "TemplateProcessing, Sequence)", type);
}

/* ---------------------------------------------------------------- loading: top level */

static int load_root(tok_t *t, const cJSON *root)
{
    if (!cJSON_IsObject(root)) return hm_err("top level is not a JSON object");
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "version");
    if (v && !(cJSON_IsString(v) && strcmp(v->valuestring, "1.0") == 0))
        return hm_err("unknown tokenizer.json version (expected \"1.0\")");
    v = cJSON_GetObjectItemCaseSensitive(root, "truncation");
    if (v && !cJSON_IsNull(v)) return hm_err("truncation is not supported (must be null)");
    v = cJSON_GetObjectItemCaseSensitive(root, "padding");
    if (v && !cJSON_IsNull(v)) return hm_err("padding is not supported (must be null)");
    v = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    if (v && !cJSON_IsNull(v)) {
        const char *type = json_type(v);
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(v, "normalizers");
        if (!(type && strcmp(type, "Sequence") == 0 && cJSON_IsArray(list) &&
              cJSON_GetArraySize(list) == 0))
            return hm_err("normalizer '%s' is not supported (only null)", type ? type : "?");
    }
    if (load_model(t, cJSON_GetObjectItemCaseSensitive(root, "model")) != HM_OK) return HM_ERR;
    if (load_added(t, cJSON_GetObjectItemCaseSensitive(root, "added_tokens")) != HM_OK)
        return HM_ERR;
    v = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    if (v && !cJSON_IsNull(v) && load_pretok(t, v, 0) != HM_OK) return HM_ERR;
    if (t->nsteps == 0 || t->steps[t->nsteps - 1].kind != STEP_BYTELEVEL)
        return hm_err("pre_tokenizer has no ByteLevel step: only byte-level BPE is supported");
    return load_post(t, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), 0);
}

int tok_load_mem(const char *json, size_t len, const char *label, tok_t **out)
{
    *out = NULL;
    if (len > TOK_MAX_FILE_BYTES)
        return hm_err("tokenizer '%s': %zu bytes, larger than the %zu-byte limit", label, len,
                      TOK_MAX_FILE_BYTES);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) {
        const char *ep = cJSON_GetErrorPtr();
        size_t off = (ep && ep >= json && ep <= json + len) ? (size_t)(ep - json) : 0;
        return hm_err("tokenizer '%s': not valid JSON (near byte %zu)", label, off);
    }
    tok_t *t = hm_calloc(1, sizeof *t);
    t->label = hm_strdup(label);
    t->mctx = pcre2_match_context_create(NULL);
    t->jstack = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, NULL);
    if (t->jstack) pcre2_jit_stack_assign(t->mctx, NULL, t->jstack);
    int rc = load_root(t, root);
    cJSON_Delete(root);
    if (rc != HM_OK) {
        hm_err_ctx("tokenizer '%s'", label);
        tok_free(t);
        return HM_ERR;
    }
    *out = t;
    return HM_OK;
}

int tok_load(const char *path, tok_t **out)
{
    char *buf;
    size_t len;
    *out = NULL;
    if (hm_read_file(path, &buf, &len, TOK_MAX_FILE_BYTES) != HM_OK) return HM_ERR;
    int rc = tok_load_mem(buf, len, path, out);
    free(buf);
    return rc;
}

void tok_free(tok_t *t)
{
    if (!t) return;
    free(t->label);
    free(t->keys);
    free(t->vt);
    free(t->mt);
    free(t->unk_token);
    for (size_t i = 0; i < t->nadded; i++) free(t->added[i].content);
    free(t->added);
    for (int i = 0; i < 2; i++) free(t->trie[i].nodes);
    for (int i = 0; i < t->nsteps; i++) {
        pcre2_match_data_free(t->steps[i].md);
        pcre2_code_free(t->steps[i].re);
    }
    for (int i = 0; i < t->npost; i++) {
        for (size_t k = 0; k < t->post[i].n; k++) free(t->post[i].items[k].ids);
        free(t->post[i].items);
    }
    if (t->jstack) pcre2_jit_stack_free(t->jstack);
    pcre2_match_context_free(t->mctx);
    for (int i = 0; i <= MAX_STEPS; i++) free(t->lvl[i].v);
    free(t->bl);
    free(t->sym_c);
    free(t->sym_prev);
    free(t->sym_next);
    free(t->sym_dead);
    free(t->heap);
    free(t->cache);
    free(t);
}

int32_t tok_token_id(const tok_t *t, const char *token)
{
    size_t n = strlen(token);
    for (size_t i = 0; i < t->nadded; i++)
        if (t->added[i].len == n && memcmp(t->added[i].content, token, n) == 0)
            return t->added[i].id;
    return vocab_get(t, token, n);
}

size_t tok_vocab_size(const tok_t *t) { return t->vcount; }

/* ---------------------------------------------------------------- encode: BPE */

static void heap_push(hitem *h, size_t *n, hitem x)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p].rank < x.rank || (h[p].rank == x.rank && h[p].pos < x.pos)) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = x;
}

static hitem heap_pop(hitem *h, size_t *n)
{
    hitem top = h[0], x = h[--(*n)];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m && (h[c + 1].rank < h[c].rank ||
                          (h[c + 1].rank == h[c].rank && h[c + 1].pos < h[c].pos)))
            c++;
        if (x.rank < h[c].rank || (x.rank == h[c].rank && x.pos < h[c].pos)) break;
        h[i] = h[c];
        i = c;
    }
    if (m) h[i] = x;
    return top;
}

static void sym_reserve(tok_t *t, size_t n)
{
    if (n <= t->sym_cap) return;
    size_t cap = pow2_at_least(n);
    t->sym_c = hm_realloc(t->sym_c, cap * sizeof *t->sym_c);
    t->sym_prev = hm_realloc(t->sym_prev, cap * sizeof *t->sym_prev);
    t->sym_next = hm_realloc(t->sym_next, cap * sizeof *t->sym_next);
    t->sym_dead = hm_realloc(t->sym_dead, cap);
    t->heap = hm_realloc(t->heap, 3 * cap * sizeof *t->heap);
    t->sym_cap = cap;
}

static void bl_reserve(tok_t *t, size_t n)
{
    if (n <= t->bl_cap) return;
    t->bl_cap = pow2_at_least(n);
    t->bl = hm_realloc(t->bl, t->bl_cap);
}

/* BPE of one pre-token (raw bytes), ids appended to out.  HF BPE::tokenize_with_cache /
 * merge_word / Word::merge_all. */
static int bpe_merge(tok_t *t, const uint8_t *p, size_t n, ivec *out);

static int bpe_piece(tok_t *t, const uint8_t *p, size_t n, ivec *out)
{
    if (n == 0) return HM_OK;
    if (n > CACHE_KEY) return bpe_merge(t, p, n, out);
    if (!t->cache) t->cache = hm_calloc(CACHE_N, sizeof *t->cache);
    centry *e = &t->cache[hash_bytes(p, n) & (CACHE_N - 1)];
    if (e->len == n && memcmp(e->key, p, n) == 0) {
        for (int i = 0; i < e->nids; i++) ivec_push(out, e->ids[i]);
        return HM_OK;
    }
    size_t before = out->n;
    if (bpe_merge(t, p, n, out) != HM_OK) return HM_ERR;
    size_t k = out->n - before;
    if (k <= CACHE_IDS) {
        e->len = (uint8_t)n;
        e->nids = (uint8_t)k;
        memcpy(e->key, p, n);
        memcpy(e->ids, out->v + before, k * sizeof *out->v);
    }
    return HM_OK;
}

static int bpe_merge(tok_t *t, const uint8_t *p, size_t n, ivec *out)
{
    if (t->ignore_merges) {
        if (n == 1 && t->byte_id[p[0]] >= 0) {
            ivec_push(out, t->byte_id[p[0]]);
            return HM_OK;
        }
        bl_reserve(t, 2 * n);
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            t->bl[k] = t->byte_char[p[i]][0];
            if (t->byte_char_len[p[i]] == 2) t->bl[k + 1] = t->byte_char[p[i]][1];
            k += t->byte_char_len[p[i]];
        }
        int32_t id = vocab_get(t, t->bl, k);
        if (id >= 0) {
            ivec_push(out, id);
            return HM_OK;
        }
    }
    /* Initial symbols: one per byte (one byte-level char each). */
    sym_reserve(t, n + 1);
    int32_t *c = t->sym_c;
    size_t ns = 0;
    int32_t unk_pending = -1;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[p[i]];
        if (id >= 0) {
            if (unk_pending >= 0) { c[ns++] = unk_pending; unk_pending = -1; }
            c[ns++] = id;
            continue;
        }
        if (t->byte_fallback) { /* "<0xXX>" for each UTF-8 byte of the byte-level char */
            int32_t fb[2];
            int ok = 1;
            for (int k = 0; k < t->byte_char_len[p[i]]; k++) {
                char name[8];
                snprintf(name, sizeof name, "<0x%02X>", (uint8_t)t->byte_char[p[i]][k]);
                fb[k] = vocab_get(t, name, 6);
                if (fb[k] < 0) ok = 0;
            }
            if (ok) {
                if (unk_pending >= 0) { c[ns++] = unk_pending; unk_pending = -1; }
                sym_reserve(t, ns + 3 + (n - i));
                c = t->sym_c;
                for (int k = 0; k < t->byte_char_len[p[i]]; k++) c[ns++] = fb[k];
                continue;
            }
        }
        if (t->unk_token) {
            if (t->unk_id < 0)
                return hm_err("tokenizer '%s': unk_token '%s' is not in the vocabulary", t->label,
                              t->unk_token);
            if (unk_pending >= 0 && !t->fuse_unk) c[ns++] = unk_pending;
            unk_pending = t->unk_id;
        }
        /* no unk_token: HF drops the character */
    }
    if (unk_pending >= 0) c[ns++] = unk_pending;
    if (ns == 0) return HM_OK;

    int32_t *prev = t->sym_prev, *next = t->sym_next;
    uint8_t *dead = t->sym_dead;
    hitem *h = t->heap;
    size_t nh = 0;
    for (size_t i = 0; i < ns; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < ns ? (int32_t)i + 1 : -1;
        dead[i] = 0;
    }
    /* The merge table is larger than the cache, so lookups are prefetched a few pairs ahead
     * (initial pairs) or both at once (the two new pairs after a merge). */
    enum { PF = 8 };
    for (size_t i = 0; i + 1 < ns && i < PF; i++) __builtin_prefetch(&t->mt[mslot_index(t, c[i], c[i + 1])]);
    for (size_t i = 0; i + 1 < ns; i++) {
        if (i + PF + 1 < ns) __builtin_prefetch(&t->mt[mslot_index(t, c[i + PF], c[i + PF + 1])]);
        const mslot *m = merge_get(t, c[i], c[i + 1]);
        if (m) heap_push(h, &nh, (hitem){m->rank, (uint32_t)i, m->new_id, c[i], c[i + 1]});
    }
    while (nh > 0) {
        hitem top = heap_pop(h, &nh);
        uint32_t pos = top.pos;
        if (dead[pos] || next[pos] < 0) continue;
        int32_t r = next[pos];
        /* Stale entry?  HF re-looks the current pair up and accepts it when it yields the same
         * id; an unchanged pair trivially does, so only a changed one needs the lookup. */
        if (c[pos] != top.l || c[r] != top.r) {
            const mslot *m = merge_get(t, c[pos], c[r]);
            if (!m || m->new_id != top.new_id) continue;
        }
        c[pos] = top.new_id;
        dead[r] = 1;
        next[pos] = next[r];
        if (next[r] >= 0) prev[next[r]] = (int32_t)pos;
        int32_t pp = prev[pos], nn = next[pos];
        if (pp >= 0) __builtin_prefetch(&t->mt[mslot_index(t, c[pp], c[pos])]);
        if (nn >= 0) __builtin_prefetch(&t->mt[mslot_index(t, c[pos], c[nn])]);
        if (pp >= 0) {
            const mslot *mp = merge_get(t, c[pp], c[pos]);
            if (mp) heap_push(h, &nh, (hitem){mp->rank, (uint32_t)pp, mp->new_id, c[pp], c[pos]});
        }
        if (nn >= 0) {
            const mslot *mn = merge_get(t, c[pos], c[nn]);
            if (mn) heap_push(h, &nh, (hitem){mn->rank, pos, mn->new_id, c[pos], c[nn]});
        }
    }
    for (int32_t i = 0; i >= 0; i = next[i]) ivec_push(out, c[i]);
    return HM_OK;
}

/* ---------------------------------------------------------------- encode: pre-tokenizers */

/* All matches of st->re in s[0..n) as a cover of the string: (a, b, is_match) spans in order,
 * as HF's Pattern::find_matches.  An empty match splits there and the search moves on by one
 * code point. */
static int regex_spans(tok_t *t, step_t *st, const char *s, size_t n, spanvec *out)
{
    out->n = 0;
    size_t prev = 0, off = 0;
    while (off <= n) {
        int rc = pcre2_match(st->re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK, st->md, t->mctx);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return hm_err("tokenizer '%s': pre-tokenizer regex failed near byte %zu: %s",
                          t->label, off, (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(st->md);
        size_t a = ov[0], b = ov[1];
        if (a > prev) span_push(out, prev, a, 0);
        span_push(out, a, b, 1);
        prev = b;
        if (b > a) {
            off = b;
        } else {
            if (b >= n) break;
            size_t adv;
            hm_utf8_decode((const uint8_t *)s + b, &adv);
            off = b + adv;
        }
    }
    if (prev < n) span_push(out, prev, n, 0);
    if (st->invert)
        for (size_t i = 0; i < out->n; i++) out->v[i].is_match = !out->v[i].is_match;
    return HM_OK;
}

/* Apply a delimiter behaviour in place (HF NormalizedString::split); is_match is reused as
 * "remove" for Removed and cleared otherwise. */
static void apply_behavior(spanvec *v, int beh)
{
    size_t n = v->n, k = 0;
    int prev_match = 0;
    switch (beh) {
    case BEH_REMOVED:
        return;
    case BEH_ISOLATED:
        for (size_t i = 0; i < n; i++) v->v[i].is_match = 0;
        return;
    case BEH_CONTIGUOUS:
    case BEH_MERGED_PREV:
        for (size_t i = 0; i < n; i++) {
            span s = v->v[i];
            int merge = beh == BEH_CONTIGUOUS ? (s.is_match == prev_match)
                                              : (s.is_match && !prev_match);
            if (merge && k > 0)
                v->v[k - 1].b = s.b;
            else
                v->v[k++] = (span){s.a, s.b, 0};
            prev_match = s.is_match;
        }
        v->n = k;
        return;
    case BEH_MERGED_NEXT: /* the same walk from the right, merging into the following span */
        k = n;
        for (size_t j = n; j-- > 0;) {
            span s = v->v[j];
            if (s.is_match && !prev_match && k < n)
                v->v[k].a = s.a;
            else
                v->v[--k] = (span){s.a, s.b, 0};
            prev_match = s.is_match;
        }
        memmove(v->v, v->v + k, (n - k) * sizeof *v->v);
        v->n = n - k;
        return;
    }
}

static int pretok(tok_t *t, int step, const char *s, size_t n, ivec *out)
{
    if (n == 0) return HM_OK;
    step_t *st = &t->steps[step];
    if (st->kind == STEP_BYTELEVEL) {
        char *tmp = NULL;
        if (st->add_prefix_space && s[0] != ' ') {
            tmp = hm_malloc(n + 1);
            tmp[0] = ' ';
            memcpy(tmp + 1, s, n);
            s = tmp;
            n++;
        }
        int rc = HM_OK;
        if (!st->use_regex) {
            rc = bpe_piece(t, (const uint8_t *)s, n, out);
        } else {
            spanvec *v = &t->lvl[step];
            rc = regex_spans(t, st, s, n, v);
            for (size_t i = 0; rc == HM_OK && i < v->n; i++)
                rc = bpe_piece(t, (const uint8_t *)s + v->v[i].a, v->v[i].b - v->v[i].a, out);
        }
        free(tmp);
        return rc;
    }
    spanvec *v = &t->lvl[step];
    if (regex_spans(t, st, s, n, v) != HM_OK) return HM_ERR;
    apply_behavior(v, st->behavior);
    /* Deeper steps use other levels' buffers, so v stays valid across the recursion. */
    for (size_t i = 0; i < v->n; i++) {
        if (v->v[i].is_match || v->v[i].b == v->v[i].a) continue;
        if (pretok(t, step + 1, s + v->v[i].a, v->v[i].b - v->v[i].a, out) != HM_OK) return HM_ERR;
    }
    return HM_OK;
}

/* ---------------------------------------------------------------- encode: added tokens */

/* HF AddedVocabulary::find_matches on sentence s[0..n) (one piece of the text): cut out the
 * tokens of `tr`, leftmost-longest, and append the resulting segments (offsets relative to
 * `base`). */
static void find_added(const tok_t *t, const trie_t *tr, const char *s, size_t n, size_t base,
                       segvec *out)
{
    const uint8_t *u = (const uint8_t *)s;
    size_t start_off = 0, i = 0;
    while (i < n) {
        if (!tr->first[u[i]]) {
            i++;
            continue;
        }
        int32_t node = 0, best = -1;
        size_t best_end = 0;
        for (size_t j = i; j < n; j++) {
            int32_t ch = tr->nodes[node].child;
            while (ch >= 0 && tr->nodes[ch].byte != u[j]) ch = tr->nodes[ch].sibling;
            if (ch < 0) break;
            node = ch;
            if (tr->nodes[node].tok >= 0) {
                best = tr->nodes[node].tok;
                best_end = j + 1;
            }
        }
        if (best < 0) {
            i++;
            continue;
        }
        const added_tok *a = &t->added[best];
        size_t st = i, en = best_end;
        i = best_end; /* the match iterator resumes after the match even if it is discarded */
        if (a->single_word) {
            int start_space = 1, stop_space = 1;
            if (st > 0) {
                size_t adv, p = utf8_prev(u, st);
                start_space = !is_word_char(hm_utf8_decode(u + p, &adv));
            }
            if (en < n) {
                size_t adv;
                stop_space = !is_word_char(hm_utf8_decode(u + en, &adv));
            }
            if (!start_space || !stop_space) continue;
        }
        if (a->lstrip) {
            size_t ns = st, adv;
            while (ns > 0) {
                size_t p = utf8_prev(u, ns);
                if (!is_white_space(hm_utf8_decode(u + p, &adv))) break;
                ns = p;
            }
            st = HM_MAX(ns, start_off);
        }
        if (a->rstrip) {
            size_t adv;
            while (en < n && is_white_space(hm_utf8_decode(u + en, &adv))) en += adv;
        }
        if (start_off < st) seg_push(out, base + start_off, base + st, -1);
        seg_push(out, base + st, base + en, a->id);
        start_off = en;
    }
    if (start_off < n) seg_push(out, base + start_off, base + n, -1);
}

/* ---------------------------------------------------------------- encode */

int tok_encode_ex(tok_t *t, const char *text, size_t len, int add_special, int32_t **ids,
                  size_t *n)
{
    *ids = NULL;
    *n = 0;
    if (len > TOK_MAX_TEXT_BYTES)
        return hm_err("text of %zu bytes is larger than the tokenizer's %zu-byte limit", len,
                      TOK_MAX_TEXT_BYTES);
    if (len > 0 && !text) return hm_err("text is NULL");
    if (tok_utf8_check(text, len, "text") != HM_OK) return HM_ERR;

    segvec s1 = {0}, s2 = {0};
    if (!t->trie[0].empty)
        find_added(t, &t->trie[0], text, len, 0, &s1);
    else if (len > 0)
        seg_push(&s1, 0, len, -1);
    segvec *segs = &s1;
    if (!t->trie[1].empty) {
        for (size_t i = 0; i < s1.n; i++) {
            if (s1.v[i].id >= 0)
                seg_push(&s2, s1.v[i].a, s1.v[i].b, s1.v[i].id);
            else
                find_added(t, &t->trie[1], text + s1.v[i].a, s1.v[i].b - s1.v[i].a, s1.v[i].a,
                           &s2);
        }
        segs = &s2;
    }

    ivec out = {0};
    int rc = HM_OK;
    for (size_t i = 0; rc == HM_OK && i < segs->n; i++) {
        if (segs->v[i].id >= 0)
            ivec_push(&out, segs->v[i].id);
        else
            rc = pretok(t, 0, text + segs->v[i].a, segs->v[i].b - segs->v[i].a, &out);
    }
    free(s1.v);
    free(s2.v);
    if (rc != HM_OK) {
        free(out.v);
        return HM_ERR;
    }

    for (int k = 0; add_special && k < t->npost; k++) {
        ivec nv = {0};
        const post_t *pp = &t->post[k];
        for (size_t i = 0; i < pp->n; i++) {
            if (pp->items[i].is_seq)
                for (size_t j = 0; j < out.n; j++) ivec_push(&nv, out.v[j]);
            else
                for (size_t j = 0; j < pp->items[i].n; j++) ivec_push(&nv, pp->items[i].ids[j]);
        }
        free(out.v);
        out = nv;
    }
    if (!out.v) out.v = hm_malloc(sizeof *out.v);
    *ids = out.v;
    *n = out.n;
    return HM_OK;
}

int tok_encode(tok_t *t, const char *text, size_t len, int32_t **ids, size_t *n)
{
    return tok_encode_ex(t, text, len, 0, ids, n);
}
