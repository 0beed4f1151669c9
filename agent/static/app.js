// edge-agent status page: polls /api/status and draws each source's score plot (SVG).
"use strict";
(function () {
  const POLL_MS = 3000;
  const HOUR = 3600;
  const SVG = "http://www.w3.org/2000/svg";
  const series = {}; // source id -> [[t, score], ...] (max per resolution step)

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs) e.setAttribute(k, String(attrs[k]));
    return e;
  }
  function num(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    if (typeof v !== "number") return String(v);
    const d = digits === undefined ? 3 : digits;
    if (v !== 0 && (Math.abs(v) >= 1e5 || Math.abs(v) < 1e-3)) return v.toExponential(2);
    if (d === 0) return String(Math.round(v));
    return v.toFixed(d).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "");
  }
  function bytes(n) {
    if (typeof n !== "number") return "–";
    const u = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
    return n.toFixed(i ? 1 : 0) + " " + u[i];
  }
  function dur(s) {
    if (typeof s !== "number") return "–";
    if (s < 90) return s.toFixed(s < 10 ? 1 : 0) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " d";
  }
  function time(t) {
    return typeof t === "number" ? new Date(t * 1000).toLocaleTimeString() : "–";
  }
  function dl(target, rows) {
    const box = $(target);
    box.replaceChildren();
    for (const [k, v] of rows) {
      box.append(el("dt", "", k), el("dd", "", v));
    }
  }

  function overview(s) {
    const g = s.gateway;
    $("gateway-id").textContent = g.id;
    document.title = g.id + " · edge-agent";
    $("version").textContent = "edge-agent " + g.version + " on " + g.hostname;
    $("clock").textContent = new Date(g.clock * 1000).toLocaleString();
    $("uptime").textContent = "up " + dur(g.uptime_s);
    const h = $("health");
    h.textContent = s.health.status === "ok" ? "healthy" : "STALLED";
    h.className = "badge " + (s.health.status === "ok" ? "ok" : "bad");
    const r = $("health-reasons");
    r.hidden = s.health.status === "ok";
    r.textContent = s.health.reasons.join("; ");
    const b = s.buffer;
    dl("buffer", [["unsent rows", num(b.rows_queued_total, 0)],
      ["oldest unsent", dur(b.oldest_unsent_age_s)], ["file", bytes(b.file_bytes)],
      ["dropped", num(b.dropped_total, 0)], ["quarantined", num(b.quarantined, 0)]]);
    const y = s.sync;
    dl("sync", [["state", y.state], ["last success", time(y.last_success)],
      ["lag", dur(y.lag_s)], ["rows sent", num(y.rows_sent, 0)],
      ["last error", y.last_error || "none"]]);
    const m = s.mqtt;
    const mrows = [["state", m.state]];
    for (const k in m) {
      if (k !== "state" && (typeof m[k] === "number" || typeof m[k] === "string")) {
        mrows.push([k.replace(/_/g, " "), typeof m[k] === "number" ? num(m[k]) : m[k]]);
      }
    }
    dl("mqtt", mrows.slice(0, 6));
    const d = g.disk;
    const rows = [["disk free", d.free_bytes !== undefined ? bytes(d.free_bytes) + " of " +
      bytes(d.total_bytes) : d.error]];
    dl("models", rows);
    const box = $("models");
    for (const src of s.sources) {
      box.append(el("dt", "wide", src.id), el("dd", "wide", src.model || "no model"));
    }
  }

  function ticks(span) {
    const steps = [10, 30, 60, 120, 300, 600, 900];
    const step = steps.find((st) => span / st <= 5) || 900;
    const out = [];
    for (let a = 0; a <= span + 1e-6; a += step) out.push(a);
    return out;
  }
  function ago(a) {
    if (a === 0) return "now";
    return a < 120 ? "-" + a + " s" : "-" + Math.round(a / 60) + " min";
  }

  function plot(src, box) {
    // Narrow screens get a narrower drawing so its labels stay readable when scaled down.
    const W = window.innerWidth < 640 ? 360 : 600, H = W < 600 ? 190 : 170;
    const L = 40, R = 8, T = 8, B = 20;
    const now = Date.now() / 1000;
    const all = (series[src.id] || []).filter((p) => p[0] >= now - HOUR);
    // The last hour, or since the first point when the agent has run for less (min 2 min).
    const span = Math.min(HOUR, Math.max(120, all.length ? now - all[0][0] : 120));
    const t0 = now - span;
    const pts = all.filter((p) => p[0] >= t0);
    const thr = typeof src.threshold === "number" ? src.threshold : null;
    let ymax = thr !== null ? thr * 1.5 : 1;
    for (const p of pts) ymax = Math.max(ymax, p[1] * 1.1);
    const ymin = Math.min(0, ...pts.map((p) => p[1]));
    const x = (t) => L + (W - L - R) * (t - t0) / span;
    const y = (v) => T + (H - T - B) * (1 - (v - ymin) / (ymax - ymin || 1));
    const s = svg("svg", { viewBox: "0 0 " + W + " " + H, class: "plot", role: "img",
      "aria-label": "anomaly score of " + src.id + " over the last " + Math.round(span / 60) + " min" });
    for (const a of src.alarms || []) {
      const xa = x(Math.max(a.start, t0)), xb = x(a.end === null ? now : a.end);
      if (xb > L) s.append(svg("rect", { class: "alarm", x: xa, y: T, width: Math.max(1, xb - xa),
        height: H - T - B }));
    }
    for (const a of ticks(span)) {
      const xx = x(now - a);
      s.append(svg("line", { class: "grid", x1: xx, x2: xx, y1: T, y2: H - B }));
      const lab = svg("text", { x: xx, y: H - 6, "text-anchor": a === 0 ? "end" : a >= span - 1 ? "start" : "middle" });
      lab.textContent = ago(a);
      s.append(lab);
    }
    for (const v of [ymin, (ymin + ymax) / 2, ymax]) {
      const lab = svg("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end" });
      lab.textContent = num(v, 2);
      s.append(lab);
    }
    if (thr !== null) {
      s.append(svg("line", { class: "thr", x1: L, x2: W - R, y1: y(thr), y2: y(thr) }));
      const lab = svg("text", { class: "thr-label", x: W - R - 2, y: y(thr) - 3, "text-anchor": "end" });
      lab.textContent = "threshold " + num(thr, 3);
      s.append(lab);
    }
    if (pts.length) {
      const d = pts.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" ");
      s.append(svg("polyline", { class: "line", points: d }));
    }
    box.append(s);
  }

  function features(f, box) {
    if (!f || !f.rows.length) return;
    box.append(el("h3", "", "Latest features vs. training range" + (f.model ? " (" + f.model + ")" : "")));
    const wrap = el("div", "scroll"), t = el("table");
    const head = el("tr");
    for (const h of ["feature", "value", "training range", ""]) head.append(el("th", "", h));
    t.append(head);
    for (const r of f.rows.slice(0, 8)) {
      const tr = el("tr", r.outside ? "outside" : "");
      tr.append(el("td", "", r.name), el("td", "num", num(r.value)));
      tr.append(el("td", "", r.lo === undefined ? "–" : num(r.lo) + " … " + num(r.hi)));
      const cell = el("td");
      if (r.lo !== undefined) {
        const lo = Math.min(r.lo, r.value), hi = Math.max(r.hi, r.value), w = (hi - lo) || 1;
        const bar = el("div", "range"), inr = el("div", "in"), mark = el("div", r.outside ? "mark out" : "mark");
        inr.style.left = (100 * (r.lo - lo) / w) + "%";
        inr.style.width = (100 * (r.hi - r.lo) / w) + "%";
        mark.style.left = "calc(" + (100 * (r.value - lo) / w) + "% - 1px)";
        bar.append(inr, mark);
        cell.append(bar);
      }
      tr.append(cell);
      t.append(tr);
    }
    wrap.append(t);
    box.append(wrap);
  }

  function alerts(src, box) {
    box.append(el("h3", "", "Alerts"));
    const ul = el("ul", "alerts");
    if (!src.alerts.length) ul.append(el("li", "muted", "none in this session"));
    for (const a of src.alerts.slice(0, 6)) {
      const li = el("li", a.kind === "anomaly_raised" ? "raised" : "");
      const d = a.details || {};
      li.append(el("span", "", time(a.timestamp) + " " + a.kind.replace(/_/g, " ") +
        (typeof d.score === "number" ? " (score " + num(d.score) + ")" : "")));
      const diag = d.diagnosis || d.fault;
      if (diag) li.append(el("span", "diag", typeof diag === "string" ? diag :
        (diag.label || diag.kind || diag.fault || JSON.stringify(diag))));
      ul.append(li);
    }
    box.append(ul);
  }

  function source(src) {
    const card = el("section", "card source" + (src.alarm ? " alarm" : ""));
    card.dataset.source = src.id;
    const head = el("div", "source-head");
    head.append(el("h2", "", src.id));
    head.append(el("span", "badge " + (src.alarm ? "bad" : "ok"), src.alarm ? "ALARM" : "normal"));
    const conn = src.connected === null ? "unknown" : src.connected ? "connected" : "disconnected";
    head.append(el("span", "badge " + (src.connected ? "ok" : "warn"), conn));
    card.append(head);
    const sc = el("div", "score" + (src.alarm ? " over" : ""), num(src.score));
    sc.append(el("small", "", " score · threshold " + num(src.threshold) + " · " + (src.model || "no model")));
    card.append(sc);
    if (src.active_alert) {
      const d = src.active_alert.details || {};
      const diag = d.diagnosis || d.fault;
      card.append(el("p", "banner", "Alarm raised " + time(src.active_alert.timestamp) +
        (diag ? ": " + (typeof diag === "string" ? diag : (diag.label || diag.kind || JSON.stringify(diag))) : "")));
    }
    if (src.broken) card.append(el("p", "banner", src.broken));
    plot(src, card);
    const h = src.health || {};
    const errs = Object.entries(h.errors || {}).map(([k, v]) => k + " " + v).join(", ") || "none";
    const info = el("dl");
    for (const [k, v] of [["driver", (src.driver || "–") + " (" + (h.kind || "?") + ")"],
      ["reads/s", num(h.reads_per_s, 2)], ["errors", errs],
      ["bad points", Object.keys(h.bad_points || {}).length],
      ["windows", num(src.windows, 0) + " (" + num(src.anomalous_windows, 0) + " anomalous)"]]) {
      info.append(el("dt", "", k), el("dd", "", v));
    }
    card.append(el("h3", "", "Source"), info);
    const vals = Object.entries(src.values || {});
    if (vals.length) {
      card.append(el("h3", "", "Latest values"));
      const vt = el("dl");
      for (const [k, v] of vals) vt.append(el("dt", "", k), el("dd", "", num(v)));
      card.append(vt);
    }
    features(src.features, card);
    alerts(src, card);
    return card;
  }

  async function getJSON(url) {
    const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    if (r.status === 401) { window.location.assign("/login"); throw new Error("login needed"); }
    if (!r.ok) throw new Error(url + ": HTTP " + r.status);
    return r.json();
  }

  async function scores(src) {
    const have = series[src.id] || [];
    const since = have.length ? have[have.length - 1][0] : Date.now() / 1000 - HOUR;
    const r = await getJSON("/api/sources/" + encodeURIComponent(src.id) + "/scores?since=" + since);
    const kept = have.filter((p) => p[0] < since && p[0] >= r.now - HOUR);
    series[src.id] = kept.concat(r.points);
  }

  async function tick() {
    try {
      const s = await getJSON("/api/status");
      await Promise.all(s.sources.map(scores));
      overview(s);
      $("sources").replaceChildren(...s.sources.map(source));
      $("error").hidden = true;
    } catch (e) {
      $("error").hidden = false;
      $("error").textContent = "Cannot reach the agent: " + e.message;
    }
    window.setTimeout(tick, POLL_MS);
  }
  tick();
})();
