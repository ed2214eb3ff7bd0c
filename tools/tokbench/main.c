/* tokbench - times the tokenizer stage's tokenizer.json load and encode (docs/PERF.md).
 *
 *   tokbench TOKENIZER.json [TEXT_FILE] [--reps N] [--lower] [--print]
 *       load time (best and median of N loads) and encode throughput of TEXT_FILE (best of N),
 *       on the calling thread (one core).  --lower times tok_lower too; --print prints the ids.
 *   tokbench TOKENIZER.json --cases STRINGS.json [--lower]
 *       encodes every string of a JSON array, one line of space-separated ids per string
 *       (for comparing with another implementation). */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../stages/tokenizer/bpe.h"
#include "hm.h"

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void print_ids(const int32_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
}

static int run_cases(tok_t *tok, const char *path, int lower)
{
    char *buf;
    size_t len;
    if (hm_read_file(path, &buf, &len, 0) != HM_OK) return HM_ERR;
    cJSON *arr = cJSON_ParseWithLength(buf, len);
    free(buf);
    if (!cJSON_IsArray(arr)) {
        cJSON_Delete(arr);
        return hm_err("%s: expected a JSON array of strings", path);
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        if (!cJSON_IsString(e)) continue;
        const char *s = e->valuestring;
        size_t n = strlen(s);
        char *low = NULL;
        if (lower) {
            size_t nl;
            if (tok_lower(s, n, &low, &nl) != HM_OK) { printf("ERR %s\n", hm_errmsg()); continue; }
            s = low;
            n = nl;
        }
        int32_t *ids;
        size_t nids;
        if (tok_encode(tok, s, n, &ids, &nids) != HM_OK)
            printf("ERR %s\n", hm_errmsg());
        else
            print_ids(ids, nids), free(ids);
        free(low);
    }
    cJSON_Delete(arr);
    return HM_OK;
}

int main(int argc, char **argv)
{
    const char *tokpath = NULL, *text = NULL, *cases = NULL;
    int reps = 5, lower = 0, print = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--cases") && i + 1 < argc) cases = argv[++i];
        else if (!strcmp(argv[i], "--lower")) lower = 1;
        else if (!strcmp(argv[i], "--print")) print = 1;
        else if (!tokpath) tokpath = argv[i];
        else if (!text) text = argv[i];
        else { fprintf(stderr, "tokbench: unexpected argument '%s'\n", argv[i]); return 2; }
    }
    if (!tokpath || reps < 1) {
        fprintf(stderr, "usage: tokbench TOKENIZER.json [TEXT_FILE] [--reps N] [--lower] [--print]\n"
                        "       tokbench TOKENIZER.json --cases STRINGS.json [--lower]\n");
        return 2;
    }
    tok_t *tok = NULL;
    if (cases) {
        if (tok_load(tokpath, &tok) != HM_OK || run_cases(tok, cases, lower) != HM_OK) {
            fprintf(stderr, "tokbench: %s\n", hm_errmsg());
            tok_free(tok);
            return 1;
        }
        tok_free(tok);
        return 0;
    }
    double *lt = hm_malloc((size_t)reps * sizeof *lt);
    for (int r = 0; r < reps; r++) {
        double t0 = hm_now();
        if (tok_load(tokpath, &tok) != HM_OK) {
            fprintf(stderr, "tokbench: %s\n", hm_errmsg());
            return 1;
        }
        lt[r] = hm_now() - t0;
        if (r + 1 < reps) tok_free(tok);
    }
    qsort(lt, (size_t)reps, sizeof *lt, cmp_d);
    printf("load: best %.1f ms, median %.1f ms (%d runs, %zu vocab entries)\n", lt[0] * 1e3,
           lt[reps / 2] * 1e3, reps, tok_vocab_size(tok));
    free(lt);
    if (text) {
        char *buf;
        size_t len;
        if (hm_read_file(text, &buf, &len, 0) != HM_OK) {
            fprintf(stderr, "tokbench: %s\n", hm_errmsg());
            return 1;
        }
        double best = 1e30, best_low = 1e30;
        int32_t *ids = NULL;
        size_t n = 0;
        for (int r = 0; r < reps; r++) {
            if (lower) {
                char *low;
                size_t nl;
                double t0 = hm_now();
                if (tok_lower(buf, len, &low, &nl) != HM_OK) {
                    fprintf(stderr, "tokbench: %s\n", hm_errmsg());
                    return 1;
                }
                best_low = HM_MIN(best_low, hm_now() - t0);
                free(low);
            }
            free(ids);
            double t0 = hm_now();
            if (tok_encode(tok, buf, len, &ids, &n) != HM_OK) {
                fprintf(stderr, "tokbench: %s\n", hm_errmsg());
                return 1;
            }
            best = HM_MIN(best, hm_now() - t0);
        }
        printf("encode: %zu bytes -> %zu ids in %.1f ms: %.1f MB/s (best of %d)\n", len, n,
               best * 1e3, len / best / 1e6, reps);
        if (lower)
            printf("lower: %.1f ms: %.1f MB/s\n", best_low * 1e3, len / best_low / 1e6);
        if (print) print_ids(ids, n);
        free(ids);
        free(buf);
    }
    tok_free(tok);
    return 0;
}
