"""HTML for the web view, rendered on the server from a snapshot (state.py). Every value from the journal,
the inventory or a node is escaped here, the one place that prints it (`e`). The page's sections are
replaced whole by the live updates, so they are rendered by the same functions."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import Any

from fleetctl.units import format_duration


def e(value: object) -> str:
    """Escape anything for HTML text and attribute values."""
    return escape("" if value is None else str(value), quote=True)


def _when(iso: str | None) -> str:
    return e(iso[:19].replace("T", " ") + "Z") if iso else "-"


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """`rows` hold HTML already escaped by the caller."""
    th = "".join(f"<th>{e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{e(cls)}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _badge(text: object, kind: str) -> str:
    return f'<span class="badge {e(kind)}">{e(text)}</span>'


STATUS_KIND = {
    "succeeded": "ok",
    "done": "ok",
    "rolled_back": "warn",
    "running": "info",
    "updating": "info",
    "verifying": "info",
    "rolling_back": "warn",
    "paused": "warn",
    "interrupted": "warn",
    "halted": "bad",
    "failed": "bad",
    "aborted": "bad",
}


def summary(doc: dict[str, Any]) -> str:
    frozen = doc["freeze"]["frozen"]
    window = doc["window"]
    parts = [
        _badge("FROZEN" if frozen else "not frozen", "bad" if frozen else "ok"),
        _badge("window open" if window["open"] else "window closed", "ok" if window["open"] else "muted"),
        _badge(f"{len(doc['quarantine'])} quarantined", "warn" if doc["quarantine"] else "muted"),
    ]
    n = doc["notifications"]
    if n.get("failed") or n.get("pending"):
        parts.append(
            _badge(f"notifications: {n.get('pending', 0)} pending, {n.get('failed', 0)} failed", "warn")
        )
    return f'<p class="badges">{" ".join(parts)}</p><p class="muted">as of {_when(doc["at"])}</p>'


def census(doc: dict[str, Any]) -> str:
    counts: dict[str, int] = doc["census"]
    total = sum(counts.values()) or 1
    rows = [
        [
            e(v),
            e(n),
            f'<span class="bar" data-width="{round(100 * n / total)}">{"█" * max(1, round(20 * n / total))}</span>',
        ]
        for v, n in sorted(counts.items(), key=lambda kv: -kv[1])
    ]
    error = f'<p class="bad">{e(doc["census_error"])}</p>' if doc.get("census_error") else ""
    return "<h2>Census</h2>" + error + _table(["version", "hosts", ""], rows)


def run(doc: dict[str, Any]) -> str:
    data = doc.get("run")
    if not data:
        return "<h2>Run</h2><p class='muted'>no run in the journal yet</p>"
    r = data["run"]
    total, finished = r["total"], data["finished"]
    stage = r.get("stage") or "-"
    if data.get("stage_index"):
        stage = f"{r['stage']} ({data['stage_index']}/{len(data['stages'])})"
    batch = f"{r['batch']}/{data['batches']}" if r.get("batch") and data.get("batches") else "-"
    eta = format_duration(r["eta_seconds"]) if r.get("eta_seconds") is not None else "-"
    counts = ", ".join(f"{k} {v}" for k, v in sorted(r["counts"].items()))
    pct = round(100 * finished / total) if total else 0
    head = (
        f"<h2>Run <code>{e(r['id'])}</code> {_badge(r['status'], STATUS_KIND.get(r['status'], 'muted'))}</h2>"
        f"<p>{e(r['kind'])} {e(r['target'] or '')} by {e(r['operator'] or '-')}"
        + (f" &middot; reason: {e(r['reason'])}" if r.get("reason") else "")
        + "</p>"
        f'<p><progress max="{e(total)}" value="{e(finished)}"></progress> '
        f'<span id="run-progress" data-progress="{e(finished)}/{e(total)}">{e(finished)}/{e(total)} hosts finished</span>'
        f" &middot; stage <b id='run-stage'>{e(stage)}</b> &middot; batch {e(batch)} &middot; ETA {e(eta)}"
        f" &middot; <span id='run-counts'>{e(counts)}</span> <span class='muted'>({pct}%)</span></p>"
    )
    rows = [
        [
            e(h["host"]),
            e(h["stage"] or "-"),
            e(h["batch"] or "-"),
            _badge(h["state"], STATUS_KIND.get(h["state"], "muted")),
            f"{e(h['from'] or '-')} &rarr; {e(h['to'] or '-')}",
            e(f"{h['probe_ms']:.0f} ms" if h.get("probe_ms") is not None else "-"),
            f'<span class="bad">{e(h["error"])}</span>' if h.get("error") else "",
        ]
        for h in data["hosts"]
    ]
    return head + _table(["host", "stage", "batch", "state", "version", "probe", "error"], rows, "hosts")


def controls(doc: dict[str, Any]) -> str:
    f, w = doc["freeze"], doc["window"]
    out = ["<h2>Freezes and windows</h2>"]
    if f["by"]:
        out.append("<ul>" + "".join(f"<li class='bad'>{e(_cause(c))}</li>" for c in f["by"]) + "</ul>")
    else:
        out.append("<p>no freeze in force</p>")
    if f.get("next_change"):
        out.append(f"<p>freeze state changes at {_when(f['next_change'])}</p>")
    if w["open"] and not w.get("window"):
        out.append("<p>no maintenance windows in fleet.yml: unattended runs may start any time</p>")
    elif w["open"]:
        out.append(
            f"<p>maintenance window {e(w.get('window') or '')} open until {_when(w.get('closes_at'))}</p>"
        )
    else:
        out.append(f"<p>maintenance window closed; next opens {_when(w.get('next_open'))}</p>")
    out.append("<h2>Quarantine</h2>")
    rows = [[e(q["version"]), e(q["reason"]), e(q["run"] or "-"), _when(q["at"])] for q in doc["quarantine"]]
    out.append(_table(["version", "reason", "run", "since"], rows) if rows else "<p>nothing quarantined</p>")
    out.append("<h2>Guard</h2>")
    guards = [
        [
            e(g["run"]),
            e(g["version"]),
            _badge(g["status"], "info" if g["status"] == "active" else "muted"),
            _when(g["until"]),
            e(", ".join(f"{h['host']}: {h['error']}" for h in g["failing"]) or "-"),
        ]
        for g in doc["guards"]
    ]
    out.append(
        _table(["run", "version", "status", "until", "failing"], guards) if guards else "<p>no guard</p>"
    )
    return "".join(out)


def _cause(c: dict[str, Any]) -> str:
    until = f" until {c['until'][:19]}Z" if c.get("until") else ""
    return f"{c.get('name')} ({c.get('scope') or 'all'}){until}: {c.get('reason')}"


def history(doc: dict[str, Any]) -> str:
    rows = [
        [
            f"<code>{e(r['id'])}</code>",
            e(r["kind"]),
            e(r["target"] or "-"),
            _badge(r["status"], STATUS_KIND.get(r["status"], "muted")),
            e(r["operator"] or "-"),
            _when(r["started_at"]),
            _when(r["finished_at"]),
            e(r["reason"] or ""),
        ]
        for r in doc["history"]
    ]
    return "<h2>Recent runs</h2>" + _table(
        ["run", "kind", "version", "status", "by", "started", "ended", "reason"], rows
    )


def audit(doc: dict[str, Any]) -> str:
    rows = [
        [_when(a["at"]), e(a["actor"] or "-"), e(a["action"]), e(a["subject"] or ""), e(a["reason"] or "")]
        for a in doc["audit"]
    ]
    return "<h2>Audit</h2>" + _table(["when", "who", "action", "subject", "reason"], rows)


SECTIONS: dict[str, Callable[[dict[str, Any]], str]] = {
    "summary": summary,
    "run": run,
    "census": census,
    "controls": controls,
    "history": history,
    "audit": audit,
}


def sections(doc: dict[str, Any]) -> dict[str, str]:
    return {name: render(doc) for name, render in SECTIONS.items()}


def page(doc: dict[str, Any]) -> str:
    """The whole page, server-rendered: it reads well without JavaScript, and app.js keeps it live."""
    body = "".join(f'<section id="sec-{e(name)}">{html}</section>' for name, html in sections(doc).items())
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>fleetctl: {e(doc['fleet'])}</title><link rel='stylesheet' href='/static/style.css'>"
        "<script src='/static/app.js' defer></script></head><body>"
        f"<header><h1>fleetctl &middot; {e(doc['fleet'])}</h1>"
        "<span id='live' class='muted'>static</span></header>"
        f"<main>{body}</main><footer class='muted'>read-only view of the journal</footer></body></html>"
    )
