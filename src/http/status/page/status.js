// The status page: renders each board the gateway sends (server-sent events on
// /status/events) and counts the elapsed seconds between boards. Text goes in as text
// (textContent), never as markup: numbers and names come from SIP peers.
"use strict";

let board = null;
let skew = 0; // the gateway's clock minus this browser's, in ms

const $ = (id) => document.getElementById(id);

function cell(row, text, className) {
  const td = document.createElement("td");
  if (className) {
    const span = document.createElement("span");
    span.className = className;
    span.textContent = text;
    td.appendChild(span);
  } else {
    td.textContent = text;
  }
  row.appendChild(td);
  return td;
}

function fill(id, rows, render) {
  const body = $(id);
  body.replaceChildren();
  for (const item of rows) {
    const row = document.createElement("tr");
    render(row, item);
    body.appendChild(row);
  }
  const none = $(id + "-none");
  if (none) none.hidden = rows.length > 0;
}

function elapsed(since) {
  if (since == null) return "";
  const secs = Math.max(0, Math.floor((Date.now() + skew - since) / 1000));
  const h = Math.floor(secs / 3600), m = Math.floor((secs % 3600) / 60), s = secs % 60;
  const two = (n) => String(n).padStart(2, "0");
  return (h > 0 ? h + ":" + two(m) : m) + ":" + two(s);
}

function clock(ms) {
  const d = new Date(ms);
  const two = (n) => String(n).padStart(2, "0");
  return two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
}

function percent(value) {
  return value == null ? "–" : value.toFixed(1) + "%";
}

function seconds(ms) {
  return ms == null ? "–" : (ms / 1000).toFixed(1) + " s";
}

function rateClass(value) {
  if (value == null) return "";
  return value >= 95 ? "good" : value >= 85 ? "warn" : "bad";
}

function since(call) {
  switch (call.state) {
    case "conference": return call.conference_since;
    case "talking": return call.answered_at;
    case "queued": return call.queued_since;
    default: return call.started_at;
  }
}

function renderTiles(b) {
  const tiles = $("kpis");
  tiles.replaceChildren();
  const today = b.today;
  $("figures-error").hidden = !b.figures_error;
  $("figures-error").textContent = b.figures_error || "";
  if (!today) return;
  for (const p of today.platforms) {
    const tile = document.createElement("div");
    tile.className = "tile";
    tile.dataset.platform = p.platform;
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = (p.platform === "-" ? "no platform" : p.platform) + " answer rate";
    const big = document.createElement("div");
    big.className = "big " + rateClass(p.answer_rate);
    big.textContent = percent(p.answer_rate);
    const small = document.createElement("div");
    small.className = "small";
    const gaveUp = p.median_abandon_ms != null ? " (after " + seconds(p.median_abandon_ms) + ")" : "";
    small.textContent = p.answered + " of " + p.offered + " answered · " + p.abandoned +
      " abandoned" + gaveUp + " · " + percent(p.service_level) + " within " + today.within_secs + " s";
    tile.append(name, big, small);
    tiles.appendChild(tile);
  }
  let requested = 0, connected = 0;
  for (const l of today.linkages) { requested += l.requested; connected += l.connected; }
  const tile = document.createElement("div");
  tile.className = "tile";
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = "linkages connected";
  const big = document.createElement("div");
  big.className = "big";
  big.textContent = connected + " / " + requested;
  const small = document.createElement("div");
  small.className = "small";
  small.textContent = today.conferences_held + " conferences";
  tile.append(name, big, small);
  tiles.appendChild(tile);
}

function render() {
  const b = board;
  if (!b) return;
  $("node").textContent = b.node ? "· " + b.node : "";
  $("day").textContent = "since " + clock(b.day_start);
  $("calls-count").textContent = "(" + b.calls.length + ")";
  renderTiles(b);
  fill("calls", b.calls, (row, c) => {
    row.dataset.callId = c.id;
    cell(row, c.citizen);
    cell(row, c.called);
    cell(row, c.desk ? c.desk + (c.platform ? " (" + c.platform + ")" : "") : "–");
    cell(row, c.state, "state " + c.state);
    cell(row, elapsed(since(c))).className = "elapsed";
    cell(row, c.ticket || "");
  });
  const under = b.calls.filter((c) => c.linking || c.conference_since != null);
  fill("linking", under, (row, c) => {
    row.dataset.callId = c.id;
    cell(row, c.citizen);
    if (c.linking) {
      row.dataset.linkageId = c.linking.id;
      cell(row, c.linking.kind);
      cell(row, c.linking.target + (c.linking.to_platform ? " (" + c.linking.to_platform + ")" : ""));
      cell(row, c.linking.state, "state " + c.linking.state);
      cell(row, elapsed(c.linking.requested_at)).className = "elapsed";
    } else {
      cell(row, "conference");
      cell(row, "–");
      cell(row, "mixing", "state conference");
      cell(row, elapsed(c.conference_since)).className = "elapsed";
    }
  });
  fill("linkages", b.linkages, (row, l) => {
    row.dataset.linkageId = l.id;
    row.dataset.outcome = l.outcome || "";
    cell(row, clock(l.requested_at));
    cell(row, l.kind);
    cell(row, (l.from || "–") + " → " + l.to);
    const outcome = l.outcome ? l.outcome + (l.sip_status ? " " + l.sip_status : "") : "under way";
    cell(row, outcome, "state " + (l.outcome || "requested"));
    cell(row, l.answered_at ? seconds(l.answered_at - l.requested_at) : "–");
  });
  fill("linkage-figures", b.today ? b.today.linkages : [], (row, l) => {
    cell(row, l.kind);
    cell(row, l.from + " → " + l.to);
    cell(row, String(l.requested));
    cell(row, String(l.connected));
    cell(row, String(l.failed));
    cell(row, seconds(l.median_answer_ms));
  });
  $("conferences").textContent = b.today
    ? "Conferences held today: " + b.today.conferences_held +
      (b.today.conference_median_ms != null ? " · median " + seconds(b.today.conference_median_ms) : "")
    : "";
  fill("peers", b.peers, (row, p) => {
    row.dataset.peer = p.name;
    cell(row, p.name);
    cell(row, p.platform || "–");
    cell(row, p.up ? (p.probed ? "up" : "not probed") : "down", "state " + (p.up ? "up" : "down"));
    cell(row, p.registered == null ? "–" : p.registered ? "yes" : "no",
      p.registered == null ? "" : "state " + (p.registered ? "yes" : "no"));
    cell(row, p.calls + (p.max_calls != null ? " / " + p.max_calls : ""));
  });
  const health = $("health");
  health.replaceChildren();
  const line = (text, ok) => {
    const li = document.createElement("li");
    li.className = ok ? "good" : "bad";
    li.textContent = (ok ? "● " : "▲ ") + text;
    health.appendChild(li);
  };
  const s = b.store;
  line(s.writing ? "store writing" : "store cannot write: " + s.held_records + " records held in memory",
    s.writing);
  if (s.write_errors > 0 || s.records_lost > 0) {
    line(s.write_errors + " store write errors, " + s.records_lost + " records lost", s.records_lost === 0);
  }
  if (b.recording) {
    const r = b.recording;
    line(r.full ? "recording disk full: new calls not recorded"
      : "recording: " + r.active + " calls, " + (r.disk_bytes / 1e9).toFixed(2) + " GB on disk", !r.full);
    if (r.write_errors > 0) line(r.write_errors + " recording write errors", false);
  } else {
    line("recording off", true);
  }
  $("masked").textContent = b.numbers_masked
    ? "Citizens' numbers are masked ([status] show_numbers)." : "";
}

function tick() {
  $("clock").textContent = clock(Date.now() + skew);
  render(); // the elapsed times move on between boards
}

function connect() {
  const feed = $("feed");
  const source = new EventSource("/status/events");
  source.addEventListener("board", (event) => {
    board = JSON.parse(event.data);
    skew = board.now - Date.now();
    feed.textContent = "live";
    feed.className = "feed live";
    render();
  });
  source.onerror = () => {
    feed.textContent = "reconnecting";
    feed.className = "feed down";
    // Refused (a new token, too many feeds) the browser gives up: start over in a while,
    // through the page itself (which says why if it is refused).
    if (source.readyState === EventSource.CLOSED) {
      setTimeout(() => location.reload(), 10000);
    }
  };
}

document.addEventListener("DOMContentLoaded", () => {
  connect();
  setInterval(tick, 1000);
});
