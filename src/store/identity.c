/* identity.c: users, orgs, workspaces, projects, memberships, API keys and idempotency records (identity.h),
 * and the `core` migration area that creates their tables.
 *
 * Tenancy is a tree: an org holds workspaces (one default), a workspace holds projects (one default); users
 * join orgs through memberships that carry a role. Creating an org creates its `main` workspace and that
 * workspace's `default` project in the same transaction, so an org is never seen half made.
 *
 * API keys: "lk_" + 40 base62 characters drawn from getrandom (rejection sampling, so every character is
 * uniform: 40 x log2(62) = 238 bits). Only the SHA-256 of the whole key is stored, with a masked form for
 * display. Verification hashes the presented key, finds the row by hash (an index lookup that reveals
 * nothing useful: the hash of a guess), and compares the stored and computed hashes in constant time.
 * last_used_at is written at most once a second per key so that a busy client does not queue on the write
 * lock for every request; a verified key is then cached for a few seconds (see "verified-key cache" below).
 *
 * Idempotency records are keyed by (Idempotency-Key, caller's API key id, route): one key never sees another
 * key's records, not even a key of the same user. store_idem_begin reserves the key in one
 * write transaction (status 0 = in flight), so two concurrent requests with the same key cannot both run;
 * store_idem_finish stores the response; records older than 24 h are treated as absent.
 *
 * Portable SQL only (db.h): TEXT ids, BIGINT ms timestamps, ON CONFLICT upserts. */
#include <assert.h>
#include <ctype.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store/db.h"
#include "store/identity.h"
#include "util/util.h"

const db_migration db_migrations_core[] = {
    {"users, orgs, workspaces, projects, memberships, api keys, idempotency",
     "CREATE TABLE users ("
     " id TEXT PRIMARY KEY,"
     " email TEXT NOT NULL,"
     " email_lc TEXT NOT NULL UNIQUE,"
     " username TEXT,"
     " full_name TEXT,"
     " created_at BIGINT NOT NULL);"
     "CREATE TABLE orgs ("
     " id TEXT PRIMARY KEY,"
     " slug TEXT NOT NULL UNIQUE,"
     " name TEXT NOT NULL,"
     " created_at BIGINT NOT NULL);"
     "CREATE TABLE workspaces ("
     " id TEXT PRIMARY KEY,"
     " org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,"
     " slug TEXT NOT NULL,"
     " name TEXT NOT NULL,"
     " is_default INTEGER NOT NULL DEFAULT 0,"
     " created_at BIGINT NOT NULL,"
     " UNIQUE (org_id, slug));"
     "CREATE TABLE projects ("
     " id TEXT PRIMARY KEY,"
     " workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,"
     " slug TEXT NOT NULL,"
     " name TEXT NOT NULL,"
     " is_default INTEGER NOT NULL DEFAULT 0,"
     " created_at BIGINT NOT NULL,"
     " UNIQUE (workspace_id, slug));"
     "CREATE TABLE memberships ("
     " org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,"
     " user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
     " role TEXT NOT NULL,"
     " created_at BIGINT NOT NULL,"
     " PRIMARY KEY (org_id, user_id));"
     "CREATE INDEX memberships_user ON memberships (user_id);"
     "CREATE TABLE api_keys ("
     " id TEXT PRIMARY KEY,"
     " user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
     " name TEXT NOT NULL,"
     " key_hash TEXT NOT NULL UNIQUE,"
     " masked TEXT NOT NULL,"
     " org_id TEXT REFERENCES orgs(id) ON DELETE CASCADE,"
     " workspace_id TEXT REFERENCES workspaces(id) ON DELETE CASCADE,"
     " scopes INTEGER NOT NULL,"
     " created_at BIGINT NOT NULL,"
     " last_used_at BIGINT,"
     " revoked_at BIGINT);"
     "CREATE INDEX api_keys_user ON api_keys (user_id);"
     "CREATE TABLE idempotency_keys ("
     " idem_key TEXT NOT NULL,"
     " user_id TEXT NOT NULL,"
     " route TEXT NOT NULL,"
     " body_hash TEXT NOT NULL,"
     " status INTEGER NOT NULL,"
     " response TEXT,"
     " created_at BIGINT NOT NULL,"
     " PRIMARY KEY (idem_key, user_id, route));"
     "CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at)"},
    /* Records were per user and replayed before authorization (issue 15): drop them all (a record of
     * POST /user/api-keys held a plaintext key) and key the table by the caller's API key. */
    {"idempotency records per API key",
     "DROP TABLE idempotency_keys;"
     "CREATE TABLE idempotency_keys ("
     " idem_key TEXT NOT NULL,"
     " api_key_id TEXT NOT NULL,"
     " route TEXT NOT NULL,"
     " body_hash TEXT NOT NULL,"
     " status INTEGER NOT NULL,"
     " response TEXT,"
     " created_at BIGINT NOT NULL,"
     " PRIMARY KEY (idem_key, api_key_id, route));"
     "CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at)"},
    {NULL, NULL},
};

/* ---- roles, scopes, slugs ---- */

static const char *ROLE_NAMES[] = {"none", "reader", "contributor", "owner"};

const char *store_role_name(int role) {
    return role >= 0 && role <= STORE_ROLE_OWNER ? ROLE_NAMES[role] : "none";
}

int store_role_parse(const char *s) {
    for (int r = STORE_ROLE_READER; s && r <= STORE_ROLE_OWNER; r++)
        if (!strcmp(s, ROLE_NAMES[r])) return r;
    return STORE_ROLE_NONE;
}

static const char *SCOPE_NAMES[] = {"training:read", "training:write", "artifacts:read", "artifacts:write",
                                    "worker"};
#define NSCOPES (sizeof SCOPE_NAMES / sizeof SCOPE_NAMES[0])

unsigned store_scope_parse(const char *s) {
    for (size_t i = 0; s && i < NSCOPES; i++)
        if (!strcmp(s, SCOPE_NAMES[i])) return 1u << i;
    return 0;
}

const char *store_scope_name(unsigned bit) {
    for (size_t i = 0; i < NSCOPES; i++)
        if (bit == 1u << i) return SCOPE_NAMES[i];
    return NULL;
}

int store_scopes_parse_list(const char *csv, unsigned *mask, lt_err *err) {
    *mask = 0;
    char *copy = lt_strdup(csv ? csv : "");
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *t = lt_strip(tok);
        if (!*t) continue;
        unsigned bit = store_scope_parse(t);
        if (!bit) {
            lt_err_set(err, 400,
                       "unknown scope '%.64s': use training:read, training:write, artifacts:read, "
                       "artifacts:write or worker",
                       t);
            free(copy);
            return -1;
        }
        *mask |= bit;
    }
    free(copy);
    return 0;
}

int store_slug_valid(const char *s) {
    if (!s || !*s) return 0;
    size_t n = strlen(s);
    if (n > 63) return 0;
    if (!(islower((unsigned char)s[0]) || isdigit((unsigned char)s[0]))) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return 0;
    }
    return 1;
}

/* ---- row readers (each matches its SELECT column list) ---- */

#define USER_COLS "id, email, username, full_name, created_at"
static void read_user(db_stmt *s, int c, store_user *u) {
    db_column_copy(s, c + 0, u->id, sizeof u->id);
    db_column_copy(s, c + 1, u->email, sizeof u->email);
    db_column_copy(s, c + 2, u->username, sizeof u->username);
    db_column_copy(s, c + 3, u->full_name, sizeof u->full_name);
    u->created_at = db_column_int64(s, c + 4);
}

#define ORG_COLS "o.id, o.slug, o.name, o.created_at"
static void read_org(db_stmt *s, int c, store_org *o) {
    db_column_copy(s, c + 0, o->id, sizeof o->id);
    db_column_copy(s, c + 1, o->key, sizeof o->key);
    db_column_copy(s, c + 2, o->name, sizeof o->name);
    o->created_at = db_column_int64(s, c + 3);
}

#define WS_COLS "id, org_id, slug, name, is_default, created_at"
static void read_ws(db_stmt *s, store_workspace *w) {
    db_column_copy(s, 0, w->id, sizeof w->id);
    db_column_copy(s, 1, w->org_id, sizeof w->org_id);
    db_column_copy(s, 2, w->key, sizeof w->key);
    db_column_copy(s, 3, w->name, sizeof w->name);
    w->is_default = (int)db_column_int64(s, 4);
    w->created_at = db_column_int64(s, 5);
}

#define PROJ_COLS "id, workspace_id, slug, name, is_default, created_at"
static void read_proj(db_stmt *s, store_project *p) {
    db_column_copy(s, 0, p->id, sizeof p->id);
    db_column_copy(s, 1, p->workspace_id, sizeof p->workspace_id);
    db_column_copy(s, 2, p->key, sizeof p->key);
    db_column_copy(s, 3, p->name, sizeof p->name);
    p->is_default = (int)db_column_int64(s, 4);
    p->created_at = db_column_int64(s, 5);
}

#define KEY_COLS                                                                                             \
    "id, user_id, name, masked, org_id, workspace_id, scopes, created_at, last_used_at, revoked_at"
static void read_key(db_stmt *s, store_apikey *k) {
    db_column_copy(s, 0, k->id, sizeof k->id);
    db_column_copy(s, 1, k->user_id, sizeof k->user_id);
    db_column_copy(s, 2, k->name, sizeof k->name);
    db_column_copy(s, 3, k->masked, sizeof k->masked);
    db_column_copy(s, 4, k->org_id, sizeof k->org_id);
    db_column_copy(s, 5, k->workspace_id, sizeof k->workspace_id);
    k->scopes = (unsigned)db_column_int64(s, 6);
    k->created_at = db_column_int64(s, 7);
    k->last_used_at = db_column_int64(s, 8);
    k->revoked_at = db_column_int64(s, 9);
}

/* Runs a prepared query expected to return at most one row; calls rd on it. 0 found, -1 with err
 * (404 "what not found" when no row). Finalizes s. */
static int one_row(db_stmt *s, void (*rd)(db_stmt *, void *), void *out, lt_err *err, const char *what) {
    if (!s) return -1;
    int rc = db_step(s, err);
    if (rc == DB_ROW) rd(s, out);
    db_finalize(s);
    if (rc == DB_ROW) return 0;
    if (rc == DB_DONE) lt_err_set(err, 404, "%s not found", what);
    return -1;
}

static void rd_user(db_stmt *s, void *o) {
    read_user(s, 0, o);
}
static void rd_org(db_stmt *s, void *o) {
    read_org(s, 0, o);
}
static void rd_ws(db_stmt *s, void *o) {
    read_ws(s, o);
}
static void rd_proj(db_stmt *s, void *o) {
    read_proj(s, o);
}
static void rd_key(db_stmt *s, void *o) {
    read_key(s, o);
}

/* Collects every row into a growing array of elem_size records. Finalizes s. */
static int all_rows(db_stmt *s, void (*rd)(db_stmt *, void *), size_t elem_size, void **items, size_t *n,
                    lt_err *err) {
    *items = NULL;
    *n = 0;
    if (!s) return -1;
    size_t cap = 0;
    char *arr = NULL;
    int rc;
    while ((rc = db_step(s, err)) == DB_ROW) {
        if (*n == cap) {
            cap = cap ? cap * 2 : 8;
            char *grown = realloc(arr, cap * elem_size);
            if (!grown) {
                free(arr);
                db_finalize(s);
                *n = 0;
                return lt_err_set(err, 500, "out of memory listing rows");
            }
            arr = grown;
        }
        memset(arr + *n * elem_size, 0, elem_size);
        rd(s, arr + *n * elem_size);
        (*n)++;
    }
    db_finalize(s);
    if (rc == DB_ERROR) {
        free(arr);
        *n = 0;
        return -1;
    }
    *items = arr;
    return 0;
}

static void lower_copy(const char *in, char *out, size_t cap) {
    size_t i = 0;
    for (; in[i] && i + 1 < cap; i++)
        out[i] = (char)tolower((unsigned char)in[i]);
    out[i] = '\0';
}

/* ---- users ---- */

int store_user_create(db *d, const char *email, const char *username, const char *full_name, store_user *out,
                      lt_err *err) {
    if (!email || !strchr(email, '@') || strlen(email) >= STORE_EMAIL_MAX)
        return lt_err_set(err, 400, "email '%.100s' is not an email address", email ? email : "");
    if ((username && strlen(username) >= STORE_NAME_MAX) ||
        (full_name && strlen(full_name) >= STORE_NAME_MAX))
        return lt_err_set(err, 400, "username and full name must be shorter than %d bytes", STORE_NAME_MAX);
    store_user u = {0};
    lt_uuid4(u.id);
    snprintf(u.email, sizeof u.email, "%s", email);
    snprintf(u.username, sizeof u.username, "%s", username ? username : "");
    snprintf(u.full_name, sizeof u.full_name, "%s", full_name ? full_name : "");
    u.created_at = lt_now_ms();
    char lc[STORE_EMAIL_MAX];
    lower_copy(email, lc, sizeof lc);
    if (db_run(
            d, err,
            "INSERT INTO users (id, email, email_lc, username, full_name, created_at) VALUES (?,?,?,?,?,?)",
            "ttttti", u.id, u.email, lc, username && *username ? username : NULL,
            full_name && *full_name ? full_name : NULL, u.created_at) < 0) {
        if (err && err->code == 409) lt_err_set(err, 409, "a user with email '%.200s' already exists", email);
        return -1;
    }
    if (out) *out = u;
    return 0;
}

int store_user_get(db *d, const char *id, store_user *out, lt_err *err) {
    store_user tmp;
    return one_row(db_query(d, err, "SELECT " USER_COLS " FROM users WHERE id = ?", "t", id), rd_user,
                   out ? out : &tmp, err, "user");
}

int store_user_by_email(db *d, const char *email, store_user *out, lt_err *err) {
    char lc[STORE_EMAIL_MAX];
    lower_copy(email ? email : "", lc, sizeof lc);
    store_user tmp;
    int rc = one_row(db_query(d, err, "SELECT " USER_COLS " FROM users WHERE email_lc = ?", "t", lc), rd_user,
                     out ? out : &tmp, err, "user");
    if (rc != 0 && err && err->code == 404) lt_err_set(err, 404, "no user with email '%.200s'", email);
    return rc;
}

/* ---- orgs, workspaces, projects ---- */

static int insert_project(db *d, const char *ws_id, const char *key, const char *name, int is_default,
                          store_project *out, lt_err *err) {
    store_project p = {0};
    lt_uuid4(p.id);
    snprintf(p.workspace_id, sizeof p.workspace_id, "%s", ws_id);
    snprintf(p.key, sizeof p.key, "%s", key);
    snprintf(p.name, sizeof p.name, "%s", name && *name ? name : key);
    p.is_default = is_default ? 1 : 0;
    p.created_at = lt_now_ms();
    if (db_run(d, err,
               "INSERT INTO projects (id, workspace_id, slug, name, is_default, created_at) VALUES "
               "(?,?,?,?,?,?)",
               "ttttii", p.id, p.workspace_id, p.key, p.name, (int64_t)p.is_default, p.created_at) < 0) {
        if (err && err->code == 409)
            lt_err_set(err, 409, "project '%s' already exists in this workspace", key);
        return -1;
    }
    if (out) *out = p;
    return 0;
}

static int insert_workspace(db *d, const char *org_id, const char *key, const char *name, int is_default,
                            store_workspace *out, lt_err *err) {
    store_workspace w = {0};
    lt_uuid4(w.id);
    snprintf(w.org_id, sizeof w.org_id, "%s", org_id);
    snprintf(w.key, sizeof w.key, "%s", key);
    snprintf(w.name, sizeof w.name, "%s", name && *name ? name : key);
    w.is_default = is_default ? 1 : 0;
    w.created_at = lt_now_ms();
    if (db_run(d, err,
               "INSERT INTO workspaces (id, org_id, slug, name, is_default, created_at) VALUES (?,?,?,?,?,?)",
               "ttttii", w.id, w.org_id, w.key, w.name, (int64_t)w.is_default, w.created_at) < 0) {
        if (err && err->code == 409)
            lt_err_set(err, 409, "workspace '%s' already exists in this organization", key);
        return -1;
    }
    if (insert_project(d, w.id, "default", "Default", 1, NULL, err) != 0) return -1;
    if (out) *out = w;
    return 0;
}

static int check_slug_name(const char *what, const char *key, const char *name, lt_err *err) {
    if (!store_slug_valid(key))
        return lt_err_set(err, 400, "%s key '%.80s' must match ^[a-z0-9][a-z0-9-]{0,62}$", what,
                          key ? key : "");
    if (name && strlen(name) >= STORE_NAME_MAX)
        return lt_err_set(err, 400, "%s name must be shorter than %d bytes", what, STORE_NAME_MAX);
    return 0;
}

/* Runs fn inside a write transaction unless the caller already holds one. */
static int in_tx(db *d, lt_err *err, int (*fn)(db *, void *, lt_err *), void *arg) {
    int own = !db_in_transaction(d);
    if (own && db_begin_immediate(d, err) != 0) return -1;
    int rc = fn(d, arg, err);
    if (!own) return rc;
    if (rc != 0) {
        db_rollback(d);
        return -1;
    }
    return db_commit(d, err);
}

struct org_args {
    const char *key, *name, *owner;
    store_org *out;
};

static int org_create_tx(db *d, void *p, lt_err *err) {
    struct org_args *a = p;
    store_org o = {0};
    lt_uuid4(o.id);
    snprintf(o.key, sizeof o.key, "%s", a->key);
    snprintf(o.name, sizeof o.name, "%s", a->name && *a->name ? a->name : a->key);
    o.created_at = lt_now_ms();
    if (db_run(d, err, "INSERT INTO orgs (id, slug, name, created_at) VALUES (?,?,?,?)", "ttti", o.id, o.key,
               o.name, o.created_at) < 0) {
        if (err && err->code == 409) lt_err_set(err, 409, "organization '%s' already exists", a->key);
        return -1;
    }
    if (insert_workspace(d, o.id, "main", "Main", 1, NULL, err) != 0) return -1;
    if (a->owner && store_member_set(d, o.id, a->owner, STORE_ROLE_OWNER, err) != 0) return -1;
    if (a->out) *a->out = o;
    return 0;
}

int store_org_create(db *d, const char *key, const char *name, const char *owner_user_id, store_org *out,
                     lt_err *err) {
    if (check_slug_name("organization", key, name, err) != 0) return -1;
    struct org_args a = {key, name, owner_user_id, out};
    return in_tx(d, err, org_create_tx, &a);
}

int store_org_by_key(db *d, const char *key, store_org *out, lt_err *err) {
    store_org tmp;
    int rc = one_row(db_query(d, err, "SELECT " ORG_COLS " FROM orgs o WHERE o.slug = ?", "t", key), rd_org,
                     out ? out : &tmp, err, "organization");
    if (rc != 0 && err && err->code == 404) lt_err_set(err, 404, "organization '%.80s' not found", key);
    return rc;
}

int store_org_get(db *d, const char *id, store_org *out, lt_err *err) {
    store_org tmp;
    return one_row(db_query(d, err, "SELECT " ORG_COLS " FROM orgs o WHERE o.id = ?", "t", id), rd_org,
                   out ? out : &tmp, err, "organization");
}

static void rd_org_role(db_stmt *s, void *o) {
    store_org_role *r = o;
    read_org(s, 0, &r->org);
    r->role = store_role_parse(db_column_text(s, 4));
}

int store_orgs_for_user(db *d, const char *user_id, store_org_role **items, size_t *n, lt_err *err) {
    return all_rows(db_query(d, err,
                             "SELECT " ORG_COLS ", m.role FROM orgs o JOIN memberships m ON m.org_id = o.id "
                             "WHERE m.user_id = ? ORDER BY o.slug",
                             "t", user_id),
                    rd_org_role, sizeof **items, (void **)items, n, err);
}

struct ws_args {
    const char *org_id, *key, *name;
    int is_default;
    store_workspace *out;
};

static int ws_create_tx(db *d, void *p, lt_err *err) {
    struct ws_args *a = p;
    return insert_workspace(d, a->org_id, a->key, a->name, a->is_default, a->out, err);
}

int store_workspace_create(db *d, const char *org_id, const char *key, const char *name, int is_default,
                           store_workspace *out, lt_err *err) {
    if (check_slug_name("workspace", key, name, err) != 0) return -1;
    struct ws_args a = {org_id, key, name, is_default, out};
    return in_tx(d, err, ws_create_tx, &a);
}

int store_workspace_by_key(db *d, const char *org_id, const char *key, store_workspace *out, lt_err *err) {
    store_workspace tmp;
    int rc = one_row(db_query(d, err, "SELECT " WS_COLS " FROM workspaces WHERE org_id = ? AND slug = ?",
                              "tt", org_id, key),
                     rd_ws, out ? out : &tmp, err, "workspace");
    if (rc != 0 && err && err->code == 404) lt_err_set(err, 404, "workspace '%.80s' not found", key);
    return rc;
}

int store_workspace_get(db *d, const char *id, store_workspace *out, lt_err *err) {
    store_workspace tmp;
    return one_row(db_query(d, err, "SELECT " WS_COLS " FROM workspaces WHERE id = ?", "t", id), rd_ws,
                   out ? out : &tmp, err, "workspace");
}

int store_workspace_default(db *d, const char *org_id, store_workspace *out, lt_err *err) {
    store_workspace tmp;
    return one_row(db_query(d, err,
                            "SELECT " WS_COLS " FROM workspaces WHERE org_id = ? "
                            "ORDER BY is_default DESC, created_at LIMIT 1",
                            "t", org_id),
                   rd_ws, out ? out : &tmp, err, "default workspace");
}

int store_workspaces_list(db *d, const char *org_id, store_workspace **items, size_t *n, lt_err *err) {
    return all_rows(
        db_query(d, err, "SELECT " WS_COLS " FROM workspaces WHERE org_id = ? ORDER BY slug", "t", org_id),
        rd_ws, sizeof **items, (void **)items, n, err);
}

int store_project_create(db *d, const char *workspace_id, const char *key, const char *name, int is_default,
                         store_project *out, lt_err *err) {
    if (check_slug_name("project", key, name, err) != 0) return -1;
    return insert_project(d, workspace_id, key, name, is_default, out, err);
}

int store_project_by_key(db *d, const char *workspace_id, const char *key, store_project *out, lt_err *err) {
    store_project tmp;
    int rc =
        one_row(db_query(d, err, "SELECT " PROJ_COLS " FROM projects WHERE workspace_id = ? AND slug = ?",
                         "tt", workspace_id, key),
                rd_proj, out ? out : &tmp, err, "project");
    if (rc != 0 && err && err->code == 404) lt_err_set(err, 404, "project '%.80s' not found", key);
    return rc;
}

int store_project_get(db *d, const char *id, store_project *out, lt_err *err) {
    store_project tmp;
    return one_row(db_query(d, err, "SELECT " PROJ_COLS " FROM projects WHERE id = ?", "t", id), rd_proj,
                   out ? out : &tmp, err, "project");
}

int store_project_default(db *d, const char *workspace_id, store_project *out, lt_err *err) {
    store_project tmp;
    return one_row(db_query(d, err,
                            "SELECT " PROJ_COLS " FROM projects WHERE workspace_id = ? "
                            "ORDER BY is_default DESC, created_at LIMIT 1",
                            "t", workspace_id),
                   rd_proj, out ? out : &tmp, err, "default project");
}

int store_projects_list(db *d, const char *workspace_id, store_project **items, size_t *n, lt_err *err) {
    return all_rows(db_query(d, err,
                             "SELECT " PROJ_COLS " FROM projects WHERE workspace_id = ? ORDER BY slug", "t",
                             workspace_id),
                    rd_proj, sizeof **items, (void **)items, n, err);
}

/* ---- memberships ---- */

static int64_t count_owners(db *d, const char *org_id, lt_err *err) {
    db_stmt *s =
        db_query(d, err, "SELECT COUNT(*) FROM memberships WHERE org_id = ? AND role = 'owner'", "t", org_id);
    if (!s) return -1;
    int rc = db_step(s, err);
    int64_t n = rc == DB_ROW ? db_column_int64(s, 0) : -1;
    db_finalize(s);
    return n;
}

struct member_args {
    const char *org_id, *user_id;
    int role;
};

static int member_set_tx(db *d, void *p, lt_err *err) {
    struct member_args *a = p;
    int cur = STORE_ROLE_NONE;
    if (store_member_role(d, a->org_id, a->user_id, &cur, err) != 0) return -1;
    if (cur == STORE_ROLE_OWNER && a->role != STORE_ROLE_OWNER) {
        int64_t owners = count_owners(d, a->org_id, err);
        if (owners < 0) return -1;
        if (owners <= 1) return lt_err_set(err, 409, "cannot demote the last owner of the organization");
    }
    if (db_run(d, err,
               "INSERT INTO memberships (org_id, user_id, role, created_at) VALUES (?,?,?,?) "
               "ON CONFLICT (org_id, user_id) DO UPDATE SET role = excluded.role",
               "ttti", a->org_id, a->user_id, store_role_name(a->role), lt_now_ms()) < 0) {
        if (err && err->code == 409) lt_err_set(err, 404, "user or organization not found");
        return -1;
    }
    return 0;
}

int store_member_set(db *d, const char *org_id, const char *user_id, int role, lt_err *err) {
    if (role < STORE_ROLE_READER || role > STORE_ROLE_OWNER)
        return lt_err_set(err, 400, "role must be owner, contributor or reader");
    struct member_args a = {org_id, user_id, role};
    return in_tx(d, err, member_set_tx, &a);
}

int store_member_role(db *d, const char *org_id, const char *user_id, int *role, lt_err *err) {
    *role = STORE_ROLE_NONE;
    db_stmt *s = db_query(d, err, "SELECT role FROM memberships WHERE org_id = ? AND user_id = ?", "tt",
                          org_id, user_id);
    if (!s) return -1;
    int rc = db_step(s, err);
    if (rc == DB_ROW) *role = store_role_parse(db_column_text(s, 0));
    db_finalize(s);
    return rc == DB_ERROR ? -1 : 0;
}

int store_access_lookup(db *d, const char *org_key, const char *user_id, const char *ws_key, store_org *org,
                        int *role, store_workspace *ws, int *ws_found, lt_err *err) {
    *role = STORE_ROLE_NONE;
    *ws_found = 0;
    memset(ws, 0, sizeof *ws);
    /* One statement instead of three (org by key, membership, workspace by key); the LEFT JOINs leave NULLs
     * where the user is not a member or the workspace does not exist. */
    db_stmt *s =
        db_query(d, err,
                 "SELECT " ORG_COLS ", m.role, w.id, w.org_id, w.slug, w.name, w.is_default, w.created_at "
                 "FROM orgs o LEFT JOIN memberships m ON m.org_id = o.id AND m.user_id = ? "
                 "LEFT JOIN workspaces w ON w.org_id = o.id AND w.slug = ? WHERE o.slug = ?",
                 "ttt", user_id, ws_key ? ws_key : "", org_key);
    if (!s) return -1;
    int rc = db_step(s, err);
    if (rc == DB_ROW) {
        read_org(s, 0, org);
        if (!db_column_is_null(s, 4)) *role = store_role_parse(db_column_text(s, 4));
        if (ws_key && !db_column_is_null(s, 5)) {
            db_column_copy(s, 5, ws->id, sizeof ws->id);
            db_column_copy(s, 6, ws->org_id, sizeof ws->org_id);
            db_column_copy(s, 7, ws->key, sizeof ws->key);
            db_column_copy(s, 8, ws->name, sizeof ws->name);
            ws->is_default = (int)db_column_int64(s, 9);
            ws->created_at = db_column_int64(s, 10);
            *ws_found = 1;
        }
    }
    db_finalize(s);
    if (rc == DB_ROW) return 0;
    if (rc == DB_DONE) lt_err_set(err, 404, "organization '%.80s' not found", org_key);
    return -1;
}

static void rd_member(db_stmt *s, void *o) {
    store_member *m = o;
    read_user(s, 0, &m->user);
    m->role = store_role_parse(db_column_text(s, 5));
    m->created_at = db_column_int64(s, 6);
}

int store_members_list(db *d, const char *org_id, store_member **items, size_t *n, lt_err *err) {
    return all_rows(
        db_query(d, err,
                 "SELECT u.id, u.email, u.username, u.full_name, u.created_at, m.role, m.created_at "
                 "FROM memberships m JOIN users u ON u.id = m.user_id WHERE m.org_id = ? "
                 "ORDER BY u.email_lc",
                 "t", org_id),
        rd_member, sizeof **items, (void **)items, n, err);
}

static int member_remove_tx(db *d, void *p, lt_err *err) {
    struct member_args *a = p;
    int cur = STORE_ROLE_NONE;
    if (store_member_role(d, a->org_id, a->user_id, &cur, err) != 0) return -1;
    if (cur == STORE_ROLE_NONE) return lt_err_set(err, 404, "user is not a member of this organization");
    if (cur == STORE_ROLE_OWNER) {
        int64_t owners = count_owners(d, a->org_id, err);
        if (owners < 0) return -1;
        if (owners <= 1) return lt_err_set(err, 409, "cannot remove the last owner of the organization");
    }
    return db_run(d, err, "DELETE FROM memberships WHERE org_id = ? AND user_id = ?", "tt", a->org_id,
                  a->user_id) < 0
               ? -1
               : 0;
}

int store_member_remove(db *d, const char *org_id, const char *user_id, lt_err *err) {
    struct member_args a = {org_id, user_id, 0};
    return in_tx(d, err, member_remove_tx, &a);
}

/* ---- API keys ---- */

static const char B62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

static void key_generate(char out[STORE_KEY_LEN]) {
    memcpy(out, "lk_", 3);
    size_t i = 3;
    while (i < STORE_KEY_LEN - 1) {
        unsigned char buf[64];
        lt_random_bytes(buf, sizeof buf);
        for (size_t j = 0; j < sizeof buf && i < STORE_KEY_LEN - 1; j++)
            if (buf[j] < 248) out[i++] = B62[buf[j] % 62]; /* 248 = 4 x 62: no modulo bias */
    }
    out[STORE_KEY_LEN - 1] = '\0';
}

int store_apikey_shape_ok(const char *s) {
    if (!s || strncmp(s, "lk_", 3) != 0 || strlen(s) != STORE_KEY_LEN - 1) return 0;
    for (const char *p = s + 3; *p; p++)
        if (!isalnum((unsigned char)*p)) return 0;
    return 1;
}

int store_apikey_create(db *d, const char *user_id, const char *name, const char *org_id,
                        const char *workspace_id, unsigned scopes, char key_out[STORE_KEY_LEN],
                        store_apikey *out, lt_err *err) {
    if (org_id && !*org_id) org_id = NULL;
    if (workspace_id && !*workspace_id) workspace_id = NULL;
    if (workspace_id && !org_id)
        return lt_err_set(err, 400, "a key limited to a workspace must name its org");
    if (scopes & ~(unsigned)STORE_SCOPES_ALL) return lt_err_set(err, 400, "unknown scope bits");
    if (!scopes) scopes = STORE_SCOPES_ALL;
    if (name && strlen(name) >= STORE_NAME_MAX)
        return lt_err_set(err, 400, "key name must be shorter than %d bytes", STORE_NAME_MAX);
    store_apikey k = {0};
    char key[STORE_KEY_LEN], hash[LT_SHA256_HEX];
    key_generate(key);
    lt_sha256_hex(key, strlen(key), hash);
    lt_uuid4(k.id);
    snprintf(k.user_id, sizeof k.user_id, "%s", user_id);
    snprintf(k.name, sizeof k.name, "%s", name && *name ? name : "default");
    snprintf(k.masked, sizeof k.masked, "lk_%.4s...%.4s", key + 3, key + STORE_KEY_LEN - 5);
    snprintf(k.org_id, sizeof k.org_id, "%s", org_id ? org_id : "");
    snprintf(k.workspace_id, sizeof k.workspace_id, "%s", workspace_id ? workspace_id : "");
    k.scopes = scopes;
    k.created_at = lt_now_ms();
    if (db_run(d, err,
               "INSERT INTO api_keys (id, user_id, name, key_hash, masked, org_id, workspace_id, scopes, "
               "created_at) "
               "VALUES (?,?,?,?,?,?,?,?,?)",
               "tttttttii", k.id, k.user_id, k.name, hash, k.masked, org_id, workspace_id, (int64_t)k.scopes,
               k.created_at) < 0) {
        if (err && err->code == 409)
            lt_err_set(err, 404, "user, organization or workspace of the key not found");
        return -1;
    }
    memcpy(key_out, key, STORE_KEY_LEN);
    if (out) *out = k;
    return 0;
}

/* ---- verified-key cache ----
 *
 * A verified key and its user are kept for KEY_CACHE_TTL_MS in a small direct-mapped table (slot chosen by
 * the key's hash), so that a busy client costs one cheap check instead of a key lookup, a user lookup and the
 * last_used_at write. An entry is used only while all of these hold: it is younger than the TTL, it belongs
 * to the same store handle, and the cache's generation has not moved since it was filled. The generation
 * moves when this process revokes a key (store_apikey_cache_clear) and whenever the calling thread's
 * connection sees that another connection committed (db_changed_elsewhere: SQLite's data_version, which also
 * catches `lathe admin revoke-key` run by another process). So a revocation is visible at once; the TTL only
 * bounds how long an entry lives. Failures are never cached. With a cache hit last_used_at is not written, so
 * it lags by up to the TTL. */

#define KEY_CACHE_SLOTS 256
#define KEY_CACHE_TTL_MS 5000

typedef struct {
    const db *d;
    uint64_t gen;
    int64_t expires; /* monotonic ms */
    char hash[LT_SHA256_HEX];
    store_apikey key;
    store_user user;
} key_slot;

static pthread_mutex_t key_cache_mu = PTHREAD_MUTEX_INITIALIZER;
static key_slot key_cache[KEY_CACHE_SLOTS];
static uint64_t key_cache_gen = 1;

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static unsigned key_slot_of(const char *hash) {
    unsigned h = 0;
    for (int i = 0; i < 8; i++)
        h = h * 31 + (unsigned char)hash[i];
    return h % KEY_CACHE_SLOTS;
}

void store_apikey_cache_clear(void) {
    pthread_mutex_lock(&key_cache_mu);
    key_cache_gen++;
    memset(key_cache, 0, sizeof key_cache);
    pthread_mutex_unlock(&key_cache_mu);
}

/* 1 and *k, *u filled when a live entry for hash exists. Checks the store for outside commits first. */
static int key_cache_get(db *d, const char *hash, store_apikey *k, store_user *u, uint64_t *gen_out) {
    int changed = db_changed_elsewhere(d);
    int64_t now = mono_ms();
    int hit = 0;
    pthread_mutex_lock(&key_cache_mu);
    if (changed) key_cache_gen++;
    *gen_out = key_cache_gen;
    key_slot *e = &key_cache[key_slot_of(hash)];
    if (e->d == d && e->gen == key_cache_gen && now < e->expires &&
        lt_ct_equal(e->hash, hash, LT_SHA256_HEX - 1)) {
        *k = e->key;
        *u = e->user;
        hit = 1;
    }
    pthread_mutex_unlock(&key_cache_mu);
    return hit;
}

/* Remembers a verification made under generation gen (ignored when the generation moved meanwhile). */
static void key_cache_put(db *d, const char *hash, uint64_t gen, const store_apikey *k, const store_user *u) {
    int64_t now = mono_ms();
    pthread_mutex_lock(&key_cache_mu);
    if (gen == key_cache_gen) {
        key_slot *e = &key_cache[key_slot_of(hash)];
        e->d = d;
        e->gen = gen;
        e->expires = now + KEY_CACHE_TTL_MS;
        memcpy(e->hash, hash, LT_SHA256_HEX);
        e->key = *k;
        e->user = *u;
    }
    pthread_mutex_unlock(&key_cache_mu);
}

int store_apikey_verify(db *d, const char *key, store_apikey *out, store_user *user, lt_err *err) {
    if (!store_apikey_shape_ok(key)) return lt_err_set(err, 401, "Authentication failed");
    char hash[LT_SHA256_HEX];
    lt_sha256_hex(key, strlen(key), hash);
    store_apikey k = {0};
    store_user u = {0};
    uint64_t gen = 0;
    if (key_cache_get(d, hash, &k, &u, &gen)) {
        if (out) *out = k;
        if (user) *user = u;
        return 0;
    }
    db_stmt *s =
        db_query(d, err, "SELECT " KEY_COLS ", key_hash FROM api_keys WHERE key_hash = ?", "t", hash);
    if (!s) return -1;
    int rc = db_step(s, err);
    int match = 0;
    if (rc == DB_ROW) {
        read_key(s, &k);
        const char *stored = db_column_text(s, 10);
        match = stored && strlen(stored) == LT_SHA256_HEX - 1 && lt_ct_equal(stored, hash, LT_SHA256_HEX - 1);
    }
    db_finalize(s);
    if (rc == DB_ERROR) return -1;
    if (!match || k.revoked_at) return lt_err_set(err, 401, "Authentication failed");
    int64_t now = lt_now_ms();
    if (now - k.last_used_at >= 1000) {
        lt_err e2 = {0};
        /* Best effort: a busy store must not turn a valid key into a failed request. */
        if (db_run(d, &e2, "UPDATE api_keys SET last_used_at = ? WHERE id = ?", "it", now, k.id) >= 0)
            k.last_used_at = now;
    }
    if (store_user_get(d, k.user_id, &u, err) != 0) {
        if (err && err->code == 404) lt_err_set(err, 401, "Authentication failed");
        return -1;
    }
    key_cache_put(d, hash, gen, &k, &u);
    if (out) *out = k;
    if (user) *user = u;
    return 0;
}

int store_apikey_get(db *d, const char *id, store_apikey *out, lt_err *err) {
    store_apikey tmp;
    return one_row(db_query(d, err, "SELECT " KEY_COLS " FROM api_keys WHERE id = ?", "t", id), rd_key,
                   out ? out : &tmp, err, "API key");
}

int store_apikeys_list(db *d, const char *user_id, store_apikey **items, size_t *n, lt_err *err) {
    return all_rows(
        db_query(d, err, "SELECT " KEY_COLS " FROM api_keys WHERE user_id = ? ORDER BY created_at DESC, id",
                 "t", user_id),
        rd_key, sizeof **items, (void **)items, n, err);
}

int store_apikey_revoke(db *d, const char *user_id, const char *key_id, lt_err *err) {
    store_apikey k;
    if (store_apikey_get(d, key_id, &k, err) != 0) return -1;
    if (user_id && strcmp(k.user_id, user_id) != 0) return lt_err_set(err, 404, "API key not found");
    if (k.revoked_at) return 0;
    int rc = db_run(d, err, "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", "it",
                    lt_now_ms(), key_id) < 0
                 ? -1
                 : 0;
    store_apikey_cache_clear();
    return rc;
}

/* ---- idempotency ---- */

struct idem_args {
    const char *key, *api_key_id, *route, *body_hash;
    int *status;
    char **body;
    int result;
};

static int idem_begin_tx(db *d, void *p, lt_err *err) {
    struct idem_args *a = p;
    int64_t now = lt_now_ms();
    db_stmt *s = db_query(d, err,
                          "SELECT body_hash, status, response, created_at FROM idempotency_keys "
                          "WHERE idem_key = ? AND api_key_id = ? AND route = ?",
                          "ttt", a->key, a->api_key_id, a->route);
    if (!s) return -1;
    int rc = db_step(s, err);
    if (rc == DB_ERROR) {
        db_finalize(s);
        return -1;
    }
    if (rc == DB_ROW && now - db_column_int64(s, 3) < STORE_IDEM_TTL_MS) {
        const char *h = db_column_text(s, 0);
        int status = (int)db_column_int64(s, 1);
        if (!h || strcmp(h, a->body_hash) != 0)
            a->result = STORE_IDEM_CONFLICT;
        else if (status == 0)
            a->result = STORE_IDEM_IN_FLIGHT;
        else {
            a->result = STORE_IDEM_REPLAY;
            *a->status = status;
            *a->body = db_column_text_dup(s, 2);
            if (!*a->body) *a->body = lt_strdup("");
        }
        db_finalize(s);
        return 0;
    }
    db_finalize(s);
    /* New, or expired: (re)reserve it. */
    if (db_run(d, err, "DELETE FROM idempotency_keys WHERE idem_key = ? AND api_key_id = ? AND route = ?",
               "ttt", a->key, a->api_key_id, a->route) < 0)
        return -1;
    if (db_run(d, err,
               "INSERT INTO idempotency_keys (idem_key, api_key_id, route, body_hash, status, response, "
               "created_at) "
               "VALUES (?,?,?,?,0,NULL,?)",
               "tttti", a->key, a->api_key_id, a->route, a->body_hash, now) < 0)
        return -1;
    a->result = STORE_IDEM_NEW;
    return 0;
}

int store_idem_begin(db *d, const char *key, const char *api_key_id, const char *route, const char *body_hash,
                     int *status, char **body, lt_err *err) {
    *status = 0;
    *body = NULL;
    struct idem_args a = {key, api_key_id, route, body_hash, status, body, -1};
    if (in_tx(d, err, idem_begin_tx, &a) != 0) {
        free(*body);
        *body = NULL;
        return -1;
    }
    return a.result;
}

int store_idem_finish(db *d, const char *key, const char *api_key_id, const char *route, int status,
                      const char *body, lt_err *err) {
    assert(status > 0);
    return db_run(
               d, err,
               "UPDATE idempotency_keys SET status = ?, response = ? WHERE idem_key = ? AND api_key_id = ? "
               "AND route = ?",
               "itttt", (int64_t)status, body ? body : "", key, api_key_id, route) < 0
               ? -1
               : 0;
}

int store_idem_abandon(db *d, const char *key, const char *api_key_id, const char *route, lt_err *err) {
    return db_run(d, err,
                  "DELETE FROM idempotency_keys WHERE idem_key = ? AND api_key_id = ? AND route = ? AND "
                  "status = 0",
                  "ttt", key, api_key_id, route) < 0
               ? -1
               : 0;
}

int64_t store_idem_purge(db *d, lt_err *err) {
    return db_run(d, err, "DELETE FROM idempotency_keys WHERE created_at < ?", "i",
                  lt_now_ms() - STORE_IDEM_TTL_MS);
}

/* ---- bootstrap ---- */

int64_t store_user_count(db *d, lt_err *err) {
    db_stmt *s = db_query(d, err, "SELECT COUNT(*) FROM users", "");
    if (!s) return -1;
    int rc = db_step(s, err);
    int64_t n = rc == DB_ROW ? db_column_int64(s, 0) : -1;
    db_finalize(s);
    return n;
}

struct boot_args {
    const char *org_key, *ws_key, *email;
    char *key_out;
    store_bootstrap_result *r;
};

static int bootstrap_tx(db *d, void *p, lt_err *err) {
    struct boot_args *a = p;
    store_bootstrap_result *r = a->r;
    if (store_user_by_email(d, a->email, &r->user, err) != 0) {
        if (err->code != 404) return -1;
        lt_err_clear(err);
        if (store_user_create(d, a->email, "admin", "Administrator", &r->user, err) != 0) return -1;
        r->created_user = 1;
    }
    if (store_org_by_key(d, a->org_key, &r->org, err) != 0) {
        if (err->code != 404) return -1;
        lt_err_clear(err);
        if (store_org_create(d, a->org_key, NULL, r->user.id, &r->org, err) != 0) return -1;
        r->created_org = 1;
    }
    if (store_workspace_by_key(d, r->org.id, a->ws_key, &r->workspace, err) != 0) {
        if (err->code != 404) return -1;
        lt_err_clear(err);
        store_workspace def;
        int has_default = store_workspace_default(d, r->org.id, &def, err) == 0;
        lt_err_clear(err);
        if (store_workspace_create(d, r->org.id, a->ws_key, NULL, !has_default, &r->workspace, err) != 0)
            return -1;
        r->created_workspace = 1;
    }
    int role = STORE_ROLE_NONE;
    if (store_member_role(d, r->org.id, r->user.id, &role, err) != 0) return -1;
    if (role != STORE_ROLE_OWNER && store_member_set(d, r->org.id, r->user.id, STORE_ROLE_OWNER, err) != 0)
        return -1;
    return store_apikey_create(d, r->user.id, "admin", NULL, NULL, 0, a->key_out, &r->key, err);
}

int store_bootstrap(db *d, const char *org_key, const char *ws_key, const char *email,
                    char key_out[STORE_KEY_LEN], store_bootstrap_result *out, lt_err *err) {
    store_bootstrap_result tmp;
    store_bootstrap_result *r = out ? out : &tmp;
    lt_err local = {0};
    if (!err) err = &local;
    memset(r, 0, sizeof *r);
    struct boot_args a = {org_key && *org_key ? org_key : "default", ws_key && *ws_key ? ws_key : "main",
                          email && *email ? email : "admin@localhost", key_out, r};
    if (!store_slug_valid(a.org_key))
        return lt_err_set(err, 400, "organization key '%.80s' must match ^[a-z0-9][a-z0-9-]{0,62}$",
                          a.org_key);
    if (!store_slug_valid(a.ws_key))
        return lt_err_set(err, 400, "workspace key '%.80s' must match ^[a-z0-9][a-z0-9-]{0,62}$", a.ws_key);
    return in_tx(d, err, bootstrap_tx, &a);
}
