/* tokenizer_nfc.c: Unicode normalization form C for the tokenizer's "NFC" normalizer (Qwen2/Qwen3 files).
 *
 * The standard three steps over code points: full canonical decomposition (table lookups applied
 * recursively, Hangul syllables split arithmetically), canonical ordering (a stable sort of every run of
 * non-starters by combining class), then canonical composition (each character joins the last starter when
 * it is not blocked and the pair is a primary composite; Hangul L+V and LV+T arithmetically). The tables
 * come from tokenizer_nfc_data.h, generated from Python's unicodedata by tokenizer_nfc_gen.py; lookups are
 * binary searches. Text whose code points are all below U+0300 is already NFC and is copied as is, so ASCII
 * and Latin-1 pay one scan. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tokenizer_internal.h"
#include "util/util.h"

#include "engine/tokenizer_nfc_data.h"

#define NFC_N(a) (sizeof(a) / sizeof((a)[0]))

enum {
    SBASE = 0xAC00,
    LBASE = 0x1100,
    VBASE = 0x1161,
    TBASE = 0x11A7,
    LCOUNT = 19,
    VCOUNT = 21,
    TCOUNT = 28
};
enum { NCOUNT = VCOUNT * TCOUNT, SCOUNT = LCOUNT * NCOUNT };

int eng_tok_utf8_next(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned char c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int len;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2, v = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3, v = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if ((size_t)len > n) return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

int eng_tok_utf8_put(uint32_t cp, unsigned char *o) {
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

size_t eng_tok_utf8_invalid_at(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        int k = eng_tok_utf8_next(u + i, n - i, &cp);
        if (k == 0) return i;
        i += (size_t)k;
    }
    return n;
}

static int ccc_of(uint32_t cp) {
    if (cp < 0x300) return 0;
    size_t lo = 0, hi = NFC_N(nfc_ccc);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (nfc_ccc[mid][0] < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (lo < NFC_N(nfc_ccc) && nfc_ccc[lo][0] == cp) ? (int)nfc_ccc[lo][1] : 0;
}

static const uint32_t *decomp_of(uint32_t cp) {
    if (cp < 0xC0) return NULL;
    size_t lo = 0, hi = NFC_N(nfc_decomp);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (nfc_decomp[mid][0] < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (lo < NFC_N(nfc_decomp) && nfc_decomp[lo][0] == cp) ? nfc_decomp[lo] : NULL;
}

static uint32_t compose_pair(uint32_t a, uint32_t b) {
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE && b < TBASE + TCOUNT)
        return a + (b - TBASE);
    size_t lo = 0, hi = NFC_N(nfc_comp);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (nfc_comp[mid][0] < a || (nfc_comp[mid][0] == a && nfc_comp[mid][1] < b))
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < NFC_N(nfc_comp) && nfc_comp[lo][0] == a && nfc_comp[lo][1] == b) return nfc_comp[lo][2];
    return 0;
}

typedef struct {
    uint32_t *v;
    size_t n, cap;
} cpvec;

static void cp_push(cpvec *c, uint32_t cp) {
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 64;
        c->v = realloc(c->v, c->cap * sizeof *c->v);
        if (!c->v) abort();
    }
    c->v[c->n++] = cp;
}

static void decompose(cpvec *out, uint32_t cp) {
    if (cp >= SBASE && cp < SBASE + SCOUNT) {
        uint32_t s = cp - SBASE;
        cp_push(out, LBASE + s / NCOUNT);
        cp_push(out, VBASE + (s % NCOUNT) / TCOUNT);
        if (s % TCOUNT) cp_push(out, TBASE + s % TCOUNT);
        return;
    }
    const uint32_t *d = decomp_of(cp);
    if (!d) {
        cp_push(out, cp);
        return;
    }
    decompose(out, d[1]);
    if (d[2]) decompose(out, d[2]);
}

char *eng_tok_nfc(const char *s, size_t n, size_t *out_len) {
    const unsigned char *u = (const unsigned char *)s;
    int simple = 1;
    for (size_t i = 0; i < n; i++) {
        if (u[i] >= 0xCC) { /* lead bytes of U+0300 and above */
            simple = 0;
            break;
        }
    }
    if (simple) {
        char *r = lt_strndup(s, n);
        *out_len = n;
        return r;
    }
    cpvec d = {0};
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int k = eng_tok_utf8_next(u + i, n - i, &cp);
        assert(k > 0);
        if (k == 0) { /* not reached for valid input; keep the byte as U+FFFD rather than loop */
            cp = 0xFFFD;
            k = 1;
        }
        decompose(&d, cp);
        i += (size_t)k;
    }
    /* canonical ordering: insertion sort of each non-starter run, stable by class */
    for (size_t i = 1; i < d.n; i++) {
        int c = ccc_of(d.v[i]);
        if (c == 0) continue;
        size_t j = i;
        uint32_t x = d.v[i];
        while (j > 0) {
            int pc = ccc_of(d.v[j - 1]);
            if (pc == 0 || pc <= c) break;
            d.v[j] = d.v[j - 1];
            j--;
        }
        d.v[j] = x;
    }
    /* composition */
    size_t w = 0;
    long starter = -1;
    int last = 0;
    for (size_t i = 0; i < d.n; i++) {
        uint32_t c = d.v[i];
        int cc = ccc_of(c);
        if (starter >= 0 && (last < cc || last == 0) && (last != 0 || (size_t)starter == w - 1)) {
            uint32_t comp = compose_pair(d.v[starter], c);
            if (comp) {
                d.v[starter] = comp;
                continue;
            }
        }
        if (cc == 0) starter = (long)w;
        last = cc;
        d.v[w++] = c;
    }
    char *r = malloc(w * 4 + 1);
    if (!r) abort();
    size_t o = 0;
    for (size_t i = 0; i < w; i++)
        o += (size_t)eng_tok_utf8_put(d.v[i], (unsigned char *)r + o);
    r[o] = '\0';
    free(d.v);
    *out_len = o;
    return r;
}
