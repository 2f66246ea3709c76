/* libFuzzer target for the safetensors reader: any byte string must be rejected with an error or accepted as
 * a file whose every tensor converts to f32 and whose re-serialisation by the writer reads back identically.
 */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lt_err err;
    lt_err_clear(&err);
    st_reader *r = st_open_memory(data, size, "fuzz.safetensors", &err);
    if (!r) {
        assert(err.code == 400 && err.msg[0]);
        return 0;
    }
    st_writer *w = st_writer_new();
    size_t total = 0;
    for (size_t i = 0; i < st_count(r); i++) {
        const st_tensor *t = st_at(r, i);
        assert(st_find(r, t->name) == t);
        assert(t->nbytes == (size_t)t->numel * st_dtype_size(t->dtype));
        total += t->nbytes;
        if (t->numel <= (1 << 20)) {
            float *f = st_tensor_to_f32_alloc(t, &err);
            assert(f);
            free(f);
        }
        int rc = st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, &err);
        assert(rc == 0);
    }
    assert(total == st_total_bytes(r));
    void *buf;
    size_t len;
    int rc = st_writer_serialize(w, &buf, &len, &err);
    assert(rc == 0);
    st_reader *r2 = st_open_memory(buf, len, "rewritten", &err);
    assert(r2);
    assert(st_count(r2) == st_count(r));
    for (size_t i = 0; i < st_count(r); i++) {
        const st_tensor *a = st_at(r, i), *b = st_at(r2, i);
        assert(strcmp(a->name, b->name) == 0 && a->dtype == b->dtype && a->nbytes == b->nbytes);
        assert(a->nbytes == 0 || memcmp(a->data, b->data, a->nbytes) == 0);
    }
    st_close(r2);
    free(buf);
    st_writer_free(w);
    st_close(r);
    return 0;
}
