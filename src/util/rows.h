/* rows.h: dataset rows: parsing files (JSONL, JSON, CSV), telling their shape, and turning them into the
 * normalized conversations and RL prompts the trainers use (docs/spec.md §5).
 *
 * Parsing. rows_parse reads one file and calls back once per row with a JSON object and the 1-based line
 * where the row starts: JSONL (one object per non-blank line), JSON (a top-level array of objects; the line
 * of each element), CSV (a header row, then records; quoted fields with "" escapes and embedded newlines; the
 * line where the record starts). CSV cells are text, except that empty cells are left out, `reward` becomes a
 * number when it reads as one, `success` becomes a boolean for true/false, and the columns `messages`,
 * `steps`, `context`, `template_context`, `extra` and `tool_calls` are decoded when they hold a JSON list or
 * object. A leading UTF-8 BOM and CRLF line ends are accepted; invalid UTF-8 is an error with its line.
 *
 * Shapes (rows_classify), tried in this order:
 *   chat         {"messages": [{"role", "content"}, ...]}; role defaults to user; empty messages are dropped
 *   tools        the same, where some message has `tool_calls` or `tool_call_id`
 *   trajectory   {"steps": [{step_id, source: user|agent|system, message, reasoning_content?, tool_calls?,
 *                observation?}], success?, extra?} (Worlds / ATIF)
 *   prompt       the first non-empty of prompt, input, question, task_prompt; answer (optional) the first
 *                non-empty of expected_output, target, answer, output
 * RL extras on any shape: `reward` (number), `context` or `template_context` (object).
 *
 * Normalized messages are JSON objects {"role": system|user|assistant|tool, "content": text} plus, on
 * assistant messages, "tool_calls": [{"id", "type": "function", "function": {"name", "arguments"}}]
 * (arguments an object when it is or parses as one, else the text as given) and, on tool messages,
 * "tool_call_id".
 *
 * Errors: lt_err code 422 with a message "split S, file F line N: what is wrong" (the split part only when
 * one was named), and *loc (may be NULL) with split, file and line, so an upload can answer loc ["archive",
 * F, N].
 *
 * Ownership: json_t results are new references (json_decref); rows passed to a rows_fn are borrowed (incref
 * to keep). rows_set owns everything in it; rows_set_free releases it. char * results are malloc'd. */
#ifndef LATHE_UTIL_ROWS_H
#define LATHE_UTIL_ROWS_H

#include <jansson.h>
#include <stddef.h>

#include "util/archive.h"
#include "util/err.h"

typedef enum { ROWS_JSONL = 0, ROWS_JSON = 1, ROWS_CSV = 2 } rows_format;

typedef enum {
    ROW_SHAPE_NONE = 0,
    ROW_SHAPE_CHAT = 1,
    ROW_SHAPE_TOOLS = 2,
    ROW_SHAPE_TRAJECTORY = 3,
    ROW_SHAPE_PROMPT = 4,
} row_shape;

/* The text every "fits no shape" error ends with. */
#define ROWS_ACCEPTED_SHAPES                                                                                 \
    "accepted shapes: chat {\"messages\": [{\"role\": ..., \"content\": ...}]}, tool-calling messages "      \
    "(with "                                                                                                 \
    "tool_calls / tool_call_id), prompt/answer {\"prompt\"|\"input\"|\"question\"|\"task_prompt\": ..., "    \
    "\"expected_output\"|\"target\"|\"answer\"|\"output\": ...}, trajectory {\"steps\": [{\"source\", "      \
    "\"message\", ...}]}"

typedef struct rows_loc {
    char split[72]; /* "" when no split was named */
    char file[256];
    long line; /* 1-based; 0 = the file as a whole */
} rows_loc;

/* ---- formats ---- */

/* "jsonl" | "json" | "csv" -> 0 and *out; -1 otherwise. */
int rows_format_parse(const char *s, rows_format *out);
/* By extension (.jsonl, .json, .csv), else dflt. */
rows_format rows_format_for_path(const char *path, rows_format dflt);

/* ---- parsing ---- */

/* Called once per row: row is borrowed, line is where it starts. Return 0 to go on, non-zero to stop (set err
 * first: rows_parse then fills loc with this row's line and prefixes err with "split S, file F line N: "). */
typedef int (*rows_fn)(const json_t *row, long line, void *ud, lt_err *err);

/* Parses one file. split may be NULL. Returns 0, or -1 with err (422) and loc. */
int rows_parse(const char *data, size_t n, rows_format fmt, const char *split, const char *file, rows_fn fn,
               void *ud, rows_loc *loc, lt_err *err);

/* Parses a file and checks that every row has a shape (rows_classify); *count receives the number of rows. */
int rows_check_file(const char *data, size_t n, rows_format fmt, const char *split, const char *file,
                    size_t *count, rows_loc *loc, lt_err *err);

/* ---- streaming: bounded memory ----
 *
 * The same readers over a stream of bytes: memory use is one buffered window plus one row (a JSONL line, a
 * JSON array element, a CSV record), never the whole file. A row over max_row_bytes stops the read with 413
 * "file F line N: the line is longer than the limit of B bytes" (row / CSV record for the other formats);
 * a CSV record with more than max_columns fields is a 422 naming the limit. rows_parse (memory) applies no
 * limit. Header width costs linear time (duplicate names are found with a hash set). */

#define ROWS_DEFAULT_MAX_ROW_BYTES ((size_t)2 << 20) /* 2 MiB */
#define ROWS_DEFAULT_MAX_COLUMNS ((size_t)10000)

typedef struct rows_limits {
    size_t max_row_bytes;
    size_t max_columns;
} rows_limits;

rows_limits rows_limits_default(void);

/* Reads up to n bytes into buf: the count, 0 at the end, -1 with err set (its code and message are kept;
 * the parser adds only loc). */
typedef long (*rows_read_fn)(void *ud, char *buf, size_t n, lt_err *err);

/* lim NULL = rows_limits_default(). */
int rows_parse_stream(rows_read_fn rd, void *rd_ud, rows_format fmt, const rows_limits *lim,
                      const char *split, const char *file, rows_fn fn, void *ud, rows_loc *loc, lt_err *err);
int rows_check_stream(rows_read_fn rd, void *rd_ud, rows_format fmt, const rows_limits *lim,
                      const char *split, const char *file, size_t *count, rows_loc *loc, lt_err *err);

/* The rows of a dataset archive, in memory. */
typedef struct rows_set {
    json_t *rows;  /* array of row objects */
    long *lines;   /* lines[i]: line of row i in its file */
    size_t *file;  /* file[i]: index into files */
    char **files;  /* the files read, in order */
    char **splits; /* splits[k]: the split files[k] belongs to */
    size_t n, cap, nfiles;
} rows_set;

/* Loads the rows of one split of an unpacked, root-stripped dataset archive whose normalized manifest (from
 * manifest_dataset) is given; split NULL = every split in manifest order. Files are parsed by extension, else
 * by the manifest's format. 422 when the split does not exist. out must be zeroed on entry. */
int rows_load(const archive_items *items, const json_t *manifest, const char *split, rows_set *out,
              rows_loc *loc, lt_err *err);
void rows_set_free(rows_set *s);

/* Which split a job reads (docs/spec.md §3.1): the first of prefs (NULL-terminated) that the manifest has,
 * else NULL (meaning all rows, for rows_load). Training and prompt data: {"train", NULL} (or RL's
 * prompt_split); eval data:
 * {"validation", "test", NULL}. The result points into prefs.
 *
 * A worker reads a dataset version like this: blob_read(version.blob_digest) -> archive_unpack_mem ->
 * archive_items_root(items, "dataset.yaml") -> rows_load(items, version.manifest, rows_pick_split(...)). */
const char *rows_pick_split(const json_t *manifest, const char *const *prefs);

/* ---- shapes and conversion ---- */

/* The row's shape, or ROW_SHAPE_NONE with err saying why (a bad field, or "fits no accepted shape: ..."). The
 * message has no location prefix. */
row_shape rows_classify(const json_t *row, lt_err *err);
const char *rows_shape_name(row_shape shape); /* "chat", "tools", "trajectory", "prompt", "none" */

/* The row as a normalized conversation (SFT): a JSON array of messages. Prompt rows become user (+ assistant
 * when there is an answer); trajectories become system/user/assistant/tool messages (agent reasoning as
 * "<think>\nR\n</think>\n\n" before the message). With a non-empty capability_prompt P the first message,
 * when it is a system message, gets content P + "\n\n" + old; otherwise {"role":"system","content":P} is put
 * first. NULL with err (no location prefix) when the row fits no shape. */
json_t *rows_conversation(const json_t *row, const char *capability_prompt, lt_err *err);

/* Applies the capability-prompt rule above to a message array in place. P NULL or "" does nothing. */
void rows_inject_system(json_t *messages, const char *prompt);

/* Fills `{{key}}` (spaces inside the braces allowed) from context (an object of text/number/bool/null;
 * NULL = none). Returns the malloc'd result, or NULL when a `{{` is left unfilled. */
char *rows_render_template(const char *tmpl, const json_t *context);

/* The row as RL prompts: a JSON array of {"messages": [...], "expected": text|null, "reward": number|null,
 * "context": object|null}. One item per row, except trajectories: one per agent step (messages = the
 * conversation before it, expected = the step's action linearized as "<think>R</think>" + message +
 * "<tool_call name=\"f\">ARGS</tool_call>" per call, reward = 1.0/0.0 from `success`, 1.0 without it). Chat
 * rows ending in an assistant message use it as expected; other rows take expected from the answer fields.
 * The system prompt is the capability prompt and the task instruction (rendered with the row's context;
 * dropped when a `{{` stays unfilled) joined by a blank line, injected as in rows_conversation. */
json_t *rows_rl_items(const json_t *row, const char *capability_prompt, const char *instruction, lt_err *err);

#endif
