/* auth.c: who is calling (authentication) and what they may do (authorization), per SPEC §2.1 and §3.
 *
 * Authentication reads the key from `X-API-Key: <key>` or `Authorization: Bearer <key>` (either works; when
 * both are present they must agree) and asks the store to verify it (hash lookup, constant-time compare,
 * revocation, last_used_at). Every failure is the same 401 "Authentication failed": the caller learns nothing
 * about which keys exist.
 *
 * Authorization follows one rule about secrecy: to a user who is not a member of an org, the org does not
 * exist (404), whether it exists or not. Once membership is established, "you may not" is a 403: a role too
 * low (readers only read), or a key limited to another org/workspace or lacking a scope. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "api/http_internal.h"
#include "util/log.h"

/* The key presented by the request, or NULL. *conflict is set when both headers carry different keys. */
static const char *presented_key(api_req *req, int *conflict) {
    *conflict = 0;
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
    if (x && *x && bearer && *bearer && strcmp(x, bearer) != 0) *conflict = 1;
    if (x && *x) return x;
    if (bearer && *bearer) return bearer;
    return NULL;
}

int api_authenticate(api_req *req, api_resp *resp) {
    int conflict = 0;
    const char *key = presented_key(req, &conflict);
    if (!key || conflict) {
        api_error(resp, 401, "authentication_error", "Authentication failed");
        api_header_add(resp, "WWW-Authenticate", "Bearer");
        return -1;
    }
    lt_err err = {0};
    api_principal *p = &req->principal;
    if (store_apikey_verify(req->ctx->db, key, &p->key, &p->user, &err) != 0) {
        if (err.code == 401) {
            api_error(resp, 401, "authentication_error", "Authentication failed");
            api_header_add(resp, "WWW-Authenticate", "Bearer");
        } else {
            api_error_from(resp, &err);
        }
        memset(p, 0, sizeof *p);
        return -1;
    }
    p->authenticated = 1;
    return 0;
}

static const char *scope_list(unsigned scope) {
    const char *n = store_scope_name(scope);
    return n ? n : "a scope";
}

int api_authorize(api_req *req, api_resp *resp, const char *org, const char *ws, int min_role, unsigned scope,
                  store_org *org_out, store_workspace *ws_out, int *role_out) {
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
