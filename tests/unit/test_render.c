/* Unit tests for train/render: the qwen3, llama3, chatml and role_colon formats on the real tokenizers in
 * tests/fixtures/tokenizers (decoded text and weights), renderer choice, stop tokens, options and errors.
 * Token-exactness against the jinja2 templates is tests/py/test_render_parity.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/tokenizer.h"
#include "engine/tokenizer_internal.h"
#include "train/render.h"
#include "util/strbuf.h"
#include "util/util.h"

static eng_tokenizer *qwen, *llama;

static eng_tokenizer *fixture(const char *name) {
    const char *root = getenv("LATHE_ROOT");
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/fixtures/tokenizers/%s", root ? root : ".", name);
    lt_err err = {0};
    eng_tokenizer *t = eng_tok_load(path, &err);
    if (!t) fprintf(stderr, "%s\n", err.msg);
    return t;
}

static int setup(void **state) {
    qwen = fixture("qwen3");
    llama = fixture("llama3");
    return qwen && llama ? 0 : -1;
}

static int teardown(void **state) {
    eng_tok_free(qwen);
    eng_tok_free(llama);
    return 0;
}

static json_t *msgs(const char *json) {
    json_error_t je;
    json_t *m = json_loads(json, 0, &je);
    if (!m) fprintf(stderr, "bad test json: %s\n", je.text);
    assert_non_null(m);
    return m;
}

/* Renders and returns the decoded text; *trained gets the decoded weight-1 tokens, runs separated by '|'. */
static char *render_text(const eng_tokenizer *t, render_kind k, const char *json, const render_opts *o,
                         char **trained) {
    json_t *m = msgs(json);
    render_out out;
    lt_err err = {0};
    int rc = render_chat_opts(t, k, m, o, &out, &err);
    if (rc) fprintf(stderr, "render failed: %s\n", err.msg);
    assert_int_equal(rc, 0);
    json_decref(m);
    char *text = eng_tok_decode(t, out.ids, out.n, 0, NULL);
    strbuf sb = STRBUF_INIT;
    for (size_t i = 0; i < out.n;) {
        assert_true(out.weights[i] == 0.0f || out.weights[i] == 1.0f);
        if (out.weights[i] == 0.0f) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < out.n && out.weights[j] == 1.0f)
            j++;
        char *s = eng_tok_decode(t, out.ids + i, j - i, 0, NULL);
        if (sb.len) sb_putc(&sb, '|');
        sb_puts(&sb, s);
        free(s);
        i = j;
    }
    sb_puts(&sb, "");
    *trained = sb_steal(&sb);
    render_out_free(&out);
    return text;
}

static const char *CHAT =
    "[{\"role\":\"system\",\"content\":\"Be nice.\"},{\"role\":\"user\",\"content\":\"Hi\"},"
    "{\"role\":\"assistant\",\"content\":\"Hello!\"},{\"role\":\"user\",\"content\":\"Bye\"},"
    "{\"role\":\"assistant\",\"content\":\"<think>\\nwave\\n</think>\\n\\nBye!\"}]";

static void test_qwen3(void **state) {
    render_opts o = RENDER_OPTS_DEFAULT;
    char *w, *s = render_text(qwen, RENDER_QWEN3, CHAT, &o, &w);
    assert_string_equal(s, "<|im_start|>system\nBe nice.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                           "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
                           "<|im_start|>assistant\n<think>\nwave\n</think>\n\nBye!<|im_end|>\n");
    assert_string_equal(w, "Hello!<|im_end|>|<think>\nwave\n</think>\n\nBye!<|im_end|>");
    free(s);
    free(w);
    o.train_last_only = 1;
    o.add_generation_prompt = 1;
    o.enable_thinking = 0;
    s = render_text(qwen, RENDER_QWEN3, CHAT, &o, &w);
    assert_string_equal(w, "<think>\nwave\n</think>\n\nBye!<|im_end|>");
    assert_non_null(strstr(s, "Bye!<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"));
    free(s);
    free(w);
}

static void test_qwen3_tools(void **state) {
    render_opts o = RENDER_OPTS_DEFAULT;
    char *w,
        *s = render_text(
            qwen, RENDER_QWEN3,
            "[{\"role\":\"user\",\"content\":\"go\"},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":"
            "[{\"function\":"
            "{\"name\":\"f\",\"arguments\":{\"x\":0.1,\"y\":1e-7,\"z\":1e16,\"w\":100.0,\"s\":\"é\\n\"}}}]},"
            "{\"role\":\"tool\",\"content\":\"r1\"},{\"role\":\"tool\",\"content\":\"r2\"}]",
            &o, &w);
    assert_string_equal(
        s, "<|im_start|>user\ngo<|im_end|>\n<|im_start|>assistant\n"
           "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 0.1, \"y\": 1e-07, \"z\": 1e+16, "
           "\"w\": 100.0, \"s\": \"é\\n\"}}\n</tool_call><|im_end|>\n<|im_start|>user\n"
           "<tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n</tool_response><|im_end|>\n");
    assert_non_null(strstr(w, "</tool_call><|im_end|>"));
    assert_null(strstr(w, "r1"));
    free(s);
    free(w);
}

static void test_llama3(void **state) {
    render_opts o = RENDER_OPTS_DEFAULT;
    o.add_generation_prompt = 1;
    char *w,
        *s = render_text(llama, RENDER_LLAMA3,
                         "[{\"role\":\"user\",\"content\":\"  Hi \\n\"},{\"role\":\"assistant\",\"content\":"
                         "\"\\u00a0Hello \"}]",
                         &o, &w);
    assert_string_equal(s, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\n");
    assert_string_equal(w, "Hello<|eot_id|>");
    free(s);
    free(w);
}

static void test_role_colon(void **state) {
    render_opts o = RENDER_OPTS_DEFAULT;
    o.add_generation_prompt = 1;
    char *w, *s = render_text(qwen, RENDER_ROLE_COLON, CHAT, &o, &w);
    assert_string_equal(
        s, "System: Be nice.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: Bye\n\nAssistant: <think>\n"
           "wave\n</think>\n\nBye!\n\nAssistant:");
    assert_string_equal(w, " Hello!\n\n| <think>\nwave\n</think>\n\nBye!\n\n");
    free(s);
    free(w);
    s = render_text(llama, RENDER_ROLE_COLON, "[{\"role\":\"user\",\"content\":\"x\"}]", &o, &w);
    assert_string_equal(s, "<|begin_of_text|>User: x\n\nAssistant:"); /* BOS when the tokenizer has one */
    assert_string_equal(w, "");
    free(s);
    free(w);
    /* ... unless the model says add_bos_token false (SmolLM2's GGUF: bos <|im_start|>, add_bos_token false)
     */
    eng_tokenizer *nb = fixture("qwen3");
    int eot = eng_tok_token_id(nb, "<|endoftext|>");
    eng_tok_set_file_meta(nb, eot, -1, 0, NULL, 0);
    s = render_text(nb, RENDER_ROLE_COLON, "[{\"role\":\"user\",\"content\":\"x\"}]", &o, &w);
    assert_string_equal(s, "User: x\n\nAssistant:");
    free(s);
    free(w);
    eng_tok_set_file_meta(nb, eot, -1, 1, NULL, 0);
    s = render_text(nb, RENDER_ROLE_COLON, "[{\"role\":\"user\",\"content\":\"x\"}]", &o, &w);
    assert_string_equal(s, "<|endoftext|>User: x\n\nAssistant:");
    free(s);
    free(w);
    eng_tok_free(nb);
}

static void test_pick_and_stops(void **state) {
    assert_int_equal(render_pick(qwen, NULL), RENDER_QWEN3);
    assert_int_equal(render_pick(llama, NULL), RENDER_LLAMA3);
    assert_int_equal(render_pick(llama, "llama"), RENDER_LLAMA3);
    const char *tiny =
        "{\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true},"
        "\"decoder\":{\"type\":\"ByteLevel\"},\"added_tokens\":[{\"id\":3,\"content\":"
        "\"<|endoftext|>\",\"special\":true}],\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,"
        "\"b\":1,\"c\":2},\"merges\":[]}}";
    lt_err err = {0};
    eng_tokenizer *t = eng_tok_load_mem(tiny, strlen(tiny), &err);
    assert_non_null(t);
    assert_int_equal(render_pick(t, NULL), RENDER_ROLE_COLON);
    assert_int_equal(render_pick(t, "qwen"), RENDER_ROLE_COLON);
    assert_int_equal(render_pick(qwen, "llama"), RENDER_ROLE_COLON);
    assert_int_equal(render_pick(llama, "qwen"), RENDER_ROLE_COLON);
    /* a tiny model's bare ChatML vocabulary (no thinking tags) is role_colon, as docs/spec.md §5 asks */
    const char *chatml =
        "{\"added_tokens\":[{\"id\":3,\"content\":\"<|im_start|>\",\"special\":true},{\"id\":4,"
        "\"content\":\"<|im_end|>\",\"special\":true}],\"model\":{\"type\":\"BPE\",\"vocab\":"
        "{\"a\":0}}}";
    eng_tokenizer *cm = eng_tok_load_mem(chatml, strlen(chatml), &err);
    assert_non_null(cm);
    assert_int_equal(render_pick(cm, NULL), RENDER_ROLE_COLON);
    eng_tok_free(cm);
    render_stops st;
    render_stops_for(t, RENDER_ROLE_COLON, &st);
    assert_int_equal(st.n_stop_strings, 1);
    assert_string_equal(st.stop_strings[0], "\n\nUser:");
    assert_int_equal(st.n_stop_ids, 1);
    assert_int_equal(st.stop_ids[0], 3);
    eng_tok_free(t);
    render_stops_for(qwen, RENDER_QWEN3, &st);
    assert_int_equal(st.stop_ids[0], 151645);
    assert_int_equal(st.n_stop_strings, 0);
    render_stops_for(llama, RENDER_LLAMA3, &st);
    assert_int_equal(st.stop_ids[0], 128009);
    render_kind k;
    assert_int_equal(render_kind_parse("llama3", &k), 0);
    assert_int_equal(k, RENDER_LLAMA3);
    assert_int_equal(render_kind_parse("chatml", &k), 0);
    assert_int_equal(k, RENDER_CHATML);
    assert_string_equal(render_kind_name(RENDER_CHATML), "chatml");
    assert_int_equal(render_kind_parse("ChatML", &k), -1);
    assert_string_equal(render_kind_name(RENDER_ROLE_COLON), "role_colon");
}

/* SmolLM2's chat template (from its GGUF) and a Qwen2.5-style one, as the template text holds them: SmolLM2's
 * newlines are real newlines inside the Jinja literals, Qwen's are \n escapes. */
static const char *SMOL_TPL =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
    "'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' "
    "}}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% "
    "endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
static const char *QWEN25_TPL =
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
    "'<|im_end|>\\n' }}{%- else %}{{- \"<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You "
    "are a \\\"helpful\\\" assistant.<|im_end|>\\n\" }}{%- endif %}{%- for message in messages "
    "%}...<tool_response>";

static void render_fails(const eng_tokenizer *t, render_kind k, const char *json, const char *needle);

static eng_tokenizer *with_template(const char *tpl) {
    eng_tokenizer *t = fixture("qwen3");
    assert_non_null(t);
    eng_tok_set_file_meta(t, -1, -1, -1, tpl, strlen(tpl));
    return t;
}

static void test_chatml(void **state) {
    eng_tokenizer *smol = with_template(SMOL_TPL), *qw = with_template(QWEN25_TPL);
    render_opts o = RENDER_OPTS_DEFAULT;
    char *w, *s = render_text(smol, RENDER_CHATML, CHAT, &o, &w);
    assert_string_equal(s, "<|im_start|>system\nBe nice.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                           "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
                           "<|im_start|>assistant\n<think>\nwave\n</think>\n\nBye!<|im_end|>\n");
    assert_string_equal(w, "Hello!<|im_end|>|<think>\nwave\n</think>\n\nBye!<|im_end|>");
    free(s);
    free(w);
    /* no system message: the template's default comes first, untrained */
    o.add_generation_prompt = 1;
    const char *two = "[{\"role\":\"user\",\"content\":\"Hi\"},{\"role\":\"assistant\",\"content\":\"Yo\"},"
                      "{\"role\":\"user\",\"content\":\"More\"}]";
    s = render_text(smol, RENDER_CHATML, two, &o, &w);
    assert_string_equal(
        s, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
           "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n"
           "<|im_start|>user\nMore<|im_end|>\n<|im_start|>assistant\n");
    assert_string_equal(w, "Yo<|im_end|>");
    free(s);
    free(w);
    s = render_text(qw, RENDER_CHATML, two, &o, &w);
    assert_non_null(
        strstr(s, "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a \"helpful\" "
                  "assistant.<|im_end|>\n<|im_start|>user\nHi"));
    free(s);
    free(w);
    /* Qwen2.5 tool results: one user turn of <tool_response> blocks; a template without them: "tool" turns */
    const char *tools = "[{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\",\"content\":\"go\"},"
                        "{\"role\":\"assistant\",\"content\":\"ok\",\"tool_calls\":[{\"function\":{\"name\":"
                        "\"f\",\"arguments\":{\"x\":1}}}]},{\"role\":\"tool\",\"content\":\"r1\"}]";
    o.add_generation_prompt = 0;
    s = render_text(qw, RENDER_CHATML, tools, &o, &w);
    assert_string_equal(
        s, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\ngo<|im_end|>\n<|im_start|>"
           "assistant\nok\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>"
           "<|im_end|>\n<|im_start|>user\n<tool_response>\nr1\n</tool_response><|im_end|>\n");
    assert_string_equal(w, "ok\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>"
                           "<|im_end|>");
    free(s);
    free(w);
    s = render_text(smol, RENDER_CHATML, tools, &o, &w);
    assert_non_null(strstr(s, "</tool_call><|im_end|>\n<|im_start|>tool\nr1<|im_end|>\n"));
    free(s);
    free(w);
    /* a template without a default system message: none added */
    eng_tokenizer *bare =
        with_template("{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>' }}");
    s = render_text(bare, RENDER_CHATML, "[{\"role\":\"user\",\"content\":\"Hi\"}]", &o, &w);
    assert_string_equal(s, "<|im_start|>user\nHi<|im_end|>\n");
    free(s);
    free(w);
    render_fails(llama, RENDER_CHATML, "[{\"role\":\"user\",\"content\":\"x\"}]", "no <|im_start|> token");

    /* picking from the template: ChatML -> chatml whatever the family, <think> -> qwen3, init-tiny's ->
     * role_colon */
    assert_int_equal(render_pick(smol, NULL), RENDER_CHATML);
    assert_int_equal(render_pick(smol, "llama"), RENDER_CHATML);
    assert_int_equal(render_pick(qw, "qwen"), RENDER_CHATML);
    assert_int_equal(render_pick(bare, NULL), RENDER_CHATML);
    const char *tiny_tpl = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
                           "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if "
                           "add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    eng_tok_set_file_meta(bare, -1, -1, -1, tiny_tpl, strlen(tiny_tpl));
    assert_int_equal(render_pick(bare, NULL), RENDER_QWEN3); /* template ignored: Qwen3's tokens decide */
    const char *l3 = "{{ '<|start_header_id|>' }}";
    eng_tok_set_file_meta(bare, -1, -1, -1, l3, strlen(l3));
    assert_int_equal(render_pick(bare, NULL),
                     RENDER_QWEN3); /* no Llama 3 tokens: the template is not followed */
    render_stops st;
    render_stops_for(smol, RENDER_CHATML, &st);
    assert_int_equal(st.stop_ids[0], eng_tok_token_id(smol, "<|im_end|>"));
    assert_int_equal(st.n_stop_strings, 0);
    eng_tok_free(smol);
    eng_tok_free(qw);
    eng_tok_free(bare);
}

static void test_smollm2_gguf(void **state) {
    const char *home = getenv("HOME");
    char path[1024];
    snprintf(path, sizeof path, "%s/.cache/lathe/models/SmolLM2-135M-Instruct.Q4_1.gguf",
             home ? home : "/root");
    if (access(path, R_OK) != 0) {
        fprintf(stderr, "skipped: %s not found (scripts/setup.sh fetches it)\n", path);
        skip();
    }
    lt_err err = {0};
    eng_tokenizer *t = eng_tok_load(path, &err);
    assert_non_null(t);
    assert_int_equal(render_pick(t, "llama"), RENDER_CHATML);
    render_opts o = RENDER_OPTS_DEFAULT;
    o.add_generation_prompt = 1;
    char *w, *s = render_text(t, RENDER_CHATML, "[{\"role\":\"user\",\"content\":\"What is 2+2?\"}]", &o, &w);
    assert_string_equal(s,
                        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
                        "Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n");
    free(s);
    free(w);
    eng_tok_free(t);
}

static void render_fails(const eng_tokenizer *t, render_kind k, const char *json, const char *needle) {
    json_t *m = json_loads(json, JSON_DECODE_ANY, NULL);
    render_out out;
    lt_err err = {0};
    assert_int_equal(render_chat(t, k, m, 0, &out, &err), -1);
    assert_int_equal(err.code, 400);
    if (!strstr(err.msg, needle)) fprintf(stderr, "'%s' lacks '%s'\n", err.msg, needle);
    assert_non_null(strstr(err.msg, needle));
    json_decref(m);
}

static void test_errors(void **state) {
    render_fails(qwen, RENDER_QWEN3, "{\"role\":\"user\"}", "messages must be a JSON array");
    render_fails(qwen, RENDER_QWEN3,
                 "[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"bot\",\"content\":\"b\"}]",
                 "messages[1].role \"bot\"");
    render_fails(qwen, RENDER_QWEN3, "[{\"role\":\"user\",\"content\":[1]}]", "messages[0].content");
    render_fails(qwen, RENDER_QWEN3, "[{\"content\":\"x\"}]", "messages[0].role");
    render_fails(qwen, RENDER_QWEN3,
                 "[{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"name\":1}]}]",
                 "messages[0].tool_calls[0]");
    render_fails(qwen, RENDER_LLAMA3, "[{\"role\":\"user\",\"content\":\"x\"}]",
                 "no <|begin_of_text|> token");
    render_fails(llama, RENDER_QWEN3, "[{\"role\":\"user\",\"content\":\"x\"}]", "no <|im_start|> token");
}

static void test_special_text_in_content_is_text(void **state) {
    json_t *m = msgs("[{\"role\":\"user\",\"content\":\"<|im_end|>\"}]");
    render_out out;
    lt_err err = {0};
    assert_int_equal(render_chat(qwen, RENDER_QWEN3, m, 0, &out, &err), 0);
    int im_end = eng_tok_token_id(qwen, "<|im_end|>"), count = 0;
    for (size_t i = 0; i < out.n; i++)
        count += out.ids[i] == im_end;
    assert_int_equal(count, 1); /* only the structural one */
    render_out_free(&out);
    json_decref(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qwen3),
        cmocka_unit_test(test_qwen3_tools),
        cmocka_unit_test(test_llama3),
        cmocka_unit_test(test_role_colon),
        cmocka_unit_test(test_pick_and_stops),
        cmocka_unit_test(test_chatml),
        cmocka_unit_test(test_smollm2_gguf),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_special_text_in_content_is_text),
    };
    return cmocka_run_group_tests_name("render", tests, setup, teardown);
}
