"""HTTP(S) health probes on aiohttp: a URL, headers and TLS files rendered per host; checks of the status,
a body regex and JSON fields.

A controller's answer is untrusted. Whatever it sends (a broken status line, a huge or endless body,
deeply nested JSON, bytes that are not UTF-8), the probe fails with a short one-line reason and nothing
raises. The body is read only when a check needs it, and never more than MAX_BODY bytes. Reasons never
quote header values (they may hold a token from a vaulted variable).

aiohttp is imported only here, and health.py imports this module only for a round that has an HTTP probe,
so commands that never probe (`status`, `plan`) do not pay about 0.15 s of imports.
"""

from __future__ import annotations

import ast
import errno
import json
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from fleetctl.config import Probe
from fleetctl.inventory import Host

MAX_BODY = 64 * 1024
USER_AGENT = "fleetctl-probe"
_REASON_MAX = 240
_MISSING = object()


class _Failed(Exception):
    pass


@dataclass(frozen=True)
class TlsFiles:
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None


@dataclass(frozen=True)
class HttpTarget:
    """One probe rendered for one host."""

    url: str
    headers: tuple[tuple[str, str], ...] = ()
    tls: TlsFiles = TlsFiles()
    server_name: str | None = None


def render_target(probe: Probe, host: Host) -> HttpTarget:
    """Render the URL, header values, TLS paths and server name with the host's variables (vaulted ones
    included); a string without `{{`/`{%` is taken as it is."""

    def r(value: str | None) -> str | None:
        if value is None or ("{{" not in value and "{%" not in value):
            return value
        return host.render(value)

    return HttpTarget(
        url=str(r(probe.http)),
        headers=tuple((name, str(r(value))) for name, value in probe.headers.items()),
        tls=TlsFiles(r(probe.ca_file), r(probe.client_cert), r(probe.client_key)),
        server_name=r(probe.server_name),
    )


class Client:
    """One aiohttp session for a round: no pooling across hosts, no proxies from the environment, no
    cookies, no redirects followed, no decompression (a small gzip answer must not inflate unread)."""

    def __init__(self) -> None:
        self._contexts: dict[TlsFiles, ssl.SSLContext | str] = {}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            timeout=aiohttp.ClientTimeout(total=None),  # the caller's asyncio.timeout bounds each probe
            auto_decompress=False,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )
        # One probe, one request: aiohttp retries a GET once when the server closes without an answer
        # (meant for stale pooled connections; we pool none). A silent controller is a failed probe, and
        # failures_to_fail decides. No public switch; aiohttp's own test client sets the same attribute.
        if hasattr(self._session, "_retry_connection"):
            self._session._retry_connection = False
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def check(self, target: HttpTarget, probe: Probe) -> str | None:
        """None when the answer passes every check of `probe`, else a short reason."""
        try:
            await self._check(target, probe)
        except _Failed as exc:
            return _clean(str(exc))
        except Exception as exc:  # noqa: BLE001 - an answer must never crash a round
            return describe(exc)
        return None

    async def _check(self, target: HttpTarget, probe: Probe) -> None:
        try:
            parts = urlsplit(target.url)
            hostname, _port = parts.hostname, parts.port
        except ValueError as exc:
            raise _Failed(f"not a valid URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not hostname:
            raise _Failed(f"not an http(s) URL: {target.url!r}")
        for name, value in target.headers:
            if any(c in value for c in "\r\n\0"):
                raise _Failed(f"header {name} renders with a line break or NUL")
        assert self._session is not None, "use `async with Client()`"
        https = parts.scheme == "https"
        async with self._session.get(
            target.url,
            headers=dict(target.headers),
            ssl=self._context(target.tls) if https else True,
            server_hostname=target.server_name if https else None,
            allow_redirects=False,
        ) as resp:
            if resp.status != probe.expect_status:
                raise _Failed(f"status {resp.status}, expected {probe.expect_status}")
            if probe.expect_body is None and not probe.expect_json:
                return
            body, cut = await _read_capped(resp)
        if probe.expect_body is not None and not re.search(
            probe.expect_body, body.decode("utf-8", "replace")
        ):
            raise _Failed(f"body does not match {probe.expect_body!r}")
        if probe.expect_json:
            if cut:
                raise _Failed(f"body over {MAX_BODY // 1024} KiB, not read as JSON")
            check_json(body, probe.expect_json)

    def _context(self, tls: TlsFiles) -> ssl.SSLContext:
        """One SSLContext per distinct set of files: loading a CA bundle costs milliseconds, and a round
        may hold a thousand hosts sharing one."""
        if tls not in self._contexts:
            try:
                self._contexts[tls] = _ssl_context(tls)
            except _Failed as exc:
                self._contexts[tls] = str(exc)
        made = self._contexts[tls]
        if isinstance(made, str):
            raise _Failed(made)
        return made


def _ssl_context(tls: TlsFiles) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=tls.ca_file)
    except (OSError, ValueError) as exc:
        raise _Failed(f"cannot load ca_file {tls.ca_file}: {_os_reason(exc)}") from None
    if tls.client_cert:
        try:
            # a password that is never right: an encrypted key fails instead of prompting on a terminal
            ctx.load_cert_chain(tls.client_cert, tls.client_key, password=_no_password)
        except (OSError, ValueError) as exc:
            raise _Failed(f"cannot load client_cert {tls.client_cert}: {_os_reason(exc)}") from None
    return ctx


def _no_password() -> bytes:
    raise ValueError("the client key is encrypted; give an unencrypted key file")


async def _read_capped(resp: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """At most MAX_BODY bytes of the body, and whether there was more."""
    body = bytearray()
    while len(body) <= MAX_BODY:
        chunk = await resp.content.read(MAX_BODY + 1 - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body[:MAX_BODY]), len(body) > MAX_BODY


def check_json(body: bytes, expect: Mapping[str, Any]) -> None:
    """Each key of `expect` is a dotted path into the JSON answer (`status`, `checks.db`, `items.0.state`),
    each value what must be there (equal, and of the same kind: `true` is not `1`)."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise _Failed("body is not JSON") from None
    for path, want in expect.items():
        got = _lookup(doc, path)
        if got is _MISSING:
            raise _Failed(f"JSON has no {path}")
        if not _same(got, want):
            raise _Failed(f"JSON {path} is {_short(got)}, expected {_short(want)}")


def _lookup(doc: Any, path: str) -> Any:
    for key in path.split("."):
        if isinstance(doc, dict) and key in doc:
            doc = doc[key]
        elif isinstance(doc, list) and key.isdigit() and int(key) < len(doc):
            doc = doc[int(key)]
        else:
            return _MISSING
    return doc


def _same(got: Any, want: Any) -> bool:
    if isinstance(got, bool) or isinstance(want, bool) or got is None or want is None:
        return got is want
    if isinstance(got, int | float) and isinstance(want, int | float):
        return got == want
    return type(got) is type(want) and bool(got == want)


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe(exc: BaseException) -> str:
    """A short one-line reason for whatever the request raised."""
    if isinstance(exc, aiohttp.InvalidURL):
        return "not a valid URL"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return _clean(f"TLS: {_ssl_reason(exc.certificate_error)}")
    if isinstance(exc, aiohttp.ClientConnectorError):  # includes TLS handshake failures
        return _clean(_os_reason(exc.os_error))
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed without an answer"
    if isinstance(exc, aiohttp.ClientPayloadError):
        if "not enough data" in str(exc).lower() or "not completed" in str(exc).lower():
            return "answer cut short: the body ended before its length"
        return _clean(f"bad HTTP body: {_diagnosis(str(exc))}")
    if isinstance(exc, aiohttp.ClientResponseError):  # the answer is not HTTP the parser accepts
        return _bad_answer(exc.message)
    if isinstance(exc, OSError):
        return _clean(_os_reason(exc))
    return _clean(f"{type(exc).__name__}: {_first_line(exc)}")


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {_ssl_reason(exc)}"
    code = exc.errno if isinstance(exc, OSError) else None
    if isinstance(exc, ConnectionRefusedError) or code == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(exc, ConnectionResetError) or code == errno.ECONNRESET:
        return "connection reset by the server (does it require a client certificate?)"
    text = (exc.strerror if isinstance(exc, OSError) else None) or _first_line(exc) or type(exc).__name__
    if "[SSL" in text:
        return f"TLS: {_ssl_text(text)}"
    return text[:1].lower() + text[1:]


def _ssl_reason(exc: BaseException) -> str:
    verify = getattr(exc, "verify_message", None)
    if verify:
        return f"certificate verify failed: {verify}"
    return _ssl_text(_first_line(exc) or type(exc).__name__)


_SSL_NOISE = re.compile(r"^\[[A-Z0-9_]+(?:: [A-Z0-9_]+)?\]\s*|\s*\(_ssl\.c:\d+\)")


def _ssl_text(text: str) -> str:
    """`[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca (_ssl.c:2580)` -> `tlsv1 alert unknown ca`."""
    text = _SSL_NOISE.sub("", text).strip()
    if text == "PEM lib":
        return "not a PEM certificate and key, or the key does not match the certificate"
    return text


_QUOTED = re.compile(r"""b?('[^'\n]*'|"[^"\n]*")""")


def _bad_answer(message: str) -> str:
    """aiohttp's parser errors quote the offending line as a bytes literal; show it, not the parser's
    multi-line diagnosis (`Bad status line: Expected HTTP/...`)."""
    first = _diagnosis(message)
    quoted = _QUOTED.search(message)
    if not quoted:
        return _clean(f"bad HTTP answer: {first}")
    try:
        raw = ast.literal_eval(quoted.group(1))
    except (ValueError, SyntaxError):
        raw = quoted.group(1)
    line = str(raw)[:60]
    if first.lower().startswith("bad status line"):
        return _clean(f"bad HTTP answer {line!r}")
    return _clean(f"bad HTTP answer: {first} ({line!r})")


def _diagnosis(message: str) -> str:
    """The first line of a parser's message, without the bytes it quotes."""
    first = _first_line(message)
    quoted = _QUOTED.search(first)
    if quoted:
        first = first[: quoted.start()]
    return first.rstrip(": ").strip()


def _first_line(exc: BaseException | str) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else ""


def _clean(text: str) -> str:
    """One printable line of bounded length."""
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 3] + "..."
