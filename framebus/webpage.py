"""The status page and the sign-in page (served by web.py): self-contained HTML, inline CSS and
JavaScript, nothing loaded from anywhere else. The script only reads the JSON API
(/v1/cameras, /v1/subscriptions, once a second) and builds the page with ``textContent``:
nothing the API says (camera names, reasons, errors) is parsed as HTML. The Content-Security-
Policy allows exactly this style and this script, by their hashes.
"""

from __future__ import annotations

import base64
import hashlib
import html

STYLE = """
:root { color-scheme: light dark; --bg: #f4f5f7; --card: #fff; --text: #1d2330;
  --muted: #667085; --line: #e2e5ea; --ok: #1a7f37; --warn: #b76e00; --bad: #c62828; }
@media (prefers-color-scheme: dark) { :root { --bg: #12151b; --card: #1b2029;
  --text: #e6e9ef; --muted: #9aa3b2; --line: #2b313c; } }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  background: var(--bg); color: var(--text); }
header { display: flex; align-items: baseline; gap: 1rem; padding: .8rem 1.5rem;
  background: var(--card); border-bottom: 1px solid var(--line); }
h1 { font-size: 1.2rem; margin: 0; }
.status { color: var(--muted); }
.status.error { color: var(--bad); font-weight: 600; }
main { padding: .5rem 1.5rem 2rem; }
h2 { font-size: 1rem; margin: 1rem 0 .6rem; }
.count { color: var(--muted); font-weight: normal; }
.cameras { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr));
  gap: 1rem; }
.camera { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: .8rem; }
.head { display: flex; justify-content: space-between; align-items: center; gap: .5rem; }
h3 { margin: 0; font-size: 1rem; overflow-wrap: anywhere; }
.state { padding: .1rem .55rem; border-radius: 999px; font-size: .8rem; font-weight: 600;
  color: #fff; background: var(--muted); }
.state.streaming { background: var(--ok); }
.state.connecting, .state.stalled { background: var(--warn); }
.state.backoff, .state.auth_failed, .state.unsupported { background: var(--bad); }
.reason { color: var(--muted); min-height: 1.45em; margin: .2rem 0 .5rem;
  overflow-wrap: anywhere; }
.view { aspect-ratio: 16 / 9; background: #000; border-radius: 4px; display: flex;
  align-items: center; justify-content: center; overflow: hidden; }
.view img { width: 100%; height: 100%; object-fit: contain; display: none; }
.camera.playing .view img { display: block; }
.camera.playing .placeholder { display: none; }
.placeholder { color: #aaa; }
.facts { display: grid; grid-template-columns: auto 1fr; gap: .1rem .8rem; margin: .6rem 0; }
dt { color: var(--muted); }
dd { margin: 0; font-variant-numeric: tabular-nums; }
.actions { display: flex; gap: .8rem; align-items: center; }
button, .snapshot { font: inherit; padding: .25rem .7rem; border-radius: 4px; cursor: pointer;
  border: 1px solid var(--line); background: var(--bg); color: var(--text);
  text-decoration: none; }
table { border-collapse: collapse; width: 100%; background: var(--card);
  border: 1px solid var(--line); }
th, td { text-align: left; padding: .4rem .7rem; border-bottom: 1px solid var(--line); }
th { color: var(--muted); font-weight: 600; font-size: .85rem; }
td.num { font-variant-numeric: tabular-nums; }
td.yes { color: var(--ok); }
td.no { color: var(--warn); }
td.error { color: var(--bad); overflow-wrap: anywhere; }
.login { max-width: 42rem; margin: 3rem auto; background: var(--card); padding: 1.5rem;
  border: 1px solid var(--line); border-radius: 8px; }
code { background: var(--bg); padding: 0 .3rem; border-radius: 3px; overflow-wrap: anywhere; }
input { font: inherit; padding: .3rem .5rem; width: 22rem; max-width: 100%; }
"""

SCRIPT = """
"use strict";
const LIVE_FPS = 5, LIVE_WIDTH = 640, POLL_MS = 1000;
// a browser opens at most 6 connections to a host: 3 live views, 2 polls and a snapshot
const MAX_LIVE = 3;
const liveMaxMs = Math.max(30, Number(document.body.dataset.liveMaxSeconds) || 3600) * 1000;
const cameras = new Map();
let wanted = [];  // cameras whose live view is on, oldest first
let lastOk = 0;

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
function fixed(x, digits) { return x === null || x === undefined ? "\u2014" : x.toFixed(digits); }

function card(name) {
  const root = make("article", "camera");
  root.dataset.name = name;
  const head = make("div", "head"), state = make("span", "state");
  head.append(make("h3", "", name), state);
  const view = make("div", "view"), img = make("img", "live");
  img.alt = "live view of " + name;
  const placeholder = make("div", "placeholder", "no picture");
  view.append(img, placeholder);
  const facts = make("dl", "facts");
  const cam = {name, root, state, img, placeholder, reason: make("div", "reason"),
    fps: fact(facts, "fps"), size: fact(facts, "size"), codec: fact(facts, "codec"),
    age: fact(facts, "frame age"), reconnects: fact(facts, "reconnects"),
    toggle: make("button", "toggle"), streaming: false, running: false, timer: 0, retry: 0};
  const snapshot = make("a", "snapshot", "snapshot");
  snapshot.href = cameraPath(name) + "/snapshot.jpg";
  snapshot.target = "_blank";
  snapshot.rel = "noopener";
  const actions = make("div", "actions");
  actions.append(cam.toggle, snapshot);
  root.append(head, cam.reason, view, facts, actions);
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
  const on = wanted.includes(cam.name);
  const run = on && cam.streaming && !document.hidden && Date.now() >= cam.retry;
  if (run && !cam.running) startLive(cam);
  if (!run && cam.running) stopLive(cam);
  cam.root.classList.toggle("playing", cam.running);
  cam.toggle.textContent = on ? "stop live view" : "live view";
  cam.placeholder.textContent = !cam.streaming ? "no picture"
    : on ? "starting\u2026" : "live view off";
}

function updateCamera(cam, c) {
  cam.streaming = c.state === "streaming";
  cam.state.textContent = c.state;
  cam.state.className = "state " + c.state;
  cam.reason.textContent = c.reason || "";
  cam.fps.textContent = c.declared_fps ? fixed(c.fps, 1) + " of " + fixed(c.declared_fps, 1)
    : fixed(c.fps, 1);
  cam.size.textContent = c.width ? c.width + "\u00d7" + c.height : "\u2014";
  cam.codec.textContent = c.codec || "\u2014";
  cam.age.textContent = c.frame_age_s === null ? "\u2014"
    : fixed(c.frame_age_s, c.frame_age_s < 10 ? 2 : 0) + " s";
  const reconnects = Object.entries(c.reconnects || {}).filter(([, n]) => n > 0);
  cam.reconnects.textContent = String(reconnects.reduce((sum, [, n]) => sum + n, 0));
  cam.reconnects.title = reconnects.map(([why, n]) => why + " " + n).join(", ");
  sync(cam);
}
function renderCameras(list) {
  const box = document.getElementById("cameras");
  const seen = new Set();
  for (const c of list) {
    seen.add(c.name);
    let cam = cameras.get(c.name);
    if (!cam) {
      cam = card(c.name);
      cameras.set(c.name, cam);
      box.append(cam.root);
      if (wanted.length < MAX_LIVE) wanted.push(c.name);
    }
    updateCamera(cam, c);
  }
  for (const [name, cam] of cameras) {
    if (seen.has(name)) continue;
    stopLive(cam);
    cam.root.remove();
    cameras.delete(name);
    wanted = wanted.filter((other) => other !== name);
  }
  document.getElementById("camera-count").textContent = "(" + list.length + ")";
  if (!list.length) box.replaceChildren(make("p", "status", "no cameras configured"));
}
function renderSubscribers(list) {
  const classes = ["name", "", "", "", "reader", "num", "", "error"];
  const rows = list.map((s) => {
    const size = s.width && s.height ? s.width + "\u00d7" + s.height
      : s.width ? s.width + " wide" : s.height ? s.height + " high" : "native size";
    const dropped = Object.entries(s.dropped || {}).filter(([, n]) => n > 0);
    const connected = s.connected ? "connected" : "no reader";
    const camera = s.camera || (s.cameras || []).join(", ");
    const cells = [s.name, camera, s.transport, s.format + ", " + size, connected,
      s.frames_sent === undefined ? "\u2014" : s.frames_sent,
      dropped.length ? dropped.map(([why, n]) => why + " " + n).join(", ") : "0",
      s.error || ""];
    const row = make("tr");
    cells.forEach((text, i) => row.append(make("td", classes[i], String(text))));
    row.children[4].classList.add(s.connected ? "yes" : "no");
    return row;
  });
  if (!rows.length) {
    const cell = make("td", "status", "no subscribers");
    cell.colSpan = classes.length;
    rows.push(make("tr"));
    rows[0].append(cell);
  }
  document.querySelector("#subscribers tbody").replaceChildren(...rows);
  document.getElementById("subscriber-count").textContent = "(" + list.length + ")";
}

function setStatus(text, error) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("error", error);
}
async function getJson(path) {
  const answer = await fetch(path, {cache: "no-store", credentials: "same-origin",
                                    signal: AbortSignal.timeout(5000)});
  if (answer.status === 401) throw new Error("signed out: open /?token=\u2026 again");
  if (!answer.ok) throw new Error(path + " answered " + answer.status);
  return answer.json();
}
async function poll() {
  try {
    const [cams, subs] = await Promise.all([getJson("/v1/cameras"),
                                            getJson("/v1/subscriptions")]);
    renderCameras(cams.cameras);
    renderSubscribers(subs.subscriptions);
    lastOk = Date.now();
    setStatus("live: updated every second", false);
  } catch (error) {
    const since = lastOk ? " (last update " + Math.round((Date.now() - lastOk) / 1000)
      + " s ago)" : "";
    setStatus("cannot reach the daemon: " + (error.message || error) + since, true);
  }
  setTimeout(poll, POLL_MS);
}
document.addEventListener("visibilitychange", () => cameras.forEach(sync));
poll();
"""

_HEAD = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>@title@</title>
<style>""" + STYLE + """</style>
</head>
"""

_STATUS = _HEAD.replace("@title@", "framebus") + """<body data-live-max-seconds="@live_max@">
<header><h1>framebus</h1><span id="status" class="status">connecting\u2026</span></header>
<main>
<section>
<h2>Cameras <span id="camera-count" class="count"></span></h2>
<div id="cameras" class="cameras"></div>
</section>
<section>
<h2>Subscribers <span id="subscriber-count" class="count"></span></h2>
<table id="subscribers">
<thead><tr><th>name</th><th>camera</th><th>transport</th><th>format</th><th>reader</th>
<th>frames sent</th><th>dropped</th><th>error</th></tr></thead>
<tbody></tbody>
</table>
</section>
</main>
<script>""" + SCRIPT + """</script>
</body>
</html>
"""

_LOGIN = _HEAD.replace("@title@", "framebus: sign in") + """<body>
<div class="login">
<h1>framebus</h1>
<p>@problem@ Open <code>http://@host@/?token=\u2026</code>: the token @where@.</p>
<form method="get" action="/">
<label>API token <input name="token" type="password" autocomplete="off" required autofocus>
</label> <button>Sign in</button>
</form>
<p class="status">The browser then keeps a session cookie (12 hours) instead of the token.</p>
</div>
</body>
</html>
"""


def _hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


_CSP = (f"default-src 'none'; script-src {_hash(SCRIPT)}; style-src {_hash(STYLE)}; "
        "img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'")


def csp() -> str:
    """The Content-Security-Policy of both pages: their own style and script, nothing else."""
    return _CSP


def status_page(live_max_seconds: float) -> bytes:
    """The status page (its script renews each live view before the daemon ends it)."""
    return _STATUS.replace("@live_max@", f"{live_max_seconds:g}").encode()


def login_page(problem: str, host: str, where_html: str) -> bytes:
    """The 401 page: ``problem`` and ``host`` are text; ``where_html`` is trusted HTML."""
    return (_LOGIN.replace("@problem@", html.escape(problem)).replace("@host@", html.escape(host))
            .replace("@where@", where_html)).encode()
