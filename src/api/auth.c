/* auth.c: who is calling (authentication), what they may do (authorization), per docs/spec.md §2.1 and §3,
 * and the Idempotency-Key records, which are claimed only once a route's authorization has passed.
 *
 * Authentication reads the key from `X-API-Key: <key>` or `Authorization: Bearer <key>` and asks the store to
 * verify it (hash lookup, constant-time compare, revocation, last_used_at). A request that carries more than
 * one key (two X-API-Key headers, two Authorization headers, or both headers with different keys) is refused
 * before any key is looked at: which one "wins" would be a choice an attacker could exploit behind a proxy.
 * Every failure is a 401 `authentication_error`; unknown, malformed and revoked keys all read "Authentication
 * failed", so the caller learns nothing about which keys exist.
 *
 * Authorization follows one rule about secrecy: to a user who is not a member of an org, the org does not
 * exist (404), whether it exists or not. Once membership is established, "you may not" is a 403: a role too
 * low (readers only read), or a key limited to another org/workspace or lacking a scope.
 *
 * Identity administration (creating orgs, workspaces and projects, reading and changing members, creating and
 * listing API keys, revoking a key other than the caller's own) needs an unrestricted key: all scopes and no
 * org or workspace limit (api_authorize_admin). A scoped or limited key is a delegated credential (a CI job,
 * a worker); it must never be able to widen its own powers or anyone else's. docs/security.md has the table.
 *
 * Idempotency. The server notes the Idempotency-Key of an idempotent route (api_idem_prepare), but the record
 * is looked up ("claimed") only when the handler's authorization succeeds, inside api_authorize and
 * api_authorize_admin: a caller who may not run the route never sees, nor reserves, a stored response.
 * Records are per API key (the key id is part of their identity), so one key cannot replay another's
 * response. After the handler, api_idem_settle stores a 2xx answer or drops the reservation. */
#include <ctype.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/http_internal.h"
#include "util/log.h"

/* ---- authentication ---- */

/* Counts the request headers that can carry a key. */
struct key_headers {
    int x_api_key, authorization;
};

static enum MHD_Result count_key_headers(void *cls, enum MHD_ValueKind kind, const char *name,
                                         const char *value) {
    (void)kind;
    (void)value;
    struct key_headers *c = cls;
    if (name && !strcasecmp(name, "X-API-Key")) c->x_api_key++;
    if (name && !strcasecmp(name, "Authorization")) c->authorization++;
    return MHD_YES;
}

/* The key presented by the request, or NULL. *ambiguous is set when the request carries more than one key
 * header of a kind, or both kinds with different keys. */
static const char *presented_key(api_req *req, int *ambiguous) {
    *ambiguous = 0;
    struct key_headers c = {0, 0};
    if (req->priv && req->priv->conn)
        MHD_get_connection_values(req->priv->conn, MHD_HEADER_KIND, count_key_headers, &c);
    if (c.x_api_key > 1 || c.authorization > 1) {
        *ambiguous = 1;
        return NULL;
    }
    const char *x = api_header(req, "X-API-Key");
    const char *auth = api_header(req, "Authorization");
    const char *bearer = NULL;
    if (auth && !strncasecmp(auth, "Bearer ", 7)) {
        bearer = auth + 7;
        while (*bearer == ' ')
            bearer++;
    }
    if (x) {
        while (*x == ' ')
            x++;
    }
    if (x && *x && bearer && *bearer && strcmp(x, bearer) != 0) *ambiguous = 1;
    if (x && *x) return x;
    if (bearer && *bearer) return bearer;
    return NULL;
}

static void auth_failed(api_resp *resp, const char *detail) {
    api_error(resp, 401, "authentication_error", "%s", detail);
    api_header_add(resp, "WWW-Authenticate", "Bearer");
}

int api_authenticate(api_req *req, api_resp *resp) {
    int ambiguous = 0;
    const char *key = presented_key(req, &ambiguous);
    if (ambiguous) {
        auth_failed(resp,
                    "Authentication failed: the request carries more than one API key; send exactly one "
                    "X-API-Key or Authorization: Bearer header");
        return -1;
    }
    if (!key) {
        auth_failed(resp, "Authentication failed");
        return -1;
    }
    lt_err err = {0};
    api_principal *p = &req->principal;
    if (store_apikey_verify(req->ctx->db, key, &p->key, &p->user, &err) != 0) {
        if (err.code == 401)
            auth_failed(resp, "Authentication failed");
        else
            api_error_from(resp, &err);
        memset(p, 0, sizeof *p);
        return -1;
    }
    p->authenticated = 1;
    return 0;
}

/* ---- idempotency ---- */

int api_idem_prepare(api_req *req, api_resp *resp, int idempotent, const char *method, const char *path,
                     const char *body, size_t body_len) {
    struct api_req_private *pv = req->priv;
    pv->idem_state = API_IDEM_NONE;
    const char *ikey = idempotent && req->principal.authenticated ? api_header(req, "Idempotency-Key") : NULL;
    if (!ikey || !*ikey) return 0;
    if (strlen(ikey) > 255) {
        api_error(resp, 400, "bad_request", "Idempotency-Key must be at most 255 characters");
        return -1;
    }
    pv->idem_key = ikey;
    snprintf(pv->idem_route, sizeof pv->idem_route, "%s %.400s", method, path);
    lt_sha256_hex(body ? body : "", body ? body_len : 0, pv->idem_hash);
    pv->idem_state = API_IDEM_PENDING;
    return 0;
}

/* Replays a stored record: {"body", "location"?}. */
static void idem_replay(api_resp *r, int status, const char *record) {
    json_t *o = json_loads(record, 0, NULL);
    const char *body = json_string_value(json_object_get(o, "body"));
    const char *loc = json_string_value(json_object_get(o, "location"));
    api_raw(r, status, "application/json; charset=utf-8", body ? body : "", body ? strlen(body) : 0);
    if (loc) api_header_add(r, "Location", loc);
    api_header_add(r, "Idempotent-Replayed", "true");
    json_decref(o);
}

/* Looks the record up once the route's authorization passed. 0: run the handler (the key is reserved, or
 * there is none); -1: the answer (replay or 409) is in resp. */
static int idem_claim(api_req *req, api_resp *resp) {
    struct api_req_private *pv = req->priv;
    if (!pv || pv->idem_state != API_IDEM_PENDING) return 0;
    int status = 0;
    char *record = NULL;
    lt_err err = {0};
    int r = store_idem_begin(req->ctx->db, pv->idem_key, req->principal.key.id, pv->idem_route, pv->idem_hash,
                             &status, &record, &err);
    pv->idem_state = API_IDEM_ANSWERED;
    if (r < 0) {
        api_error_from(resp, &err);
        return -1;
    }
    if (r == STORE_IDEM_REPLAY) {
        idem_replay(resp, status, record);
        free(record);
        return -1;
    }
    if (r == STORE_IDEM_CONFLICT) {
        api_error(resp, 409, "idempotency_conflict",
                  "Idempotency-Key '%.100s' was already used with a different request body", pv->idem_key);
        return -1;
    }
    if (r == STORE_IDEM_IN_FLIGHT) {
        api_error(resp, 409, "idempotency_conflict",
                  "a request with Idempotency-Key '%.100s' is still being processed; retry later",
                  pv->idem_key);
        return -1;
    }
    pv->idem_state = API_IDEM_RESERVED;
    return 0;
}

/* A response for replay: {"body", "location"?} as text. */
static char *idem_record(const api_resp *r) {
    json_t *o = json_object();
    json_object_set_new(o, "body", json_stringn(r->body ? r->body : "", r->body ? r->body_len : 0));
    for (int i = 0; i < r->nheaders; i++)
        if (!strcasecmp(r->hname[i], "Location")) json_object_set_new(o, "location", json_string(r->hval[i]));
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return text;
}

void api_idem_settle(api_req *req, const api_resp *resp) {
    struct api_req_private *pv = req->priv;
    if (!pv) return;
    if (pv->idem_state == API_IDEM_PENDING && resp->status >= 200 && resp->status < 300)
        lt_log(LOG_ERROR, "route %s is idempotent but its handler never authorized (Idempotency-Key ignored)",
               pv->idem_route);
    if (pv->idem_state != API_IDEM_RESERVED) return;
    lt_err err = {0};
    if (resp->status >= 200 && resp->status < 300 && resp->kind == RESP_MEM) {
        char *record = idem_record(resp);
        if (store_idem_finish(req->ctx->db, pv->idem_key, req->principal.key.id, pv->idem_route, resp->status,
                              record, &err) != 0)
            lt_log(LOG_WARN, "cannot store the idempotency record: %s", err.msg);
        free(record);
    } else if (store_idem_abandon(req->ctx->db, pv->idem_key, req->principal.key.id, pv->idem_route, &err) !=
               0) {
        lt_log(LOG_WARN, "cannot drop the idempotency reservation: %s", err.msg);
    }
    pv->idem_state = API_IDEM_ANSWERED;
}

/* ---- authorization ---- */

static const char *scope_list(unsigned scope) {
    const char *n = store_scope_name(scope);
    return n ? n : "a scope";
}

/* The checks of api_authorize, without claiming the Idempotency-Key. */
static int authorize_core(api_req *req, api_resp *resp, const char *org, const char *ws, int min_role,
                          unsigned scope, store_org *org_out, store_workspace *ws_out, int *role_out) {
    api_principal *p = &req->principal;
    if (!p->authenticated) {
        api_error(resp, 401, "authentication_error", "Authentication failed");
        return -1;
    }
    lt_err err = {0};
    store_org o;
    store_workspace w;
    int role = STORE_ROLE_NONE, ws_found = 0;
    if (!org || !*org ||
        store_access_lookup(req->ctx->db, org, p->user.id, ws, &o, &role, &w, &ws_found, &err) != 0) {
        if (err.code && err.code != 404) {
            api_error_from(resp, &err);
            return -1;
        }
        api_error(resp, 404, "not_found", "organization '%.80s' not found", org ? org : "");
        return -1;
    }
    if (role == STORE_ROLE_NONE) {
        api_error(resp, 404, "not_found", "organization '%.80s' not found", org);
        return -1;
    }
    if (p->key.org_id[0] && strcmp(p->key.org_id, o.id) != 0) {
        api_error(resp, 403, "permission_denied", "this API key is limited to another organization");
        return -1;
    }
    if (ws) {
        if (!ws_found) {
            api_error(resp, 404, "not_found", "workspace '%.80s' not found in organization '%s'", ws, o.key);
            return -1;
        }
        if (p->key.workspace_id[0] && strcmp(p->key.workspace_id, w.id) != 0) {
            api_error(resp, 403, "permission_denied", "this API key is limited to another workspace");
            return -1;
        }
    } else if (p->key.workspace_id[0] && min_role > STORE_ROLE_READER) {
        /* A workspace-limited key may read org-level things but not change them. */
        api_error(resp, 403, "permission_denied", "this API key is limited to one workspace");
        return -1;
    }
    if (role < min_role) {
        api_error(resp, 403, "permission_denied", "your role in '%s' is %s; this needs %s or higher", o.key,
                  store_role_name(role), store_role_name(min_role));
        return -1;
    }
    if (scope && !(p->key.scopes & scope)) {
        api_error(resp, 403, "permission_denied", "this API key lacks the scope %s", scope_list(scope));
        return -1;
    }
    if (org_out) *org_out = o;
    if (ws_out) *ws_out = w;
    if (role_out) *role_out = role;
    return 0;
}

int api_authorize(api_req *req, api_resp *resp, const char *org, const char *ws, int min_role, unsigned scope,
                  store_org *org_out, store_workspace *ws_out, int *role_out) {
    if (authorize_core(req, resp, org, ws, min_role, scope, org_out, ws_out, role_out) != 0) return -1;
    return idem_claim(req, resp);
}

int api_key_unrestricted(const store_apikey *k) {
    return k->scopes == STORE_SCOPES_ALL && !k->org_id[0] && !k->workspace_id[0];
}

int api_authorize_admin(api_req *req, api_resp *resp, const char *org, const char *ws, int min_role,
                        store_org *org_out, store_workspace *ws_out) {
    api_principal *p = &req->principal;
    if (!p->authenticated) {
        api_error(resp, 401, "authentication_error", "Authentication failed");
        return -1;
    }
    if (org && authorize_core(req, resp, org, ws, min_role, 0, org_out, ws_out, NULL) != 0) return -1;
    if (!api_key_unrestricted(&p->key)) {
        api_error(resp, 403, "permission_denied",
                  "identity administration (orgs, workspaces, projects, members, API keys) needs an "
                  "unrestricted API key: this one is limited to %s",
                  p->key.org_id[0] || p->key.workspace_id[0] ? "an organization or workspace"
                                                             : "some scopes");
        return -1;
    }
    return idem_claim(req, resp);
}
