"""Network plumbing for the SSH test hosts: namespaces, veth pairs, addresses, routes, and entering a
namespace from Python.

Every host gets a /30 from 198.18.0.0/15 (RFC 2544 benchmarking range): ``.1`` is the root-namespace end of
its veth pair (the host's gateway and default route), ``.2`` the host. An ``unreachable`` route of very low
priority covers each /30 so that, while a link is down, packets for the host fail fast with "No route to
host" instead of leaking out of the machine's default route. ``/etc/netns/<ns>/`` gives each namespace its
own hosts and resolv.conf (``ip netns exec`` bind-mounts them).

:func:`entered` switches the calling thread into a namespace and back (``setns(2)`` via ctypes; Python's
``os.setns`` is 3.12+): a socket keeps the namespace it was created in, so one process can listen in many.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from fleetctl.errors import SimError
from fleetctl.sim.procs import quiet, run, which

BENCH_NET = ipaddress.IPv4Network("198.18.0.0/15")
GUARD_METRIC = 4_000_000_000  # the unreachable guard route loses to the connected route while the link is up
ETC_NETNS = Path("/etc/netns")
NETNS_RUN_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000


class NamespaceError(OSError):
    """A network namespace cannot be entered (or left again)."""


def ip_bin() -> str | None:
    return which("ip", "/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip")


# -- entering a namespace from this process ------------------------------------------------------


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NamespaceError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")


@contextlib.contextmanager
def entered(name: str, home_fd: int | None = None) -> Iterator[None]:
    """Run the body with the calling thread in network namespace `name` (``ip netns`` name), then return
    to the namespace of `home_fd` (an open ``/proc/thread-self/ns/net``; default: the thread's current one).

    Namespace membership is per thread: create and bind sockets inside, serve them from anywhere.
    Raises NamespaceError when the namespace cannot be entered, or when the thread cannot return (fatal
    for the caller: the thread stays in the wrong namespace).
    """
    own = None
    if home_fd is None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        home_fd = own
    try:
        try:
            target = os.open(NETNS_RUN_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NamespaceError(exc.errno, f"no network namespace {name!r}: {exc.strerror}") from None
        try:
            _setns(target)
        except NamespaceError as exc:
            raise NamespaceError(
                exc.errno, f"cannot enter network namespace {name!r}: {exc.strerror}"
            ) from None
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home_fd)
    finally:
        if own is not None:
            os.close(own)


# -- availability and allocation -------------------------------------------------------------------


def netns_available() -> tuple[bool, str]:
    """Can network namespaces and veth pairs be made here? (ok, reason) -- the reason says why not."""
    if not os.path.isdir("/proc/self/ns") or not os.path.exists("/proc/self/ns/net"):
        return False, "no network namespace support (/proc/self/ns/net missing: not Linux?)"
    ip = ip_bin()
    if ip is None:
        return False, "the `ip` command (iproute2) is not installed"
    probe = f"fcp{secrets.token_hex(3)}"
    try:
        cp = subprocess.run([ip, "netns", "add", probe], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"`ip netns add` could not run: {exc}"
    if cp.returncode != 0:
        who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}, not root"
        return False, f"`ip netns add` failed ({who}): {cp.stderr.strip() or cp.returncode}"
    try:
        cp = subprocess.run(
            [ip, "link", "add", probe + "h", "type", "veth", "peer", "name", probe + "n", "netns", probe],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if cp.returncode != 0:
            return False, f"cannot create a veth pair: {cp.stderr.strip() or cp.returncode}"
        return True, "ip netns and veth pairs work here"
    finally:
        quiet([ip, "link", "del", probe + "h"])
        quiet([ip, "netns", "del", probe])


def allocate_blocks(ip: str, count: int) -> list[ipaddress.IPv4Network]:
    """Pick `count` free /30s in 198.18.0.0/15 (not overlapping any address or route already there)."""
    used: list[ipaddress.IPv4Network] = []
    text = run([ip, "-o", "-4", "addr", "show"], "list addresses") + run(
        [ip, "-4", "route", "show", "table", "all"], "list routes"
    )
    for m in re.finditer(r"(\d+\.\d+\.\d+\.\d+)(/\d+)?", text):
        with contextlib.suppress(ValueError):
            net = ipaddress.IPv4Network(m.group(1) + (m.group(2) or "/32"), strict=False)
            if net.overlaps(BENCH_NET):
                used.append(net)
    blocks: list[ipaddress.IPv4Network] = []
    nblocks = BENCH_NET.num_addresses // 4
    rng = random.SystemRandom()
    tries = 0
    while len(blocks) < count:
        tries += 1
        if tries > 100_000:
            raise SimError("no free /30 left in 198.18.0.0/15 for SSH test hosts", "run cleanup_stale()")
        idx = rng.randrange(1, nblocks - 1)
        cand = ipaddress.IPv4Network((int(BENCH_NET.network_address) + 4 * idx, 30))
        if any(cand.overlaps(u) for u in used) or cand in blocks:
            continue
        blocks.append(cand)
    return blocks


# -- one host's network ----------------------------------------------------------------------------


def add_host_network(
    ip: str,
    label: str,
    ns: str,
    veth_host: str,
    veth_ns: str,
    block: ipaddress.IPv4Network,
    track: Callable[[str, str], None],
) -> tuple[str, str]:
    """Namespace `ns`, veth pair, addresses, default route and guard route for one host.

    `track(kind, name)` is called BEFORE each object is made (kind: namespace, veth, guard), so that a crash
    in between leaves a record to clean up. Returns (gateway, address)."""
    gw, addr = str(block.network_address + 1), str(block.network_address + 2)
    track("namespace", ns)
    run([ip, "netns", "add", ns], f"create namespace for {label}")
    track("veth", veth_host)
    run(
        [ip, "link", "add", veth_host, "type", "veth", "peer", "name", veth_ns, "netns", ns],
        f"veth for {label}",
    )
    run([ip, "addr", "add", f"{gw}/30", "dev", veth_host], f"address {gw} on {veth_host}")
    run([ip, "link", "set", veth_host, "up"], f"link {veth_host} up")
    run([ip, "-n", ns, "link", "set", "lo", "up"], f"loopback up in {ns}")
    run([ip, "-n", ns, "addr", "add", f"{addr}/30", "dev", veth_ns], f"address {addr} in {ns}")
    run([ip, "-n", ns, "link", "set", veth_ns, "up"], f"link {veth_ns} up in {ns}")
    run([ip, "-n", ns, "route", "add", "default", "via", gw], f"default route in {ns}")
    track("guard", str(block))
    run(
        [ip, "route", "add", "unreachable", str(block), "metric", str(GUARD_METRIC)],
        f"guard route for {block}",
    )
    return gw, addr


def remove_networks(ip: str, veths: Sequence[str], namespaces: Sequence[str], guards: Sequence[str]) -> None:
    """Delete veths, namespaces (and their /etc/netns files) and guard routes; best effort, idempotent."""
    for veth in veths:
        quiet([ip, "link", "del", veth])
    for ns in namespaces:
        quiet([ip, "netns", "del", ns])
        remove_etc_netns(ns)
    for prefix in guards:
        quiet([ip, "route", "del", "unreachable", prefix, "metric", str(GUARD_METRIC)])


def netns_pids(ip: str, ns: str) -> set[int]:
    try:
        out = subprocess.run(
            [ip, "netns", "pids", ns], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    return {int(x) for x in out.split() if x.isdigit()}


def set_link(ip: str, veth: str, up: bool, label: str) -> None:
    run([ip, "link", "set", veth, "up" if up else "down"], f"{'restore' if up else 'cut'} link of {label}")


def wait_routed(ip: str, address: str, veth: str, label: str, timeout: float = 3.0) -> None:
    """Wait until `address` is routed through `veth` again (link up brings the connected route back)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = run([ip, "-4", "route", "get", address], "route lookup", check=False)
        if f"dev {veth}" in out:
            return
        time.sleep(0.02)
    raise SimError(f"link of {label} is up but {address} is not routed through {veth}")


# -- /etc/netns ------------------------------------------------------------------------------------


def remove_etc_netns(ns: str) -> None:
    if ns.startswith("fc-") and "/" not in ns:
        shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)
        with contextlib.suppress(OSError):
            ETC_NETNS.rmdir()  # only when empty


def write_etc_netns(hosts: Sequence[tuple[str, str, str]]) -> None:
    """Per-namespace /etc/hosts and /etc/resolv.conf for (namespace, name, address) triples.

    A namespace cannot reach the machine's DNS server, so every lookup (Python's socket.getfqdn(), Ansible's
    fact gathering, ...) would hang for the resolver's full timeout: point DNS at the namespace's own
    loopback, where nothing listens (refused at once), and resolve the test hosts from /etc/hosts."""
    machine = socket.gethostname()
    for ns, name, _ in hosts:
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        for o_ns, o_name, o_addr in hosts:
            lines.append(f"{o_addr} {o_name}" + (f" {machine}" if o_ns == ns and machine != name else ""))
        d = ETC_NETNS / ns
        try:
            d.mkdir(parents=True, exist_ok=True)
            (d / "hosts").write_text("\n".join(lines) + "\n")
            (d / "resolv.conf").write_text(
                "# fleetctl SSH test host: no DNS here (refused at once)\n"
                "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
            )
        except OSError as exc:
            raise SimError(f"cannot write {d}: {exc}") from exc


# -- loopback fallback -----------------------------------------------------------------------------


def loopback_addresses(count: int) -> list[tuple[str, int]]:
    """`count` distinct loopback addresses 127.78.<random>.<i+1>, each with port 22 when it is free there,
    else a free high port."""
    third = random.SystemRandom().randrange(0, 256)
    out = []
    for i in range(count):
        addr = f"127.78.{third}.{i + 1}"
        out.append((addr, 22 if _port_free(addr, 22) else _free_port(addr)))
    return out


def _port_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
        return True


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])
