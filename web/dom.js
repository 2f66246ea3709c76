// dom.js: the only way the dashboard builds DOM. Every string becomes a text node (createTextNode /
// textContent): nothing from the API is ever parsed as HTML, so a job named <img src=x onerror=...> or a log
// line with markup renders as the characters it is. There is no innerHTML anywhere in web/.

const SVG_NS = "http://www.w3.org/2000/svg";

// Attributes h() accepts. href is checked: only in-app "#..." links and same-origin paths.
const SAFE_ATTRS = new Set([
  "class", "id", "type", "name", "value", "placeholder", "for", "title", "disabled", "checked",
  "selected", "min", "max", "step", "rows", "colspan", "role", "aria-label", "autocomplete",
  "data-testid", "data-field", "data-points", "data-status", "href", "download", "multiple", "required",
]);

function setAttr(el, k, v) {
  if (v === undefined || v === null || v === false) return;
  if (k.startsWith("on") && typeof v === "function") {
    el.addEventListener(k.slice(2), v);
    return;
  }
  if (!SAFE_ATTRS.has(k)) throw new Error("dom: attribute not allowed: " + k);
  if (k === "href" && !(String(v).startsWith("#") || String(v).startsWith("/"))) {
    throw new Error("dom: href must be an in-app link");
  }
  el.setAttribute(k, v === true ? "" : String(v));
}

function append(el, c) {
  if (c === undefined || c === null || c === false) return;
  if (Array.isArray(c)) {
    for (const x of c) append(el, x);
  } else if (c instanceof Node) {
    el.appendChild(c);
  } else {
    el.appendChild(document.createTextNode(String(c)));
  }
}

// h("div", {class: "x"}, "text", child, [more]) -> an element.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) setAttr(el, k, v);
  append(el, children);
  return el;
}

// An SVG element; attribute values are set as attributes (never markup).
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function replace(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

// Short helpers for formatting API values as text.
export function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toISOString().replace("T", " ").slice(0, 19);
}

export function fmtNum(v) {
  if (v === null || v === undefined) return "";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  if (a >= 1000 && a < 1e9) return String(Math.round(v));
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(3) : v.toPrecision(4).replace(/\.?0+$/, "");
}

export function fmtDuration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "";
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "";
  const u = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + u[i];
}

// A pretty-printed JSON block (as text).
export function jsonBlock(v, testid) {
  return h("pre", { class: "json", "data-testid": testid }, JSON.stringify(v, null, 2));
}
