/* client.c: what lathe's client verbs share: option tables, connection settings, libcurl calls, the SSE
 * parser and error printing.
 *
 * Options. A verb describes its options in a NULL-terminated lc_opt table. lc_args_parse appends the shared
 * connection options to it, walks argv once ("--name value" and "--name=value"), checks INT/NUM values
 * and stores pointers into argv (nothing is copied). The same table renders --help, so the help text cannot
 * drift from what is parsed. Parse flags say what else holds: LC_NONEMPTY refuses empty values (a connection
 * option is never allowed to be empty: `--org=` must not quietly mean the default org), LC_NO_JSON drops
 * --json for commands without JSON output.
 *
 * Verb groups. lc_dispatch_group finds the verb as the first argument that is neither an option the whole
 * group takes (its shared table, the connection options of a client group, --json, --help) nor the value of
 * one, so those may come before the verb; then it parses the rest against the verb's own table plus the
 * shared one. An option some other verb of the group takes is reported with that verb's name, which is what
 * an operator who mixed up two verbs needs to read.
 *
 * Settings. The server URL, API key, org, workspace and project come, in rising priority, from built-in
 * defaults (http://127.0.0.1:8080, org "default", workspace "main"), the config file written by
 * `lathe login` (a mode 0600 "key = value" file under $XDG_CONFIG_HOME or ~/.config), the LATHE_* environment
 * variables, and the flags.
 *
 * HTTP. One curl easy handle per lc_client, reused between calls so the connection stays open. Every request
 * sends `User-Agent: lathe-cli/<version>`, `Accept: application/json` and the key as `X-API-Key`. Bodies
 * are collected into a strbuf; downloads and streams look at the status once the headers are in and send
 * 2xx bodies to the file or the SSE parser, anything else to the strbuf so the error envelope can be printed.
 *
 * SSE. The parser is a small state machine over bytes: it splits lines on \n, \r\n or \r (a \r at the end of
 * one chunk and a \n at the start of the next are one line end), applies the field rules of the WHATWG
 * event-stream format and calls back on each blank line. It is independent of curl, so tests and the fuzz
 * target drive it directly. */
#include "cli/client.h"

#include <assert.h>
#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "util/archive.h"
#include "util/util.h"

/* ============================================================================================================
 * Options
 * ==========================================================================================================
 */

static const lc_opt conn_opts[] = {
    {"server", LC_STR, "URL", "server URL (env LATHE_SERVER; default " LC_DEFAULT_SERVER ")"},
    {"api-key", LC_STR, "KEY", "API key (env LATHE_API_KEY)"},
    {"org", LC_STR, "KEY", "organization (env LATHE_ORG; default \"default\")"},
    {"organization", LC_STR, "KEY", "same as --org"},
    {"workspace", LC_STR, "KEY", "workspace (env LATHE_WORKSPACE; default \"main\")"},
    {"project", LC_STR, "KEY", "project (env LATHE_PROJECT; default: the workspace's default project)"},
    {NULL, 0, NULL, NULL},
};

static const lc_opt always_opts[] = {
    {"json", LC_FLAG, NULL, "print the server's JSON instead of a table"},
    {"help", LC_FLAG, NULL, "show this help"},
    {NULL, 0, NULL, NULL},
};

/* always_opts as a command without a server describes them in --help */
static const lc_opt local_always_opts[] = {
    {"json", LC_FLAG, NULL, "print the result as JSON"},
    {"help", LC_FLAG, NULL, "show this help"},
    {NULL, 0, NULL, NULL},
};

static int add_table(lc_args *a, const lc_opt *t, int no_json, lt_err *err) {
    for (; t && t->name; t++) {
        int dup = no_json && !strcmp(t->name, "json");
        for (size_t i = 0; i < a->nopt; i++)
            if (!strcmp(a->opt[i]->name, t->name)) dup = 1;
        if (dup) continue;
        if (a->nopt == LC_MAX_OPTS) return lt_err_set(err, 500, "too many options (raise LC_MAX_OPTS)");
        a->opt[a->nopt++] = t;
    }
    return 0;
}

static int add_tables(lc_args *a, const lc_opt *opts, const lc_opt *shared, int flags, lt_err *err) {
    int no_json = (flags & LC_NO_JSON) != 0;
    if (add_table(a, opts, no_json, err) || add_table(a, shared, no_json, err) ||
        add_table(a, always_opts, no_json, err) || ((flags & LC_CONN) && add_table(a, conn_opts, 0, err)))
        return -1;
    return 0;
}

static int find_opt(const lc_args *a, const char *name, size_t len) {
    for (size_t i = 0; i < a->nopt; i++)
        if (strlen(a->opt[i]->name) == len && !strncmp(a->opt[i]->name, name, len)) return (int)i;
    return -1;
}

static int is_conn_opt(const lc_opt *o) {
    for (const lc_opt *c = conn_opts; c->name; c++)
        if (o == c) return 1;
    return 0;
}

static int check_value(const lc_opt *o, const char *v, int flags, lt_err *err) {
    if (!*v && ((flags & LC_NONEMPTY) || is_conn_opt(o)))
        return lt_err_set(err, 2, "--%s is empty: give it a value (%s) or leave it out", o->name,
                          o->metavar ? o->metavar : "VALUE");
    char *end = NULL;
    errno = 0;
    if (o->kind == LC_INT) {
        long long x = strtoll(v, &end, 10);
        (void)x;
        if (!*v || *end || errno) return lt_err_set(err, 2, "--%s expects an integer, got '%s'", o->name, v);
    } else if (o->kind == LC_NUM) {
        double x = strtod(v, &end);
        if (!*v || *end || errno || !isfinite(x))
            return lt_err_set(err, 2, "--%s expects a number, got '%s'", o->name, v);
    }
    return 0;
}

/* Stores one value of option k; -1 with err when it is malformed. */
static int set_value(lc_args *a, int k, const char *v, int flags, lt_err *err) {
    const lc_opt *o = a->opt[k];
    if (check_value(o, v, flags, err)) return -1;
    a->val[k] = v;
    if (o->kind == LC_LIST) {
        const char **nl = realloc(a->list[k], (a->nlist[k] + 1) * sizeof *nl);
        if (!nl) abort();
        nl[a->nlist[k]++] = v;
        a->list[k] = nl;
    }
    return 0;
}

/* Parses the option argv[*i] (it starts with '-'), taking its value from argv[*i + 1] when it needs one. */
static int parse_opt(lc_args *a, int flags, int argc, char **argv, int *i, lt_err *err) {
    const char *s = argv[*i];
    if (!strcmp(s, "-h")) s = "--help";
    if (!strcmp(s, "-y")) s = "--yes";
    a->bad = s;
    if (s[1] != '-') {
        a->bad_unknown = 1;
        return lt_err_set(err, 2, "unknown option '%s' (options are spelled --name)", s);
    }
    const char *name = s + 2, *eq = strchr(name, '=');
    size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
    int k = find_opt(a, name, nlen);
    if (k < 0) {
        a->bad_unknown = 1;
        return lt_err_set(err, 2, "unknown option '--%.*s'", (int)nlen, name);
    }
    const lc_opt *o = a->opt[k];
    if (o->kind == LC_FLAG) {
        if (eq) return lt_err_set(err, 2, "--%s takes no value", o->name);
        a->val[k] = "1";
        return 0;
    }
    if (eq) return set_value(a, k, eq + 1, flags, err);
    if (*i + 1 >= argc) return lt_err_set(err, 2, "--%s needs a value (%s)", o->name, o->metavar);
    *i += 1;
    return set_value(a, k, argv[*i], flags, err);
}

int lc_args_parse_with(lc_args *a, const lc_opt *opts, const lc_opt *shared, int flags, int argc, char **argv,
                       lt_err *err) {
    memset(a, 0, sizeof *a);
    if (add_tables(a, opts, shared, flags, err)) return -1;
    int only_pos = 0;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (only_pos || s[0] != '-' || !strcmp(s, "-")) {
            if (a->npos == LC_MAX_POS) return lt_err_set(err, 2, "too many arguments (at '%s')", s);
            a->pos[a->npos++] = s;
            continue;
        }
        if (!strcmp(s, "--")) {
            only_pos = 1;
            continue;
        }
        if (parse_opt(a, flags, argc, argv, &i, err)) return -1;
    }
    a->bad = NULL;
    /* --organization is an alias of --org */
    int org = find_opt(a, "org", 3), orgn = find_opt(a, "organization", 12);
    if (org >= 0 && orgn >= 0 && !a->val[org]) a->val[org] = a->val[orgn];
    return 0;
}

int lc_args_parse(lc_args *a, const lc_opt *opts, int conn, int argc, char **argv, lt_err *err) {
    return lc_args_parse_with(a, opts, NULL, conn, argc, argv, err);
}

const char *lc_arg(const lc_args *a, const char *name) {
    int k = find_opt(a, name, strlen(name));
    return k < 0 ? NULL : a->val[k];
}

const char *lc_arg_or_env(const lc_args *a, const char *name, const char *env, const char *dflt) {
    const char *v = lc_arg(a, name);
    if (v) return v;
    const char *e = getenv(env);
    return e && *e ? e : dflt;
}

int lc_flag(const lc_args *a, const char *name) {
    return lc_arg(a, name) != NULL;
}

const char *const *lc_list(const lc_args *a, const char *name, size_t *n) {
    int k = find_opt(a, name, strlen(name));
    *n = k < 0 ? 0 : a->nlist[k];
    return k < 0 ? NULL : a->list[k];
}

void lc_args_free(lc_args *a) {
    for (size_t i = 0; i < a->nopt; i++)
        free(a->list[i]);
    memset(a, 0, sizeof *a);
}

static void help_table(FILE *f, const lc_opt *t, int no_json) {
    for (; t && t->name; t++) {
        if (no_json && !strcmp(t->name, "json")) continue;
        char left[64];
        if (t->kind == LC_FLAG)
            snprintf(left, sizeof left, "--%s", t->name);
        else
            snprintf(left, sizeof left, "--%s %s", t->name, t->metavar ? t->metavar : "VALUE");
        fprintf(f, "  %-34s %s%s\n", left, t->help, t->kind == LC_LIST ? " (repeatable)" : "");
    }
}

void lc_help(FILE *f, const char *usage, const char *desc, const lc_opt *opts, int conn) {
    fprintf(f, "usage: lathe %s\n\n%s\n", usage, desc);
    if (opts && opts->name) {
        fprintf(f, "\noptions:\n");
        help_table(f, opts, 0);
    }
    fprintf(f, "\noutput:\n");
    help_table(f, (conn & LC_CONN) ? always_opts : local_always_opts, (conn & LC_NO_JSON) != 0);
    if (conn & LC_CONN) {
        fprintf(f, "\nconnection (flag > environment > config file written by `lathe login`):\n");
        help_table(f, conn_opts, 0);
    }
}

void lc_help_section(FILE *f, const char *title, const lc_opt *opts) {
    fprintf(f, "\n%s:\n", title);
    help_table(f, opts, 0);
}

/* ============================================================================================================
 * Connection settings
 * ==========================================================================================================
 */

char *lc_config_path(void) {
    const char *x = getenv("XDG_CONFIG_HOME");
    strbuf sb = STRBUF_INIT;
    if (x && *x) {
        sb_printf(&sb, "%s/lathe/config", x);
    } else {
        const char *h = getenv("HOME");
        if (!h || !*h) return NULL;
        sb_printf(&sb, "%s/.config/lathe/config", h);
    }
    return sb_steal(&sb);
}

static void set_str(char **dst, const char *v) {
    free(*dst);
    *dst = v ? lt_strdup(v) : NULL;
}

int lc_config_load(lc_conf *c, const char *path, lt_err *err) {
    if (!path) return 0;
    struct stat st;
    if (stat(path, &st) != 0) return 0; /* no file yet: nothing to load */
    size_t n;
    char *text = lt_read_file(path, &n, err);
    if (!text) return -1;
    int lineno = 0, rc = 0;
    for (char *save = NULL, *ln = strtok_r(text, "\n", &save); ln; ln = strtok_r(NULL, "\n", &save)) {
        lineno++;
        char *s = lt_strip(ln);
        if (!*s || *s == '#') continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            rc = lt_err_set(err, 400, "%s:%d: expected 'key = value', got '%s'", path, lineno, s);
            break;
        }
        *eq = '\0';
        char *k = lt_strip(s), *v = lt_strip(eq + 1);
        if (!strcmp(k, "server"))
            set_str(&c->server, v);
        else if (!strcmp(k, "api_key"))
            set_str(&c->api_key, v);
        else if (!strcmp(k, "org"))
            set_str(&c->org, v);
        else if (!strcmp(k, "workspace"))
            set_str(&c->workspace, v);
        else if (!strcmp(k, "project"))
            set_str(&c->project, *v ? v : NULL);
        else {
            rc = lt_err_set(err, 400,
                            "%s:%d: unknown key '%s' (known: server, api_key, org, workspace, project)", path,
                            lineno, k);
            break;
        }
    }
    free(text);
    return rc;
}

int lc_config_save(const lc_conf *c, const char *path, lt_err *err) {
    char *dir = lt_strdup(path), *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        if (lt_mkdir_p(dir, 0700, err)) {
            free(dir);
            return -1;
        }
    }
    free(dir);
    strbuf sb = STRBUF_INIT;
    sb_puts(&sb, "# written by `lathe login`; LATHE_SERVER / LATHE_API_KEY and flags override it\n");
    if (c->server) sb_printf(&sb, "server = %s\n", c->server);
    if (c->api_key) sb_printf(&sb, "api_key = %s\n", c->api_key);
    if (c->org) sb_printf(&sb, "org = %s\n", c->org);
    if (c->workspace) sb_printf(&sb, "workspace = %s\n", c->workspace);
    if (c->project) sb_printf(&sb, "project = %s\n", c->project);
    int rc = lt_write_file_atomic(path, sb.buf, sb.len, 0600, err);
    if (rc == 0 && chmod(path, 0600) != 0) rc = lt_err_set(err, 500, "%s: %s", path, strerror(errno));
    sb_free(&sb);
    return rc;
}

static void normalise_server(char **s) {
    if (!*s) return;
    size_t n = strlen(*s);
    while (n > 0 && (*s)[n - 1] == '/')
        (*s)[--n] = '\0';
    if (n >= 7 && !strcmp(*s + n - 7, "/api/v1"))
        (*s)[n - 7] = '\0';
    else if (n >= 4 && !strcmp(*s + n - 4, "/api"))
        (*s)[n - 4] = '\0';
    n = strlen(*s);
    while (n > 0 && (*s)[n - 1] == '/')
        (*s)[--n] = '\0';
}

static void overlay(char **dst, const char *v) {
    if (v && *v) set_str(dst, v);
}

int lc_conf_resolve(lc_conf *c, const lc_args *a, lt_err *err) {
    memset(c, 0, sizeof *c);
    set_str(&c->server, LC_DEFAULT_SERVER);
    set_str(&c->org, "default");
    set_str(&c->workspace, "main");
    char *path = lc_config_path();
    int rc = lc_config_load(c, path, err);
    free(path);
    if (rc) return -1;
    overlay(&c->server, getenv("LATHE_SERVER"));
    overlay(&c->api_key, getenv("LATHE_API_KEY"));
    overlay(&c->org, getenv("LATHE_ORG"));
    overlay(&c->workspace, getenv("LATHE_WORKSPACE"));
    overlay(&c->project, getenv("LATHE_PROJECT"));
    if (a) {
        overlay(&c->server, lc_arg(a, "server"));
        overlay(&c->api_key, lc_arg(a, "api-key"));
        overlay(&c->org, lc_arg(a, "org"));
        overlay(&c->workspace, lc_arg(a, "workspace"));
        overlay(&c->project, lc_arg(a, "project"));
    }
    normalise_server(&c->server);
    if (strncmp(c->server, "http://", 7) && strncmp(c->server, "https://", 8))
        return lt_err_set(err, 2, "server URL '%s' must start with http:// or https://", c->server);
    return 0;
}

void lc_conf_free(lc_conf *c) {
    free(c->server);
    free(c->api_key);
    free(c->org);
    free(c->workspace);
    free(c->project);
    memset(c, 0, sizeof *c);
}

/* ============================================================================================================
 * SSE parser
 * ==========================================================================================================
 */

void lc_sse_init(lc_sse *p, lc_sse_cb cb, void *ud) {
    memset(p, 0, sizeof *p);
    p->cb = cb;
    p->ud = ud;
    p->retry_ms = -1;
}

void lc_sse_free(lc_sse *p) {
    sb_free(&p->line);
    sb_free(&p->event);
    sb_free(&p->data);
    sb_free(&p->id);
}

/* A blank line: hand the event over (if it has data) and start a new one. */
static int sse_dispatch(lc_sse *p) {
    int stop = 0;
    if (p->data_set) {
        if (p->data.len > 0 && p->data.buf[p->data.len - 1] == '\n') p->data.buf[--p->data.len] = '\0';
        stop = p->cb(p->ud, p->event.len ? p->event.buf : "message", p->data.buf ? p->data.buf : "",
                     p->data.len, p->id.buf ? p->id.buf : "");
    }
    sb_reset(&p->event);
    sb_reset(&p->data);
    p->data_set = 0;
    return stop;
}

static int sse_line(lc_sse *p, const char *ln, size_t n) {
    if (n == 0) return sse_dispatch(p);
    if (ln[0] == ':') return 0; /* comment */
    const char *colon = memchr(ln, ':', n);
    size_t flen = colon ? (size_t)(colon - ln) : n;
    const char *v = colon ? colon + 1 : ln + n;
    size_t vlen = colon ? n - flen - 1 : 0;
    if (vlen > 0 && v[0] == ' ') v++, vlen--;
    if (flen == 5 && !memcmp(ln, "event", 5)) {
        sb_reset(&p->event);
        sb_append(&p->event, v, vlen);
    } else if (flen == 4 && !memcmp(ln, "data", 4)) {
        sb_append(&p->data, v, vlen);
        sb_putc(&p->data, '\n');
        p->data_set = 1;
    } else if (flen == 2 && !memcmp(ln, "id", 2)) {
        if (!memchr(v, '\0', vlen)) {
            sb_reset(&p->id);
            sb_append(&p->id, v, vlen);
        }
    } else if (flen == 5 && !memcmp(ln, "retry", 5)) {
        long ms = 0;
        size_t i = 0;
        for (; i < vlen && v[i] >= '0' && v[i] <= '9' && ms < 1000000000L; i++)
            ms = ms * 10 + (v[i] - '0');
        if (vlen > 0 && i == vlen) p->retry_ms = ms;
    } /* any other field is ignored */
    return 0;
}

int lc_sse_feed(lc_sse *p, const char *buf, size_t n, lt_err *err) {
    if (p->stopped) return 1;
    size_t i = 0;
    /* an optional UTF-8 byte order mark opens the stream; it may arrive split across chunks */
    static const char bom[3] = {'\xEF', '\xBB', '\xBF'};
    while (!p->bom_done && i < n) {
        if (buf[i] == bom[p->bom_pos]) {
            i++;
            if (++p->bom_pos == 3) p->bom_done = 1;
        } else {
            sb_append(&p->line, bom, (size_t)p->bom_pos); /* a partial match was data after all */
            p->bom_done = 1;
        }
    }
    if (p->saw_cr && i < n) { /* "\r" ended the last chunk: a "\n" here belongs to it */
        if (buf[i] == '\n') i++;
        p->saw_cr = 0;
    }
    while (i < n) {
        const char *s = buf + i;
        size_t left = n - i, k = 0;
        while (k < left && s[k] != '\n' && s[k] != '\r')
            k++;
        if (p->line.len + k > LC_SSE_MAX_LINE || p->data.len > LC_SSE_MAX_LINE) {
            p->stopped = 1;
            return lt_err_set(err, 502, "event stream: a line or event is longer than %u bytes",
                              LC_SSE_MAX_LINE);
        }
        if (k == left) { /* no line end in this chunk: keep the piece */
            sb_append(&p->line, s, k);
            break;
        }
        int stop;
        if (p->line.len) {
            sb_append(&p->line, s, k);
            stop = sse_line(p, p->line.buf, p->line.len);
            sb_reset(&p->line);
        } else {
            stop = sse_line(p, s, k);
        }
        i += k + 1;
        if (s[k] == '\r') {
            if (i < n && buf[i] == '\n')
                i++;
            else if (i == n)
                p->saw_cr = 1;
        }
        if (stop) {
            p->stopped = 1;
            return 1;
        }
    }
    return 0;
}

/* ============================================================================================================
 * HTTP
 * ==========================================================================================================
 */

static void curl_global(void) {
    static int done;
    if (!done) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        done = 1;
    }
}

int lc_client_init(lc_client *c, const lc_args *a, lt_err *err) {
    memset(c, 0, sizeof *c);
    if (lc_conf_resolve(&c->conf, a, err)) return -1;
    curl_global();
    c->curl = curl_easy_init();
    if (!c->curl) return lt_err_set(err, 500, "libcurl could not start (curl_easy_init failed)");
    snprintf(c->ua, sizeof c->ua, "lathe-cli/%s", LATHE_VERSION);
    const char *dbg = getenv("LATHE_DEBUG");
    c->verbose = dbg && *dbg && strcmp(dbg, "0");
    return 0;
}

void lc_client_free(lc_client *c) {
    if (c->curl) curl_easy_cleanup(c->curl);
    lc_conf_free(&c->conf);
    memset(c, 0, sizeof *c);
}

void lc_resp_free(lc_resp *r) {
    sb_free(&r->body);
    if (r->json) json_decref(r->json);
    memset(r, 0, sizeof *r);
}

enum { SINK_BODY, SINK_FILE, SINK_SSE };

typedef struct xfer {
    lc_resp *r;
    CURL *curl;
    int sink;
    FILE *out;
    lc_sse *sse;
    lt_err *err;
    int write_failed; /* the file could not be written */
    int sse_error;    /* the parser failed */
    int stopped;      /* the SSE callback asked to stop */
} xfer;

static int status_ok(long s) {
    return s >= 200 && s < 300;
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud) {
    xfer *x = ud;
    size_t n = size * nmemb;
    if (!x->r->status) curl_easy_getinfo(x->curl, CURLINFO_RESPONSE_CODE, &x->r->status);
    if (x->sink == SINK_BODY || !status_ok(x->r->status)) {
        sb_append(&x->r->body, ptr, n);
        return n;
    }
    if (x->sink == SINK_FILE) {
        if (fwrite(ptr, 1, n, x->out) != n) {
            x->write_failed = 1;
            return 0;
        }
        return n;
    }
    int rc = lc_sse_feed(x->sse, ptr, n, x->err);
    if (rc < 0) {
        x->sse_error = 1;
        return 0;
    }
    if (rc > 0) {
        x->stopped = 1;
        return 0;
    }
    return n;
}

static size_t on_header(char *ptr, size_t size, size_t nmemb, void *ud) {
    xfer *x = ud;
    size_t n = size * nmemb;
    struct {
        const char *name;
        char *dst;
        size_t cap;
    } want[] = {{"content-type:", x->r->ctype, sizeof x->r->ctype},
                {"location:", x->r->location, sizeof x->r->location}};
    for (size_t i = 0; i < 2; i++) {
        size_t k = strlen(want[i].name);
        if (n > k && !strncasecmp(ptr, want[i].name, k)) {
            const char *v = ptr + k;
            size_t vl = n - k;
            while (vl && (*v == ' ' || *v == '\t'))
                v++, vl--;
            while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
                vl--;
            if (vl >= want[i].cap) vl = want[i].cap - 1;
            memcpy(want[i].dst, v, vl);
            want[i].dst[vl] = '\0';
        }
    }
    return n;
}

/* Runs one request. body/ctype may be NULL. */
static int perform(lc_client *c, const char *method, const char *path, const void *body, size_t blen,
                   const char *ctype, const char *extra_header, int sink, FILE *out, lc_sse *sse, lc_resp *r,
                   lt_err *err) {
    assert(path[0] == '/');
    CURL *h = c->curl;
    memset(r, 0, sizeof *r);
    curl_easy_reset(h);
    strbuf url = STRBUF_INIT;
    sb_printf(&url, "%s%s", c->conf.server, path);
    struct curl_slist *hdrs = NULL;
    strbuf tmp = STRBUF_INIT;
    hdrs =
        curl_slist_append(hdrs, sink == SINK_SSE ? "Accept: text/event-stream" : "Accept: application/json");
    if (c->conf.api_key && *c->conf.api_key) {
        sb_printf(&tmp, "X-API-Key: %s", c->conf.api_key);
        hdrs = curl_slist_append(hdrs, tmp.buf);
        sb_reset(&tmp);
    }
    if (ctype) {
        sb_printf(&tmp, "Content-Type: %s", ctype);
        hdrs = curl_slist_append(hdrs, tmp.buf);
        sb_reset(&tmp);
    }
    if (extra_header) hdrs = curl_slist_append(hdrs, extra_header);
    hdrs = curl_slist_append(hdrs, "Expect:");
    xfer x = {.r = r, .curl = h, .sink = sink, .out = out, .sse = sse, .err = err};
    curl_easy_setopt(h, CURLOPT_URL, url.buf);
    curl_easy_setopt(h, CURLOPT_USERAGENT, c->ua);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, sink == SINK_SSE ? 90L : 300L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &x);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, (const char *)body);
    } else if (!strcmp(method, "POST") || !strcmp(method, "PUT")) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, 0L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
    } else if (!strcmp(method, "HEAD")) {
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    }
    CURLcode cc = curl_easy_perform(h);
    if (!r->status) curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
    if (c->verbose) fprintf(stderr, "lathe: %s %s -> %ld\n", method, url.buf, r->status);
    int rc = 0;
    if (cc != CURLE_OK && !(cc == CURLE_WRITE_ERROR && x.stopped)) {
        if (x.sse_error) {
            rc = -1; /* err already set by the parser */
        } else if (x.write_failed) {
            rc = lt_err_set(err, 500, "could not write the download: %s", strerror(errno));
        } else if (r->status && cc == CURLE_PARTIAL_FILE) {
            rc = lt_err_set(err, 502, "%s: the server closed the connection before the whole body arrived",
                            url.buf);
        } else {
            rc = lt_err_set(err, 503, "%s: %s", url.buf, curl_easy_strerror(cc));
        }
    }
    if (rc == 0 && r->body.len &&
        (strstr(r->ctype, "json") || r->body.buf[0] == '{' || r->body.buf[0] == '['))
        r->json = json_loadb(r->body.buf, r->body.len, JSON_DECODE_ANY, NULL);
    curl_slist_free_all(hdrs);
    sb_free(&url);
    sb_free(&tmp);
    return rc;
}

int lc_call(lc_client *c, const char *method, const char *path, json_t *body, const char *extra_header,
            lc_resp *r, lt_err *err) {
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    if (body && !text) abort();
    int rc = perform(c, method, path, text, text ? strlen(text) : 0, body ? "application/json" : NULL,
                     extra_header, SINK_BODY, NULL, NULL, r, err);
    free(text);
    return rc;
}

int lc_upload(lc_client *c, const char *path, const void *data, size_t n, const char *ctype, lc_resp *r,
              lt_err *err) {
    return perform(c, "POST", path, data, n, ctype, NULL, SINK_BODY, NULL, NULL, r, err);
}

int lc_download(lc_client *c, const char *path, FILE *out, lc_resp *r, lt_err *err) {
    return perform(c, "GET", path, NULL, 0, NULL, NULL, SINK_FILE, out, NULL, r, err);
}

int lc_stream(lc_client *c, const char *path, lc_sse *p, lc_resp *r, lt_err *err) {
    return perform(c, "GET", path, NULL, 0, NULL, NULL, SINK_SSE, NULL, p, r, err);
}

void lc_esc(strbuf *sb, const char *s) {
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
            *p == '_' || *p == '.' || *p == '~') {
            sb_putc(sb, (char)*p);
        } else {
            sb_putc(sb, '%');
            sb_putc(sb, hex[*p >> 4]);
            sb_putc(sb, hex[*p & 15]);
        }
    }
}

void lc_ws_path(strbuf *sb, const lc_client *c) {
    sb_puts(sb, "/api/v1/org/");
    lc_esc(sb, c->conf.org);
    sb_puts(sb, "/ws/");
    lc_esc(sb, c->conf.workspace);
}

int lc_exit_for(long status) {
    if (status_ok(status)) return EXIT_OK;
    if (status == 401 || status == 403) return EXIT_CONN;
    if (status == 404) return EXIT_NOTFOUND;
    return EXIT_FAIL;
}

int lc_print_error(FILE *f, const char *what, const lc_resp *r) {
    json_t *j = r->json;
    const char *detail = j ? json_string_value(json_object_get(j, "detail")) : NULL;
    const char *type = j ? json_string_value(json_object_get(j, "type")) : NULL;
    if (detail) {
        fprintf(f, "lathe: %s: %ld %s: %s\n", what, r->status, type ? type : "error", detail);
    } else {
        int n = (int)(r->body.len > 300 ? 300 : r->body.len);
        fprintf(f, "lathe: %s: HTTP %ld%s%.*s\n", what, r->status, n ? ": " : "", n,
                r->body.buf ? r->body.buf : "");
    }
    json_t *errs = j ? json_object_get(j, "errors") : NULL;
    size_t i;
    json_t *e;
    json_array_foreach(errs, i, e) {
        json_t *loc = json_object_get(e, "loc");
        strbuf sb = STRBUF_INIT;
        size_t k;
        json_t *part;
        json_array_foreach(loc, k, part) {
            if (k) sb_putc(&sb, '.');
            if (json_is_string(part))
                sb_puts(&sb, json_string_value(part));
            else if (json_is_integer(part))
                sb_printf(&sb, "%lld", (long long)json_integer_value(part));
        }
        const char *msg = json_string_value(json_object_get(e, "msg"));
        const char *t = json_string_value(json_object_get(e, "type"));
        fprintf(f, "  %s: %s%s%s%s\n", sb.buf ? sb.buf : "(body)", msg ? msg : "invalid", t ? " [" : "",
                t ? t : "", t ? "]" : "");
        sb_free(&sb);
    }
    if (r->status == 401) fprintf(f, "  (check the API key: --api-key, LATHE_API_KEY, or `lathe login`)\n");
    return lc_exit_for(r->status);
}

int lc_print_conn_error(FILE *f, const lc_client *c, const lt_err *err) {
    fprintf(f,
            "lathe: cannot reach the server at %s: %s\n  (is `lathe serve` running? set --server, "
            "LATHE_SERVER, or run `lathe login --server URL`)\n",
            c->conf.server, err->msg);
    return EXIT_CONN;
}

/* ============================================================================================================
 * Archives
 * ==========================================================================================================
 */

long lc_untar(const void *data, size_t n, const char *dir, lt_err *err) {
    archive_items items = ARCHIVE_ITEMS_INIT;
    if (archive_unpack_mem(data, n, NULL, &items, err)) return -1; /* refuses unsafe entries */
    long files = 0;
    for (size_t i = 0; i < items.n && files >= 0; i++) {
        char *path = lt_path_join(dir, items.v[i].path);
        char *slash = strrchr(path, '/');
        *slash = '\0';
        int rc = lt_mkdir_p(path, 0755, err);
        *slash = '/';
        if (rc == 0) rc = lt_write_file_atomic(path, items.v[i].data, items.v[i].size, 0644, err);
        files = rc ? -1 : files + 1;
        free(path);
    }
    archive_items_free(&items);
    return files;
}

/* ============================================================================================================
 * Verb groups and small output helpers
 * ==========================================================================================================
 */

static void group_help(FILE *f, const char *group, const lc_group *g) {
    fprintf(f, "usage: lathe %s <verb> [options] (--help on any verb)\n\n%s\n\nverbs:\n", group, g->desc);
    for (size_t i = 0; i < g->n; i++)
        fprintf(f, "  %-12s %s\n", g->verbs[i].name, g->verbs[i].desc);
    if (g->shared && g->shared->name)
        lc_help_section(f, g->shared_title ? g->shared_title : "every verb", g->shared);
}

static void verb_help(const lc_group *g, const char *group, const lc_verb *v) {
    strbuf u = STRBUF_INIT;
    sb_printf(&u, "%s %s", group, v->usage);
    lc_help(stdout, u.buf, v->desc, v->opts, g->flags);
    if (g->shared && g->shared->name)
        lc_help_section(stdout, g->shared_title ? g->shared_title : "every verb", g->shared);
    sb_free(&u);
}

static const lc_verb *find_verb(const lc_group *g, const char *name) {
    for (size_t i = 0; i < g->n; i++)
        if (!strcmp(g->verbs[i].name, name)) return &g->verbs[i];
    return NULL;
}

/* The verbs of g, other than `skip`, whose own table has the option `opt` ("--name" or "--name=V"), as
 * "a, b" into sb (empty when none). */
static void verbs_taking(const lc_group *g, const lc_verb *skip, const char *opt, strbuf *sb) {
    if (strncmp(opt, "--", 2)) return;
    size_t len = strcspn(opt + 2, "=");
    for (size_t i = 0; i < g->n; i++) {
        if (&g->verbs[i] == skip) continue;
        for (const lc_opt *o = g->verbs[i].opts; o && o->name; o++)
            if (strlen(o->name) == len && !strncmp(o->name, opt + 2, len)) {
                sb_printf(sb, "%s%s", sb->len ? ", " : "", g->verbs[i].name);
                break;
            }
    }
}

/* Index in argv of the verb: the first argument that is neither an option the whole group takes nor the
 * value of one. 0 when there is none; -1 with err (and *bad) for any other option before the verb. */
static int verb_index(const lc_group *g, int argc, char **argv, const char **bad, lt_err *err) {
    lc_args t;
    memset(&t, 0, sizeof t);
    if (add_tables(&t, NULL, g->shared, g->flags, err)) return -1;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (s[0] != '-' || !strcmp(s, "-")) return i;
        if (!strcmp(s, "-h")) continue;
        const char *name = s + 2;
        size_t nlen = strcspn(name, "=");
        int k = s[1] == '-' ? find_opt(&t, name, nlen) : -1;
        if (k < 0) {
            *bad = s;
            return lt_err_set(err, 2, "'%s' comes before the verb: a verb's options go after it", s);
        }
        if (t.opt[k]->kind != LC_FLAG && !name[nlen]) {
            if (i + 1 >= argc)
                return lt_err_set(err, 2, "--%s needs a value (%s)", t.opt[k]->name, t.opt[k]->metavar);
            i++;
        }
    }
    return 0;
}

/* Prints a usage error of verb v (NULL before the verb is known) and returns EXIT_USAGE. */
static int usage_error(const lc_group *g, const char *group, const lc_verb *v, const char *msg,
                       const char *bad, int unknown) {
    strbuf others = STRBUF_INIT;
    if (bad && unknown) verbs_taking(g, v, bad, &others);
    if (v) {
        fprintf(stderr, "lathe %s %s: %s\n", group, v->name, msg);
        if (others.len)
            fprintf(stderr, "(%.*s is an option of %s, not of %s: see lathe %s %s --help)\n",
                    (int)strcspn(bad, "="), bad, others.buf, v->name, group, v->name);
        else
            fprintf(stderr, "(see lathe %s %s --help)\n", group, v->name);
    } else {
        fprintf(stderr, "lathe %s: %s\n", group, msg);
        if (others.len)
            fprintf(stderr, "(%.*s is an option of %s: put it after the verb)\n", (int)strcspn(bad, "="), bad,
                    others.buf);
        else
            fprintf(stderr, "(see lathe %s --help)\n", group);
    }
    sb_free(&others);
    return EXIT_USAGE;
}

/* The positional count against v's bounds; prints the usage error and returns EXIT_USAGE, or 0. */
static int check_positionals(const lc_group *g, const char *group, const lc_verb *v, const lc_args *a) {
    if ((int)a->npos >= v->min_pos && (int)a->npos <= v->max_pos) return 0;
    if (v->max_pos == 0) {
        const char *x = a->pos[0];
        fprintf(stderr, "lathe %s %s: unexpected argument '%s'%s\nusage: lathe %s %s\n", group, v->name, x,
                find_verb(g, x) ? " (that is another verb: run one verb per command)" : "", group, v->usage);
        return EXIT_USAGE;
    }
    fprintf(stderr, "lathe %s %s: expected %d%s argument%s, got %zu\nusage: lathe %s %s\n", group, v->name,
            v->min_pos,
            v->min_pos == v->max_pos ? ""
            : v->max_pos == 2        ? " or 2"
                                     : " or more",
            v->max_pos == 1 ? "" : "s", a->npos, group, v->usage);
    return EXIT_USAGE;
}

static int run_verb(const lc_group *g, const char *group, const lc_verb *v, const lc_args *a) {
    if (!(g->flags & LC_CONN)) return v->fn(NULL, a, group);
    lc_client c;
    lt_err err = {0};
    if (lc_client_init(&c, a, &err)) {
        fprintf(stderr, "lathe %s %s: %s\n", group, v->name, err.msg);
        lc_client_free(&c);
        return err.code == 2 ? EXIT_USAGE : EXIT_FAIL;
    }
    int rc = v->fn(&c, a, group);
    lc_client_free(&c);
    return rc;
}

/* Parses the verb's arguments (av[0] is the verb) and runs it. */
static int dispatch_verb(const lc_group *g, const char *group, const lc_verb *v, int ac, char **av) {
    lc_args a;
    lt_err err = {0};
    int rc;
    if (lc_args_parse_with(&a, v->opts, g->shared, g->flags, ac, av, &err))
        rc = usage_error(g, group, v, err.msg, a.bad, a.bad_unknown);
    else if (lc_flag(&a, "help")) {
        verb_help(g, group, v);
        rc = EXIT_OK;
    } else if (!(rc = check_positionals(g, group, v, &a)))
        rc = run_verb(g, group, v, &a);
    lc_args_free(&a);
    return rc;
}

int lc_dispatch_group(const lc_group *g, int argc, char **argv) {
    const char *group = argv[0];
    int help =
        argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help"));
    if (argc < 2 || (help && (argc == 2 || !find_verb(g, argv[2])))) {
        group_help(argc < 2 ? stderr : stdout, group, g);
        return argc < 2 ? EXIT_USAGE : EXIT_OK;
    }
    if (help) { /* help VERB */
        verb_help(g, group, find_verb(g, argv[2]));
        return EXIT_OK;
    }
    const char *bad = NULL;
    lt_err err = {0};
    int vi = verb_index(g, argc, argv, &bad, &err);
    if (vi < 0) return usage_error(g, group, NULL, err.msg, bad, 1);
    if (vi == 0) {
        fprintf(stderr, "lathe %s: no verb given\n\n", group);
        group_help(stderr, group, g);
        return EXIT_USAGE;
    }
    const lc_verb *v = find_verb(g, argv[vi]);
    if (!v) {
        fprintf(stderr, "lathe %s: unknown verb '%s'\n\n", group, argv[vi]);
        group_help(stderr, group, g);
        return EXIT_USAGE;
    }
    /* the verb first, then the group options that came before it, then the rest */
    char **av = malloc((size_t)argc * sizeof *av);
    if (!av) abort();
    int ac = 0;
    av[ac++] = argv[vi];
    for (int i = 1; i < argc; i++)
        if (i != vi) av[ac++] = argv[i];
    int rc = dispatch_verb(g, group, v, ac, av);
    free(av);
    return rc;
}

int lc_dispatch(const char *group_desc, const lc_verb *verbs, size_t n, int argc, char **argv) {
    const lc_group g = {group_desc, verbs, n, NULL, NULL, LC_CONN};
    return lc_dispatch_group(&g, argc, argv);
}

void lc_print_json(FILE *f, const json_t *j) {
    json_dumpf(j, f, JSON_INDENT(2) | JSON_ENCODE_ANY);
    fputc('\n', f);
}

int lc_parse_ref(const char *s, const char *what, char **name, char **version, lt_err *err) {
    *name = *version = NULL;
    if (s) lt_ref_split(s, name, version);
    if (!*version || !**name || !**version) {
        free(*name);
        free(*version);
        *name = *version = NULL;
        return lt_err_set(err, 2, "%s expects NAME@VERSION (e.g. my-data@0.1.0), got '%s'", what, s ? s : "");
    }
    return 0;
}

json_t *lc_ref_json(const char *s, const char *what, lt_err *err) {
    char *name, *version;
    if (lc_parse_ref(s, what, &name, &version, err)) return NULL;
    json_t *j = json_pack("{s:s, s:s}", "name", name, "version", version);
    free(name);
    free(version);
    return j;
}
