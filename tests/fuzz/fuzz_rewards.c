/* libFuzzer target for train/rewards: the reward recipes scoring arbitrary completions (model output), and a
 * task's regex verification compiled from arbitrary text. The first byte picks the recipe; for the regex one
 * the input is "PATTERN\0COMPLETION". */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "train/rewards.h"

static const char *const RECIPES[] = {"exact_match_v1",          "contains_v1", "row_reward_v1",
                                      "trajectory_imitation_v1", "gsm8k_v1",    "task_env_verifier_v1"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const char *name = RECIPES[data[0] % (sizeof RECIPES / sizeof RECIPES[0])];
    char *text = malloc(size);
    if (!text) return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    const char *completion = text;
    json_t *task = NULL;
    if (!strcmp(name, "task_env_verifier_v1")) {
        size_t plen = strlen(text);
        completion = plen + 1 < size - 1 ? text + plen + 1 : "";
        json_t *pat = json_string(text); /* NULL for invalid UTF-8: the recipe then refuses the task */
        task = json_pack("{s:s, s:{s:s, s:o*}}", "name", "fuzz", "verification", "method", "regex", "pattern",
                         pat);
    }
    json_t *recipe = json_pack("{s:s, s:{s:s}}", "name", name, "params", "needle", "4");
    json_t *item =
        json_pack("{s:[], s:s, s:f, s:n}", "messages", "expected", "#### 1,234.5", "reward", 0.5, "context");
    lt_err err;
    rw_recipe *r = rw_recipe_new(recipe, task, &err);
    if (r) {
        rw_result res;
        rw_stats st;
        rw_stats_init(&st);
        if (rw_check_item(r, item, &err) == 0) {
            rw_score(r, completion, item, &res);
            rw_stats_add(&st, r, item, &res);
            json_t *m = json_object();
            rw_stats_metrics(&st, r, m, 1);
            json_decref(m);
        }
        rw_recipe_free(r);
    }
    double x;
    rw_gsm8k_extract(completion, &x);
    json_decref(recipe);
    json_decref(item);
    json_decref(task);
    free(text);
    return 0;
}
