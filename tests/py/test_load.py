"""A bounded load test of the job routes: 100 concurrent clients create and read jobs on loopback.

Runs for LATHE_LOAD_SECONDS (default 10 in CI; 30 is the documented longer run) against one `lathe serve`
without workers, with the active-job quota lifted. Checks: no 5xx, no lost or duplicated job (every 201 is
readable by id and listed exactly once), the counts add up. Prints requests/s and the p99 latency.
"""

import os
import threading
import time

import requests

from conftest import assert_envelope  # noqa: F401

from test_jobs import BASE, init_tiny, push_fixtures, sft

CLIENTS = 100


def test_load_create_and_read(lathe_server, capsys):
    seconds = float(os.environ.get("LATHE_LOAD_SECONDS", "10"))
    s = lathe_server(env={"LATHE_WORKERS": "0", "LATHE_MAX_ACTIVE_JOBS": "1000000", "LATHE_HTTP_THREADS": "16"})
    init_tiny(s.data_dir / "models" / "tiny")
    push_fixtures(s)
    stop = threading.Event()
    window_end = [float("inf")]  # requests finishing after this are not counted in the rate
    lock = threading.Lock()
    created, latencies, bad = [], [], []
    counts = {"create": 0, "get": 0, "list": 0}

    def client(i):
        sess = s.session()
        mine = []
        lat = []
        n = {"create": 0, "get": 0, "list": 0}
        k = 0
        while not stop.is_set():
            k += 1
            t0 = time.monotonic()
            try:
                if k % 3 == 1 or not mine:
                    r = sess.post(BASE, json=sft(name="load-%d-%d" % (i, k), tags=["load"]))
                    kind = "create"
                    if r.status_code == 201:
                        mine.append(r.json()["id"])
                elif k % 3 == 2:
                    r = sess.get(BASE + "/" + mine[k % len(mine)])
                    kind = "get"
                else:
                    r = sess.get(BASE, params={"page_size": 5, "tag": "load"})
                    kind = "list"
            except requests.RequestException as e:  # a connection failure is a failure here
                with lock:
                    bad.append(("exception", repr(e)))
                continue
            t1 = time.monotonic()
            lat.append(t1 - t0)
            if t1 <= window_end[0]:
                n[kind] += 1
            if r.status_code not in (200, 201):
                with lock:
                    bad.append((kind, r.status_code, r.text[:300]))
        with lock:
            created.extend(mine)
            latencies.extend(lat)
            for key in n:
                counts[key] += n[key]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    t0 = time.monotonic()
    window_end[0] = t0 + seconds
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=120)

    assert not bad, bad[:5]
    assert len(created) == len(set(created)), "a job id was handed out twice"
    total = sum(counts.values())  # requests that finished inside the window
    assert total <= len(latencies)
    # every acknowledged job is there, exactly once
    listed, page = [], 1
    while True:
        p = s.get(BASE, params={"page": page, "page_size": 100}).json()
        listed += [j["id"] for j in p["items"]]
        if len(p["items"]) < 100:
            break
        page += 1
    assert p["total"] == len(created)
    assert sorted(listed) == sorted(created)
    latencies.sort()
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    with capsys.disabled():
        print(
            "\nload: %d clients, %.0f s: %d requests (%d creates, %d gets, %d lists), %.0f req/s, "
            "p50 %.1f ms, p99 %.1f ms, max %.1f ms; %d jobs created in all"
            % (
                CLIENTS,
                seconds,
                total,
                counts["create"],
                counts["get"],
                counts["list"],
                total / seconds,
                latencies[len(latencies) // 2] * 1000,
                p99 * 1000,
                latencies[-1] * 1000,
                len(created),
            )
        )
