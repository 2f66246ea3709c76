/* libFuzzer target for the tokenizer a GGUF's metadata describes (engine/tokenizer_gguf.c). The first input
 * byte picks the mode:
 *   even: the rest is tokenizer metadata in a compact form, written into a real GGUF with the writer:
 *         NUL-separated fields, the first the tokenizer.ggml.pre name, then tokens up to an empty field, then
 *         merges; a token field starting with a byte 0x01..0x06 takes that as its token type. Bit 1 of the
 *         mode byte drops token_type, bit 2 adds a bos id taken from the mode byte, bit 3 sets the model
 *         to "llama". So the fuzzer reaches the synthesis and its checks rather than the GGUF parser;
 *   odd:  the rest is a whole GGUF file image (the reader's own fuzz target covers the container).
 * Either way the tokenizer loads (then a sample encodes to ids inside the vocabulary, and decodes) or the
 * load fails with a 400 and a message. */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "engine/tokenizer_internal.h"
#include "util/strbuf.h"

#define MAXF 512

static void check(const gguf_file *f) {
    lt_err err = {0};
    eng_tokenizer *t = eng_tok_load_gguf(f, &err);
    if (!t) {
        assert(err.code == 400 && err.msg[0]);
        return;
    }
    const char *sample = "Hello world, it's 2026!\n\t<|im_end|> 日本 e\xcc\x81 1  2  3";
    int *ids;
    size_t n;
    if (eng_tok_encode(t, sample, strlen(sample), 1, &ids, &n, &err) == 0) {
        for (size_t i = 0; i < n; i++)
            assert(ids[i] >= 0 && ids[i] < eng_tok_vocab_size(t) && eng_tok_id_to_token(t, ids[i]));
        free(eng_tok_decode(t, ids, n, 0, NULL));
        free(ids);
    }
    eng_tok_free(t);
}

static void structured(unsigned mode, const char *p, size_t len) {
    const char *fld[MAXF];
    size_t fl[MAXF], nf = 0;
    for (size_t a = 0; a <= len && nf < MAXF;) {
        const char *z = memchr(p + a, 0, len - a);
        size_t b = z ? (size_t)(z - p) : len;
        fld[nf] = p + a, fl[nf++] = b - a;
        a = b + 1;
    }
    gguf_writer *w = gguf_writer_new();
    gguf_writer_set_str(w, "tokenizer.ggml.model", mode & 8 ? "llama" : "gpt2");
    char pre[64];
    size_t pl = fl[0] < sizeof pre - 1 ? fl[0] : sizeof pre - 1;
    memcpy(pre, fld[0], pl);
    pre[pl] = 0;
    gguf_writer_set_str(w, "tokenizer.ggml.pre", pre);
    const char *tok[MAXF], *mer[MAXF];
    size_t tl[MAXF], ml[MAXF], nt = 0, nm = 0;
    int32_t ty[MAXF];
    size_t i = 1;
    for (; i < nf && fl[i] > 0; i++) {
        int t = (unsigned char)fld[i][0] >= 1 && (unsigned char)fld[i][0] <= 6 ? fld[i][0] : 0;
        tok[nt] = fld[i] + (t ? 1 : 0), tl[nt] = fl[i] - (t ? 1 : 0), ty[nt++] = t ? t : 1;
    }
    for (i++; i < nf; i++)
        mer[nm] = fld[i], ml[nm++] = fl[i];
    gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", tok, tl, nt);
    if (!(mode & 2)) gguf_writer_set_arr_i32(w, "tokenizer.ggml.token_type", ty, nt);
    gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", mer, ml, nm);
    if (mode & 4) gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", mode >> 4);
    void *buf;
    size_t blen;
    lt_err err = {0};
    if (gguf_writer_serialize(w, &buf, &blen, &err) == 0) {
        gguf_file *f = gguf_open_memory(buf, blen, "fuzz.gguf", &err);
        assert(f); /* the writer's output always reads back */
        check(f);
        gguf_close(f);
        free(buf);
    }
    gguf_writer_free(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    if ((data[0] & 1) == 0) {
        structured(data[0], (const char *)data + 1, size - 1);
        return 0;
    }
    lt_err err = {0};
    gguf_file *f = gguf_open_memory(data + 1, size - 1, "fuzz.gguf", &err);
    if (!f) return 0;
    check(f);
    gguf_close(f);
    return 0;
}
