"""apply's options and report, and the path helpers its phases share."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from castore.manifest.model import Device, RegularFile, Resource, Socket, Symlink
from castore.textsafe import note

TMP_PREFIX = ".continuity-apply-"
META_ATTRS = frozenset({"mode", "uid", "gid", "xattr", "mtime"})


def _stderr_note(msg: str) -> None:
    note(msg)


@dataclass
class ApplyOptions:
    """How apply changes ROOT."""

    delete: bool = False  # remove entries the manifest does not list
    verify: bool = True  # hash content as it is written (--disable-digest turns it off)
    devices: str = "create"  # create | check | skip
    sockets: bool = False
    rewrite_absolute_symlinks: bool = False
    link: str = "auto"  # content from the store: auto | reflink | copy | hardlink
    move: bool = False  # --source DIR: rename files out of the source when on the same fs
    rehash: bool = False  # ignore ROOT's record and the stat cache: walk ROOT, hash every candidate file
    sync: bool = False  # syncfs at the end (a rerun converges anyway, so off by default, as rsync)
    note: Callable[[str], None] = _stderr_note
    log: Callable[[str], None] | None = None  # one line per change (verbose)
    ignore: frozenset[str] = frozenset()  # --ignore-attr: not applied (materialize.WRITE_IGNORABLE)


@dataclass
class ApplyReport:
    """What apply did."""

    created: int = 0
    replaced: int = 0
    metadata: int = 0
    linked: int = 0
    deleted: int = 0
    unchanged: int = 0
    hashed: int = 0
    trusted: int = 0  # paths trusted unchanged from ROOT's record of the last apply (not scanned)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------ applying


def split_path(path: str) -> tuple[str, str]:
    parent, _, name = path[1:].rpartition("/")
    return parent, name


def parents(path: str) -> Iterator[str]:
    parent = path.rsplit("/", 1)[0]
    while parent:
        yield parent
        parent = parent.rsplit("/", 1)[0]


def same_content(w: Resource, h: Resource) -> bool:
    """``h`` already has ``w``'s content (bytes, link target, device numbers): only metadata may differ."""
    if type(w) is not type(h):
        return False
    if isinstance(w, RegularFile):
        return h.size == w.size and h.digest == w.digest  # type: ignore[union-attr]
    if isinstance(w, Symlink):
        return h.target == w.target  # type: ignore[union-attr]
    if isinstance(w, Device):
        return (h.char, h.major, h.minor) == (w.char, w.major, w.minor)  # type: ignore[union-attr]
    return True


def is_ignored(r: Resource, opts: ApplyOptions) -> bool:
    """Kinds this apply leaves alone: sockets unless asked, devices unless created."""
    if isinstance(r, Socket):
        return not opts.sockets
    if isinstance(r, Device):
        return opts.devices != "create"
    return False
