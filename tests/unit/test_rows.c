/* Unit tests for train/rows: the three file readers (with line numbers), shapes, conversion to conversations
 * and RL prompts, capability prompt injection, templates, and the exact text of every error. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/rows.h"
#include "util/strbuf.h"
#include "util/util.h"

/* ---- helpers ---- */

typedef struct collected {
    json_t *rows;
    long lines[64];
    size_t n;
} collected;

static int collect(const json_t *row, long line, void *ud, lt_err *err) {
    collected *c = ud;
    json_array_append(c->rows, (json_t *)row);
    c->lines[c->n++] = line;
    return 0;
}

static collected parse_ok(const char *text, rows_format fmt) {
    collected c = {json_array(), {0}, 0};
    lt_err err = {0};
    if (rows_parse(text, strlen(text), fmt, "train", "f", collect, &c, NULL, &err) != 0)
        fail_msg("parse failed: %s", err.msg);
    return c;
}

static void parse_bad(const char *text, rows_format fmt, const char *msg, long line) {
    collected c = {json_array(), {0}, 0};
    lt_err err = {0};
    rows_loc loc = {"", "", -1};
    assert_int_equal(rows_parse(text, strlen(text), fmt, "train", "data/f.x", collect, &c, &loc, &err), -1);
    assert_int_equal(err.code, 422);
    if (strcmp(err.msg, msg) != 0) fail_msg("got  '%s'\nwant '%s'", err.msg, msg);
    assert_string_equal(loc.split, "train");
    assert_string_equal(loc.file, "data/f.x");
    assert_int_equal(loc.line, line);
    json_decref(c.rows);
}

static const char *str_at(const json_t *rows, size_t i, const char *key) {
    return json_string_value(json_object_get(json_array_get(rows, i), key));
}

static json_t *J(const char *text) {
    json_error_t je;
    json_t *v = json_loads(text, 0, &je);
    if (!v) fail_msg("bad test JSON: %s", je.text);
    return v;
}

/* Asserts that a JSON value serializes (sorted keys, compact) to `want`. */
static void assert_json(const json_t *v, const char *want) {
    char *got = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    json_t *w = J(want);
    char *wn = json_dumps(w, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    if (strcmp(got, wn) != 0) fail_msg("got  %s\nwant %s", got, wn);
    free(got);
    free(wn);
    json_decref(w);
}

/* ---- JSONL ---- */

static void test_jsonl(void **state) {
    collected c = parse_ok("\xef\xbb\xbf{\"prompt\":\"a\"}\r\n\n   \n{\"prompt\":\"b\"}\n{\"prompt\":\"c\"}",
                           ROWS_JSONL);
    assert_int_equal(c.n, 3);
    assert_int_equal(c.lines[0], 1);
    assert_int_equal(c.lines[1], 4);
    assert_int_equal(c.lines[2], 5);
    assert_string_equal(str_at(c.rows, 2, "prompt"), "c");
    json_decref(c.rows);
    parse_bad("{\"a\":1}\n{\"a\":\n", ROWS_JSONL,
              "split train, file data/f.x line 2: invalid JSON: unexpected token near end of file (column 5)",
              2);
    parse_bad("{\"a\":1}\n\n[1,2]\n", ROWS_JSONL,
              "split train, file data/f.x line 3: a row must be a JSON object, not a list", 3);
    parse_bad("\"text\"\n", ROWS_JSONL,
              "split train, file data/f.x line 1: a row must be a JSON object, not a string", 1);
}

static void test_callback_error_gets_location(void **state) {
    lt_err err;
    rows_loc loc;
    size_t n = 99;
    const char *text = "{\"prompt\":\"ok\"}\n{\"prompt\":\"ok\"}\n{\"nothing\":1}\n";
    assert_int_equal(
        rows_check_file(text, strlen(text), ROWS_JSONL, "train", "data/train.jsonl", &n, &loc, &err), -1);
    assert_int_equal(n, 0);
    assert_int_equal(err.code, 422);
    assert_string_equal(
        err.msg, "split train, file data/train.jsonl line 3: the row fits no accepted shape (its keys: "
                 "nothing); " ROWS_ACCEPTED_SHAPES);
    assert_int_equal(loc.line, 3);
    assert_string_equal(loc.file, "data/train.jsonl");
    assert_int_equal(rows_check_file(text, 32, ROWS_JSONL, NULL, "x.jsonl", &n, &loc, &err), 0);
    assert_int_equal(n, 2);
    /* without a split the prefix names only the file */
    assert_int_equal(rows_check_file("[]x", 3, ROWS_JSONL, NULL, "x.jsonl", &n, &loc, &err), -1);
    assert_string_equal(err.msg,
                        "file x.jsonl line 1: invalid JSON: end of file expected near 'x' (column 3)");
    assert_string_equal(loc.split, "");
}

/* ---- JSON ---- */

static void test_json_array(void **state) {
    collected c = parse_ok(
        "[\n  {\"prompt\": \"a\",\n   \"answer\": \"x]\\\"\"},\n\n  {\"prompt\": \"[b\"}\n]\n", ROWS_JSON);
    assert_int_equal(c.n, 2);
    assert_int_equal(c.lines[0], 2);
    assert_int_equal(c.lines[1], 5);
    assert_string_equal(str_at(c.rows, 0, "answer"), "x]\"");
    assert_string_equal(str_at(c.rows, 1, "prompt"), "[b");
    json_decref(c.rows);
    c = parse_ok("  [ ]  ", ROWS_JSON);
    assert_int_equal(c.n, 0);
    json_decref(c.rows);
    parse_bad("{\"prompt\": 1}", ROWS_JSON,
              "split train, file data/f.x line 1: the file must hold a JSON array of row objects", 1);
    parse_bad("[\n{\"a\": 1},\n{\"a\":\n  nope}\n]", ROWS_JSON,
              "split train, file data/f.x line 4: invalid JSON: invalid token near 'nope'", 4);
    parse_bad("[\n{\"a\": 1},\n", ROWS_JSON,
              "split train, file data/f.x line 3: the JSON array is not closed with ']'", 3);
    parse_bad("[{\"a\": 1}] [", ROWS_JSON,
              "split train, file data/f.x line 1: unexpected data after the JSON array", 1);
    parse_bad("[\n{\"a\": \"unterminated", ROWS_JSON,
              "split train, file data/f.x line 2: invalid JSON: premature end of input near '\"unterminated'",
              2);
    parse_bad("[{\"a\": 1},]", ROWS_JSON, "split train, file data/f.x line 1: expected a row object", 1);
    parse_bad("[\n1]", ROWS_JSON,
              "split train, file data/f.x line 2: a row must be a JSON object, not a number", 2);
}

/* ---- CSV ---- */

static void test_csv(void **state) {
    collected c = parse_ok("question,answer,reward,messages\r\n"
                           "\"What is 2+2?\",4,0.5,\n"
                           "\"multi\nline \"\"quoted\"\"\",\"a,b\",x,\n"
                           "\n"
                           "q3,,,\"[{\"\"role\"\":\"\"user\"\",\"\"content\"\":\"\"hi\"\"}]\"\n",
                           ROWS_CSV);
    assert_int_equal(c.n, 3);
    assert_int_equal(c.lines[0], 2);
    assert_int_equal(c.lines[1], 3);
    assert_int_equal(c.lines[2], 6);
    json_t *r0 = json_array_get(c.rows, 0);
    assert_string_equal(str_at(c.rows, 0, "answer"), "4");
    assert_true(json_is_real(json_object_get(r0, "reward")));
    assert_null(json_object_get(r0, "messages")); /* empty cells are left out */
    assert_string_equal(str_at(c.rows, 1, "question"), "multi\nline \"quoted\"");
    assert_string_equal(str_at(c.rows, 1, "answer"), "a,b");
    assert_string_equal(str_at(c.rows, 1, "reward"), "x"); /* not a number: stays text (and fails later) */
    assert_true(json_is_array(json_object_get(json_array_get(c.rows, 2), "messages")));
    json_decref(c.rows);

    parse_bad("a,b\n1,2\n1,2,3\n", ROWS_CSV,
              "split train, file data/f.x line 3: the record has 3 fields but the header "
              "has 2",
              3);
    parse_bad("a,b\n1,\"open\nstill open\n", ROWS_CSV,
              "split train, file data/f.x line 2: a quoted field is not closed", 2);
    parse_bad("a,b\n1,x\"y\n", ROWS_CSV,
              "split train, file data/f.x line 2: a quote inside an unquoted field; quote the whole field "
              "and double "
              "the quote",
              2);
    parse_bad("a,b\n\"x\"y,1\n", ROWS_CSV,
              "split train, file data/f.x line 2: unexpected character after a closing quote", 2);
    parse_bad("a,a\n1,2\n", ROWS_CSV, "split train, file data/f.x line 1: header names column 'a' twice", 1);
    parse_bad("a,\n1,2\n", ROWS_CSV,
              "split train, file data/f.x line 1: header column 2 has no name (or is not UTF-8)", 1);
    parse_bad("\n\n", ROWS_CSV, "split train, file data/f.x: the CSV file has no header row", 0);
    parse_bad(
        "a,messages\n1,[oops\n", ROWS_CSV,
        "split train, file data/f.x line 2: column messages holds invalid JSON: invalid token near 'oops'",
        2);
    parse_bad("a\n\xff\xfe\n", ROWS_CSV,
              "split train, file data/f.x line 2: column a is not valid UTF-8 text", 2);
}

/* ---- shapes ---- */

static void classify_bad(const char *row, const char *msg) {
    json_t *r = J(row);
    lt_err err = {0};
    assert_int_equal(rows_classify(r, &err), ROW_SHAPE_NONE);
    assert_int_equal(err.code, 422);
    if (strcmp(err.msg, msg) != 0) fail_msg("got  '%s'\nwant '%s'", err.msg, msg);
    json_decref(r);
}

static void test_classify(void **state) {
    struct {
        const char *row;
        row_shape shape;
    } ok[] = {
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", ROW_SHAPE_CHAT},
        {"{\"messages\":[{\"content\":\"hi\"},{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"1\",\"name\":"
         "\"f\"}]}]}",
         ROW_SHAPE_TOOLS},
        {"{\"messages\":[{\"role\":\"tool\",\"tool_call_id\":\"1\",\"content\":\"r\"}]}", ROW_SHAPE_TOOLS},
        {"{\"steps\":[{\"step_id\":1,\"source\":\"user\",\"message\":\"go\"}]}", ROW_SHAPE_TRAJECTORY},
        {"{\"question\":\"q\",\"answer\":42}", ROW_SHAPE_PROMPT},
        {"{\"messages\":[],\"prompt\":\"p\"}", ROW_SHAPE_PROMPT},
        {"{\"task_prompt\":\"p\",\"reward\":1,\"context\":{\"a\":1}}", ROW_SHAPE_PROMPT},
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        json_t *r = J(ok[i].row);
        lt_err err = {0};
        row_shape s = rows_classify(r, &err);
        if (s != ok[i].shape) fail_msg("row %zu: shape %s (%s)", i, rows_shape_name(s), err.msg);
        json_decref(r);
    }
    assert_string_equal(rows_shape_name(ROW_SHAPE_TOOLS), "tools");
    classify_bad("{\"prompt\":\"   \",\"id\":1}",
                 "the row fits no accepted shape (its keys: prompt, id); " ROWS_ACCEPTED_SHAPES);
    classify_bad("{\"messages\":\"hi\"}", "messages must be a list of {role, content} objects, not a string");
    classify_bad("{\"messages\":[\"hi\"]}",
                 "messages[0] must be an object with role and content, not a string");
    classify_bad("{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}",
                 "messages[0].role must be system, user, assistant or tool");
    classify_bad("{\"messages\":[{\"role\":\"user\",\"content\":5}]}",
                 "messages[0].content must be a string, not a number");
    classify_bad("{\"messages\":[{\"role\":\"user\",\"content\":\"\"}]}",
                 "messages has no message with content");
    classify_bad("{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"tool_calls\":[{\"name\":\"f\"}]}]}",
                 "messages[0] has tool_calls but its role is user; only assistant messages call tools");
    classify_bad("{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"1\"}]}]}",
                 "messages[0].tool_calls[0] needs a function name (function.name, name or function_name)");
    classify_bad("{\"steps\":[{\"source\":\"robot\",\"message\":\"x\"}]}",
                 "steps[0].source must be user, agent or system");
    classify_bad("{\"steps\":[{\"source\":\"user\",\"message\":\"\"}]}", "steps hold no message");
    classify_bad("{\"steps\":[{\"source\":\"agent\",\"message\":\"x\",\"observation\":[1]}]}",
                 "steps[0].observation must be {\"results\": [...]}");
    classify_bad("{\"prompt\":\"p\",\"reward\":\"high\"}", "reward must be a number, not a string");
    classify_bad("{\"prompt\":\"p\",\"context\":[1]}", "context must be an object of values, not a list");
    classify_bad("{\"prompt\":\"p\",\"template_context\":\"x\"}",
                 "template_context must be an object of values, not a string");
}

/* ---- conversations ---- */

static json_t *conv(const char *row, const char *prompt) {
    json_t *r = J(row);
    lt_err err = {0};
    json_t *m = rows_conversation(r, prompt, &err);
    if (!m) fail_msg("conversation: %s", err.msg);
    json_decref(r);
    return m;
}

static void test_conversation_chat_and_prompt(void **state) {
    json_t *m =
        conv("{\"messages\":[{\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"\"},"
             "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\","
             "\"text\":\"b\"}]}]}",
             NULL);
    assert_json(m, "[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"ab\"}]");
    json_decref(m);
    /* capability prompt: new system message first */
    m = conv("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", "Be brief.");
    assert_json(m,
                "[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"hi\"}]");
    json_decref(m);
    /* existing system message: P, blank line, old */
    m = conv(
        "{\"messages\":[{\"role\":\"system\",\"content\":\"Old.\"},{\"role\":\"user\",\"content\":\"hi\"}]}",
        "Be brief.");
    assert_json(
        m,
        "[{\"role\":\"system\",\"content\":\"Be brief.\\n\\nOld.\"},{\"role\":\"user\",\"content\":\"hi\"}]");
    json_decref(m);
    m = conv("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", ""); /* empty P: nothing */
    assert_int_equal(json_array_size(m), 1);
    json_decref(m);
    /* prompt/answer precedence: first non-empty of prompt, input, question, task_prompt */
    m = conv("{\"prompt\":\"\",\"input\":\"in\",\"question\":\"q\",\"output\":\"o\",\"target\":\"t\"}", NULL);
    assert_json(m, "[{\"role\":\"user\",\"content\":\"in\"},{\"role\":\"assistant\",\"content\":\"t\"}]");
    json_decref(m);
    m = conv("{\"question\":\"2+2?\",\"answer\":4}", NULL);
    assert_json(m, "[{\"role\":\"user\",\"content\":\"2+2?\"},{\"role\":\"assistant\",\"content\":\"4\"}]");
    json_decref(m);
    m = conv("{\"prompt\":\"only\"}", NULL);
    assert_json(m, "[{\"role\":\"user\",\"content\":\"only\"}]");
    json_decref(m);
}

static void test_conversation_tools(void **state) {
    json_t *m =
        conv("{\"messages\":[{\"role\":\"user\",\"content\":\"weather?\"},"
             "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\","
             "\"function\":{\"name\":\"get\",\"arguments\":\"{\\\"city\\\":\\\"Oslo\\\"}\"}},"
             "{\"name\":\"now\",\"arguments\":{}}]},"
             "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"rain\"}]}",
             NULL);
    assert_json(
        m, "[{\"role\":\"user\",\"content\":\"weather?\"},"
           "{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":["
           "{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"get\",\"arguments\":{\"city\":"
           "\"Oslo\"}}},"
           "{\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"now\",\"arguments\":{}}}]},"
           "{\"role\":\"tool\",\"content\":\"rain\",\"tool_call_id\":\"c1\"}]");
    json_decref(m);
}

static const char *TRAJ =
    "{\"success\":false,\"steps\":["
    "{\"step_id\":1,\"source\":\"system\",\"message\":\"You are an agent.\"},"
    "{\"step_id\":2,\"source\":\"user\",\"message\":\"List files.\"},"
    "{\"step_id\":3,\"source\":\"agent\",\"message\":\"Listing.\",\"reasoning_content\":\"use ls\","
    "\"tool_calls\":[{\"tool_call_id\":\"t1\",\"function_name\":\"command\",\"arguments\":{\"cmd\":[\"ls\"]}}"
    "],"
    "\"observation\":{\"results\":[{\"source_call_id\":\"t1\",\"content\":\"a.txt\"}]}},"
    "{\"step_id\":4,\"source\":\"agent\",\"message\":\"Done: a.txt\"}]}";

static void test_conversation_trajectory(void **state) {
    json_t *m = conv(TRAJ, "Cap.");
    assert_json(
        m,
        "[{\"role\":\"system\",\"content\":\"Cap.\\n\\nYou are an agent.\"},"
        "{\"role\":\"user\",\"content\":\"List files.\"},"
        "{\"role\":\"assistant\",\"content\":\"<think>\\nuse ls\\n</think>\\n\\nListing.\",\"tool_calls\":["
        "{\"id\":\"t1\",\"type\":\"function\",\"function\":{\"name\":\"command\",\"arguments\":{\"cmd\":["
        "\"ls\"]}}}]},"
        "{\"role\":\"tool\",\"content\":\"a.txt\",\"tool_call_id\":\"t1\"},"
        "{\"role\":\"assistant\",\"content\":\"Done: a.txt\"}]");
    json_decref(m);
}

/* ---- RL ---- */

static json_t *rl(const char *row, const char *cap, const char *instr) {
    json_t *r = J(row);
    lt_err err = {0};
    json_t *items = rows_rl_items(r, cap, instr, &err);
    if (!items) fail_msg("rl: %s", err.msg);
    json_decref(r);
    return items;
}

static void test_rl_items(void **state) {
    json_t *it = rl("{\"prompt\":\"Flag on {{host}}?\",\"expected_output\":\"FLAG\",\"reward\":0.5,"
                    "\"context\":{\"host\":\"10.0.0.1\",\"port\":22}}",
                    "Cap.", "Attack {{ host }}:{{port}}.");
    assert_json(it, "[{\"messages\":[{\"role\":\"system\",\"content\":\"Cap.\\n\\nAttack 10.0.0.1:22.\"},"
                    "{\"role\":\"user\",\"content\":\"Flag on {{host}}?\"}],"
                    "\"expected\":\"FLAG\",\"reward\":0.5,\"context\":{\"host\":\"10.0.0.1\",\"port\":22}}]");
    json_decref(it);
    /* an instruction that cannot be filled is dropped; no capability either: no system message */
    it = rl(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"2+2\"},{\"role\":\"assistant\",\"content\":\"4\"}]}",
        NULL, "Use {{missing}}.");
    assert_json(it,
                "[{\"messages\":[{\"role\":\"user\",\"content\":\"2+2\"}],\"expected\":\"4\",\"reward\":null,"
                "\"context\":null}]");
    json_decref(it);
    it = rl("{\"messages\":[{\"role\":\"user\",\"content\":\"2+2\"}],\"answer\":\"4\"}", NULL, NULL);
    assert_string_equal(json_string_value(json_object_get(json_array_get(it, 0), "expected")), "4");
    json_decref(it);
    /* trajectories: one item per agent step, reward from success */
    it = rl(TRAJ, NULL, NULL);
    assert_int_equal(json_array_size(it), 2);
    json_t *a = json_array_get(it, 0), *b = json_array_get(it, 1);
    assert_int_equal(json_array_size(json_object_get(a, "messages")), 2);
    assert_string_equal(
        json_string_value(json_object_get(a, "expected")),
        "<think>use ls</think>Listing.<tool_call name=\"command\">{\"cmd\":[\"ls\"]}</tool_call>");
    assert_true(json_real_value(json_object_get(a, "reward")) == 0.0);
    assert_int_equal(json_array_size(json_object_get(b, "messages")), 4);
    assert_string_equal(json_string_value(json_object_get(b, "expected")), "Done: a.txt");
    json_decref(it);
}

static void test_template(void **state) {
    json_t *ctx = J("{\"a\":\"x\",\"n\":3,\"f\":1.5,\"b\":true,\"z\":null}");
    char *s = rows_render_template("{{a}}-{{ n }}-{{f}}-{{b}}-{{z}}.", ctx);
    assert_string_equal(s, "x-3-1.5-true-.");
    free(s);
    assert_null(rows_render_template("{{a}} {{nope}}", ctx));
    assert_null(rows_render_template("open {{a", ctx));
    s = rows_render_template("plain } {", NULL);
    assert_string_equal(s, "plain } {");
    free(s);
    json_decref(ctx);
}

/* ---- loading a dataset ---- */

static int cmp_item(const void *a, const void *b) {
    return strcmp(((const archive_item *)a)->path, ((const archive_item *)b)->path);
}

static void add_item(archive_items *it, const char *path, const char *data) {
    it->v = realloc(it->v, (it->n + 1) * sizeof *it->v);
    it->v[it->n].path = lt_strdup(path);
    it->v[it->n].data = (unsigned char *)lt_strdup(data);
    it->v[it->n].size = strlen(data);
    it->v[it->n].src = NULL;
    it->n++;
    it->cap = it->n;
    qsort(it->v, it->n, sizeof *it->v, cmp_item);
}

static void test_load(void **state) {
    archive_items it = ARCHIVE_ITEMS_INIT;
    add_item(&it, "train.jsonl", "{\"prompt\":\"a\"}\n{\"prompt\":\"b\"}\n");
    add_item(&it, "more.csv", "prompt,answer\nc,d\n");
    add_item(&it, "test.data", "{\"prompt\":\"e\"}\n");
    json_t *m = J("{\"format\":\"jsonl\",\"splits\":{\"train\":[\"train.jsonl\",\"more.csv\"],\"test\":["
                  "\"test.data\"]}}");
    rows_set s = {0};
    lt_err err;
    rows_loc loc;
    assert_int_equal(rows_load(&it, m, "train", &s, &loc, &err), 0);
    assert_int_equal(s.n, 3);
    assert_int_equal(s.nfiles, 2);
    assert_string_equal(s.files[s.file[2]], "more.csv");
    assert_int_equal(s.lines[2], 2);
    assert_string_equal(str_at(s.rows, 2, "answer"), "d");
    rows_set_free(&s);
    assert_int_equal(rows_load(&it, m, NULL, &s, &loc, &err), 0);
    assert_int_equal(s.n, 4);
    assert_string_equal(s.splits[s.file[3]], "test");
    rows_set_free(&s);
    const char *train[] = {"train", NULL}, *eval[] = {"validation", "test", NULL}, *none[] = {"dev", NULL};
    assert_string_equal(rows_pick_split(m, train), "train");
    assert_string_equal(rows_pick_split(m, eval), "test");
    assert_null(rows_pick_split(m, none));
    assert_int_equal(rows_load(&it, m, "validation", &s, &loc, &err), -1);
    assert_string_equal(err.msg, "the dataset has no split 'validation' (its splits: train, test)");
    assert_null(s.rows);
    json_decref(m);
    m = J("{\"splits\":{\"train\":[\"gone.jsonl\"]}}");
    assert_int_equal(rows_load(&it, m, NULL, &s, &loc, &err), -1);
    assert_string_equal(err.msg, "split train: file gone.jsonl is not in the dataset archive");
    json_decref(m);
    archive_items_free(&it);
}

/* ---- streaming ---- */

/* A reader over a string that hands out at most `step` bytes per call (1 = every buffer boundary). */
typedef struct chunks {
    const char *s;
    size_t n, pos, step;
    int fail_at; /* > 0: fail with a 413 once this many bytes were read */
} chunks;

static long read_chunks(void *ud, char *buf, size_t n, lt_err *err) {
    chunks *c = ud;
    if (c->fail_at > 0 && c->pos >= (size_t)c->fail_at)
        return lt_err_set(err, 413, "archive: unpacked contents are over the limit of 7 bytes");
    size_t k = c->n - c->pos;
    if (k > n) k = n;
    if (k > c->step) k = c->step;
    memcpy(buf, c->s + c->pos, k);
    c->pos += k;
    return (long)k;
}

static void same_as_memory(const char *text, rows_format fmt, size_t step) {
    collected a = parse_ok(text, fmt), b = {json_array(), {0}, 0};
    chunks ch = {text, strlen(text), 0, step, 0};
    lt_err err = {0};
    if (rows_parse_stream(read_chunks, &ch, fmt, NULL, "train", "f", collect, &b, NULL, &err) != 0)
        fail_msg("stream parse failed: %s", err.msg);
    assert_int_equal(a.n, b.n);
    assert_true(json_equal(a.rows, b.rows));
    assert_memory_equal(a.lines, b.lines, a.n * sizeof a.lines[0]);
    json_decref(a.rows);
    json_decref(b.rows);
}

static void test_stream_equals_memory(void **state) {
    const char *jsonl =
        "\xef\xbb\xbf{\"prompt\": \"a\"}\r\n\n  \n{\"prompt\": \"b\\nc\"}\n{\"prompt\": \"d\"}";
    const char *json = "\xef\xbb\xbf [\n {\"prompt\": \"a]\"},\n\n {\"prompt\": \"{\\\"\"} ]\n";
    const char *csv = "\xef\xbb\xbfprompt,answer\r\n\"a,\"\"b\"\"\nc\",x\r\n\nd,\n\"\",y\n";
    size_t steps[] = {1, 2, 3, 7, 65536};
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        same_as_memory(jsonl, ROWS_JSONL, steps[i]);
        same_as_memory(json, ROWS_JSON, steps[i]);
        same_as_memory(csv, ROWS_CSV, steps[i]);
        same_as_memory("[]", ROWS_JSON, steps[i]);
    }
}

static void stream_bad(const char *text, rows_format fmt, const rows_limits *lim, int code, const char *msg,
                       long line) {
    collected c = {json_array(), {0}, 0};
    chunks ch = {text, strlen(text), 0, 3, 0};
    lt_err err = {0};
    rows_loc loc = {"", "", -1};
    assert_int_equal(
        rows_parse_stream(read_chunks, &ch, fmt, lim, "train", "data/f.x", collect, &c, &loc, &err), -1);
    assert_int_equal(err.code, code);
    if (strcmp(err.msg, msg) != 0) fail_msg("got  '%s'\nwant '%s'", err.msg, msg);
    assert_string_equal(loc.file, "data/f.x");
    assert_int_equal(loc.line, line);
    json_decref(c.rows);
}

static void test_stream_limits(void **state) {
    rows_limits lim = {16, 3};
    stream_bad("{\"prompt\":\"a\"}\n{\"prompt\":\"abcdef\"}\n", ROWS_JSONL, &lim, 413,
               "split train, file data/f.x line 2: the line is longer than the limit of 16 bytes", 2);
    stream_bad("[{\"prompt\":\"a\"},\n{\"prompt\":\"abcdef\"}]", ROWS_JSON, &lim, 413,
               "split train, file data/f.x line 2: the row is longer than the limit of 16 bytes", 2);
    stream_bad("prompt\na\n\"abcdefghijklmnopq\"\n", ROWS_CSV, &lim, 413,
               "split train, file data/f.x line 3: the CSV record is longer than the limit of 16 bytes", 3);
    stream_bad("\na,b,c,d\n1,2,3,4\n", ROWS_CSV, &lim, 422,
               "split train, file data/f.x line 2: the record has more than 3 columns, over the limit of 3 "
               "columns",
               2);
    stream_bad("prompt\na,b,c,d\n", ROWS_CSV, &lim, 422,
               "split train, file data/f.x line 2: the record has more than 3 columns, over the limit of 3 "
               "columns",
               2);
    /* exactly at the limits is fine */
    collected c = {json_array(), {0}, 0};
    const char *ok = "a,b,prompt\n,,0123456789abcd\n";
    chunks ch = {ok, strlen(ok), 0, 5, 0};
    lt_err err = {0};
    assert_int_equal(rows_parse_stream(read_chunks, &ch, ROWS_CSV, &lim, NULL, "f", collect, &c, NULL, &err),
                     0);
    assert_int_equal(c.n, 1);
    json_decref(c.rows);
}

static void test_stream_read_error_keeps_its_code(void **state) {
    const char *text = "{\"prompt\":\"a\"}\n{\"prompt\":\"b\"}\n";
    chunks ch = {text, strlen(text), 0, 4, 8};
    collected c = {json_array(), {0}, 0};
    lt_err err = {0};
    rows_loc loc = {"", "", -1};
    assert_int_equal(
        rows_parse_stream(read_chunks, &ch, ROWS_JSONL, NULL, "train", "t.jsonl", collect, &c, &loc, &err),
        -1);
    assert_int_equal(err.code, 413);
    assert_string_equal(err.msg, "archive: unpacked contents are over the limit of 7 bytes");
    assert_string_equal(loc.file, "t.jsonl");
    assert_int_equal(loc.line, 0);
    json_decref(c.rows);
}

/* 100,000 columns: linear time (duplicate names are found with a hash set); the memory reader takes them, the
 * stream reader stops at its column limit; a late duplicate name is still found. */
static void test_wide_header(void **state) {
    strbuf sb = STRBUF_INIT;
    for (int i = 0; i < 99999; i++)
        sb_printf(&sb, "c%d,", i);
    sb_puts(&sb, "prompt\n");
    for (int i = 0; i < 99999; i++)
        sb_puts(&sb, ",");
    sb_puts(&sb, "hi\n");
    collected c = parse_ok(sb.buf, ROWS_CSV);
    assert_int_equal(c.n, 1);
    assert_string_equal(str_at(c.rows, 0, "prompt"), "hi");
    json_decref(c.rows);
    stream_bad(sb.buf, ROWS_CSV, NULL, 422,
               "split train, file data/f.x line 1: the record has more than 10000 columns, over the limit of "
               "10000 columns",
               1);
    sb_reset(&sb);
    for (int i = 0; i < 99999; i++)
        sb_printf(&sb, "c%d,", i);
    sb_puts(&sb, "c17\n");
    parse_bad(sb.buf, ROWS_CSV, "split train, file data/f.x line 1: header names column 'c17' twice", 1);
    sb_free(&sb);
    rows_limits d = rows_limits_default();
    assert_int_equal(d.max_columns, 10000);
    assert_int_equal(d.max_row_bytes, 2u << 20);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jsonl),
        cmocka_unit_test(test_callback_error_gets_location),
        cmocka_unit_test(test_json_array),
        cmocka_unit_test(test_csv),
        cmocka_unit_test(test_classify),
        cmocka_unit_test(test_conversation_chat_and_prompt),
        cmocka_unit_test(test_conversation_tools),
        cmocka_unit_test(test_conversation_trajectory),
        cmocka_unit_test(test_rl_items),
        cmocka_unit_test(test_template),
        cmocka_unit_test(test_load),
        cmocka_unit_test(test_stream_equals_memory),
        cmocka_unit_test(test_stream_limits),
        cmocka_unit_test(test_stream_read_error_keeps_its_code),
        cmocka_unit_test(test_wide_header),
    };
    return cmocka_run_group_tests_name("rows", tests, NULL, NULL);
}
