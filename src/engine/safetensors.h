/* safetensors.h: reading and writing HF safetensors files (single file, model dir, or sharded index).
 *
 * Format (huggingface/safetensors README): [8-byte little-endian N][N bytes JSON header][data buffer]. The
 * header maps tensor names to {"dtype","shape","data_offsets":[begin,end]} (offsets relative to the data
 * buffer, end exclusive) plus an optional "__metadata__" string->string map. The reader validates strictly,
 * as the reference implementation does: N <= 100,000,000, header is a JSON object, every dtype is F32, BF16
 * or F16 (any other dtype is rejected with an error naming it), numel * element size == end - begin, offsets
 * inside the file, entries sorted by offset tile the data buffer from 0 with no gap and no overlap, and the
 * data buffer ends exactly at the end of the file; duplicate names are rejected (also across shards). Every
 * error names the file and, where there is one, the tensor and what is wrong.
 *
 * Reading a model dir: st_open(DIR) uses DIR/model.safetensors.index.json when present ({"weight_map":
 * {name: shard file}}; every shard in it is opened, every mapped name must be present in its shard), else
 * DIR/model.safetensors. Only these names are used: never "*.safetensors" globbing (Mistral ships a second,
 * differently named consolidated.safetensors next to the HF files). A path to a regular file opens that file.
 *
 * Ownership:
 *  - st_reader is opaque; st_open / st_open_memory return one the caller frees with st_close.
 *  - st_tensor pointers returned by st_find / st_at / st_expect, their `name` and `file` strings and their
 * `data` pointers belong to the reader and stay valid until st_close. Files are mmap'd read-only
 * (MAP_PRIVATE): the bytes must not be written through `data`.
 *  - A mapped file must not be truncated or rewritten in place while a reader is open (reads would fault);
 *    lathe's writers replace files by rename, which leaves open mappings intact.
 *  - `data` is NOT necessarily aligned to the element size (other writers need not align). Read it through
 *    st_tensor_to_f32 / st_convert_to_f32 (or memcpy), never by casting to float * and dereferencing.
 *  - st_open_memory BORROWS the buffer: it must outlive the reader and is not freed by st_close.
 *  - st_writer is opaque; st_writer_new returns one freed with st_writer_free. Tensor data passed to
 *    st_writer_add* is BORROWED (not copied) until st_writer_write / st_writer_serialize has returned, so a
 *    multi-GB export never holds two copies; names and metadata strings are copied.
 *
 * Thread safety: a reader is immutable after st_open; any number of threads may look up and convert at once.
 * Nothing here prints or exits. */
#ifndef LATHE_ENGINE_SAFETENSORS_H
#define LATHE_ENGINE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER ((uint64_t)100000000) /* reference reader's MAX_HEADER_SIZE */

typedef enum { ST_F32 = 0, ST_BF16 = 1, ST_F16 = 2 } st_dtype;

typedef struct st_tensor {
    const char *name; /* tensor name, e.g. "model.layers.0.self_attn.q_proj.weight" */
    const char *file; /* path of the file holding it (for error messages) */
    st_dtype dtype;
    int ndim;                   /* 0..ST_MAX_DIMS; 0 = scalar (numel 1) */
    int64_t shape[ST_MAX_DIMS]; /* unused dims are 0 */
    int64_t numel;              /* product of shape (1 for a scalar, 0 if any dim is 0) */
    const void *data;           /* first byte of the tensor, inside the mmap; possibly unaligned */
    size_t nbytes;              /* numel * st_dtype_size(dtype) */
} st_tensor;

typedef struct st_reader st_reader;

/* ---- dtypes and scalar conversions (exact where the math allows) ---- */

size_t st_dtype_size(st_dtype dt);      /* 4, 2, 2 */
const char *st_dtype_name(st_dtype dt); /* "F32", "BF16", "F16" */
/* Parses "F32"/"BF16"/"F16" into *dt. Returns 0, or -1 for any other string (no err: callers phrase it). */
int st_dtype_parse(const char *s, st_dtype *dt);

float st_bf16_to_f32(uint16_t h); /* exact: bits << 16 */
uint16_t st_f32_to_bf16(float f); /* round to nearest even; NaN stays NaN (quiet), inf stays inf */
float st_f16_to_f32(uint16_t h);  /* exact, including subnormals, inf and NaN */
uint16_t st_f32_to_f16(float f);  /* round to nearest even; overflow -> inf; subnormals; NaN stays NaN */

/* Converts n elements of dtype `dt` at `src` (any alignment, little-endian) into dst[n] floats. */
void st_convert_to_f32(st_dtype dt, const void *src, float *dst, size_t n);
/* Converts n floats into dtype `dt` at dst (any alignment, little-endian), rounding as above. */
void st_convert_from_f32(st_dtype dt, const float *src, void *dst, size_t n);

/* ---- reader ---- */

/* Opens a .safetensors file, or a model directory as described at the top. Returns NULL with err (400 for a
 * malformed file, 404 when no weights file exists, 500 for I/O). */
st_reader *st_open(const char *path, lt_err *err);
/* Parses a complete safetensors image held in memory (borrowed; see Ownership). `name` is used in errors. */
st_reader *st_open_memory(const void *buf, size_t len, const char *name, lt_err *err);
void st_close(st_reader *r); /* NULL is fine */

size_t st_count(const st_reader *r);                            /* number of tensors (all shards) */
const st_tensor *st_at(const st_reader *r, size_t i);           /* i < st_count, sorted by name */
const st_tensor *st_find(const st_reader *r, const char *name); /* NULL when absent (no error) */
/* Finds `name` and checks its shape: returns the tensor, or NULL with err (400) saying "FILE: tensor 'NAME'
 * is missing" or "FILE: tensor 'NAME' has shape [a, b], expected [c, d]". ndim/shape describe the
 * expectation. */
const st_tensor *st_expect(const st_reader *r, const char *name, int ndim, const int64_t *shape, lt_err *err);
/* st_expect + st_tensor_to_f32 into out[numel] (caller-owned). Returns 0 or -1 with err. */
int st_load_f32(const st_reader *r, const char *name, int ndim, const int64_t *shape, float *out,
                lt_err *err);

/* Value of a "__metadata__" key of the (first) file, or NULL. Owned by the reader. */
const char *st_metadata(const st_reader *r, const char *key);
/* Number of underlying files (1 for a single file, the shard count for an index) and the path of file i. */
size_t st_num_files(const st_reader *r);
const char *st_file_path(const st_reader *r, size_t i);
/* Sum of nbytes over all tensors. */
size_t st_total_bytes(const st_reader *r);

/* Converts a tensor to f32 into out[n] (caller-owned); n must equal t->numel (else -1 with err). BF16 and F16
 * widening is exact. */
int st_tensor_to_f32(const st_tensor *t, float *out, size_t n, lt_err *err);
/* Same, into a fresh malloc'd buffer of t->numel floats (64-byte aligned; free() it). NULL with err on OOM.
 */
float *st_tensor_to_f32_alloc(const st_tensor *t, lt_err *err);

/* ---- writer ---- */

typedef struct st_writer st_writer;

/* New empty writer; its metadata starts as {"format":"pt"} (what transformers and PEFT expect). Aborts on
 * OOM. */
st_writer *st_writer_new(void);
void st_writer_free(st_writer *w); /* NULL is fine */
/* Sets (or replaces) a __metadata__ entry. Key and value are copied. */
void st_writer_set_metadata(st_writer *w, const char *key, const char *value);
/* Adds a tensor whose bytes at `data` are already in `dtype` (little-endian, numel * size bytes; borrowed).
 * Returns 0, or -1 with err for a duplicate name, a name that is not UTF-8, "__metadata__", ndim out of
 * 0..ST_MAX_DIMS or a negative dim. */
int st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape,
                  const void *data, lt_err *err);
/* Adds a tensor from f32 values (borrowed) stored in the file as `dtype` (F32 copies, BF16/F16 round to
 * nearest even at write time). Same errors as st_writer_add. */
int st_writer_add_f32(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape,
                      const float *data, lt_err *err);
/* Writes the file atomically (temp file in the same dir + fsync + rename), mode 0644. Layout as the reference
 * writer: tensors ordered by descending element size then name, header padded with spaces to a multiple of 8,
 * so every tensor starts aligned to its element size. Returns 0 or -1 with err. The writer stays usable. */
int st_writer_write(st_writer *w, const char *path, lt_err *err);
/* Same bytes as st_writer_write into a malloc'd buffer (*out, *len; free() it). Returns 0 or -1 with err. */
int st_writer_serialize(st_writer *w, void **out, size_t *len, lt_err *err);

#endif
