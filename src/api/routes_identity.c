/* routes_identity.c: the identity and tenancy routes of docs/spec.md §3: the caller (/user), API keys, orgs,
 * workspaces, projects and members.
 *
 * Each handler reads like the route table: authorize (api_authorize gives 404 to non-members and 403 to
 * roles that are too low), validate the body (every problem is one errors[] item; unknown fields are
 * `extra_forbidden`), call the store, render. Reads need membership; writes under an org need the owner
 * role.
 *
 * Identity administration needs an unrestricted key (api_authorize_admin: all scopes, no org or workspace
 * limit): creating orgs, workspaces and projects; listing, adding, changing and removing members; creating
 * and listing API keys; revoking any key but the caller's own. A scoped or limited key may read what it
 * needs to use its scopes (GET /user, /orgs, workspaces and projects, within its limits) and revoke itself.
 * POST /user/api-keys refuses Idempotency-Key (400): its answer holds the new key's plaintext, which must
 * never be stored.
 *
 * Records render with their slugs under "key" and timestamps as RFC 3339 strings. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/http.h"
#include "util/json.h"
#include "util/log.h"
#include "util/util.h"

/* ---- rendering ---- */

static json_t *user_json(const store_user *u) {
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(u->id));
    json_object_set_new(o, "email", json_string(u->email));
    /* the upstream SDK's User model reads email_address (docs/api.md, compatibility) */
    json_object_set_new(o, "email_address", json_string(u->email));
    json_object_set_new(o, "username", lt_json_str_or_null(u->username));
    json_object_set_new(o, "full_name", lt_json_str_or_null(u->full_name));
    json_object_set_new(o, "created_at", lt_json_time_or_null(u->created_at));
    return o;
}

static json_t *org_json(const store_org *o, int role) {
    json_t *j = json_object();
    json_object_set_new(j, "id", json_string(o->id));
    json_object_set_new(j, "key", json_string(o->key));
    json_object_set_new(j, "name", json_string(o->name));
    if (role) json_object_set_new(j, "role", json_string(store_role_name(role)));
    json_object_set_new(j, "created_at", lt_json_time_or_null(o->created_at));
    return j;
}

static json_t *ws_json(const store_workspace *w, const char *org_key) {
    json_t *j = json_object();
    json_object_set_new(j, "id", json_string(w->id));
    json_object_set_new(j, "key", json_string(w->key));
    json_object_set_new(j, "name", json_string(w->name));
    json_object_set_new(j, "organization_id", json_string(w->org_id));
    if (org_key) json_object_set_new(j, "org", json_string(org_key));
    json_object_set_new(j, "is_default", json_boolean(w->is_default));
    json_object_set_new(j, "created_at", lt_json_time_or_null(w->created_at));
    return j;
}

static json_t *project_json(const store_project *p, const char *ws_key) {
    json_t *j = json_object();
    json_object_set_new(j, "id", json_string(p->id));
    json_object_set_new(j, "key", json_string(p->key));
    json_object_set_new(j, "name", json_string(p->name));
    json_object_set_new(j, "workspace_id", json_string(p->workspace_id));
    if (ws_key) json_object_set_new(j, "workspace", json_string(ws_key));
    json_object_set_new(j, "is_default", json_boolean(p->is_default));
    json_object_set_new(j, "created_at", lt_json_time_or_null(p->created_at));
    return j;
}

static json_t *scopes_json(unsigned mask) {
    json_t *a = json_array();
    for (unsigned bit = 1; bit <= STORE_SCOPE_WORKER; bit <<= 1)
        if (mask & bit) json_array_append_new(a, json_string(store_scope_name(bit)));
    return a;
}

/* A key as listed: org/workspace slugs resolved (null when not limited). */
static json_t *key_json(db *d, const store_apikey *k) {
    json_t *j = json_object();
    json_object_set_new(j, "id", json_string(k->id));
    json_object_set_new(j, "masked_key", json_string(k->masked));
    json_object_set_new(j, "name", json_string(k->name));
    store_org o;
    store_workspace w;
    lt_err err = {0};
    json_object_set_new(j, "org",
                        k->org_id[0] && store_org_get(d, k->org_id, &o, &err) == 0 ? json_string(o.key)
                                                                                   : json_null());
    json_object_set_new(j, "workspace",
                        k->workspace_id[0] && store_workspace_get(d, k->workspace_id, &w, &err) == 0
                            ? json_string(w.key)
                            : json_null());
    json_object_set_new(j, "scopes", scopes_json(k->scopes));
    json_object_set_new(j, "created_at", lt_json_time_or_null(k->created_at));
    json_object_set_new(j, "last_used_at", lt_json_time_or_null(k->last_used_at));
    json_object_set_new(j, "revoked_at", lt_json_time_or_null(k->revoked_at));
    return j;
}

static json_t *items(json_t *arr) {
    json_t *o = json_object();
    json_object_set_new(o, "total", json_integer((json_int_t)json_array_size(arr)));
    json_object_set_new(o, "items", arr);
    return o;
}

/* ---- body validation ---- */

/* The body as an object, or NULL after adding an error (missing body / not an object). */
static json_t *body_object(api_req *req, json_t *errors) {
    if (!req->json) {
        api_verr_add(errors, api_loc("body", NULL), "missing", "a JSON object body is required");
        return NULL;
    }
    if (!json_is_object(req->json)) {
        api_verr_add(errors, api_loc("body", NULL), "type_error", "must be a JSON object");
        return NULL;
    }
    return req->json;
}

/* A string field: required or optional (absent and null are the same), at most maxlen bytes. Returns the
 * value or NULL (after adding an error when it is required or of the wrong type). */
static const char *str_field(json_t *obj, const char *name, int required, size_t maxlen, json_t *errors) {
    json_t *v = obj ? json_object_get(obj, name) : NULL;
    if (!v || json_is_null(v)) {
        if (required && obj) api_verr_add(errors, api_loc("body", name, NULL), "missing", "field required");
        return NULL;
    }
    if (!json_is_string(v)) {
        api_verr_add(errors, api_loc("body", name, NULL), "type_error", "must be a string");
        return NULL;
    }
    const char *s = json_string_value(v);
    if (strlen(s) > maxlen) {
        api_verr_add(errors, api_loc("body", name, NULL), "string_too_long", "must be at most %zu characters",
                     maxlen);
        return NULL;
    }
    if (required && !*s) {
        api_verr_add(errors, api_loc("body", name, NULL), "value_error", "must not be empty");
        return NULL;
    }
    return s;
}

static const char *slug_field(json_t *obj, const char *name, int required, json_t *errors) {
    const char *s = str_field(obj, name, required, 63, errors);
    if (s && !store_slug_valid(s)) {
        api_verr_add(errors, api_loc("body", name, NULL), "string_pattern",
                     "must match ^[a-z0-9][a-z0-9-]{0,62}$");
        return NULL;
    }
    return s;
}

static int reject(api_resp *resp, json_t *errors) {
    if (json_array_size(errors) == 0) {
        json_decref(errors);
        return 0;
    }
    api_validation_error(resp, errors);
    return -1;
}

/* ---- /api/v1/user ---- */

static int h_user(api_req *req, api_resp *resp) {
    db *d = req->ctx->db;
    lt_err err = {0};
    store_org_role *orgs = NULL;
    size_t n = 0;
    if (store_orgs_for_user(d, req->principal.user.id, &orgs, &n, &err) != 0) {
        api_error_from(resp, &err);
        return 0;
    }
    json_t *o = user_json(&req->principal.user);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        /* A key limited to one org sees that org only (as in GET /orgs). */
        if (req->principal.key.org_id[0] && strcmp(req->principal.key.org_id, orgs[i].org.id) != 0) continue;
        json_array_append_new(arr, org_json(&orgs[i].org, orgs[i].role));
    }
    free(orgs);
    json_object_set_new(o, "orgs", arr);
    json_object_set_new(o, "api_key", key_json(d, &req->principal.key));
    api_json(resp, 200, o);
    return 0;
}

/* ---- API keys ---- */

static const char *const KEY_FIELDS[] = {"name", "org", "workspace", "scopes", NULL};

static int h_keys_create(api_req *req, api_resp *resp) {
    db *d = req->ctx->db;
    const api_principal *p = &req->principal;
    if (api_authorize_admin(req, resp, NULL, NULL, STORE_ROLE_NONE, NULL, NULL) != 0) return 0;
    const char *ikey = api_header(req, "Idempotency-Key");
    if (ikey && *ikey) {
        api_error(
            resp, 400, "bad_request",
            "POST /api/v1/user/api-keys does not take an Idempotency-Key: its answer holds the new key, "
            "which is never stored; drop the header (a retried create makes a second key: revoke the "
            "extra one)");
        return 0;
    }
    json_t *errors = json_array();
    json_t *body = body_object(req, errors);
    json_t *prefix = api_loc("body", NULL);
    api_verr_extra_fields(errors, body, KEY_FIELDS, prefix);
    json_decref(prefix);
    const char *name = str_field(body, "name", 1, STORE_NAME_MAX - 1, errors);
    const char *org = slug_field(body, "org", 0, errors);
    const char *ws = slug_field(body, "workspace", 0, errors);
    unsigned scopes = 0;
    json_t *sc = body ? json_object_get(body, "scopes") : NULL;
    if (sc && !json_is_null(sc)) {
        if (!json_is_array(sc)) {
            api_verr_add(errors, api_loc("body", "scopes", NULL), "type_error",
                         "must be a list of scope names");
        } else {
            size_t i;
            json_t *v;
            json_array_foreach(sc, i, v) {
                unsigned bit = json_is_string(v) ? store_scope_parse(json_string_value(v)) : 0;
                if (!bit) {
                    json_t *loc = api_loc("body", "scopes", NULL);
                    json_array_append_new(loc, json_integer((json_int_t)i));
                    api_verr_add(
                        errors, loc, "enum",
                        "must be one of training:read, training:write, artifacts:read, artifacts:write, "
                        "worker");
                }
                scopes |= bit;
            }
            if (json_array_size(sc) == 0)
                api_verr_add(errors, api_loc("body", "scopes", NULL), "value_error",
                             "must name at least one scope (omit it for an unrestricted key)");
        }
    }
    if (ws && !org)
        api_verr_add(errors, api_loc("body", "workspace", NULL), "value_error", "workspace needs org");
    if (reject(resp, errors)) return 0;

    store_org o;
    store_workspace w;
    memset(&o, 0, sizeof o);
    memset(&w, 0, sizeof w);
    lt_err err = {0};
    if (org) {
        int role = STORE_ROLE_NONE;
        if (store_org_by_key(d, org, &o, &err) != 0 ||
            store_member_role(d, o.id, p->user.id, &role, &err) != 0 || role == STORE_ROLE_NONE) {
            if (err.code && err.code != 404) {
                api_error_from(resp, &err);
                return 0;
            }
            json_t *e = json_array();
            api_verr_add(e, api_loc("body", "org", NULL), "not_found", "organization '%s' not found", org);
            api_error_with(resp, 404, "not_found", e, "organization '%s' not found", org);
            return 0;
        }
        if (ws && store_workspace_by_key(d, o.id, ws, &w, &err) != 0) {
            if (err.code != 404) {
                api_error_from(resp, &err);
                return 0;
            }
            json_t *e = json_array();
            api_verr_add(e, api_loc("body", "workspace", NULL), "not_found", "workspace '%s' not found", ws);
            api_error_with(resp, 404, "not_found", e, "workspace '%s' not found in organization '%s'", ws,
                           org);
            return 0;
        }
    }
    unsigned want = scopes ? scopes : STORE_SCOPES_ALL;
    char key[STORE_KEY_LEN];
    store_apikey k;
    if (store_apikey_create(d, p->user.id, name, org ? o.id : NULL, ws ? w.id : NULL, want, key, &k, &err) !=
        0) {
        api_error_from(resp, &err);
        return 0;
    }
    json_t *j = json_object();
    json_object_set_new(j, "id", json_string(k.id));
    json_object_set_new(j, "key", json_string(key));
    json_object_set_new(j, "masked_key", json_string(k.masked));
    json_object_set_new(j, "name", json_string(k.name));
    json_object_set_new(j, "org", lt_json_str_or_null(org));
    json_object_set_new(j, "workspace", lt_json_str_or_null(ws));
    json_object_set_new(j, "scopes", scopes_json(k.scopes));
    json_object_set_new(j, "created_at", lt_json_time_or_null(k.created_at));
    lt_log(LOG_INFO, "api key %s created for user %s", k.id, p->user.id);
    api_json(resp, 201, j);
    return 0;
}

static int h_keys_list(api_req *req, api_resp *resp) {
    db *d = req->ctx->db;
    if (api_authorize_admin(req, resp, NULL, NULL, STORE_ROLE_NONE, NULL, NULL) != 0) return 0;
    lt_err err = {0};
    store_apikey *keys = NULL;
    size_t n = 0;
    if (store_apikeys_list(d, req->principal.user.id, &keys, &n, &err) != 0) {
        api_error_from(resp, &err);
        return 0;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, key_json(d, &keys[i]));
    free(keys);
    api_json(resp, 200, items(arr));
    return 0;
}

static int h_keys_delete(api_req *req, api_resp *resp) {
    const char *id = api_param(req, "id");
    lt_err err = {0};
    /* Any key may revoke itself; revoking another key is identity administration. */
    if (!(id && !strcmp(id, req->principal.key.id)) &&
        api_authorize_admin(req, resp, NULL, NULL, STORE_ROLE_NONE, NULL, NULL) != 0)
        return 0;
    if (!lt_is_uuid(id)) {
        api_error(resp, 404, "not_found", "API key not found");
        return 0;
    }
    if (store_apikey_revoke(req->ctx->db, req->principal.user.id, id, &err) != 0) {
        if (err.code == 404)
            api_error(resp, 404, "not_found", "API key not found");
        else
            api_error_from(resp, &err);
        return 0;
    }
    lt_log(LOG_INFO, "api key %s revoked", id);
    api_no_content(resp);
    return 0;
}

/* ---- orgs ---- */

static const char *const KEYNAME_FIELDS[] = {"key", "name", NULL};

static int h_orgs_list(api_req *req, api_resp *resp) {
    db *d = req->ctx->db;
    lt_err err = {0};
    store_org_role *orgs = NULL;
    size_t n = 0;
    if (store_orgs_for_user(d, req->principal.user.id, &orgs, &n, &err) != 0) {
        api_error_from(resp, &err);
        return 0;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        /* A key limited to one org sees that org only. */
        if (req->principal.key.org_id[0] && strcmp(req->principal.key.org_id, orgs[i].org.id) != 0) continue;
        json_array_append_new(arr, org_json(&orgs[i].org, orgs[i].role));
    }
    free(orgs);
    api_json(resp, 200, items(arr));
    return 0;
}

/* Parses {key, name}; returns 0 and the fields, or -1 with the 422 written. */
static int key_name_body(api_req *req, api_resp *resp, const char **key, const char **name) {
    json_t *errors = json_array();
    json_t *body = body_object(req, errors);
    json_t *prefix = api_loc("body", NULL);
    api_verr_extra_fields(errors, body, KEYNAME_FIELDS, prefix);
    json_decref(prefix);
    *key = slug_field(body, "key", 1, errors);
    *name = str_field(body, "name", 0, STORE_NAME_MAX - 1, errors);
    return reject(resp, errors);
}

static int h_orgs_create(api_req *req, api_resp *resp) {
    if (api_authorize_admin(req, resp, NULL, NULL, STORE_ROLE_NONE, NULL, NULL) != 0) return 0;
    const char *key, *name;
    if (key_name_body(req, resp, &key, &name) != 0) return 0;
    lt_err err = {0};
    store_org o;
    if (store_org_create(req->ctx->db, key, name, req->principal.user.id, &o, &err) != 0) {
        api_error_from(resp, &err);
        return 0;
    }
    lt_log(LOG_INFO, "org %s created by %s", o.key, req->principal.user.id);
    api_json(resp, 201, org_json(&o, STORE_ROLE_OWNER));
    return 0;
}

/* ---- workspaces, projects ---- */

static int h_ws_list(api_req *req, api_resp *resp) {
    store_org o;
    if (api_authorize(req, resp, api_param(req, "org"), NULL, STORE_ROLE_READER, 0, &o, NULL, NULL) != 0)
        return 0;
    lt_err err = {0};
    store_workspace *ws = NULL;
    size_t n = 0;
    if (store_workspaces_list(req->ctx->db, o.id, &ws, &n, &err) != 0) {
        api_error_from(resp, &err);
        return 0;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        if (req->principal.key.workspace_id[0] && strcmp(req->principal.key.workspace_id, ws[i].id) != 0)
            continue;
        json_array_append_new(arr, ws_json(&ws[i], o.key));
    }
    free(ws);
    api_json(resp, 200, items(arr));
    return 0;
}

static int h_ws_create(api_req *req, api_resp *resp) {
    store_org o;
    if (api_authorize_admin(req, resp, api_param(req, "org"), NULL, STORE_ROLE_OWNER, &o, NULL) != 0)
        return 0;
    const char *key, *name;
    if (key_name_body(req, resp, &key, &name) != 0) return 0;
    lt_err err = {0};
    store_workspace w;
    if (store_workspace_create(req->ctx->db, o.id, key, name, 0, &w, &err) != 0) {
        api_error_from(resp, &err);
        return 0;
    }
    api_json(resp, 201, ws_json(&w, o.key));
    return 0;
}

static int h_projects_list(api_req *req, api_resp *resp) {
    store_workspace w;
    if (api_authorize(req, resp, api_param(req, "org"), api_param(req, "ws"), STORE_ROLE_READER, 0, NULL, &w,
                      NULL) != 0)
        return 0;
    lt_err err = {0};
    store_project *ps = NULL;
    size_t n = 0;
    if (store_projects_list(req->ctx->db, w.id, &ps, &n, &err) != 0) {
        api_error_from(resp, &err);
        return 0;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, project_json(&ps[i], w.key));
    free(ps);
    api_json(resp, 200, items(arr));
    return 0;
}

static int h_projects_create(api_req *req, api_resp *resp) {
    store_workspace w;
    if (api_authorize_admin(req, resp, api_param(req, "org"), api_param(req, "ws"), STORE_ROLE_OWNER, NULL,
                            &w) != 0)
        return 0;
    const char *key, *name;
    if (key_name_body(req, resp, &key, &name) != 0) return 0;
    lt_err err = {0};
    store_project p;
    if (store_project_create(req->ctx->db, w.id, key, name, 0, &p, &err) != 0) {
        api_error_from(resp, &err);
        return 0;
    }
    api_json(resp, 201, project_json(&p, w.key));
    return 0;
}

/* ---- members ---- */

static json_t *member_json(const store_user *u, int role, int64_t since) {
    json_t *j = json_object();
    json_object_set_new(j, "user_id", json_string(u->id));
    json_object_set_new(j, "email", json_string(u->email));
    json_object_set_new(j, "username", lt_json_str_or_null(u->username));
    json_object_set_new(j, "full_name", lt_json_str_or_null(u->full_name));
    json_object_set_new(j, "role", json_string(store_role_name(role)));
    json_object_set_new(j, "created_at", lt_json_time_or_null(since));
    return j;
}

static int h_members_list(api_req *req, api_resp *resp) {
    store_org o;
    if (api_authorize_admin(req, resp, api_param(req, "org"), NULL, STORE_ROLE_READER, &o, NULL) != 0)
        return 0;
    lt_err err = {0};
    store_member *ms = NULL;
    size_t n = 0;
    if (store_members_list(req->ctx->db, o.id, &ms, &n, &err) != 0) {
        api_error_from(resp, &err);
        return 0;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, member_json(&ms[i].user, ms[i].role, ms[i].created_at));
    free(ms);
    api_json(resp, 200, items(arr));
    return 0;
}

static const char *const MEMBER_FIELDS[] = {"email", "role", NULL};

static int h_members_add(api_req *req, api_resp *resp) {
    store_org o;
    if (api_authorize_admin(req, resp, api_param(req, "org"), NULL, STORE_ROLE_OWNER, &o, NULL) != 0)
        return 0;
    db *d = req->ctx->db;
    json_t *errors = json_array();
    json_t *body = body_object(req, errors);
    json_t *prefix = api_loc("body", NULL);
    api_verr_extra_fields(errors, body, MEMBER_FIELDS, prefix);
    json_decref(prefix);
    const char *email = str_field(body, "email", 1, STORE_EMAIL_MAX - 1, errors);
    const char *role_s = str_field(body, "role", 1, 32, errors);
    if (email && !strchr(email, '@'))
        api_verr_add(errors, api_loc("body", "email", NULL), "value_error", "must be an email address");
    int role = role_s ? store_role_parse(role_s) : STORE_ROLE_NONE;
    if (role_s && role == STORE_ROLE_NONE)
        api_verr_add(errors, api_loc("body", "role", NULL), "enum",
                     "must be one of owner, contributor, reader");
    if (reject(resp, errors)) return 0;
    lt_err err = {0};
    store_user u;
    if (store_user_by_email(d, email, &u, &err) != 0) {
        if (err.code != 404) {
            api_error_from(resp, &err);
            return 0;
        }
        /* Adding someone unknown creates their user; `lathe admin create-key` then gives them a key. */
        lt_err_clear(&err);
        if (store_user_create(d, email, NULL, NULL, &u, &err) != 0) {
            api_error_from(resp, &err);
            return 0;
        }
    }
    int cur = STORE_ROLE_NONE;
    if (store_member_role(d, o.id, u.id, &cur, &err) != 0) {
        api_error_from(resp, &err);
        return 0;
    }
    if (cur == role) {
        api_error(resp, 409, "conflict", "%s is already a member of '%s' with role %s", email, o.key,
                  store_role_name(role));
        return 0;
    }
    if (store_member_set(d, o.id, u.id, role, &err) != 0) {
        api_error_from(resp, &err);
        return 0;
    }
    api_json(resp, cur == STORE_ROLE_NONE ? 201 : 200, member_json(&u, role, lt_now_ms()));
    return 0;
}

static int h_members_remove(api_req *req, api_resp *resp) {
    store_org o;
    if (api_authorize_admin(req, resp, api_param(req, "org"), NULL, STORE_ROLE_OWNER, &o, NULL) != 0)
        return 0;
    const char *uid = api_param(req, "user_id");
    lt_err err = {0};
    if (!lt_is_uuid(uid)) {
        api_error(resp, 404, "not_found", "user is not a member of this organization");
        return 0;
    }
    if (store_member_remove(req->ctx->db, o.id, uid, &err) != 0) {
        api_error_from(resp, &err);
        return 0;
    }
    api_no_content(resp);
    return 0;
}

void api_routes_identity(api_router *r) {
    api_route(r, "GET", "/api/v1/user", h_user, 0, 0);
    api_route(r, "GET", "/api/v1/user/api-keys", h_keys_list, 0, 0);
    api_route(r, "POST", "/api/v1/user/api-keys", h_keys_create, 0, 0); /* Idempotency-Key: 400 */
    api_route(r, "DELETE", "/api/v1/user/api-keys/{id}", h_keys_delete, 0, 0);
    api_route(r, "GET", "/api/v1/orgs", h_orgs_list, 0, 0);
    api_route(r, "POST", "/api/v1/orgs", h_orgs_create, API_IDEMPOTENT, 0);
    api_route(r, "GET", "/api/v1/org/{org}/workspaces", h_ws_list, 0, 0);
    api_route(r, "POST", "/api/v1/org/{org}/workspaces", h_ws_create, API_IDEMPOTENT, 0);
    api_route(r, "GET", "/api/v1/org/{org}/ws/{ws}/projects", h_projects_list, 0, 0);
    api_route(r, "POST", "/api/v1/org/{org}/ws/{ws}/projects", h_projects_create, API_IDEMPOTENT, 0);
    api_route(r, "GET", "/api/v1/org/{org}/members", h_members_list, 0, 0);
    api_route(r, "POST", "/api/v1/org/{org}/members", h_members_add, 0, 0);
    api_route(r, "DELETE", "/api/v1/org/{org}/members/{user_id}", h_members_remove, 0, 0);
}
