/* libFuzzer target for the GGUF model reader (engine/gguf_model.c) on top of the GGUF reader: any byte string
 * must be refused with a 400 naming the file, or give a config the engine can build (heads divide, head_dim
 * even, every size positive) whose model then loads: a config that passes eng_gguf_config has had every
 * tensor checked, so the load may only fail for memory. Seed: a one-layer llama file (corpus/). */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "engine/gguf_model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lt_err err;
    lt_err_clear(&err);
    gguf_file *f = gguf_open_memory(data, size, "fuzz.gguf", &err);
    if (!f) return 0;
    eng_config c;
    if (eng_gguf_config(f, &c, &err) != 0) {
        assert(err.code == 400 && strstr(err.msg, "fuzz.gguf"));
        gguf_close(f);
        return 0;
    }
    assert(c.num_layers > 0 && c.hidden_size > 0 && c.intermediate_size > 0 && c.vocab_size > 0);
    assert(c.num_heads > 0 && c.num_kv_heads > 0 && c.num_heads % c.num_kv_heads == 0);
    assert(c.head_dim > 0 && c.head_dim % 2 == 0 && c.rms_norm_eps > 0 && c.rope_theta > 0);
    eng_gguf_summary s;
    eng_gguf_summarize(f, &s);
    assert(s.n_tensors == (int)gguf_tensor_count(f));
    if (eng_config_num_params(&c) <= (1 << 20)) {
        eng_model *m = eng_gguf_model_from(f, eng_kernels_cpu(), &err);
        assert(m && m->load_note[0]);
        eng_model_free(m);
    }
    gguf_close(f);
    return 0;
}
