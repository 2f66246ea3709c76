/* libFuzzer target for eng_peft_config_parse: adapter_config.json of a PEFT adapter a user hands to lathe
 * (`lathe model logprobs|sample --adapter DIR`). Any input must give 0 with a usable config or -1 with a
 * message, never a crash. */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/peft.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    eng_lora_config lc;
    lt_err err = {0};
    int rc = eng_peft_config_parse((const char *)data, size, "adapter_config.json", &lc, &err);
    if (rc == 0) {
        assert(lc.rank >= 1 && lc.rank <= 4096 && lc.alpha > 0 && lc.targets != 0);
    } else {
        assert(err.code == 400 && err.msg[0]);
    }
    return 0;
}
