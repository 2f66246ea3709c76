"""Hostile uploads against a real `lathe serve`: every one is refused with the right 4xx and a message naming
the limit, and the server's peak memory stays within idle + 256 MB while it reads them (issue 15, defects 3, 4,
5 and 8).

The hostile archives are written to disk by a tiny gzip writer (GzWriter) that compresses each distinct
piece once and repeats its deflate output, with the CRC combined arithmetically: a 4.5 GB gzip bomb is ~5 MB
on disk and costs this test well under a second and almost no memory.

Peak RSS: before each upload the kernel's high-water mark is reset (`5` > /proc/PID/clear_refs) and a thread
also samples VmRSS every 20 ms; the peak is the larger of VmHWM after the upload and the sampled maximum.
Set LATHE_RSS_REPORT=FILE to get every measured peak as JSON (used to compare builds)."""

import concurrent.futures
import io
import json
import os
import pathlib
import signal
import struct
import tarfile
import threading
import time
import zlib

import pytest
import requests

from conftest import LatheServer, assert_envelope

BOUND_MB = 256
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
RESULTS = {}


# ---- a gzip writer for huge, cheap archives ----

POLY = 0xEDB88320


def _gf2_times(mat, vec):
    s, i = 0, 0
    while vec:
        if vec & 1:
            s ^= mat[i]
        vec >>= 1
        i += 1
    return s


def _gf2_square(mat):
    return [_gf2_times(mat, mat[i]) for i in range(32)]


def crc32_combine(crc1, crc2, len2):
    """CRC-32 of A+B from crc(A), crc(B) and len(B): crc1 pushed through len2 zero bytes, xor crc2."""
    if len2 == 0:
        return crc1
    odd = [POLY] + [1 << (i - 1) for i in range(1, 32)]  # the operator for one zero bit
    even = _gf2_square(odd)  # two bits
    odd = _gf2_square(even)  # four bits
    while True:
        even = _gf2_square(odd)  # 8, 32, ... bits: one zero byte on the first round
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


class GzWriter:
    """A gzip file made of pieces (bytes, repeat). Each piece is deflated on its own and ends with a sync
    flush (byte-aligned, no back-references across pieces), so its output can simply be repeated."""

    def __init__(self, f):
        self.f, self.crc, self.size = f, 0, 0
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03")

    def add(self, data, repeat=1):
        if not data or repeat <= 0:
            return
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        comp = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
        crc_rep, len_rep = 0, 0
        cur_crc, cur_len, k = zlib.crc32(data), len(data), repeat
        while k:  # crc of data * repeat, by doubling
            if k & 1:
                crc_rep = crc32_combine(crc_rep, cur_crc, cur_len)
                len_rep += cur_len
            cur_crc = crc32_combine(cur_crc, cur_crc, cur_len)
            cur_len *= 2
            k >>= 1
        self.crc = crc32_combine(self.crc, crc_rep, len_rep)
        self.size += len_rep
        for _ in range(repeat):
            self.f.write(comp)

    def close(self):
        self.f.write(b"\x01\x00\x00\xff\xff")  # an empty final stored block
        self.f.write(struct.pack("<II", self.crc & 0xFFFFFFFF, self.size & 0xFFFFFFFF))


def big_tar_gz(path, members):
    """members: [(name, [(bytes, repeat), ...])]. Writes a tar.gz of regular files; returns its size."""
    with open(path, "wb") as f:
        w = GzWriter(f)
        for name, pieces in members:
            size = sum(len(b) * r for b, r in pieces)
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = size, 0o644
            w.add(ti.tobuf(tarfile.USTAR_FORMAT))
            for b, r in pieces:
                w.add(b, r)
            if size % 512:
                w.add(b"\0" * (512 - size % 512))
        w.add(b"\0" * 1024)
        w.close()
    return os.path.getsize(path)


def small_tar_gz(path, files, extra=None):
    """files: {name: str|bytes}; extra(tar) may add hostile members."""
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as t:
        for name, data in files.items():
            data = data.encode() if isinstance(data, str) else data
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        if extra:
            extra(t)
    return os.path.getsize(path)


def manifest(name, version="1.0.0"):
    return ("dataset.yaml", [(("name: %s\nversion: %s\n" % (name, version)).encode(), 1)])


MiB = 1 << 20


# ---- memory ----


def status_kb(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class Peak:
    """Peak RSS (MB) of pid over the with-block: VmHWM after a reset, and VmRSS sampled every 20 ms."""

    def __init__(self, pid):
        self.pid, self.sampled, self.stop = pid, 0, threading.Event()

    def _sample(self):
        while not self.stop.is_set():
            try:
                self.sampled = max(self.sampled, status_kb(self.pid, "VmRSS"))
            except OSError:
                return
            time.sleep(0.02)

    def __enter__(self):
        try:
            with open("/proc/%d/clear_refs" % self.pid, "w") as f:
                f.write("5")
            self.hwm_ok = True
        except OSError:
            self.hwm_ok = False
        self.t = threading.Thread(target=self._sample, daemon=True)
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.t.join()
        hwm = status_kb(self.pid, "VmHWM") if self.hwm_ok else 0
        self.mb = max(self.sampled, hwm) / 1024.0


def record(name, idle_mb, peak_mb, status):
    RESULTS[name] = {"idle_mb": round(idle_mb, 1), "peak_mb": round(peak_mb, 1), "status": status}
    out = os.environ.get("LATHE_RSS_REPORT")
    if out:
        pathlib.Path(out).write_text(json.dumps(RESULTS, indent=1, sort_keys=True))
    print("%-22s idle %7.1f MB  peak %7.1f MB  (+%.1f)  -> %s" % (name, idle_mb, peak_mb, peak_mb - idle_mb, status))


# ---- the server ----


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    d = tmp_path_factory.mktemp("uploads")
    s = LatheServer(d / "data", args=["--workers", "0"])
    # warm up: one ordinary push, so that idle RSS includes what any push allocates once
    p = d / "warm.tgz"
    small_tar_gz(p, {"dataset.yaml": "name: warm\nversion: 1.0.0\n", "train.jsonl": json.dumps(CHAT) + "\n"})
    r = push_file(s, p)
    assert r.status_code == 201, r.text
    s.idle_mb = status_kb(s.proc.pid, "VmRSS") / 1024.0
    s.work = d
    yield s
    assert s.stop() == 0


def push_file(s, path, kind="datasets", sess=None, timeout=300):
    with open(path, "rb") as f:
        return (sess or s._admin_session).post(
            "/api/v1/org/default/%s" % kind, data=f, headers={"Content-Type": "application/gzip"}, timeout=timeout
        )


def hostile(s, name, path, code, needle):
    with Peak(s.proc.pid) as pk:
        r = push_file(s, path)
    record(name, s.idle_mb, pk.mb, r.status_code)
    body = assert_envelope(r, code)
    assert needle in body["detail"], body["detail"]
    assert pk.mb - s.idle_mb < BOUND_MB, "peak %.1f MB is over idle %.1f + %d MB" % (pk.mb, s.idle_mb, BOUND_MB)
    assert s.get("/healthz").status_code == 200
    return body


# ---- defect 3: archives are read in bounded memory ----


def test_gzip_bomb(srv):
    """Three 1.5 GB files of zeros in ~5 MB: refused at the first header by the expansion ratio."""
    p = srv.work / "bomb.tgz"
    size = big_tar_gz(p, [manifest("bomb")] + [("z%d.jsonl" % i, [(b"\0" * MiB, 1536)]) for i in range(3)])
    assert size < 8 * MiB
    hostile(srv, "gzip_bomb_4.5GB", p, 413, "expansion ratio limit is 200")


def test_gzip_bomb_under_a_junk_name(srv):
    """Tool droppings are skipped, but their bytes would still be decompressed: they count too."""
    p = srv.work / "junkbomb.tgz"
    big_tar_gz(p, [manifest("junkbomb"), ("train.jsonl", [(json.dumps(CHAT).encode() + b"\n", 1)])]
               + [(".git/objects/pack%d" % i, [(b"\0" * MiB, 1536)]) for i in range(3)])
    hostile(srv, "gzip_bomb_in_.git", p, 413, "expansion ratio limit is 200")


def test_huge_line_small_archive(srv):
    """A 1.9 GB row line in a few MB: refused (ratio) before any byte of it is read."""
    p = srv.work / "line.tgz"
    row = [(b'{"prompt": "', 1), (b"a" * MiB, 1900), (b'"}\n', 1)]
    big_tar_gz(p, [manifest("line"), ("train.jsonl", row)])
    hostile(srv, "huge_line_1.9GB", p, 413, "limit")


def test_long_line_under_ratio(srv):
    """A 48 MiB row line (too little to trip the ratio rule): the row parser stops at its 2 MiB limit."""
    p = srv.work / "line48.tgz"
    row = [(b'{"prompt": "', 1), (b"a" * MiB, 48), (b'"}\n', 1)]
    big_tar_gz(p, [manifest("line48"), ("train.jsonl", row)])
    body = hostile(srv, "long_line_48MB", p, 413, "longer than the limit of 2097152 bytes")
    assert "train.jsonl line 1" in body["detail"]


def test_many_entries(srv):
    """100,000 empty files: refused at entry 10,001."""
    p = srv.work / "many.tgz"
    with tarfile.open(p, "w:gz", compresslevel=1) as t:
        ti = tarfile.TarInfo("dataset.yaml")
        data = b"name: many\nversion: 1.0.0\n"
        ti.size = len(data)
        t.addfile(ti, io.BytesIO(data))
        for i in range(100000):
            t.addfile(tarfile.TarInfo("f/%06d.txt" % i))
    hostile(srv, "entries_100k", p, 413, "more than 10000 entries")


def test_duplicate_version_before_rows(srv):
    """The 409 for an existing version comes before any row is read: the big data file ends in a bad row,
    which a row check would have reported as a 422."""
    p = srv.work / "dup1.tgz"
    small_tar_gz(p, {"dataset.yaml": "name: dup\nversion: 1.0.0\n", "train.jsonl": json.dumps(CHAT) + "\n"})
    assert push_file(srv, p).status_code == 201
    line = (json.dumps(CHAT) + "\n").encode()
    # the manifest after the data: found by the scan, 409 before the rows (whose last one is bad) are read
    p2 = srv.work / "dup2.tgz"
    big_tar_gz(p2, [("train.jsonl", [(line * 1000, 600), (b"not json\n", 1)]), manifest("dup")])
    body = hostile(srv, "duplicate_version", p2, 409, "already exists")
    assert "version 1.0.0" in body["detail"]
    # the manifest first: 409 as soon as it is read, before the 3 GB entry behind it (a 413 otherwise)
    p3 = srv.work / "dup3.tgz"
    big_tar_gz(p3, [manifest("dup"), ("train.jsonl", [(line * 1000, 36000)])])
    hostile(srv, "duplicate_version_3GB", p3, 409, "already exists")


# ---- defect 5: wide CSV headers ----


def wide_csv(cols):
    hdr = ",".join("c%d" % i for i in range(cols - 1)) + ",prompt"
    return hdr + "\n" + "," * (cols - 1) + "hi\n"


def test_wide_csv(srv):
    p = srv.work / "wide.tgz"
    small_tar_gz(p, {"dataset.yaml": "name: wide\nversion: 1.0.0\n", "train.csv": wide_csv(100000)})
    body = hostile(srv, "csv_100k_columns", p, 422, "over the limit of 10000 columns")
    assert body["errors"][0]["loc"] == ["archive", "train.csv", 1]


def test_csv_width_under_limit_is_fine(srv):
    p = srv.work / "wide-ok.tgz"
    small_tar_gz(p, {"dataset.yaml": "name: wideok\nversion: 1.0.0\n", "train.csv": wide_csv(9000)})
    r = push_file(srv, p)
    assert r.status_code == 201, r.text
    assert r.json()["row_count"] == 1


def test_concurrent_wide_pushes_leave_healthz_alive(srv):
    """Ten concurrent 60k-column pushes: each is refused (422 column limit, or 503 + Retry-After when the
    upload pool is full), and /healthz answers on fresh connections all the while."""
    p = srv.work / "wide60.tgz"
    small_tar_gz(p, {"dataset.yaml": "name: wide60\nversion: 1.0.0\n", "train.csv": wide_csv(60000)})
    stop = threading.Event()
    health = []

    def probe():
        while not stop.is_set():
            try:
                health.append(requests.get(srv.url + "/healthz", timeout=3).status_code)
            except requests.RequestException as e:
                health.append(repr(e))
            time.sleep(0.05)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    with concurrent.futures.ThreadPoolExecutor(10) as ex:
        futs = [ex.submit(push_file, srv, p, "datasets", srv.session()) for _ in range(10)]
        rs = [f.result() for f in futs]
    time.sleep(0.2)
    stop.set()
    t.join()
    codes = sorted(r.status_code for r in rs)
    assert set(codes) <= {422, 503}, codes
    assert 422 in codes, codes
    for r in rs:
        if r.status_code == 503:
            assert r.headers.get("Retry-After") == "2"
            assert "LATHE_UPLOAD_CONCURRENCY" in r.json()["detail"]
    assert health and all(h == 200 for h in health), health


# ---- defect 4: dangerous entries whatever their name ----


def _link(name, target, kind=tarfile.SYMTYPE):
    def add(t):
        ti = tarfile.TarInfo(name)
        ti.type, ti.linkname = kind, target
        t.addfile(ti)

    return add


def _dev(name, kind):
    def add(t):
        ti = tarfile.TarInfo(name)
        ti.type = kind
        t.addfile(ti)

    return add


@pytest.mark.parametrize(
    "extra,needle",
    [
        (_link(".DS_Store", "/etc/passwd"), ".DS_Store points outside"),
        (_link("__pycache__/x.pyc", "../../../etc/passwd"), "__pycache__/x.pyc points outside"),
        (_link(".git", "/"), ".git points outside"),
        (_link(".git/config", "/etc/passwd", tarfile.LNKTYPE), "absolute path"),
        (_dev(".DS_Store", tarfile.CHRTYPE), ".DS_Store is a device file"),
        (_dev("__MACOSX/p", tarfile.FIFOTYPE), "__MACOSX/p is a fifo"),
    ],
)
def test_dangerous_entries_under_ignored_names(srv, tmp_path, extra, needle):
    p = tmp_path / "bad.tgz"
    small_tar_gz(p, {"dataset.yaml": "name: bad\nversion: 1.0.0\n", "train.jsonl": json.dumps(CHAT) + "\n"}, extra)
    r = push_file(srv, p)
    body = assert_envelope(r, 400)
    assert needle in body["detail"], body["detail"]


def test_file_and_directory_clash(srv, tmp_path):
    p = tmp_path / "clash.tgz"
    files = {"dataset.yaml": "name: clash\nversion: 1.0.0\n", "train.jsonl": json.dumps(CHAT) + "\n", "a": "x", "a/b": "y"}
    small_tar_gz(p, files)
    body = assert_envelope(push_file(srv, p), 400)
    assert "a is both a file and a directory" in body["detail"], body["detail"]


# ---- defect 8: what a killed push leaves is swept at start ----


def test_kill_mid_push_then_restart_sweeps(tmp_path):
    s = LatheServer(tmp_path / "data", args=["--workers", "0"])
    spool_dir = s.data_dir / "tmp"
    parts = s.data_dir / "blobs" / "tmp"
    stalled = threading.Event()

    def body():
        yield b"\x1f\x8b" + b"\0" * 65536
        stalled.set()
        time.sleep(30)  # the server is killed meanwhile
        yield b""

    def send():
        try:
            s.session().post(
                "/api/v1/org/default/datasets", data=body(), headers={"Content-Type": "application/gzip"}, timeout=40
            )
        except requests.RequestException:
            pass

    t = threading.Thread(target=send, daemon=True)
    t.start()
    assert stalled.wait(10)
    deadline = time.time() + 10
    while not list(spool_dir.glob("upload-*")) and time.time() < deadline:
        time.sleep(0.05)
    assert list(spool_dir.glob("upload-*")), "the push was never spooled"
    # what a writer killed inside blob_put leaves: a temp file nobody holds a lock on
    (parts / "0123-dead.part").write_bytes(b"partial")
    s.proc.send_signal(signal.SIGKILL)
    s.stop()
    assert list(spool_dir.glob("upload-*")) and list(parts.glob("*.part"))

    s2 = LatheServer(tmp_path / "data", args=["--workers", "0"])
    try:
        assert list(spool_dir.glob("upload-*")) == []
        assert list(parts.glob("*.part")) == []
        assert "removed leftovers of interrupted uploads: 1 blob temp file(s), 1 spool(s)" in s2.log()
        assert s2.get("/healthz").status_code == 200
    finally:
        assert s2.stop() == 0


# ---- the limits are settings of lathe serve ----


def test_limits_from_flags_and_env(tmp_path):
    s = LatheServer(
        tmp_path / "data",
        env={"LATHE_UPLOAD_MAX_COLUMNS": "3"},
        args=["--workers", "0", "--upload-max-entries", "5", "--upload-max-row", "1K"],
    )
    try:
        p = tmp_path / "a.tgz"
        files = {"dataset.yaml": "name: a\nversion: 1.0.0\n", "train.jsonl": json.dumps(CHAT) + "\n"}
        files.update({"f%d.txt" % i: "x" for i in range(4)})
        small_tar_gz(p, files)
        assert "more than 5 entries" in assert_envelope(push_file(s, p), 413)["detail"]
        small_tar_gz(p, {"dataset.yaml": "name: a\nversion: 1.0.0\n", "train.csv": "a,b,c,prompt\n,,,hi\n"})
        assert "over the limit of 3 columns" in assert_envelope(push_file(s, p), 422)["detail"]
        long = json.dumps({"prompt": "x" * 2000}) + "\n"
        small_tar_gz(p, {"dataset.yaml": "name: a\nversion: 1.0.0\n", "train.jsonl": json.dumps(CHAT) + "\n" + long})
        detail = assert_envelope(push_file(s, p), 413)["detail"]
        assert "train.jsonl line 2: the line is longer than the limit of 1024 bytes" in detail, detail
        small_tar_gz(p, {"dataset.yaml": "name: a\nversion: 1.0.0\n" + "#" * (2 << 20), "train.jsonl": "{}\n"})
        detail = assert_envelope(push_file(s, p), 413)["detail"]
        assert "dataset.yaml is 2097175 bytes, over the limit of 1048576 bytes" in detail, detail
    finally:
        assert s.stop() == 0


def test_bad_limit_flag_is_refused(tmp_path):
    import subprocess

    from conftest import LATHE_BIN

    out = subprocess.run([str(LATHE_BIN), "serve", "--help"], capture_output=True, text=True, timeout=10).stdout
    for name in ["max-entries", "max-file", "max-unpacked", "max-ratio", "max-row", "max-columns", "concurrency"]:
        assert "--upload-" + name in out and "LATHE_UPLOAD_" + name.upper().replace("-", "_") in out, name
    cp = subprocess.run(
        [str(LATHE_BIN), "serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0", "--upload-max-row", "lots"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cp.returncode != 0
    assert "--upload-max-row" in cp.stderr and "LATHE_UPLOAD_MAX_ROW" in cp.stderr, cp.stderr
