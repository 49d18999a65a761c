// augur's dashboard: plain JavaScript over the agent's JSON API and its event stream (SSE).
// Everything shown comes from the network (node names, resource ids, metric names, event details),
// so text is only ever set with textContent, never parsed as HTML.
"use strict";

(function () {
  const TOPICS = ["member", "prediction", "instance", "traffic", "migration", "autonomy", "model"];
  const COLORS = {
    history: "#2b6cb0",
    forecast: "#805ad5",
    band: "rgba(128, 90, 213, 0.15)",
    limit: "#e53e3e",
    probability: "#dd6b20",
    anomaly: "#2b6cb0",
    report: "#e53e3e",
  };
  const MAX_EVENTS = 500;
  const REFRESH_S = { "10m": 5, "1h": 15, "24h": 60 };

  const state = {
    view: null,
    resource: null,
    window: localStorage.getItem("augur.window") || "10m",
    plots: [],
    timer: null,
    events: [],
    lastIndex: 0,
    filters: new Set(JSON.parse(localStorage.getItem("augur.topics") || "[]")),
    source: null,
    pending: null,
  };

  // ---- small helpers ----

  function $(sel) {
    return document.querySelector(sel);
  }

  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("data-")) e.setAttribute(k, v);
      else if (k === "href" || k === "title" || k === "type") e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function pct(p) {
    return p === null || p === undefined ? "–" : (100 * p).toFixed(1) + " %";
  }

  function num(x, digits) {
    if (x === null || x === undefined || !isFinite(x)) return "–";
    const d = digits === undefined ? 3 : digits;
    return Math.abs(x) >= 1000 ? x.toFixed(0) : Number(x.toPrecision(d + 1)).toString();
  }

  function duration(s) {
    if (s === null || s === undefined) return "–";
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function timeOf(ms) {
    return new Date(ms).toLocaleTimeString();
  }

  function riskClass(p, threshold) {
    if (p >= (threshold || 0.75)) return "risk-high";
    if (p >= 0.25) return "risk-mid";
    return "";
  }

  function resourceLink(id) {
    return el("a", { class: "resource", href: "#/resource/" + encodeURIComponent(id), text: id });
  }

  function showError(msg) {
    const e = $("#error");
    if (msg) {
      e.textContent = msg;
      e.hidden = false;
    } else {
      e.hidden = true;
    }
  }

  async function getJson(path) {
    const r = await fetch(path, { headers: { Accept: "application/json" } });
    let body = null;
    try {
      body = await r.json();
    } catch (_) {
      body = null;
    }
    if (!r.ok) {
      const why = body && body.error ? body.error : r.status + " " + r.statusText;
      const err = new Error(path + ": " + why);
      err.status = r.status;
      throw err;
    }
    return body;
  }

  // ---- routing ----

  function route() {
    const parts = location.hash.replace(/^#\/?/, "").split("/");
    const view = ["fleet", "resource", "events", "models", "services", "migrations"].includes(parts[0])
      ? parts[0]
      : "fleet";
    state.view = view;
    state.resource = view === "resource" && parts[1] ? decodeURIComponent(parts[1]) : state.resource;
    for (const s of document.querySelectorAll(".view")) s.hidden = s.id !== "view-" + view;
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === view);
    showError(null);
    refresh();
  }

  function schedule(seconds) {
    if (state.timer) clearTimeout(state.timer);
    state.timer = setTimeout(refresh, seconds * 1000);
  }

  async function refresh() {
    try {
      if (state.view === "fleet") {
        await renderFleet();
        schedule(10);
      } else if (state.view === "resource") {
        await renderResource();
        schedule(REFRESH_S[state.window] || 15);
      } else if (state.view === "events") {
        renderEvents();
      } else if (state.view === "models") {
        await renderModels();
        schedule(30);
      } else if (state.view === "services") {
        await renderServices();
        schedule(10);
      } else if (state.view === "migrations") {
        await renderMigrations();
        schedule(10);
      }
    } catch (e) {
      showError(e.message);
      schedule(10);
    }
  }

  // A burst of events triggers one refresh, not one each.
  function refreshSoon() {
    if (state.pending) return;
    state.pending = setTimeout(() => {
      state.pending = null;
      refresh();
    }, 300);
  }

  // ---- fleet ----

  async function renderFleet() {
    const [members, predictions] = await Promise.all([getJson("/v1/members"), getJson("/v1/predictions")]);
    const msg = $("#fleet-message");
    msg.hidden = !members.message;
    msg.textContent = members.message || "";
    const tbody = $("#members tbody");
    clear(tbody);
    for (const m of members.members) {
      const h = m.health || {};
      const name = m.node_name || m.peer_id.slice(0, 12);
      const p = h.max_failure_probability;
      tbody.append(
        el(
          "tr",
          { "data-node": name, "data-status": m.status },
          el("td", {}, name, m.is_self ? el("span", { class: "muted", text: " (this node)" }) : null),
          el("td", { class: "status-" + m.status, text: m.status }),
          el("td", { text: m.zone || "–" }),
          el("td", { class: "num", text: m.rtt_ms === null || m.rtt_ms === undefined ? "–" : m.rtt_ms.toFixed(2) + " ms" }),
          el("td", { class: "num", text: m.last_heard_ms === null || m.last_heard_ms === undefined ? "–" : duration(m.last_heard_ms / 1000) + " ago" }),
          el("td", {}, h.resource_id ? (m.is_self ? resourceLink(h.resource_id) : h.resource_id) : "–"),
          el("td", { class: "num " + riskClass(p || 0), "data-value": p, text: p === undefined ? "–" : pct(p) }),
          el("td", { class: "num", text: h.anomaly_score === undefined ? "–" : num(h.anomaly_score, 2) }),
          el("td", { text: (h.alarms || []).map((a) => a.resource_id || JSON.stringify(a)).join(", ") || "–" }),
          el("td", { text: (m.instances || []).map((i) => i.service + " (" + i.health + ")").join(", ") || "–" })
        )
      );
    }
    const pb = $("#predictions tbody");
    clear(pb);
    for (const p of predictions.predictions) {
      pb.append(
        el(
          "tr",
          { "data-resource": p.resource_id },
          el("td", {}, resourceLink(p.resource_id)),
          el("td", { text: p.resource_type }),
          el("td", { class: "num " + riskClass(p.failure_probability, p.threshold), text: pct(p.failure_probability) }),
          el("td", { class: "num", text: pct(p.threshold) }),
          el("td", { class: "num", text: duration(p.eta_s) }),
          el("td", { class: "num", text: num(p.anomaly_score, 2) }),
          el("td", { text: (p.drivers || []).join(", ") || "–" }),
          el("td", { text: new Date(p.ts).toLocaleTimeString() })
        )
      );
    }
  }

  // ---- a resource ----

  function destroyPlots() {
    for (const p of state.plots) p.destroy();
    state.plots = [];
  }

  function plotBox(container, title, attrs) {
    const box = el("div", attrs || {}, el("div", { class: "plot-title", text: title }));
    container.append(box);
    return box;
  }

  function axes(yLabel) {
    return [
      {},
      { label: yLabel, size: 60, values: (u, vals) => vals.map((v) => num(v, 2)) },
    ];
  }

  async function renderResource() {
    const list = await getJson("/v1/predictions");
    const select = $("#resource-select");
    const ids = list.predictions.map((p) => p.resource_id);
    if (!state.resource && ids.length) state.resource = ids[0];
    $("#resource-empty").hidden = ids.length > 0;
    $("#resource-body").hidden = !state.resource;
    clear(select);
    for (const id of ids) select.append(el("option", { value: id, text: id, selected: id === state.resource }));
    for (const b of document.querySelectorAll("#windows button")) b.classList.toggle("active", b.dataset.window === state.window);
    if (!state.resource) return;
    const id = encodeURIComponent(state.resource);
    const [fc, series, scores] = await Promise.all([
      getJson("/v1/resources/" + id + "/forecast"),
      getJson("/v1/resources/" + id + "/series?since=" + state.window + "&points=600"),
      getJson("/v1/resources/" + id + "/scores?since=" + state.window),
    ]);
    const p = fc.prediction;
    const prob = $("#prob");
    prob.textContent = pct(p.failure_probability);
    prob.dataset.value = p.failure_probability;
    prob.className = "big " + riskClass(p.failure_probability, p.threshold);
    $("#threshold").textContent = pct(p.threshold);
    $("#horizon").textContent = duration(p.horizon_s);
    $("#eta").textContent = p.eta_s === null || p.eta_s === undefined ? "none within the horizon" : "in " + duration(p.eta_s);
    $("#anomaly").textContent = num(p.anomaly_score, 2);
    $("#drivers").textContent = (p.drivers || []).join(", ") || "–";
    $("#model-version").textContent = p.model_version;
    $("#bucket-note").textContent =
      series.bucket_s > 0 ? "Each point is the mean of " + duration(series.bucket_s) + " of samples." : "";

    destroyPlots();
    const limited = fc.metrics.filter((m) => m.limits.length > 0);
    const plain = fc.metrics.filter((m) => m.limits.length === 0);
    const fbox = $("#forecast-plots");
    clear(fbox);
    if (!limited.length) {
      fbox.append(el("p", { class: "muted", text: "No metric of this resource has a limit (configured or learned); its failure probability stays 0. Set limits per resource type in the agent's configuration." }));
    }
    for (const m of limited) forecastPlot(fbox, m, series, p);
    scorePlot(scores);
    const mbox = $("#metric-plots");
    clear(mbox);
    for (const m of plain.slice(0, 12)) metricPlot(mbox, m.metric, series);
  }

  function forecastPlot(container, m, series, prediction) {
    const box = plotBox(container, m.metric + " (limit " + m.limits.map((l) => (l.direction === "above" ? "≥ " : "≤ ") + num(l.value) + (l.learned ? ", learned" : "")).join("; ") + ")", {
      class: "forecast-plot",
      "data-metric": m.metric,
    });
    const hist = series.metrics[m.metric] || [];
    const xs = series.ts.slice();
    const ys = hist.slice();
    const n = xs.length;
    const now = Date.parse(prediction.ts) / 1000;
    const mean = new Array(n).fill(null);
    const lo = new Array(n).fill(null);
    const hi = new Array(n).fill(null);
    // The forecast starts at the smoothed value now.
    if (m.level !== null && m.level !== undefined && m.points.length) {
      if (n && xs[n - 1] >= now) {
        mean[n - 1] = m.level;
        lo[n - 1] = m.level;
        hi[n - 1] = m.level;
      } else {
        xs.push(now);
        ys.push(null);
        mean.push(m.level);
        lo.push(m.level);
        hi.push(m.level);
      }
    }
    for (const pt of m.points) {
      const x = now + pt.ahead_s;
      if (xs.length && x <= xs[xs.length - 1]) continue;
      xs.push(x);
      ys.push(null);
      mean.push(pt.mean);
      lo.push(pt.mean - 1.645 * pt.sd);
      hi.push(pt.mean + 1.645 * pt.sd);
    }
    const data = [xs, ys, mean, hi, lo];
    const seriesOpts = [
      {},
      { label: "history", stroke: COLORS.history, width: 1.5, spanGaps: false },
      { label: "forecast", stroke: COLORS.forecast, width: 2, dash: [6, 4] },
      { label: "90 % high", stroke: "rgba(0,0,0,0)", points: { show: false } },
      { label: "90 % low", stroke: "rgba(0,0,0,0)", points: { show: false } },
    ];
    for (const l of m.limits) {
      data.push(new Array(xs.length).fill(l.value));
      seriesOpts.push({ label: l.learned ? "learned limit" : "limit", stroke: COLORS.limit, width: 2, points: { show: false } });
    }
    box.dataset.series = seriesOpts.slice(1).map((s) => s.label).join(",");
    box.dataset.points = String(m.points.length);
    const u = new uPlot(
      {
        width: 560,
        height: 240,
        series: seriesOpts,
        bands: [{ series: [3, 4], fill: COLORS.band }],
        axes: axes(m.metric),
        legend: { show: true },
        cursor: { drag: { x: false, y: false } },
      },
      data,
      box
    );
    state.plots.push(u);
  }

  function scorePlot(scores) {
    const box = $("#score-plot");
    clear(box);
    const xs = scores.points.map((p) => p.ts_ms / 1000);
    const prob = scores.points.map((p) => p.failure_probability);
    const anomaly = scores.points.map((p) => p.anomaly_score);
    const reports = scores.points.map((p) => (p.anomaly_score >= scores.report_score ? p.anomaly_score : null));
    const threshold = xs.map(() => scores.threshold);
    box.dataset.reports = String(reports.filter((r) => r !== null).length);
    box.append(el("div", { class: "plot-title", text: "resolution " + duration(scores.resolution_s) + "; dots: anomaly reports (score ≥ " + scores.report_score + ")" }));
    const u = new uPlot(
      {
        width: 1140,
        height: 200,
        scales: { y: { range: [0, 1] } },
        series: [
          {},
          { label: "failure probability", stroke: COLORS.probability, width: 1.5 },
          { label: "anomaly score", stroke: COLORS.anomaly, width: 1 },
          { label: "threshold", stroke: COLORS.limit, width: 1, dash: [4, 4], points: { show: false } },
          { label: "reports", stroke: COLORS.report, width: 0, points: { show: true, size: 7, fill: COLORS.report } },
        ],
        axes: axes("score"),
      },
      [xs, prob, anomaly, threshold, reports],
      box
    );
    state.plots.push(u);
  }

  function metricPlot(container, metric, series) {
    const values = series.metrics[metric];
    if (!values) return;
    const box = plotBox(container, metric, { class: "metric-plot", "data-metric": metric });
    const u = new uPlot(
      {
        width: 370,
        height: 150,
        series: [{}, { label: metric, stroke: COLORS.history, width: 1 }],
        axes: axes(""),
        legend: { show: false },
      },
      [series.ts, values],
      box
    );
    state.plots.push(u);
  }

  // ---- events ----

  function eventRow(e) {
    const detail = e.detail === undefined ? "" : JSON.stringify(e.detail);
    return el(
      "tr",
      { "data-index": e.index, "data-topic": e.topic },
      el("td", { class: "num", text: e.index }),
      el("td", { text: timeOf(e.ts_ms) }),
      el("td", { text: e.topic }),
      el("td", { text: e.node_name || (e.peer_id || "").slice(0, 12) }),
      el("td", {}, e.resource_id ? e.resource_id + " " : "", el("span", { class: "muted", text: detail.length > 240 ? detail.slice(0, 240) + "…" : detail }))
    );
  }

  function topicShown(topic) {
    if (state.filters.size === 0) return true;
    return state.filters.has(topic.split(".")[0]);
  }

  function renderFilters() {
    const box = $("#topic-filters");
    clear(box);
    box.append(el("span", { class: "muted", text: "Topics (none checked: all):" }));
    for (const t of TOPICS) {
      const input = el("input", { type: "checkbox", checked: state.filters.has(t), "data-topic": t });
      input.addEventListener("change", () => {
        if (input.checked) state.filters.add(t);
        else state.filters.delete(t);
        localStorage.setItem("augur.topics", JSON.stringify([...state.filters]));
        renderEvents();
      });
      box.append(el("label", {}, input, " " + t));
    }
  }

  function renderEvents() {
    const tbody = $("#events tbody");
    clear(tbody);
    for (let i = state.events.length - 1; i >= 0; i--) {
      const e = state.events[i];
      if (e.missed) {
        tbody.append(el("tr", { class: "muted" }, el("td", { colSpan: 5, text: e.missed + " events after #" + e.after + " were dropped before they could be read" })));
      } else if (topicShown(e.topic)) {
        tbody.append(eventRow(e));
      }
    }
  }

  function addEvent(e) {
    state.events.push(e);
    if (state.events.length > MAX_EVENTS) state.events.shift();
    if (e.index) state.lastIndex = Math.max(state.lastIndex, e.index);
    if (state.view === "events") renderEvents();
  }

  // The backlog the agent still holds, then the stream from where it ends; EventSource resumes
  // by itself (Last-Event-ID) after a dropped connection, and a reload starts from the backlog.
  async function followEvents() {
    const live = $("#live");
    try {
      const page = await getJson("/v1/events?since=0");
      for (const e of page.events.slice(-MAX_EVENTS)) addEvent(e);
      state.lastIndex = Math.max(state.lastIndex, page.next);
    } catch (e) {
      showError(e.message);
    }
    const src = new EventSource("/v1/events?follow=true&since=" + state.lastIndex);
    state.source = src;
    src.onopen = () => {
      live.textContent = "live";
      live.className = "badge live";
    };
    src.onerror = () => {
      live.textContent = "reconnecting";
      live.className = "badge down";
    };
    src.onmessage = (msg) => {
      let e;
      try {
        e = JSON.parse(msg.data);
      } catch (_) {
        return;
      }
      addEvent(e);
      const topic = e.topic || "";
      if (state.view === "fleet" && (topic.startsWith("member.") || topic.startsWith("prediction."))) refreshSoon();
      else if (state.view === "resource" && e.resource_id === state.resource) refreshSoon();
      else if (state.view === "services" && (topic.startsWith("instance.") || topic.startsWith("traffic."))) refreshSoon();
      else if (state.view === "migrations" && topic.startsWith("migration.")) refreshSoon();
      else if (state.view === "models" && topic.startsWith("model.")) refreshSoon();
    };
    src.addEventListener("missed", (msg) => {
      try {
        addEvent(JSON.parse(msg.data));
      } catch (_) {
        /* a malformed notice is ignored */
      }
    });
  }

  // ---- models ----

  async function renderModels() {
    const list = await getJson("/v1/models");
    $("#engine-version").textContent = list.engine;
    const tbody = $("#models tbody");
    clear(tbody);
    for (const m of list.models) {
      const mlp = m.mlp;
      const cal = m.calibration;
      const fed = m.federation;
      tbody.append(
        el(
          "tr",
          { "data-type": m.resource_type },
          el("td", { text: m.resource_type }),
          el("td", { class: "num", text: "v" + m.version }),
          el("td", { text: new Date(m.data_until_s * 1000).toLocaleString() + " (" + m.rows + " rows, " + m.resources + " resources)" }),
          el("td", { class: "num", text: mlp ? num(mlp.mse_mlp) + " vs " + num(mlp.mse_holt) : "–" }),
          el("td", { text: mlp ? (mlp.preferred ? "yes" : "no (Holt is better)") : "–" }),
          el("td", { text: cal ? (cal.used ? "used" : "not used") + " (Brier " + num(cal.brier_raw) + " → " + num(cal.brier_calibrated) + ")" : "not fitted (no labelled failures)" }),
          el("td", { text: list.pinned && list.pinned[m.resource_type] !== undefined ? "pinned" : "–" }),
          el("td", { text: fed ? fed.rule + ", " + fed.contributors.length + " contributors" + (fed.digest ? ", " + fed.digest : "") : "local" })
        )
      );
      const limits = (m.patterns && m.patterns.limits) || [];
      if (limits.length) {
        tbody.append(
          el(
            "tr",
            {},
            el("td", {}),
            el("td", { colSpan: 7, class: "muted", text: "learned limits: " + limits.map((l) => l.metric + (l.direction === "above" ? " ≥ " : " ≤ ") + num(l.value) + (l.used ? "" : " (not used)")).join(", ") })
          )
        );
      }
    }
    if (!list.models.length) {
      tbody.append(el("tr", {}, el("td", { colSpan: 8, class: "muted", text: "No trained models yet: types are trained from the history every models.retrain_interval, or now with augur models train." })));
    }
    const db = $("#decisions tbody");
    clear(db);
    if (!(list.federation || []).length) {
      db.append(el("tr", {}, el("td", { colSpan: 6, class: "muted", text: "No merges yet: outside a fleet, or no peer has shared a model of these types." })));
    }
    for (const d of (list.federation || []).slice().reverse()) {
      db.append(
        el(
          "tr",
          {},
          el("td", { text: new Date(d.at_unix_ms).toLocaleString() }),
          el("td", { text: d.resource_type }),
          el("td", { text: d.outcome }),
          el("td", { text: d.version === null || d.version === undefined ? "–" : "v" + d.version }),
          el("td", { text: d.lineage.rule }),
          el("td", { text: d.lineage.contributors.map((c) => (c.author === "self" ? "self" : c.author.slice(-8)) + "@" + c.round).join(", ") })
        )
      );
    }
  }

  // ---- services ----

  async function renderServices() {
    const list = await getJson("/v1/services");
    const tbody = $("#services tbody");
    clear(tbody);
    for (const s of list.services) {
      const spec = s.spec;
      const instances = list.instances.filter((i) => i.service === s.name);
      const routes = (list.routes.services || {})[s.name] || {};
      tbody.append(
        el(
          "tr",
          { "data-service": s.name },
          el("td", { text: s.name }),
          el("td", { class: "num", text: s.version }),
          el("td", { text: spec.strategy }),
          el("td", { class: "num", text: spec.replicas + (spec.standbys ? " + " + spec.standbys + " standby" : "") }),
          el("td", { class: "num", text: spec.port }),
          el("td", { text: instances.map((i) => i.node + ": " + i.health).join(", ") || "none running" }),
          el("td", { text: Object.entries(routes).map(([addr, w]) => addr + ": " + w).join(", ") || "–" })
        )
      );
    }
    if (!list.services.length) {
      tbody.append(el("tr", {}, el("td", { colSpan: 7, class: "muted", text: "No services in the catalog: augur service apply FILE (docs/SERVICES.md)." })));
    }
    const errs = $("#traffic-errors");
    errs.hidden = !list.traffic_errors.length;
    errs.textContent = list.traffic_errors.map((e) => JSON.stringify(e)).join("; ");
  }

  // ---- migrations ----

  // A humantime duration ("3s 525ms 524us 68ns") in seconds.
  function humantimeSeconds(text) {
    const unit = { h: 3600, m: 60, min: 60, s: 1, ms: 1e-3, us: 1e-6, "µs": 1e-6, ns: 1e-9 };
    let total = 0;
    for (const part of String(text).split(" ")) {
      const m = /^([0-9.]+)([a-zµ]+)$/.exec(part);
      if (m && unit[m[2]] !== undefined) total += parseFloat(m[1]) * unit[m[2]];
    }
    return total;
  }

  function phaseText(phase) {
    if (!phase) return "–";
    if (phase.phase === "finished") return phase.outcome + (phase.reason ? ": " + phase.reason : "");
    return phase.phase.replace("_", " ") + (phase.step ? " at " + phase.step : phase.from ? " from " + phase.from : "") + (phase.reason ? ": " + phase.reason : "");
  }

  async function renderMigrations() {
    const list = await getJson("/v1/migrations");
    const box = $("#migrations");
    clear(box);
    if (!list.length) {
      box.append(el("p", { class: "muted", text: "No migrations coordinated by this node." }));
      return;
    }
    for (const j of list.slice().reverse()) {
      const r = j.record;
      const plan = r.plan;
      const phase = r.phase;
      const finished = phase.phase === "finished";
      const failed = finished && phase.outcome !== "completed";
      const steps = el("ol", { class: "timeline" });
      for (const s of r.log) {
        const cls = /fail|roll|refus|abandon/i.test(s.step + " " + s.note) ? "failed" : "ok";
        steps.append(el("li", { class: cls }, el("strong", { text: s.step }), " ", el("span", { class: "muted", text: "+" + humantimeSeconds(s.at).toFixed(2) + " s " }), s.note));
      }
      if (!finished) steps.append(el("li", { class: "running", text: phaseText(phase) }));
      box.append(
        el(
          "div",
          { class: "migration", "data-id": j.id, "data-outcome": finished ? phase.outcome : "running" },
          el("div", {}, el("strong", { text: plan.service }), " " + plan.strategy + ": " + plan.old.node + " → " + plan.new.node + " ", el("span", { class: failed ? "risk-high" : "muted", text: phaseText(phase) })),
          el("div", { class: "muted", text: j.id + ", started " + new Date(j.created_unix_ms).toLocaleString() + (r.epoch ? ", under lease epoch " + r.epoch : "") }),
          steps
        )
      );
    }
  }

  // ---- start ----

  async function start() {
    try {
      const st = await getJson("/v1/status");
      $("#node-name").textContent = st.node_name;
      document.title = "augur: " + st.node_name;
      const port = location.port || "80";
      $("#tunnel").textContent = "ssh -L " + port + ":" + st.http_addr + " " + st.node_name + ", then open localhost:" + port + "/ui/";
    } catch (e) {
      showError(e.message);
    }
    $("#resource-select").addEventListener("change", (ev) => {
      location.hash = "#/resource/" + encodeURIComponent(ev.target.value);
    });
    for (const b of document.querySelectorAll("#windows button")) {
      b.addEventListener("click", () => {
        state.window = b.dataset.window;
        localStorage.setItem("augur.window", state.window);
        refresh();
      });
    }
    renderFilters();
    window.addEventListener("hashchange", route);
    route();
    followEvents();
  }

  if (typeof uPlot === "undefined") {
    showError("the plotting library (uPlot.iife.min.js) did not load");
  }
  start();
})();
