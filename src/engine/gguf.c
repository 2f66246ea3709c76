/* gguf.c: strict GGUF v2/v3 reader, ggml-exact dequantization, reference quantizers and an atomic v3 writer
 * (see gguf.h for the format and the contract).
 *
 * Reading. The file is mmap'd read-only and walked once with a bounds-checked cursor: every count, length
 * and value is checked against the bytes that remain before it is used, so a hostile header cannot make the
 * reader allocate more than the file's size in entries or read past the mapping. Each string array gets an
 * index of element offsets at open (u64 length prefixes are variable-length, so element i is otherwise a
 * linear walk). Keys and tensor names are copied NUL-terminated; sorted views (by name) give
 * O(log n) look-up and reveal duplicates as neighbours. Tensors are checked for dims, block multiple,
 * alignment, extent and, sorted by offset, overlap.
 *
 * Dequantization follows ggml's dequantize_row_* definitions (ggml-quants.c) operation for operation, in
 * float, so results are bit-identical (this file is compiled in ISO C mode, where GCC does not contract
 * a*b+c into an FMA). Block layouts (all little-endian, f16 = IEEE half):
 *   Q4_0 {f16 d; u8 qs[16]}            32 elems: lo nibbles -> 0..15, hi -> 16..31, (q - 8) * d
 *   Q4_1 {f16 d, m; u8 qs[16]}         q * d + m
 *   Q5_0 {f16 d; u8 qh[4]; u8 qs[16]}  5th bit of elem j in bit j of qh (j < 16) / bit j+12 (hi half), q-16
 *   Q5_1 {f16 d, m; u8 qh[4]; qs[16]}  q * d + m
 *   Q8_0 {f16 d; i8 qs[32]}            q * d
 *   Q4_K {f16 d, dmin; u8 scales[12]; u8 qs[128]}              256 elems, 8 sub-blocks of 32, 6-bit scales
 *   Q5_K {f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}
 *   Q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}         16 sub-blocks of 16, q - 32
 *
 * Writing. The writer records metadata (copied) and tensors (borrowed), then emits magic, version 3, counts,
 * the key/values, the tensor infos (offsets packed in insertion order, each padded to the alignment), padding
 * and the data, either into memory or streamed into a temp file that is fsync'd and renamed. */
#include "engine/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/safetensors.h"
#include "util/strbuf.h"
#include "util/util.h"

#define GGUF_MAGIC 0x46554747u
#define GGUF_DEFAULT_ALIGN 32

/* ------------------------------------------------------------------------------------------------------ */
/* types */

typedef struct {
    int type;
    const char *name;
    int elems;
    size_t bytes;
} type_info;

static const type_info TYPES[] = {
    {GGUF_F32, "F32", 1, 4},       {GGUF_F16, "F16", 1, 2},       {GGUF_Q4_0, "Q4_0", 32, 18},
    {GGUF_Q4_1, "Q4_1", 32, 20},   {GGUF_Q5_0, "Q5_0", 32, 22},   {GGUF_Q5_1, "Q5_1", 32, 24},
    {GGUF_Q8_0, "Q8_0", 32, 34},   {GGUF_Q4_K, "Q4_K", 256, 144}, {GGUF_Q5_K, "Q5_K", 256, 176},
    {GGUF_Q6_K, "Q6_K", 256, 210}, {GGUF_BF16, "BF16", 1, 2},
};

static const type_info *type_find(int type) {
    for (size_t i = 0; i < sizeof TYPES / sizeof TYPES[0]; i++)
        if (TYPES[i].type == type) return &TYPES[i];
    return NULL;
}

const char *gguf_type_name(int type) {
    const type_info *t = type_find(type);
    return t ? t->name : NULL;
}

int gguf_block_elems(int type) {
    const type_info *t = type_find(type);
    return t ? t->elems : 0;
}

size_t gguf_block_bytes(int type) {
    const type_info *t = type_find(type);
    return t ? t->bytes : 0;
}

size_t gguf_row_bytes(int type, int64_t n) {
    const type_info *t = type_find(type);
    if (!t || n < 0 || n % t->elems) return 0;
    return (size_t)(n / t->elems) * t->bytes;
}

/* Size of a scalar value type; 0 for STR/ARR/unknown. */
static size_t vtype_size(uint32_t t) {
    switch (t) {
    case GGUF_V_U8:
    case GGUF_V_I8:
    case GGUF_V_BOOL:
        return 1;
    case GGUF_V_U16:
    case GGUF_V_I16:
        return 2;
    case GGUF_V_U32:
    case GGUF_V_I32:
    case GGUF_V_F32:
        return 4;
    case GGUF_V_U64:
    case GGUF_V_I64:
    case GGUF_V_F64:
        return 8;
    }
    return 0;
}

static const char *vtype_name(uint32_t t) {
    static const char *names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                  "bool", "string", "array", "u64", "i64", "f64"};
    return t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

/* ------------------------------------------------------------------------------------------------------ */
/* little-endian loads */

static uint16_t ld16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}
static uint32_t ld32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t ld64(const uint8_t *p) {
    return (uint64_t)ld32(p) | ((uint64_t)ld32(p + 4) << 32);
}
static float f16(const uint8_t *p) {
    return st_f16_to_f32(ld16(p));
}

/* ------------------------------------------------------------------------------------------------------ */
/* reader structures */

typedef struct {
    gguf_kv pub;       /* first member: a gguf_kv * is a kv_entry * */
    uint64_t *str_off; /* string arrays: offset of element i's u64 length prefix, from pub.data's prefix */
    const uint8_t *base;
} kv_entry;

struct gguf_file {
    char *path;
    int version;
    size_t alignment;
    const uint8_t *buf;
    size_t len;
    int mapped;
    kv_entry *kvs;
    size_t n_kv;
    gguf_tensor *tensors;
    size_t n_tensors;
    const kv_entry **kv_sorted;
    const gguf_tensor **t_sorted;
};

typedef struct {
    const uint8_t *p, *end;
    const char *file;
    lt_err *err;
} cursor;

static size_t remaining(const cursor *c) {
    return (size_t)(c->end - c->p);
}

/* Takes n bytes, or fails with "FILE: truncated: WHAT runs past the end of the file". */
static const uint8_t *take(cursor *c, size_t n, const char *what) {
    if (remaining(c) < n) {
        lt_err_set(c->err, 400, "%s: truncated: %s runs past the end of the file", c->file, what);
        return NULL;
    }
    const uint8_t *p = c->p;
    c->p += n;
    return p;
}

static int take_u32(cursor *c, uint32_t *v, const char *what) {
    const uint8_t *p = take(c, 4, what);
    if (!p) return -1;
    *v = ld32(p);
    return 0;
}

static int take_u64(cursor *c, uint64_t *v, const char *what) {
    const uint8_t *p = take(c, 8, what);
    if (!p) return -1;
    *v = ld64(p);
    return 0;
}

/* A string: u64 length + bytes. */
static int take_str(cursor *c, const uint8_t **s, uint64_t *len, const char *what) {
    if (take_u64(c, len, what) < 0) return -1;
    if (*len > remaining(c)) {
        lt_err_set(c->err, 400, "%s: %s: string length %llu runs past the end of the file", c->file, what,
                   (unsigned long long)*len);
        return -1;
    }
    *s = c->p;
    c->p += *len;
    return 0;
}

static int cmp_kv(const void *a, const void *b) {
    return strcmp((*(const kv_entry *const *)a)->pub.key, (*(const kv_entry *const *)b)->pub.key);
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp((*(const gguf_tensor *const *)a)->name, (*(const gguf_tensor *const *)b)->name);
}

static int cmp_tensor_off(const void *a, const void *b) {
    const gguf_tensor *x = *(const gguf_tensor *const *)a, *y = *(const gguf_tensor *const *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* A NUL-terminated copy of a name (freed by gguf_close); NULL for a name with an embedded NUL. */
static char *copy_name(const uint8_t *s, uint64_t n) {
    if (memchr(s, 0, n)) return NULL;
    return lt_strndup((const char *)s, (size_t)n);
}

/* Reads one value of type t (not ARR) at the cursor. */
static int read_scalar(cursor *c, uint32_t t, const char *key) {
    char what[320];
    snprintf(what, sizeof what, "value of key '%s'", key);
    if (t == GGUF_V_STR) {
        const uint8_t *s;
        uint64_t n;
        return take_str(c, &s, &n, what);
    }
    size_t sz = vtype_size(t);
    if (!sz) return lt_err_set(c->err, 400, "%s: key '%s': unknown value type %u", c->file, key, t);
    return take(c, sz, what) ? 0 : -1;
}

static int read_kv(gguf_file *f, cursor *c, kv_entry *e, uint64_t idx) {
    char what[96];
    snprintf(what, sizeof what, "key %llu's name", (unsigned long long)idx);
    const uint8_t *ks;
    uint64_t kn;
    if (take_str(c, &ks, &kn, what) < 0) return -1;
    e->pub.key = copy_name(ks, kn);
    if (!e->pub.key)
        return lt_err_set(c->err, 400, "%s: key %llu's name contains a NUL byte", c->file,
                          (unsigned long long)idx);
    const char *key = e->pub.key;
    char w2[320];
    snprintf(w2, sizeof w2, "type of key '%s'", key);
    uint32_t t;
    if (take_u32(c, &t, w2) < 0) return -1;
    e->pub.type = (gguf_vtype)t;
    e->pub.n = 1;
    e->base = f->buf;
    if (t == GGUF_V_ARR) {
        snprintf(w2, sizeof w2, "array header of key '%s'", key);
        uint32_t at;
        uint64_t n;
        if (take_u32(c, &at, w2) < 0 || take_u64(c, &n, w2) < 0) return -1;
        if (at == GGUF_V_ARR)
            return lt_err_set(c->err, 400, "%s: key '%s': arrays of arrays are not supported", c->file, key);
        e->pub.arr_type = (gguf_vtype)at;
        e->pub.n = n;
        e->pub.data = c->p;
        if (at == GGUF_V_STR) {
            if (n > remaining(c) / 8)
                return lt_err_set(c->err, 400,
                                  "%s: key '%s': array of %llu strings runs past the end of the file",
                                  c->file, key, (unsigned long long)n);
            e->str_off = malloc((n ? n : 1) * sizeof *e->str_off);
            if (!e->str_off) return lt_err_set(c->err, 500, "%s: out of memory", c->file);
            snprintf(w2, sizeof w2, "element of key '%s'", key);
            for (uint64_t i = 0; i < n; i++) {
                e->str_off[i] = (uint64_t)(c->p - (const uint8_t *)e->pub.data);
                const uint8_t *s;
                uint64_t sl;
                if (take_str(c, &s, &sl, w2) < 0) return -1;
            }
            return 0;
        }
        size_t sz = vtype_size(at);
        if (!sz)
            return lt_err_set(c->err, 400, "%s: key '%s': unknown array element type %u", c->file, key, at);
        if (n > remaining(c) / sz)
            return lt_err_set(c->err, 400,
                              "%s: key '%s': array of %llu %s values runs past the end of the file", c->file,
                              key, (unsigned long long)n, vtype_name(at));
        c->p += n * sz;
        return 0;
    }
    if (t == GGUF_V_STR) {
        snprintf(w2, sizeof w2, "value of key '%s'", key);
        const uint8_t *s;
        uint64_t n;
        if (take_str(c, &s, &n, w2) < 0) return -1;
        e->pub.data = s;
        e->pub.len = (size_t)n;
        return 0;
    }
    e->pub.data = c->p;
    return read_scalar(c, t, key);
}

static int check_dims(cursor *c, gguf_tensor *t) {
    int64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        if (t->ne[d] <= 0)
            return lt_err_set(c->err, 400, "%s: tensor '%s': dimension %d is %lld (must be positive)",
                              c->file, t->name, d, (long long)t->ne[d]);
        if (__builtin_mul_overflow(numel, t->ne[d], &numel))
            return lt_err_set(c->err, 400, "%s: tensor '%s': the element count overflows", c->file, t->name);
    }
    t->numel = numel;
    const type_info *ti = type_find(t->type);
    if (!ti)
        return lt_err_set(c->err, 400, "%s: tensor '%s': unknown tensor type %d", c->file, t->name,
                          (int)t->type);
    if (t->ne[0] % ti->elems)
        return lt_err_set(c->err, 400,
                          "%s: tensor '%s': row length %lld is not a multiple of the %s block size %d",
                          c->file, t->name, (long long)t->ne[0], ti->name, ti->elems);
    uint64_t blocks = (uint64_t)(numel / ti->elems), nb;
    if (__builtin_mul_overflow(blocks, (uint64_t)ti->bytes, &nb) || nb > SIZE_MAX)
        return lt_err_set(c->err, 400, "%s: tensor '%s': the byte size overflows", c->file, t->name);
    t->nbytes = (size_t)nb;
    return 0;
}

static int read_tensor_info(cursor *c, gguf_tensor *t, uint64_t idx) {
    char what[320];
    snprintf(what, sizeof what, "tensor %llu's name", (unsigned long long)idx);
    const uint8_t *s;
    uint64_t n;
    if (take_str(c, &s, &n, what) < 0) return -1;
    t->name = copy_name(s, n);
    if (!t->name)
        return lt_err_set(c->err, 400, "%s: tensor %llu's name contains a NUL byte", c->file,
                          (unsigned long long)idx);
    snprintf(what, sizeof what, "info of tensor '%s'", t->name);
    uint32_t nd;
    if (take_u32(c, &nd, what) < 0) return -1;
    if (nd < 1 || nd > 4)
        return lt_err_set(c->err, 400, "%s: tensor '%s': n_dims %u outside 1..4", c->file, t->name, nd);
    t->ndim = (int)nd;
    for (int d = 0; d < 4; d++)
        t->ne[d] = 1;
    for (uint32_t d = 0; d < nd; d++) {
        uint64_t v;
        if (take_u64(c, &v, what) < 0) return -1;
        if (v > (uint64_t)INT64_MAX)
            return lt_err_set(c->err, 400, "%s: tensor '%s': dimension %u (%llu) overflows", c->file, t->name,
                              d, (unsigned long long)v);
        t->ne[d] = (int64_t)v;
    }
    uint32_t ty;
    if (take_u32(c, &ty, what) < 0 || take_u64(c, &t->offset, what) < 0) return -1;
    t->type = (gguf_type)ty;
    return check_dims(c, t);
}

/* general.alignment: a u32 power of two (ggml requires the u32 type). */
static int read_alignment(gguf_file *f, cursor *c) {
    const gguf_kv *kv = gguf_find_kv(f, "general.alignment");
    f->alignment = GGUF_DEFAULT_ALIGN;
    if (!kv) return 0;
    if (kv->type != GGUF_V_U32)
        return lt_err_set(c->err, 400, "%s: key 'general.alignment' has type %s, expected u32", c->file,
                          vtype_name(kv->type));
    uint32_t a = ld32(kv->data);
    if (a == 0 || (a & (a - 1)))
        return lt_err_set(c->err, 400, "%s: key 'general.alignment' is %u, which is not a power of two",
                          c->file, a);
    f->alignment = a;
    return 0;
}

static int place_tensors(gguf_file *f, cursor *c, size_t header_end) {
    size_t a = f->alignment;
    size_t data_start = header_end + (a - header_end % a) % a;
    size_t avail = data_start <= f->len ? f->len - data_start : 0;
    for (size_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        if (t->offset % a)
            return lt_err_set(c->err, 400,
                              "%s: tensor '%s': offset %llu is not a multiple of the alignment %zu", c->file,
                              t->name, (unsigned long long)t->offset, a);
        if (data_start > f->len || t->offset > avail || t->nbytes > avail - t->offset)
            return lt_err_set(c->err, 400,
                              "%s: tensor '%s': data (offset %llu, %zu bytes) runs past the end of the file",
                              c->file, t->name, (unsigned long long)t->offset, t->nbytes);
        t->data = f->buf + data_start + t->offset;
    }
    const gguf_tensor **by_off = malloc((f->n_tensors ? f->n_tensors : 1) * sizeof *by_off);
    if (!by_off) return lt_err_set(c->err, 500, "%s: out of memory", c->file);
    for (size_t i = 0; i < f->n_tensors; i++)
        by_off[i] = &f->tensors[i];
    qsort(by_off, f->n_tensors, sizeof *by_off, cmp_tensor_off);
    for (size_t i = 1; i < f->n_tensors; i++) {
        const gguf_tensor *p = by_off[i - 1], *q = by_off[i];
        if (p->offset + p->nbytes > q->offset) {
            lt_err_set(c->err, 400, "%s: tensors '%s' and '%s' overlap (offsets %llu+%zu and %llu)", c->file,
                       p->name, q->name, (unsigned long long)p->offset, p->nbytes,
                       (unsigned long long)q->offset);
            free(by_off);
            return -1;
        }
    }
    free(by_off);
    return 0;
}

static int build_indexes(gguf_file *f, cursor *c) {
    f->kv_sorted = malloc((f->n_kv ? f->n_kv : 1) * sizeof *f->kv_sorted);
    f->t_sorted = malloc((f->n_tensors ? f->n_tensors : 1) * sizeof *f->t_sorted);
    if (!f->kv_sorted || !f->t_sorted) return lt_err_set(c->err, 500, "%s: out of memory", c->file);
    for (size_t i = 0; i < f->n_kv; i++)
        f->kv_sorted[i] = &f->kvs[i];
    for (size_t i = 0; i < f->n_tensors; i++)
        f->t_sorted[i] = &f->tensors[i];
    qsort(f->kv_sorted, f->n_kv, sizeof *f->kv_sorted, cmp_kv);
    qsort(f->t_sorted, f->n_tensors, sizeof *f->t_sorted, cmp_tensor_name);
    for (size_t i = 1; i < f->n_kv; i++)
        if (!strcmp(f->kv_sorted[i - 1]->pub.key, f->kv_sorted[i]->pub.key))
            return lt_err_set(c->err, 400, "%s: duplicate key '%s'", c->file, f->kv_sorted[i]->pub.key);
    for (size_t i = 1; i < f->n_tensors; i++)
        if (!strcmp(f->t_sorted[i - 1]->name, f->t_sorted[i]->name))
            return lt_err_set(c->err, 400, "%s: duplicate tensor name '%s'", c->file, f->t_sorted[i]->name);
    return 0;
}

static int parse(gguf_file *f, lt_err *err) {
    cursor c = {f->buf, f->buf + f->len, f->path, err};
    uint32_t magic, version;
    if (take_u32(&c, &magic, "the magic") < 0) return -1;
    if (magic != GGUF_MAGIC)
        return lt_err_set(err, 400, "%s: not a GGUF file (bad magic 0x%08x, expected \"GGUF\")", f->path,
                          magic);
    if (take_u32(&c, &version, "the version") < 0) return -1;
    if (version == 1)
        return lt_err_set(err, 400,
                          "%s: GGUF version 1 is not supported (only versions 2 and 3); re-convert the "
                          "model with a current llama.cpp",
                          f->path);
    if (version != 2 && version != 3)
        return lt_err_set(err, 400, "%s: unsupported GGUF version %u (only versions 2 and 3)", f->path,
                          version);
    f->version = (int)version;
    uint64_t nt, nkv;
    if (take_u64(&c, &nt, "tensor_count") < 0 || take_u64(&c, &nkv, "kv_count") < 0) return -1;
    /* A key/value takes at least 8 + 4 + 1 bytes and a tensor info 8 + 4 + 8 + 4 + 8. */
    if (nkv > remaining(&c) / 13)
        return lt_err_set(err, 400, "%s: truncated: kv_count %llu runs past the end of the file", f->path,
                          (unsigned long long)nkv);
    if (nt > remaining(&c) / 32)
        return lt_err_set(err, 400, "%s: truncated: tensor_count %llu runs past the end of the file", f->path,
                          (unsigned long long)nt);
    f->n_kv = (size_t)nkv;
    f->n_tensors = (size_t)nt;
    f->kvs = calloc(f->n_kv ? f->n_kv : 1, sizeof *f->kvs);
    f->tensors = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *f->tensors);
    if (!f->kvs || !f->tensors) return lt_err_set(err, 500, "%s: out of memory", f->path);
    for (size_t i = 0; i < f->n_kv; i++)
        if (read_kv(f, &c, &f->kvs[i], i) < 0) return -1;
    for (size_t i = 0; i < f->n_tensors; i++)
        if (read_tensor_info(&c, &f->tensors[i], i) < 0) return -1;
    if (build_indexes(f, &c) < 0 || read_alignment(f, &c) < 0) return -1;
    return place_tensors(f, &c, (size_t)(c.p - f->buf));
}

static gguf_file *open_common(gguf_file *f, lt_err *err) {
    if (parse(f, err) < 0) {
        gguf_close(f);
        return NULL;
    }
    return f;
}

gguf_file *gguf_open_memory(const void *buf, size_t len, const char *name, lt_err *err) {
    gguf_file *f = calloc(1, sizeof *f);
    if (!f) {
        lt_err_set(err, 500, "out of memory");
        return NULL;
    }
    f->path = lt_strdup(name ? name : "<memory>");
    f->buf = buf ? buf : (const uint8_t *)"";
    f->len = buf ? len : 0;
    return open_common(f, err);
}

gguf_file *gguf_open(const char *path, lt_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        lt_err_set(err, errno == ENOENT ? 404 : 500, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        lt_err_set(err, 400, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    gguf_file *f = calloc(1, sizeof *f);
    if (!f) {
        close(fd);
        lt_err_set(err, 500, "out of memory");
        return NULL;
    }
    f->path = lt_strdup(path);
    f->len = (size_t)st.st_size;
    if (f->len) {
        void *m = mmap(NULL, f->len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            lt_err_set(err, 500, "%s: mmap: %s", path, strerror(errno));
            close(fd);
            free(f->path);
            free(f);
            return NULL;
        }
        f->buf = m;
        f->mapped = 1;
    } else {
        f->buf = (const uint8_t *)"";
    }
    close(fd);
    return open_common(f, err);
}

void gguf_close(gguf_file *f) {
    if (!f) return;
    if (f->kvs)
        for (size_t i = 0; i < f->n_kv; i++) {
            free(f->kvs[i].str_off);
            free((char *)f->kvs[i].pub.key);
        }
    if (f->tensors)
        for (size_t i = 0; i < f->n_tensors; i++)
            free((char *)f->tensors[i].name);
    free(f->kvs);
    free(f->tensors);
    free(f->kv_sorted);
    free(f->t_sorted);
    if (f->mapped) munmap((void *)f->buf, f->len);
    free(f->path);
    free(f);
}

int gguf_version(const gguf_file *f) {
    return f->version;
}
const char *gguf_path(const gguf_file *f) {
    return f->path;
}
size_t gguf_alignment(const gguf_file *f) {
    return f->alignment;
}

/* ------------------------------------------------------------------------------------------------------ */
/* metadata look-ups */

size_t gguf_kv_count(const gguf_file *f) {
    return f->n_kv;
}

const gguf_kv *gguf_kv_at(const gguf_file *f, size_t i) {
    return i < f->n_kv ? &f->kvs[i].pub : NULL;
}

const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key) {
    size_t lo = 0, hi = f->n_kv;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(f->kv_sorted[mid]->pub.key, key);
        if (!c) return &f->kv_sorted[mid]->pub;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* Integer value of element i of type t at p; -1 if t is not an integer type. Unsigned 64-bit values above
 * INT64_MAX are reported through *big. */
static int int_at(uint32_t t, const uint8_t *p, int64_t *out, uint64_t *big) {
    *big = 0;
    switch (t) {
    case GGUF_V_U8:
        *out = p[0];
        return 0;
    case GGUF_V_I8:
        *out = (int8_t)p[0];
        return 0;
    case GGUF_V_U16:
        *out = ld16(p);
        return 0;
    case GGUF_V_I16:
        *out = (int16_t)ld16(p);
        return 0;
    case GGUF_V_U32:
        *out = ld32(p);
        return 0;
    case GGUF_V_I32:
        *out = (int32_t)ld32(p);
        return 0;
    case GGUF_V_I64:
        *out = (int64_t)ld64(p);
        return 0;
    case GGUF_V_U64: {
        uint64_t v = ld64(p);
        if (v > (uint64_t)INT64_MAX) {
            *big = v;
            return 1;
        }
        *out = (int64_t)v;
        return 0;
    }
    }
    return -1;
}

static int float_at(uint32_t t, const uint8_t *p, double *out) {
    if (t == GGUF_V_F32) {
        float v;
        uint32_t u = ld32(p);
        memcpy(&v, &u, 4);
        *out = v;
        return 0;
    }
    if (t == GGUF_V_F64) {
        uint64_t u = ld64(p);
        memcpy(out, &u, 8);
        return 0;
    }
    int64_t i;
    uint64_t big;
    int rc = int_at(t, p, &i, &big);
    if (rc < 0) return -1;
    *out = rc ? (double)big : (double)i;
    return 0;
}

static int wrong_type(const gguf_file *f, const gguf_kv *kv, const char *want, lt_err *err) {
    const char *have = kv->type == GGUF_V_ARR ? "array" : vtype_name(kv->type);
    return lt_err_set(err, 400, "%s: key '%s' has type %s, expected %s", f->path, kv->key, have, want);
}

int gguf_get_int(const gguf_file *f, const char *key, int64_t *out, lt_err *err) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return 1;
    int64_t v;
    uint64_t big;
    int rc = kv->type == GGUF_V_ARR ? -1 : int_at(kv->type, kv->data, &v, &big);
    if (rc < 0) return wrong_type(f, kv, "an integer", err);
    if (rc > 0)
        return lt_err_set(err, 400, "%s: key '%s': value %llu is out of range", f->path, key,
                          (unsigned long long)big);
    *out = v;
    return 0;
}

int gguf_get_float(const gguf_file *f, const char *key, double *out, lt_err *err) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return 1;
    double v;
    if (kv->type == GGUF_V_ARR || float_at(kv->type, kv->data, &v) < 0)
        return wrong_type(f, kv, "a number", err);
    *out = v;
    return 0;
}

int gguf_get_bool(const gguf_file *f, const char *key, int *out, lt_err *err) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return 1;
    if (kv->type != GGUF_V_BOOL) return wrong_type(f, kv, "bool", err);
    *out = ((const uint8_t *)kv->data)[0] != 0;
    return 0;
}

int gguf_get_str(const gguf_file *f, const char *key, const char **s, size_t *len, lt_err *err) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return 1;
    if (kv->type != GGUF_V_STR) return wrong_type(f, kv, "string", err);
    *s = kv->data;
    *len = kv->len;
    return 0;
}

int gguf_arr_str(const gguf_kv *kv, uint64_t i, const char **s, size_t *len) {
    if (!kv || kv->type != GGUF_V_ARR || kv->arr_type != GGUF_V_STR || i >= kv->n) return -1;
    const kv_entry *e = (const kv_entry *)kv;
    const uint8_t *p = (const uint8_t *)kv->data + e->str_off[i];
    *len = (size_t)ld64(p);
    *s = (const char *)p + 8;
    return 0;
}

int gguf_arr_int(const gguf_kv *kv, uint64_t i, int64_t *out) {
    if (!kv || kv->type != GGUF_V_ARR || i >= kv->n) return -1;
    size_t sz = vtype_size(kv->arr_type);
    if (!sz || kv->arr_type == GGUF_V_F32 || kv->arr_type == GGUF_V_F64) return -1;
    int64_t v;
    uint64_t big;
    if (int_at(kv->arr_type, (const uint8_t *)kv->data + i * sz, &v, &big) != 0) {
        if (kv->arr_type != GGUF_V_BOOL) return -1;
        v = ((const uint8_t *)kv->data)[i] != 0;
    }
    *out = v;
    return 0;
}

int gguf_arr_float(const gguf_kv *kv, uint64_t i, double *out) {
    if (!kv || kv->type != GGUF_V_ARR || i >= kv->n) return -1;
    size_t sz = vtype_size(kv->arr_type);
    if (!sz || kv->arr_type == GGUF_V_BOOL) return -1;
    return float_at(kv->arr_type, (const uint8_t *)kv->data + i * sz, out);
}

/* ------------------------------------------------------------------------------------------------------ */
/* tensors */

size_t gguf_tensor_count(const gguf_file *f) {
    return f->n_tensors;
}

const gguf_tensor *gguf_tensor_at(const gguf_file *f, size_t i) {
    return i < f->n_tensors ? &f->tensors[i] : NULL;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name) {
    size_t lo = 0, hi = f->n_tensors;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(f->t_sorted[mid]->name, name);
        if (!c) return f->t_sorted[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------------------------ */
/* dequantization (ggml-quants.c dequantize_row_*) */

static void deq_q4_0(const uint8_t *b, float *y) {
    const float d = f16(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < 16; j++) {
        const int x0 = (qs[j] & 0x0F) - 8;
        const int x1 = (qs[j] >> 4) - 8;
        y[j] = x0 * d;
        y[j + 16] = x1 * d;
    }
}

static void deq_q4_1(const uint8_t *b, float *y) {
    const float d = f16(b), m = f16(b + 2);
    const uint8_t *qs = b + 4;
    for (int j = 0; j < 16; j++) {
        const int x0 = qs[j] & 0x0F;
        const int x1 = qs[j] >> 4;
        y[j] = x0 * d + m;
        y[j + 16] = x1 * d + m;
    }
}

static void deq_q5_0(const uint8_t *b, float *y) {
    const float d = f16(b);
    const uint32_t qh = ld32(b + 2);
    const uint8_t *qs = b + 6;
    for (int j = 0; j < 16; j++) {
        const uint8_t xh0 = (uint8_t)(((qh >> (j + 0)) << 4) & 0x10);
        const uint8_t xh1 = (uint8_t)((qh >> (j + 12)) & 0x10);
        const int32_t x0 = ((qs[j] & 0x0F) | xh0) - 16;
        const int32_t x1 = ((qs[j] >> 4) | xh1) - 16;
        y[j] = x0 * d;
        y[j + 16] = x1 * d;
    }
}

static void deq_q5_1(const uint8_t *b, float *y) {
    const float d = f16(b), m = f16(b + 2);
    const uint32_t qh = ld32(b + 4);
    const uint8_t *qs = b + 8;
    for (int j = 0; j < 16; j++) {
        const uint8_t xh0 = (uint8_t)(((qh >> (j + 0)) << 4) & 0x10);
        const uint8_t xh1 = (uint8_t)((qh >> (j + 12)) & 0x10);
        const int x0 = (qs[j] & 0x0F) | xh0;
        const int x1 = (qs[j] >> 4) | xh1;
        y[j] = x0 * d + m;
        y[j + 16] = x1 * d + m;
    }
}

static void deq_q8_0(const uint8_t *b, float *y) {
    const float d = f16(b);
    const int8_t *qs = (const int8_t *)(b + 2);
    for (int j = 0; j < 32; j++)
        y[j] = qs[j] * d;
}

/* 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes of a Q4_K/Q5_K block. */
static void scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
    }
}

static void deq_q4_k(const uint8_t *b, float *y) {
    const float d = f16(b), min = f16(b + 2);
    const uint8_t *scales = b + 4, *q = b + 16;
    int is = 0;
    uint8_t sc, m;
    for (int j = 0; j < 256; j += 64) {
        scale_min_k4(is + 0, scales, &sc, &m);
        const float d1 = d * sc, m1 = min * m;
        scale_min_k4(is + 1, scales, &sc, &m);
        const float d2 = d * sc, m2 = min * m;
        for (int l = 0; l < 32; ++l)
            *y++ = d1 * (q[l] & 0xF) - m1;
        for (int l = 0; l < 32; ++l)
            *y++ = d2 * (q[l] >> 4) - m2;
        q += 32;
        is += 2;
    }
}

static void deq_q5_k(const uint8_t *b, float *y) {
    const float d = f16(b), min = f16(b + 2);
    const uint8_t *scales = b + 4, *qh = b + 16, *ql = b + 48;
    int is = 0;
    uint8_t sc, m, u1 = 1, u2 = 2;
    for (int j = 0; j < 256; j += 64) {
        scale_min_k4(is + 0, scales, &sc, &m);
        const float d1 = d * sc, m1 = min * m;
        scale_min_k4(is + 1, scales, &sc, &m);
        const float d2 = d * sc, m2 = min * m;
        for (int l = 0; l < 32; ++l)
            *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
        for (int l = 0; l < 32; ++l)
            *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
        ql += 32;
        is += 2;
        u1 = (uint8_t)(u1 << 2);
        u2 = (uint8_t)(u2 << 2);
    }
}

static void deq_q6_k(const uint8_t *b, float *y) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    const float d = f16(b + 208);
    for (int n = 0; n < 256; n += 128) {
        for (int l = 0; l < 32; ++l) {
            const int is = l / 16;
            const int8_t q1 = (int8_t)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int8_t q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int8_t q3 = (int8_t)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int8_t q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l + 0] = d * sc[is + 0] * q1;
            y[l + 32] = d * sc[is + 2] * q2;
            y[l + 64] = d * sc[is + 4] * q3;
            y[l + 96] = d * sc[is + 6] * q4;
        }
        y += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

int gguf_dequantize(int type, const void *src, float *dst, int64_t n) {
    const type_info *ti = type_find(type);
    if (!ti || n < 0 || n % ti->elems) return -1;
    const uint8_t *b = src;
    if (type == GGUF_F32) {
        memcpy(dst, src, (size_t)n * 4);
        return 0;
    }
    if (type == GGUF_F16 || type == GGUF_BF16) {
        for (int64_t i = 0; i < n; i++)
            dst[i] = type == GGUF_F16 ? st_f16_to_f32(ld16(b + 2 * i)) : st_bf16_to_f32(ld16(b + 2 * i));
        return 0;
    }
    void (*fn)(const uint8_t *, float *) = NULL;
    switch (type) {
    case GGUF_Q4_0:
        fn = deq_q4_0;
        break;
    case GGUF_Q4_1:
        fn = deq_q4_1;
        break;
    case GGUF_Q5_0:
        fn = deq_q5_0;
        break;
    case GGUF_Q5_1:
        fn = deq_q5_1;
        break;
    case GGUF_Q8_0:
        fn = deq_q8_0;
        break;
    case GGUF_Q4_K:
        fn = deq_q4_k;
        break;
    case GGUF_Q5_K:
        fn = deq_q5_k;
        break;
    case GGUF_Q6_K:
        fn = deq_q6_k;
        break;
    }
    if (!fn) return -1;
    int64_t nb = n / ti->elems;
    for (int64_t i = 0; i < nb; i++)
        fn(b + (size_t)i * ti->bytes, dst + i * ti->elems);
    return 0;
}

int gguf_tensor_to_f32(const gguf_tensor *t, float *out, size_t n, lt_err *err) {
    if (n != (size_t)t->numel)
        return lt_err_set(err, 400, "tensor '%s': %zu output elements for %lld values", t->name, n,
                          (long long)t->numel);
    const int64_t cols = t->ne[0], rows = t->numel / cols;
    const size_t rb = gguf_row_bytes(t->type, cols);
    if (!rb) return lt_err_set(err, 400, "tensor '%s': unsupported tensor type %d", t->name, (int)t->type);
    const uint8_t *src = t->data;
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad) if (t->numel >= (1 << 18))
    for (int64_t r = 0; r < rows; r++)
        bad |= gguf_dequantize(t->type, src + (size_t)r * rb, out + r * cols, cols) != 0;
    if (bad) return lt_err_set(err, 500, "tensor '%s': dequantization failed", t->name);
    return 0;
}

/* ------------------------------------------------------------------------------------------------------ */
/* reference quantizers */

static void st16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* quantize_row_q8_0_ref: d = amax / 127, q = round(x / d) (roundf: half away from zero). */
static void quant_q8_0(const float *x, uint8_t *b) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) {
        const float v = fabsf(x[j]);
        amax = amax > v ? amax : v;
    }
    const float d = amax / ((1 << 7) - 1);
    const float id = d ? 1.0f / d : 0.0f;
    st16(b, st_f32_to_f16(d));
    for (int j = 0; j < 32; j++) {
        const float x0 = x[j] * id;
        b[2 + j] = (uint8_t)(int8_t)roundf(x0);
    }
}

int gguf_quantize(int type, const float *src, void *dst, int64_t n) {
    if (n < 0) return -1;
    uint8_t *b = dst;
    switch (type) {
    case GGUF_F32:
        memcpy(dst, src, (size_t)n * 4);
        return 0;
    case GGUF_F16:
    case GGUF_BF16:
        for (int64_t i = 0; i < n; i++)
            st16(b + 2 * i, type == GGUF_F16 ? st_f32_to_f16(src[i]) : st_f32_to_bf16(src[i]));
        return 0;
    case GGUF_Q8_0:
        if (n % 32) return -1;
        for (int64_t i = 0; i < n / 32; i++)
            quant_q8_0(src + i * 32, b + i * 34);
        return 0;
    }
    return -1;
}

/* ------------------------------------------------------------------------------------------------------ */
/* writer */

typedef struct {
    char *key;
    uint32_t type, arr_type;
    uint64_t n;
    uint8_t *bytes; /* encoded value exactly as in the file (after the type field) */
    size_t len;
} w_kv;

typedef struct {
    char *name;
    gguf_type type;
    int ndim;
    int64_t ne[4];
    const void *data;
    size_t nbytes;
    uint64_t offset;
} w_tensor;

struct gguf_writer {
    w_kv *kvs;
    size_t n_kv, cap_kv;
    w_tensor *ts;
    size_t n_t, cap_t;
};

gguf_writer *gguf_writer_new(void) {
    gguf_writer *w = calloc(1, sizeof *w);
    if (!w) abort();
    return w;
}

void gguf_writer_free(gguf_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kvs[i].key);
        free(w->kvs[i].bytes);
    }
    for (size_t i = 0; i < w->n_t; i++)
        free(w->ts[i].name);
    free(w->kvs);
    free(w->ts);
    free(w);
}

static void put_u32(strbuf *sb, uint32_t v) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    sb_append(sb, b, 4);
}

static void put_u64(strbuf *sb, uint64_t v) {
    put_u32(sb, (uint32_t)v);
    put_u32(sb, (uint32_t)(v >> 32));
}

static void put_str(strbuf *sb, const char *s, size_t n) {
    put_u64(sb, n);
    sb_append(sb, s, n);
}

/* Stores an encoded value under key (replacing an earlier one). Takes ownership of enc's bytes. */
static void w_set(gguf_writer *w, const char *key, uint32_t type, uint32_t arr_type, uint64_t n,
                  strbuf *enc) {
    w_kv *e = NULL;
    for (size_t i = 0; i < w->n_kv; i++)
        if (!strcmp(w->kvs[i].key, key)) e = &w->kvs[i];
    if (e) {
        free(e->bytes);
    } else {
        if (w->n_kv == w->cap_kv) {
            w->cap_kv = w->cap_kv ? 2 * w->cap_kv : 16;
            w->kvs = realloc(w->kvs, w->cap_kv * sizeof *w->kvs);
            if (!w->kvs) abort();
        }
        e = &w->kvs[w->n_kv++];
        e->key = lt_strdup(key);
    }
    e->type = type;
    e->arr_type = arr_type;
    e->n = n;
    e->len = enc->len;
    e->bytes = (uint8_t *)sb_steal(enc);
}

void gguf_writer_set_str(gguf_writer *w, const char *key, const char *value) {
    strbuf sb = STRBUF_INIT;
    put_str(&sb, value, strlen(value));
    w_set(w, key, GGUF_V_STR, 0, 1, &sb);
}

void gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t value) {
    strbuf sb = STRBUF_INIT;
    put_u32(&sb, value);
    w_set(w, key, GGUF_V_U32, 0, 1, &sb);
}

void gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t value) {
    strbuf sb = STRBUF_INIT;
    put_u32(&sb, (uint32_t)value);
    w_set(w, key, GGUF_V_I32, 0, 1, &sb);
}

void gguf_writer_set_f32(gguf_writer *w, const char *key, float value) {
    strbuf sb = STRBUF_INIT;
    uint32_t u;
    memcpy(&u, &value, 4);
    put_u32(&sb, u);
    w_set(w, key, GGUF_V_F32, 0, 1, &sb);
}

void gguf_writer_set_bool(gguf_writer *w, const char *key, int value) {
    strbuf sb = STRBUF_INIT;
    sb_putc(&sb, value ? 1 : 0);
    w_set(w, key, GGUF_V_BOOL, 0, 1, &sb);
}

void gguf_writer_set_arr_str(gguf_writer *w, const char *key, const char *const *values, const size_t *lens,
                             size_t n) {
    strbuf sb = STRBUF_INIT;
    for (size_t i = 0; i < n; i++)
        put_str(&sb, values[i], lens ? lens[i] : strlen(values[i]));
    w_set(w, key, GGUF_V_ARR, GGUF_V_STR, n, &sb);
}

void gguf_writer_set_arr_i32(gguf_writer *w, const char *key, const int32_t *values, size_t n) {
    strbuf sb = STRBUF_INIT;
    for (size_t i = 0; i < n; i++)
        put_u32(&sb, (uint32_t)values[i]);
    w_set(w, key, GGUF_V_ARR, GGUF_V_I32, n, &sb);
}

void gguf_writer_set_arr_f32(gguf_writer *w, const char *key, const float *values, size_t n) {
    strbuf sb = STRBUF_INIT;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &values[i], 4);
        put_u32(&sb, u);
    }
    w_set(w, key, GGUF_V_ARR, GGUF_V_F32, n, &sb);
}

int gguf_writer_add_tensor(gguf_writer *w, const char *name, gguf_type type, int ndim, const int64_t *ne,
                           const void *data, lt_err *err) {
    for (size_t i = 0; i < w->n_t; i++)
        if (!strcmp(w->ts[i].name, name))
            return lt_err_set(err, 400, "GGUF writer: duplicate tensor '%s'", name);
    const type_info *ti = type_find(type);
    if (!ti) return lt_err_set(err, 400, "GGUF writer: tensor '%s': unknown tensor type %d", name, (int)type);
    if (ndim < 1 || ndim > 4)
        return lt_err_set(err, 400, "GGUF writer: tensor '%s': ndim %d outside 1..4", name, ndim);
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++)
        if (ne[d] <= 0 || __builtin_mul_overflow(numel, ne[d], &numel))
            return lt_err_set(err, 400, "GGUF writer: tensor '%s': bad dimension %d (%lld)", name, d,
                              (long long)ne[d]);
    if (ne[0] % ti->elems)
        return lt_err_set(err, 400,
                          "GGUF writer: tensor '%s': row length %lld is not a multiple of the %s block "
                          "size %d",
                          name, (long long)ne[0], ti->name, ti->elems);
    if (w->n_t == w->cap_t) {
        w->cap_t = w->cap_t ? 2 * w->cap_t : 16;
        w->ts = realloc(w->ts, w->cap_t * sizeof *w->ts);
        if (!w->ts) abort();
    }
    w_tensor *t = &w->ts[w->n_t++];
    memset(t, 0, sizeof *t);
    t->name = lt_strdup(name);
    t->type = type;
    t->ndim = ndim;
    for (int d = 0; d < 4; d++)
        t->ne[d] = d < ndim ? ne[d] : 1;
    t->data = data;
    t->nbytes = (size_t)(numel / ti->elems) * ti->bytes;
    return 0;
}

/* The writer's alignment: general.alignment when set as a u32 power of two, else 32. */
static size_t w_alignment(const gguf_writer *w) {
    for (size_t i = 0; i < w->n_kv; i++)
        if (!strcmp(w->kvs[i].key, "general.alignment") && w->kvs[i].type == GGUF_V_U32) {
            uint32_t a = ld32(w->kvs[i].bytes);
            if (a && !(a & (a - 1))) return a;
        }
    return GGUF_DEFAULT_ALIGN;
}

/* Everything before the data section, padded; assigns tensor offsets. */
static void w_header(gguf_writer *w, strbuf *sb, size_t *data_len) {
    size_t a = w_alignment(w);
    int has_align = 0;
    for (size_t i = 0; i < w->n_kv; i++)
        has_align |= !strcmp(w->kvs[i].key, "general.alignment");
    put_u32(sb, GGUF_MAGIC);
    put_u32(sb, 3);
    put_u64(sb, w->n_t);
    put_u64(sb, w->n_kv + (has_align ? 0 : 1));
    if (!has_align) {
        put_str(sb, "general.alignment", strlen("general.alignment"));
        put_u32(sb, GGUF_V_U32);
        put_u32(sb, (uint32_t)a);
    }
    for (size_t i = 0; i < w->n_kv; i++) {
        const w_kv *e = &w->kvs[i];
        put_str(sb, e->key, strlen(e->key));
        put_u32(sb, e->type);
        if (e->type == GGUF_V_ARR) {
            put_u32(sb, e->arr_type);
            put_u64(sb, e->n);
        }
        sb_append(sb, e->bytes, e->len);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        w_tensor *t = &w->ts[i];
        t->offset = off;
        put_str(sb, t->name, strlen(t->name));
        put_u32(sb, (uint32_t)t->ndim);
        for (int d = 0; d < t->ndim; d++)
            put_u64(sb, (uint64_t)t->ne[d]);
        put_u32(sb, (uint32_t)t->type);
        put_u64(sb, off);
        off += t->nbytes;
        off += (a - off % a) % a;
    }
    while (sb->len % a)
        sb_putc(sb, 0);
    *data_len = (size_t)off;
}

int gguf_writer_serialize(gguf_writer *w, void **out, size_t *len, lt_err *err) {
    strbuf sb = STRBUF_INIT;
    size_t data_len;
    w_header(w, &sb, &data_len);
    sb_reserve(&sb, data_len);
    size_t start = sb.len;
    for (size_t i = 0; i < w->n_t; i++) {
        const w_tensor *t = &w->ts[i];
        while (sb.len - start < t->offset)
            sb_putc(&sb, 0);
        sb_append(&sb, t->data, t->nbytes);
    }
    while (sb.len - start < data_len)
        sb_putc(&sb, 0);
    *len = sb.len;
    *out = sb_steal(&sb);
    return 0;
}

static const uint8_t ZEROS[4096];

static int write_all(int fd, const void *p, size_t n) {
    const uint8_t *b = p;
    while (n) {
        ssize_t k = write(fd, b, n > (1u << 30) ? (1u << 30) : n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        b += k;
        n -= (size_t)k;
    }
    return 0;
}

static int write_zeros(int fd, size_t n) {
    while (n) {
        size_t k = n < sizeof ZEROS ? n : sizeof ZEROS;
        if (write_all(fd, ZEROS, k) < 0) return -1;
        n -= k;
    }
    return 0;
}

int gguf_writer_write(gguf_writer *w, const char *path, lt_err *err) {
    strbuf sb = STRBUF_INIT;
    size_t data_len;
    w_header(w, &sb, &data_len);
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    if (!tmp) abort();
    snprintf(tmp, plen + 16, "%s.tmpXXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        lt_err_set(err, 500, "%s: cannot create a temp file: %s", path, strerror(errno));
        free(tmp);
        sb_free(&sb);
        return -1;
    }
    int rc = write_all(fd, sb.buf, sb.len);
    uint64_t pos = 0;
    for (size_t i = 0; i < w->n_t && rc == 0; i++) {
        const w_tensor *t = &w->ts[i];
        rc = write_zeros(fd, (size_t)(t->offset - pos));
        if (rc == 0) rc = write_all(fd, t->data, t->nbytes);
        pos = t->offset + t->nbytes;
    }
    if (rc == 0) rc = write_zeros(fd, (size_t)(data_len - pos));
    if (rc == 0) rc = fchmod(fd, 0644);
    if (rc == 0) rc = fsync(fd);
    int e = errno;
    if (close(fd) < 0 && rc == 0) {
        rc = -1;
        e = errno;
    }
    if (rc == 0 && rename(tmp, path) < 0) {
        rc = -1;
        e = errno;
    }
    if (rc < 0) {
        unlink(tmp);
        lt_err_set(err, 500, "%s: write failed: %s", path, strerror(e));
    }
    free(tmp);
    sb_free(&sb);
    return rc;
}
