// The console page: polls the console server's JSON API and draws with uPlot and Cytoscape.js.
// Tests read window.consoleState (chart data, topology) and the data-* attributes it sets.
"use strict";

const S = {
  cfg: null, tab: "dashboard", timer: null, busy: false,
  charts: {},          // panel id -> uPlot
  panels: {},          // panel id -> {state, series: [{name, version, points}]}
  topology: null, cy: null, rollout: null, routes: null, quality: null,
  rolloutCharts: {},
};
window.consoleState = S;

const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g,
  (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));

async function api(path, opts = {}) {
  const init = {headers: {}, ...opts};
  if (opts.body !== undefined) {
    init.body = JSON.stringify(opts.body);
    init.headers["Content-Type"] = "application/json";
  }
  if (init.method && init.method !== "GET") init.headers["X-Console-Request"] = "1";
  const r = await fetch(path, init);
  let body = null;
  try { body = await r.json(); } catch (e) { body = {error: {message: `HTTP ${r.status}`}}; }
  if (!r.ok) throw new Error(body?.error?.message || `HTTP ${r.status}`);
  return body;
}

function colour(version) {
  return (S.cfg && S.cfg.colours[version]) || "#8e8e8e";
}

// ---- units (Grafana's unit ids used by the dashboard) ----------------------------------
function fmt(unit, v) {
  if (v === null || v === undefined || !isFinite(v)) return "–";
  switch (unit) {
    case "percentunit": return (v * 100).toFixed(Math.abs(v) < 0.1 ? 2 : 1) + "%";
    case "percent": return v.toFixed(1) + "%";
    case "s": return v < 1 ? (v * 1000).toFixed(v < 0.01 ? 2 : 0) + " ms" : v.toFixed(2) + " s";
    case "ms": return v < 1000 ? v.toFixed(v < 10 ? 1 : 0) + " ms" : (v / 1000).toFixed(2) + " s";
    case "p": return v < 0.001 ? v.toExponential(1) : v.toPrecision(2);
    case "reqps": return (v < 10 ? v.toFixed(2) : v.toFixed(0)) + " req/s";
    default: return Math.abs(v) >= 1000 ? (v / 1000).toFixed(1) + "k" :
      (Math.abs(v) < 10 ? +v.toFixed(2) : v.toFixed(0)) + "";
  }
}

// ---- tabs, controls, refresh loop -----------------------------------------------------
function selectedVersions() {
  const boxes = [...document.querySelectorAll("#versions input:checked")].map((b) => b.value);
  return boxes.includes("All") || boxes.length === 0 ? [] : boxes;
}

function showTab(name) {
  S.tab = name;
  for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("active", a.dataset.tab === name);
  for (const s of document.querySelectorAll("section.tab")) s.hidden = s.id !== `tab-${name}`;
  refresh();
}

function schedule() {
  clearInterval(S.timer);
  const secs = +$("#refresh").value;
  if (secs > 0) S.timer = setInterval(refresh, secs * 1000);
}

async function refresh() {
  if (S.busy) return;
  S.busy = true;
  try {
    if (S.tab === "dashboard") await refreshDashboard();
    else if (S.tab === "topology") await refreshTopology();
    else if (S.tab === "rollout") await refreshRollout();
    else if (S.tab === "quality") await refreshQuality();
    else if (S.tab === "routes") await refreshRoutes();
    $("#status").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.refreshed = String(Date.now());
  } catch (e) {
    $("#status").textContent = "error: " + e.message;
  } finally {
    S.busy = false;
  }
}

async function init() {
  S.cfg = await api("/api/config");
  const d = S.cfg.dashboard;
  $("#dash-title").textContent = "· " + d.title;
  const range = $("#range");
  if (![...range.options].some((o) => o.value === d.time.from)) {
    range.add(new Option(d.time.from, d.time.from));
  }
  range.value = d.time.from;
  const refreshSel = $("#refresh");
  const want = String(Math.round(S.cfg.refresh_s));
  if (![...refreshSel.options].some((o) => o.value === want)) refreshSel.add(new Option(want + " s", want));
  refreshSel.value = want;
  const vs = $("#versions");
  vs.innerHTML = [`<label><input type="checkbox" value="All" checked>All</label>`,
    ...S.cfg.versions.map((v) => `<label><input type="checkbox" value="${esc(v)}">` +
      `<span class="swatch" style="background:${colour(v)}"></span>${esc(v)}</label>`)].join("");
  vs.addEventListener("change", (ev) => {
    const all = vs.querySelector('input[value="All"]');
    if (ev.target.value === "All" && ev.target.checked) {
      for (const b of vs.querySelectorAll("input")) if (b !== all) b.checked = false;
    } else if (ev.target.checked) all.checked = false;
    refresh();
  });
  $("#dash-title").title = `dashboard ${S.cfg.dashboard_file}\nPrometheus ` +
    `${S.cfg.prometheus_url || "none"}\nadmin API ${S.cfg.admin_url || "none"}`;
  if (S.cfg.warning) { $("#warning").hidden = false; $("#warning").textContent = S.cfg.warning; }
  range.addEventListener("change", refresh);
  refreshSel.addEventListener("change", schedule);
  buildGrid(d.panels);
  for (const a of document.querySelectorAll("#tabs a")) {
    a.addEventListener("click", (ev) => { ev.preventDefault(); location.hash = a.dataset.tab; });
  }
  window.addEventListener("hashchange", () => showTab(location.hash.slice(1) || "dashboard"));
  $("#promote").addEventListener("click", () => rolloutAction("promote"));
  $("#abort").addEventListener("click", () => rolloutAction("abort"));
  $("#weights-form").addEventListener("submit", applyWeights);
  $("#canary-slider").addEventListener("input", sliderMoved);
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => {
      for (const [id, chart] of Object.entries(S.charts)) {
        const el = document.querySelector(`.panel[data-panel-id="${id}"]`);
        chart.setSize({width: Math.max(el.querySelector(".plot").clientWidth, 200),
          height: Math.max(el.clientHeight - 80, 100)});
      }
    }, 200);
  });
  schedule();
  showTab(location.hash.slice(1) || "dashboard");
}

// ---- dashboard -----------------------------------------------------------------------
function buildGrid(panels) {
  const grid = $("#grid");
  grid.innerHTML = "";
  for (const p of panels) {
    const g = p.gridPos || {x: 0, y: 0, w: 12, h: 8};
    const el = document.createElement("div");
    el.style.gridColumn = `${g.x + 1} / span ${g.w}`;
    el.style.gridRow = `${g.y + 1} / span ${g.h}`;
    if (p.type === "row") {
      el.className = "row-title";
      el.textContent = p.title;
    } else {
      el.className = "panel";
      el.dataset.panelId = p.id;
      el.dataset.state = "loading";
      el.innerHTML = `<h3 title="${esc(p.description)}">${esc(p.title)}</h3>` +
        `<div class="plot"></div><div class="nodata">loading…</div><div class="err"></div>`;
    }
    grid.appendChild(el);
  }
}

async function refreshDashboard() {
  const panels = S.cfg.dashboard.panels.filter((p) => p.type !== "row");
  const qs = new URLSearchParams({from: $("#range").value, to: "now"});
  for (const v of selectedVersions()) qs.append("version", v);
  await Promise.all(panels.map(async (p) => {
    const el = document.querySelector(`.panel[data-panel-id="${p.id}"]`);
    try {
      drawPanel(el, p, await api(`/api/panels/${p.id}?${qs}`));
    } catch (e) {
      el.dataset.state = "error";
      el.querySelector(".nodata").textContent = "error: " + e.message;
    }
  }));
}

const DASHES = [[], [6, 3], [2, 3], [10, 3, 2, 3]];

function drawPanel(el, panel, data) {
  const withPoints = data.series.filter((s) => s.points > 0);
  S.panels[panel.id] = {
    state: withPoints.length ? "data" : "nodata",
    series: data.series.map((s) => ({name: s.name, version: s.version, points: s.points})),
    error: data.error,
  };
  el.dataset.series = JSON.stringify(S.panels[panel.id].series);
  el.querySelector(".err").textContent = data.error || "";
  const plot = el.querySelector(".plot");
  if (!withPoints.length) {
    el.dataset.state = "nodata";
    const nodata = el.querySelector(".nodata");
    nodata.textContent = data.error ? "No data (" + data.error + ")" :
      "No data for these versions in this range";
    nodata.title = (data.queries || []).map((q) => `${q.refId}: ${q.expr}`).join("\n");
    if (S.charts[panel.id]) { S.charts[panel.id].destroy(); delete S.charts[panel.id]; }
    return;
  }
  el.dataset.state = "data";
  const refs = panel.targets.map((t) => t.refId);
  const perVersion = {};
  const seriesOpts = withPoints.map((s) => {
    const k = (perVersion[s.version] = (perVersion[s.version] ?? -1) + 1);
    const dash = DASHES[Math.max(refs.indexOf(s.refId), 0) % DASHES.length].length ?
      DASHES[Math.max(refs.indexOf(s.refId), 0) % DASHES.length] : DASHES[k % DASHES.length];
    return {label: s.name, stroke: colour(s.version), width: 1.6, dash,
      points: {show: s.points < 4, size: 4}, value: (u, v) => fmt(panel.unit, v), spanGaps: false};
  });
  const cols = [data.x, ...withPoints.map((s) => s.values)];
  const key = withPoints.map((s) => s.name).join("|");
  let chart = S.charts[panel.id];
  if (chart && chart._key === key) {
    chart.setData(cols);
    return;
  }
  if (chart) chart.destroy();
  const width = Math.max(plot.clientWidth, 200);
  const height = Math.max(el.clientHeight - 80, 100);
  chart = new uPlot({
    width, height, series: [{}, ...seriesOpts],
    axes: [{stroke: "#8e8e8e", grid: {stroke: "#2c3235"}},
      {stroke: "#8e8e8e", grid: {stroke: "#2c3235"}, size: 78,
        values: (u, vals) => vals.map((v) => fmt(panel.unit, v))}],
    scales: {y: {range: (u, min, max) => {
      const lo = Math.min(0, min);
      const hi = max > lo ? max * 1.1 : (panel.unit === "percentunit" ? 0.01 : 1);
      return [lo, hi];
    }}},
    legend: {live: false}, cursor: {drag: {x: false, y: false}},
  }, cols, plot);
  chart._key = key;
  S.charts[panel.id] = chart;
}

// ---- topology ------------------------------------------------------------------------
const HEALTH = {healthy: "#56a64b", degraded: "#ff9830", failure: "#e02f44", idle: "#6e6e6e",
  none: "#3d71d9"};

function edgeLabel(e) {
  if (e.kind === "mirror") return `mirror ${e.percent}%\n${e.rps.toFixed(2)} rps`;
  const parts = [`${e.rps.toFixed(2)} rps`,
    e.error_pct === null ? "– err" : `${e.error_pct.toFixed(1)}% err`];
  if (e.p95_ms !== null && e.p95_ms !== undefined) parts.push(`p95 ${fmt("ms", e.p95_ms)}`);
  if (e.weight !== null && e.weight !== undefined) parts.push(`weight ${+(+e.weight).toFixed(1)}%`);
  return parts.join("\n");
}

async function refreshTopology() {
  const t = await api("/api/topology");
  S.topology = t;
  if (S.cfg) Object.assign(S.cfg.colours, t.colours);
  $("#topo-window").textContent = t.window;
  $("#topo-errors").textContent = t.errors.join("; ");
  const versions = t.nodes.filter((n) => n.kind === "version");
  const pos = {client: {x: 80, y: 200}, gateway: {x: 330, y: 200}};
  versions.forEach((n, i) => {
    pos[n.id] = {x: 640, y: versions.length === 1 ? 200 : 60 + i * (280 / (versions.length - 1))};
  });
  const elements = [
    ...t.nodes.map((n) => ({group: "nodes", data: {id: n.id, label: n.label, kind: n.kind,
      health: n.health, fill: HEALTH[n.health] || HEALTH.idle,
      ring: n.kind === "version" ? colour(n.id) : "#8e8e8e"}, position: pos[n.id]})),
    ...t.edges.map((e) => ({group: "edges", data: {...e, label: edgeLabel(e),
      line: e.kind === "mirror" ? "#b877d9" : (e.target in pos && e.kind === "route") ?
        colour(e.target) : "#8e8e8e"}})),
  ];
  if (!S.cy) {
    S.cy = cytoscape({
      container: $("#cy"), elements, layout: {name: "preset"}, userZoomingEnabled: false,
      autoungrabify: true,
      style: [
        {selector: "node", style: {"background-color": "data(fill)", "border-color": "data(ring)",
          "border-width": 4, label: "data(label)", color: "#d8d9da", "font-size": 13,
          "text-valign": "bottom", "text-margin-y": 6, width: 44, height: 44}},
        {selector: 'node[kind = "gateway"]', style: {shape: "round-rectangle", width: 70}},
        {selector: 'node[kind = "client"]', style: {shape: "round-triangle"}},
        {selector: "edge", style: {width: 2, "line-color": "data(line)", "curve-style": "bezier",
          "control-point-step-size": 150,
          "target-arrow-shape": "triangle", "target-arrow-color": "data(line)",
          label: "data(label)", "font-size": 11, color: "#d8d9da", "text-wrap": "wrap",
          "text-background-color": "#181b1f", "text-background-opacity": 0.85,
          "text-background-padding": 2}},
        {selector: 'edge[kind = "mirror"]', style: {"line-style": "dashed"}},
      ],
    });
  } else {
    const ids = new Set(elements.map((e) => e.data.id));
    S.cy.elements().filter((e) => !ids.has(e.id())).remove();
    for (const el of elements) {
      const have = S.cy.getElementById(el.data.id);
      if (have.nonempty()) { have.data(el.data); if (el.position) have.position(el.position); }
      else S.cy.add(el);
    }
  }
  S.cy.fit(undefined, 30);
  const rows = t.edges.map((e) => `<tr data-edge-id="${esc(e.id)}" data-rps="${e.rps}" ` +
    `data-kind="${esc(e.kind)}"><td>${esc(e.source)} &rarr; ${esc(e.target)}</td>` +
    `<td>${esc(e.kind)}</td><td class="num">${e.rps.toFixed(2)}</td>` +
    `<td class="num">${e.error_pct === null || e.error_pct === undefined ? "–" :
      e.error_pct.toFixed(1) + "%"}</td><td class="num">${fmt("ms", e.p95_ms)}</td>` +
    `<td class="num">${e.kind === "mirror" ? e.percent + "% mirrored" :
      (e.weight === null || e.weight === undefined ? "–" : +(+e.weight).toFixed(1) + "%")}` +
    `</td></tr>`);
  $("#edges tbody").innerHTML = rows.join("");
}

// ---- rollout -------------------------------------------------------------------------
function timeChart(holder, key, title, series, cols, opts = {}) {
  let c = S.rolloutCharts[key];
  const sig = series.map((s) => s.label).join("|");
  if (c && c._key === sig) { c.setData(cols); return; }
  if (c) c.destroy();
  c = new uPlot({width: 520, height: 200, title, series: [{}, ...series],
    axes: [{stroke: "#8e8e8e", grid: {stroke: "#2c3235"}},
      {stroke: "#8e8e8e", grid: {stroke: "#2c3235"}}],
    scales: opts.scales || {}, legend: {live: false}}, cols, holder);
  c._key = sig;
  S.rolloutCharts[key] = c;
}

async function refreshRollout() {
  const r = await api("/api/rollout");
  S.rollout = r;
  const ro = r.rollout;
  const h = r.history;
  const canary = r.canary;
  const xs = h.map((p) => p.t);
  timeChart($("#weight-chart"), "weight", "", [{label: `${canary} weight %`,
    stroke: colour(canary), width: 2, paths: uPlot.paths.stepped({align: 1})}],
  [xs, h.map((p) => (p.weights ? p.weights[canary] ?? null : null))],
  {scales: {y: {range: [0, 100]}}});
  if (!ro) {
    $("#rollout-summary").innerHTML = `<p>No rollout recorded in <code>${esc(r.state_file)}` +
      `</code>. Start one with <code>vllm-canary rollout start STRATEGY.yaml</code>. ` +
      `Promote and Abort below act on the routes directly (all traffic to ${esc(canary)}, ` +
      `or all back to ${esc(r.stable)}).</p>`;
    $("#results tbody").innerHTML = "";
    $("#events tbody").innerHTML = "";
    return;
  }
  const step = ro.steps[ro.step];
  const stepText = step ? JSON.stringify(step) : "done";
  $("#rollout-summary").innerHTML = `<p><span class="badge ${esc(ro.phase)}" id="phase">` +
    `${esc(ro.phase)}</span> step <b id="step">${Math.min(ro.step + 1, ro.steps.length)}` +
    `/${ro.steps.length}</b> <code>${esc(stepText)}</code> · weights ` +
    `<b>${esc(JSON.stringify(ro.weights))}</b> · controller ` +
    `${ro.controller_alive ? "running" : "not running"}</p><p>${esc(ro.message)}</p>` +
    (ro.source_error ? `<p class="warning">${esc(ro.source_error)}</p>` : "");
  const holder = $("#evidence-charts");
  for (const [metric, ev] of Object.entries(ro.evidence)) {
    let card = holder.querySelector(`[data-metric="${CSS.escape(metric)}"]`);
    if (!card) {
      card = document.createElement("div");
      card.className = "card";
      card.dataset.metric = metric;
      card.innerHTML = `<h3>${esc(metric)}: evidence (log Bayes factor) vs abort boundary</h3>` +
        `<div class="chart"></div><div class="muted figs"></div>`;
      holder.appendChild(card);
    }
    card.querySelector(".figs").textContent = `now ${ev.log_bf.toFixed(2)}, max ` +
      `${ev.max_log_bf.toFixed(2)}, boundary ${ev.boundary.toFixed(2)} (p=${ev.p_value.toPrecision(2)}); ` +
      `${canary}: ${ev.events_canary}/${ev.requests_canary}, baseline ${ev.events_baseline}/` +
      `${ev.requests_baseline}`;
    const pts = h.filter((p) => p.evidence && p.evidence[metric]);
    timeChart(card.querySelector(".chart"), "ev-" + metric, "", [
      {label: "log BF", stroke: colour(canary), width: 2},
      {label: "boundary log(1/α)", stroke: "#e02f44", dash: [6, 4], width: 1.5}],
    [pts.map((p) => p.t), pts.map((p) => p.evidence[metric].log_bf),
      pts.map((p) => p.evidence[metric].boundary)]);
  }
  $("#results tbody").innerHTML = "<tr><th>metric</th><th>verdict</th><th>canary</th>" +
    "<th>baseline</th><th>samples</th><th>reason</th></tr>" + ro.results.map((x) =>
    `<tr><td>${esc(x.metric)}</td><td><span class="badge ${esc(x.verdict)}">${esc(x.verdict)}` +
    `</span></td><td class="num">${fmt("", x.canary)}</td><td class="num">${fmt("", x.baseline)}` +
    `</td><td class="num">${x.samples}</td><td>${esc(x.reason)}</td></tr>`).join("");
  $("#events tbody").innerHTML = ro.events.slice().reverse().map((e) =>
    `<tr><td>${new Date(e.at * 1000).toLocaleTimeString()}</td><td>${esc(e.phase)}</td>` +
    `<td>step ${e.step + 1}</td><td>${esc(e.message)}</td></tr>`).join("");
}

async function rolloutAction(action) {
  const what = action === "abort" ? `send all traffic back to ${S.cfg.stable}` :
    `send all traffic to ${S.cfg.canary}`;
  if (!window.confirm(`${action}: ${what}?`)) return;
  try {
    const r = await api(`/api/rollout/${action}`, {method: "POST", body: {}});
    $("#rollout-msg").textContent = r.via === "controller" ?
      `${action} requested from the controller (pid ${r.controller_pid})` :
      `${action}: weights now ${JSON.stringify(r.weights)}`;
  } catch (e) {
    $("#rollout-msg").textContent = `${action} failed: ${e.message}`;
  }
  refresh();
}

// ---- quality -------------------------------------------------------------------------
function ci(pair, unit = "") {
  if (!pair || pair[0] === null || pair[0] === undefined) return "";
  return ` [${fmt(unit, pair[0])}, ${fmt(unit, pair[1])}]`;
}

async function refreshQuality() {
  const q = await api("/api/quality");
  S.quality = q;
  const reports = q.reports.filter((r) => r.doc);
  if (!reports.length) {
    $("#quality-latest").innerHTML = `<p>No <code>decision.json</code> under ` +
      `<code>${esc(q.reports_dir)}</code> yet: run <code>vllm-canary evaluate</code>.</p>`;
    $("#quality-history tbody").innerHTML = "";
    return;
  }
  const last = reports[reports.length - 1];
  const d = last.doc, qd = d.quality || {};
  const scores = Object.entries(qd.scores || {}).map(([v, s]) =>
    `<tr><td><span class="swatch" style="background:${colour(v)}"></span>${esc(v)}</td>` +
    `<td class="num">${fmt("", s)}</td></tr>`).join("");
  const day = (r) => esc(r.name) + (r.doc.day && r.doc.day !== r.name ?
    ` <span class="muted">(samples of ${esc(r.doc.day)})</span>` : "");
  $("#quality-latest").innerHTML = `<h3>Latest: ${day(last)} ` +
    `<span class="badge ${esc(d.decision)}" id="decision">${esc(d.decision)}</span></h3>` +
    `<ul id="reasons">${(d.reasons || []).map((r) => `<li>${esc(r)}</li>`).join("")}</ul>` +
    `<table class="data"><tr><th>version</th><th>mean score</th></tr>${scores}</table>` +
    `<table class="data"><tr><td>score difference (${esc(d.candidate)} − ${esc(d.baseline)})` +
    `</td><td class="num">${qd.n_pairs ? `${fmt("", qd.score_diff)}${ci(qd.score_diff_ci)} ` +
      `(p=${fmt("p", qd.rating_pvalue)}, ${qd.n_pairs} pairs)` : "no ratings"}</td></tr>` +
    `<tr><td>win rate of ${esc(d.candidate)}</td><td class="num">${qd.n_decisive ?
      `${fmt("percentunit", qd.win_share)}${ci(qd.win_share_ci, "percentunit")} (p=` +
      `${fmt("p", qd.pairwise_pvalue)}, ${qd.n_decisive} decisive)` :
      "no pairwise judgements"}</td></tr></table>` +
    (last.has_html ? `<p><a href="/reports/${encodeURIComponent(last.name)}/report.html" ` +
      `target="_blank" rel="noopener">report.html</a></p>` : "");
  $("#quality-history tbody").innerHTML = "<tr><th>day</th><th>decision</th>" +
    "<th>score diff</th><th>win rate</th><th>reasons</th><th>report</th></tr>" +
    q.reports.slice().reverse().map((r) => r.doc ?
      `<tr><td>${day(r)}</td><td><span class="badge ${esc(r.doc.decision)}">` +
      `${esc(r.doc.decision)}</span></td><td class="num">${fmt("", r.doc.quality?.score_diff)}` +
      `${ci(r.doc.quality?.score_diff_ci)}</td><td class="num">` +
      `${fmt("percentunit", r.doc.quality?.win_share)}</td><td>` +
      `${esc((r.doc.reasons || []).join("; "))}</td><td>${r.has_html ?
        `<a href="/reports/${encodeURIComponent(r.name)}/report.html" target="_blank" ` +
        `rel="noopener">report.html</a>` : ""}</td></tr>` :
      `<tr><td>${esc(r.name)}</td><td colspan="5">${esc(r.error)}</td></tr>`).join("");
}

// ---- routes --------------------------------------------------------------------------
async function refreshRoutes() {
  const v = await api("/api/routes");
  S.routes = v;
  $("#routes-meta").textContent = `generation ${v.generation} · ${v.source || ""}` +
    (v.last_error ? ` · last error: ${v.last_error}` : "");
  $("#routes-table tbody").innerHTML = "<tr><th>virtual service</th><th>route</th>" +
    "<th>match</th><th>weights</th><th>mirror</th></tr>" + v.routes.map((r) => {
    const mirrors = v.mirrors.filter((m) => m.route === r.name)
      .map((m) => `${m.subset} ${m.percent}%`).join(", ");
    return `<tr data-route="${esc(r.name)}"><td>${esc(r.virtualservice)}</td>` +
      `<td>${esc(r.name)}</td><td><code>${esc(r.match && r.match.length ?
        JSON.stringify(r.match) : "(any)")}</code></td><td>${Object.entries(r.weights).map(([s, w]) =>
        `<span class="swatch" style="background:${colour(s)}"></span>${esc(s)} ${+(+w).toFixed(2)}` +
        `${r.weighted ? "%" : ""}`).join(" · ")}` +
      `</td><td>${esc(mirrors)}</td></tr>`;
  }).join("");
  const sel = $("#weights-route");
  const names = v.routes.filter((r) => r.weighted).map((r) => r.name);
  if (sel.dataset.names !== names.join("|")) {
    sel.dataset.names = names.join("|");
    const keep = sel.value;
    sel.innerHTML = `<option value="">every weighted route</option>` +
      names.map((n) => `<option value="${esc(n)}">${esc(n)}</option>`).join("");
    sel.value = names.includes(keep) ? keep : "";
  }
  const form = $("#weights-inputs");
  const keys = Object.keys(v.weights);
  const focused = form.contains(document.activeElement);
  if (!focused && form.dataset.keys !== keys.join("|") || !focused && !form.dataset.dirty) {
    form.dataset.keys = keys.join("|");
    form.innerHTML = keys.map((k) => `<label><span class="swatch" style="background:` +
      `${colour(k)}"></span>${esc(k)} <input type="number" min="0" max="100" step="1" ` +
      `name="${esc(k)}" value="${Math.round(v.weights[k])}"></label>`).join("");
    form.oninput = () => { form.dataset.dirty = "1"; };
    const slider = $("#canary-slider");
    slider.hidden = !(keys.length === 2 && keys.includes(S.cfg.canary));
    slider.value = Math.round(v.weights[S.cfg.canary] ?? 0);
  }
}

function sliderMoved() {
  const w = +$("#canary-slider").value;
  const form = $("#weights-inputs");
  for (const inp of form.querySelectorAll("input")) {
    inp.value = inp.name === S.cfg.canary ? w : 100 - w;
  }
  form.dataset.dirty = "1";
}

async function applyWeights(ev) {
  ev.preventDefault();
  const weights = {};
  for (const inp of $("#weights-inputs").querySelectorAll("input")) weights[inp.name] = +inp.value;
  try {
    const route = $("#weights-route").value;
    const r = await api("/api/weights", {method: "PUT",
      body: route ? {weights, route} : {weights}});
    $("#weights-msg").textContent = `applied: ${JSON.stringify(r.weights)} (generation ${r.generation})`;
    delete $("#weights-inputs").dataset.dirty;
  } catch (e) {
    $("#weights-msg").textContent = "refused: " + e.message;
  }
  refresh();
}

init().catch((e) => {
  $("#warning").hidden = false;
  $("#warning").textContent = "console failed to start: " + e.message;
});
