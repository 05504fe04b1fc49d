"""Issue 13.3: `fleetctl serve`. The real server process is loaded in a real headless Chromium (Debian's
package, driven over the DevTools protocol with aiohttp's websocket client) while a rollout runs on the
simulated fleet: the page shows the run's progress changing without a reload, and a screenshot goes to
the test's output directory. Plus: read-only, the token off loopback, Host checks, escaping, CSP."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fleetctl.context import FleetContext
from fleetctl.web import server as web
from tests.conftest import Cli, Sim, fleetctl_proc, need, wait_for

TOKEN = "a-long-enough-test-token-0123456789"


class Chromium:
    """Headless Chromium with one page, driven through the Chrome DevTools Protocol."""

    def __init__(self, profile: Path) -> None:
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        assert exe
        self.proc = subprocess.Popen(
            [
                exe,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "--window-size=1280,1100",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        wait_for(
            lambda: port_file.is_file() and port_file.read_text().strip(), 30, "Chromium's DevTools port"
        )
        port = port_file.read_text().split()[0]
        self.loop = asyncio.new_event_loop()
        self.session = self.loop.run_until_complete(self._session())
        pages = self.loop.run_until_complete(self._json(f"http://127.0.0.1:{port}/json/list"))
        page = next(p for p in pages if p["type"] == "page")
        self.ws = self.loop.run_until_complete(
            self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        )
        self.next_id = 0

    async def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    async def _json(self, url: str) -> Any:
        async with self.session.get(url) as response:
            return await response.json(content_type=None)

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), 30)
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return dict(msg.get("result") or {})

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        return self.loop.run_until_complete(self._call(method, params))

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self.loop.run_until_complete(self.ws.close())
        self.loop.run_until_complete(self.session.close())
        self.loop.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Chromium]:
    need(
        bool(shutil.which("chromium") or shutil.which("chromium-browser")),
        "Chromium (apt-get install chromium)",
    )
    browser = Chromium(tmp_path / "profile")
    yield browser
    browser.close()


def serve_proc(sim: Sim, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """`fleetctl serve` as a real process on a free port; returns it and its URL."""
    proc = fleetctl_proc(
        ["serve", "--bind", "127.0.0.1:0", "--interval", "0.3", *args], {**sim.env, **(env or {})}
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    match = re.search(r"serving (http://\S+/)", line)
    assert match, line + (proc.stderr.read() if proc.poll() is not None else "")
    return proc, match.group(1)


PAGE_STATE = """JSON.stringify({
  progress: (document.getElementById('run-progress') || {dataset: {}}).dataset.progress || null,
  status: (document.querySelector('#sec-run h2 .badge') || {}).textContent || null,
  marker: window.__fleetctl_marker || null,
  live: (document.getElementById('live') || {}).textContent || null,
  updates: document.body.getAttribute('data-updates')
})"""


def test_the_page_follows_a_rollout_live_without_reloading(
    make_sim: Callable[..., Sim], cli: Cli, chromium: Chromium, tmp_path: Path
) -> None:
    sim = make_sim(
        nodes=4,
        stages=[
            {"name": "canary", "hosts": "canary", "batch": 1, "bake": "3s", "max_failures": 0},
            {"name": "rest", "hosts": "all", "batch": 1, "bake": "1s"},
        ],
    )
    sim.write_config(name="lab")
    cli("versions", env=sim.env)  # the journal exists before the viewer opens it
    view, url = serve_proc(sim)
    try:
        chromium.call("Page.enable")
        chromium.call("Page.navigate", url=url)
        wait_for(lambda: chromium.js("document.readyState") == "complete", 30, "the page to load")
        assert "no run in the journal yet" in chromium.js("document.getElementById('sec-run').textContent")
        chromium.js("window.__fleetctl_marker = 'same page'")  # a reload would lose it
        wait_for(lambda: json.loads(chromium.js(PAGE_STATE))["live"] == "live", 30, "the live stream")

        rollout = fleetctl_proc(["rollout", "1.1.0", "--yes"], sim.env)
        seen: list[dict[str, Any]] = []
        shot = None
        while rollout.poll() is None:
            page = json.loads(chromium.js(PAGE_STATE))
            if page["progress"] and (not seen or seen[-1]["progress"] != page["progress"]):
                seen.append(page)
                if shot is None and page["progress"] not in ("0/4", "4/4"):
                    shot = chromium.screenshot(tmp_path / "serve-during-rollout.png")
            time.sleep(0.2)
        assert rollout.returncode == 0, rollout.stderr.read() if rollout.stderr else ""
        wait_for(
            lambda: json.loads(chromium.js(PAGE_STATE))["status"] == "succeeded", 30, "the end of the run"
        )
        final = json.loads(chromium.js(PAGE_STATE))
        end = chromium.screenshot(tmp_path / "serve-after-rollout.png")
    finally:
        view.terminate()
        view.wait(timeout=30)

    progress = [p["progress"] for p in seen] + [final["progress"]]
    assert final["progress"] == "4/4" and final["marker"] == "same page"  # updated in place, never reloaded
    assert len(set(progress)) >= 3, progress  # several steps of the run seen as they happened
    assert any(p not in ("0/4", "4/4") for p in progress), progress
    assert int(final["updates"]) >= 3
    for path in (shot, end):
        assert path is not None and path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 5000
    print(f"\nscreenshots: {shot} {end}")


def _get(
    url: str, path: str = "/", method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def test_the_view_is_read_only_escaped_and_answers_localhost_only(
    make_sim: Callable[..., Sim], cli: Cli
) -> None:
    sim = make_sim(nodes=3)
    cli(["freeze", "on", "--reason", "<script>alert(1)</script> & [b]"], env=sim.env)
    view, url = serve_proc(sim)
    try:
        status, headers, body = _get(url)
        assert status == 200 and "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert "<script>alert(1)" not in body and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; [b]" in body
        for method in ("POST", "PUT", "DELETE"):
            assert _get(url, method=method)[0] == 405
        assert _get(url, headers={"Host": "evil.example:8080"})[0] == 403  # DNS rebinding
        state = json.loads(_get(url, "/api/state")[2])
        assert state["freeze"]["frozen"] and state["census"] == {"unknown": 3}
    finally:
        view.terminate()
        view.wait(timeout=30)


def test_binding_off_loopback_needs_a_token_checked_on_every_request(
    make_sim: Callable[..., Sim], cli: Cli
) -> None:
    sim = make_sim(nodes=3)
    result = cli("serve --bind 0.0.0.0:0", env=sim.env, code=2)
    assert "needs a token" in result.stderr and "FLEETCTL_SERVE_TOKEN" in result.stderr
    assert (
        "too short"
        in cli("serve --bind 0.0.0.0:0", env={**sim.env, "FLEETCTL_SERVE_TOKEN": "short"}, code=2).stderr
    )

    ctx = FleetContext(config_path=sim.config)
    view = web.make_server(ctx, "0.0.0.0", 0, TOKEN, interval=0.3)
    threading.Thread(target=view.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{view.server_address[1]}/"
    try:
        assert _get(url)[0] == 401
        assert _get(url, "/api/state")[0] == 401
        assert _get(url, "/?token=wrong-token-wrong-token-wrong")[0] == 401
        assert _get(url, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
        status, headers, _ = _get(url, f"/?token={TOKEN}")
        assert status == 303 and headers["location"] == "/" and TOKEN not in headers["set-cookie"]
        cookie = headers["set-cookie"].split(";")[0]
        assert "HttpOnly" in headers["set-cookie"]
        assert _get(url, "/api/sections", headers={"Cookie": cookie})[0] == 200
        assert _get(url, headers={"Cookie": "fleetctl_view=forged"})[0] == 401
    finally:
        view.shutdown()
        view.server_close()
    assert os.environ.get("FLEETCTL_SERVE_TOKEN") is None
