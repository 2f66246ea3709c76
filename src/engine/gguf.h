/* gguf.h: reading and writing GGUF files (llama.cpp's model format), versions 2 and 3.
 *
 * Format (ggml's docs/gguf.md): little-endian
 *   magic "GGUF" (u32 0x46554747), version u32 (2 or 3), tensor_count u64, kv_count u64,
 *   kv_count x { key: string, value_type u32, value }      string = u64 length + bytes (no NUL)
 *   tensor_count x { name: string, n_dims u32 (1..4), ne[n_dims] u64, type u32, offset u64 }
 *   padding to `general.alignment` (u32 key, default 32), then the data section; each tensor's offset is
 *   relative to the data section's start and a multiple of the alignment.
 * ne[0] is the fastest-varying dimension: a [rows, cols] row-major matrix (HF's [out, in]) has ne = {cols,
 * rows}. Quantized types store ne[0] / block_size blocks per row (ne[0] must be a multiple of the block
 * size).
 *
 * Validation (every error is 400 naming the file and, where there is one, the key or tensor): bad magic,
 * version other than 2/3, counts or string lengths that run past the end of the file, an unknown value type
 * or tensor type, an array nested in an array, n_dims outside 1..4, a zero or overflowing dimension, a row
 * length that is not a multiple of the type's block size, an offset that is not a multiple of the alignment,
 * a tensor that runs past the end of the file, two tensors that overlap, duplicate tensor names or keys,
 * a non power-of-two alignment. Nothing here prints or exits.
 *
 * Ownership: gguf_open / gguf_open_memory return a reader freed with gguf_close. Every pointer a reader
 * returns (keys, string values, tensor names, tensor data) points into the mapping or the reader and stays
 * valid until gguf_close; strings inside the file are NOT NUL-terminated (a length comes with each), except
 * gguf_kv.key and gguf_tensor.name, which the reader copies and terminates. gguf_open mmaps the file
 * read-only (MAP_PRIVATE); gguf_open_memory BORROWS the buffer, which must outlive the reader. A reader is
 * immutable: any number of threads may read it at once. A writer (gguf_writer_new) BORROWS tensor data
 * until gguf_writer_write returns; keys and metadata values are copied. */
#ifndef LATHE_ENGINE_GGUF_H
#define LATHE_ENGINE_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

/* Tensor types, numbered as ggml's enum ggml_type. Only these are accepted by the reader. */
typedef enum {
    GGUF_F32 = 0,
    GGUF_F16 = 1,
    GGUF_Q4_0 = 2,
    GGUF_Q4_1 = 3,
    GGUF_Q5_0 = 6,
    GGUF_Q5_1 = 7,
    GGUF_Q8_0 = 8,
    GGUF_Q4_K = 12,
    GGUF_Q5_K = 13,
    GGUF_Q6_K = 14,
    GGUF_BF16 = 30,
} gguf_type;

/* Metadata value types, numbered as in the file. */
typedef enum {
    GGUF_V_U8 = 0,
    GGUF_V_I8 = 1,
    GGUF_V_U16 = 2,
    GGUF_V_I16 = 3,
    GGUF_V_U32 = 4,
    GGUF_V_I32 = 5,
    GGUF_V_F32 = 6,
    GGUF_V_BOOL = 7,
    GGUF_V_STR = 8,
    GGUF_V_ARR = 9,
    GGUF_V_U64 = 10,
    GGUF_V_I64 = 11,
    GGUF_V_F64 = 12,
} gguf_vtype;

/* "F32", "Q4_K", ...; NULL for a number that is not a gguf_type above. */
const char *gguf_type_name(int type);
/* Elements per block (1 for F32/F16/BF16, 32 for Q4_0..Q8_0, 256 for the k-quants) and bytes per block;
 * both 0 for an unknown type. */
int gguf_block_elems(int type);
size_t gguf_block_bytes(int type);
/* Bytes of n elements of `type` (n a multiple of the block size); 0 for an unknown type. */
size_t gguf_row_bytes(int type, int64_t n);

typedef struct gguf_kv {
    const char *key;     /* NUL-terminated copy */
    gguf_vtype type;     /* GGUF_V_ARR for arrays */
    gguf_vtype arr_type; /* element type when type == GGUF_V_ARR */
    uint64_t n;          /* array length (1 for a scalar) */
    const void *data;    /* scalar value / first array element / first string's bytes, inside the file */
    size_t len;          /* GGUF_V_STR scalar: byte length of the string */
} gguf_kv;

typedef struct gguf_tensor {
    const char *name; /* NUL-terminated copy */
    gguf_type type;
    int ndim;         /* 1..4 */
    int64_t ne[4];    /* ne[0] fastest; unused dims are 1 */
    int64_t numel;    /* product of ne */
    uint64_t offset;  /* relative to the data section */
    const void *data; /* inside the mapping, aligned to the file's alignment relative to the data start */
    size_t nbytes;    /* gguf_row_bytes(type, ne[0]) * (numel / ne[0]) */
} gguf_tensor;

typedef struct gguf_file gguf_file;

/* Opens and validates a GGUF file. NULL with err (400 malformed, 404 missing, 500 I/O). */
gguf_file *gguf_open(const char *path, lt_err *err);
/* The same over a complete file image held in memory (borrowed). `name` is used in error messages. */
gguf_file *gguf_open_memory(const void *buf, size_t len, const char *name, lt_err *err);
void gguf_close(gguf_file *f); /* NULL is fine */

int gguf_version(const gguf_file *f);
const char *gguf_path(const gguf_file *f); /* the path or name given to open */
size_t gguf_alignment(const gguf_file *f);

/* ---- metadata ---- */
size_t gguf_kv_count(const gguf_file *f);
const gguf_kv *gguf_kv_at(const gguf_file *f, size_t i);          /* file order */
const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key); /* NULL when absent */
/* Typed look-ups: 0 when the key is present and convertible (any integer type into int64 / uint64 when in
 * range, F32/F64 and integers into double, BOOL into int, STR into a pointer + length), 1 when the key is
 * absent (outputs untouched), -1 with err (400 naming the key) for a present key of another type. */
int gguf_get_int(const gguf_file *f, const char *key, int64_t *out, lt_err *err);
int gguf_get_float(const gguf_file *f, const char *key, double *out, lt_err *err);
int gguf_get_bool(const gguf_file *f, const char *key, int *out, lt_err *err);
int gguf_get_str(const gguf_file *f, const char *key, const char **s, size_t *len, lt_err *err);
/* Element i (< kv->n) of an array: strings (pointer into the file + length; O(1), the reader indexes string
 * arrays at open), integers (any integer element type) and floats. -1 for a wrong type or index. */
int gguf_arr_str(const gguf_kv *kv, uint64_t i, const char **s, size_t *len);
int gguf_arr_int(const gguf_kv *kv, uint64_t i, int64_t *out);
int gguf_arr_float(const gguf_kv *kv, uint64_t i, double *out);

/* ---- tensors ---- */
size_t gguf_tensor_count(const gguf_file *f);
const gguf_tensor *gguf_tensor_at(const gguf_file *f, size_t i);           /* file order */
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name); /* NULL when absent */

/* Dequantizes n elements (a multiple of the type's block size) of `type` at src into dst, exactly as ggml's
 * dequantize_row_* functions do (F16/BF16 widening is exact). Returns 0, or -1 for an unknown type or a bad
 * n. Threaded by the caller: rows are independent. */
int gguf_dequantize(int type, const void *src, float *dst, int64_t n);
/* Whole tensor to f32 into out[n] (n == numel). 0, or -1 with err. */
int gguf_tensor_to_f32(const gguf_tensor *t, float *out, size_t n, lt_err *err);

/* Quantizes n floats (a multiple of the block size) into `type` at dst, as ggml's quantize_row_*_ref does.
 * Supported: F32, F16, BF16 (round to nearest even) and Q8_0. Returns 0, or -1 for another type or bad n. */
int gguf_quantize(int type, const float *src, void *dst, int64_t n);

/* ---- writer ---- */
typedef struct gguf_writer gguf_writer;

gguf_writer *gguf_writer_new(void); /* version 3, alignment 32; aborts on OOM */
void gguf_writer_free(gguf_writer *w);
/* Metadata, in the order added (a key added twice replaces the first value). */
void gguf_writer_set_str(gguf_writer *w, const char *key, const char *value);
void gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t value);
void gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t value);
void gguf_writer_set_f32(gguf_writer *w, const char *key, float value);
void gguf_writer_set_bool(gguf_writer *w, const char *key, int value);
/* Arrays (values copied). */
void gguf_writer_set_arr_str(gguf_writer *w, const char *key, const char *const *values, const size_t *lens,
                             size_t n);
void gguf_writer_set_arr_i32(gguf_writer *w, const char *key, const int32_t *values, size_t n);
void gguf_writer_set_arr_f32(gguf_writer *w, const char *key, const float *values, size_t n);
/* Adds a tensor whose bytes are already in `type` (gguf_row_bytes(type, ne[0]) per row; borrowed). Returns 0,
 * or -1 with err for a duplicate name, ndim outside 1..4, a bad dimension or an unknown type. */
int gguf_writer_add_tensor(gguf_writer *w, const char *name, gguf_type type, int ndim, const int64_t *ne,
                           const void *data, lt_err *err);
/* Writes the file atomically (temp file in the same directory + fsync + rename, mode 0644). 0 or -1 with
 * err. */
int gguf_writer_write(gguf_writer *w, const char *path, lt_err *err);
/* The same bytes into a malloc'd buffer (*out, *len; free() it). */
int gguf_writer_serialize(gguf_writer *w, void **out, size_t *len, lt_err *err);

#endif
