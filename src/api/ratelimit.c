/* ratelimit.c: a token bucket per API key (docs/spec.md §2: default 50 requests/s, burst 100).
 *
 * Each key has a bucket holding up to `burst` tokens that refills at `rate` tokens per second; a request
 * takes one token or is refused with the time until the next token (Retry-After, whole seconds, at least
 * 1). Buckets live in a chained hash table under one mutex: the work per request is a hash and a few
 * arithmetic operations, far below the cost of the request itself. Buckets idle long enough to be full
 * again carry no information, so they are dropped when the table grows, which bounds memory by the number
 * of keys active within one refill period. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "api/http_internal.h"
#include "util/util.h"

#define RL_BUCKETS 256

typedef struct rl_entry {
    char *key;
    double tokens, last;
    struct rl_entry *next;
} rl_entry;

struct api_ratelimit {
    double rate, burst;
    pthread_mutex_t mu;
    rl_entry *table[RL_BUCKETS];
    size_t count;
};

api_ratelimit *api_ratelimit_new(double rate_per_s, double burst) {
    api_ratelimit *rl = calloc(1, sizeof *rl);
    if (!rl) abort();
    rl->rate = rate_per_s > 0 ? rate_per_s : 0;
    rl->burst = burst >= 1 ? burst : 1;
    pthread_mutex_init(&rl->mu, NULL);
    return rl;
}

void api_ratelimit_free(api_ratelimit *rl) {
    if (!rl) return;
    for (int i = 0; i < RL_BUCKETS; i++) {
        for (rl_entry *e = rl->table[i], *n; e; e = n) {
            n = e->next;
            free(e->key);
            free(e);
        }
    }
    pthread_mutex_destroy(&rl->mu);
    free(rl);
}

static unsigned hash(const char *s) {
    unsigned h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

/* Drops buckets that would be full by now (caller holds the lock). */
static void sweep(api_ratelimit *rl, double now) {
    double full_after = rl->burst / rl->rate;
    for (int i = 0; i < RL_BUCKETS; i++) {
        rl_entry **pp = &rl->table[i];
        while (*pp) {
            rl_entry *e = *pp;
            if (now - e->last >= full_after) {
                *pp = e->next;
                free(e->key);
                free(e);
                rl->count--;
            } else {
                pp = &e->next;
            }
        }
    }
}

int api_ratelimit_take(api_ratelimit *rl, const char *key, double now_s, int *retry_after_s) {
    if (!rl || rl->rate <= 0) return 1;
    pthread_mutex_lock(&rl->mu);
    unsigned b = hash(key) % RL_BUCKETS;
    rl_entry *e = rl->table[b];
    while (e && strcmp(e->key, key) != 0)
        e = e->next;
    if (!e) {
        if (rl->count >= 4096) sweep(rl, now_s);
        e = calloc(1, sizeof *e);
        if (!e) abort();
        e->key = lt_strdup(key);
        e->tokens = rl->burst;
        e->last = now_s;
        e->next = rl->table[b];
        rl->table[b] = e;
        rl->count++;
    }
    double elapsed = now_s - e->last;
    if (elapsed > 0) {
        e->tokens = fmin(rl->burst, e->tokens + elapsed * rl->rate);
        e->last = now_s;
    }
    int ok = e->tokens >= 1.0;
    if (ok) {
        e->tokens -= 1.0;
    } else if (retry_after_s) {
        double wait = (1.0 - e->tokens) / rl->rate;
        int s = (int)ceil(wait);
        *retry_after_s = s < 1 ? 1 : s;
    }
    pthread_mutex_unlock(&rl->mu);
    return ok;
}
