/* db.c: the portable half of the store's SQL runner (see db.h): per-thread connections, statements,
 * transactions and named migrations, on top of a driver vtable (db_driver.h).
 *
 * Connections. The server runs many threads; a SQLite connection must not be used by two at once, and a
 * PostgreSQL connection holds one session. So the handle keeps one connection per thread, created the first
 * time a thread touches the handle and found again through a pthread key. The connections also sit in a list
 * under a mutex, so that db_close can close those of threads that are still alive; the key's destructor
 * closes a thread's connection when the thread exits. A statement records the connection it was prepared
 * on, and asserts that it is stepped on the same thread.
 *
 * Transactions are a per-connection flag: db_begin_immediate refuses to nest (a programming error that
 * would otherwise silently commit the outer transaction early), db_commit rolls back when the commit fails.
 *
 * Writers queue in process. Only one write transaction runs at a time in SQLite. Left to SQLite, threads of
 * one process that want to write at once spin in its busy handler, which sleeps in growing steps (up to
 * 100 ms) and retries: throughput drops and the slowest waiter's latency explodes. So db_begin_immediate
 * first takes the handle's writer token (a flag under a mutex and condition variable, handed on in arrival
 * order as far as the condition variable goes) and db_commit/db_rollback give it back: writers of one
 * process wait on a condition variable and start the moment the previous one ends. The driver's busy
 * timeout still governs waits on writers of other processes. A writer that waits longer than
 * DB_WRITER_WAIT_MS for the token fails with 503, as it would have after SQLite's busy timeout. The token is
 * not owned by a thread, so db_close or a thread's exit can give back a token whose transaction they end.
 *
 * Migrations. schema_migrations(area, version, name, applied_at) records what ran. Areas run in the fixed
 * order core, artifacts, jobs; each script runs inside its own write transaction that first re-checks the
 * table, so two processes starting together apply each script once. */
#include "store/db.h"

#include <assert.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "store/db_driver.h"
#include "store/identity.h"
#include "util/util.h"

typedef struct db_conn {
    struct db *d;
    void *impl;
    pthread_t owner;
    int in_tx;
    int dv_known; /* data_version below has been read on this connection */
    int64_t dv;   /* last PRAGMA data_version seen (db_changed_elsewhere) */
    struct db_conn *next, *prev;
} db_conn;

struct db {
    const db_driver_vt *drv;
    char *target; /* the URL without its scheme, as the driver wants it */
    pthread_key_t key;
    pthread_mutex_t mu; /* guards conns */
    db_conn *conns;
    int opened; /* the first connection has been made (it alone may create the database) */
    /* The writer token (see the top comment): wbusy is 1 while a write transaction of this handle is open. */
    pthread_mutex_t wmu;
    pthread_cond_t wcv;
    int wbusy;
};

#define DB_WRITER_WAIT_MS 10000

struct db_stmt {
    db_conn *conn;
    void *impl;
};

static void conn_unlink_locked(db *d, db_conn *c) {
    if (c->prev)
        c->prev->next = c->next;
    else
        d->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    c->next = c->prev = NULL;
}

/* Takes the writer token, waiting up to DB_WRITER_WAIT_MS. 0, or -1 with err 503. */
static int writer_acquire(db *d, lt_err *err) {
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += DB_WRITER_WAIT_MS / 1000;
    int rc = 0;
    pthread_mutex_lock(&d->wmu);
    while (d->wbusy && rc == 0)
        rc = pthread_cond_timedwait(&d->wcv, &d->wmu, &deadline);
    if (!d->wbusy) {
        d->wbusy = 1;
        rc = 0;
    }
    pthread_mutex_unlock(&d->wmu);
    if (rc != 0)
        return lt_err_set(
            err, 503,
            "store busy: another write transaction of this server held the write lock for %d s; "
            "retry later",
            DB_WRITER_WAIT_MS / 1000);
    return 0;
}

static void writer_release(db *d) {
    pthread_mutex_lock(&d->wmu);
    assert(d->wbusy);
    d->wbusy = 0;
    pthread_cond_signal(&d->wcv);
    pthread_mutex_unlock(&d->wmu);
}

/* Ends the open transaction of c (ROLLBACK) and gives the writer token back. */
static void tx_abort(db_conn *c) {
    if (!c->in_tx) return;
    c->d->drv->exec(c->impl, "ROLLBACK", NULL);
    c->in_tx = 0;
    writer_release(c->d);
}

/* pthread key destructor: the thread is exiting, close its connection. */
static void conn_thread_exit(void *p) {
    db_conn *c = p;
    db *d = c->d;
    pthread_mutex_lock(&d->mu);
    conn_unlink_locked(d, c);
    pthread_mutex_unlock(&d->mu);
    tx_abort(c);
    d->drv->disconnect(c->impl);
    free(c);
}

/* The calling thread's connection, opened on first use. NULL with err when the store cannot be opened. */
static db_conn *conn_get(db *d, lt_err *err) {
    db_conn *c = pthread_getspecific(d->key);
    if (c) return c;
    void *impl = d->drv->connect(d->target, d->conns == NULL && !d->opened, err);
    if (!impl) return NULL;
    c = calloc(1, sizeof *c);
    if (!c) {
        d->drv->disconnect(impl);
        lt_err_set(err, 500, "out of memory opening a store connection");
        return NULL;
    }
    c->d = d;
    c->impl = impl;
    c->owner = pthread_self();
    pthread_mutex_lock(&d->mu);
    c->next = d->conns;
    if (d->conns) d->conns->prev = c;
    d->conns = c;
    pthread_mutex_unlock(&d->mu);
    if (pthread_setspecific(d->key, c) != 0) {
        pthread_mutex_lock(&d->mu);
        conn_unlink_locked(d, c);
        pthread_mutex_unlock(&d->mu);
        d->drv->disconnect(impl);
        free(c);
        lt_err_set(err, 500, "cannot remember the store connection of this thread");
        return NULL;
    }
    return c;
}

db *db_open(const char *url, lt_err *err) {
    static atomic_int mem_seq;
    if (!url || !*url) {
        lt_err_set(err, 400, "no store URL given: use --db sqlite:PATH (or postgres://...)");
        return NULL;
    }
    const db_driver_vt *drv = NULL;
    char *target = NULL;
    if (!strncmp(url, "sqlite:", 7)) {
        drv = &db_driver_sqlite;
        const char *path = url + 7;
        if (!strncmp(path, "//", 2)) path += 2; /* accept sqlite://PATH too */
        if (!strcmp(path, ":memory:")) {
            char buf[32];
            snprintf(buf, sizeof buf, "mem:%d-%d", (int)getpid(), atomic_fetch_add(&mem_seq, 1));
            target = lt_strdup(buf);
        } else {
            target = lt_strdup(path);
        }
    } else if (!strncmp(url, "postgres://", 11) || !strncmp(url, "postgresql://", 13)) {
        drv = &db_driver_postgres;
        target = lt_strdup(url); /* libpq parses the URL itself */
    } else {
        lt_err_set(err, 400, "unknown store URL '%.200s': use sqlite:PATH or postgres://USER@HOST:PORT/DB",
                   url);
        return NULL;
    }
    db *d = calloc(1, sizeof *d);
    if (!d) {
        free(target);
        lt_err_set(err, 500, "out of memory opening the store");
        return NULL;
    }
    d->drv = drv;
    d->target = target;
    pthread_mutex_init(&d->mu, NULL);
    pthread_mutex_init(&d->wmu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&d->wcv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_key_create(&d->key, conn_thread_exit) != 0) {
        pthread_cond_destroy(&d->wcv);
        pthread_mutex_destroy(&d->wmu);
        pthread_mutex_destroy(&d->mu);
        free(target);
        free(d);
        lt_err_set(err, 500, "cannot create a thread key for the store");
        return NULL;
    }
    /* Open the calling thread's connection now, so that a bad path fails here with a clear message. */
    if (!conn_get(d, err)) {
        db_close(d);
        return NULL;
    }
    d->opened = 1;
    return d;
}

void db_close(db *d) {
    if (!d) return;
    /* Delete the key first: from now on no destructor races with us. */
    pthread_key_delete(d->key);
    pthread_mutex_lock(&d->mu);
    db_conn *c = d->conns;
    d->conns = NULL;
    pthread_mutex_unlock(&d->mu);
    while (c) {
        db_conn *next = c->next;
        tx_abort(c);
        d->drv->disconnect(c->impl);
        free(c);
        c = next;
    }
    pthread_cond_destroy(&d->wcv);
    pthread_mutex_destroy(&d->wmu);
    pthread_mutex_destroy(&d->mu);
    free(d->target);
    free(d);
}

char *db_url_redacted(const char *url, char *buf, size_t cap) {
    assert(cap > 0);
    snprintf(buf, cap, "%s", url ? url : "");
    char *scheme = strstr(buf, "://");
    if (scheme && strncmp(buf, "sqlite", 6) != 0) {
        char *auth = scheme + 3, *end = auth + strcspn(auth, "/?#"), *at = NULL;
        for (char *p = auth; p < end; p++)
            if (*p == '@') at = p;
        char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
        if (colon) {
            char rest[1024];
            snprintf(rest, sizeof rest, "%s", at);
            snprintf(colon + 1, cap - (size_t)(colon + 1 - buf), "***%s", rest);
        }
    }
    for (char *p = buf; (p = strstr(p, "password=")) != NULL;) {
        p += 9;
        size_t n = strcspn(p, "&# ");
        char rest[1024];
        snprintf(rest, sizeof rest, "%s", p + n);
        snprintf(p, cap - (size_t)(p - buf), "***%s", rest);
        p += 3;
    }
    return buf;
}

const char *db_driver(const db *d) {
    return d->drv->name;
}

int db_ping(db *d, lt_err *err) {
    db_stmt *s = db_prepare(d, "SELECT 1", err);
    if (!s) return -1;
    int rc = db_step(s, err);
    int ok = rc == DB_ROW && db_column_int64(s, 0) == 1;
    db_finalize(s);
    if (!ok && rc != DB_ERROR) lt_err_set(err, 503, "store did not answer SELECT 1");
    if (ok && d->drv->check && d->drv->check(d->target, err) != 0) return -1;
    return ok ? 0 : -1;
}

/* Declared in identity.h (a hook for the store's in-process caches). SQLite's `PRAGMA data_version` changes
 * on a connection whenever any other connection, in this process or another, committed since that connection
 * last read it; the first call on a connection, an error or another driver answer "changed". */
int db_changed_elsewhere(db *d) {
    lt_err err = {0};
    db_conn *c = conn_get(d, &err);
    if (!c || d->drv != &db_driver_sqlite) return 1;
    db_stmt *s = db_prepare(d, "PRAGMA data_version", &err);
    if (!s) return 1;
    int rc = db_step(s, &err);
    int64_t v = rc == DB_ROW ? db_column_int64(s, 0) : -1;
    db_finalize(s);
    if (rc != DB_ROW) {
        c->dv_known = 0;
        return 1;
    }
    int changed = !c->dv_known || c->dv != v;
    c->dv = v;
    c->dv_known = 1;
    return changed;
}

/* ---- statements ---- */

db_stmt *db_prepare(db *d, const char *sql, lt_err *err) {
    db_conn *c = conn_get(d, err);
    if (!c) return NULL;
    void *impl = d->drv->prepare(c->impl, sql, err);
    if (!impl) return NULL;
    db_stmt *s = calloc(1, sizeof *s);
    if (!s) {
        d->drv->finalize(impl);
        lt_err_set(err, 500, "out of memory preparing a statement");
        return NULL;
    }
    s->conn = c;
    s->impl = impl;
    return s;
}

#define DRV(s) ((s)->conn->d->drv)

int db_bind_text(db_stmt *s, int idx, const char *v) {
    int rc = DRV(s)->bind_text(s->impl, idx, v);
    assert(rc == 0);
    return rc;
}
int db_bind_int64(db_stmt *s, int idx, int64_t v) {
    int rc = DRV(s)->bind_int64(s->impl, idx, v);
    assert(rc == 0);
    return rc;
}
int db_bind_double(db_stmt *s, int idx, double v) {
    int rc = DRV(s)->bind_double(s->impl, idx, v);
    assert(rc == 0);
    return rc;
}
int db_bind_null(db_stmt *s, int idx) {
    int rc = DRV(s)->bind_null(s->impl, idx);
    assert(rc == 0);
    return rc;
}
int db_bind_blob(db_stmt *s, int idx, const void *data, size_t n) {
    int rc = DRV(s)->bind_blob(s->impl, idx, data, n);
    assert(rc == 0);
    return rc;
}

int db_step(db_stmt *s, lt_err *err) {
    assert(pthread_equal(s->conn->owner, pthread_self()) && "db_stmt used on another thread");
    return DRV(s)->step(s->impl, err);
}

int db_column_count(db_stmt *s) {
    return DRV(s)->column_count(s->impl);
}
int db_column_is_null(db_stmt *s, int col) {
    return DRV(s)->column_is_null(s->impl, col);
}
const char *db_column_text(db_stmt *s, int col) {
    if (DRV(s)->column_is_null(s->impl, col)) return NULL;
    return DRV(s)->column_text(s->impl, col);
}
char *db_column_text_dup(db_stmt *s, int col) {
    return lt_strdup(db_column_text(s, col));
}
char *db_column_copy(db_stmt *s, int col, char *buf, size_t cap) {
    assert(cap > 0);
    const char *t = db_column_text(s, col);
    snprintf(buf, cap, "%s", t ? t : "");
    return buf;
}
int64_t db_column_int64(db_stmt *s, int col) {
    return DRV(s)->column_int64(s->impl, col);
}
double db_column_double(db_stmt *s, int col) {
    return DRV(s)->column_double(s->impl, col);
}
const void *db_column_blob(db_stmt *s, int col, size_t *n) {
    if (DRV(s)->column_is_null(s->impl, col)) {
        if (n) *n = 0;
        return NULL;
    }
    return DRV(s)->column_blob(s->impl, col, n);
}
void db_reset(db_stmt *s) {
    DRV(s)->reset(s->impl);
}
int64_t db_changes(db_stmt *s) {
    return DRV(s)->changes(s->impl);
}
void db_finalize(db_stmt *s) {
    if (!s) return;
    DRV(s)->finalize(s->impl);
    free(s);
}

/* ---- convenience ---- */

int db_exec(db *d, const char *sql, lt_err *err) {
    db_conn *c = conn_get(d, err);
    if (!c) return -1;
    return d->drv->exec(c->impl, sql, err);
}

static db_stmt *prepare_bind(db *d, lt_err *err, const char *sql, const char *types, va_list ap) {
    db_stmt *s = db_prepare(d, sql, err);
    if (!s) return NULL;
    int idx = 1;
    for (const char *t = types ? types : ""; *t; t++, idx++) {
        int rc;
        switch (*t) {
        case 't':
            rc = db_bind_text(s, idx, va_arg(ap, const char *));
            break;
        case 'i':
            rc = db_bind_int64(s, idx, va_arg(ap, int64_t));
            break;
        case 'd':
            rc = db_bind_double(s, idx, va_arg(ap, double));
            break;
        case 'n':
            rc = db_bind_null(s, idx);
            break;
        default:
            rc = -1;
            break;
        }
        if (rc != 0) {
            lt_err_set(err, 500, "cannot bind parameter %d ('%c') of: %.200s", idx, *t, sql);
            db_finalize(s);
            return NULL;
        }
    }
    return s;
}

int64_t db_run(db *d, lt_err *err, const char *sql, const char *types, ...) {
    va_list ap;
    va_start(ap, types);
    db_stmt *s = prepare_bind(d, err, sql, types, ap);
    va_end(ap);
    if (!s) return -1;
    int rc;
    while ((rc = db_step(s, err)) == DB_ROW) {
    }
    int64_t n = rc == DB_DONE ? db_changes(s) : -1;
    db_finalize(s);
    return n;
}

db_stmt *db_query(db *d, lt_err *err, const char *sql, const char *types, ...) {
    va_list ap;
    va_start(ap, types);
    db_stmt *s = prepare_bind(d, err, sql, types, ap);
    va_end(ap);
    return s;
}

/* ---- transactions ---- */

int db_begin_immediate(db *d, lt_err *err) {
    db_conn *c = conn_get(d, err);
    if (!c) return -1;
    if (c->in_tx) return lt_err_set(err, 500, "store transaction already open on this thread (no nesting)");
    if (writer_acquire(d, err) != 0) return -1;
    if (d->drv->begin_immediate(c->impl, err) != 0) {
        writer_release(d);
        return -1;
    }
    c->in_tx = 1;
    return 0;
}

int db_commit(db *d, lt_err *err) {
    db_conn *c = conn_get(d, err);
    if (!c) return -1;
    if (!c->in_tx) return lt_err_set(err, 500, "store commit without an open transaction");
    if (d->drv->exec(c->impl, "COMMIT", err) != 0) {
        tx_abort(c);
        return -1;
    }
    c->in_tx = 0;
    writer_release(d);
    return 0;
}

void db_rollback(db *d) {
    db_conn *c = pthread_getspecific(d->key);
    if (c) tx_abort(c);
}

int db_in_transaction(db *d) {
    db_conn *c = pthread_getspecific(d->key);
    return c && c->in_tx;
}

/* ---- migrations ---- */

static const char *MIGRATIONS_TABLE = "CREATE TABLE IF NOT EXISTS schema_migrations ("
                                      " area TEXT NOT NULL,"
                                      " version INTEGER NOT NULL,"
                                      " name TEXT NOT NULL,"
                                      " applied_at BIGINT NOT NULL,"
                                      " PRIMARY KEY (area, version))";

int db_schema_version(db *d, const char *area, lt_err *err) {
    if (db_exec(d, MIGRATIONS_TABLE, err) != 0) return -1;
    db_stmt *s = db_query(d, err, "SELECT MAX(version) FROM schema_migrations WHERE area = ?", "t", area);
    if (!s) return -1;
    int rc = db_step(s, err);
    int v = rc == DB_ROW ? (int)db_column_int64(s, 0) : -1;
    db_finalize(s);
    return v;
}

static int migrate_area_locked(db *d, const char *area, const db_migration *scripts, lt_err *err);

/* Runs the area's scripts under the driver's migration lock (PostgreSQL: a session advisory lock), so that
 * servers starting together on one database do not race on CREATE TABLE. */
int db_migrate_area(db *d, const char *area, const db_migration *scripts, lt_err *err) {
    if (!scripts) return 0;
    db_conn *c = conn_get(d, err);
    if (!c) return -1;
    if (d->drv->migrate_lock && d->drv->migrate_lock(c->impl, 1, err) != 0) {
        lt_err_prefix(err, "migration %s: ", area);
        return -1;
    }
    int rc = migrate_area_locked(d, area, scripts, err);
    if (d->drv->migrate_lock) d->drv->migrate_lock(c->impl, 0, NULL);
    return rc;
}

static int migrate_area_locked(db *d, const char *area, const db_migration *scripts, lt_err *err) {
    if (db_exec(d, MIGRATIONS_TABLE, err) != 0) return -1;
    for (int i = 0; scripts[i].sql; i++) {
        int version = i + 1;
        if (db_begin_immediate(d, err) != 0) {
            lt_err_prefix(err, "migration %s/%d: ", area, version);
            return -1;
        }
        db_stmt *s = db_query(d, err, "SELECT 1 FROM schema_migrations WHERE area = ? AND version = ?", "ti",
                              area, (int64_t)version);
        int rc = s ? db_step(s, err) : DB_ERROR;
        db_finalize(s);
        if (rc == DB_ROW) {
            db_rollback(d);
            continue;
        }
        if (rc == DB_ERROR || db_exec(d, scripts[i].sql, err) != 0 ||
            db_run(d, err,
                   "INSERT INTO schema_migrations (area, version, name, applied_at) VALUES (?, ?, ?, ?)",
                   "titi", area, (int64_t)version, scripts[i].name ? scripts[i].name : "", lt_now_ms()) < 0 ||
            db_commit(d, err) != 0) {
            db_rollback(d);
            lt_err_prefix(err, "migration %s/%d (%s): ", area, version,
                          scripts[i].name ? scripts[i].name : "");
            return -1;
        }
    }
    return 0;
}

int db_migrate(db *d, lt_err *err) {
    const struct {
        const char *area;
        const db_migration *scripts;
    } areas[] = {
        {"core", db_migrations_core},
        {"artifacts", db_migrations_artifacts},
        {"jobs", db_migrations_jobs},
    };
    for (size_t i = 0; i < sizeof areas / sizeof areas[0]; i++)
        if (db_migrate_area(d, areas[i].area, areas[i].scripts, err) != 0) return -1;
    return 0;
}
