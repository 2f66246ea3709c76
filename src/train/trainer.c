/* trainer.c: helpers shared by the trainers (trainer.h): checkpoint directories, names, log lines. */
#include "train/trainer.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

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
