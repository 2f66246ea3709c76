/* rows.c: dataset rows from files, their shapes, and their conversion into conversations and RL prompts.
 *
 * The three readers share one contract: walk the bytes once, keep count of lines, and hand each row (a JSON
 * object) to a callback with the line where it starts. JSONL is split on newlines and each line goes to
 * jansson. A JSON file is first walked by a tiny scanner that only tracks strings and bracket depth to find
 * where each top-level array element starts and ends; each element is then parsed on its own, so an error
 * inside element 37 reports that element's line. CSV is a small RFC 4180 state machine.
 *
 * Shapes are decided by converting: classification runs the same normalization the trainers use and reports
 * the first thing that does not fit, so "it uploaded fine" and "the job can use it" can never disagree.
 *
 * Every error message carries a location prefix built in one place (where_prefix): "split S, file F line N".
 */
#include "util/rows.h"

#include <assert.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/json.h"
#include "util/strbuf.h"
#include "util/util.h"

/* ---- formats ---- */

int rows_format_parse(const char *s, rows_format *out) {
    if (!s) return -1;
    if (!strcmp(s, "jsonl"))
        *out = ROWS_JSONL;
    else if (!strcmp(s, "json"))
        *out = ROWS_JSON;
    else if (!strcmp(s, "csv"))
        *out = ROWS_CSV;
    else
        return -1;
    return 0;
}

rows_format rows_format_for_path(const char *path, rows_format dflt) {
    const char *dot = path ? strrchr(path, '.') : NULL;
    if (!dot || strchr(dot, '/')) return dflt;
    if (!strcmp(dot, ".jsonl")) return ROWS_JSONL;
    if (!strcmp(dot, ".json")) return ROWS_JSON;
    if (!strcmp(dot, ".csv")) return ROWS_CSV;
    return dflt;
}

/* ---- locations and errors ---- */

typedef struct pctx {
    const char *split, *file;
    rows_fn fn;
    void *ud;
    rows_loc *loc;
    lt_err *err;
    rows_limits lim;
} pctx;

static void set_loc(pctx *c, long line) {
    if (!c->loc) return;
    snprintf(c->loc->split, sizeof c->loc->split, "%s", c->split ? c->split : "");
    snprintf(c->loc->file, sizeof c->loc->file, "%s", c->file ? c->file : "");
    c->loc->line = line;
}

static void where_prefix(pctx *c, long line) {
    if (c->split && line > 0)
        lt_err_prefix(c->err, "split %s, file %s line %ld: ", c->split, c->file, line);
    else if (c->split)
        lt_err_prefix(c->err, "split %s, file %s: ", c->split, c->file);
    else if (line > 0)
        lt_err_prefix(c->err, "file %s line %ld: ", c->file, line);
    else
        lt_err_prefix(c->err, "file %s: ", c->file);
}

static int perr(pctx *c, long line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int perr(pctx *c, long line, const char *fmt, ...) {
    char msg[800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    lt_err_set(c->err, 422, "%s", msg);
    where_prefix(c, line);
    set_loc(c, line);
    return -1;
}

static const char *type_name(const json_t *v) {
    return lt_json_type_name(v, LT_WORDS_JSON);
}

/* Hands one parsed row (a new reference, consumed) to the callback. */
static int emit(pctx *c, json_t *row, long line) {
    if (!json_is_object(row)) {
        const char *t = type_name(row);
        json_decref(row);
        return perr(c, line, "a row must be a JSON object, not %s", t);
    }
    lt_err_clear(c->err);
    int rc = c->fn(row, line, c->ud, c->err);
    json_decref(row);
    if (rc != 0) {
        if (c->err && c->err->code == 0) lt_err_set(c->err, 422, "row refused");
        where_prefix(c, line);
        set_loc(c, line);
        return -1;
    }
    return 0;
}

/* ---- reading bytes ---- */

/* Input for the readers: a memory block (rd NULL) or a stream refilled through rd into own. Either way
 * the parsers see one byte at a time or a window of buffered bytes, and never more than that. */
typedef struct rbuf {
    rows_read_fn rd;
    void *ud;
    const char *p;
    size_t pos, len;
    int eof;    /* no more refills */
    int failed; /* rd returned -1; err is set */
    char own[65536];
} rbuf;

/* Refills when the window is used up. 1 = bytes available, 0 = end of input, -1 = read error. */
static int rb_more(rbuf *b, lt_err *err) {
    if (b->pos < b->len) return 1;
    if (b->eof || b->failed) return b->failed ? -1 : 0;
    long r = b->rd(b->ud, b->own, sizeof b->own, err);
    if (r < 0) return b->failed = 1, -1;
    if (r == 0) return b->eof = 1, 0;
    b->p = b->own;
    b->pos = 0;
    b->len = (size_t)r;
    return 1;
}

/* The next byte (0..255), -1 at the end, -2 on a read error. */
static inline int rb_get(rbuf *b, lt_err *err) {
    if (b->pos >= b->len) {
        int r = rb_more(b, err);
        if (r <= 0) return r == 0 ? -1 : -2;
    }
    return (unsigned char)b->p[b->pos++];
}

static inline int rb_peek(rbuf *b, lt_err *err) {
    if (b->pos >= b->len) {
        int r = rb_more(b, err);
        if (r <= 0) return r == 0 ? -1 : -2;
    }
    return (unsigned char)b->p[b->pos];
}

/* Skips a UTF-8 byte order mark at the very start. */
static int rb_skip_bom(rbuf *b, lt_err *err) {
    static const unsigned char bom[3] = {0xef, 0xbb, 0xbf};
    if (b->rd) {
        /* make sure the first refill is in, then look at up to three bytes of it */
        if (rb_more(b, err) < 0) return -1;
        while (b->len - b->pos < 3 && !b->eof) {
            long r = b->rd(b->ud, b->own + b->len, sizeof b->own - b->len, err);
            if (r < 0) return b->failed = 1, -1;
            if (r == 0) b->eof = 1;
            b->len += (size_t)r;
        }
    }
    if (b->len - b->pos >= 3 && !memcmp(b->p + b->pos, bom, 3)) b->pos += 3;
    return 0;
}

/* ---- JSONL ---- */

static int is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isspace((unsigned char)s[i])) return 0;
    return 1;
}

static int too_long(pctx *c, long line, const char *what) {
    perr(c, line, "the %s is longer than the limit of %zu bytes", what, c->lim.max_row_bytes);
    if (c->err) c->err->code = 413;
    return -1;
}

static int jsonl_line(pctx *c, const char *s, size_t len, long line) {
    if (len && s[len - 1] == '\r') len--;
    if (is_blank(s, len)) return 0;
    json_error_t je;
    json_t *v = json_loadb(s, len, JSON_DECODE_ANY, &je);
    if (!v) return perr(c, line, "invalid JSON: %s (column %d)", je.text, je.column);
    return emit(c, v, line);
}

static int parse_jsonl(pctx *c, rbuf *b) {
    long line = 1;
    strbuf sb = STRBUF_INIT;
    int rc = 0;
    for (;;) {
        int more = rb_more(b, c->err);
        if (more < 0) {
            rc = -1;
            break;
        }
        if (more == 0) {
            if (sb.len) rc = jsonl_line(c, sb.buf, sb.len, line);
            break;
        }
        const char *s = b->p + b->pos;
        size_t avail = b->len - b->pos;
        const char *nl = memchr(s, '\n', avail);
        size_t take = nl ? (size_t)(nl - s) : avail;
        if (sb.len + take > c->lim.max_row_bytes) {
            rc = too_long(c, line, "line");
            break;
        }
        if (nl && sb.len == 0) { /* the whole line is in the window: no copy */
            rc = jsonl_line(c, s, take, line);
        } else {
            sb_append(&sb, s, take);
            if (nl) rc = jsonl_line(c, sb.buf, sb.len, line);
        }
        b->pos += take + (nl ? 1 : 0);
        if (rc != 0) break;
        if (nl) {
            sb_reset(&sb);
            line++;
        }
    }
    sb_free(&sb);
    return rc;
}

/* ---- JSON array ---- */

/* Skips whitespace, counting lines; returns the next byte without taking it (-1 end, -2 error). */
static int skip_ws(rbuf *b, long *line, lt_err *err) {
    for (;;) {
        int ch = rb_peek(b, err);
        if (ch < 0 || !isspace(ch)) return ch;
        if (ch == '\n') (*line)++;
        b->pos++;
    }
}

/* Collects one value into sb up to (not including) the ',' or ']' that ends it at depth 0. Returns that
 * byte (left unread), -1 at the end of input, -2 on a read error, -3 when over the row limit. */
static int scan_value(pctx *c, rbuf *b, long *line, strbuf *sb) {
    int depth = 0, in_str = 0, esc = 0;
    for (;;) {
        int ch = rb_peek(b, c->err);
        if (ch < 0) return ch;
        if (!in_str) {
            if ((ch == ',' && depth == 0) || ((ch == ']' || ch == '}') && depth == 0)) return ch;
            if (ch == '{' || ch == '[') depth++;
            if (ch == '}' || ch == ']') depth--;
            if (ch == '"') in_str = 1;
        } else if (esc) {
            esc = 0;
        } else if (ch == '\\') {
            esc = 1;
        } else if (ch == '"') {
            in_str = 0;
        }
        if (ch == '\n') (*line)++;
        if (sb->len >= c->lim.max_row_bytes) return -3;
        sb_putc(sb, (char)ch);
        b->pos++;
    }
}

static int parse_json_array(pctx *c, rbuf *b) {
    long line = 1;
    int ch = skip_ws(b, &line, c->err);
    if (ch == -2) return -1;
    if (ch != '[') return perr(c, line, "the file must hold a JSON array of row objects");
    b->pos++;
    strbuf sb = STRBUF_INIT;
    int rc = 0;
    for (int first = 1;; first = 0) {
        ch = skip_ws(b, &line, c->err);
        if (ch == -2) {
            rc = -1;
            break;
        }
        if (ch == -1) {
            rc = perr(c, line, "the JSON array is not closed with ']'");
            break;
        }
        if (ch == ']' && first) {
            b->pos++;
            break;
        }
        long start_line = line;
        sb_reset(&sb);
        ch = scan_value(c, b, &line, &sb);
        if (ch == -2) {
            rc = -1;
            break;
        }
        if (ch == -3) {
            rc = too_long(c, start_line, "row");
            break;
        }
        size_t end = sb.len;
        while (end > 0 && isspace((unsigned char)sb.buf[end - 1]))
            end--;
        if (end == 0) {
            rc = perr(c, start_line, "expected a row object");
            break;
        }
        json_error_t je;
        json_t *v = json_loadb(sb.buf, end, JSON_DECODE_ANY, &je);
        if (!v) {
            rc = perr(c, start_line + je.line - 1, "invalid JSON: %s", je.text);
            break;
        }
        if ((rc = emit(c, v, start_line)) != 0) break;
        if (ch == -1) {
            rc = perr(c, line, "the JSON array is not closed with ']'");
            break;
        }
        b->pos++; /* ',' or ']' */
        if (ch == ']') break;
        if (ch != ',') {
            rc = perr(c, line, "expected ',' or ']' after a row");
            break;
        }
    }
    sb_free(&sb);
    if (rc != 0) return rc;
    ch = skip_ws(b, &line, c->err);
    if (ch == -2) return -1;
    if (ch != -1) return perr(c, line, "unexpected data after the JSON array");
    return 0;
}

/* ---- CSV ---- */

typedef struct csv_record {
    strbuf *f;
    size_t n, cap;
    size_t bytes; /* field bytes and separators so far */
} csv_record;

static strbuf *rec_push(csv_record *r) {
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 16;
        r->f = realloc(r->f, r->cap * sizeof *r->f);
        if (!r->f) abort();
    }
    strbuf *s = &r->f[r->n++];
    *s = (strbuf)STRBUF_INIT;
    sb_puts(s, ""); /* always a buffer, even for an empty field */
    return s;
}

static void rec_clear(csv_record *r) {
    for (size_t i = 0; i < r->n; i++)
        sb_free(&r->f[i]);
    r->n = 0;
    r->bytes = 0;
}

/* Appends a byte to the field, enforcing the record size limit. 0 or -1 (413). */
static int rec_put(pctx *c, csv_record *r, strbuf *f, int ch, long start) {
    if (++r->bytes > c->lim.max_row_bytes) return too_long(c, start, "CSV record");
    sb_putc(f, (char)ch);
    return 0;
}

/* A new field, enforcing the column limit. NULL with err (422). */
static strbuf *rec_next_field(pctx *c, csv_record *r, long start) {
    if (r->n >= c->lim.max_columns) {
        perr(c, start, "the record has more than %zu columns, over the limit of %zu columns",
             c->lim.max_columns, c->lim.max_columns);
        return NULL;
    }
    if (++r->bytes > c->lim.max_row_bytes) {
        too_long(c, start, "CSV record");
        return NULL;
    }
    return rec_push(r);
}

/* Reads one record; *line advances past it. 1 = a record, 0 = end of input, -1 = error. */
static int csv_next(pctx *c, rbuf *b, long *line, csv_record *rec) {
    rec_clear(rec);
    int ch = rb_peek(b, c->err);
    if (ch == -2) return -1;
    if (ch == -1) return 0;
    long start = *line;
    strbuf *f = rec_push(rec);
    int quoted = 0, at_start = 1;
    for (;;) {
        ch = rb_get(b, c->err);
        if (ch == -2) return -1;
        if (ch == -1) break;
        if (quoted) {
            if (ch == '"') {
                int nx = rb_peek(b, c->err);
                if (nx == -2) return -1;
                if (nx == '"') {
                    b->pos++;
                    if (rec_put(c, rec, f, '"', start) != 0) return -1;
                    continue;
                }
                quoted = 0;
                if (nx >= 0 && nx != ',' && nx != '\n' && nx != '\r')
                    return perr(c, *line, "unexpected character after a closing quote");
                continue;
            }
            if (ch == '\n') (*line)++;
            if (rec_put(c, rec, f, ch, start) != 0) return -1;
            continue;
        }
        if (ch == '"' && at_start) {
            quoted = 1;
            at_start = 0;
            continue;
        }
        if (ch == '"')
            return perr(c, *line,
                        "a quote inside an unquoted field; quote the whole field and double the quote");
        if (ch == ',') {
            if (!(f = rec_next_field(c, rec, start))) return -1;
            at_start = 1;
            continue;
        }
        if (ch == '\r') {
            int nx = rb_peek(b, c->err);
            if (nx == -2) return -1;
            if (nx == '\n') {
                b->pos++;
                (*line)++;
                return 1;
            }
        }
        if (ch == '\n') {
            (*line)++;
            return 1;
        }
        if (rec_put(c, rec, f, ch, start) != 0) return -1;
        at_start = 0;
    }
    if (quoted) return perr(c, start, "a quoted field is not closed");
    return 1;
}

static int csv_is_blank_record(const csv_record *r) {
    return r->n == 1 && r->f[0].len == 0;
}

static const char *CSV_JSON_COLUMNS[] = {"messages", "steps",      "context", "template_context",
                                         "extra",    "tool_calls", NULL};

static int in_list(const char *s, const char *const *list) {
    for (int i = 0; list[i]; i++)
        if (!strcmp(s, list[i])) return 1;
    return 0;
}

/* One CSV cell as a JSON value (see rows.h for the conversions); NULL with err. */
static json_t *csv_cell(pctx *c, const char *col, const strbuf *cell, long line) {
    if (in_list(col, CSV_JSON_COLUMNS) && (cell->buf[0] == '[' || cell->buf[0] == '{')) {
        json_error_t je;
        json_t *v = json_loadb(cell->buf, cell->len, 0, &je);
        if (!v) perr(c, line, "column %s holds invalid JSON: %s", col, je.text);
        return v;
    }
    if (!strcmp(col, "reward")) {
        char *end = NULL;
        double x = strtod(cell->buf, &end);
        if (end != cell->buf && *end == '\0') return json_real(x);
    }
    if (!strcmp(col, "success")) {
        if (!strcmp(cell->buf, "true") || !strcmp(cell->buf, "True")) return json_true();
        if (!strcmp(cell->buf, "false") || !strcmp(cell->buf, "False")) return json_false();
    }
    json_t *v = json_stringn(cell->buf, cell->len);
    if (!v) perr(c, line, "column %s is not valid UTF-8 text", col);
    return v;
}

/* Checks the header's names: each non-empty, UTF-8, and used once (a hash set, so width costs linear time).
 */
static int csv_check_header(pctx *c, const csv_record *hdr, long line) {
    json_t *seen = json_object();
    int rc = 0;
    for (size_t k = 0; k < hdr->n && rc == 0; k++) {
        const strbuf *f = &hdr->f[k];
        if (f->len == 0 || !lt_utf8_valid(f->buf, f->len) || strlen(f->buf) != f->len)
            rc = perr(c, line, "header column %zu has no name (or is not UTF-8)", k + 1);
        else if (json_object_get(seen, f->buf))
            rc = perr(c, line, "header names column '%.200s' twice", f->buf);
        else
            json_object_set_new(seen, f->buf, json_true());
    }
    json_decref(seen);
    return rc;
}

static int parse_csv(pctx *c, rbuf *b) {
    long line = 1, hline;
    csv_record hdr = {0}, rec = {0};
    int rc = 0, r;
    /* header: the first non-blank record */
    do {
        hline = line;
        r = csv_next(c, b, &line, &hdr);
    } while (r == 1 && csv_is_blank_record(&hdr));
    if (r <= 0) {
        rc = r < 0 ? -1 : perr(c, 0, "the CSV file has no header row");
        goto out;
    }
    rc = csv_check_header(c, &hdr, hline);
    while (rc == 0) {
        long start = line;
        r = csv_next(c, b, &line, &rec);
        if (r < 0) {
            rc = -1;
            break;
        }
        if (r == 0) break;
        if (csv_is_blank_record(&rec)) continue;
        if (rec.n != hdr.n) {
            rc = perr(c, start, "the record has %zu fields but the header has %zu", rec.n, hdr.n);
            break;
        }
        json_t *row = json_object();
        for (size_t k = 0; k < rec.n; k++) {
            if (rec.f[k].len == 0) continue;
            json_t *v = csv_cell(c, hdr.f[k].buf, &rec.f[k], start);
            if (!v) {
                rc = -1;
                break;
            }
            json_object_set_new(row, hdr.f[k].buf, v);
        }
        if (rc != 0) {
            json_decref(row);
            break;
        }
        rc = emit(c, row, start);
    }
out:
    rec_clear(&hdr);
    rec_clear(&rec);
    free(hdr.f);
    free(rec.f);
    return rc;
}

rows_limits rows_limits_default(void) {
    rows_limits l = {ROWS_DEFAULT_MAX_ROW_BYTES, ROWS_DEFAULT_MAX_COLUMNS};
    return l;
}

static int parse_any(pctx *c, rbuf *b, rows_format fmt) {
    if (rb_skip_bom(b, c->err) != 0) return -1;
    switch (fmt) {
    case ROWS_JSONL:
        return parse_jsonl(c, b);
    case ROWS_JSON:
        return parse_json_array(c, b);
    case ROWS_CSV:
        return parse_csv(c, b);
    }
    return perr(c, 0, "unknown format");
}

/* A read error from the stream keeps its own code and message; only the location is added. */
static int stream_failed(pctx *c, const rbuf *b, int rc) {
    if (rc != 0 && b->failed) set_loc(c, 0);
    return rc;
}

int rows_parse(const char *data, size_t n, rows_format fmt, const char *split, const char *file, rows_fn fn,
               void *ud, rows_loc *loc, lt_err *err) {
    assert(fn);
    /* the bytes are in memory already (an accepted dataset, read by a worker): no limits, so a dataset the
     * server took under raised upload limits is always readable */
    rows_limits lim = {(size_t)-1, (size_t)-1};
    pctx c = {split, file ? file : "", fn, ud, loc, err, lim};
    rbuf *b = calloc(1, sizeof *b);
    if (!b) abort();
    b->p = data;
    b->len = n;
    b->eof = 1;
    int rc = parse_any(&c, b, fmt);
    free(b);
    return rc;
}

int rows_parse_stream(rows_read_fn rd, void *rd_ud, rows_format fmt, const rows_limits *lim,
                      const char *split, const char *file, rows_fn fn, void *ud, rows_loc *loc, lt_err *err) {
    assert(rd && fn);
    pctx c = {split, file ? file : "", fn, ud, loc, err, lim ? *lim : rows_limits_default()};
    rbuf *b = calloc(1, sizeof *b);
    if (!b) abort();
    b->rd = rd;
    b->ud = rd_ud;
    int rc = stream_failed(&c, b, parse_any(&c, b, fmt));
    free(b);
    return rc;
}

/* ---- normalization ---- */

static const char *PROMPT_KEYS[] = {"prompt", "input", "question", "task_prompt", NULL};
static const char *ANSWER_KEYS[] = {"expected_output", "target", "answer", "output", NULL};

/* A value as text: strings as they are, numbers and booleans in JSON form; NULL for others. */
static char *value_text(const json_t *v) {
    if (json_is_string(v)) return lt_strdup(json_string_value(v));
    if (json_is_number(v) || json_is_boolean(v))
        return json_dumps(v, JSON_ENCODE_ANY | JSON_REAL_PRECISION(17));
    return NULL;
}

/* The first non-blank text among keys, malloc'd; NULL when none. */
static char *first_text(const json_t *row, const char *const *keys) {
    for (int i = 0; keys[i]; i++) {
        char *s = value_text(json_object_get(row, keys[i]));
        if (s && !is_blank(s, strlen(s))) return s;
        free(s);
    }
    return NULL;
}

static json_t *msg_new(const char *role, const char *content) {
    return json_pack("{s:s, s:s}", "role", role, "content", content ? content : "");
}

/* Tool-call arguments as an object when possible. */
static json_t *norm_arguments(const json_t *a) {
    if (!a || json_is_null(a)) return json_object();
    if (json_is_string(a)) {
        json_t *parsed = json_loads(json_string_value(a), 0, NULL);
        if (json_is_object(parsed)) return parsed;
        json_decref(parsed);
    }
    return json_deep_copy(a);
}

/* {id, type, function:{name, arguments}} from the OpenAI form, the flat {id, name, arguments} form or the
 * ATIF {tool_call_id, function_name, arguments} form. */
static json_t *norm_tool_call(const json_t *tc, const char *where, size_t idx, size_t *counter, lt_err *err) {
    if (!json_is_object(tc)) {
        lt_err_set(err, 422, "%s.tool_calls[%zu] must be an object", where, idx);
        return NULL;
    }
    const json_t *fn = json_object_get(tc, "function");
    const json_t *name = json_is_object(fn) ? json_object_get(fn, "name") : json_object_get(tc, "name");
    const json_t *args =
        json_is_object(fn) ? json_object_get(fn, "arguments") : json_object_get(tc, "arguments");
    if (!name) name = json_object_get(tc, "function_name");
    if (!json_is_string(name) || !json_string_length(name)) {
        lt_err_set(err, 422,
                   "%s.tool_calls[%zu] needs a function name (function.name, name or function_name)", where,
                   idx);
        return NULL;
    }
    const json_t *id = json_object_get(tc, "id");
    if (!json_is_string(id)) id = json_object_get(tc, "tool_call_id");
    char gen[32];
    snprintf(gen, sizeof gen, "call_%zu", (*counter)++);
    return json_pack("{s:s, s:s, s:{s:O, s:o}}", "id", json_is_string(id) ? json_string_value(id) : gen,
                     "type", "function", "function", "name", name, "arguments", norm_arguments(args));
}

static json_t *norm_tool_calls(const json_t *tcs, const char *where, size_t *counter, lt_err *err) {
    if (!json_is_array(tcs)) {
        lt_err_set(err, 422, "%s.tool_calls must be a list", where);
        return NULL;
    }
    json_t *out = json_array();
    size_t i;
    json_t *tc;
    json_array_foreach(tcs, i, tc) {
        json_t *x = norm_tool_call(tc, where, i, counter, err);
        if (!x) {
            json_decref(out);
            return NULL;
        }
        json_array_append_new(out, x);
    }
    return out;
}

/* Message content: a string, or a list of parts whose "text" fields are joined; NULL/absent = "". */
static int content_text(const json_t *c, const char *where, strbuf *out, lt_err *err) {
    if (!c || json_is_null(c)) return 0;
    if (json_is_string(c)) {
        sb_append(out, json_string_value(c), json_string_length(c));
        return 0;
    }
    if (json_is_array(c)) {
        size_t i;
        json_t *part;
        json_array_foreach(c, i, part) {
            const json_t *t = json_is_object(part) ? json_object_get(part, "text") : part;
            if (!json_is_string(t))
                return lt_err_set(err, 422,
                                  "%s.content[%zu] must be text or {\"type\": \"text\", \"text\": ...}",
                                  where, i);
            sb_append(out, json_string_value(t), json_string_length(t));
        }
        return 0;
    }
    return lt_err_set(err, 422, "%s.content must be a string, not %s", where, type_name(c));
}

static const char *norm_role(const char *r) {
    if (!strcmp(r, "system") || !strcmp(r, "developer")) return "system";
    if (!strcmp(r, "user") || !strcmp(r, "human")) return "user";
    if (!strcmp(r, "assistant") || !strcmp(r, "agent")) return "assistant";
    if (!strcmp(r, "tool")) return "tool";
    return NULL;
}

/* Normalizes a "messages" list. *tools is set when tool calls appear. NULL with err. */
static json_t *norm_messages(const json_t *msgs, int *tools, lt_err *err) {
    json_t *out = json_array();
    size_t i, counter = 0;
    json_t *m;
    *tools = 0;
    json_array_foreach(msgs, i, m) {
        char where[48];
        snprintf(where, sizeof where, "messages[%zu]", i);
        if (!json_is_object(m)) {
            lt_err_set(err, 422, "%s must be an object with role and content, not %s", where, type_name(m));
            goto fail;
        }
        const json_t *rj = json_object_get(m, "role");
        const char *role = "user";
        if (rj && !json_is_null(rj)) {
            role = json_is_string(rj) ? norm_role(json_string_value(rj)) : NULL;
            if (!role) {
                lt_err_set(err, 422, "%s.role must be system, user, assistant or tool", where);
                goto fail;
            }
        }
        strbuf content = STRBUF_INIT;
        if (content_text(json_object_get(m, "content"), where, &content, err) != 0) {
            sb_free(&content);
            goto fail;
        }
        json_t *msg = msg_new(role, content.buf);
        sb_free(&content);
        const json_t *tcs = json_object_get(m, "tool_calls");
        if (tcs && !json_is_null(tcs) && !(json_is_array(tcs) && json_array_size(tcs) == 0)) {
            if (strcmp(role, "assistant") != 0) {
                json_decref(msg);
                lt_err_set(err, 422,
                           "%s has tool_calls but its role is %s; only assistant messages call tools", where,
                           role);
                goto fail;
            }
            json_t *calls = norm_tool_calls(tcs, where, &counter, err);
            if (!calls) {
                json_decref(msg);
                goto fail;
            }
            json_object_set_new(msg, "tool_calls", calls);
            *tools = 1;
        }
        const json_t *tcid = json_object_get(m, "tool_call_id");
        if (tcid && !json_is_null(tcid)) {
            if (!json_is_string(tcid)) {
                json_decref(msg);
                lt_err_set(err, 422, "%s.tool_call_id must be a string", where);
                goto fail;
            }
            json_object_set(msg, "tool_call_id", (json_t *)tcid);
            *tools = 1;
        }
        const char *text = json_string_value(json_object_get(msg, "content"));
        if (!text[0] && !json_object_get(msg, "tool_calls") && !json_object_get(msg, "tool_call_id")) {
            json_decref(msg); /* empty content: dropped */
            continue;
        }
        json_array_append_new(out, msg);
    }
    if (json_array_size(out) == 0) {
        lt_err_set(err, 422, "messages has no message with content");
        goto fail;
    }
    return out;
fail:
    json_decref(out);
    return NULL;
}

/* Trajectory steps to messages. agent_steps (may be NULL) receives, per agent step, {"index": message index,
 * "action": linearized action}. */
static json_t *traj_messages(const json_t *steps, json_t *agent_steps, lt_err *err) {
    json_t *out = json_array();
    size_t i, counter = 0;
    json_t *st;
    json_array_foreach(steps, i, st) {
        char where[48];
        snprintf(where, sizeof where, "steps[%zu]", i);
        if (!json_is_object(st)) {
            lt_err_set(err, 422, "%s must be an object, not %s", where, type_name(st));
            goto fail;
        }
        const json_t *src = json_object_get(st, "source");
        const char *s = json_is_string(src) ? json_string_value(src) : "";
        const char *role = !strcmp(s, "agent") || !strcmp(s, "assistant") ? "assistant"
                           : !strcmp(s, "user")                           ? "user"
                           : !strcmp(s, "system")                         ? "system"
                                                                          : NULL;
        if (!role) {
            lt_err_set(err, 422, "%s.source must be user, agent or system", where);
            goto fail;
        }
        const json_t *mj = json_object_get(st, "message");
        strbuf text = STRBUF_INIT;
        if (content_text(mj, where, &text, err) != 0) {
            sb_free(&text);
            goto fail;
        }
        sb_puts(&text, "");
        if (strcmp(role, "assistant") != 0) {
            if (text.len) json_array_append_new(out, msg_new(role, text.buf));
        } else {
            const json_t *rc = json_object_get(st, "reasoning_content");
            if (rc && !json_is_null(rc) && !json_is_string(rc)) {
                sb_free(&text);
                lt_err_set(err, 422, "%s.reasoning_content must be a string", where);
                goto fail;
            }
            const char *reason = json_is_string(rc) ? json_string_value(rc) : "";
            strbuf content = STRBUF_INIT, action = STRBUF_INIT;
            if (reason[0]) {
                sb_printf(&content, "<think>\n%s\n</think>\n\n", reason);
                sb_printf(&action, "<think>%s</think>", reason);
            }
            sb_append(&content, text.buf, text.len);
            sb_append(&action, text.buf, text.len);
            sb_puts(&content, "");
            json_t *msg = msg_new("assistant", content.buf);
            sb_free(&content);
            const json_t *tcs = json_object_get(st, "tool_calls");
            if (tcs && !json_is_null(tcs) && !(json_is_array(tcs) && json_array_size(tcs) == 0)) {
                json_t *calls = norm_tool_calls(tcs, where, &counter, err);
                if (!calls) {
                    json_decref(msg);
                    sb_free(&action);
                    sb_free(&text);
                    goto fail;
                }
                size_t k;
                json_t *call;
                json_array_foreach(calls, k, call) {
                    json_t *fn = json_object_get(call, "function");
                    json_t *args = json_object_get(fn, "arguments");
                    char *a = json_is_string(args) ? lt_strdup(json_string_value(args))
                                                   : json_dumps(args, JSON_COMPACT | JSON_ENCODE_ANY);
                    sb_printf(&action, "<tool_call name=\"%s\">%s</tool_call>",
                              json_string_value(json_object_get(fn, "name")), a ? a : "");
                    free(a);
                }
                json_object_set_new(msg, "tool_calls", calls);
            }
            sb_puts(&action, "");
            if (json_string_length(json_object_get(msg, "content")) || json_object_get(msg, "tool_calls")) {
                if (agent_steps)
                    json_array_append_new(agent_steps,
                                          json_pack("{s:I, s:s}", "index", (json_int_t)json_array_size(out),
                                                    "action", action.buf));
                json_array_append_new(out, msg);
            } else {
                json_decref(msg);
            }
            sb_free(&action);
        }
        sb_free(&text);
        const json_t *obs = json_object_get(st, "observation");
        if (obs && !json_is_null(obs)) {
            const json_t *results = json_is_object(obs) ? json_object_get(obs, "results") : NULL;
            if (!json_is_array(results)) {
                lt_err_set(err, 422, "%s.observation must be {\"results\": [...]}", where);
                goto fail;
            }
            size_t k;
            json_t *r;
            json_array_foreach(results, k, r) {
                if (!json_is_object(r)) {
                    lt_err_set(err, 422, "%s.observation.results[%zu] must be an object", where, k);
                    goto fail;
                }
                const json_t *c = json_object_get(r, "content");
                char *ct = json_is_string(c)         ? lt_strdup(json_string_value(c))
                           : (!c || json_is_null(c)) ? lt_strdup("")
                                                     : json_dumps(c, JSON_COMPACT | JSON_ENCODE_ANY);
                json_t *tm = msg_new("tool", ct);
                free(ct);
                const json_t *id = json_object_get(r, "source_call_id");
                if (!json_is_string(id)) id = json_object_get(r, "tool_call_id");
                if (json_is_string(id)) json_object_set(tm, "tool_call_id", (json_t *)id);
                json_array_append_new(out, tm);
            }
        }
    }
    if (json_array_size(out) == 0) {
        lt_err_set(err, 422, "steps hold no message");
        goto fail;
    }
    return out;
fail:
    json_decref(out);
    return NULL;
}

/* Lists up to 8 of the row's keys, for the "fits no shape" message. */
static void keys_of(const json_t *row, strbuf *sb) {
    const char *k;
    json_t *v;
    int i = 0;
    json_object_foreach((json_t *)row, k, v) {
        if (i == 8) {
            sb_puts(sb, ", ...");
            break;
        }
        sb_printf(sb, "%s%.40s", i++ ? ", " : "", k);
    }
    if (i == 0) sb_puts(sb, "none");
}

/* Converts a row to messages (without any system injection); *shape receives the shape. */
static json_t *convert(const json_t *row, row_shape *shape, json_t *agent_steps, lt_err *err) {
    *shape = ROW_SHAPE_NONE;
    if (!json_is_object(row)) {
        lt_err_set(err, 422, "a row must be a JSON object, not %s", type_name(row));
        return NULL;
    }
    const json_t *reward = json_object_get(row, "reward");
    if (reward && !json_is_null(reward) && !json_is_number(reward)) {
        lt_err_set(err, 422, "reward must be a number, not %s", type_name(reward));
        return NULL;
    }
    const char *ctxkey = json_object_get(row, "context") ? "context" : "template_context";
    const json_t *ctx = json_object_get(row, ctxkey);
    if (ctx && !json_is_null(ctx) && !json_is_object(ctx)) {
        lt_err_set(err, 422, "%s must be an object of values, not %s", ctxkey, type_name(ctx));
        return NULL;
    }
    const json_t *msgs = json_object_get(row, "messages");
    if (msgs && !json_is_null(msgs)) {
        if (!json_is_array(msgs)) {
            lt_err_set(err, 422, "messages must be a list of {role, content} objects, not %s",
                       type_name(msgs));
            return NULL;
        }
        if (json_array_size(msgs) > 0) {
            int tools = 0;
            json_t *out = norm_messages(msgs, &tools, err);
            if (out) *shape = tools ? ROW_SHAPE_TOOLS : ROW_SHAPE_CHAT;
            return out;
        }
    }
    const json_t *steps = json_object_get(row, "steps");
    if (steps && !json_is_null(steps)) {
        if (!json_is_array(steps)) {
            lt_err_set(err, 422, "steps must be a list of trajectory steps, not %s", type_name(steps));
            return NULL;
        }
        if (json_array_size(steps) > 0) {
            json_t *out = traj_messages(steps, agent_steps, err);
            if (out) *shape = ROW_SHAPE_TRAJECTORY;
            return out;
        }
    }
    char *prompt = first_text(row, PROMPT_KEYS);
    if (prompt) {
        char *answer = first_text(row, ANSWER_KEYS);
        json_t *out = json_array();
        json_array_append_new(out, msg_new("user", prompt));
        if (answer) json_array_append_new(out, msg_new("assistant", answer));
        free(prompt);
        free(answer);
        *shape = ROW_SHAPE_PROMPT;
        return out;
    }
    strbuf keys = STRBUF_INIT;
    keys_of(row, &keys);
    lt_err_set(err, 422, "the row fits no accepted shape (its keys: %s); " ROWS_ACCEPTED_SHAPES, keys.buf);
    sb_free(&keys);
    return NULL;
}

row_shape rows_classify(const json_t *row, lt_err *err) {
    row_shape shape;
    json_t *m = convert(row, &shape, NULL, err);
    json_decref(m);
    return shape;
}

const char *rows_shape_name(row_shape shape) {
    switch (shape) {
    case ROW_SHAPE_CHAT:
        return "chat";
    case ROW_SHAPE_TOOLS:
        return "tools";
    case ROW_SHAPE_TRAJECTORY:
        return "trajectory";
    case ROW_SHAPE_PROMPT:
        return "prompt";
    default:
        return "none";
    }
}

void rows_inject_system(json_t *messages, const char *prompt) {
    if (!prompt || !prompt[0] || !json_is_array(messages)) return;
    json_t *first = json_array_get(messages, 0);
    const char *role = first ? json_string_value(json_object_get(first, "role")) : NULL;
    if (role && !strcmp(role, "system")) {
        const char *old = json_string_value(json_object_get(first, "content"));
        strbuf sb = STRBUF_INIT;
        sb_printf(&sb, "%s\n\n%s", prompt, old ? old : "");
        json_object_set_new(first, "content", json_string(sb.buf));
        sb_free(&sb);
        return;
    }
    json_array_insert_new(messages, 0, msg_new("system", prompt));
}

json_t *rows_conversation(const json_t *row, const char *capability_prompt, lt_err *err) {
    row_shape shape;
    json_t *m = convert(row, &shape, NULL, err);
    if (m) rows_inject_system(m, capability_prompt);
    return m;
}

char *rows_render_template(const char *tmpl, const json_t *context) {
    strbuf out = STRBUF_INIT;
    sb_puts(&out, "");
    const char *p = tmpl;
    while (*p) {
        const char *open = strstr(p, "{{");
        if (!open) {
            sb_puts(&out, p);
            break;
        }
        sb_append(&out, p, (size_t)(open - p));
        const char *close = strstr(open + 2, "}}");
        if (!close) {
            sb_puts(&out, open);
            break;
        }
        const char *ks = open + 2, *ke = close;
        while (ks < ke && isspace((unsigned char)*ks))
            ks++;
        while (ke > ks && isspace((unsigned char)ke[-1]))
            ke--;
        char *key = lt_strndup(ks, (size_t)(ke - ks));
        const json_t *v = json_is_object(context) ? json_object_get(context, key) : NULL;
        free(key);
        if (v) {
            char *t = json_is_null(v) ? lt_strdup("") : value_text(v);
            if (!t) t = json_dumps(v, JSON_COMPACT);
            sb_puts(&out, t ? t : "");
            free(t);
        } else {
            sb_append(&out, open, (size_t)(close + 2 - open));
        }
        p = close + 2;
    }
    if (strstr(out.buf, "{{")) {
        sb_free(&out);
        return NULL;
    }
    return sb_steal(&out);
}

static const json_t *row_context(const json_t *row) {
    const json_t *c = json_object_get(row, "context");
    if (!json_is_object(c)) c = json_object_get(row, "template_context");
    return json_is_object(c) ? c : NULL;
}

/* A prompt array from messages[0..k), with the system text injected. */
static json_t *prefix_with_system(const json_t *msgs, size_t k, const char *system) {
    json_t *p = json_array();
    for (size_t i = 0; i < k; i++)
        json_array_append_new(p, json_deep_copy(json_array_get(msgs, i)));
    rows_inject_system(p, system);
    return p;
}

static json_t *rl_item(json_t *prompt, const char *expected, json_t *reward, const json_t *ctx) {
    return json_pack("{s:o, s:o, s:o, s:O}", "messages", prompt, "expected",
                     expected ? json_string(expected) : json_null(), "reward", reward, "context",
                     ctx ? (json_t *)ctx : json_null());
}

json_t *rows_rl_items(const json_t *row, const char *capability_prompt, const char *instruction,
                      lt_err *err) {
    row_shape shape;
    json_t *agent_steps = json_array();
    json_t *msgs = convert(row, &shape, agent_steps, err);
    if (!msgs) {
        json_decref(agent_steps);
        return NULL;
    }
    const json_t *ctx = row_context(row);
    strbuf system = STRBUF_INIT;
    sb_puts(&system, capability_prompt ? capability_prompt : "");
    char *rendered = instruction ? rows_render_template(instruction, ctx) : NULL;
    if (rendered && !is_blank(rendered, strlen(rendered))) {
        if (system.len) sb_puts(&system, "\n\n");
        sb_puts(&system, rendered);
    }
    free(rendered);
    const json_t *rw = json_object_get(row, "reward");
    json_t *items = json_array();
    if (shape == ROW_SHAPE_TRAJECTORY) {
        const json_t *success = json_object_get(row, "success");
        double r = json_is_boolean(success) ? (json_is_true(success) ? 1.0 : 0.0)
                   : json_is_number(rw)     ? json_number_value(rw)
                                            : 1.0;
        size_t i;
        json_t *st;
        json_array_foreach(agent_steps, i, st) {
            size_t k = (size_t)json_integer_value(json_object_get(st, "index"));
            json_array_append_new(items, rl_item(prefix_with_system(msgs, k, system.buf),
                                                 json_string_value(json_object_get(st, "action")),
                                                 json_real(r), ctx));
        }
    } else {
        size_t n = json_array_size(msgs);
        json_t *last = json_array_get(msgs, n - 1);
        const char *last_role = json_string_value(json_object_get(last, "role"));
        char *expected = NULL;
        size_t k = n;
        if (n > 0 && !strcmp(last_role, "assistant") && !json_object_get(last, "tool_calls")) {
            expected = lt_strdup(json_string_value(json_object_get(last, "content")));
            k = n - 1;
        } else {
            expected = first_text(row, ANSWER_KEYS);
        }
        json_array_append_new(
            items, rl_item(prefix_with_system(msgs, k, system.buf), expected,
                           json_is_number(rw) ? json_real(json_number_value(rw)) : json_null(), ctx));
        free(expected);
    }
    sb_free(&system);
    json_decref(msgs);
    json_decref(agent_steps);
    return items;
}

/* ---- checking and loading ---- */

static int count_fn(const json_t *row, long line, void *ud, lt_err *err) {
    (void)line;
    if (rows_classify(row, err) == ROW_SHAPE_NONE) return -1;
    (*(size_t *)ud)++;
    return 0;
}

int rows_check_file(const char *data, size_t n, rows_format fmt, const char *split, const char *file,
                    size_t *count, rows_loc *loc, lt_err *err) {
    size_t c = 0;
    int rc = rows_parse(data, n, fmt, split, file, count_fn, &c, loc, err);
    if (count) *count = rc == 0 ? c : 0;
    return rc;
}

int rows_check_stream(rows_read_fn rd, void *rd_ud, rows_format fmt, const rows_limits *lim,
                      const char *split, const char *file, size_t *count, rows_loc *loc, lt_err *err) {
    size_t c = 0;
    int rc = rows_parse_stream(rd, rd_ud, fmt, lim, split, file, count_fn, &c, loc, err);
    if (count) *count = rc == 0 ? c : 0;
    return rc;
}

typedef struct load_ud {
    rows_set *s;
    size_t file;
} load_ud;

static int load_fn(const json_t *row, long line, void *ud, lt_err *err) {
    load_ud *u = ud;
    rows_set *s = u->s;
    if (rows_classify(row, err) == ROW_SHAPE_NONE) return -1;
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 64;
        s->lines = realloc(s->lines, s->cap * sizeof *s->lines);
        s->file = realloc(s->file, s->cap * sizeof *s->file);
        if (!s->lines || !s->file) abort();
    }
    json_array_append(s->rows, (json_t *)row);
    s->lines[s->n] = line;
    s->file[s->n] = u->file;
    s->n++;
    return 0;
}

static int load_split(const archive_items *items, const char *split, const json_t *files, rows_format dflt,
                      rows_set *out, rows_loc *loc, lt_err *err) {
    size_t i;
    json_t *f;
    json_array_foreach(files, i, f) {
        const char *path = json_string_value(f);
        const archive_item *it = path ? archive_items_find(items, path) : NULL;
        if (!it) {
            if (loc) {
                snprintf(loc->split, sizeof loc->split, "%s", split);
                snprintf(loc->file, sizeof loc->file, "%s", path ? path : "");
                loc->line = 0;
            }
            return lt_err_set(err, 422, "split %s: file %s is not in the dataset archive", split,
                              path ? path : "?");
        }
        out->files = realloc(out->files, (out->nfiles + 1) * sizeof *out->files);
        out->splits = realloc(out->splits, (out->nfiles + 1) * sizeof *out->splits);
        if (!out->files || !out->splits) abort();
        out->files[out->nfiles] = lt_strdup(path);
        out->splits[out->nfiles] = lt_strdup(split);
        load_ud u = {out, out->nfiles++};
        if (rows_parse((const char *)it->data, it->size, rows_format_for_path(path, dflt), split, path,
                       load_fn, &u, loc, err) != 0)
            return -1;
    }
    return 0;
}

int rows_load(const archive_items *items, const json_t *manifest, const char *split, rows_set *out,
              rows_loc *loc, lt_err *err) {
    assert(out && !out->rows);
    out->rows = json_array();
    rows_format dflt = ROWS_JSONL;
    rows_format_parse(json_string_value(json_object_get(manifest, "format")), &dflt);
    const json_t *splits = json_object_get(manifest, "splits");
    int rc = 0;
    if (!json_is_object(splits)) {
        rc = lt_err_set(err, 422, "the dataset manifest has no splits");
    } else if (split) {
        const json_t *files = json_object_get(splits, split);
        if (!files) {
            strbuf names = STRBUF_INIT;
            keys_of(splits, &names);
            rc = lt_err_set(err, 422, "the dataset has no split '%s' (its splits: %s)", split, names.buf);
            sb_free(&names);
        } else {
            rc = load_split(items, split, files, dflt, out, loc, err);
        }
    } else {
        const char *name;
        json_t *files;
        json_object_foreach((json_t *)splits, name, files) {
            if ((rc = load_split(items, name, files, dflt, out, loc, err)) != 0) break;
        }
    }
    if (rc != 0) rows_set_free(out);
    return rc;
}

const char *rows_pick_split(const json_t *manifest, const char *const *prefs) {
    const json_t *splits = json_object_get(manifest, "splits");
    for (int i = 0; prefs && prefs[i]; i++)
        if (json_object_get(splits, prefs[i])) return prefs[i];
    return NULL;
}

void rows_set_free(rows_set *s) {
    if (!s) return;
    json_decref(s->rows);
    free(s->lines);
    free(s->file);
    for (size_t i = 0; i < s->nfiles; i++) {
        free(s->files[i]);
        free(s->splits[i]);
    }
    free(s->files);
    free(s->splits);
    memset(s, 0, sizeof *s);
}
