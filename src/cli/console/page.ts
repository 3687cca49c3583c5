/**
 * The console's one page: HTML, CSS and a small script. No CDN: uPlot is served by the
 * console itself from the copy embedded in the binary (assets.ts). The script polls
 * /api/status, draws two live charts, fills the tables, tails a channel over
 * /api/tail (server-sent events) and, with an admin key, creates and destroys channels.
 */

export interface PageOptions {
  readonly cluster: string;
  /** Sent back in the x-fitb-console-token header of every POST. */
  readonly token: string;
  readonly admin: boolean;
  readonly version: string;
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

export function consolePage(options: PageOptions): string {
  const config = JSON.stringify({ token: options.token, admin: options.admin }).replace(/</g, "\\u003c");
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fitb console: ${escapeHtml(options.cluster)}</title>
<link rel="stylesheet" href="/assets/uPlot.min.css">
<style>${CSS}</style>
</head>
<body>
<header>
  <h1>fitb <span id="cluster">${escapeHtml(options.cluster)}</span></h1>
  <span id="health" class="badge">connecting</span>
  <span id="summary"></span>
  <span class="right">${options.admin ? "admin" : "read-only"} &middot; fitb ${escapeHtml(options.version)} &middot; <span id="clock"></span></span>
</header>
<main>
  <section id="problems-section"><ul id="problems"></ul></section>
  <section class="charts">
    <div><h2>Events per second</h2><div id="chart-rates"></div></div>
    <div><h2>Latency p99 (ms)</h2><div id="chart-latency"></div></div>
  </section>
  <section>
    <h2>Replicas <button id="sys-events" title="what the group agrees happened to it: f+1 replicas reported it">tail $sys.events</button></h2>
    <table id="replicas"><thead><tr><th>replica</th><th>address</th><th>up</th><th>view</th><th>leader</th><th>decided</th><th>behind</th><th>note</th><th></th></tr></thead><tbody></tbody></table>
  </section>
  <section>
    <h2>Channels</h2>
    <table id="channels"><thead><tr><th>tag</th><th>class</th><th>priority</th><th>pub/s</th><th>stored/s</th><th>deliv/s</th><th>shed/s</th><th>stored</th><th></th></tr></thead><tbody></tbody></table>
    <p id="latency"></p>
  </section>
  <section id="admin" ${options.admin ? "" : "hidden"}>
    <h2>Create a channel</h2>
    <form id="create">
      <input name="tag" placeholder="tag, e.g. net.links" required>
      <select name="fault"><option>crash</option><option>byzantine</option></select>
      <select name="order"><option>none</option><option>total</option></select>
      <select name="priority"><option>low</option><option selected>normal</option><option>high</option><option>critical</option></select>
      <label><input type="checkbox" name="public" checked> public</label>
      <button type="submit">create</button>
      <span id="admin-result"></span>
    </form>
  </section>
  <section>
    <h2>Live tail <span id="tail-tag"></span></h2>
    <p id="tail-state">Pick a channel above ("tail").</p>
    <table id="tail"><thead><tr><th>time</th><th>seq</th><th>publisher</th><th>vouched by</th><th>payload</th></tr></thead><tbody></tbody></table>
  </section>
</main>
<script src="/assets/uPlot.iife.min.js"></script>
<script>const CONSOLE = ${config};
${SCRIPT}</script>
</body>
</html>
`;
}

/**
 * The one page a browser without the console's session gets: what to do, nothing about
 * the cluster. `reason` says why this browser is not in.
 */
export function loginNeededPage(reason: string): string {
  return `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>fitb console: log in</title></head>
<body style="font: 14px system-ui, sans-serif; margin: 2em">
<h1 style="font-size: 1.2em">fitb console</h1>
<p>${escapeHtml(reason)}</p>
<p>Open the URL that <code>fitb console</code> (or <code>fitb demo</code>) printed when it started: it ends in
<code>/?login=...</code> and logs one browser in. It works once; to log in another browser, restart the console
for a new URL.</p>
</body>
</html>
`;
}

/**
 * The answer to the login URL: the session cookie comes with it, and the script replaces
 * the address (and its history entry) with one without the secret. A page rather than a
 * 303 redirect: after a redirect a browser does not send a SameSite=Strict cookie when the
 * link was followed from another site (a chat, a web mail), and the page would say "log
 * in" again; a navigation started by this page is the console's own.
 */
export function loggedInPage(): string {
  return `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>fitb console</title></head>
<body style="font: 14px system-ui, sans-serif; margin: 2em">
<p>Logged in. <a href="/">Open the console</a>.</p>
<script>location.replace("/");</script>
</body>
</html>
`;
}

const CSS = `
body { font: 14px system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1d2430; }
header { display: flex; gap: 1em; align-items: baseline; padding: .6em 1em; background: #1d2430; color: #fff; }
header h1 { font-size: 1.2em; margin: 0; }
.right { margin-left: auto; opacity: .8; }
.badge { padding: .1em .6em; border-radius: 1em; background: #777; }
.badge.ok { background: #2e7d32; } .badge.degraded { background: #ef8f00; } .badge.no-quorum { background: #c62828; }
main { padding: .5em 1em; }
section { background: #fff; border-radius: 6px; padding: .5em 1em; margin: .6em 0; box-shadow: 0 1px 2px #0002; }
h2 { font-size: 1em; margin: .3em 0; }
.charts { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .2em .5em; border-bottom: 1px solid #eee; font-variant-numeric: tabular-nums; }
td.down, td.flag { color: #c62828; }
#problems { color: #c62828; margin: .2em 0; }
#problems:empty::before { content: "No problems."; color: #2e7d32; }
#tail td:last-child { font-family: ui-monospace, monospace; white-space: pre-wrap; word-break: break-all; }
`;

/** The page's script: plain DOM, no framework. */
const SCRIPT = `
const POINTS_MAX = 300;
const $ = (id) => document.getElementById(id);
const series = { t: [], pub: [], stored: [], deliv: [], ack: [], ord: [], deliv99: [] };
function cell(row, text, cls) { const td = row.insertCell(); td.textContent = text == null ? "-" : String(text); if (cls) td.className = cls; return td; }
function fixed(x) { return x == null ? "-" : x >= 100 ? x.toFixed(0) : x.toFixed(1); }
function chart(el, labels, colors) {
  const opts = { width: Math.max(300, el.clientWidth || 500), height: 200, series: [{}].concat(labels.map((label, i) => ({ label, stroke: colors[i], width: 2 }))), axes: [{}, {}] };
  return new uPlot(opts, [[]].concat(labels.map(() => [])), el);
}
const rates = chart($("chart-rates"), ["published/s", "stored/s", "delivered/s"], ["#1565c0", "#2e7d32", "#ef8f00"]);
const latency = chart($("chart-latency"), ["publish-ack", "ordering", "delivery"], ["#1565c0", "#6a1b9a", "#ef8f00"]);
function push(name, value) { const a = series[name]; a.push(value); if (a.length > POINTS_MAX) a.shift(); }
function sum(channels, key) { let s = null; for (const c of channels) if (c[key] != null) s = (s || 0) + c[key]; return s; }
function render(s) {
  $("health").textContent = s.health; $("health").className = "badge " + s.health;
  $("summary").textContent = "view " + (s.view ?? "-") + ", leader " + (s.leader ?? "none") + (s.agreed ? "" : " (disputed)") + ", " + s.answered + "/" + s.n + " replicas up";
  $("clock").textContent = new Date(s.atMs).toLocaleTimeString();
  const problems = $("problems"); problems.replaceChildren();
  for (const p of s.problems) { const li = document.createElement("li"); li.textContent = p; problems.appendChild(li); }
  const body = $("replicas").tBodies[0]; body.replaceChildren();
  for (const r of s.replicas) {
    const row = body.insertRow(); row.dataset.replica = r.id;
    cell(row, r.id); cell(row, r.address); cell(row, r.up ? "up" : "down", r.up ? "" : "down");
    cell(row, r.view); cell(row, r.leader); cell(row, r.last_decided); cell(row, r.behind);
    cell(row, r.up ? r.flags.join(", ") : r.reason, r.up ? "flag" : "down");
    const h = document.createElement("button"); h.textContent = "health"; h.title = "tail $sys.replica." + r.id; h.onclick = () => tail("$sys.replica." + r.id); row.insertCell().appendChild(h);
  }
  const channels = $("channels").tBodies[0]; channels.replaceChildren();
  for (const c of s.traffic) {
    const row = channels.insertRow(); row.dataset.tag = c.tag;
    cell(row, c.tag); cell(row, c.class); cell(row, c.priority); cell(row, fixed(c.publishedPerS)); cell(row, fixed(c.storedPerS));
    cell(row, fixed(c.deliveredPerS)); cell(row, fixed(c.shedPerS)); cell(row, c.stored);
    const td = row.insertCell();
    if (c.tag !== "_other") { const b = document.createElement("button"); b.textContent = "tail"; b.onclick = () => tail(c.tag); td.appendChild(b); }
    if (CONSOLE.admin && c.tag !== "_other") { const d = document.createElement("button"); d.textContent = "destroy"; d.onclick = () => destroy(c.tag); td.appendChild(d); }
  }
  const l = s.latency;
  $("latency").textContent = "Last interval: publish-ack p50 " + fixed(l.publishAck.p50Ms) + " ms, p99 " + fixed(l.publishAck.p99Ms) + " ms; ordering p99 " + fixed(l.ordering.p99Ms) + " ms; storage commit p99 " + fixed(l.storageCommit.p99Ms) + " ms; delivery p99 " + fixed(l.delivery.p99Ms) + " ms";
  push("t", s.atMs / 1000); push("pub", sum(s.traffic, "publishedPerS")); push("stored", sum(s.traffic, "storedPerS")); push("deliv", sum(s.traffic, "deliveredPerS"));
  push("ack", l.publishAck.p99Ms); push("ord", l.ordering.p99Ms); push("deliv99", l.delivery.p99Ms);
  rates.setData([series.t, series.pub, series.stored, series.deliv]);
  latency.setData([series.t, series.ack, series.ord, series.deliv99]);
}
async function poll() {
  try { const r = await fetch("/api/status"); if (r.ok) render(await r.json()); else $("health").textContent = "error " + r.status; }
  catch (e) { $("health").textContent = "console unreachable"; $("health").className = "badge no-quorum"; }
  setTimeout(poll, 2000);
}
let source = null;
const TAIL_ROWS_MAX = 200;
/** "3/4 replicas": how many replicas sent this event's batch so far; which ones, and the delivery rule, on hover. */
function showVouchers(row, td, vouchers) {
  td.textContent = vouchers.length === 0 ? "not counted" : vouchers.length + "/" + row.dataset.of + " replicas";
  td.title = (vouchers.length === 0 ? "" : "replicas " + vouchers.join(", ") + "; ") + row.dataset.rule;
  td.className = "vouched";
}
function tail(tag) {
  if (source) source.close();
  $("tail-tag").textContent = tag; $("tail").tBodies[0].replaceChildren(); $("tail-state").textContent = "subscribing...";
  source = new EventSource("/api/tail?tag=" + encodeURIComponent(tag));
  source.addEventListener("ready", () => { $("tail-state").textContent = "live: new events of " + tag + " appear here"; });
  source.addEventListener("event", (m) => {
    const e = JSON.parse(m.data); const body = $("tail").tBodies[0]; const row = body.insertRow(0);
    row.dataset.batch = e.batch; row.dataset.of = e.of; row.dataset.rule = e.rule;
    cell(row, new Date(e.ts).toLocaleTimeString()); cell(row, e.seq); cell(row, e.publisher.slice(0, 20) + "..."); showVouchers(row, cell(row, ""), e.vouchers); cell(row, e.payload);
    while (body.rows.length > TAIL_ROWS_MAX) body.deleteRow(-1);
  });
  source.addEventListener("vouch", (m) => {
    const v = JSON.parse(m.data);
    for (const row of $("tail").tBodies[0].querySelectorAll('tr[data-batch="' + Number(v.batch) + '"]')) showVouchers(row, row.cells[3], v.vouchers);
  });
  source.addEventListener("dropped", (m) => { $("tail-state").textContent = JSON.parse(m.data).reason; });
  source.addEventListener("end", (m) => { $("tail-state").textContent = "ended: " + JSON.parse(m.data).reason; source.close(); });
}
async function admin(cmd) {
  const r = await fetch("/api/admin", { method: "POST", headers: { "content-type": "application/json", "x-fitb-console-token": CONSOLE.token }, body: JSON.stringify(cmd) });
  const answer = await r.json(); $("admin-result").textContent = answer.ok ? "ok: " + answer.message : "refused: " + answer.error;
}
function destroy(tag) { if (confirm("Destroy channel " + tag + " and its events?")) admin({ t: "destroy-channel", tag }); }
$("create").onsubmit = (ev) => {
  ev.preventDefault(); const f = new FormData(ev.target);
  admin({ t: "create-channel", tag: f.get("tag"), fault: f.get("fault"), order: f.get("order"), priority: f.get("priority"), public: f.get("public") === "on" });
};
$("sys-events").onclick = () => tail("$sys.events");
poll();
`;
