/* render.c: chat renderers (qwen3, llama3, chatml, role_colon) producing token ids and per-token weights.
 *
 * A renderer first writes the conversation as a list of items: structural special tokens (by id) and text
 * segments, each with a weight. Tokenization then has to give exactly the ids Hugging Face gets by rendering
 * the chat_template to one string and encoding it, so text is never encoded segment by segment: every run of
 * consecutive text segments between two special tokens is encoded as one string (special tokens always cut
 * the text in HF too, so runs are exactly HF's pieces). Each resulting token takes the weight of the segment
 * its first byte falls in, found by summing the byte lengths the tokens decode to (against the NFC lengths of
 * the segments when the tokenizer normalizes to NFC). If those lengths still do not add up (characters the
 * vocabulary cannot represent were dropped), the run falls back to per-segment encoding, which keeps the
 * weights exact at the cost of possible differences at segment edges.
 *
 * Text inside messages is encoded with special-token parsing off, so "<|im_end|>" typed in a message stays
 * text; non-special added tokens (<think>, <tool_call>) are still recognised, as in HF.
 *
 * The Qwen3 rules (reasoning split on </think>, thinking blocks only after the last real user query, tool
 * calls and tool-response grouping) and the Llama 3 rules (content trimmed like Python's str.strip) follow
 * the chat_template files in tests/fixtures/tokenizers line by line; `tojson` is reproduced by a small
 * serializer with Python's json.dumps defaults (", " and ": " separators, ensure_ascii=False, float repr).
 * chatml shares the ChatML turn, tool-call and tool-response pieces with qwen3 and follows SmolLM2's and
 * Qwen2.5's templates; the default system text comes from the tokenizer's own chat template. */
#include "train/render.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tiny.h"
#include "engine/tokenizer.h"
#include "util/strbuf.h"
#include "util/util.h"

typedef struct {
    int special; /* token id, or -1 for text */
    size_t off, len;
    float w;
} item;

typedef struct {
    const eng_tokenizer *tok;
    strbuf txt;
    item *items;
    size_t n, cap;
    lt_err *err;
} rctx;

static void push_item(rctx *r, item it) {
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 32;
        r->items = realloc(r->items, r->cap * sizeof *r->items);
        if (!r->items) abort();
    }
    r->items[r->n++] = it;
}

static void emit_text(rctx *r, const char *s, size_t n, float w) {
    if (n == 0) return;
    size_t off = r->txt.len;
    sb_append(&r->txt, s, n);
    if (r->n && r->items[r->n - 1].special < 0 && r->items[r->n - 1].w == w) {
        r->items[r->n - 1].len += n; /* same weight: extend the segment */
        return;
    }
    push_item(r, (item){-1, off, n, w});
}

static void emit_str(rctx *r, const char *s, float w) {
    emit_text(r, s, strlen(s), w);
}

static int emit_special(rctx *r, const char *name, float w) {
    int id = eng_tok_token_id(r->tok, name);
    if (id < 0)
        return lt_err_set(r->err, 400,
                          "the tokenizer has no %s token, which this chat format needs; pick the "
                          "renderer that matches the model (role_colon works with any tokenizer)",
                          name);
    push_item(r, (item){id, 0, 0, w});
    return 0;
}

/* ---- Python-compatible helpers ---- */

static int py_isspace(uint32_t c) {
    return (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}

/* str.strip() over valid UTF-8: adjusts *s and *n. */
static void py_strip(const char **s, size_t *n) {
    const unsigned char *u = (const unsigned char *)*s;
    size_t a = 0, b = *n;
    while (a < b) {
        uint32_t cp;
        int k = eng_tok_utf8_next(u + a, b - a, &cp);
        if (!k || !py_isspace(cp)) break;
        a += (size_t)k;
    }
    while (b > a) {
        size_t j = b - 1;
        while (j > a && (u[j] & 0xC0) == 0x80)
            j--;
        uint32_t cp;
        if (!eng_tok_utf8_next(u + j, b - j, &cp) || !py_isspace(cp)) break;
        b = j;
    }
    *s += a;
    *n = b - a;
}

static void lstrip_nl(const char **s, size_t *n) {
    while (*n && **s == '\n')
        (*s)++, (*n)--;
}

static void rstrip_nl(const char **s, size_t *n) {
    while (*n && (*s)[*n - 1] == '\n')
        (*n)--;
}

static const char *find_last(const char *s, size_t n, const char *pat) {
    size_t m = strlen(pat);
    if (m > n) return NULL;
    for (size_t i = n - m + 1; i-- > 0;)
        if (memcmp(s + i, pat, m) == 0) return s + i;
    return NULL;
}

static void py_json_str(strbuf *sb, const char *s, size_t n) {
    sb_putc(sb, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"':
            sb_puts(sb, "\\\"");
            break;
        case '\\':
            sb_puts(sb, "\\\\");
            break;
        case '\n':
            sb_puts(sb, "\\n");
            break;
        case '\r':
            sb_puts(sb, "\\r");
            break;
        case '\t':
            sb_puts(sb, "\\t");
            break;
        case '\b':
            sb_puts(sb, "\\b");
            break;
        case '\f':
            sb_puts(sb, "\\f");
            break;
        default:
            if (c < 0x20)
                sb_printf(sb, "\\u%04x", c);
            else
                sb_putc(sb, (char)c);
        }
    }
    sb_putc(sb, '"');
}

/* Python float repr: shortest round-trip digits, fixed notation for exponents -4..15. */
static void py_float(strbuf *sb, double d) {
    if (isnan(d)) {
        sb_puts(sb, "NaN");
        return;
    }
    if (isinf(d)) {
        sb_puts(sb, d < 0 ? "-Infinity" : "Infinity");
        return;
    }
    char buf[64];
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof buf, "%.*e", p - 1, d);
        if (strtod(buf, NULL) == d) break;
    }
    char digits[32];
    size_t nd = 0;
    const char *q = buf;
    int neg = *q == '-';
    if (neg) q++;
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9') digits[nd++] = *q;
    int e = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    if (neg) sb_putc(sb, '-');
    if (e >= -4 && e < 16) {
        if (e >= 0) {
            for (int i = 0; i <= e; i++)
                sb_putc(sb, (size_t)i < nd ? digits[i] : '0');
            sb_putc(sb, '.');
            if ((size_t)e + 1 < nd)
                sb_append(sb, digits + e + 1, nd - (size_t)e - 1);
            else
                sb_putc(sb, '0');
        } else {
            sb_puts(sb, "0.");
            for (int i = 0; i < -e - 1; i++)
                sb_putc(sb, '0');
            sb_append(sb, digits, nd);
        }
    } else {
        sb_putc(sb, digits[0]);
        if (nd > 1) {
            sb_putc(sb, '.');
            sb_append(sb, digits + 1, nd - 1);
        }
        sb_printf(sb, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
    }
}

/* json.dumps(v, ensure_ascii=False) as transformers' tojson filter writes it. */
static void py_json(strbuf *sb, json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *x;
        int first = 1;
        sb_putc(sb, '{');
        json_object_foreach(v, k, x) {
            if (!first) sb_puts(sb, ", ");
            first = 0;
            py_json_str(sb, k, strlen(k));
            sb_puts(sb, ": ");
            py_json(sb, x);
        }
        sb_putc(sb, '}');
        break;
    }
    case JSON_ARRAY:
        sb_putc(sb, '[');
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i) sb_puts(sb, ", ");
            py_json(sb, json_array_get(v, i));
        }
        sb_putc(sb, ']');
        break;
    case JSON_STRING:
        py_json_str(sb, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        sb_printf(sb, "%lld", (long long)json_integer_value(v));
        break;
    case JSON_REAL:
        py_float(sb, json_real_value(v));
        break;
    case JSON_TRUE:
        sb_puts(sb, "true");
        break;
    case JSON_FALSE:
        sb_puts(sb, "false");
        break;
    default:
        sb_puts(sb, "null");
        break;
    }
}

/* ---- message access ---- */

typedef struct {
    const char *role;
    const char *content;
    size_t content_len;
    json_t *tool_calls; /* array or NULL */
    json_t *msg;
    float w; /* weight of this message's trained part */
} msg_view;

static int view_messages(json_t *messages, msg_view **out, size_t *n, const render_opts *o, lt_err *err) {
    if (!json_is_array(messages))
        return lt_err_set(err, 400, "messages must be a JSON array of message objects");
    *n = json_array_size(messages);
    *out = calloc(*n ? *n : 1, sizeof **out);
    if (!*out) abort();
    long last_asst = -1;
    for (size_t i = 0; i < *n; i++) {
        json_t *m = json_array_get(messages, i);
        msg_view *v = &(*out)[i];
        if (!json_is_object(m)) return lt_err_set(err, 400, "messages[%zu] must be an object", i);
        json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
        if (!json_is_string(role)) return lt_err_set(err, 400, "messages[%zu].role must be a string", i);
        v->role = json_string_value(role);
        if (strcmp(v->role, "system") && strcmp(v->role, "user") && strcmp(v->role, "assistant") &&
            strcmp(v->role, "tool"))
            return lt_err_set(err, 400,
                              "messages[%zu].role \"%.40s\" is not one of system, user, assistant, tool", i,
                              v->role);
        if (content && !json_is_null(content) && !json_is_string(content))
            return lt_err_set(err, 400, "messages[%zu].content must be a string or null", i);
        v->content = json_is_string(content) ? json_string_value(content) : "";
        v->content_len = json_is_string(content) ? json_string_length(content) : 0;
        if (eng_tok_utf8_invalid_at(v->content, v->content_len) < v->content_len)
            return lt_err_set(err, 400, "messages[%zu].content is not valid UTF-8", i);
        json_t *tc = json_object_get(m, "tool_calls");
        if (tc && !json_is_null(tc) && !json_is_array(tc))
            return lt_err_set(err, 400, "messages[%zu].tool_calls must be an array", i);
        v->tool_calls = json_array_size(tc) ? tc : NULL;
        v->msg = m;
        json_t *tr = json_object_get(m, "trainable");
        int trained = !strcmp(v->role, "assistant");
        if (json_is_boolean(tr)) trained = json_is_true(tr);
        v->w = trained ? 1.0f : 0.0f;
        if (!strcmp(v->role, "assistant")) last_asst = (long)i;
    }
    if (o->train_last_only)
        for (size_t i = 0; i < *n; i++)
            if ((long)i != last_asst && !json_is_boolean(json_object_get((*out)[i].msg, "trainable")))
                (*out)[i].w = 0.0f;
    return 0;
}

/* One tool call's name and arguments text (arguments: a string as is, else Python-style JSON). */
static int tool_call_parts(json_t *tc, size_t mi, size_t ti, const char **name, strbuf *args, lt_err *err) {
    json_t *f = json_object_get(tc, "function");
    if (json_is_object(f)) tc = f;
    json_t *nm = json_object_get(tc, "name"), *a = json_object_get(tc, "arguments");
    if (!json_is_string(nm))
        return lt_err_set(
            err, 400, "messages[%zu].tool_calls[%zu]: needs a string \"name\" (or function.name)", mi, ti);
    if (!a) return lt_err_set(err, 400, "messages[%zu].tool_calls[%zu]: needs \"arguments\"", mi, ti);
    *name = json_string_value(nm);
    if (json_is_string(a))
        sb_append(args, json_string_value(a), json_string_length(a));
    else
        py_json(args, a);
    return 0;
}

/* ---- qwen3 ---- */

static int starts_with(const char *s, size_t n, const char *p) {
    size_t m = strlen(p);
    return n >= m && memcmp(s, p, m) == 0;
}

static int ends_with(const char *s, size_t n, const char *p) {
    size_t m = strlen(p);
    return n >= m && memcmp(s + n - m, p, m) == 0;
}

/* ---- ChatML pieces shared by qwen3 and chatml ---- */

/* <|im_start|>role\ncontent<|im_end|>\n: the header and the closing newline weight 0, content and <|im_end|>
 * weight w. */
static int chatml_turn(rctx *r, const char *role, const char *content, size_t len, float w) {
    if (emit_special(r, "<|im_start|>", 0)) return -1;
    emit_str(r, role, 0);
    emit_str(r, "\n", 0);
    emit_text(r, content, len, w);
    if (emit_special(r, "<|im_end|>", w)) return -1;
    emit_str(r, "\n", 0);
    return 0;
}

/* Hermes-style tool calls after an assistant's content (clen bytes of it were written), as Qwen2.5's and
 * Qwen3's templates write them: "\n" before each call except a first one after empty content. */
static int chatml_tool_calls(rctx *r, const msg_view *v, size_t i, size_t clen) {
    for (size_t t = 0; v->tool_calls && t < json_array_size(v->tool_calls); t++) {
        const char *name;
        strbuf args = STRBUF_INIT;
        if (tool_call_parts(json_array_get(v->tool_calls, t), i, t, &name, &args, r->err)) {
            sb_free(&args);
            return -1;
        }
        if ((t == 0 && clen > 0) || t > 0) emit_str(r, "\n", v->w);
        emit_str(r, "<tool_call>\n{\"name\": \"", v->w);
        emit_str(r, name, v->w);
        emit_str(r, "\", \"arguments\": ", v->w);
        emit_text(r, args.buf ? args.buf : "", args.len, v->w);
        emit_str(r, "}\n</tool_call>", v->w);
        sb_free(&args);
    }
    return 0;
}

/* A tool result as Qwen's templates write it: consecutive tool messages share one user turn of
 * <tool_response> blocks. */
static int chatml_tool_response(rctx *r, const msg_view *m, size_t n, size_t i) {
    const msg_view *v = &m[i];
    if (i == 0 || strcmp(m[i - 1].role, "tool") != 0) {
        if (emit_special(r, "<|im_start|>", 0)) return -1;
        emit_str(r, "user", 0);
    }
    emit_str(r, "\n<tool_response>\n", v->w);
    emit_text(r, v->content, v->content_len, v->w);
    emit_str(r, "\n</tool_response>", v->w);
    if (i == n - 1 || strcmp(m[i + 1].role, "tool") != 0) {
        if (emit_special(r, "<|im_end|>", v->w)) return -1;
        emit_str(r, "\n", 0);
    }
    return 0;
}

static int render_qwen3(rctx *r, msg_view *m, size_t n, const render_opts *o) {
    if (n && !strcmp(m[0].role, "system") && chatml_turn(r, "system", m[0].content, m[0].content_len, m[0].w))
        return -1;
    long last_query = (long)n - 1;
    for (size_t k = n; k-- > 0;) {
        if (!strcmp(m[k].role, "user") && !(starts_with(m[k].content, m[k].content_len, "<tool_response>") &&
                                            ends_with(m[k].content, m[k].content_len, "</tool_response>"))) {
            last_query = (long)k;
            break;
        }
    }
    for (size_t i = 0; i < n; i++) {
        msg_view *v = &m[i];
        if (!strcmp(v->role, "user") || (!strcmp(v->role, "system") && i > 0)) {
            if (chatml_turn(r, v->role, v->content, v->content_len, v->w)) return -1;
        } else if (!strcmp(v->role, "assistant")) {
            const char *content = v->content, *reason = "";
            size_t clen = v->content_len, rlen = 0;
            json_t *rc = json_object_get(v->msg, "reasoning_content");
            if (rc && !json_is_null(rc)) {
                if (!json_is_string(rc))
                    return lt_err_set(r->err, 400, "messages[%zu].reasoning_content must be a string", i);
                reason = json_string_value(rc);
                rlen = json_string_length(rc);
            } else {
                const char *last_end = find_last(v->content, v->content_len, "</think>");
                if (last_end) {
                    content = last_end + 8;
                    clen = v->content_len - (size_t)(content - v->content);
                    lstrip_nl(&content, &clen);
                    const char *first_end = memmem(v->content, v->content_len, "</think>", 8);
                    reason = v->content;
                    rlen = (size_t)(first_end - v->content);
                    rstrip_nl(&reason, &rlen);
                    const char *open = find_last(reason, rlen, "<think>");
                    if (open) {
                        rlen -= (size_t)(open + 7 - reason);
                        reason = open + 7;
                    }
                    lstrip_nl(&reason, &rlen);
                }
            }
            if (emit_special(r, "<|im_start|>", 0)) return -1;
            emit_str(r, "assistant\n", 0);
            if ((long)i > last_query && (i == n - 1 || rlen > 0)) {
                const char *rs = reason, *cs = content;
                size_t rl = rlen, cl = clen;
                lstrip_nl(&rs, &rl);
                rstrip_nl(&rs, &rl);
                lstrip_nl(&cs, &cl);
                emit_str(r, "<think>\n", v->w);
                emit_text(r, rs, rl, v->w);
                emit_str(r, "\n</think>\n\n", v->w);
                emit_text(r, cs, cl, v->w);
            } else {
                emit_text(r, content, clen, v->w);
            }
            if (chatml_tool_calls(r, v, i, clen)) return -1;
            if (emit_special(r, "<|im_end|>", v->w)) return -1;
            emit_str(r, "\n", 0);
        } else if (!strcmp(v->role, "tool")) {
            if (chatml_tool_response(r, m, n, i)) return -1;
        }
    }
    if (o->add_generation_prompt) {
        if (emit_special(r, "<|im_start|>", 0)) return -1;
        emit_str(r, "assistant\n", 0);
        if (!o->enable_thinking) emit_str(r, "<think>\n\n</think>\n\n", 0);
    }
    return 0;
}

/* ---- chatml ---- */

/* The default system message a ChatML template writes when the first message is not a system one: the text
 * of a template string literal that starts with <|im_start|>system, a newline (or its \n escape), and runs
 * to <|im_end|> inside the same literal (SmolLM2: '<|im_start|>system\nYou are a helpful AI assistant named
 * SmolLM, trained by Hugging Face<|im_end|>\n'; Qwen2.5: '...You are Qwen, created by Alibaba Cloud. You are
 * a helpful assistant.<|im_end|>\n'). The literal that writes messages[0]['content'] closes right after the
 * newline, so it never matches. 1 with the unescaped text in out, 0 when the template has none. */
static int chatml_default_system(const char *tpl, strbuf *out) {
    static const char head[] = "<|im_start|>system";
    for (const char *p = tpl ? strstr(tpl, head) : NULL; p; p = strstr(p + 1, head)) {
        if (p == tpl || (p[-1] != '\'' && p[-1] != '"')) continue;
        char quote = p[-1];
        const char *q = p + sizeof head - 1;
        if (*q == '\n')
            q++;
        else if (q[0] == '\\' && q[1] == 'n')
            q += 2;
        else
            continue;
        sb_reset(out);
        for (; *q && *q != quote; q++) {
            if (!strncmp(q, "<|im_end|>", 10)) return out->len > 0;
            if (*q == '\\' && q[1]) {
                q++;
                sb_putc(out, *q == 'n' ? '\n' : *q == 't' ? '\t' : *q);
            } else {
                sb_putc(out, *q);
            }
        }
    }
    return 0;
}

/* Plain ChatML (SmolLM2, Qwen2.5 and other ChatML models without thinking): every message as one turn, the
 * template's default system message first when the conversation does not start with a system message,
 * Hermes tool calls, and tool results as Qwen writes them when the template knows <tool_response> (else as
 * a "tool" turn); generation prompt <|im_start|>assistant\n. */
static int render_chatml(rctx *r, msg_view *m, size_t n, const render_opts *o) {
    const char *tpl = eng_tok_chat_template(r->tok);
    strbuf sys = STRBUF_INIT;
    int rc = 0;
    if (n && strcmp(m[0].role, "system") != 0 && chatml_default_system(tpl, &sys))
        rc = chatml_turn(r, "system", sys.buf, sys.len, 0);
    sb_free(&sys);
    int qwen_tools = tpl && strstr(tpl, "<tool_response>") != NULL;
    for (size_t i = 0; i < n && rc == 0; i++) {
        msg_view *v = &m[i];
        if (!strcmp(v->role, "tool") && qwen_tools) {
            rc = chatml_tool_response(r, m, n, i);
        } else if (v->tool_calls && json_array_size(v->tool_calls)) {
            rc = emit_special(r, "<|im_start|>", 0);
            emit_str(r, v->role, 0);
            emit_str(r, "\n", 0);
            emit_text(r, v->content, v->content_len, v->w);
            if (rc == 0) rc = chatml_tool_calls(r, v, i, v->content_len);
            if (rc == 0) rc = emit_special(r, "<|im_end|>", v->w);
            emit_str(r, "\n", 0);
        } else {
            rc = chatml_turn(r, v->role, v->content, v->content_len, v->w);
        }
    }
    if (rc == 0 && o->add_generation_prompt) {
        rc = emit_special(r, "<|im_start|>", 0);
        emit_str(r, "assistant\n", 0);
    }
    return rc;
}

/* ---- llama3 ---- */

static int render_llama3(rctx *r, msg_view *m, size_t n, const render_opts *o) {
    if (emit_special(r, "<|begin_of_text|>", 0)) return -1;
    for (size_t i = 0; i < n; i++) {
        msg_view *v = &m[i];
        if (emit_special(r, "<|start_header_id|>", 0)) return -1;
        emit_str(r, v->role, 0);
        if (emit_special(r, "<|end_header_id|>", 0)) return -1;
        emit_str(r, "\n\n", 0);
        const char *c = v->content;
        size_t cl = v->content_len;
        py_strip(&c, &cl);
        emit_text(r, c, cl, v->w);
        /* tool calls: the Llama 3.1 JSON form, {"name": ..., "parameters": ...}, one per line */
        for (size_t t = 0; v->tool_calls && t < json_array_size(v->tool_calls); t++) {
            const char *name;
            strbuf args = STRBUF_INIT, line = STRBUF_INIT;
            if (tool_call_parts(json_array_get(v->tool_calls, t), i, t, &name, &args, r->err)) {
                sb_free(&args);
                return -1;
            }
            if (cl > 0 || t > 0) sb_putc(&line, '\n');
            sb_puts(&line, "{\"name\": ");
            py_json_str(&line, name, strlen(name));
            sb_puts(&line, ", \"parameters\": ");
            sb_append(&line, args.buf ? args.buf : "", args.len);
            sb_putc(&line, '}');
            emit_text(r, line.buf, line.len, v->w);
            sb_free(&args);
            sb_free(&line);
        }
        if (emit_special(r, "<|eot_id|>", v->w)) return -1;
    }
    if (o->add_generation_prompt) {
        if (emit_special(r, "<|start_header_id|>", 0)) return -1;
        emit_str(r, "assistant", 0);
        if (emit_special(r, "<|end_header_id|>", 0)) return -1;
        emit_str(r, "\n\n", 0);
    }
    return 0;
}

/* ---- role_colon ---- */

static int render_role_colon(rctx *r, msg_view *m, size_t n, const render_opts *o) {
    int bos = eng_tok_bos_id(r->tok);
    if (bos >= 0 && eng_tok_add_bos(r->tok) != 0) push_item(r, (item){bos, 0, 0, 0}); /* unless told not to */
    for (size_t i = 0; i < n; i++) {
        msg_view *v = &m[i];
        const char *name = !strcmp(v->role, "system")      ? "System:"
                           : !strcmp(v->role, "user")      ? "User:"
                           : !strcmp(v->role, "assistant") ? "Assistant:"
                                                           : "Tool:";
        emit_str(r, name, 0);
        emit_str(r, " ", v->w);
        emit_text(r, v->content, v->content_len, v->w);
        for (size_t t = 0; v->tool_calls && t < json_array_size(v->tool_calls); t++) {
            const char *fn;
            strbuf args = STRBUF_INIT, line = STRBUF_INIT;
            if (tool_call_parts(json_array_get(v->tool_calls, t), i, t, &fn, &args, r->err)) {
                sb_free(&args);
                return -1;
            }
            if (v->content_len > 0 || t > 0) sb_putc(&line, '\n');
            sb_puts(&line, "<tool_call>\n{\"name\": ");
            py_json_str(&line, fn, strlen(fn));
            sb_puts(&line, ", \"arguments\": ");
            sb_append(&line, args.buf ? args.buf : "", args.len);
            sb_puts(&line, "}\n</tool_call>");
            emit_text(r, line.buf, line.len, v->w);
            sb_free(&args);
            sb_free(&line);
        }
        emit_str(r, "\n\n", v->w);
    }
    if (o->add_generation_prompt) emit_str(r, "Assistant:", 0);
    return 0;
}

/* ---- tokenization of the items ---- */

typedef struct {
    int *ids;
    float *w;
    size_t n, cap;
} outv;

static void out_push(outv *o, int id, float w) {
    if (o->n == o->cap) {
        o->cap = o->cap ? o->cap * 2 : 256;
        o->ids = realloc(o->ids, o->cap * sizeof *o->ids);
        o->w = realloc(o->w, o->cap * sizeof *o->w);
        if (!o->ids || !o->w) abort();
    }
    o->ids[o->n] = id;
    o->w[o->n++] = w;
}

static int encode_segment(rctx *r, const item *it, outv *o) {
    int *ids;
    size_t n;
    if (eng_tok_encode(r->tok, r->txt.buf + it->off, it->len, 0, &ids, &n, r->err)) return -1;
    for (size_t k = 0; k < n; k++)
        out_push(o, ids[k], it->w);
    free(ids);
    return 0;
}

/* Encodes items[a..b) (all text, contiguous in r->txt) as one string. */
static int encode_run(rctx *r, size_t a, size_t b, outv *o) {
    size_t off = r->items[a].off, end = r->items[b - 1].off + r->items[b - 1].len;
    int *ids;
    size_t n;
    if (eng_tok_encode(r->tok, r->txt.buf + off, end - off, 0, &ids, &n, r->err)) return -1;
    /* segment ends in the coordinates of the text the tokens spell: the NFC form when the tokenizer
     * normalizes (NFC of the run equals the concatenated NFC of its segments, which start at starters) */
    size_t *seg_end = malloc((b - a) * sizeof *seg_end), acc = 0;
    if (!seg_end) abort();
    for (size_t s = a; s < b; s++) {
        size_t l = r->items[s].len;
        if (eng_tok_has_nfc(r->tok)) {
            char *nfc = eng_tok_nfc(r->txt.buf + r->items[s].off, r->items[s].len, &l);
            free(nfc);
        }
        acc += l;
        seg_end[s - a] = acc;
    }
    size_t *starts = malloc((n ? n : 1) * sizeof *starts), pos = 0;
    if (!starts) abort();
    for (size_t k = 0; k < n; k++) {
        starts[k] = pos;
        pos += eng_tok_token_bytes(r->tok, ids[k], NULL, 0);
    }
    int rc = 0;
    if (pos !=
        acc) { /* lengths do not line up (e.g. stripped added tokens): keep weights exact per segment */
        for (size_t s = a; s < b && rc == 0; s++)
            rc = encode_segment(r, &r->items[s], o);
    } else {
        size_t seg = 0;
        for (size_t k = 0; k < n; k++) {
            while (seg + 1 < b - a && starts[k] >= seg_end[seg])
                seg++;
            out_push(o, ids[k], r->items[a + seg].w);
        }
    }
    free(ids);
    free(starts);
    free(seg_end);
    return rc;
}

int render_chat_opts(const eng_tokenizer *tok, render_kind kind, json_t *messages, const render_opts *opts,
                     render_out *out, lt_err *err) {
    memset(out, 0, sizeof *out);
    msg_view *m = NULL;
    size_t n = 0;
    rctx r = {.tok = tok, .err = err};
    outv o = {0};
    int rc = view_messages(messages, &m, &n, opts, err);
    if (rc == 0) {
        switch (kind) {
        case RENDER_QWEN3:
            rc = render_qwen3(&r, m, n, opts);
            break;
        case RENDER_LLAMA3:
            rc = render_llama3(&r, m, n, opts);
            break;
        case RENDER_ROLE_COLON:
            rc = render_role_colon(&r, m, n, opts);
            break;
        case RENDER_CHATML:
            rc = render_chatml(&r, m, n, opts);
            break;
        default:
            rc = lt_err_set(err, 400, "unknown renderer %d", (int)kind);
        }
    }
    for (size_t i = 0; rc == 0 && i < r.n;) {
        if (r.items[i].special >= 0) {
            out_push(&o, r.items[i].special, r.items[i].w);
            i++;
            continue;
        }
        size_t j = i;
        while (j < r.n && r.items[j].special < 0)
            j++;
        rc = encode_run(&r, i, j, &o);
        i = j;
    }
    free(m);
    free(r.items);
    sb_free(&r.txt);
    if (rc) {
        free(o.ids);
        free(o.w);
        return -1;
    }
    out->ids = o.ids;
    out->weights = o.w;
    out->n = o.n;
    return 0;
}

int render_chat(const eng_tokenizer *tok, render_kind kind, json_t *messages, int add_generation_prompt,
                render_out *out, lt_err *err) {
    render_opts o = RENDER_OPTS_DEFAULT;
    o.add_generation_prompt = add_generation_prompt;
    return render_chat_opts(tok, kind, messages, &o, out, err);
}

void render_out_free(render_out *out) {
    free(out->ids);
    free(out->weights);
    memset(out, 0, sizeof *out);
}

static const char *const kind_names[] = {"qwen3", "llama3", "role_colon", "chatml"};
#define N_KINDS ((int)(sizeof kind_names / sizeof *kind_names))

int render_kind_parse(const char *name, render_kind *kind) {
    for (int i = 0; i < N_KINDS; i++)
        if (name && !strcmp(name, kind_names[i])) {
            *kind = (render_kind)i;
            return 0;
        }
    return -1;
}

const char *render_kind_name(render_kind kind) {
    return (unsigned)kind < (unsigned)N_KINDS ? kind_names[kind] : "unknown";
}

render_kind render_pick(const eng_tokenizer *tok, const char *family) {
    int is_llama = family && !strcmp(family, "llama"), is_qwen = family && !strcmp(family, "qwen");
    const char *tpl = eng_tok_chat_template(tok);
    int chatml_tokens =
        eng_tok_token_id(tok, "<|im_start|>") >= 0 && eng_tok_token_id(tok, "<|im_end|>") >= 0;
    if (tpl && strcmp(tpl, ENG_TINY_CHAT_TEMPLATE) != 0 /* tiny models: role_colon */) {
        if (strstr(tpl, "<|start_header_id|>") && eng_tok_token_id(tok, "<|start_header_id|>") >= 0 &&
            eng_tok_token_id(tok, "<|eot_id|>") >= 0 && !is_qwen)
            return RENDER_LLAMA3;
        if (strstr(tpl, "<|im_start|>") && chatml_tokens) {
            if (!strstr(tpl, "<think>")) return RENDER_CHATML;
            if (eng_tok_token_id(tok, "<think>") >= 0 && !is_llama) return RENDER_QWEN3;
        }
    }
    int llama = eng_tok_token_id(tok, "<|start_header_id|>") >= 0 && eng_tok_token_id(tok, "<|eot_id|>") >= 0;
    /* Qwen3's tokenizer: ChatML tokens plus the thinking tags (a bare ChatML vocabulary, like the tiny
     * model's, is not enough) */
    int qwen3 = eng_tok_token_id(tok, "<|im_start|>") >= 0 && eng_tok_token_id(tok, "<|im_end|>") >= 0 &&
                eng_tok_token_id(tok, "<think>") >= 0 && eng_tok_token_id(tok, "</think>") >= 0;
    if (llama && !is_qwen) return RENDER_LLAMA3;
    if (qwen3 && !is_llama) return RENDER_QWEN3;
    return RENDER_ROLE_COLON;
}

void render_stops_for(const eng_tokenizer *tok, render_kind kind, render_stops *s) {
    memset(s, 0, sizeof *s);
    const char *names[3] = {NULL, NULL, NULL};
    if (kind == RENDER_QWEN3 || kind == RENDER_CHATML) names[0] = "<|im_end|>", names[1] = "<|endoftext|>";
    if (kind == RENDER_LLAMA3) names[0] = "<|eot_id|>", names[1] = "<|end_of_text|>";
    for (int i = 0; names[i]; i++) {
        int id = eng_tok_token_id(tok, names[i]);
        if (id >= 0) s->stop_ids[s->n_stop_ids++] = id;
    }
    int eos = eng_tok_eos_id(tok);
    int dup = 0;
    for (int i = 0; i < s->n_stop_ids; i++)
        dup |= s->stop_ids[i] == eos;
    if (eos >= 0 && !dup && s->n_stop_ids < 4) s->stop_ids[s->n_stop_ids++] = eos;
    if (kind == RENDER_ROLE_COLON) s->stop_strings[s->n_stop_strings++] = "\n\nUser:";
}
