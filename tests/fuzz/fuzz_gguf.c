/* libFuzzer target for the GGUF reader: any byte string must be rejected with a 400 naming the file, or
 * accepted as a file whose metadata can be walked (every string array element reachable), whose every tensor
 * dequantizes, and which, re-serialized through the writer (metadata of the writer's value types, every
 * tensor as is), reads back with the same tensors byte for byte. */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"

/* Copies the kv into the writer when the writer has a setter for its type; returns 1 when copied. */
static int copy_kv(gguf_writer *w, const gguf_kv *kv) {
    if (!strcmp(kv->key, "general.alignment")) return 0;
    switch (kv->type) {
    case GGUF_V_U32: {
        uint32_t v;
        memcpy(&v, kv->data, 4);
        gguf_writer_set_u32(w, kv->key, v);
        return 1;
    }
    case GGUF_V_STR: {
        char *s = malloc(kv->len + 1);
        memcpy(s, kv->data, kv->len);
        s[kv->len] = 0;
        int ok = strlen(s) == kv->len; /* the writer takes C strings */
        if (ok) gguf_writer_set_str(w, kv->key, s);
        free(s);
        return ok;
    }
    case GGUF_V_ARR:
        if (kv->arr_type == GGUF_V_STR) {
            const char **v = malloc((kv->n ? kv->n : 1) * sizeof *v);
            size_t *lens = malloc((kv->n ? kv->n : 1) * sizeof *lens);
            for (uint64_t i = 0; i < kv->n; i++) {
                int rc = gguf_arr_str(kv, i, &v[i], &lens[i]);
                assert(rc == 0);
            }
            gguf_writer_set_arr_str(w, kv->key, v, lens, kv->n);
            free(v);
            free(lens);
            return 1;
        }
        return 0;
    default:
        return 0;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lt_err err;
    lt_err_clear(&err);
    gguf_file *f = gguf_open_memory(data, size, "fuzz.gguf", &err);
    if (!f) {
        assert(err.code == 400 && strstr(err.msg, "fuzz.gguf"));
        return 0;
    }
    gguf_writer *w = gguf_writer_new();
    size_t copied = 0;
    for (size_t i = 0; i < gguf_kv_count(f); i++) {
        const gguf_kv *kv = gguf_kv_at(f, i);
        assert(gguf_find_kv(f, kv->key) == kv);
        if (kv->type == GGUF_V_ARR && kv->arr_type == GGUF_V_STR && kv->n) {
            const char *s;
            size_t n;
            assert(gguf_arr_str(kv, kv->n - 1, &s, &n) == 0);
            assert((const uint8_t *)s >= data && (const uint8_t *)s + n <= data + size);
        }
        copied += (size_t)copy_kv(w, kv);
    }
    for (size_t i = 0; i < gguf_tensor_count(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        assert(gguf_find_tensor(f, t->name) == t);
        assert((const uint8_t *)t->data + t->nbytes <= data + size);
        if (t->numel <= (1 << 20)) {
            float *out = malloc((size_t)t->numel * sizeof *out);
            assert(gguf_tensor_to_f32(t, out, (size_t)t->numel, &err) == 0);
            free(out);
        }
        int rc = gguf_writer_add_tensor(w, t->name, t->type, t->ndim, t->ne, t->data, &err);
        assert(rc == 0);
    }
    void *buf;
    size_t len;
    assert(gguf_writer_serialize(w, &buf, &len, &err) == 0);
    gguf_file *g = gguf_open_memory(buf, len, "rewritten", &err);
    assert(g);
    assert(gguf_tensor_count(g) == gguf_tensor_count(f));
    assert(gguf_kv_count(g) == copied + 1);
    for (size_t i = 0; i < gguf_tensor_count(f); i++) {
        const gguf_tensor *a = gguf_tensor_at(f, i), *b = gguf_tensor_at(g, i);
        assert(!strcmp(a->name, b->name) && a->type == b->type && a->nbytes == b->nbytes);
        assert(!memcmp(a->ne, b->ne, sizeof a->ne) && a->ndim == b->ndim);
        assert(memcmp(a->data, b->data, a->nbytes) == 0);
    }
    gguf_close(g);
    free(buf);
    gguf_writer_free(w);
    gguf_close(f);
    return 0;
}
