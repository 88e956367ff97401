"""Compare a tree on disk with a manifest and report every difference."""

from __future__ import annotations

import os
from dataclasses import dataclass

from castore.build import WalkOptions, build
from castore.bulkmode import bulk
from castore.manifest.diff import Difference, compare
from castore.manifest.model import Device, Manifest, Resource, Socket, Whiteout


@dataclass(frozen=True)
class VerifyOptions:
    """What a verification compares."""

    ignore: frozenset[str] = frozenset()
    ignore_mode_bits: int = 0
    disable_digest: bool = False
    sockets: bool = False
    devices: str = "check"  # check | skip


def _skipped(r: Resource, opts: VerifyOptions) -> bool:
    if isinstance(r, Socket) and not opts.sockets:
        return True
    if isinstance(r, Device) and opts.devices == "skip":
        return True
    return False


@bulk
def verify_tree(root: str, manifest: Manifest, opts: VerifyOptions = VerifyOptions()) -> list[Difference]:
    """Every difference between the tree at ``root`` and ``manifest``."""
    actual = build(root, WalkOptions(keep_appledouble=True, note=lambda _m: None), hash_files=not opts.disable_digest)
    return compare_manifests(manifest, actual, opts)


def compare_manifests(want: Manifest, got: Manifest, opts: VerifyOptions = VerifyOptions()) -> list[Difference]:
    """Every difference between an expected and an actual manifest."""
    ignore = opts.ignore | ({"digest"} if opts.disable_digest else frozenset())
    w, g = want.by_path(), got.by_path()
    out: list[Difference] = []
    for p in sorted(w.keys() | g.keys(), key=os.fsencode):
        a, b = w.get(p), g.get(p)
        if a is not None and isinstance(a, Whiteout):
            if b is not None:
                out.append(Difference(p, "extra", actual=b.kind + " where a whiteout is"))
            continue
        if a is None:
            assert b is not None
            if not _skipped(b, opts):
                out.append(Difference(p, "extra", actual=b.kind))
        elif b is None:
            if not _skipped(a, opts):
                out.append(Difference(p, "missing", expected=a.kind))
        elif not (_skipped(a, opts) and _skipped(b, opts)):
            out.extend(compare(p, a, b, ignore, opts.ignore_mode_bits))
    return out
