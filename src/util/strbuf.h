/* strbuf.h: a growable byte buffer, always NUL-terminated.
 *
 * Ownership: the struct is the caller's (stack or embedded); sb_free releases the bytes. sb_steal hands the
 * bytes to the caller (free() them) and resets the buffer. Allocation failure aborts: these buffers hold
 * request-sized data, and running out of memory there is not a state we can report usefully. */
#ifndef LATHE_UTIL_STRBUF_H
#define LATHE_UTIL_STRBUF_H

#include <stddef.h>

typedef struct strbuf {
    char *buf;
    size_t len, cap;
} strbuf;

#define STRBUF_INIT                                                                                          \
    { NULL, 0, 0 }

void sb_reserve(strbuf *sb, size_t extra);
void sb_append(strbuf *sb, const void *data, size_t n);
void sb_puts(strbuf *sb, const char *s);
void sb_putc(strbuf *sb, char c);
void sb_printf(strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sb_reset(strbuf *sb);
char *sb_steal(strbuf *sb);
void sb_free(strbuf *sb);

#endif
