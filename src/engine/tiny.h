/* tiny.h: small random-weight models in the Hugging Face layout, for demos and tests (`lathe model
 * init-tiny`).
 *
 * eng_tiny_write(DIR) writes config.json, tokenizer.json, tokenizer_config.json, generation_config.json and
 * model.safetensors. The tokenizer is a byte-level BPE (GPT-2 byte alphabet, Qwen-style Split regex +
 * ByteLevel pre-tokenizer and decoder) whose merges are learned at write time from a small built-in English
 * corpus, so common words are single tokens; three special added tokens follow the vocab: <|endoftext|>,
 * <|im_start|>, <|im_end|> (ChatML template in tokenizer_config.json). Weights are drawn like HF's
 * _init_weights: linear and embedding weights ~ N(0, init_std), norm weights 1, and (Qwen2) q/k/v biases ~
 * N(0, init_std) so tests see them; all deterministic from the seed (same options + seed = same bytes).
 *
 * Ownership: everything is caller-owned; the functions allocate only internally. */
#ifndef LATHE_ENGINE_TINY_H
#define LATHE_ENGINE_TINY_H

#include <stdint.h>

#include "engine/config.h"
#include "engine/safetensors.h"
#include "util/err.h"
#include "util/strbuf.h"

#define ENG_TINY_VOCAB_BYTE (-1) /* vocab = the 256 byte symbols + special tokens, no merges */
#define ENG_TINY_NSPECIAL 3
/* The chat template init-tiny writes into tokenizer_config.json (bare ChatML). render_pick recognises it so
 * that random-weight tiny models keep the role_colon format their demo and tests render. */
#define ENG_TINY_CHAT_TEMPLATE                                                                               \
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "       \
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% "   \
    "endif %}"

typedef struct eng_tiny_opts {
    eng_arch arch;    /* default ENG_ARCH_LLAMA */
    int layers;       /* 2 */
    int hidden;       /* 64 */
    int heads;        /* 4 */
    int kv_heads;     /* 2 */
    int intermediate; /* 128 */
    int head_dim;     /* 0 = hidden / heads */
    /* vocab: config vocab_size incl. specials (>= 256 + ENG_TINY_NSPECIAL), or ENG_TINY_VOCAB_BYTE; 512. The
     * corpus supports ~550 tokens: beyond that the embedding is padded (ids the tokenizer never emits). */
    int vocab;
    int tie;          /* tie_word_embeddings; 0 */
    int rope_llama3;  /* write rope_scaling {rope_type: llama3, factor 8, low 1, high 4, original 256}; 0 */
    int max_pos;      /* max_position_embeddings; 2048 */
    float rope_theta; /* 10000 */
    /* std of the normal init (HF's initializer_range; 0.02). A model meant to learn through LoRA alone needs
     * a larger one (e.g. 0.1): with a frozen head of std 0.02 the final RMSNorm caps every logit near +-1. */
    double init_std;
    uint64_t seed;  /* 0 */
    st_dtype dtype; /* weights dtype in model.safetensors; ST_F32 */
} eng_tiny_opts;

void eng_tiny_defaults(eng_tiny_opts *o);

/* Creates DIR (and parents) and writes the five files; each file is written atomically. Returns 0 or -1 with
 * err (400 for options that make no valid model, naming the option; 500 for I/O). */
int eng_tiny_write(const char *dir, const eng_tiny_opts *o, lt_err *err);

/* Appends the tokenizer.json text for a vocabulary of `vocab` total tokens (or ENG_TINY_VOCAB_BYTE) to out
 * and returns the number of tokens it really holds (merges stop early if the corpus runs out of repeated
 * pairs), or -1 with err when vocab is too small. */
int eng_tiny_tokenizer_json(int vocab, strbuf *out, lt_err *err);

#endif
