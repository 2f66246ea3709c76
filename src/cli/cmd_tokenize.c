/* cmd_tokenize.c: `lathe tokenize` and `lathe detokenize`, the tokenizer and chat renderers from the shell.
 *
 *   lathe tokenize (DIR | --tokenizer FILE) --text STR [--no-special] [--json]
 *   lathe tokenize (DIR | --tokenizer FILE) --lines FILE [--no-special]
 *   lathe tokenize (DIR | --tokenizer FILE) --lines FILE --renderer R [--add-generation-prompt]
 *   lathe tokenize (DIR | --tokenizer FILE) --chat FILE.json --renderer qwen3|llama3|chatml|role_colon|auto
 *                  [--add-generation-prompt] [--json]
 *   lathe detokenize (DIR | --tokenizer FILE) --ids 1,2,3 [--skip-special] [--json]
 *   lathe detokenize (DIR | --tokenizer FILE) --lines FILE [--skip-special]
 *
 * --lines is the batch mode the parity tests use: every line of FILE is one JSON value (a string to encode,
 * a conversation to render when --renderer is given, or an array of ids to decode) and the output has one
 * JSON line per input line (an array of ids, {ids, weights}, or the decoded string), or {"error": "..."} for
 * a line that failed, so thousands of strings cost one process.
 * Plain output is ids separated by spaces, or the decoded text as is. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "engine/tokenizer.h"
#include "train/render.h"
#include "util/strbuf.h"
#include "util/util.h"

typedef struct {
    const char *tok_path, *text, *lines, *chat, *renderer, *ids;
    int json, no_special, skip_special, gen_prompt, has_text;
} tok_args;

static void usage_tokenize(FILE *f) {
    fprintf(
        f,
        "usage: lathe tokenize (DIR | --tokenizer FILE) --text STR [--no-special] [--json]\n"
        "       lathe tokenize (DIR | --tokenizer FILE) --lines FILE [--no-special]\n"
        "       lathe tokenize (DIR | --tokenizer FILE) --lines FILE --renderer R [--add-generation-prompt]\n"
        "       lathe tokenize (DIR | --tokenizer FILE) --chat FILE.json --renderer "
        "qwen3|llama3|chatml|role_colon|auto [--add-generation-prompt] [--json]\n"
        "  DIR is a model directory with tokenizer.json, or a .gguf file; FILE a tokenizer.json or .gguf.\n"
        "  --no-special   special-token strings in the text are tokenized as plain text\n"
        "  --lines FILE   each line is a JSON string; prints one JSON array of ids per line (with\n"
        "                 --renderer: each line is a conversation; prints {ids, weights} per line)\n"
        "  --chat FILE    a JSON array of {role, content, tool_calls?, tool_call_id?} messages (or an\n"
        "                 object with \"messages\"); prints ids and per-token training weights\n");
}

static void usage_detokenize(FILE *f) {
    fprintf(f, "usage: lathe detokenize (DIR | --tokenizer FILE) --ids 1,2,3 [--skip-special] [--json]\n"
               "       lathe detokenize (DIR | --tokenizer FILE) --lines FILE [--skip-special]\n"
               "  --lines FILE   each line is a JSON array of ids; prints one JSON string per line\n");
}

/* Returns 0, or EXIT_USAGE after printing what is wrong. */
static int parse_args(int argc, char **argv, tok_args *a, int detok) {
    memset(a, 0, sizeof *a);
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        const char **dst = NULL;
        if (!strcmp(s, "--help") || !strcmp(s, "-h")) {
            detok ? usage_detokenize(stdout) : usage_tokenize(stdout);
            return -1;
        } else if (!strcmp(s, "--json")) {
            a->json = 1;
        } else if (!strcmp(s, "--no-special") && !detok) {
            a->no_special = 1;
        } else if (!strcmp(s, "--skip-special") && detok) {
            a->skip_special = 1;
        } else if (!strcmp(s, "--add-generation-prompt") && !detok) {
            a->gen_prompt = 1;
        } else if (!strcmp(s, "--tokenizer")) {
            dst = &a->tok_path;
        } else if (!strcmp(s, "--text") && !detok) {
            dst = &a->text;
            a->has_text = 1;
        } else if (!strcmp(s, "--lines")) {
            dst = &a->lines;
        } else if (!strcmp(s, "--chat") && !detok) {
            dst = &a->chat;
        } else if (!strcmp(s, "--renderer") && !detok) {
            dst = &a->renderer;
        } else if (!strcmp(s, "--ids") && detok) {
            dst = &a->ids;
        } else if (s[0] == '-' && s[1] == '-') {
            fprintf(stderr, "lathe %s: unknown option %s\n", argv[0], s);
            return EXIT_USAGE;
        } else if (!a->tok_path) {
            a->tok_path = s;
        } else {
            fprintf(stderr, "lathe %s: unexpected argument '%s'\n", argv[0], s);
            return EXIT_USAGE;
        }
        if (dst) {
            if (i + 1 >= argc) {
                fprintf(stderr, "lathe %s: %s needs a value\n", argv[0], s);
                return EXIT_USAGE;
            }
            *dst = argv[++i];
        }
    }
    if (!a->tok_path) {
        fprintf(stderr, "lathe %s: give a model directory or --tokenizer FILE\n", argv[0]);
        return EXIT_USAGE;
    }
    int modes = detok ? !!a->ids + !!a->lines : a->has_text + !!a->lines + !!a->chat;
    if (modes != 1) {
        fprintf(stderr, "lathe %s: give exactly one of %s\n", argv[0],
                detok ? "--ids, --lines" : "--text, --lines, --chat");
        return EXIT_USAGE;
    }
    if (a->chat && !a->renderer) {
        fprintf(stderr, "lathe tokenize: --chat needs --renderer qwen3|llama3|chatml|role_colon|auto\n");
        return EXIT_USAGE;
    }
    return 0;
}

static void print_ids_json(FILE *f, const int *ids, size_t n) {
    fputc('[', f);
    for (size_t i = 0; i < n; i++)
        fprintf(f, i ? ",%d" : "%d", ids[i]);
    fputc(']', f);
}

static void print_error_line(const char *msg) {
    json_t *o = json_pack("{s:s}", "error", msg);
    char *s = json_dumps(o, JSON_COMPACT);
    puts(s ? s : "{\"error\":\"?\"}");
    free(s);
    json_decref(o);
}

/* Calls fn on every line of path (without its newline). */
static int each_line(const char *path, void (*fn)(void *, const char *, size_t), void *ctx) {
    lt_err err = {0};
    size_t len;
    char *data = lt_read_file(path, &len, &err);
    if (!data) {
        fprintf(stderr, "lathe: %s\n", err.msg);
        return EXIT_FAIL;
    }
    size_t i = 0;
    while (i < len) {
        char *nl = memchr(data + i, '\n', len - i);
        size_t e = nl ? (size_t)(nl - data) : len;
        fn(ctx, data + i, e - i);
        i = e + 1;
    }
    free(data);
    return EXIT_OK;
}

typedef struct {
    eng_tokenizer *tok;
    int flag; /* allow_special for encode, skip_special for decode */
} line_ctx;

static void encode_line(void *vc, const char *line, size_t n) {
    line_ctx *c = vc;
    json_error_t je;
    json_t *v = json_loadb(line, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (!v) { /* e.g. a lone surrogate escape: not representable as UTF-8 */
        char msg[300];
        snprintf(msg, sizeof msg, "line is not valid JSON: %s", je.text);
        print_error_line(msg);
        return;
    }
    if (!json_is_string(v)) {
        print_error_line("each --lines line must be a JSON string");
        json_decref(v);
        return;
    }
    lt_err err = {0};
    int *ids;
    size_t nids;
    if (eng_tok_encode(c->tok, json_string_value(v), json_string_length(v), c->flag, &ids, &nids, &err)) {
        print_error_line(err.msg);
    } else {
        print_ids_json(stdout, ids, nids);
        putchar('\n');
        free(ids);
    }
    json_decref(v);
}

static int parse_id_array(json_t *arr, int **ids, size_t *n) {
    *n = json_array_size(arr);
    *ids = malloc((*n ? *n : 1) * sizeof **ids);
    if (!*ids) abort();
    for (size_t i = 0; i < *n; i++) {
        json_t *x = json_array_get(arr, i);
        if (!json_is_integer(x)) return -1;
        (*ids)[i] = (int)json_integer_value(x);
    }
    return 0;
}

static void print_text_json(const char *s, size_t n) {
    json_t *o = json_stringn(s, n);
    char *d = json_dumps(o, JSON_COMPACT | JSON_ENCODE_ANY);
    puts(d ? d : "null");
    free(d);
    json_decref(o);
}

static void decode_line(void *vc, const char *line, size_t n) {
    line_ctx *c = vc;
    json_error_t je;
    json_t *v = json_loadb(line, n, JSON_DECODE_ANY, &je);
    int *ids = NULL;
    size_t nids;
    if (!json_is_array(v) || parse_id_array(v, &ids, &nids)) {
        print_error_line("each --lines line must be a JSON array of integer ids");
    } else {
        size_t len;
        char *s = eng_tok_decode(c->tok, ids, nids, c->flag, &len);
        print_text_json(s, len);
        free(s);
    }
    free(ids);
    json_decref(v);
}

static eng_tokenizer *load_tok(const char *path) {
    lt_err err = {0};
    eng_tokenizer *t = eng_tok_load(path, &err);
    if (!t) fprintf(stderr, "lathe: %s\n", err.msg);
    return t;
}

static int parse_kind(const eng_tokenizer *tok, const char *name, render_kind *kind) {
    if (!strcmp(name, "auto")) {
        *kind = render_pick(tok, NULL);
        return 0;
    }
    if (render_kind_parse(name, kind) == 0) return 0;
    fprintf(stderr, "lathe tokenize: --renderer must be qwen3, llama3, chatml, role_colon or auto\n");
    return -1;
}

static void print_render(const render_out *out, render_kind kind, int json) {
    if (json) {
        fputs("{\"ids\":", stdout);
        print_ids_json(stdout, out->ids, out->n);
        fputs(",\"weights\":[", stdout);
        for (size_t i = 0; i < out->n; i++)
            fprintf(stdout, i ? ",%g" : "%g", out->weights[i]);
        printf("],\"renderer\":\"%s\"}\n", render_kind_name(kind));
    } else {
        for (size_t i = 0; i < out->n; i++)
            printf(i ? " %d" : "%d", out->ids[i]);
        putchar('\n');
    }
}

static int run_chat(eng_tokenizer *tok, const tok_args *a) {
    lt_err err = {0};
    json_error_t je;
    render_kind kind;
    if (parse_kind(tok, a->renderer, &kind)) return EXIT_USAGE;
    json_t *doc = json_load_file(a->chat, 0, &je);
    if (!doc) {
        fprintf(stderr, "lathe tokenize: %s: line %d column %d: %s\n", a->chat, je.line, je.column, je.text);
        return EXIT_FAIL;
    }
    json_t *msgs = json_is_object(doc) ? json_object_get(doc, "messages") : doc;
    render_out out;
    int rc = render_chat(tok, kind, msgs, a->gen_prompt, &out, &err);
    json_decref(doc);
    if (rc) {
        fprintf(stderr, "lathe tokenize: %s: %s\n", a->chat, err.msg);
        return EXIT_FAIL;
    }
    print_render(&out, kind, a->json);
    render_out_free(&out);
    return EXIT_OK;
}

typedef struct {
    eng_tokenizer *tok;
    render_kind kind;
    int gen_prompt;
} chat_ctx;

static void chat_line(void *vc, const char *line, size_t n) {
    chat_ctx *c = vc;
    json_error_t je;
    json_t *doc = json_loadb(line, n, 0, &je);
    if (!doc) {
        print_error_line(
            "each --lines line must be a JSON conversation (array of messages, or {\"messages\"})");
        return;
    }
    json_t *msgs = json_is_object(doc) ? json_object_get(doc, "messages") : doc;
    render_out out;
    lt_err err = {0};
    if (render_chat(c->tok, c->kind, msgs, c->gen_prompt, &out, &err)) {
        print_error_line(err.msg);
    } else {
        print_render(&out, c->kind, 1);
        render_out_free(&out);
    }
    json_decref(doc);
}

int cmd_tokenize(int argc, char **argv) {
    tok_args a;
    int rc = parse_args(argc, argv, &a, 0);
    if (rc) {
        if (rc == EXIT_USAGE) usage_tokenize(stderr);
        return rc < 0 ? EXIT_OK : rc;
    }
    eng_tokenizer *tok = load_tok(a.tok_path);
    if (!tok) return EXIT_FAIL;
    if (a.lines && a.renderer) {
        chat_ctx c = {tok, RENDER_QWEN3, a.gen_prompt};
        rc = parse_kind(tok, a.renderer, &c.kind) ? EXIT_USAGE : each_line(a.lines, chat_line, &c);
    } else if (a.lines) {
        line_ctx c = {tok, !a.no_special};
        rc = each_line(a.lines, encode_line, &c);
    } else if (a.chat) {
        rc = run_chat(tok, &a);
    } else {
        lt_err err = {0};
        int *ids;
        size_t n;
        if (eng_tok_encode(tok, a.text, strlen(a.text), !a.no_special, &ids, &n, &err)) {
            fprintf(stderr, "lathe tokenize: %s\n", err.msg);
            rc = EXIT_FAIL;
        } else {
            if (a.json) {
                fputs("{\"ids\":", stdout);
                print_ids_json(stdout, ids, n);
                fputs("}\n", stdout);
            } else {
                for (size_t i = 0; i < n; i++)
                    printf(i ? " %d" : "%d", ids[i]);
                putchar('\n');
            }
            free(ids);
            rc = EXIT_OK;
        }
    }
    eng_tok_free(tok);
    return rc;
}

int cmd_detokenize(int argc, char **argv) {
    tok_args a;
    int rc = parse_args(argc, argv, &a, 1);
    if (rc) {
        if (rc == EXIT_USAGE) usage_detokenize(stderr);
        return rc < 0 ? EXIT_OK : rc;
    }
    int *ids = NULL;
    size_t n = 0;
    if (a.ids) {
        size_t cap = 1;
        for (const char *p = a.ids; *p; p++)
            cap += *p == ',';
        ids = malloc(cap * sizeof *ids);
        if (!ids) abort();
        const char *p = a.ids;
        while (*p) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p || (*end && *end != ',') || v < 0 || v > 0x7fffffff) {
                fprintf(stderr, "lathe detokenize: --ids must be comma-separated non-negative integers\n");
                free(ids);
                return EXIT_USAGE;
            }
            ids[n++] = (int)v;
            p = *end ? end + 1 : end;
        }
    }
    eng_tokenizer *tok = load_tok(a.tok_path);
    if (!tok) {
        free(ids);
        return EXIT_FAIL;
    }
    if (a.lines) {
        line_ctx c = {tok, a.skip_special};
        rc = each_line(a.lines, decode_line, &c);
    } else {
        size_t len;
        char *s = eng_tok_decode(tok, ids, n, a.skip_special, &len);
        if (a.json) {
            json_t *o = json_pack("{s:s%}", "text", s, len);
            char *d = json_dumps(o, JSON_COMPACT);
            puts(d);
            free(d);
            json_decref(o);
        } else {
            fwrite(s, 1, len, stdout);
            putchar('\n');
        }
        free(s);
        rc = EXIT_OK;
    }
    free(ids);
    eng_tok_free(tok);
    return rc;
}
