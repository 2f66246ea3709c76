/* trainer.c: helpers shared by the trainers (trainer.h): checkpoint directories, names, log lines. */
#include "train/trainer.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gemm_bf16.h"
#include "engine/wmat.h"
#include "util/util.h"

int tr_write_checkpoint(eng_engine *e, const char *dir, const char *model_id, const char *extra_json,
                        lt_err *err) {
    if (lt_mkdir_p(dir, 0755, err)) return -1;
    if (eng_peft_export(e->m, dir, model_id, err)) return -1;
    char *state = lt_path_join(dir, "training_state.safetensors");
    int rc = eng_save_state(e, state, 1, extra_json, err);
    free(state);
    return rc ? -1 : 0;
}

int tr_publish_checkpoint(const tr_hooks *h, const char *name, long step, const char *dir, lt_err *err) {
    if (!h || !h->checkpoint || h->checkpoint(h->ud, name, step, dir, err) == 0) return 0;
    if (err && !err->code) lt_err_set(err, 500, "the checkpoint hook failed for %s", name);
    return -1;
}

json_t *tr_read_checkpoint(eng_engine *e, const char *dir, const char *trainer, long *step, int *nckpt,
                           lt_err *err) {
    char *path = lt_path_join(dir, "training_state.safetensors");
    char *extra = NULL;
    int rc = eng_load_state(e, path, 1, &extra, err);
    free(path);
    if (rc) {
        free(extra);
        lt_err_prefix(err, "resuming from %s: ", dir);
        return NULL;
    }
    json_t *x = extra ? json_loads(extra, 0, NULL) : NULL;
    free(extra);
    const char *tr = json_string_value(json_object_get(x, "trainer"));
    json_t *st = json_object_get(x, "step");
    if (!json_is_object(x) || !tr || strcmp(tr, trainer) != 0 || !json_is_integer(st) ||
        json_integer_value(st) < 0) {
        json_decref(x);
        lt_err_set(err, 500, "resuming from %s: the checkpoint was not written by the %s trainer", dir,
                   trainer);
        return NULL;
    }
    *step = (long)json_integer_value(st);
    *nckpt = (int)json_integer_value(json_object_get(x, "checkpoints"));
    return x;
}

void tr_checkpoint_name(char *buf, size_t n, int k, long step) {
    snprintf(buf, n, "checkpoint-%d-step%ld", k, step);
}

int tr_log(const tr_hooks *h, const char *level, lt_err *err, const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!h || !h->event) return 0;
    json_t *ev = json_object(), *m = json_string(msg);
    if (!m) m = json_string("(log message with invalid UTF-8)");
    json_object_set_new(ev, "message", m);
    json_object_set_new(ev, "level", json_string(level ? level : "info"));
    int rc = h->event(h->ud, ev, err);
    json_decref(ev);
    return rc;
}

static eng_engine *open_engine_lora(const tr_inputs *in, const tr_hooks *h, int rank, double alpha,
                                    lt_err *err) {
    if (in->resume_dir) return eng_share(in->base, NULL, err); /* the state file brings the adapter */
    if (!in->init_adapter) {
        eng_lora_config lc = {.rank = rank, .alpha = (float)alpha, .targets = ENG_LORA_ALL, .seed = in->seed};
        return eng_share(in->base, &lc, err);
    }
    char *cfgp = lt_path_join(in->init_adapter, "adapter_config.json");
    size_t len;
    char *text = lt_read_file(cfgp, &len, err);
    eng_lora_config lc;
    int rc = text ? eng_peft_config_parse(text, len, cfgp, &lc, err) : -1;
    free(text), free(cfgp);
    if (rc) return NULL;
    lc.seed = in->seed;
    eng_engine *e = eng_share(in->base, &lc, err);
    if (!e || eng_peft_import(e->m, in->init_adapter, err)) {
        lt_err_prefix(err, "starting from adapter %s: ", in->init_adapter);
        eng_close(e);
        return NULL;
    }
    if (tr_log(h, "info", err,
               "starting from adapter %s (LoRA r%d, alpha %g, from its adapter_config.json); the job's "
               "lora_rank %d is ignored",
               in->init_adapter, lc.rank, (double)lc.alpha, rank)) {
        eng_close(e);
        return NULL;
    }
    return e;
}

int tr_knob_compute(const json_t *eff, int *out, lt_err *err) {
    const json_t *v = json_object_get(eff, "compute");
    if (!v || json_is_null(v)) {
        *out = ENG_COMPUTE_F32;
        return 0;
    }
    if ((*out = eng_compute_parse(json_string_value(v))) < 0)
        return lt_err_set(err, 422, "effective_config.compute must be \"f32\" or \"bf16\"");
    return 0;
}

/* The engine with the job's adapter, running its GEMMs at the job's "compute" precision. */
eng_engine *tr_open_engine(const tr_inputs *in, const tr_hooks *h, int rank, double alpha, lt_err *err) {
    int compute;
    if (tr_knob_compute(in->eff, &compute, err)) return NULL;
    eng_engine *e = open_engine_lora(in, h, rank, alpha, err);
    if (!e) return NULL;
    eng_model_set_compute(e->m, compute);
    if (compute == ENG_COMPUTE_BF16 &&
        tr_log(h, "info", err,
               "compute bf16: the base weights' GEMMs take bf16 inputs with f32 sums (path %s)",
               eng_bf16_path())) {
        eng_close(e);
        return NULL;
    }
    return e;
}

int tr_knob_l(const json_t *eff, const char *key, long dflt, long lo, long hi, long *out, lt_err *err) {
    const json_t *v = json_object_get(eff, key);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return 0;
    }
    double x = json_is_integer(v) ? (double)json_integer_value(v)
               : json_is_real(v)  ? json_real_value(v)
                                  : NAN;
    if (!(x >= (double)lo && x <= (double)hi) || x != floor(x))
        return lt_err_set(err, 422, "effective_config.%s must be an integer in %ld..%ld", key, lo, hi);
    *out = (long)x;
    return 0;
}

int tr_knob_d(const json_t *eff, const char *key, double dflt, double lo, int lo_open, double hi, double *out,
              lt_err *err) {
    const json_t *v = json_object_get(eff, key);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return 0;
    }
    double x = json_is_number(v) ? json_number_value(v) : NAN;
    if (!((lo_open ? x > lo : x >= lo) && x <= hi))
        return lt_err_set(err, 422, "effective_config.%s must be a number in %s%g, %g]", key,
                          lo_open ? "(" : "[", lo, hi);
    *out = x;
    return 0;
}

void tr_row_where(const rows_set *rs, size_t i, char *buf, size_t n) {
    size_t f = rs->file ? rs->file[i] : 0;
    const char *file = f < rs->nfiles && rs->files && rs->files[f] ? rs->files[f] : "?";
    const char *split = f < rs->nfiles && rs->splits && rs->splits[f] ? rs->splits[f] : "";
    long line = rs->lines ? rs->lines[i] : 0;
    if (split[0])
        snprintf(buf, n, "split %s, file %s line %ld", split, file, line);
    else
        snprintf(buf, n, "file %s line %ld", file, line);
}
