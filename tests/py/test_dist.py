"""Distributed execution (src/train/dist.c): the mpirun launcher, the rank-side hooks and the MPI transport,
through `lathe rl-rank --check`, which runs dist_launch with the transport self-test on every rank
instead of training (3 ranks on this machine unless a test says otherwise); and one Ray GRPO job with
execution_mode distributed run by a server's worker on a tiny model (1 learner + 2 rollout ranks)."""

import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import LATHE_BIN
from jobs_helpers import JOBS, push, wait_done

pytestmark = pytest.mark.skipif(shutil.which("mpirun") is None, reason="OpenMPI (mpirun) is not installed")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATHE_") and not k.startswith("OMPI_")}
    env.update(extra)
    return env


def check(tmp_path, *args, env=None, timeout=120):
    """Runs `lathe rl-rank --check --dir tmp_path/w ARGS`; returns (exit code, relayed lines, result, dir)."""
    work = tmp_path / "w"
    cp = subprocess.run(
        [str(LATHE_BIN), "rl-rank", "--check", "--dir", str(work), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or clean_env(),
    )
    lines = [json.loads(l) for l in cp.stdout.splitlines() if l.strip()]
    results = [l["result"] for l in lines if "result" in l]
    assert len(results) == 1, (cp.stdout, cp.stderr)
    return cp.returncode, lines, results[0], work


def test_three_ranks_exchange_relay_and_stop(tmp_path):
    # A 1000-byte chunk: the 40 KB bcast and the 3-6 KB sends all go in several MPI messages.
    rc, lines, res, work = check(tmp_path, "--ranks", "3", "--chunk", "1000")
    assert rc == 0, res
    assert res["ok"] is True and res["status"] == "stopped"
    # rank 1 sends 3006 bytes and rank 2 6007, received from any source after dist_probe
    assert res["metrics"] == {"check/ranks": 3, "check/messages": 2, "check/bytes": 3006 + 6007}
    events = [l["event"] for l in lines if "event" in l and l["event"].get("event_type")]
    # only rank 0's events reach the parent (every rank emitted three), in order, intact
    assert [e["metrics"]["steps"] for e in events] == [[1], [2], [3]]
    assert [e["metrics"]["train/check"] for e in events] == [[0.25], [0.5], [0.75]]
    assert all(e["data"]["total_steps"] == 3 for e in events)
    ckpts = [l["checkpoint"] for l in lines if "checkpoint" in l]
    assert ckpts == [
        {"name": "checkpoint-1-step3", "step": 3, "dir": str((work / "checkpoint-1-step3").resolve()), "visible": True}
    ]
    # the checkpoint was acknowledged before rank 0 went on; the stop went through DIR/stop
    dist = work / "dist"
    assert json.loads((dist / "ack-1").read_text()) == {"ok": True}
    assert (dist / "stop").exists()
    for r in range(3):
        assert json.loads((dist / f"rank-{r}.json").read_text())["status"] == 1  # TR_STOPPED on every rank
        assert (dist / f"rank-{r}.log").exists()
    # the order of relayed lines: events, checkpoint, then the "waiting for stop" log line
    kinds = [next(iter(l)) for l in lines]
    assert kinds == ["event"] * 3 + ["checkpoint", "event", "result"]
    assert lines[4]["event"]["data"] == {"waiting_for_stop": True}


def test_two_ranks_over_tcp_with_a_hostfile(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost slots=4\n")
    env = clean_env(LATHE_MPI_ARGS="--mca btl self,tcp")
    rc, _, res, _ = check(tmp_path, "--ranks", "2", "--hostfile", str(hostfile), env=env)
    assert rc == 0, res
    assert res["metrics"] == {"check/ranks": 2, "check/messages": 1, "check/bytes": 3006}


def test_missing_mpirun_says_what_to_install(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    rc, lines, res, _ = check(tmp_path, env=clean_env(PATH=str(bindir)))
    assert rc == 1
    assert res["status"] == "failed"
    assert "'mpirun' was not found on PATH" in res["error"]
    assert "install openmpi-bin (scripts/setup.sh)" in res["error"]
    assert not any("event" in l for l in lines)


def test_missing_hostfile(tmp_path):
    rc, _, res, _ = check(tmp_path, "--hostfile", str(tmp_path / "nope"))
    assert rc == 1
    assert "--hostfile" in res["error"] and "No such file" in res["error"]


def test_crashed_rank_is_named_with_its_log(tmp_path):
    rc, lines, res, work = check(tmp_path, "--crash-rank", "2")
    assert rc == 1
    err = res["error"]
    assert "rank 2 ended without a result" in err
    assert "rank 2 crashing on purpose" in err  # the tail of rank-2.log
    assert str(work / "dist" / "rank-2.log") in err
    assert "[ 1]" not in err  # OpenMPI's backtrace frames are left out
    assert not (work / "dist" / "rank-2.json").exists()


def test_refused_checkpoint_fails_rank_0_with_the_workers_error(tmp_path):
    rc, _, res, work = check(tmp_path, "--refuse-checkpoint")
    assert rc == 1
    msg = "rl-rank --check: checkpoint checkpoint-1-step3 refused (--refuse-checkpoint)"
    assert res["error"] == msg
    dist = work / "dist"
    ack = json.loads((dist / "ack-1").read_text())
    assert ack == {"ok": False, "code": 409, "message": msg}
    # rank 0's checkpoint hook returned the worker's error, so rank 0 failed with it (and aborted the rest)
    r0 = json.loads((dist / "rank-0.json").read_text())
    assert r0["status"] == -1 and r0["error"] == {"code": 409, "message": msg}


def test_refused_event_stops_the_ranks(tmp_path):
    rc, lines, res, work = check(tmp_path, "--refuse-event", "2")
    assert rc == 1
    assert res["error"] == "rl-rank --check: event 2 refused (--refuse-event)"
    assert res["events"] == 2  # nothing is relayed after the refusal
    dist = work / "dist"
    assert json.loads((dist / "fail").read_text())["code"] == 409
    # rank 0 saw DIR/fail: either its next hook failed or its stop poll turned 1; it never finished normally
    assert json.loads((dist / "rank-0.json").read_text())["status"] in (-1, 1)


def test_rank_without_mpirun_is_refused(tmp_path):
    # `lathe rl-rank DIR` outside mpirun: a singleton MPI job whose job.json is missing fails cleanly
    d = tmp_path / "d"
    d.mkdir()
    cp = subprocess.run([str(LATHE_BIN), "rl-rank", str(d)], capture_output=True, text=True, timeout=60, env=clean_env())
    assert cp.returncode == 1
    r0 = json.loads((d / "rank-0.json").read_text())
    assert r0["status"] == -1 and "job.json" in r0["error"]["message"]


def test_ranks_that_ignore_stop_are_terminated(tmp_path):
    env = clean_env(LATHE_DIST_STOP_GRACE_S="1")
    rc, _, res, work = check(tmp_path, "--ignore-stop", env=env)
    assert rc == 1
    assert res["error"] == (
        "distributed run: the ranks did not stop within 1 s of the stop request (LATHE_DIST_STOP_GRACE_S); "
        "mpirun was terminated"
    )
    assert res["events"] == 3 and res["checkpoints"] == 1  # everything before the stop went through
    assert not (work / "dist" / "rank-0.json").exists()  # rank 0 was killed in its wait loop


# ---- a distributed GRPO job through the server ----

def grpo_server(lathe_server):
    s = lathe_server()
    cp = subprocess.run([str(LATHE_BIN), "model", "init-tiny", str(s.data_dir / "models" / "tiny"), "--init-std",
                         "0.1"], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    rows = "".join(json.dumps({"prompt": "%d+1?" % i, "answer": str(i + 1)}) + "\n" for i in range(8))
    push(s, "datasets", {"dataset.yaml": "name: pairs\nversion: 0.1.0\nformat: jsonl\nsplits:\n  train: train.jsonl\n",
                         "train.jsonl": rows})
    push(s, "capabilities", {"capability.yaml": "name: assistant\nversion: 1.0.0\ndescription: helpful\n"})
    push(s, "tasks", {"task.yaml": "name: add\nversion: 1.0.0\ninstruction: add one\nverification:\n"
                      "  method: exact\n  expected: '2'\n"})
    return s


def grpo_job(s, **cfg):
    config = {"task_ref": "add", "prompt_dataset_ref": {"name": "pairs", "version": "0.1.0"}, "steps": 3,
              "num_rollouts": 4, "batch_size": 2, "execution_mode": "distributed", "num_rollout_workers": 2}
    config.update(cfg)
    r = s.post(JOBS, json={"backend": "ray", "trainer_type": "rl", "model": "tiny",
                           "capability_ref": {"name": "assistant", "version": "1.0.0"}, "config": config})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_distributed_grpo_job(lathe_server):
    s = grpo_server(lathe_server)
    j = wait_done(s, grpo_job(s, checkpoint_interval=2))
    assert j["status"] == "completed", j["error"]
    m = j["metrics"]
    assert m["steps"] == [1, 2, 3] and len(m["train/reward"]) == 3
    # the learner broadcast its weights to the rollout ranks (weight_sync_interval 1)
    assert m["train/weight_sync_count"] >= 1
    a = j["artifacts"]
    assert a["execution_mode"] == "distributed" and a["latest_checkpoint"] == "final", a
    names = [c["name"] for c in s.get(JOBS + "/%s/checkpoints" % j["id"]).json()["items"]]
    # rank 0's checkpoints were relayed to the worker and published
    assert "checkpoint-1-step2" in names and "final" in names, names
    logs = s.get(JOBS + "/%s/logs?limit=1000" % j["id"]).json()["items"]
    assert any("distributed" in l["message"] for l in logs), [l["message"] for l in logs][:20]


def test_distributed_grpo_cancel_reaches_the_ranks(lathe_server):
    s = grpo_server(lathe_server)
    jid = grpo_job(s, steps=2000, checkpoint_interval=100000)
    deadline = time.monotonic() + 120
    while True:
        j = s.get(JOBS + "/" + jid).json()
        assert j["status"] in ("queued", "running"), j["error"]
        if (j["progress"] or {}).get("step", 0) >= 2:
            break
        assert time.monotonic() < deadline, j
        time.sleep(0.05)
    r = s.post(JOBS + "/%s/cancel" % jid)
    assert r.status_code == 200, r.text
    at_cancel = r.json()["progress"]["step"]
    j = wait_done(s, jid)
    # the stop file reached rank 0, which checkpointed the step it was on and returned TR_STOPPED
    assert j["status"] == "cancelled", j["error"]
    steps = j["metrics"]["steps"]
    assert 2 <= len(steps) <= at_cancel + 5, (at_cancel, steps[-3:])
    ck = s.get(JOBS + "/%s/checkpoints" % jid).json()["items"]
    assert ck and ck[-1]["step"] == steps[-1], ck
