// chart.js: hand-written SVG line charts (no library): one chart per metric, any number of series (the
// compare view overlays jobs). Points are appended as they stream in and the chart redraws at most once a
// frame. A series longer than the plot is wide in pixels is drawn from its min and max per pixel column,
// so 10,000 points cost one polyline of ~1,000 vertices. All labels are text nodes.

import { s, h, clear, fmtNum } from "./dom.js";

const W = 560, H = 220, L = 56, R = 12, T = 12, B = 28;
export const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#db2777", "#65a30d"];

export class LineChart {
  constructor(title, testid) {
    this.series = []; // {name, xs, ys, color}
    this.svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img", "aria-label": title });
    this.count = h("span", { class: "chart-count" });
    this.legend = h("div", { class: "legend" });
    this.el = h("figure", { class: "chart", "data-testid": testid, "data-points": "0" },
      h("figcaption", {}, h("span", { class: "chart-title" }, title), this.count), this.svg, this.legend);
    this.pending = false;
    this.draw();
  }

  // Replaces the series of name (or adds it).
  set(name, xs, ys, color) {
    let sr = this.series.find((x) => x.name === name);
    if (!sr) {
      sr = { name, xs: [], ys: [], color: color || COLORS[this.series.length % COLORS.length] };
      this.series.push(sr);
    }
    sr.xs = xs.slice();
    sr.ys = ys.slice();
    this.schedule();
  }

  // Appends one point to series name (ignored when x is not after the last x).
  push(name, x, y) {
    let sr = this.series.find((v) => v.name === name);
    if (!sr) { this.set(name, [], []); sr = this.series[this.series.length - 1]; }
    if (sr.xs.length && x <= sr.xs[sr.xs.length - 1]) return;
    sr.xs.push(x);
    sr.ys.push(y);
    this.schedule();
  }

  points() { return this.series.reduce((a, sr) => a + sr.xs.length, 0); }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.draw(); });
  }

  draw() {
    const n = this.points();
    this.el.setAttribute("data-points", String(n));
    this.count.textContent = n ? ` (${n} point${n === 1 ? "" : "s"})` : "";
    clear(this.svg);
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (const sr of this.series) {
      for (let i = 0; i < sr.xs.length; i++) {
        const x = sr.xs[i], y = sr.ys[i];
        if (!isFinite(y)) continue;
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
    }
    const pw = W - L - R, ph = H - T - B;
    this.svg.appendChild(s("rect", { x: L, y: T, width: pw, height: ph, class: "plot" }));
    if (!isFinite(x0)) {
      this.svg.appendChild(s("text", { x: L + pw / 2, y: T + ph / 2, class: "empty", "text-anchor": "middle" },
        "no points yet"));
      this.drawLegend();
      return;
    }
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) { y1 += Math.abs(y1) * 0.05 || 1; y0 -= Math.abs(y0) * 0.05 || 1; }
    const pad = (y1 - y0) * 0.05;
    y0 -= pad; y1 += pad;
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * pw, sy = (y) => T + ph - ((y - y0) / (y1 - y0)) * ph;
    // x ticks: every step when the range is short, else five evenly spaced
    const span = x1 - x0, xt = [];
    if (span <= 8) for (let x = Math.ceil(x0); x <= x1; x++) xt.push(x);
    else for (let i = 0; i <= 4; i++) xt.push(Math.round(x0 + (span * i) / 4));
    xt.forEach((xv, i) => {
      const anchor = xt.length > 1 && i === 0 ? "start" : xt.length > 1 && i === xt.length - 1 ? "end" : "middle";
      this.svg.appendChild(s("text", { x: sx(xv), y: H - 8, "text-anchor": anchor, class: "tick" }, fmtNum(xv)));
    });
    for (let i = 0; i <= 4; i++) {
      const yv = y0 + ((y1 - y0) * i) / 4, yy = sy(yv);
      this.svg.appendChild(s("line", { x1: L, x2: L + pw, y1: yy, y2: yy, class: "grid" }));
      this.svg.appendChild(s("text", { x: L - 4, y: yy + 4, "text-anchor": "end", class: "tick" }, fmtNum(+yv.toPrecision(3))));
    }
    for (const sr of this.series) {
      const pts = decimate(sr.xs, sr.ys, sx, sy, pw);
      this.svg.appendChild(s("polyline", { points: pts, fill: "none", stroke: sr.color, "stroke-width": 1.6,
        class: "line" }));
      if (sr.xs.length && sr.xs.length <= 60) {
        for (let i = 0; i < sr.xs.length; i++) {
          if (isFinite(sr.ys[i])) {
            this.svg.appendChild(s("circle", { cx: sx(sr.xs[i]).toFixed(1), cy: sy(sr.ys[i]).toFixed(1), r: 2,
              fill: sr.color }));
          }
        }
      }
    }
    this.drawLegend();
  }

  drawLegend() {
    clear(this.legend);
    if (this.series.length < 2) return;
    for (const sr of this.series) {
      const sw = s("svg", { width: 12, height: 12, class: "swatch" }, s("rect", { width: 12, height: 12, fill: sr.color }));
      this.legend.appendChild(h("span", { class: "legend-item" }, sw, sr.name));
    }
  }
}

// The polyline's points: every point when they fit, else the first, min, max and last per pixel column.
function decimate(xs, ys, sx, sy, pw) {
  const out = [];
  const n = xs.length;
  if (n <= pw * 2) {
    for (let i = 0; i < n; i++) if (isFinite(ys[i])) out.push(sx(xs[i]).toFixed(1) + "," + sy(ys[i]).toFixed(1));
    return out.join(" ");
  }
  let col = -1, lo = 0, hi = 0, first = 0, last = 0;
  const flush = () => {
    if (col < 0) return;
    for (const y of [first, lo, hi, last]) out.push(col + "," + sy(y).toFixed(1));
  };
  for (let i = 0; i < n; i++) {
    const y = ys[i];
    if (!isFinite(y)) continue;
    const c = Math.round(sx(xs[i]));
    if (c !== col) {
      flush();
      col = c; lo = hi = first = last = y;
    } else {
      if (y < lo) lo = y;
      if (y > hi) hi = y;
      last = y;
    }
  }
  flush();
  return out.join(" ");
}
