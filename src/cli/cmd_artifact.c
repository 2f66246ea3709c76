/* cmd_artifact.c: `lathe dataset|capability|task push|list|show|pull|delete`, the client of the artifact
 * registry (docs/spec.md §3.1). The three kinds share every verb; argv[0] names the kind and maps to its
 * route segment (datasets, capabilities, tasks).
 *
 * push packs the directory into a reproducible tar.gz (util/archive.h: the same tree gives the same bytes,
 * hence the same digest) and POSTs it as application/gzip; the server parses the manifest and rows and
 * answers with the version record, or with a 422 whose errors point at FILE and LINE inside the archive.
 * pull downloads a version's archive and unpacks it with the same defensive reader the server uses. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "util/archive.h"
#include "util/util.h"

static const char *kind_segment(const char *group) {
    if (!strcmp(group, "dataset")) return "datasets";
    if (!strcmp(group, "capability")) return "capabilities";
    return "tasks";
}

static void kind_path(strbuf *sb, const lc_client *c, const char *group) {
    sb_puts(sb, "/api/v1/org/");
    lc_esc(sb, c->conf.org);
    sb_putc(sb, '/');
    sb_puts(sb, kind_segment(group));
}

static const char *jstr(const json_t *o, const char *key) {
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "-";
}

/* Runs a call whose 2xx JSON goes to *out; prints errors. Returns the exit code. */
static int call(lc_client *c, const char *method, const char *path, const char *what, json_t **out) {
    lc_resp r;
    lt_err err = {0};
    if (lc_call(c, method, path, NULL, NULL, &r, &err)) {
        lc_resp_free(&r);
        return lc_print_conn_error(stderr, c, &err);
    }
    int rc = EXIT_OK;
    if (r.status < 200 || r.status >= 300)
        rc = lc_print_error(stderr, what, &r);
    else if (out)
        *out = r.json ? json_incref(r.json) : json_object();
    lc_resp_free(&r);
    return rc;
}

static void print_version(const json_t *v) {
    printf("name:      %s\nversion:   %s\ndigest:    %s\nsize:      %lld bytes\ncreated:   %s\n",
           jstr(v, "name"), jstr(v, "version"), jstr(v, "digest"),
           (long long)json_integer_value(json_object_get(v, "size_bytes")), jstr(v, "created_at"));
    const json_t *splits = json_object_get(v, "splits");
    if (json_object_size(splits)) {
        printf("splits:   ");
        const char *k;
        json_t *n;
        json_object_foreach((json_t *)splits, k, n) printf(" %s=%lld", k, (long long)json_integer_value(n));
        putchar('\n');
    }
    const json_t *m = json_object_get(v, "manifest");
    const char *summary = json_string_value(json_object_get(m, "summary"));
    if (!summary) summary = json_string_value(json_object_get(m, "description"));
    if (summary) printf("summary:   %s\n", summary);
}

static int v_push(lc_client *c, const lc_args *a, const char *group) {
    unsigned char *buf = NULL;
    size_t len = 0;
    lt_err err = {0};
    if (archive_pack_dir(a->pos[0], 1, &buf, &len, &err)) {
        fprintf(stderr, "lathe %s push: %s\n", group, err.msg);
        return EXIT_FAIL;
    }
    strbuf path = STRBUF_INIT;
    kind_path(&path, c, group);
    lc_resp r;
    int rc = lc_upload(c, path.buf, buf, len, "application/gzip", &r, &err);
    sb_free(&path);
    free(buf);
    if (rc) {
        lc_resp_free(&r);
        return lc_print_conn_error(stderr, c, &err);
    }
    if (r.status < 200 || r.status >= 300) {
        char what[64];
        snprintf(what, sizeof what, "push %s", group);
        rc = lc_print_error(stderr, what, &r);
    } else if (lc_flag(a, "json")) {
        lc_print_json(stdout, r.json);
    } else {
        printf("pushed %s %s@%s (%zu bytes packed)\n", group, jstr(r.json, "name"), jstr(r.json, "version"),
               len);
        print_version(r.json);
    }
    lc_resp_free(&r);
    return rc;
}

static int v_list(lc_client *c, const lc_args *a, const char *group) {
    strbuf path = STRBUF_INIT;
    kind_path(&path, c, group);
    const char *page = lc_arg(a, "page"), *size = lc_arg(a, "page-size");
    if (page) sb_printf(&path, "?page=%s", page);
    if (size) sb_printf(&path, "%cpage_size=%s", page ? '&' : '?', size);
    json_t *j = NULL;
    int rc = call(c, "GET", path.buf, "list", &j);
    sb_free(&path);
    if (rc) return rc;
    if (lc_flag(a, "json")) {
        lc_print_json(stdout, j);
    } else {
        json_t *items = json_object_get(j, "items");
        if (!json_array_size(items))
            printf("no %s\n", kind_segment(group));
        else
            printf("%-32s  %-10s  %s\n", "NAME", "LATEST", "CREATED");
        size_t i;
        json_t *it;
        json_array_foreach(items, i, it) {
            const json_t *latest = json_object_get(it, "latest");
            const char *ver = json_is_object(latest) ? jstr(latest, "version") : NULL;
            if (!ver || !strcmp(ver, "-")) ver = json_string_value(json_object_get(it, "latest_version"));
            if (!ver) ver = jstr(it, "version");
            const char *created =
                json_is_object(latest) ? jstr(latest, "created_at") : jstr(it, "created_at");
            printf("%-32s  %-10s  %s\n", jstr(it, "name"), ver, created);
        }
    }
    json_decref(j);
    return EXIT_OK;
}

static int v_show(lc_client *c, const lc_args *a, const char *group) {
    char *name, *version;
    lt_ref_split(a->pos[0], &name, &version);
    strbuf path = STRBUF_INIT;
    kind_path(&path, c, group);
    sb_putc(&path, '/');
    lc_esc(&path, name);
    if (version) {
        sb_putc(&path, '/');
        lc_esc(&path, version);
    }
    json_t *j = NULL;
    char what[64];
    snprintf(what, sizeof what, "show %s", group);
    int rc = call(c, "GET", path.buf, what, &j);
    sb_free(&path);
    free(name);
    int has_version = version != NULL;
    free(version);
    if (rc) return rc;
    if (lc_flag(a, "json")) {
        lc_print_json(stdout, j);
    } else if (has_version) {
        print_version(j);
    } else {
        printf("name:      %s\nversions:\n", jstr(j, "name"));
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(j, "versions"), i, v)
            printf("  %-10s  %s  %10lld bytes  %s\n", jstr(v, "version"), jstr(v, "digest"),
                   (long long)json_integer_value(json_object_get(v, "size_bytes")), jstr(v, "created_at"));
    }
    json_decref(j);
    return EXIT_OK;
}

static void version_path(strbuf *sb, const lc_client *c, const char *group, const char *name,
                         const char *ver) {
    kind_path(sb, c, group);
    sb_putc(sb, '/');
    lc_esc(sb, name);
    sb_putc(sb, '/');
    lc_esc(sb, ver);
}

static int v_pull(lc_client *c, const lc_args *a, const char *group) {
    char *name, *ver;
    lt_err err = {0};
    if (lc_parse_ref(a->pos[0], group, &name, &ver, &err)) {
        fprintf(stderr, "lathe %s pull: %s\n", group, err.msg);
        return EXIT_USAGE;
    }
    const char *slash = strrchr(name, '/');
    const char *dir = a->npos > 1 ? a->pos[1] : (slash ? slash + 1 : name);
    strbuf path = STRBUF_INIT;
    version_path(&path, c, group, name, ver);
    sb_puts(&path, "/download");
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    if (!mem) abort();
    lc_resp r;
    int rc = lc_download(c, path.buf, mem, &r, &err);
    fclose(mem);
    sb_free(&path);
    if (rc) {
        rc = lc_print_conn_error(stderr, c, &err);
    } else if (r.status < 200 || r.status >= 300) {
        char what[64];
        snprintf(what, sizeof what, "pull %s", group);
        rc = lc_print_error(stderr, what, &r);
    } else {
        long files = lc_untar(buf, len, dir, &err);
        if (files < 0) {
            fprintf(stderr, "lathe %s pull: %s\n", group, err.msg);
            rc = EXIT_FAIL;
        } else if (lc_flag(a, "json")) {
            json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:I}", "name", name, "version", ver, "dir", dir,
                                  "files", (json_int_t)files, "bytes", (json_int_t)len);
            lc_print_json(stdout, o);
            json_decref(o);
        } else {
            printf("%s %s@%s: %ld files written to %s\n", group, name, ver, files, dir);
        }
    }
    lc_resp_free(&r);
    free(buf);
    free(name);
    free(ver);
    return rc;
}

static int v_delete(lc_client *c, const lc_args *a, const char *group) {
    char *name, *ver;
    lt_err err = {0};
    if (lc_parse_ref(a->pos[0], group, &name, &ver, &err)) {
        fprintf(stderr, "lathe %s delete: %s\n", group, err.msg);
        return EXIT_USAGE;
    }
    strbuf path = STRBUF_INIT;
    version_path(&path, c, group, name, ver);
    char what[64];
    snprintf(what, sizeof what, "delete %s", group);
    int rc = call(c, "DELETE", path.buf, what, NULL);
    if (rc == EXIT_OK) printf(lc_flag(a, "json") ? "{}\n" : "deleted %s@%s\n", name, ver);
    sb_free(&path);
    free(name);
    free(ver);
    return rc;
}

static const lc_opt no_opts[] = {{NULL, 0, NULL, NULL}};
static const lc_opt list_opts[] = {
    {"page", LC_INT, "N", "page (default 1)"},
    {"page-size", LC_INT, "N", "items per page, 1..100 (default 20)"},
    {NULL, 0, NULL, NULL},
};

static const lc_verb verbs[] = {
    {"push", v_push, no_opts, "push DIR",
     "pack DIR (with its manifest) as tar.gz and upload it as a new version", 1, 1},
    {"list", v_list, list_opts, "list", "list the org's artifacts of this kind with their latest version", 0,
     0},
    {"show", v_show, no_opts, "show NAME[@VERSION]",
     "all versions, or one version's manifest, digest and splits", 1, 1},
    {"pull", v_pull, no_opts, "pull NAME@VERSION [DIR]",
     "download a version and unpack it into DIR (default NAME)", 1, 2},
    {"delete", v_delete, no_opts, "delete NAME@VERSION", "delete a version no active job uses", 1, 1},
};

int cmd_artifact(int argc, char **argv) {
    const char *g = argv[0];
    const char *desc =
        !strcmp(g, "dataset")      ? "Datasets: a directory with dataset.yaml and JSONL/JSON/CSV rows."
        : !strcmp(g, "capability") ? "Capabilities: a directory with capability.yaml and agents/*.md."
                                   : "Tasks: a directory with task.yaml (instruction, verification).";
    return lc_dispatch(desc, verbs, sizeof verbs / sizeof verbs[0], argc, argv);
}
