"""`lathe admin` and the other commands that parse options through the one table-driven parser (lc_args):
each of defect 11's cases (issue 15) as a regression test, then loops over every admin verb (its --help lists
its own flags and no other verb's; an unknown flag, another verb's flag, a missing or empty value exit 2 with
a message naming the flag and the verb), and the same rules for `lathe worker` and `lathe rl-rank`.

Most cases need no server: `lathe admin` works on the store directly, and a usage error is found before any
connection. One test starts a server to show that an org-limited key made by `create-key --org` works there.
"""

import json
import os
import re
import subprocess

import pytest

from conftest import LATHE_BIN

# Each admin verb and the flags it alone takes (beside --db, --data-dir, --json, --help).
VERBS = {
    "init": ["--org", "--workspace", "--email"],
    "create-org": ["--key", "--name"],
    "create-user": ["--email", "--username", "--full-name"],
    "grant": ["--email", "--org", "--role"],
    "create-key": ["--email", "--name", "--org", "--workspace", "--scopes"],
    "revoke-key": ["--id"],
}
ALL_FLAGS = sorted({f for fl in VERBS.values() for f in fl})


def lathe(*args, data_dir=None, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("LATHE_")}
    e["LATHE_SERVER"] = "http://127.0.0.1:9"  # nothing listens: a usage error must come before any call
    if data_dir is not None:
        e["LATHE_DATA_DIR"] = str(data_dir)
    e.update(env or {})
    return subprocess.run([str(LATHE_BIN), *map(str, args)], capture_output=True, text=True, env=e, timeout=60)


def usage_error(cp, *needles):
    assert cp.returncode == 2, (cp.returncode, cp.stdout, cp.stderr)
    assert cp.stdout == "", cp.stdout
    for n in needles:
        assert n in cp.stderr, (n, cp.stderr)


@pytest.fixture
def store(tmp_path):
    """A data dir with the bootstrap org/user (admin@localhost owns `default`) and a user with no role."""
    d = tmp_path / "data"
    assert lathe("admin", "init", data_dir=d).returncode == 0
    assert lathe("admin", "create-user", "--email", "norole@example.com", data_dir=d).returncode == 0
    return d


# ---- defect 11, case by case ----


def test_create_user_refuses_grant_flags(store):
    cp = lathe("admin", "create-user", "--email", "x@example.com", "--org", "default", "--role", "reader",
               data_dir=store)
    usage_error(cp, "lathe admin create-user: unknown option '--org'", "--org is an option of", "grant")
    # nothing was created: the same user can still be made by a correct call
    assert lathe("admin", "create-user", "--email", "x@example.com", data_dir=store).returncode == 0


def test_create_key_refuses_role_and_id(store):
    cp = lathe("admin", "create-key", "--role", "owner", "--id", "123", data_dir=store)
    usage_error(cp, "lathe admin create-key: unknown option '--role'", "--role is an option of grant")
    cp = lathe("admin", "create-key", "--email", "admin@localhost", "--id", "123", data_dir=store)
    usage_error(cp, "unknown option '--id'", "--id is an option of revoke-key")


def test_verb_help_is_the_verbs_own():
    for verb, flags in VERBS.items():
        cp = lathe("admin", verb, "--help")
        assert cp.returncode == 0, (verb, cp.stderr)
        assert cp.stdout.startswith("usage: lathe admin %s" % verb), (verb, cp.stdout)
        listed = set(re.findall(r"^  (--[a-z-]+)", cp.stdout, re.M))
        assert listed == set(flags) | {"--json", "--help", "--db", "--data-dir"}, (verb, listed)
        # help VERB says the same
        assert lathe("admin", "help", verb).stdout == cp.stdout
    top = lathe("admin", "--help")
    assert top.returncode == 0 and all("  %s " % v in top.stdout for v in VERBS)


@pytest.mark.parametrize("scopes", ["", " , ", ","])
def test_empty_scopes_are_refused(store, scopes):
    cp = lathe("admin", "create-key", "--email", "admin@localhost", "--scopes", scopes, data_dir=store)
    usage_error(cp, "lathe admin create-key: --scopes")
    assert "unrestricted" in cp.stderr or "is empty" in cp.stderr
    cp = lathe("admin", "create-key", "--email", "admin@localhost", "--scopes=" + scopes, data_dir=store)
    usage_error(cp, "--scopes")


def test_unknown_scope_is_a_usage_error(store):
    cp = lathe("admin", "create-key", "--email", "admin@localhost", "--scopes", "training:read,admin",
               data_dir=store)
    usage_error(cp, "unknown scope 'admin'")


def test_create_key_needs_a_role_in_the_org(store):
    cp = lathe("admin", "create-key", "--email", "norole@example.com", "--org", "default", data_dir=store)
    assert cp.returncode == 1 and cp.stdout == "", (cp.returncode, cp.stdout)
    assert "norole@example.com has no role in org 'default'" in cp.stderr, cp.stderr
    assert "lathe admin grant --email norole@example.com --org default --role" in cp.stderr
    assert lathe("admin", "grant", "--email", "norole@example.com", "--org", "default", "--role", "reader",
                 data_dir=store).returncode == 0
    cp = lathe("admin", "create-key", "--email", "norole@example.com", "--org", "default", "--json",
               data_dir=store)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["org"] == "default"


def test_org_limited_key_works_on_the_server(server):
    server.admin("create-org", "--key", "ops")
    server.admin("create-user", "--email", "ops@example.com")
    cp = server.admin("create-key", "--email", "ops@example.com", "--org", "ops", check=False)
    assert cp.returncode == 1 and "no role in org 'ops'" in cp.stderr
    server.admin("grant", "--email", "ops@example.com", "--org", "ops", "--role", "contributor")
    k = json.loads(server.admin("create-key", "--email", "ops@example.com", "--org", "ops").stdout)
    s = server.session(key=k["key"])
    assert s.get("/api/v1/org/ops/workspaces").status_code == 200


def test_workspace_needs_org(store):
    cp = lathe("admin", "create-key", "--email", "admin@localhost", "--workspace", "main", data_dir=store)
    usage_error(cp, "--workspace needs --org")


@pytest.mark.parametrize("verb", ["get", "logs", "cancel"])
@pytest.mark.parametrize("flag", ["--org=", "--workspace=", "--project=", "--organization=", "--api-key="])
def test_empty_connection_flag_is_an_error(verb, flag):
    cp = lathe("train", verb, flag, "job-1")
    usage_error(cp, "lathe train %s: %s is empty" % (verb, flag.rstrip("=")))
    assert "cannot reach" not in cp.stderr


def test_empty_org_on_login_and_artifacts():
    usage_error(lathe("login", "--org", "", "--api-key", "lk_x"), "--org is empty")
    usage_error(lathe("dataset", "list", "--org="), "--org is empty")


def test_store_flags_before_or_after_the_verb(tmp_path):
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    cp = lathe("admin", "--data-dir", d1, "create-user", "--email", "a@example.com")
    assert cp.returncode == 0 and cp.stdout.startswith("created user a@example.com (id "), cp.stderr
    assert (d1 / "lathe.db").exists()
    cp = lathe("admin", "create-user", "--email", "a@example.com", "--data-dir=%s" % d2, "--json")
    assert cp.returncode == 0 and json.loads(cp.stdout)["email"] == "a@example.com"
    # --db before the verb, and --json too
    cp = lathe("admin", "--db", "sqlite:%s/lathe.db" % d1, "--json", "create-user", "--email", "a@example.com")
    assert cp.returncode == 1 and "a@example.com" in cp.stderr  # already there: d1 it was
    # the flag value is never taken for the verb
    usage_error(lathe("admin", "--data-dir", d1), "no verb given")
    usage_error(lathe("admin", "--data-dir"), "--data-dir needs a value")


def test_verb_flags_before_the_verb_and_misplaced_verbs(store):
    usage_error(lathe("admin", "--email", "a@example.com", "create-user", data_dir=store),
                "'--email' comes before the verb",
                "--email is an option of init, create-user, grant, create-key: put it after the verb")
    usage_error(lathe("admin", "create-user", "create-key", "--email", "a@example.com", data_dir=store),
                "unexpected argument 'create-key' (that is another verb")
    usage_error(lathe("admin", "frobnicate", data_dir=store), "unknown verb 'frobnicate'")
    usage_error(lathe("admin"), "usage: lathe admin")


# ---- every verb x unknown, foreign, missing and empty flags ----


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_refuses_what_it_does_not_take(verb, tmp_path):
    d = tmp_path / "never"
    usage_error(lathe("admin", verb, "--bogus", data_dir=d), "lathe admin %s: unknown option '--bogus'" % verb,
                "lathe admin %s --help" % verb)
    usage_error(lathe("admin", verb, "-x", data_dir=d), "lathe admin %s: unknown option '-x'" % verb)
    for flag in ALL_FLAGS:
        if flag in VERBS[verb]:
            usage_error(lathe("admin", verb, flag, data_dir=d), "%s needs a value" % flag)
            usage_error(lathe("admin", verb, flag + "=", data_dir=d), "%s is empty" % flag)
        else:
            usage_error(lathe("admin", verb, flag, "v", data_dir=d),
                        "lathe admin %s: unknown option '%s'" % (verb, flag), "is an option of")
    usage_error(lathe("admin", verb, "extra", data_dir=d), "lathe admin %s: unexpected argument 'extra'" % verb)
    # no usage error touched the disk
    assert not d.exists()


@pytest.mark.parametrize("verb, missing", [("create-org", "--key"), ("create-user", "--email"),
                                           ("grant", "--email"), ("create-key", "--email"), ("revoke-key", "--id")])
def test_required_flags(verb, missing, tmp_path):
    usage_error(lathe("admin", verb, data_dir=tmp_path / "never"), "lathe admin %s: %s is required" % (verb, missing))
    assert not (tmp_path / "never").exists()


def test_bad_values_are_usage_errors(store):
    usage_error(lathe("admin", "grant", "--email", "admin@localhost", "--org", "default", "--role", "boss",
                      data_dir=store), "--role must be owner, contributor or reader, got 'boss'")
    usage_error(lathe("admin", "revoke-key", "--id", "123", data_dir=store), "--id '123' is not a key id")


def test_valid_outputs_unchanged(store):
    """The text and JSON shapes of valid calls (the lines other tests and scripts read)."""
    cp = lathe("admin", "create-org", "--key", "ops", "--name", "Ops", data_dir=store)
    assert re.fullmatch(r"created org ops \(id [0-9a-f-]{36}\) with workspace main and project default; add an "
                        r"owner with `lathe admin grant`\n", cp.stdout), cp.stdout
    cp = lathe("admin", "grant", "--email", "norole@example.com", "--org", "ops", "--role", "owner", data_dir=store)
    assert cp.stdout == "norole@example.com is now owner of ops\n"
    cp = lathe("admin", "create-key", "--email", "norole@example.com", "--org", "ops", "--workspace", "main",
               "--scopes", "training:read, worker", "--name", "k", "--json", data_dir=store)
    k = json.loads(cp.stdout)
    assert sorted(k) == ["email", "id", "key", "masked_key", "name", "org", "scopes", "user_id", "workspace"]
    assert k["scopes"] == ["training:read", "worker"] and k["workspace"] == "main" and k["name"] == "k"
    cp = lathe("admin", "create-key", "--email", "norole@example.com", data_dir=store)
    assert re.fullmatch(r"lk_[0-9A-Za-z]{40}\n", cp.stdout), cp.stdout
    cp = lathe("admin", "revoke-key", "--id", k["id"], data_dir=store)
    assert cp.stdout == "revoked key %s\n" % k["id"]
    cp = lathe("admin", "init", data_dir=store)
    assert cp.stdout.startswith("org default, workspace main, owner admin@localhost\nowner API key (saved to ")


# ---- lathe worker and lathe rl-rank ----


def help_flags(text):
    """Each flag named in a help text with its metavar (None for a flag that takes no value)."""
    out = {}
    for m in re.finditer(r"(--[a-z][a-z-]*)(?:[ =]([A-Z][A-Z_]*)\b)?", text):
        out.setdefault(m.group(1), m.group(2))
    return out


def test_worker_options():
    h = lathe("worker", "--help")
    assert h.returncode == 0 and h.stdout.startswith("usage: lathe worker")
    flags = help_flags(h.stdout)
    assert set(flags) == {"--data-dir", "--db", "--models-dir", "--threads", "--workers", "--lease-s", "--once"}
    for f, meta in flags.items():  # every flag the help names is one the parser takes (--help first: no run)
        args = [f, "1"] if meta else [f]
        assert lathe("worker", "--help", *args).returncode == 0, f
        if meta:
            usage_error(lathe("worker", f), "lathe worker: %s needs a value" % f)
            usage_error(lathe("worker", f + "="), "%s is empty" % f)
    usage_error(lathe("worker", "--bogus"), "lathe worker: unknown option '--bogus'")
    usage_error(lathe("worker", "--json"), "unknown option '--json'")
    usage_error(lathe("worker", "--threads", "many"), "--threads expects an integer, got 'many'")
    usage_error(lathe("worker", "--workers", "0"), "take a positive integer")
    usage_error(lathe("worker", "run"), "lathe worker: unexpected argument 'run'")


def test_rl_rank_options():
    h = lathe("rl-rank", "--help")
    assert h.returncode == 0 and h.stdout.startswith("usage: lathe rl-rank DIR")
    flags = help_flags(h.stdout)
    assert {"--check", "--ranks", "--hostfile", "--dir", "--chunk", "--crash-rank", "--refuse-event",
            "--refuse-checkpoint", "--ignore-stop"} <= set(flags)
    for f, meta in flags.items():
        args = [f, "1"] if meta else [f]
        assert lathe("rl-rank", "--help", *args).returncode == 0, f
    usage_error(lathe("rl-rank", "--check", "--bogus"), "lathe rl-rank: unknown option '--bogus'")
    usage_error(lathe("rl-rank", "--check", "--ranks"), "--ranks needs a value")
    usage_error(lathe("rl-rank", "--check", "--ranks", "1"), "--ranks must be in 2..")
    usage_error(lathe("rl-rank", "--check", "--chunk", "big"), "--chunk expects an integer")
    usage_error(lathe("rl-rank", "--check", "--dir="), "--dir is empty")
    usage_error(lathe("rl-rank", "--check", "somedir"), "unexpected argument 'somedir'")
    usage_error(lathe("rl-rank", "--ranks", "3"), "--ranks goes with --check")
    usage_error(lathe("rl-rank", "--json", "x"), "unknown option '--json'")
    usage_error(lathe("rl-rank", "a", "b"), "usage: lathe rl-rank DIR")
    usage_error(lathe("rl-rank"), "usage: lathe rl-rank DIR")
