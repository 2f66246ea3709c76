"""Crash safety of job creation: kill -9 the server in the middle of a burst of creates, restart it on the
same data dir, and every job that was acknowledged with a 201 must be there, byte for byte the same."""

import signal
import threading
import time

import requests

from conftest import LatheServer
from test_jobs import BASE, init_tiny, push_fixtures, sft

WRITERS = 8
ACKED_BEFORE_KILL = 60


def test_kill9_during_creates_loses_no_acknowledged_job(lathe_server, tmp_path):
    env = {"LATHE_WORKERS": "0", "LATHE_MAX_ACTIVE_JOBS": "1000000"}
    first = LatheServer(tmp_path / "crash", env=env)  # managed here: it is killed, not stopped
    try:
        init_tiny(first.data_dir / "models" / "tiny")
        push_fixtures(first)
        acked, lock, stop = [], threading.Lock(), threading.Event()

        def writer(i):
            sess = first.session()
            k = 0
            while not stop.is_set():
                k += 1
                try:
                    r = sess.post(BASE, json=sft(name="crash-%d-%d" % (i, k), tags=["crash"]), timeout=10)
                except requests.RequestException:
                    return  # the server is gone: the outcome of this request is unknown, and that is fine
                if r.status_code == 201:
                    with lock:
                        acked.append(r.json())

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(acked) < ACKED_BEFORE_KILL and time.monotonic() < deadline:
            time.sleep(0.01)
        first.proc.send_signal(signal.SIGKILL)  # mid-burst: writers are still sending
        first.proc.wait(timeout=30)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
            first.proc.wait()
        first._stderr.close()
    assert len(acked) >= ACKED_BEFORE_KILL

    second = lathe_server(env=env, name="crash")  # same data dir, fresh process
    for job in acked:
        r = second.get(BASE + "/" + job["id"])
        assert r.status_code == 200, (job["id"], r.text)
        assert r.json() == job
    listed = second.get(BASE, params={"tag": "crash", "page_size": 100}).json()["total"]
    assert listed >= len(acked)
    # the restarted server keeps working
    assert second.post(BASE, json=sft()).status_code == 201
