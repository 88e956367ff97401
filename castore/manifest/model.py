"""Value types of a manifest: one frozen dataclass per resource kind, and Manifest.

Paths are ``str``, "/"-rooted; bytes that are not UTF-8 are carried as
surrogate escapes (``os.fsdecode``), so any name Linux allows round-trips.
``perm`` holds POSIX permission bits including setuid (0o4000), setgid
(0o2000) and sticky (0o1000); the codec maps them to Go's FileMode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Required, TypedDict


def path_key(path: str) -> bytes:
    """The sort key of a manifest path: its raw bytes (Go's string order)."""
    return path.encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class Chunk:
    """One content-defined piece ``[begin, end)`` of a file, stored as a blob."""

    digest: str
    begin: int
    end: int


@dataclass(frozen=True, slots=True)
class AdsEntry:
    """An alternate data stream: inline ``data`` or a blob ``digest``."""

    name: str
    data: bytes = b""
    digest: str = ""


class EntryFields(TypedDict, total=False):
    """The fields every kind shares, as keyword arguments: ``Directory(**fields)``."""

    paths: Required[tuple[str, ...]]
    perm: int
    uid: int
    gid: int
    xattrs: tuple[tuple[str, bytes], ...]
    mtime_ns: int | None
    ads: tuple[AdsEntry, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """What every resource has: paths, owner, permissions, xattrs, mtime."""

    paths: tuple[str, ...]
    perm: int = 0o644
    uid: int = 0
    gid: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()
    mtime_ns: int | None = None
    ads: tuple[AdsEntry, ...] = ()

    @property
    def path(self) -> str:
        """The primary path (the first, in sorted order)."""
        return self.paths[0]

    @property
    def kind(self) -> str:
        return KIND_OF[type(self)]


@dataclass(frozen=True, slots=True, kw_only=True)
class RegularFile(Entry):
    """A regular file; several paths make a hardlink group."""

    size: int
    digest: str
    chunks: tuple[Chunk, ...] = ()
    holes: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Directory(Entry):
    """A directory; ``opaque`` hides the lower layers' contents (overlay/OCI)."""

    perm: int = 0o755
    opaque: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Symlink(Entry):
    """A symbolic link, target kept verbatim."""

    perm: int = 0o777
    target: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Device(Entry):
    """A character (``char=True``) or block device node."""

    char: bool
    major: int
    minor: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NamedPipe(Entry):
    """A FIFO."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Socket(Entry):
    """A unix socket (recorded; recreated only when asked)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Whiteout(Entry):
    """A deletion of ``path`` from the layers below (overlayfs / OCI)."""

    perm: int = 0


Resource = RegularFile | Directory | Symlink | Device | NamedPipe | Socket | Whiteout

KIND_OF: dict[type, str] = {
    RegularFile: "file",
    Directory: "dir",
    Symlink: "symlink",
    Device: "device",
    NamedPipe: "fifo",
    Socket: "socket",
    Whiteout: "whiteout",
}


@dataclass(frozen=True, slots=True)
class Manifest:
    """A tree: resources sorted by primary path (see ``Manifest.of``)."""

    resources: tuple[Resource, ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, resources: list[Resource] | tuple[Resource, ...]) -> Manifest:
        """A manifest of ``resources`` in canonical order."""
        return cls(tuple(sorted(resources, key=lambda r: path_key(r.paths[0]))))

    def by_path(self) -> dict[str, Resource]:
        """Every path (hardlinks included) mapped to its resource."""
        out: dict[str, Resource] = {}
        for r in self.resources:
            for p in r.paths:
                out[p] = r
        return out

    def files(self) -> list[RegularFile]:
        return [r for r in self.resources if isinstance(r, RegularFile)]
