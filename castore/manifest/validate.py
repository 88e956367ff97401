"""Whole-manifest validation: run before anything is written anywhere.

Pure: takes a Manifest, raises InvalidManifest naming the first problem.
"""

from __future__ import annotations

import os

from castore.digest import is_digest
from castore.errors import InvalidManifest
from castore.manifest.model import Device, Directory, Manifest, RegularFile, Resource, Symlink, Whiteout

NAME_MAX = 255
PATH_MAX = 32768  # bytes; more than Linux's 4096 on purpose: trees are walked and written fd-relative
TARGET_MAX = 4095  # a symlink target, as Linux allows
MAX_DEVICE_MAJOR = (1 << 12) - 1
MAX_DEVICE_MINOR = (1 << 20) - 1
MAX_XATTR_BYTES = 64 * 1024
MAX_ID = (1 << 32) - 2  # uid/gid: (uid_t)-1 means "unchanged" to chown, so it cannot be an owner
#: Kinds the kernel lets carry user.* xattrs (fs/xattr.c: others get EPERM on set, so they can never be applied).
USER_XATTR_KINDS = (RegularFile, Directory)


def path_problem(path: str) -> str | None:
    """Why ``path`` is not a canonical manifest path, or None."""
    if not path.startswith("/"):
        return "not absolute"
    if path == "/":
        return "the root itself"
    if "\x00" in path:
        return "contains NUL"
    if path.endswith("/"):
        return "trailing slash"
    if "//" in path:
        return "empty component"
    if "/./" in path or path.endswith("/."):
        return "'.' component"
    if "/../" in path or path.endswith("/.."):
        return "'..' component"
    if len(path) > NAME_MAX // 4:  # only then can a component or the path be too long
        raw = path.encode("utf-8", "surrogateescape")
        if len(raw) > PATH_MAX:
            return f"longer than {PATH_MAX} bytes"
        if max(map(len, raw.split(b"/"))) > NAME_MAX:
            return "component longer than NAME_MAX"
    return None


def parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _check_resource(r: Resource) -> None:
    def bad(why: str) -> InvalidManifest:
        return InvalidManifest(f"invalid manifest entry {r.path!r}: {why}")

    if r.perm & ~0o7777:
        raise bad("impossible permission bits")
    if not (0 <= r.uid <= MAX_ID) or not (0 <= r.gid <= MAX_ID):
        raise bad(f"uid {r.uid} or gid {r.gid} out of range (0 to {MAX_ID})")
    if r.mtime_ns is not None and not (-1 << 63) <= r.mtime_ns < 1 << 63:
        raise bad(f"mtime {r.mtime_ns} ns out of range")
    names = [n for n, _ in r.xattrs]
    if names != sorted(names) or len(set(names)) != len(names):
        raise bad("xattrs not sorted or duplicated")
    for n, v in r.xattrs:
        raw = os.fsencode(n)
        if not raw or b"\x00" in raw or b"." not in raw or len(raw) > 255:
            raise bad(f"invalid xattr name {n[:300]!r}")
        if len(v) > MAX_XATTR_BYTES:
            raise bad(f"xattr {n!r} too large")
        if raw.startswith(b"user.") and not isinstance(r, USER_XATTR_KINDS):
            raise bad(f"xattr {n!r} on a {r.kind}: Linux allows user.* xattrs only on files and directories")
    if isinstance(r, RegularFile):
        if r.size < 0 or r.size >= 1 << 63:
            raise bad("impossible size")
        if not is_digest(r.digest):
            raise bad(f"bad digest {r.digest[:80]!r}")
        if r.chunks:
            pos = 0
            for c in r.chunks:
                if not is_digest(c.digest):
                    raise bad(f"bad chunk digest {c.digest[:80]!r}")
                if c.begin != pos or c.end <= c.begin:
                    raise bad("chunks do not cover the file without gaps or overlaps")
                pos = c.end
            if pos != r.size:
                raise bad(f"chunks cover {pos} bytes, size is {r.size}")
        last = 0
        for b, e in r.holes:
            if b < last or e <= b or e > r.size:
                raise bad("holes unsorted, overlapping or beyond the size")
            last = e
    elif isinstance(r, Symlink):
        t = os.fsencode(r.target)
        if not t or b"\x00" in t or len(t) > TARGET_MAX:
            raise bad("empty, NUL-bearing or over-long symlink target")
    elif isinstance(r, Directory):
        if len(r.paths) != 1:
            raise bad("a directory cannot have several paths")
    elif isinstance(r, Device):
        if not (0 <= r.major <= MAX_DEVICE_MAJOR and 0 <= r.minor <= MAX_DEVICE_MINOR):
            raise bad("device numbers out of range")
    if len(r.paths) > 1 and list(r.paths) != sorted(r.paths, key=os.fsencode):
        raise bad("hardlink paths not sorted")
    for a in r.ads:
        if a.digest and not is_digest(a.digest):
            raise bad(f"bad ADS digest {a.digest[:80]!r}")


def validate(m: Manifest) -> Manifest:
    """Check the whole manifest; return it unchanged or raise InvalidManifest."""
    kinds: dict[str, Resource] = {}
    for r in m.resources:
        for p in r.paths:
            why = path_problem(p)
            if why:
                raise InvalidManifest(f"invalid path {p[:200]!r} in manifest: {why}")
            if p in kinds:
                raise InvalidManifest(f"duplicate path {p!r} in manifest")
            kinds[p] = r
        _check_resource(r)
    for p, r in kinds.items():
        parent = parent_of(p)
        while parent != "/":
            above = kinds.get(parent)
            if above is not None:
                if not isinstance(above, Directory):
                    raise InvalidManifest(f"entry {p!r} is below {parent!r}, which is a {above.kind}")
                break  # the parent directory itself was checked against its own parents
            parent = parent_of(parent)
        if isinstance(r, Whiteout) and len(r.paths) != 1:
            raise InvalidManifest(f"whiteout {p!r} has several paths")
    return m
