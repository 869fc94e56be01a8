// raftfl's dashboard: one node's view of its federation, from that node's API.
// /node and /cluster are polled, /failovers refreshed, and the run's event log followed live
// through server-sent events (/events), which also feed the rounds chart.
"use strict";

const POLL_NODE_MS = 1000;
const POLL_CLUSTER_MS = 3000;
const MAX_EVENT_ROWS = 400;

const $ = (id) => document.getElementById(id);
const rounds = new Map(); // round -> {accuracy, loss}
let run = null;
let source = null;
let chart = null;
let failoversDue = true;

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function clock(ts) {
  if (ts === null || ts === undefined) return "–";
  const d = new Date(ts * 1000);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

async function getJSON(path) {
  const resp = await fetch(path, { cache: "no-store" });
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
  return body;
}

function banner(text) {
  $("banner").hidden = !text;
  $("banner").textContent = text || "";
}

// -- this node --------------------------------------------------------------------------------
async function pollNode() {
  try {
    const node = await getJSON("/node");
    $("node-name").textContent = node.name;
    const role = $("node-role");
    role.textContent = node.state === "running" ? node.role : node.state;
    role.className = "badge " + (node.role === "aggregator" ? "good" : node.state === "running" ? "" : "bad");
    role.title = node.sentence || "";
    if (node.run && node.run !== run) follow(node.run);
    banner("");
  } catch (err) {
    banner(`lost contact with this node's API: ${err.message}`);
  }
}

// -- the cluster ------------------------------------------------------------------------------
async function pollCluster() {
  let info;
  try {
    info = await getJSON("/cluster" + (run ? `?run=${run}` : ""));
  } catch (err) {
    $("quorum").textContent = `cluster status unavailable: ${err.message}`;
    return;
  }
  $("cluster").textContent = info.cluster;
  const agg = info.aggregator;
  $("aggregator").textContent = agg ? agg.node || "(malformed)" : "none";
  $("term").textContent = agg ? agg.term : "–";
  $("run").textContent = info.run === null ? "none" : info.run;
  $("progress").textContent = `${info.committed_rounds.length}/${info.rounds || "?"} rounds` +
    (info.completed ? " (completed)" : info.stopped ? " (stopped)" : "");
  $("paused").hidden = !info.paused;
  const left = info.tolerates;
  $("quorum").textContent = `voters ${info.healthy_voters}/${info.voters} healthy` +
    (left < 0 ? ": NO QUORUM" : left === 0 ? ": next voter failure loses the quorum" : `, survives ${left} more`);
  $("quorum").className = "item " + (left <= 0 ? "badge bad" : "");
  renderMembers(info.members, agg ? agg.node : null);
  if (info.run && info.run !== run) follow(info.run);
}

function renderMembers(members, aggregator) {
  const body = $("members").tBodies[0];
  body.replaceChildren();
  for (const m of members) {
    const ctx = m.context || {};
    const row = el("tr", m.name === aggregator ? "aggregator" : "");
    row.dataset.member = m.name;
    row.append(el("td", "", m.name), el("td", "", m.role));
    const health = m.healthy === true ? "ok" : m.healthy === false ? "DOWN" : m.live ? "live" : "gone";
    row.append(el("td", m.healthy === false || !m.live ? "down" : "ok", health));
    row.append(el("td", "", m.leader ? "leader" : ""));
    const rtt = ctx.mean_rtt_ms;
    row.append(el("td", "num", rtt === null || rtt === undefined ? "" : rtt.toFixed(2)));
    row.append(el("td", "num", ctx.cpu_free === undefined ? "" : String(ctx.cpu_free)));
    row.append(el("td", "num", ctx.priority === undefined ? "" : String(ctx.priority)));
    body.append(row);
  }
}

// -- failovers --------------------------------------------------------------------------------
async function pollFailovers() {
  if (!run || !failoversDue) return;
  failoversDue = false;
  try {
    const data = await getJSON(`/failovers?run=${run}`);
    renderFailovers(data.failovers);
  } catch (err) {
    failoversDue = true;
  }
}

function renderFailovers(failovers) {
  const list = $("failovers");
  list.replaceChildren();
  if (!failovers.length) {
    list.append(el("li", "none", "none in this run"));
    return;
  }
  for (const fo of failovers) {
    const item = el("li", "failover");
    item.dataset.term = fo.term;
    item.append(el("div", "", `${fo.previous || "?"} → ${fo.node} (term ${fo.term}, ${fo.cause.replace("_", " ")})`));
    const t0 = fo.began;
    const rel = (ts) => (ts === null || t0 === null ? "–" : `+${(ts - t0).toFixed(2)} s`);
    const steps = el("div", "steps");
    const step = (label, value) => {
      const s = el("span", "", label + " ");
      s.append(el("b", "", value));
      steps.append(s);
    };
    step(fo.cause === "lost" ? "last seen" : "term ended", clock(t0));
    if (fo.vacant_since !== null) step("vacancy seen", rel(fo.vacant_since));
    step("elected", rel(fo.elected_at));
    step("resumed", fo.resumed_at === null ? "pending" : rel(fo.resumed_at));
    step("recovery", fo.recovery_s === null ? "–" : `${fo.recovery_s.toFixed(2)} s`);
    item.append(bar(fo), steps);
    list.append(item);
  }
}

function bar(fo) {
  // The outage in proportion: until the vacancy was seen, the election, and the resumption.
  const node = el("div", "bar");
  const end = fo.resumed_at ?? fo.elected_at;
  const total = Math.max(end - fo.began, 0.001);
  const vacant = fo.vacant_since ?? fo.elected_at;
  for (const [from, to] of [[fo.began, vacant], [vacant, fo.elected_at], [fo.elected_at, end]]) {
    const part = el("span");
    part.style.flexGrow = String(Math.max(to - from, 0) / total);
    node.append(part);
  }
  return node;
}

// -- the chart --------------------------------------------------------------------------------
function makeChart() {
  const box = $("chart");
  const opts = {
    width: Math.max(box.clientWidth, 360), height: 260,
    scales: { x: { time: false }, acc: { range: [0, 1] }, loss: {} },
    series: [
      { label: "round" },
      { label: "accuracy", scale: "acc", stroke: "#1f8a4c", width: 2, points: { show: true, size: 6 } },
      { label: "loss", scale: "loss", stroke: "#c0392b", width: 2, points: { show: true, size: 6 } },
    ],
    axes: [
      { label: "round", incrs: [1, 2, 5, 10, 20, 50, 100] },
      { scale: "acc", label: "accuracy" },
      { scale: "loss", side: 1, label: "loss", grid: { show: false } },
    ],
  };
  return new uPlot(opts, [[], [], []], box);
}

function plot() {
  const xs = [...rounds.keys()].sort((a, b) => a - b);
  chart.setData([xs, xs.map((r) => rounds.get(r).accuracy), xs.map((r) => rounds.get(r).loss)]);
  $("chart").dataset.points = String(xs.length);
}

// -- the event log, live ----------------------------------------------------------------------
function follow(newRun) {
  run = newRun;
  rounds.clear();
  plot();
  $("events").replaceChildren();
  failoversDue = true;
  if (source) source.close();
  source = new EventSource(`/events?run=${run}`);
  source.onopen = () => { $("stream-state").textContent = `run ${run}, live`; };
  source.onerror = () => { $("stream-state").textContent = "reconnecting…"; };
  source.onmessage = (msg) => onEvent(JSON.parse(msg.data));
}

function onEvent(ev) {
  if (ev.type === "round_committed") {
    rounds.set(ev.round, { accuracy: ev.accuracy, loss: ev.loss });
    plot();
  }
  if (ev.type === "aggregator_elected" || ev.type === "round_started" || ev.type === "handover") {
    failoversDue = true;
  }
  const row = el("li", ev.type === "aggregator_elected" ? "failover" : ev.type === "round_committed" ? "commit" : "");
  row.dataset.seq = ev.seq;
  row.append(el("span", "t", clock(ev.ts)), el("span", "kind", ev.type), el("span", "", ev.text));
  const list = $("events");
  list.prepend(row);
  while (list.children.length > MAX_EVENT_ROWS) list.lastChild.remove();
}

function start() {
  chart = makeChart();
  pollNode();
  pollCluster();
  setInterval(pollNode, POLL_NODE_MS);
  setInterval(pollCluster, POLL_CLUSTER_MS);
  setInterval(pollFailovers, 1000);
  window.addEventListener("resize", () => chart.setSize({ width: Math.max($("chart").clientWidth, 360), height: 260 }));
}

document.addEventListener("DOMContentLoaded", start);
