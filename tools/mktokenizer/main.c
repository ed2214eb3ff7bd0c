/* mktokenizer - trains a small byte-level BPE tokenizer on text the project ships and writes it
 * as a Hugging Face tokenizer.json (the same structure as the Llama-3 file: Split regex
 * pre-tokenizer + ByteLevel, BPE with ignore_merges, <|begin_of_text|>/<|end_of_text|> added
 * tokens).  Used by `make demo` so the demo model has a real tokenizer of the real format.
 *
 *   mktokenizer --vocab N [--out tokenizer.json] corpus.txt...
 * Ids: 0..255 the bytes, then one id per merge (at most N-2 ids in all), then the two special
 * tokens right after them (HF tokenizers gives added tokens the next free ids, so they must be
 * contiguous with the vocabulary).  Prints "bos B eos E" for the model's gen_config.json. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <cJSON.h>
#include <pcre2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hm.h"
#include "utf8.h"

/* The Llama-3 pre-tokenizer pattern (a fact of that tokenizer's format). */
static const char *k_pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

typedef struct { int *sym; int n; long count; } word;
typedef struct { char *bytes; int len; } token;

/* GPT-2 style byte -> printable code point, so every byte has a visible vocab character. */
static void byte_chars(uint32_t cp[256])
{
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        cp[b] = printable ? (uint32_t)b : (uint32_t)(256 + extra++);
    }
}


static char *visible(const token *t, const uint32_t cp[256])
{
    char *s = hm_malloc((size_t)t->len * 3 + 1);
    int o = 0;
    for (int i = 0; i < t->len; i++) o += hm_utf8_encode(cp[(uint8_t)t->bytes[i]], s + o);
    s[o] = 0;
    return s;
}

int main(int argc, char **argv)
{
    int vocab = 1024;
    const char *out = "tokenizer.json";
    const char *files[64];
    int nf = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--vocab") && i + 1 < argc) vocab = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
        else if (argv[i][0] != '-' && nf < 64) files[nf++] = argv[i];
        else {
            fprintf(stderr, "usage: mktokenizer --vocab N [--out tokenizer.json] corpus.txt...\n");
            return 2;
        }
    }
    if (vocab < 260 || vocab > 65536 || !nf) {
        fprintf(stderr, "mktokenizer: need --vocab in [260, 65536] and at least one corpus file\n");
        return 2;
    }
    int err;
    PCRE2_SIZE eoff;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)k_pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &eoff, NULL);
    if (!re) { fprintf(stderr, "mktokenizer: pattern does not compile\n"); return 1; }
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);

    /* 1. words: every pre-token piece with its count (linear search is fine for a small corpus) */
    word *w = NULL;
    int nw = 0, cw = 0;
    for (int f = 0; f < nf; f++) {
        char *txt;
        size_t len;
        if (hm_read_file(files[f], &txt, &len, 16u << 20)) { fprintf(stderr, "mktokenizer: %s\n", hm_errmsg()); return 1; }
        PCRE2_SIZE pos = 0;
        while (pos < len && pcre2_match(re, (PCRE2_SPTR)txt, len, pos, 0, md, NULL) > 0) {
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            if (ov[1] == ov[0]) { pos++; continue; }
            int n = (int)(ov[1] - ov[0]), k;
            for (k = 0; k < nw; k++) {
                if (w[k].n != n) continue;
                int same = 1;
                for (int j = 0; j < n && same; j++) same = w[k].sym[j] == (uint8_t)txt[ov[0] + j];
                if (same) break;
            }
            if (k == nw) {
                if (nw == cw) { cw = cw ? cw * 2 : 1024; w = hm_realloc(w, (size_t)cw * sizeof *w); }
                w[nw].sym = hm_malloc((size_t)n * sizeof(int));
                for (int j = 0; j < n; j++) w[nw].sym[j] = (uint8_t)txt[ov[0] + j];
                w[nw].n = n;
                w[nw].count = 0;
                nw++;
            }
            w[k].count++;
            pos = ov[1];
        }
        free(txt);
    }
    /* 2. merges: most frequent adjacent pair, ties to the smallest (a, b) so the file is reproducible */
    int nsym = vocab - 2;
    token *tok = hm_calloc((size_t)nsym, sizeof *tok);
    for (int b = 0; b < 256; b++) { tok[b].bytes = hm_malloc(1); tok[b].bytes[0] = (char)b; tok[b].len = 1; }
    int *ma = hm_malloc(sizeof(int) * (size_t)nsym), *mb = hm_malloc(sizeof(int) * (size_t)nsym);
    long *cnt = hm_malloc(sizeof(long) * (size_t)nsym * (size_t)nsym);
    int next = 256;
    while (next < nsym) {
        memset(cnt, 0, sizeof(long) * (size_t)next * (size_t)nsym);
        for (int k = 0; k < nw; k++)
            for (int j = 0; j + 1 < w[k].n; j++) cnt[(size_t)w[k].sym[j] * nsym + w[k].sym[j + 1]] += w[k].count;
        long best = 0;
        int ba = -1, bb = -1;
        for (int a = 0; a < next; a++)
            for (int b = 0; b < next; b++)
                if (cnt[(size_t)a * nsym + b] > best) { best = cnt[(size_t)a * nsym + b]; ba = a; bb = b; }
        if (best < 2) break; /* nothing worth merging: a smaller vocabulary is still a valid one */
        tok[next].len = tok[ba].len + tok[bb].len;
        tok[next].bytes = hm_malloc((size_t)tok[next].len);
        memcpy(tok[next].bytes, tok[ba].bytes, (size_t)tok[ba].len);
        memcpy(tok[next].bytes + tok[ba].len, tok[bb].bytes, (size_t)tok[bb].len);
        ma[next] = ba;
        mb[next] = bb;
        for (int k = 0; k < nw; k++) {
            int o = 0;
            for (int j = 0; j < w[k].n; j++) {
                if (j + 1 < w[k].n && w[k].sym[j] == ba && w[k].sym[j + 1] == bb) { w[k].sym[o++] = next; j++; }
                else w[k].sym[o++] = w[k].sym[j];
            }
            w[k].n = o;
        }
        next++;
    }
    const int special_base = next;
    /* 3. tokenizer.json */
    uint32_t cp[256];
    byte_chars(cp);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    const char *specials[2] = {"<|begin_of_text|>", "<|end_of_text|>"};
    for (int i = 0; i < 2; i++) {
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", special_base + i);
        cJSON_AddStringToObject(a, "content", specials[i]);
        cJSON_AddBoolToObject(a, "single_word", 0);
        cJSON_AddBoolToObject(a, "lstrip", 0);
        cJSON_AddBoolToObject(a, "rstrip", 0);
        cJSON_AddBoolToObject(a, "normalized", 0);
        cJSON_AddBoolToObject(a, "special", 1);
        cJSON_AddItemToArray(added, a);
    }
    cJSON_AddNullToObject(root, "normalizer");
    cJSON *pre = cJSON_AddObjectToObject(root, "pre_tokenizer");
    cJSON_AddStringToObject(pre, "type", "Sequence");
    cJSON *pts = cJSON_AddArrayToObject(pre, "pretokenizers");
    cJSON *split = cJSON_CreateObject();
    cJSON_AddStringToObject(split, "type", "Split");
    cJSON_AddStringToObject(cJSON_AddObjectToObject(split, "pattern"), "Regex", k_pattern);
    cJSON_AddStringToObject(split, "behavior", "Isolated");
    cJSON_AddBoolToObject(split, "invert", 0);
    cJSON_AddItemToArray(pts, split);
    cJSON *bl = cJSON_CreateObject();
    cJSON_AddStringToObject(bl, "type", "ByteLevel");
    cJSON_AddBoolToObject(bl, "add_prefix_space", 0);
    cJSON_AddBoolToObject(bl, "trim_offsets", 1);
    cJSON_AddBoolToObject(bl, "use_regex", 0);
    cJSON_AddItemToArray(pts, bl);
    cJSON_AddNullToObject(root, "post_processor");
    cJSON *dec = cJSON_AddObjectToObject(root, "decoder");
    cJSON_AddStringToObject(dec, "type", "ByteLevel");
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddBoolToObject(model, "fuse_unk", 0);
    cJSON_AddBoolToObject(model, "byte_fallback", 0);
    cJSON_AddBoolToObject(model, "ignore_merges", 1);
    cJSON *vj = cJSON_AddObjectToObject(model, "vocab");
    cJSON *mj = cJSON_AddArrayToObject(model, "merges");
    for (int i = 0; i < next; i++) {
        char *s = visible(&tok[i], cp);
        cJSON_AddNumberToObject(vj, s, i);
        free(s);
        if (i >= 256) {
            char *a = visible(&tok[ma[i]], cp), *b = visible(&tok[mb[i]], cp);
            char *m = hm_malloc(strlen(a) + strlen(b) + 2);
            sprintf(m, "%s %s", a, b);
            cJSON_AddItemToArray(mj, cJSON_CreateString(m));
            free(a); free(b); free(m);
        }
    }
    char *js = cJSON_Print(root);
    FILE *fo = fopen(out, "w");
    if (!fo || fputs(js, fo) < 0 || fclose(fo) != 0) { fprintf(stderr, "mktokenizer: cannot write '%s'\n", out); return 1; }
    printf("bos %d eos %d\n", special_base, special_base + 1);
    fprintf(stderr, "%s: %d BPE ids (%d merges)\n", out, next, next - 256);
    return 0;
}
