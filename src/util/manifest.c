/* manifest.c: YAML manifests to JSON with line numbers, and the rules of dataset/capability/task manifests.
 *
 * The YAML side drives libyaml's event parser and builds the jansson tree with a small explicit stack: each
 * open mapping or sequence is a frame holding the container, its JSON pointer and (for a mapping) the key
 * waiting for its value. Every value attached records "pointer -> line" in a side object, which is how the
 * validators below can say "task.yaml line 6: verification.method must be ...". Anything that could blow up
 * (aliases, deep nesting, huge node counts) or silently mean something surprising (duplicate keys, a mapping
 * as a key, .inf) is refused with its line.
 *
 * The validators are plain code, one function per kind, reading fields through a few helpers that produce the
 * uniform "FILE line N: FIELD must ..." messages. They return the normalized manifest (defaults filled in) so
 * that what the registry stores, and what a job later reads, never depends on how the author spelled it. */
#include "util/manifest.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <pcre2.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "util/json.h"
#include "util/strbuf.h"
#include "util/util.h"

#define MAX_DEPTH 64
#define MAX_NODES 100000
#define MAX_NAME 128
#define MAX_MANIFEST_BYTES (1u << 20)

static void set_loc(manifest_loc *loc, const char *file, int line) {
    if (!loc) return;
    snprintf(loc->file, sizeof loc->file, "%s", file ? file : "");
    loc->line = line;
}

/* Sets err (422 unless code given) and loc; message "FILE line N: ..." (or "FILE: ..." for line 0). */
static int fail(lt_err *err, manifest_loc *loc, int code, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static int fail(lt_err *err, manifest_loc *loc, int code, const char *file, int line, const char *fmt, ...) {
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    set_loc(loc, file, line);
    if (line > 0) return lt_err_set(err, code, "%s line %d: %s", file, line, msg);
    return lt_err_set(err, code, "%s: %s", file, msg);
}

/* ---- YAML to JSON ---- */

typedef struct frame {
    json_t *node; /* borrowed: owned by its parent (or by the builder's root) */
    char *ptr;    /* JSON pointer of this container */
    char *key;    /* mapping: the key waiting for its value, or NULL */
    int key_line;
} frame;

typedef struct builder {
    const char *file;
    json_t *root;
    json_t *lines;
    frame stack[MAX_DEPTH + 1];
    int depth;
    size_t nodes;
    manifest_loc *loc;
    lt_err *err;
} builder;

static void ptr_append(strbuf *sb, const char *base, const char *token) {
    sb_puts(sb, base);
    sb_putc(sb, '/');
    for (const char *p = token; *p; p++) {
        if (*p == '~')
            sb_puts(sb, "~0");
        else if (*p == '/')
            sb_puts(sb, "~1");
        else
            sb_putc(sb, *p);
    }
}

static int is_digits(const char *s, size_t n, int (*pred)(int)) {
    if (n == 0) return 0;
    for (size_t i = 0; i < n; i++)
        if (!pred((unsigned char)s[i])) return 0;
    return 1;
}

static int is_octal(int c) {
    return c >= '0' && c <= '7';
}

static int is_dec(int c) {
    return isdigit(c);
}

static int is_hex(int c) {
    return isxdigit(c);
}

/* YAML 1.2 core float: [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )? */
static int is_core_float(const char *s, size_t n) {
    size_t i = 0;
    if (i < n && (s[i] == '-' || s[i] == '+')) i++;
    size_t int_digits = 0, frac_digits = 0;
    while (i < n && isdigit((unsigned char)s[i]))
        i++, int_digits++;
    if (i < n && s[i] == '.') {
        i++;
        while (i < n && isdigit((unsigned char)s[i]))
            i++, frac_digits++;
    }
    if (int_digits == 0 && frac_digits == 0) return 0;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '-' || s[i] == '+')) i++;
        size_t e = 0;
        while (i < n && isdigit((unsigned char)s[i]))
            i++, e++;
        if (e == 0) return 0;
    }
    return i == n;
}

enum { T_ANY, T_STR, T_NULL, T_BOOL, T_INT, T_FLOAT };

/* Resolves a scalar into a JSON value; NULL with err on a refused scalar. */
static json_t *resolve_scalar(builder *b, const yaml_event_t *ev, int line) {
    const char *s = (const char *)ev->data.scalar.value;
    size_t n = ev->data.scalar.length;
    const char *tag = (const char *)ev->data.scalar.tag;
    int want = T_ANY;
    if (tag) {
        if (strcmp(tag, "!") == 0 || strcmp(tag, YAML_STR_TAG) == 0)
            want = T_STR;
        else if (strcmp(tag, YAML_NULL_TAG) == 0)
            want = T_NULL;
        else if (strcmp(tag, YAML_BOOL_TAG) == 0)
            want = T_BOOL;
        else if (strcmp(tag, YAML_INT_TAG) == 0)
            want = T_INT;
        else if (strcmp(tag, YAML_FLOAT_TAG) == 0)
            want = T_FLOAT;
        else {
            fail(b->err, b->loc, 422, b->file, line, "the tag %.100s is not supported; remove it", tag);
            return NULL;
        }
    } else if (ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) {
        want = T_STR;
    }
    if (want == T_STR) {
        json_t *v = json_stringn(s, n);
        if (!v) fail(b->err, b->loc, 422, b->file, line, "a string is not valid UTF-8 or holds a NUL byte");
        return v;
    }
    if ((want == T_ANY || want == T_NULL) &&
        (n == 0 || (n == 1 && s[0] == '~') || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL")))
        return json_null();
    if (want == T_ANY || want == T_BOOL) {
        if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE")) return json_true();
        if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE")) return json_false();
    }
    if (want == T_ANY || want == T_INT) {
        const char *d = s;
        size_t dn = n;
        int base = 10;
        if (n > 2 && s[0] == '0' && s[1] == 'o' && is_digits(s + 2, n - 2, is_octal))
            base = 8, d += 2, dn -= 2;
        else if (n > 2 && s[0] == '0' && s[1] == 'x' && is_digits(s + 2, n - 2, is_hex))
            base = 16, d += 2, dn -= 2;
        int sign = (dn > 0 && (d[0] == '-' || d[0] == '+')) && base == 10;
        if (base != 10 || is_digits(d + sign, dn - sign, is_dec)) {
            errno = 0;
            char *end = NULL;
            long long v = strtoll(d, &end, base);
            if (errno == ERANGE || end != d + dn) {
                fail(b->err, b->loc, 422, b->file, line,
                     "the number %.60s is out of range; quote it if it is text", s);
                return NULL;
            }
            return json_integer((json_int_t)v);
        }
    }
    if (want == T_ANY || want == T_FLOAT) {
        if (is_core_float(s, n)) return json_real(strtod(s, NULL));
        const char *t = (s[0] == '-' || s[0] == '+') ? s + 1 : s;
        if (!strcmp(t, ".inf") || !strcmp(t, ".Inf") || !strcmp(t, ".INF") || !strcmp(s, ".nan") ||
            !strcmp(s, ".NaN") || !strcmp(s, ".NAN")) {
            fail(b->err, b->loc, 422, b->file, line, "%s is not supported; quote it if it is text", s);
            return NULL;
        }
    }
    if (want != T_ANY) {
        fail(b->err, b->loc, 422, b->file, line, "'%.60s' does not match its tag %s", s, tag);
        return NULL;
    }
    json_t *v = json_stringn(s, n);
    if (!v) fail(b->err, b->loc, 422, b->file, line, "a string is not valid UTF-8 or holds a NUL byte");
    return v;
}

/* Attaches v (a new reference, stolen) to the open container; records its pointer and line. On success
 * returns the pointer string (malloc'd) so containers can become frames. */
static char *attach(builder *b, json_t *v, int line) {
    if (++b->nodes > MAX_NODES) {
        json_decref(v);
        fail(b->err, b->loc, 422, b->file, line, "more than %d YAML nodes", MAX_NODES);
        return NULL;
    }
    strbuf ptr = STRBUF_INIT;
    if (b->depth == 0) {
        assert(!b->root);
        b->root = v;
        sb_puts(&ptr, "");
        json_object_set_new(b->lines, "", json_integer(line));
        return ptr.buf ? sb_steal(&ptr) : lt_strdup("");
    }
    frame *top = &b->stack[b->depth - 1];
    if (json_is_array(top->node)) {
        char idx[32];
        snprintf(idx, sizeof idx, "%zu", json_array_size(top->node));
        ptr_append(&ptr, top->ptr, idx);
        json_array_append_new(top->node, v);
        json_object_set_new(b->lines, ptr.buf, json_integer(line));
    } else {
        assert(top->key);
        ptr_append(&ptr, top->ptr, top->key);
        json_object_set_new(top->node, top->key, v);
        json_object_set_new(b->lines, ptr.buf, json_integer(top->key_line));
        free(top->key);
        top->key = NULL;
    }
    return sb_steal(&ptr);
}

/* A scalar in key position of a mapping: checks it and stores it as the pending key. */
static int take_key(builder *b, const yaml_event_t *ev, int line) {
    frame *top = &b->stack[b->depth - 1];
    json_t *k = resolve_scalar(b, ev, line);
    if (!k) return -1;
    int is_null = json_is_null(k), is_text = json_is_string(k);
    const char *what = json_is_boolean(k) ? "a boolean" : "a number";
    json_decref(k);
    const char *text = (const char *)ev->data.scalar.value;
    if (is_null) return fail(b->err, b->loc, 422, b->file, line, "a key is empty; give every key a name");
    if (!is_text)
        return fail(b->err, b->loc, 422, b->file, line,
                    "the key '%.60s' reads as %s; keys must be text (put it in quotes)", text, what);
    if (strlen(text) != ev->data.scalar.length)
        return fail(b->err, b->loc, 422, b->file, line, "a key holds a NUL byte");
    if (json_object_get(top->node, text)) {
        strbuf p = STRBUF_INIT;
        ptr_append(&p, top->ptr, text);
        int first = (int)json_integer_value(json_object_get(b->lines, p.buf));
        sb_free(&p);
        return fail(b->err, b->loc, 422, b->file, line, "duplicate key '%.100s' (first at line %d); keep one",
                    text, first);
    }
    top->key = lt_strdup(text);
    top->key_line = line;
    return 0;
}

static int handle_event(builder *b, const yaml_event_t *ev) {
    int line = (int)ev->start_mark.line + 1;
    frame *top = b->depth ? &b->stack[b->depth - 1] : NULL;
    int key_pos = top && json_is_object(top->node) && !top->key;
    switch (ev->type) {
    case YAML_ALIAS_EVENT:
        return fail(b->err, b->loc, 422, b->file, line,
                    "aliases (*%.60s) are not supported; write the value out",
                    (const char *)ev->data.alias.anchor);
    case YAML_SCALAR_EVENT: {
        if (key_pos) return take_key(b, ev, line);
        json_t *v = resolve_scalar(b, ev, line);
        if (!v) return -1;
        char *p = attach(b, v, line);
        if (!p) return -1;
        free(p);
        return 0;
    }
    case YAML_MAPPING_START_EVENT:
    case YAML_SEQUENCE_START_EVENT: {
        if (key_pos)
            return fail(b->err, b->loc, 422, b->file, line,
                        "a key is a mapping or a list; keys must be plain text");
        const char *tag = (const char *)(ev->type == YAML_MAPPING_START_EVENT ? ev->data.mapping_start.tag
                                                                              : ev->data.sequence_start.tag);
        if (tag && strcmp(tag, YAML_MAP_TAG) != 0 && strcmp(tag, YAML_SEQ_TAG) != 0 && strcmp(tag, "!") != 0)
            return fail(b->err, b->loc, 422, b->file, line, "the tag %.100s is not supported; remove it",
                        tag);
        if (b->depth >= MAX_DEPTH)
            return fail(b->err, b->loc, 422, b->file, line, "nested deeper than %d levels", MAX_DEPTH);
        json_t *c = ev->type == YAML_MAPPING_START_EVENT ? json_object() : json_array();
        if (!c) abort();
        char *p = attach(b, c, line);
        if (!p) return -1;
        b->stack[b->depth++] = (frame){c, p, NULL, 0};
        return 0;
    }
    case YAML_MAPPING_END_EVENT:
    case YAML_SEQUENCE_END_EVENT:
        assert(b->depth > 0);
        b->depth--;
        free(b->stack[b->depth].ptr);
        free(b->stack[b->depth].key);
        return 0;
    default:
        return 0;
    }
}

int manifest_yaml_parse(const char *buf, size_t n, const char *file, manifest_yaml *out, manifest_loc *loc,
                        lt_err *err) {
    assert(out);
    out->root = out->lines = NULL;
    if (n > MAX_MANIFEST_BYTES)
        return fail(err, loc, 422, file, 0, "larger than %u bytes", MAX_MANIFEST_BYTES);
    if (!lt_utf8_valid(buf, n)) return fail(err, loc, 422, file, 0, "not valid UTF-8");
    builder b = {0};
    b.file = file;
    b.lines = json_object();
    b.loc = loc;
    b.err = err;
    if (!b.lines) abort();
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) abort();
    yaml_parser_set_input_string(&parser, (const unsigned char *)buf, n);
    yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING);
    int rc = 0, docs = 0, done = 0;
    while (!done && rc == 0) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) {
            int line = (int)parser.problem_mark.line + 1;
            rc = fail(err, loc, 422, file, line, "invalid YAML: %s%s%s",
                      parser.problem ? parser.problem : "error", parser.context ? " " : "",
                      parser.context ? parser.context : "");
            break;
        }
        if (ev.type == YAML_DOCUMENT_START_EVENT && ++docs > 1)
            rc = fail(err, loc, 422, file, (int)ev.start_mark.line + 1,
                      "a second YAML document; keep one document per file");
        else if (ev.type == YAML_STREAM_END_EVENT)
            done = 1;
        else
            rc = handle_event(&b, &ev);
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);
    while (b.depth > 0) {
        b.depth--;
        free(b.stack[b.depth].ptr);
        free(b.stack[b.depth].key);
    }
    if (rc == 0 && !b.root) rc = fail(err, loc, 422, file, 0, "the file is empty");
    if (rc != 0) {
        json_decref(b.root);
        json_decref(b.lines);
        return -1;
    }
    out->root = b.root;
    out->lines = b.lines;
    return 0;
}

void manifest_yaml_free(manifest_yaml *doc) {
    if (!doc) return;
    json_decref(doc->root);
    json_decref(doc->lines);
    doc->root = doc->lines = NULL;
}

int manifest_yaml_line(const manifest_yaml *doc, const char *pointer) {
    json_t *v = json_object_get(doc->lines, pointer);
    return v ? (int)json_integer_value(v) : 0;
}

/* ---- semver ---- */

int manifest_semver_parse(const char *s, long v[3]) {
    if (!s) return -1;
    const char *p = s;
    for (int i = 0; i < 3; i++) {
        if (!isdigit((unsigned char)*p)) return -1;
        if (p[0] == '0' && isdigit((unsigned char)p[1])) return -1; /* leading zero */
        long x = 0;
        int digits = 0;
        while (isdigit((unsigned char)*p)) {
            if (++digits > 10) return -1;
            x = x * 10 + (*p++ - '0');
        }
        if (x > INT32_MAX) return -1;
        v[i] = x;
        if (i < 2) {
            if (*p != '.') return -1;
            p++;
        }
    }
    return *p == '\0' ? 0 : -1;
}

int manifest_semver_cmp(const char *a, const char *b) {
    long va[3], vb[3];
    int oka = manifest_semver_parse(a, va) == 0, okb = manifest_semver_parse(b, vb) == 0;
    if (!oka || !okb) return oka - okb;
    for (int i = 0; i < 3; i++)
        if (va[i] != vb[i]) return va[i] < vb[i] ? -1 : 1;
    return 0;
}

/* ---- shared helpers for the kinds ---- */

const char *manifest_file_name(manifest_kind kind) {
    switch (kind) {
    case MANIFEST_DATASET:
        return "dataset.yaml";
    case MANIFEST_CAPABILITY:
        return "capability.yaml";
    case MANIFEST_TASK:
        return "task.yaml";
    }
    return "manifest.yaml";
}

int manifest_name_valid(manifest_kind kind, const char *name) {
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > MAX_NAME) return 0;
    if (!isalnum((unsigned char)name[0])) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (kind == MANIFEST_CAPABILITY) {
            if (!(islower(c) || isdigit(c) || c == '-')) return 0;
        } else if (!(isalnum(c) || c == '.' || c == '_' || c == '-')) {
            return 0;
        }
    }
    if (kind == MANIFEST_CAPABILITY && !(islower((unsigned char)name[0]) || isdigit((unsigned char)name[0])))
        return 0;
    return 1;
}

typedef struct ctx {
    const char *file;
    manifest_yaml doc;
    manifest_loc *loc;
    lt_err *err;
} ctx;

static int line_of(ctx *c, const char *ptr) {
    return manifest_yaml_line(&c->doc, ptr);
}

static const char *type_name(const json_t *v) {
    return lt_json_type_name(v, LT_WORDS_YAML);
}

/* Reads the optional/required string field `key` of the root mapping into *out (borrowed). A present null
 * counts as missing. "quote it" hints cover the common slip of `version: 1.0` being read as a number. */
static int get_str(ctx *c, const char *key, int required, const char **out) {
    *out = NULL;
    json_t *v = json_object_get(c->doc.root, key);
    char ptr[160];
    snprintf(ptr, sizeof ptr, "/%s", key);
    if (!v || json_is_null(v)) {
        if (required) return fail(c->err, c->loc, 422, c->file, 0, "%s is required", key);
        return 0;
    }
    if (!json_is_string(v))
        return fail(c->err, c->loc, 422, c->file, line_of(c, ptr), "%s must be text, not %s%s", key,
                    type_name(v), json_is_number(v) || json_is_boolean(v) ? " (put it in quotes)" : "");
    *out = json_string_value(v);
    return 0;
}

/* Loads and parses the kind's manifest from the items into c->doc; the root must be a mapping. */
static int load(ctx *c, const archive_items *items, manifest_kind kind, manifest_loc *loc, lt_err *err) {
    c->file = manifest_file_name(kind);
    c->loc = loc;
    c->err = err;
    c->doc.root = c->doc.lines = NULL;
    const archive_item *it = archive_items_find(items, c->file);
    if (!it) return fail(err, loc, 422, c->file, 0, "not found at the archive root");
    if (!it->data) /* archive_scan_file left it unread: over the reader's size limit for manifests */
        return fail(err, loc, 413, c->file, 0, "is too large to be a manifest (%zu bytes)", it->size);
    if (manifest_yaml_parse((const char *)it->data, it->size, c->file, &c->doc, loc, err) != 0) return -1;
    if (!json_is_object(c->doc.root)) {
        int rc = fail(err, loc, 422, c->file, line_of(c, ""),
                      "must be a mapping of keys (name: ..., version: ...)");
        manifest_yaml_free(&c->doc);
        return rc;
    }
    return 0;
}

/* name + version, common to all kinds; version_default NULL = required. Writes both into the root. */
static int check_name_version(ctx *c, manifest_kind kind, const char *version_default) {
    const char *name, *version;
    if (get_str(c, "name", 1, &name) != 0) return -1;
    if (!manifest_name_valid(kind, name))
        return fail(c->err, c->loc, 422, c->file, line_of(c, "/name"), "name '%.128s' is not allowed: use %s",
                    name,
                    kind == MANIFEST_CAPABILITY
                        ? "lowercase letters, digits and '-', starting with a letter or digit (at most 128)"
                        : "letters, digits, '.', '_' and '-', starting with a letter or digit (at most 128)");
    if (get_str(c, "version", version_default == NULL, &version) != 0) return -1;
    if (!version) {
        json_object_set_new(c->doc.root, "version", json_string(version_default));
        return 0;
    }
    long v[3];
    if (manifest_semver_parse(version, v) != 0)
        return fail(c->err, c->loc, 422, c->file, line_of(c, "/version"),
                    "version '%.64s' is not a semantic version X.Y.Z (like 1.0.0; no suffixes)", version);
    return 0;
}

/* Normalizes a path named in a manifest; -1 if it is absolute or climbs out with "..". */
static int norm_rel(const char *in, strbuf *out) {
    if (!in[0] || in[0] == '/') return -1;
    const char *p = in;
    while (*p) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.') return -1;
        if (len > 0 && !(len == 1 && p[0] == '.')) {
            if (out->len) sb_putc(out, '/');
            sb_append(out, p, len);
        }
        p += len;
        if (*p == '/') p++;
    }
    return out->len ? 0 : -1;
}

/* ---- dataset.yaml ---- */

static const char *ext_format(const char *path) {
    const char *dot = strrchr(path, '.');
    if (!dot || strchr(dot, '/')) return NULL;
    if (!strcmp(dot, ".jsonl")) return "jsonl";
    if (!strcmp(dot, ".json")) return "json";
    if (!strcmp(dot, ".csv")) return "csv";
    return NULL;
}

/* Checks one path value (at pointer ptr) and appends the normalized path to arr. */
static int add_data_path(ctx *c, const archive_items *items, const json_t *v, const char *ptr,
                         const char *what, const char *format, json_t *arr) {
    int line = line_of(c, ptr);
    if (!json_is_string(v))
        return fail(c->err, c->loc, 422, c->file, line, "%s must be a relative path, not %s", what,
                    type_name(v));
    strbuf p = STRBUF_INIT;
    if (norm_rel(json_string_value(v), &p) != 0) {
        sb_free(&p);
        return fail(c->err, c->loc, 422, c->file, line,
                    "%s '%.200s' must be a relative path inside the archive", what, json_string_value(v));
    }
    int rc = 0;
    const char *ef = ext_format(p.buf);
    if (!archive_items_find(items, p.buf))
        rc =
            fail(c->err, c->loc, 422, c->file, line, "%s '%.200s' is not a file in the archive", what, p.buf);
    else if (format && ef && strcmp(ef, format) != 0)
        rc = fail(c->err, c->loc, 422, c->file, line, "%s '%.200s' is %s but format is %s", what, p.buf, ef,
                  format);
    else
        json_array_append_new(arr, json_string(p.buf));
    sb_free(&p);
    return rc;
}

static int split_name_valid(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 64 || !isalnum((unsigned char)s[0])) return 0;
    for (size_t i = 0; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '-' || s[i] == '.')) return 0;
    return 1;
}

/* Fills `splits` (split -> [paths]) from `splits`, else `files`, else discovery. */
static int dataset_splits(ctx *c, const archive_items *items, const char *format, json_t *splits) {
    json_t *sv = json_object_get(c->doc.root, "splits");
    json_t *fv = json_object_get(c->doc.root, "files");
    if (sv && !json_is_null(sv)) {
        if (!json_is_object(sv) || json_object_size(sv) == 0)
            return fail(c->err, c->loc, 422, c->file, line_of(c, "/splits"),
                        "splits must be a mapping of split name to path (train: data/train.jsonl)");
        const char *name;
        json_t *v;
        json_object_foreach(sv, name, v) {
            strbuf ptr = STRBUF_INIT;
            ptr_append(&ptr, "/splits", name);
            int line = line_of(c, ptr.buf);
            int rc = 0;
            json_t *arr = json_array();
            char what[160];
            snprintf(what, sizeof what, "splits.%.64s", name);
            if (!split_name_valid(name)) {
                rc = fail(c->err, c->loc, 422, c->file, line,
                          "split name '%.64s' is not allowed: use letters, digits, '.', '_' and '-'", name);
            } else if (json_is_array(v)) {
                if (json_array_size(v) == 0)
                    rc = fail(c->err, c->loc, 422, c->file, line, "%s lists no files", what);
                size_t i;
                json_t *x;
                json_array_foreach(v, i, x) {
                    if (rc) break;
                    char ip[32];
                    snprintf(ip, sizeof ip, "%zu", i);
                    strbuf ep = STRBUF_INIT;
                    ptr_append(&ep, ptr.buf, ip);
                    rc = add_data_path(c, items, x, ep.buf, what, format, arr);
                    sb_free(&ep);
                }
            } else {
                rc = add_data_path(c, items, v, ptr.buf, what, format, arr);
            }
            sb_free(&ptr);
            if (rc) {
                json_decref(arr);
                return -1;
            }
            json_object_set_new(splits, name, arr);
        }
        return 0;
    }
    json_t *arr = json_array();
    if (fv && !json_is_null(fv)) {
        if (!json_is_array(fv) || json_array_size(fv) == 0) {
            json_decref(arr);
            return fail(c->err, c->loc, 422, c->file, line_of(c, "/files"),
                        "files must be a non-empty list of paths");
        }
        size_t i;
        json_t *x;
        json_array_foreach(fv, i, x) {
            char ep[48];
            snprintf(ep, sizeof ep, "/files/%zu", i);
            if (add_data_path(c, items, x, ep, "files entry", format, arr) != 0) {
                json_decref(arr);
                return -1;
            }
        }
    } else {
        for (size_t i = 0; i < items->n; i++) {
            const char *ef = ext_format(items->v[i].path);
            if (ef && (!format || !strcmp(ef, format)))
                json_array_append_new(arr, json_string(items->v[i].path));
        }
        if (json_array_size(arr) == 0) {
            json_decref(arr);
            return fail(
                c->err, c->loc, 422, c->file, 0,
                "no data files: add `splits` or `files`, or put *.jsonl, *.json or *.csv files in the "
                "archive");
        }
    }
    json_object_set_new(splits, "train", arr);
    return 0;
}

json_t *manifest_dataset(const archive_items *items, manifest_loc *loc, lt_err *err) {
    ctx c;
    if (load(&c, items, MANIFEST_DATASET, loc, err) != 0) return NULL;
    const char *summary, *desc, *format;
    int ok = check_name_version(&c, MANIFEST_DATASET, "0.1.0") == 0 &&
             get_str(&c, "summary", 0, &summary) == 0 && get_str(&c, "description", 0, &desc) == 0 &&
             get_str(&c, "format", 0, &format) == 0;
    if (ok && format && strcmp(format, "jsonl") && strcmp(format, "json") && strcmp(format, "csv"))
        ok = fail(err, loc, 422, c.file, line_of(&c, "/format"),
                  "format must be one of jsonl, json, csv (got '%.40s')", format) == 0;
    json_t *rc = json_object_get(c.doc.root, "row_count");
    if (ok && rc && !json_is_null(rc) && (!json_is_integer(rc) || json_integer_value(rc) < 0))
        ok = fail(err, loc, 422, c.file, line_of(&c, "/row_count"), "row_count must be an integer >= 0") == 0;
    json_t *splits = json_object();
    if (ok) ok = dataset_splits(&c, items, format, splits) == 0;
    if (!ok) {
        json_decref(splits);
        manifest_yaml_free(&c.doc);
        return NULL;
    }
    json_t *m = json_deep_copy(c.doc.root);
    if (!summary && desc) json_object_set_new(m, "summary", json_string(desc));
    if (!format) {
        /* the format the files share, else jsonl */
        const char *common = NULL;
        int mixed = 0;
        const char *k;
        json_t *arr;
        json_object_foreach(splits, k, arr) {
            size_t i;
            json_t *p;
            json_array_foreach(arr, i, p) {
                const char *ef = ext_format(json_string_value(p));
                if (!ef || (common && strcmp(common, ef)))
                    mixed = 1;
                else
                    common = ef;
            }
        }
        json_object_set_new(m, "format", json_string(!mixed && common ? common : "jsonl"));
    }
    json_object_set_new(m, "splits", splits);
    json_object_del(m, "files");
    manifest_yaml_free(&c.doc);
    return m;
}

int manifest_dataset_check_count(const archive_items *items, const json_t *manifest, long long rows,
                                 manifest_loc *loc, lt_err *err) {
    const json_t *rc = json_object_get(manifest, "row_count");
    if (!json_is_integer(rc) || json_integer_value(rc) == rows) return 0;
    ctx c;
    if (load(&c, items, MANIFEST_DATASET, loc, err) != 0) return -1;
    int line = line_of(&c, "/row_count");
    manifest_yaml_free(&c.doc);
    return fail(err, loc, 422, c.file, line,
                "row_count is %lld but the data files hold %lld rows; fix or remove it",
                (long long)json_integer_value(rc), rows);
}

/* ---- capability.yaml ---- */

char *manifest_strip_front_matter(const char *text) {
    const char *body = text;
    if (!strncmp(text, "\xef\xbb\xbf", 3)) body += 3; /* BOM */
    if (!strncmp(body, "---", 3) && (body[3] == '\n' || (body[3] == '\r' && body[4] == '\n'))) {
        const char *p = strchr(body, '\n') + 1;
        while (*p) {
            const char *eol = strchr(p, '\n');
            size_t len = eol ? (size_t)(eol - p) : strlen(p);
            if (len && p[len - 1] == '\r') len--;
            if (len == 3 && (!strncmp(p, "---", 3) || !strncmp(p, "...", 3))) {
                body = eol ? eol + 1 : p + strlen(p);
                break;
            }
            if (!eol) break; /* no closing line: not front matter after all */
            p = eol + 1;
        }
    }
    char *copy = lt_strdup(body);
    char *s = lt_strip(copy);
    char *out = lt_strdup(s);
    free(copy);
    return out;
}

static int agent_name_valid(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > MAX_NAME) return 0;
    for (size_t i = 0; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '-' || s[i] == '.')) return 0;
    return s[0] != '.';
}

/* The prompt file: agents/<entry>.md|.txt, else the first .md or .txt file directly in agents/ (sorted). */
static const archive_item *find_prompt(ctx *c, const archive_items *items, const char *entry, int *rc) {
    *rc = 0;
    if (entry) {
        if (!agent_name_valid(entry)) {
            *rc =
                fail(c->err, c->loc, 422, c->file, line_of(c, "/entry_agent"),
                     "entry_agent '%.128s' must be a file name without '/' (agents/<entry_agent>.md)", entry);
            return NULL;
        }
        char path[300];
        snprintf(path, sizeof path, "agents/%s.md", entry);
        const archive_item *it = archive_items_find(items, path);
        if (it) return it;
        snprintf(path, sizeof path, "agents/%s.txt", entry);
        if ((it = archive_items_find(items, path)) != NULL) return it;
        *rc = fail(c->err, c->loc, 422, c->file, line_of(c, "/entry_agent"),
                   "entry_agent '%.128s': neither agents/%.128s.md nor agents/%.128s.txt is in the archive",
                   entry, entry, entry);
        return NULL;
    }
    for (size_t i = 0; i < items->n; i++) {
        const char *p = items->v[i].path;
        if (strncmp(p, "agents/", 7) != 0 || strchr(p + 7, '/')) continue;
        size_t n = strlen(p);
        if ((n > 10 && !strcmp(p + n - 3, ".md")) || (n > 11 && !strcmp(p + n - 4, ".txt")))
            return &items->v[i];
    }
    return NULL;
}

json_t *manifest_capability(const archive_items *items, char **prompt, manifest_loc *loc, lt_err *err) {
    assert(prompt);
    *prompt = NULL;
    ctx c;
    if (load(&c, items, MANIFEST_CAPABILITY, loc, err) != 0) return NULL;
    const char *desc, *entry;
    int ok = check_name_version(&c, MANIFEST_CAPABILITY, NULL) == 0 &&
             get_str(&c, "description", 1, &desc) == 0 && get_str(&c, "entry_agent", 0, &entry) == 0;
    if (ok) {
        char *d = lt_strdup(desc);
        if (!lt_strip(d)[0])
            ok = fail(err, loc, 422, c.file, line_of(&c, "/description"), "description must not be empty") ==
                 0;
        free(d);
    }
    const archive_item *pf = NULL;
    if (ok) {
        int rc;
        pf = find_prompt(&c, items, entry, &rc);
        ok = rc == 0;
    }
    if (ok && pf && !pf->data)
        ok = fail(err, loc, 413, pf->path, 0, "the prompt file is too large (%zu bytes)", pf->size) == 0;
    if (ok && pf) {
        if (!lt_utf8_valid((const char *)pf->data, pf->size) || strlen((const char *)pf->data) != pf->size)
            ok = fail(err, loc, 422, pf->path, 0, "the prompt is not valid UTF-8 text") == 0;
        else
            *prompt = manifest_strip_front_matter((const char *)pf->data);
    }
    if (!ok) {
        manifest_yaml_free(&c.doc);
        return NULL;
    }
    if (!*prompt) *prompt = lt_strdup("");
    json_t *m = json_deep_copy(c.doc.root);
    manifest_yaml_free(&c.doc);
    return m;
}

/* ---- task.yaml ---- */

static int check_verification(ctx *c, json_t *m) {
    json_t *v = json_object_get(m, "verification");
    if (!v || json_is_null(v)) return 0;
    int line = line_of(c, "/verification");
    if (!json_is_object(v))
        return fail(c->err, c->loc, 422, c->file, line,
                    "verification must be a mapping ({method: flag|exact|regex, ...}), not %s", type_name(v));
    json_t *method = json_object_get(v, "method");
    if (!json_is_string(method))
        return fail(c->err, c->loc, 422, c->file, line,
                    "verification.method is required: flag, exact or regex");
    const char *mm = json_string_value(method);
    int mline = line_of(c, "/verification/method");
    if (!strcmp(mm, "flag")) {
        json_t *h = json_object_get(v, "hash");
        const char *key = "hash";
        if (!h || json_is_null(h)) h = json_object_get(v, "flag_hash"), key = "flag_hash";
        char ptr[64];
        snprintf(ptr, sizeof ptr, "/verification/%s", key);
        if (!h || json_is_null(h))
            return fail(c->err, c->loc, 422, c->file, mline,
                        "verification.hash is required for method flag (\"sha256:<64 hex digits>\")");
        const char *hs = json_is_string(h) ? json_string_value(h) : "";
        int good = !strncmp(hs, "sha256:", 7) && strlen(hs) == 7 + 64;
        for (size_t i = 7; good && hs[i]; i++)
            if (!isxdigit((unsigned char)hs[i])) good = 0;
        if (!good)
            return fail(c->err, c->loc, 422, c->file, line_of(c, ptr),
                        "verification.%s must be \"sha256:\" followed by 64 hex digits", key);
        char norm[7 + 64 + 1];
        for (size_t i = 0; i <= 7 + 64; i++)
            norm[i] = (char)tolower((unsigned char)hs[i]);
        json_object_set_new(v, "hash", json_string(norm));
        json_object_del(v, "flag_hash");
        return 0;
    }
    if (!strcmp(mm, "exact")) {
        json_t *e = json_object_get(v, "expected");
        if (!json_is_string(e))
            return fail(c->err, c->loc, 422, c->file, e ? line_of(c, "/verification/expected") : mline,
                        "verification.expected must be text for method exact%s",
                        e && (json_is_number(e) || json_is_boolean(e)) ? " (put it in quotes)" : "");
        return 0;
    }
    if (!strcmp(mm, "regex")) {
        json_t *p = json_object_get(v, "pattern");
        if (!json_is_string(p))
            return fail(c->err, c->loc, 422, c->file, p ? line_of(c, "/verification/pattern") : mline,
                        "verification.pattern must be text for method regex");
        int ec = 0;
        PCRE2_SIZE off = 0;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)json_string_value(p), json_string_length(p), PCRE2_UTF,
                                       &ec, &off, NULL);
        if (!re) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(ec, msg, sizeof msg);
            return fail(c->err, c->loc, 422, c->file, line_of(c, "/verification/pattern"),
                        "verification.pattern is not a valid PCRE2 regex: %s at offset %zu",
                        (const char *)msg, (size_t)off);
        }
        pcre2_code_free(re);
        return 0;
    }
    return fail(c->err, c->loc, 422, c->file, mline,
                "verification.method must be flag, exact or regex (got '%.40s')", mm);
}

json_t *manifest_task(const archive_items *items, manifest_loc *loc, lt_err *err) {
    ctx c;
    if (load(&c, items, MANIFEST_TASK, loc, err) != 0) return NULL;
    const char *instr;
    int ok = check_name_version(&c, MANIFEST_TASK, NULL) == 0 && get_str(&c, "instruction", 1, &instr) == 0;
    if (ok) {
        char *d = lt_strdup(instr);
        if (!lt_strip(d)[0])
            ok = fail(err, loc, 422, c.file, line_of(&c, "/instruction"), "instruction must not be empty") ==
                 0;
        free(d);
    }
    json_t *m = ok ? json_deep_copy(c.doc.root) : NULL;
    if (m && check_verification(&c, m) != 0) {
        json_decref(m);
        m = NULL;
    }
    manifest_yaml_free(&c.doc);
    return m;
}
