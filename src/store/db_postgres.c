/* db_postgres.c: the PostgreSQL store driver (libpq), behind the same vtable as SQLite (db_driver.h).
 *
 * Target: the whole URL (postgres://user:pass@host:port/db?opt=... or postgresql://...), handed to libpq,
 * which also reads host=/port= query parameters (a Unix socket directory: ?host=/run/pg). connect_timeout
 * defaults to 5 s and application_name to "lathe"; the URL overrides both.
 *
 * SQL text. The repo's SQL is written for both stores (db.h's rules). Two rewrites happen here, in one
 * place: `?` placeholders become $1, $2, ... (outside string literals, quoted identifiers and comments), and
 * in parameterless DDL run through exec (the migrations) the column type INTEGER becomes BIGINT, because
 * SQLite's INTEGER is 64 bits and the migrations keep ms timestamps and byte sizes in INTEGER columns.
 *
 * Statements. A db_stmt is the translated text plus its bindings; the first db_step runs it (as a server-side
 * prepared statement from the connection's cache, see below, else PQexecParams: text parameters of unknown
 * type, so the server infers them from the query, except int64 as int8, doubles as float8 and blobs as binary
 * bytea) and later steps walk the rows of the result, which libpq holds whole.
 * Results come as text: integers are parsed from it, a boolean ('t'/'f') reads as 1/0, bytea is unescaped.
 *
 * Transactions. begin_immediate is BEGIN plus a transaction-scoped advisory lock that every write
 * transaction of every process takes (WRITE_LOCK_KEY): write transactions run one at a time across all the
 * servers and workers on the database, the way SQLite runs them, so the store's read-then-write code
 * (sequence numbers as MAX + 1, checks then inserts) stays correct on PostgreSQL. lock_timeout (10 s) bounds
 * the wait; running out of it is 503. Queue claims still use FOR UPDATE SKIP LOCKED (jobs.c).
 * Migrations run under a session advisory lock (MIGRATE_LOCK_KEY) so that servers starting together apply
 * each script once.
 *
 * Lost connections. Before each statement a bad connection is reset when no transaction is open; a statement
 * that fails because the connection went away (no result, a bad status, SQLSTATE class 08, 57P01..57P03) is
 * retried once on a reset connection when it ran outside a transaction. Inside a transaction nothing is
 * retried: the transaction is lost, every statement fails with 503 until db.c rolls back (which also resets
 * the connection). While the server is down every call fails with 503, never a crash. (A statement whose
 * connection died after the server ran it may run twice: the store's writes outside transactions set values
 * (UPDATE ... SET x = ?) or insert keyed rows, where a second run changes nothing or is a 409.)
 *
 * Errors map onto the lt_err codes of the SQLite driver: unique (23505) and foreign-key (23503) violations
 * are 409; a lost or refused connection, too many connections (class 53), a lock timeout (55P03), a
 * cancelled statement (57014), a serialization failure or deadlock (40001, 40P01) are 503; anything else 500
 * with the server's message. libpq notices (e.g. "there is no transaction in progress") are dropped: library
 * code does not print. */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "store/db.h"
#include "store/db_driver.h"

#define PG_LOCK_TIMEOUT "10s"
#define WRITE_LOCK_KEY 0x6c617468   /* "lath" */
#define MIGRATE_LOCK_KEY 0x6c616d67 /* "lamg" */

#define OID_INT8 20
#define OID_FLOAT8 701
#define OID_BYTEA 17

/* A server-side prepared statement of this connection, named "lt<id>", keyed by its translated SQL text. */
typedef struct pg_prep {
    char *sql; /* NULL = free slot */
    uint64_t hash;
    uint64_t last_used;
    int id;
} pg_prep;

#define PG_CACHE_SLOTS 128

typedef struct pg_conn {
    PGconn *pc;
    int in_tx; /* a transaction was begun and not yet ended by COMMIT/ROLLBACK through exec */
    pg_prep cache[PG_CACHE_SLOTS];
    uint64_t clock;
    int next_id;
} pg_conn;

typedef struct pg_param {
    char *val; /* NULL = SQL NULL */
    int len;
    int fmt; /* 0 text, 1 binary */
    unsigned type;
} pg_param;

typedef struct pg_stmt {
    pg_conn *c;
    char *sql; /* translated text */
    int nparams;
    pg_param *params;
    PGresult *res;
    int row, nrows;
    int64_t changes;
    unsigned char *blob; /* last unescaped bytea (column_blob) */
} pg_stmt;

static void pg_quiet(void *arg, const char *msg) {
    (void)arg;
    (void)msg;
}

/* ---- prepared statement cache ----
 *
 * Parsing and planning each statement again costs about as much as running the simple ones, and the store
 * runs the same few dozen texts over and over. So a connection keeps up to PG_CACHE_SLOTS server-side
 * prepared statements; the least recently used one is deallocated to make room (outside a failed
 * transaction, where the server refuses everything but ROLLBACK: then the statement runs unprepared).
 * Parameter types are those of the first use (every call site binds the same types each time). A reset
 * connection has lost its prepared statements: the cache is emptied with it. */

static uint64_t pg_hash(const char *t) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *t; t++)
        h = (h ^ (unsigned char)*t) * 1099511628211ull;
    return h;
}

static void cache_clear(pg_conn *c) {
    for (int i = 0; i < PG_CACHE_SLOTS; i++) {
        free(c->cache[i].sql);
        c->cache[i].sql = NULL;
    }
}

static void conn_reset(pg_conn *c) {
    cache_clear(c);
    PQreset(c->pc);
}

/* Forgets (and deallocates on the server) the cached statement for sql, if any. */
static void cache_drop(pg_conn *c, const char *sql) {
    uint64_t h = pg_hash(sql);
    for (int i = 0; i < PG_CACHE_SLOTS; i++) {
        pg_prep *e = &c->cache[i];
        if (e->sql && e->hash == h && !strcmp(e->sql, sql)) {
            char cmd[48];
            snprintf(cmd, sizeof cmd, "DEALLOCATE lt%d", e->id);
            PQclear(PQexec(c->pc, cmd));
            free(e->sql);
            e->sql = NULL;
        }
    }
}

/* The name of the prepared statement for sql (preparing it now), or "" to run it unprepared. NULL with err
 * (and *res, the failed result, for the caller's error handling) when preparing failed. */
static const char *cache_get(pg_conn *c, const char *sql, int np, const unsigned *types, char name[16],
                             PGresult **res) {
    uint64_t h = pg_hash(sql);
    int free_slot = -1, lru = -1;
    *res = NULL;
    for (int i = 0; i < PG_CACHE_SLOTS; i++) {
        pg_prep *e = &c->cache[i];
        if (!e->sql) {
            if (free_slot < 0) free_slot = i;
            continue;
        }
        if (e->hash == h && !strcmp(e->sql, sql)) {
            e->last_used = ++c->clock;
            snprintf(name, 16, "lt%d", e->id);
            return name;
        }
        if (lru < 0 || e->last_used < c->cache[lru].last_used) lru = i;
    }
    if (PQtransactionStatus(c->pc) == PQTRANS_INERROR) return "";
    int slot = free_slot;
    if (slot < 0) {
        slot = lru;
        char cmd[48];
        snprintf(cmd, sizeof cmd, "DEALLOCATE lt%d", c->cache[slot].id);
        PGresult *r = PQexec(c->pc, cmd);
        int ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
        free(c->cache[slot].sql);
        c->cache[slot].sql = NULL;
        if (!ok) return "";
    }
    char *copy = strdup(sql);
    if (!copy) return "";
    int id = ++c->next_id;
    snprintf(name, 16, "lt%d", id);
    Oid otypes[np ? np : 1];
    for (int i = 0; i < np; i++)
        otypes[i] = types[i];
    PGresult *r = PQprepare(c->pc, name, sql, np, otypes);
    if (!r || PQresultStatus(r) != PGRES_COMMAND_OK) {
        free(copy);
        *res = r;
        return NULL;
    }
    PQclear(r);
    c->cache[slot] = (pg_prep){.sql = copy, .hash = h, .last_used = ++c->clock, .id = id};
    return name;
}

/* ---- errors ---- */

static int sqlstate_code(const char *st) {
    if (!st || strlen(st) != 5) return 500;
    if (!strcmp(st, "23505") || !strcmp(st, "23503")) return 409;
    if (!strncmp(st, "08", 2) || !strncmp(st, "53", 2) || !strcmp(st, "57P01") || !strcmp(st, "57P02") ||
        !strcmp(st, "57P03") || !strcmp(st, "55P03") || !strcmp(st, "57014") || !strcmp(st, "40001") ||
        !strcmp(st, "40P01"))
        return 503;
    return 500;
}

/* The connection went away (as opposed to a statement error on a live connection). */
static int conn_lost(pg_conn *c, const PGresult *r) {
    if (!r || PQstatus(c->pc) != CONNECTION_OK) return 1;
    const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    return st &&
           (!strncmp(st, "08", 2) || !strcmp(st, "57P01") || !strcmp(st, "57P02") || !strcmp(st, "57P03"));
}

/* Fills err from a failed result (r may be NULL) and returns -1. */
static int pg_fail(pg_conn *c, const PGresult *r, lt_err *err, const char *what) {
    const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    int code = conn_lost(c, r) ? 503 : sqlstate_code(st);
    const char *msg = r ? PQresultErrorMessage(r) : "";
    if (!msg || !*msg) msg = PQerrorMessage(c->pc);
    char clean[700];
    snprintf(clean, sizeof clean, "%s", msg && *msg ? msg : "no answer from the server");
    size_t n = strlen(clean);
    while (n && (clean[n - 1] == '\n' || clean[n - 1] == ' '))
        clean[--n] = '\0';
    return lt_err_set(err, code, "store (postgres) %s: %s%s%s%s", what, clean, st ? " (SQLSTATE " : "",
                      st ? st : "", st ? ")" : "");
}

/* Makes sure the connection is usable before a statement: resets a broken one outside a transaction.
 * 0, or -1 with err 503. */
static int ensure_conn(pg_conn *c, lt_err *err) {
    if (PQstatus(c->pc) == CONNECTION_OK) return 0;
    if (c->in_tx)
        return lt_err_set(
            err, 503,
            "store (postgres): the connection was lost inside a transaction; it was rolled back, "
            "retry the request");
    conn_reset(c);
    if (PQstatus(c->pc) == CONNECTION_OK) return 0;
    char msg[600];
    snprintf(msg, sizeof msg, "%s", PQerrorMessage(c->pc));
    msg[strcspn(msg, "\n")] = '\0';
    return lt_err_set(err, 503, "store (postgres) unavailable: cannot reconnect to %s/%s: %s",
                      PQhost(c->pc) ? PQhost(c->pc) : "?", PQdb(c->pc) ? PQdb(c->pc) : "?", msg);
}

/* ---- SQL rewriting ---- */

static int is_word(char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_';
}

/* Copies sql, replacing `?` by $N (counting into *nparams) and, when ddl, the word INTEGER by BIGINT; string
 * literals, quoted identifiers and comments are copied as they are. NULL on out of memory. */
static char *pg_translate(const char *sql, int ddl, int *nparams) {
    size_t n = strlen(sql);
    char *out = malloc(n * 2 + 16);
    if (!out) return NULL;
    size_t o = 0;
    int np = 0;
    for (size_t i = 0; i < n;) {
        char ch = sql[i];
        if (ch == '\'' || ch == '"') {
            size_t j = i + 1;
            while (j < n && !(sql[j] == ch && !(j + 1 < n && sql[j + 1] == ch)))
                j += sql[j] == ch ? 2 : 1;
            j = j < n ? j + 1 : n;
            memcpy(out + o, sql + i, j - i);
            o += j - i;
            i = j;
        } else if (ch == '-' && i + 1 < n && sql[i + 1] == '-') {
            size_t j = i;
            while (j < n && sql[j] != '\n')
                j++;
            memcpy(out + o, sql + i, j - i);
            o += j - i;
            i = j;
        } else if (ch == '/' && i + 1 < n && sql[i + 1] == '*') {
            const char *e = strstr(sql + i + 2, "*/");
            size_t j = e ? (size_t)(e - sql) + 2 : n;
            memcpy(out + o, sql + i, j - i);
            o += j - i;
            i = j;
        } else if (ch == '?') {
            o += (size_t)sprintf(out + o, "$%d", ++np);
            i++;
        } else if (ddl && (i == 0 || !is_word(sql[i - 1])) && !strncasecmp(sql + i, "INTEGER", 7) &&
                   !is_word(sql[i + 7])) {
            memcpy(out + o, "BIGINT", 6);
            o += 6;
            i += 7;
        } else {
            out[o++] = ch;
            i++;
        }
    }
    out[o] = '\0';
    *nparams = np;
    return out;
}

/* ---- connections ---- */

static void *pg_connect(const char *target, int create, lt_err *err) {
    (void)create;
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(target, &perr);
    if (!opts) {
        lt_err_set(err, 400, "bad PostgreSQL URL: %s (e.g. postgres://user@host:5432/lathe)",
                   perr ? perr : "out of memory");
        PQfreemem(perr);
        return NULL;
    }
    PQconninfoFree(opts);
    const char *keys[] = {"connect_timeout", "application_name", "dbname", NULL};
    const char *vals[] = {"5", "lathe", target, NULL};
    PGconn *pc = PQconnectdbParams(keys, vals, 1);
    if (!pc) {
        lt_err_set(err, 500, "out of memory connecting to PostgreSQL");
        return NULL;
    }
    if (PQstatus(pc) != CONNECTION_OK) {
        char msg[700];
        snprintf(msg, sizeof msg, "%s", PQerrorMessage(pc));
        for (char *p = msg; *p; p++)
            if (*p == '\n') *p = ' ';
        lt_err_set(err, 503, "store (postgres) unavailable: cannot connect to %s/%s: %s",
                   PQhost(pc) ? PQhost(pc) : "?", PQdb(pc) ? PQdb(pc) : "?", msg);
        PQfinish(pc);
        return NULL;
    }
    PQsetNoticeProcessor(pc, pg_quiet, NULL);
    pg_conn *c = calloc(1, sizeof *c);
    if (!c) {
        PQfinish(pc);
        lt_err_set(err, 500, "out of memory connecting to PostgreSQL");
        return NULL;
    }
    c->pc = pc;
    return c;
}

static void pg_disconnect(void *conn) {
    pg_conn *c = conn;
    cache_clear(c);
    PQfinish(c->pc);
    free(c);
}

/* Runs parameterless SQL (PQexec: several statements allowed), retrying once on a reset connection when it
 * ran outside a transaction and the connection was lost. */
static int pg_exec_as(pg_conn *c, const char *sql, const char *what, lt_err *err) {
    for (int attempt = 0;; attempt++) {
        if (ensure_conn(c, err) != 0) return -1;
        int was_tx = c->in_tx;
        PGresult *r = PQexec(c->pc, sql);
        ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
        if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY) {
            PQclear(r);
            return 0;
        }
        int lost = conn_lost(c, r);
        if (lost && !was_tx && attempt == 0) {
            PQclear(r);
            conn_reset(c);
            continue;
        }
        pg_fail(c, r, err, what);
        PQclear(r);
        return -1;
    }
}

static int pg_exec(void *conn, const char *sql, lt_err *err) {
    pg_conn *c = conn;
    if (!strcmp(sql, "ROLLBACK")) {
        c->in_tx = 0;
        if (PQstatus(c->pc) != CONNECTION_OK) { /* the transaction died with the connection */
            conn_reset(c);
            return 0;
        }
        return pg_exec_as(c, sql, "rollback", err);
    }
    if (!strcmp(sql, "COMMIT")) {
        if (PQstatus(c->pc) != CONNECTION_OK) {
            c->in_tx = 0;
            return lt_err_set(err, 503,
                              "store (postgres): the connection was lost before COMMIT; the transaction was "
                              "rolled back, retry the request");
        }
        int rc = pg_exec_as(c, sql, "commit", err);
        c->in_tx = 0;
        return rc;
    }
    int np = 0;
    char *t = pg_translate(sql, 1, &np);
    if (!t) return lt_err_set(err, 500, "out of memory running SQL");
    int rc = pg_exec_as(c, t, "exec", err);
    if (rc != 0) lt_err_prefix(err, "%.200s: ", sql);
    free(t);
    return rc;
}

static int pg_begin_immediate(void *conn, lt_err *err) {
    pg_conn *c = conn;
    if (ensure_conn(c, err) != 0) return -1;
    char sql[160];
    snprintf(sql, sizeof sql, "BEGIN; SET LOCAL lock_timeout = '%s'; SELECT pg_advisory_xact_lock(%d)",
             PG_LOCK_TIMEOUT, WRITE_LOCK_KEY);
    if (pg_exec_as(c, sql, "begin", err) != 0) {
        if (PQstatus(c->pc) == CONNECTION_OK) {
            PGresult *r = PQexec(c->pc, "ROLLBACK");
            PQclear(r);
        }
        return -1;
    }
    c->in_tx = 1;
    return 0;
}

static int pg_migrate_lock(void *conn, int lock, lt_err *err) {
    char sql[96];
    snprintf(sql, sizeof sql, "SELECT pg_advisory_%s(%d)", lock ? "lock" : "unlock", MIGRATE_LOCK_KEY);
    return pg_exec_as(conn, sql, lock ? "migration lock" : "migration unlock", err);
}

/* ---- statements ---- */

static void *pg_prepare(void *conn, const char *sql, lt_err *err) {
    pg_stmt *s = calloc(1, sizeof *s);
    if (!s || !(s->sql = pg_translate(sql, 0, &s->nparams)) ||
        (s->nparams && !(s->params = calloc((size_t)s->nparams, sizeof *s->params)))) {
        if (s) free(s->sql);
        free(s);
        lt_err_set(err, 500, "out of memory preparing a statement");
        return NULL;
    }
    s->c = conn;
    return s;
}

static int pg_bind(pg_stmt *s, int idx, const void *v, size_t len, int fmt, unsigned type) {
    if (idx < 1 || idx > s->nparams) return -1;
    pg_param *p = &s->params[idx - 1];
    char *copy = NULL;
    if (v) {
        copy = malloc(len + 1);
        if (!copy) return -1;
        memcpy(copy, v, len);
        copy[len] = '\0';
    }
    free(p->val);
    p->val = copy;
    p->len = (int)len;
    p->fmt = fmt;
    p->type = type;
    return 0;
}

static int pg_bind_text(void *st, int idx, const char *v) {
    return pg_bind(st, idx, v, v ? strlen(v) : 0, 0, 0);
}
static int pg_bind_int64(void *st, int idx, int64_t v) {
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%lld", (long long)v);
    return pg_bind(st, idx, buf, (size_t)n, 0, OID_INT8);
}
static int pg_bind_double(void *st, int idx, double v) {
    char buf[40];
    int n = snprintf(buf, sizeof buf, "%.17g", v);
    return pg_bind(st, idx, buf, (size_t)n, 0, OID_FLOAT8);
}
static int pg_bind_null(void *st, int idx) {
    return pg_bind(st, idx, NULL, 0, 0, 0);
}
static int pg_bind_blob(void *st, int idx, const void *data, size_t n) {
    return pg_bind(st, idx, data ? data : "", n, 1, OID_BYTEA);
}

static void pg_clear_result(pg_stmt *s) {
    PQclear(s->res);
    s->res = NULL;
    PQfreemem(s->blob);
    s->blob = NULL;
    s->row = s->nrows = 0;
}

/* Runs the statement (first step), retrying once outside a transaction when the connection was lost. */
static int pg_run(pg_stmt *s, lt_err *err) {
    int np = s->nparams;
    const char *vals[np ? np : 1];
    int lens[np ? np : 1], fmts[np ? np : 1];
    unsigned types[np ? np : 1];
    Oid otypes[np ? np : 1];
    for (int i = 0; i < np; i++) {
        vals[i] = s->params[i].val;
        lens[i] = s->params[i].len;
        fmts[i] = s->params[i].fmt;
        otypes[i] = types[i] = s->params[i].type;
    }
    int unprepared = 0;
    for (int attempt = 0;; attempt++) {
        if (ensure_conn(s->c, err) != 0) return DB_ERROR;
        int was_tx = s->c->in_tx;
        char name[16];
        PGresult *r = NULL;
        const char *pn = unprepared ? "" : cache_get(s->c, s->sql, np, types, name, &r);
        if (pn && *pn)
            r = PQexecPrepared(s->c->pc, pn, np, vals, lens, fmts, 0);
        else if (pn)
            r = PQexecParams(s->c->pc, s->sql, np, otypes, vals, lens, fmts, 0);
        ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
        const char *code = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
        if (pn && *pn && code && !strcmp(code, "0A000") && !was_tx && !unprepared) {
            /* "cached plan must not change result type": the table changed under the prepared statement */
            PQclear(r);
            cache_drop(s->c, s->sql);
            unprepared = 1;
            attempt--;
            continue;
        }
        if (st == PGRES_TUPLES_OK) {
            s->res = r;
            s->nrows = PQntuples(r);
            s->row = -1;
            s->changes = 0;
            return DB_DONE; /* the caller advances to the first row */
        }
        if (st == PGRES_COMMAND_OK) {
            const char *t = PQcmdTuples(r);
            s->changes = t && *t ? strtoll(t, NULL, 10) : 0;
            s->res = r;
            s->nrows = 0;
            s->row = -1;
            return DB_DONE;
        }
        if (conn_lost(s->c, r) && !was_tx && attempt == 0) {
            PQclear(r);
            conn_reset(s->c);
            continue;
        }
        pg_fail(s->c, r, err, "step");
        lt_err_prefix(err, "%.200s: ", s->sql);
        PQclear(r);
        return DB_ERROR;
    }
}

static int pg_step(void *st, lt_err *err) {
    pg_stmt *s = st;
    if (!s->res && pg_run(s, err) == DB_ERROR) return DB_ERROR;
    PQfreemem(s->blob);
    s->blob = NULL;
    if (s->row + 1 < s->nrows) {
        s->row++;
        return DB_ROW;
    }
    s->row = s->nrows;
    return DB_DONE;
}

static int pg_column_count(void *st) {
    pg_stmt *s = st;
    return s->res ? PQnfields(s->res) : 0;
}
static int on_row(pg_stmt *s, int col) {
    return s->res && s->row >= 0 && s->row < s->nrows && col >= 0 && col < PQnfields(s->res);
}
static int pg_column_is_null(void *st, int col) {
    pg_stmt *s = st;
    return !on_row(s, col) || PQgetisnull(s->res, s->row, col);
}
static const char *pg_column_text(void *st, int col) {
    pg_stmt *s = st;
    return on_row(s, col) ? PQgetvalue(s->res, s->row, col) : NULL;
}
static int64_t pg_column_int64(void *st, int col) {
    const char *t = pg_column_is_null(st, col) ? NULL : pg_column_text(st, col);
    if (!t) return 0;
    if (!strcmp(t, "t")) return 1;
    if (!strcmp(t, "f")) return 0;
    return strtoll(t, NULL, 10);
}
static double pg_column_double(void *st, int col) {
    const char *t = pg_column_is_null(st, col) ? NULL : pg_column_text(st, col);
    return t ? strtod(t, NULL) : 0.0;
}
static const void *pg_column_blob(void *st, int col, size_t *n) {
    pg_stmt *s = st;
    if (n) *n = 0;
    if (pg_column_is_null(s, col)) return NULL;
    const char *t = PQgetvalue(s->res, s->row, col);
    if (PQftype(s->res, col) != OID_BYTEA) {
        if (n) *n = strlen(t);
        return t;
    }
    PQfreemem(s->blob);
    size_t len = 0;
    s->blob = PQunescapeBytea((const unsigned char *)t, &len);
    if (n) *n = s->blob ? len : 0;
    return s->blob;
}
static void pg_reset(void *st) {
    pg_clear_result(st);
}
static int64_t pg_changes(void *st) {
    return ((pg_stmt *)st)->changes;
}
static void pg_finalize(void *st) {
    pg_stmt *s = st;
    pg_clear_result(s);
    for (int i = 0; i < s->nparams; i++)
        free(s->params[i].val);
    free(s->params);
    free(s->sql);
    free(s);
}

const db_driver_vt db_driver_postgres = {
    .name = "postgres",
    .connect = pg_connect,
    .disconnect = pg_disconnect,
    .exec = pg_exec,
    .begin_immediate = pg_begin_immediate,
    .prepare = pg_prepare,
    .bind_text = pg_bind_text,
    .bind_int64 = pg_bind_int64,
    .bind_double = pg_bind_double,
    .bind_null = pg_bind_null,
    .bind_blob = pg_bind_blob,
    .step = pg_step,
    .column_count = pg_column_count,
    .column_is_null = pg_column_is_null,
    .column_text = pg_column_text,
    .column_int64 = pg_column_int64,
    .column_double = pg_column_double,
    .column_blob = pg_column_blob,
    .reset = pg_reset,
    .changes = pg_changes,
    .finalize = pg_finalize,
    .check = NULL,
    .migrate_lock = pg_migrate_lock,
};
