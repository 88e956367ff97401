"""Per-version facts of a catalog name (``log``) and store-wide figures (``stats`` without MANIFEST).

``log NAME``: every version recorded under NAME, newest first, with its size
(bytes of its regular files), the files changed since the version before it
(added, deleted, modified: content or metadata) and the new bytes it brought
(stored blobs it references that the version before did not).

``store_stats``: bytes stored on disk (every blob of the index, once), logical
bytes (every manifest of the catalog and its history, as checked out), the dedup
ratio (logical / stored content bytes, manifests left out) and, per name, the growth of its history.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Any

from castore.errors import NotFound
from castore.manifest.diff import diff
from castore.manifest.model import Manifest
from castore.store import Store
from castore.store.meta import BLOB_ROW, KIND_NAMES, dstr
from castore.store.revisions import Version, versions


def when(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class LogEntry:
    index: int  # 0 newest
    version: Version
    size: int  # logical bytes of its regular files (-1: its manifest is unreadable)
    files: int
    changed: int | None  # None: the oldest version (nothing to compare with)
    new_bytes: int

    def as_json(self) -> dict[str, Any]:
        v = self.version
        return {
            "name": v.name,
            "index": self.index,
            "revision": f"{v.name}@{self.index}",
            "digest": v.digest,
            "time": when(v.time_ns),
            "time_ns": v.time_ns,
            "size": self.size,
            "files": self.files,
            "files_changed": self.changed,
            "new_bytes": self.new_bytes,
            "incomplete": v.incomplete,
        }


def _load(store: Store, digest: str) -> Manifest | None:
    try:
        return store.load_manifest(digest)
    except Exception:  # noqa: BLE001 - a damaged version still lists (fsck names the damage)
        return None


def _blob_bytes(store: Store, digests: set[str]) -> int:
    return sum(store.blob_size(d) or 0 for d in digests)


def version_log(store: Store, name: str, limit: int | None = None) -> list[LogEntry]:
    """The log of ``name``, newest first (``limit``: only the newest so many)."""
    found = versions(store, name)
    if not found:
        raise NotFound(f"no history for {name!r}" + ("" if store.get_tag(name) is None else " (only a name)"))
    n = len(found)
    shown_from = 0 if limit is None else max(0, n - limit)
    start = max(0, shown_from - 1)  # the version before the first shown: what it is compared with
    out: list[LogEntry] = []
    prev_m: Manifest | None = None
    prev_refs: set[str] = set()
    for i in range(start, n):
        v = found[i]
        m = _load(store, v.digest)
        refs = set(store.manifest_refs(v.digest))
        has_prev = i > start
        if i >= shown_from:
            size = -1 if m is None else sum(r.size for r in m.files())
            files = 0 if m is None else sum(1 for _ in m.files())
            changed = len(diff(prev_m, m)) if has_prev and m is not None and prev_m is not None else None
            new = _blob_bytes(store, refs - prev_refs if has_prev else refs)
            out.append(LogEntry(n - 1 - i, v, size, files, changed, new))
        prev_m, prev_refs = m, refs
    out.reverse()
    return out


# ------------------------------------------------------------------ store-wide stats


def _disk_bytes(path: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total


def store_stats(store: Store) -> dict[str, Any]:
    """Store-wide figures (see the module docstring)."""
    kinds: dict[str, list[int]] = {}
    with store.meta.read() as txn:
        for _k, v in txn.cursor(db=store.meta.db("blobs")):
            size, kind = BLOB_ROW.unpack(bytes(v))
            row = kinds.setdefault(KIND_NAMES.get(kind, str(kind)), [0, 0])
            row[0] += 1
            row[1] += size
    stored = sum(b for _, b in kinds.values())
    content = sum(b for k, (_, b) in kinds.items() if k != "manifest")
    tags = store.tags()
    names = []
    logical = 0
    seen: dict[str, int] = {}
    for t in sorted(tags, key=lambda t: t.name):
        vs = versions(store, t.name)
        sizes = []
        for ver in vs:
            if ver.digest not in seen:
                m = _load(store, ver.digest)
                seen[ver.digest] = -1 if m is None else sum(r.size for r in m.files())
            sizes.append(seen[ver.digest])
        logical += sum(s for s in sizes if s > 0)
        names.append(
            {
                "name": t.name,
                "versions": len(vs),
                "digest": t.digest,
                "first": when(vs[0].time_ns) if vs else None,
                "last": when(vs[-1].time_ns) if vs else None,
                "first_size": sizes[0] if sizes else None,
                "size": sizes[-1] if sizes else None,
                "growth": (sizes[-1] - sizes[0]) if sizes else 0,
                "incomplete_versions": sum(1 for v in vs if v.incomplete),
            }
        )
    return {
        "store": store.path,
        "names": len(tags),
        "manifests": len(store.manifests()),
        "blobs": {k: {"count": c, "bytes": b} for k, (c, b) in sorted(kinds.items())},
        "stored_bytes": stored,
        "content_bytes": content,
        "disk_bytes": _disk_bytes(store.blob_root),
        "logical_bytes": logical,
        "dedup_ratio": round(logical / content, 3) if content else None,
        "per_name": names,
    }


__all__ = ["LogEntry", "dstr", "store_stats", "version_log", "when"]
