/* Unit tests for util/manifest: the YAML reader (types, line numbers, refused constructs), semver, and the
 * dataset / capability / task rules with the exact message (file + line) of every error. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/manifest.h"
#include "util/util.h"

/* ---- items built by hand (archive_items_find needs them sorted) ---- */

static int cmp_item(const void *a, const void *b) {
    return strcmp(((const archive_item *)a)->path, ((const archive_item *)b)->path);
}

/* files: NULL-terminated pairs path, content */
static archive_items mk(const char *const *files) {
    archive_items it = ARCHIVE_ITEMS_INIT;
    size_t n = 0;
    while (files[2 * n])
        n++;
    it.v = calloc(n ? n : 1, sizeof *it.v);
    it.n = it.cap = n;
    for (size_t i = 0; i < n; i++) {
        it.v[i].path = lt_strdup(files[2 * i]);
        it.v[i].data = (unsigned char *)lt_strdup(files[2 * i + 1]);
        it.v[i].size = strlen(files[2 * i + 1]);
        it.total += it.v[i].size;
    }
    qsort(it.v, n, sizeof *it.v, cmp_item);
    return it;
}

/* ---- YAML ---- */

static void yaml_ok(const char *text, manifest_yaml *doc) {
    lt_err err = {0};
    manifest_loc loc;
    if (manifest_yaml_parse(text, strlen(text), "t.yaml", doc, &loc, &err) != 0)
        fail_msg("parse: %s", err.msg);
}

static void yaml_bad(const char *text, int code, const char *msg, int line) {
    lt_err err = {0};
    manifest_loc loc = {{0}, -1};
    manifest_yaml doc;
    assert_int_equal(manifest_yaml_parse(text, strlen(text), "t.yaml", &doc, &loc, &err), -1);
    assert_int_equal(err.code, code);
    if (strcmp(err.msg, msg) != 0) fail_msg("got '%s'\nwant '%s'", err.msg, msg);
    assert_string_equal(loc.file, "t.yaml");
    assert_int_equal(loc.line, line);
    assert_null(doc.root);
}

static void test_yaml_types_and_lines(void **state) {
    manifest_yaml doc;
    yaml_ok("# comment\n"
            "name: chat\n"
            "version: 0.1.0\n"
            "num: 1.0\n"
            "int: 42\n"
            "hex: 0x1f\n"
            "neg: -7\n"
            "flag: true\n"
            "nothing: ~\n"
            "empty:\n"
            "quoted: \"42\"\n"
            "single: 'true'\n"
            "tagged: !!str 12\n"
            "list:\n"
            "  - a\n"
            "  - {x: 1}\n"
            "odd/key~: 1\n"
            "block: |\n"
            "  line one\n"
            "  line two\n",
            &doc);
    json_t *r = doc.root;
    assert_string_equal(json_string_value(json_object_get(r, "version")), "0.1.0");
    assert_true(json_is_real(json_object_get(r, "num")));
    assert_int_equal(json_integer_value(json_object_get(r, "int")), 42);
    assert_int_equal(json_integer_value(json_object_get(r, "hex")), 31);
    assert_int_equal(json_integer_value(json_object_get(r, "neg")), -7);
    assert_true(json_is_true(json_object_get(r, "flag")));
    assert_true(json_is_null(json_object_get(r, "nothing")));
    assert_true(json_is_null(json_object_get(r, "empty")));
    assert_string_equal(json_string_value(json_object_get(r, "quoted")), "42");
    assert_string_equal(json_string_value(json_object_get(r, "single")), "true");
    assert_string_equal(json_string_value(json_object_get(r, "tagged")), "12");
    assert_string_equal(json_string_value(json_object_get(r, "block")), "line one\nline two\n");
    assert_int_equal(manifest_yaml_line(&doc, ""), 2);
    assert_int_equal(manifest_yaml_line(&doc, "/name"), 2);
    assert_int_equal(manifest_yaml_line(&doc, "/version"), 3);
    assert_int_equal(manifest_yaml_line(&doc, "/list"), 14);
    assert_int_equal(manifest_yaml_line(&doc, "/list/0"), 15);
    assert_int_equal(manifest_yaml_line(&doc, "/list/1"), 16);
    assert_int_equal(manifest_yaml_line(&doc, "/list/1/x"), 16);
    assert_int_equal(manifest_yaml_line(&doc, "/odd~1key~0"), 17);
    assert_int_equal(manifest_yaml_line(&doc, "/missing"), 0);
    manifest_yaml_free(&doc);
}

static void test_yaml_refused(void **state) {
    yaml_bad("a: &x [1, 2]\nb: *x\n", 422,
             "t.yaml line 2: aliases (*x) are not supported; write the value out", 2);
    yaml_bad("a: 1\nb: 2\na: 3\n", 422, "t.yaml line 3: duplicate key 'a' (first at line 1); keep one", 3);
    yaml_bad("? [a, b]\n: 1\n", 422, "t.yaml line 1: a key is a mapping or a list; keys must be plain text",
             1);
    yaml_bad("~: 1\n", 422, "t.yaml line 1: a key is empty; give every key a name", 1);
    yaml_bad("a: 1\ntrue: 2\n", 422,
             "t.yaml line 2: the key 'true' reads as a boolean; keys must be text (put it in quotes)", 2);
    yaml_bad("splits:\n  2024: a.jsonl\n", 422,
             "t.yaml line 2: the key '2024' reads as a number; keys must be text (put it in quotes)", 2);
    yaml_bad("a: 1\n---\nb: 2\n", 422, "t.yaml line 2: a second YAML document; keep one document per file",
             2);
    yaml_bad("a: !custom x\n", 422, "t.yaml line 1: the tag !custom is not supported; remove it", 1);
    yaml_bad("a: .inf\n", 422, "t.yaml line 1: .inf is not supported; quote it if it is text", 1);
    yaml_bad("a: 99999999999999999999\n", 422,
             "t.yaml line 1: the number 99999999999999999999 is out of range; quote it if it is text", 1);
    yaml_bad("a: !!int abc\n", 422, "t.yaml line 1: 'abc' does not match its tag tag:yaml.org,2002:int", 1);
    yaml_bad("a: [1, 2\n", 422,
             "t.yaml line 2: invalid YAML: did not find expected ',' or ']' while parsing a flow "
             "sequence",
             2);
    yaml_bad("", 422, "t.yaml: the file is empty", 0);
    yaml_bad("a: \xff\n", 422, "t.yaml: not valid UTF-8", 0);
    /* nesting bomb */
    char deep[400];
    memset(deep, '[', 200);
    deep[200] = '\0';
    yaml_bad(deep, 422, "t.yaml line 1: nested deeper than 64 levels", 1);
}

static void test_semver(void **state) {
    long v[3];
    assert_int_equal(manifest_semver_parse("1.10.0", v), 0);
    assert_int_equal(v[1], 10);
    const char *bad[] = {"1.0", "1.0.0-rc1", "1.0.0+b", "01.0.0",         "a.b.c",
                         "",    "1..0",      "1.0.0.",  "99999999999.0.0"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        if (manifest_semver_parse(bad[i], v) == 0) fail_msg("accepted %s", bad[i]);
    assert_true(manifest_semver_cmp("1.10.0", "1.9.0") > 0);
    assert_true(manifest_semver_cmp("0.1.0", "0.1.0") == 0);
    assert_true(manifest_semver_cmp("2.0.0", "10.0.0") < 0);
}

static void test_names(void **state) {
    assert_true(manifest_name_valid(MANIFEST_CAPABILITY, "web-recon2"));
    assert_false(manifest_name_valid(MANIFEST_CAPABILITY, "Web"));
    assert_false(manifest_name_valid(MANIFEST_CAPABILITY, "-x"));
    assert_false(manifest_name_valid(MANIFEST_CAPABILITY, "a_b"));
    assert_true(manifest_name_valid(MANIFEST_DATASET, "GSM8K_v2.train"));
    assert_false(manifest_name_valid(MANIFEST_DATASET, "a/b"));
    assert_false(manifest_name_valid(MANIFEST_DATASET, "a@1"));
    assert_false(manifest_name_valid(MANIFEST_TASK, ""));
}

/* ---- dataset.yaml ---- */

static json_t *dataset(const char *const *files, lt_err *err, manifest_loc *loc) {
    archive_items it = mk(files);
    json_t *m = manifest_dataset(&it, loc, err);
    archive_items_free(&it);
    return m;
}

static void dataset_bad(const char *const *files, const char *msg, const char *file, int line) {
    lt_err err = {0};
    manifest_loc loc = {{0}, -1};
    json_t *m = dataset(files, &err, &loc);
    if (m) fail_msg("accepted; wanted '%s'", msg);
    assert_int_equal(err.code, 422);
    if (strcmp(err.msg, msg) != 0) fail_msg("got '%s'\nwant '%s'", err.msg, msg);
    assert_string_equal(loc.file, file);
    assert_int_equal(loc.line, line);
}

static void test_dataset_defaults_and_discovery(void **state) {
    const char *files[] = {"dataset.yaml",
                           "name: chat\ndescription: a chat set\n",
                           "b.jsonl",
                           "{}",
                           "a/x.jsonl",
                           "{}",
                           "notes.md",
                           "x",
                           NULL};
    lt_err err;
    json_t *m = dataset(files, &err, NULL);
    assert_non_null(m);
    assert_string_equal(json_string_value(json_object_get(m, "version")), "0.1.0");
    assert_string_equal(json_string_value(json_object_get(m, "format")), "jsonl");
    assert_string_equal(json_string_value(json_object_get(m, "summary")), "a chat set");
    json_t *train = json_object_get(json_object_get(m, "splits"), "train");
    assert_int_equal(json_array_size(train), 2);
    assert_string_equal(json_string_value(json_array_get(train, 0)), "a/x.jsonl"); /* sorted */
    assert_string_equal(json_string_value(json_array_get(train, 1)), "b.jsonl");
    json_decref(m);
}

static void test_dataset_splits_and_files(void **state) {
    const char *files[] = {"dataset.yaml",
                           "name: qa\nversion: 1.2.3\nsummary: s\nformat: csv\nrow_count: 3\nsplits:\n"
                           "  train: ./data/train.csv\n  test: [data/t1.csv, data/t2.csv]\n",
                           "data/train.csv",
                           "a\n",
                           "data/t1.csv",
                           "a\n",
                           "data/t2.csv",
                           "a\n",
                           NULL};
    lt_err err;
    json_t *m = dataset(files, &err, NULL);
    assert_non_null(m);
    json_t *splits = json_object_get(m, "splits");
    assert_string_equal(json_string_value(json_array_get(json_object_get(splits, "train"), 0)),
                        "data/train.csv");
    assert_int_equal(json_array_size(json_object_get(splits, "test")), 2);
    assert_string_equal(json_string_value(json_object_get(m, "format")), "csv");
    json_decref(m);
    const char *f2[] = {
        "dataset.yaml", "name: qa\nfiles:\n  - a.json\n", "a.json", "[]", "b.json", "[]", NULL};
    m = dataset(f2, &err, NULL);
    assert_non_null(m);
    assert_int_equal(json_array_size(json_object_get(json_object_get(m, "splits"), "train")), 1);
    assert_null(json_object_get(m, "files"));
    assert_string_equal(json_string_value(json_object_get(m, "format")), "json");
    json_decref(m);
}

static void test_dataset_errors(void **state) {
    const char *nomanifest[] = {"a.jsonl", "{}", NULL};
    dataset_bad(nomanifest, "dataset.yaml: not found at the archive root", "dataset.yaml", 0);
    const char *notmap[] = {"dataset.yaml", "- a\n- b\n", NULL};
    dataset_bad(notmap, "dataset.yaml line 1: must be a mapping of keys (name: ..., version: ...)",
                "dataset.yaml", 1);
    const char *noname[] = {"dataset.yaml", "summary: x\n", "a.jsonl", "{}", NULL};
    dataset_bad(noname, "dataset.yaml: name is required", "dataset.yaml", 0);
    const char *badname[] = {"dataset.yaml", "summary: x\nname: a/b\n", "a.jsonl", "{}", NULL};
    dataset_bad(
        badname,
        "dataset.yaml line 2: name 'a/b' is not allowed: use letters, digits, '.', '_' and '-', starting "
        "with a letter or digit (at most 128)",
        "dataset.yaml", 2);
    const char *numver[] = {"dataset.yaml", "name: a\nversion: 1.0\n", "a.jsonl", "{}", NULL};
    dataset_bad(numver, "dataset.yaml line 2: version must be text, not a number (put it in quotes)",
                "dataset.yaml", 2);
    const char *badver[] = {"dataset.yaml", "name: a\nversion: 1.0.0-rc1\n", "a.jsonl", "{}", NULL};
    dataset_bad(
        badver,
        "dataset.yaml line 2: version '1.0.0-rc1' is not a semantic version X.Y.Z (like 1.0.0; no suffixes)",
        "dataset.yaml", 2);
    const char *fmt[] = {"dataset.yaml", "name: a\n\nformat: parquet\n", "a.jsonl", "{}", NULL};
    dataset_bad(fmt, "dataset.yaml line 3: format must be one of jsonl, json, csv (got 'parquet')",
                "dataset.yaml", 3);
    const char *rc[] = {"dataset.yaml", "name: a\nrow_count: -1\n", "a.jsonl", "{}", NULL};
    dataset_bad(rc, "dataset.yaml line 2: row_count must be an integer >= 0", "dataset.yaml", 2);
    const char *missing[] = {"dataset.yaml", "name: a\nsplits:\n  train: a.jsonl\n  test: nope.jsonl\n",
                             "a.jsonl", "{}", NULL};
    dataset_bad(missing, "dataset.yaml line 4: splits.test 'nope.jsonl' is not a file in the archive",
                "dataset.yaml", 4);
    const char *escape[] = {"dataset.yaml", "name: a\nsplits:\n  train: ../etc/passwd\n", NULL};
    dataset_bad(
        escape,
        "dataset.yaml line 3: splits.train '../etc/passwd' must be a relative path inside the archive",
        "dataset.yaml", 3);
    const char *listitem[] = {"dataset.yaml", "name: a\nsplits:\n  train:\n    - a.jsonl\n    - 5\n",
                              "a.jsonl", "{}", NULL};
    dataset_bad(listitem, "dataset.yaml line 5: splits.train must be a relative path, not an integer",
                "dataset.yaml", 5);
    const char *mismatch[] = {"dataset.yaml", "name: a\nformat: csv\nsplits:\n  train: a.jsonl\n", "a.jsonl",
                              "{}", NULL};
    dataset_bad(mismatch, "dataset.yaml line 4: splits.train 'a.jsonl' is jsonl but format is csv",
                "dataset.yaml", 4);
    const char *badsplit[] = {"dataset.yaml", "name: a\nsplits:\n  'x y': a.jsonl\n", "a.jsonl", "{}", NULL};
    dataset_bad(badsplit,
                "dataset.yaml line 3: split name 'x y' is not allowed: use letters, digits, '.', '_' and '-'",
                "dataset.yaml", 3);
    const char *splitsnotmap[] = {"dataset.yaml", "name: a\nsplits: [a.jsonl]\n", "a.jsonl", "{}", NULL};
    dataset_bad(
        splitsnotmap,
        "dataset.yaml line 2: splits must be a mapping of split name to path (train: data/train.jsonl)",
        "dataset.yaml", 2);
    const char *filesbad[] = {"dataset.yaml", "name: a\nfiles: a.jsonl\n", "a.jsonl", "{}", NULL};
    dataset_bad(filesbad, "dataset.yaml line 2: files must be a non-empty list of paths", "dataset.yaml", 2);
    const char *nodata[] = {"dataset.yaml", "name: a\n", "readme.md", "x", NULL};
    dataset_bad(
        nodata,
        "dataset.yaml: no data files: add `splits` or `files`, or put *.jsonl, *.json or *.csv files in the "
        "archive",
        "dataset.yaml", 0);
    const char *fmtdisc[] = {"dataset.yaml", "name: a\nformat: csv\n", "a.jsonl", "{}", NULL};
    dataset_bad(
        fmtdisc,
        "dataset.yaml: no data files: add `splits` or `files`, or put *.jsonl, *.json or *.csv files in the "
        "archive",
        "dataset.yaml", 0);
}

static void test_dataset_row_count(void **state) {
    const char *files[] = {"dataset.yaml", "name: a\n\nrow_count: 3\n", "a.jsonl", "{}", NULL};
    archive_items it = mk(files);
    lt_err err = {0};
    manifest_loc loc = {{0}, -1};
    json_t *m = manifest_dataset(&it, &loc, &err);
    assert_non_null(m);
    assert_int_equal(manifest_dataset_check_count(&it, m, 3, &loc, &err), 0);
    assert_int_equal(manifest_dataset_check_count(&it, m, 2, &loc, &err), -1);
    assert_int_equal(err.code, 422);
    assert_string_equal(
        err.msg, "dataset.yaml line 3: row_count is 3 but the data files hold 2 rows; fix or remove it");
    assert_int_equal(loc.line, 3);
    json_object_del(m, "row_count"); /* no row_count: nothing to check */
    assert_int_equal(manifest_dataset_check_count(&it, m, 2, &loc, &err), 0);
    json_decref(m);
    archive_items_free(&it);
}

/* ---- capability.yaml ---- */

static void test_capability(void **state) {
    const char *files[] = {"capability.yaml",
                           "name: web-recon\nversion: 1.0.0\ndescription: Recon helper\nentry_agent: main\n",
                           "agents/a.md",
                           "first",
                           "agents/main.txt",
                           "---\ntitle: x\nmodel: y\n---\n\nYou map web apps.\n\n",
                           NULL};
    archive_items it = mk(files);
    char *prompt = NULL;
    lt_err err;
    json_t *m = manifest_capability(&it, &prompt, NULL, &err);
    assert_non_null(m);
    assert_string_equal(prompt, "You map web apps.");
    assert_string_equal(json_string_value(json_object_get(m, "entry_agent")), "main");
    json_decref(m);
    free(prompt);
    archive_items_free(&it);
    /* no entry_agent: first in sorted order, .md and .txt alike; nested files do not count */
    const char *f2[] = {"capability.yaml",
                        "name: c\nversion: 0.1.0\ndescription: d\n",
                        "agents/b.md",
                        "B",
                        "agents/a.txt",
                        "A",
                        "agents/0/z.md",
                        "Z",
                        NULL};
    it = mk(f2);
    m = manifest_capability(&it, &prompt, NULL, &err);
    assert_non_null(m);
    assert_string_equal(prompt, "A");
    json_decref(m);
    free(prompt);
    archive_items_free(&it);
    const char *f3[] = {"capability.yaml", "name: c\nversion: 0.1.0\ndescription: d\n", NULL};
    it = mk(f3);
    m = manifest_capability(&it, &prompt, NULL, &err);
    assert_non_null(m);
    assert_string_equal(prompt, "");
    json_decref(m);
    free(prompt);
    archive_items_free(&it);
}

static void cap_bad(const char *const *files, const char *msg, const char *file, int line) {
    archive_items it = mk(files);
    char *prompt = (char *)"sentinel";
    lt_err err = {0};
    manifest_loc loc = {{0}, -1};
    json_t *m = manifest_capability(&it, &prompt, &loc, &err);
    archive_items_free(&it);
    if (m) fail_msg("accepted; wanted '%s'", msg);
    assert_null(prompt);
    if (strcmp(err.msg, msg) != 0) fail_msg("got '%s'\nwant '%s'", err.msg, msg);
    assert_int_equal(err.code, 422);
    assert_string_equal(loc.file, file);
    assert_int_equal(loc.line, line);
}

static void test_capability_errors(void **state) {
    const char *upper[] = {"capability.yaml", "name: Web\nversion: 1.0.0\ndescription: d\n", NULL};
    cap_bad(upper,
            "capability.yaml line 1: name 'Web' is not allowed: use lowercase letters, digits and '-', "
            "starting with a "
            "letter or digit (at most 128)",
            "capability.yaml", 1);
    const char *nover[] = {"capability.yaml", "name: w\ndescription: d\n", NULL};
    cap_bad(nover, "capability.yaml: version is required", "capability.yaml", 0);
    const char *emptydesc[] = {"capability.yaml", "name: w\nversion: 1.0.0\ndescription: '  '\n", NULL};
    cap_bad(emptydesc, "capability.yaml line 3: description must not be empty", "capability.yaml", 3);
    const char *nodesc[] = {"capability.yaml", "name: w\nversion: 1.0.0\n", NULL};
    cap_bad(nodesc, "capability.yaml: description is required", "capability.yaml", 0);
    const char *noagent[] = {"capability.yaml",
                             "name: w\nversion: 1.0.0\ndescription: d\nentry_agent: boss\n", "agents/a.md",
                             "x", NULL};
    cap_bad(noagent,
            "capability.yaml line 4: entry_agent 'boss': neither agents/boss.md nor agents/boss.txt is in "
            "the archive",
            "capability.yaml", 4);
    const char *slash[] = {"capability.yaml", "name: w\nversion: 1.0.0\ndescription: d\nentry_agent: ../x\n",
                           NULL};
    cap_bad(slash,
            "capability.yaml line 4: entry_agent '../x' must be a file name without '/' "
            "(agents/<entry_agent>.md)",
            "capability.yaml", 4);
    const char *binary[] = {"capability.yaml", "name: w\nversion: 1.0.0\ndescription: d\n", "agents/a.md",
                            "\xff\xfe", NULL};
    cap_bad(binary, "agents/a.md: the prompt is not valid UTF-8 text", "agents/a.md", 0);
}

static void test_front_matter(void **state) {
    char *s = manifest_strip_front_matter("---\na: 1\n...\nbody\n");
    assert_string_equal(s, "body");
    free(s);
    s = manifest_strip_front_matter("---\nnot closed\nbody");
    assert_string_equal(s, "---\nnot closed\nbody");
    free(s);
    s = manifest_strip_front_matter("\xef\xbb\xbf---\r\nx: y\r\n---\r\nhello\r\n");
    assert_string_equal(s, "hello");
    free(s);
    s = manifest_strip_front_matter("----\nnot front matter\n");
    assert_string_equal(s, "----\nnot front matter");
    free(s);
}

/* ---- task.yaml ---- */

static json_t *task(const char *yaml, lt_err *err, manifest_loc *loc) {
    const char *files[] = {"task.yaml", yaml, NULL};
    archive_items it = mk(files);
    json_t *m = manifest_task(&it, loc, err);
    archive_items_free(&it);
    return m;
}

static void task_bad(const char *yaml, const char *msg, int line) {
    lt_err err = {0};
    manifest_loc loc = {{0}, -1};
    json_t *m = task(yaml, &err, &loc);
    if (m) fail_msg("accepted; wanted '%s'", msg);
    if (strcmp(err.msg, msg) != 0) fail_msg("got '%s'\nwant '%s'", err.msg, msg);
    assert_int_equal(err.code, 422);
    assert_string_equal(loc.file, "task.yaml");
    assert_int_equal(loc.line, line);
}

static void test_task(void **state) {
    lt_err err;
    json_t *m = task("name: ctf\nversion: 1.0.0\ninstruction: 'Find the flag on {{host}}'\nverification:\n"
                     "  method: flag\n  flag_hash: "
                     "SHA256:ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789\n",
                     &err, NULL);
    assert_null(m); /* the prefix must be lowercase "sha256:" */
    m = task("name: ctf\nversion: 1.0.0\ninstruction: 'Find the flag on {{host}}'\nverification:\n"
             "  method: flag\n  flag_hash: "
             "sha256:ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789\n",
             &err, NULL);
    assert_non_null(m);
    json_t *v = json_object_get(m, "verification");
    assert_string_equal(json_string_value(json_object_get(v, "hash")),
                        "sha256:abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789");
    assert_null(json_object_get(v, "flag_hash"));
    json_decref(m);
    m = task("name: t\nversion: 1.0.0\ninstruction: x\nverification: {method: exact, expected: '42'}\n", &err,
             NULL);
    assert_non_null(m);
    json_decref(m);
    m = task("name: t\nversion: 1.0.0\ninstruction: x\nverification: {method: regex, pattern: '^\\d+$'}\n",
             &err, NULL);
    assert_non_null(m);
    json_decref(m);
    m = task("name: t\nversion: 1.0.0\ninstruction: x\n", &err, NULL); /* verification is optional */
    assert_non_null(m);
    json_decref(m);
}

static void test_task_errors(void **state) {
    task_bad("name: t\nversion: 1.0.0\n", "task.yaml: instruction is required", 0);
    task_bad("name: t\nversion: 1.0.0\ninstruction: ''\n", "task.yaml line 3: instruction must not be empty",
             3);
    task_bad("name: t\nversion: 1.0.0\ninstruction: x\nverification: flag\n",
             "task.yaml line 4: verification must be a mapping ({method: flag|exact|regex, ...}), not text",
             4);
    task_bad("name: t\nversion: 1.0.0\ninstruction: x\nverification:\n  hash: x\n",
             "task.yaml line 4: verification.method is required: flag, exact or regex", 4);
    task_bad("name: t\nversion: 1.0.0\ninstruction: x\nverification:\n  method: judge\n",
             "task.yaml line 5: verification.method must be flag, exact or regex (got 'judge')", 5);
    task_bad("name: t\nversion: 1.0.0\ninstruction: x\nverification:\n  method: flag\n",
             "task.yaml line 5: verification.hash is required for method flag (\"sha256:<64 hex digits>\")",
             5);
    task_bad("name: t\nversion: 1.0.0\ninstruction: x\nverification:\n  method: flag\n  hash: sha256:abc\n",
             "task.yaml line 6: verification.hash must be \"sha256:\" followed by 64 hex digits", 6);
    task_bad("name: t\nversion: 1.0.0\ninstruction: x\nverification:\n  method: exact\n  expected: 42\n",
             "task.yaml line 6: verification.expected must be text for method exact (put it in quotes)", 6);
    task_bad("name: t\nversion: 1.0.0\ninstruction: x\nverification:\n  method: regex\n",
             "task.yaml line 5: verification.pattern must be text for method regex", 5);
    task_bad(
        "name: t\nversion: 1.0.0\ninstruction: x\nverification:\n  method: regex\n  pattern: 'a(b'\n",
        "task.yaml line 6: verification.pattern is not a valid PCRE2 regex: missing closing parenthesis at "
        "offset 3",
        6);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_yaml_types_and_lines),
        cmocka_unit_test(test_yaml_refused),
        cmocka_unit_test(test_semver),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_dataset_defaults_and_discovery),
        cmocka_unit_test(test_dataset_splits_and_files),
        cmocka_unit_test(test_dataset_errors),
        cmocka_unit_test(test_dataset_row_count),
        cmocka_unit_test(test_capability),
        cmocka_unit_test(test_capability_errors),
        cmocka_unit_test(test_front_matter),
        cmocka_unit_test(test_task),
        cmocka_unit_test(test_task_errors),
    };
    return cmocka_run_group_tests_name("manifest", tests, NULL, NULL);
}
