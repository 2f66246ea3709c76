/* libFuzzer target for the chat renderers: the input is a conversation as JSON (dataset rows are outside
 * input), optionally preceded by a chat template and a NUL (templates come from model files: chatml reads its
 * default system message from one). Every renderer, with and without the generation prompt, either refuses it
 * with a 400 and a message or returns ids inside the vocabulary with one 0/1 weight per id; trained tokens
 * never appear without an assistant (or "trainable") message. */
#include <assert.h>
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tokenizer.h"
#include "engine/tokenizer_internal.h"
#include "train/render.h"
#include "util/strbuf.h"

static eng_tokenizer *tok;

static void build(void) {
    static const char *added[] = {"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                  "<|end_header_id|>", "<|eot_id|>",      "<|im_start|>",
                                  "<|im_end|>",        "<think>",         "</think>",
                                  "<tool_call>",       "</tool_call>"};
    strbuf sb = STRBUF_INIT;
    sb_puts(&sb, "{\"added_tokens\":[");
    for (size_t i = 0; i < sizeof added / sizeof added[0]; i++)
        sb_printf(&sb, "%s{\"id\":%zu,\"content\":\"%s\",\"special\":%s}", i ? "," : "", 256 + i, added[i],
                  i < 7 ? "true" : "false");
    sb_puts(
        &sb,
        "],\"normalizer\":{\"type\":\"NFC\"},\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":"
        "false,\"use_regex\":true},\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\","
        "\"vocab\":{");
    for (int b = 0; b < 256; b++) {
        char u[4];
        eng_tok_byte_char(b, u);
        if (b) sb_putc(&sb, ',');
        if (b == '"' || b == '\\')
            sb_printf(&sb, "\"\\%c\":%d", b, b);
        else
            sb_printf(&sb, "\"%s\":%d", u, b);
    }
    sb_puts(&sb, "},\"merges\":[]}}");
    lt_err err = {0};
    tok = eng_tok_load_mem(sb.buf, sb.len, &err);
    assert(tok);
    sb_free(&sb);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tok) build();
    /* the template: the input's own before a NUL, else one with a default system message and <tool_response>
     */
    static const char tpl[] = "{{ '<|im_start|>system\\nDefault.<|im_end|>\\n' }}<tool_response>";
    const uint8_t *nul = memchr(data, 0, size);
    if (nul) {
        eng_tok_set_file_meta(tok, -1, -1, -1, (const char *)data, (size_t)(nul - data));
        size -= (size_t)(nul + 1 - data);
        data = nul + 1;
    } else {
        eng_tok_set_file_meta(tok, -1, -1, -1, tpl, sizeof tpl - 1);
    }
    json_t *msgs = json_loadb((const char *)data, size, JSON_DECODE_ANY, NULL);
    if (!msgs) return 0;
    int any_trained_msg = 0;
    for (size_t i = 0; i < json_array_size(msgs); i++) {
        json_t *m = json_array_get(msgs, i);
        const char *role = json_string_value(json_object_get(m, "role"));
        if ((role && !strcmp(role, "assistant")) || json_is_true(json_object_get(m, "trainable")))
            any_trained_msg = 1;
    }
    for (int kind = 0; kind <= RENDER_CHATML; kind++) {
        for (int gen = 0; gen < 2; gen++) {
            render_out out;
            lt_err err = {0};
            if (render_chat(tok, (render_kind)kind, msgs, gen, &out, &err)) {
                assert(err.code == 400 && err.msg[0]);
                continue;
            }
            float sum = 0;
            for (size_t i = 0; i < out.n; i++) {
                assert(out.ids[i] >= 0 && out.ids[i] < eng_tok_vocab_size(tok));
                assert(out.weights[i] == 0.0f || out.weights[i] == 1.0f);
                sum += out.weights[i];
            }
            assert(sum == 0 || any_trained_msg);
            char *text = eng_tok_decode(tok, out.ids, out.n, 0, NULL);
            free(text);
            render_out_free(&out);
        }
    }
    json_decref(msgs);
    return 0;
}
