/* Unit tests for engine/losses.c: the five Tinker token losses (values by hand, d/dlp against central
 * differences in double, PPO's clipped branches on both sides, CISPO's stop-gradient, masking), the by-name
 * lookup and loss_fn_config errors, and global-norm gradient clipping with torch semantics. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/losses.h"

/* One row's inputs, as arrays of length 1. */
typedef struct {
    float w, A, q;
    eng_loss_cfg cfg;
} row_in;

static const eng_loss *loss_named(const char *name) {
    lt_err err = {0};
    const eng_loss *l = eng_loss_by_name(name, &err);
    assert_non_null(l);
    assert_string_equal(l->name, name);
    return l;
}

static void row_setup(row_in *r, const eng_loss *l, float w, float A, float q) {
    eng_loss_cfg_init(&r->cfg, l);
    r->w = w;
    r->A = A;
    r->q = q;
    r->cfg.weights = &r->w;
    r->cfg.advantages = &r->A;
    r->cfg.logprobs = &r->q;
    r->cfg.beta = 0.25f;
}

/* d loss / d lp of the double twin against central differences, and float == double. */
static void check_dlp(const eng_loss *l, row_in *r, double lp) {
    double d, dp, dm;
    double v = l->fn_f64(lp, 0, &r->cfg, &d);
    const double h = 1e-6;
    double fp = l->fn_f64(lp + h, 0, &r->cfg, &dp), fm = l->fn_f64(lp - h, 0, &r->cfg, &dm);
    double num = (fp - fm) / (2 * h);
    assert_true(fabs(num - d) <= 1e-6 * fmax(1.0, fabs(d)));
    float df;
    float vf = l->fn((float)lp, 0, &r->cfg, &df);
    assert_true(fabs(vf - v) <= 1e-5 * fmax(1.0, fabs(v)));
    assert_true(fabs(df - d) <= 1e-5 * fmax(1.0, fabs(d)));
}

static double eval(const eng_loss *l, row_in *r, double lp, double *dlp) {
    return l->fn_f64(lp, 0, &r->cfg, dlp);
}

static void test_cross_entropy(void **state) {
    const eng_loss *l = loss_named("cross_entropy");
    row_in r;
    row_setup(&r, l, -1.5f, 0, 0); /* negative weights are allowed (forward_backward_custom relies on them) */
    double d, v = eval(l, &r, -2.0, &d);
    assert_true(fabs(v - (-1.5 * 2.0)) < 1e-12 && fabs(d - 1.5) < 1e-12);
    check_dlp(l, &r, -0.3);
    r.cfg.weights = NULL; /* no weights: plain NLL */
    v = eval(l, &r, -2.0, &d);
    assert_true(fabs(v - 2.0) < 1e-12 && fabs(d + 1.0) < 1e-12);
    row_setup(&r, l, 0.0f, 0, 0);
    v = eval(l, &r, -2.0, &d);
    assert_true(v == 0 && d == 0);
}

static void test_importance_sampling(void **state) {
    const eng_loss *l = loss_named("importance_sampling");
    row_in r;
    row_setup(&r, l, 1.0f, 0.7f, -1.0f);
    double d, v = eval(l, &r, -1.2, &d);
    double ratio = exp(-1.2 + 1.0);
    assert_true(fabs(v + ratio * r.A) < 1e-12 && fabs(d + ratio * r.A) < 1e-12);
    check_dlp(l, &r, -1.2);
    r.A = -2.0f;
    check_dlp(l, &r, -0.4);
}

static void test_ppo_branches(void **state) {
    const eng_loss *l = loss_named("ppo");
    row_in r;
    double d, v;
    /* defaults: 0.8 / 1.2 */
    row_setup(&r, l, 1.0f, 2.0f, 0.0f);
    assert_true(fabsf(r.cfg.clip_low - 0.8f) < 1e-7f && fabsf(r.cfg.clip_high - 1.2f) < 1e-7f);
    /* inside the range: -rA, gradient -rA */
    double lp = log(1.1);
    v = eval(l, &r, lp, &d);
    assert_true(fabs(v + 1.1 * 2.0) < 1e-12 && fabs(d + 1.1 * 2.0) < 1e-12);
    check_dlp(l, &r, lp);
    /* A > 0, r > hi: clipped term wins, value -hi A, zero gradient */
    lp = log(1.5);
    v = eval(l, &r, lp, &d);
    assert_true(fabs(v + 1.2f * 2.0) < 1e-6 && d == 0);
    check_dlp(l, &r, lp);
    /* A > 0, r < lo: unclipped is smaller, gradient flows */
    lp = log(0.5);
    v = eval(l, &r, lp, &d);
    assert_true(fabs(v + 0.5 * 2.0) < 1e-12 && fabs(d + 0.5 * 2.0) < 1e-12);
    check_dlp(l, &r, lp);
    /* A < 0, r < lo: clipped term wins, value -lo A, zero gradient */
    r.A = -3.0f;
    lp = log(0.5);
    v = eval(l, &r, lp, &d);
    assert_true(fabs(v - 0.8f * 3.0) < 1e-6 && d == 0);
    check_dlp(l, &r, lp);
    /* A < 0, r > hi: unclipped is smaller, gradient flows */
    lp = log(1.5);
    v = eval(l, &r, lp, &d);
    assert_true(fabs(v - 1.5 * 3.0) < 1e-12 && fabs(d - 1.5 * 3.0) < 1e-12);
    check_dlp(l, &r, lp);
    /* custom thresholds through loss_fn_config */
    lt_err err = {0};
    assert_int_equal(eng_loss_cfg_set(&r.cfg, l, "clip_low_threshold", 0.9, &err), 0);
    assert_int_equal(eng_loss_cfg_set(&r.cfg, l, "clip_high_threshold", 1.05, &err), 0);
    r.A = 1.0f;
    v = eval(l, &r, log(1.1), &d);
    assert_true(fabs(v + 1.05f) < 1e-6 && d == 0);
}

static void test_cispo(void **state) {
    const eng_loss *l = loss_named("cispo");
    row_in r;
    row_setup(&r, l, 1.0f, 1.5f, -1.0f);
    assert_true(r.cfg.clip_low == 0.0f && r.cfg.clip_high == 4.0f);
    /* r inside: value -r lp A, gradient -r A (the ratio is stop-gradient, so not d(value)/dlp) */
    double lp = -0.8, ratio = exp(lp + 1.0), d;
    double v = eval(l, &r, lp, &d);
    assert_true(fabs(v + ratio * lp * 1.5) < 1e-12 && fabs(d + ratio * 1.5) < 1e-12);
    /* r above the bound: the clipped ratio 4 is used */
    lp = 1.0; /* r = e^2 > 4 */
    v = eval(l, &r, lp, &d);
    assert_true(fabs(v + 4.0 * lp * 1.5) < 1e-12 && fabs(d + 4.0 * 1.5) < 1e-12);
    float df;
    float vf = l->fn((float)lp, 0, &r.cfg, &df);
    assert_true(fabs(vf - v) < 1e-5 && fabs(df - d) < 1e-5);
}

static void test_dro(void **state) {
    const eng_loss *l = loss_named("dro");
    row_in r;
    row_setup(&r, l, 1.0f, 0.6f, -1.0f);
    double lp = -1.4, d;
    double v = eval(l, &r, lp, &d);
    double want = -(lp * r.A - 0.5 * 0.25 * (lp + 1.0) * (lp + 1.0));
    assert_true(fabs(v - want) < 1e-12);
    assert_true(fabs(d - (-r.A + 0.25 * (lp + 1.0))) < 1e-12);
    check_dlp(l, &r, lp);
    /* A = 0 does not silence dro (the beta term remains); weight 0 does */
    r.A = 0.0f;
    v = eval(l, &r, lp, &d);
    assert_true(v > 0 && d != 0);
    r.w = 0.0f;
    v = eval(l, &r, lp, &d);
    assert_true(v == 0 && d == 0);
}

static void test_masking_is_safe(void **state) {
    /* masked rows never evaluate exp: huge lp - q gives 0, not inf * 0 = NaN */
    static const char *rl[3] = {"importance_sampling", "ppo", "cispo"};
    for (int k = 0; k < 3; k++) {
        const eng_loss *l = loss_named(rl[k]);
        row_in r;
        row_setup(&r, l, 1.0f, 0.0f, -1000.0f);
        double d, v = eval(l, &r, 0.0, &d);
        assert_true(v == 0 && d == 0);
        row_setup(&r, l, 0.0f, 5.0f, -1000.0f);
        v = eval(l, &r, 0.0, &d);
        assert_true(v == 0 && d == 0);
    }
}

static void test_lookup_and_config_errors(void **state) {
    lt_err err = {0};
    const char *names[5] = {"cross_entropy", "importance_sampling", "ppo", "cispo", "dro"};
    for (int i = 0; i < 5; i++) {
        const eng_loss *l = loss_named(names[i]);
        assert_int_equal(l->kind, i);
        assert_ptr_equal(l, &eng_losses[i]);
    }
    assert_null(eng_loss_by_name("grpo", &err));
    assert_int_equal(err.code, 400);
    assert_non_null(strstr(err.msg, "\"grpo\""));
    assert_non_null(strstr(err.msg, "cross_entropy, importance_sampling, ppo, cispo, dro"));

    eng_loss_cfg cfg;
    const eng_loss *ce = loss_named("cross_entropy");
    eng_loss_cfg_init(&cfg, ce);
    assert_int_equal(eng_loss_cfg_set(&cfg, ce, "beta", 0.1, &err), -1);
    assert_non_null(strstr(err.msg, "\"beta\""));
    assert_non_null(strstr(err.msg, "cross_entropy"));
    assert_int_equal(eng_loss_cfg_check(&cfg, ce, &err), 0);

    const eng_loss *ppo = loss_named("ppo");
    eng_loss_cfg_init(&cfg, ppo);
    assert_int_equal(eng_loss_cfg_check(&cfg, ppo, &err), -1); /* no advantages / logprobs */
    assert_non_null(strstr(err.msg, "advantages"));
    float a = 1, q = 0;
    cfg.advantages = &a;
    cfg.logprobs = &q;
    assert_int_equal(eng_loss_cfg_check(&cfg, ppo, &err), 0);
    assert_int_equal(eng_loss_cfg_set(&cfg, ppo, "clip_low_threshold", 1.5, &err), 0);
    assert_int_equal(eng_loss_cfg_check(&cfg, ppo, &err), -1); /* lo > hi */
    assert_non_null(strstr(err.msg, "clip_low_threshold <= clip_high_threshold"));
    assert_int_equal(eng_loss_cfg_set(&cfg, ppo, "epsilon", 0.2, &err), -1);
    assert_non_null(strstr(err.msg, "clip_low_threshold and clip_high_threshold"));

    const eng_loss *dro = loss_named("dro");
    eng_loss_cfg_init(&cfg, dro);
    cfg.advantages = &a;
    cfg.logprobs = &q;
    assert_int_equal(eng_loss_cfg_check(&cfg, dro, &err), -1); /* beta is required */
    assert_non_null(strstr(err.msg, "beta"));
    assert_int_equal(eng_loss_cfg_set(&cfg, dro, "beta", 0.05, &err), 0);
    assert_int_equal(eng_loss_cfg_check(&cfg, dro, &err), 0);
}

static void test_clip_grad_norm(void **state) {
    float a[2] = {3.0f, 4.0f}, b[1] = {12.0f};
    float *g[2] = {a, b};
    size_t n[2] = {2, 1};
    /* max_norm above the norm: untouched */
    assert_true(fabs(eng_clip_grad_norm(g, n, 2, 100.0) - 13.0) < 1e-12);
    assert_true(a[0] == 3.0f && a[1] == 4.0f && b[0] == 12.0f);
    /* max_norm <= 0: no clipping, norm still reported */
    assert_true(fabs(eng_clip_grad_norm(g, n, 2, 0.0) - 13.0) < 1e-12);
    assert_true(b[0] == 12.0f);
    /* torch: coef = max_norm / (norm + 1e-6) */
    double norm = eng_clip_grad_norm(g, n, 2, 6.5);
    assert_true(fabs(norm - 13.0) < 1e-12);
    double coef = 6.5 / (13.0 + 1e-6);
    assert_true(fabs(a[0] - 3.0 * coef) < 1e-6 && fabs(a[1] - 4.0 * coef) < 1e-6 &&
                fabs(b[0] - 12.0 * coef) < 1e-6);
    assert_true(fabs(eng_clip_grad_norm(g, n, 2, 0.0) - 6.5) < 1e-5);

    /* a large tensor takes the parallel path and gives the serial sum */
    const size_t big = 300001;
    float *x = malloc(big * sizeof(float));
    assert_non_null(x);
    double want = 0;
    for (size_t i = 0; i < big; i++) {
        x[i] = (float)((double)(i % 97) / 97.0 - 0.5);
        want += (double)x[i] * x[i];
    }
    float *gx[1] = {x};
    size_t nx[1] = {big};
    assert_true(fabs(eng_clip_grad_norm(gx, nx, 1, 1.0) - sqrt(want)) < 1e-9 * sqrt(want));
    assert_true(fabs(eng_clip_grad_norm(gx, nx, 1, 0.0) - 1.0) < 1e-5);
    free(x);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cross_entropy),
        cmocka_unit_test(test_importance_sampling),
        cmocka_unit_test(test_ppo_branches),
        cmocka_unit_test(test_cispo),
        cmocka_unit_test(test_dro),
        cmocka_unit_test(test_masking_is_safe),
        cmocka_unit_test(test_lookup_and_config_errors),
        cmocka_unit_test(test_clip_grad_norm),
    };
    return cmocka_run_group_tests_name("losses", tests, NULL, NULL);
}
