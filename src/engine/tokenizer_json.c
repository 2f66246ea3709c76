/* tokenizer_json.c: the loader's fast path for model.vocab and model.merges.
 *
 * Those two hold almost all of a 10 MB tokenizer.json; building jansson objects for them (a hash table for a
 * 150k-key object, one allocation per string) costs most of the load time. eng_tok_fast_scan finds their
 * spans with a small JSON scanner and reads them straight into flat arrays; the rest of the document, with
 * the two spans replaced by {} and [] (eng_tok_fm_strip), still goes through jansson in tokenizer.c. Anything
 * the scanner does not accept exactly as jansson would (escapes it cannot decode, non-integer ids, leading
 * zeros, repeated keys, odd shapes) makes it give up, and the whole file then takes the jansson path, whose
 * error messages name the field. The fuzz target checks both paths load the same tokenizer. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tokenizer_internal.h"
#include "util/strbuf.h"

void eng_tok_fm_free(eng_tok_fastmodel *f) {
    sb_free(&f->str);
    free(f->voff);
    free(f->vlen);
    free(f->vid);
    free(f->m);
}

typedef struct {
    const char *p, *end;
} scan;

static void sk_ws(scan *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
        s->p++;
}

static int sk_lit(scan *s, char c) {
    sk_ws(s);
    if (s->p < s->end && *s->p == c) {
        s->p++;
        return 0;
    }
    return -1;
}

static int hexval(char c) {
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* A JSON string into out (appended; out may be NULL to skip). Rejects what jansson rejects by default:
 * control characters, invalid UTF-8, \u0000, lone surrogates. */
static int sk_string(scan *s, strbuf *out) {
    sk_ws(s);
    if (s->p >= s->end || *s->p != '"') return -1;
    s->p++;
    const char *run = s->p;
    for (;;) {
        if (s->p >= s->end) return -1;
        unsigned char c = (unsigned char)*s->p;
        if (c == '"' || c == '\\') {
            if (eng_tok_utf8_invalid_at(run, (size_t)(s->p - run)) != (size_t)(s->p - run)) return -1;
            if (out) sb_append(out, run, (size_t)(s->p - run));
            if (c == '"') {
                s->p++;
                return 0;
            }
            if (s->p + 1 >= s->end) return -1;
            char e = s->p[1];
            s->p += 2;
            const char *simple = strchr("\"\\/bfnrt", e);
            if (e && simple) {
                static const char repl[] = "\"\\/\b\f\n\r\t";
                if (out) sb_putc(out, repl[simple - "\"\\/bfnrt"]);
            } else if (e == 'u') {
                uint32_t cp = 0;
                for (int k = 0; k < 4; k++) {
                    int h = s->p + k < s->end ? hexval(s->p[k]) : -1;
                    if (h < 0) return -1;
                    cp = cp * 16 + (uint32_t)h;
                }
                s->p += 4;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (s->end - s->p < 6 || s->p[0] != '\\' || s->p[1] != 'u') return -1;
                    uint32_t lo = 0;
                    for (int k = 0; k < 4; k++) {
                        int h = hexval(s->p[2 + k]);
                        if (h < 0) return -1;
                        lo = lo * 16 + (uint32_t)h;
                    }
                    if (lo < 0xDC00 || lo > 0xDFFF) return -1;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    s->p += 6;
                } else if ((cp >= 0xDC00 && cp <= 0xDFFF) || cp == 0) {
                    return -1;
                }
                unsigned char u[4];
                int k = eng_tok_utf8_put(cp, u);
                if (out) sb_append(out, u, (size_t)k);
            } else {
                return -1;
            }
            run = s->p;
            continue;
        }
        if (c < 0x20) return -1;
        s->p++;
    }
}

/* Skips any JSON value (strings checked, numbers and literals loosely: jansson re-checks everything kept). */
static int sk_value(scan *s, int depth) {
    sk_ws(s);
    if (s->p >= s->end || depth > 64) return -1;
    char c = *s->p;
    if (c == '"') return sk_string(s, NULL);
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        s->p++;
        sk_ws(s);
        if (s->p < s->end && *s->p == close) {
            s->p++;
            return 0;
        }
        for (;;) {
            if (c == '{' && (sk_string(s, NULL) || sk_lit(s, ':'))) return -1;
            if (sk_value(s, depth + 1)) return -1;
            sk_ws(s);
            if (s->p >= s->end) return -1;
            if (*s->p == ',') {
                s->p++;
                continue;
            }
            if (*s->p == close) {
                s->p++;
                return 0;
            }
            return -1;
        }
    }
    const char *st = s->p;
    while (s->p < s->end &&
           (strchr("+-.eE", *s->p) || (*s->p >= '0' && *s->p <= '9') || (*s->p >= 'a' && *s->p <= 'z')))
        s->p++;
    return s->p > st ? 0 : -1;
}

static int fm_vocab(scan *s, eng_tok_fastmodel *f) {
    if (sk_lit(s, '{')) return -1;
    sk_ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        return 0;
    }
    for (;;) {
        size_t off = f->str.len;
        if (sk_string(s, &f->str) || sk_lit(s, ':')) return -1;
        sk_ws(s);
        long long id = 0;
        const char *st = s->p;
        if (s->end - s->p > 1 && s->p[0] == '0' && s->p[1] >= '0' && s->p[1] <= '9')
            return -1; /* JSON: no 007 */
        while (s->p < s->end && *s->p >= '0' && *s->p <= '9' && id <= ENG_TOK_MAX_ID)
            id = id * 10 + (*s->p++ - '0');
        if (s->p == st || id > ENG_TOK_MAX_ID || (s->p < s->end && strchr(".eE", *s->p))) return -1;
        if (f->nv == f->capv) {
            f->capv = f->capv ? f->capv * 2 : 1024;
            f->voff = realloc(f->voff, f->capv * sizeof *f->voff);
            f->vlen = realloc(f->vlen, f->capv * sizeof *f->vlen);
            f->vid = realloc(f->vid, f->capv * sizeof *f->vid);
            if (!f->voff || !f->vlen || !f->vid) abort();
        }
        f->voff[f->nv] = (uint32_t)off;
        f->vlen[f->nv] = (uint32_t)(f->str.len - off);
        f->vid[f->nv++] = (int32_t)id;
        sk_ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            continue;
        }
        return sk_lit(s, '}');
    }
}

static int fm_merges(scan *s, eng_tok_fastmodel *f) {
    if (sk_lit(s, '[')) return -1;
    sk_ws(s);
    if (s->p < s->end && *s->p == ']') {
        s->p++;
        return 0;
    }
    for (;;) {
        eng_tok_fm_merge m;
        sk_ws(s);
        if (s->p < s->end && *s->p == '[') {
            s->p++;
            m.a = (uint32_t)f->str.len;
            if (sk_string(s, &f->str)) return -1;
            m.al = (uint32_t)(f->str.len - m.a);
            if (sk_lit(s, ',')) return -1;
            m.b = (uint32_t)f->str.len;
            if (sk_string(s, &f->str)) return -1;
            m.bl = (uint32_t)(f->str.len - m.b);
            if (sk_lit(s, ']')) return -1;
        } else {
            m.a = (uint32_t)f->str.len;
            if (sk_string(s, &f->str)) return -1;
            m.al = (uint32_t)(f->str.len - m.a); /* whole "a b" string: split later */
            m.b = m.bl = UINT32_MAX;
        }
        if (f->nm == f->capm) {
            f->capm = f->capm ? f->capm * 2 : 1024;
            f->m = realloc(f->m, f->capm * sizeof *f->m);
            if (!f->m) abort();
        }
        f->m[f->nm++] = m;
        sk_ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            continue;
        }
        return sk_lit(s, ']');
    }
}

/* Finds and reads model.vocab / model.merges; 0 on success (f filled), -1 to fall back to jansson. */
int eng_tok_fast_scan(const char *text, size_t len, eng_tok_fastmodel *f) {
    memset(f, 0, sizeof *f);
    scan s = {text, text + len};
    int have_vocab = 0, seen_model = 0;
    if (sk_lit(&s, '{')) return -1;
    sk_ws(&s);
    if (s.p < s.end && *s.p == '}') return -1;
    strbuf key = STRBUF_INIT;
    for (;;) {
        sb_reset(&key);
        if (sk_string(&s, &key) || sk_lit(&s, ':')) goto fail;
        sk_ws(&s);
        if (key.buf && !strcmp(key.buf, "model") && seen_model++) goto fail;
        if (key.buf && !strcmp(key.buf, "model") && s.p < s.end && *s.p == '{') {
            s.p++;
            sk_ws(&s);
            if (s.p < s.end && *s.p == '}') {
                s.p++;
            } else {
                for (;;) {
                    sb_reset(&key);
                    if (sk_string(&s, &key) || sk_lit(&s, ':')) goto fail;
                    sk_ws(&s);
                    size_t a = (size_t)(s.p - text);
                    if (key.buf && ((!strcmp(key.buf, "vocab") && have_vocab) ||
                                    (!strcmp(key.buf, "merges") && f->has_merges)))
                        goto fail; /* duplicate keys: let jansson's rules decide */
                    if (key.buf && !strcmp(key.buf, "vocab")) {
                        if (fm_vocab(&s, f)) goto fail;
                        f->vocab_a = a, f->vocab_b = (size_t)(s.p - text), have_vocab = 1;
                    } else if (key.buf && !strcmp(key.buf, "merges") && s.p < s.end && *s.p == '[') {
                        if (fm_merges(&s, f)) goto fail;
                        f->merges_a = a, f->merges_b = (size_t)(s.p - text), f->has_merges = 1;
                    } else if (sk_value(&s, 1)) {
                        goto fail;
                    }
                    sk_ws(&s);
                    if (s.p < s.end && *s.p == ',') {
                        s.p++;
                        continue;
                    }
                    if (sk_lit(&s, '}')) goto fail;
                    break;
                }
            }
        } else if (sk_value(&s, 0)) {
            goto fail;
        }
        sk_ws(&s);
        if (s.p < s.end && *s.p == ',') {
            s.p++;
            continue;
        }
        if (sk_lit(&s, '}')) goto fail;
        break;
    }
    sb_free(&key);
    if (!have_vocab) {
        eng_tok_fm_free(f);
        return -1;
    }
    return 0;
fail:
    sb_free(&key);
    eng_tok_fm_free(f);
    memset(f, 0, sizeof *f);
    return -1;
}

/* The text with the vocab and merges spans replaced by {} and [] (malloc'd; *out_len set). */
char *eng_tok_fm_strip(const char *text, size_t len, const eng_tok_fastmodel *f, size_t *out_len) {
    strbuf sb = STRBUF_INIT;
    sb_reserve(&sb, len / 16 + 64);
    size_t cuts[2][2] = {{f->vocab_a, f->vocab_b}, {f->merges_a, f->merges_b}};
    int nc = f->has_merges ? 2 : 1;
    if (nc == 2 && cuts[1][0] < cuts[0][0]) {
        size_t t0 = cuts[0][0], t1 = cuts[0][1];
        cuts[0][0] = cuts[1][0], cuts[0][1] = cuts[1][1];
        cuts[1][0] = t0, cuts[1][1] = t1;
    }
    size_t pos = 0;
    for (int i = 0; i < nc; i++) {
        sb_append(&sb, text + pos, cuts[i][0] - pos);
        sb_puts(&sb, text[cuts[i][0]] == '{' ? "{}" : "[]");
        pos = cuts[i][1];
    }
    sb_append(&sb, text + pos, len - pos);
    *out_len = sb.len;
    return sb_steal(&sb);
}
