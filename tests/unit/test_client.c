/* test_client.c: the CLI client's pure parts: the SSE parser (every line-end style, split chunks, the field
 * rules, limits), the option parser (types, usage errors, lists, aliases), the config file (round trip, mode
 * 0600, error messages) and settings resolution (flag > env > file > default), status -> exit code mapping.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "util/util.h"

/* ---- SSE ---- */

typedef struct seen {
    strbuf log; /* "event|data|id\n" per dispatched event */
    int n;
    int stop_after; /* stop when n reaches it (0 = never) */
} seen;

static int on_event(void *ud, const char *event, const char *data, size_t len, const char *id) {
    seen *s = ud;
    assert_int_equal(strlen(data), len);
    sb_printf(&s->log, "%s|%s|%s\n", event, data, id);
    s->n++;
    return s->stop_after && s->n >= s->stop_after;
}

/* Feeds `text` in chunks of `chunk` bytes (0 = at once) and returns the event log. */
static char *run_sse(const char *text, size_t chunk, int *n_events) {
    seen s = {STRBUF_INIT, 0, 0};
    lc_sse p;
    lc_sse_init(&p, on_event, &s);
    lt_err err = {0};
    size_t n = strlen(text);
    if (!chunk) chunk = n ? n : 1;
    for (size_t i = 0; i < n; i += chunk) {
        size_t k = n - i < chunk ? n - i : chunk;
        assert_int_equal(lc_sse_feed(&p, text + i, k, &err), 0);
    }
    lc_sse_free(&p);
    if (n_events) *n_events = s.n;
    return s.log.buf ? sb_steal(&s.log) : lt_strdup("");
}

static void check_all_chunkings(const char *text, const char *want) {
    for (size_t chunk = 0; chunk <= 7; chunk++) {
        char *got = run_sse(text, chunk, NULL);
        if (strcmp(got, want)) fail_msg("chunk %zu: got\n%s\nwant\n%s", chunk, got, want);
        free(got);
    }
}

static void sse_basic(void **st) {
    (void)st;
    check_all_chunkings("event: snapshot\ndata: {\"a\":1}\n\n", "snapshot|{\"a\":1}|\n");
    check_all_chunkings("data: hello\n\n", "message|hello|\n");
    check_all_chunkings("data:no-space\n\n", "message|no-space|\n");
    check_all_chunkings("data:  two spaces\n\n", "message| two spaces|\n");
}

static void sse_line_ends(void **st) {
    (void)st;
    const char *want = "progress|1|\nlog|2|\n";
    check_all_chunkings("event: progress\ndata: 1\n\nevent: log\ndata: 2\n\n", want);
    check_all_chunkings("event: progress\r\ndata: 1\r\n\r\nevent: log\r\ndata: 2\r\n\r\n", want);
    check_all_chunkings("event: progress\rdata: 1\r\revent: log\rdata: 2\r\r", want);
}

static void sse_multiline_data_and_comments(void **st) {
    (void)st;
    check_all_chunkings(": heartbeat comment\ndata: a\ndata: b\ndata\n\n", "message|a\nb\n|\n");
    /* no data: nothing dispatched, and the event name does not leak into the next event */
    check_all_chunkings("event: heartbeat\n\ndata: x\n\n", "message|x|\n");
    /* empty data line does dispatch an empty event */
    check_all_chunkings("event: end\ndata:\n\n", "end||\n");
}

static void sse_id_retry_unknown(void **st) {
    (void)st;
    check_all_chunkings("id: 7\nfoo: bar\nretry: 3000\ndata: x\n\ndata: y\n\n", "message|x|7\nmessage|y|7\n");
    lc_sse p;
    seen s = {STRBUF_INIT, 0, 0};
    lc_sse_init(&p, on_event, &s);
    lt_err err = {0};
    const char *t = "retry: 1500\n\nretry: 12x\n\n";
    assert_int_equal(lc_sse_feed(&p, t, strlen(t), &err), 0);
    assert_int_equal(p.retry_ms, 1500);
    lc_sse_free(&p);
    sb_free(&s.log);
}

static void sse_bom_and_unfinished(void **st) {
    (void)st;
    check_all_chunkings("\xEF\xBB\xBF"
                        "data: x\n\n",
                        "message|x|\n");
    /* an event without its blank line is discarded at the end of the stream */
    int n = 0;
    char *got = run_sse("data: done\n\ndata: half\n", 0, &n);
    assert_string_equal(got, "message|done|\n");
    assert_int_equal(n, 1);
    free(got);
}

static void sse_stop(void **st) {
    (void)st;
    seen s = {STRBUF_INIT, 0, 1};
    lc_sse p;
    lc_sse_init(&p, on_event, &s);
    lt_err err = {0};
    const char *t = "data: 1\n\ndata: 2\n\n";
    assert_int_equal(lc_sse_feed(&p, t, strlen(t), &err), 1);
    assert_int_equal(s.n, 1);
    assert_int_equal(lc_sse_feed(&p, t, strlen(t), &err), 1); /* ignored after a stop */
    assert_int_equal(s.n, 1);
    lc_sse_free(&p);
    sb_free(&s.log);
}

static void sse_line_limit(void **st) {
    (void)st;
    seen s = {STRBUF_INIT, 0, 0};
    lc_sse p;
    lc_sse_init(&p, on_event, &s);
    lt_err err = {0};
    size_t chunk = 1 << 20;
    char *buf = malloc(chunk);
    assert_non_null(buf);
    memset(buf, 'a', chunk);
    int rc = 0;
    for (size_t total = 0; total <= LC_SSE_MAX_LINE && rc == 0; total += chunk)
        rc = lc_sse_feed(&p, buf, chunk, &err);
    assert_int_equal(rc, -1);
    assert_non_null(strstr(err.msg, "longer than"));
    free(buf);
    lc_sse_free(&p);
    sb_free(&s.log);
}

/* ---- options ---- */

static const lc_opt opts[] = {
    {"steps", LC_INT, "N", "steps"},  {"learning-rate", LC_NUM, "LR", "lr"}, {"tag", LC_LIST, "TAG", "tag"},
    {"name", LC_STR, "NAME", "name"}, {"wait", LC_FLAG, NULL, "wait"},       {NULL, 0, NULL, NULL},
};

static void args_ok(void **st) {
    (void)st;
    char *argv[] = {
        "sft",    "--steps",  "5",        "--learning-rate=1e-4", "--tag", "a",  "--tag=b", "pos1",
        "--wait", "--server", "http://x", "--organization",       "acme",  "--", "--pos2"};
    lc_args a;
    lt_err err = {0};
    assert_int_equal(lc_args_parse(&a, opts, 1, (int)(sizeof argv / sizeof argv[0]), argv, &err), 0);
    assert_string_equal(lc_arg(&a, "steps"), "5");
    assert_string_equal(lc_arg(&a, "learning-rate"), "1e-4");
    size_t n;
    const char *const *tags = lc_list(&a, "tag", &n);
    assert_int_equal(n, 2);
    assert_string_equal(tags[0], "a");
    assert_string_equal(tags[1], "b");
    assert_true(lc_flag(&a, "wait"));
    assert_false(lc_flag(&a, "json"));
    assert_string_equal(lc_arg(&a, "org"), "acme");
    assert_int_equal(a.npos, 2);
    assert_string_equal(a.pos[0], "pos1");
    assert_string_equal(a.pos[1], "--pos2");
    assert_null(lc_arg(&a, "name"));
    lc_args_free(&a);
}

static void expect_usage(int argc, char **argv, int conn, const char *needle) {
    lc_args a;
    lt_err err = {0};
    assert_int_equal(lc_args_parse(&a, opts, conn, argc, argv, &err), -1);
    if (!strstr(err.msg, needle)) fail_msg("'%s' does not mention '%s'", err.msg, needle);
    lc_args_free(&a);
}

static void args_errors(void **st) {
    (void)st;
    char *a1[] = {"sft", "--steps", "five"};
    expect_usage(3, a1, 1, "--steps expects an integer, got 'five'");
    char *a2[] = {"sft", "--learning-rate", "nan"};
    expect_usage(3, a2, 1, "--learning-rate expects a number");
    char *a3[] = {"sft", "--bogus"};
    expect_usage(2, a3, 1, "unknown option '--bogus'");
    char *a4[] = {"sft", "--name"};
    expect_usage(2, a4, 1, "--name needs a value (NAME)");
    char *a5[] = {"sft", "--wait=1"};
    expect_usage(2, a5, 1, "--wait takes no value");
    char *a6[] = {"sft", "--server", "http://x"};
    expect_usage(3, a6, 0, "unknown option '--server'");
    char *a7[] = {"sft", "-x"};
    expect_usage(2, a7, 1, "unknown option '-x'");
}

static void help_lists_everything(void **st) {
    (void)st;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    lc_help(f, "train sft [options]", "Submit.", opts, 1);
    fclose(f);
    for (const lc_opt *o = opts; o->name; o++)
        assert_non_null(strstr(buf, o->name));
    assert_non_null(strstr(buf, "--api-key KEY"));
    assert_non_null(strstr(buf, "--json"));
    assert_non_null(strstr(buf, "(repeatable)"));
    free(buf);
}

/* ---- config and settings ---- */

static char tmpdir[256];

static int setup_tmp(void **st) {
    (void)st;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/lathe-test-client-XXXXXX");
    if (!mkdtemp(tmpdir)) return -1;
    setenv("XDG_CONFIG_HOME", tmpdir, 1);
    unsetenv("LATHE_SERVER");
    unsetenv("LATHE_API_KEY");
    unsetenv("LATHE_ORG");
    unsetenv("LATHE_WORKSPACE");
    unsetenv("LATHE_PROJECT");
    return 0;
}

static int teardown_tmp(void **st) {
    (void)st;
    lt_rm_rf(tmpdir);
    return 0;
}

static void config_round_trip(void **st) {
    (void)st;
    char *path = lc_config_path();
    assert_non_null(path);
    assert_non_null(strstr(path, "/lathe/config"));
    lc_conf c = {0};
    c.server = lt_strdup("http://10.0.0.1:9000");
    c.api_key = lt_strdup("lk_secret");
    c.org = lt_strdup("acme");
    lt_err err = {0};
    assert_int_equal(lc_config_save(&c, path, &err), 0);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    lc_conf_free(&c);

    /* file < env < flag, and the defaults fill what nobody set */
    lc_conf r;
    assert_int_equal(lc_conf_resolve(&r, NULL, &err), 0);
    assert_string_equal(r.server, "http://10.0.0.1:9000");
    assert_string_equal(r.api_key, "lk_secret");
    assert_string_equal(r.org, "acme");
    assert_string_equal(r.workspace, "main");
    assert_null(r.project);
    lc_conf_free(&r);

    setenv("LATHE_API_KEY", "lk_env", 1);
    setenv("LATHE_SERVER", "http://env:1/api/v1/", 1);
    char *argv[] = {"x", "--api-key", "lk_flag"};
    lc_args a;
    assert_int_equal(lc_args_parse(&a, NULL, 1, 3, argv, &err), 0);
    assert_int_equal(lc_conf_resolve(&r, &a, &err), 0);
    assert_string_equal(r.api_key, "lk_flag");
    assert_string_equal(r.server, "http://env:1");
    lc_conf_free(&r);
    lc_args_free(&a);
    unsetenv("LATHE_API_KEY");
    unsetenv("LATHE_SERVER");
    free(path);
}

static void config_errors(void **st) {
    (void)st;
    char *path = lc_config_path();
    lt_err err = {0};
    char dir[300];
    snprintf(dir, sizeof dir, "%s/lathe", tmpdir);
    assert_int_equal(lt_mkdir_p(dir, 0700, &err), 0);
    assert_int_equal(lt_write_file_atomic(path, "server = http://a\nbogus line\n", 29, 0600, &err), 0);
    lc_conf c = {0};
    assert_int_equal(lc_config_load(&c, path, &err), -1);
    assert_non_null(strstr(err.msg, ":2: expected 'key = value'"));
    lc_conf_free(&c);
    assert_int_equal(lt_write_file_atomic(path, "colour = red\n", 13, 0600, &err), 0);
    assert_int_equal(lc_config_load(&c, path, &err), -1);
    assert_non_null(strstr(err.msg, "unknown key 'colour'"));
    lc_conf_free(&c);
    assert_int_equal(lt_write_file_atomic(path, "server = ftp://x\n", 17, 0600, &err), 0);
    assert_int_equal(lc_conf_resolve(&c, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "must start with http://"));
    lc_conf_free(&c);
    unlink(path);
    free(path);
}

static void exit_codes(void **st) {
    (void)st;
    assert_int_equal(lc_exit_for(200), EXIT_OK);
    assert_int_equal(lc_exit_for(204), EXIT_OK);
    assert_int_equal(lc_exit_for(401), EXIT_CONN);
    assert_int_equal(lc_exit_for(403), EXIT_CONN);
    assert_int_equal(lc_exit_for(404), EXIT_NOTFOUND);
    assert_int_equal(lc_exit_for(409), EXIT_FAIL);
    assert_int_equal(lc_exit_for(422), EXIT_FAIL);
    assert_int_equal(lc_exit_for(500), EXIT_FAIL);
}

static void error_envelope_printed(void **st) {
    (void)st;
    lc_resp r = {0};
    r.status = 422;
    r.json = json_loads(
        "{\"code\":422,\"detail\":\"config.batch_size must be >= 1\",\"type\":\"validation_error\","
        "\"errors\":[{\"loc\":[\"body\",\"config\",\"batch_size\"],\"msg\":\"must be >= 1\","
        "\"type\":\"greater_than_equal\"},{\"loc\":[\"archive\",\"data.jsonl\",3],\"msg\":\"bad row\","
        "\"type\":\"value_error\"}]}",
        0, NULL);
    assert_non_null(r.json);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_int_equal(lc_print_error(f, "create job", &r), EXIT_FAIL);
    fclose(f);
    assert_non_null(strstr(buf, "422 validation_error: config.batch_size must be >= 1"));
    assert_non_null(strstr(buf, "  body.config.batch_size: must be >= 1 [greater_than_equal]"));
    assert_non_null(strstr(buf, "  archive.data.jsonl.3: bad row"));
    free(buf);
    lc_resp_free(&r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sse_basic),
        cmocka_unit_test(sse_line_ends),
        cmocka_unit_test(sse_multiline_data_and_comments),
        cmocka_unit_test(sse_id_retry_unknown),
        cmocka_unit_test(sse_bom_and_unfinished),
        cmocka_unit_test(sse_stop),
        cmocka_unit_test(sse_line_limit),
        cmocka_unit_test(args_ok),
        cmocka_unit_test(args_errors),
        cmocka_unit_test(help_lists_everything),
        cmocka_unit_test_setup_teardown(config_round_trip, setup_tmp, teardown_tmp),
        cmocka_unit_test_setup_teardown(config_errors, setup_tmp, teardown_tmp),
        cmocka_unit_test(exit_codes),
        cmocka_unit_test(error_envelope_printed),
    };
    return cmocka_run_group_tests_name("client", tests, NULL, NULL);
}
