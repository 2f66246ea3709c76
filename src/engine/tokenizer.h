/* tokenizer.h: byte-level BPE tokenizers read from Hugging Face tokenizer.json (Llama 3, Qwen2/2.5/3,
 * SmolLM2, GPT-2 style), token-exact with the `tokenizers` library.
 *
 * Pipeline (encode): added/special tokens are found first in the raw text (leftmost-longest, with the
 * lstrip/rstrip/single_word flags applied as HF does); the pieces between them are normalized (none or NFC,
 * as the file says), pre-tokenized (Split regexes via PCRE2 with UTF+UCP, Digits, ByteLevel), mapped through
 * the GPT-2 byte<->unicode table and merged by BPE rank. No post-processor is applied: eng_tok_encode never
 * adds a BOS token; callers that want one prepend eng_tok_bos_id().
 *
 * Input text must be valid UTF-8: eng_tok_encode rejects invalid UTF-8 with a 400 error naming the byte
 * offset (HF only accepts Python str, which is always valid). Decode maps tokens back to bytes; byte
 * sequences that are not valid UTF-8 are replaced with U+FFFD per maximal invalid subpart, as HF's
 * String::from_utf8_lossy does, so eng_tok_decode always returns valid UTF-8.
 *
 * Ownership: eng_tok_load returns a tokenizer the caller frees with eng_tok_free. A loaded tokenizer is
 * read-only and may be used from several threads at once. Strings returned by eng_tok_id_to_token belong to
 * the tokenizer. *ids from eng_tok_encode and the string from eng_tok_decode are malloc'd; the caller frees
 * them. */
#ifndef LATHE_ENGINE_TOKENIZER_H
#define LATHE_ENGINE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

typedef struct eng_tokenizer eng_tokenizer;

/* Loads `path`: a tokenizer.json file, a model directory containing one (then tokenizer_config.json next
 * to it, when present, supplies bos/eos token names, add_bos_token and the chat template), or a GGUF file
 * (recognised by its magic; see eng_tok_load_gguf). Returns NULL with err (400 malformed or unsupported
 * content, naming the JSON field or GGUF key; 404 missing file; 500 I/O). */
eng_tokenizer *eng_tok_load(const char *path, lt_err *err);
/* The tokenizer a GGUF file's metadata describes (tokenizer.ggml.model "gpt2", i.e. byte-level BPE, with the
 * pre-tokenizer tokenizer.ggml.pre names: smollm, gpt2, llama-bpe or qwen2; tokenizer_gguf.c), with bos/eos
 * from tokenizer.ggml.bos_token_id / eos_token_id, add_bos_token and tokenizer.chat_template. The reader
 * is only read; the tokenizer keeps nothing of it. NULL with err (400 naming the key). */
struct gguf_file;
eng_tokenizer *eng_tok_load_gguf(const struct gguf_file *f, lt_err *err);
/* Loads tokenizer.json content from memory (no tokenizer_config.json: bos/eos come from the post-processor
 * and well-known added-token names). Errors as eng_tok_load, 400 for content. */
eng_tokenizer *eng_tok_load_mem(const char *json, size_t len, lt_err *err);
void eng_tok_free(eng_tokenizer *tok);

/* Encodes len bytes of text. allow_special = 1: added tokens (special or not) written in the text are matched
 * as those tokens (HF's default); 0: only non-special added tokens are matched, special-token strings are
 * tokenized as plain text. Returns 0 with *ids (malloc'd, may be NULL when *n == 0) and *n, or -1 with err
 * (400 invalid UTF-8). */
int eng_tok_encode(const eng_tokenizer *tok, const char *text, size_t len, int allow_special, int **ids,
                   size_t *n, lt_err *err);

/* Decodes ids to text (malloc'd, NUL-terminated, *len without the NUL; len may be NULL). skip_special = 1
 * drops special added tokens. Ids outside the vocabulary are skipped. Never returns NULL (aborts on OOM). */
char *eng_tok_decode(const eng_tokenizer *tok, const int *ids, size_t n, int skip_special, size_t *len);

/* Bytes one token decodes to on its own (for streaming decoders and stop-string checks): writes up to cap
 * bytes into buf and returns the full byte count (0 for unknown ids). */
size_t eng_tok_token_bytes(const eng_tokenizer *tok, int id, char *buf, size_t cap);

/* One more than the largest id in the model vocab or the added tokens. */
int eng_tok_vocab_size(const eng_tokenizer *tok);

/* The byte-level alphabet (GPT-2's bytes_to_unicode, HF ByteLevel): writes the UTF-8 text of the character
 * that stands for byte b (0..255) in byte-level vocabularies, NUL-terminated (1 or 2 bytes + NUL), and
 * returns its length. Printable Latin-1 bytes stand for themselves; the others map to U+0100 upwards in byte
 * order. */
int eng_tok_byte_char(int b, char out[4]);
/* Id of an exact token string (vocab entry in the byte-level alphabet, e.g. "Ġthe", or an added token such as
 * "<|im_end|>"); -1 if absent. */
int eng_tok_token_id(const eng_tokenizer *tok, const char *token_string);
/* The token string of an id (byte-level alphabet for BPE entries); NULL if the id is unused. */
const char *eng_tok_id_to_token(const eng_tokenizer *tok, int id);
/* 1 if id is an added token flagged "special" in tokenizer.json. */
int eng_tok_is_special(const eng_tokenizer *tok, int id);

/* BOS / EOS as far as the files tell: tokenizer_config.json's bos_token / eos_token when present, else the
 * post-processor's prepended special token (BOS) and well-known names (<|begin_of_text|>, <|endoftext|>,
 * <|end_of_text|>, <s>, </s>); -1 when unknown. */
int eng_tok_bos_id(const eng_tokenizer *tok);
int eng_tok_eos_id(const eng_tokenizer *tok);
/* The chat template: tokenizer_config.json's chat_template when the model dir had one, a GGUF's
 * tokenizer.chat_template, else NULL (owned by tok). */
const char *eng_tok_chat_template(const eng_tokenizer *tok);
/* Whether the model expects BOS prepended to every encoded text: 1 or 0 as tokenizer.ggml.add_bos_token
 * (GGUF) or tokenizer_config.json's add_bos_token says; -1 when the files do not say. */
int eng_tok_add_bos(const eng_tokenizer *tok);

/* ---- UTF-8 and NFC as the tokenizer reads them (the chat renderers split text by the same rules) ---- */

/* Decodes one UTF-8 code point at s[0..n) (n >= 1). Returns its byte length (1-4), or 0 when the bytes there
 * are not a valid, shortest-form, non-surrogate sequence; *cp gets the code point when valid. */
int eng_tok_utf8_next(const unsigned char *s, size_t n, uint32_t *cp);
/* Encodes cp as UTF-8 into out (4 bytes room); returns the byte count. */
int eng_tok_utf8_put(uint32_t cp, unsigned char *out);
/* Byte offset of the first invalid UTF-8 sequence in s[0..n), or n when all of it is valid. */
size_t eng_tok_utf8_invalid_at(const char *s, size_t n);
/* Unicode NFC of valid UTF-8 s[0..n): malloc'd (caller frees), NUL-terminated, *out_len without the NUL. */
char *eng_tok_nfc(const char *s, size_t n, size_t *out_len);
/* 1 if the tokenizer's normalizer is NFC (the only one supported), so its tokens spell the NFC form. */
int eng_tok_has_nfc(const eng_tokenizer *tok);

#endif
