"""Helpers shared by the tests that run training jobs through a server (test_worker, test_dist,
test_rl_learning, test_demo): the CLI, artifact pushes as tar archives, job polling, logs, checkpoints.

Import them by name (`from jobs_helpers import push, wait_done`); pytest puts tests/py on sys.path."""

import io
import json
import subprocess
import tarfile
import time

from conftest import LATHE_BIN

JOBS = "/api/v1/org/default/ws/main/training/jobs"
TERMINAL = ("completed", "failed", "cancelled")


def lathe(*args, check=True, timeout=120):
    """Runs the lathe binary under test; asserts exit 0 unless check=False."""
    cp = subprocess.run([str(LATHE_BIN), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check:
        assert cp.returncode == 0, (args, cp.stdout[-2000:], cp.stderr[-2000:])
    return cp


def tar_bytes(files):
    """An uncompressed tar of {name: text}."""
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w") as t:
        for name, text in files.items():
            data = text.encode()
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return bio.getvalue()


def push(s, kind, files):
    """Pushes an artifact ("datasets" | "capabilities" | "tasks") of the default org; returns its version."""
    r = s.post("/api/v1/org/default/" + kind, data=tar_bytes(files), headers={"Content-Type": "application/x-tar"})
    assert r.status_code == 201, r.text
    return r.json()


def jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def get(s, jid):
    r = s.get(JOBS + "/" + jid)
    assert r.status_code == 200, r.text
    return r.json()


def wait_until(s, jid, pred, timeout=240, what="condition"):
    """Polls the job until pred(job); the timeout guards against a hung job, it is not a time assertion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = get(s, jid)
        if pred(j):
            return j
        time.sleep(0.05)
    raise AssertionError("job %s: %s not reached: %s" % (jid, what, json.dumps(get(s, jid))[:3000]))


def wait_done(s, jid, timeout=240):
    return wait_until(s, jid, lambda j: j["status"] in TERMINAL, timeout, "a terminal status")


def logs(s, jid):
    return s.get(JOBS + "/%s/logs?limit=1000" % jid).json()["items"]


def checkpoints(s, jid):
    return s.get(JOBS + "/%s/checkpoints" % jid).json()["items"]


def download(s, jid, name="final"):
    """The files of a checkpoint's download tar: {name: bytes}."""
    r = s.get(JOBS + "/%s/checkpoints/%s/download" % (jid, name))
    assert r.status_code == 200, r.text
    with tarfile.open(fileobj=io.BytesIO(r.content)) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}
