/* hm.h - the conventions every file of heartmula-pipe shares: error returns, the thread-local
 * error message, logging with the stage name, small helpers.
 *
 * Error model (Redis style): a fallible function returns HM_OK (0) or HM_ERR (-1) and, on
 * failure, leaves a one-line human message in a thread-local buffer (hm_errmsg()).  Library
 * code never exits; only main() decides.  The message says what was wrong and, where it can,
 * what to do ("model dir 'x': config.json missing (download HeartMuLa-oss-3B there)"). */
#ifndef HM_H
#define HM_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HM_OK 0
#define HM_ERR (-1)

#define HM_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define HM_MIN(a, b) ((a) < (b) ? (a) : (b))
#define HM_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Set the thread's error message (printf format).  Always returns HM_ERR so a caller can write
 * `return hm_err("...")`. */
int hm_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prefix the current message: "ctx: <old message>".  Returns HM_ERR. */
int hm_err_ctx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *hm_errmsg(void);

enum hm_log_level { HM_LOG_DEBUG = 0, HM_LOG_INFO, HM_LOG_WARN, HM_LOG_ERROR };
/* Name printed in every log line (the stage name); default is the program name. */
void hm_log_set_name(const char *name);
void hm_log_set_level(enum hm_log_level lvl);
void hm_log(enum hm_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define LOG_DEBUG(...) hm_log(HM_LOG_DEBUG, __VA_ARGS__)
#define LOG_INFO(...) hm_log(HM_LOG_INFO, __VA_ARGS__)
#define LOG_WARN(...) hm_log(HM_LOG_WARN, __VA_ARGS__)
#define LOG_ERROR(...) hm_log(HM_LOG_ERROR, __VA_ARGS__)

/* Allocation that never returns NULL for a sane size: aborts the process on OOM (there is
 * nothing sensible a stage can do without memory).  Sizes from untrusted input must be
 * bounds-checked by the caller *before* allocating. */
void *hm_malloc(size_t n);
void *hm_calloc(size_t n, size_t sz);
void *hm_realloc(void *p, size_t n);
char *hm_strdup(const char *s);

/* Monotonic clock in seconds. */
double hm_now(void);

/* Read a whole file into a NUL-terminated heap buffer (owned by caller).  HM_ERR with message
 * naming the path on failure.  max_bytes bounds the size (0 = 1 GiB). */
int hm_read_file(const char *path, char **out, size_t *len, size_t max_bytes);

/* bf16 / f16 <-> f32 (round to nearest even on the way down). */
float hm_bf16_to_f32(uint16_t h);
uint16_t hm_f32_to_bf16(float f);
float hm_f16_to_f32(uint16_t h);
uint16_t hm_f32_to_f16(float f);

#ifdef __cplusplus
}
#endif

#endif
