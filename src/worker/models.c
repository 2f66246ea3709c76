/* models.c: the worker's base-model cache: one engine (weights in memory once) and one tokenizer per model
 * dir and process, held by a reference count.
 *
 * Every job on model X holds X's entry while it runs; its trainer makes its own engine with eng_share, which
 * shares the frozen weights and adds a private adapter. So two concurrent jobs on one model keep one copy of
 * the weights; the log says "base model X loaded" for the first and "shared" for the others. The last
 * release frees the entry (the weights go when the last shared engine closes too).
 *
 * The list is guarded by one mutex that is also held while a model loads: a second job on the same model
 * waits for the first load instead of loading it twice. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "catalog/catalog.h"
#include "util/log.h"
#include "util/util.h"
#include "worker/worker_internal.h"

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static wk_model *g_models;
static int64_t g_loads, g_shares;

int wk_model_acquire(const char *models_dir, const char *id, wk_model **out, int *shared, lt_err *err) {
    char *dir = NULL;
    eng_config cfg;
    if (catalog_find(models_dir, id, &dir, &cfg, err) != 0) {
        if (err->code == 404)
            lt_err_prefix(err, "base model '%s' is no longer usable under the models dir %s: ", id,
                          models_dir);
        return -1;
    }
    pthread_mutex_lock(&g_mu);
    for (wk_model *m = g_models; m; m = m->next) {
        if (strcmp(m->dir, dir) == 0) {
            m->refs++;
            g_shares++;
            pthread_mutex_unlock(&g_mu);
            free(dir);
            *out = m;
            if (shared) *shared = 1;
            return 0;
        }
    }
    double t0 = lt_mono_s();
    lt_err e = {0};
    eng_engine *eng = eng_open(dir, NULL, id, &e);
    eng_tokenizer *tok = eng ? eng_tok_load(dir, &e) : NULL;
    if (!eng || !tok) {
        pthread_mutex_unlock(&g_mu);
        eng_close(eng);
        lt_err_set(err, 500, "cannot read base model weights %s: %s; check the files under the models dir",
                   dir, e.msg);
        free(dir);
        return -1;
    }
    wk_model *m = calloc(1, sizeof *m);
    if (!m) abort();
    m->dir = dir;
    m->id = lt_strdup(id);
    m->eng = eng;
    m->tok = tok;
    m->refs = 1;
    m->next = g_models;
    g_models = m;
    g_loads++;
    pthread_mutex_unlock(&g_mu);
    lt_log(LOG_INFO, "base model %s loaded from %s in %.2f s%s%s", id, dir, lt_mono_s() - t0,
           eng->m->load_note[0] ? "; " : "", eng->m->load_note);
    *out = m;
    if (shared) *shared = 0;
    return 0;
}

void wk_model_release(wk_model *m) {
    if (!m) return;
    pthread_mutex_lock(&g_mu);
    int last = --m->refs == 0;
    if (last) {
        for (wk_model **pp = &g_models; *pp; pp = &(*pp)->next) {
            if (*pp == m) {
                *pp = m->next;
                break;
            }
        }
    }
    pthread_mutex_unlock(&g_mu);
    if (!last) return;
    lt_log(LOG_INFO, "base model %s unloaded (no job uses it)", m->id);
    eng_close(m->eng);
    eng_tok_free(m->tok);
    free(m->dir);
    free(m->id);
    free(m);
}

void worker_model_stats_get(worker_model_stats *out) {
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&g_mu);
    for (wk_model *m = g_models; m; m = m->next) {
        out->loaded++;
        out->users += m->refs;
    }
    out->loads = g_loads;
    out->shares = g_shares;
    pthread_mutex_unlock(&g_mu);
}
