// job.js: one job's page: status, a live progress bar with ETA, the curves (train loss, eval loss, reward,
// learning rate) growing from the event stream, the log with follow, checkpoints with downloads, artifacts,
// rl-context, config and effective_config, and cancel / retry / delete when the key may write.
//
// The stream's snapshot (at every (re)connect) carries the whole metric history, so the curves are rebuilt
// from it; each progress event carries only the latest value of each metric, appended when its step is the
// next one. When the stream coalesced several steps into one event (the server looks four times a second),
// the job is fetched again to fill the gap.

import { h, replace, clear, fmtTime, fmtNum, fmtDuration, fmtBytes, jsonBlock } from "./dom.js";
import { api, get, jobPath, follow, download, me, canWrite, ApiError } from "./api.js";
import { LineChart } from "./chart.js";

// Charts of a job: title, metric, the metric holding its x values.
export const CURVES = [
  { title: "train loss", key: "train/loss", x: "steps", id: "chart-train-loss" },
  { title: "eval loss", key: "eval/loss", x: "eval/steps", id: "chart-eval-loss" },
  { title: "reward", key: "train/reward", x: "steps", id: "chart-reward", also: ["eval/reward", "eval/steps"] },
  { title: "learning rate", key: "train/learning_rate", x: "steps", id: "chart-lr" },
];

// The (xs, ys) of metric key from a job's metrics, or null when it holds no array.
export function series(metrics, key, xkey) {
  const ys = metrics && metrics[key];
  if (typeof ys === "number") {
    // a finished job's final metrics replace some arrays by their last value: one point at the last x
    const xv = metrics[xkey];
    const x = Array.isArray(xv) ? xv[xv.length - 1] : xv;
    return typeof x === "number" ? { xs: [x], ys: [ys] } : null;
  }
  if (!Array.isArray(ys)) return null;
  const xa = Array.isArray(metrics[xkey]) ? metrics[xkey] : [];
  const xs = ys.map((_, i) => (typeof xa[i] === "number" ? xa[i] : i + 1));
  return { xs, ys: ys.map((v) => (typeof v === "number" ? v : NaN)) };
}

const TERMINAL = ["completed", "failed", "cancelled"];

export function statusBadge(st) {
  return h("span", { class: "badge status-" + String(st), "data-status": st }, String(st));
}

export async function jobPage(root, id, setCleanup) {
  const user = await me();
  const writer = canWrite(user);
  let job = await get(jobPath(id));
  const charts = CURVES.map((c) => new LineChart(c.title, c.id));
  const title = h("h1", { "data-testid": "job-title" });
  const badge = h("span");
  const bar = h("progress", { max: "1", value: "0", "data-testid": "progress" });
  const barText = h("span", { class: "progress-text", "data-testid": "progress-text" });
  const errBox = h("div", { class: "error-box hidden", "data-testid": "job-error" });
  const actions = h("div", { class: "actions" });
  const streamState = h("span", { class: "stream-state", "data-testid": "stream-state" }, "connecting");
  const latest = h("table", { class: "kv", "data-testid": "metrics-latest" });
  const logBox = h("div", { class: "log", "data-testid": "log" });
  const followBox = h("input", { type: "checkbox", checked: true, "data-testid": "log-follow" });
  const ckpts = h("div", { "data-testid": "checkpoints" });
  const arts = h("div", { "data-testid": "artifacts" });
  const rlctx = h("div", { "data-testid": "rl-context" });
  const cfg = h("div", { class: "two" });
  let lastStep = 0, lastEval = 0, refetching = false;

  const msg = h("div", { class: "flash", "data-testid": "flash" });
  function flash(text, bad) {
    msg.textContent = text;
    msg.className = "flash" + (bad ? " bad" : "");
  }

  function act(label, verb, testid, confirmText) {
    return h("button", {
      "data-testid": testid, class: verb === "delete" ? "danger" : "",
      onclick: async () => {
        if (confirmText && !window.confirm(confirmText)) return;
        try {
          if (verb === "delete") {
            await api("DELETE", jobPath(id));
            location.hash = "#/jobs";
            return;
          }
          job = await api("POST", `${jobPath(id)}/${verb}`);
          flash(`${verb} requested`);
          render(job);
          if (verb === "retry") restart();
        } catch (e) {
          flash(e.message, true);
        }
      },
    }, label);
  }

  function renderActions() {
    clear(actions);
    actions.appendChild(h("a", { href: `#/compare?ids=${encodeURIComponent(id)}`, class: "button" }, "compare"));
    if (!writer) return;
    const st = job.status;
    if (!TERMINAL.includes(st)) actions.appendChild(act("Cancel", "cancel", "btn-cancel"));
    if (TERMINAL.includes(st)) {
      actions.appendChild(act("Retry", "retry", "btn-retry"));
      actions.appendChild(act("Delete", "delete", "btn-delete", "Delete this job, its logs and checkpoints?"));
    }
  }

  function renderProgress(p, status) {
    p = p || {};
    const frac = typeof p.fraction === "number" ? p.fraction : status === "completed" ? 1 : 0;
    bar.value = frac;
    const parts = [`step ${p.step || 0}` + (p.total_steps ? ` / ${p.total_steps}` : "")];
    parts.push(`${Math.round(frac * 100)}%`);
    if (!TERMINAL.includes(status) && p.eta_s !== null && p.eta_s !== undefined) parts.push("ETA " + fmtDuration(p.eta_s));
    if (p.tokens_per_s) parts.push(fmtNum(p.tokens_per_s) + " tokens/s");
    barText.textContent = parts.join(" · ");
  }

  function renderLatest(metrics) {
    clear(latest);
    for (const k of Object.keys(metrics || {}).sort()) {
      const v = metrics[k];
      const last = Array.isArray(v) ? v[v.length - 1] : v;
      if (typeof last === "object" && last !== null) continue;
      latest.appendChild(h("tr", {}, h("th", {}, k), h("td", {}, fmtNum(last))));
    }
  }

  function render(j) {
    job = j;
    title.textContent = j.name || j.id;
    replace(badge, statusBadge(j.status));
    renderProgress(j.progress, j.status);
    renderActions();
    if (j.error) { errBox.textContent = j.error; errBox.classList.remove("hidden"); } else errBox.classList.add("hidden");
  }

  // The whole history of the curves from a job object.
  function loadSeries(j) {
    const m = j.metrics || {};
    CURVES.forEach((c, i) => {
      const sr = series(m, c.key, c.x);
      if (sr) charts[i].set(c.key, sr.xs, sr.ys);
      if (c.also) {
        const s2 = series(m, c.also[0], c.also[1]);
        if (s2) charts[i].set(c.also[0], s2.xs, s2.ys);
      }
    });
    const st = m.steps, es = m["eval/steps"];
    lastStep = Array.isArray(st) && st.length ? st[st.length - 1] : 0;
    lastEval = Array.isArray(es) && es.length ? es[es.length - 1] : 0;
    renderLatest(m);
  }

  async function refetch() {
    if (refetching) return;
    refetching = true;
    try { const j = await get(jobPath(id)); render(j); loadSeries(j); } catch (_) { /* next event */ }
    setTimeout(() => { refetching = false; }, 500);
  }

  // A progress event: append the latest values at the next step, or fetch the job when steps were skipped.
  function onProgress(ev) {
    const m = ev.metrics || {};
    job = { ...job, ...ev, metrics: job.metrics };
    render(job);
    renderLatest(m);
    const step = m.steps, es = m["eval/steps"];
    if ((typeof step === "number" && step > lastStep + 1)) {
      refetch();
      return;
    }
    if (typeof step === "number" && step === lastStep + 1) {
      CURVES.forEach((c, i) => {
        if (c.x === "steps" && typeof m[c.key] === "number") charts[i].push(c.key, step, m[c.key]);
      });
      lastStep = step;
    }
    if (typeof es === "number" && es > lastEval) {
      CURVES.forEach((c, i) => {
        if (c.x === "eval/steps" && typeof m[c.key] === "number") charts[i].push(c.key, es, m[c.key]);
        if (c.also && typeof m[c.also[0]] === "number") charts[i].push(c.also[0], es, m[c.also[0]]);
      });
      lastEval = es;
    }
  }

  function logLine(e) {
    return h("div", { class: "log-line level-" + String(e.level) },
      h("span", { class: "log-time" }, fmtTime(e.timestamp)), " ",
      h("span", { class: "log-level" }, String(e.level)), " ", h("span", { class: "log-msg" }, String(e.message)));
  }

  function addLogs(items) {
    const frag = document.createDocumentFragment();
    for (const e of items) frag.appendChild(logLine(e));
    logBox.appendChild(frag);
    while (logBox.childElementCount > 5000) logBox.removeChild(logBox.firstChild);
    if (followBox.checked) logBox.scrollTop = logBox.scrollHeight;
  }

  async function loadLogs() {
    clear(logBox);
    let after = 0, last = -1;
    for (let page = 0; page < 20; page++) {
      const r = await get(`${jobPath(id)}/logs?limit=1000&after=${after}`);
      addLogs(r.items);
      if (r.items.length) last = r.items[r.items.length - 1].seq;
      if (r.next === null || r.next === undefined) break;
      after = r.next;
    }
    return last;
  }

  async function loadCheckpoints() {
    try {
      const r = await get(`${jobPath(id)}/checkpoints`);
      if (!r.items.length) { replace(ckpts, h("p", { class: "muted" }, "no checkpoints yet")); return; }
      const rows = r.items.map((c) => h("tr", {},
        h("td", {}, c.name), h("td", {}, String(c.step)), h("td", {}, fmtTime(c.created_at)),
        h("td", {}, fmtBytes(c.size_bytes)),
        h("td", {}, h("button", {
          class: "small", "data-testid": "download-" + c.name,
          onclick: async () => {
            try { await download(`${jobPath(id)}/checkpoints/${encodeURIComponent(c.name)}/download`, `${id}-${c.name}.tar`); }
            catch (e) { flash(e.message, true); }
          },
        }, "download"))));
      replace(ckpts, h("table", { class: "grid" },
        h("thead", {}, h("tr", {}, ["name", "step", "created", "size", ""].map((x) => h("th", {}, x)))),
        h("tbody", {}, rows)));
    } catch (e) { replace(ckpts, h("p", { class: "bad" }, e.message)); }
  }

  async function loadArtifacts() {
    try { replace(arts, jsonBlock((await get(`${jobPath(id)}/artifacts`)).artifacts, "artifacts-json")); }
    catch (e) { replace(arts, h("p", { class: "bad" }, e.message)); }
  }

  async function loadRl() {
    if (job.trainer_type !== "rl") { replace(rlctx, h("p", { class: "muted" }, "SFT job: no rl-context")); return; }
    try { replace(rlctx, jsonBlock(await get(`${jobPath(id)}/rl-context`), "rl-json")); }
    catch (e) { replace(rlctx, h("p", { class: "bad" }, e.message)); }
  }

  const meta = h("table", { class: "kv", "data-testid": "job-meta" });
  function renderMeta() {
    clear(meta);
    const ref = job.dataset_ref || job.prompt_dataset_ref;
    const ds = ref ? `${ref.name}@${ref.version}` + (job.dataset_ref ? "" : " (prompts)") : "";
    const cap = job.capability ? `${job.capability.name}@${job.capability.version}` : "";
    for (const [k, v] of [["id", job.id], ["backend / trainer", `${job.backend} / ${job.trainer_type}` + (job.algorithm ? ` (${job.algorithm})` : "")],
      ["model", job.model], ["dataset", ds], ["capability", cap], ["project", job.project_ref], ["attempt", job.attempt],
      ["created", fmtTime(job.created_at) + " by " + (job.created_by_email || "")], ["started", fmtTime(job.started_at)],
      ["completed", fmtTime(job.completed_at)], ["tags", (job.tags || []).join(", ")]]) {
      meta.appendChild(h("tr", {}, h("th", {}, k), h("td", {}, String(v ?? ""))));
    }
    replace(cfg, h("div", {}, h("h3", {}, "config (as sent)"), jsonBlock(job.config, "config")),
      h("div", {}, h("h3", {}, "effective_config"), jsonBlock(job.effective_config, "effective-config")));
  }

  replace(root,
    h("div", { class: "job-head" }, title, badge, actions),
    msg, errBox,
    h("div", { class: "progress-row" }, bar, barText, streamState),
    h("section", { class: "charts", "data-testid": "charts" }, charts.map((c) => c.el)),
    h("div", { class: "two" },
      h("section", {}, h("h2", {}, "job"), meta),
      h("section", {}, h("h2", {}, "latest metrics"), latest)),
    h("section", {}, h("h2", {}, "log ", h("label", { class: "follow" }, followBox, " follow")), logBox),
    h("section", {}, h("h2", {}, "checkpoints"), ckpts),
    h("section", {}, h("h2", {}, "artifacts"), arts),
    h("section", {}, h("h2", {}, "rl-context"), rlctx),
    h("section", {}, h("h2", {}, "configuration"), cfg));
  if (job.trainer_type === "sft") charts[2].el.classList.add("hidden"); // SFT has no reward
  render(job);
  loadSeries(job);
  renderMeta();
  loadArtifacts();
  loadRl();
  loadCheckpoints();

  let stream = null, connects = 0;
  async function restart() {
    if (stream) stream.close();
    const last = await loadLogs();
    stream = follow(id, (ev, d) => {
      if (ev === "snapshot") { render(d); loadSeries(d); }
      else if (ev === "progress") onProgress(d);
      else if (ev === "log") {
        addLogs([d]);
        const et = d.data && d.data.event_type;
        if (et === "checkpoint_saved" || et === "training_end") loadCheckpoints();
      } else if (ev === "end") {
        if (d.deleted) { flash("the job was deleted", true); return; }
        render(d); loadSeries(d); renderMeta(); loadCheckpoints(); loadArtifacts();
      }
    }, (st) => {
      if (st === "open") streamState.setAttribute("data-connects", String(++connects));
      streamState.textContent = st === "open" ? "live" : st === "closed" ? "stream ended" : "reconnecting"; streamState.className = "stream-state " + st; }, last);
    window.__latheStream = stream; // the tests drop the connection with it
  }
  await restart();
  setCleanup(() => stream && stream.close());
}
