/* cmd_model.c: `lathe model init-tiny|info|tensors|logprobs|sample`.
 *
 * init-tiny writes a small random model in the HF layout (engine/tiny.h). info reads a model directory the
 * way a worker would (config.json strictly, the weights through the safetensors reader, tokenizer.json's
 * size) and checks every tensor the config implies is present with the right shape, so a directory that
 * passes `info` is one the engine can load. tensors lists the tensors of a safetensors file or model
 * directory with a checksum of their f32 values (for cross-checking writers). logprobs and sample run the
 * model; they live in cmd_model_run.c.
 *
 * Each verb is called with argv[0] = the verb name. Exit codes as in cli.h. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/model_info.h"
#include "engine/config.h"
#include "engine/gguf_model.h"
#include "engine/safetensors.h"
#include "engine/tiny.h"
#include "util/strbuf.h"
#include "util/util.h"

int cmd_model_logprobs(int argc, char **argv); /* cmd_model_run.c */
int cmd_model_sample(int argc, char **argv);   /* cmd_model_run.c */
int cmd_model_tensor(int argc, char **argv);   /* cmd_model_tensor.c */
int cmd_model_convert(int argc, char **argv);  /* cmd_model_convert.c */

static void usage_model(FILE *f) {
    fputs(
        "usage: lathe model <verb> [args]   (lathe model <verb> --help for details)\n\n"
        "  init-tiny DIR [options]   write a small random-weight model with a byte-level BPE tokenizer\n"
        "  info DIR [--json]         architecture, sizes, parameters, dtype, tokenizer vocab, context\n"
        "  tensors PATH [--json]     list the tensors of a .safetensors file or model dir (with checksums)\n"
        "  tensor PATH [NAME --out F.npy]  list a .gguf/.safetensors's tensors, or write one as f32 .npy\n"
        "  convert SRC DST [--adapter DIR] [--dtype T]  GGUF -> HF model dir, or model (+ adapter) -> GGUF\n"
        "  logprobs DIR ...          per-token log-probabilities of a text under the model\n"
        "  sample DIR ...            generate text from the model\n",
        f);
}

static void usage_init_tiny(FILE *f) {
    fputs("usage: lathe model init-tiny DIR [options]\n\n"
          "Writes config.json, tokenizer.json, tokenizer_config.json, generation_config.json and\n"
          "model.safetensors (random weights, deterministic from --seed) into DIR.\n\n"
          "  --arch llama|qwen2|qwen3|mistral   architecture (default llama)\n"
          "  --layers N          decoder layers (default 2)\n"
          "  --hidden N          hidden size (default 64)\n"
          "  --heads N           attention heads (default 4)\n"
          "  --kv-heads N        key/value heads, must divide --heads (default 2)\n"
          "  --head-dim N        head dimension (default hidden/heads)\n"
          "  --intermediate N    MLP size (default 128)\n"
          "  --vocab N|byte      vocab_size incl. 3 special tokens (default 512; above ~553 the tokenizer\n"
          "                      stops growing and the embedding is padded); byte = 256 bytes, no merges\n"
          "  --tie 0|1           tie the output head to the embeddings (default 0)\n"
          "  --rope-scaling none|llama3   Llama 3 RoPE scaling (factor 8, original context 256)\n"
          "  --rope-theta X      RoPE base (default 10000)\n"
          "  --max-pos N         context length (default 2048)\n"
          "  --dtype f32|bf16|f16  weight dtype in model.safetensors (default f32)\n"
          "  --init-std X        std of the random normal weights (default 0.02, HF's initializer_range;\n"
          "                      a model that must learn through LoRA alone wants ~0.1)\n"
          "  --seed N            random seed (default 0)\n",
          f);
}

static void usage_info(FILE *f) {
    fputs("usage: lathe model info DIR|FILE.gguf [--json]\n\n"
          "Reads DIR/config.json, the weights (model.safetensors or model.safetensors.index.json) and\n"
          "DIR/tokenizer.json, checks every tensor the config implies, and prints architecture, sizes,\n"
          "parameter count, weight dtype, tokenizer vocabulary and context length. Exit 1 if anything is\n"
          "missing or malformed (the message names the file and key or tensor).\n"
          "A .gguf file is read the same way (metadata, every tensor checked) and also shows its\n"
          "quantization (file type, tensors per stored type), tokenizer, and the bytes stored and resident\n"
          "once loaded (matrices are kept as stored, norms and biases widened to f32).\n",
          f);
}

static void usage_tensors(FILE *f) {
    fputs("usage: lathe model tensors PATH [--json]\n\n"
          "Lists name, dtype, shape and the sum of the f32 values of every tensor in PATH (a .safetensors\n"
          "file, or a model directory read through its index or model.safetensors).\n",
          f);
}

static int is_help(const char *s) {
    return !strcmp(s, "--help") || !strcmp(s, "-h");
}

static int parse_int(const char *opt, const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "lathe model: %s must be an integer in %ld..%ld, got '%s'\n", opt, lo, hi, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int cmd_init_tiny(int argc, char **argv) {
    eng_tiny_opts o;
    eng_tiny_defaults(&o);
    const char *dir = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (is_help(a)) {
            usage_init_tiny(stdout);
            return EXIT_OK;
        }
        if (a[0] != '-' || !a[1]) {
            if (dir) {
                fprintf(stderr, "lathe model init-tiny: unexpected argument '%s'\n", a);
                return EXIT_USAGE;
            }
            dir = a;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "lathe model init-tiny: %s needs a value\n", a);
            return EXIT_USAGE;
        }
        const char *v = argv[++i];
        int rc = 0;
        if (!strcmp(a, "--arch")) {
            if (!strcmp(v, "llama"))
                o.arch = ENG_ARCH_LLAMA;
            else if (!strcmp(v, "qwen2"))
                o.arch = ENG_ARCH_QWEN2;
            else if (!strcmp(v, "qwen3"))
                o.arch = ENG_ARCH_QWEN3;
            else if (!strcmp(v, "mistral"))
                o.arch = ENG_ARCH_MISTRAL;
            else {
                fprintf(stderr,
                        "lathe model init-tiny: --arch must be llama, qwen2, qwen3 or mistral, got '%s'\n",
                        v);
                return EXIT_USAGE;
            }
        } else if (!strcmp(a, "--layers"))
            rc = parse_int(a, v, 1, 1024, &o.layers);
        else if (!strcmp(a, "--hidden"))
            rc = parse_int(a, v, 2, 65536, &o.hidden);
        else if (!strcmp(a, "--heads"))
            rc = parse_int(a, v, 1, 1024, &o.heads);
        else if (!strcmp(a, "--kv-heads"))
            rc = parse_int(a, v, 1, 1024, &o.kv_heads);
        else if (!strcmp(a, "--head-dim"))
            rc = parse_int(a, v, 2, 4096, &o.head_dim);
        else if (!strcmp(a, "--intermediate"))
            rc = parse_int(a, v, 1, 1 << 20, &o.intermediate);
        else if (!strcmp(a, "--max-pos"))
            rc = parse_int(a, v, 1, 1 << 24, &o.max_pos);
        else if (!strcmp(a, "--tie"))
            rc = parse_int(a, v, 0, 1, &o.tie);
        else if (!strcmp(a, "--vocab")) {
            if (!strcmp(v, "byte"))
                o.vocab = ENG_TINY_VOCAB_BYTE;
            else
                rc = parse_int(a, v, 256 + ENG_TINY_NSPECIAL, 1 << 20, &o.vocab);
        } else if (!strcmp(a, "--rope-scaling")) {
            if (!strcmp(v, "llama3"))
                o.rope_llama3 = 1;
            else if (!strcmp(v, "none"))
                o.rope_llama3 = 0;
            else {
                fprintf(stderr, "lathe model init-tiny: --rope-scaling must be none or llama3, got '%s'\n",
                        v);
                return EXIT_USAGE;
            }
        } else if (!strcmp(a, "--rope-theta")) {
            char *end;
            double x = strtod(v, &end);
            if (*end || end == v || !(x > 0)) {
                fprintf(stderr, "lathe model init-tiny: --rope-theta must be a positive number, got '%s'\n",
                        v);
                return EXIT_USAGE;
            }
            o.rope_theta = (float)x;
        } else if (!strcmp(a, "--init-std")) {
            char *end;
            double x = strtod(v, &end);
            if (*end || end == v || !(x > 0) || x > 10) {
                fprintf(stderr, "lathe model init-tiny: --init-std must be a number in (0, 10], got '%s'\n",
                        v);
                return EXIT_USAGE;
            }
            o.init_std = x;
        } else if (!strcmp(a, "--dtype")) {
            if (!strcmp(v, "f32"))
                o.dtype = ST_F32;
            else if (!strcmp(v, "bf16"))
                o.dtype = ST_BF16;
            else if (!strcmp(v, "f16"))
                o.dtype = ST_F16;
            else {
                fprintf(stderr, "lathe model init-tiny: --dtype must be f32, bf16 or f16, got '%s'\n", v);
                return EXIT_USAGE;
            }
        } else if (!strcmp(a, "--seed")) {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            if (errno || *end || end == v || v[0] == '-') {
                fprintf(stderr, "lathe model init-tiny: --seed must be a non-negative integer, got '%s'\n",
                        v);
                return EXIT_USAGE;
            }
            o.seed = s;
        } else {
            fprintf(stderr, "lathe model init-tiny: unknown option '%s' (see --help)\n", a);
            return EXIT_USAGE;
        }
        if (rc) return EXIT_USAGE;
    }
    if (!dir) {
        usage_init_tiny(stderr);
        return EXIT_USAGE;
    }
    lt_err err;
    lt_err_clear(&err);
    if (eng_tiny_write(dir, &o, &err) != 0) {
        fprintf(stderr, "lathe model init-tiny: %s\n", err.msg);
        return err.code == 400 ? EXIT_USAGE : EXIT_FAIL;
    }
    eng_config cfg;
    if (eng_config_load(dir, &cfg, &err) != 0) {
        fprintf(stderr, "lathe model init-tiny: wrote an unreadable config: %s\n", err.msg);
        return EXIT_FAIL;
    }
    printf("wrote %s: %s, %d layers, hidden %d, %d heads (%d kv), vocab %d, %lld params\n", dir,
           cfg.architecture, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size,
           eng_config_num_params(&cfg));
    return EXIT_OK;
}

/* Every tensor the config implies, checked for presence and shape. Returns the number found (all of them on
 * success) or -1 with err. */
static int check_weights(const st_reader *r, const eng_config *c, lt_err *err) {
    int64_t C = c->hidden_size, V = c->vocab_size, I = c->intermediate_size, D = c->head_dim;
    int64_t Q = (int64_t)c->num_heads * D, K = (int64_t)c->num_kv_heads * D;
    char name[160];
    int n = 0;
#define EXPECT(nd, a, b)                                                                                     \
    do {                                                                                                     \
        int64_t shp[2] = {(a), (b)};                                                                         \
        if (!st_expect(r, name, (nd), shp, err)) return -1;                                                  \
        n++;                                                                                                 \
    } while (0)
    snprintf(name, sizeof name, "model.embed_tokens.weight");
    EXPECT(2, V, C);
    snprintf(name, sizeof name, "model.norm.weight");
    EXPECT(1, C, 0);
    if (!c->tie_word_embeddings) {
        snprintf(name, sizeof name, "lm_head.weight");
        EXPECT(2, V, C);
    }
    for (int l = 0; l < c->num_layers; l++) {
        static const char *names[] = {"input_layernorm.weight",  "post_attention_layernorm.weight",
                                      "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                      "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                                      "mlp.gate_proj.weight",    "mlp.up_proj.weight",
                                      "mlp.down_proj.weight"};
        const int64_t shapes[][3] = {{1, C, 0}, {1, C, 0}, {2, Q, C}, {2, K, C}, {2, K, C},
                                     {2, C, Q}, {2, I, C}, {2, I, C}, {2, C, I}};
        for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
            snprintf(name, sizeof name, "model.layers.%d.%s", l, names[k]);
            EXPECT((int)shapes[k][0], shapes[k][1], shapes[k][2]);
        }
        if (c->attention_bias) {
            snprintf(name, sizeof name, "model.layers.%d.self_attn.q_proj.bias", l);
            EXPECT(1, Q, 0);
            snprintf(name, sizeof name, "model.layers.%d.self_attn.k_proj.bias", l);
            EXPECT(1, K, 0);
            snprintf(name, sizeof name, "model.layers.%d.self_attn.v_proj.bias", l);
            EXPECT(1, K, 0);
        }
        if (c->qk_norm) {
            snprintf(name, sizeof name, "model.layers.%d.self_attn.q_norm.weight", l);
            EXPECT(1, D, 0);
            snprintf(name, sizeof name, "model.layers.%d.self_attn.k_norm.weight", l);
            EXPECT(1, D, 0);
        }
    }
#undef EXPECT
    return n;
}

/* One more than the largest id in tokenizer.json's model vocab and added tokens. */
static int tokenizer_vocab(const char *dir, lt_err *err) {
    char *path = lt_path_join(dir, "tokenizer.json");
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) {
        lt_err_set(err, 400, "%s: %s", path, jerr.text);
        free(path);
        return -1;
    }
    long long maxid = -1;
    json_t *vocab = json_object_get(json_object_get(root, "model"), "vocab");
    const char *k;
    json_t *v;
    json_object_foreach(vocab, k, v) {
        if (json_is_integer(v) && json_integer_value(v) > maxid) maxid = json_integer_value(v);
    }
    size_t i;
    json_array_foreach(json_object_get(root, "added_tokens"), i, v) {
        json_t *id = json_object_get(v, "id");
        if (json_is_integer(id) && json_integer_value(id) > maxid) maxid = json_integer_value(id);
    }
    json_decref(root);
    if (maxid < 0) {
        lt_err_set(err, 400, "%s: no vocabulary (\"model.vocab\" and \"added_tokens\" are empty or missing)",
                   path);
        free(path);
        return -1;
    }
    free(path);
    return (int)(maxid + 1);
}

static int cmd_info(int argc, char **argv) {
    const char *dir = NULL;
    int as_json = 0;
    for (int i = 1; i < argc; i++) {
        if (is_help(argv[i])) {
            usage_info(stdout);
            return EXIT_OK;
        } else if (!strcmp(argv[i], "--json"))
            as_json = 1;
        else if (argv[i][0] == '-' || dir) {
            fprintf(stderr, "lathe model info: unexpected argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        } else
            dir = argv[i];
    }
    if (!dir) {
        usage_info(stderr);
        return EXIT_USAGE;
    }
    if (eng_path_is_gguf(dir)) return cmd_model_info_gguf(dir, as_json);
    lt_err err;
    lt_err_clear(&err);
    eng_config c;
    if (eng_config_load(dir, &c, &err) != 0) {
        fprintf(stderr, "lathe model info: %s\n", err.msg);
        return err.code == 404 ? EXIT_NOTFOUND : EXIT_FAIL;
    }
    st_reader *r = st_open(dir, &err);
    if (!r) {
        fprintf(stderr, "lathe model info: %s\n", err.msg);
        return err.code == 404 ? EXIT_NOTFOUND : EXIT_FAIL;
    }
    int nexp = check_weights(r, &c, &err);
    int tokv = nexp < 0 ? -1 : tokenizer_vocab(dir, &err);
    if (nexp < 0 || tokv < 0) {
        fprintf(stderr, "lathe model info: %s\n", err.msg);
        st_close(r);
        return EXIT_FAIL;
    }
    int seen[3] = {0, 0, 0};
    for (size_t i = 0; i < st_count(r); i++)
        seen[st_at(r, i)->dtype] = 1;
    strbuf dt = STRBUF_INIT;
    for (int d = 0; d < 3; d++)
        if (seen[d]) sb_printf(&dt, "%s%s", dt.len ? "+" : "", st_dtype_name((st_dtype)d));
    size_t extra = st_count(r) - (size_t)nexp;
    if (as_json) {
        json_t *o = json_object();
        model_info_shape_json(o, &c);
        json_object_set_new(o, "tokenizer_vocab", json_integer(tokv));
        json_object_set_new(o, "dtype", json_string(dt.buf ? dt.buf : ""));
        json_object_set_new(o, "weight_files", json_integer((json_int_t)st_num_files(r)));
        json_object_set_new(o, "weight_bytes", json_integer((json_int_t)st_total_bytes(r)));
        json_object_set_new(o, "tensors", json_integer((json_int_t)st_count(r)));
        json_object_set_new(o, "unexpected_tensors", json_integer((json_int_t)extra));
        model_info_config_json(o, &c);
        char *s = json_dumps(o, JSON_INDENT(2));
        printf("%s\n", s);
        free(s);
        json_decref(o);
    } else {
        model_info_shape_text(&c);
        printf("weights       %s, %zu tensors in %zu file%s, %zu bytes%s\n", dt.buf ? dt.buf : "-",
               st_count(r), st_num_files(r), st_num_files(r) == 1 ? "" : "s", st_total_bytes(r),
               extra ? " (some tensors unused by the engine)" : "");
        printf("vocab         %d (config), %d (tokenizer.json)\n", c.vocab_size, tokv);
        printf("context       %d\n", c.max_position_embeddings);
    }
    sb_free(&dt);
    st_close(r);
    return EXIT_OK;
}

static int cmd_tensors(int argc, char **argv) {
    const char *path = NULL;
    int as_json = 0;
    for (int i = 1; i < argc; i++) {
        if (is_help(argv[i])) {
            usage_tensors(stdout);
            return EXIT_OK;
        } else if (!strcmp(argv[i], "--json"))
            as_json = 1;
        else if (argv[i][0] == '-' || path) {
            fprintf(stderr, "lathe model tensors: unexpected argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        } else
            path = argv[i];
    }
    if (!path) {
        usage_tensors(stderr);
        return EXIT_USAGE;
    }
    lt_err err;
    lt_err_clear(&err);
    st_reader *r = st_open(path, &err);
    if (!r) {
        fprintf(stderr, "lathe model tensors: %s\n", err.msg);
        return err.code == 404 ? EXIT_NOTFOUND : EXIT_FAIL;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < st_count(r); i++) {
        const st_tensor *t = st_at(r, i);
        float *f = st_tensor_to_f32_alloc(t, &err);
        if (!f) {
            fprintf(stderr, "lathe model tensors: %s\n", err.msg);
            json_decref(arr);
            st_close(r);
            return EXIT_FAIL;
        }
        double sum = 0;
        for (int64_t k = 0; k < t->numel; k++)
            sum += f[k];
        double first = t->numel ? f[0] : 0;
        free(f);
        if (as_json) {
            json_t *shape = json_array();
            for (int d = 0; d < t->ndim; d++)
                json_array_append_new(shape, json_integer(t->shape[d]));
            json_array_append_new(arr, json_pack("{s:s, s:s, s:o, s:f, s:f}", "name", t->name, "dtype",
                                                 st_dtype_name(t->dtype), "shape", shape, "sum", sum, "first",
                                                 first));
        } else {
            printf("%-60s %-4s [", t->name, st_dtype_name(t->dtype));
            for (int d = 0; d < t->ndim; d++)
                printf("%s%lld", d ? ", " : "", (long long)t->shape[d]);
            printf("] sum=%.9g\n", sum);
        }
    }
    if (as_json) {
        json_t *o = json_pack("{s:o, s:i, s:s?}", "tensors", arr, "files", (json_int_t)st_num_files(r),
                              "format", st_metadata(r, "format"));
        char *s = json_dumps(o, JSON_INDENT(2));
        printf("%s\n", s);
        free(s);
        json_decref(o);
    } else {
        json_decref(arr);
    }
    st_close(r);
    return EXIT_OK;
}

int cmd_model(int argc, char **argv) {
    if (argc < 2 || is_help(argv[1]) || !strcmp(argv[1], "help")) {
        usage_model(argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : EXIT_OK;
    }
    const char *verb = argv[1];
    if (!strcmp(verb, "init-tiny")) return cmd_init_tiny(argc - 1, argv + 1);
    if (!strcmp(verb, "info")) return cmd_info(argc - 1, argv + 1);
    if (!strcmp(verb, "tensors")) return cmd_tensors(argc - 1, argv + 1);
    if (!strcmp(verb, "tensor")) return cmd_model_tensor(argc - 1, argv + 1);
    if (!strcmp(verb, "convert")) return cmd_model_convert(argc - 1, argv + 1);
    if (!strcmp(verb, "logprobs")) return cmd_model_logprobs(argc - 1, argv + 1);
    if (!strcmp(verb, "sample")) return cmd_model_sample(argc - 1, argv + 1);
    fprintf(stderr, "lathe model: unknown verb '%s'\n\n", verb);
    usage_model(stderr);
    return EXIT_USAGE;
}
