"""The status page and the sign-in page (served by web.py): self-contained HTML, inline CSS and
JavaScript (webscript.py), nothing loaded from anywhere else. The script only reads the JSON
API (/v1/cameras, /v1/subscriptions once a second, /healthz) and builds the page with
``textContent``: nothing the API says (camera names, reasons, errors) is parsed as HTML. The
Content-Security-Policy allows exactly this style and this script, by their hashes.

Layout: cameras that stream (or just stalled) get a card with a live view; the others
collapse into one compact row each, after them, so that many dead cameras do not push the
subscriber table off the first screen; on a narrow screen the subscribers come first.
"""

from __future__ import annotations

import base64
import hashlib
import html

from framebus.webscript import SCRIPT

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
#daemon { color: var(--muted); margin-left: auto; }
.summary { margin: .6rem 1.5rem 0; font-weight: 600; }
.summary.ok { color: var(--ok); }
.summary.degraded { color: var(--warn); }
.summary.unknown { color: var(--muted); }
main { padding: .5rem 1.5rem 2rem; display: flex; flex-direction: column; }
@media (max-width: 760px) { #subscribers-section { order: -1; } .dead { grid-column: 1 / -1; }
  #subscribers-section table { display: block; overflow-x: auto; } }
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
.state.unknown { background: transparent; color: var(--muted); border: 1px dashed var(--muted); }
.stale .camera, .stale #subscribers, .stale #daemon { opacity: .55; filter: grayscale(1); }
.seen { color: var(--bad); font-weight: 600; }
.seen:empty { display: none; }
.dead { display: flex; flex-wrap: wrap; gap: .4rem; align-content: start;
  grid-column: span 2; }
.dead:empty { display: none; }
.camera.compact { display: flex; align-items: center; gap: .5rem; padding: .2rem .6rem;
  max-width: 100%; }
.camera.compact .view, .camera.compact .facts, .camera.compact .sparks,
.camera.compact .actions { display: none; }
.camera.compact .reason { margin: 0; min-height: 0; max-width: 18rem; white-space: nowrap;
  overflow: hidden; text-overflow: ellipsis; font-size: .85rem; }
.camera.compact .seen { font-size: .85rem; }
.sparks { display: grid; grid-template-columns: 1fr 1fr; gap: .8rem; margin: .2rem 0 .6rem; }
.spark-row { display: grid; grid-template-columns: auto 1fr auto; align-items: center;
  gap: .4rem; }
.spark-label, .spark-value { color: var(--muted); font-size: .85rem; }
.spark-value { text-align: right; font-variant-numeric: tabular-nums; }
svg.spark { width: 100%; height: 28px; background: var(--bg); border-radius: 3px; }
svg.spark path { fill: none; stroke: var(--ok); stroke-width: 1.5;
  vector-effect: non-scaling-stroke; }
.reason { color: var(--muted); min-height: 1.45em; margin: .2rem 0 .5rem;
  overflow-wrap: anywhere; }
.view { aspect-ratio: 16 / 9; background: #000; border-radius: 4px; display: flex;
  align-items: center; justify-content: center; overflow: hidden; }
.view img { width: 100%; height: 100%; object-fit: contain; display: none; }
.camera.playing .view img { display: block; }
.camera.playing .placeholder { display: none; }
.placeholder { color: #aaa; }
.facts { display: grid; grid-template-columns: auto 1fr auto 1fr; gap: .1rem .8rem;
  margin: .6rem 0; }
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
dd.fallback { color: var(--warn); }
td.error { color: var(--bad); overflow-wrap: anywhere; }
.login { max-width: 42rem; margin: 3rem auto; background: var(--card); padding: 1.5rem;
  border: 1px solid var(--line); border-radius: 8px; }
code { background: var(--bg); padding: 0 .3rem; border-radius: 3px; overflow-wrap: anywhere; }
input { font: inherit; padding: .3rem .5rem; width: 22rem; max-width: 100%; }
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
<header><h1>framebus</h1><span id="status" class="status">connecting\u2026</span>
<span id="daemon"></span></header>
<p id="summary" class="summary"></p>
<main>
<section id="cameras-section">
<h2>Cameras <span id="camera-count" class="count"></span></h2>
<div id="cameras" class="cameras"><div id="dead" class="dead"></div></div>
</section>
<section id="subscribers-section">
<h2>Subscribers <span id="subscriber-count" class="count"></span></h2>
<table id="subscribers">
<thead><tr><th>name</th><th>camera</th><th>transport</th><th>format</th><th>reader</th>
<th title="frames sent a second, over the last 10 s">fps</th>
<th title="publish to written whole into the pipe, over the last 10 s (bucket bounds)">latency
p50 / p99</th>
<th title="when frames sent last grew: a frame went whole into the reader's pipe">last sent</th>
<th>frames sent</th><th>dropped</th><th>error</th></tr></thead>
<tbody></tbody>
</table>
</section>
</main>
<template id="spark"><svg class="spark" viewBox="0 0 300 40" preserveAspectRatio="none" \
role="img"><path d=""></path></svg></template>
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
