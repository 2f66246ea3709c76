/* cmd_model_convert.c: `lathe model convert SRC DST [--adapter DIR] [--dtype T]`.
 *
 * A .gguf SRC and a DST that does not end in .gguf: the GGUF becomes a Hugging Face model directory
 * (model.safetensors in f32 by default, bf16 or f16 with --dtype; config.json, tokenizer files). A DST
 * ending in .gguf: SRC (a model dir or a .gguf), with the PEFT adapter merged in when --adapter is given,
 * becomes a GGUF file llama.cpp loads (--dtype f16 by default, q8_0, bf16 or f32). The work is
 * engine/gguf_export.c's. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "engine/gguf_export.h"
#include "engine/gguf_model.h"
#include "util/util.h"

int cmd_model_convert(int argc, char **argv);

static void usage_convert(FILE *f) {
    fputs("usage: lathe model convert SRC DST [--adapter DIR] [--dtype T]\n\n"
          "  SRC.gguf DST_DIR          GGUF -> Hugging Face model dir (config.json, model.safetensors,\n"
          "                            tokenizer.json, tokenizer_config.json, generation_config.json);\n"
          "                            --dtype f32 (default) | bf16 | f16\n"
          "  SRC DST.gguf              model dir or GGUF (+ --adapter PEFT_DIR merged in) -> GGUF for "
          "llama.cpp;\n"
          "                            --dtype f16 (default) | q8_0 | bf16 | f32 (norms stay F32)\n",
          f);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

int cmd_model_convert(int argc, char **argv) {
    const char *src = NULL, *dst = NULL, *adapter = NULL, *dtype = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage_convert(stdout);
            return EXIT_OK;
        }
        if (!strcmp(a, "--adapter") || !strcmp(a, "--dtype")) {
            if (++i >= argc) {
                fprintf(stderr, "lathe model convert: %s needs a value\n", a);
                return EXIT_USAGE;
            }
            *(a[2] == 'a' ? &adapter : &dtype) = argv[i];
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "lathe model convert: unknown option '%s' (see --help)\n", a);
            return EXIT_USAGE;
        } else if (!src)
            src = a;
        else if (!dst)
            dst = a;
        else {
            fprintf(stderr, "lathe model convert: unexpected argument '%s'\n", a);
            return EXIT_USAGE;
        }
    }
    if (!src || !dst) {
        usage_convert(stderr);
        return EXIT_USAGE;
    }
    lt_err err;
    lt_err_clear(&err);
    int rc;
    if (ends_with(dst, ".gguf")) {
        gguf_type t = GGUF_F16;
        if (dtype && !strcmp(dtype, "q8_0"))
            t = GGUF_Q8_0;
        else if (dtype && !strcmp(dtype, "f32"))
            t = GGUF_F32;
        else if (dtype && !strcmp(dtype, "bf16"))
            t = GGUF_BF16;
        else if (dtype && strcmp(dtype, "f16")) {
            fprintf(stderr,
                    "lathe model convert: --dtype for a GGUF must be f16, q8_0, bf16 or f32, got '%s'\n",
                    dtype);
            return EXIT_USAGE;
        }
        rc = eng_convert_to_gguf(src, adapter, dst, t, &err);
    } else {
        if (!eng_path_is_gguf(src)) {
            fprintf(stderr,
                    "lathe model convert: SRC must be a .gguf file when DST is a directory (to write a GGUF, "
                    "name DST something.gguf)\n");
            return EXIT_USAGE;
        }
        if (adapter) {
            fprintf(stderr, "lathe model convert: --adapter merges into a GGUF target (DST.gguf)\n");
            return EXIT_USAGE;
        }
        st_dtype d = ST_F32;
        if (dtype && !strcmp(dtype, "bf16"))
            d = ST_BF16;
        else if (dtype && !strcmp(dtype, "f16"))
            d = ST_F16;
        else if (dtype && strcmp(dtype, "f32")) {
            fprintf(stderr,
                    "lathe model convert: --dtype for a model dir must be f32, bf16 or f16, got '%s'\n",
                    dtype);
            return EXIT_USAGE;
        }
        rc = eng_convert_gguf_to_hf(src, dst, d, &err);
    }
    if (rc) {
        fprintf(stderr, "lathe model convert: %s\n", err.msg);
        return err.code == 404 ? EXIT_NOTFOUND : EXIT_FAIL;
    }
    return EXIT_OK;
}
