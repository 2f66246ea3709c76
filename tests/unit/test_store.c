/* test_store.c: the SQL runner (db.h) and identity store (identity.h) against real SQLite files, or against a
 * real PostgreSQL server when LATHE_TEST_PG names one (store_url.h; tests/run.sh runs this binary both ways).
 *
 * Each test opens a fresh database (a file in a temp directory, or a new PostgreSQL database). Covered: URL
 * handling, migrations (idempotent, recorded, failing scripts roll back), statements and binds, transactions,
 * identity CRUD with its 404/409 codes, API key generation/verification/revocation, idempotency records (per
 * API key; the v2 migration that drops the per-user ones), file modes (0600), and concurrent writers that
 * must all succeed through busy waiting. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "store/db.h"
#include "store/identity.h"
#include "util/util.h"
#include "store_url.h"

typedef struct fx {
    char dir[256];
    char url[300];
    db *d;
} fx;

static int setup(void **state) {
    fx *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/lathe-test-store-XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    if (test_store_url(f->url, sizeof f->url, f->dir, "lathe.db") != 0) return -1;
    lt_err err = {0};
    f->d = db_open(f->url, &err);
    if (!f->d) {
        fprintf(stderr, "db_open: %s\n", err.msg);
        return -1;
    }
    if (db_migrate(f->d, &err) != 0) {
        fprintf(stderr, "db_migrate: %s\n", err.msg);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fx *f = *state;
    db_close(f->d);
    test_store_drop(f->url);
    lt_rm_rf(f->dir);
    free(f);
    return 0;
}

static void test_open_urls(void **state) {
    (void)state;
    lt_err err = {0};
    /* PostgreSQL: a server that does not answer is 503 (unavailable), a malformed URL 400. */
    assert_null(db_open("postgres://u@127.0.0.1:1/db", &err));
    assert_int_equal(err.code, 503);
    assert_non_null(strstr(err.msg, "cannot connect"));
    lt_err_clear(&err);
    assert_null(db_open("postgresql://u@127.0.0.1/db?nosuchoption=1", &err));
    assert_int_equal(err.code, 400);
    assert_non_null(strstr(err.msg, "nosuchoption"));
    lt_err_clear(&err);
    assert_null(db_open("mysql://x", &err));
    assert_non_null(strstr(err.msg, "unknown store URL"));
    lt_err_clear(&err);
    assert_null(db_open("sqlite:/nonexistent-dir-lathe/x/y.db", &err));
    assert_int_equal(err.code, 500);
    assert_non_null(strstr(err.msg, "/nonexistent-dir-lathe/x/y.db"));
    /* Passwords never reach logs. */
    char buf[256];
    assert_string_equal(db_url_redacted("postgres://u:s3cret@h:5432/db?sslmode=require", buf, sizeof buf),
                        "postgres://u:***@h:5432/db?sslmode=require");
    assert_string_equal(db_url_redacted("postgresql://u@h/db?password=s3cret&x=1", buf, sizeof buf),
                        "postgresql://u@h/db?password=***&x=1");
    assert_string_equal(db_url_redacted("postgresql://u@/db?host=/tmp/s", buf, sizeof buf),
                        "postgresql://u@/db?host=/tmp/s");
    assert_string_equal(db_url_redacted("sqlite:/a:b@c/lathe.db", buf, sizeof buf), "sqlite:/a:b@c/lathe.db");
    /* In-memory databases are shared by every thread of the handle. */
    lt_err_clear(&err);
    db *m = db_open("sqlite::memory:", &err);
    assert_non_null(m);
    assert_string_equal(db_driver(m), "sqlite");
    assert_int_equal(db_ping(m, &err), 0);
    db_close(m);
}

static void test_migrations_idempotent(void **state) {
    fx *f = *state;
    lt_err err = {0};
    assert_int_equal(db_schema_version(f->d, "core", &err), 2);
    assert_int_equal(db_migrate(f->d, &err), 0);
    assert_int_equal(db_migrate(f->d, &err), 0);
    assert_int_equal(db_schema_version(f->d, "core", &err), 2);
    /* A private area: two scripts, then a third added later. */
    db_migration v1[] = {{"t1", "CREATE TABLE t1 (id TEXT PRIMARY KEY)"},
                         {"t1 col", "ALTER TABLE t1 ADD COLUMN n INTEGER"},
                         {NULL, NULL}};
    assert_int_equal(db_migrate_area(f->d, "test", v1, &err), 0);
    assert_int_equal(db_migrate_area(f->d, "test", v1, &err), 0);
    assert_int_equal(db_schema_version(f->d, "test", &err), 2);
    db_migration v2[] = {v1[0], v1[1], {"t2", "CREATE TABLE t2 (id TEXT)"}, {NULL, NULL}};
    assert_int_equal(db_migrate_area(f->d, "test", v2, &err), 0);
    assert_int_equal(db_schema_version(f->d, "test", &err), 3);
    /* A failing script rolls back entirely and names area and version. */
    db_migration bad[] = {
        v2[0], v2[1], v2[2], {"bad", "CREATE TABLE t3 (id TEXT); SELECT * FROM nope"}, {NULL, NULL}};
    assert_int_equal(db_migrate_area(f->d, "test", bad, &err), -1);
    assert_non_null(strstr(err.msg, "migration test/4 (bad)"));
    assert_non_null(strstr(err.msg, "nope"));
    assert_int_equal(db_schema_version(f->d, "test", &err), 3);
    lt_err_clear(&err);
    db_stmt *s = db_query(f->d, &err, "SELECT COUNT(*) FROM t3", "");
    assert_true(!s || db_step(s, &err) == DB_ERROR); /* t3 was rolled back (PostgreSQL finds out at step) */
    db_finalize(s);
    /* Re-opening the file finds the same versions. */
    db_close(f->d);
    f->d = db_open(f->url, &err);
    assert_non_null(f->d);
    assert_int_equal(db_schema_version(f->d, "test", &err), 3);
}

static void test_statements(void **state) {
    fx *f = *state;
    lt_err err = {0};
    assert_int_equal(db_exec(f->d,
                             test_store_pg()
                                 ? "CREATE TABLE kv (k TEXT PRIMARY KEY, i INTEGER, d REAL, b BYTEA, t TEXT)"
                                 : "CREATE TABLE kv (k TEXT PRIMARY KEY, i INTEGER, d REAL, b BLOB, t TEXT)",
                             &err),
                     0);
    db_stmt *s = db_prepare(f->d, "INSERT INTO kv (k, i, d, b, t) VALUES (?, ?, ?, ?, ?)", &err);
    assert_non_null(s);
    db_bind_text(s, 1, "a");
    db_bind_int64(s, 2, INT64_C(9007199254740993));
    db_bind_double(s, 3, 2.5);
    db_bind_blob(s, 4, "\0\1\2", 3);
    db_bind_null(s, 5);
    assert_int_equal(db_step(s, &err), DB_DONE);
    assert_int_equal(db_changes(s), 1);
    db_reset(s);
    db_bind_text(s, 1, "b");
    assert_int_equal(db_step(s, &err), DB_DONE);
    db_reset(s);
    assert_int_equal(db_step(s, &err), DB_ERROR); /* "b" again: unique */
    assert_int_equal(err.code, 409);
    db_finalize(s);
    s = db_query(f->d, &err, "SELECT k, i, d, b, t FROM kv WHERE k = ?", "t", "a");
    assert_non_null(s);
    assert_int_equal(db_step(s, &err), DB_ROW);
    assert_int_equal(db_column_count(s), 5);
    assert_string_equal(db_column_text(s, 0), "a");
    assert_true(db_column_int64(s, 1) == INT64_C(9007199254740993));
    assert_true(db_column_double(s, 2) == 2.5);
    size_t n = 0;
    const unsigned char *b = db_column_blob(s, 3, &n);
    assert_int_equal(n, 3);
    assert_int_equal(b[2], 2);
    assert_true(db_column_is_null(s, 4));
    assert_null(db_column_text(s, 4));
    assert_null(db_column_text_dup(s, 4));
    char buf[4];
    assert_string_equal(db_column_copy(s, 4, buf, sizeof buf), "");
    assert_int_equal(db_step(s, &err), DB_DONE);
    db_finalize(s);
    /* `?` inside literals, quoted names and comments is text, not a parameter (PostgreSQL numbers them). */
    s = db_query(f->d, &err, "SELECT 'it''s ?', ? AS \"q?\" /* ? */ -- ?\n", "t", "x");
    assert_non_null(s);
    assert_int_equal(db_step(s, &err), DB_ROW);
    assert_string_equal(db_column_text(s, 0), "it's ?");
    assert_string_equal(db_column_text(s, 1), "x");
    db_finalize(s);
    assert_int_equal(db_run(f->d, &err, "UPDATE kv SET i = ? WHERE k <> ?", "it", (int64_t)7, "zzz"), 2);
    assert_int_equal(db_run(f->d, &err, "DELETE FROM kv WHERE k = ?", "n"), 0);
    assert_int_equal(db_run(f->d, &err, "SELEC nonsense", ""), -1);
    assert_int_equal(err.code, 500);
    assert_non_null(strstr(err.msg, "SELEC nonsense"));
}

/* Both drivers cache prepared statements by SQL text (db_sqlite.c, db_postgres.c): a reused statement must
 * come back reset with no bindings left over, the same text open twice at once (a nested query) must give two
 * independent statements, and a schema change must not break a cached one. */
static void test_statement_cache(void **state) {
    fx *f = *state;
    lt_err err = {0};
    assert_int_equal(db_exec(f->d, "CREATE TABLE n (k INTEGER PRIMARY KEY, v TEXT)", &err), 0);
    for (int i = 1; i <= 3; i++)
        assert_int_equal(
            db_run(f->d, &err, "INSERT INTO n VALUES (?, ?)", "it", (int64_t)i, i == 2 ? "two" : "other"), 1);
    const char *sql = "SELECT v FROM n WHERE k = ?";
    db_stmt *a = db_prepare(f->d, sql, &err);
    db_bind_int64(a, 1, 2);
    assert_int_equal(db_step(a, &err), DB_ROW);
    db_stmt *b = db_prepare(f->d, sql, &err); /* same text while a is open: its own statement */
    assert_non_null(b);
    assert_ptr_not_equal(a, b);
    db_bind_int64(b, 1, 1);
    assert_int_equal(db_step(b, &err), DB_ROW);
    assert_string_equal(db_column_text(b, 0), "other");
    assert_string_equal(db_column_text(a, 0), "two"); /* a's row untouched by b */
    db_finalize(b);
    db_finalize(a);
    db_stmt *c = db_prepare(f->d, sql, &err);    /* from the cache: reset, bindings cleared */
    assert_int_equal(db_step(c, &err), DB_DONE); /* k = NULL matches nothing */
    db_finalize(c);
    /* A table changed under a cached statement: it still answers, with the new columns. */
    for (int round = 0; round < 2; round++) {
        db_stmt *t = db_query(f->d, &err, "SELECT * FROM n WHERE k = 1", "");
        assert_non_null(t);
        assert_int_equal(db_step(t, &err), DB_ROW);
        assert_int_equal(db_column_count(t), 2 + round);
        db_finalize(t);
        if (round == 0) assert_int_equal(db_exec(f->d, "ALTER TABLE n ADD COLUMN extra INTEGER", &err), 0);
    }
    for (int i = 0; i < 300; i++) { /* more texts than the cache holds: eviction keeps working */
        char q[64];
        snprintf(q, sizeof q, "SELECT %d + k FROM n WHERE k = 1", i);
        db_stmt *e = db_prepare(f->d, q, &err);
        assert_non_null(e);
        assert_int_equal(db_step(e, &err), DB_ROW);
        assert_int_equal(db_column_int64(e, 0), i + 1);
        db_finalize(e);
    }
}

static void test_transactions(void **state) {
    fx *f = *state;
    lt_err err = {0};
    assert_int_equal(db_exec(f->d, "CREATE TABLE c (n INTEGER)", &err), 0);
    assert_int_equal(db_begin_immediate(f->d, &err), 0);
    assert_true(db_in_transaction(f->d));
    assert_int_equal(db_begin_immediate(f->d, &err), -1); /* no nesting */
    assert_non_null(strstr(err.msg, "no nesting"));
    assert_int_equal(db_run(f->d, &err, "INSERT INTO c VALUES (1)", ""), 1);
    db_rollback(f->d);
    assert_false(db_in_transaction(f->d));
    assert_int_equal(db_begin_immediate(f->d, &err), 0);
    assert_int_equal(db_run(f->d, &err, "INSERT INTO c VALUES (2)", ""), 1);
    assert_int_equal(db_commit(f->d, &err), 0);
    db_stmt *s = db_query(f->d, &err, "SELECT SUM(n), COUNT(*) FROM c", "");
    assert_int_equal(db_step(s, &err), DB_ROW);
    assert_int_equal(db_column_int64(s, 0), 2);
    assert_int_equal(db_column_int64(s, 1), 1);
    db_finalize(s);
    assert_int_equal(db_commit(f->d, &err), -1);
}

typedef struct writer_arg {
    db *d;
    int id, n, failures;
    char msg[256];
} writer_arg;

static void *writer(void *p) {
    writer_arg *a = p;
    for (int i = 0; i < a->n; i++) {
        lt_err err = {0};
        /* read-modify-write inside a write transaction: lost updates would show in the final sum */
        if (db_begin_immediate(a->d, &err) != 0) goto fail;
        db_stmt *s = db_query(a->d, &err, "SELECT v FROM counter WHERE id = 1", "");
        if (!s || db_step(s, &err) != DB_ROW) {
            db_finalize(s);
            db_rollback(a->d);
            goto fail;
        }
        int64_t v = db_column_int64(s, 0);
        db_finalize(s);
        if (db_run(a->d, &err, "UPDATE counter SET v = ? WHERE id = 1", "i", v + 1) != 1) {
            db_rollback(a->d);
            goto fail;
        }
        if (db_run(a->d, &err, "INSERT INTO log (w, i) VALUES (?, ?)", "ii", (int64_t)a->id, (int64_t)i) !=
            1) {
            db_rollback(a->d);
            goto fail;
        }
        if (db_commit(a->d, &err) != 0) goto fail;
        continue;
    fail:
        a->failures++;
        snprintf(a->msg, sizeof a->msg, "%.200s", err.msg);
    }
    return NULL;
}

static void test_concurrent_writers(void **state) {
    fx *f = *state;
    lt_err err = {0};
    assert_int_equal(db_exec(f->d,
                             "CREATE TABLE counter (id INTEGER PRIMARY KEY, v INTEGER NOT NULL);"
                             "INSERT INTO counter VALUES (1, 0);"
                             "CREATE TABLE log (w INTEGER, i INTEGER)",
                             &err),
                     0);
    /* Threads share the handle; a second handle on the same file stands in for another process. */
    db *other = db_open(f->url, &err);
    assert_non_null(other);
    enum { T = 6, N = 40 };
    pthread_t th[T];
    writer_arg args[T];
    for (int i = 0; i < T; i++) {
        args[i] = (writer_arg){.d = i % 2 ? other : f->d, .id = i, .n = N};
        pthread_create(&th[i], NULL, writer, &args[i]);
    }
    for (int i = 0; i < T; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < T; i++) {
        if (args[i].failures) fprintf(stderr, "writer %d: %s\n", i, args[i].msg);
        assert_int_equal(args[i].failures, 0);
    }
    db_stmt *s = db_query(f->d, &err, "SELECT v, (SELECT COUNT(*) FROM log) FROM counter", "");
    assert_int_equal(db_step(s, &err), DB_ROW);
    assert_int_equal(db_column_int64(s, 0), T * N);
    assert_int_equal(db_column_int64(s, 1), T * N);
    db_finalize(s);
    db_close(other);
}

static void test_slugs_roles_scopes(void **state) {
    (void)state;
    assert_true(store_slug_valid("a"));
    assert_true(store_slug_valid("acme-1"));
    assert_true(store_slug_valid("0abc"));
    assert_false(store_slug_valid(""));
    assert_false(store_slug_valid("-a"));
    assert_false(store_slug_valid("Acme"));
    assert_false(store_slug_valid("a_b"));
    assert_false(store_slug_valid("a.b"));
    char s63[64], s64[65];
    memset(s63, 'a', 63);
    s63[63] = 0;
    memset(s64, 'a', 64);
    s64[64] = 0;
    assert_true(store_slug_valid(s63));
    assert_false(store_slug_valid(s64));
    assert_int_equal(store_role_parse("owner"), STORE_ROLE_OWNER);
    assert_int_equal(store_role_parse("reader"), STORE_ROLE_READER);
    assert_int_equal(store_role_parse("admin"), STORE_ROLE_NONE);
    assert_string_equal(store_role_name(STORE_ROLE_CONTRIBUTOR), "contributor");
    unsigned m = 0;
    lt_err err = {0};
    assert_int_equal(store_scopes_parse_list("training:read, worker", &m, &err), 0);
    assert_int_equal(m, STORE_SCOPE_TRAINING_READ | STORE_SCOPE_WORKER);
    assert_int_equal(store_scopes_parse_list("training:read,admin", &m, &err), -1);
    assert_non_null(strstr(err.msg, "unknown scope 'admin'"));
    assert_string_equal(store_scope_name(STORE_SCOPE_ARTIFACTS_WRITE), "artifacts:write");
    assert_null(store_scope_name(3));
}

static void test_identity_crud(void **state) {
    fx *f = *state;
    lt_err err = {0};
    store_user u, u2, got;
    assert_int_equal(store_user_create(f->d, "Ada@Example.com", "ada", "Ada L", &u, &err), 0);
    assert_true(lt_is_uuid(u.id));
    assert_int_equal(store_user_create(f->d, "ada@example.COM", NULL, NULL, NULL, &err), -1);
    assert_int_equal(err.code, 409);
    assert_int_equal(store_user_create(f->d, "not-an-email", NULL, NULL, NULL, &err), -1);
    assert_int_equal(err.code, 400);
    assert_int_equal(store_user_by_email(f->d, "ADA@example.com", &got, &err), 0);
    assert_string_equal(got.id, u.id);
    assert_string_equal(got.email, "Ada@Example.com");
    assert_string_equal(got.full_name, "Ada L");
    assert_int_equal(store_user_get(f->d, "00000000-0000-4000-8000-000000000000", &got, &err), -1);
    assert_int_equal(err.code, 404);
    assert_int_equal(store_user_create(f->d, "bob@example.com", NULL, NULL, &u2, &err), 0);

    store_org o;
    assert_int_equal(store_org_create(f->d, "acme", "Acme Inc", u.id, &o, &err), 0);
    assert_int_equal(store_org_create(f->d, "acme", NULL, u.id, NULL, &err), -1);
    assert_int_equal(err.code, 409);
    assert_non_null(strstr(err.msg, "'acme' already exists"));
    assert_int_equal(store_org_create(f->d, "Bad Slug", NULL, u.id, NULL, &err), -1);
    assert_int_equal(err.code, 400);
    store_org o2;
    assert_int_equal(store_org_by_key(f->d, "acme", &o2, &err), 0);
    assert_string_equal(o2.id, o.id);
    assert_string_equal(o2.name, "Acme Inc");
    assert_int_equal(store_org_by_key(f->d, "nope", &o2, &err), -1);
    assert_int_equal(err.code, 404);

    /* The org came with workspace main and project default. */
    store_workspace w;
    assert_int_equal(store_workspace_by_key(f->d, o.id, "main", &w, &err), 0);
    assert_true(w.is_default);
    store_workspace wd;
    assert_int_equal(store_workspace_default(f->d, o.id, &wd, &err), 0);
    assert_string_equal(wd.id, w.id);
    store_project p;
    assert_int_equal(store_project_default(f->d, w.id, &p, &err), 0);
    assert_string_equal(p.key, "default");
    assert_true(p.is_default);

    store_workspace w2;
    assert_int_equal(store_workspace_create(f->d, o.id, "research", "Research", 0, &w2, &err), 0);
    assert_int_equal(store_workspace_create(f->d, o.id, "research", NULL, 0, NULL, &err), -1);
    assert_int_equal(err.code, 409);
    store_workspace *ws = NULL;
    size_t n = 0;
    assert_int_equal(store_workspaces_list(f->d, o.id, &ws, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(ws[0].key, "main");
    assert_string_equal(ws[1].key, "research");
    free(ws);
    assert_int_equal(store_project_default(f->d, w2.id, &p, &err), 0);
    store_project p2;
    assert_int_equal(store_project_create(f->d, w2.id, "exp-1", NULL, 0, &p2, &err), 0);
    assert_string_equal(p2.name, "exp-1");
    assert_int_equal(store_project_create(f->d, w2.id, "exp-1", NULL, 0, NULL, &err), -1);
    assert_int_equal(err.code, 409);
    assert_int_equal(store_project_by_key(f->d, w2.id, "exp-1", &p, &err), 0);
    assert_string_equal(p.id, p2.id);
    assert_int_equal(store_project_by_key(f->d, w.id, "exp-1", &p, &err), -1);
    assert_int_equal(err.code, 404);
    store_project *ps = NULL;
    assert_int_equal(store_projects_list(f->d, w2.id, &ps, &n, &err), 0);
    assert_int_equal(n, 2);
    free(ps);

    /* Memberships and the last-owner rule. */
    int role = -1;
    assert_int_equal(store_member_role(f->d, o.id, u.id, &role, &err), 0);
    assert_int_equal(role, STORE_ROLE_OWNER);
    assert_int_equal(store_member_role(f->d, o.id, u2.id, &role, &err), 0);
    assert_int_equal(role, STORE_ROLE_NONE);
    assert_int_equal(store_member_set(f->d, o.id, u2.id, STORE_ROLE_READER, &err), 0);
    assert_int_equal(store_member_set(f->d, o.id, u2.id, STORE_ROLE_CONTRIBUTOR, &err), 0);
    assert_int_equal(store_member_role(f->d, o.id, u2.id, &role, &err), 0);
    assert_int_equal(role, STORE_ROLE_CONTRIBUTOR);
    assert_int_equal(store_member_set(f->d, o.id, u.id, STORE_ROLE_READER, &err), -1);
    assert_int_equal(err.code, 409);
    assert_int_equal(store_member_remove(f->d, o.id, u.id, &err), -1);
    assert_int_equal(err.code, 409);
    store_member *ms = NULL;
    assert_int_equal(store_members_list(f->d, o.id, &ms, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(ms[0].user.email, "Ada@Example.com");
    assert_int_equal(ms[0].role, STORE_ROLE_OWNER);
    free(ms);
    assert_int_equal(store_member_remove(f->d, o.id, u2.id, &err), 0);
    assert_int_equal(store_member_remove(f->d, o.id, u2.id, &err), -1);
    assert_int_equal(err.code, 404);
    store_org_role *orgs = NULL;
    assert_int_equal(store_org_create(f->d, "beta", NULL, u.id, NULL, &err), 0);
    assert_int_equal(store_orgs_for_user(f->d, u.id, &orgs, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(orgs[0].org.key, "acme");
    assert_string_equal(orgs[1].org.key, "beta");
    assert_int_equal(orgs[1].role, STORE_ROLE_OWNER);
    free(orgs);
    assert_int_equal(store_orgs_for_user(f->d, u2.id, &orgs, &n, &err), 0);
    assert_int_equal(n, 0);
    free(orgs);
}

static void test_api_keys(void **state) {
    fx *f = *state;
    lt_err err = {0};
    store_user u, got;
    store_org o;
    store_workspace w;
    assert_int_equal(store_user_create(f->d, "k@example.com", NULL, NULL, &u, &err), 0);
    assert_int_equal(store_org_create(f->d, "keys", NULL, u.id, &o, &err), 0);
    assert_int_equal(store_workspace_by_key(f->d, o.id, "main", &w, &err), 0);
    char key[STORE_KEY_LEN], key2[STORE_KEY_LEN];
    store_apikey k, kv;
    assert_int_equal(store_apikey_create(f->d, u.id, "ci", NULL, NULL, 0, key, &k, &err), 0);
    assert_int_equal(strlen(key), 43);
    assert_true(store_apikey_shape_ok(key));
    assert_memory_equal(key, "lk_", 3);
    assert_int_equal(k.scopes, STORE_SCOPES_ALL);
    assert_int_equal(strncmp(k.masked, key, 7), 0);
    assert_memory_equal(k.masked + 7, "...", 3);
    assert_string_equal(k.masked + 10, key + 39);
    /* Only the hash is stored: the key text appears nowhere in the table. */
    db_stmt *s = db_query(f->d, &err, "SELECT COUNT(*) FROM api_keys WHERE key_hash = ? OR masked = ?", "tt",
                          key, key);
    assert_int_equal(db_step(s, &err), DB_ROW);
    assert_int_equal(db_column_int64(s, 0), 0);
    db_finalize(s);

    assert_int_equal(store_apikey_verify(f->d, key, &kv, &got, &err), 0);
    assert_string_equal(kv.id, k.id);
    assert_string_equal(got.id, u.id);
    assert_true(kv.last_used_at > 0);
    /* Wrong key of the right shape, malformed keys: 401 with the fixed message. */
    char wrong[STORE_KEY_LEN];
    memcpy(wrong, key, sizeof wrong);
    wrong[10] = wrong[10] == 'a' ? 'b' : 'a';
    assert_int_equal(store_apikey_verify(f->d, wrong, NULL, NULL, &err), -1);
    assert_int_equal(err.code, 401);
    assert_string_equal(err.msg, "Authentication failed");
    assert_int_equal(store_apikey_verify(f->d, "lk_short", NULL, NULL, &err), -1);
    assert_int_equal(store_apikey_verify(f->d, "", NULL, NULL, &err), -1);
    assert_int_equal(err.code, 401);

    /* Limited key. */
    assert_int_equal(store_apikey_create(f->d, u.id, "ws", o.id, w.id,
                                         STORE_SCOPE_TRAINING_READ | STORE_SCOPE_WORKER, key2, &k, &err),
                     0);
    assert_int_equal(store_apikey_verify(f->d, key2, &kv, NULL, &err), 0);
    assert_string_equal(kv.org_id, o.id);
    assert_string_equal(kv.workspace_id, w.id);
    assert_int_equal(kv.scopes, STORE_SCOPE_TRAINING_READ | STORE_SCOPE_WORKER);
    assert_int_equal(store_apikey_create(f->d, u.id, "bad", NULL, w.id, 0, key2, NULL, &err), -1);
    assert_int_equal(err.code, 400);
    assert_int_equal(store_apikey_create(f->d, u.id, "ghost org", "00000000-0000-4000-8000-000000000000",
                                         NULL, 0, key2, NULL, &err),
                     -1);
    assert_int_equal(err.code, 404);

    store_apikey *ks = NULL;
    size_t n = 0;
    assert_int_equal(store_apikeys_list(f->d, u.id, &ks, &n, &err), 0);
    assert_int_equal(n, 2);
    free(ks);

    /* Revocation: other users cannot revoke, the key stops working, revoking twice is fine. */
    store_user other;
    assert_int_equal(store_user_create(f->d, "o@example.com", NULL, NULL, &other, &err), 0);
    assert_int_equal(store_apikey_revoke(f->d, other.id, k.id, &err), -1);
    assert_int_equal(err.code, 404);
    assert_int_equal(store_apikey_verify(f->d, key, NULL, NULL, &err), 0);
    store_apikey first;
    assert_int_equal(store_apikey_verify(f->d, key, &first, NULL, &err), 0);
    assert_int_equal(store_apikey_revoke(f->d, u.id, first.id, &err), 0);
    assert_int_equal(store_apikey_revoke(f->d, u.id, first.id, &err), 0);
    assert_int_equal(store_apikey_verify(f->d, key, NULL, NULL, &err), -1);
    assert_int_equal(err.code, 401);
    assert_int_equal(store_apikey_get(f->d, first.id, &kv, &err), 0);
    assert_true(kv.revoked_at > 0);

    /* Keys differ every time. */
    char a[STORE_KEY_LEN], b[STORE_KEY_LEN];
    assert_int_equal(store_apikey_create(f->d, u.id, NULL, NULL, NULL, 0, a, NULL, &err), 0);
    assert_int_equal(store_apikey_create(f->d, u.id, NULL, NULL, NULL, 0, b, NULL, &err), 0);
    assert_string_not_equal(a, b);
}

/* The verified-key cache (identity.c): a hit skips the store; a revocation in this process is visible at
 * once, and so is a change committed through another connection (another handle stands in for another
 * process). */
static void test_api_key_cache(void **state) {
    fx *f = *state;
    lt_err err = {0};
    store_user u, got;
    store_apikey k, kv;
    char key[STORE_KEY_LEN];
    assert_int_equal(store_user_create(f->d, "cache@example.com", "before", NULL, &u, &err), 0);
    assert_int_equal(store_apikey_create(f->d, u.id, "c", NULL, NULL, 0, key, &k, &err), 0);
    assert_int_equal(store_apikey_verify(f->d, key, &kv, &got, &err), 0);
    assert_string_equal(got.username, "before");
    /* A write on this thread's own connection does not move SQLite's data_version: the entry still serves,
     * which shows that the second verification is a cache hit. PostgreSQL has no data_version: there every
     * verification reads the store. */
    assert_int_equal(db_run(f->d, &err, "UPDATE users SET username = 'after' WHERE id = ?", "t", u.id), 1);
    assert_int_equal(store_apikey_verify(f->d, key, &kv, &got, &err), 0);
    assert_string_equal(got.username, test_store_pg() ? "after" : "before");
    store_apikey_cache_clear();
    assert_int_equal(store_apikey_verify(f->d, key, &kv, &got, &err), 0);
    assert_string_equal(got.username, "after");
    assert_string_equal(kv.id, k.id);

    /* Revoked through another connection (as `lathe admin revoke-key` does from its own process). */
    db *other = db_open(f->url, &err);
    assert_non_null(other);
    assert_int_equal(db_run(other, &err, "UPDATE api_keys SET revoked_at = 1 WHERE id = ?", "t", k.id), 1);
    err = (lt_err){0};
    assert_int_equal(store_apikey_verify(f->d, key, NULL, NULL, &err), -1);
    assert_int_equal(err.code, 401);
    db_close(other);

    /* Revoked in this process, on this very connection: visible at once too. */
    char key2[STORE_KEY_LEN];
    store_apikey k2;
    assert_int_equal(store_apikey_create(f->d, u.id, "c2", NULL, NULL, 0, key2, &k2, &err), 0);
    assert_int_equal(store_apikey_verify(f->d, key2, NULL, NULL, &err), 0);
    assert_int_equal(store_apikey_verify(f->d, key2, NULL, NULL, &err), 0);
    assert_int_equal(store_apikey_revoke(f->d, u.id, k2.id, &err), 0);
    err = (lt_err){0};
    assert_int_equal(store_apikey_verify(f->d, key2, NULL, NULL, &err), -1);
    assert_int_equal(err.code, 401);
}

/* store_access_lookup answers in one statement what authorization needs: org, role, workspace. */
static void test_access_lookup(void **state) {
    fx *f = *state;
    lt_err err = {0};
    store_user u, stranger;
    store_org o, got;
    store_workspace w;
    int role = -1, found = -1;
    assert_int_equal(store_user_create(f->d, "acc@example.com", NULL, NULL, &u, &err), 0);
    assert_int_equal(store_user_create(f->d, "str@example.com", NULL, NULL, &stranger, &err), 0);
    assert_int_equal(store_org_create(f->d, "acc", "Access", u.id, &o, &err), 0);
    assert_int_equal(store_access_lookup(f->d, "acc", u.id, "main", &got, &role, &w, &found, &err), 0);
    assert_string_equal(got.id, o.id);
    assert_int_equal(role, STORE_ROLE_OWNER);
    assert_int_equal(found, 1);
    assert_string_equal(w.key, "main");
    assert_string_equal(w.org_id, o.id);
    assert_int_equal(w.is_default, 1);
    assert_int_equal(store_access_lookup(f->d, "acc", u.id, "nope", &got, &role, &w, &found, &err), 0);
    assert_int_equal(found, 0);
    assert_int_equal(w.id[0], 0);
    assert_int_equal(store_access_lookup(f->d, "acc", u.id, NULL, &got, &role, &w, &found, &err), 0);
    assert_int_equal(found, 0);
    assert_int_equal(store_access_lookup(f->d, "acc", stranger.id, "main", &got, &role, &w, &found, &err), 0);
    assert_int_equal(role, STORE_ROLE_NONE);
    assert_int_equal(store_member_set(f->d, o.id, stranger.id, STORE_ROLE_READER, &err), 0);
    assert_int_equal(store_access_lookup(f->d, "acc", stranger.id, "main", &got, &role, &w, &found, &err), 0);
    assert_int_equal(role, STORE_ROLE_READER);
    err = (lt_err){0};
    assert_int_equal(store_access_lookup(f->d, "ghost", u.id, "main", &got, &role, &w, &found, &err), -1);
    assert_int_equal(err.code, 404);
    assert_non_null(strstr(err.msg, "ghost"));
}

static void test_idempotency(void **state) {
    fx *f = *state;
    lt_err err = {0};
    int status = 0;
    char *body = NULL;
    const char *route = "POST /api/v1/orgs";
    assert_int_equal(store_idem_begin(f->d, "k1", "u1", route, "h1", &status, &body, &err), STORE_IDEM_NEW);
    assert_int_equal(store_idem_begin(f->d, "k1", "u1", route, "h1", &status, &body, &err),
                     STORE_IDEM_IN_FLIGHT);
    assert_int_equal(store_idem_begin(f->d, "k1", "u1", route, "h2", &status, &body, &err),
                     STORE_IDEM_CONFLICT);
    assert_int_equal(store_idem_finish(f->d, "k1", "u1", route, 201, "{\"id\":1}", &err), 0);
    assert_int_equal(store_idem_begin(f->d, "k1", "u1", route, "h1", &status, &body, &err),
                     STORE_IDEM_REPLAY);
    assert_int_equal(status, 201);
    assert_string_equal(body, "{\"id\":1}");
    free(body);
    /* Another API key or route is another record. */
    assert_int_equal(store_idem_begin(f->d, "k1", "u2", route, "h2", &status, &body, &err), STORE_IDEM_NEW);
    assert_int_equal(store_idem_begin(f->d, "k1", "u1", "POST /x", "h2", &status, &body, &err),
                     STORE_IDEM_NEW);
    /* Abandon frees the key for a rerun. */
    assert_int_equal(store_idem_abandon(f->d, "k1", "u2", route, &err), 0);
    assert_int_equal(store_idem_begin(f->d, "k1", "u2", route, "h3", &status, &body, &err), STORE_IDEM_NEW);
    /* Expired records are ignored and purged. */
    assert_int_equal(db_run(f->d, &err, "UPDATE idempotency_keys SET created_at = ? WHERE api_key_id = ?",
                            "it", lt_now_ms() - STORE_IDEM_TTL_MS - 1000, "u1"),
                     2);
    assert_int_equal(store_idem_begin(f->d, "k1", "u1", route, "h9", &status, &body, &err), STORE_IDEM_NEW);
    assert_int_equal(store_idem_purge(f->d, &err), 1);
}

/* Records are per API key: one key never replays, nor conflicts with, another key's record. */
static void test_idempotency_per_key(void **state) {
    fx *f = *state;
    lt_err err = {0};
    int status = 0;
    char *body = NULL;
    const char *route = "POST /api/v1/org/default/ws/main/training/jobs";
    assert_int_equal(store_idem_begin(f->d, "same", "key-a", route, "h1", &status, &body, &err),
                     STORE_IDEM_NEW);
    assert_int_equal(store_idem_finish(f->d, "same", "key-a", route, 201, "{\"job\":1}", &err), 0);
    assert_int_equal(store_idem_begin(f->d, "same", "key-b", route, "h1", &status, &body, &err),
                     STORE_IDEM_NEW);
    assert_null(body);
    assert_int_equal(store_idem_begin(f->d, "same", "key-a", route, "h1", &status, &body, &err),
                     STORE_IDEM_REPLAY);
    assert_string_equal(body, "{\"job\":1}");
    free(body);
}

/* The v2 core migration drops every record written under v1 (they were per user, and a record of
 * POST /user/api-keys held a plaintext key) and keys the table by API key id. */
static void test_idempotency_migration_drops_old_records(void **state) {
    (void)state;
    char dir[] = "/tmp/lathe-test-store-XXXXXX", url[300];
    assert_non_null(mkdtemp(dir));
    assert_int_equal(test_store_url(url, sizeof url, dir, "lathe.db"), 0);
    lt_err err = {0};
    db *d = db_open(url, &err);
    assert_non_null(d);
    const db_migration v1[] = {db_migrations_core[0], {NULL, NULL}};
    assert_int_equal(db_migrate_area(d, "core", v1, &err), 0);
    assert_int_equal(
        db_run(d, &err,
               "INSERT INTO idempotency_keys (idem_key, user_id, route, body_hash, status, response, "
               "created_at) VALUES ('k', 'u', 'POST /api/v1/user/api-keys', 'h', 201, "
               "'{\"key\":\"lk_secret\"}', ?)",
               "i", lt_now_ms()),
        1);
    assert_int_equal(db_migrate(d, &err), 0);
    assert_int_equal(db_schema_version(d, "core", &err), 2);
    db_stmt *s =
        db_query(d, &err, "SELECT COUNT(*) FROM idempotency_keys WHERE response LIKE '%lk_secret%'", "");
    assert_non_null(s);
    assert_int_equal(db_step(s, &err), DB_ROW);
    assert_int_equal(db_column_int64(s, 0), 0);
    db_finalize(s);
    db_close(d);
    test_store_drop(url);
    lt_rm_rf(dir);
}

/* lathe.db and its WAL companions are 0600 whatever the umask; an existing 0644 file is tightened. */
static void test_file_modes(void **state) {
    fx *f = *state;
    char path[400];
    struct stat st;
    lt_err err = {0};
    const char *suffixes[] = {"", "-wal", "-shm"};
    test_store_skip_unless_sqlite("SQLite's database file modes");
    assert_true(db_run(f->d, &err, "CREATE TABLE modes (x INTEGER)", "") >= 0);
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/lathe.db%s", f->dir, suffixes[i]);
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0600);
    }
    db_close(f->d);
    snprintf(path, sizeof path, "%s/lathe.db", f->dir);
    assert_int_equal(chmod(path, 0644), 0);
    f->d = db_open(f->url, &err);
    assert_non_null(f->d);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    /* A new file under a permissive umask. */
    mode_t old = umask(0);
    char url2[400];
    snprintf(url2, sizeof url2, "sqlite:%s/other.db", f->dir);
    db *d2 = db_open(url2, &err);
    umask(old);
    assert_non_null(d2);
    assert_int_equal(db_migrate(d2, &err), 0);
    snprintf(path, sizeof path, "%s/other.db", f->dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    db_close(d2);
}

/* Has PostgreSQL end the session of this thread's connection on f->d, and waits until it is gone. */
static void kill_my_session(fx *f) {
    lt_err err = {0};
    db_stmt *s = db_query(f->d, &err, "SELECT pg_backend_pid()", "");
    assert_int_equal(db_step(s, &err), DB_ROW);
    int64_t pid = db_column_int64(s, 0);
    db_finalize(s);
    db *admin = db_open(test_store_pg(), &err);
    assert_non_null(admin);
    s = db_query(admin, &err, "SELECT pg_terminate_backend(CAST(? AS INTEGER))", "i", pid);
    assert_int_equal(db_step(s, &err), DB_ROW);
    assert_int_equal(db_column_int64(s, 0), 1);
    db_finalize(s);
    for (int i = 0; i < 500; i++) {
        s = db_query(admin, &err, "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = CAST(? AS INTEGER)", "i",
                     pid);
        assert_int_equal(db_step(s, &err), DB_ROW);
        int64_t n = db_column_int64(s, 0);
        db_finalize(s);
        if (n == 0) break;
        usleep(10000);
    }
    db_close(admin);
}

/* PostgreSQL ends the session (a failover, an idle-session killer, a restart): outside a transaction the
 * statement is retried on a new connection; inside one the transaction is lost (503) and, once rolled back,
 * the handle works again. */
static void test_connection_lost(void **state) {
    fx *f = *state;
    if (!test_store_pg()) skip(); /* SQLite has no connection to lose */
    lt_err err = {0};
    assert_int_equal(db_exec(f->d, "CREATE TABLE cl (n INTEGER)", &err), 0);
    kill_my_session(f);
    assert_int_equal(db_run(f->d, &err, "INSERT INTO cl VALUES (1)", ""), 1); /* retried */
    assert_int_equal(db_ping(f->d, &err), 0);
    assert_int_equal(db_begin_immediate(f->d, &err), 0);
    assert_int_equal(db_run(f->d, &err, "INSERT INTO cl VALUES (2)", ""), 1);
    kill_my_session(f);
    err = (lt_err){0};
    assert_int_equal(db_run(f->d, &err, "INSERT INTO cl VALUES (3)", ""), -1);
    assert_int_equal(err.code, 503);
    err = (lt_err){0};
    assert_int_equal(db_run(f->d, &err, "INSERT INTO cl VALUES (4)", ""), -1); /* still the lost one */
    assert_int_equal(err.code, 503);
    assert_int_equal(db_commit(f->d, &err), -1);
    assert_false(db_in_transaction(f->d));
    db_stmt *s = db_query(f->d, &err, "SELECT COUNT(*), SUM(n) FROM cl", "");
    assert_int_equal(db_step(s, &err), DB_ROW);
    assert_int_equal(db_column_int64(s, 0), 1); /* only the autocommit row: 2 died with its transaction */
    assert_int_equal(db_column_int64(s, 1), 1);
    db_finalize(s);
    /* A session lost between transactions: BEGIN itself is retried. */
    kill_my_session(f);
    assert_int_equal(db_begin_immediate(f->d, &err), 0);
    assert_int_equal(db_run(f->d, &err, "INSERT INTO cl VALUES (5)", ""), 1);
    assert_int_equal(db_commit(f->d, &err), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_urls),
        cmocka_unit_test_setup_teardown(test_migrations_idempotent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_statements, setup, teardown),
        cmocka_unit_test_setup_teardown(test_statement_cache, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transactions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_writers, setup, teardown),
        cmocka_unit_test(test_slugs_roles_scopes),
        cmocka_unit_test_setup_teardown(test_identity_crud, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_key_cache, setup, teardown),
        cmocka_unit_test_setup_teardown(test_access_lookup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idempotency, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idempotency_per_key, setup, teardown),
        cmocka_unit_test(test_idempotency_migration_drops_old_records),
        cmocka_unit_test_setup_teardown(test_file_modes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_lost, setup, teardown),
    };
    return cmocka_run_group_tests_name("store", tests, NULL, NULL);
}
