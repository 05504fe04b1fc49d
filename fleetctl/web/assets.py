"""The page's script and style, served from /static/ (the CSP allows scripts from 'self' only)."""

APP_JS = """\
// fleetctl serve: keep the page live. Sections arrive as HTML the server escaped; no page reloads.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var updates = 0;
  function apply(doc) {
    var names = Object.keys(doc.sections || {});
    for (var i = 0; i < names.length; i++) {
      var el = document.getElementById("sec-" + names[i]);
      if (el) { el.innerHTML = doc.sections[names[i]]; }
    }
    updates += 1;
    document.body.setAttribute("data-updates", String(updates));
  }
  function say(text) { if (live) { live.textContent = text; } }
  function poll() {
    fetch("/api/sections", {credentials: "same-origin", cache: "no-store"})
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (doc) { apply(doc); say("live (polling)"); })
      .catch(function () { say("disconnected: retrying"); })
      .finally(function () { setTimeout(poll, 2000); });
  }
  if (!window.EventSource) { poll(); return; }
  var source = new EventSource("/events");
  source.addEventListener("sections", function (ev) {
    apply(JSON.parse(ev.data));
    say("live");
  });
  source.onerror = function () { say("reconnecting"); };
})();
"""

STYLE_CSS = """\
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d2329; background: #f6f7f9; }
header { display: flex; gap: 1em; align-items: baseline; padding: .6em 1.2em; background: #1d2329; color: #fff; }
header h1 { font-size: 1.2em; margin: 0; }
main { display: grid; grid-template-columns: repeat(auto-fit, minmax(28em, 1fr)); gap: 1em; padding: 1em; }
section { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; padding: .4em 1em 1em; overflow-x: auto; }
#sec-run, #sec-summary { grid-column: 1 / -1; }
h2 { font-size: 1.05em; margin: .6em 0 .4em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .15em .6em .15em 0; border-bottom: 1px solid #eef0f2; vertical-align: top; }
th { font-weight: 600; color: #555; }
code { font-size: .95em; }
progress { width: 16em; vertical-align: middle; }
.badge { display: inline-block; padding: 0 .5em; border-radius: 1em; font-size: .9em; background: #e8eaed; }
.badge.ok { background: #d5f5dd; color: #11612a; }
.badge.info { background: #dbe9ff; color: #0b4aa2; }
.badge.warn { background: #fff0c2; color: #7a5200; }
.badge.bad { background: #ffd9d6; color: #9b1c12; }
.bad { color: #9b1c12; }
.muted { color: #77808a; }
.bar { color: #4b7bd1; letter-spacing: -1px; }
footer { padding: 0 1.2em 1em; }
"""
