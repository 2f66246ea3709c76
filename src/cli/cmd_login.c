/* cmd_login.c: `lathe login`: checks a server URL and API key with GET /api/v1/user and saves them (with the
 * default org, workspace and project) to the client config file, mode 0600, so that later client verbs need
 * no flags. Settings resolve as for every client verb (flag > LATHE_* environment > existing file >
 * default), and the org and workspace must be visible to the key (GET /api/v1/org/{org}/ws/{ws}, a
 * compatibility route); a key may also come on stdin (`lathe login --server URL < key.txt`) so it stays out
 * of the shell history. Nothing is written unless the server accepts the key. */
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "util/util.h"

static const lc_opt login_opts[] = {
    {"config", LC_STR, "FILE", "write this file instead of ~/.config/lathe/config"},
    {NULL, 0, NULL, NULL},
};

static int read_key_stdin(lc_conf *c) {
    if (isatty(STDIN_FILENO)) return -1;
    char line[512];
    if (!fgets(line, sizeof line, stdin)) return -1;
    char *k = lt_strip(line);
    if (!*k) return -1;
    free(c->api_key);
    c->api_key = lt_strdup(k);
    return 0;
}

int cmd_login(int argc, char **argv) {
    lc_args a;
    lt_err err = {0};
    if (lc_args_parse(&a, login_opts, LC_CONN | LC_NONEMPTY, argc, argv, &err)) {
        fprintf(stderr, "lathe login: %s\n(see lathe login --help)\n", err.msg);
        lc_args_free(&a);
        return EXIT_USAGE;
    }
    if (lc_flag(&a, "help")) {
        lc_help(stdout, "login [--server URL] [--api-key KEY] [--org KEY] [--workspace KEY] [--project KEY]",
                "Check the server URL and API key (GET /api/v1/user) and save them, with the default org, "
                "workspace\n"
                "and project, to $XDG_CONFIG_HOME/lathe/config (else ~/.config/lathe/config), mode 0600.\n"
                "Without --api-key the key is read from LATHE_API_KEY, else from stdin.",
                login_opts, 1);
        lc_args_free(&a);
        return EXIT_OK;
    }
    if (a.npos) {
        fprintf(stderr, "lathe login: unexpected argument '%s' (use --server URL --api-key KEY)\n", a.pos[0]);
        lc_args_free(&a);
        return EXIT_USAGE;
    }
    lc_client c;
    int rc = EXIT_OK;
    if (lc_client_init(&c, &a, &err)) {
        fprintf(stderr, "lathe login: %s\n", err.msg);
        rc = err.code == 2 ? EXIT_USAGE : EXIT_FAIL;
        goto out;
    }
    if ((!c.conf.api_key || !*c.conf.api_key) && read_key_stdin(&c.conf)) {
        fprintf(stderr,
                "lathe login: no API key: pass --api-key KEY, set LATHE_API_KEY, or pipe it on stdin\n");
        rc = EXIT_USAGE;
        goto out;
    }
    lc_resp r;
    if (lc_call(&c, "GET", "/api/v1/user", NULL, NULL, &r, &err)) {
        rc = lc_print_conn_error(stderr, &c, &err);
        lc_resp_free(&r);
        goto out;
    }
    if (r.status != 200) {
        rc = lc_print_error(stderr, "login", &r);
        lc_resp_free(&r);
        goto out;
    }
    /* the org and workspace must exist and be visible to this key */
    strbuf ws = STRBUF_INIT;
    lc_ws_path(&ws, &c);
    lc_resp wr;
    int wrc = lc_call(&c, "GET", ws.buf, NULL, NULL, &wr, &err);
    sb_free(&ws);
    if (wrc == 0 && wr.status != 200) {
        rc = lc_print_error(stderr, "login", &wr);
        lc_resp_free(&wr);
        lc_resp_free(&r);
        goto out;
    }
    lc_resp_free(&wr);
    char *path = lc_arg(&a, "config") ? lt_strdup(lc_arg(&a, "config")) : lc_config_path();
    if (!path) {
        fprintf(stderr, "lathe login: neither XDG_CONFIG_HOME nor HOME is set; pass --config FILE\n");
        rc = EXIT_FAIL;
    } else if (lc_config_save(&c.conf, path, &err)) {
        fprintf(stderr, "lathe login: %s\n", err.msg);
        rc = EXIT_FAIL;
    } else if (lc_flag(&a, "json")) {
        json_t *o =
            json_pack("{s:s, s:s, s:s, s:s, s:O}", "server", c.conf.server, "org", c.conf.org, "workspace",
                      c.conf.workspace, "config", path, "user", r.json ? r.json : json_null());
        lc_print_json(stdout, o);
        json_decref(o);
    } else {
        const json_t *u =
            json_is_object(json_object_get(r.json, "user")) ? json_object_get(r.json, "user") : r.json;
        const char *email = json_string_value(json_object_get(u, "email"));
        if (!email) email = json_string_value(json_object_get(u, "email_address"));
        printf("logged in to %s as %s (org %s, workspace %s)\nsaved to %s\n", c.conf.server,
               email ? email : "?", c.conf.org, c.conf.workspace, path);
    }
    free(path);
    lc_resp_free(&r);
out:
    lc_client_free(&c);
    lc_args_free(&a);
    return rc;
}
