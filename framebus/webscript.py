"""The status page's script (webpage.py serves it inline, allowed by its hash in the CSP).

It polls /v1/cameras and /v1/subscriptions every second (and /healthz every few seconds, for
the version and uptime) and builds the page with ``textContent`` and DOM calls only: nothing
the API says is parsed as HTML. What it shows is never older than it says: once no answer has
come for ``STALE_MS`` (the daemon is gone, hangs or refuses), every card and the subscriber
table turn grey, the badges say "no data" and each card says when it was last seen; live views
stop. Sparklines (inline SVG) of each camera's fps and frame age cover the last 30 s, then
up to ``HISTORY_MS``, from the polls' answers: a gap is a time without data.
"""

SCRIPT = """
"use strict";
const LIVE_FPS = 5, LIVE_WIDTH = 640, POLL_MS = 1000, FETCH_MS = 4000, STALE_MS = 3000;
const HISTORY_MS = 5 * 60 * 1000, GAP_MS = 3500, WINDOW_MS = 10000, HEALTH_EVERY = 5;
// a browser opens at most 6 connections to a host: 3 live views, 2 polls and a snapshot
// (/healthz goes after the other two, never beside them)
const MAX_LIVE = 3;
const liveMaxMs = Math.max(30, Number(document.body.dataset.liveMaxSeconds) || 3600) * 1000;
const cameras = new Map(), subHistory = new Map();
let wanted = [];  // cameras whose live view is on, oldest first
let lastOk = 0, stale = false, polls = 0, health = null, healthAt = 0, lastCams = [];

function make(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}
function fact(list, label) {
  const value = make("dd");
  list.append(make("dt", "", label), value);
  return value;
}
function cameraPath(name) { return "/v1/cameras/" + encodeURIComponent(name); }
function fixed(x, digits) { return x === null || x === undefined ? "\\u2014" : x.toFixed(digits); }
function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  return s < 120 ? s + " s" : s < 7200 ? Math.floor(s / 60) + " min" : Math.floor(s / 3600) + " h";
}
function duration(s) {
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  return d ? d + " d " + h + " h" : h ? h + " h " + m + " min" : m ? m + " min " + (s % 60) + " s"
    : s + " s";
}

function spark(box, label) {
  // the page's <template> holds the SVG (parsed as SVG by the HTML parser)
  const svg = document.getElementById("spark").content.firstElementChild.cloneNode(true);
  const path = svg.querySelector("path");
  const value = make("span", "spark-value");
  const row = make("div", "spark-row");
  row.append(make("span", "spark-label", label), svg, value);
  box.append(row);
  return {svg, path, value};
}
function card(name) {
  const root = make("article", "camera");
  root.dataset.name = name;
  const head = make("div", "head"), state = make("span", "state");
  head.append(make("h3", "", name), state);
  const view = make("div", "view"), img = make("img", "live");
  img.alt = "live view of " + name;
  const placeholder = make("div", "placeholder", "no picture");
  view.append(img, placeholder);
  const facts = make("dl", "facts"), sparks = make("div", "sparks");
  const cam = {name, root, state, img, placeholder, reason: make("div", "reason"),
    seen: make("div", "seen"),
    fps: fact(facts, "fps"), size: fact(facts, "size"), codec: fact(facts, "decoder"),
    age: fact(facts, "frame age"), reconnects: fact(facts, "reconnects"),
    fpsSpark: spark(sparks, "fps"), ageSpark: spark(sparks, "frame age"), history: [],
    toggle: make("button", "toggle"), streaming: false, running: false, timer: 0, retry: 0};
  const snapshot = make("a", "snapshot", "snapshot");
  snapshot.href = cameraPath(name) + "/snapshot.jpg";
  snapshot.target = "_blank";
  snapshot.rel = "noopener";
  const actions = make("div", "actions");
  actions.append(cam.toggle, snapshot);
  root.append(head, cam.reason, cam.seen, view, facts, sparks, actions);
  cam.toggle.addEventListener("click", () => want(cam, !wanted.includes(name)));
  img.addEventListener("error", () => { stopLive(cam); cam.retry = Date.now() + 3000; sync(cam); });
  return cam;
}

function want(cam, on) {
  wanted = wanted.filter((name) => name !== cam.name);
  if (on) {
    wanted.push(cam.name);
    cam.retry = 0;
    while (wanted.length > MAX_LIVE) {
      const oldest = cameras.get(wanted.shift());
      if (oldest) sync(oldest);
    }
  }
  sync(cam);
}
function startLive(cam) {
  cam.running = true;
  cam.img.src = cameraPath(cam.name) + "/live.mjpeg?fps=" + LIVE_FPS + "&width=" + LIVE_WIDTH;
  clearTimeout(cam.timer);  // the daemon ends a view after http.live_max_seconds: renew it
  cam.timer = setTimeout(() => { stopLive(cam); sync(cam); }, liveMaxMs - 10000);
}
function stopLive(cam) {
  cam.running = false;
  clearTimeout(cam.timer);
  cam.img.removeAttribute("src");  // ends the request, and so the daemon's stream
}
function sync(cam) {
  const live = cam.streaming && !stale;  // a view is offered only for a camera streaming now
  const on = wanted.includes(cam.name);
  const run = on && live && !document.hidden && Date.now() >= cam.retry;
  if (run && !cam.running) startLive(cam);
  if (!run && cam.running) stopLive(cam);
  cam.root.classList.toggle("playing", cam.running);
  cam.toggle.hidden = !live;
  cam.toggle.textContent = on ? "stop live view" : "live view";
  cam.placeholder.textContent = stale ? "no data" : !cam.streaming ? "no picture"
    : on ? "starting\\u2026" : "live view off";
}

function drawSpark(s, points, key, floor, unit, digits) {
  // the last 30 s at first, growing to HISTORY_MS
  const now = Date.now();
  const span = Math.min(HISTORY_MS, Math.max(30000, points.length ? now - points[0].t : 0));
  const from = now - span;
  const top = Math.max(floor, ...points.map((p) => p[key] || 0)) * 1.1;
  let d = "", prev = 0;
  for (const p of points) {
    if (p[key] === null || p[key] === undefined) { prev = 0; continue; }
    const x = ((p.t - from) / span * 300).toFixed(1);
    const y = (39 - p[key] / top * 37).toFixed(1);
    d += (prev && p.t - prev <= GAP_MS ? "L" : "M") + x + " " + y;
    prev = p.t;
  }
  s.path.setAttribute("d", d);
  const last = points.length ? points[points.length - 1][key] : null;
  s.value.textContent = last === null || last === undefined ? "\\u2014"
    : fixed(last, digits) + unit;
  s.svg.setAttribute("aria-label", "the last " + ago(span) + ", up to "
    + fixed(top / 1.1, digits) + unit);
}
function updateCamera(cam, c, now) {
  cam.streaming = c.state === "streaming";
  cam.state.textContent = c.state;
  cam.state.className = "state " + c.state;
  const compact = !cam.streaming && c.state !== "stalled";
  cam.root.classList.toggle("compact", compact);
  const box = document.getElementById(compact ? "dead" : "cameras");
  if (cam.root.parentNode !== box) place(box, cam.root);
  cam.reason.title = c.reason || "";
  cam.reason.textContent = c.reason || "";
  cam.seen.textContent = "";
  cam.fps.textContent = c.declared_fps ? fixed(c.fps, 1) + " of " + fixed(c.declared_fps, 1)
    : fixed(c.fps, 1);
  cam.size.textContent = c.width ? c.width + "\\u00d7" + c.height : "\\u2014";
  const hw = c.hwaccel || {};  // hardware asked for and not used: say so, and why
  cam.codec.textContent = !c.codec ? "\\u2014"
    : c.codec + (hw.active ? " (" + hw.active + ")" : hw.fallback ? " (software)" : "");
  cam.codec.title = hw.fallback ? "hardware decoding not used: " + hw.fallback : "";
  cam.codec.classList.toggle("fallback", Boolean(hw.fallback));
  cam.age.textContent = c.frame_age_s === null ? "\\u2014"
    : fixed(c.frame_age_s, c.frame_age_s < 10 ? 2 : 0) + " s";
  const reconnects = Object.entries(c.reconnects || {}).filter(([, n]) => n > 0);
  cam.reconnects.textContent = String(reconnects.reduce((sum, [, n]) => sum + n, 0));
  cam.reconnects.title = reconnects.map(([why, n]) => why + " " + n).join(", ");
  cam.history.push({t: now, fps: c.fps, age: c.frame_age_s});
  while (cam.history.length && cam.history[0].t < now - HISTORY_MS) cam.history.shift();
  drawSpark(cam.fpsSpark, cam.history, "fps", c.declared_fps || 1, "", 1);
  drawSpark(cam.ageSpark, cam.history, "age", 1, " s", 2);
  sync(cam);
}
function place(box, root) {  // in name order, as the API lists them; the dead box last
  const after = Array.from(box.children).find((other) => other.id === "dead"
    || other.dataset.name > root.dataset.name);
  box.insertBefore(root, after || null);
}
function renderCameras(list, now) {
  const box = document.getElementById("cameras");
  const seen = new Set();
  box.querySelector(":scope > p.status")?.remove();
  for (const c of list) {
    seen.add(c.name);
    let cam = cameras.get(c.name);
    if (!cam) {
      cam = card(c.name);
      cameras.set(c.name, cam);
      cam.autoLive = true;  // its live view starts by itself once it streams, if room
    }
    if (cam.autoLive && c.state === "streaming") {
      cam.autoLive = false;
      if (wanted.length < MAX_LIVE) wanted.push(c.name);
    }
    updateCamera(cam, c, now);
  }
  for (const [name, cam] of cameras) {
    if (seen.has(name)) continue;
    stopLive(cam);
    cam.root.remove();
    cameras.delete(name);
    wanted = wanted.filter((other) => other !== name);
  }
  document.getElementById("camera-count").textContent = "(" + list.length + ")";
  if (!list.length) box.prepend(make("p", "status", "no cameras configured"));
  lastCams = list;
}

function latencyBound(bounds, counts, q) {
  const total = counts.reduce((a, b) => a + b, 0);
  let sum = 0;
  for (let i = 0; i < counts.length; i++) {
    sum += counts[i];
    if (sum >= q * total) {
      return i < bounds.length ? "\\u2264" + +(bounds[i] * 1000).toFixed(1)
        : ">" + bounds[bounds.length - 1] * 1000;
    }
  }
  return "\\u2014";
}
function subscriberFigures(s, now) {
  // fps, latency and last sent from the answers of the last WINDOW_MS (the API counts since
  // the start): differences of frames_sent and of the latency histogram's counts
  const sent = s.frames_sent;
  const state = subHistory.get(s.name) || {history: [], changed: 0, since: now};
  subHistory.set(s.name, state);
  const history = state.history, last = history[history.length - 1];
  if (last && sent !== undefined && last.sent !== undefined && sent > last.sent) {
    state.changed = now;
  }
  history.push({t: now, sent, counts: s.latency ? s.latency.counts : null});
  while (history.length > 2 && history[0].t < now - WINDOW_MS) history.shift();
  const none = "\u2014", first = history[0];
  const lastSent = sent === undefined ? none : sent === 0 ? "never"
    : state.changed ? ago(now - state.changed) + " ago"
    : history.length > 1 ? "over " + ago(now - state.since) + " ago" : none;
  if (sent === undefined || history.length < 2 || first.sent === undefined) {
    return [none, none, lastSent];
  }
  const fps = (sent - first.sent) / ((now - first.t) / 1000);
  let latency = none;
  if (s.latency && first.counts && sent > first.sent) {
    const counts = s.latency.counts.map((n, i) => n - (first.counts[i] || 0));
    latency = latencyBound(s.latency.bounds_s, counts, 0.5) + " / "
      + latencyBound(s.latency.bounds_s, counts, 0.99) + " ms";
  }
  return [fps.toFixed(1), latency, lastSent];
}
function renderSubscribers(list, now) {
  const classes = ["name", "", "", "", "reader", "num", "num", "num", "num", "", "error"];
  const rows = list.map((s) => {
    const size = s.width && s.height ? s.width + "\\u00d7" + s.height
      : s.width ? s.width + " wide" : s.height ? s.height + " high" : "native size";
    const dropped = Object.entries(s.dropped || {}).filter(([, n]) => n > 0);
    const connected = s.connected ? "connected" : "no reader";
    const camera = s.camera || (s.cameras || []).join(", ");
    const cells = [s.name, camera, s.transport, s.format + ", " + size, connected,
      ...subscriberFigures(s, now),
      s.frames_sent === undefined ? "\\u2014" : s.frames_sent,
      dropped.length ? dropped.map(([why, n]) => why + " " + n).join(", ") : "0",
      s.error || ""];
    const row = make("tr");
    row.dataset.name = s.name;
    cells.forEach((text, i) => row.append(make("td", classes[i], String(text))));
    row.children[4].classList.add(s.connected ? "yes" : "no");
    return row;
  });
  for (const name of subHistory.keys()) {
    if (!list.some((s) => s.name === name)) subHistory.delete(name);
  }
  if (!rows.length) {
    const cell = make("td", "status", "no subscribers");
    cell.colSpan = classes.length;
    rows.push(make("tr"));
    rows[0].append(cell);
  }
  document.querySelector("#subscribers tbody").replaceChildren(...rows);
  document.getElementById("subscriber-count").textContent = "(" + list.length + ")";
}

function renderSummary() {
  const summary = document.getElementById("summary");
  const down = lastCams.filter((c) => c.state !== "streaming");
  let text = (lastCams.length - down.length) + " of " + lastCams.length + " cameras streaming";
  if (down.length) {
    text += "; not streaming: " + down.map((c) => c.name + " (" + c.state + ")").join(", ");
  }
  if (stale) text = "as of " + ago(Date.now() - lastOk) + " ago: " + text;
  summary.textContent = lastOk ? text : "";
  summary.className = "summary " + (stale ? "unknown" : down.length ? "degraded" : "ok");
}
function renderDaemon() {
  const box = document.getElementById("daemon");
  if (!health) { box.textContent = ""; return; }
  const uptime = health.uptime_s + (stale ? (lastOk - healthAt) : (Date.now() - healthAt)) / 1000;
  box.textContent = "version " + health.version + ", up " + duration(uptime)
    + (stale ? " (when last seen)" : "");
}
function setStatus(text, error) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("error", error);
}
function tick() {
  // stale once nothing answered for STALE_MS, even while a request still hangs
  const now = Date.now(), wasStale = stale;
  stale = !lastOk || now - lastOk > STALE_MS;
  document.body.classList.toggle("stale", stale && lastOk > 0);
  if (stale && lastOk) {
    for (const cam of cameras.values()) {
      cam.state.textContent = "no data";
      cam.state.className = "state unknown";
      cam.seen.textContent = "last seen " + ago(now - lastOk) + " ago";
    }
  }
  if (stale !== wasStale) cameras.forEach(sync);
  renderSummary();
  renderDaemon();
}

async function getJson(path) {
  const answer = await fetch(path, {cache: "no-store", credentials: "same-origin",
                                    signal: AbortSignal.timeout(FETCH_MS)});
  if (answer.status === 401) throw new Error("signed out: open /?token=\\u2026 again");
  if (!answer.ok) throw new Error(path + " answered " + answer.status);
  return answer.json();
}
async function poll() {
  try {
    const [cams, subs] = await Promise.all([getJson("/v1/cameras"),
                                            getJson("/v1/subscriptions")]);
    const now = Date.now();
    lastOk = now;
    tick();
    renderCameras(cams.cameras, now);
    renderSubscribers(subs.subscriptions, now);
    setStatus("live: updated every second", false);
    if (!health || polls++ % HEALTH_EVERY === 0) {
      health = await getJson("/healthz");
      healthAt = Date.now();
    }
  } catch (error) {
    const since = lastOk ? " (last update " + ago(Date.now() - lastOk) + " ago)" : "";
    setStatus("cannot reach the daemon: " + (error.message || error) + since, true);
    polls = 0;  // it may come back as another daemon: ask /healthz again at once
  }
  tick();
  setTimeout(poll, POLL_MS);
}
document.addEventListener("visibilitychange", () => cameras.forEach(sync));
setInterval(tick, 500);
poll();
"""
