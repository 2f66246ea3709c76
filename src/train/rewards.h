/* rewards.h: the reward recipes of docs/spec.md §4.5, scoring one completion of one RL prompt.
 *
 *   exact_match_v1           1.0 if the stripped completion equals params.expected, else the row's expected
 *                            output (stripped), else 0.0
 *   contains_v1              params.reward_if_true (1.0) if params.needle is a substring, else
 * reward_if_false row_reward_v1            the row's numeric reward, else params.default (0.0)
 *   trajectory_imitation_v1  exact stripped match with the expected output: the row's reward if any, else
 *                            reward_if_true; else reward_if_false
 *   task_verifier_v1         sha256 of the stripped completion equals the task's flag hash
 *   gsm8k_v1                 the final number (after the last "####", else the last number in the text;
 *                            thousands commas dropped) equals the expected one within 1e-6
 *   task_env_verifier_v1     the task's verification (flag, exact, regex) applied to the completion
 *   task_env_agent_v1        needs an environment backend: rw_recipe_new refuses it
 *
 * Every score yields reward, passed (the recipe's notion of success) and extraction_failed (gsm8k: no number
 * in the completion). rw_stats accumulates scores into metrics: "<prefix>reward", "<prefix>reward_max",
 * "<prefix>reward_min" (by the caller), and the recipe's own "reward/..." keys via rw_stats_metrics:
 * reward/passed (fraction), reward/recipe (the name, a string), plus per recipe:
 *   exact_match_v1 reward/exact_match, contains_v1 reward/contains, row_reward_v1 reward/row_reward_present,
 *   trajectory_imitation_v1 reward/exact_match, task_verifier_v1 reward/flag_match, gsm8k_v1
 *   reward/extraction_failed and reward/correct, task_env_verifier_v1 reward/verified.
 *
 * Ownership: rw_recipe_new returns an object freed with rw_recipe_free; it copies what it needs. */
#ifndef LATHE_TRAIN_REWARDS_H
#define LATHE_TRAIN_REWARDS_H

#include <jansson.h>

#include "util/err.h"

typedef struct rw_recipe rw_recipe;

typedef struct rw_result {
    double reward;
    int passed;            /* 1 when the completion did what the recipe checks */
    int extraction_failed; /* gsm8k_v1: no number found in the completion (0 for other recipes) */
} rw_result;

/* recipe: {"name", "params"} (effective_config.reward_recipe; params may be absent). task: the task's
 * normalized manifest or NULL. NULL with err (422) for an unknown name, a recipe whose task/params are
 * missing or wrong, or task_env_agent_v1 (no environment backend). */
rw_recipe *rw_recipe_new(const json_t *recipe, const json_t *task, lt_err *err);
void rw_recipe_free(rw_recipe *r);
const char *rw_recipe_name(const rw_recipe *r);

/* Checks before training that item (an rows_rl_items element: {messages, expected, reward, context}) can be
 * scored: exact_match_v1 / trajectory_imitation_v1 / gsm8k_v1 need an expected output (gsm8k: one holding a
 * number). 0, or -1 with err (422, no location: the caller prefixes the row). */
int rw_check_item(const rw_recipe *r, const json_t *item, lt_err *err);

/* Scores completion (the generated text, stop token/string removed) for item. Never fails. */
void rw_score(const rw_recipe *r, const char *completion, const json_t *item, rw_result *out);

/* gsm8k_v1's extraction: 1 and *out when text holds a number by the rule above, else 0. */
int rw_gsm8k_extract(const char *text, double *out);

typedef struct rw_stats {
    int n, passed, extraction_failed;
    double sum, max, min;
    int row_reward_present; /* row_reward_v1: scored items that carried a reward */
} rw_stats;

void rw_stats_init(rw_stats *s);
void rw_stats_add(rw_stats *s, const rw_recipe *r, const json_t *item, const rw_result *res);
/* Sets the recipe's keys on obj: as one-element arrays when as_arrays, else as scalars (reward/recipe is
 * always a scalar string). */
void rw_stats_metrics(const rw_stats *s, const rw_recipe *r, json_t *obj, int as_arrays);

#endif
