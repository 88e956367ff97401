"""The tree a tar stream describes, as GNU tar would extract it: inodes (TarNode) under their
current names (TarTree: later members replace earlier ones, hardlinks join an inode), member
names made manifest paths (clean_name), and a sparse member's logical content (LogicalReader)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from castore.errors import TarUnsafe
from castore.manifest.model import Chunk
from castore.tar.reader import Member

FS_BLOCK = 4096
_ZEROS = bytes(1 << 20)


@dataclass(eq=False)
class TarNode:
    """An inode of the extracted tree; ``paths`` are its current names."""

    kind: str
    perm: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: dict[str, bytes]
    paths: list[str] = field(default_factory=list)
    size: int = 0
    digest: str = ""
    chunks: tuple[Chunk, ...] = ()
    holes: tuple[tuple[int, int], ...] = ()
    target: str = ""
    char: bool = False
    major: int = 0
    minor: int = 0


def parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def clean_name(raw: bytes, what: str) -> str | None:
    """A member name as a manifest path; None for the root. Raises TarUnsafe."""
    if raw.startswith(b"/"):
        raise TarUnsafe(f"tar member {raw[:200]!r}: absolute {what} refused")
    if b"\0" in raw:
        raise TarUnsafe(f"tar member {raw[:200]!r}: NUL in {what}")
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise TarUnsafe(f"tar member {raw[:200]!r}: '..' in {what} refused")
    if not parts:
        return None
    return "/" + os.fsdecode(b"/".join(parts))


class TarTree:
    """The tree ``tar -x`` would leave, built member by member."""

    def __init__(self) -> None:
        self.at: dict[str, TarNode] = {}
        self.has_below: set[str] = set()  # paths with at least one member below them

    def _check_parents(self, path: str) -> None:
        parent = parent_of(path)
        while parent != "/":
            n = self.at.get(parent)
            if n is not None:
                if n.kind != "dir":
                    raise TarUnsafe(f"tar member {path!r} is below {parent!r}, a {n.kind} member; refused")
                break
            parent = parent_of(parent)

    def add(self, path: str, node: TarNode) -> None:
        self._check_parents(path)
        old = self.at.get(path)
        if old is not None:
            if old.kind == "dir" or node.kind == "dir":
                if node.kind != "dir" and path in self.has_below:
                    raise TarUnsafe(f"tar member {path!r} would replace a directory that has members; refused")
            old.paths.remove(path)
        elif node.kind != "dir" and path in self.has_below:
            raise TarUnsafe(f"tar member {path!r} would replace a directory that has members; refused")
        self.at[path] = node
        node.paths.append(path)
        p = parent_of(path)
        while p != "/" and p not in self.has_below:
            self.has_below.add(p)
            p = parent_of(p)

    def link(self, path: str, target: str) -> None:
        node = self.at.get(target)
        if node is None:
            raise TarUnsafe(f"tar member {path!r}: hardlink to {target!r}, which is not an earlier member; refused")
        if node.kind == "dir":
            raise TarUnsafe(f"tar member {path!r}: hardlink to directory {target!r} refused")
        if path == target:
            return
        self.add(path, node)

    def nodes(self) -> list[TarNode]:
        seen: dict[int, TarNode] = {}
        for n in self.at.values():
            seen.setdefault(id(n), n)
        return list(seen.values())


def holes_of(regions: list[tuple[int, int]], size: int) -> tuple[tuple[int, int], ...]:
    """The holes a filesystem keeps for these data regions (4 KiB granularity)."""
    out = []
    pos = 0
    for off, n in [*regions, (size, 0)]:
        b, e = pos, off
        b = -(-b // FS_BLOCK) * FS_BLOCK
        if e != size:
            e = e // FS_BLOCK * FS_BLOCK
        if e > b:
            out.append((b, e))
        pos = max(pos, off + n)
    return tuple(out)


class LogicalReader:
    """readinto() over a member's logical content (zeros in sparse holes), hashing it."""

    def __init__(self, m: Member) -> None:
        self.m = m
        self.h = hashlib.sha256()
        self.pos = 0
        self.size = m.logical_size
        self.regions = list(reversed(m.sparse)) if m.sparse is not None else None

    def readinto(self, mv: memoryview) -> int:
        want = min(len(mv), self.size - self.pos)
        if want <= 0:
            return 0
        if self.regions is None:
            n = self.m.readinto(mv[:want])
        else:
            if self.regions and self.regions[-1][0] <= self.pos:
                off, ln = self.regions[-1]
                n = self.m.readinto(mv[: min(want, off + ln - self.pos)])
                if self.pos + n == off + ln:
                    self.regions.pop()
            else:
                nxt = self.regions[-1][0] if self.regions else self.size
                n = min(want, nxt - self.pos, len(_ZEROS))
                mv[:n] = _ZEROS[:n]
        self.h.update(mv[:n])
        self.pos += n
        return n
