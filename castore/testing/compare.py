"""Test helpers shared by the suite: describe a tree and compare two trees
the way containerd/continuity's fstest does (type, mode, owner, size, content,
targets, hardlink groups, device numbers, xattrs, mtimes)."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass


@dataclass(frozen=True)
class Node:
    kind: str
    perm: int
    uid: int
    gid: int
    size: int
    content: str
    target: bytes
    rdev: tuple[int, int]
    xattrs: tuple[tuple[str, bytes], ...]
    mtime_ns: int


def _xattrs(path: bytes) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for n in sorted(names):
        try:
            out.append((n, os.getxattr(path, n, follow_symlinks=False)))
        except OSError:
            pass
    return tuple(out)


def snapshot(
    root: str | os.PathLike[str], *, times: bool = True, dir_times: bool = True, xattrs: bool = True
) -> tuple[dict[bytes, Node], list[list[bytes]]]:
    """Entries of a tree by relative path (bytes), and its hardlink groups. Iterative; no symlink followed."""
    rootb = os.fsencode(root)
    entries: dict[bytes, Node] = {}
    inodes: dict[tuple[int, int], list[bytes]] = {}
    stack = [b""]
    while stack:
        rel = stack.pop()
        full_dir = os.path.join(rootb, rel) if rel else rootb
        for name in sorted(os.listdir(full_dir)):
            r = os.path.join(rel, name) if rel else name
            full = os.path.join(rootb, r)
            st = os.lstat(full)
            m = st.st_mode
            kind, content, target, rdev = "?", "", b"", (0, 0)
            if stat.S_ISREG(m):
                kind = "file"
                with open(full, "rb") as f:
                    content = hashlib.file_digest(f, "sha256").hexdigest()
                if st.st_nlink > 1:
                    inodes.setdefault((st.st_dev, st.st_ino), []).append(r)
            elif stat.S_ISDIR(m):
                kind = "dir"
                stack.append(r)
            elif stat.S_ISLNK(m):
                kind, target = "symlink", os.readlink(full)
            elif stat.S_ISFIFO(m):
                kind = "fifo"
            elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
                kind = "chr" if stat.S_ISCHR(m) else "blk"
                rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
            elif stat.S_ISSOCK(m):
                kind = "sock"
            keep_time = times and (kind != "dir" or dir_times)
            entries[r] = Node(
                kind,
                stat.S_IMODE(m) if kind != "symlink" else 0o777,
                st.st_uid,
                st.st_gid,
                st.st_size if kind == "file" else 0,
                content,
                target,
                rdev,
                _xattrs(full) if xattrs else (),
                st.st_mtime_ns if keep_time else 0,
            )
    groups = sorted(sorted(g) for g in inodes.values() if len(g) > 1)
    return entries, groups


def tree_differences(a: str | os.PathLike[str], b: str | os.PathLike[str], **kw: bool) -> list[str]:
    """Human-readable differences between two trees (empty when equal)."""
    ea, ga = snapshot(a, **kw)
    eb, gb = snapshot(b, **kw)
    out = []
    for k in sorted(ea.keys() | eb.keys()):
        if ea.get(k) != eb.get(k):
            out.append(f"{os.fsdecode(k)}: {ea.get(k)} != {eb.get(k)}")
    if ga != gb:
        out.append(f"hardlink groups differ: {ga} != {gb}")
    return out


def assert_trees_equal(a: str | os.PathLike[str], b: str | os.PathLike[str], **kw: bool) -> None:
    """Raise AssertionError listing every difference between the trees at ``a`` and ``b``."""
    diffs = tree_differences(a, b, **kw)
    assert not diffs, "trees differ:\n" + "\n".join(diffs[:50])
