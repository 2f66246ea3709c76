/* db.h: a small portable SQL runner: the one door every module uses to reach the store.
 *
 * A `db` is opened from a URL: `sqlite:PATH` (the embedded default; `sqlite::memory:` for a private in-memory
 * database) or `postgres://USER[:PASS]@HOST[:PORT]/DB` (also `postgresql://`; libpq's query parameters such
 * as
 * `?host=/socket/dir` work). Inside, a driver vtable does the work: SQLite (db_sqlite.c: WAL journal,
 * busy_timeout, foreign keys on) or PostgreSQL (db_postgres.c: libpq; `?` placeholders and INTEGER columns
 * translated there, write transactions serialized by an advisory lock as SQLite serializes them).
 *
 * Threads: the handle is shared by every thread of the process. Each thread gets its own connection the first
 * time it touches the handle (lazily, kept until the thread exits or db_close), so statements and
 * transactions belong to the calling thread: prepare, step, finalize and begin/commit a statement on the same
 * thread. Do not share a db_stmt between threads.
 *
 * SQL rules, so the same text runs on both drivers: `?` placeholders (numbered in order, 1-based for
 * binds), TEXT ids (UUID strings), BIGINT for ms-since-epoch timestamps and other 64-bit integers
 * (PostgreSQL's INTEGER is 32 bits; SQLite treats BIGINT as INTEGER), INTEGER for small ints and 0/1 flags,
 * REAL or DOUBLE PRECISION for floats, TEXT for JSON, `INSERT ... ON CONFLICT (...) DO NOTHING/UPDATE`,
 * `LIMIT ? OFFSET ?`; no SQLite-only syntax (no `INSERT OR REPLACE`, no rowid, no AUTOINCREMENT: keep your
 * own counters), no driver-specific functions, no BLOB columns (PostgreSQL calls them BYTEA: keep bytes in
 * the blob store). Where a query must differ (e.g. `FOR UPDATE SKIP LOCKED`), branch on db_driver().
 *
 * Errors: every fallible function fills a caller-owned lt_err with a message naming the SQL problem; codes
 * are 500 (store error), 503 (store busy/unavailable after retries), 409 (a UNIQUE/PRIMARY KEY constraint
 * failed: the row exists), 400 (bad URL). Nothing here prints or exits.
 *
 * Migrations: named per area. Each area owner defines a const array of scripts (see db_migration below) as
 * an extern symbol; db_migrate() applies, in the fixed order core, artifacts, jobs, every script whose
 * version (1-based index in the array) is not yet recorded in `schema_migrations(area, version, name,
 * applied_at)`, each in its own transaction. The area symbols are referenced weakly: an area whose file is
 * not linked in is skipped. Scripts are append-only: never edit or reorder a released one; add a new one. */
#ifndef LATHE_STORE_DB_H
#define LATHE_STORE_DB_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

typedef struct db db;
typedef struct db_stmt db_stmt;

/* ---- open / close ---- */

/* Opens the store named by url ("sqlite:PATH", "sqlite::memory:", "postgres://..." / "postgresql://...";
 * a PostgreSQL server that does not answer is 503). The SQLite file's directory must exist. Returns NULL with
 * err on failure. The caller owns the handle and frees it with db_close. */
db *db_open(const char *url, lt_err *err);

/* Closes every per-thread connection and frees the handle. Call it after every thread that used the handle
 * has stopped using it (statements finalized, transactions ended). NULL is a no-op. */
void db_close(db *d);

/* Copies url into buf (cap bytes) with a password in it replaced by "***" (postgres://user:***@host/db, and a
 * password=... query parameter), for logs and messages. Returns buf. */
char *db_url_redacted(const char *url, char *buf, size_t cap);

/* "sqlite" or "postgres": for the rare query that must differ between drivers. */
const char *db_driver(const db *d);

/* Answers 0 when the store responds to a trivial query (readiness checks), -1 with err otherwise. */
int db_ping(db *d, lt_err *err);

/* ---- statements ---- */

enum { DB_DONE = 0, DB_ROW = 1, DB_ERROR = -1 };

/* Prepares one statement on the calling thread's connection. Returns NULL with err on a syntax error.
 * Free with db_finalize (on the same thread). Statements are cached per connection by SQL text, so preparing
 * the same constant text again is cheap: prefer `?` parameters to SQL text built with values in it. */
db_stmt *db_prepare(db *d, const char *sql, lt_err *err);

/* Binds by 1-based index. Text and blobs are copied (the caller's buffer may go away). A NULL text binds SQL
 * NULL. Return 0, or -1 on a bad index (a programming error: also asserted in debug builds). */
int db_bind_text(db_stmt *s, int idx, const char *v);
int db_bind_int64(db_stmt *s, int idx, int64_t v);
int db_bind_double(db_stmt *s, int idx, double v);
int db_bind_null(db_stmt *s, int idx);
int db_bind_blob(db_stmt *s, int idx, const void *data, size_t n);

/* Runs the statement one step: DB_ROW (a row is ready for the column getters), DB_DONE (finished), or
 * DB_ERROR with err (409 for a unique-constraint violation, 503 when the store stayed busy). */
int db_step(db_stmt *s, lt_err *err);

/* Column getters, 0-based, valid while the statement sits on a row.
 * db_column_text/db_column_blob return pointers owned by the statement that stay valid only until the next
 * db_step, db_reset or db_finalize; they return NULL for SQL NULL. db_column_text_dup returns a malloc'd copy
 * (caller frees; NULL for SQL NULL). db_column_copy copies into a caller buffer of size cap (truncating;
 * "" for NULL) and returns the buffer. Numeric getters return 0 for NULL. */
int db_column_count(db_stmt *s);
int db_column_is_null(db_stmt *s, int col);
const char *db_column_text(db_stmt *s, int col);
char *db_column_text_dup(db_stmt *s, int col);
char *db_column_copy(db_stmt *s, int col, char *buf, size_t cap);
int64_t db_column_int64(db_stmt *s, int col);
double db_column_double(db_stmt *s, int col);
const void *db_column_blob(db_stmt *s, int col, size_t *n);

/* Rewinds the statement so it can run again; bindings are kept (rebind what changes). */
void db_reset(db_stmt *s);

/* Rows changed by the statement's last completed run (INSERT/UPDATE/DELETE). */
int64_t db_changes(db_stmt *s);

/* Frees the statement. NULL is a no-op. */
void db_finalize(db_stmt *s);

/* ---- convenience ---- */

/* Runs SQL text that may hold several statements separated by ';' and takes no parameters (DDL, migrations).
 * 0 or -1 with err. */
int db_exec(db *d, const char *sql, lt_err *err);

/* Prepares sql, binds the variadic arguments described by `types` (one char per `?`: 't' const char *
 * (NULL binds NULL), 'i' int64_t, 'd' double, 'n' nothing is read, binds NULL), runs it to completion and
 * returns the number of rows changed (>= 0), or -1 with err. For INSERT/UPDATE/DELETE without results.
 * Example: db_run(d, err, "UPDATE t SET a=? WHERE id=?", "it", (int64_t)5, id). Note the int64_t casts. */
int64_t db_run(db *d, lt_err *err, const char *sql, const char *types, ...);

/* Like db_run but for a SELECT: prepares and binds and returns the statement positioned BEFORE the first row
 * (call db_step). NULL with err on failure. The caller finalizes it. */
db_stmt *db_query(db *d, lt_err *err, const char *sql, const char *types, ...);

/* ---- transactions (on the calling thread's connection) ---- */

/* Starts a write transaction that takes the write lock at once (SQLite BEGIN IMMEDIATE; PostgreSQL BEGIN
 * plus a transaction advisory lock every writer takes).
 * Writers of one process (one handle) queue for the lock in turn; a writer of another process is waited for
 * and retried up to the busy timeout (about 10 s); after either wait runs out, -1 with err code 503.
 * Transactions do not nest: beginning inside one is a programming error (-1, code 500). */
int db_begin_immediate(db *d, lt_err *err);
int db_commit(db *d, lt_err *err); /* 0, or -1 with err (the transaction is then rolled back) */
void db_rollback(db *d);           /* no-op when no transaction is open */
int db_in_transaction(db *d);      /* 1 when the calling thread has an open transaction */

/* ---- migrations ---- */

typedef struct db_migration {
    const char *name; /* short description, e.g. "jobs and job_logs"; recorded in schema_migrations */
    const char *sql;  /* one or more statements separated by ';' */
} db_migration;

/* The three areas, each a const array terminated by an entry whose sql is NULL; the version of a script is
 * its 1-based index. db_migrations_core lives in src/store/identity.c, db_migrations_artifacts in
 * src/store/artifacts.c, db_migrations_jobs in src/store/jobs.c. Define yours exactly as
 *     const db_migration db_migrations_jobs[] = {{"jobs", "CREATE TABLE ..."}, {NULL, NULL}};
 * db_migrate names all three directly, so every binary that migrates (lathe and the unit tests alike) runs
 * the same areas, and an area that is not linked in is a link error. */
extern const db_migration db_migrations_core[];
extern const db_migration db_migrations_artifacts[];
extern const db_migration db_migrations_jobs[];

/* Applies every pending script of the areas core, artifacts, jobs (in that order). Idempotent; safe when
 * several processes race (each script runs in a write transaction that re-checks schema_migrations).
 * 0 or -1 with err naming the area, version and the SQL error. */
int db_migrate(db *d, lt_err *err);

/* Applies the pending scripts of one area (used by db_migrate and by tests). */
int db_migrate_area(db *d, const char *area, const db_migration *scripts, lt_err *err);

/* The highest applied version of an area (0 when none), or -1 with err. */
int db_schema_version(db *d, const char *area, lt_err *err);

#endif
