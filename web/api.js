// api.js: the dashboard's client of the public API (docs/api.md). The key lives in the tab's sessionStorage
// and travels only in the X-API-Key header: never in a URL, so it is in no history, log or Referer. The
// event stream is read with fetch() (EventSource cannot send headers) and parsed here; downloads are
// fetched with the header and handed to the browser as a blob: URL.

const KEY = "lathe.key", ORG = "lathe.org", WS = "lathe.ws";

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  get org() { return sessionStorage.getItem(ORG) || "default"; },
  get ws() { return sessionStorage.getItem(WS) || "main"; },
  set(key, org, ws) {
    if (key !== undefined) sessionStorage.setItem(KEY, key);
    if (org !== undefined) sessionStorage.setItem(ORG, org);
    if (ws !== undefined) sessionStorage.setItem(WS, ws);
  },
  clear() { sessionStorage.clear(); user = null; },
};

let user = null; // GET /api/v1/user of the current key, cached

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || "HTTP " + status);
    this.status = status;
    this.body = body || {};
    this.errors = (body && body.errors) || [];
  }
}

function headers(extra) {
  const h = { Accept: "application/json", ...extra };
  if (session.key) h["X-API-Key"] = session.key;
  return h;
}

export async function api(method, path, body) {
  const init = { method, headers: headers(body !== undefined ? { "Content-Type": "application/json" } : {}) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const r = await fetch(path, init);
  if (r.status === 204) return null;
  let j = null;
  try { j = await r.json(); } catch (_) { j = null; }
  if (!r.ok) throw new ApiError(r.status, j);
  return j;
}

export const get = (p) => api("GET", p);

// The caller, with the role in each org. Cached until sign-out.
export async function me(refresh) {
  if (!user || refresh) user = await get("/api/v1/user");
  return user;
}

export function orgRole(u, org) {
  const o = ((u && u.orgs) || []).find((x) => x.key === org);
  return o ? o.role : null;
}

// Whether the key may create, cancel, retry and delete jobs here: a contributor or owner whose key has the
// training:write scope.
export function canWrite(u) {
  const role = orgRole(u, session.org);
  const scopes = (u && u.api_key && u.api_key.scopes) || [];
  return (role === "owner" || role === "contributor") && scopes.includes("training:write");
}

export const enc = encodeURIComponent;
export const jobsPath = () => `/api/v1/org/${enc(session.org)}/ws/${enc(session.ws)}/training/jobs`;
export const jobPath = (id) => `${jobsPath()}/${enc(id)}`;
export const artPath = (kind) => `/api/v1/org/${enc(session.org)}/${kind}`;

// Downloads path with the key in a header and saves it as filename.
export async function download(path, filename) {
  const r = await fetch(path, { headers: headers({ Accept: "*/*" }) });
  if (!r.ok) {
    let j = null;
    try { j = await r.json(); } catch (_) { /* not JSON */ }
    throw new ApiError(r.status, j);
  }
  const url = URL.createObjectURL(await r.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// Fetches bytes (with the key) as an ArrayBuffer.
export async function bytes(path) {
  const r = await fetch(path, { headers: headers({ Accept: "*/*" }) });
  if (!r.ok) throw new ApiError(r.status, null);
  return r.arrayBuffer();
}

// Follows a job's event stream (docs/jobs.md E11). on(event, data) gets snapshot, progress, log, heartbeat
// and end. A dropped connection is reopened after a short wait with ?after=<last log seq>, so no log line is
// lost or repeated, and the new snapshot carries the whole metric history. Returns {close()}; onState(s) is
// told "open", "retrying" and "closed".
export function follow(id, on, onState, after = -1) {
  let closed = false, lastSeq = after, ctl = null, delay = 500;
  async function once() {
    ctl = new AbortController();
    const q = lastSeq >= 0 ? `?after=${lastSeq}` : "";
    const r = await fetch(`${jobPath(id)}/events${q}`, {
      headers: headers({ Accept: "text/event-stream" }), signal: ctl.signal, cache: "no-store",
    });
    if (!r.ok) throw new ApiError(r.status, null);
    onState && onState("open");
    delay = 500;
    const rd = r.body.getReader(), dec = new TextDecoder();
    let buf = "", ended = false;
    for (;;) {
      const { value, done } = await rd.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let ev = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) ev = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        let d = null;
        try { d = data ? JSON.parse(data) : {}; } catch (_) { continue; }
        if (ev === "log" && typeof d.seq === "number") lastSeq = d.seq;
        if (ev === "end") ended = true;
        on(ev, d);
      }
    }
    return ended;
  }
  (async () => {
    while (!closed) {
      let ended = false;
      try {
        ended = await once();
      } catch (e) {
        if (closed) break;
        if (e instanceof ApiError && e.status < 500 && e.status !== 429) break;
      }
      if (ended || closed) break;
      onState && onState("retrying");
      await new Promise((res) => setTimeout(res, delay));
      delay = Math.min(delay * 2, 8000);
    }
    onState && onState("closed");
  })();
  return {
    close() { closed = true; if (ctl) ctl.abort(); },
    // Drops the connection as a network failure would (tests and the "reconnect" button use it).
    drop() { if (ctl) ctl.abort(); },
  };
}
