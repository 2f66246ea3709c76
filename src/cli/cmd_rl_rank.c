/* cmd_rl_rank.c: `lathe rl-rank`, one rank of a distributed Ray GRPO job, and its transport check.
 *
 *   lathe rl-rank DIR      run by mpirun (dist_launch, src/train/dist.c), never by hand: one rank of the job
 *                          described in DIR/job.json, run by the entry of rank_modes its "mode" names
 *   lathe rl-rank --check [--ranks N] [--hostfile F] [--dir D] [--chunk BYTES] [--crash-rank R]
 *                         [--refuse-event N] [--refuse-checkpoint] [--ignore-stop]
 *                          checks an MPI setup the way a job uses it: launches N ranks (default 3) through
 *                          dist_launch, bcasts a float buffer, sends from every rank to rank 0,
 * relays events and a checkpoint to this process, and stops the ranks through the stop file. Prints one JSON
 * line per relayed event/checkpoint and a final {"result": ...}. Exit 0 when everything arrived intact.
 *
 * Options are parsed by rank_opts (client.h's lc_args: unknown options, missing, empty or malformed values
 * are a usage error, exit 2, and so is a check option without --check); usage() is the --help text. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "train/dist.h"
#include "train/dist_check.h"
#include "train/rl.h"
#include "util/util.h"

static void usage(FILE *f) {
    fprintf(f, "usage: lathe rl-rank DIR    (started by mpirun for a distributed GRPO job)\n"
               "       lathe rl-rank --check [--ranks N] [--hostfile F] [--dir D] [--chunk BYTES] "
               "[--crash-rank R]\n"
               "                     [--refuse-event N] [--refuse-checkpoint] [--ignore-stop]\n"
               "  --check        test the MPI setup: N ranks (default 3) exchange data and relay events\n"
               "  --hostfile F   an OpenMPI hostfile (same as LATHE_MPI_HOSTFILE)\n"
               "  --dir D        working directory (default: a new one under $TMPDIR); on several hosts it\n"
               "                 must be on a file system every host sees at the same path\n"
               "  --chunk BYTES  transport chunk size (default 1 GiB), to exercise chunked messages\n"
               "  --crash-rank R make rank R abort, to see how a crashed rank is reported\n"
               "  --refuse-event N, --refuse-checkpoint\n"
               "                 make this side refuse an event or the checkpoint (as a lost lease would)\n"
               "  --ignore-stop  rank 0 ignores the stop request (see LATHE_DIST_STOP_GRACE_S)\n"
               "environment: LATHE_MPIRUN, LATHE_MPI_HOSTFILE, LATHE_MPI_ARGS, LATHE_RANK_EXE "
               "(docs/distributed.md)\n");
}

typedef struct check_ud {
    int events, checkpoints, waiting;
    int ckpt_bad;
    int refuse_event;      /* --refuse-event N: the Nth progress event fails (as a lost lease would) */
    int refuse_checkpoint; /* --refuse-checkpoint: publishing the checkpoint fails */
} check_ud;

static void print_line(const char *key, json_t *v) {
    json_t *o = json_object();
    json_object_set_new(o, key, v);
    char *s = json_dumps(o, JSON_COMPACT);
    if (s) printf("%s\n", s);
    fflush(stdout);
    free(s);
    json_decref(o);
}

static int check_event(void *ud, const json_t *ev, lt_err *err) {
    check_ud *c = ud;
    if (json_object_get(ev, "event_type"))
        c->events++;
    else if (json_is_true(json_object_get(json_object_get(ev, "data"), "waiting_for_stop")))
        c->waiting = 1;
    print_line("event", json_deep_copy(ev));
    if (c->refuse_event && c->events == c->refuse_event)
        return lt_err_set(err, 409, "rl-rank --check: event %d refused (--refuse-event)", c->events);
    return 0;
}

static int check_checkpoint(void *ud, const char *name, long step, const char *dir, lt_err *err) {
    check_ud *c = ud;
    c->checkpoints++;
    if (c->refuse_checkpoint)
        return lt_err_set(err, 409, "rl-rank --check: checkpoint %s refused (--refuse-checkpoint)", name);
    char *f = lt_path_join(dir, "check.json");
    struct stat st;
    int ok = stat(f, &st) == 0;
    free(f);
    print_line("checkpoint", json_pack("{s:s, s:I, s:s, s:b}", "name", name, "step", (json_int_t)step, "dir",
                                       dir, "visible", ok));
    if (!ok) {
        c->ckpt_bad = 1;
        return lt_err_set(err, 500,
                          "checkpoint %s written by rank 0 is not visible here: rank 0's host must share the "
                          "work directory with this one (docs/distributed.md)",
                          dir);
    }
    return 0;
}

static int check_stop(void *ud) {
    return ((check_ud *)ud)->waiting;
}

static const lc_opt rank_opts[] = {
    {"check", LC_FLAG, NULL, "test the MPI setup: N ranks exchange data and relay events"},
    {"ranks", LC_INT, "N", "ranks of the check (default 3)"},
    {"hostfile", LC_STR, "F", "an OpenMPI hostfile (same as LATHE_MPI_HOSTFILE)"},
    {"dir", LC_STR, "D", "working directory (default: a new one under $TMPDIR)"},
    {"chunk", LC_INT, "BYTES", "transport chunk size (default 1 GiB)"},
    {"crash-rank", LC_INT, "R", "make rank R abort"},
    {"refuse-event", LC_INT, "N", "refuse the Nth event"},
    {"refuse-checkpoint", LC_FLAG, NULL, "refuse the checkpoint"},
    {"ignore-stop", LC_FLAG, NULL, "rank 0 ignores the stop request"},
    {NULL, 0, NULL, NULL},
};

/* The value of an LC_INT option (already checked to be an integer) in [lo, hi]; -1 with a message if not. */
static int int_opt(const lc_args *a, const char *name, long long lo, long long hi, long long *out) {
    const char *v = lc_arg(a, name);
    if (!v) return 0;
    long long x = strtoll(v, NULL, 10);
    if (x < lo || x > hi) {
        fprintf(stderr, "lathe rl-rank: --%s must be in %lld..%lld, got %s\n", name, lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

/* The --check options into the check's settings; -1 (message printed) on a bad value. */
static int check_settings(const lc_args *a, int *ranks, check_ud *c, json_t *opts) {
    long long r = 3, chunk = 0, crash = -1, refuse = 0;
    if (int_opt(a, "ranks", 2, 4096, &r) || int_opt(a, "chunk", 1, (long long)1 << 40, &chunk) ||
        int_opt(a, "crash-rank", 0, 4095, &crash) || int_opt(a, "refuse-event", 1, 1 << 30, &refuse))
        return -1;
    *ranks = (int)r;
    c->refuse_event = (int)refuse;
    c->refuse_checkpoint = lc_flag(a, "refuse-checkpoint");
    if (lc_arg(a, "hostfile")) setenv("LATHE_MPI_HOSTFILE", lc_arg(a, "hostfile"), 1);
    if (lc_arg(a, "chunk")) json_object_set_new(opts, "chunk", json_integer(chunk));
    if (lc_arg(a, "crash-rank")) json_object_set_new(opts, "crash_rank", json_integer(crash));
    if (lc_flag(a, "ignore-stop")) json_object_set_new(opts, "ignore_stop", json_true());
    return 0;
}

static int run_check(const lc_args *a) {
    int ranks = 3;
    const char *dir = lc_arg(a, "dir");
    check_ud c = {0};
    json_t *opts = json_object();
    if (check_settings(a, &ranks, &c, opts)) {
        json_decref(opts);
        return EXIT_USAGE;
    }
    char tmpl[4096] = "";
    if (!dir) {
        const char *t = getenv("TMPDIR");
        snprintf(tmpl, sizeof tmpl, "%s/lathe-mpi-check-XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(tmpl)) {
            perror("lathe rl-rank: mkdtemp");
            json_decref(opts);
            return EXIT_FAIL;
        }
        dir = tmpl;
    } else {
        lt_err e;
        if (lt_mkdir_p(dir, 0755, &e) != 0) {
            fprintf(stderr, "lathe rl-rank: %s\n", e.msg);
            json_decref(opts);
            return EXIT_FAIL;
        }
    }
    tr_hooks h = {.ud = &c, .event = check_event, .checkpoint = check_checkpoint, .stop = check_stop};
    lt_err err;
    lt_err_clear(&err);
    json_t *final = NULL;
    int rc = dist_check_opts(dir, &h, ranks, opts, &final, &err);
    json_decref(opts);
    long messages = (long)json_integer_value(json_object_get(final, "check/messages"));
    int ok = rc == TR_STOPPED && c.events == 3 && c.checkpoints == 1 && !c.ckpt_bad && messages == ranks - 1;
    json_t *res = json_pack("{s:b, s:s, s:i, s:i, s:i, s:s}", "ok", ok, "status",
                            rc == TR_DONE      ? "done"
                            : rc == TR_STOPPED ? "stopped"
                                               : "failed",
                            "ranks", ranks, "events", c.events, "checkpoints", c.checkpoints, "dir", dir);
    if (final) json_object_set(res, "metrics", final);
    if (rc == TR_FAILED) json_object_set_new(res, "error", json_string(err.msg));
    print_line("result", res);
    json_decref(final);
    if (rc == TR_FAILED) fprintf(stderr, "lathe rl-rank --check: %s\n", err.msg);
    if (ok && tmpl[0]) lt_rm_rf(tmpl);
    return ok ? EXIT_OK : EXIT_FAIL;
}

/* What a rank runs for each job.json "mode" (dist.h). */
static const dist_rank_mode rank_modes[] = {
    {"rl", tr_rl_rank_job},
    {"check", dist_selftest},
    {NULL, NULL},
};

int cmd_rl_rank(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    lc_args a;
    lt_err err = {0};
    int rc = EXIT_USAGE;
    if (lc_args_parse(&a, rank_opts, LC_NO_JSON | LC_NONEMPTY, argc, argv, &err)) {
        fprintf(stderr, "lathe rl-rank: %s\n(see lathe rl-rank --help)\n", err.msg);
    } else if (lc_flag(&a, "help")) {
        usage(stdout);
        rc = EXIT_OK;
    } else if (lc_flag(&a, "check")) {
        if (a.npos)
            fprintf(stderr,
                    "lathe rl-rank --check: unexpected argument '%s' (the check takes only options)\n",
                    a.pos[0]);
        else
            rc = run_check(&a);
    } else {
        const char *given = NULL;
        for (const lc_opt *o = rank_opts + 1; o->name && !given; o++)
            if (lc_arg(&a, o->name)) given = o->name;
        if (given)
            fprintf(stderr, "lathe rl-rank: --%s goes with --check (lathe rl-rank --check --%s ...)\n", given,
                    given);
        else if (a.npos != 1)
            usage(stderr);
        else
            rc = -1;
    }
    const char *dir = rc == -1 ? a.pos[0] : NULL; /* borrowed from argv */
    lc_args_free(&a);
    return dir ? dist_rank_entry(dir, &argc, &argv, rank_modes) : rc;
}
