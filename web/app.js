// app.js: the dashboard's shell: the header (navigation, org and workspace pickers from the key's
// memberships, sign-out) and the router. Pages are addressed by the URL's #fragment (#/jobs, #/job/<id>,
// #/compare?ids=a,b, #/registry/datasets, #/artifact/<kind>/<name>, #/models, #/new), so the server serves
// one page and the key never appears in a URL.

import { h, replace, clear } from "./dom.js";
import { session, me, get, enc, orgRole, canWrite } from "./api.js";
import { signinPage, jobsPage, comparePage, registryPage, artifactPage, modelsPage } from "./pages.js";
import { jobPage } from "./job.js";
import { createPage } from "./forms.js";

const header = document.getElementById("top");
const root = document.getElementById("app");
let cleanup = null;
let headerGen = 0; // renderHeader calls may overlap: only the latest one fills the header

function signOut() {
  session.clear();
  headerGen++;
  clear(header);
  location.hash = "#/signin";
  route();
}

async function renderHeader() {
  const gen = ++headerGen;
  const brand = h("a", { href: "#/jobs", class: "brand" }, "lathe");
  if (!session.key) { replace(header, brand); return; }
  const u = await me();
  const orgSel = h("select", { "data-testid": "org-picker", "aria-label": "organization" },
    (u.orgs || []).map((o) => h("option", { value: o.key, selected: o.key === session.org }, `${o.name || o.key} (${o.role})`)));
  const wsSel = h("select", { "data-testid": "ws-picker", "aria-label": "workspace" });
  async function loadWs() {
    clear(wsSel);
    try {
      const r = await get(`/api/v1/org/${enc(session.org)}/workspaces`);
      for (const w of r.items || []) wsSel.appendChild(h("option", { value: w.key, selected: w.key === session.ws }, w.name || w.key));
    } catch (_) { wsSel.appendChild(h("option", { value: session.ws }, session.ws)); }
  }
  orgSel.addEventListener("change", async () => {
    session.set(undefined, orgSel.value, "main");
    await loadWs();
    session.set(undefined, undefined, wsSel.value);
    route();
  });
  wsSel.addEventListener("change", () => { session.set(undefined, undefined, wsSel.value); route(); });
  await loadWs();
  const role = orgRole(u, session.org);
  const nav = h("nav", { class: "main-nav" },
    [["#/jobs", "Jobs"], ["#/compare", "Compare"], ["#/registry/datasets", "Registry"], ["#/models", "Models"]]
      .map(([href, t]) => h("a", { href }, t)),
    canWrite(u) ? h("a", { href: "#/new", "data-testid": "nav-new" }, "New job") : null);
  if (gen !== headerGen) return;
  replace(header, brand, nav, h("span", { class: "spacer" }), orgSel, wsSel,
    h("span", { class: "who", "data-testid": "who" }, `${u.email} · ${role || "no role"}`),
    h("button", { class: "small", "data-testid": "signout", onclick: signOut }, "Sign out"));
}

async function route() {
  if (cleanup) { try { cleanup(); } catch (_) { /* ignore */ } cleanup = null; }
  const setCleanup = (f) => { cleanup = f; };
  const frag = location.hash.replace(/^#\/?/, "");
  const [path, query] = frag.split("?");
  const parts = path.split("/").map(decodeURIComponent);
  if (!session.key || parts[0] === "signin") {
    clear(header);
    signinPage(root, () => {
      if (location.hash === "#/jobs") route();
      else location.hash = "#/jobs";
    });
    return;
  }
  try {
    if (!header.firstChild || headerGen === 0) await renderHeader();
    switch (parts[0]) {
      case "job": await jobPage(root, parts[1], setCleanup); break;
      case "compare": await comparePage(root, query || ""); break;
      case "registry": await registryPage(root, parts[1]); break;
      case "artifact": await artifactPage(root, parts[1], parts.slice(2).join("/")); break;
      case "models": await modelsPage(root, query || ""); break;
      case "new": await createPage(root, query || ""); break;
      default: await jobsPage(root, query || "", setCleanup);
    }
  } catch (e) {
    if (e.status === 401) { signOut(); return; }
    replace(root, h("div", { class: "card bad", "data-testid": "page-error" }, e.message));
  }
}

window.addEventListener("hashchange", route);
route();
