/* catalog.c: the model catalog: which directories under the models dir are trainable base models.
 *
 * Nothing but parsed config.json files is cached (keyed by the file's inode, size and mtime, so an edit is
 * seen at once): a scan walks the models dir (a handful of directories, CATALOG_MAX_DEPTH levels at
 * most, hidden entries skipped, symlinks followed but never twice into one directory) and parses each
 * candidate's config.json (or takes it from that cache), microseconds per model. So a model copied or
 * symlinked into the directory shows up in the next catalog request and a job submitted right after, with no
 * restart and no stale state. A directory is a model when it holds config.json (of an architecture
 * eng_config_load accepts), tokenizer.json and safetensors weights; a model directory is not searched
 * further. A regular file NAME.gguf (symlinks followed) is the model NAME: its metadata must be a config
 * eng_gguf_config accepts (every tensor checked) and it must carry a tokenizer (tokenizer.ggml.model); its
 * catalog item also names the quantization (llama.cpp's file type, e.g. "Q4_1"). A directory NAME with a
 * config.json wins over NAME.gguf beside it. */
#include "catalog/catalog.h"

#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/gguf.h"
#include "engine/gguf_model.h"
#include "util/util.h"

static int is_file(const char *dir, const char *name) {
    char *p = lt_path_join(dir, name);
    struct stat st;
    int ok = stat(p, &st) == 0 && S_ISREG(st.st_mode);
    free(p);
    return ok;
}

static int has_weights(const char *dir) {
    if (is_file(dir, "model.safetensors") || is_file(dir, "model.safetensors.index.json")) return 1;
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    int found = 0;
    while (!found && (e = readdir(d))) {
        size_t n = strlen(e->d_name);
        found = n > 12 && strcmp(e->d_name + n - 12, ".safetensors") == 0 && is_file(dir, e->d_name);
    }
    closedir(d);
    return found;
}

/* 0 when dir is a valid model (cfg filled), else -1 with err (404) saying what is missing. */
/* Parsed config.json files, keyed by directory and the file's identity (device, inode, size, modification
 * time to the nanosecond): a job create reads the model's config without parsing it again, and a changed or
 * replaced file is parsed afresh. Only successes are kept; the existence checks of check_model still run. */
#define CONFIG_CACHE_SLOTS 16

typedef struct {
    char dir[512];
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    eng_config cfg;
    char quant[64]; /* catalog "quantization" */
} config_slot;

static pthread_mutex_t config_mu = PTHREAD_MUTEX_INITIALIZER;
static config_slot config_cache[CONFIG_CACHE_SLOTS];
static unsigned config_next; /* round-robin replacement */

static int same_file(const config_slot *e, const char *dir, const struct stat *st) {
    return e->dir[0] && strcmp(e->dir, dir) == 0 && e->dev == st->st_dev && e->ino == st->st_ino &&
           e->size == st->st_size && e->mtime.tv_sec == st->st_mtim.tv_sec &&
           e->mtime.tv_nsec == st->st_mtim.tv_nsec;
}

/* A GGUF file's config and quantization name (the file type, else its stored types); a file without a
 * tokenizer is refused (a job needs one). */
static int gguf_load(const char *path, eng_config *cfg, char *quant, size_t cap, lt_err *err) {
    gguf_file *f = gguf_open(path, err);
    if (!f) return -1;
    int rc = eng_gguf_config(f, cfg, err);
    if (rc == 0 && !gguf_find_kv(f, "tokenizer.ggml.model"))
        rc =
            lt_err_set(err, 400, "%s: no tokenizer (metadata key \"tokenizer.ggml.model\" is missing)", path);
    if (rc == 0) {
        eng_gguf_summary s;
        eng_gguf_summarize(f, &s);
        snprintf(quant, cap, "%s", s.file_type >= 0 ? s.file_type_name : s.types);
    }
    gguf_close(f);
    return rc;
}

/* dir: a model dir (config.json, whose stat is st) or a .gguf file (st its own). */
static int config_load_cached(const char *dir, const struct stat *st, eng_config *cfg, char *quant,
                              lt_err *err) {
    int hit = 0;
    pthread_mutex_lock(&config_mu);
    for (int i = 0; i < CONFIG_CACHE_SLOTS && !hit; i++) {
        if (same_file(&config_cache[i], dir, st)) {
            *cfg = config_cache[i].cfg;
            snprintf(quant, sizeof config_cache[i].quant, "%s", config_cache[i].quant);
            hit = 1;
        }
    }
    pthread_mutex_unlock(&config_mu);
    if (hit) return 0;
    if (eng_path_is_gguf(dir)) {
        if (gguf_load(dir, cfg, quant, sizeof config_cache[0].quant, err) != 0) return -1;
    } else {
        if (eng_config_load(dir, cfg, err) != 0) return -1;
        snprintf(quant, sizeof config_cache[0].quant, "%s", cfg->torch_dtype);
    }
    if (strlen(dir) < sizeof config_cache[0].dir) {
        pthread_mutex_lock(&config_mu);
        config_slot *e = &config_cache[config_next++ % CONFIG_CACHE_SLOTS];
        snprintf(e->dir, sizeof e->dir, "%s", dir);
        e->dev = st->st_dev;
        e->ino = st->st_ino;
        e->size = st->st_size;
        e->mtime = st->st_mtim;
        e->cfg = *cfg;
        snprintf(e->quant, sizeof e->quant, "%s", quant);
        pthread_mutex_unlock(&config_mu);
    }
    return 0;
}

/* quant: at least 64 bytes. */
static int check_gguf(const char *path, const char *id, eng_config *cfg, char *quant, lt_err *err) {
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return lt_err_set(err, 404, "model '%s' not found", id);
    lt_err cerr;
    if (config_load_cached(path, &st, cfg, quant, &cerr) != 0)
        return lt_err_set(err, 404, "model '%s' cannot be loaded: %s", id, cerr.msg);
    return 0;
}

static int check_model(const char *dir, const char *id, eng_config *cfg, char *quant, lt_err *err) {
    char *cp = lt_path_join(dir, "config.json");
    struct stat st;
    int has_config = stat(cp, &st) == 0 && S_ISREG(st.st_mode);
    free(cp);
    if (!has_config) return lt_err_set(err, 404, "model '%s' not found", id);
    if (!is_file(dir, "tokenizer.json"))
        return lt_err_set(err, 404, "model '%s' has no tokenizer.json: it cannot be trained", id);
    if (!has_weights(dir))
        return lt_err_set(err, 404, "model '%s' has no safetensors weights: it cannot be trained", id);
    lt_err cerr;
    if (config_load_cached(dir, &st, cfg, quant, &cerr) != 0)
        return lt_err_set(err, 404, "model '%s' cannot be loaded: %s", id, cerr.msg);
    return 0;
}

/* Three significant digits: 0.000123, 0.494, 7.62, 70.6. */
static double round3(double x) {
    if (x <= 0) return 0;
    double mag = pow(10.0, 2 - floor(log10(x)));
    return round(x * mag) / mag;
}

json_t *catalog_item(const char *id, const eng_config *cfg) {
    const char *slash = strrchr(id, '/');
    json_t *algs = json_pack("[s,s,s,s]", "sft", "importance_sampling", "ppo", "grpo");
    json_t *item = json_pack("{s:s,s:s,s:s,s:s,s:f,s:i,s:b,s:o,s:n}", "tinker_id", id, "display_name",
                             slash ? slash + 1 : id, "family", cfg->family, "type", "dense", "size_b",
                             round3((double)eng_config_num_params(cfg) / 1e9), "context_length",
                             cfg->max_position_embeddings, "extended_context",
                             cfg->rope_type != ENG_ROPE_DEFAULT, "supported_algorithms", algs, "pricing");
    if (!item) abort(); /* out of memory building a small object */
    return item;
}

int catalog_find(const char *models_dir, const char *id, char **dir, eng_config *cfg, lt_err *err) {
    /* a clean relative path: segments of [A-Za-z0-9._-], none empty, none starting with '.' */
    size_t n = id ? strlen(id) : 0;
    int ok = n > 0 && n < 512 && id[0] != '/';
    for (const char *p = id; ok && *p; p++) {
        char c = *p;
        int seg_start = p == id || p[-1] == '/';
        if (seg_start && (c == '.' || c == '/')) ok = 0;
        if (!(c == '/' || c == '.' || c == '_' || c == '-' || (c >= 'a' && c <= 'z') ||
              (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')))
            ok = 0;
    }
    if (ok && id[n - 1] == '/') ok = 0;
    if (!ok) return lt_err_set(err, 404, "model '%.200s' not found", id ? id : "");
    char *path = lt_path_join(models_dir, id);
    eng_config c;
    char quant[64];
    struct stat st;
    if (!(stat(path, &st) == 0 && S_ISDIR(st.st_mode))) {
        /* NAME.gguf is the model NAME (the file name itself is accepted too) */
        size_t pl = strlen(path);
        char *gp = malloc(pl + 6);
        if (!gp) abort();
        snprintf(gp, pl + 6, "%s%s", path, eng_path_is_gguf(path) ? "" : ".gguf");
        if (stat(gp, &st) == 0 && S_ISREG(st.st_mode)) {
            free(path);
            path = gp;
        } else {
            free(gp);
        }
    }
    int rc = eng_path_is_gguf(path) ? check_gguf(path, id, cfg ? cfg : &c, quant, err)
                                    : check_model(path, id, cfg ? cfg : &c, quant, err);
    if (rc != 0) {
        free(path);
        return -1;
    }
    if (dir)
        *dir = path;
    else
        free(path);
    return 0;
}

static int cmp_items(const void *a, const void *b) {
    const json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    return strcmp(json_string_value(json_object_get(x, "tinker_id")),
                  json_string_value(json_object_get(y, "tinker_id")));
}

/* The directories a scan has descended into, by device and inode: a symlink back to one of them (a loop) is
 * not followed again. Model directories are not recorded, so a symlinked alias of a model is listed under its
 * own id too. */
typedef struct visited {
    dev_t dev[64];
    ino_t ino[64];
    int n;
} visited;

static int seen_before(visited *v, const struct stat *st) {
    for (int i = 0; i < v->n; i++)
        if (v->dev[i] == st->st_dev && v->ino[i] == st->st_ino) return 1;
    if (v->n == 64) return 1; /* more directories than a models dir has: stop descending */
    v->dev[v->n] = st->st_dev;
    v->ino[v->n++] = st->st_ino;
    return 0;
}

static json_t *item_with_quant(const char *id, const eng_config *cfg, const char *quant) {
    json_t *item = catalog_item(id, cfg);
    json_object_set_new(item, "quantization", quant[0] ? json_string(quant) : json_null());
    return item;
}

/* rel names a NAME.gguf file below root: listed as NAME unless a model directory NAME is beside it. */
static void scan_gguf(const char *root, const char *rel, json_t *out) {
    size_t n = strlen(rel);
    char *id = lt_strdup(rel);
    id[n - 5] = 0;
    char *dir = lt_path_join(root, id), *file = lt_path_join(root, rel);
    eng_config cfg;
    char quant[64];
    lt_err err;
    if (!is_file(dir, "config.json") && check_gguf(file, id, &cfg, quant, &err) == 0)
        json_array_append_new(out, item_with_quant(id, &cfg, quant));
    free(id), free(dir), free(file);
}

static void scan(const char *root, const char *rel, int depth, visited *v, json_t *out) {
    char *dir = rel[0] ? lt_path_join(root, rel) : lt_strdup(root);
    eng_config cfg;
    char quant[64];
    lt_err err;
    struct stat st;
    if (rel[0] && is_file(dir, "config.json")) {
        if (check_model(dir, rel, &cfg, quant, &err) == 0)
            json_array_append_new(out, item_with_quant(rel, &cfg, quant));
        free(dir);
        return;
    }
    DIR *d = depth < CATALOG_MAX_DEPTH && stat(dir, &st) == 0 && !seen_before(v, &st) ? opendir(dir) : NULL;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char *child = lt_path_join(dir, e->d_name);
        int ok = stat(child, &st) == 0; /* symlinks followed */
        int is_dir = ok && S_ISDIR(st.st_mode),
            is_gguf = ok && S_ISREG(st.st_mode) && eng_path_is_gguf(child);
        free(child);
        if (!is_dir && !is_gguf) continue;
        char *crel = rel[0] ? lt_path_join(rel, e->d_name) : lt_strdup(e->d_name);
        if (is_dir)
            scan(root, crel, depth + 1, v, out);
        else if (strlen(e->d_name) > 5)
            scan_gguf(root, crel, out);
        free(crel);
    }
    if (d) closedir(d);
    free(dir);
}

int catalog_scan(const char *models_dir, json_t **items, lt_err *err) {
    json_t *out = json_array();
    if (!out) return lt_err_set(err, 500, "out of memory listing models");
    visited v = {.n = 0};
    scan(models_dir, "", 0, &v, out);
    size_t n = json_array_size(out);
    if (n > 1) {
        json_t **v = malloc(n * sizeof *v);
        if (!v) abort();
        for (size_t i = 0; i < n; i++)
            v[i] = json_incref(json_array_get(out, i));
        qsort(v, n, sizeof *v, cmp_items);
        json_array_clear(out);
        for (size_t i = 0; i < n; i++)
            json_array_append_new(out, v[i]);
        free(v);
    }
    *items = out;
    return 0;
}
