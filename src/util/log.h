/* log.h: leveled log lines to stderr, each naming the request or job it belongs to.
 *
 * A thread-local context string (the request id or job id) is prefixed to every line written from that
 * thread, so a server log can be grepped by X-Request-Id. Thread-safe: one write(2) per line. */
#ifndef LATHE_UTIL_LOG_H
#define LATHE_UTIL_LOG_H

enum { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

void lt_log_set_level(int level);         /* lines below it are dropped; default LOG_INFO */
void lt_log_set_context(const char *ctx); /* thread-local; NULL clears; copied */
void lt_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
