/* store_url.h: which store the store tests run on (included by test_store.c, test_queue.c,
 * test_artifacts_store.c).
 *
 * By default a fresh SQLite file in the test's temp dir. With LATHE_TEST_PG set to a PostgreSQL URL
 * (tests/run.sh starts a throwaway server with tests/pg-start.sh and sets it), each call makes a fresh
 * database on that server (CREATE DATABASE from template0) and answers its URL, so every test starts empty
 * as with a new file. Tests that check something only one driver has (SQLite file modes, its statement cache,
 * its data_version) skip themselves on PostgreSQL through test_store_skip_unless_sqlite. */
#ifndef LATHE_TEST_STORE_URL_H
#define LATHE_TEST_STORE_URL_H

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store/db.h"

/* The PostgreSQL URL the tests run on, or NULL for SQLite. */
static inline const char *test_store_pg(void) {
    const char *u = getenv("LATHE_TEST_PG");
    return u && *u ? u : NULL;
}

/* Fills url (cap bytes) with a new, empty store: sqlite:DIR/FILE, or a new PostgreSQL database. 0, or -1
 * with a message on stderr. */
static inline int test_store_url(char *url, size_t cap, const char *dir, const char *file) {
    const char *pg = test_store_pg();
    if (!pg) {
        snprintf(url, cap, "sqlite:%s/%s", dir, file);
        return 0;
    }
    static atomic_int seq;
    char name[64];
    snprintf(name, sizeof name, "lt_%d_%d", (int)getpid(), atomic_fetch_add(&seq, 1));
    lt_err err = {0};
    db *admin = db_open(pg, &err);
    char sql[128];
    snprintf(sql, sizeof sql, "CREATE DATABASE %s TEMPLATE template0", name);
    if (!admin || db_exec(admin, sql, &err) != 0) {
        fprintf(stderr, "LATHE_TEST_PG=%s: cannot create a test database: %s\n", pg, err.msg);
        db_close(admin);
        return -1;
    }
    db_close(admin);
    snprintf(url, cap, "%s%sdbname=%s", pg, strchr(pg, '?') ? "&" : "?", name);
    return 0;
}

/* Drops a PostgreSQL test database made by test_store_url (every handle on it must be closed); a no-op on
 * SQLite (the temp dir goes). */
static inline void test_store_drop(const char *url) {
    const char *pg = test_store_pg();
    const char *p = pg ? strstr(url, "dbname=lt_") : NULL;
    if (!p) return;
    lt_err err = {0};
    db *admin = db_open(pg, &err);
    char sql[128];
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %.60s WITH (FORCE)", p + 7);
    if (admin) db_exec(admin, sql, &err);
    db_close(admin);
}

/* In a cmocka test: skips it on PostgreSQL, saying why. */
#define test_store_skip_unless_sqlite(why)                                                                   \
    do {                                                                                                     \
        if (test_store_pg()) {                                                                               \
            fprintf(stderr, "[ SKIPPED  ] on PostgreSQL: %s\n", why);                                        \
            skip();                                                                                          \
        }                                                                                                    \
    } while (0)

#endif
