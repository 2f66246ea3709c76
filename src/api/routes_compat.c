/* routes_compat.c: read-only routes the upstream Dreadnode SDK (`dn` CLI, dreadnode.app.api.ApiClient) calls
 * that docs/spec.md does not list, so that the unmodified SDK works against lathe.
 *
 * Before any `dn train ...` verb, the SDK validates its scope (dreadnode/app/config.py,
 * Profile.validate_scope): it reads, concurrently, GET /api/v1/user, GET /api/v1/org/{org}, and either GET
 * /api/v1/org/{org}/ws/{ws} (when a workspace is given) or GET /api/v1/org/{org}/ws (to pick the default
 * one), and with a project GET /api/v1/org/{org}/ws/{ws}/projects/{project} (a 404 there is tolerated). /user
 * is docs/spec.md's (identity routes); this file answers the other four, shaped like the SDK's pydantic
 * models (Organization, Workspace, Project). The SDK's Organization model requires sandbox-runtime fields
 * that mean nothing for lathe; they are sent as 0 with source level "platform".
 *
 * Authorization is the same as for every org route: a non-member gets 404 (the org's existence is never
 * revealed), any member may read; no key scope is needed since nothing here is training or artifact data. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "api/http.h"
#include "store/identity.h"
#include "util/json.h"
#include "util/util.h"

static json_t *workspace_json(const store_workspace *w, const store_org *o, long project_count) {
    json_t *j = json_object();
    json_object_set_new(j, "id", json_string(w->id));
    json_object_set_new(j, "name", json_string(w->name));
    json_object_set_new(j, "key", json_string(w->key));
    json_object_set_new(j, "description", json_null());
    json_object_set_new(j, "created_by", json_null());
    json_object_set_new(j, "org_id", json_string(w->org_id));
    json_object_set_new(j, "org_name", json_string(o->name));
    json_object_set_new(j, "is_active", json_true());
    json_object_set_new(j, "is_default", json_boolean(w->is_default));
    json_object_set_new(j, "project_count", project_count >= 0 ? json_integer(project_count) : json_null());
    json_object_set_new(j, "created_at", lt_json_time(w->created_at));
    json_object_set_new(j, "updated_at", lt_json_time(w->created_at));
    return j;
}

static long count_projects(db *d, const char *ws_id) {
    store_project *items = NULL;
    size_t n = 0;
    lt_err err = {0};
    if (store_projects_list(d, ws_id, &items, &n, &err)) return -1;
    free(items);
    return (long)n;
}

/* GET /api/v1/org/{org} */
static int get_org(api_req *req, api_resp *resp) {
    store_org org;
    int role = 0;
    if (api_authorize(req, resp, api_param(req, "org"), NULL, STORE_ROLE_READER, 0, &org, NULL, &role))
        return 0;
    store_member *members = NULL;
    size_t nmembers = 0;
    lt_err err = {0};
    if (store_members_list(req->ctx->db, org.id, &members, &nmembers, &err)) {
        api_error_from(resp, &err);
        return 0;
    }
    free(members);
    json_t *j = json_object();
    json_object_set_new(j, "id", json_string(org.id));
    json_object_set_new(j, "name", json_string(org.name));
    json_object_set_new(j, "key", json_string(org.key));
    json_object_set_new(j, "description", json_null());
    json_object_set_new(j, "is_active", json_true());
    json_object_set_new(j, "allow_external_invites", json_false());
    json_object_set_new(j, "max_sandbox_runtime_seconds", json_null());
    json_object_set_new(j, "effective_max_sandbox_runtime_seconds", json_integer(0));
    json_object_set_new(j, "max_sandbox_runtime_source_level", json_string("platform"));
    json_object_set_new(j, "default_sandbox_runtime_seconds", json_null());
    json_object_set_new(j, "effective_default_sandbox_runtime_seconds", json_integer(0));
    json_object_set_new(j, "default_sandbox_runtime_source_level", json_string("platform"));
    json_object_set_new(j, "platform_max_sandbox_runtime_seconds", json_integer(0));
    json_object_set_new(j, "platform_default_sandbox_runtime_seconds", json_integer(0));
    json_object_set_new(j, "max_members", json_integer(0));
    json_object_set_new(j, "member_count", json_integer((json_int_t)nmembers));
    json_object_set_new(j, "role", json_string(store_role_name(role)));
    json_object_set_new(j, "can_manage_members", json_boolean(role >= STORE_ROLE_OWNER));
    json_t *perm = json_object();
    json_object_set_new(perm, "create_workspace", json_boolean(role >= STORE_ROLE_CONTRIBUTOR));
    json_object_set_new(perm, "manage_members", json_boolean(role >= STORE_ROLE_OWNER));
    json_object_set_new(j, "permissions", perm);
    json_object_set_new(j, "created_at", lt_json_time(org.created_at));
    json_object_set_new(j, "updated_at", lt_json_time(org.created_at));
    api_json(resp, 200, j);
    return 0;
}

/* GET /api/v1/org/{org}/ws */
static int list_ws(api_req *req, api_resp *resp) {
    store_org org;
    if (api_authorize(req, resp, api_param(req, "org"), NULL, STORE_ROLE_READER, 0, &org, NULL, NULL))
        return 0;
    store_workspace *items = NULL;
    size_t n = 0;
    lt_err err = {0};
    if (store_workspaces_list(req->ctx->db, org.id, &items, &n, &err)) {
        api_error_from(resp, &err);
        return 0;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr,
                              workspace_json(&items[i], &org, count_projects(req->ctx->db, items[i].id)));
    free(items);
    json_t *j = json_object();
    json_object_set_new(j, "workspaces", arr);
    api_json(resp, 200, j);
    return 0;
}

/* GET /api/v1/org/{org}/ws/{ws} */
static int get_ws(api_req *req, api_resp *resp) {
    store_org org;
    store_workspace ws;
    if (api_authorize(req, resp, api_param(req, "org"), api_param(req, "ws"), STORE_ROLE_READER, 0, &org, &ws,
                      NULL))
        return 0;
    api_json(resp, 200, workspace_json(&ws, &org, count_projects(req->ctx->db, ws.id)));
    return 0;
}

/* GET /api/v1/org/{org}/ws/{ws}/projects/{project} */
static int get_project(api_req *req, api_resp *resp) {
    store_workspace ws;
    if (api_authorize(req, resp, api_param(req, "org"), api_param(req, "ws"), STORE_ROLE_READER, 0, NULL, &ws,
                      NULL))
        return 0;
    store_project p;
    lt_err err = {0};
    if (store_project_by_key(req->ctx->db, ws.id, api_param(req, "project"), &p, &err)) {
        if (err.code == 404)
            api_error(resp, 404, "not_found", "project '%s' not found in workspace '%s'",
                      api_param(req, "project"), ws.key);
        else
            api_error_from(resp, &err);
        return 0;
    }
    json_t *j = json_object();
    json_object_set_new(j, "id", json_string(p.id));
    json_object_set_new(j, "key", json_string(p.key));
    json_object_set_new(j, "name", json_string(p.name));
    json_object_set_new(j, "description", json_null());
    json_object_set_new(j, "workspace_id", json_string(p.workspace_id));
    json_object_set_new(j, "is_default", json_boolean(p.is_default));
    json_object_set_new(j, "created_at", lt_json_time(p.created_at));
    json_object_set_new(j, "updated_at", lt_json_time(p.created_at));
    api_json(resp, 200, j);
    return 0;
}

void api_routes_compat(api_router *r) {
    api_route(r, "GET", "/api/v1/org/{org}", get_org, 0, 0);
    api_route(r, "GET", "/api/v1/org/{org}/ws", list_ws, 0, 0);
    api_route(r, "GET", "/api/v1/org/{org}/ws/{ws}", get_ws, 0, 0);
    api_route(r, "GET", "/api/v1/org/{org}/ws/{ws}/projects/{project}", get_project, 0, 0);
}
