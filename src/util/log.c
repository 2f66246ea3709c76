/* log.c: leveled, context-tagged log lines (see log.h). */
#include "util/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "util/util.h"

static int g_level = LOG_INFO;
static _Thread_local char t_ctx[80];

void lt_log_set_level(int level) {
    g_level = level;
}

void lt_log_set_context(const char *ctx) {
    if (!ctx)
        t_ctx[0] = '\0';
    else
        snprintf(t_ctx, sizeof t_ctx, "%s", ctx);
}

void lt_log(int level, const char *fmt, ...) {
    if (level < g_level) return;
    static const char *names[] = {"debug", "info", "warning", "error"};
    char ts[LT_TIME_LEN], line[2048];
    lt_time_fmt(lt_now_ms(), ts);
    int n = snprintf(line, sizeof line, "%s %-7s %s%s%s", ts, names[level & 3], t_ctx[0] ? "[" : "", t_ctx,
                     t_ctx[0] ? "] " : "");
    va_list ap;
    va_start(ap, fmt);
    if (n < (int)sizeof line) n += vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof line - 1) n = (int)sizeof line - 2;
    line[n++] = '\n';
    ssize_t w = write(2, line, (size_t)n);
    (void)w;
}
