/* cmd_admin.c: `lathe admin VERB`: bootstrap and recovery, straight on the server's store (SPEC §3).
 *
 * These verbs do not talk HTTP: they open the same store `lathe serve` uses (same --db / --data-dir flags
 * and LATHE_DB / LATHE_DATA_DIR twins), migrate it if needed, and change it. That is what an operator needs
 * when no API key exists yet or the only one was lost. SQLite's busy waiting lets them run while the server
 * is up. Each verb prints what it created (one line), or with --json one JSON object.
 *
 *   init [--org KEY] [--workspace KEY] [--email EMAIL]   idempotent; prints a new owner key, saved to
 * admin.key create-org --key KEY [--name NAME] create-user --email EMAIL [--username NAME] [--full-name NAME]
 *   grant --email EMAIL --org KEY --role owner|contributor|reader
 *   create-key --email EMAIL [--name NAME] [--org KEY] [--workspace KEY] [--scopes a,b]
 *   revoke-key --id ID */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "store/db.h"
#include "store/store.h"
#include "util/util.h"

typedef struct admin_args {
    const char *data_dir, *db_url;
    const char *org, *workspace, *email, *key, *name, *username, *full_name, *role, *scopes, *id;
    int json;
} admin_args;

static void usage(FILE *f) {
    fprintf(f, "usage: lathe admin VERB [flags] [--db URL] [--data-dir DIR] [--json]\n\n"
               "Bootstrap and recovery on the server's store (no server needed).\n\n"
               "  init [--org KEY] [--workspace KEY] [--email EMAIL]\n"
               "        make sure the org (default 'default'), workspace (default 'main') and owner user\n"
               "        (default admin@localhost) exist; print a new owner API key (also saved to\n"
               "        <data dir>/admin.key, mode 0600)\n"
               "  create-org --key KEY [--name NAME]\n"
               "  create-user --email EMAIL [--username NAME] [--full-name NAME]\n"
               "  grant --email EMAIL --org KEY --role owner|contributor|reader\n"
               "  create-key --email EMAIL [--name NAME] [--org KEY] [--workspace KEY] [--scopes a,b]\n"
               "        scopes: training:read, training:write, artifacts:read, artifacts:write, worker\n"
               "  revoke-key --id ID\n\n"
               "  --db URL        store URL (env LATHE_DB; default sqlite:<data dir>/lathe.db)\n"
               "  --data-dir DIR  data directory (env LATHE_DATA_DIR; default ./lathe-data)\n"
               "  --json          print the result as JSON\n");
}

static int fail(const char *verb, const lt_err *err) {
    fprintf(stderr, "lathe admin %s: %s\n", verb, err->msg);
    if (err->code == 404) return EXIT_NOTFOUND;
    if (err->code == 400) return EXIT_USAGE;
    return EXIT_FAIL;
}

static void emit(const admin_args *a, json_t *obj, const char *text) {
    if (a->json) {
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

static int need(const char *verb, const char *flag, const char *v) {
    if (v && *v) return 0;
    fprintf(stderr, "lathe admin %s: %s is required\n", verb, flag);
    return -1;
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
    for (unsigned bit = 1; bit <= STORE_SCOPE_WORKER; bit <<= 1)
        if (k->scopes & bit) json_array_append_new(sc, json_string(store_scope_name(bit)));
    json_object_set_new(o, "scopes", sc);
    return o;
}

static int verb_init(db *d, const admin_args *a) {
    lt_err err = {0};
    char key[STORE_KEY_LEN];
    store_bootstrap_result r;
    if (store_bootstrap(d, a->org, a->workspace, a->email, key, &r, &err) != 0) return fail("init", &err);
    char *path = lt_path_join(a->data_dir, "admin.key");
    char line[STORE_KEY_LEN + 2];
    snprintf(line, sizeof line, "%s\n", key);
    if (lt_mkdir_p(a->data_dir, 0755, &err) != 0 ||
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

static int verb_create_org(db *d, const admin_args *a) {
    if (need("create-org", "--key", a->key)) return EXIT_USAGE;
    lt_err err = {0};
    store_org o;
    if (store_org_create(d, a->key, a->name, NULL, &o, &err) != 0) return fail("create-org", &err);
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

static int verb_create_user(db *d, const admin_args *a) {
    if (need("create-user", "--email", a->email)) return EXIT_USAGE;
    lt_err err = {0};
    store_user u;
    if (store_user_create(d, a->email, a->username, a->full_name, &u, &err) != 0)
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

static int verb_grant(db *d, const admin_args *a) {
    if (need("grant", "--email", a->email) || need("grant", "--org", a->org) ||
        need("grant", "--role", a->role))
        return EXIT_USAGE;
    int role = store_role_parse(a->role);
    if (!role) {
        fprintf(stderr, "lathe admin grant: --role must be owner, contributor or reader\n");
        return EXIT_USAGE;
    }
    lt_err err = {0};
    store_user u;
    store_org o;
    if (store_user_by_email(d, a->email, &u, &err) != 0 || store_org_by_key(d, a->org, &o, &err) != 0 ||
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

static int verb_create_key(db *d, const admin_args *a) {
    if (need("create-key", "--email", a->email)) return EXIT_USAGE;
    lt_err err = {0};
    unsigned scopes = 0;
    if (a->scopes && store_scopes_parse_list(a->scopes, &scopes, &err) != 0) return fail("create-key", &err);
    if (a->workspace && !a->org) {
        fprintf(stderr, "lathe admin create-key: --workspace needs --org\n");
        return EXIT_USAGE;
    }
    store_user u;
    store_org o;
    store_workspace w;
    if (store_user_by_email(d, a->email, &u, &err) != 0) return fail("create-key", &err);
    if (a->org && store_org_by_key(d, a->org, &o, &err) != 0) return fail("create-key", &err);
    if (a->workspace && store_workspace_by_key(d, o.id, a->workspace, &w, &err) != 0)
        return fail("create-key", &err);
    char key[STORE_KEY_LEN];
    store_apikey k;
    if (store_apikey_create(d, u.id, a->name, a->org ? o.id : NULL, a->workspace ? w.id : NULL, scopes, key,
                            &k, &err) != 0)
        return fail("create-key", &err);
    json_t *j = key_obj(key, &k, a->org, a->workspace);
    json_object_set_new(j, "email", json_string(u.email));
    char text[256];
    snprintf(text, sizeof text, "%s", key);
    emit(a, j, text);
    return EXIT_OK;
}

static int verb_revoke_key(db *d, const admin_args *a) {
    if (need("revoke-key", "--id", a->id)) return EXIT_USAGE;
    lt_err err = {0};
    if (!lt_is_uuid(a->id)) {
        fprintf(stderr,
                "lathe admin revoke-key: --id '%s' is not a key id (a UUID; see GET /api/v1/user/api-keys)\n",
                a->id);
        return EXIT_USAGE;
    }
    if (store_apikey_revoke(d, NULL, a->id, &err) != 0) return fail("revoke-key", &err);
    json_t *j = json_object();
    json_object_set_new(j, "id", json_string(a->id));
    json_object_set_new(j, "revoked", json_true());
    char text[128];
    snprintf(text, sizeof text, "revoked key %s", a->id);
    emit(a, j, text);
    return EXIT_OK;
}

int cmd_admin(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : EXIT_OK;
    }
    const char *verb = argv[1];
    admin_args a = {0};
    const char *e = getenv("LATHE_DATA_DIR");
    a.data_dir = e && *e ? e : "./lathe-data";
    e = getenv("LATHE_DB");
    a.db_url = e && *e ? e : NULL;
    struct {
        const char *flag;
        const char **dst;
    } flags[] = {
        {"--data-dir", &a.data_dir},   {"--db", &a.db_url},         {"--org", &a.org},
        {"--workspace", &a.workspace}, {"--email", &a.email},       {"--key", &a.key},
        {"--name", &a.name},           {"--username", &a.username}, {"--full-name", &a.full_name},
        {"--role", &a.role},           {"--scopes", &a.scopes},     {"--id", &a.id},
    };
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            a.json = 1;
            continue;
        }
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return EXIT_OK;
        }
        const char *eq = strchr(argv[i], '=');
        size_t n = eq ? (size_t)(eq - argv[i]) : strlen(argv[i]);
        int found = 0;
        for (size_t f = 0; f < sizeof flags / sizeof flags[0]; f++) {
            if (strlen(flags[f].flag) != n || strncmp(flags[f].flag, argv[i], n) != 0) continue;
            found = 1;
            if (eq)
                *flags[f].dst = eq + 1;
            else if (i + 1 < argc)
                *flags[f].dst = argv[++i];
            else {
                fprintf(stderr, "lathe admin %s: %s needs a value\n", verb, flags[f].flag);
                return EXIT_USAGE;
            }
        }
        if (!found) {
            fprintf(stderr, "lathe admin %s: unknown flag '%s'\n\n", verb, argv[i]);
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    static const char *verbs[] = {"init", "create-org", "create-user", "grant", "create-key", "revoke-key"};
    int known = 0;
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
        known |= !strcmp(verb, verbs[i]);
    if (!known) {
        fprintf(stderr, "lathe admin: unknown verb '%s'\n\n", verb);
        usage(stderr);
        return EXIT_USAGE;
    }
    lt_err err = {0};
    char url[4096];
    if (!a.db_url) {
        if (lt_mkdir_p(a.data_dir, 0755, &err) != 0) return fail(verb, &err);
        snprintf(url, sizeof url, "sqlite:%s/lathe.db", a.data_dir);
        a.db_url = url;
    }
    db *d = db_open(a.db_url, &err);
    if (!d) return fail(verb, &err);
    if (db_migrate(d, &err) != 0) {
        db_close(d);
        return fail(verb, &err);
    }
    int rc;
    if (!strcmp(verb, "init"))
        rc = verb_init(d, &a);
    else if (!strcmp(verb, "create-org"))
        rc = verb_create_org(d, &a);
    else if (!strcmp(verb, "create-user"))
        rc = verb_create_user(d, &a);
    else if (!strcmp(verb, "grant"))
        rc = verb_grant(d, &a);
    else if (!strcmp(verb, "create-key"))
        rc = verb_create_key(d, &a);
    else
        rc = verb_revoke_key(d, &a);
    db_close(d);
    return rc;
}
