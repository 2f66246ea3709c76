/* identity.h: identity and tenancy in the store: users, orgs, workspaces, projects, memberships, API keys,
 * and idempotency records.
 *
 * Every function takes the shared `db *` (see db.h) and a caller-owned lt_err. Return convention: 0 on
 * success, -1 with err on failure; err->code is 404 when the thing is not found, 409 when it already exists
 * (duplicate slug/email), 400 for a bad argument (bad slug, bad role), 500/503 for store trouble. Messages
 * are written for the API's `detail` ("organization 'acme' already exists").
 *
 * Records are plain structs with fixed-size buffers (no ownership to track): fill them by passing a pointer.
 * List functions return a malloc'd array in *items (caller frees with free()) and its length in *n.
 *
 * Ids are UUID v4 strings; timestamps are ms since the epoch (format them with lt_time_fmt). */
#ifndef LATHE_STORE_IDENTITY_H
#define LATHE_STORE_IDENTITY_H

#include <stddef.h>
#include <stdint.h>

#include "store/db.h"
#include "util/err.h"
#include "util/util.h"

#define STORE_SLUG_MAX 64   /* slug chars + NUL: ^[a-z0-9][a-z0-9-]{0,62}$ */
#define STORE_NAME_MAX 256  /* display names, key names: up to 255 bytes */
#define STORE_EMAIL_MAX 256 /* emails: up to 255 bytes */

/* ---- roles and scopes ---- */

enum { STORE_ROLE_NONE = 0, STORE_ROLE_READER = 1, STORE_ROLE_CONTRIBUTOR = 2, STORE_ROLE_OWNER = 3 };
const char *store_role_name(int role); /* "reader", "contributor", "owner" ("none" for 0) */
int store_role_parse(const char *s);   /* the enum value, or STORE_ROLE_NONE when s is no role */

/* API key scopes, a bitmask. A key created without scopes has STORE_SCOPES_ALL (unrestricted). */
enum {
    STORE_SCOPE_TRAINING_READ = 1 << 0,   /* "training:read" */
    STORE_SCOPE_TRAINING_WRITE = 1 << 1,  /* "training:write" */
    STORE_SCOPE_ARTIFACTS_READ = 1 << 2,  /* "artifacts:read" */
    STORE_SCOPE_ARTIFACTS_WRITE = 1 << 3, /* "artifacts:write" */
    STORE_SCOPE_WORKER = 1 << 4,          /* "worker" */
    STORE_SCOPES_ALL = (1 << 5) - 1,
};
/* Parses one scope name; 0 when unknown. */
unsigned store_scope_parse(const char *s);
/* Name of a single scope bit; NULL for anything else. */
const char *store_scope_name(unsigned bit);
/* Parses "a,b,c" (spaces allowed) into a mask; -1 with err (400) naming the unknown scope. */
int store_scopes_parse_list(const char *csv, unsigned *mask, lt_err *err);

/* 1 when s matches ^[a-z0-9][a-z0-9-]{0,62}$ */
int store_slug_valid(const char *s);

/* ---- records ---- */

typedef struct store_user {
    char id[LT_UUID_LEN];
    char email[STORE_EMAIL_MAX];
    char username[STORE_NAME_MAX];  /* "" when unset */
    char full_name[STORE_NAME_MAX]; /* "" when unset */
    int64_t created_at;
} store_user;

typedef struct store_org {
    char id[LT_UUID_LEN];
    char key[STORE_SLUG_MAX];
    char name[STORE_NAME_MAX];
    int64_t created_at;
} store_org;

typedef struct store_workspace {
    char id[LT_UUID_LEN];
    char org_id[LT_UUID_LEN];
    char key[STORE_SLUG_MAX];
    char name[STORE_NAME_MAX];
    int is_default;
    int64_t created_at;
} store_workspace;

typedef struct store_project {
    char id[LT_UUID_LEN];
    char workspace_id[LT_UUID_LEN];
    char key[STORE_SLUG_MAX];
    char name[STORE_NAME_MAX];
    int is_default;
    int64_t created_at;
} store_project;

/* An org the user belongs to, with the role (for GET /user and GET /orgs). */
typedef struct store_org_role {
    store_org org;
    int role;
} store_org_role;

typedef struct store_member {
    store_user user;
    int role;
    int64_t created_at;
} store_member;

#define STORE_KEY_LEN 44        /* "lk_" + 40 base62 chars + NUL */
#define STORE_KEY_MASKED_LEN 16 /* "lk_abcd...wxyz" + NUL */

typedef struct store_apikey {
    char id[LT_UUID_LEN];
    char user_id[LT_UUID_LEN];
    char name[STORE_NAME_MAX];
    char masked[STORE_KEY_MASKED_LEN]; /* "lk_" + first 4 + "..." + last 4 */
    char org_id[LT_UUID_LEN];          /* "" when the key is not limited to an org */
    char workspace_id[LT_UUID_LEN];    /* "" when not limited to a workspace */
    unsigned scopes;                   /* STORE_SCOPE_* mask; STORE_SCOPES_ALL when unrestricted */
    int64_t created_at;
    int64_t last_used_at; /* 0 = never */
    int64_t revoked_at;   /* 0 = active */
} store_apikey;

/* ---- users ---- */

/* Creates a user. email is required (must contain '@'); username and full_name may be NULL. 409 when the
 * email (case-insensitive) exists. */
int store_user_create(db *d, const char *email, const char *username, const char *full_name, store_user *out,
                      lt_err *err);
int store_user_get(db *d, const char *id, store_user *out, lt_err *err);         /* 404 when absent */
int store_user_by_email(db *d, const char *email, store_user *out, lt_err *err); /* case-insensitive */

/* ---- orgs, workspaces, projects ---- */

/* Creates an org with its default workspace `main` and that workspace's default project `default`, and (when
 * owner_user_id is not NULL) makes that user its owner; all in one transaction. name NULL = key.
 * 400 for a bad slug, 409 when the key exists. */
int store_org_create(db *d, const char *key, const char *name, const char *owner_user_id, store_org *out,
                     lt_err *err);
int store_org_by_key(db *d, const char *key, store_org *out, lt_err *err); /* 404 when absent */
int store_org_get(db *d, const char *id, store_org *out, lt_err *err);
/* The orgs user_id is a member of, with roles, ordered by org key. */
int store_orgs_for_user(db *d, const char *user_id, store_org_role **items, size_t *n, lt_err *err);

/* Creates a workspace (slug unique in the org) with its default project `default`. is_default makes it the
 * org's default (only the first workspace should be). 400 bad slug, 409 exists. */
int store_workspace_create(db *d, const char *org_id, const char *key, const char *name, int is_default,
                           store_workspace *out, lt_err *err);
int store_workspace_by_key(db *d, const char *org_id, const char *key, store_workspace *out, lt_err *err);
int store_workspace_get(db *d, const char *id, store_workspace *out, lt_err *err);
int store_workspace_default(db *d, const char *org_id, store_workspace *out, lt_err *err);
int store_workspaces_list(db *d, const char *org_id, store_workspace **items, size_t *n, lt_err *err);

/* Creates a project (slug unique in the workspace). 400 bad slug, 409 exists. */
int store_project_create(db *d, const char *workspace_id, const char *key, const char *name, int is_default,
                         store_project *out, lt_err *err);
int store_project_by_key(db *d, const char *workspace_id, const char *key, store_project *out, lt_err *err);
int store_project_get(db *d, const char *id, store_project *out, lt_err *err);
int store_project_default(db *d, const char *workspace_id, store_project *out, lt_err *err);
int store_projects_list(db *d, const char *workspace_id, store_project **items, size_t *n, lt_err *err);

/* ---- memberships ---- */

/* Adds the user to the org with role, or changes the role when already a member. */
int store_member_set(db *d, const char *org_id, const char *user_id, int role, lt_err *err);
/* The user's role in the org, STORE_ROLE_NONE (and 0 returned) when not a member. */
int store_member_role(db *d, const char *org_id, const char *user_id, int *role, lt_err *err);
int store_members_list(db *d, const char *org_id, store_member **items, size_t *n, lt_err *err);
/* What authorization needs in one statement: the org by key (404 "organization ... not found" when absent),
 * the user's role in it (STORE_ROLE_NONE when not a member) and, when ws_key is non-NULL, the workspace of
 * that key in the org (*ws_found 0 when absent; *ws zeroed then and when ws_key is NULL). */
int store_access_lookup(db *d, const char *org_key, const char *user_id, const char *ws_key, store_org *org,
                        int *role, store_workspace *ws, int *ws_found, lt_err *err);
/* Removes a membership: 404 when not a member; 409 when it is the org's last owner. */
int store_member_remove(db *d, const char *org_id, const char *user_id, lt_err *err);

/* ---- API keys ---- */

/* Creates a key for user_id: "lk_" + 40 random base62 chars, written to key_out (shown once; only its
 * SHA-256 is stored). org_id/workspace_id may be NULL (unlimited); a workspace limit needs its org.
 * scopes 0 means STORE_SCOPES_ALL. out (may be NULL) receives the record. */
int store_apikey_create(db *d, const char *user_id, const char *name, const char *org_id,
                        const char *workspace_id, unsigned scopes, char key_out[STORE_KEY_LEN],
                        store_apikey *out, lt_err *err);
/* Checks a presented key: finds it by SHA-256, compares in constant time, refuses revoked keys, and updates
 * last_used_at (at most once a second per key, to spare the write lock). 401 "Authentication failed" for a
 * malformed, unknown or revoked key. A success is cached in process for up to 5 s; the cache is emptied by a
 * revocation here and by any commit of another connection or process, so a revoked key fails at once. out and
 * user (either may be NULL) receive the key and its user. */
int store_apikey_verify(db *d, const char *key, store_apikey *out, store_user *user, lt_err *err);
int store_apikey_get(db *d, const char *id, store_apikey *out, lt_err *err);
/* The user's keys, newest first, revoked ones included (revoked_at set). */
int store_apikeys_list(db *d, const char *user_id, store_apikey **items, size_t *n, lt_err *err);
/* Revokes a key. user_id non-NULL restricts to that user's keys (others: 404). Revoking twice is fine. */
int store_apikey_revoke(db *d, const char *user_id, const char *key_id, lt_err *err);
/* 1 when s has the shape of a key ("lk_" + 40 base62). */
int store_apikey_shape_ok(const char *s);
/* Empties the in-process cache of verified keys (see identity.c); revoking a key does this itself. */
void store_apikey_cache_clear(void);

/* Implemented in db.c for the caches above: 1 when another connection (another thread's, or another
 * process's) may have committed to d since the calling thread last asked, 0 when surely not. The first call
 * on a thread's connection, any error, and drivers that cannot tell answer 1. */
int db_changed_elsewhere(db *d);

/* ---- bootstrap ---- */

/* Number of users (0 on an empty store), or -1 with err. */
int64_t store_user_count(db *d, lt_err *err);

/* What store_bootstrap made or found. */
typedef struct store_bootstrap_result {
    store_user user;
    store_org org;
    store_workspace workspace;
    store_apikey key;
    int created_user, created_org, created_workspace; /* 1 when made now, 0 when found */
} store_bootstrap_result;

/* Makes sure org org_key (default "default") with workspace ws_key (default "main", with project "default")
 * and user email (default "admin@localhost") exist, makes the user an owner of the org, and creates a new
 * unrestricted API key for the user (written to key_out). Idempotent except for the new key. One
 * transaction. */
int store_bootstrap(db *d, const char *org_key, const char *ws_key, const char *email,
                    char key_out[STORE_KEY_LEN], store_bootstrap_result *out, lt_err *err);

/* ---- idempotency records (Idempotency-Key on POST create routes; kept 24 h) ----
 * A record belongs to the API key that made it (api_key_id, the caller's key id): no other key, not even one
 * of the same user, can replay it. Callers must look records up only after the route's authorization passed,
 * and must never store a response that holds a secret (POST /user/api-keys refuses Idempotency-Key). */

#define STORE_IDEM_TTL_MS (24LL * 3600 * 1000)

enum {
    STORE_IDEM_NEW = 0,       /* reserved for this request: run the handler, then store_idem_finish/abandon */
    STORE_IDEM_REPLAY = 1,    /* same key and body, finished: *status and *body hold the first response */
    STORE_IDEM_CONFLICT = 2,  /* same key, different body */
    STORE_IDEM_IN_FLIGHT = 3, /* same key and body, the first request has not finished yet */
};

/* Looks up (key, api_key_id, route) and reserves it when new. body_hash is the hex SHA-256 of the request
 * body. Returns one of STORE_IDEM_* (>= 0) or -1 with err. On REPLAY, *body is malloc'd (caller frees).
 * Records older than 24 h are ignored and replaced. */
int store_idem_begin(db *d, const char *key, const char *api_key_id, const char *route, const char *body_hash,
                     int *status, char **body, lt_err *err);
/* Stores the response of a reserved record. */
int store_idem_finish(db *d, const char *key, const char *api_key_id, const char *route, int status,
                      const char *body, lt_err *err);
/* Drops a reservation (the request failed: a retry with the same key runs again). */
int store_idem_abandon(db *d, const char *key, const char *api_key_id, const char *route, lt_err *err);
/* Deletes records older than 24 h; returns how many, or -1 with err. */
int64_t store_idem_purge(db *d, lt_err *err);

#endif
