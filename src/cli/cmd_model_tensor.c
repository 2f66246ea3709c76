/* cmd_model_tensor.c: `lathe model tensor PATH [NAME --out FILE.npy] [--json]`.
 *
 * Without NAME it lists every tensor of a .gguf file, a .safetensors file or a model directory: name, type
 * (GGUF: F32, Q4_K, ...; safetensors: F32/BF16/F16), shape and stored bytes. With NAME it writes that tensor
 * widened or dequantized to f32 as a NumPy .npy file (format 1.0, '<f4', C order), so that other tools (and
 * tests/py/test_gguf_format.py) can compare lathe's dequantization with theirs.
 *
 * Shapes are printed and written row-major, as NumPy sees the data: a safetensors tensor keeps its stored
 * shape; a GGUF tensor, whose file lists ne[0] (fastest) first, gets ne reversed ([rows, cols] for a matrix,
 * which is also what gguf-py's GGUFReader reports as the data's shape); the listing shows the file's ne too.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "engine/gguf.h"
#include "engine/safetensors.h"
#include "util/strbuf.h"
#include "util/util.h"

int cmd_model_tensor(int argc, char **argv);

static void usage_tensor(FILE *f) {
    fputs(
        "usage: lathe model tensor PATH [NAME --out FILE.npy] [--json]\n\n"
        "PATH is a .gguf file, a .safetensors file or a model directory. Without NAME: list every tensor\n"
        "(name, type, row-major shape, stored bytes; GGUF files also show ne, the file's dimension order).\n"
        "With NAME: write that tensor as f32 (dequantized / widened exactly) to FILE.npy, row-major.\n",
        f);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

/* A tensor seen through either reader. */
typedef struct {
    const char *name, *type;
    int ndim;
    int64_t shape[8]; /* row-major */
    int64_t ne[4];    /* GGUF only */
    size_t nbytes;
    int64_t numel;
} tinfo;

static void from_gguf(const gguf_tensor *t, tinfo *o) {
    memset(o, 0, sizeof *o);
    o->name = t->name;
    o->type = gguf_type_name(t->type);
    o->ndim = t->ndim;
    for (int d = 0; d < t->ndim; d++) {
        o->shape[d] = t->ne[t->ndim - 1 - d];
        o->ne[d] = t->ne[d];
    }
    o->nbytes = t->nbytes;
    o->numel = t->numel;
}

static void from_st(const st_tensor *t, tinfo *o) {
    memset(o, 0, sizeof *o);
    o->name = t->name;
    o->type = st_dtype_name(t->dtype);
    o->ndim = t->ndim;
    for (int d = 0; d < t->ndim; d++)
        o->shape[d] = t->shape[d];
    o->nbytes = t->nbytes;
    o->numel = t->numel;
}

static void print_info(const tinfo *t, int gguf, json_t *arr) {
    if (arr) {
        json_t *shape = json_array(), *o;
        for (int d = 0; d < t->ndim; d++)
            json_array_append_new(shape, json_integer(t->shape[d]));
        o = json_pack("{s:s, s:s, s:o, s:I}", "name", t->name, "type", t->type, "shape", shape, "bytes",
                      (json_int_t)t->nbytes);
        if (gguf) {
            json_t *ne = json_array();
            for (int d = 0; d < t->ndim; d++)
                json_array_append_new(ne, json_integer(t->ne[d]));
            json_object_set_new(o, "ne", ne);
        }
        json_array_append_new(arr, o);
        return;
    }
    printf("%-48s %-5s [", t->name, t->type);
    for (int d = 0; d < t->ndim; d++)
        printf("%s%lld", d ? ", " : "", (long long)t->shape[d]);
    printf("] %zu bytes", t->nbytes);
    if (gguf) {
        printf(" ne=[");
        for (int d = 0; d < t->ndim; d++)
            printf("%s%lld", d ? ", " : "", (long long)t->ne[d]);
        printf("]");
    }
    printf("\n");
}

/* NumPy format 1.0: magic, version, u16 header length, a dict padded with spaces + '\n' to 64 bytes. */
static int write_npy(const char *path, const tinfo *t, const float *data, lt_err *err) {
    strbuf h = STRBUF_INIT;
    sb_puts(&h, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    for (int d = 0; d < t->ndim; d++)
        sb_printf(&h, "%lld%s", (long long)t->shape[d], t->ndim == 1 ? "," : d + 1 < t->ndim ? ", " : "");
    sb_puts(&h, "), }");
    while ((10 + h.len + 1) % 64)
        sb_putc(&h, ' ');
    sb_putc(&h, '\n');
    strbuf out = STRBUF_INIT;
    sb_append(&out, "\x93NUMPY\x01\x00", 8);
    sb_putc(&out, (char)(h.len & 0xff));
    sb_putc(&out, (char)(h.len >> 8));
    sb_append(&out, h.buf, h.len);
    sb_append(&out, data, (size_t)t->numel * sizeof(float));
    int rc = lt_write_file_atomic(path, out.buf, out.len, 0644, err);
    sb_free(&h);
    sb_free(&out);
    return rc;
}

static int run(const char *path, const char *name, const char *out, int as_json) {
    lt_err err;
    lt_err_clear(&err);
    int gguf = ends_with(path, ".gguf");
    gguf_file *g = NULL;
    st_reader *r = NULL;
    if (gguf)
        g = gguf_open(path, &err);
    else
        r = st_open(path, &err);
    if (!g && !r) {
        fprintf(stderr, "lathe model tensor: %s\n", err.msg);
        return err.code == 404 ? EXIT_NOTFOUND : EXIT_FAIL;
    }
    int rc = EXIT_OK;
    size_t n = g ? gguf_tensor_count(g) : st_count(r);
    if (!name) {
        json_t *arr = as_json ? json_array() : NULL;
        for (size_t i = 0; i < n; i++) {
            tinfo t;
            if (g)
                from_gguf(gguf_tensor_at(g, i), &t);
            else
                from_st(st_at(r, i), &t);
            print_info(&t, gguf, arr);
        }
        if (arr) {
            char *s = json_dumps(arr, JSON_INDENT(1));
            printf("%s\n", s);
            free(s);
            json_decref(arr);
        }
    } else {
        const gguf_tensor *gt = g ? gguf_find_tensor(g, name) : NULL;
        const st_tensor *stt = r ? st_find(r, name) : NULL;
        if (!gt && !stt) {
            fprintf(stderr, "lathe model tensor: %s has no tensor '%s' (list them: lathe model tensor %s)\n",
                    path, name, path);
            rc = EXIT_NOTFOUND;
        } else {
            tinfo t;
            if (gt)
                from_gguf(gt, &t);
            else
                from_st(stt, &t);
            float *f = malloc(((size_t)t.numel ? (size_t)t.numel : 1) * sizeof *f);
            if (!f) abort();
            int ok = gt ? gguf_tensor_to_f32(gt, f, (size_t)t.numel, &err)
                        : st_tensor_to_f32(stt, f, (size_t)t.numel, &err);
            if (ok == 0) ok = write_npy(out, &t, f, &err);
            if (ok != 0) {
                fprintf(stderr, "lathe model tensor: %s\n", err.msg);
                rc = EXIT_FAIL;
            }
            free(f);
        }
    }
    gguf_close(g);
    st_close(r);
    return rc;
}

int cmd_model_tensor(int argc, char **argv) {
    const char *path = NULL, *name = NULL, *out = NULL;
    int as_json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage_tensor(stdout);
            return EXIT_OK;
        } else if (!strcmp(argv[i], "--json"))
            as_json = 1;
        else if (!strcmp(argv[i], "--out")) {
            if (++i >= argc) {
                fprintf(stderr, "lathe model tensor: --out needs a file name\n");
                return EXIT_USAGE;
            }
            out = argv[i];
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "lathe model tensor: unknown option '%s' (see --help)\n", argv[i]);
            return EXIT_USAGE;
        } else if (!path)
            path = argv[i];
        else if (!name)
            name = argv[i];
        else {
            fprintf(stderr, "lathe model tensor: unexpected argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    if (!path || (name && !out) || (out && !name)) {
        if (path && name && !out) fprintf(stderr, "lathe model tensor: NAME needs --out FILE.npy\n");
        usage_tensor(stderr);
        return EXIT_USAGE;
    }
    return run(path, name, out, as_json);
}
