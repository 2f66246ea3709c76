/* fuzz_http_headers.c: the parsers of request headers and settings in the HTTP core: the minimum client
 * version list against a User-Agent (api_client_too_old), the rate-limit setting (api_parse_rate_limit),
 * and the API key shape check. Input: LIST '\0' USER_AGENT (no NUL: the whole input is both). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api/http.h"
#include "store/store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *buf = malloc(size + 2);
    if (!buf) return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';
    buf[size + 1] = '\0';
    const char *list = buf;
    const char *nul = memchr(buf, '\0', size);
    const char *ua = nul ? nul + 1 : buf;
    char need[32];
    lt_err err = {0};
    int r = api_client_too_old(list, ua, need, &err);
    if (r == 1 && strlen(need) >= sizeof need) abort();
    if (r < 0 && err.code != 400) abort();
    double rate = -1, burst = -1;
    if (api_parse_rate_limit(list, &rate, &burst, &err) == 0 && (rate < 0 || burst < 0)) abort();
    (void)store_apikey_shape_ok(ua);
    (void)store_slug_valid(ua);
    free(buf);
    return 0;
}
