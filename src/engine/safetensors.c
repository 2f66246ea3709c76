/* safetensors.c: strict reader and atomic writer for HF safetensors files (see safetensors.h for the format).
 *
 * Reading. Each file is mmap'd read-only. The 8-byte little-endian header length is bounded (100 MB, as the
 * reference reader), the header is parsed with jansson (duplicate keys rejected), and every entry is checked:
 * dtype among F32/BF16/F16, non-negative integer dims, numel * element size == end - begin without overflow,
 * offsets inside the data buffer. Then the entries, sorted by (begin, end), must tile the data buffer exactly
 * (each begins where the previous ended, the first at 0, the last ends at the end of the file): that single
 * rule rejects overlaps, holes and trailing garbage. Tensors of every file land in one array sorted by name,
 * so lookup is a binary search and duplicates across shards show up as neighbours.
 *
 * A model directory is read through model.safetensors.index.json ("weight_map": name -> shard) when present,
 * else model.safetensors. Shard names must stay inside the directory (no absolute path, no ".." component).
 *
 * Writing. The writer only records borrowed pointers; serialisation builds the JSON header by hand (names
 * escaped), orders tensors like the reference writer (descending element size, then name), pads the header
 * with spaces to a multiple of 8 (so every tensor is aligned to its element size), and streams the data to a
 * temp file in the target directory, converting f32 sources to BF16/F16 in fixed-size chunks; then fsync and
 * rename, so readers see the old file or the new one, never half of one.
 *
 * Conversions are the exact bit-level ones: BF16 -> f32 is a shift, F16 -> f32 handles subnormals, inf and
 * NaN; f32 -> BF16/F16 rounds to nearest even and keeps NaN a NaN. */
#include "engine/safetensors.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/strbuf.h"
#include "util/util.h"

/* ------------------------------------------------------------------------------------------------------ */
/* dtypes and conversions */

size_t st_dtype_size(st_dtype dt) {
    return dt == ST_F32 ? 4 : 2;
}

const char *st_dtype_name(st_dtype dt) {
    switch (dt) {
    case ST_F32:
        return "F32";
    case ST_BF16:
        return "BF16";
    case ST_F16:
        return "F16";
    }
    return "?";
}

int st_dtype_parse(const char *s, st_dtype *dt) {
    if (!s) return -1;
    if (strcmp(s, "F32") == 0)
        *dt = ST_F32;
    else if (strcmp(s, "BF16") == 0)
        *dt = ST_BF16;
    else if (strcmp(s, "F16") == 0)
        *dt = ST_F16;
    else
        return -1;
    return 0;
}

static float bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f32_to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

float st_bf16_to_f32(uint16_t h) {
    return bits_to_f32((uint32_t)h << 16);
}

uint16_t st_f32_to_bf16(float f) {
    uint32_t x = f32_to_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40); /* NaN: keep sign, make quiet */
    uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)((x + rounding) >> 16); /* overflow to 0x7f80 (inf) is the correct rounding */
}

float st_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) return bits_to_f32(sign | 0x7f800000u | (mant << 13)); /* inf / NaN (payload kept) */
    if (exp == 0) {
        if (mant == 0) return bits_to_f32(sign);
        /* subnormal: mant * 2^-24, normalise into an f32 normal */
        int e = -1;
        do {
            mant <<= 1;
            e++;
        } while (!(mant & 0x400u));
        mant &= 0x3ffu;
        return bits_to_f32(sign | ((uint32_t)(127 - 15 - e) << 23) | (mant << 13));
    }
    return bits_to_f32(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

uint16_t st_f32_to_f16(float f) {
    uint32_t x = f32_to_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t exp = (x >> 23) & 0xffu;
    uint32_t mant = x & 0x7fffffu;
    if (exp == 0xff) return (uint16_t)(sign | 0x7c00u | (mant ? (0x200u | (mant >> 13)) : 0u));
    int e = (int)exp - 127 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        if (e < -10) return sign; /* below half the smallest subnormal: rounds to zero */
        mant |= 0x800000u;
        int shift = 14 - e; /* 14..24 */
        uint32_t h = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1u))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)e << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; /* may carry into the exponent: still right */
    return (uint16_t)(sign | h);
}

void st_convert_to_f32(st_dtype dt, const void *src, float *dst, size_t n) {
    const uint8_t *s = src;
    switch (dt) {
    case ST_F32:
        memcpy(dst, src, n * 4);
        return;
    case ST_BF16:
        for (size_t i = 0; i < n; i++)
            dst[i] = st_bf16_to_f32((uint16_t)(s[2 * i] | (s[2 * i + 1] << 8)));
        return;
    case ST_F16:
        for (size_t i = 0; i < n; i++)
            dst[i] = st_f16_to_f32((uint16_t)(s[2 * i] | (s[2 * i + 1] << 8)));
        return;
    }
}

void st_convert_from_f32(st_dtype dt, const float *src, void *dst, size_t n) {
    uint8_t *d = dst;
    switch (dt) {
    case ST_F32:
        memcpy(dst, src, n * 4);
        return;
    case ST_BF16:
    case ST_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = dt == ST_BF16 ? st_f32_to_bf16(src[i]) : st_f32_to_f16(src[i]);
            d[2 * i] = (uint8_t)(h & 0xff);
            d[2 * i + 1] = (uint8_t)(h >> 8);
        }
        return;
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* reader */

typedef struct st_file {
    char *path;
    const uint8_t *base;
    size_t size;
    int mapped;   /* 1: munmap at close; 0: borrowed memory */
    json_t *meta; /* the __metadata__ object (own reference) or NULL */
} st_file;

struct st_reader {
    st_file *files;
    size_t nfiles;
    st_tensor *tensors; /* sorted by name once complete */
    size_t ntensors, cap;
    size_t total;
};

typedef struct span {
    uint64_t begin, end;
    const char *name;
} span;

static int cmp_span(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static st_reader *reader_new(void) {
    st_reader *r = calloc(1, sizeof *r);
    if (!r) abort();
    return r;
}

static size_t reader_add_file(st_reader *r, const char *path) {
    st_file *f = realloc(r->files, (r->nfiles + 1) * sizeof *f);
    if (!f) abort();
    r->files = f;
    memset(&r->files[r->nfiles], 0, sizeof(st_file));
    r->files[r->nfiles].path = lt_strdup(path);
    return r->nfiles++;
}

static st_tensor *reader_push(st_reader *r) {
    if (r->ntensors == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        st_tensor *t = realloc(r->tensors, cap * sizeof *t);
        if (!t) abort();
        r->tensors = t;
        r->cap = cap;
    }
    st_tensor *t = &r->tensors[r->ntensors++];
    memset(t, 0, sizeof *t);
    return t;
}

void st_close(st_reader *r) {
    if (!r) return;
    for (size_t i = 0; i < r->ntensors; i++)
        free((char *)r->tensors[i].name);
    free(r->tensors);
    for (size_t i = 0; i < r->nfiles; i++) {
        st_file *f = &r->files[i];
        if (f->mapped && f->base) munmap((void *)f->base, f->size);
        if (f->meta) json_decref(f->meta);
        free(f->path);
    }
    free(r->files);
    free(r);
}

static uint64_t le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Parses one tensor entry `val` named `name` of file `fname`. Fills t (except data), begin and end. */
static int parse_entry(const char *fname, const char *name, json_t *val, st_tensor *t, uint64_t *begin,
                       uint64_t *end, lt_err *err) {
    if (!json_is_object(val))
        return lt_err_set(err, 400, "%s: header entry '%s' is not an object with dtype, shape, data_offsets",
                          fname, name);
    json_t *jd = json_object_get(val, "dtype"), *js = json_object_get(val, "shape"),
           *jo = json_object_get(val, "data_offsets");
    if (!json_is_string(jd))
        return lt_err_set(err, 400, "%s: tensor '%s': \"dtype\" missing or not a string", fname, name);
    if (st_dtype_parse(json_string_value(jd), &t->dtype) != 0)
        return lt_err_set(err, 400,
                          "%s: tensor '%s' has dtype %.32s; lathe reads F32, BF16 and F16 only (convert the "
                          "checkpoint to one of them)",
                          fname, name, json_string_value(jd));
    if (!json_is_array(js))
        return lt_err_set(err, 400, "%s: tensor '%s': \"shape\" missing or not an array", fname, name);
    size_t nd = json_array_size(js);
    if (nd > ST_MAX_DIMS)
        return lt_err_set(err, 400, "%s: tensor '%s' has %zu dims; at most %d are supported", fname, name, nd,
                          ST_MAX_DIMS);
    t->ndim = (int)nd;
    uint64_t numel = 1;
    int overflow = 0;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return lt_err_set(err, 400, "%s: tensor '%s': shape[%zu] is not a non-negative integer", fname,
                              name, i);
        t->shape[i] = (int64_t)json_integer_value(d);
        if (__builtin_mul_overflow(numel, (uint64_t)t->shape[i], &numel)) overflow = 1;
    }
    if (overflow || numel > (uint64_t)INT64_MAX / 4)
        return lt_err_set(err, 400, "%s: tensor '%s': shape is too large", fname, name);
    t->numel = (int64_t)numel;
    t->nbytes = (size_t)(numel * st_dtype_size(t->dtype));
    if (!json_is_array(jo) || json_array_size(jo) != 2)
        return lt_err_set(err, 400, "%s: tensor '%s': \"data_offsets\" must be [begin, end]", fname, name);
    json_t *b = json_array_get(jo, 0), *e = json_array_get(jo, 1);
    if (!json_is_integer(b) || !json_is_integer(e) || json_integer_value(b) < 0 || json_integer_value(e) < 0)
        return lt_err_set(err, 400, "%s: tensor '%s': data_offsets must be non-negative integers", fname,
                          name);
    *begin = (uint64_t)json_integer_value(b);
    *end = (uint64_t)json_integer_value(e);
    if (*end < *begin)
        return lt_err_set(err, 400, "%s: tensor '%s': data_offsets [%llu, %llu] end before begin", fname,
                          name, (unsigned long long)*begin, (unsigned long long)*end);
    if (*end - *begin != (uint64_t)t->nbytes) {
        strbuf sb = STRBUF_INIT;
        for (int i = 0; i < t->ndim; i++)
            sb_printf(&sb, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        lt_err_set(err, 400,
                   "%s: tensor '%s': %s shape [%s] needs %zu bytes but data_offsets [%llu, %llu] span %llu",
                   fname, name, st_dtype_name(t->dtype), sb.buf ? sb.buf : "", t->nbytes,
                   (unsigned long long)*begin, (unsigned long long)*end, (unsigned long long)(*end - *begin));
        sb_free(&sb);
        return -1;
    }
    return 0;
}

/* Parses and validates the image of file `fi` (already in r->files[fi].base/size), appending its tensors. */
static int parse_image(st_reader *r, size_t fi, lt_err *err) {
    st_file *f = &r->files[fi];
    const char *fname = f->path;
    if (f->size < 8)
        return lt_err_set(err, 400, "%s: file is %zu bytes, too short for a safetensors header (truncated?)",
                          fname, f->size);
    uint64_t n = le64(f->base);
    if (n > ST_MAX_HEADER)
        return lt_err_set(err, 400,
                          "%s: header length %llu exceeds the %llu-byte limit (not a safetensors file?)",
                          fname, (unsigned long long)n, (unsigned long long)ST_MAX_HEADER);
    if (n < 2)
        return lt_err_set(err, 400, "%s: header length %llu is too small for a JSON object", fname,
                          (unsigned long long)n);
    if (n > f->size - 8)
        return lt_err_set(err, 400, "%s: header length %llu does not fit in the %zu-byte file (truncated?)",
                          fname, (unsigned long long)n, f->size);
    const char *hdr = (const char *)f->base + 8;
    size_t k = 0;
    while (k < n && (hdr[k] == ' ' || hdr[k] == '\n' || hdr[k] == '\r' || hdr[k] == '\t'))
        k++;
    if (k == n || hdr[k] != '{') return lt_err_set(err, 400, "%s: header is not a JSON object", fname);
    json_error_t jerr;
    json_t *root = json_loadb(hdr, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return lt_err_set(err, 400, "%s: header JSON invalid at byte %d: %s", fname, jerr.position,
                          jerr.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return lt_err_set(err, 400, "%s: header is not a JSON object", fname);
    }
    size_t data_len = f->size - 8 - (size_t)n;
    const uint8_t *data = f->base + 8 + n;
    size_t count = json_object_size(root);
    span *spans = malloc((count ? count : 1) * sizeof *spans);
    if (!spans) abort();
    size_t ns = 0, first = r->ntensors;
    int rc = 0;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(val)) {
                rc = lt_err_set(err, 400, "%s: __metadata__ must be an object of strings", fname);
                break;
            }
            const char *mk;
            json_t *mv;
            json_object_foreach(val, mk, mv) {
                if (!json_is_string(mv)) {
                    rc = lt_err_set(err, 400, "%s: __metadata__ value of '%s' is not a string", fname, mk);
                    break;
                }
            }
            if (rc) break;
            f->meta = json_incref(val);
            continue;
        }
        st_tensor tmp;
        memset(&tmp, 0, sizeof tmp);
        uint64_t b = 0, e = 0;
        if (parse_entry(fname, key, val, &tmp, &b, &e, err) != 0) {
            rc = -1;
            break;
        }
        if (e > data_len) {
            rc = lt_err_set(err, 400,
                            "%s: tensor '%s': data_offsets [%llu, %llu] run past the %zu-byte data buffer "
                            "(truncated file or bad offsets)",
                            fname, key, (unsigned long long)b, (unsigned long long)e, data_len);
            break;
        }
        st_tensor *t = reader_push(r);
        *t = tmp;
        t->name = lt_strdup(key);
        t->file = f->path;
        t->data = data + b;
        spans[ns].begin = b;
        spans[ns].end = e;
        spans[ns].name = t->name;
        ns++;
    }
    if (rc == 0) {
        qsort(spans, ns, sizeof *spans, cmp_span);
        uint64_t cursor = 0;
        for (size_t i = 0; i < ns && rc == 0; i++) {
            if (spans[i].begin < cursor)
                rc = lt_err_set(err, 400,
                                "%s: tensor '%s' at bytes [%llu, %llu] overlaps the previous tensor '%s'",
                                fname, spans[i].name, (unsigned long long)spans[i].begin,
                                (unsigned long long)spans[i].end, spans[i - 1].name);
            else if (spans[i].begin > cursor)
                rc =
                    lt_err_set(err, 400, "%s: gap in the data buffer: bytes [%llu, %llu) belong to no tensor",
                               fname, (unsigned long long)cursor, (unsigned long long)spans[i].begin);
            cursor = spans[i].end;
        }
        if (rc == 0 && cursor != data_len)
            rc = lt_err_set(err, 400,
                            "%s: data buffer is %zu bytes but the tensors cover %llu (trailing bytes)", fname,
                            data_len, (unsigned long long)cursor);
    }
    free(spans);
    json_decref(root);
    if (rc != 0) {
        for (size_t i = first; i < r->ntensors; i++)
            free((char *)r->tensors[i].name);
        r->ntensors = first;
        return -1;
    }
    for (size_t i = first; i < r->ntensors; i++)
        r->total += r->tensors[i].nbytes;
    return 0;
}

/* Sorts by name and rejects duplicates (possible across shards only). */
static int reader_finish(st_reader *r, lt_err *err) {
    if (r->ntensors > 1) qsort(r->tensors, r->ntensors, sizeof *r->tensors, cmp_tensor_name);
    for (size_t i = 1; i < r->ntensors; i++)
        if (strcmp(r->tensors[i - 1].name, r->tensors[i].name) == 0)
            return lt_err_set(err, 400, "tensor '%s' appears twice (in %s and %s)", r->tensors[i].name,
                              r->tensors[i - 1].file, r->tensors[i].file);
    return 0;
}

static int map_file(st_reader *r, const char *path, lt_err *err) {
    size_t fi = reader_add_file(r, path);
    st_file *f = &r->files[fi];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return lt_err_set(err, errno == ENOENT ? 404 : 500, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        lt_err_set(err, 500, "%s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return lt_err_set(err, 400, "%s: not a regular file", path);
    }
    f->size = (size_t)st.st_size;
    if (f->size >= 8) {
        void *p = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            lt_err_set(err, 500, "%s: mmap: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
        f->base = p;
        f->mapped = 1;
    }
    close(fd);
    return parse_image(r, fi, err);
}

static int shard_name_ok(const char *s) {
    if (!s[0] || s[0] == '/') return 0;
    const char *p = s;
    while (*p) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.') return 0;
        if (!slash) break;
        p = slash + 1;
    }
    return 1;
}

static int open_index(st_reader *r, const char *dir, const char *index_path, lt_err *err) {
    size_t len;
    char *text = lt_read_file(index_path, &len, err);
    if (!text) return -1;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root) return lt_err_set(err, 400, "%s: line %d: %s", index_path, jerr.line, jerr.text);
    json_t *wm = json_object_get(root, "weight_map");
    int rc = 0;
    if (!json_is_object(wm) || json_object_size(wm) == 0) {
        rc = lt_err_set(err, 400, "%s: \"weight_map\" missing, empty or not an object", index_path);
        goto done;
    }
    const char *name;
    json_t *v;
    json_object_foreach(wm, name, v) {
        if (!json_is_string(v) || !shard_name_ok(json_string_value(v))) {
            rc = lt_err_set(err, 400, "%s: weight_map[\"%s\"] must be a file name inside the model directory",
                            index_path, name);
            goto done;
        }
        char *path = lt_path_join(dir, json_string_value(v));
        int seen = 0;
        for (size_t i = 0; i < r->nfiles; i++)
            if (strcmp(r->files[i].path, path) == 0) seen = 1;
        if (!seen && map_file(r, path, err) != 0) {
            free(path);
            rc = -1;
            goto done;
        }
        free(path);
    }
    if (reader_finish(r, err) != 0) {
        rc = -1;
        goto done;
    }
    json_object_foreach(wm, name, v) {
        const st_tensor *t = st_find(r, name);
        char *path = lt_path_join(dir, json_string_value(v));
        if (!t || strcmp(t->file, path) != 0)
            rc = lt_err_set(err, 400, "%s: weight_map says tensor '%s' is in %s, but it is not there",
                            index_path, name, json_string_value(v));
        free(path);
        if (rc) goto done;
    }
done:
    json_decref(root);
    return rc;
}

st_reader *st_open(const char *path, lt_err *err) {
    struct stat st;
    if (stat(path, &st) != 0) {
        lt_err_set(err, errno == ENOENT ? 404 : 500, "%s: %s", path, strerror(errno));
        return NULL;
    }
    st_reader *r = reader_new();
    int rc;
    if (S_ISDIR(st.st_mode)) {
        char *index = lt_path_join(path, "model.safetensors.index.json");
        char *single = lt_path_join(path, "model.safetensors");
        if (access(index, F_OK) == 0) {
            rc = open_index(r, path, index, err);
        } else if (access(single, F_OK) == 0) {
            rc = map_file(r, single, err);
            if (rc == 0) rc = reader_finish(r, err);
        } else {
            rc = lt_err_set(
                err, 404, "%s: no model.safetensors or model.safetensors.index.json in this directory", path);
        }
        free(index);
        free(single);
    } else {
        rc = map_file(r, path, err);
        if (rc == 0) rc = reader_finish(r, err);
    }
    if (rc != 0) {
        st_close(r);
        return NULL;
    }
    return r;
}

st_reader *st_open_memory(const void *buf, size_t len, const char *name, lt_err *err) {
    st_reader *r = reader_new();
    size_t fi = reader_add_file(r, name ? name : "<memory>");
    r->files[fi].base = buf;
    r->files[fi].size = len;
    if (parse_image(r, fi, err) != 0 || reader_finish(r, err) != 0) {
        st_close(r);
        return NULL;
    }
    return r;
}

size_t st_count(const st_reader *r) {
    return r->ntensors;
}

const st_tensor *st_at(const st_reader *r, size_t i) {
    assert(i < r->ntensors);
    return &r->tensors[i];
}

const st_tensor *st_find(const st_reader *r, const char *name) {
    size_t lo = 0, hi = r->ntensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(r->tensors[mid].name, name);
        if (c == 0) return &r->tensors[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static void fmt_shape(strbuf *sb, int ndim, const int64_t *shape) {
    sb_putc(sb, '[');
    for (int i = 0; i < ndim; i++)
        sb_printf(sb, "%s%lld", i ? ", " : "", (long long)shape[i]);
    sb_putc(sb, ']');
}

const st_tensor *st_expect(const st_reader *r, const char *name, int ndim, const int64_t *shape,
                           lt_err *err) {
    const st_tensor *t = st_find(r, name);
    const char *where = r->nfiles == 1 ? r->files[0].path : "model weights";
    if (!t) {
        lt_err_set(err, 400, "%s: tensor '%s' is missing", where, name);
        return NULL;
    }
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = t->shape[i] == shape[i];
    if (!same) {
        strbuf a = STRBUF_INIT, b = STRBUF_INIT;
        fmt_shape(&a, t->ndim, t->shape);
        fmt_shape(&b, ndim, shape);
        lt_err_set(err, 400, "%s: tensor '%s' has shape %s, expected %s", t->file, name, a.buf, b.buf);
        sb_free(&a);
        sb_free(&b);
        return NULL;
    }
    return t;
}

int st_load_f32(const st_reader *r, const char *name, int ndim, const int64_t *shape, float *out,
                lt_err *err) {
    const st_tensor *t = st_expect(r, name, ndim, shape, err);
    if (!t) return -1;
    return st_tensor_to_f32(t, out, (size_t)t->numel, err);
}

const char *st_metadata(const st_reader *r, const char *key) {
    if (r->nfiles == 0 || !r->files[0].meta) return NULL;
    return json_string_value(json_object_get(r->files[0].meta, key));
}

size_t st_num_files(const st_reader *r) {
    return r->nfiles;
}

const char *st_file_path(const st_reader *r, size_t i) {
    assert(i < r->nfiles);
    return r->files[i].path;
}

size_t st_total_bytes(const st_reader *r) {
    return r->total;
}

int st_tensor_to_f32(const st_tensor *t, float *out, size_t n, lt_err *err) {
    if (n != (size_t)t->numel)
        return lt_err_set(err, 400, "%s: tensor '%s' has %lld elements, caller expected %zu", t->file,
                          t->name, (long long)t->numel, n);
    st_convert_to_f32(t->dtype, t->data, out, n);
    return 0;
}

float *st_tensor_to_f32_alloc(const st_tensor *t, lt_err *err) {
    size_t bytes = (size_t)t->numel * sizeof(float);
    bytes = (bytes + 63) & ~(size_t)63;
    if (bytes == 0) bytes = 64;
    float *p = aligned_alloc(64, bytes);
    if (!p) {
        lt_err_set(err, 500, "out of memory converting tensor '%s' (%zu bytes)", t->name, bytes);
        return NULL;
    }
    st_convert_to_f32(t->dtype, t->data, p, (size_t)t->numel);
    return p;
}

/* ------------------------------------------------------------------------------------------------------ */
/* writer */

typedef struct wtensor {
    char *name;
    st_dtype dtype; /* as stored in the file */
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t numel;
    const void *data;
    int from_f32; /* data is float[numel], converted to dtype at write time */
} wtensor;

struct st_writer {
    wtensor *t;
    size_t n, cap;
    char **mkeys, **mvals;
    size_t nmeta;
};

st_writer *st_writer_new(void) {
    st_writer *w = calloc(1, sizeof *w);
    if (!w) abort();
    st_writer_set_metadata(w, "format", "pt");
    return w;
}

void st_writer_free(st_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n; i++)
        free(w->t[i].name);
    free(w->t);
    for (size_t i = 0; i < w->nmeta; i++) {
        free(w->mkeys[i]);
        free(w->mvals[i]);
    }
    free(w->mkeys);
    free(w->mvals);
    free(w);
}

void st_writer_set_metadata(st_writer *w, const char *key, const char *value) {
    for (size_t i = 0; i < w->nmeta; i++)
        if (strcmp(w->mkeys[i], key) == 0) {
            free(w->mvals[i]);
            w->mvals[i] = lt_strdup(value);
            return;
        }
    char **k = realloc(w->mkeys, (w->nmeta + 1) * sizeof *k);
    if (!k) abort();
    w->mkeys = k;
    char **v = realloc(w->mvals, (w->nmeta + 1) * sizeof *v);
    if (!v) abort();
    w->mvals = v;
    w->mkeys[w->nmeta] = lt_strdup(key);
    w->mvals[w->nmeta] = lt_strdup(value);
    w->nmeta++;
}

static int writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape,
                      const void *data, int from_f32, lt_err *err) {
    if (!name || strcmp(name, "__metadata__") == 0 || !lt_utf8_valid(name, strlen(name)))
        return lt_err_set(err, 400, "safetensors writer: invalid tensor name '%s'", name ? name : "(null)");
    if (ndim < 0 || ndim > ST_MAX_DIMS)
        return lt_err_set(err, 400, "safetensors writer: tensor '%s' has %d dims (0..%d allowed)", name, ndim,
                          ST_MAX_DIMS);
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return lt_err_set(err, 400, "safetensors writer: tensor '%s' has a negative dim", name);
        if (__builtin_mul_overflow(numel, (size_t)shape[i], &numel))
            return lt_err_set(err, 400, "safetensors writer: tensor '%s' is too large", name);
    }
    for (size_t i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return lt_err_set(err, 400, "safetensors writer: tensor '%s' added twice", name);
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 32;
        wtensor *t = realloc(w->t, cap * sizeof *t);
        if (!t) abort();
        w->t = t;
        w->cap = cap;
    }
    wtensor *t = &w->t[w->n++];
    memset(t, 0, sizeof *t);
    t->name = lt_strdup(name);
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    t->numel = numel;
    t->data = data;
    t->from_f32 = from_f32;
    assert(numel == 0 || data != NULL);
    return 0;
}

int st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape,
                  const void *data, lt_err *err) {
    return writer_add(w, name, dtype, ndim, shape, data, 0, err);
}

int st_writer_add_f32(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape,
                      const float *data, lt_err *err) {
    return writer_add(w, name, dtype, ndim, shape, data, dtype != ST_F32, err);
}

static void json_str(strbuf *sb, const char *s) {
    sb_putc(sb, '"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            sb_putc(sb, '\\');
            sb_putc(sb, (char)*p);
        } else if (*p < 0x20) {
            sb_printf(sb, "\\u%04x", *p);
        } else {
            sb_putc(sb, (char)*p);
        }
    }
    sb_putc(sb, '"');
}

static int cmp_wtensor(const void *a, const void *b) {
    const wtensor *x = *(wtensor *const *)a, *y = *(wtensor *const *)b;
    size_t sx = st_dtype_size(x->dtype), sy = st_dtype_size(y->dtype);
    if (sx != sy) return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Builds the 8-byte length + padded header into sb and returns the tensors in file order (malloc'd). */
static wtensor **writer_layout(st_writer *w, strbuf *sb) {
    wtensor **order = malloc((w->n ? w->n : 1) * sizeof *order);
    if (!order) abort();
    for (size_t i = 0; i < w->n; i++)
        order[i] = &w->t[i];
    qsort(order, w->n, sizeof *order, cmp_wtensor);
    strbuf h = STRBUF_INIT;
    sb_putc(&h, '{');
    int first = 1;
    if (w->nmeta) {
        sb_puts(&h, "\"__metadata__\":{");
        for (size_t i = 0; i < w->nmeta; i++) {
            if (i) sb_putc(&h, ',');
            json_str(&h, w->mkeys[i]);
            sb_putc(&h, ':');
            json_str(&h, w->mvals[i]);
        }
        sb_putc(&h, '}');
        first = 0;
    }
    uint64_t off = 0;
    for (size_t i = 0; i < w->n; i++) {
        wtensor *t = order[i];
        uint64_t nb = (uint64_t)t->numel * st_dtype_size(t->dtype);
        if (!first) sb_putc(&h, ',');
        first = 0;
        json_str(&h, t->name);
        sb_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++)
            sb_printf(&h, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        sb_printf(&h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                  (unsigned long long)(off + nb));
        off += nb;
    }
    sb_putc(&h, '}');
    while (h.len % 8)
        sb_putc(&h, ' ');
    uint8_t lenb[8];
    uint64_t n = h.len;
    for (int i = 0; i < 8; i++)
        lenb[i] = (uint8_t)(n >> (8 * i));
    sb_append(sb, lenb, 8);
    sb_append(sb, h.buf, h.len);
    sb_free(&h);
    return order;
}

#define CHUNK 16384 /* elements converted per step when writing f32 sources as 16-bit */

/* Emits the bytes of tensor t through `emit`, converting in chunks when needed. */
typedef int (*emit_fn)(void *ctx, const void *p, size_t n);

static int emit_tensor(const wtensor *t, emit_fn emit, void *ctx) {
    size_t es = st_dtype_size(t->dtype);
    if (!t->from_f32) return t->numel ? emit(ctx, t->data, t->numel * es) : 0;
    uint8_t buf[CHUNK * 2];
    const float *src = t->data;
    for (size_t i = 0; i < t->numel; i += CHUNK) {
        size_t m = t->numel - i < CHUNK ? t->numel - i : CHUNK;
        st_convert_from_f32(t->dtype, src + i, buf, m);
        if (emit(ctx, buf, m * 2) != 0) return -1;
    }
    return 0;
}

static int emit_sb(void *ctx, const void *p, size_t n) {
    sb_append(ctx, p, n);
    return 0;
}

typedef struct fdctx {
    int fd;
} fdctx;

static int emit_fd(void *ctx, const void *p, size_t n) {
    fdctx *c = ctx;
    const char *q = p;
    while (n) {
        ssize_t k = write(c->fd, q, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        q += k;
        n -= (size_t)k;
    }
    return 0;
}

int st_writer_serialize(st_writer *w, void **out, size_t *len, lt_err *err) {
    strbuf sb = STRBUF_INIT;
    wtensor **order = writer_layout(w, &sb);
    for (size_t i = 0; i < w->n; i++)
        emit_tensor(order[i], emit_sb, &sb);
    free(order);
    *len = sb.len;
    *out = sb_steal(&sb);
    (void)err;
    return 0;
}

int st_writer_write(st_writer *w, const char *path, lt_err *err) {
    size_t plen = strlen(path) + 16;
    char *tmp = malloc(plen);
    if (!tmp) abort();
    snprintf(tmp, plen, "%s.tmpXXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        lt_err_set(err, 500, "%s: cannot create a temp file: %s", path, strerror(errno));
        free(tmp);
        return -1;
    }
    strbuf sb = STRBUF_INIT;
    wtensor **order = writer_layout(w, &sb);
    fdctx c = {fd};
    int rc = emit_fd(&c, sb.buf, sb.len);
    for (size_t i = 0; rc == 0 && i < w->n; i++)
        rc = emit_tensor(order[i], emit_fd, &c);
    free(order);
    sb_free(&sb);
    if (rc == 0 && fchmod(fd, 0644) != 0) rc = -1;
    if (rc == 0 && fsync(fd) != 0) rc = -1;
    if (rc != 0) {
        lt_err_set(err, 500, "%s: write failed: %s", path, strerror(errno));
        close(fd);
        unlink(tmp);
        free(tmp);
        return -1;
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        lt_err_set(err, 500, "%s: %s", path, strerror(errno));
        unlink(tmp);
        free(tmp);
        return -1;
    }
    free(tmp);
    /* fsync the directory so the rename itself is durable */
    char *dir = lt_strdup(path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    int dfd = open(slash ? (dir[0] ? dir : "/") : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(dir);
    return 0;
}
