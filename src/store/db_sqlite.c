/* db_sqlite.c: the SQLite driver behind db.h (the embedded default).
 *
 * One sqlite3 connection per thread (db.c hands each thread its own), opened with SQLITE_OPEN_NOMUTEX since
 * a connection never crosses threads. Every connection turns on WAL (readers never block the writer and the
 * writer never blocks readers), foreign keys, synchronous=NORMAL (durable at checkpoints, safe against
 * corruption) and a busy timeout, so a writer that finds the lock taken sleeps and retries instead of failing
 * at once. Write transactions use BEGIN IMMEDIATE: the write lock is taken at the start, so a transaction
 * never has to be abandoned half way because another writer got there first (the SQLITE_BUSY_SNAPSHOT
 * trap of upgrading a read transaction in WAL mode).
 *
 * Statement cache. Preparing a statement (parsing and planning its SQL) was about a third of the CPU of a
 * simple API request, and the store runs the same few dozen SQL texts over and over. So every connection
 * keeps up to SQ_CACHE_SLOTS prepared statements keyed by their SQL text. sq_prepare hands out a cached one
 * when the same text is not already in use on this connection (a nested query with the same text gets a
 * fresh, uncached statement); sq_finalize returns a cached statement to the cache after sqlite3_reset (which
 * ends its read of the database, so it holds no lock) and sqlite3_clear_bindings (so the next user starts
 * from a fresh statement, as if newly prepared). When the cache is full the least recently used idle
 * statement is finalized to make room. Cached statements are finalized when the connection closes.
 * sqlite3_prepare_v2 statements re-prepare themselves after a schema change (migrations), so a cached
 * statement never goes stale. Callers of db.h see no difference.
 *
 * Tuning: cache_size is 8 MiB of page cache per connection (allocated only as used) and reads of a file
 * database go through a 256 MiB memory map shared with the OS page cache, so the per-thread connections do
 * not each keep a copy of hot pages. synchronous=NORMAL in WAL mode never corrupts the database and loses no
 * committed transaction when the process crashes (the WAL is in the OS's hands at commit); only a power loss
 * or kernel crash can roll back the last transactions before a checkpoint, which docs/spec.md's durability
 * (survive a server crash or restart) allows.
 *
 * "sqlite::memory:" becomes a named memdb database ("file:/lathe-mem-N?vfs=memdb") so that every thread's
 * connection sees the same in-memory data; it lives until the last connection closes.
 *
 * Errors map onto lt_err codes: a UNIQUE/PRIMARY KEY/FOREIGN KEY violation is 409 (the caller turns it into
 * "already exists"), SQLITE_BUSY after the timeout is 503, anything else 500 with SQLite's message. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/db.h"
#include "store/db_driver.h"

#define SQLITE_BUSY_MS 5000
#define SQ_CACHE_SLOTS 96

typedef struct sq_stmt {
    sqlite3_stmt *st;
    sqlite3 *conn;
    int64_t changes;
    /* Cached statements only (sql != NULL): the key, its hash, whether a caller holds it now and when it
     * was last handed out (for eviction). */
    char *sql;
    uint64_t hash;
    int in_use;
    uint64_t last_used;
} sq_stmt;

/* One connection: the sqlite3 handle and its statement cache. */
typedef struct sq_conn {
    sqlite3 *db;
    sq_stmt *cache[SQ_CACHE_SLOTS];
    uint64_t clock;
} sq_conn;

static uint64_t sq_hash(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void sq_stmt_free(sq_stmt *s) {
    sqlite3_finalize(s->st);
    free(s->sql);
    free(s);
}

static int sq_fail(sqlite3 *conn, int rc, lt_err *err, const char *what) {
    int code = 500;
    int prim = rc & 0xff;
    if (prim == SQLITE_CONSTRAINT) {
        int ext = rc;
        if (ext == SQLITE_CONSTRAINT_UNIQUE || ext == SQLITE_CONSTRAINT_PRIMARYKEY ||
            ext == SQLITE_CONSTRAINT_FOREIGNKEY)
            code = 409;
    } else if (prim == SQLITE_BUSY || prim == SQLITE_LOCKED) {
        code = 503;
    }
    return lt_err_set(err, code, "store (sqlite) %s: %s", what,
                      conn ? sqlite3_errmsg(conn) : sqlite3_errstr(rc));
}

/* File modes: the database holds key hashes and everything else of the store, so the file and its -wal and
 * -shm companions are 0600 (SQLite gives the companions the database file's mode). A new database file is
 * created here with 0600 before SQLite opens it; an existing one with wider bits is tightened by path, never
 * through a descriptor: closing any descriptor of the file would drop the POSIX locks that this process's
 * other connections hold on it. Failures (a file of another user, a read-only mount) are left for
 * sqlite3_open_v2 to report or to live with. */
static void sq_tighten_modes(const char *path, int create) {
    if (!strncmp(path, "file:", 5)) return; /* a URI: its owner chose */
    static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
        char p[4096];
        struct stat st;
        if (snprintf(p, sizeof p, "%s%s", path, suffixes[i]) >= (int)sizeof p) continue;
        if (lstat(p, &st) == 0) {
            if (S_ISREG(st.st_mode) && (st.st_mode & 077)) chmod(p, st.st_mode & 0700);
        } else if (i == 0 && errno == ENOENT && create) {
            int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
            if (fd >= 0) close(fd);
        }
    }
}

static void *sq_connect(const char *target, int create, lt_err *err) {
    char memname[96];
    const char *path = target;
    int flags =
        SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_URI | (create ? SQLITE_OPEN_CREATE : 0);
    if (!strcmp(target, ":memory:")) {
        lt_err_set(err, 400, "sqlite::memory: must be resolved by db_open"); /* db.c rewrites it */
        return NULL;
    }
    if (!strncmp(target, "mem:", 4)) {
        snprintf(memname, sizeof memname, "file:/lathe-mem-%s?vfs=memdb", target + 4);
        path = memname;
    } else if (!*target) {
        lt_err_set(err, 400,
                   "sqlite URL has an empty path: use sqlite:PATH, e.g. sqlite:./lathe-data/lathe.db");
        return NULL;
    }
    if (path == target) sq_tighten_modes(path, create);
    sqlite3 *conn = NULL;
    int rc = sqlite3_open_v2(path, &conn, flags, NULL);
    if (rc != SQLITE_OK) {
        lt_err_set(err, 500, "cannot open SQLite database '%s': %s", target,
                   conn ? sqlite3_errmsg(conn) : sqlite3_errstr(rc));
        sqlite3_close(conn);
        return NULL;
    }
    sqlite3_extended_result_codes(conn, 1);
    sqlite3_busy_timeout(conn, SQLITE_BUSY_MS);
    static const char *pragmas = "PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL; PRAGMA cache_size=-8192;"
                                 " PRAGMA temp_store=MEMORY;";
    char *msg = NULL;
    rc = sqlite3_exec(conn, pragmas, NULL, NULL, &msg);
    if (rc == SQLITE_OK && strncmp(target, "mem:", 4) != 0) {
        /* journal_mode answers a row; run it as a statement to check the mode really is wal. */
        sqlite3_stmt *st = NULL;
        rc = sqlite3_prepare_v2(conn, "PRAGMA journal_mode=WAL", -1, &st, NULL);
        if (rc == SQLITE_OK) {
            rc = sqlite3_step(st);
            if (rc == SQLITE_ROW) rc = SQLITE_OK;
        }
        sqlite3_finalize(st);
        if (rc == SQLITE_OK) rc = sqlite3_exec(conn, "PRAGMA mmap_size=268435456", NULL, NULL, &msg);
    }
    if (rc != SQLITE_OK) {
        lt_err_set(err, rc == SQLITE_BUSY ? 503 : 500, "cannot configure SQLite database '%s': %s", target,
                   msg ? msg : sqlite3_errmsg(conn));
        sqlite3_free(msg);
        sqlite3_close(conn);
        return NULL;
    }
    sqlite3_free(msg);
    sq_conn *c = calloc(1, sizeof *c);
    if (!c) {
        lt_err_set(err, 500, "out of memory opening SQLite database '%s'", target);
        sqlite3_close(conn);
        return NULL;
    }
    c->db = conn;
    return c;
}

static void sq_disconnect(void *conn) {
    sq_conn *c = conn;
    for (int i = 0; i < SQ_CACHE_SLOTS; i++)
        if (c->cache[i]) sq_stmt_free(c->cache[i]);
    sqlite3_close_v2(c->db);
    free(c);
}

/* A statement for sql: the cached one when it is idle, else a new one that joins the cache when there is
 * room (evicting the least recently used idle statement), else a new uncached one. NULL with err. */
static sq_stmt *sq_get(sq_conn *c, const char *sql, lt_err *err) {
    uint64_t h = sq_hash(sql);
    int free_slot = -1, lru = -1;
    for (int i = 0; i < SQ_CACHE_SLOTS; i++) {
        sq_stmt *s = c->cache[i];
        if (!s) {
            if (free_slot < 0) free_slot = i;
            continue;
        }
        if (s->hash == h && !s->in_use && !strcmp(s->sql, sql)) {
            s->in_use = 1;
            s->last_used = ++c->clock;
            return s;
        }
        if (!s->in_use && (lru < 0 || s->last_used < c->cache[lru]->last_used)) lru = i;
    }
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(c->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        sq_fail(c->db, sqlite3_extended_errcode(c->db), err, "prepare");
        lt_err_prefix(err, "%.200s: ", sql);
        return NULL;
    }
    if (!st) { /* only whitespace or comments */
        lt_err_set(err, 500, "store (sqlite) prepare: empty SQL statement");
        return NULL;
    }
    sq_stmt *s = calloc(1, sizeof *s);
    if (!s) {
        sqlite3_finalize(st);
        lt_err_set(err, 500, "out of memory preparing a statement");
        return NULL;
    }
    s->st = st;
    s->conn = c->db;
    int slot = free_slot >= 0 ? free_slot : lru;
    if (slot >= 0 && (s->sql = strdup(sql)) != NULL) {
        if (c->cache[slot]) sq_stmt_free(c->cache[slot]);
        c->cache[slot] = s;
        s->hash = h;
        s->in_use = 1;
        s->last_used = ++c->clock;
    }
    return s;
}

/* Gives a statement back: a cached one is rewound and unbound for its next user, any other freed. */
static void sq_put(sq_stmt *s) {
    if (!s->sql) {
        sq_stmt_free(s);
        return;
    }
    assert(s->in_use);
    sqlite3_reset(s->st);
    sqlite3_clear_bindings(s->st);
    s->changes = 0;
    s->in_use = 0;
}

/* Runs sql to completion. One statement without parameters (BEGIN, COMMIT, ROLLBACK, most PRAGMAs) goes
 * through the statement cache; text holding several statements through sqlite3_exec. */
static int sq_exec_as(sq_conn *c, const char *sql, const char *what, lt_err *err) {
    if (!strchr(sql, ';') && sql[strspn(sql, " \t\r\n")]) {
        sq_stmt *s = sq_get(c, sql, err);
        if (!s) return -1;
        int rc;
        while ((rc = sqlite3_step(s->st)) == SQLITE_ROW) {
        }
        if (rc != SQLITE_DONE) {
            sq_fail(c->db, sqlite3_extended_errcode(c->db), err, what);
            sq_put(s);
            return -1;
        }
        sq_put(s);
        return 0;
    }
    char *msg = NULL;
    int rc = sqlite3_exec(c->db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        sqlite3_free(msg);
        return sq_fail(c->db, sqlite3_extended_errcode(c->db), err, what);
    }
    return 0;
}

static int sq_exec(void *conn, const char *sql, lt_err *err) {
    return sq_exec_as(conn, sql, "exec", err);
}

static int sq_begin_immediate(void *conn, lt_err *err) {
    /* The busy handler already waits SQLITE_BUSY_MS; one more round covers a burst of long writers. */
    for (int attempt = 0;; attempt++) {
        lt_err tmp = {0};
        if (sq_exec_as(conn, "BEGIN IMMEDIATE", "begin", &tmp) == 0) return 0;
        if (tmp.code == 503 && attempt < 1) continue;
        if (err) *err = tmp;
        return -1;
    }
}

static void *sq_prepare(void *conn, const char *sql, lt_err *err) {
    return sq_get(conn, sql, err);
}

static int sq_bind_rc(int rc) {
    return rc == SQLITE_OK ? 0 : -1;
}
static int sq_bind_text(void *st, int idx, const char *v) {
    sq_stmt *s = st;
    if (!v) return sq_bind_rc(sqlite3_bind_null(s->st, idx));
    return sq_bind_rc(sqlite3_bind_text(s->st, idx, v, -1, SQLITE_TRANSIENT));
}
static int sq_bind_int64(void *st, int idx, int64_t v) {
    return sq_bind_rc(sqlite3_bind_int64(((sq_stmt *)st)->st, idx, v));
}
static int sq_bind_double(void *st, int idx, double v) {
    return sq_bind_rc(sqlite3_bind_double(((sq_stmt *)st)->st, idx, v));
}
static int sq_bind_null(void *st, int idx) {
    return sq_bind_rc(sqlite3_bind_null(((sq_stmt *)st)->st, idx));
}
static int sq_bind_blob(void *st, int idx, const void *data, size_t n) {
    return sq_bind_rc(sqlite3_bind_blob64(((sq_stmt *)st)->st, idx, data ? data : "", n, SQLITE_TRANSIENT));
}

static int sq_step(void *st, lt_err *err) {
    sq_stmt *s = st;
    for (int attempt = 0;; attempt++) {
        int rc = sqlite3_step(s->st);
        if (rc == SQLITE_ROW) return DB_ROW;
        if (rc == SQLITE_DONE) {
            s->changes = sqlite3_changes64(s->conn);
            return DB_DONE;
        }
        /* A busy autocommit statement outside a transaction can simply run again. */
        if ((rc & 0xff) == SQLITE_BUSY && attempt < 2 && sqlite3_get_autocommit(s->conn)) {
            sqlite3_reset(s->st);
            continue;
        }
        int ext = sqlite3_extended_errcode(s->conn);
        sq_fail(s->conn, ext, err, "step");
        sqlite3_reset(s->st);
        return DB_ERROR;
    }
}

static int sq_column_count(void *st) {
    return sqlite3_column_count(((sq_stmt *)st)->st);
}
static int sq_column_is_null(void *st, int col) {
    return sqlite3_column_type(((sq_stmt *)st)->st, col) == SQLITE_NULL;
}
static const char *sq_column_text(void *st, int col) {
    return (const char *)sqlite3_column_text(((sq_stmt *)st)->st, col);
}
static int64_t sq_column_int64(void *st, int col) {
    return sqlite3_column_int64(((sq_stmt *)st)->st, col);
}
static double sq_column_double(void *st, int col) {
    return sqlite3_column_double(((sq_stmt *)st)->st, col);
}
static const void *sq_column_blob(void *st, int col, size_t *n) {
    sq_stmt *s = st;
    const void *p = sqlite3_column_blob(s->st, col);
    if (n) *n = (size_t)sqlite3_column_bytes(s->st, col);
    return p;
}
static void sq_reset(void *st) {
    sqlite3_reset(((sq_stmt *)st)->st);
}
static int64_t sq_changes(void *st) {
    return ((sq_stmt *)st)->changes;
}
static void sq_finalize(void *st) {
    sq_put(st);
}

/* The file must still be there and writable: a server whose database was moved or deleted under it would
 * keep writing into an unlinked inode and lose everything at restart. */
static int sq_check(const char *target, lt_err *err) {
    if (!strncmp(target, "mem:", 4)) return 0;
    if (access(target, R_OK | W_OK) != 0)
        return lt_err_set(err, 503, "SQLite database file %s is not accessible: %s", target, strerror(errno));
    return 0;
}

const db_driver_vt db_driver_sqlite = {
    .name = "sqlite",
    .connect = sq_connect,
    .disconnect = sq_disconnect,
    .exec = sq_exec,
    .begin_immediate = sq_begin_immediate,
    .prepare = sq_prepare,
    .bind_text = sq_bind_text,
    .bind_int64 = sq_bind_int64,
    .bind_double = sq_bind_double,
    .bind_null = sq_bind_null,
    .bind_blob = sq_bind_blob,
    .step = sq_step,
    .column_count = sq_column_count,
    .column_is_null = sq_column_is_null,
    .column_text = sq_column_text,
    .column_int64 = sq_column_int64,
    .column_double = sq_column_double,
    .column_blob = sq_column_blob,
    .reset = sq_reset,
    .changes = sq_changes,
    .finalize = sq_finalize,
    .check = sq_check,
};
