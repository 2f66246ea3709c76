/* libFuzzer target for the tokenizer. The first input byte picks the mode:
 *   even: the rest is text for a fixed byte-level tokenizer (GPT-4 style regex, NFC, added tokens, merges);
 *         valid UTF-8 must encode, and decoding must give back exactly the NFC form of the text; invalid
 *         UTF-8 must be refused with a 400; bit 1 toggles special-token parsing;
 *   odd:  the rest is tokenizer.json text for the loader; it either loads (then encoding and decoding a
 *         sample must work) or fails with a 400 and a message, and the loader's fast vocab/merges scanner
 *         must agree with the plain jansson path (both fail, or both load and encode the sample alike). */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tokenizer.h"
#include "engine/tokenizer_internal.h"
#include "util/strbuf.h"

static eng_tokenizer *fixed;

static void build_fixed(void) {
    strbuf sb = STRBUF_INIT;
    sb_puts(
        &sb,
        "{\"added_tokens\":[{\"id\":300,\"content\":\"<|im_end|>\",\"special\":true,\"normalized\":false},"
        "{\"id\":301,\"content\":\"<think>\",\"special\":false,\"normalized\":false},"
        "{\"id\":302,\"content\":\"Ω!\",\"special\":false,\"normalized\":true}],"
        "\"normalizer\":{\"type\":\"NFC\"},\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":["
        "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}"
        "\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|"
        "\\\\s+(?!\\\\S)|\\\\s+\"},\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\","
        "\"add_prefix_space\":false,\"use_regex\":false}]},\"decoder\":{\"type\":\"ByteLevel\"},"
        "\"model\":{\"type\":\"BPE\",\"ignore_merges\":true,\"vocab\":{");
    for (int b = 0; b < 256; b++) {
        char u[4];
        eng_tok_byte_char(b, u);
        if (b) sb_putc(&sb, ',');
        if (b == '"' || b == '\\')
            sb_printf(&sb, "\"\\%c\":%d", b, b);
        else
            sb_printf(&sb, "\"%s\":%d", u, b);
    }
    sb_puts(
        &sb,
        ",\"Ġt\":256,\"he\":257,\"Ġthe\":258,\"ĠĠ\":259,\"ÃĹ\":260},\"merges\":[\"Ġ t\",\"h e\",\"Ġt he\","
        "[\"Ġ\",\"Ġ\"],[\"Ã\",\"Ĺ\"]]}}");
    lt_err err = {0};
    fixed = eng_tok_load_mem(sb.buf, sb.len, &err);
    assert(fixed);
    sb_free(&sb);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    if (!fixed) build_fixed();
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    lt_err err = {0};
    int *ids;
    size_t n;
    if ((data[0] & 1) == 0) {
        int valid = eng_tok_utf8_invalid_at(text, len) == len;
        int rc = eng_tok_encode(fixed, text, len, (data[0] & 2) != 0, &ids, &n, &err);
        if (!valid) {
            assert(rc == -1 && err.code == 400);
            return 0;
        }
        assert(rc == 0);
        size_t dl, nl, ndl;
        char *dec = eng_tok_decode(fixed, ids, n, 0, &dl);
        char *nfc = eng_tok_nfc(text, len, &nl);
        char *ndec = eng_tok_nfc(dec, dl, &ndl);
        assert(ndl == nl && memcmp(ndec, nfc, nl) == 0);
        free(ndec);
        for (size_t i = 0; i < n; i++)
            assert(ids[i] >= 0 && ids[i] < eng_tok_vocab_size(fixed));
        free(dec);
        free(nfc);
        free(ids);
        return 0;
    }
    eng_tokenizer *t = eng_tok_load_mem(text, len, &err);
    if (!t) {
        assert(err.code == 400 && err.msg[0]);
        return 0;
    }
    const char *sample = "Hello world, it's 2026!\n\t<|im_end|> 日本 e\xcc\x81";
    if (eng_tok_encode(t, sample, strlen(sample), 1, &ids, &n, &err) == 0) {
        char *dec = eng_tok_decode(t, ids, n, 1, NULL);
        for (size_t i = 0; i < n; i++)
            assert(eng_tok_id_to_token(t, ids[i]) != NULL);
        free(dec);
        free(ids);
    }
    eng_tok_free(t);
    return 0;
}
