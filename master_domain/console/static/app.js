// DomainOS web console: plain JavaScript, no build step, no third-party code (docs/console.md).
// Every request carries the token in the Authorization header; the live stream (/api/events) is
// Server-Sent Events read with fetch() so that it can carry the header too.
"use strict";

const TOKEN_KEY = "domainos.console.token";
const JOB_REFRESH_MS = 2000;
const RECONNECT_MS = 3000;

const S = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  me: null,
  cluster: null,
  domains: null,
  jobs: null,
  liveCtl: null,
  jobTimer: null,
  jobId: "",
  jobState: "",
  logSel: "",
};

// -- helpers --------------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

const num = (v) => Number(v || 0);

// The same forms as `domainctl` (domainos.resources.format_cpus / format_memory, _render.fmt_gpus).
function fmtCpus(millis) {
  millis = num(millis);
  if (millis <= 0) return "0";
  const whole = Math.floor(millis / 1000), frac = millis % 1000;
  return frac ? `${whole}.${String(frac).padStart(3, "0")}`.replace(/0+$/, "") : String(whole);
}

function fmtMem(n) {
  n = num(n);
  if (n <= 0) return "0";
  for (const [unit, size] of [["Ti", 2 ** 40], ["Gi", 2 ** 30], ["Mi", 2 ** 20], ["Ki", 2 ** 10]]) {
    if (n >= size) {
      const v = n / size;
      return v === Math.trunc(v) ? `${v}${unit}` : `${v.toFixed(1)}${unit}`;
    }
  }
  return `${n}B`;
}

function fmtGpus(free, total, models) {
  total = num(total);
  if (total <= 0) return "-";
  const names = Object.keys(models || {}).filter(Boolean).sort().join(",");
  return `${num(free)}/${total}` + (names ? ` ${names}` : "");
}

function fmtAge(ts) {
  ts = num(ts);
  if (ts <= 0) return "-";
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 60) return `${Math.floor(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

const enumName = (v, prefix) => String(v || "").replace(prefix, "");
const jobState = (j) => enumName(j.state, "JOB_STATE_");
const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);

function bar(used, total) {
  const pct = total > 0 ? Math.min(100, (100 * used) / total) : 0;
  const b = el("span", { class: "bar", title: `${pct.toFixed(0)}% used` }, el("span"));
  b.firstChild.style.width = `${pct}%`;
  return b;
}

// -- the API --------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, leader) {
    super(message);
    this.status = status;
    this.code = code;
    this.leader = leader || "";
  }
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    /* not JSON */
  }
  const e = (body && body.error) || {};
  return new ApiError(response.status, e.code || String(response.status), e.message || response.statusText, e.leader);
}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${S.token}` }, cache: "no-store" });
  if (!response.ok) {
    const err = await errorOf(response);
    if (err.status === 401) logout(err.message);
    else if (err.status === 503 && err.leader) banner(`This master does not lead: ${err.message}`);
    throw err;
  }
  return response.json();
}

function banner(text) {
  const b = $("banner");
  b.textContent = text || "";
  b.hidden = !text;
}

// -- login ----------------------------------------------------------------------------------------

async function login(token) {
  S.token = token.trim();
  const who = await api("/api/whoami");
  sessionStorage.setItem(TOKEN_KEY, S.token);
  S.me = who.principal;
  S.cluster = who.cluster;
  const role = enumName(S.me.role, "ROLE_").toLowerCase();
  $("whoami").textContent = `${role}${S.me.tenant ? " of " + S.me.tenant : ""} (token ${S.me.token_id})`;
  $("master-name").textContent = `master ${S.cluster.master_id} · v${S.cluster.version}`;
  $("login-view").hidden = true;
  $("nav").hidden = false;
  $("logout").hidden = false;
  $("login-error").textContent = "";
  banner("");
  startLive();
  if (!location.hash) location.hash = "#/domains";
  route();
}

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  S.token = "";
  S.me = null;
  stopLive();
  stopJob();
  for (const v of document.querySelectorAll(".view")) v.hidden = true;
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("whoami").textContent = "";
  $("login-view").hidden = false;
  $("login-error").textContent = message || "";
}

// -- live updates ---------------------------------------------------------------------------------

function setLive(on, text) {
  const l = $("live");
  l.className = `live ${on ? "on" : "off"}`;
  l.textContent = text || (on ? "live" : "offline");
}

function stopLive() {
  if (S.liveCtl) S.liveCtl.abort();
  S.liveCtl = null;
  setLive(false);
}

async function startLive() {
  stopLive();
  const ctl = new AbortController();
  S.liveCtl = ctl;
  try {
    const response = await fetch("/api/events", {
      headers: { Authorization: `Bearer ${S.token}` },
      signal: ctl.signal,
      cache: "no-store",
    });
    if (!response.ok) {
      const err = await errorOf(response);
      if (err.status === 401) return logout(err.message);
      throw err;
    }
    setLive(true);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        onEvent(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
      }
    }
  } catch (err) {
    if (ctl.signal.aborted) return;
    if (err instanceof ApiError && err.leader) banner(`This master does not lead: ${err.message}`);
  }
  if (S.liveCtl !== ctl || ctl.signal.aborted) return;
  setLive(false, "reconnecting");
  setTimeout(() => {
    if (S.liveCtl === ctl && S.token) startLive();
  }, RECONNECT_MS);
}

function onEvent(block) {
  let type = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) type = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (!data.length) return;
  const body = JSON.parse(data.join("\n"));
  if (type === "error") {
    const e = body.error || {};
    if (e.code === "UNAUTHENTICATED") logout(e.message);
    else banner(e.message || "the live stream ended");
    return;
  }
  if (type !== "snapshot") return;
  S.domains = body.domains;
  S.jobs = body.jobs;
  setLive(true, `live · ${new Date().toLocaleTimeString()}`);
  renderDomains();
  renderJobs();
  if (S.jobId) {
    const j = (S.jobs.jobs || []).find((x) => x.job_id === S.jobId);
    if (j && jobState(j) !== S.jobState) refreshJob();
  }
}

// -- routing --------------------------------------------------------------------------------------

function route() {
  if (!S.token || !S.me) return;
  const parts = (location.hash || "#/domains").slice(2).split("/");
  let view = parts[0] || "domains";
  stopJob();
  if (view === "jobs" && parts[1]) view = "job";
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== `${view}-view`;
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.view === (view === "job" ? "jobs" : view));
  }
  if (view === "domains") {
    if (!S.domains) api("/api/domains").then((d) => { S.domains = d; renderDomains(); }).catch(showError("domain-tree"));
    else renderDomains();
  } else if (view === "jobs") {
    if (!S.jobs) api("/api/jobs").then((j) => { S.jobs = j; renderJobs(); }).catch(showError("jobs-table"));
    else renderJobs();
  } else if (view === "nodes") {
    loadNodes();
  } else if (view === "job") {
    openJob(decodeURIComponent(parts.slice(1).join("/")));
  } else if (view === "tenants") {
    loadTenants();
  }
}

function showError(id) {
  return (err) => {
    const target = $(id);
    const p = el("p", { class: "error" }, err.message || String(err));
    if (target.tagName === "TABLE") target.querySelector("tbody").replaceChildren(el("tr", {}, el("td", { colspan: 9 }, p)));
    else clear(target).append(p);
  };
}

// -- views: domains -------------------------------------------------------------------------------

function renderDomains() {
  const tree = $("domain-tree");
  if (!S.domains) return;
  clear(tree);
  const regions = S.domains.regions || [];
  tree.append(el("div", { class: "tree-root" }, `master ${S.cluster ? S.cluster.master_id : ""}`,
    el("span", { class: "muted" }, ` · ${regions.length} region(s)`)));
  if (!regions.length) tree.append(el("p", { class: "muted" }, "no sub-domains have registered with the master yet"));
  for (const region of regions) {
    const box = el("div", { class: "subdomains" });
    for (const sd of region.subdomains || []) box.append(subdomainCard(sd));
    tree.append(el("div", { class: "region", "data-region": region.name }, el("h3", {}, `region ${region.name}`), box));
  }
}

function subdomainCard(sd) {
  const s = sd.summary || {};
  const cap = s.capacity || {}, free = s.free || {};
  const row = (label, field, text, used, total) =>
    el("tr", {}, el("td", { class: "muted" }, label), el("td", { "data-field": field }, text),
      el("td", {}, total !== undefined ? bar(used, total) : ""));
  const notes = [];
  if (num(s.nodes_simulated)) notes.push(`${num(s.nodes_simulated)} simulated`);
  if (num(s.nodes_suspect)) notes.push(`${num(s.nodes_suspect)} suspect`);
  if (num(s.nodes_dead)) notes.push(`${num(s.nodes_dead)} dead`);
  const table = el("table", {},
    row("nodes", "nodes", `${num(s.nodes_ready)}/${num(s.nodes_total)} ready`),
    row("CPUs", "cpus", `${fmtCpus(free.cpu_millis)}/${fmtCpus(cap.cpu_millis)}`, num(cap.cpu_millis) - num(free.cpu_millis), num(cap.cpu_millis)),
    row("memory", "memory", `${fmtMem(free.memory_bytes)}/${fmtMem(cap.memory_bytes)}`, num(cap.memory_bytes) - num(free.memory_bytes), num(cap.memory_bytes)),
    row("GPUs", "gpus", fmtGpus(free.gpus, cap.gpus, s.gpus_by_model), num(cap.gpus) - num(free.gpus), num(cap.gpus) || undefined),
    row("tasks", "tasks", String(num(s.running_tasks))));
  if (num(s.power_draw_w) > 0) table.append(row("power", "power", `${(num(s.power_draw_w) / 1000).toFixed(1)} kW`));
  return el("div", { class: `subdomain${sd.connected ? "" : " lost"}`, "data-subdomain": sd.subdomain_id },
    el("h4", {}, sd.subdomain_id, " ",
      el("span", { class: `badge ${sd.connected ? "connected" : "lost"}`, "data-field": "status" }, sd.connected ? "connected" : "lost")),
    table,
    notes.length ? el("div", { class: "note" }, notes.join(", ")) : null,
    el("div", { class: "note" }, "free/total over ready nodes"));
}

// -- views: nodes ---------------------------------------------------------------------------------

function nodeLoad(n) {
  const usage = n.usage || {};
  const gpus = usage.gpus || [];
  if (gpus.length) return { kind: "GPU", pct: gpus.reduce((a, g) => a + num(g.utilization_percent), 0) / gpus.length };
  return { kind: "CPU", pct: num(usage.cpu_percent) };
}

function nodeText(n) {
  const inv = n.inventory || {}, alloc = inv.allocatable || {}, free = n.free || {};
  const load = nodeLoad(n);
  return [
    `node ${inv.node_id}${inv.simulated ? " (simulated)" : ""} in ${n.subdomain_id} (region ${n.region})`,
    `state: ${n.state}${n.draining ? " (draining)" : ""}, health ${enumName((n.health || {}).status, "HEALTH_STATUS_").toLowerCase()}`,
    `${load.kind} utilisation: ${load.pct.toFixed(0)}%`,
    `CPUs free/total: ${fmtCpus(free.cpu_millis)}/${fmtCpus(alloc.cpu_millis)}`,
    `memory free/total: ${fmtMem(free.memory_bytes)}/${fmtMem(alloc.memory_bytes)}`,
    `GPUs free/total: ${fmtGpus(free.gpus, alloc.gpus, alloc.gpu_model ? { [alloc.gpu_model]: 1 } : null)}`,
    `running tasks: ${num(n.running_tasks)}`,
    n.cordon_reason ? `cordoned by ${n.cordoned_by || "health"}: ${n.cordon_reason}` : "",
  ].filter(Boolean).join("\n");
}

async function loadNodes() {
  const map = $("heatmap");
  clear(map).append(el("p", { class: "muted" }, "asking the sub-domains for their nodes..."));
  $("node-detail").hidden = true;
  let found;
  try {
    found = await api("/api/nodes");
  } catch (err) {
    const why = err.status === 403 ? `${err.message} (the node view needs an admin token)` : err.message;
    clear(map).append(el("p", { class: "error" }, why));
    return;
  }
  clear(map);
  const groups = new Map();
  for (const n of found.nodes || []) {
    if (!groups.has(n.subdomain_id)) groups.set(n.subdomain_id, []);
    groups.get(n.subdomain_id).push(n);
  }
  const totals = new Map();
  for (const r of (S.domains && S.domains.regions) || []) {
    for (const sd of r.subdomains || []) totals.set(sd.subdomain_id, num((sd.summary || {}).nodes_total));
  }
  for (const [sid, nodes] of groups) {
    const cells = el("div", { class: "cells" });
    for (const n of nodes) {
      const load = nodeLoad(n);
      const down = n.state === "suspect" || n.state === "dead";
      const cordoned = n.state === "cordoned" || n.draining || Boolean(n.cordon_reason);
      const cls = `cell heat${Math.min(9, Math.floor(load.pct / 10))}${cordoned ? " cordoned" : ""}${down ? " down" : ""}`;
      const text = nodeText(n);
      cells.append(el("span", {
        class: cls, title: text, "data-node": n.inventory.node_id, "data-state": n.state,
        onclick: () => { const d = $("node-detail"); d.textContent = text; d.hidden = false; },
      }));
    }
    const total = totals.get(sid) || nodes.length;
    const more = total > nodes.length ? ` (showing the first ${nodes.length} of ${total})` : "";
    map.append(el("div", { class: "heat-group", "data-subdomain": sid },
      el("h3", {}, `${sid} `, el("span", { class: "muted" }, `${nodes.length} node(s)${more}`)), cells));
  }
  if (!groups.size) map.append(el("p", { class: "muted" }, "no nodes"));
  if ((found.unreachable || []).length) map.append(el("p", { class: "error" }, `no answer from: ${found.unreachable.join(", ")}`));
}

// -- views: jobs ----------------------------------------------------------------------------------

function goodputText(j) {
  const g = j.goodput || {};
  return num(g.wall_s) > 0 ? `${(100 * num(g.effective_ratio)).toFixed(0)}%` : "-";
}

function renderJobs() {
  if (!S.jobs) return;
  const body = $("jobs-table").querySelector("tbody");
  clear(body);
  const jobs = S.jobs.jobs || [];
  $("jobs-empty").hidden = jobs.length > 0;
  for (const j of jobs) {
    const spec = j.spec || {}, res = spec.resources || {};
    const state = jobState(j);
    body.append(el("tr", { "data-job": j.job_id },
      el("td", {}, el("a", { href: `#/jobs/${encodeURIComponent(j.job_id)}` }, j.job_id)),
      el("td", {}, spec.name || "-"),
      el("td", {}, el("span", { class: `state ${state}`, "data-field": "state" }, state)),
      el("td", {}, spec.tenant || "system"),
      el("td", {}, String(num(spec.replicas))),
      el("td", {}, `${fmtCpus(res.cpu_millis)} cpu, ${fmtMem(res.memory_bytes)}${num(res.gpus) ? `, ${num(res.gpus)} gpu` : ""}`),
      el("td", {}, goodputText(j)),
      el("td", {}, fmtAge(j.created_at)),
      el("td", {}, j.message || "")));
  }
}

function stopJob() {
  if (S.jobTimer) clearInterval(S.jobTimer);
  S.jobTimer = null;
  S.jobId = "";
  S.jobState = "";
}

function openJob(jobId) {
  S.jobId = jobId;
  S.logSel = "";
  $("job-id").textContent = jobId;
  $("job-state").textContent = "";
  clear($("job-facts"));
  clear($("tasks-table").querySelector("tbody"));
  $("job-explain").textContent = "";
  $("job-logs").textContent = "";
  clear($("log-task"));
  refreshJob();
  S.jobTimer = setInterval(refreshJob, JOB_REFRESH_MS);
}

let refreshing = false;
async function refreshJob() {
  const jobId = S.jobId;
  if (!jobId || refreshing) return;
  refreshing = true;
  try {
    const job = await api(`/api/jobs/${encodeURIComponent(jobId)}`);
    if (S.jobId !== jobId) return;
    const wasTerminal = TERMINAL.has(S.jobState);
    renderJob(job);
    const why = await api(`/api/jobs/${encodeURIComponent(jobId)}/explain`);
    if (S.jobId !== jobId) return;
    $("job-explain").textContent = why.text || "";
    await refreshLogs();
    if (wasTerminal && TERMINAL.has(S.jobState) && S.jobTimer) {
      clearInterval(S.jobTimer); // finished and shown once more: nothing changes any more
      S.jobTimer = null;
    }
  } catch (err) {
    if (S.jobId === jobId) $("job-explain").textContent = err.message;
  } finally {
    refreshing = false;
  }
}

function renderJob(job) {
  const spec = job.spec || {}, res = spec.resources || {};
  const state = jobState(job);
  S.jobState = state;
  const st = $("job-state");
  st.textContent = state;
  st.className = `state ${state}`;
  const facts = $("job-facts");
  clear(facts);
  const g = job.goodput || {};
  for (const [k, v] of [
    ["name", spec.name || "-"],
    ["tenant", spec.tenant || "system"],
    ["command", (spec.command || []).join(" ")],
    ["replicas", String(num(spec.replicas))],
    ["resources", `${fmtCpus(res.cpu_millis)} cpu, ${fmtMem(res.memory_bytes)}${num(res.gpus) ? `, ${num(res.gpus)} gpu` : ""} per task`],
    ["priority", spec.priority || "normal"],
    ["submitted", new Date(num(job.created_at) * 1000).toLocaleString()],
    ["goodput", num(g.wall_s) > 0 ? `${goodputText(job)} (productive ${num(g.productive_s).toFixed(1)}s of ${num(g.wall_s).toFixed(1)}s, ${num(g.interruptions)} interruptions)` : "-"],
    ["message", job.message || "-"],
  ]) facts.append(el("dt", {}, k), el("dd", {}, v));
  const body = $("tasks-table").querySelector("tbody");
  clear(body);
  for (const t of job.tasks || []) {
    const ts = enumName(t.state, "TASK_STATE_");
    body.append(el("tr", { "data-task": t.index },
      el("td", {}, String(num(t.index))), el("td", {}, String(num(t.attempt))),
      el("td", {}, el("span", { class: `state ${ts}` }, ts)),
      el("td", {}, t.node_id || "-"), el("td", {}, t.subdomain_id || "-"), el("td", {}, t.region || "-"),
      el("td", {}, TERMINAL.has(ts) || ts === "FAILED" ? String(num(t.exit_code)) : "-"),
      el("td", {}, t.message || "")));
  }
  const select = $("log-task");
  const n = (job.tasks || []).length;
  if (select.options.length !== n) {
    clear(select);
    for (let i = 0; i < n; i++) select.append(el("option", { value: i }, `task ${i}`));
  }
}

async function refreshLogs() {
  const jobId = S.jobId;
  const task = $("log-task").value || "0";
  const stream = $("log-stream").value || "stdout";
  const found = await api(`/api/jobs/${encodeURIComponent(jobId)}/logs?task=${encodeURIComponent(task)}&stream=${stream}`);
  if (S.jobId !== jobId) return;
  const log = (found.logs || [])[0];
  const pre = $("job-logs");
  if (!log) pre.textContent = "";
  else if (log.error && !log.text) pre.textContent = `(${log.error})`;
  else pre.textContent = (num(log.offset) > 0 ? `... (last ${log.text.length} bytes of ${num(log.size)})\n` : "") + log.text;
  pre.scrollTop = pre.scrollHeight;
}

// -- views: tenants and quotas --------------------------------------------------------------------

function fmtAmount(cls, amount) {
  if (cls === "cpu") return fmtCpus(amount);
  if (cls === "memory") return fmtMem(amount);
  return String(num(amount));
}

async function loadTenants() {
  const list = clear($("tenant-list"));
  try {
    const found = await api("/api/tenants");
    for (const t of found.tenants || []) {
      const labels = Object.entries(t.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
      list.append(el("li", { "data-tenant": t.name }, el("strong", {}, t.name),
        el("span", { class: "muted" }, ` created ${fmtAge(t.created_at)} ago by ${t.created_by || "-"}${labels ? "; " + labels : ""}`)));
    }
  } catch (err) {
    if (err.status !== 403) list.append(el("li", { class: "error" }, err.message));
    else list.append(el("li", { "data-tenant": S.me.tenant }, el("strong", {}, S.me.tenant),
      el("span", { class: "muted" }, " (your tenant; listing every tenant needs an admin token)")));
  }
  const body = clear($("quota-table").querySelector("tbody"));
  try {
    const found = await api("/api/quotas");
    const quotas = found.quotas || [];
    $("quotas-empty").hidden = quotas.length > 0;
    for (const q of quotas) {
      const scope = `${q.region || "*"}/${q.subdomain || "*"}`;
      for (const [cls, limitRaw] of Object.entries(q.limits || {}).sort()) {
        const limit = num(limitRaw), used = num((q.used || {})[cls]);
        const share = limit > 0 ? `${((100 * used) / limit).toFixed(0)}%` : used ? "over" : "0%";
        body.append(el("tr", { "data-quota": `${q.tenant}/${scope}/${cls}` },
          el("td", {}, q.tenant), el("td", {}, scope), el("td", {}, cls),
          el("td", {}, `${fmtAmount(cls, used)}/${fmtAmount(cls, limit)}`), el("td", {}, bar(used, limit), ` ${share}`)));
      }
    }
  } catch (err) {
    body.append(el("tr", {}, el("td", { colspan: 5, class: "error" }, err.message)));
  }
}

// -- start ----------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    $("login-error").textContent = "";
    login($("token").value).catch((err) => logout(err.message || String(err)));
  });
  $("logout").addEventListener("click", () => logout(""));
  $("nodes-refresh").addEventListener("click", loadNodes);
  $("log-task").addEventListener("change", refreshLogs);
  $("log-stream").addEventListener("change", refreshLogs);
  window.addEventListener("hashchange", route);
  if (S.token) login(S.token).catch((err) => logout(err.message || String(err)));
  else logout("");
});
