/* libFuzzer target for util/manifest: the YAML reader and the three kind validators. The first byte picks the
 * kind; the rest is the manifest, placed in a small archive next to a data file and an agent prompt. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/manifest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    manifest_kind kind = (manifest_kind)(data[0] % 3);
    const char *text = (const char *)data + 1;
    size_t n = size - 1;

    manifest_yaml doc;
    manifest_loc loc;
    lt_err err;
    if (manifest_yaml_parse(text, n, "fuzz.yaml", &doc, &loc, &err) == 0) {
        (void)manifest_yaml_line(&doc, "/name");
        manifest_yaml_free(&doc);
    }

    /* items must be sorted by path: "a.jsonl" < "agents/x.md" < "<kind>.yaml" */
    archive_item v[3];
    unsigned char *copy = malloc(n + 1);
    memcpy(copy, text, n);
    copy[n] = '\0';
    v[0] = (archive_item){(char *)"a.jsonl", (unsigned char *)"{}", 2, NULL};
    v[1] = (archive_item){(char *)"agents/x.md", (unsigned char *)"---\na: 1\n---\nhi", 15, NULL};
    v[2] = (archive_item){(char *)manifest_file_name(kind), copy, n, NULL};
    archive_items items = {v, 3, 3, n + 18};
    json_t *m = NULL;
    char *prompt = NULL;
    if (kind == MANIFEST_DATASET) {
        m = manifest_dataset(&items, &loc, &err);
        if (m) manifest_dataset_check_count(&items, m, 1, &loc, &err);
    } else if (kind == MANIFEST_CAPABILITY) {
        m = manifest_capability(&items, &prompt, &loc, &err);
    } else {
        m = manifest_task(&items, &loc, &err);
    }
    json_decref(m);
    free(prompt);
    free(copy);
    return 0;
}
