// The dashboard: polls ../status (the server this page came from) and shows it.
// Every value from the server is put in the page as text (textContent, attributes by
// setAttribute): route names, errors and DNS answers come from users and DNS.
"use strict";

const POLL_MS = 2000;
const RATE_WINDOW_S = 60; // request rates are averaged over the samples of the last minute
const HISTORY_S = 900; // the charts: the last 15 minutes, kept in this page's memory only
const STEP_S = 10; // one chart point per 10 s (differences of samples at least this far apart)
const SVG = "http://www.w3.org/2000/svg";
const TOKEN_KEY = "swarm-gateway-admin-token";
let timer = null; // the next poll
let inFlight = false; // one poll at a time
const samples = []; // [{at, routes: {label: {1xx.., duration}}, tcp}]: rates and charts

// el("td", {class: "num", "data-label": "Tasks"}, "2", child, ...): strings become text nodes
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined && v !== false) node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false || c === "") continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const badge = (text, kind) => el("span", {class: "badge " + (kind || "")}, text);

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.max(0, Math.round(seconds));
  if (s < 90) return s + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  if (s < 172800) return Math.round(s / 3600) + " h";
  return Math.round(s / 86400) + " d";
}

const now = () => Date.now() / 1000;
const clock = (at) => at ? new Date(at * 1000).toLocaleString() : "";

function section(id, title, ...body) {
  return el("section", {id: id}, el("h2", {}, title), ...body);
}

function table(columns, rows, empty, rowAttrs) {
  if (!rows.length) return el("p", {class: "empty"}, empty);
  const head = el("thead", {}, el("tr", {}, columns.map((c) => el("th", {}, c))));
  const body = el("tbody", {}, rows.map((cells, i) => el("tr", rowAttrs ? rowAttrs[i] : {},
    cells.map((cell, j) => {
      const [content, cls] = Array.isArray(cell) ? cell : [cell, null];
      return el("td", {"data-label": columns[j], class: cls}, content);
    }))));
  return el("table", {}, head, body);
}

function cards(items) {
  return el("div", {class: "cards"}, items.filter(Boolean).map(([k, v, id]) =>
    el("div", {class: "card"}, el("div", {class: "k"}, k), el("div", {class: "v", id: id}, v))));
}

function list(items, cls) {
  return el("ul", {class: "plain"}, items.map((t) => el("li", {class: cls}, t)));
}

// -- the gateway's /status -------------------------------------------------------------------

function serviceState(e) {
  if (!e || e.state === "unknown") return ["unknown", "", "not resolved yet"];
  if (e.stale) return ["stale", "warn", "last lookup failed; serving the last known tasks"];
  if (e.state === "none") return ["503", "bad", "no running task: requests get 503"];
  return ["serving", "ok", ""];
}

function rates(label) {
  if (samples.length < 2) return null;
  const last = samples[samples.length - 1];
  const first = samples.find((s) => last.at - s.at <= RATE_WINDOW_S) || samples[0];
  const a = first.routes[label], b = last.routes[label], dt = last.at - first.at;
  if (!a || !b || dt <= 0) return null;
  const total = (r) => r["1xx"] + r["2xx"] + r["3xx"] + r["4xx"] + r["5xx"];
  const requests = total(b) - total(a);
  if (requests < 0) return null; // the agent restarted: its counters began again
  return {requests: requests, rate: requests / dt, errors: requests ? (b["5xx"] - a["5xx"]) / requests : 0,
          upstreamErrors: b.upstream_errors - a.upstream_errors};
}

// -- charts: request rate, 5xx share and p95 latency per route over the last 15 minutes ------

const totalOf = (r) => r["1xx"] + r["2xx"] + r["3xx"] + r["4xx"] + r["5xx"];

// the upper bound of the bucket holding the q-th quantile of these (non-cumulative) counts
function quantile(counts, bounds, q) {
  const total = counts.reduce((a, b) => a + b, 0);
  if (!total) return null;
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    seen += counts[i];
    if (seen >= q * total) return i < bounds.length ? bounds[i] : Infinity;
  }
  return null;
}

// [{at, rate, errors, p95}] of one route: differences of samples STEP_S apart
function series(label, bounds) {
  const out = [];
  let prev = null;
  for (const s of samples) {
    const b = s.routes[label];
    if (!b) { prev = null; continue; }
    if (!prev) { prev = s; continue; }
    const dt = s.at - prev.at;
    if (dt < STEP_S) continue;
    const a = prev.routes[label];
    const n = totalOf(b) - totalOf(a);
    prev = s;
    if (n < 0) continue; // the agent restarted
    const counts = (b.duration || []).map((c, i) => c - ((a.duration || [])[i] || 0));
    out.push({at: s.at, rate: n / dt, errors: n ? (b["5xx"] - a["5xx"]) / n : null,
              p95: n ? quantile(counts, bounds, 0.95) : null});
  }
  return out;
}

// a sparkline: the points' values over the last HISTORY_S, scaled to their own maximum
function spark(points, key, format, kind) {
  const w = 150, h = 28, end = samples.length ? samples[samples.length - 1].at : 0;
  const values = points.filter((p) => p[key] !== null && isFinite(p[key]));
  const max = Math.max(...values.map((p) => p[key]), 0);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark " + (kind || ""));
  svg.setAttribute("viewBox", "0 0 " + w + " " + h);
  svg.setAttribute("width", String(w));
  svg.setAttribute("height", String(h));
  svg.setAttribute("role", "img");
  const last = values.length ? values[values.length - 1][key] : null;
  const title = document.createElementNS(SVG, "title");
  title.textContent = values.length ? "now " + format(last) + ", 15 min max " + format(max)
    : "no requests yet";
  svg.append(title);
  const base = document.createElementNS(SVG, "line");
  for (const [k, v] of [["x1", 0], ["x2", w], ["y1", h - 1], ["y2", h - 1]]) {
    base.setAttribute(k, String(v));
  }
  base.setAttribute("class", "base");
  svg.append(base);
  if (values.length) {
    const xy = values.map((p) => [w - (end - p.at) / HISTORY_S * w,
                                  h - 2 - (max ? p[key] / max : 0) * (h - 4)]);
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", xy.map(([x, y]) => x.toFixed(1) + "," + y.toFixed(1)).join(" "));
    svg.append(line);
    const dot = document.createElementNS(SVG, "circle"); // the latest point, also when alone
    const [x, y] = xy[xy.length - 1];
    dot.setAttribute("cx", x.toFixed(1));
    dot.setAttribute("cy", y.toFixed(1));
    dot.setAttribute("r", "2");
    svg.append(dot);
  }
  return el("span", {class: "chart"}, svg,
            el("span", {class: "now num"}, last === null ? "–" : format(last)));
}

const fmtRate = (v) => v.toFixed(v < 10 ? 2 : 0) + "/s";
const fmtShare = (v) => (100 * v).toFixed(v && v < 0.1 ? 1 : 0) + "%";
const fmtSeconds = (v) => !isFinite(v) ? "> 60 s" : v < 1 ? "≤ " + Math.round(v * 1000) + " ms"
  : "≤ " + v + " s";

function historySection(doc) {
  if (doc.traffic === null) return null;
  const bounds = doc.traffic.buckets || [];
  const labels = [...doc.routes.map((r) => r.label), "unrouted"];
  const rows = labels.map((label) => {
    const pts = series(label, bounds);
    return [[label, "mono"], [spark(pts, "rate", fmtRate), "chart"],
            [spark(pts, "errors", fmtShare, "bad"), "chart"],
            [spark(pts, "p95", fmtSeconds, "warn"), "chart"]];
  });
  return section("history-charts", "Last 15 minutes", table(
    ["Route", "Requests/s", "5xx share", "p95 latency"], rows, "No routes.",
    labels.map((l) => ({"data-chart": l}))),
  el("p", {class: "muted"}, "Kept by this page since it was opened (one point per " + STEP_S +
     " s); p95 is the upper bound of nginx's latency bucket."));
}

function tcpSection(doc) {
  const rows = doc.tcp || [];
  if (!rows.length) return null;
  const on = doc.traffic !== null;
  const last = samples.length ? samples[samples.length - 1] : null;
  const first = last ? samples.find((s) => last.at - s.at <= RATE_WINDOW_S) : null;
  return section("tcp", "TCP routes", table(
    ["Route", "Target", "Tasks", "State", "Connections", "Per second", "Bytes in / out",
     "Problems"],
    rows.map((r) => {
      const e = doc.endpoints[r.service || r.host];
      const [state, kind, why] = serviceState(e);
      const now = on && last ? last.tcp[r.label] : null;
      const then = on && first ? first.tcp[r.label] : null;
      const dt = last && first ? last.at - first.at : 0;
      const rate = now && then && dt > 0 ? (now.connections - then.connections) / dt : null;
      return [[r.label, "mono"], (r.service ? "tasks." + r.service : r.host) + ":" + r.port,
              [e ? String(e.addresses.length) : "0", "num tasks"],
              [el("span", {title: why}, badge(state, kind)), "state"],
              [now ? String(now.connections) + (now.failed ? " (" + now.failed + " refused)" : "")
                : "–", "num connections"],
              [rate === null ? "–" : rate.toFixed(2), "num"],
              [now ? bytes(now.bytes_in) + " / " + bytes(now.bytes_out) : "–", "num"],
              [r.refused ? list(["port refused: " + r.refused], "error") : "", "errors"]];
    }), "", rows.map((r) => ({"data-tcp": r.label}))));
}

function bytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
  if (n < 1073741824) return (n / 1048576).toFixed(1) + " MiB";
  return (n / 1073741824).toFixed(2) + " GiB";
}

function trafficCell(label, on) {
  if (!on) return "–";
  const r = rates(label);
  if (!r) return "measuring…";
  return r.rate.toFixed(r.rate < 10 ? 2 : 0) + " req/s";
}

function errorCell(label, on) {
  if (!on) return "–";
  const r = rates(label);
  if (!r || !r.requests) return "–";
  const pct = (100 * r.errors).toFixed(r.errors && r.errors < 0.1 ? 1 : 0) + "% 5xx";
  return r.errors > 0 ? badge(pct, r.errors >= 0.05 ? "bad" : "warn") : pct;
}

// a route's path, and the requests it takes of it (match: headers and methods) when it says
function pathCell(r) {
  const m = r.match;
  if (!m) return r.path || "/";
  const parts = Object.entries(m.headers || {}).map(([k, v]) => k + ": " + v);
  if (m.methods && m.methods.length) parts.push(m.methods.join(" | "));
  return [r.path || "/", el("div", {class: "muted match"}, "match " + parts.join(", "))];
}

function routeErrors(route, doc, e) {
  const out = [];
  if (e && e.error) out.push(e.error);
  for (const h of route.hosts) {
    const t = doc.tls[h];
    if (t && t.error) out.push(h + ": certificate refused: " + t.error);
  }
  return out;
}

function renderGateway(doc) {
  const t = now();
  const on = doc.traffic !== null;
  if (on) {
    samples.push({at: doc.traffic.at, routes: doc.traffic.routes, tcp: doc.traffic.tcp || {}});
    while (samples.length > 2 && samples[samples.length - 1].at - samples[0].at > HISTORY_S) {
      samples.shift();
    }
  }
  const services = Object.entries(doc.endpoints);
  const hosts = Object.entries(doc.tls);
  const refused = hosts.filter(([, c]) => c.error).length;
  const vrrp = doc.vrrp;

  const overview = cards([
    ["Ready", doc.ready ? badge("ready", "ok") : badge("not ready", "bad"), "ready"],
    ["Last cycle", doc.status, "status"],
    ["Routes", String(doc.routes.length)],
    ["Services", String(services.length) + " (" + services.filter(([, e]) => e.state === "ok"
      && !e.stale).length + " serving)"],
    ["nginx", doc.nginx.running ? "pid " + doc.nginx.pid : badge("not running", "bad")],
    ["DNS answered", doc.discovery_age === null ? "not yet" : ago(doc.discovery_age) + " ago"],
    ["Zone", doc.zone || "all zones"],
    vrrp ? ["VIP (keepalived)", vrrp.instances.length ? vrrp.instances.map((i) =>
      badge(i.name + " " + i.state, i.state === "MASTER" ? "ok" : i.state === "FAULT"
        ? "bad" : "")) : (vrrp.error || "no instance"), "vrrp"] : null,
    ["Version", doc.version],
  ]);
  const problems = doc.problems.length ? list(doc.problems, "error") : null;

  const routeRows = doc.routes.map((r) => {
    const key = r.service || r.host;
    const e = doc.endpoints[key];
    const [state, kind, why] = serviceState(e);
    const errs = routeErrors(r, doc, e);
    return [
      r.hosts.join(", "), [pathCell(r), "mono"],
      (r.service ? "tasks." + r.service : r.host) + ":" + r.port,
      r.zone || "–", r.source,
      [e ? String(e.addresses.length) : "0", "num tasks"],
      [el("span", {title: why}, badge(state, kind)), "state"],
      [trafficCell(r.label, on), "num rate"], [errorCell(r.label, on), "ratio"],
      [errs.length ? list(errs, "error") : "", "errors"],
    ];
  });
  const routes = section("routes", "Routes", table(
    ["Hosts", "Path", "Target", "Zone", "Source", "Tasks", "State", "Requests", "Errors",
     "Problems"], routeRows, "No routes.",
    doc.routes.map((r) => ({"data-route": r.label}))),
  on ? null : el("p", {class: "muted"},
    "Request rates: off (the agent's --access-log-metrics)."));

  const serviceRows = services.map(([name, e]) => {
    const [state, kind, why] = serviceState(e);
    const fresh = e.stale ? "stale: " + (e.error || "lookup failed")
      : e.since ? "tasks unchanged for " + ago(t - e.since) : "";
    return [name, [e.lookup, "mono"], [String(e.addresses.length), "num tasks"],
            [e.addresses.join(" "), "mono addresses"],
            [el("span", {title: why}, badge(state, kind)), "state"], [fresh, "fresh"]];
  });
  const servicesSection = section("services", "Services", table(
    ["Service", "Lookup", "Tasks", "Addresses", "State", "Freshness"], serviceRows,
    "No services.", services.map(([name]) => ({"data-service": name}))));

  const certRows = hosts.map(([host, c]) => {
    const left = c.not_after ? (Date.parse(c.not_after) / 1000 - t) / 86400 : null;
    const expiry = c.not_after ? new Date(c.not_after).toISOString().slice(0, 10) + " (" +
      (left < 0 ? "expired" : Math.floor(left) + " days left") + ")" : "–";
    const state = c.error ? (c.serving ? badge("refused, older one serves", "warn")
      : badge("refused", "bad")) : c.serving ? badge(left !== null && left < 14 ? "expires soon"
        : "serving", left !== null && left < 14 ? "warn" : "ok") : badge("none", "");
    return [host, c.acme ? "ACME" : c.certificate || "", [expiry, "num"], [state, "state"],
            [c.error || "", "error"]];
  });
  const certs = hosts.length ? section("certificates", "Certificates" +
    (refused ? " (" + refused + " refused)" : ""), table(
      ["Host", "Source", "Expires", "State", "Refusal"], certRows, "",
      hosts.map(([h]) => ({"data-host": h})))) : null;

  const errors = [];
  if (doc.routes_error) errors.push("routes file refused: " + doc.routes_error);
  for (const t of doc.tcp || []) {
    if (t.refused) errors.push("tcp port " + t.listen + " refused: " + t.refused);
  }
  const src = doc.routes_source;
  if (src) {
    if (!src.reachable) errors.push("controller " + src.url + " not reachable: " +
      (src.last_error || "no answer yet"));
    errors.push(...src.errors, ...src.conflicts);
  }
  if (doc.last_error) errors.push("last error: " + doc.last_error);
  const errorsSection = section("errors", "Errors", errors.length ? list(errors, "error")
    : el("p", {class: "empty"}, "None."));

  const history = section("history", "Reloads and failures", table(
    ["When", "Status"], doc.history.map((h) => [[clock(h.at), "num"],
      [h.status, /^(reload refused|cycle failed)/.test(h.status) ? "error" : ""]]),
    "Nothing yet."));

  return [section("overview", "Overview", overview, problems), routes, historySection(doc),
          tcpSection(doc), servicesSection, certs, errorsSection, history];
}

// -- the controller's /status ----------------------------------------------------------------

function renderController(doc) {
  const d = doc.docker;
  const overview = cards([
    ["Ready", doc.ready ? badge("ready", "ok") : badge("not ready", "bad"), "ready"],
    ["Routes", String(doc.routes.length)],
    ["Labelled services", String(doc.services), "labelled"],
    ["Docker", d.last_error ? badge("not answering", "bad") : d.events_connected
      ? badge("following events", "ok") : badge("no event stream", "warn")],
    ["Last sync", d.last_sync_at ? clock(d.last_sync_at) : "not yet"],
    ["Label prefix", doc.label_prefix],
    ["Version", doc.version],
  ]);
  const problems = doc.problems.length ? list(doc.problems, "error") : null;
  const routes = section("routes", "Routes served to the gateways", table(
    ["Source", "Hosts", "Path", "Target", "Zone", "TLS"],
    doc.routes.map((r) => [r.source, r.hosts.join(", "), [pathCell(r), "mono"],
      (r.service ? "tasks." + r.service : r.host) + ":" + r.port, r.zone || "–",
      r.tls ? (r.tls.acme ? "ACME" : r.tls.certificate || "yes") : "–"]),
    "No routes.", doc.routes.map((r) => ({"data-route": r.label || r.hosts[0] + (r.path || "/")}))));
  const held = Object.entries(doc.held_for_tasks);
  const errors = section("errors", "Errors", doc.errors.length || held.length ? list([
    ...doc.errors, ...held.map(([n, s]) => n + ": waiting " + s + " s more for a running task")],
  "error") : el("p", {class: "empty"}, "None."));
  const out = [section("overview", "Controller", overview, problems), routes, errors];
  if (doc.acme) {
    const acme = Object.entries(doc.acme.hosts);
    out.push(section("certificates", "ACME certificates", table(
      ["Host", "Expires", "Renews", "Next order", "Last error"],
      acme.map(([h, a]) => [h, [a.not_after || "none yet", "num"], [a.renew_at || "", "num"],
        a.next_order || "", [a.last_error || "", "error"]]),
      "No route asks for ACME.", acme.map(([h]) => ({"data-host": h})))));
  }
  return out;
}

// -- polling ---------------------------------------------------------------------------------

function headers() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? {Authorization: "Bearer " + token} : {};
}

async function poll() {
  if (inFlight) return;
  inFlight = true;
  const banner = document.getElementById("banner");
  const form = document.getElementById("token-form");
  try {
    const response = await fetch("../status", {cache: "no-store", headers: headers()});
    if (response.status === 401 || response.status === 403) {
      form.hidden = false;
      banner.hidden = false;
      banner.textContent = sessionStorage.getItem(TOKEN_KEY)
        ? "The token was not accepted." : "This server asks for a token.";
      return;
    }
    if (!response.ok) throw new Error("/status answered " + response.status);
    const doc = await response.json();
    form.hidden = true;
    banner.hidden = true;
    const controller = doc.nginx === undefined;
    document.getElementById("title").textContent = controller
      ? "swarm-gateway controller" : "swarm-gateway" + (doc.zone ? " (zone " + doc.zone + ")" : "");
    const summary = document.getElementById("summary");
    summary.textContent = doc.ready ? "ready" : "not ready";
    summary.className = "badge " + (doc.ready ? "ok" : "bad");
    document.getElementById("main").replaceChildren(
      ...(controller ? renderController(doc) : renderGateway(doc)).filter(Boolean));
    document.getElementById("updated").textContent =
      "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    banner.hidden = false;
    banner.textContent = "Cannot read /status: " + err.message + " (retrying)";
  } finally {
    inFlight = false;
    timer = setTimeout(poll, POLL_MS);
  }
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
  document.getElementById("token").value = "";
  samples.length = 0;
  clearTimeout(timer); // ask again now, with the token (or when the poll in flight ends)
  if (!inFlight) poll();
});

poll();
