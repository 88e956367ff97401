"""Pure comparison of resources and manifests (used by verify and diff)."""

from __future__ import annotations

from dataclasses import dataclass

from castore.manifest.model import AdsEntry, Device, Manifest, RegularFile, Resource, Symlink
from castore.textsafe import quote, safe_line
from castore.units import iso_ns

#: Attributes a comparison knows, for --ignore-attr.
ATTRS = ("type", "mode", "uid", "gid", "size", "digest", "target", "device", "xattr", "mtime", "links", "ads")
ALIASES = {
    "owner": ("uid", "gid"),
    "xattrs": ("xattr",),
    "devices": ("device",),
    "major": ("device",),
    "minor": ("device",),
    "hardlinks": ("links",),
    "content": ("size", "digest"),
    "time": ("mtime",),
    "mtimes": ("mtime",),
    "perm": ("mode",),
    "permissions": ("mode",),
    "chunks": (),
    "streams": ("ads",),
}
CONTENT_ATTRS = frozenset({"type", "size", "digest", "target", "device", "ads"})


def normalize_ignores(names: tuple[str, ...] | list[str]) -> frozenset[str]:
    """Map user attribute names (with aliases) to ATTRS; ValueError on unknown ones."""
    out: set[str] = set()
    for n in names:
        key = n.strip().lower()
        if key in ATTRS:
            out.add(key)
        elif key in ALIASES:
            out.update(ALIASES[key])
        else:
            raise ValueError(f"unknown attribute {n!r} (known: {', '.join(ATTRS + tuple(ALIASES))})")
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Difference:
    """One attribute of one path that differs."""

    path: str
    attr: str  # an ATTRS name, or "missing" / "extra"
    expected: str = ""
    actual: str = ""

    def __str__(self) -> str:
        path = quote(self.path)
        if self.attr == "missing":
            return f"{path}: missing"
        if self.attr == "extra":
            return f"{path}: extra entry ({safe_line(self.actual)})"
        return f"{path}: {self.attr} differs: expected {safe_line(self.expected)}, got {safe_line(self.actual)}"


def _xattr_text(xattrs: tuple[tuple[str, bytes], ...]) -> str:
    return "{" + ", ".join(f"{n}={v!r}" for n, v in xattrs) + "}"


def _ads_text(ads: tuple[AdsEntry, ...]) -> str:
    if not ads:
        return "no alternate data stream"
    return f"{len(ads)} alternate data stream(s) " + "{" + ", ".join(a.name for a in ads) + "}"


def compare(
    path: str, want: Resource, got: Resource, ignore: frozenset[str] = frozenset(), ignore_mode_bits: int = 0
) -> list[Difference]:
    """Every attribute of ``got`` that differs from ``want``, at ``path``."""
    out: list[Difference] = []

    def add(attr: str, exp: object, act: object) -> None:
        if attr not in ignore:
            out.append(Difference(path, attr, str(exp), str(act)))

    if type(want) is not type(got):
        if isinstance(want, Device) or isinstance(got, Device) or "type" not in ignore:
            add("type", want.kind, got.kind)
        return out
    mask = 0o7777 & ~ignore_mode_bits
    if want.perm & mask != got.perm & mask and not isinstance(want, Symlink):
        add("mode", f"{want.perm:04o}", f"{got.perm:04o}")
    if want.uid != got.uid:
        add("uid", want.uid, got.uid)
    if want.gid != got.gid:
        add("gid", want.gid, got.gid)
    if isinstance(want, RegularFile) and isinstance(got, RegularFile):
        if want.size != got.size:
            add("size", want.size, got.size)
        if want.digest != got.digest and got.digest:
            add("digest", want.digest, got.digest)
    elif isinstance(want, Symlink) and isinstance(got, Symlink):
        if want.target != got.target:
            add("target", repr(want.target), repr(got.target))
    elif isinstance(want, Device) and isinstance(got, Device):
        if (want.char, want.major, want.minor) != (got.char, got.major, got.minor):
            add(
                "device",
                f"{'c' if want.char else 'b'} {want.major}:{want.minor}",
                f"{'c' if got.char else 'b'} {got.major}:{got.minor}",
            )
    if want.xattrs != got.xattrs:
        add("xattr", _xattr_text(want.xattrs), _xattr_text(got.xattrs))
    if want.ads != got.ads:  # on Linux a tree has none: a checkout could not write them
        add("ads", _ads_text(want.ads), _ads_text(got.ads))
    if want.mtime_ns is not None and got.mtime_ns is not None and want.mtime_ns != got.mtime_ns:
        add("mtime", iso_ns(want.mtime_ns), iso_ns(got.mtime_ns))  # ISO-8601 with the nanoseconds
    if want.paths != got.paths:
        add("links", list(want.paths), list(got.paths))
    return out


@dataclass(frozen=True, slots=True)
class Change:
    """One path's change between two manifests."""

    path: str
    kind: str  # added | deleted | modified | metadata
    attrs: tuple[str, ...] = ()

    def __str__(self) -> str:
        sign = {"added": "A", "deleted": "D", "modified": "M", "metadata": "m"}[self.kind]
        extra = f" ({', '.join(self.attrs)})" if self.attrs else ""
        return f"{sign} {quote(self.path)}{extra}"


def diff(old: Manifest, new: Manifest, ignore: frozenset[str] = frozenset()) -> list[Change]:
    """Changes from ``old`` to ``new``, by path, in path order."""
    a, b = old.by_path(), new.by_path()
    changes: list[Change] = []
    for p in sorted(a.keys() | b.keys(), key=lambda s: s.encode("utf-8", "surrogateescape")):
        if p not in b:
            changes.append(Change(p, "deleted"))
        elif p not in a:
            changes.append(Change(p, "added"))
        else:
            diffs = compare(p, a[p], b[p], ignore)
            if diffs:
                attrs = tuple(d.attr for d in diffs)
                kind = "modified" if CONTENT_ATTRS & set(attrs) else "metadata"
                changes.append(Change(p, kind, attrs))
    return changes
