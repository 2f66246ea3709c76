/* json.c: the jansson helpers of json.h. */
#include "util/json.h"

#include <stdlib.h>

#include "util/util.h"

json_t *lt_json_str_or_null(const char *s) {
    return s && *s ? json_string(s) : json_null();
}

json_t *lt_json_time(int64_t ms) {
    char buf[LT_TIME_LEN];
    lt_time_fmt(ms, buf);
    json_t *j = json_string(buf);
    if (!j) abort(); /* ASCII always encodes: only out of memory gets here */
    return j;
}

json_t *lt_json_time_or_null(int64_t ms) {
    return ms <= 0 ? json_null() : lt_json_time(ms);
}

const char *lt_json_type_name(const json_t *v, lt_type_words words) {
    int yaml = words == LT_WORDS_YAML;
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return yaml ? "a mapping" : "an object";
    case JSON_ARRAY:
        return "a list";
    case JSON_STRING:
        return yaml ? "text" : "a string";
    case JSON_INTEGER:
        return yaml ? "an integer" : "a number";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}
