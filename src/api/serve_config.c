/* serve_config.c: the settings of `lathe serve` that the server itself interprets: defaults (docs/spec.md
 * §1), the rate-limit setting "RATE:BURST", and the minimum client versions ("name=semver,...") checked
 * against `User-Agent: name/semver` (426 for an older named client).
 *
 * Versions compare numerically part by part (1.10.0 > 1.9.9); a pre-release or build suffix on the client
 * ("2.0.0-rc1", "0.3.0+abc") is ignored for the comparison, which errs on the side of letting a client in.
 * A User-Agent made of several products ("dreadnode-sdk/2.1.0 python/3.12") is checked product by product. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/http_internal.h"
#include "util/util.h"

void api_config_defaults(api_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->data_dir = "./lathe-data";
    cfg->listen = "127.0.0.1:8080";
    cfg->workers = 1;
    cfg->rate_per_s = 50;
    cfg->rate_burst = 100;
    cfg->max_active_jobs = 64;
    cfg->max_body = API_DEFAULT_MAX_BODY;
    cfg->lease_s = 60;
    cfg->threads = 8;
}

static int parse_pos_double(const char *s, double *out) {
    char *end = NULL;
    double v = strtod(s, &end);
    if (end == s || *end || v < 0 || v != v || v > 1e9) return -1;
    *out = v;
    return 0;
}

int api_parse_rate_limit(const char *s, double *rate, double *burst, lt_err *err) {
    if (!s || !*s)
        return lt_err_set(err, 400, "rate limit is empty: use RATE:BURST (e.g. 50:100) or 0 for off");
    char buf[64];
    snprintf(buf, sizeof buf, "%s", s);
    char *colon = strchr(buf, ':');
    if (colon) *colon = '\0';
    double r = 0, b = 0;
    if (parse_pos_double(buf, &r) != 0 || (colon && parse_pos_double(colon + 1, &b) != 0))
        return lt_err_set(err, 400,
                          "rate limit '%.40s' is not RATE:BURST with numbers >= 0 (e.g. 50:100; 0 = off)", s);
    if (!colon) b = 2 * r;
    if (r > 0 && b < 1)
        return lt_err_set(err, 400, "rate limit '%.40s': BURST must be at least 1 when RATE is above 0", s);
    *rate = r;
    *burst = b;
    return 0;
}

/* Parses "X.Y.Z" (missing parts are 0; a suffix after '-' or '+' is ignored) into v[3]. 0 or -1. */
static int parse_semver(const char *s, size_t n, long v[3]) {
    v[0] = v[1] = v[2] = 0;
    size_t i = 0;
    for (int part = 0; part < 3; part++) {
        if (i >= n || !isdigit((unsigned char)s[i])) return part == 0 ? -1 : 0;
        long x = 0;
        while (i < n && isdigit((unsigned char)s[i])) {
            x = x * 10 + (s[i] - '0');
            if (x > 1000000000L) return -1;
            i++;
        }
        v[part] = x;
        if (i < n && s[i] == '.')
            i++;
        else
            break;
    }
    return 0;
}

static int semver_cmp(const long a[3], const long b[3]) {
    for (int i = 0; i < 3; i++)
        if (a[i] != b[i]) return a[i] < b[i] ? -1 : 1;
    return 0;
}

int api_client_too_old(const char *min_list, const char *user_agent, char need[32], lt_err *err) {
    if (!min_list || !*min_list || !user_agent) return 0;
    char *list = lt_strdup(min_list);
    char *save = NULL;
    int result = 0;
    for (char *item = strtok_r(list, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        item = lt_strip(item);
        if (!*item) continue;
        char *eq = strchr(item, '=');
        long minv[3];
        if (!eq || eq == item || parse_semver(eq + 1, strlen(eq + 1), minv) != 0) {
            lt_err_set(err, 400, "minimum client version '%.60s' is not name=X.Y.Z (e.g. lathe-cli=0.3.0)",
                       item);
            free(list);
            return -1;
        }
        *eq = '\0';
        const char *name = item;
        size_t nlen = strlen(name);
        /* Walk the User-Agent products "name/version". */
        const char *p = user_agent;
        while (*p) {
            while (*p == ' ')
                p++;
            const char *tok = p;
            while (*p && *p != ' ')
                p++;
            size_t tlen = (size_t)(p - tok);
            if (tlen > nlen + 1 && !strncasecmp(tok, name, nlen) && tok[nlen] == '/') {
                long have[3];
                if (parse_semver(tok + nlen + 1, tlen - nlen - 1, have) == 0 && semver_cmp(have, minv) < 0) {
                    if (need) snprintf(need, 32, "%.31s", eq + 1);
                    result = 1;
                }
            }
        }
        if (result) break;
    }
    free(list);
    return result;
}
