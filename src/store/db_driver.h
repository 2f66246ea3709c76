/* db_driver.h: the vtable a store driver fills (private to src/store/db*.c).
 *
 * db.c owns the portable surface of db.h: per-thread connections, the db_stmt wrapper, db_run/db_query,
 * transactions bookkeeping and migrations. A driver only knows how to talk to one kind of database through
 * opaque connection and statement pointers. Every function gets pointers the driver itself returned. */
#ifndef LATHE_STORE_DB_DRIVER_H
#define LATHE_STORE_DB_DRIVER_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

typedef struct db_driver {
    const char *name; /* "sqlite", "postgres" */
    /* Opens one connection to target (the URL without its scheme); NULL with err. create: the database may
     * be created (only the first connection of a handle: later ones must find it, not make a new empty one).
     */
    void *(*connect)(const char *target, int create, lt_err *err);
    void (*disconnect)(void *conn);
    /* Runs parameterless SQL text, possibly several statements. */
    int (*exec)(void *conn, const char *sql, lt_err *err);
    /* BEGIN a write transaction taking the write lock now; waits on busy up to the driver's timeout. */
    int (*begin_immediate)(void *conn, lt_err *err);
    void *(*prepare)(void *conn, const char *sql, lt_err *err);
    int (*bind_text)(void *st, int idx, const char *v);
    int (*bind_int64)(void *st, int idx, int64_t v);
    int (*bind_double)(void *st, int idx, double v);
    int (*bind_null)(void *st, int idx);
    int (*bind_blob)(void *st, int idx, const void *data, size_t n);
    int (*step)(void *st, lt_err *err); /* DB_ROW, DB_DONE, DB_ERROR */
    int (*column_count)(void *st);
    int (*column_is_null)(void *st, int col);
    const char *(*column_text)(void *st, int col);
    int64_t (*column_int64)(void *st, int col);
    double (*column_double)(void *st, int col);
    const void *(*column_blob)(void *st, int col, size_t *n);
    void (*reset)(void *st);
    int64_t (*changes)(void *st);
    void (*finalize)(void *st);
    /* Optional extra readiness check beyond SELECT 1 (e.g. the database file still exists); NULL = none. */
    int (*check)(const char *target, lt_err *err);
    /* Optional: takes (lock 1) or gives back (lock 0) a lock held across a whole migration run, so that
     * processes starting together on one database migrate one after another; NULL = none needed. */
    int (*migrate_lock)(void *conn, int lock, lt_err *err);
} db_driver_vt;

extern const db_driver_vt db_driver_sqlite;
extern const db_driver_vt db_driver_postgres;

#endif
