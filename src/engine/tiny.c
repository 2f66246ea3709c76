/* tiny.c: writes small random-weight models in the HF layout (see tiny.h).
 *
 * The tokenizer is trained here, in a few milliseconds, by plain BPE over a built-in English corpus: the text
 * is split into pre-tokens the way the Qwen/Llama 3 Split regex does for ASCII (contractions, an optional
 * leading non-letter glued to a letter run, single digits, punctuation runs, whitespace runs), each pre-token
 * is mapped through GPT-2's byte -> unicode table, and the most frequent adjacent pair (ties broken by the
 * pair's strings, so the result is deterministic) is merged until the vocabulary is full or no pair repeats.
 * The learned merges are exactly what HF's BPE model replays, so the tokenizer.json is valid for `tokenizers`
 * and for lathe's own loader; the training split only affects which merges are learned, not validity.
 *
 * Weights come from a splitmix64-seeded xoshiro256** stream turned into normals by Box-Muller, tensor by
 * tensor in name order, so a model is a pure function of (options, seed). All JSON is built with jansson and
 * every file is written with a temp file + rename. */
#include "engine/tiny.h"
#include "engine/tokenizer.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

/* ------------------------------------------------------------------------------------------------------ */
/* built-in corpus (plain English, written for this project) */

static const char CORPUS[] =
    "The quick brown fox jumps over the lazy dog. The dog was not happy about it, but the fox did not care.\n"
    "Once upon a time there was a little girl who lived in a small house near the forest. Every morning she "
    "walked to the river to fetch water, and every evening she told her mother what she had seen.\n"
    "It is a truth that people who read a lot of books know a lot of words. Reading is one of the best ways "
    "to "
    "learn, and writing is one of the best ways to think.\n"
    "What is the capital of France? The capital of France is Paris. What is the capital of Italy? It is "
    "Rome.\n"
    "How are you today? I am fine, thank you. And how are you? I'm doing well. We're going to the market, "
    "and they're coming with us. You'll see that it's not far.\n"
    "The model learns from data. The more data it sees, the better it can predict the next word in a "
    "sentence. Training a model takes time, and the loss should go down as the model learns.\n"
    "In the beginning of the year the weather was cold, and the people stayed in their homes. When the "
    "spring "
    "came, the trees were green again and the children played in the park after school.\n"
    "She said that she would come back in the morning. He said that he would wait for her at the station. "
    "They said that they would all meet at the house of their friend.\n"
    "There are many kinds of animals in the world: cats, dogs, birds, fish, horses and cows. Some of them "
    "live "
    "on farms, and some of them live in the wild.\n"
    "Water is made of hydrogen and oxygen. The sun is a star, and the earth goes around the sun once every "
    "year. The moon goes around the earth about once every month.\n"
    "To make a cup of tea, boil some water, put the tea in a cup, pour the water over it and wait for a few "
    "minutes. Then add milk or sugar if you like.\n"
    "The user asked a question and the assistant gave an answer. The answer was short, clear and correct, "
    "and "
    "the user was happy with it. Then the user asked another question.\n"
    "Numbers: one, two, three, four, five, six, seven, eight, nine, ten. 1 2 3 4 5 6 7 8 9 10 100 2024.\n"
    "This is a test. This is only a test. If this had been a real message, you would have been told what to "
    "do next. Please do not worry about it.\n"
    "Good morning! Good evening! Good night! Have a nice day, and see you tomorrow.\n"
    "The house was quiet. The light was on in the kitchen, and there was a smell of bread in the air. "
    "Someone "
    "had been there just a few minutes before, but now the room was empty.\n"
    "We should always check our work before we send it. A small mistake can make a big difference, and it is "
    "easier to fix a problem early than late.\n"
    "The city has a long history. It was built on the side of a hill, near a river, and for many years it "
    "was "
    "the most important place in the region for trade and for learning.\n"
    "He walked along the road for a long time without seeing anyone. The sky was grey and the wind was "
    "strong, "
    "but he kept going because he knew that his family was waiting for him at home.\n"
    "Can you help me with this? Of course I can. What do you need? I need to write a letter to my friend, "
    "but "
    "I do not know what to say. Start by telling her how you are, and then ask how she is.\n";

/* ------------------------------------------------------------------------------------------------------ */
/* byte-level alphabet */

/* ------------------------------------------------------------------------------------------------------ */
/* BPE training */

typedef struct word {
    int *sym;
    int n;
    int count;
} word;

typedef struct bpe {
    char **tok; /* token strings (byte-level alphabet), id = index */
    int ntok, captok;
    int (*merges)[2];
    int nmerges;
    word *words;
    int nwords, capwords;
} bpe;

static int is_alpha(int c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
static int is_digit(int c) {
    return c >= '0' && c <= '9';
}
static int is_space(int c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* Length of the pre-token starting at s[i] (ASCII rendition of the Qwen/Llama 3 Split regex). */
static size_t pretoken_len(const char *s, size_t i, size_t n) {
    int c = (unsigned char)s[i];
    if (c == '\'' && i + 1 < n) {
        static const char *con[] = {"ll", "re", "ve", "s", "t", "m", "d"};
        for (size_t k = 0; k < sizeof con / sizeof *con; k++) {
            size_t L = strlen(con[k]);
            if (i + 1 + L <= n && strncasecmp(s + i + 1, con[k], L) == 0) return 1 + L;
        }
    }
    if (is_alpha(c) ||
        (c != '\r' && c != '\n' && !is_digit(c) && i + 1 < n && is_alpha((unsigned char)s[i + 1]))) {
        size_t j = is_alpha(c) ? i : i + 1;
        while (j < n && is_alpha((unsigned char)s[j]))
            j++;
        return j - i;
    }
    if (is_digit(c)) return 1;
    size_t j = i;
    if (c == ' ' && i + 1 < n && !is_space((unsigned char)s[i + 1]) && !is_alpha((unsigned char)s[i + 1]) &&
        !is_digit((unsigned char)s[i + 1]))
        j++;
    if (j < n && !is_space((unsigned char)s[j]) && !is_alpha((unsigned char)s[j]) &&
        !is_digit((unsigned char)s[j])) {
        while (j < n && !is_space((unsigned char)s[j]) && !is_alpha((unsigned char)s[j]) &&
               !is_digit((unsigned char)s[j]))
            j++;
        while (j < n && (s[j] == '\r' || s[j] == '\n'))
            j++;
        return j - i;
    }
    /* whitespace run */
    j = i;
    while (j < n && is_space((unsigned char)s[j]))
        j++;
    size_t last_nl = 0;
    for (size_t k = i; k < j; k++)
        if (s[k] == '\r' || s[k] == '\n') last_nl = k + 1;
    if (last_nl) return last_nl - i;
    if (j < n && j - i > 1) return j - i - 1; /* \s+(?!\S): leave one space for the next word */
    return j - i;
}

static int bpe_add_token(bpe *b, const char *s) {
    for (int i = 0; i < b->ntok; i++)
        if (strcmp(b->tok[i], s) == 0) return i;
    if (b->ntok == b->captok) {
        b->captok = b->captok ? b->captok * 2 : 512;
        b->tok = realloc(b->tok, (size_t)b->captok * sizeof *b->tok);
        if (!b->tok) abort();
    }
    b->tok[b->ntok] = lt_strdup(s);
    return b->ntok++;
}

static void bpe_add_word(bpe *b, const char *s, size_t len) {
    for (int w = 0; w < b->nwords; w++) {
        word *x = &b->words[w];
        if ((size_t)x->n != len) continue;
        int same = 1;
        for (size_t k = 0; k < len && same; k++)
            same = x->sym[k] == (unsigned char)s[k];
        if (same) {
            x->count++;
            return;
        }
    }
    if (b->nwords == b->capwords) {
        b->capwords = b->capwords ? b->capwords * 2 : 256;
        b->words = realloc(b->words, (size_t)b->capwords * sizeof *b->words);
        if (!b->words) abort();
    }
    word *x = &b->words[b->nwords++];
    x->sym = malloc(len * sizeof *x->sym);
    if (!x->sym) abort();
    for (size_t k = 0; k < len; k++)
        x->sym[k] = (unsigned char)s[k]; /* token id == byte value initially */
    x->n = (int)len;
    x->count = 1;
}

static void bpe_free(bpe *b) {
    for (int i = 0; i < b->ntok; i++)
        free(b->tok[i]);
    free(b->tok);
    free(b->merges);
    for (int w = 0; w < b->nwords; w++)
        free(b->words[w].sym);
    free(b->words);
}

/* One merge step: finds the best pair; returns 0 when no pair occurs at least twice. */
static int bpe_step(bpe *b) {
    int n = b->ntok;
    int *cnt = calloc((size_t)n * (size_t)n, sizeof *cnt);
    if (!cnt) abort();
    for (int w = 0; w < b->nwords; w++) {
        word *x = &b->words[w];
        for (int k = 0; k + 1 < x->n; k++)
            cnt[(size_t)x->sym[k] * (size_t)n + (size_t)x->sym[k + 1]] += x->count;
    }
    int best = -1, ba = 0, bb = 0;
    for (int a = 0; a < n; a++)
        for (int c = 0; c < n; c++) {
            int v = cnt[(size_t)a * (size_t)n + (size_t)c];
            if (v < 2) continue;
            int better = v > best;
            if (v == best) {
                int s = strcmp(b->tok[a], b->tok[ba]);
                better = s < 0 || (s == 0 && strcmp(b->tok[c], b->tok[bb]) < 0);
            }
            if (better) {
                best = v;
                ba = a;
                bb = c;
            }
        }
    free(cnt);
    if (best < 0) return 0;
    size_t la = strlen(b->tok[ba]), lb = strlen(b->tok[bb]);
    char *joined = malloc(la + lb + 1);
    if (!joined) abort();
    memcpy(joined, b->tok[ba], la);
    memcpy(joined + la, b->tok[bb], lb + 1);
    int id = bpe_add_token(b, joined);
    free(joined);
    b->merges = realloc(b->merges, (size_t)(b->nmerges + 1) * sizeof *b->merges);
    if (!b->merges) abort();
    b->merges[b->nmerges][0] = ba;
    b->merges[b->nmerges][1] = bb;
    b->nmerges++;
    for (int w = 0; w < b->nwords; w++) {
        word *x = &b->words[w];
        int o = 0;
        for (int k = 0; k < x->n; k++) {
            if (k + 1 < x->n && x->sym[k] == ba && x->sym[k + 1] == bb) {
                x->sym[o++] = id;
                k++;
            } else {
                x->sym[o++] = x->sym[k];
            }
        }
        x->n = o;
    }
    return 1;
}

static const char *SPECIALS[ENG_TINY_NSPECIAL] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};

static const char *SPLIT_REGEX = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                                 "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static json_t *byte_level(void) {
    return json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 0,
                     "use_regex", 0);
}

int eng_tiny_tokenizer_json(int vocab, strbuf *out, lt_err *err) {
    if (vocab != ENG_TINY_VOCAB_BYTE && vocab < 256 + ENG_TINY_NSPECIAL)
        return lt_err_set(err, 400,
                          "--vocab must be 'byte' or at least %d (256 bytes + %d special tokens), got %d",
                          256 + ENG_TINY_NSPECIAL, ENG_TINY_NSPECIAL, vocab);
    bpe b;
    memset(&b, 0, sizeof b);
    for (int i = 0; i < 256; i++) {
        char s[4];
        eng_tok_byte_char(i, s);
        bpe_add_token(&b, s);
    }
    if (vocab != ENG_TINY_VOCAB_BYTE) {
        size_t n = sizeof CORPUS - 1;
        for (size_t i = 0; i < n;) {
            size_t L = pretoken_len(CORPUS, i, n);
            if (L == 0) L = 1;
            bpe_add_word(&b, CORPUS + i, L);
            i += L;
        }
        while (b.ntok < vocab - ENG_TINY_NSPECIAL && bpe_step(&b)) {
        }
    }
    json_t *jvocab = json_object();
    for (int i = 0; i < b.ntok; i++)
        json_object_set_new(jvocab, b.tok[i], json_integer(i));
    json_t *jmerges = json_array();
    for (int m = 0; m < b.nmerges; m++)
        json_array_append_new(jmerges, json_pack("[s,s]", b.tok[b.merges[m][0]], b.tok[b.merges[m][1]]));
    json_t *added = json_array();
    for (int i = 0; i < ENG_TINY_NSPECIAL; i++)
        json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", b.ntok + i,
                                               "content", SPECIALS[i], "single_word", 0, "lstrip", 0,
                                               "rstrip", 0, "normalized", 0, "special", 1));
    json_t *split = json_pack("{s:s, s:{s:s}, s:s, s:b}", "type", "Split", "pattern", "Regex", SPLIT_REGEX,
                              "behavior", "Isolated", "invert", 0);
    json_t *pre = json_pack("{s:s, s:[o,o]}", "type", "Sequence", "pretokenizers", split, byte_level());
    json_t *model =
        json_pack("{s:s, s:n, s:n, s:s, s:s, s:b, s:b, s:b, s:o, s:o}", "type", "BPE", "dropout", "unk_token",
                  "continuing_subword_prefix", "", "end_of_word_suffix", "", "fuse_unk", 0, "byte_fallback",
                  0, "ignore_merges", 0, "vocab", jvocab, "merges", jmerges);
    json_t *root = json_pack("{s:s, s:n, s:n, s:o, s:n, s:o, s:o, s:o, s:o}", "version", "1.0", "truncation",
                             "padding", "added_tokens", added, "normalizer", "pre_tokenizer", pre,
                             "post_processor", byte_level(), "decoder", byte_level(), "model", model);
    if (!root) abort();
    char *text = json_dumps(root, JSON_INDENT(2));
    if (!text) abort();
    sb_puts(out, text);
    sb_putc(out, '\n');
    free(text);
    json_decref(root);
    int total = b.ntok + ENG_TINY_NSPECIAL;
    bpe_free(&b);
    return total;
}

/* ------------------------------------------------------------------------------------------------------ */
/* random weights */

typedef struct rng {
    uint64_t s[4];
    int have_spare;
    double spare;
} rng;

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void rng_seed(rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
    r->have_spare = 0;
}

static uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

static double rng_uniform(rng *r) {
    return (double)((rng_next(r) >> 11) + 1) * (1.0 / 9007199254740993.0);
} /* (0,1] */

static double rng_normal(rng *r) {
    if (r->have_spare) {
        r->have_spare = 0;
        return r->spare;
    }
    double u = rng_uniform(r), v = rng_uniform(r);
    double rad = sqrt(-2.0 * log(u)), th = 2.0 * M_PI * v;
    r->spare = rad * sin(th);
    r->have_spare = 1;
    return rad * cos(th);
}

typedef struct tlist {
    char **names;
    float **data;
    int64_t (*shape)[2];
    int *ndim;
    int n, cap;
} tlist;

static float *tl_add(tlist *t, const char *name, int ndim, int64_t d0, int64_t d1) {
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 64;
        t->names = realloc(t->names, (size_t)t->cap * sizeof *t->names);
        t->data = realloc(t->data, (size_t)t->cap * sizeof *t->data);
        t->shape = realloc(t->shape, (size_t)t->cap * sizeof *t->shape);
        t->ndim = realloc(t->ndim, (size_t)t->cap * sizeof *t->ndim);
        if (!t->names || !t->data || !t->shape || !t->ndim) abort();
    }
    size_t numel = (size_t)d0 * (size_t)(ndim == 2 ? d1 : 1);
    float *p = malloc((numel ? numel : 1) * sizeof *p);
    if (!p) abort();
    t->names[t->n] = lt_strdup(name);
    t->data[t->n] = p;
    t->shape[t->n][0] = d0;
    t->shape[t->n][1] = d1;
    t->ndim[t->n] = ndim;
    t->n++;
    return p;
}

static void tl_free(tlist *t) {
    for (int i = 0; i < t->n; i++) {
        free(t->names[i]);
        free(t->data[i]);
    }
    free(t->names);
    free(t->data);
    free(t->shape);
    free(t->ndim);
}

static void fill_normal(rng *r, float *p, size_t n, double std) {
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(rng_normal(r) * std);
}

static void fill_const(float *p, size_t n, float v) {
    for (size_t i = 0; i < n; i++)
        p[i] = v;
}

/* ------------------------------------------------------------------------------------------------------ */

void eng_tiny_defaults(eng_tiny_opts *o) {
    memset(o, 0, sizeof *o);
    o->arch = ENG_ARCH_LLAMA;
    o->layers = 2;
    o->hidden = 64;
    o->heads = 4;
    o->kv_heads = 2;
    o->intermediate = 128;
    o->vocab = 512;
    o->max_pos = 2048;
    o->rope_theta = 10000.0f;
    o->init_std = 0.02;
    o->dtype = ST_F32;
}

static const char *ARCH_NAME[] = {"LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                                  "MistralForCausalLM"};
static const char *MODEL_TYPE[] = {"llama", "qwen2", "qwen3", "mistral"};

static int write_json(const char *dir, const char *file, json_t *root, lt_err *err) {
    if (!root) abort();
    char *text = json_dumps(root, JSON_INDENT(2));
    json_decref(root);
    if (!text) abort();
    size_t len = strlen(text);
    char *withnl = malloc(len + 2);
    if (!withnl) abort();
    memcpy(withnl, text, len);
    withnl[len] = '\n';
    withnl[len + 1] = 0;
    free(text);
    char *path = lt_path_join(dir, file);
    int rc = lt_write_file_atomic(path, withnl, len + 1, 0644, err);
    free(path);
    free(withnl);
    return rc;
}

static int check_opts(const eng_tiny_opts *o, lt_err *err) {
    if ((int)o->arch < 0 || o->arch > ENG_ARCH_MISTRAL)
        return lt_err_set(err, 400, "--arch: unknown architecture");
    if (o->layers < 1 || o->layers > 1024) return lt_err_set(err, 400, "--layers must be 1..1024");
    if (o->hidden < 2 || o->hidden > 65536) return lt_err_set(err, 400, "--hidden must be 2..65536");
    if (o->heads < 1 || o->kv_heads < 1)
        return lt_err_set(err, 400, "--heads and --kv-heads must be positive");
    if (o->heads % o->kv_heads)
        return lt_err_set(err, 400, "--kv-heads (%d) must divide --heads (%d)", o->kv_heads, o->heads);
    if (!o->head_dim && o->hidden % o->heads)
        return lt_err_set(err, 400, "--heads (%d) must divide --hidden (%d)", o->heads, o->hidden);
    int hd = o->head_dim ? o->head_dim : o->hidden / o->heads;
    if (hd < 2 || hd % 2) return lt_err_set(err, 400, "head dim %d must be even and at least 2", hd);
    if (o->intermediate < 1 || o->intermediate > 1 << 20)
        return lt_err_set(err, 400, "--intermediate must be 1..1048576");
    if (o->max_pos < 1) return lt_err_set(err, 400, "--max-pos must be positive");
    if (o->rope_llama3 && o->max_pos <= 256)
        return lt_err_set(err, 400,
                          "--rope-scaling llama3 needs --max-pos above its original context of 256");
    return 0;
}

int eng_tiny_write(const char *dir, const eng_tiny_opts *o, lt_err *err) {
    if (check_opts(o, err) != 0) return -1;
    if (lt_mkdir_p(dir, 0755, err) != 0) return -1;
    strbuf tokjson = STRBUF_INIT;
    int ntok = eng_tiny_tokenizer_json(o->vocab, &tokjson, err);
    if (ntok < 0) {
        sb_free(&tokjson);
        return -1;
    }
    /* the corpus supports a few hundred merges; a larger --vocab pads the embedding rows, as Qwen's do */
    int V = o->vocab > ntok ? o->vocab : ntok;
    int eot = ntok - ENG_TINY_NSPECIAL, im_end = ntok - 1;
    char *tokpath = lt_path_join(dir, "tokenizer.json");
    int rc = lt_write_file_atomic(tokpath, tokjson.buf, tokjson.len, 0644, err);
    free(tokpath);
    sb_free(&tokjson);
    if (rc) return -1;

    int C = o->hidden, H = o->heads, KV = o->kv_heads, I = o->intermediate, L = o->layers;
    int D = o->head_dim ? o->head_dim : C / H;
    const char *dtname = o->dtype == ST_F32 ? "float32" : o->dtype == ST_BF16 ? "bfloat16" : "float16";

    /* config.json */
    json_t *cfg = json_object();
    json_object_set_new(cfg, "architectures", json_pack("[s]", ARCH_NAME[o->arch]));
    json_object_set_new(cfg, "model_type", json_string(MODEL_TYPE[o->arch]));
    json_object_set_new(cfg, "vocab_size", json_integer(V));
    json_object_set_new(cfg, "hidden_size", json_integer(C));
    json_object_set_new(cfg, "intermediate_size", json_integer(I));
    json_object_set_new(cfg, "num_hidden_layers", json_integer(L));
    json_object_set_new(cfg, "num_attention_heads", json_integer(H));
    json_object_set_new(cfg, "num_key_value_heads", json_integer(KV));
    json_object_set_new(cfg, "head_dim", json_integer(D));
    json_object_set_new(cfg, "hidden_act", json_string("silu"));
    json_object_set_new(cfg, "max_position_embeddings", json_integer(o->max_pos));
    json_object_set_new(cfg, "initializer_range", json_real(o->init_std));
    json_object_set_new(cfg, "rms_norm_eps", json_real(1e-6));
    json_object_set_new(cfg, "rope_theta", json_real(o->rope_theta));
    if (o->rope_llama3)
        json_object_set_new(cfg, "rope_scaling",
                            json_pack("{s:s, s:f, s:f, s:f, s:i}", "rope_type", "llama3", "factor", 8.0,
                                      "low_freq_factor", 1.0, "high_freq_factor", 4.0,
                                      "original_max_position_embeddings", 256));
    else
        json_object_set_new(cfg, "rope_scaling", json_null());
    json_object_set_new(cfg, "tie_word_embeddings", json_boolean(o->tie));
    if (o->arch == ENG_ARCH_LLAMA || o->arch == ENG_ARCH_QWEN3)
        json_object_set_new(cfg, "attention_bias", json_false());
    if (o->arch == ENG_ARCH_LLAMA) json_object_set_new(cfg, "mlp_bias", json_false());
    if (o->arch != ENG_ARCH_LLAMA) json_object_set_new(cfg, "sliding_window", json_null());
    if (o->arch == ENG_ARCH_QWEN2 || o->arch == ENG_ARCH_QWEN3)
        json_object_set_new(cfg, "use_sliding_window", json_false());
    json_object_set_new(cfg, "attention_dropout", json_real(0.0));
    json_object_set_new(cfg, "bos_token_id", json_integer(eot));
    json_object_set_new(cfg, "eos_token_id", json_integer(eot));
    json_object_set_new(cfg, "torch_dtype", json_string(dtname));
    json_object_set_new(cfg, "use_cache", json_true());
    if (write_json(dir, "config.json", cfg, err)) return -1;

    json_t *tc = json_object();
    json_object_set_new(tc, "add_bos_token", json_false());
    json_object_set_new(tc, "add_prefix_space", json_false());
    json_object_set_new(tc, "bos_token", json_null());
    json_object_set_new(tc, "eos_token", json_string("<|endoftext|>"));
    json_object_set_new(tc, "pad_token", json_string("<|endoftext|>"));
    json_object_set_new(tc, "unk_token", json_null());
    json_object_set_new(tc, "model_max_length", json_integer(o->max_pos));
    json_object_set_new(tc, "clean_up_tokenization_spaces", json_false());
    json_object_set_new(tc, "tokenizer_class", json_string("PreTrainedTokenizerFast"));
    json_object_set_new(tc, "chat_template", json_string(ENG_TINY_CHAT_TEMPLATE));
    if (write_json(dir, "tokenizer_config.json", tc, err)) return -1;

    json_t *gc = json_pack("{s:i, s:[i,i], s:i, s:s}", "bos_token_id", eot, "eos_token_id", eot, im_end,
                           "pad_token_id", eot, "transformers_version", "4.56.0");
    if (write_json(dir, "generation_config.json", gc, err)) return -1;

    /* weights, drawn in a fixed order: embeddings, then layer by layer, then final norm and head */
    const double std = o->init_std;
    rng r;
    rng_seed(&r, o->seed);
    tlist t;
    memset(&t, 0, sizeof t);
    char name[160];
    fill_normal(&r, tl_add(&t, "model.embed_tokens.weight", 2, V, C), (size_t)V * C, std);
    for (int l = 0; l < L; l++) {
#define NM(s) (snprintf(name, sizeof name, "model.layers.%d.%s", l, s), name)
        fill_const(tl_add(&t, NM("input_layernorm.weight"), 1, C, 0), (size_t)C, 1.0f);
        fill_const(tl_add(&t, NM("post_attention_layernorm.weight"), 1, C, 0), (size_t)C, 1.0f);
        fill_normal(&r, tl_add(&t, NM("self_attn.q_proj.weight"), 2, (int64_t)H * D, C), (size_t)H * D * C,
                    std);
        fill_normal(&r, tl_add(&t, NM("self_attn.k_proj.weight"), 2, (int64_t)KV * D, C), (size_t)KV * D * C,
                    std);
        fill_normal(&r, tl_add(&t, NM("self_attn.v_proj.weight"), 2, (int64_t)KV * D, C), (size_t)KV * D * C,
                    std);
        fill_normal(&r, tl_add(&t, NM("self_attn.o_proj.weight"), 2, C, (int64_t)H * D), (size_t)H * D * C,
                    std);
        if (o->arch == ENG_ARCH_QWEN2) {
            fill_normal(&r, tl_add(&t, NM("self_attn.q_proj.bias"), 1, (int64_t)H * D, 0), (size_t)H * D,
                        std);
            fill_normal(&r, tl_add(&t, NM("self_attn.k_proj.bias"), 1, (int64_t)KV * D, 0), (size_t)KV * D,
                        std);
            fill_normal(&r, tl_add(&t, NM("self_attn.v_proj.bias"), 1, (int64_t)KV * D, 0), (size_t)KV * D,
                        std);
        }
        if (o->arch == ENG_ARCH_QWEN3) {
            fill_const(tl_add(&t, NM("self_attn.q_norm.weight"), 1, D, 0), (size_t)D, 1.0f);
            fill_const(tl_add(&t, NM("self_attn.k_norm.weight"), 1, D, 0), (size_t)D, 1.0f);
        }
        fill_normal(&r, tl_add(&t, NM("mlp.gate_proj.weight"), 2, I, C), (size_t)I * C, std);
        fill_normal(&r, tl_add(&t, NM("mlp.up_proj.weight"), 2, I, C), (size_t)I * C, std);
        fill_normal(&r, tl_add(&t, NM("mlp.down_proj.weight"), 2, C, I), (size_t)I * C, std);
#undef NM
    }
    fill_const(tl_add(&t, "model.norm.weight", 1, C, 0), (size_t)C, 1.0f);
    if (!o->tie) fill_normal(&r, tl_add(&t, "lm_head.weight", 2, V, C), (size_t)V * C, std);

    st_writer *w = st_writer_new();
    rc = 0;
    for (int i = 0; i < t.n && rc == 0; i++)
        rc = st_writer_add_f32(w, t.names[i], o->dtype, t.ndim[i], t.shape[i], t.data[i], err);
    if (rc == 0) {
        char *path = lt_path_join(dir, "model.safetensors");
        rc = st_writer_write(w, path, err);
        free(path);
    }
    st_writer_free(w);
    tl_free(&t);
    return rc;
}
