/* tokenizer.c: Hugging Face tokenizer.json byte-level BPE, token-exact with the `tokenizers` library.
 *
 * Loading reads model.vocab and model.merges (nearly all of a 10 MB file) with a small dedicated scanner and
 * the rest of the JSON with jansson (see tokenizer_json.c), copies every token string into an arena and
 * builds three open-addressing hash tables: vocab (string -> id), added tokens (content -> id) and merges
 * ((left id << 32 | right id) -> (rank, merged id)). Ids index a flat array of token strings. Both merge
 * spellings are accepted ("a b" strings and ["a","b"] pairs); a merge naming a token missing from the vocab
 * is an error, as in HF.
 *
 * Encoding follows HF's pipeline step by step:
 *   1. added tokens: a byte trie of every added token's content finds leftmost-longest matches in the raw
 *      text (HF uses Aho-Corasick with LeftmostLongest: same result); single_word / lstrip / rstrip are
 *      applied as added_vocabulary.rs does; special tokens are skipped when the caller disallows them;
 *   2. the normalizer (none, NFC, or a Sequence of those) runs on each remaining piece, then tokens flagged
 *      "normalized" are matched the same way inside the normalized pieces;
 *   3. the pre-tokenizer steps (Split with a PCRE2 regex or literal and any of the five split behaviors,
 *      Digits, ByteLevel with add_prefix_space/use_regex) cut each piece further; ByteLevel, which must come
 *      last, maps every byte to its GPT-2 character;
 *   4. BPE per pre-token: with ignore_merges a pre-token that is itself in the vocab is emitted whole;
 *      otherwise each character becomes its vocab id (characters missing from the vocab are dropped, or
 *      become unk_token when the model has one) and merges run lowest rank first, ties to the leftmost pair,
 *      with a binary heap and stale-entry checks exactly like word.rs: merge_all.
 * Oniguruma (HF's regex engine) and PCRE2 differ slightly on \s: Onig's is Unicode White_Space, PCRE2
 * 10.42's UCP \s also takes U+180E, so the pattern text is rewritten to spell \s and \S as explicit
 * White_Space classes before compiling with PCRE2_UTF | PCRE2_UCP (JIT when available). Input must be valid
 * UTF-8 (HF takes a Python str); invalid input is a 400 error naming the byte offset.
 *
 * Decoding maps each token back to bytes (ByteLevel decoder: through the inverse GPT-2 table; a token with a
 * character outside that table, such as an added token containing a space, contributes its raw UTF-8) and
 * converts the result like Rust's String::from_utf8_lossy: each maximal invalid subsequence becomes U+FFFD.
 *
 * Nothing is mutated after loading, so one tokenizer serves many threads. */
#include "engine/tokenizer.h"

#include <assert.h>
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "engine/tokenizer_internal.h"
#include "util/strbuf.h"
#include "util/util.h"

/* ---- arena: token strings live here until eng_tok_free ---- */

typedef struct arena_blk {
    struct arena_blk *next;
    size_t used, cap;
    char data[];
} arena_blk;

static char *arena_put(arena_blk **a, const char *s, size_t n) {
    if (!*a || (*a)->cap - (*a)->used < n + 1) {
        size_t cap = n + 1 > (1u << 20) ? n + 1 : (1u << 20);
        arena_blk *b = malloc(sizeof *b + cap);
        if (!b) abort();
        b->next = *a;
        b->used = 0;
        b->cap = cap;
        *a = b;
    }
    char *p = (*a)->data + (*a)->used;
    memcpy(p, s, n);
    p[n] = '\0';
    (*a)->used += n + 1;
    return p;
}

static void arena_free(arena_blk *a) {
    while (a) {
        arena_blk *n = a->next;
        free(a);
        a = n;
    }
}

/* ---- string -> id hash map ---- */

typedef struct {
    const char *s;
    uint32_t len;
    int32_t id;
} smap_ent;

typedef struct {
    smap_ent *ents;
    size_t n, cap;
    uint64_t *slots; /* 0 = empty, else (hash tag << 32) | (index + 1) into ents */
    size_t mask;
} smap;

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull ^ n;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    return h ^ (h >> 32);
}

static void smap_init(smap *m, size_t expect) {
    size_t cap = 16;
    while (cap < expect * 2)
        cap *= 2;
    m->slots = calloc(cap, sizeof *m->slots);
    m->ents = malloc((expect ? expect : 1) * sizeof *m->ents);
    if (!m->slots || !m->ents) abort();
    m->mask = cap - 1;
    m->n = 0;
    m->cap = expect ? expect : 1;
}

static void smap_free(smap *m) {
    free(m->slots);
    free(m->ents);
}

static size_t smap_find_slot_h(const smap *m, const char *s, size_t n, uint64_t h) {
    size_t i = h & m->mask;
    uint32_t tag = (uint32_t)(h >> 32);
    for (;;) {
        uint64_t e = m->slots[i];
        if (!e) return i;
        if ((uint32_t)(e >> 32) == tag) {
            const smap_ent *en = &m->ents[(uint32_t)e - 1];
            if (en->len == n && memcmp(en->s, s, n) == 0) return i;
        }
        i = (i + 1) & m->mask;
    }
}

static size_t smap_find_slot(const smap *m, const char *s, size_t n) {
    return smap_find_slot_h(m, s, n, hash_bytes(s, n));
}

static int smap_get(const smap *m, const char *s, size_t n) {
    if (!m->slots) return -1;
    uint64_t e = m->slots[smap_find_slot(m, s, n)];
    return e ? m->ents[(uint32_t)e - 1].id : -1;
}

static void smap_grow(smap *m) {
    size_t cap = (m->mask + 1) * 2;
    uint64_t *slots = calloc(cap, sizeof *slots);
    if (!slots) abort();
    free(m->slots);
    m->slots = slots;
    m->mask = cap - 1;
    for (size_t k = 0; k < m->n; k++) {
        uint64_t h = hash_bytes(m->ents[k].s, m->ents[k].len);
        m->slots[smap_find_slot_h(m, m->ents[k].s, m->ents[k].len, h)] = (h >> 32 << 32) | ((uint64_t)k + 1);
    }
}

/* Inserts or overwrites; s must outlive the map (arena). Returns the id the key had before, or -1. */
static int smap_put(smap *m, const char *s, size_t n, int id) {
    uint64_t h = hash_bytes(s, n);
    size_t i = smap_find_slot_h(m, s, n, h);
    if (m->slots[i]) {
        int old = m->ents[(uint32_t)m->slots[i] - 1].id;
        m->ents[(uint32_t)m->slots[i] - 1].id = id;
        return old;
    }
    if (m->n == m->cap) {
        m->cap *= 2;
        m->ents = realloc(m->ents, m->cap * sizeof *m->ents);
        if (!m->ents) abort();
    }
    m->ents[m->n] = (smap_ent){s, (uint32_t)n, id};
    m->slots[i] = (h >> 32 << 32) | (uint64_t)++m->n;
    if (m->n * 2 > m->mask + 1) smap_grow(m);
    return -1;
}

/* ---- (left, right) -> (rank, merged id) ---- */

typedef struct {
    uint64_t key;
    int32_t rank; /* -1 = empty slot */
    int32_t id;
} pmap_ent;

typedef struct {
    pmap_ent *slots;
    size_t mask, n;
} pmap;

static uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void pmap_init(pmap *m, size_t expect) {
    size_t cap = 16;
    while (cap < expect * 2)
        cap *= 2;
    m->slots = malloc(cap * sizeof *m->slots);
    if (!m->slots) abort();
    for (size_t i = 0; i < cap; i++)
        m->slots[i].rank = -1;
    m->mask = cap - 1;
    m->n = 0;
}

static const pmap_ent *pmap_get(const pmap *m, int a, int b) {
    if (!m->slots) return NULL;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = mix64(key) & m->mask;
    for (;;) {
        const pmap_ent *e = &m->slots[i];
        if (e->rank < 0) return NULL;
        if (e->key == key) return e;
        i = (i + 1) & m->mask;
    }
}

/* Later merges overwrite earlier ones for the same pair, like HF's HashMap collect. */
static void pmap_put(pmap *m, int a, int b, int rank, int id) {
    if ((m->n + 1) * 2 > m->mask + 1) {
        pmap old = *m;
        pmap_init(m, (old.mask + 1));
        for (size_t i = 0; i <= old.mask; i++)
            if (old.slots[i].rank >= 0)
                pmap_put(m, (int)(old.slots[i].key >> 32), (int)(uint32_t)old.slots[i].key, old.slots[i].rank,
                         old.slots[i].id);
        free(old.slots);
    }
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = mix64(key) & m->mask;
    while (m->slots[i].rank >= 0 && m->slots[i].key != key)
        i = (i + 1) & m->mask;
    if (m->slots[i].rank < 0) m->n++;
    m->slots[i] = (pmap_ent){key, rank, id};
}

/* ---- added tokens and their trie ---- */

typedef struct {
    const char *content;
    size_t len;
    int id;
    unsigned special : 1, lstrip : 1, rstrip : 1, single_word : 1, normalized : 1;
} added_tok;

typedef struct {
    int32_t child, sibling, tok; /* tok: index into added[] or -1 */
    unsigned char c;
} trie_node;

typedef struct {
    trie_node *nodes;
    size_t n, cap;
    int32_t root[256]; /* first-byte fast path: node index or -1 */
} trie;

static int32_t trie_new_node(trie *t, unsigned char c) {
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 256;
        t->nodes = realloc(t->nodes, t->cap * sizeof *t->nodes);
        if (!t->nodes) abort();
    }
    t->nodes[t->n] = (trie_node){-1, -1, -1, c};
    return (int32_t)t->n++;
}

static void trie_init(trie *t) {
    memset(t, 0, sizeof *t);
    for (int i = 0; i < 256; i++)
        t->root[i] = -1;
}

static void trie_add(trie *t, const unsigned char *s, size_t n, int tok) {
    assert(n > 0);
    if (t->root[s[0]] < 0) t->root[s[0]] = trie_new_node(t, s[0]);
    int32_t cur = t->root[s[0]];
    for (size_t i = 1; i < n; i++) {
        int32_t c = t->nodes[cur].child;
        while (c >= 0 && t->nodes[c].c != s[i])
            c = t->nodes[c].sibling;
        if (c < 0) {
            c = trie_new_node(t, s[i]);
            t->nodes[c].sibling = t->nodes[cur].child;
            t->nodes[cur].child = c;
        }
        cur = c;
    }
    if (t->nodes[cur].tok < 0) t->nodes[cur].tok = tok; /* first token with this content wins */
}

/* Longest token starting at s[0]; returns its length (0 if none) and *tok. */
static size_t trie_longest(const trie *t, const unsigned char *s, size_t n, int *tok) {
    int32_t cur = t->root[s[0]];
    size_t best = 0;
    for (size_t i = 1;; i++) {
        if (cur < 0) break;
        if (t->nodes[cur].tok >= 0) {
            best = i;
            *tok = t->nodes[cur].tok;
        }
        if (i >= n) break;
        int32_t c = t->nodes[cur].child;
        while (c >= 0 && t->nodes[c].c != s[i])
            c = t->nodes[c].sibling;
        cur = c;
    }
    return best;
}

/* ---- pre-tokenizer steps ---- */

enum { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT, SPLIT_CONTIGUOUS };
enum { PT_SPLIT, PT_DIGITS, PT_BYTELEVEL };

typedef struct {
    int kind;
    pcre2_code *re; /* PT_SPLIT, and PT_BYTELEVEL with use_regex */
    int behavior, invert;
    int add_prefix_space, use_regex; /* PT_BYTELEVEL */
    int individual;                  /* PT_DIGITS */
} pt_step;

struct eng_tokenizer {
    arena_blk *arena;
    const char **id_str; /* id -> token string (added content first, like HF), NULL if unused */
    uint32_t *id_len;
    unsigned char *id_special;
    int n_ids;
    smap vocab, added_map;
    pmap merges;
    added_tok *added;
    size_t n_added;
    trie trie_raw, trie_norm; /* non-normalized / normalized added tokens */
    int has_norm_added;
    int nfc;
    pt_step *steps;
    size_t n_steps;
    int bytelevel;         /* a ByteLevel pre-tokenizer maps bytes before BPE */
    int decoder_bytelevel; /* else tokens are joined with " " (HF without a decoder) */
    int ignore_merges;
    int unk_id, fuse_unk;
    int bos, eos;
    int add_bos; /* tokenizer_config.json add_bos_token / tokenizer.ggml.add_bos_token; -1 unknown */
    char *chat_template;
    char byte_char[256][3]; /* GPT-2 byte -> UTF-8 of its character (1 or 2 bytes, NUL-terminated) */
    unsigned char byte_char_len[256];
    int16_t char_byte[0x144]; /* code point -> byte, -1 if not in the table */
    int byte_id[256];         /* vocab id of each byte's character, -1 if absent */
    pcre2_code *re_word_end, *re_word_start;
};

static int byte_printable(int b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

static uint32_t byte_codepoint(int b) {
    if (byte_printable(b)) return (uint32_t)b;
    uint32_t n = 0;
    for (int i = 0; i < b; i++)
        n += !byte_printable(i);
    return 0x100 + n;
}

int eng_tok_byte_char(int b, char out[4]) {
    assert(b >= 0 && b < 256);
    int len = eng_tok_utf8_put(byte_codepoint(b), (unsigned char *)out);
    out[len] = '\0';
    return len;
}

static void bytelevel_tables(eng_tokenizer *t) {
    for (int i = 0; i < 0x144; i++)
        t->char_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        t->byte_char_len[b] = (unsigned char)eng_tok_byte_char(b, t->byte_char[b]);
        t->char_byte[byte_codepoint(b)] = (int16_t)b;
    }
}

/* ---- regexes ---- */

/* Onig's \s (Unicode White_Space) spelled out for PCRE2. */
#define WS_ITEMS                                                                                             \
    "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{"    \
    "205F}\\x{3000}"

static char *rewrite_regex(const char *p, size_t n) {
    strbuf sb = STRBUF_INIT;
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char d = p[i + 1];
            if (d == 's') {
                sb_puts(&sb, in_class ? WS_ITEMS : "[" WS_ITEMS "]");
            } else if (d == 'S' && !in_class) {
                sb_puts(&sb, "[^" WS_ITEMS "]");
            } else {
                sb_putc(&sb, c);
                sb_putc(&sb, d);
            }
            i++;
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = 1;
            sb_putc(&sb, c);
            /* a ']' right after '[' or '[^' is a literal member */
            if (i + 1 < n && p[i + 1] == '^') sb_putc(&sb, p[++i]);
            if (i + 1 < n && p[i + 1] == ']') sb_putc(&sb, p[++i]);
            continue;
        }
        if (c == ']' && in_class) in_class = 0;
        sb_putc(&sb, c);
    }
    if (!sb.buf) sb_puts(&sb, "");
    return sb_steal(&sb);
}

static pcre2_code *compile_re(const char *pat, size_t n, int literal, const char *what, lt_err *err) {
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re;
    if (literal) {
        re = pcre2_compile((PCRE2_SPTR)pat, n, PCRE2_LITERAL | PCRE2_UTF, &ec, &eo, NULL);
    } else {
        char *rw = rewrite_regex(pat, n);
        re = pcre2_compile((PCRE2_SPTR)rw, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
        free(rw);
    }
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        lt_err_set(err, 400, "%s: cannot compile pattern \"%.*s\": %s (pattern offset %zu)", what,
                   (int)(n > 200 ? 200 : n), pat, (const char *)msg, (size_t)eo);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* best effort: the interpreter is the fallback */
    return re;
}

/* Non-overlapping matches of re in s[0..n) as (start, end) pairs appended to *m (re_find_all below; empty
 * matches are kept as the onig crate keeps them). Returns 0, or -1 with err when PCRE2 fails (resource
 * limits). */
typedef struct {
    size_t *v; /* pairs */
    size_t n, cap;
} rangev;

static void rv_push(rangev *r, size_t a, size_t b) {
    if (r->n + 2 > r->cap) {
        r->cap = r->cap ? r->cap * 2 : 64;
        r->v = realloc(r->v, r->cap * sizeof *r->v);
        if (!r->v) abort();
    }
    r->v[r->n++] = a;
    r->v[r->n++] = b;
}

static int re_find_all(const pcre2_code *re, const char *s, size_t n, rangev *m, lt_err *err) {
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    if (!md) abort();
    /* the onig crate's find_iter: empty matches count, except one right where the previous match ended */
    size_t pos = 0, last_match_end = SIZE_MAX;
    int rc = 0;
    while (pos <= n) {
        int r = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (r == PCRE2_ERROR_JIT_STACKLIMIT)
            r = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
        if (r == PCRE2_ERROR_NOMATCH) break;
        if (r < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(r, msg, sizeof msg);
            rc =
                lt_err_set(err, 500, "tokenizer: regex match failed at byte %zu: %s", pos, (const char *)msg);
            break;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t a = ov[0], b = ov[1];
        if (b == a && pos == last_match_end) {
            size_t k = 1; /* step one character (past the end when at the end) */
            while (pos + k < n && ((unsigned char)s[pos + k] & 0xC0) == 0x80)
                k++;
            pos += k;
            continue;
        }
        rv_push(m, a, b);
        pos = last_match_end = b;
    }
    pcre2_match_data_free(md);
    return rc;
}

/* ---- JSON helpers ---- */

static const char *jstr(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int jbool(json_t *o, const char *key, int def) {
    json_t *v = json_object_get(o, key);
    if (json_is_boolean(v)) return json_is_true(v);
    return def;
}

/* ---- loading ---- */

static int set_id_str(eng_tokenizer *t, int id, const char *s, size_t n, int override) {
    if (id < 0 || id >= t->n_ids) return -1;
    if (t->id_str[id] && !override) return 0;
    t->id_str[id] = s;
    t->id_len[id] = (uint32_t)n;
    return 0;
}

/* ---- model ---- */

static int add_vocab(eng_tokenizer *t, const char *k, size_t n, long long id, lt_err *err) {
    if (id < 0 || id > ENG_TOK_MAX_ID)
        return lt_err_set(err, 400, "model.vocab[\"%.80s\"]: id must be an integer in 0..%d", k,
                          ENG_TOK_MAX_ID);
    const char *s = arena_put(&t->arena, k, n);
    int old = smap_put(&t->vocab, s, n, (int)id);
    /* a repeated key: the last value wins (as jansson keeps it), so the earlier id loses this string */
    if (old >= 0 && old != id && t->id_str[old] && t->id_len[old] == n && memcmp(t->id_str[old], k, n) == 0)
        t->id_str[old] = NULL;
    set_id_str(t, (int)id, s, n, 0);
    return 0;
}

/* Splits a legacy "a b" merge. 1 = skip (a "#version" header), 0 = ok, -1 = error. */
static int split_legacy(const char *s, size_t n, size_t i, const char **a, size_t *al, const char **b,
                        size_t *bl, lt_err *err) {
    if (i == 0 && n >= 8 && strncmp(s, "#version", 8) == 0) return 1;
    const char *sp = memchr(s, ' ', n);
    if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - s)))
        return lt_err_set(err, 400,
                          "model.merges[%zu] \"%.*s\": a string merge must be two tokens separated by one "
                          "space",
                          i, (int)(n > 80 ? 80 : n), s);
    *a = s, *al = (size_t)(sp - s), *b = sp + 1, *bl = n - *al - 1;
    return 0;
}

static int add_merge(eng_tokenizer *t, size_t i, const char *a, size_t al, const char *b, size_t bl,
                     strbuf *cat, lt_err *err) {
    int ia = smap_get(&t->vocab, a, al), ib = smap_get(&t->vocab, b, bl);
    sb_reset(cat);
    sb_append(cat, a, al);
    sb_append(cat, b, bl);
    int im = smap_get(&t->vocab, cat->buf, cat->len);
    if (ia < 0 || ib < 0 || im < 0) {
        const char *miss = ia < 0 ? a : ib < 0 ? b : cat->buf;
        int ml = (int)(ia < 0 ? al : ib < 0 ? bl : cat->len);
        return lt_err_set(err, 400, "model.merges[%zu]: token \"%.*s\" is not in model.vocab", i,
                          ml > 80 ? 80 : ml, miss);
    }
    pmap_put(&t->merges, ia, ib, (int)i, im);
    return 0;
}

static int load_model(eng_tokenizer *t, json_t *model, const eng_tok_fastmodel *fm, lt_err *err) {
    const char *type = jstr(model, "type");
    if (type && strcmp(type, "BPE") != 0)
        return lt_err_set(err, 400, "model.type is \"%s\": only \"BPE\" tokenizers are supported", type);
    json_t *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges");
    if (!json_is_object(vocab)) return lt_err_set(err, 400, "model.vocab must be an object of token -> id");
    if (merges && !json_is_array(merges) && !json_is_null(merges))
        return lt_err_set(err, 400, "model.merges must be an array");
    if (jbool(model, "byte_fallback", 0))
        return lt_err_set(err, 400,
                          "model.byte_fallback is true: SentencePiece-style byte-fallback BPE (Mistral "
                          "7B) is not supported; only byte-level BPE is");
    json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout) && json_number_value(dropout) != 0.0)
        return lt_err_set(err, 400,
                          "model.dropout is set: BPE dropout is a training-time option; set it to null");
    const char *csp = jstr(model, "continuing_subword_prefix");
    const char *eows = jstr(model, "end_of_word_suffix");
    if ((csp && *csp) || (eows && *eows))
        return lt_err_set(err, 400,
                          "model.continuing_subword_prefix / end_of_word_suffix are not supported (set "
                          "them to null or \"\")");
    t->ignore_merges = jbool(model, "ignore_merges", 0);
    t->fuse_unk = jbool(model, "fuse_unk", 0);
    if (fm) {
        smap_init(&t->vocab, fm->nv);
        for (size_t i = 0; i < fm->nv; i++)
            if (add_vocab(t, fm->str.buf + fm->voff[i], fm->vlen[i], fm->vid[i], err)) return -1;
    } else {
        smap_init(&t->vocab, json_object_size(vocab));
        const char *k;
        json_t *v;
        json_object_foreach(vocab, k, v) {
            long long id = json_is_integer(v) ? (long long)json_integer_value(v) : -1;
            if (add_vocab(t, k, strlen(k), id, err)) return -1;
        }
    }
    const char *unk = jstr(model, "unk_token");
    t->unk_id = unk ? smap_get(&t->vocab, unk, strlen(unk)) : -1;
    if (unk && t->unk_id < 0)
        return lt_err_set(err, 400, "model.unk_token \"%.80s\" is not in model.vocab", unk);

    size_t nm = fm ? fm->nm : merges && json_is_array(merges) ? json_array_size(merges) : 0;
    pmap_init(&t->merges, nm);
    strbuf cat = STRBUF_INIT;
    int rc = 0;
    for (size_t i = 0; i < nm && rc == 0; i++) {
        const char *a, *b;
        size_t al, bl;
        if (fm) {
            const eng_tok_fm_merge *m = &fm->m[i];
            if (m->b == UINT32_MAX) {
                int r = split_legacy(fm->str.buf + m->a, m->al, i, &a, &al, &b, &bl, err);
                if (r) {
                    rc = r < 0 ? -1 : 0;
                    continue;
                }
            } else {
                a = fm->str.buf + m->a, al = m->al, b = fm->str.buf + m->b, bl = m->bl;
            }
        } else {
            json_t *m = json_array_get(merges, i);
            if (json_is_string(m)) {
                int r = split_legacy(json_string_value(m), json_string_length(m), i, &a, &al, &b, &bl, err);
                if (r) {
                    rc = r < 0 ? -1 : 0;
                    continue;
                }
            } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                       json_is_string(json_array_get(m, 1))) {
                a = json_string_value(json_array_get(m, 0));
                b = json_string_value(json_array_get(m, 1));
                al = json_string_length(json_array_get(m, 0)), bl = json_string_length(json_array_get(m, 1));
            } else {
                rc = lt_err_set(err, 400, "model.merges[%zu]: each merge must be \"a b\" or [\"a\", \"b\"]",
                                i);
                continue;
            }
        }
        rc = add_merge(t, i, a, al, b, bl, &cat, err);
    }
    sb_free(&cat);
    return rc;
}

static int load_added(eng_tokenizer *t, json_t *arr, lt_err *err) {
    size_t n = json_array_size(arr);
    t->added = calloc(n ? n : 1, sizeof *t->added);
    if (!t->added) abort();
    smap_init(&t->added_map, n);
    trie_init(&t->trie_raw);
    trie_init(&t->trie_norm);
    for (size_t i = 0; i < n; i++) {
        json_t *a = json_array_get(arr, i);
        const char *content = jstr(a, "content");
        json_t *idv = json_object_get(a, "id");
        if (!json_is_object(a) || !content || !json_is_integer(idv))
            return lt_err_set(err, 400, "added_tokens[%zu]: needs a string \"content\" and an integer \"id\"",
                              i);
        json_int_t id = json_integer_value(idv);
        if (id < 0 || id >= t->n_ids)
            return lt_err_set(err, 400, "added_tokens[%zu]: id %lld is out of range", i, (long long)id);
        size_t len = strlen(content);
        if (len == 0) continue; /* HF ignores empty added tokens */
        added_tok *at = &t->added[t->n_added];
        at->content = arena_put(&t->arena, content, len);
        at->len = len;
        at->id = (int)id;
        at->special = jbool(a, "special", 0);
        at->lstrip = jbool(a, "lstrip", 0);
        at->rstrip = jbool(a, "rstrip", 0);
        at->single_word = jbool(a, "single_word", 0);
        at->normalized = jbool(a, "normalized", !at->special);
        smap_put(&t->added_map, at->content, len, (int)id);
        set_id_str(t, (int)id, at->content, len, 1);
        if (at->special) t->id_special[id] = 1;
        t->n_added++;
    }
    return 0;
}

static void build_tries(eng_tokenizer *t) {
    /* HF orders special tokens before the others; with leftmost-longest only equal contents can tie */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < t->n_added; i++) {
            added_tok *a = &t->added[i];
            if ((int)a->special != (pass == 0)) continue;
            if (!a->normalized) {
                trie_add(&t->trie_raw, (const unsigned char *)a->content, a->len, (int)i);
            } else {
                size_t nl;
                char *nc = t->nfc ? eng_tok_nfc(a->content, a->len, &nl) : lt_strndup(a->content, a->len);
                if (!t->nfc) nl = a->len;
                if (nl) trie_add(&t->trie_norm, (const unsigned char *)nc, nl, (int)i);
                free(nc);
                t->has_norm_added = 1;
            }
        }
    }
}

static int load_normalizer(eng_tokenizer *t, json_t *n, const char *where, lt_err *err) {
    if (!n || json_is_null(n)) return 0;
    const char *type = jstr(n, "type");
    if (!type) return lt_err_set(err, 400, "%s: missing \"type\"", where);
    if (strcmp(type, "NFC") == 0) {
        t->nfc = 1;
        return 0;
    }
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(n, "normalizers");
        if (!json_is_array(list)) return lt_err_set(err, 400, "%s.normalizers must be an array", where);
        for (size_t i = 0; i < json_array_size(list); i++) {
            char w[96];
            snprintf(w, sizeof w, "%s.normalizers[%zu]", where, i);
            if (load_normalizer(t, json_array_get(list, i), w, err)) return -1;
        }
        return 0;
    }
    return lt_err_set(err, 400, "%s: normalizer type \"%s\" is not supported (supported: NFC, Sequence)",
                      where, type);
}

static const char *GPT2_RE =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int add_step(eng_tokenizer *t, pt_step st) {
    t->steps = realloc(t->steps, (t->n_steps + 1) * sizeof *t->steps);
    if (!t->steps) abort();
    t->steps[t->n_steps++] = st;
    return 0;
}

static int load_pretok(eng_tokenizer *t, json_t *p, const char *where, lt_err *err) {
    if (!p || json_is_null(p)) return 0;
    const char *type = jstr(p, "type");
    if (!type) return lt_err_set(err, 400, "%s: missing \"type\"", where);
    if (t->bytelevel)
        return lt_err_set(err, 400,
                          "%s: a \"%s\" step after ByteLevel is not supported (ByteLevel must be last)",
                          where, type);
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(p, "pretokenizers");
        if (!json_is_array(list)) return lt_err_set(err, 400, "%s.pretokenizers must be an array", where);
        for (size_t i = 0; i < json_array_size(list); i++) {
            char w[96];
            snprintf(w, sizeof w, "%s.pretokenizers[%zu]", where, i);
            if (load_pretok(t, json_array_get(list, i), w, err)) return -1;
        }
        return 0;
    }
    pt_step st = {0};
    if (strcmp(type, "Split") == 0) {
        json_t *pat = json_object_get(p, "pattern");
        const char *re = jstr(pat, "Regex"), *lit = jstr(pat, "String");
        if (!re && !lit)
            return lt_err_set(err, 400, "%s.pattern must be {\"Regex\": \"...\"} or {\"String\": \"...\"}",
                              where);
        const char *b = jstr(p, "behavior");
        static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                      "Contiguous"};
        st.behavior = -1;
        for (int i = 0; i < 5; i++)
            if (b && strcmp(b, names[i]) == 0) st.behavior = i;
        if (st.behavior < 0)
            return lt_err_set(err, 400,
                              "%s.behavior \"%s\" is not one of Removed, Isolated, MergedWithPrevious, "
                              "MergedWithNext, Contiguous",
                              where, b ? b : "(missing)");
        st.kind = PT_SPLIT;
        st.invert = jbool(p, "invert", 0);
        char w[128];
        snprintf(w, sizeof w, "%s.pattern", where);
        st.re = re ? compile_re(re, strlen(re), 0, w, err) : compile_re(lit, strlen(lit), 1, w, err);
        if (!st.re) return -1;
        return add_step(t, st);
    }
    if (strcmp(type, "Digits") == 0) {
        st.kind = PT_DIGITS;
        st.individual = jbool(p, "individual_digits", 0);
        st.re =
            compile_re("\\p{N}", 5, 0, where, err); /* Rust char::is_numeric: Nd, Nl, No; one char a match */
        if (!st.re) return -1;
        return add_step(t, st);
    }
    if (strcmp(type, "ByteLevel") == 0) {
        st.kind = PT_BYTELEVEL;
        st.add_prefix_space = jbool(p, "add_prefix_space", 1);
        st.use_regex = jbool(p, "use_regex", 1);
        if (st.use_regex) {
            st.re = compile_re(GPT2_RE, strlen(GPT2_RE), 0, where, err);
            if (!st.re) return -1;
        }
        t->bytelevel = 1;
        return add_step(t, st);
    }
    return lt_err_set(err, 400,
                      "%s: pre-tokenizer type \"%s\" is not supported (supported: Sequence, Split, Digits, "
                      "ByteLevel)",
                      where, type);
}

static int load_decoder(eng_tokenizer *t, json_t *d, lt_err *err) {
    if (!d || json_is_null(d)) return 0;
    const char *type = jstr(d, "type");
    if (type && strcmp(type, "ByteLevel") == 0) {
        t->decoder_bytelevel = 1;
        return 0;
    }
    return lt_err_set(err, 400, "decoder: type \"%s\" is not supported (supported: ByteLevel, null)",
                      type ? type : "(missing)");
}

static int token_from_config(const eng_tokenizer *t, json_t *cfg, const char *key) {
    json_t *v = json_object_get(cfg, key);
    const char *s = json_is_string(v) ? json_string_value(v) : jstr(v, "content");
    return s ? eng_tok_token_id(t, s) : -1;
}

/* The first of names that is an added token (plain vocab entries such as "<s>" in a BPE vocab do not count).
 */
static int first_known(const eng_tokenizer *t, const char *const *names) {
    for (; *names; names++) {
        int id = smap_get(&t->added_map, *names, strlen(*names));
        if (id >= 0) return id;
    }
    return -1;
}

static int post_processor_bos(const eng_tokenizer *t, json_t *pp) {
    json_t *single = json_object_get(pp, "single");
    json_t *first = json_array_get(single, 0);
    json_t *sp = json_object_get(first, "SpecialToken");
    const char *id = jstr(sp, "id");
    if (id) return eng_tok_token_id(t, id);
    json_t *list = json_object_get(pp, "processors");
    for (size_t i = 0; i < json_array_size(list); i++) {
        int b = post_processor_bos(t, json_array_get(list, i));
        if (b >= 0) return b;
    }
    return -1;
}

/* bos/eos: tokenizer_config.json decides when it names them (null there means "none"); otherwise the
 * post-processor's leading special token and well-known added-token names. */
static void load_config(eng_tokenizer *t, const char *dir, json_t *tj) {
    json_t *cfg = NULL;
    if (dir) {
        char *path = lt_path_join(dir, "tokenizer_config.json");
        cfg = json_load_file(path, JSON_DECODE_INT_AS_REAL, NULL); /* model_max_length can exceed int64 */
        free(path);
    }
    int bos_set = 0, eos_set = 0;
    t->bos = t->eos = -1;
    t->add_bos = -1;
    if (json_is_object(cfg)) {
        json_t *ab = json_object_get(cfg, "add_bos_token");
        if (json_is_boolean(ab)) t->add_bos = json_is_true(ab);
        bos_set = json_object_get(cfg, "bos_token") != NULL;
        eos_set = json_object_get(cfg, "eos_token") != NULL;
        t->bos = token_from_config(t, cfg, "bos_token");
        t->eos = token_from_config(t, cfg, "eos_token");
        const char *tpl = jstr(cfg, "chat_template");
        if (tpl) t->chat_template = lt_strdup(tpl);
    }
    json_decref(cfg);
    static const char *const bos_names[] = {"<|begin_of_text|>", "<s>", NULL};
    static const char *const eos_names[] = {"<|end_of_text|>", "<|endoftext|>", "</s>", NULL};
    if (!bos_set && t->bos < 0) t->bos = post_processor_bos(t, json_object_get(tj, "post_processor"));
    if (!bos_set && t->bos < 0) t->bos = first_known(t, bos_names);
    if (!eos_set && t->eos < 0) t->eos = first_known(t, eos_names);
}

static int max_id_of(json_t *root, const eng_tok_fastmodel *fm) {
    int mx = -1;
    for (size_t i = 0; fm && i < fm->nv; i++)
        if (fm->vid[i] > mx) mx = fm->vid[i];
    json_t *vocab = json_object_get(json_object_get(root, "model"), "vocab");
    const char *k;
    json_t *v;
    json_object_foreach(vocab, k, v) {
        if (json_is_integer(v) && json_integer_value(v) > mx && json_integer_value(v) <= ENG_TOK_MAX_ID)
            mx = (int)json_integer_value(v);
    }
    json_t *added = json_object_get(root, "added_tokens");
    for (size_t i = 0; i < json_array_size(added); i++) {
        json_t *id = json_object_get(json_array_get(added, i), "id");
        if (json_is_integer(id) && json_integer_value(id) > mx && json_integer_value(id) <= ENG_TOK_MAX_ID)
            mx = (int)json_integer_value(id);
    }
    return mx;
}

static int load_json(eng_tokenizer *t, const char *text, size_t len, const char *dir, int fast, lt_err *err) {
    json_error_t je;
    eng_tok_fastmodel fmd, *fm = NULL;
    json_t *root = NULL;
    if (fast && eng_tok_fast_scan(text, len, &fmd) == 0) {
        size_t sl;
        char *rest = eng_tok_fm_strip(text, len, &fmd, &sl);
        root = json_loadb(rest, sl, 0, &je);
        free(rest);
        if (root) {
            fm = &fmd;
        } else {
            eng_tok_fm_free(&fmd); /* the rest is malformed: report it against the original text below */
        }
    }
    if (!root) root = json_loadb(text, len, 0, &je);
    if (!root)
        return lt_err_set(err, 400, "invalid JSON at line %d column %d: %s", je.line, je.column, je.text);
    int rc = -1;
    if (!json_is_object(root)) {
        lt_err_set(err, 400, "the top level must be an object with \"model\", \"added_tokens\", ...");
        goto out;
    }
    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model)) {
        lt_err_set(err, 400, "missing \"model\" object");
        goto out;
    }
    json_t *added = json_object_get(root, "added_tokens");
    if (added && !json_is_array(added) && !json_is_null(added)) {
        lt_err_set(err, 400, "\"added_tokens\" must be an array");
        goto out;
    }
    if (!json_is_object(json_object_get(model, "vocab"))) {
        lt_err_set(err, 400, "model.vocab must be an object of token -> id");
        goto out;
    }
    t->n_ids = max_id_of(root, fm) + 1;
    if (t->n_ids <= 0 && json_object_size(json_object_get(model, "vocab")) == 0 && (!fm || fm->nv == 0)) {
        lt_err_set(err, 400, "model.vocab is empty");
        goto out;
    }
    if (t->n_ids <= 0) t->n_ids = 1; /* only invalid ids: load_model names the first one */
    t->id_str = calloc((size_t)t->n_ids, sizeof *t->id_str);
    t->id_len = calloc((size_t)t->n_ids, sizeof *t->id_len);
    t->id_special = calloc((size_t)t->n_ids, 1);
    if (!t->id_str || !t->id_len || !t->id_special) abort();
    if (load_model(t, model, fm, err)) goto out;
    if (load_normalizer(t, json_object_get(root, "normalizer"), "normalizer", err)) goto out;
    if (load_added(t, added, err)) goto out;
    build_tries(t);
    if (load_pretok(t, json_object_get(root, "pre_tokenizer"), "pre_tokenizer", err)) goto out;
    if (load_decoder(t, json_object_get(root, "decoder"), err)) goto out;
    /* word-boundary tests for single_word added tokens (Rust regex \w) */
    t->re_word_end = compile_re("\\w$", 3, 0, "internal", err);
    t->re_word_start = compile_re("^\\w", 3, 0, "internal", err);
    if (!t->re_word_end || !t->re_word_start) goto out;
    load_config(t, dir, root);
    for (int b = 0; b < 256; b++)
        t->byte_id[b] = smap_get(&t->vocab, t->byte_char[b], t->byte_char_len[b]);
    while (t->n_ids > 1 && !t->id_str[t->n_ids - 1])
        t->n_ids--; /* ids dropped by repeated vocab keys */
    rc = 0;
out:
    if (fm) eng_tok_fm_free(fm);
    json_decref(root);
    return rc;
}

/* 1 if path starts with the GGUF magic. */
static int is_gguf(const char *path) {
    char m[4] = {0};
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t n = fread(m, 1, 4, f);
    fclose(f);
    return n == 4 && memcmp(m, "GGUF", 4) == 0;
}

eng_tokenizer *eng_tok_load(const char *path, lt_err *err) {
    struct stat st;
    if (!path || stat(path, &st) != 0) {
        lt_err_set(err, 404, "%s: %s", path ? path : "(null)", strerror(errno));
        return NULL;
    }
    if (!S_ISDIR(st.st_mode) && is_gguf(path)) return eng_tok_load_gguf_path(path, err);
    char *file = S_ISDIR(st.st_mode) ? lt_path_join(path, "tokenizer.json") : lt_strdup(path);
    char *dir = lt_strdup(file);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        strcpy(dir, ".");
    size_t len;
    char *text = lt_read_file(file, &len, err);
    if (!text) {
        if (err && err->code == 404 && S_ISDIR(st.st_mode))
            lt_err_set(err, 404, "%s: no tokenizer.json in this model directory", path);
        free(file);
        free(dir);
        return NULL;
    }
    eng_tokenizer *t = calloc(1, sizeof *t);
    if (!t) abort();
    bytelevel_tables(t);
    if (load_json(t, text, len, dir, 1, err)) {
        lt_err_prefix(err, "%s: ", file);
        eng_tok_free(t);
        t = NULL;
    }
    free(text);
    free(file);
    free(dir);
    return t;
}

eng_tokenizer *eng_tok_load_mem(const char *json, size_t len, lt_err *err) {
    return eng_tok_load_mem_path(json, len, 1, err);
}

eng_tokenizer *eng_tok_load_mem_path(const char *json, size_t len, int fast, lt_err *err) {
    eng_tokenizer *t = calloc(1, sizeof *t);
    if (!t) abort();
    bytelevel_tables(t);
    if (load_json(t, json, len, NULL, fast, err)) {
        lt_err_prefix(err, "tokenizer.json: ");
        eng_tok_free(t);
        return NULL;
    }
    return t;
}

void eng_tok_free(eng_tokenizer *t) {
    if (!t) return;
    arena_free(t->arena);
    free(t->id_str);
    free(t->id_len);
    free(t->id_special);
    smap_free(&t->vocab);
    smap_free(&t->added_map);
    free(t->merges.slots);
    free(t->added);
    free(t->trie_raw.nodes);
    free(t->trie_norm.nodes);
    for (size_t i = 0; i < t->n_steps; i++)
        pcre2_code_free(t->steps[i].re);
    free(t->steps);
    pcre2_code_free(t->re_word_end);
    pcre2_code_free(t->re_word_start);
    free(t->chat_template);
    free(t);
}

/* ---- accessors ---- */

int eng_tok_vocab_size(const eng_tokenizer *t) {
    return t->n_ids;
}

int eng_tok_token_id(const eng_tokenizer *t, const char *s) {
    if (!s) return -1;
    size_t n = strlen(s);
    int id = smap_get(&t->added_map, s, n);
    return id >= 0 ? id : smap_get(&t->vocab, s, n);
}

const char *eng_tok_id_to_token(const eng_tokenizer *t, int id) {
    return id >= 0 && id < t->n_ids ? t->id_str[id] : NULL;
}

int eng_tok_is_special(const eng_tokenizer *t, int id) {
    return id >= 0 && id < t->n_ids && t->id_special[id];
}

int eng_tok_bos_id(const eng_tokenizer *t) {
    return t->bos;
}

int eng_tok_eos_id(const eng_tokenizer *t) {
    return t->eos;
}

int eng_tok_has_nfc(const eng_tokenizer *t) {
    return t->nfc;
}

const char *eng_tok_chat_template(const eng_tokenizer *t) {
    return t->chat_template;
}

int eng_tok_add_bos(const eng_tokenizer *t) {
    return t->add_bos;
}

void eng_tok_set_file_meta(eng_tokenizer *t, int bos, int eos, int add_bos, const char *tpl, size_t tpl_len) {
    if (bos >= 0 && bos < t->n_ids) t->bos = bos;
    if (eos >= 0 && eos < t->n_ids) t->eos = eos;
    t->add_bos = add_bos;
    if (tpl) {
        free(t->chat_template);
        t->chat_template = lt_strndup(tpl, tpl_len);
    }
}

/* ---- encoding ---- */

typedef struct {
    int *v;
    size_t n, cap;
} ivec;

static void iv_push(ivec *v, int x) {
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 64;
        v->v = realloc(v->v, v->cap * sizeof *v->v);
        if (!v->v) abort();
    }
    v->v[v->n++] = x;
}

typedef struct {
    size_t off, len;
} span;

typedef struct {
    span *v;
    size_t n, cap;
} spanv;

static void sp_push(spanv *s, size_t off, size_t len) {
    if (len == 0) return; /* HF drops empty splits */
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 64;
        s->v = realloc(s->v, s->cap * sizeof *s->v);
        if (!s->v) abort();
    }
    s->v[s->n++] = (span){off, len};
}

typedef struct {
    const eng_tokenizer *t;
    int allow_special;
    ivec out;
    strbuf ws;       /* pre-tokenizer working bytes; spans index into it */
    spanv cur, next; /* pre-token spans */
    rangev m;        /* regex matches */
    size_t *flags;   /* scratch: is_match per range */
    size_t flags_cap;
    strbuf word; /* byte-level mapped pre-token */
    int *sym_id, *sym_prev, *sym_next;
    size_t sym_cap;
    struct heap_ent {
        int rank, pos, id;
    } * heap;
    size_t heap_cap;
    lt_err *err;
} enc_ctx;

static int is_white_space(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}

/* Start of the run of white space ending at s[n] (Rust regex \s*$). */
static size_t ws_run_start(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = n;
    while (i > 0) {
        size_t j = i - 1;
        while (j > 0 && (u[j] & 0xC0) == 0x80)
            j--;
        uint32_t cp;
        if (!eng_tok_utf8_next(u + j, i - j, &cp) || !is_white_space(cp)) break;
        i = j;
    }
    return i;
}

/* Length of the run of white space at the start of s (Rust regex ^\s*). */
static size_t ws_run_len(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        int k = eng_tok_utf8_next(u + i, n - i, &cp);
        if (!k || !is_white_space(cp)) break;
        i += (size_t)k;
    }
    return i;
}

static int re_hit(const pcre2_code *re, const char *s, size_t n) {
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    if (!md) abort();
    int r = pcre2_match(re, (PCRE2_SPTR)s, n, 0, PCRE2_NO_UTF_CHECK, md, NULL);
    pcre2_match_data_free(md);
    return r >= 0;
}

/* The added-token pass (added_vocabulary.rs: find_matches). Gaps go to `gap`, tokens to ctx->out. */
typedef int (*gap_fn)(enc_ctx *c, const char *s, size_t n);

static int added_pass(enc_ctx *c, const trie *tr, const char *s, size_t n, gap_fn gap) {
    const eng_tokenizer *t = c->t;
    size_t start_offset = 0, i = 0;
    while (i < n) {
        int k = -1;
        size_t L = tr->n ? trie_longest(tr, (const unsigned char *)s + i, n - i, &k) : 0;
        if (L == 0) {
            i++;
            continue;
        }
        const added_tok *a = &t->added[k];
        size_t start = i, stop = i + L;
        i = stop;
        if (a->special && !c->allow_special) continue;
        if (a->single_word) {
            int start_space = start == 0 || !re_hit(t->re_word_end, s, start);
            int stop_space = stop == n || !re_hit(t->re_word_start, s + stop, n - stop);
            if (!start_space || !stop_space) continue;
        }
        if (a->lstrip) {
            size_t ns = ws_run_start(s, start);
            start = ns > start_offset ? ns : start_offset;
        }
        if (a->rstrip) stop += ws_run_len(s + stop, n - stop);
        if (start_offset < start && gap(c, s + start_offset, start - start_offset)) return -1;
        iv_push(&c->out, a->id);
        start_offset = stop;
    }
    if (start_offset < n && gap(c, s + start_offset, n - start_offset)) return -1;
    return 0;
}

/* Applies invert + a split behavior to ranges (relative to a piece at base) and pushes the result. */
static void apply_behavior(enc_ctx *c, size_t base, size_t plen, int behavior, int invert) {
    /* build (start, end, is_match) covering the piece, from the match pairs in c->m */
    size_t nm = c->m.n / 2, cap = nm * 2 + 2;
    if (c->flags_cap < cap * 5) {
        c->flags_cap = cap * 5;
        c->flags = realloc(c->flags, c->flags_cap * sizeof *c->flags);
        if (!c->flags) abort();
    }
    size_t *r = c->flags, nr = 0, prev = 0;
    for (size_t k = 0; k < nm; k++) {
        size_t a = c->m.v[2 * k], b = c->m.v[2 * k + 1];
        if (prev != a) r[3 * nr] = prev, r[3 * nr + 1] = a, r[3 * nr + 2] = 0, nr++;
        r[3 * nr] = a, r[3 * nr + 1] = b, r[3 * nr + 2] = 1, nr++;
        prev = b;
    }
    if (prev != plen || nr == 0) r[3 * nr] = prev, r[3 * nr + 1] = plen, r[3 * nr + 2] = 0, nr++;
    if (invert)
        for (size_t k = 0; k < nr; k++)
            r[3 * k + 2] = !r[3 * k + 2];
    /* fold into output pieces (split.rs / normalizer.rs: split) */
    int prev_match = 0;
    switch (behavior) {
    case SPLIT_REMOVED:
        for (size_t k = 0; k < nr; k++)
            if (!r[3 * k + 2]) sp_push(&c->next, base + r[3 * k], r[3 * k + 1] - r[3 * k]);
        return;
    case SPLIT_ISOLATED:
        for (size_t k = 0; k < nr; k++)
            sp_push(&c->next, base + r[3 * k], r[3 * k + 1] - r[3 * k]);
        return;
    default:
        break;
    }
    /* the merging behaviors work on (start, end) pairs that may be empty until the final filter */
    size_t *o = r + 3 * nr, no = 0; /* output pairs after the input triples (cap*5 covers both) */
    if (behavior == SPLIT_MERGED_PREV) {
        for (size_t k = 0; k < nr; k++) {
            int m = (int)r[3 * k + 2];
            if (m && !prev_match && no > 0)
                o[2 * no - 1] = r[3 * k + 1];
            else
                o[2 * no] = r[3 * k], o[2 * no + 1] = r[3 * k + 1], no++;
            prev_match = m;
        }
    } else if (behavior == SPLIT_MERGED_NEXT) {
        for (size_t kk = nr; kk-- > 0;) {
            int m = (int)r[3 * kk + 2];
            if (m && !prev_match && no > 0)
                o[2 * no - 2] = r[3 * kk];
            else
                o[2 * no] = r[3 * kk], o[2 * no + 1] = r[3 * kk + 1], no++;
            prev_match = m;
        }
        for (size_t a = 0, b = no ? no - 1 : 0; a < b; a++, b--) {
            size_t x0 = o[2 * a], x1 = o[2 * a + 1];
            o[2 * a] = o[2 * b], o[2 * a + 1] = o[2 * b + 1];
            o[2 * b] = x0, o[2 * b + 1] = x1;
        }
    } else { /* SPLIT_CONTIGUOUS */
        for (size_t k = 0; k < nr; k++) {
            int m = (int)r[3 * k + 2];
            if (m == prev_match && no > 0)
                o[2 * no - 1] = r[3 * k + 1];
            else
                o[2 * no] = r[3 * k], o[2 * no + 1] = r[3 * k + 1], no++;
            prev_match = m;
        }
    }
    for (size_t k = 0; k < no; k++)
        sp_push(&c->next, base + o[2 * k], o[2 * k + 1] - o[2 * k]);
}

static void bpe_word(enc_ctx *c, const char *w, size_t n, const unsigned char *raw);

static int run_pretok(enc_ctx *c, const char *s, size_t n) {
    const eng_tokenizer *t = c->t;
    sb_reset(&c->ws);
    sb_append(&c->ws, s, n);
    c->cur.n = 0;
    sp_push(&c->cur, 0, n);
    for (size_t si = 0; si < t->n_steps; si++) {
        const pt_step *st = &t->steps[si];
        c->next.n = 0;
        for (size_t p = 0; p < c->cur.n; p++) {
            span sp = c->cur.v[p];
            c->m.n = 0;
            if (st->kind == PT_SPLIT) {
                if (re_find_all(st->re, c->ws.buf + sp.off, sp.len, &c->m, c->err)) return -1;
                apply_behavior(c, sp.off, sp.len, st->behavior, st->invert);
            } else if (st->kind == PT_DIGITS) {
                if (re_find_all(st->re, c->ws.buf + sp.off, sp.len, &c->m, c->err)) return -1;
                apply_behavior(c, sp.off, sp.len, st->individual ? SPLIT_ISOLATED : SPLIT_CONTIGUOUS, 0);
            } else { /* PT_BYTELEVEL */
                if (st->add_prefix_space && c->ws.buf[sp.off] != ' ') {
                    sb_reserve(&c->ws, sp.len + 2);
                    size_t off = c->ws.len;
                    c->ws.buf[off] = ' ';
                    memcpy(c->ws.buf + off + 1, c->ws.buf + sp.off, sp.len);
                    c->ws.len += sp.len + 1;
                    c->ws.buf[c->ws.len] = '\0';
                    sp = (span){off, sp.len + 1};
                }
                if (st->use_regex) {
                    if (re_find_all(st->re, c->ws.buf + sp.off, sp.len, &c->m, c->err)) return -1;
                    apply_behavior(c, sp.off, sp.len, SPLIT_ISOLATED, 0);
                } else {
                    sp_push(&c->next, sp.off, sp.len);
                }
            }
        }
        spanv tmp = c->cur;
        c->cur = c->next;
        c->next = tmp;
    }
    for (size_t p = 0; p < c->cur.n; p++) {
        const char *b = c->ws.buf + c->cur.v[p].off;
        size_t len = c->cur.v[p].len;
        if (t->bytelevel) {
            /* the mapped word is only needed for the whole-word lookup of ignore_merges */
            sb_reset(&c->word);
            if (t->ignore_merges) {
                sb_reserve(&c->word, len * 2 + 1);
                for (size_t k = 0; k < len; k++) {
                    unsigned char ch = (unsigned char)b[k];
                    memcpy(c->word.buf + c->word.len, t->byte_char[ch], t->byte_char_len[ch]);
                    c->word.len += t->byte_char_len[ch];
                }
                c->word.buf[c->word.len] = '\0';
            }
            bpe_word(c, c->word.buf, len, (const unsigned char *)b);
        } else {
            bpe_word(c, b, len, NULL);
        }
    }
    return 0;
}

static int normalized_gap(enc_ctx *c, const char *s, size_t n) {
    return run_pretok(c, s, n);
}

static int raw_gap(enc_ctx *c, const char *s, size_t n) {
    const eng_tokenizer *t = c->t;
    if (!t->nfc && !t->has_norm_added) return run_pretok(c, s, n);
    size_t nl = n;
    char *norm = t->nfc ? eng_tok_nfc(s, n, &nl) : lt_strndup(s, n);
    int rc =
        t->has_norm_added ? added_pass(c, &t->trie_norm, norm, nl, normalized_gap) : run_pretok(c, norm, nl);
    free(norm);
    return rc;
}

/* heap ordered by (rank, pos) ascending */
static int heap_less(const struct heap_ent *a, const struct heap_ent *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(enc_ctx *c, size_t *hn, int rank, int pos, int id) {
    if (*hn == c->heap_cap) {
        c->heap_cap = c->heap_cap ? c->heap_cap * 2 : 64;
        c->heap = realloc(c->heap, c->heap_cap * sizeof *c->heap);
        if (!c->heap) abort();
    }
    size_t i = (*hn)++;
    c->heap[i] = (struct heap_ent){rank, pos, id};
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&c->heap[i], &c->heap[p])) break;
        struct heap_ent x = c->heap[i];
        c->heap[i] = c->heap[p];
        c->heap[p] = x;
        i = p;
    }
}

static struct heap_ent heap_pop(enc_ctx *c, size_t *hn) {
    struct heap_ent top = c->heap[0];
    c->heap[0] = c->heap[--(*hn)];
    size_t i = 0, n = *hn;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && heap_less(&c->heap[l], &c->heap[m])) m = l;
        if (r < n && heap_less(&c->heap[r], &c->heap[m])) m = r;
        if (m == i) break;
        struct heap_ent x = c->heap[i];
        c->heap[i] = c->heap[m];
        c->heap[m] = x;
        i = m;
    }
    return top;
}

/* BPE of one pre-token: w[0..n) as text, or, for byte-level tokenizers, raw[0..n) as bytes (each byte is one
 * symbol of the byte alphabet; w then holds the mapped word when ignore_merges needs it). */
static void bpe_word(enc_ctx *c, const char *w, size_t n, const unsigned char *raw) {
    const eng_tokenizer *t = c->t;
    if (n == 0) return;
    if (t->ignore_merges) {
        int id = smap_get(&t->vocab, w, raw ? c->word.len : n);
        if (id >= 0) {
            iv_push(&c->out, id);
            return;
        }
    }
    if (c->sym_cap < n) {
        c->sym_cap = n;
        c->sym_id = realloc(c->sym_id, n * sizeof(int));
        c->sym_prev = realloc(c->sym_prev, n * sizeof(int));
        c->sym_next = realloc(c->sym_next, n * sizeof(int));
        if (!c->sym_id || !c->sym_prev || !c->sym_next) abort();
    }
    int ns = 0, prev_unk = 0;
    const unsigned char *u = (const unsigned char *)w;
    for (size_t i = 0; i < n;) {
        int id;
        if (raw) {
            id = t->byte_id[raw[i++]];
        } else {
            uint32_t cp;
            int k = eng_tok_utf8_next(u + i, n - i, &cp);
            if (k == 0) k = 1; /* not reached: pieces are valid UTF-8 */
            id = smap_get(&t->vocab, w + i, (size_t)k);
            i += (size_t)k;
        }
        if (id < 0) {
            if (t->unk_id < 0) continue; /* HF drops characters it cannot represent */
            if (prev_unk && t->fuse_unk) continue;
            id = t->unk_id;
            prev_unk = 1;
        } else {
            prev_unk = 0;
        }
        c->sym_id[ns] = id;
        c->sym_prev[ns] = ns - 1;
        c->sym_next[ns] = ns + 1;
        ns++;
    }
    if (ns == 0) return;
    c->sym_next[ns - 1] = -1;
    size_t hn = 0;
    for (int i = 0; i + 1 < ns; i++) {
        const pmap_ent *e = pmap_get(&t->merges, c->sym_id[i], c->sym_id[i + 1]);
        if (e) heap_push(c, &hn, e->rank, i, e->id);
    }
    /* sym_id[i] = -1 marks a symbol merged into its left neighbor */
    while (hn) {
        struct heap_ent top = heap_pop(c, &hn);
        int pos = top.pos;
        if (c->sym_id[pos] < 0) continue;
        int nx = c->sym_next[pos];
        if (nx < 0) continue;
        const pmap_ent *e = pmap_get(&t->merges, c->sym_id[pos], c->sym_id[nx]);
        if (!e || e->id != top.id) continue; /* stale */
        c->sym_id[pos] = top.id;
        c->sym_id[nx] = -1;
        int nn = c->sym_next[nx];
        c->sym_next[pos] = nn;
        if (nn >= 0) c->sym_prev[nn] = pos;
        int pv = c->sym_prev[pos];
        if (pv >= 0) {
            e = pmap_get(&t->merges, c->sym_id[pv], c->sym_id[pos]);
            if (e) heap_push(c, &hn, e->rank, pv, e->id);
        }
        if (nn >= 0) {
            e = pmap_get(&t->merges, c->sym_id[pos], c->sym_id[nn]);
            if (e) heap_push(c, &hn, e->rank, pos, e->id);
        }
    }
    for (int i = 0; i >= 0; i = c->sym_next[i])
        iv_push(&c->out, c->sym_id[i]);
}

int eng_tok_encode(const eng_tokenizer *t, const char *text, size_t len, int allow_special, int **ids,
                   size_t *n, lt_err *err) {
    *ids = NULL;
    *n = 0;
    size_t bad = eng_tok_utf8_invalid_at(text, len);
    if (bad < len)
        return lt_err_set(err, 400, "text is not valid UTF-8 (byte 0x%02X at offset %zu); send UTF-8 text",
                          (unsigned char)text[bad], bad);
    enc_ctx c = {.t = t, .allow_special = allow_special, .err = err};
    int rc = added_pass(&c, &t->trie_raw, text, len, raw_gap);
    sb_free(&c.ws);
    sb_free(&c.word);
    free(c.cur.v);
    free(c.next.v);
    free(c.m.v);
    free(c.flags);
    free(c.sym_id);
    free(c.sym_prev);
    free(c.sym_next);
    free(c.heap);
    if (rc) {
        free(c.out.v);
        return -1;
    }
    *ids = c.out.v;
    *n = c.out.n;
    return 0;
}

/* ---- decoding ---- */

/* Appends the bytes token id stands for (ByteLevel decoder rule: the inverse table when every character is in
 * it, else the raw UTF-8 of the token string). */
static void token_bytes_sb(const eng_tokenizer *t, int id, strbuf *sb) {
    const char *s = t->id_str[id];
    size_t n = t->id_len[id];
    if (!t->decoder_bytelevel) {
        sb_append(sb, s, n);
        return;
    }
    size_t mark = sb->len;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int k = eng_tok_utf8_next(u + i, n - i, &cp);
        if (k == 0 || cp >= 0x144 || t->char_byte[cp] < 0) {
            sb->len = mark;
            sb_append(sb, s, n);
            return;
        }
        sb_putc(sb, (char)t->char_byte[cp]);
        i += (size_t)k;
    }
}

size_t eng_tok_token_bytes(const eng_tokenizer *t, int id, char *buf, size_t cap) {
    if (id < 0 || id >= t->n_ids || !t->id_str[id]) return 0;
    strbuf sb = STRBUF_INIT;
    token_bytes_sb(t, id, &sb);
    size_t n = sb.len;
    if (cap) memcpy(buf, sb.buf, n < cap ? n : cap);
    sb_free(&sb);
    return n;
}

/* Length of the maximal invalid subsequence at s (Rust's Utf8Error::error_len; always >= 1). */
static size_t invalid_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    unsigned char lo = 0x80, hi = 0xBF;
    size_t need;
    if (c >= 0xC2 && c <= 0xDF)
        need = 1;
    else if (c >= 0xE0 && c <= 0xEF)
        need = 2, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4)
        need = 3, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else
        return 1;
    if (n < 2 || s[1] < lo || s[1] > hi) return 1;
    size_t i = 2;
    while (i <= need && i < n && (s[i] & 0xC0) == 0x80)
        i++;
    return i;
}

char *eng_tok_decode(const eng_tokenizer *t, const int *ids, size_t n, int skip_special, size_t *len) {
    strbuf raw = STRBUF_INIT;
    int first = 1;
    for (size_t i = 0; i < n; i++) {
        int id = ids[i];
        if (id < 0 || id >= t->n_ids || !t->id_str[id]) continue;
        if (skip_special && t->id_special[id]) continue;
        if (!t->decoder_bytelevel && !first) sb_putc(&raw, ' ');
        token_bytes_sb(t, id, &raw);
        first = 0;
    }
    strbuf out = STRBUF_INIT;
    sb_reserve(&out, raw.len + 1);
    const unsigned char *u = (const unsigned char *)raw.buf;
    for (size_t i = 0; i < raw.len;) {
        uint32_t cp;
        int k = eng_tok_utf8_next(u + i, raw.len - i, &cp);
        if (k) {
            sb_append(&out, u + i, (size_t)k);
            i += (size_t)k;
        } else {
            sb_append(&out, "\xEF\xBF\xBD", 3);
            i += invalid_len(u + i, raw.len - i);
        }
    }
    sb_free(&raw);
    if (!out.buf) sb_puts(&out, "");
    if (len) *len = out.len;
    return sb_steal(&out);
}
