# -*- coding: utf-8 -*-
"""Safe extraction of a release archive on the node (used by the hc_release module).

Every member is checked before anything is written, on every Python the module supports (3.6+, with or
without `tarfile.data_filter`): no absolute names, no `..`, no member written through a symbolic link,
no link that resolves outside the release, no hard link to anything but an earlier regular file of the
archive, no devices or fifos, no duplicate names. Modes lose setuid/setgid/sticky and group/other write
bits; owners become the extracting user. Standard library only; Python 3.6 syntax.
"""

from __future__ import absolute_import, division, print_function

import os
import posixpath
import stat
import tarfile

__metaclass__ = type

_MAX_LINK_DEPTH = 40


class UnsafeArchive(Exception):
    """The archive holds a member that must not be extracted (the message names it)."""


def _escapes(name, why):
    return UnsafeArchive("archive member %r escapes the release (%s)" % (name, why))


def _parts(name, label, member):
    """Components of a member path (or hard-link target); refuses absolute paths and `..`."""
    if not name or "\x00" in name:
        raise UnsafeArchive("archive member %r has an empty or invalid %s" % (member, label))
    if name.startswith("/"):
        raise _escapes(member, "absolute %s %r" % (label, name))
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _escapes(member, "'..' in %s %r" % (label, name))
    return parts


def _resolve(parts, symlinks, member, depth=0):
    """Resolve a path inside the archive's own tree (the release dir starts empty), following the
    archive's symbolic links; refuses any path that leaves the tree."""
    if depth > _MAX_LINK_DEPTH:
        raise UnsafeArchive("archive member %r: too many levels of symbolic links" % member)
    resolved = []
    for part in parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                raise _escapes(member, "link target leaves the release")
            resolved.pop()
            continue
        resolved.append(part)
        key = "/".join(resolved)
        if key in symlinks:
            target = symlinks[key]
            if target.startswith("/"):
                raise _escapes(member, "absolute link target %r" % target)
            base = resolved[:-1]
            resolved = _resolve(base + target.split("/"), symlinks, member, depth + 1)
    return resolved


def check_members(tar):
    """Check every member of an open tarfile; returns the members, sanitised, to extract.

    Raises UnsafeArchive naming the first member that is refused (then nothing has been written).
    """
    members = tar.getmembers()
    kinds = {}  # normalised path -> "file" | "dir" | "link"
    symlinks = {}  # normalised path -> link target
    for m in members:
        parts = _parts(m.name, "path", m.name)
        key = "/".join(parts)
        if not parts and not m.isdir():
            raise UnsafeArchive("archive member %r has an empty name" % m.name)
        if key in kinds:
            raise UnsafeArchive("archive member %r appears twice" % m.name)
        if m.ischr() or m.isblk() or m.isfifo():
            raise UnsafeArchive("archive member %r is a device or fifo (refused)" % m.name)
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
            raise UnsafeArchive("archive member %r has an unsupported type (refused)" % m.name)
        if m.issym():
            if not m.linkname or "\x00" in m.linkname:
                raise UnsafeArchive("archive member %r has an empty link target" % m.name)
            if m.linkname.startswith("/"):
                raise _escapes(m.name, "absolute link target %r" % m.linkname)
            symlinks[key] = m.linkname
        elif m.islnk():
            link = "/".join(_parts(m.linkname, "link target", m.name))
            if kinds.get(link) != "file":
                raise _escapes(
                    m.name, "hard link to %r, not an earlier regular file of the archive" % m.linkname
                )
        kinds[key] = "file" if m.isreg() else "dir" if m.isdir() else "link"
        _sanitise(m)
    # With every link known (whatever their order): nothing is written through a symbolic link, and
    # every symbolic link resolves inside the release, following chains of links as the kernel would.
    for m in members:
        parts = [p for p in m.name.split("/") if p not in ("", ".")]
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in symlinks:
                raise _escapes(m.name, "written through the symbolic link %r" % "/".join(parts[:i]))
        if m.issym():
            _resolve(parts[:-1] + m.linkname.split("/"), symlinks, m.name)
    return members


def _sanitise(member):
    if member.isdir():
        member.mode = (member.mode & 0o755) | 0o700
    elif not member.issym():
        member.mode = (member.mode & 0o755) | 0o600
    member.uid, member.gid = os.geteuid(), os.getegid()
    member.uname = member.gname = ""


def safe_extract(archive, dest):
    """Extract `archive` into the new directory `dest` after checking every member.

    Raises UnsafeArchive (nothing is written then) or tarfile.TarError for a broken archive.
    """
    with tarfile.open(archive) as tar:
        members = check_members(tar)
        os.mkdir(dest, 0o755)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:  # old Python on the node: the checks above are the only guard
            tar.extractall(dest, members=members)
    _verify_tree(dest)


def _verify_tree(dest):
    """After the fact: no setuid file, no device, no link that resolves outside `dest`."""
    root = os.path.realpath(dest)
    for top, dirs, files in os.walk(dest):
        for name in dirs + files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            rel = posixpath.relpath(path, dest)
            if stat.S_ISLNK(st.st_mode):
                real = os.path.realpath(path)
                if real != root and not real.startswith(root + os.sep):
                    raise _escapes(rel, "link resolves to %s" % real)
            elif not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise UnsafeArchive("archive member %r is a device or fifo (refused)" % rel)
            elif st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(path, stat.S_IMODE(st.st_mode) & 0o777)
