# -*- coding: utf-8 -*-
"""Download a release archive on the node and find the digest it must have (used by hc_release).

- Credentials never leave their origin: on a redirect to another scheme, host or port (https -> http
  included) the Authorization header is dropped.
- One total deadline for the whole download (connect, redirects, every read), and a size cap.
- The expected digest comes from `checksum` ("sha256:<hex>"), else from a SHA256SUMS file (by default
  next to the archive). Over anything but https, a digest is required unless the caller opts out.
Standard library only; Python 3.6 syntax.
"""

from __future__ import absolute_import, division, print_function

import base64
import errno
import hashlib
import os
import re
import threading

try:
    from urllib.error import HTTPError
    from urllib.parse import unquote, urlsplit, urlunsplit
    from urllib.request import HTTPRedirectHandler, Request, build_opener
except ImportError:  # pragma: no cover - Python 2 nodes are not supported
    pass

__metaclass__ = type

CHUNK = 64 * 1024
SUMS_MAX_BYTES = 1 << 20
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


class FetchError(Exception):
    """The artifact could not be fetched (the message says why; `cause` is the underlying error)."""

    cause = None


class ChecksumError(Exception):
    """No usable digest, or the digest does not match (the message says which and the fix)."""


def redact(url):
    """The URL without user:password@ (for messages)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _origin(url):
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    try:
        port = parts.port or default
    except ValueError:
        port = None
    return (parts.scheme.lower(), (parts.hostname or "").lower(), port)


class SameOriginAuthRedirects(HTTPRedirectHandler):
    """Follows redirects, dropping Authorization on any cross-origin or downgrading hop.

    `insecure` becomes True when any hop of the chain is not https.
    """

    def __init__(self):
        self.insecure = False

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = HTTPRedirectHandler.redirect_request(self, req, fp, code, msg, headers, newurl)
        if new is None:
            return None
        if urlsplit(new.full_url).scheme.lower() != "https":
            self.insecure = True
        if _origin(new.full_url) != _origin(req.full_url):
            for name in list(new.headers):
                if name.lower() in ("authorization", "proxy-authorization", "cookie"):
                    del new.headers[name]
            for name in list(new.unredirected_hdrs):
                if name.lower() in ("authorization", "cookie"):
                    del new.unredirected_hdrs[name]
        return new


def is_local(url):
    return url.startswith("file://") or "://" not in url


def _local_path(url):
    return unquote(urlsplit(url).path) if url.startswith("file://") else url


def fetch(
    url, dest, user=None, password=None, timeout=300.0, max_bytes=2 << 30, read_timeout=60.0, budget=None
):
    """Copy `url` (https://, http://, file:// or a path) to `dest` within `timeout` seconds in total and
    at most `max_bytes` bytes. Returns True when every hop was https. Raises FetchError.

    `budget`: the configured deadline to name in the error (when `timeout` is what is left of it)."""
    state = {"secure": not is_local(url) and url.lower().startswith("https://")}
    stop = threading.Event()

    def work():
        try:
            _download(url, dest, user, password, max_bytes, min(read_timeout, timeout), stop, state)
        except Exception as exc:  # noqa: BLE001 - handed to the caller's thread
            state["error"] = exc

    worker = threading.Thread(target=work, name="hc-download")
    worker.daemon = True  # a stuck read must not keep the module alive past its deadline
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        stop.set()
        raise FetchError(
            "download of %s did not finish within %gs (hc_download_timeout)"
            % (redact(url), budget or timeout)
        )
    error = state.get("error")
    if isinstance(error, FetchError):
        raise error
    if error is not None:
        wrapped = FetchError("cannot fetch %s: %s" % (redact(url), error))
        wrapped.cause = error
        raise wrapped
    return state["secure"]


def _too_big(url, max_bytes):
    return FetchError("%s is larger than hc_artifact_max_bytes (%d bytes)" % (redact(url), max_bytes))


def _download(url, dest, user, password, max_bytes, read_timeout, stop, state):
    if is_local(url):
        path = _local_path(url)
        if os.path.getsize(path) > max_bytes:
            raise _too_big(url, max_bytes)
        source = open(path, "rb")
    else:
        headers = {}
        if password:
            token = base64.b64encode(("%s:%s" % (user or "", password)).encode()).decode()
            headers["Authorization"] = "Basic " + token
        redirects = SameOriginAuthRedirects()
        source = build_opener(redirects).open(Request(url, headers=headers), timeout=read_timeout)
        if redirects.insecure:
            state["secure"] = False
        length = source.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            source.close()
            raise _too_big(url, max_bytes)
    total = 0
    read = getattr(source, "read1", source.read)  # one system call a read: a trickle cannot stall us
    try:
        with open(dest, "wb") as out:
            while not stop.is_set():
                chunk = read(CHUNK)
                if not chunk:
                    return
                total += len(chunk)
                if total > max_bytes:
                    raise _too_big(url, max_bytes)
                out.write(chunk)
    finally:
        source.close()


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_checksum(text):
    """'sha256:<hex>' or a bare 64-digit hex -> lower-case hex. Raises ChecksumError."""
    algo, sep, value = text.strip().partition(":")
    if not sep:
        algo, value = "sha256", algo
    if algo.lower() != "sha256" or not _HEX.match(value):
        raise ChecksumError("hc_artifact_checksum %r is not 'sha256:<64 hex digits>'" % text[:100])
    return value.lower()


def sums_url_for(artifact_url):
    """SHA256SUMS in the same directory as the archive (query and fragment dropped)."""
    parts = urlsplit(artifact_url)
    if "://" not in artifact_url:
        return os.path.join(os.path.dirname(artifact_url), "SHA256SUMS")
    path = parts.path.rsplit("/", 1)[0] + "/SHA256SUMS"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def archive_name(artifact_url):
    path = urlsplit(artifact_url).path if "://" in artifact_url else artifact_url
    return unquote(path.rsplit("/", 1)[-1])


def parse_sums(text, name):
    """The digest SHA256SUMS gives for `name` ('<hex>  name', '<hex> *name' or BSD 'SHA256 (name) = <hex>'),
    or None when it has no line for it."""
    found = set()
    for line in text.splitlines():
        line = line.strip()
        bsd = re.match(r"^SHA256 ?\((.+)\) ?= ?([0-9a-fA-F]{64})$", line)
        if bsd:
            entry, digest = bsd.group(1), bsd.group(2)
        else:
            fields = line.split(None, 1)
            if len(fields) != 2 or not _HEX.match(fields[0]):
                continue
            digest, entry = fields[0], fields[1].lstrip("*")
        if entry in (name, "./" + name):
            found.add(digest.lower())
    if len(found) > 1:
        raise ChecksumError("SHA256SUMS gives %d different digests for %s" % (len(found), name))
    return found.pop() if found else None


def _absent(exc):
    if isinstance(exc, HTTPError):
        return exc.code in (403, 404, 410)
    return isinstance(exc, (IOError, OSError)) and getattr(exc, "errno", None) == errno.ENOENT


def expected_digest(artifact_url, checksum, sums_url, tmp, user=None, password=None, timeout=60.0):
    """(hex digest, where it came from), or (None, why there is none).

    Raises ChecksumError for a malformed digest or an unreadable SHA256SUMS (other than absent)."""
    if checksum:
        return parse_checksum(checksum), "hc_artifact_checksum"
    url = sums_url or sums_url_for(artifact_url)
    name = archive_name(artifact_url)
    try:
        fetch(url, tmp, user, password, timeout=timeout, max_bytes=SUMS_MAX_BYTES)
    except FetchError as exc:
        if _absent(getattr(exc, "cause", None)):
            return None, "%s does not exist" % redact(url)
        raise ChecksumError("cannot read %s: %s" % (redact(url), exc)) from None
    try:
        with open(tmp, "rb") as fh:
            text = fh.read().decode("utf-8", "replace")
    finally:
        os.unlink(tmp)
    digest = parse_sums(text, name)
    if digest is None:
        return None, "%s has no line for %s" % (redact(url), name)
    return digest, redact(url)
