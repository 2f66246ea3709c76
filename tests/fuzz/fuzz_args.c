/* libFuzzer target for the option parser (cli/client.h): lc_args_parse_with over an argv cut from the input
 * at NUL bytes, with every option kind, a shared table and each parse flag, then lc_dispatch_group of an
 * offline group over the same argv (verbs that only read their arguments). The first byte picks the flags.
 * What the dispatcher prints goes to /dev/null (the stdio streams, not fds 1 and 2, which the sanitizers
 * use). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/client.h"

static const lc_opt own[] = {
    {"s", LC_STR, "S", "string"}, {"i", LC_INT, "N", "integer"}, {"x", LC_NUM, "X", "number"},
    {"l", LC_LIST, "L", "list"},  {"f", LC_FLAG, NULL, "flag"},  {NULL, 0, NULL, NULL},
};

static const lc_opt shared[] = {
    {"data-dir", LC_STR, "DIR", "dir"},
    {"s", LC_STR, "S", "also in the verb's table"},
    {NULL, 0, NULL, NULL},
};

static int v_read(lc_client *c, const lc_args *a, const char *group) {
    (void)c;
    (void)group;
    size_t n = 0;
    const char *const *l = lc_list(a, "l", &n);
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += strlen(l[i]);
    return lc_arg(a, "s") && total ? 0 : 1;
}

static const lc_verb verbs[] = {
    {"one", v_read, own, "one [--s S]", "first", 0, 0},
    {"two", v_read, NULL, "two ARG", "second", 1, 2},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static FILE *sink;
    if (!sink) { /* glibc: stdout/stderr are assignable; fd 2 stays open for the sanitizers and libFuzzer */
        sink = fopen("/dev/null", "w");
        if (!sink) return 0;
        stdout = sink;
        stderr = sink;
    }
    if (size < 1 || size > 4096) return 0;
    int flags = data[0] & (LC_CONN | LC_NONEMPTY | LC_NO_JSON);
    char *buf = malloc(size);
    memcpy(buf, data + 1, size - 1);
    buf[size - 1] = '\0';
    char *argv[66];
    int argc = 0;
    argv[argc++] = "grp";
    for (char *p = buf; p < buf + size && argc < 65; p += strlen(p) + 1)
        argv[argc++] = p;
    argv[argc] = NULL;

    lc_args a;
    lt_err err = {0};
    if (lc_args_parse_with(&a, own, shared, flags, argc, argv, &err) == 0) {
        (void)lc_arg(&a, "i");
        (void)lc_flag(&a, "f");
    } else if (!a.bad && !err.msg[0]) {
        abort(); /* a failed parse says why */
    }
    lc_args_free(&a);

    const lc_group g = {"Fuzz.", verbs, 2, shared, "shared", flags & ~LC_CONN}; /* never a network call */
    (void)lc_dispatch_group(&g, argc, argv);
    free(buf);
    return 0;
}
