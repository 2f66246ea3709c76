/* json.h: small jansson helpers every layer repeats: a string or null, a time as RFC 3339, and the words an
 * error message uses for a value's type.
 *
 * Ownership: functions returning json_t * return a new reference (NULL only where said). Out of memory aborts
 * (err.h). */
#ifndef LATHE_UTIL_JSON_H
#define LATHE_UTIL_JSON_H

#include <jansson.h>
#include <stdint.h>

/* A JSON string of s, or null when s is NULL or "". NULL when s is not valid UTF-8 (jansson's refusal). */
json_t *lt_json_str_or_null(const char *s);

/* ms since the epoch as an RFC 3339 UTC string with milliseconds (lt_time_fmt). */
json_t *lt_json_time(int64_t ms);
/* The same, or null when ms <= 0 (a time that was never set). */
json_t *lt_json_time_or_null(int64_t ms);

/* How an error message names a value's type, in the words of the format the user wrote. */
typedef enum {
    LT_WORDS_JSON, /* "an object", "a list", "a string", "a number", "a boolean", "null" */
    LT_WORDS_YAML, /* "a mapping", "a list", "text", "an integer" / "a number", "a boolean", "null" */
} lt_type_words;
const char *lt_json_type_name(const json_t *v, lt_type_words words);

#endif
