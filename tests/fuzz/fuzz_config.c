/* libFuzzer target for config.json parsing: any input is rejected with a message or yields a config that
 * satisfies the invariants the engine relies on. */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    eng_config c;
    lt_err err;
    lt_err_clear(&err);
    if (eng_config_parse((const char *)data, size, "fuzz/config.json", &c, &err) != 0) {
        assert(err.code == 400 && err.msg[0]);
        return 0;
    }
    assert(c.vocab_size > 0 && c.hidden_size > 0 && c.intermediate_size > 0 && c.num_layers > 0);
    assert(c.num_heads > 0 && c.num_kv_heads > 0 && c.num_heads % c.num_kv_heads == 0);
    assert(c.head_dim > 0 && c.head_dim % 2 == 0);
    assert(c.rope_theta > 0 && c.rms_norm_eps > 0 && c.max_position_embeddings > 0);
    if (c.rope_type == ENG_ROPE_LLAMA3)
        assert(c.rope_factor > 0 && c.rope_high_freq_factor > c.rope_low_freq_factor &&
               c.rope_original_max_pos > 0);
    (void)eng_config_num_params(&c);
    return 0;
}
