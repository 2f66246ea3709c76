/* client.h: the pieces every lathe client verb (login, train, dataset/capability/task) is built from.
 *
 *   - a table-driven option parser (lc_args): each verb names its options once, and the same table gives
 *     parsing, type checks (usage errors, exit 2) and the --help text;
 *   - connection settings (lc_conf) resolved as flag > environment > config file > default;
 *   - an HTTP client on libcurl (lc_client) for JSON calls, archive uploads, file downloads and
 *     Server-Sent Events streams;
 *   - a line-based SSE parser (lc_sse) that knows nothing of HTTP, so it can be fuzzed and unit tested;
 *   - printing of the server's error envelope and the mapping of HTTP statuses to exit codes (cli.h).
 *
 * Ownership: every struct here is the caller's (stack or embedded) and has a matching *_free that releases
 * what the functions put in it. Strings handed in are borrowed unless a comment says otherwise; strings and
 * JSON handed out are owned by the struct they live in. */
#ifndef LATHE_CLI_CLIENT_H
#define LATHE_CLI_CLIENT_H

#include <jansson.h>
#include <stddef.h>
#include <stdio.h>

#include "util/err.h"
#include "util/strbuf.h"

/* ------------------------------------------------------------------------------------------------------------
 * Options
 * ----------------------------------------------------------------------------------------------------------
 */

enum lc_opt_kind {
    LC_FLAG, /* --name, no value; lc_flag() is 1 when given */
    LC_STR,  /* --name VALUE or --name=VALUE */
    LC_INT,  /* a base-10 integer (checked at parse time) */
    LC_NUM,  /* a finite number (checked at parse time) */
    LC_LIST, /* repeatable string; every value kept in order */
};

typedef struct lc_opt {
    const char *name;    /* long name without the leading "--"; NULL ends a table */
    int kind;            /* enum lc_opt_kind */
    const char *metavar; /* shown in --help ("N", "NAME@VERSION"); NULL for flags */
    const char *help;    /* one line */
} lc_opt;

#define LC_MAX_OPTS 80
#define LC_MAX_POS 8

typedef struct lc_args {
    const lc_opt *opt[LC_MAX_OPTS]; /* the verb's table followed by the connection options */
    size_t nopt;
    const char *val[LC_MAX_OPTS];   /* last value given (borrowed from argv); "1" for a flag */
    const char **list[LC_MAX_OPTS]; /* LC_LIST values (array owned, strings borrowed) */
    size_t nlist[LC_MAX_OPTS];
    const char *pos[LC_MAX_POS]; /* positional arguments in order (borrowed) */
    size_t npos;
    const char *bad; /* after a usage error: the option at fault, as given ("--name" or "--name=VALUE") */
    int bad_unknown; /* ... and 1 when it is an option the tables do not know */
} lc_args;

/* What a command's options are parsed with: the `conn` argument of lc_args_parse and lc_help is a set of
 * these bits (1 is LC_CONN, so the historical 0/1 keep their meaning). */
enum lc_parse_flags {
    LC_CONN = 1,     /* accept the connection options (an empty value for one of them is a usage error) */
    LC_NONEMPTY = 2, /* every option value must be non-empty: `--scopes ''` is a usage error */
    LC_NO_JSON = 4,  /* the command has no JSON output: --json is an unknown option */
};

/* Parses argv[1..argc) (argv[0] is the verb name) against `opts` (NULL-terminated table) plus, when
 * `conn` has LC_CONN, the connection options --server, --api-key, --org (alias --organization), --workspace,
 * --project; --help (and --json, unless LC_NO_JSON) are always accepted. "--" ends options. Returns 0, or -1
 * with a usage message in err (unknown option, missing, empty or malformed value, too many positionals) and
 * the option at fault in a->bad. */
int lc_args_parse(lc_args *a, const lc_opt *opts, int conn, int argc, char **argv, lt_err *err);
/* The same with a second table (`shared`, may be NULL): options a whole command group takes, such as
 * `lathe admin`'s --data-dir and --db. An option in both tables counts once (the first table's entry). */
int lc_args_parse_with(lc_args *a, const lc_opt *opts, const lc_opt *shared, int flags, int argc, char **argv,
                       lt_err *err);
const char *lc_arg(const lc_args *a, const char *name); /* NULL when not given */
/* The option's value, else the environment variable's when set and non-empty, else dflt (flag > env >
 * default). */
const char *lc_arg_or_env(const lc_args *a, const char *name, const char *env, const char *dflt);
int lc_flag(const lc_args *a, const char *name); /* 1 when given */
const char *const *lc_list(const lc_args *a, const char *name, size_t *n);
void lc_args_free(lc_args *a);

/* Writes "usage: lathe USAGE\n\nDESC\n\noptions:\n..." for the table (plus the connection options when conn
 * has LC_CONN; without --json when it has LC_NO_JSON). */
void lc_help(FILE *f, const char *usage, const char *desc, const lc_opt *opts, int conn);
/* Writes "\nTITLE:\n" and one aligned line per option of the table (the layout of lc_help's sections). */
void lc_help_section(FILE *f, const char *title, const lc_opt *opts);

/* ------------------------------------------------------------------------------------------------------------
 * Connection settings
 * ----------------------------------------------------------------------------------------------------------
 */

#define LC_DEFAULT_SERVER "http://127.0.0.1:8080"

typedef struct lc_conf {
    char *server; /* base URL, no trailing slash, no /api/v1 suffix */
    char *api_key;
    char *org;
    char *workspace;
    char *project; /* NULL = the workspace's default project */
} lc_conf;

/* $XDG_CONFIG_HOME/lathe/config, else $HOME/.config/lathe/config; malloc'd, or NULL when neither is set. */
char *lc_config_path(void);
/* Reads `key = value` lines (server, api_key, org, workspace, project; '#' comments) into c, replacing fields
 * the file sets. A missing file is not an error. */
int lc_config_load(lc_conf *c, const char *path, lt_err *err);
/* Writes c to path (creating the directory, mode 0700) as a mode 0600 file, atomically. */
int lc_config_save(const lc_conf *c, const char *path, lt_err *err);
/* Fills c: defaults, then the config file, then LATHE_SERVER / LATHE_API_KEY / LATHE_ORG / LATHE_WORKSPACE /
 * LATHE_PROJECT, then the flags in a. Normalises the server URL (trailing '/' and '/api/v1' removed). */
int lc_conf_resolve(lc_conf *c, const lc_args *a, lt_err *err);
void lc_conf_free(lc_conf *c);

/* ------------------------------------------------------------------------------------------------------------
 * SSE parser (text/event-stream, per the WHATWG rules: fields event/data/id/retry, ':' comments, a blank line
 * dispatches, data lines joined with '\n', lines end in \n, \r\n or \r, one leading space of a value dropped)
 * ----------------------------------------------------------------------------------------------------------
 */

/* Called once per dispatched event. `event` is "message" when the stream named none; data is NUL-terminated
 * (data_len excludes the NUL); id is the last id seen ("" if none). Return 0 to go on, non-zero to stop. */
typedef int (*lc_sse_cb)(void *ud, const char *event, const char *data, size_t data_len, const char *id);

#define LC_SSE_MAX_LINE (64u << 20) /* one line (or one event's data) may not exceed 64 MiB */

typedef struct lc_sse {
    lc_sse_cb cb;
    void *ud;
    strbuf line;   /* the current, unfinished line */
    strbuf event;  /* event type of the event being built */
    strbuf data;   /* its data */
    strbuf id;     /* last event id */
    long retry_ms; /* last valid retry field, -1 if none */
    int saw_cr;    /* the previous chunk ended in '\r' (a following '\n' belongs to it) */
    int data_set;  /* a data field was seen for the current event */
    int stopped;   /* the callback asked to stop */
    int bom_pos;   /* bytes of a leading UTF-8 BOM matched so far */
    int bom_done;  /* the optional leading BOM has been dealt with */
} lc_sse;

void lc_sse_init(lc_sse *p, lc_sse_cb cb, void *ud);
/* Feeds bytes. Returns 0 (go on), 1 (the callback asked to stop; later feeds are ignored), -1 with err when a
 * line grows past LC_SSE_MAX_LINE. */
int lc_sse_feed(lc_sse *p, const char *buf, size_t n, lt_err *err);
/* End of stream: an unfinished event is discarded (as the standard says); an unfinished line is dropped. */
void lc_sse_free(lc_sse *p);

/* ------------------------------------------------------------------------------------------------------------
 * HTTP
 * ----------------------------------------------------------------------------------------------------------
 */

typedef struct lc_client {
    lc_conf conf;
    void *curl;  /* CURL * */
    char ua[64]; /* "lathe-cli/<version>" */
    int verbose; /* LATHE_DEBUG=1: log each request to stderr */
} lc_client;

typedef struct lc_resp {
    long status;        /* 0 when no response arrived */
    strbuf body;        /* the body (for downloads and streams: only when the status is not 2xx) */
    json_t *json;       /* body parsed when it is JSON, else NULL (owned) */
    char ctype[128];    /* Content-Type */
    char location[512]; /* Location header, "" if none */
} lc_resp;

/* Resolves the connection settings (lc_conf_resolve) and prepares curl. -1 with err on a bad setting. */
int lc_client_init(lc_client *c, const lc_args *a, lt_err *err);
void lc_client_free(lc_client *c);

/* One JSON call. `path` starts with "/" and is appended to the server URL (it may hold a "?query"); body is
 * borrowed (NULL = no body). Returns 0 when a response arrived (whatever its status: look at r->status), -1
 * with err (code 503) when the server could not be reached. extra_header ("Name: value") may be NULL. */
int lc_call(lc_client *c, const char *method, const char *path, json_t *body, const char *extra_header,
            lc_resp *r, lt_err *err);
/* POST of raw bytes with the given content type (archive uploads); same return rules. */
int lc_upload(lc_client *c, const char *path, const void *data, size_t n, const char *ctype, lc_resp *r,
              lt_err *err);
/* GET whose 2xx body goes to `out`; any other body is kept in r. Same return rules. */
int lc_download(lc_client *c, const char *path, FILE *out, lc_resp *r, lt_err *err);
/* GET of a text/event-stream fed to p until the server ends it or the callback stops. Same return rules. */
int lc_stream(lc_client *c, const char *path, lc_sse *p, lc_resp *r, lt_err *err);
void lc_resp_free(lc_resp *r);

/* URL-escapes one path segment or query value into sb. */
void lc_esc(strbuf *sb, const char *s);
/* "/api/v1/org/<org>/ws/<ws>" prefix of workspace routes, escaped, into sb. */
void lc_ws_path(strbuf *sb, const lc_client *c);

/* Exit code for an HTTP status: 2xx 0; 401/403 3 (auth); 404 4; anything else 1. */
int lc_exit_for(long status);
/* Prints a non-2xx response readably to f: "lathe: <what>: <status> <type>: <detail>" then one
 * "  <loc joined by '.'>: <msg>" line per errors[] item. Returns lc_exit_for(status). */
int lc_print_error(FILE *f, const char *what, const lc_resp *r);
/* Prints a transport failure ("cannot reach ...") and returns EXIT_CONN. */
int lc_print_conn_error(FILE *f, const lc_client *c, const lt_err *err);

/* Unpacks a tar or tar.gz held in memory into dir (created), refusing absolute paths, "..", links that leave
 * dir and device files (util/archive.h reads it). Returns the number of files written, or -1 with err. */
long lc_untar(const void *data, size_t n, const char *dir, lt_err *err);

/* ------------------------------------------------------------------------------------------------------------
 * Verb groups (`lathe train VERB`, `lathe dataset VERB`, ...)
 * ----------------------------------------------------------------------------------------------------------
 */

typedef struct lc_verb {
    const char *name;
    /* Runs the verb with a ready client (NULL when offline) and the parsed args; group is argv[0] of the
     * group ("train", "dataset", ...). Returns the exit code. */
    int (*fn)(lc_client *c, const lc_args *a, const char *group);
    const lc_opt *opts; /* NULL-terminated */
    const char *usage;  /* after "lathe GROUP ": "get JOB_ID" */
    const char *desc;
    int min_pos, max_pos; /* positional argument count bounds */
} lc_verb;

/* A verb group: the verbs and what they share. */
typedef struct lc_group {
    const char *desc; /* a paragraph for the group's help */
    const lc_verb *verbs;
    size_t n;
    const lc_opt *shared;     /* options every verb takes (NULL: none), listed in each verb's help */
    const char *shared_title; /* their heading there: "store (flag > environment > default)" */
    int flags;                /* enum lc_parse_flags; LC_CONN: a server client is built for each verb */
} lc_group;

/* argv[0] is the group; the verb is its first argument that is not an option. Options the whole group takes
 * (the connection options with LC_CONN, g->shared, --json, --help) may come before the verb as well as after
 * it; any other option before the verb is a usage error saying where it goes. Prints the group's help for no
 * verb / --help / help (exit 0 for an explicit help, 2 otherwise), the verb's help for VERB --help or help
 * VERB, usage errors (naming the option, the verb, and the verb that takes an option this one does not) with
 * exit 2; otherwise runs the verb, with a client built from the flags when g->flags has LC_CONN and with
 * c = NULL when it does not. */
int lc_dispatch_group(const lc_group *g, int argc, char **argv);
/* lc_dispatch_group for a client group: the connection options shared, LC_CONN. */
int lc_dispatch(const char *group_desc, const lc_verb *verbs, size_t n, int argc, char **argv);

/* Prints JSON indented by 2 with a final newline. */
void lc_print_json(FILE *f, const json_t *j);
/* Splits "NAME@VERSION" (name may carry "org/") at the last '@'. Both parts must be non-empty. *name and
 * *version are malloc'd. -1 with err (code 2) naming `what` otherwise. */
int lc_parse_ref(const char *s, const char *what, char **name, char **version, lt_err *err);
/* {"name":..., "version":...} from "NAME@VERSION", or NULL with err. */
json_t *lc_ref_json(const char *s, const char *what, lt_err *err);

#endif
