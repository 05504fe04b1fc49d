"""Issue 9, finding 3: hc_release checks every archive member itself before extracting, on every Python
the node may run (with or without `tarfile.data_filter`): crafted archives unit-tested against the module's
own code, and a malicious release rolled out for real to a simulated fleet whose node Python has no
data_filter."""

from __future__ import annotations

import ast
import copy
import io
import os
import stat
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetctl.context import FleetContext
from fleetctl.sim import artifacts
from tests.conftest import TWO_BATCHES, Cli, Sim
from tests.role_utils import ROLE, load_module_util

hc_archive = load_module_util("hc_archive")


@pytest.fixture(params=["data_filter", "old_python"])
def python(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both code paths: a Python with tarfile.data_filter, and one without (as on older nodes)."""
    if request.param == "old_python":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return str(request.param)


def member(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", mode: int = 0o644, link: str = ""
) -> Any:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    return info, data


def make_tar(path: Path, *members: Any) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in (member("VERSION", data=b"9.9.9\n"), *members):
            tar.addfile(copy.copy(info), io.BytesIO(data) if info.size else None)
    return path


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Path]:
    """A node-like layout: <box>/root/releases/.stage/ holds the archive, extraction goes to tree/."""
    stage = tmp_path / "box" / "root" / "releases" / ".stage"
    stage.mkdir(parents=True)
    yield stage


def everything(top: Path) -> set[str]:
    return {str(p.relative_to(top)) for p in top.rglob("*")}


REFUSED = {
    "parent": ([member("../../../../escaped")], "'../../../../escaped' escapes the release"),
    "parent-inside": ([member("bin/../../x")], "'bin/../../x' escapes the release"),
    "absolute": ([member("/tmp/escaped-abs")], "'/tmp/escaped-abs' escapes the release (absolute path"),
    "symlink-out": ([member("l", tarfile.SYMTYPE, link="../../../..")], "'l' escapes the release"),
    "symlink-abs": ([member("l", tarfile.SYMTYPE, link="/etc")], "absolute link target '/etc'"),
    "write-through-link": (
        [member("l", tarfile.SYMTYPE, link="bin"), member("l/evil")],
        "'l/evil' escapes the release (written through the symbolic link 'l')",
    ),
    "write-through-later-link": (
        [member("d/evil"), member("d", tarfile.SYMTYPE, link=".")],
        "'d/evil' escapes the release (written through the symbolic link 'd')",
    ),
    # each link lexically inside, but sub/d/../.. really climbs out: resolved as the kernel would
    "link-chain": (
        [
            member("sub", tarfile.DIRTYPE, mode=0o755),
            member("e", tarfile.DIRTYPE, mode=0o755),
            member("sub/d", tarfile.SYMTYPE, link="../e"),
            member("x", tarfile.SYMTYPE, link="sub/d/../.."),
        ],
        "'x' escapes the release (link target leaves the release)",
    ),
    "link-loop": (
        [member("a", tarfile.SYMTYPE, link="b/x"), member("b", tarfile.SYMTYPE, link="a/y")],
        "too many levels of symbolic links",
    ),
    "hardlink-out": ([member("h", tarfile.LNKTYPE, link="../../../etc/passwd")], "'h' escapes the release"),
    "hardlink-abs": ([member("h", tarfile.LNKTYPE, link="/etc/passwd")], "'h' escapes the release (absolute"),
    "hardlink-missing": ([member("h", tarfile.LNKTYPE, link="nothere")], "not an earlier regular file"),
    "hardlink-to-link": (
        [member("s", tarfile.SYMTYPE, link="VERSION"), member("h", tarfile.LNKTYPE, link="s")],
        "not an earlier regular file",
    ),
    "chardev": ([member("dev/null", tarfile.CHRTYPE)], "'dev/null' is a device or fifo"),
    "blockdev": ([member("sda", tarfile.BLKTYPE)], "'sda' is a device or fifo"),
    "fifo": ([member("pipe", tarfile.FIFOTYPE)], "'pipe' is a device or fifo"),
    "duplicate": ([member("VERSION", data=b"evil\n")], "'VERSION' appears twice"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_archive_writes_nothing(case: str, python: str, box: Path) -> None:
    members, message = REFUSED[case]
    archive = make_tar(box / "release.tar.gz", *members)
    top = box.parents[3]  # everything around the release, up to where ../../../.. lands
    before = everything(top)
    with pytest.raises(hc_archive.UnsafeArchive) as info:
        hc_archive.safe_extract(str(archive), str(box / "tree"))
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert everything(top) == before  # nothing written, not even the release dir
    assert not Path("/tmp/escaped-abs").exists()


def test_good_archive_extracts_with_links_inside(python: str, box: Path) -> None:
    archive = make_tar(
        box / "release.tar.gz",
        member("./bin", tarfile.DIRTYPE, mode=0o755),
        member("./bin/host-controller", data=b"#!/bin/sh\n", mode=0o755),
        member("lib", tarfile.DIRTYPE, mode=0o755),
        member("lib/current", tarfile.SYMTYPE, link="../bin"),
        member("hc", tarfile.SYMTYPE, link="bin/host-controller"),
        member("hc2", tarfile.LNKTYPE, link="bin/host-controller"),
    )
    tree = box / "tree"
    hc_archive.safe_extract(str(archive), str(tree))
    assert (tree / "VERSION").read_text() == "9.9.9\n"
    assert os.readlink(tree / "hc") == "bin/host-controller"
    assert (tree / "lib" / "current" / "host-controller").read_bytes() == b"#!/bin/sh\n"
    assert (tree / "hc2").stat().st_ino == (tree / "bin" / "host-controller").stat().st_ino


def test_setuid_and_group_write_are_stripped(python: str, box: Path) -> None:
    archive = make_tar(
        box / "release.tar.gz",
        member("suid", mode=0o4777),
        member("sgid", mode=0o2755),
        member("shared", tarfile.DIRTYPE, mode=0o1777),
    )
    tree = box / "tree"
    hc_archive.safe_extract(str(archive), str(tree))
    assert stat.S_IMODE((tree / "suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((tree / "sgid").stat().st_mode) == 0o755
    assert stat.S_IMODE((tree / "shared").stat().st_mode) == 0o755
    assert (tree / "suid").stat().st_uid == os.geteuid()


def test_sim_release_archives_pass(python: str, box: Path) -> None:
    (box / "r.tar.gz").write_bytes(artifacts.build_tarball("1.2.0", None))
    hc_archive.safe_extract(str(box / "r.tar.gz"), str(box / "tree"))
    assert (box / "tree" / "VERSION").read_text() == "1.2.0\n"


@pytest.mark.parametrize(
    "path", [ROLE / "library" / "hc_release.py", *sorted((ROLE / "module_utils").glob("*.py"))], ids=str
)
def test_node_code_parses_as_python_3_6(path: Path) -> None:
    """The module runs on the node's Python: no syntax newer than 3.6 (walrus, match, `X | Y` ...)."""
    ast.parse(path.read_text(), feature_version=(3, 6))


# -- real rollouts -------------------------------------------------------------------------------------


def old_python(sim: Sim) -> str:
    """An interpreter for the nodes that has no tarfile.data_filter (a node Python older than 3.8.17)."""
    site = sim.dir / "oldpy"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import tarfile\n\ndel tarfile.data_filter\n")
    wrapper = site / "python"
    wrapper.write_text(
        f'#!/bin/sh\nPYTHONPATH={site}${{PYTHONPATH:+:$PYTHONPATH}} exec {sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)


def host(cli: Cli, sim: Sim, name: str) -> dict[str, Any]:
    doc = cli.json("status --json", env=sim.env)
    return next(h for h in doc["hosts"] if h["host"] == name)


def test_malicious_release_fails_the_host_and_writes_nothing_outside(make_sim: Any, cli: Cli) -> None:
    sim = make_sim(nodes=3, stages=TWO_BATCHES)
    sim.write_config(vars={"ansible_python_interpreter": old_python(sim)})
    store = sim.dir / "artifacts"
    evil = make_tar(
        sim.dir / "evil.tar.gz",
        member("manifest.json", data=b'{"version": "1.2.0"}\n'),
        member("../../../../escaped", data=b"owned\n"),  # tree -> .stage -> releases -> node -> nodes/
    )
    artifacts.publish(store, "1.2.0", evil.read_bytes())  # listed in SHA256SUMS: only the members are bad
    before = everything(sim.dir / "nodes")

    result = cli("rollout 1.2.0 --yes --json", env=sim.env, code=1)

    assert "escaped" not in {p.name for p in sim.dir.rglob("*")}
    canary = host(cli, sim, "node-001")
    assert canary["state"] in ("failed", "rolled_back")
    assert "archive member '../../../../escaped' escapes the release" in canary["error"], canary
    assert set(sim.current().values()) == {"1.0.0"}  # current untouched, on every node
    assert sim.releases("node-001") == {"1.0.0"}  # no 1.2.0 release, no stage dir left behind
    assert everything(sim.dir / "nodes") == before
    assert "escapes the release" in result.stdout + result.stderr


def test_keep_releases_prunes_old_ones_and_never_the_active_one(make_sim: Any) -> None:
    """hc_keep_releases=2 (from fleet.yml's vars), four updates and two rollbacks, through ansible-runner:
    after each, exactly the expected release dirs remain on disk, the active one always among them."""
    sim = make_sim(nodes=2)
    sim.write_config(vars={"hc_keep_releases": 2})
    store = sim.dir / "artifacts"
    for version in ("1.3.0", "1.4.0"):
        artifacts.publish(store, version, artifacts.build_tarball(version, None))
    executor = FleetContext(config_path=sim.config).executor()
    steps = [
        ("update.yml", "1.1.0", {"1.0.0", "1.1.0"}),
        ("update.yml", "1.2.0", {"1.1.0", "1.2.0"}),
        ("update.yml", "1.3.0", {"1.2.0", "1.3.0"}),
        ("update.yml", "1.4.0", {"1.3.0", "1.4.0"}),
        ("rollback.yml", "1.3.0", {"1.3.0", "1.4.0"}),  # a flip: the one it left is kept too
        ("rollback.yml", "1.0.0", {"1.0.0", "1.3.0"}),  # fetched again; 1.4.0 is now the oldest
    ]
    for playbook, version, kept in steps:
        key = "hc_version" if playbook == "update.yml" else "hc_rollback_version"
        result = executor.run(playbook, sim.nodes, extravars={key: version})
        assert all(r.ok for r in result.results.values()), result.results
        assert sim.current() == dict.fromkeys(sim.nodes, version)
        for node in sim.nodes:
            assert sim.releases(node) == kept, (playbook, version)
            assert not [
                p for p in (sim.dir / "nodes" / node / "releases").iterdir() if p.name.startswith(".")
            ]
