// taskfleet dashboard: polls /api/dashboard every REFRESH_MS and redraws. No libraries.
// Every value from the master is written with textContent (never as HTML).
"use strict";

const REFRESH_MS = 1500;
const CHART_SECONDS = 600;
const SVG = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function count(n) {
  if (n === null || n === undefined) return "–";
  if (n >= 1e9) return (n / 1e9).toFixed(2) + " G";
  if (n >= 1e6) return (n / 1e6).toFixed(2) + " M";
  if (n >= 1e4) return (n / 1e3).toFixed(1) + " k";
  return Math.round(n).toLocaleString("en-US");
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}

function duration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h " + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d " + Math.floor(s % 86400 / 3600) + "h";
}

// The worker heartbeat interval the master tells workers (taskfleet.defaults.heartbeat_interval).
function heartbeatInterval(lease) {
  return Math.min(5, Math.max(0.2, lease / 5));
}

function workerHealth(w, lease) {
  if (w.lost) return "bad";
  return w.last_heartbeat_age_s <= 2.5 * heartbeatInterval(lease) ? "ok" : "warn";
}

function drawHeader(doc) {
  const m = doc.master;
  $("master").textContent = `master ${m.address} · taskfleet ${m.version} · up ${duration(m.uptime_s)}`;
  const verdict = $("verdict");
  if (doc.healthy) {
    verdict.className = "verdict ok";
    verdict.textContent = "healthy";
  } else {
    verdict.className = "verdict warn";
    verdict.textContent = `degraded: ${doc.problems.length} problem${doc.problems.length === 1 ? "" : "s"}`;
  }
  const list = $("problem-list");
  list.replaceChildren(...doc.problems.map((p) => el("li", "", p)));
  $("problems").hidden = doc.problems.length === 0;
  $("updated").textContent = "updated " + new Date(doc.taken * 1000).toLocaleTimeString();
}

function drawTiles(doc) {
  const m = doc.master;
  const lost = (doc.lost_workers || []).length;
  const hosts = new Set(doc.workers.map((w) => w.host));
  $("t-workers").textContent = String(doc.workers.length);
  $("t-workers-sub").textContent = `on ${hosts.size} host${hosts.size === 1 ? "" : "s"}` + (lost ? ` · ${lost} lost` : "");
  const last = doc.history.length ? doc.history[doc.history.length - 1][1] : 0;
  const rate = Object.values(doc.worker_rates).reduce((a, b) => a + b, 0) || last;
  $("t-rate").textContent = count(rate);
  $("t-done").textContent = count(doc.items_done_total);
  const running = doc.jobs.filter((j) => j.state === "running" || j.state === "pending").length;
  $("t-jobs").textContent = String(running);
  // Finished jobs by state, over every job the master keeps (listed or not).
  const by = doc.jobs_by_state || {};
  const ended = ["done", "failed", "cancelled"].filter((s) => by[s]).map((s) => `${count(by[s])} ${s}`);
  $("t-jobs-sub").textContent = ended.length ? ended.join(" · ") : `${doc.jobs.length} listed`;
  $("t-mem").textContent = m.process ? bytes(m.process.rss_bytes) : "–";
  $("t-cpu").textContent = m.process ? `CPU ${duration(m.process.cpu_seconds)} used` : "";
  $("t-journal").textContent = m.journal ? bytes(m.journal.bytes) : "–";
  if (m.journal && m.journal.disk_size_bytes) {
    const pct = 100 * m.journal.disk_free_bytes / m.journal.disk_size_bytes;
    $("t-disk").textContent = `disk ${pct.toFixed(0)}% free (${bytes(m.journal.disk_free_bytes)})`;
  }
}

function niceMax(v) {
  if (v <= 0) return 10;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const f of [1, 2, 2.5, 5, 10]) if (f * p >= v) return f * p;
  return 10 * p;
}

function drawChart(doc) {
  const chart = $("chart");
  const W = 800, H = 220, L = 52, R = 8, T = 10, B = 22;
  const now = doc.taken;
  // The history there is, between 2 and 10 minutes, in whole minutes.
  const have = doc.history.length ? now - doc.history[0][0] : 0;
  const span = 60 * Math.min(CHART_SECONDS / 60, Math.max(2, Math.ceil(have / 60)));
  $("chart-hint").textContent = `items/s, last ${span / 60} minutes`;
  const points = doc.history.filter(([t]) => t >= now - span);
  const top = niceMax(Math.max(0, ...points.map(([, v]) => v)) * 1.1);
  const x = (t) => L + (W - L - R) * (1 - (now - t) / span);
  const y = (v) => T + (H - T - B) * (1 - v / top);
  const nodes = [];
  for (let i = 0; i <= 4; i++) {
    const v = top * i / 4;
    nodes.push(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    nodes.push(svg("text", { class: "axis", x: L - 6, y: y(v) + 4, "text-anchor": "end" }, count(v)));
  }
  const step = span <= 300 ? 1 : 2;
  for (let m = 0; m <= span / 60; m += step) {
    const label = m === 0 ? "now" : `-${m}m`;
    nodes.push(svg("text", { class: "axis", x: x(now - m * 60), y: H - 6, "text-anchor": m === 0 ? "end" : "middle" }, label));
  }
  if (points.length > 1) {
    const line = points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" L");
    const first = x(points[0][0]).toFixed(1), lastX = x(points[points.length - 1][0]).toFixed(1);
    nodes.push(svg("path", { class: "area", d: `M${first},${y(0)} L${line} L${lastX},${y(0)} Z` }));
    nodes.push(svg("path", { class: "curve", d: `M${line}` }));
  }
  chart.replaceChildren(...nodes);
}

function drawJobs(doc) {
  const rows = [];
  // Running jobs first (newest first), then the finished ones (newest first).
  const order = (j) => (j.state === "running" || j.state === "pending" ? 0 : 1);
  const jobs = [...doc.jobs].reverse().sort((a, b) => order(a) - order(b)).slice(0, 12);
  for (const j of jobs) {
    const tr = el("tr");
    tr.dataset.job = j.id;
    const name = el("td");
    name.append(el("div", "jobname", j.job), el("div", "jobid", j.id + (j.code_version ? ` · ${j.code_version}` : "")));
    const state = el("td");
    state.append(el("span", "pill " + j.state, j.state));
    const pct = j.items_total ? 100 * j.items_done / j.items_total : 0;
    const prog = el("td");
    const bar = el("div", "bar " + j.state);
    const fill = el("div", "fill");
    fill.style.width = pct.toFixed(2) + "%";
    bar.append(fill, el("span", "pct", (pct >= 99.95 && pct < 100 ? 99.9 : pct).toFixed(pct >= 100 ? 0 : 1) + "%"));
    const c = j.chunks;
    prog.append(bar, el("div", "items", `${count(j.items_done)} / ${count(j.items_total)} items · chunks ${c.pending} pending, ${c.leased} leased, ${c.done} done`));
    const active = j.state === "running" || j.state === "pending";
    const rate = el("td", "num", active ? count(j.items_per_s) : "–");
    const eta = el("td", "num", active ? duration(j.eta_s) : "–");
    const failed = (j.items_failed || 0);
    const failText = j.error ? "failed" : (failed ? `${count(failed)} items` : "0");
    const fails = el("td", "num" + (failed || j.error ? " fail" : ""), failText);
    if (j.error) fails.title = j.error;
    if (j.duplicates) fails.append(el("div", "items", `${j.duplicates} dup.`));
    tr.append(name, state, prog, rate, eta, fails);
    rows.push(tr);
  }
  $("jobs").replaceChildren(...rows);
  $("no-jobs").hidden = doc.jobs.length > 0;
  const total = doc.jobs.length + (doc.jobs_not_listed || 0);
  $("jobs-hint").textContent = total > jobs.length ? `${jobs.length} of ${total} shown (taskfleet jobs lists them all)` : "";
}

function drawHosts(doc) {
  const lease = doc.master.lease_timeout_s || 30;
  const byHost = new Map();
  const add = (w) => {
    if (!byHost.has(w.host)) byHost.set(w.host, []);
    byHost.get(w.host).push(w);
  };
  doc.workers.forEach(add);
  (doc.lost_workers || []).forEach((w) => add({ ...w, lost: true }));
  const cards = [];
  for (const host of [...byHost.keys()].sort()) {
    const workers = byHost.get(host).sort((a, b) => a.name.localeCompare(b.name, "en", { numeric: true }));
    const states = workers.map((w) => workerHealth(w, lease));
    const card = el("div", "host" + (states.includes("bad") ? " bad" : states.includes("warn") ? " warn" : ""));
    const rate = workers.reduce((a, w) => a + (doc.worker_rates[w.name] || 0), 0);
    const head = el("div", "host-head");
    const live = workers.filter((w) => !w.lost).length;
    head.append(el("span", "host-name", host), el("span", "host-rate", `${live} worker${live === 1 ? "" : "s"} · ${count(rate)} items/s`));
    card.append(head);
    for (const w of workers) {
      const row = el("div", "worker" + (w.lost ? " lost" : ""));
      row.dataset.worker = w.name;
      const health = workerHealth(w, lease);
      const r = doc.worker_rates[w.name] || 0;
      row.append(
        el("span", "dot " + (health === "ok" && !r && !w.leased ? "idle" : health)),
        el("span", "name", w.name),
        el("span", "w-rate", w.lost ? "lost" : count(r) + "/s"),
        el("span", "w-num", count(w.items_done || 0)),
        el("span", "w-num", w.lost ? duration(w.last_heartbeat_age_s) : w.last_heartbeat_age_s.toFixed(1) + "s"),
      );
      const packages = Object.entries(w.job_packages || {}).map(([n, v]) => `${n} ${v}`).join(", ");
      row.title = w.lost ? `silent for ${duration(w.last_heartbeat_age_s)}` : `heartbeat ${w.last_heartbeat_age_s.toFixed(1)}s ago, ${w.leased} chunks leased, ${w.chunks_done} chunks done` + (packages ? `; job packages: ${packages}` : "");
      card.append(row);
    }
    cards.push(card);
  }
  $("hosts").replaceChildren(...cards);
  $("no-workers").hidden = doc.workers.length > 0;
  $("hosts-hint").textContent = "items/s · items done · last heartbeat";
}

async function refresh() {
  try {
    const res = await fetch("/api/dashboard", { cache: "no-store" });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const doc = await res.json();
    drawHeader(doc);
    drawTiles(doc);
    drawChart(doc);
    drawJobs(doc);
    drawHosts(doc);
    document.body.classList.remove("stale");
  } catch (err) {
    document.body.classList.add("stale");
    const verdict = $("verdict");
    verdict.className = "verdict bad";
    verdict.textContent = "master unreachable";
    $("updated").textContent = String(err.message || err);
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
