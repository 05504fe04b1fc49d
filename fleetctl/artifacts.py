"""Release artifacts as a node would fetch them: the URL a host's variables give for a version, what it
serves, and the digest it must have (hc_artifact_checksum, else a SHA256SUMS file), checked from where
fleetctl runs. Used by `fleetctl check VERSION`; never logs a password."""

from __future__ import annotations

import base64
import hashlib
import http.client
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fleetctl.context import FleetContext
from fleetctl.errors import InventoryError
from fleetctl.inventory import Host
from fleetctl.resources import playbooks_dir

FETCH_TIMEOUT = 10.0
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class Found:
    """The verdict on one version's artifact, as one host would fetch it."""

    version: str
    host: str
    ok: bool
    detail: str
    fix: str | None = None


def verify(ctx: FleetContext, version: str, name: str) -> Found:
    """Fetch what host `name` would download for `version` and check it against its checksum."""
    host = node_view(ctx, ctx.fleet[name], version)

    def found(ok: bool, detail: str, fix: str | None = None) -> Found:
        return Found(version, name, ok, f"{version}: {detail}", fix)

    if host.render("{{ hc_install_method }}") == "package":
        spec = host.render("{{ hc_package_spec }}")
        return found(
            True, f"install method package: each node's package manager installs {spec} (not checked)"
        )
    try:
        url = host.render("{{ hc_artifact_url }}")
        expected = host.render("{{ hc_artifact_checksum }}").strip()
        sums_url = host.render("{{ hc_artifact_checksum_url | default('') }}").strip()
        auth = _auth(host)
    except InventoryError as exc:
        vault = "vault" in exc.message.lower()
        return found(False, exc.message, "set vault_password_file: in fleet.yml" if vault else exc.hint)
    try:
        digest, size = fetch_digest(url, auth)
    except OSError as exc:
        fix = f"check that {version} is published, or hc_artifact_base_url / hc_artifact_url for {name}"
        return found(False, f"cannot fetch {redact(url)}: {_why(exc)}", fix)
    origin = f"hc_artifact_checksum of {name}"
    if not expected:
        sums_url = sums_url or url.rsplit("/", 1)[0] + "/SHA256SUMS"
        origin = redact(sums_url)
        try:
            expected = lookup_sum(sums_url, url.rsplit("/", 1)[-1], auth)
        except OSError as exc:
            if not ctx.config.artifacts.require_checksum:  # the operator opted out in fleet.yml
                return found(
                    True, f"{redact(url)} ({size} bytes), no checksum (artifacts.require_checksum: false)"
                )
            return found(
                False,
                f"no checksum: hc_artifact_checksum is empty and {origin}: {_why(exc)}",
                "publish SHA256SUMS beside the artifact or set hc_artifact_checksum: sha256:<hex>",
            )
    algo, _, want = expected.partition(":")
    if algo != "sha256" or not _HEX.match(want):
        return found(
            False,
            f"checksum {expected!r} from {origin} is not sha256:<hex>",
            "write it as sha256:<64 hex digits>",
        )
    if want.lower() != digest:
        return found(
            False,
            f"{redact(url)} has sha256:{digest}, {origin} says {expected}",
            "republish the artifact or fix its checksum",
        )
    return found(True, f"{redact(url)} ({size} bytes) matches sha256 from {origin}")


def node_view(ctx: FleetContext, host: Host, version: str) -> Host:
    """The host as the role sees it for `version`: role defaults, then inventory, then fleet.yml vars.
    Defaults and fleet.yml are the operator's own files: their templates are trusted, as Ansible does."""
    from ansible.template import trust_as_template

    roles = ctx.config.playbooks or playbooks_dir()
    defaults = yaml.safe_load((roles / "roles" / "host_controller" / "defaults" / "main.yml").read_text())
    trusted = {
        k: trust_as_template(v) if isinstance(v, str) else v
        for k, v in {**(defaults or {}), **ctx.config.vars}.items()
        if k not in host.vars or k in ctx.config.vars
    }
    return Host(host.name, host.groups, {**host.vars, **trusted, "hc_version": version})


def _auth(host: Host) -> str | None:
    if "hc_artifact_password" not in host.vars:
        return None
    password = host.render("{{ hc_artifact_password }}")
    if not password:
        return None
    user = host.render("{{ hc_artifact_user | default('') }}")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _open(url: str, auth: str | None) -> Any:
    if "://" not in url:
        url = Path(url).resolve().as_uri()
    try:
        parts = urllib.parse.urlsplit(url)
        if "@" in parts.netloc:  # user:password@ travels as a header, never in the URL urllib parses
            userinfo, _, host = parts.netloc.rpartition("@")
            user, _, password = userinfo.partition(":")
            token = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
            auth = auth or "Basic " + base64.b64encode(token.encode()).decode()
            url = urllib.parse.urlunsplit(parts._replace(netloc=host))
    except ValueError as exc:
        raise OSError(f"not a valid URL: {exc}") from None
    request = urllib.request.Request(url, headers={"User-Agent": "fleetctl-check"})
    if auth and url.startswith(("http://", "https://")):
        request.add_header("Authorization", auth)
    try:
        return urllib.request.urlopen(request, timeout=FETCH_TIMEOUT)  # noqa: S310 - file:// is the sim's store
    except (ValueError, http.client.HTTPException) as exc:  # a malformed URL or answer: no password in it
        raise OSError(f"{type(exc).__name__}") from None


def fetch_digest(url: str, auth: str | None = None) -> tuple[str, int]:
    """sha256 hex and size of what `url` serves (http(s), file:// or a path)."""
    digest, size = hashlib.sha256(), 0
    with _open(url, auth) as resp:
        for chunk in iter(lambda: resp.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def lookup_sum(sums_url: str, filename: str, auth: str | None = None) -> str:
    """`sha256:<hex>` for `filename` in a SHA256SUMS file (`<hex>  name` or `<hex> *name` lines)."""
    with _open(sums_url, auth) as resp:
        text = resp.read(1 << 20).decode("utf-8", "replace")
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == filename:
            return f"sha256:{parts[0].lower()}"
    raise FileNotFoundError(f"no line for {filename}")


def redact(url: str) -> str:
    """The URL without user:password@ and without its query (presigned tokens)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return re.sub(r"//.*@", "//", url.split("?", 1)[0])
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _why(exc: OSError) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, FileNotFoundError):
            return "no such file"
        return str(getattr(reason, "strerror", None) or reason)
    return str(exc.strerror or exc)
