// pages.js: sign-in, the jobs table, the compare view, the registry and the model catalog.

import { h, replace, clear, fmtTime, fmtNum, jsonBlock } from "./dom.js";
import { get, session, me, canWrite, jobsPath, jobPath, artPath, bytes, ApiError, enc } from "./api.js";
import { statusBadge, CURVES, series } from "./job.js";
import { LineChart, COLORS } from "./chart.js";

// ---- sign in ----

export function signinPage(root, done) {
  const key = h("input", { type: "password", name: "key", placeholder: "lk_...", autocomplete: "off", "data-testid": "key-input" });
  const err = h("p", { class: "bad", "data-testid": "signin-error" });
  const form = h("form", { class: "card signin", "data-testid": "signin-form" },
    h("h1", {}, "Sign in to lathe"),
    h("p", { class: "muted" }, "Paste an API key (lathe serve prints the first one and saves it to <data dir>/admin.key). " +
      "It is kept in this tab only and sent as a header."),
    h("label", {}, "API key", key), h("button", { type: "submit", "data-testid": "signin" }, "Sign in"), err);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    session.clear();
    session.set(key.value.trim());
    try {
      const u = await me(true);
      const org = (u.orgs && u.orgs[0] && u.orgs[0].key) || "default";
      let ws = "main";
      try {
        const wl = await get(`/api/v1/org/${enc(org)}/workspaces`);
        const items = wl.items || [];
        const d = items.find((w) => w.is_default) || items[0];
        if (d) ws = d.key;
      } catch (_) { /* keep main */ }
      session.set(undefined, org, ws);
      done();
    } catch (ex) {
      session.clear();
      err.textContent = ex instanceof ApiError && ex.status === 401 ? "That key was not accepted." : ex.message;
    }
  });
  replace(root, form);
  key.focus();
}

// ---- jobs table ----

const FILTERS = [
  ["status", ["", "queued", "running", "completed", "failed", "cancelled"]],
  ["backend", ["", "tinker", "ray"]],
  ["trainer_type", ["", "sft", "rl"]],
];

function select(name, options, value) {
  return h("select", { name, "data-testid": "filter-" + name },
    options.map((o) => h("option", { value: o, selected: o === value }, o || `any ${name}`)));
}

export async function jobsPage(root, params, setCleanup) {
  const q = new URLSearchParams(params);
  const page = Math.max(1, parseInt(q.get("page") || "1", 10));
  const pageSize = Math.min(100, Math.max(1, parseInt(q.get("page_size") || "20", 10)));
  const form = h("form", { class: "filters", "data-testid": "filters" },
    FILTERS.map(([n, opts]) => select(n, opts, q.get(n) || "")),
    h("input", { name: "project_ref", placeholder: "project", value: q.get("project_ref") || "" }),
    h("input", { name: "tag", placeholder: "tag", value: q.get("tag") || "" }),
    select("page_size", ["10", "20", "50", "100"], String(pageSize)),
    h("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const nq = new URLSearchParams();
    for (const [k, v] of new FormData(form).entries()) if (v) nq.set(k, v);
    location.hash = "#/jobs?" + nq.toString();
  });
  form.addEventListener("change", (e) => { if (e.target.tagName === "SELECT") form.requestSubmit(); });
  const tbody = h("tbody", { "data-testid": "jobs-body" });
  const pager = h("div", { class: "pager" });
  const compareBtn = h("button", { "data-testid": "compare-selected" }, "Compare selected");
  const selected = new Set();
  compareBtn.addEventListener("click", () => {
    if (selected.size) location.hash = "#/compare?ids=" + [...selected].map(enc).join(",");
  });
  replace(root,
    h("div", { class: "page-head" }, h("h1", {}, "Training jobs"),
      canWrite(await me()) ? h("a", { href: "#/new", class: "button", "data-testid": "page-new" }, "New job") : null, compareBtn),
    form,
    h("table", { class: "grid jobs", "data-testid": "jobs-table" },
      h("thead", {}, h("tr", {}, ["", "name", "status", "backend / trainer", "model", "created", "progress"].map((x) => h("th", {}, x)))),
      tbody),
    pager);

  async function refresh() {
    const aq = new URLSearchParams();
    for (const k of ["status", "backend", "trainer_type", "project_ref", "tag"]) if (q.get(k)) aq.set(k, q.get(k));
    aq.set("page", String(page));
    aq.set("page_size", String(pageSize));
    let r;
    try { r = await get(jobsPath() + "?" + aq.toString()); } catch (e) {
      replace(tbody, h("tr", {}, h("td", { colspan: "7", class: "bad" }, e.message)));
      return;
    }
    clear(tbody);
    if (!r.items.length) tbody.appendChild(h("tr", {}, h("td", { colspan: "7", class: "muted" }, "no jobs")));
    for (const j of r.items) {
      const p = j.progress || {};
      const frac = typeof p.fraction === "number" ? p.fraction : j.status === "completed" ? 1 : 0;
      const cb = h("input", { type: "checkbox", checked: selected.has(j.id), "aria-label": "select" });
      cb.addEventListener("change", () => (cb.checked ? selected.add(j.id) : selected.delete(j.id)));
      tbody.appendChild(h("tr", { "data-testid": "job-row" },
        h("td", {}, cb),
        h("td", {}, h("a", { href: "#/job/" + enc(j.id), class: "job-link" }, j.name || j.id.slice(0, 8))),
        h("td", {}, statusBadge(j.status)),
        h("td", {}, `${j.backend} / ${j.trainer_type}`),
        h("td", {}, j.model),
        h("td", {}, fmtTime(j.created_at)),
        h("td", {}, h("progress", { max: "1", value: String(frac) }), " ",
          h("span", { class: "muted" }, `${p.step || 0}` + (p.total_steps ? `/${p.total_steps}` : "")))));
    }
    const pages = Math.max(1, Math.ceil(r.total / pageSize));
    const link = (n, label) => {
      const nq = new URLSearchParams(q);
      nq.set("page", String(n));
      return h("a", { href: "#/jobs?" + nq.toString(), class: "button small" }, label);
    };
    replace(pager, page > 1 ? link(page - 1, "← prev") : null, ` page ${page} of ${pages} · ${r.total} jobs `,
      page < pages ? link(page + 1, "next →") : null);
  }
  await refresh();
  const t = setInterval(() => { if (!document.hidden) refresh(); }, 2000);
  setCleanup(() => clearInterval(t));
}

// ---- compare ----

export async function comparePage(root, params) {
  const ids = (new URLSearchParams(params).get("ids") || "").split(",").filter(Boolean);
  const charts = CURVES.map((c) => new LineChart(c.title, "cmp-" + c.id));
  const input = h("input", { name: "ids", placeholder: "job ids, comma-separated", value: ids.join(",") });
  const form = h("form", { class: "filters" }, input, h("button", { type: "submit" }, "Compare"));
  form.addEventListener("submit", (e) => { e.preventDefault(); location.hash = "#/compare?ids=" + enc(input.value.replace(/\s+/g, "")); });
  const legend = h("ul", { class: "plain" });
  replace(root, h("h1", {}, "Compare jobs"), form, legend, h("section", { class: "charts" }, charts.map((c) => c.el)));
  for (let i = 0; i < ids.length; i++) {
    let j;
    try { j = await get(jobPath(ids[i])); } catch (e) { legend.appendChild(h("li", { class: "bad" }, `${ids[i]}: ${e.message}`)); continue; }
    const label = (j.name || j.id.slice(0, 8)) + " · " + j.status;
    legend.appendChild(h("li", {}, h("a", { href: "#/job/" + enc(j.id) }, label)));
    CURVES.forEach((c, k) => {
      const sr = series(j.metrics || {}, c.key, c.x);
      if (sr) charts[k].set(label, sr.xs, sr.ys, COLORS[i % COLORS.length]);
    });
  }
}

// ---- registry ----

const KINDS = ["datasets", "capabilities", "tasks"];

export async function registryPage(root, kind) {
  kind = KINDS.includes(kind) ? kind : "datasets";
  const tabs = h("nav", { class: "tabs" }, KINDS.map((k) => h("a", { href: "#/registry/" + k, class: k === kind ? "active" : "" }, k)));
  const tbody = h("tbody", { "data-testid": "registry-body" });
  replace(root, h("h1", {}, "Registry"), tabs,
    h("table", { class: "grid" }, h("thead", {}, h("tr", {}, ["name", "latest", "versions", "rows per split", "updated"].map((x) => h("th", {}, x)))), tbody));
  const r = await get(artPath(kind) + "?page=1&page_size=100");
  if (!r.items.length) tbody.appendChild(h("tr", {}, h("td", { colspan: "5", class: "muted" }, "nothing pushed yet")));
  for (const a of r.items) {
    tbody.appendChild(h("tr", { "data-testid": "artifact-row" },
      h("td", {}, h("a", { href: `#/artifact/${kind}/${enc(a.name)}` }, a.name)),
      h("td", {}, a.latest_version), h("td", {}, String(a.version_count)),
      h("td", {}, splitsText(a.latest && a.latest.splits)), h("td", {}, fmtTime(a.updated_at))));
  }
}

function splitsText(sp) {
  return Object.entries(sp || {}).map(([k, v]) => `${k}: ${v}`).join(", ");
}

export async function artifactPage(root, kind, name) {
  const a = await get(`${artPath(kind)}/${enc(name)}`);
  const detail = h("div", { "data-testid": "version-detail" });
  const rows = a.versions.map((v) => h("tr", {},
    h("td", {}, h("a", { href: "#", onclick: (e) => { e.preventDefault(); showVersion(v); } }, v.version)),
    h("td", {}, splitsText(v.splits)), h("td", {}, String(v.row_count ?? "")), h("td", {}, fmtTime(v.created_at))));
  replace(root, h("h1", {}, `${kind}: `, a.name), h("a", { href: "#/registry/" + kind }, "← registry"),
    h("table", { class: "grid" }, h("thead", {}, h("tr", {}, ["version", "rows per split", "rows", "pushed"].map((x) => h("th", {}, x)))), h("tbody", {}, rows)),
    detail);
  function showVersion(v) {
    const preview = h("div", { "data-testid": "preview" });
    const splitSel = h("select", { "data-testid": "split-select" }, Object.keys((v.manifest && v.manifest.splits) || {}).map((s) => h("option", { value: s }, s)));
    const btn = h("button", { "data-testid": "preview-btn" }, "Show first rows");
    btn.addEventListener("click", () => previewSplit(kind, a.name, v, splitSel.value, preview));
    replace(detail, h("h2", {}, `${a.name}@${v.version}`),
      kind === "datasets" ? h("div", { class: "filters" }, splitSel, btn) : null, preview,
      h("h3", {}, "manifest"), jsonBlock(v.manifest, "manifest"));
  }
  if (a.versions.length) showVersion(a.versions[0]);
}

// The first rows of a split: the version's archive is fetched (with the key), unpacked in the page (tar,
// gzip through DecompressionStream), and the split's first file's first rows shown as text.
async function previewSplit(kind, name, v, split, out) {
  replace(out, h("p", { class: "muted" }, "loading…"));
  try {
    let buf = new Uint8Array(await bytes(`${artPath(kind)}/${enc(name)}/${enc(v.version)}/download`));
    if (buf[0] === 0x1f && buf[1] === 0x8b) {
      const ds = new Blob([buf]).stream().pipeThrough(new DecompressionStream("gzip"));
      buf = new Uint8Array(await new Response(ds).arrayBuffer());
    }
    const files = untar(buf);
    const want = ((v.manifest.splits || {})[split] || [])[0];
    const f = files.find((x) => x.name === want || x.name.replace(/^\.\//, "") === want || x.name.endsWith("/" + want));
    if (!f) { replace(out, h("p", { class: "bad" }, `file ${want} not in the archive`)); return; }
    const text = new TextDecoder().decode(f.data);
    let rows;
    if (want.endsWith(".json")) rows = JSON.parse(text).slice(0, 10).map((r) => JSON.stringify(r));
    else rows = text.split("\n").filter((l) => l.trim()).slice(0, want.endsWith(".csv") ? 11 : 10);
    replace(out, h("p", { class: "muted" }, `${split}: ${want}, first ${rows.length} rows`),
      h("ol", { class: "rows", "data-testid": "preview-rows" }, rows.map((r) => h("li", {}, h("code", {}, r)))));
  } catch (e) {
    replace(out, h("p", { class: "bad" }, e.message));
  }
}

// A ustar reader: [{name, data}] of the regular files.
function untar(b) {
  const out = [];
  const str = (o, n) => new TextDecoder().decode(b.subarray(o, o + n)).replace(/\0.*$/s, "");
  let off = 0, longName = null;
  while (off + 512 <= b.length) {
    if (b[off] === 0) break;
    let name = str(off, 100);
    const prefix = str(off + 345, 155);
    if (prefix) name = prefix + "/" + name;
    const size = parseInt(str(off + 124, 12).trim() || "0", 8);
    const type = String.fromCharCode(b[off + 156] || 48);
    const data = b.subarray(off + 512, off + 512 + size);
    if (type === "L") longName = new TextDecoder().decode(data).replace(/\0.*$/s, "");
    else {
      if (type === "0" || type === "\0") out.push({ name: (longName || name).replace(/^\.\//, ""), data });
      longName = null;
    }
    off += 512 + Math.ceil(size / 512) * 512;
  }
  return out;
}

// ---- model catalog ----

export async function modelsPage(root, params) {
  const q = new URLSearchParams(params);
  const input = h("input", { name: "query", placeholder: "search", value: q.get("query") || "" });
  const form = h("form", { class: "filters" }, input, h("button", { type: "submit" }, "Search"));
  form.addEventListener("submit", (e) => { e.preventDefault(); location.hash = "#/models?query=" + enc(input.value); });
  const tbody = h("tbody", { "data-testid": "models-body" });
  replace(root, h("h1", {}, "Model catalog"), form,
    h("table", { class: "grid" }, h("thead", {}, h("tr", {}, ["id", "family", "size (B)", "context", "algorithms"].map((x) => h("th", {}, x)))), tbody));
  const aq = new URLSearchParams({ limit: "100" });
  if (q.get("query")) aq.set("query", q.get("query"));
  const r = await get("/api/v1/training/catalog?" + aq.toString());
  if (!r.models.length) tbody.appendChild(h("tr", {}, h("td", { colspan: "5", class: "muted" }, "no models: put one under the models dir (lathe model init-tiny DIR)")));
  for (const m of r.models) {
    tbody.appendChild(h("tr", { "data-testid": "model-row" },
      h("td", {}, h("a", { href: "#/new?model=" + enc(m.tinker_id) }, m.tinker_id)), h("td", {}, m.family), h("td", {}, fmtNum(m.size_b)),
      h("td", {}, String(m.context_length)), h("td", {}, (m.supported_algorithms || []).join(", "))));
  }
}
