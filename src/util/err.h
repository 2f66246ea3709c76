/* err.h: the caller-owned error struct every fallible lathe function fills.
 *
 * Library code never prints and exits: it returns an error code (or NULL) and writes a message a user can act
 * on into a struct the caller owns. `code` is an HTTP-like status where that makes sense (400, 404, 409, 422,
 * 500) so the API layer can map it without guessing; plain library errors use 400 for bad input, 500 for
 * I/O and internal failures.
 *
 * Out of memory. Allocation failure of small bookkeeping (structs, names, lists, JSON, paths) is fatal: such
 * a failure leaves nothing sensible to report, so it aborts with a message on stderr, the one print library
 * code makes. lt_xmalloc / lt_xcalloc / lt_xrealloc (and util.h's lt_strdup) do that; use them rather than
 * `if (!p) abort();`. Big buffers whose size comes from outside (weights, activations, KV caches, uploads,
 * received messages) are allocated with plain malloc, checked, and reported as an lt_err naming the size, so
 * that a too-large model or request fails one job and not the process. */
#ifndef LATHE_UTIL_ERR_H
#define LATHE_UTIL_ERR_H

#include <stddef.h>

typedef struct lt_err {
    int code;       /* 0 = no error */
    char msg[1024]; /* NUL-terminated, human-readable */
} lt_err;

/* Sets code and a printf-formatted message. err may be NULL (then nothing happens). Returns -1 so that
 * `return lt_err_set(err, 400, "...")` reads naturally. */
int lt_err_set(lt_err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Prefixes the existing message with a printf-formatted context ("file.json: " + old). */
void lt_err_prefix(lt_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* malloc / calloc / realloc that abort with "lathe: out of memory (N bytes)" instead of returning NULL (see
 * "Out of memory" above). A zero size allocates one byte, so the result is never NULL. */
void *lt_xmalloc(size_t n);
void *lt_xcalloc(size_t count, size_t size);
void *lt_xrealloc(void *p, size_t n);

static inline void lt_err_clear(lt_err *err) {
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}

#endif
