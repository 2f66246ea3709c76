"""The web dashboard (web/, src/api/routes_ui.c, docs/dashboard.md) in a real browser: Playwright driving
Debian's chromium (/usr/bin/chromium; Playwright's own browser download is never used) against a real
`lathe serve` with a real training job on a tiny model.

Covered: the security headers (CSP without 'unsafe-inline', nosniff, frame-ancestors 'none') and --no-ui;
sign-in (the key in sessionStorage, never in a URL; sign-out clears it); the jobs table showing a new job;
the job page's loss curve growing point by point from the event stream, surviving a dropped connection
without losing or repeating a point, the log, a checkpoint download (fetched with the key in a header);
cancel from the page; a reader's page without write buttons; a field-level 422 error in the create form;
job names, dataset rows and log lines carrying markup rendered inert (no dialog, no <img>); the registry,
catalog and compare pages; and the time the job page takes to show a job with 10,000 metric points.

Screenshots of each page go to <build>/test-logs/ui/ (the directory of LATHE_BIN); the 10,000-point timing
to <build>/test-logs/ui/timing.txt. Skipped with a reason when Playwright or chromium is missing."""

import io
import pathlib
import shutil
import subprocess
import tarfile
import tempfile
import time

import pytest

from conftest import LATHE_BIN, LatheServer
from jobs_helpers import JOBS, get, jsonl, lathe, push, wait_done

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright (PyPI playwright) is not installed")
CHROMIUM = pathlib.Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (/usr/bin/chromium)", allow_module_level=True)

SHOTS = LATHE_BIN.parent / "test-logs" / "ui"
XSS = "<img src=x onerror=alert(1)>"
CAP = {"name": "assistant", "version": "1.0.0"}
DS = {"name": "pairs", "version": "0.1.0"}
STEPS = 5000  # the live job runs until the test cancels it from the page


def rows(n, words):
    return [{"prompt": "%d+1?%s" % (i, " please" * words), "answer": str(i + 1)} for i in range(n)]


def seed(s):
    """A tiny model, a dataset (one row carries markup) and a capability on server s."""
    lathe("model", "init-tiny", s.data_dir / "models" / "tiny", "--init-std", "0.1")
    train = [{"prompt": XSS + "<script>alert(2)</script>", "answer": "<b>x</b>"}] + rows(32, 8)
    push(s, "datasets", {"dataset.yaml": "name: pairs\nversion: 0.1.0\nformat: jsonl\nsplits:\n  train: train.jsonl\n"
                         "  validation: val.jsonl\n", "train.jsonl": jsonl(train), "val.jsonl": jsonl(rows(4, 1))})
    push(s, "capabilities", {"capability.yaml": "name: assistant\nversion: 1.0.0\ndescription: helpful\n"})


def create(s, name, **cfg):
    config = {"dataset_ref": DS, "batch_size": 8, "lora_rank": 4, "learning_rate": 0.01, **cfg}
    r = s.post(JOBS, json={"backend": "tinker", "trainer_type": "sft", "model": "tiny", "name": name,
                           "capability_ref": CAP, "config": config})
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture(scope="module")
def env():
    """A server with one worker (real training) and one with none (jobs whose progress the test posts)."""
    tmp = tempfile.mkdtemp(prefix="lathe-ui-")
    live = LatheServer(pathlib.Path(tmp) / "live", args=["--train-threads", "1"])
    idle = LatheServer(pathlib.Path(tmp) / "idle", args=["--workers", "0"])
    seed(live)
    seed(idle)
    SHOTS.mkdir(parents=True, exist_ok=True)
    pw = sync_api.sync_playwright().start()
    browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
    yield {"live": live, "idle": idle, "browser": browser}
    browser.close()
    pw.stop()
    rcs = [live.stop(), idle.stop()]
    shutil.rmtree(tmp, ignore_errors=True)
    assert rcs == [0, 0], rcs


class Page:
    """A browser tab on a server that records dialogs and page errors (both must stay empty)."""

    def __init__(self, env, server):
        self.s = server
        self.ctx = env["browser"].new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        self.p = self.ctx.new_page()
        self.dialogs, self.errors, self.urls = [], [], []
        self.p.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.p.on("pageerror", lambda e: self.errors.append(str(e)))
        self.p.on("request", lambda r: self.urls.append(r.url))

    def signin(self, key):
        self.p.goto(self.s.url + "/")
        self.p.fill("[data-testid=key-input]", key)
        self.p.click("[data-testid=signin]")
        self.p.wait_for_selector("[data-testid=jobs-table]")
        self.p.wait_for_selector("[data-testid=who]")
        return self

    def go(self, frag):
        self.p.evaluate("f => { location.hash = f }", frag)

    def shot(self, name, full_page=True):
        self.p.wait_for_timeout(300)
        self.p.screenshot(path=str(SHOTS / (name + ".png")), full_page=full_page)

    def close(self, key=None):
        assert not self.errors, self.errors
        assert not self.dialogs, self.dialogs
        if key:
            assert not [u for u in self.urls if key in u], "the key appeared in a URL"
        self.ctx.close()


def points(page, testid="chart-train-loss"):
    return int(page.p.get_attribute("[data-testid=%s]" % testid, "data-points"))


def test_headers_and_no_ui(env):
    s = env["live"]
    anon = s.session(key=None)
    for path, ctype in (("/", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")):
        r = anon.get(path)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith(ctype), (path, r.headers)
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script" in anon.get("/").text and "innerHTML" not in anon.get("/ui/job.js").text
    assert anon.get("/ui/nope.js").status_code == 404
    off = LatheServer(s.data_dir.parent / "off", args=["--no-ui", "--workers", "0"])
    try:
        r = off.session(key=None).get("/")
        assert r.status_code == 404 and r.json()["type"] == "not_found"
        assert off.session(key=None).get("/ui/app.js").status_code == 404
        assert off.get("/api/v1/user").status_code == 200
    finally:
        assert off.stop() == 0
    bad = subprocess.run([str(LATHE_BIN), "serve", "--ui", "2"], capture_output=True, text=True, timeout=10)
    assert bad.returncode == 2 and "--ui" in bad.stderr, bad.stderr


def test_live_job_curve_grows_reconnects_logs_cancel_download(env, tmp_path):
    """The job runs until the page cancels it, so the test does not depend on how fast a step is."""
    s = env["live"]
    pg = Page(env, s).signin(s.key)
    assert pg.p.evaluate("sessionStorage.getItem('lathe.key')") == s.key
    assert pg.p.locator("[data-testid=page-new]").count() == 1 and pg.p.locator("[data-testid=nav-new]").count() == 1
    job = create(s, "live-sft", steps=STEPS, checkpoint_interval=STEPS, eval_dataset_ref=DS)
    # the table's live refresh shows the new job without a reload
    pg.p.wait_for_selector("[data-testid=job-row] >> text=live-sft", timeout=15000)
    pg.shot("jobs")
    assert pg.p.get_attribute("[data-testid=job-row] a >> text=live-sft", "href") == "#/job/" + job["id"]
    pg.go("#/job/" + job["id"])  # (the table re-renders every 2 s: a click could land on a row being replaced)
    pg.p.wait_for_selector("[data-testid=stream-state][data-connects='1']")
    seen, dropped = [], False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        n = points(pg)
        if not seen or n != seen[-1]:
            seen.append(n)
        if not dropped and n >= 5:
            pg.p.evaluate("window.__latheStream.drop()")  # a dropped connection: the page reconnects
            dropped = True
            pg.p.wait_for_selector("[data-testid=stream-state][data-connects='2']")
        if dropped and len(seen) >= 6 and n >= 12:
            break
        pg.p.wait_for_timeout(50)
    assert dropped and len(seen) >= 6 and seen == sorted(seen), seen  # grew point by point while watched
    assert "ETA" in pg.p.text_content("[data-testid=progress-text]")
    pg.shot("job")
    pg.shot("job-top", full_page=False)  # the README's picture (docs/img/dashboard-job.png is a copy)
    pg.p.click("[data-testid=btn-cancel]")
    pg.p.wait_for_selector(".badge[data-status=cancelled]", timeout=120000)
    final = get(s, job["id"])
    assert final["status"] == "cancelled"
    steps = len(final["metrics"]["steps"])
    # every step is on the curves exactly once, across the reconnect
    pg.p.wait_for_function("n => document.querySelector('[data-testid=chart-train-loss]').dataset.points === String(n)", arg=steps)
    assert points(pg, "chart-lr") == steps
    pg.p.wait_for_selector("[data-testid=btn-retry]")  # a finished job offers retry and delete instead of cancel
    assert pg.p.locator("[data-testid=btn-cancel]").count() == 0
    log = pg.p.text_content("[data-testid=log]")
    assert "base model tiny loaded" in log
    for i in range(1, steps + 1):
        assert log.count("step %d/%d " % (i, STEPS)) == 1, "log line of step %d lost or repeated" % i
    ck = pg.p.wait_for_selector("[data-testid^=download-]")
    name = ck.get_attribute("data-testid")[len("download-"):]
    pg.shot("job-cancelled")
    with pg.p.expect_download() as dl:
        ck.click()
    path = tmp_path / "ck.tar"
    dl.value.save_as(path)
    with tarfile.open(path) as t:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(t.getnames()), name
    assert not ck.get_attribute("href")  # a button that fetches with the key in a header: no URL carries it
    # compare it with a short job: two series per chart
    other = create(s, "short", steps=3)
    wait_done(s, other["id"])
    pg.go("#/compare?ids=%s,%s" % (job["id"], other["id"]))
    pg.p.wait_for_function("n => document.querySelector('[data-testid=cmp-chart-train-loss]').dataset.points === String(n)",
                           arg=steps + 3)
    assert pg.p.locator("[data-testid=cmp-chart-train-loss] .legend-item").count() == 2
    pg.shot("compare")
    pg.p.click("[data-testid=signout]")
    pg.p.wait_for_selector("[data-testid=signin-form]")
    assert pg.p.evaluate("sessionStorage.length") == 0
    pg.close(s.key)


def test_reader_sees_no_write_buttons(env):
    s = env["idle"]
    job = create(s, "read-me", steps=5)
    key = s.new_user("reader@example.com", role="reader")
    pg = Page(env, s).signin(key)
    assert "reader" in pg.p.text_content("[data-testid=who]")
    pg.p.wait_for_selector("[data-testid=job-row] >> text=read-me")
    assert pg.p.locator("[data-testid=page-new]").count() == 0
    pg.go("#/job/" + job["id"])
    pg.p.wait_for_selector("[data-testid=job-title] >> text=read-me")
    pg.p.wait_for_selector("[data-testid=stream-state] >> text=live")
    for b in ("btn-cancel", "btn-retry", "btn-delete", "nav-new"):
        assert pg.p.locator("[data-testid=%s]" % b).count() == 0, b
    pg.shot("job-reader")
    pg.close(key)


def test_form_shows_a_422_at_its_field(env):
    s = env["idle"]
    pg = Page(env, s).signin(s.key)
    pg.go("#/new")
    pg.p.wait_for_selector("[data-testid=create-form]")
    pg.p.fill("[data-field='config.batch_size'] input", "0")
    pg.p.fill("[data-field='config.learning_rate'] input", "2")
    pg.p.click("[data-testid=create-submit]")
    err = pg.p.wait_for_selector("[data-testid='error-config.batch_size']:not(:empty)")
    assert "1" in err.text_content()  # "must be >= 1"
    assert pg.p.text_content("[data-testid='error-config.learning_rate']")
    assert "invalid" in pg.p.get_attribute("[data-field='config.batch_size']", "class")
    assert pg.p.text_content("[data-testid='error-config.steps']") == ""
    pg.shot("create-errors")
    # the GRPO form needs a task: its 422/404 lands at task_ref, then a good SFT body creates a job
    pg.p.select_option("[data-testid=kind]", "grpo")
    pg.p.click("[data-testid=create-submit]")
    pg.p.wait_for_selector("[data-testid='error-config.task_ref']:not(:empty)")
    pg.p.select_option("[data-testid=kind]", "sft")
    pg.p.fill("[data-field='name'] input", "from-the-form")
    pg.p.fill("[data-field='config.steps'] input", "3")
    pg.p.click("[data-testid=create-submit]")
    pg.p.wait_for_selector("[data-testid=job-title] >> text=from-the-form")
    pg.close(s.key)


def test_markup_renders_inert(env):
    s = env["idle"]
    job = create(s, XSS, steps=10)
    pr = lambda body: s.post(JOBS + "/%s/progress" % job["id"], json=body)
    assert pr({"event_type": "training_start", "message": "<script>alert(3)</script>"}).status_code == 200
    r = s.post("/api/v1/org/default/datasets", data=_tar({"dataset.yaml": "name: '%s'\nversion: 0.1.0\n" % XSS,
                                                          "train.jsonl": jsonl(rows(2, 1))}),
               headers={"Content-Type": "application/x-tar"})
    assert r.status_code in (201, 400, 422), r.text  # a name with markup is refused or stored: either way inert
    pg = Page(env, s).signin(s.key)
    pg.p.wait_for_selector("[data-testid=job-row] >> text=" + XSS)
    pg.go("#/job/" + job["id"])
    pg.p.wait_for_selector("[data-testid=stream-state] >> text=live")
    msg = XSS + " <b>bold</b> <svg onload=alert(4)>"
    assert pr({"event_type": "step_complete", "message": msg, "metrics": {"steps": [1], "train/loss": [2.0]},
               "data": {"step": 1, "total_steps": 10}}).status_code == 200
    pg.p.wait_for_selector("[data-testid=log] >> text=<b>bold</b>")
    assert pg.p.text_content("[data-testid=job-title]") == XSS
    pg.go("#/artifact/datasets/pairs")
    pg.p.click("[data-testid=preview-btn]")
    pg.p.wait_for_selector("[data-testid=preview-rows] >> text=<script>alert(2)</script>")
    pg.shot("registry-preview")
    pg.go("#/registry/datasets")
    pg.p.wait_for_selector("[data-testid=artifact-row]")
    pg.go("#/job/" + job["id"])
    pg.p.wait_for_selector("[data-testid=log] >> text=<b>bold</b>")
    pg.shot("job-xss")
    assert pg.p.locator("img").count() == 0 and pg.p.locator("script").count() == 1  # only app.js
    assert pg.p.locator("main b, main svg[onload]").count() == 0
    pg.close(s.key)  # asserts that no dialog fired and no page error happened


def _tar(files):
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w") as t:
        for name, text in files.items():
            data = text.encode()
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return bio.getvalue()


def test_registry_and_catalog_pages(env):
    s = env["idle"]
    pg = Page(env, s).signin(s.key)
    pg.go("#/registry/datasets")
    row = pg.p.wait_for_selector("[data-testid=artifact-row] >> text=pairs")
    assert "train: 33" in pg.p.text_content("[data-testid=registry-body]")
    pg.shot("registry")
    pg.go("#/registry/capabilities")
    pg.p.wait_for_selector("[data-testid=artifact-row] >> text=assistant")
    pg.go("#/models")
    pg.p.wait_for_selector("[data-testid=model-row] >> text=tiny")
    assert "sft" in pg.p.text_content("[data-testid=models-body]")
    pg.shot("models")
    pg.close(s.key)
    assert row is not None


def test_job_page_with_10000_points(env):
    """How long the job page takes to show a job with 10,000 metric points (reported, not asserted)."""
    s = env["idle"]
    job = create(s, "ten-thousand", steps=20000)
    n = 10000
    pr = lambda body: s.post(JOBS + "/%s/progress" % job["id"], json=body)
    assert pr({"event_type": "training_start"}).status_code == 200
    loss = [3.0 / (1 + i / 500) + 0.05 * ((i * 7919) % 13) / 13 for i in range(n)]
    lr = [1e-4 * (1 - i / 20000) for i in range(n)]
    r = pr({"event_type": "step_complete", "metrics": {"steps": list(range(1, n + 1)), "train/loss": loss,
                                                        "train/learning_rate": lr},
            "data": {"step": n, "total_steps": 20000, "eta_s": 600}})
    assert r.status_code == 200, r.text
    pg = Page(env, s).signin(s.key)
    url = s.url + "/#/job/" + job["id"]
    pg.p.goto("about:blank")
    t0 = time.monotonic()
    pg.p.goto(url)  # a fresh page load: the modules, the job, its logs, then the chart
    pg.p.wait_for_selector("[data-testid=chart-train-loss][data-points='%d']" % n, timeout=60000)
    pg.p.wait_for_selector("[data-testid=chart-lr][data-points='%d']" % n)
    load_s = time.monotonic() - t0
    in_page = pg.p.evaluate("performance.now()")
    pr({"event_type": "step_complete", "metrics": {"steps": [n + 1], "train/loss": [0.5], "train/learning_rate": [5e-5]},
        "data": {"step": n + 1, "total_steps": 20000}})
    pg.p.wait_for_selector("[data-testid=chart-train-loss][data-points='%d']" % (n + 1))
    assert "ETA" in pg.p.text_content("[data-testid=progress-text]")
    pg.shot("job-10000-points")
    line = "job page with %d metric points: %.0f ms from navigation to both curves drawn (%.0f ms in-page)" % (
        n, load_s * 1000, in_page)
    (SHOTS / "timing.txt").write_text(line + "\n")
    print(line)
    pg.close(s.key)
