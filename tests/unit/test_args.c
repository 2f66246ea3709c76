/* test_args.c: the option parser's group-level parts (client.h): the parse flags (LC_CONN's empty-value
 * rule, LC_NONEMPTY, LC_NO_JSON), a second (shared) table, the option at fault after an error,
 * lc_arg_or_env, and lc_dispatch_group on an offline group: shared options before or after the verb, an
 * option before the verb that the group does not share, another verb's option (the message names that verb),
 * a misplaced verb, VERB --help and help VERB. Messages are read back from stdout/stderr redirected to a
 * file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "util/util.h"

static const lc_opt own[] = {
    {"email", LC_STR, "EMAIL", "email"},
    {"n", LC_INT, "N", "count"},
    {NULL, 0, NULL, NULL},
};

static const lc_opt shared[] = {
    {"data-dir", LC_STR, "DIR", "data dir"},
    {NULL, 0, NULL, NULL},
};

static int parse(const lc_opt *opts, const lc_opt *sh, int flags, int argc, char **argv, lc_args *a,
                 lt_err *err) {
    memset(err, 0, sizeof *err);
    return lc_args_parse_with(a, opts, sh, flags, argc, argv, err);
}

static void empty_values(void **st) {
    (void)st;
    lc_args a;
    lt_err err;
    char *a1[] = {"v", "--email="};
    assert_int_equal(parse(own, NULL, 0, 2, a1, &a, &err), 0); /* allowed without LC_NONEMPTY */
    assert_string_equal(lc_arg(&a, "email"), "");
    lc_args_free(&a);
    assert_int_equal(parse(own, NULL, LC_NONEMPTY, 2, a1, &a, &err), -1);
    assert_non_null(strstr(err.msg, "--email is empty"));
    assert_string_equal(a.bad, "--email=");
    assert_int_equal(a.bad_unknown, 0);
    lc_args_free(&a);
    char *a2[] = {"v", "--email", ""};
    assert_int_equal(parse(own, NULL, LC_NONEMPTY, 3, a2, &a, &err), -1);
    lc_args_free(&a);
    /* a connection option may never be empty: `--org=` must not mean the default org */
    char *a3[] = {"get", "--org=", "JOB"};
    assert_int_equal(parse(NULL, NULL, LC_CONN, 3, a3, &a, &err), -1);
    assert_non_null(strstr(err.msg, "--org is empty"));
    lc_args_free(&a);
    char *a4[] = {"get", "--organization", ""};
    assert_int_equal(parse(NULL, NULL, LC_CONN, 3, a4, &a, &err), -1);
    lc_args_free(&a);
    char *a5[] = {"get", "--api-key="};
    assert_int_equal(parse(NULL, NULL, LC_CONN, 2, a5, &a, &err), -1);
    lc_args_free(&a);
}

static void no_json_and_shared(void **st) {
    (void)st;
    lc_args a;
    lt_err err;
    char *a1[] = {"worker", "--json"};
    assert_int_equal(parse(own, NULL, LC_NO_JSON, 2, a1, &a, &err), -1);
    assert_non_null(strstr(err.msg, "unknown option '--json'"));
    assert_int_equal(a.bad_unknown, 1);
    lc_args_free(&a);
    assert_int_equal(parse(own, NULL, 0, 2, a1, &a, &err), 0);
    assert_true(lc_flag(&a, "json"));
    lc_args_free(&a);
    char *a2[] = {"v", "--data-dir", "/d", "--email", "e", "--n=3", "--help"};
    assert_int_equal(parse(own, shared, LC_NONEMPTY, 7, a2, &a, &err), 0);
    assert_string_equal(lc_arg(&a, "data-dir"), "/d");
    assert_string_equal(lc_arg(&a, "n"), "3");
    assert_true(lc_flag(&a, "help"));
    assert_null(a.bad);
    /* flag > environment > default */
    setenv("LATHE_TEST_ARGS", "env", 1);
    assert_string_equal(lc_arg_or_env(&a, "email", "LATHE_TEST_ARGS", "dflt"), "e");
    assert_string_equal(lc_arg_or_env(&a, "s", "LATHE_TEST_ARGS", "dflt"), "env");
    setenv("LATHE_TEST_ARGS", "", 1);
    assert_string_equal(lc_arg_or_env(&a, "s", "LATHE_TEST_ARGS", "dflt"), "dflt");
    unsetenv("LATHE_TEST_ARGS");
    assert_null(lc_arg_or_env(&a, "s", "LATHE_TEST_ARGS", NULL));
    lc_args_free(&a);
    assert_int_equal(parse(own, NULL, 0, 7, a2, &a, &err), -1); /* without the shared table */
    assert_string_equal(a.bad, "--data-dir");
    assert_int_equal(a.bad_unknown, 1);
    lc_args_free(&a);
    char *a3[] = {"v", "--n", "x"};
    assert_int_equal(parse(own, shared, 0, 3, a3, &a, &err), -1);
    assert_string_equal(a.bad, "--n");
    assert_int_equal(a.bad_unknown, 0);
    lc_args_free(&a);
}

/* ---- lc_dispatch_group ---- */

static int ran;
static char seen_email[64], seen_dir[64];

static int v_make(lc_client *c, const lc_args *a, const char *group) {
    assert_null(c); /* an offline group builds no client */
    assert_string_equal(group, "grp");
    ran++;
    snprintf(seen_email, sizeof seen_email, "%s", lc_arg(a, "email") ? lc_arg(a, "email") : "");
    snprintf(seen_dir, sizeof seen_dir, "%s", lc_arg(a, "data-dir") ? lc_arg(a, "data-dir") : "");
    return 0;
}

static const lc_opt grant_opts[] = {
    {"role", LC_STR, "ROLE", "role"},
    {NULL, 0, NULL, NULL},
};

static const lc_verb gverbs[] = {
    {"make", v_make, own, "make --email EMAIL", "make one", 0, 0},
    {"grant", v_make, grant_opts, "grant --role ROLE", "grant one", 0, 0},
};

static const lc_group grp = {"A test group.", gverbs, 2, shared, "store", LC_NONEMPTY};

static char out_path[64], err_path[64];

/* Runs lc_dispatch_group with stdout and stderr sent to files; returns the exit code. */
static int run_group(int argc, char **argv) {
    fflush(stdout);
    fflush(stderr);
    int so = dup(1), se = dup(2);
    assert_non_null(freopen(out_path, "w", stdout));
    assert_non_null(freopen(err_path, "w", stderr));
    int rc = lc_dispatch_group(&grp, argc, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(so, 1);
    dup2(se, 2);
    close(so);
    close(se);
    return rc;
}

static char *slurp(const char *path) {
    size_t n = 0;
    lt_err err = {0};
    char *s = lt_read_file(path, &n, &err);
    assert_non_null(s);
    return s;
}

static void expect(int argc, char **argv, int code, const char *out_needle, const char *err_needle) {
    assert_int_equal(run_group(argc, argv), code);
    char *o = slurp(out_path), *e = slurp(err_path);
    if (out_needle && !strstr(o, out_needle)) fail_msg("stdout '%s' lacks '%s'", o, out_needle);
    if (err_needle && !strstr(e, err_needle)) fail_msg("stderr '%s' lacks '%s'", e, err_needle);
    free(o);
    free(e);
}

static int setup_files(void **st) {
    (void)st;
    snprintf(out_path, sizeof out_path, "/tmp/lathe-test-args-out-%d", (int)getpid());
    snprintf(err_path, sizeof err_path, "/tmp/lathe-test-args-err-%d", (int)getpid());
    return 0;
}

static int teardown_files(void **st) {
    (void)st;
    unlink(out_path);
    unlink(err_path);
    return 0;
}

static void group_dispatch(void **st) {
    (void)st;
    ran = 0;
    char *a1[] = {"grp", "--data-dir", "/d", "make", "--email", "e@x"};
    expect(6, a1, 0, NULL, NULL);
    assert_int_equal(ran, 1);
    assert_string_equal(seen_email, "e@x");
    assert_string_equal(seen_dir, "/d");
    char *a2[] = {"grp", "make", "--email=f@x", "--data-dir=/e"};
    expect(4, a2, 0, NULL, NULL);
    assert_string_equal(seen_email, "f@x");
    assert_string_equal(seen_dir, "/e");
    assert_int_equal(ran, 2);
    /* another verb's option: named, with the verb that takes it */
    char *a3[] = {"grp", "make", "--role", "owner"};
    expect(4, a3, EXIT_USAGE, NULL, "--role is an option of grant, not of make");
    /* a verb option before the verb */
    char *a4[] = {"grp", "--role", "x", "grant"};
    expect(4, a4, EXIT_USAGE, NULL, "'--role' comes before the verb");
    /* a misplaced second verb */
    char *a5[] = {"grp", "make", "grant"};
    expect(3, a5, EXIT_USAGE, NULL, "unexpected argument 'grant' (that is another verb");
    /* empty values, missing values */
    char *a6[] = {"grp", "make", "--email="};
    expect(3, a6, EXIT_USAGE, NULL, "--email is empty");
    char *a7[] = {"grp", "--data-dir"};
    expect(2, a7, EXIT_USAGE, NULL, "--data-dir needs a value");
    assert_int_equal(ran, 2);
    /* help: the group's, the verb's (own options and the shared ones, not the other verb's) */
    char *a8[] = {"grp", "--help"};
    expect(2, a8, 0, "  grant        grant one", NULL);
    char *a9[] = {"grp", "--data-dir", "/d", "grant", "--help"};
    expect(5, a9, 0, "usage: lathe grp grant --role ROLE", NULL);
    char *o = slurp(out_path);
    assert_non_null(strstr(o, "--data-dir DIR"));
    assert_non_null(strstr(o, "\nstore:\n"));
    assert_non_null(strstr(o, "print the result as JSON"));
    assert_null(strstr(o, "--email"));
    free(o);
    char *a10[] = {"grp", "help", "make"};
    expect(3, a10, 0, "usage: lathe grp make --email EMAIL", NULL);
    char *a11[] = {"grp", "--data-dir", "/d"};
    expect(3, a11, EXIT_USAGE, NULL, "no verb given");
    char *a12[] = {"grp", "nope"};
    expect(2, a12, EXIT_USAGE, NULL, "unknown verb 'nope'");
    assert_int_equal(ran, 2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(empty_values),
        cmocka_unit_test(no_json_and_shared),
        cmocka_unit_test_setup_teardown(group_dispatch, setup_files, teardown_files),
    };
    return cmocka_run_group_tests_name("args", tests, NULL, NULL);
}
