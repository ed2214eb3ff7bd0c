/* gpu_timeline.c - the kernel timeline of one LM decode frame, from CUPTI activity records (what an
 * Nsight Systems trace shows, on a machine that has no nsys).
 *   gpu_timeline [bf16|fp8|nvfp4] [positions] [csv]
 * A random model of the released shapes (3B backbone, 300M decoder) generated on the device, one
 * request with CFG (B = 2) and `positions` prompt positions (default 200), its KV capacity 8192
 * positions or GPU_TIMELINE_CAP (the graphs are recorded for it).  Two recordings:
 *  1. one eager frame with an event pair around each op (lm_cuda_profile_frame): the runtime API
 *     records put every kernel between its op's two cudaEventRecord calls, so each kernel gets
 *     its op's piece ("bb qkv gemv", ...) and weight bytes;
 *  2. graph frames as the engine runs them (lm_cuda_frame + lm_cuda_extend): the last frame's
 *     kernels, which must be the same kernels in the same order as the eager frame's.
 * The frame is a chain: with programmatic dependent launch a kernel starts early and waits for the
 * one before it, so its own start-to-end time overlaps its predecessor.  What it costs the frame is
 * its advance, end - previous end; the frame's span is the sum of the advances.  Prints per piece:
 * kernels, advance (us), GB/s over the advance and its share of the copy bandwidth, idle time (a
 * kernel starting after its predecessor ended), how early PDL started them; then the first kernels
 * of the frame one by one.  `csv` also writes every
 * kernel of the frame to $OUT/timeline_<precision>.csv (or ./timeline_<precision>.csv).
 * Exit status 1 when the graph frame does not match the eager frame (then no attribution). */
#include <ctype.h>
#include <cuda_runtime.h>
#include <cupti.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hm.h"
#include "lm_cuda.h"
#include "modelcfg.h"
#include "ops_cuda.h"

#include "gpu_check.h"

#define CUPTI_OK(x)                                                                                \
    do {                                                                                           \
        CUptiResult r_ = (x);                                                                      \
        if (r_ != CUPTI_SUCCESS) {                                                                 \
            const char *s_ = "?";                                                                  \
            cuptiGetResultString(r_, &s_);                                                         \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, s_);                        \
            exit(2);                                                                               \
        }                                                                                          \
    } while (0)

typedef struct {
    uint64_t start, end;
    uint32_t corr;
    const char *name; /* CUPTI's, shared by every record of the kernel */
} kernel_rec;

/* what the CUPTI buffer callback collected since the last reset */
static struct {
    pthread_mutex_t mu;
    kernel_rec *k;
    size_t nk, capk;
    uint32_t *ev; /* correlation ids of cudaEventRecord calls */
    size_t nev, capev;
} g = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0, NULL, 0, 0};

static void CUPTIAPI buf_request(uint8_t **buf, size_t *size, size_t *max_records)
{
    *size = 16u << 20;
    *buf = aligned_alloc(8, *size);
    *max_records = 0;
}

static void CUPTIAPI buf_complete(CUcontext ctx, uint32_t stream, uint8_t *buf, size_t size, size_t valid)
{
    (void)ctx, (void)stream, (void)size;
    CUpti_Activity *rec = NULL;
    pthread_mutex_lock(&g.mu);
    while (cuptiActivityGetNextRecord(buf, valid, &rec) == CUPTI_SUCCESS) {
        if (rec->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || rec->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
            const CUpti_ActivityKernel10 *k = (const CUpti_ActivityKernel10 *)rec;
            if (g.nk == g.capk) g.capk = g.capk ? 2 * g.capk : 4096, g.k = realloc(g.k, g.capk * sizeof *g.k);
            g.k[g.nk++] = (kernel_rec){k->start, k->end, k->correlationId, k->name};
        } else if (rec->kind == CUPTI_ACTIVITY_KIND_RUNTIME) {
            const CUpti_ActivityAPI *a = (const CUpti_ActivityAPI *)rec;
            if (a->cbid == CUPTI_RUNTIME_TRACE_CBID_cudaEventRecord_v3020 ||
                a->cbid == CUPTI_RUNTIME_TRACE_CBID_cudaEventRecord_ptsz_v7000 ||
                a->cbid == CUPTI_RUNTIME_TRACE_CBID_cudaEventRecordWithFlags_v11010 ||
                a->cbid == CUPTI_RUNTIME_TRACE_CBID_cudaEventRecordWithFlags_ptsz_v11010) {
                if (g.nev == g.capev)
                    g.capev = g.capev ? 2 * g.capev : 8192, g.ev = realloc(g.ev, g.capev * sizeof *g.ev);
                g.ev[g.nev++] = a->correlationId;
            }
        }
    }
    pthread_mutex_unlock(&g.mu);
    free(buf);
}

static void flush_reset(void) { g.nk = 0, g.nev = 0; }

static int by_corr(const void *a, const void *b)
{
    uint32_t x = ((const kernel_rec *)a)->corr, y = ((const kernel_rec *)b)->corr;
    return (x > y) - (x < y);
}
static int by_start(const void *a, const void *b)
{
    uint64_t x = ((const kernel_rec *)a)->start, y = ((const kernel_rec *)b)->start;
    return (x > y) - (x < y);
}
static int by_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* The identifier of a mangled name: "_ZN12_GLOBAL__N_111gemv_kernelILi2E...": gemv_kernel. */
static void short_name(const char *m, char *out, size_t n)
{
    snprintf(out, n, "%s", m ? m : "?");
    if (!m || strncmp(m, "_Z", 2)) return;
    const char *p = m + 2;
    const int nested = *p == 'N';
    if (nested) p++;
    while (isdigit((unsigned char)*p)) {
        char *e;
        long len = strtol(p, &e, 10);
        if (len <= 0 || (size_t)len > strnlen(e, 4096)) return;
        snprintf(out, n, "%.*s", (int)len, e);
        p = e + len;
        if (!nested || *p == 'I' || *p == 'E') return;
    }
}

static void run_frames(lm_cuda_req *r, int n, uint32_t *counter)
{
    int32_t codes[8];
    lm_cuda_sampling s = {1.0f, 50, 1.5f, 42, 0, NULL};
    for (int i = 0; i < n; i++) {
        s.counter = (*counter)++;
        OK(lm_cuda_frame(r, &s, codes, NULL));
        OK(lm_cuda_extend(r, NULL));
    }
    CU(cudaDeviceSynchronize());
}

int main(int argc, char **argv)
{
    const char *prec = argc > 1 ? argv[1] : "bf16";
    const int S = argc > 2 ? atoi(argv[2]) : 200;
    const int csv = argc > 3 && !strcmp(argv[3], "csv");
    hmc_dtype wdt = HMC_BF16;
    if (!strcmp(prec, "fp8")) wdt = HMC_FP8;
    else if (!strcmp(prec, "nvfp4")) wdt = HMC_NVFP4;
    else if (strcmp(prec, "bf16")) { fprintf(stderr, "gpu_timeline: precision '%s' (bf16, fp8, nvfp4)\n", prec); return 2; }
    if (S < 1 || S > 8000) { fprintf(stderr, "gpu_timeline: positions %d (1..8000)\n", S); return 2; }
    CU(cudaSetDevice(0));
    struct cudaDeviceProp p;
    CU(cudaGetDeviceProperties(&p, 0));
    const double bw = gpu_copy_bandwidth();

    hm_lm_config cfg = gpu_lm_cfg_3b();
    lm_cuda_opts o = {wdt};
    lm_cuda *m;
    OK(lm_cuda_random(&cfg, 1234, &o, &m));
    const double fbytes = lm_cuda_frame_bytes(m);
    lm_cuda_req *r;
    /* the request's capacity (the graphs are recorded for it: max_keys); GPU_TIMELINE_CAP, e.g. the
     * ~900 positions of a 60 s song, else the model's whole context */
    const char *ce = getenv("GPU_TIMELINE_CAP");
    const int cap = ce && atoi(ce) > S ? atoi(ce) : 8192;
    OK(lm_cuda_req_new(m, 2, cap, &r));
    const int nc = 8;
    int32_t *tok = hm_calloc((size_t)S * (nc + 1), sizeof(int32_t));
    uint8_t *mask = hm_calloc((size_t)S * (nc + 1), 1);
    for (int s = 0; s < S; s++) tok[s * (nc + 1) + nc] = (s * 7919) % 128256, mask[s * (nc + 1) + nc] = 1;
    OK(lm_cuda_prefill(r, tok, mask, S, 10, NULL));
    uint32_t counter = 0;
    run_frames(r, 20, &counter); /* records the graphs */

    CUPTI_OK(cuptiActivityRegisterCallbacks(buf_request, buf_complete));
    /* 1. the eager frame: kernels attributed to ops through the event records around them */
    CUPTI_OK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL));
    CUPTI_OK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME));
    static lm_cuda_prof pr;
    lm_cuda_sampling smp = {1.0f, 50, 1.5f, 42, counter++, NULL};
    OK(lm_cuda_profile_frame(r, &smp, &pr));
    CU(cudaDeviceSynchronize());
    CUPTI_OK(cuptiActivityFlushAll(1));
    CUPTI_OK(cuptiActivityDisable(CUPTI_ACTIVITY_KIND_RUNTIME));
    const size_t ne = g.nk;
    kernel_rec *eag = hm_malloc(sizeof *eag * (ne ? ne : 1));
    memcpy(eag, g.k, sizeof *eag * ne);
    qsort(eag, ne, sizeof *eag, by_corr);
    qsort(g.ev, g.nev, sizeof *g.ev, by_u32);
    int *op = hm_malloc(sizeof(int) * (ne ? ne : 1)); /* op index of each eager kernel, -1: none */
    for (size_t i = 0, e = 0; i < ne; i++) {
        while (e < g.nev && g.ev[e] < eag[i].corr) e++;
        op[i] = (e & 1) && (int)(e / 2) < pr.nop ? (int)(e / 2) : -1;
    }
    /* bytes of an op are split evenly over its kernels (a GEMV op is one kernel) */
    int *per_op = hm_calloc((size_t)pr.nop + 1, sizeof(int));
    for (size_t i = 0; i < ne; i++)
        if (op[i] >= 0) per_op[op[i]]++;
    flush_reset();

    /* 2. graph frames */
    run_frames(r, 5, &counter);
    CUPTI_OK(cuptiActivityFlushAll(1));
    CUPTI_OK(cuptiActivityDisable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL));
    qsort(g.k, g.nk, sizeof *g.k, by_start);
    int match = g.nk >= ne && ne > 0;
    const kernel_rec *f = match ? g.k + (g.nk - ne) : NULL;
    char a[96], b[96];
    for (size_t i = 0; match && i < ne; i++) {
        short_name(f[i].name, a, sizeof a), short_name(eag[i].name, b, sizeof b);
        if (strcmp(f[i].name, eag[i].name)) {
            printf("graph frame differs from the eager frame at kernel %zu: %s vs %s\n", i, a, b);
            match = 0;
        }
    }
    printf("device %s; copy bandwidth %.0f GB/s; %s weights, %.2f GB/frame, floor %.3f ms; %d prompt positions\n",
           p.name, bw / 1e9, prec, fbytes / 1e9, fbytes / bw * 1e3, S);
    if (!match) {
        printf("no attribution: eager frame %zu kernels, graph recording %zu kernels\n", ne, g.nk);
        return 1;
    }
    /* per piece; the largest gap is the host's round trip between the frame and the extend graphs
     * (lm_cuda_frame returns the codes to the host), reported on its own */
    enum { NP = LM_CUDA_PROF_MAX + 1 };
    double adv[NP] = {0}, gap[NP] = {0}, early[NP] = {0}, bytes[NP] = {0}, host_gap = 0;
    int cnt[NP] = {0};
    size_t host_at = 0;
    for (size_t i = 1; i < ne; i++) {
        double gp = (double)f[i].start - (double)f[i - 1].end;
        if (gp > host_gap) host_gap = gp, host_at = i;
    }
    for (size_t i = 0; i < ne; i++) {
        int pc = op[i] >= 0 ? pr.op_piece[op[i]] : LM_CUDA_PROF_MAX;
        double gp = i ? (double)f[i].start - (double)f[i - 1].end : 0;
        double ad = i ? (double)f[i].end - (double)f[i - 1].end : (double)(f[i].end - f[i].start);
        if (i == host_at) ad -= host_gap, gp = 0;
        cnt[pc]++;
        adv[pc] += ad;
        if (gp >= 0) gap[pc] += gp;
        else early[pc] -= gp;
        if (op[i] >= 0) bytes[pc] += pr.op_bytes[op[i]] / per_op[op[i]];
    }
    double span = (double)(f[ne - 1].end - f[0].start), tb = 0, tg = 0, te = 0;
    printf("\none frame (graphs): %zu kernels, span %.3f ms, of it the host round trip between the frame and the "
           "extend graph %.3f ms (before kernel %zu)\n",
           ne, span / 1e6, host_gap / 1e6, host_at);
    printf("\n| piece | kernels | advance us | us per kernel | GB/s over the advance | of copy bw | idle us | "
           "started early (PDL) us per kernel |\n|---|---|---|---|---|---|---|---|\n");
    for (int pc = 0; pc < NP; pc++) {
        if (!cnt[pc]) continue;
        const char *nm = pc < LM_CUDA_PROF_MAX && pc < pr.n ? pr.name[pc] : "(outside ops)";
        printf("| %s | %d | %.1f | %.2f |", nm, cnt[pc], adv[pc] / 1e3, adv[pc] / 1e3 / cnt[pc]);
        if (bytes[pc] > 0) printf(" %.0f | %.0f%% |", bytes[pc] / adv[pc], 100.0 * bytes[pc] / adv[pc] * 1e9 / bw);
        else printf(" | |");
        printf(" %.1f | %.2f |\n", gap[pc] / 1e3, early[pc] / 1e3 / cnt[pc]);
        tb += adv[pc], tg += gap[pc], te += early[pc];
    }
    printf("| all | %zu | %.1f | %.2f | %.0f | %.0f%% | %.1f | %.2f |\n", ne, tb / 1e3, tb / 1e3 / ne, fbytes / tb,
           100.0 * fbytes / tb * 1e9 / bw, tg / 1e3, te / 1e3 / ne);
    printf("\nframe without the host round trip %.3f ms (sum of advances %.3f, of it idle %.3f); floor %.3f ms "
           "(%.2fx)\n",
           (span - host_gap) / 1e6, tb / 1e6, tg / 1e6, fbytes / bw * 1e3, (span - host_gap) / 1e6 / (fbytes / bw * 1e3));

    printf("\nfirst kernels of the frame (us; advance = end - previous end; gap = start - previous end, negative: "
           "started early):\n| # | start | end | advance | gap | kernel | piece | GB/s over the advance |\n"
           "|---|---|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < ne && i < 40; i++) {
        short_name(f[i].name, a, sizeof a);
        int pc = op[i] >= 0 ? pr.op_piece[op[i]] : -1;
        double d = i ? (double)f[i].end - (double)f[i - 1].end : (double)(f[i].end - f[i].start);
        double by = op[i] >= 0 ? pr.op_bytes[op[i]] / per_op[op[i]] : 0;
        printf("| %zu | %.1f | %.1f | %.2f | %.2f | %s | %s |", i, (f[i].start - f[0].start) / 1e3,
               (f[i].end - f[0].start) / 1e3, d / 1e3, i ? ((double)f[i].start - (double)f[i - 1].end) / 1e3 : 0.0, a,
               pc >= 0 ? pr.name[pc] : "-");
        if (by > 0) printf(" %.0f |\n", by / d);
        else printf(" |\n");
    }
    if (csv) {
        const char *dir = getenv("OUT");
        char path[512];
        snprintf(path, sizeof path, "%s/timeline_%s.csv", dir && *dir ? dir : ".", prec);
        FILE *fo = fopen(path, "w");
        if (!fo) { fprintf(stderr, "gpu_timeline: cannot write %s\n", path); return 2; }
        fprintf(fo, "index,start_us,end_us,gap_us,kernel,piece,bytes\n");
        for (size_t i = 0; i < ne; i++) {
            short_name(f[i].name, a, sizeof a);
            int pc = op[i] >= 0 ? pr.op_piece[op[i]] : -1;
            fprintf(fo, "%zu,%.3f,%.3f,%.3f,%s,%s,%.0f\n", i, (f[i].start - f[0].start) / 1e3,
                    (f[i].end - f[0].start) / 1e3, i ? ((double)f[i].start - (double)f[i - 1].end) / 1e3 : 0.0, a,
                    pc >= 0 ? pr.name[pc] : "-", op[i] >= 0 ? pr.op_bytes[op[i]] / per_op[op[i]] : 0.0);
        }
        fclose(fo);
        printf("\nwrote %s\n", path);
    }
    /* diagnostics (HM_ATTN_STAMP / HM_GEMV_STAMP / HM_PP_STAMP): phases of the frame's last stamped launches */
    if (getenv("HM_ATTN_STAMP") || getenv("HM_GEMV_STAMP") || getenv("HM_PP_STAMP")) {
        run_frames(r, 3, &counter);
        if (getenv("HM_ATTN_STAMP")) hmc_attention_stamp_report(stdout);
        if (getenv("HM_GEMV_STAMP")) hmc_gemv_stamp_report(stdout);
        if (getenv("HM_PP_STAMP")) lm_cuda_persist_stamp_report(r, stdout);
    }
    lm_cuda_req_free(r);
    lm_cuda_free(m);
    free(tok), free(mask), free(eag), free(op), free(per_op);
    return 0;
}
