/* state.c: save_state / load_state of a LoRA adapter and its AdamW moments (format in state.h).
 *
 * The three buffers are written as flat F32 tensors in the model's own buffer order, which is fixed by the
 * config and the LoRA targets, so loading is three memcpy's after the shape checks. 64-bit values (RNG state,
 * seed) are written as decimal strings because JSON integers are signed. */
#include "engine/state.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/safetensors.h"

static json_t *targets_json(unsigned targets) {
    json_t *a = json_array();
    for (int t = 0; t <= ENG_T_HEAD; t++)
        if (targets & (1u << t)) json_array_append_new(a, json_string(eng_target_name((eng_target)t)));
    return a;
}

int eng_state_save(const eng_model *m, const char *path, int with_optimizer, uint64_t rng,
                   const char *extra_json, lt_err *err) {
    if (!m->lora_p) return lt_err_set(err, 400, "save_state: the model has no LoRA adapter to save");
    char num[32];
    json_t *o = json_object();
    json_object_set_new(o, "version", json_integer(1));
    json_object_set_new(o, "rank", json_integer(m->lora.rank));
    json_object_set_new(o, "alpha", json_real(m->lora.alpha));
    json_object_set_new(o, "targets", targets_json(m->lora.targets));
    snprintf(num, sizeof(num), "%" PRIu64, m->lora.seed);
    json_object_set_new(o, "seed", json_string(num));
    json_object_set_new(o, "n_lora", json_integer((json_int_t)m->n_lora));
    json_object_set_new(o, "adam_t", json_integer(with_optimizer ? m->adam_t : 0));
    snprintf(num, sizeof(num), "%" PRIu64, rng);
    json_object_set_new(o, "rng", json_string(num));
    json_object_set_new(o, "with_optimizer", json_boolean(with_optimizer));
    json_object_set_new(o, "layers", json_integer(m->L));
    json_object_set_new(o, "hidden", json_integer(m->C));
    json_object_set_new(o, "architecture", json_string(m->cfg.architecture));
    char *meta = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(o);
    if (!meta) return lt_err_set(err, 500, "save_state: out of memory");
    if (extra_json) {
        json_error_t je;
        json_t *x = json_loads(extra_json, JSON_DECODE_ANY, &je);
        if (!x) {
            free(meta);
            return lt_err_set(err, 400, "save_state: extra metadata is not JSON: %s", je.text);
        }
        json_decref(x);
    }
    st_writer *w = st_writer_new();
    st_writer_set_metadata(w, "lathe_state", meta);
    if (extra_json) st_writer_set_metadata(w, "lathe_extra", extra_json);
    free(meta);
    int64_t shape[1] = {(int64_t)m->n_lora};
    int rc = st_writer_add_f32(w, "lora", ST_F32, 1, shape, m->lora_p, err);
    if (!rc && with_optimizer) rc = st_writer_add_f32(w, "adam_m", ST_F32, 1, shape, m->adam_m, err);
    if (!rc && with_optimizer) rc = st_writer_add_f32(w, "adam_v", ST_F32, 1, shape, m->adam_v, err);
    if (!rc) rc = st_writer_write(w, path, err);
    st_writer_free(w);
    return rc ? -1 : 0;
}

static int get_u64(json_t *o, const char *key, uint64_t *out) {
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v)) return -1;
    char *end;
    *out = strtoull(json_string_value(v), &end, 10);
    return *end ? -1 : 0;
}

int eng_state_load(eng_model *m, const char *path, int with_optimizer, uint64_t *rng, char **extra_json,
                   lt_err *err) {
    if (extra_json) *extra_json = NULL;
    st_reader *r = st_open(path, err);
    if (!r) return -1;
    int rc = -1;
    json_t *o = NULL;
    const char *meta = st_metadata(r, "lathe_state");
    if (!meta) {
        lt_err_set(err, 400, "%s: not a lathe state file (no \"lathe_state\" metadata)", path);
        goto done;
    }
    json_error_t je;
    o = json_loads(meta, 0, &je);
    json_t *tg = o ? json_object_get(o, "targets") : NULL;
    uint64_t seed = 0, saved_rng = 0;
    if (!o || !json_is_integer(json_object_get(o, "rank")) || !json_is_number(json_object_get(o, "alpha")) ||
        !json_is_array(tg) || get_u64(o, "seed", &seed) || get_u64(o, "rng", &saved_rng) ||
        !json_is_integer(json_object_get(o, "layers")) || !json_is_integer(json_object_get(o, "hidden"))) {
        lt_err_set(err, 400,
                   "%s: \"lathe_state\" metadata is malformed (needs rank, alpha, targets, seed, rng)", path);
        goto done;
    }
    int layers = (int)json_integer_value(json_object_get(o, "layers"));
    int hidden = (int)json_integer_value(json_object_get(o, "hidden"));
    if (layers != m->L || hidden != m->C) {
        lt_err_set(err, 400,
                   "%s: written for a model with %d layers and hidden size %d, this one has %d and %d", path,
                   layers, hidden, m->L, m->C);
        goto done;
    }
    eng_lora_config lc = {.rank = (int)json_integer_value(json_object_get(o, "rank")),
                          .alpha = (float)json_number_value(json_object_get(o, "alpha")),
                          .targets = 0,
                          .seed = seed};
    size_t i;
    json_t *v;
    json_array_foreach(tg, i, v) {
        int t = json_is_string(v) ? eng_target_parse(json_string_value(v)) : -1;
        if (t < 0) {
            lt_err_set(err, 400, "%s: unknown LoRA target in \"lathe_state\"", path);
            goto done;
        }
        lc.targets |= 1u << t;
    }
    if (eng_model_lora_init(m, &lc, err)) goto done;
    int64_t shape[1] = {(int64_t)m->n_lora};
    if (st_load_f32(r, "lora", 1, shape, m->lora_p, err)) goto done;
    if (with_optimizer) {
        if (!st_find(r, "adam_m")) {
            lt_err_set(err, 400,
                       "%s: has no optimizer state (saved without it); load it without the optimizer", path);
            goto done;
        }
        if (st_load_f32(r, "adam_m", 1, shape, m->adam_m, err) ||
            st_load_f32(r, "adam_v", 1, shape, m->adam_v, err))
            goto done;
        m->adam_t = (int)json_integer_value(json_object_get(o, "adam_t"));
    }
    if (rng) *rng = saved_rng;
    if (extra_json) {
        const char *x = st_metadata(r, "lathe_extra");
        *extra_json = x ? strdup(x) : NULL;
    }
    rc = 0;
done:
    json_decref(o);
    st_close(r);
    return rc;
}
