/* peft.c: PEFT adapter export / import and merged-weight export.
 *
 * Export writes the model's A and B buffers straight into the safetensors writer (borrowed, no copies) under
 * PEFT's key names, plus an adapter_config.json with the fields PEFT and vLLM read. Import is the inverse:
 * the config gives rank, alpha and targets, the adapter is re-created with them and every tensor is
 * shape-checked before it is copied in. The merged export widens nothing: it computes W + s B A per adapted
 * projection into a temporary f32 copy (one projection at a time) and hands every other base tensor to the
 * writer as is. */
#include "engine/peft.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

/* PEFT key of a LoRA tensor; layer is ignored for the head. */
static void lora_key(char *buf, size_t n, int layer, eng_target t, char ab) {
    if (t == ENG_T_HEAD)
        snprintf(buf, n, "base_model.model.lm_head.lora_%c.weight", ab);
    else
        snprintf(buf, n, "base_model.model.model.layers.%d.%s.%s.lora_%c.weight", layer, eng_target_parent(t),
                 eng_target_name(t), ab);
}

/* The adapted slots in buffer order: (layer, target) for i < L * ENG_NTARGETS, then the head. */
static eng_lora_slot *slot_i(const eng_model *m, int i, int *layer, eng_target *t) {
    if (i < m->L * ENG_NTARGETS) {
        *layer = i / ENG_NTARGETS, *t = (eng_target)(i % ENG_NTARGETS);
        return &m->slots[i];
    }
    *layer = 0, *t = ENG_T_HEAD;
    return (eng_lora_slot *)&m->head_lora;
}

int eng_peft_export(const eng_model *m, const char *dir, const char *base_model, lt_err *err) {
    if (!m->lora_p) return lt_err_set(err, 400, "PEFT export: the model has no LoRA adapter");
    if (lt_mkdir_p(dir, 0755, err)) return -1;
    st_writer *w = st_writer_new();
    char key[256];
    int rc = 0;
    for (int i = 0; i <= m->L * ENG_NTARGETS && !rc; i++) {
        int l;
        eng_target t;
        const eng_lora_slot *sl = slot_i(m, i, &l, &t);
        if (!sl->A) continue;
        int64_t sa[2] = {m->lora.rank, sl->in}, sb[2] = {sl->out, m->lora.rank};
        lora_key(key, sizeof(key), l, t, 'A');
        rc = st_writer_add_f32(w, key, ST_F32, 2, sa, sl->A, err);
        lora_key(key, sizeof(key), l, t, 'B');
        if (!rc) rc = st_writer_add_f32(w, key, ST_F32, 2, sb, sl->B, err);
    }
    char *path = lt_path_join(dir, "adapter_model.safetensors");
    if (!rc) rc = st_writer_write(w, path, err);
    free(path);
    st_writer_free(w);
    if (rc) return -1;

    json_t *o = json_object();
    json_object_set_new(o, "peft_type", json_string("LORA"));
    json_object_set_new(o, "task_type", json_string("CAUSAL_LM"));
    json_object_set_new(o, "base_model_name_or_path",
                        json_string(base_model ? base_model : m->cfg.architecture));
    json_object_set_new(o, "revision", json_null());
    json_object_set_new(o, "inference_mode", json_true());
    json_object_set_new(o, "r", json_integer(m->lora.rank));
    json_object_set_new(o, "lora_alpha", json_real(m->lora.alpha));
    json_object_set_new(o, "lora_dropout", json_real(0.0));
    json_t *tm = json_array();
    for (int t = 0; t <= ENG_T_HEAD; t++)
        if (m->lora.targets & (1u << t))
            json_array_append_new(tm, json_string(eng_target_name((eng_target)t)));
    json_object_set_new(o, "target_modules", tm);
    json_object_set_new(o, "bias", json_string("none"));
    json_object_set_new(o, "use_rslora", json_false());
    json_object_set_new(o, "use_dora", json_false());
    json_object_set_new(o, "fan_in_fan_out", json_false());
    json_object_set_new(o, "modules_to_save", json_null());
    json_object_set_new(o, "init_lora_weights", json_true());
    json_object_set_new(o, "layers_to_transform", json_null());
    json_object_set_new(o, "layers_pattern", json_null());
    json_object_set_new(o, "rank_pattern", json_object());
    json_object_set_new(o, "alpha_pattern", json_object());
    char *text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!text) return lt_err_set(err, 500, "PEFT export: out of memory");
    path = lt_path_join(dir, "adapter_config.json");
    rc = lt_write_file_atomic(path, text, strlen(text), 0644, err);
    free(path);
    free(text);
    return rc ? -1 : 0;
}

int eng_peft_config_parse(const char *text, size_t len, const char *name, eng_lora_config *lc, lt_err *err) {
    json_error_t je;
    json_t *o = json_loadb(text, len, 0, &je);
    int rc = -1;
    memset(lc, 0, sizeof(*lc));
    if (!o || !json_is_object(o)) {
        if (o)
            lt_err_set(err, 400, "%s: must be a JSON object", name);
        else
            lt_err_set(err, 400, "%s: not JSON (line %d: %s)", name, je.line, je.text);
        goto done;
    }
    json_t *jr = json_object_get(o, "r"), *ja = json_object_get(o, "lora_alpha"),
           *jt = json_object_get(o, "target_modules");
    if (!json_is_integer(jr) || json_integer_value(jr) < 1 || json_integer_value(jr) > 4096) {
        lt_err_set(err, 400, "%s: \"r\" must be an integer in 1..4096", name);
        goto done;
    }
    if (!json_is_number(ja) || !(json_number_value(ja) > 0)) {
        lt_err_set(err, 400, "%s: \"lora_alpha\" must be a positive number", name);
        goto done;
    }
    if (json_is_true(json_object_get(o, "use_rslora")) || json_is_true(json_object_get(o, "use_dora"))) {
        lt_err_set(err, 400, "%s: use_rslora / use_dora adapters are not supported (plain LoRA only)", name);
        goto done;
    }
    if (!json_is_array(jt) || json_array_size(jt) == 0) {
        lt_err_set(err, 400,
                   "%s: \"target_modules\" must be a non-empty list such as [\"q_proj\", \"v_proj\"]", name);
        goto done;
    }
    lc->rank = (int)json_integer_value(jr);
    lc->alpha = (float)json_number_value(ja);
    size_t i;
    json_t *v;
    json_array_foreach(jt, i, v) {
        int t = json_is_string(v) ? eng_target_parse(json_string_value(v)) : -1;
        if (t < 0) {
            lt_err_set(err, 400,
                       "%s: target_modules[%zu] is not one of q_proj, k_proj, v_proj, o_proj, gate_proj, "
                       "up_proj, down_proj, lm_head",
                       name, i);
            goto done;
        }
        lc->targets |= 1u << t;
    }
    rc = 0;
done:
    json_decref(o);
    return rc;
}

int eng_peft_import(eng_model *m, const char *dir, lt_err *err) {
    char *path = lt_path_join(dir, "adapter_config.json");
    size_t len;
    char *text = lt_read_file(path, &len, err);
    if (!text) {
        free(path);
        return -1;
    }
    eng_lora_config lc;
    int rc = eng_peft_config_parse(text, len, path, &lc, err);
    free(text);
    st_reader *r = NULL;
    if (rc) goto done; /* rc is -1 */
    rc = -1;
    free(path);
    path = lt_path_join(dir, "adapter_model.safetensors");
    r = st_open(path, err);
    if (!r) goto done;
    if (eng_model_lora_init(m, &lc, err)) goto done;
    char key[256];
    for (int i = 0; i <= m->L * ENG_NTARGETS; i++) {
        int l;
        eng_target t;
        eng_lora_slot *sl = slot_i(m, i, &l, &t);
        if (!sl->A) continue;
        int64_t sa[2] = {lc.rank, sl->in}, sb[2] = {sl->out, lc.rank};
        lora_key(key, sizeof(key), l, t, 'A');
        if (st_load_f32(r, key, 2, sa, sl->A, err)) goto done;
        lora_key(key, sizeof(key), l, t, 'B');
        if (st_load_f32(r, key, 2, sb, sl->B, err)) goto done;
    }
    rc = 0;
done:
    if (rc && m->lora_p && r) {
        /* a half-loaded adapter must not be used: reset it to a no-op */
        memset(m->lora_p, 0, m->n_lora * sizeof(float));
    }
    st_close(r);
    free(path);
    return rc;
}

typedef struct {
    eng_model *m;
    st_writer *w;
    st_dtype dt;
    float **tmp; /* merged copies to free after writing */
    int ntmp;
    lt_err *err;
} merge_ctx;

/* Which (layer, target) a base tensor is, if it is an adaptable projection weight. */
static const eng_lora_slot *slot_for(eng_model *m, const char *name) {
    if (!strcmp(name, "lm_head.weight")) return m->head_lora.A ? &m->head_lora : NULL;
    int layer, n = 0;
    char parent[32], proj[32];
    if (sscanf(name, "model.layers.%d.%31[a-z_].%31[a-z_].weight%n", &layer, parent, proj, &n) != 3)
        return NULL;
    if (name[n] != '\0' || !m->slots || layer < 0 || layer >= m->L) return NULL;
    int t = eng_target_parse(proj);
    if (t < 0) return NULL;
    const eng_lora_slot *sl = eng_model_slot(m, layer, (eng_target)t);
    return sl->A ? sl : NULL;
}

static int merge_one(void *vctx, const char *name, float *data, int rows, int cols) {
    merge_ctx *c = vctx;
    int64_t shape[2] = {rows, cols};
    int ndim = cols ? 2 : 1;
    const eng_lora_slot *sl = slot_for(c->m, name);
    const float *src = data;
    if (!sl && cols && !eng_model_all_f32(c->m)) {
        /* a matrix kept in its stored format comes as a temporary f32 copy: the writer borrows until write */
        size_t n = (size_t)rows * cols;
        float *w = malloc(n * sizeof(float));
        if (!w) return lt_err_set(c->err, 500, "merged export: out of memory"), 1;
        memcpy(w, data, n * sizeof(float));
        c->tmp[c->ntmp++] = w;
        return st_writer_add_f32(c->w, name, c->dt, ndim, shape, w, c->err) ? 1 : 0;
    }
    if (sl) {
        size_t n = (size_t)rows * cols;
        float *w = malloc(n * sizeof(float));
        if (!w) return lt_err_set(c->err, 500, "merged export: out of memory"), 1;
        memcpy(w, data, n * sizeof(float));
        int r = c->m->lora.rank;
        float s = c->m->scale;
#pragma omp parallel for schedule(static)
        for (int o = 0; o < rows; o++)
            for (int k = 0; k < r; k++) {
                float b = s * sl->B[(size_t)o * r + k];
                const float *a = sl->A + (size_t)k * cols;
                float *wr = w + (size_t)o * cols;
                for (int i = 0; i < cols; i++)
                    wr[i] += b * a[i];
            }
        c->tmp[c->ntmp++] = w;
        src = w;
    }
    return st_writer_add_f32(c->w, name, c->dt, ndim, shape, src, c->err) ? 1 : 0;
}

int eng_export_merged(eng_model *m, const char *path, st_dtype dtype, lt_err *err) {
    if (m->head_lora.A && m->cfg.tie_word_embeddings)
        return lt_err_set(
            err, 400,
            "merged export: this model ties lm_head to the embedding, so an lm_head adapter cannot be "
            "merged into one shared matrix; train without the lm_head target or untie the head");
    merge_ctx c = {
        m, st_writer_new(), dtype, calloc((size_t)m->L * (ENG_NTARGETS + 1) + 3, sizeof(float *)), 0, err};
    if (!c.tmp) {
        st_writer_free(c.w);
        return lt_err_set(err, 500, "merged export: out of memory");
    }
    int rc = eng_model_each_weight(m, merge_one, &c);
    if (!rc) rc = st_writer_write(c.w, path, err);
    for (int i = 0; i < c.ntmp; i++)
        free(c.tmp[i]);
    free(c.tmp);
    st_writer_free(c.w);
    return rc ? -1 : 0;
}
