/* util.h: small helpers shared by every layer: time, ids, hashing, files.
 *
 * Ownership: functions returning char * return malloc'd memory the caller frees; functions filling a
 * caller buffer say how large it must be. */
#ifndef LATHE_UTIL_UTIL_H
#define LATHE_UTIL_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

/* ---- time ---- */
int64_t lt_now_ms(void);                             /* wall clock, ms since the epoch */
double lt_mono_s(void);                              /* monotonic seconds, for durations */
#define LT_TIME_LEN 25                               /* "2026-11-30T12:00:00.000Z" + NUL */
void lt_time_fmt(int64_t ms, char out[LT_TIME_LEN]); /* RFC 3339 UTC with milliseconds */
int lt_time_parse(const char *s, int64_t *ms);       /* inverse of lt_time_fmt; 0 ok, -1 bad */

/* ---- ids and randomness ---- */
#define LT_UUID_LEN 37
void lt_uuid4(char out[LT_UUID_LEN]);      /* random UUID v4, lowercase */
int lt_is_uuid(const char *s);             /* 1 if s is a canonical UUID string */
void lt_random_bytes(void *buf, size_t n); /* getrandom(2); aborts only if the kernel refuses */

/* ---- hashing ---- */
#define LT_SHA256_HEX 65
void lt_sha256(const void *data, size_t n, uint8_t out[32]);
void lt_sha256_hex(const void *data, size_t n, char out[LT_SHA256_HEX]);
void lt_hex(const uint8_t *in, size_t n, char *out);     /* out holds 2n+1 */
int lt_ct_equal(const void *a, const void *b, size_t n); /* constant-time compare, 1 if equal */

/* ---- files ---- */
/* Reads a whole file; returns malloc'd bytes (NUL-terminated, *len excludes the NUL) or NULL with err. */
char *lt_read_file(const char *path, size_t *len, lt_err *err);
/* Writes via a temp file + fsync + rename, so a crash leaves the old or the new file, never half of one. */
int lt_write_file_atomic(const char *path, const void *data, size_t n, int mode, lt_err *err);
int lt_mkdir_p(const char *path, int mode, lt_err *err);
int lt_rm_rf(const char *path);
char *lt_path_join(const char *a, const char *b); /* malloc'd "a/b" */

/* ---- strings ---- */
char *lt_strdup(const char *s); /* aborts on OOM; NULL in, NULL out */
char *lt_strndup(const char *s, size_t n);
char *lt_strip(char *s); /* trims ASCII whitespace in place, returns s shifted */
int lt_utf8_valid(const char *s, size_t n);
/* A "NAME@VERSION" reference split at its last '@' into *name and *version (malloc'd; *version NULL when ref
 * has no '@', *name then a copy of ref). Either part may be "" ("@1", "a@"): callers say what they accept. */
void lt_ref_split(const char *ref, char **name, char **version);

#endif
