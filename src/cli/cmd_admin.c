/* cmd_admin.c: `lathe admin VERB`: bootstrap and recovery, straight on the server's store (docs/spec.md §3).
 *
 * These verbs do not talk HTTP: they open the same store `lathe serve` uses (same --db / --data-dir flags
 * and LATHE_DB / LATHE_DATA_DIR twins), migrate it if needed, and change it. That is what an operator needs
 * when no API key exists yet or the only one was lost. SQLite's busy waiting lets them run while the server
 * is up. Each verb prints what it created (one line), or with --json one JSON object.
 *
 *   init [--org KEY] [--workspace KEY] [--email EMAIL]   idempotent; prints a new owner key (admin.key)
 *   create-org --key KEY [--name NAME]
 *   create-user --email EMAIL [--username NAME] [--full-name NAME]
 *   grant --email EMAIL --org KEY --role owner|contributor|reader
 *   create-key --email EMAIL [--name NAME] [--org KEY [--workspace KEY]] [--scopes a,b]
 *   revoke-key --id ID
 *
 * Options. The verbs are an lc_group (client.h): each verb has its own option table, so a flag of another
 * verb is an unknown option naming the verb that takes it, and `lathe admin VERB --help` lists exactly the
 * verb's flags. --db and --data-dir are the group's shared options and may come before or after the verb.
 * Every value must be non-empty (LC_NONEMPTY). A verb is described once in admin_verb: the flags it
 * requires, a check of its arguments that needs no store (usage errors never create a data dir), and the
 * function that runs on the open store. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "store/db.h"
#include "store/identity.h"
#include "util/util.h"

#define SCOPE_NAMES "training:read, training:write, artifacts:read, artifacts:write, worker"

typedef struct admin_verb {
    const char *name;
    const char *required[4]; /* flags (without "--") that must be given; NULL ends */
    int (*check)(const lc_args *a);
    int (*run)(db *d, const lc_args *a, const char *data_dir);
} admin_verb;

static int fail(const char *verb, const lt_err *err) {
    fprintf(stderr, "lathe admin %s: %s\n", verb, err->msg);
    if (err->code == 404) return EXIT_NOTFOUND;
    if (err->code == 400) return EXIT_USAGE;
    return EXIT_FAIL;
}

static void emit(const lc_args *a, json_t *obj, const char *text) {
    if (lc_flag(a, "json")) {
        char *s = json_dumps(obj, JSON_INDENT(2));
        printf("%s\n", s ? s : "{}");
        free(s);
    } else {
        printf("%s\n", text);
    }
    json_decref(obj);
}

static json_t *jstr(const char *s) {
    return s && *s ? json_string(s) : json_null();
}

static json_t *key_obj(const char *key, const store_apikey *k, const char *org, const char *ws) {
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(k->id));
    json_object_set_new(o, "key", json_string(key));
    json_object_set_new(o, "masked_key", json_string(k->masked));
    json_object_set_new(o, "name", json_string(k->name));
    json_object_set_new(o, "user_id", json_string(k->user_id));
    json_object_set_new(o, "org", jstr(org));
    json_object_set_new(o, "workspace", jstr(ws));
    json_t *sc = json_array();
    for (unsigned bit = 1; bit & STORE_SCOPES_ALL; bit <<= 1)
        if (k->scopes & bit) json_array_append_new(sc, json_string(store_scope_name(bit)));
    json_object_set_new(o, "scopes", sc);
    return o;
}

/* ---- the verbs, on an open store ---- */

static int run_init(db *d, const lc_args *a, const char *data_dir) {
    lt_err err = {0};
    char key[STORE_KEY_LEN];
    store_bootstrap_result r;
    if (store_bootstrap(d, lc_arg(a, "org"), lc_arg(a, "workspace"), lc_arg(a, "email"), key, &r, &err) != 0)
        return fail("init", &err);
    char *path = lt_path_join(data_dir, "admin.key");
    char line[STORE_KEY_LEN + 2];
    snprintf(line, sizeof line, "%s\n", key);
    if (lt_mkdir_p(data_dir, 0755, &err) != 0 ||
        lt_write_file_atomic(path, line, strlen(line), 0600, &err) != 0) {
        free(path);
        return fail("init", &err);
    }
    chmod(path, 0600);
    json_t *o = json_object();
    json_object_set_new(o, "org", json_string(r.org.key));
    json_object_set_new(o, "workspace", json_string(r.workspace.key));
    json_object_set_new(o, "email", json_string(r.user.email));
    json_object_set_new(o, "user_id", json_string(r.user.id));
    json_object_set_new(o, "created_org", json_boolean(r.created_org));
    json_object_set_new(o, "created_workspace", json_boolean(r.created_workspace));
    json_object_set_new(o, "created_user", json_boolean(r.created_user));
    json_object_set_new(o, "key", json_string(key));
    json_object_set_new(o, "key_id", json_string(r.key.id));
    json_object_set_new(o, "key_file", json_string(path));
    char text[1024];
    snprintf(text, sizeof text, "org %s%s, workspace %s%s, owner %s%s\nowner API key (saved to %s): %s",
             r.org.key, r.created_org ? " (created)" : "", r.workspace.key,
             r.created_workspace ? " (created)" : "", r.user.email, r.created_user ? " (created)" : "", path,
             key);
    free(path);
    emit(a, o, text);
    return EXIT_OK;
}

static int run_create_org(db *d, const lc_args *a, const char *data_dir) {
    (void)data_dir;
    lt_err err = {0};
    store_org o;
    if (store_org_create(d, lc_arg(a, "key"), lc_arg(a, "name"), NULL, &o, &err) != 0)
        return fail("create-org", &err);
    json_t *j = json_object();
    json_object_set_new(j, "id", json_string(o.id));
    json_object_set_new(j, "key", json_string(o.key));
    json_object_set_new(j, "name", json_string(o.name));
    char text[512];
    snprintf(text, sizeof text,
             "created org %s (id %s) with workspace main and project default; add an owner with "
             "`lathe admin grant`",
             o.key, o.id);
    emit(a, j, text);
    return EXIT_OK;
}

static int run_create_user(db *d, const lc_args *a, const char *data_dir) {
    (void)data_dir;
    lt_err err = {0};
    store_user u;
    if (store_user_create(d, lc_arg(a, "email"), lc_arg(a, "username"), lc_arg(a, "full-name"), &u, &err) !=
        0)
        return fail("create-user", &err);
    json_t *j = json_object();
    json_object_set_new(j, "id", json_string(u.id));
    json_object_set_new(j, "email", json_string(u.email));
    json_object_set_new(j, "username", jstr(u.username));
    json_object_set_new(j, "full_name", jstr(u.full_name));
    char text[512];
    snprintf(text, sizeof text, "created user %s (id %s)", u.email, u.id);
    emit(a, j, text);
    return EXIT_OK;
}

static int check_grant(const lc_args *a) {
    if (store_role_parse(lc_arg(a, "role"))) return 0;
    fprintf(stderr, "lathe admin grant: --role must be owner, contributor or reader, got '%s'\n",
            lc_arg(a, "role"));
    return -1;
}

static int run_grant(db *d, const lc_args *a, const char *data_dir) {
    (void)data_dir;
    int role = store_role_parse(lc_arg(a, "role"));
    lt_err err = {0};
    store_user u;
    store_org o;
    if (store_user_by_email(d, lc_arg(a, "email"), &u, &err) != 0 ||
        store_org_by_key(d, lc_arg(a, "org"), &o, &err) != 0 ||
        store_member_set(d, o.id, u.id, role, &err) != 0)
        return fail("grant", &err);
    json_t *j = json_object();
    json_object_set_new(j, "user_id", json_string(u.id));
    json_object_set_new(j, "email", json_string(u.email));
    json_object_set_new(j, "org", json_string(o.key));
    json_object_set_new(j, "role", json_string(store_role_name(role)));
    char text[512];
    snprintf(text, sizeof text, "%s is now %s of %s", u.email, store_role_name(role), o.key);
    emit(a, j, text);
    return EXIT_OK;
}

static int check_create_key(const lc_args *a) {
    const char *scopes = lc_arg(a, "scopes");
    unsigned mask = 0;
    lt_err err = {0};
    if (scopes && store_scopes_parse_list(scopes, &mask, &err) != 0) {
        fprintf(stderr, "lathe admin create-key: --scopes: %s\n", err.msg);
        return -1;
    }
    if (scopes && !mask) {
        fprintf(stderr,
                "lathe admin create-key: --scopes '%s' names no scope: list one or more of " SCOPE_NAMES
                ", or leave --scopes out for an unrestricted key\n",
                scopes);
        return -1;
    }
    if (lc_arg(a, "workspace") && !lc_arg(a, "org")) {
        fprintf(stderr, "lathe admin create-key: --workspace needs --org (the org the workspace is in)\n");
        return -1;
    }
    return 0;
}

/* The org of an org-limited key, which the user must belong to: a key limited to an org where its user has
 * no role would answer 404 on every route. */
static int key_org(db *d, const char *org_key, const store_user *u, store_org *o) {
    lt_err err = {0};
    int role = STORE_ROLE_NONE;
    if (store_org_by_key(d, org_key, o, &err) != 0 || store_member_role(d, o->id, u->id, &role, &err) != 0)
        return fail("create-key", &err);
    if (role != STORE_ROLE_NONE) return EXIT_OK;
    fprintf(stderr,
            "lathe admin create-key: %s has no role in org '%s', so a key limited to it would answer 404 "
            "everywhere;\ngrant one first: lathe admin grant --email %s --org %s --role "
            "reader|contributor|owner\n",
            u->email, o->key, u->email, o->key);
    return EXIT_FAIL;
}

static int run_create_key(db *d, const lc_args *a, const char *data_dir) {
    (void)data_dir;
    const char *org = lc_arg(a, "org"), *ws = lc_arg(a, "workspace");
    lt_err err = {0};
    unsigned scopes = 0;
    if (lc_arg(a, "scopes") && store_scopes_parse_list(lc_arg(a, "scopes"), &scopes, &err) != 0)
        return fail("create-key", &err);
    store_user u;
    store_org o;
    store_workspace w;
    if (store_user_by_email(d, lc_arg(a, "email"), &u, &err) != 0) return fail("create-key", &err);
    int rc = org ? key_org(d, org, &u, &o) : EXIT_OK;
    if (rc != EXIT_OK) return rc;
    if (ws && store_workspace_by_key(d, o.id, ws, &w, &err) != 0) return fail("create-key", &err);
    char key[STORE_KEY_LEN];
    store_apikey k;
    if (store_apikey_create(d, u.id, lc_arg(a, "name"), org ? o.id : NULL, ws ? w.id : NULL, scopes, key, &k,
                            &err) != 0)
        return fail("create-key", &err);
    json_t *j = key_obj(key, &k, org, ws);
    json_object_set_new(j, "email", json_string(u.email));
    char text[256];
    snprintf(text, sizeof text, "%s", key);
    emit(a, j, text);
    return EXIT_OK;
}

static int check_revoke_key(const lc_args *a) {
    if (lt_is_uuid(lc_arg(a, "id"))) return 0;
    fprintf(stderr,
            "lathe admin revoke-key: --id '%s' is not a key id (a UUID; see GET /api/v1/user/api-keys)\n",
            lc_arg(a, "id"));
    return -1;
}

static int run_revoke_key(db *d, const lc_args *a, const char *data_dir) {
    (void)data_dir;
    const char *id = lc_arg(a, "id");
    lt_err err = {0};
    if (store_apikey_revoke(d, NULL, id, &err) != 0) return fail("revoke-key", &err);
    json_t *j = json_object();
    json_object_set_new(j, "id", json_string(id));
    json_object_set_new(j, "revoked", json_true());
    char text[128];
    snprintf(text, sizeof text, "revoked key %s", id);
    emit(a, j, text);
    return EXIT_OK;
}

/* ---- one verb: required flags, its check, then the store ---- */

static int admin_main(const admin_verb *v, const lc_args *a) {
    for (int i = 0; v->required[i]; i++)
        if (!lc_arg(a, v->required[i])) {
            fprintf(stderr, "lathe admin %s: --%s is required (see lathe admin %s --help)\n", v->name,
                    v->required[i], v->name);
            return EXIT_USAGE;
        }
    if (v->check && v->check(a)) return EXIT_USAGE;
    const char *data_dir = lc_arg_or_env(a, "data-dir", "LATHE_DATA_DIR", "./lathe-data");
    const char *db_url = lc_arg_or_env(a, "db", "LATHE_DB", NULL);
    lt_err err = {0};
    char url[4096];
    if (!db_url) {
        if (lt_mkdir_p(data_dir, 0755, &err) != 0) return fail(v->name, &err);
        snprintf(url, sizeof url, "sqlite:%s/lathe.db", data_dir);
        db_url = url;
    }
    db *d = db_open(db_url, &err);
    if (!d) return fail(v->name, &err);
    if (db_migrate(d, &err) != 0) {
        db_close(d);
        return fail(v->name, &err);
    }
    int rc = v->run(d, a, data_dir);
    db_close(d);
    return rc;
}

static const admin_verb av_init = {"init", {NULL}, NULL, run_init};
static const admin_verb av_create_org = {"create-org", {"key", NULL}, NULL, run_create_org};
static const admin_verb av_create_user = {"create-user", {"email", NULL}, NULL, run_create_user};
static const admin_verb av_grant = {"grant", {"email", "org", "role", NULL}, check_grant, run_grant};
static const admin_verb av_create_key = {"create-key", {"email", NULL}, check_create_key, run_create_key};
static const admin_verb av_revoke_key = {"revoke-key", {"id", NULL}, check_revoke_key, run_revoke_key};

#define ADMIN_FN(fn, spec)                                                                                   \
    static int fn(lc_client *c, const lc_args *a, const char *group) {                                       \
        (void)c;                                                                                             \
        (void)group;                                                                                         \
        return admin_main(&spec, a);                                                                         \
    }
ADMIN_FN(v_init, av_init)
ADMIN_FN(v_create_org, av_create_org)
ADMIN_FN(v_create_user, av_create_user)
ADMIN_FN(v_grant, av_grant)
ADMIN_FN(v_create_key, av_create_key)
ADMIN_FN(v_revoke_key, av_revoke_key)

/* ---- option tables ---- */

static const lc_opt store_opts[] = {
    {"db", LC_STR, "URL", "store URL (env LATHE_DB; default sqlite:<data dir>/lathe.db)"},
    {"data-dir", LC_STR, "DIR", "data directory (env LATHE_DATA_DIR; default ./lathe-data)"},
    {NULL, 0, NULL, NULL},
};

static const lc_opt init_opts[] = {
    {"org", LC_STR, "KEY", "the org to make sure of (default \"default\")"},
    {"workspace", LC_STR, "KEY", "its workspace (default \"main\")"},
    {"email", LC_STR, "EMAIL", "the owner (default admin@localhost)"},
    {NULL, 0, NULL, NULL},
};

static const lc_opt create_org_opts[] = {
    {"key", LC_STR, "KEY", "the org's key, [a-z0-9][a-z0-9-]* (required)"},
    {"name", LC_STR, "NAME", "display name (default: the key)"},
    {NULL, 0, NULL, NULL},
};

static const lc_opt create_user_opts[] = {
    {"email", LC_STR, "EMAIL", "the user's email, unique case-insensitively (required)"},
    {"username", LC_STR, "NAME", "user name"},
    {"full-name", LC_STR, "NAME", "full name"},
    {NULL, 0, NULL, NULL},
};

static const lc_opt grant_opts[] = {
    {"email", LC_STR, "EMAIL", "the user (required)"},
    {"org", LC_STR, "KEY", "the org (required)"},
    {"role", LC_STR, "ROLE", "owner | contributor | reader (required)"},
    {NULL, 0, NULL, NULL},
};

static const lc_opt create_key_opts[] = {
    {"email", LC_STR, "EMAIL", "the key's user (required)"},
    {"name", LC_STR, "NAME", "key name"},
    {"org", LC_STR, "KEY", "limit the key to this org (the user must have a role in it)"},
    {"workspace", LC_STR, "KEY", "limit the key to this workspace of --org"},
    {"scopes", LC_STR, "A,B", "limit the key to these scopes (default: all): " SCOPE_NAMES},
    {NULL, 0, NULL, NULL},
};

static const lc_opt revoke_key_opts[] = {
    {"id", LC_STR, "ID", "the key's id, a UUID (GET /api/v1/user/api-keys lists them) (required)"},
    {NULL, 0, NULL, NULL},
};

static const lc_verb verbs[] = {
    {"init", v_init, init_opts, "init [--org KEY] [--workspace KEY] [--email EMAIL]",
     "make sure the org, workspace and owner exist; print a new owner key (saved to <data dir>/admin.key)", 0,
     0},
    {"create-org", v_create_org, create_org_opts, "create-org --key KEY [--name NAME]",
     "a new org with workspace main and project default, no members yet (grant one)", 0, 0},
    {"create-user", v_create_user, create_user_opts,
     "create-user --email EMAIL [--username NAME] [--full-name NAME]", "a new user", 0, 0},
    {"grant", v_grant, grant_opts, "grant --email EMAIL --org KEY --role owner|contributor|reader",
     "add a user to an org with a role, or change the role", 0, 0},
    {"create-key", v_create_key, create_key_opts,
     "create-key --email EMAIL [--name NAME] [--org KEY [--workspace KEY]] [--scopes A,B]",
     "a new API key for a user, optionally limited to an org, a workspace, scopes", 0, 0},
    {"revoke-key", v_revoke_key, revoke_key_opts, "revoke-key --id ID", "revoke an API key", 0, 0},
};

int cmd_admin(int argc, char **argv) {
    static const lc_group g = {
        "Bootstrap and recovery on the server's store (no server needed; it may run while the server runs).",
        verbs,
        sizeof verbs / sizeof verbs[0],
        store_opts,
        "store (before or after the verb; flag > environment > default)",
        LC_NONEMPTY,
    };
    return lc_dispatch_group(&g, argc, argv);
}
