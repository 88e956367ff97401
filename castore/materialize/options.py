"""How a checkout or apply writes resources (Options), and the attributes it may leave unapplied."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from castore.manifest import codec
from castore.manifest.model import Directory, Resource, Symlink
from castore.store.links import LinkRef
from castore.textsafe import note

LINK_MODES = ("auto", "hardlink", "reflink", "copy")


@dataclass
class Options:
    """How resources are written."""

    link: str = "auto"
    verify: bool = True
    devices: str = "create"  # create | check | skip
    sockets: bool = False
    whiteouts: str = "none"  # none | overlay | oci
    rewrite_absolute_symlinks: bool = False
    note: object = field(default=note)
    ignore: frozenset[str] = frozenset()  # --ignore-attr: attributes not applied (WRITE_IGNORABLE)
    # Blobs this process wrote from bytes it had just hashed (pull --checkout): not hashed again.
    trusted: frozenset[str] = frozenset()


#: Attributes checkout and apply can leave unapplied (--ignore-attr); the others are the tree itself.
WRITE_IGNORABLE = frozenset({"mode", "uid", "gid", "xattr", "mtime"})


def without_attrs(resources: Iterable[Resource], ignore: frozenset[str], umask: int | None = None) -> list[Resource]:
    """``resources`` with the ``ignore``d attributes at what a plain write gives (as ``tar`` without
    ``--same-owner``/``-p``): owner the caller, mode from the umask (x bits kept), no xattrs, no mtime."""
    if umask is None:
        umask = os.umask(0o022)
        os.umask(umask)
    uid, gid = os.geteuid(), os.getegid()
    out: list[Resource] = []
    for r in resources:
        ch: dict[str, object] = {}
        if "uid" in ignore:
            ch["uid"] = uid
        if "gid" in ignore:
            ch["gid"] = gid
        if "xattr" in ignore and r.xattrs:
            ch["xattrs"] = ()
        if "mtime" in ignore and r.mtime_ns is not None:
            ch["mtime_ns"] = None
        if "mode" in ignore and not isinstance(r, Symlink):
            ch["perm"] = (0o777 if isinstance(r, Directory) or r.perm & 0o111 else 0o666) & ~umask
        out.append(dataclasses.replace(r, **ch) if ch else r)  # type: ignore[arg-type]
    return out


def count_ads(items: Iterable[Resource | LinkRef]) -> int:
    """How many alternate data streams ``items`` carry (Linux has no place for them)."""
    n = 0
    for r in items:
        if isinstance(r, LinkRef):
            if b"\x6a" in r.entry:  # field 13 (ads), length-delimited: decode only the entries that may hold one
                n += len(codec.decode_entry(r.entry).ads)
        else:
            n += len(r.ads)
    return n


def note_ads(n: int, note: Callable[[str], None]) -> None:
    """Say that ``n`` alternate data streams were not written (nothing silent)."""
    if n:
        note(
            f"{n} alternate data stream{'s' if n != 1 else ''} not materialized "
            "(Windows ADS; Linux has no place for them; `verify` reports them)"
        )
