/* fuzz_http_headers.c: the parsers of request headers and settings in the HTTP core: the connection gate's
 * request-head inspector (api_gate_inspect, on the whole input and on every prefix length that a network
 * could deliver first: a prefix may only ask for more or decide, and a decision never flips to PASS once
 * bytes were refused), the minimum client version list against a User-Agent (api_client_too_old), the
 * rate-limit setting (api_parse_rate_limit), the API key shape check, and the progress-event secret
 * filter on the input as JSON (idempotent: a second pass finds nothing). Input: LIST '\0' USER_AGENT (no
 * NUL: the whole input is both). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api/http.h"
#include "api/http_internal.h"
#include "api/jobs_schema.h"
#include "store/identity.h"

static int known_status(int r) {
    return r == API_GATE_PASS || r == API_GATE_MORE || r == 400 || r == 408 || r == 413 || r == 414 ||
           r == 431 || r == 505;
}

static void fuzz_gate(const char *d, size_t n) {
    api_gate_verdict v;
    int whole = api_gate_inspect(d, n, 0, &v);
    if (!known_status(whole)) abort();
    if (whole >= 400 && (v.status != whole || !v.detail[0])) abort();
    int done = api_gate_inspect(d, n, 1, &v);
    if (!known_status(done) || done == API_GATE_MORE) abort(); /* complete input is always decided */
    if (whole != API_GATE_MORE && done != whole) abort();
    size_t step = n / 7 + 1;
    for (size_t k = 0; k < n; k += step) {
        int r = api_gate_inspect(d, k, 0, &v);
        if (!known_status(r)) abort();
        if (r >= 400 && whole == API_GATE_PASS) abort(); /* refused bytes cannot become acceptable */
    }
}

static void fuzz_redact(const char *d, size_t n) {
    json_t *j = json_loadb(d, n, JSON_DECODE_ANY, NULL);
    if (!j) return;
    js_redact_secrets(j);
    if (js_redact_secrets(j) != 0) abort();
    json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *buf = malloc(size + 2);
    if (!buf) return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';
    buf[size + 1] = '\0';
    fuzz_gate((const char *)data, size);
    fuzz_redact((const char *)data, size);
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
