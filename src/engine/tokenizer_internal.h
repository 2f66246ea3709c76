/* tokenizer_internal.h: helpers shared by the tokenizer's own files (tokenizer*.c); not a public surface.
 *
 * Ownership: eng_tok_fm_strip returns malloc'd bytes the caller frees; eng_tok_fast_scan fills
 * a caller-owned eng_tok_fastmodel released with eng_tok_fm_free. */
#ifndef LATHE_ENGINE_TOKENIZER_INTERNAL_H
#define LATHE_ENGINE_TOKENIZER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/tokenizer.h"
#include "util/strbuf.h"

/* Ids beyond this are rejected as malformed (real vocabularies stay under 300k). */
#define ENG_TOK_MAX_ID 2000000

/* ---- tokenizer_json.c: model.vocab / model.merges read without jansson ---- */

typedef struct {
    uint32_t a, al, b, bl; /* offsets/lengths into eng_tok_fastmodel.str */
} eng_tok_fm_merge;

typedef struct {
    strbuf str;     /* decoded strings, back to back */
    uint32_t *voff; /* vocab entry i: str[voff[i] .. +vlen[i]] -> vid[i] */
    uint32_t *vlen;
    int32_t *vid;
    size_t nv, capv;
    eng_tok_fm_merge *m;
    size_t nm, capm;
    int has_merges;
    size_t vocab_a, vocab_b, merges_a, merges_b; /* spans in the text */
} eng_tok_fastmodel;

/* Reads model.vocab and model.merges of text[0..len) into f and records their spans; 0 on success, -1 (f
 * empty) when the text is anything the scanner does not handle exactly like jansson: load with jansson then.
 */
int eng_tok_fast_scan(const char *text, size_t len, eng_tok_fastmodel *f);
/* The text with the vocab and merges spans replaced by {} and [] (malloc'd; *out_len set). */
char *eng_tok_fm_strip(const char *text, size_t len, const eng_tok_fastmodel *f, size_t *out_len);
void eng_tok_fm_free(eng_tok_fastmodel *f);

/* ---- tokenizer_gguf.c ---- */

struct gguf_file;
/* Appends to out the Hugging Face tokenizer.json that f's tokenizer.ggml.* metadata describes (vocab, merges,
 * added tokens from the token types, unk token, normalizer and pre-tokenizer of tokenizer.ggml.pre). 0, or
 * -1 with err (400 naming the key and index: unsupported model or pre-tokenizer, missing arrays, mismatched
 * lengths, ids out of range, merges naming unknown tokens, strings that are not UTF-8). */
int eng_tok_gguf_json(const struct gguf_file *f, strbuf *out, lt_err *err);
/* gguf_open + eng_tok_load_gguf + gguf_close (eng_tok_load's path for a GGUF file). */
eng_tokenizer *eng_tok_load_gguf_path(const char *path, lt_err *err);
/* Sets what a GGUF says beside its tokenizer.json: bos/eos ids (when >= 0), add_bos (1, 0, -1 unknown) and
 * the chat template (copied; when tpl is not NULL). */
void eng_tok_set_file_meta(eng_tokenizer *t, int bos, int eos, int add_bos, const char *tpl, size_t tpl_len);

/* eng_tok_load_mem with the fast vocab/merges scanner on (fast = 1, the normal path) or off (everything
 * through jansson): the fuzz target checks both paths agree. */
eng_tokenizer *eng_tok_load_mem_path(const char *json, size_t len, int fast, lt_err *err);

#endif
