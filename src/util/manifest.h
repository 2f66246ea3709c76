/* manifest.h: artifact manifests (dataset.yaml, capability.yaml, task.yaml): YAML to JSON with line numbers,
 * and the rules of each kind.
 *
 * The YAML reader accepts one document of mappings, sequences and scalars and yields a jansson value plus a
 * map from JSON pointer ("/splits/train", "/files/0") to the 1-based line where that key or element starts,
 * so every complaint can say "dataset.yaml line 7". It refuses aliases (no billion-laughs), duplicate keys,
 * keys that are not text (mappings, lists, empty keys, and plain numbers or booleans: quote them), unknown
 * tags, .inf/.nan, integers out of range, nesting deeper than 64 and more than 100,000 nodes. Plain scalars
 * resolve as YAML 1.2's core schema (null, true/false, ints, floats, else string); quoted scalars are
 * strings.
 *
 * The kind validators take the unpacked, root-stripped archive (util/archive.h), read the kind's manifest
 * from it, check every rule, and return the normalized manifest: the document with defaults filled in
 * (dataset: version 0.1.0, format, summary from description, `splits` resolved to split -> [paths]; task:
 * `flag_hash` renamed `hash`). They never look at data rows: counting rows is util/rows.h's job.
 *
 * Errors: lt_err code 422 with a message "FILE line N: what to change", and *loc (if not NULL) set to the
 * file and line (line 0 when the problem is not on one line, e.g. a missing manifest).
 *
 * Ownership: returned json_t values are new references (json_decref them); *prompt is malloc'd. */
#ifndef LATHE_UTIL_MANIFEST_H
#define LATHE_UTIL_MANIFEST_H

#include <jansson.h>
#include <stddef.h>

#include "util/archive.h"
#include "util/err.h"

typedef struct manifest_loc {
    char file[256]; /* path inside the archive ("dataset.yaml", "agents/a.md") */
    int line;       /* 1-based; 0 = the file as a whole */
} manifest_loc;

/* ---- YAML ---- */

typedef struct manifest_yaml {
    json_t *root;  /* the document */
    json_t *lines; /* object: JSON pointer -> integer line; "" -> line of the root */
} manifest_yaml;

/* Parses one YAML document. `file` names it in errors. 0, or -1 with err (422, also for a YAML syntax error:
 * the author must fix a line of the file either way) and loc. */
int manifest_yaml_parse(const char *buf, size_t n, const char *file, manifest_yaml *out, manifest_loc *loc,
                        lt_err *err);
void manifest_yaml_free(manifest_yaml *doc);
/* The line of the key/element at `pointer` (RFC 6901, e.g. "/splits/train"); 0 when unknown. */
int manifest_yaml_line(const manifest_yaml *doc, const char *pointer);

/* ---- semver ---- */

/* Parses "X.Y.Z" (digits, no leading zeros, no pre-release/build suffix, each part < 2^31). 0 or -1. */
int manifest_semver_parse(const char *s, long v[3]);
/* Orders two valid versions like semver does; invalid strings sort first. <0, 0, >0. */
int manifest_semver_cmp(const char *a, const char *b);

/* ---- kinds ---- */

typedef enum { MANIFEST_DATASET = 0, MANIFEST_CAPABILITY = 1, MANIFEST_TASK = 2 } manifest_kind;

/* "dataset.yaml", "capability.yaml", "task.yaml" */
const char *manifest_file_name(manifest_kind kind);

/* Artifact names: capabilities `^[a-z0-9][a-z0-9-]*$`, datasets and tasks `^[A-Za-z0-9][A-Za-z0-9._-]*$`,
 * at most 128 bytes. 1 if valid. */
int manifest_name_valid(manifest_kind kind, const char *name);

/* dataset.yaml. Returns the normalized manifest; its "splits" maps each split to a non-empty array of paths
 * that exist in the archive (explicit `splits`, else `files` as split "train", else every *.jsonl, *.json and
 * *.csv file as split "train"). `row_count` is checked later, against the parsed rows. */
json_t *manifest_dataset(const archive_items *items, manifest_loc *loc, lt_err *err);

/* Checks a dataset's optional row_count against the number of rows found (util/rows.h counts them); 422 at
 * the row_count line when they differ. manifest is manifest_dataset's result for the same items. */
int manifest_dataset_check_count(const archive_items *items, const json_t *manifest, long long rows,
                                 manifest_loc *loc, lt_err *err);

/* capability.yaml. Also resolves the prompt into *prompt: agents/<entry_agent>.md or .txt, else the first .md
 * or .txt file directly in agents/ in sorted order; YAML front matter removed, surrounding whitespace
 * trimmed;
 * "" when there are no agents. */
json_t *manifest_capability(const archive_items *items, char **prompt, manifest_loc *loc, lt_err *err);

/* task.yaml: name, version, instruction (non-empty template), optional verification
 * {method: flag, hash: "sha256:<64 hex>"} | {method: exact, expected} | {method: regex, pattern} (PCRE2). */
json_t *manifest_task(const archive_items *items, manifest_loc *loc, lt_err *err);

/* Removes a leading YAML front matter block ("---" line ... "---" or "..." line) and trims whitespace.
 * Returns a malloc'd copy. */
char *manifest_strip_front_matter(const char *text);

#endif
