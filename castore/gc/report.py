"""gc's options and report: what a run may free, and what it freed (or, dry, would free)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from castore.errors import UnsafeInput
from castore.gc.retention import Policy
from castore.textsafe import human_size

DEFAULT_GRACE_NS = 3600 * 10**9
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)([smhdw]?)")


def parse_duration(text: str) -> int:
    """Nanoseconds of ``0``, ``90s``, ``15m``, ``2h``, ``7d``, ``1w`` (or ``1h30m``). Raises UnsafeInput."""
    t = text.strip().lower()
    pos, total = 0, 0
    while pos < len(t):
        m = _DURATION.match(t, pos)
        if m is None or m.end() == pos:
            break
        total += int(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not t or pos != len(t) or total > 100 * 365 * 86400:
        raise UnsafeInput(f"invalid duration {text[:40]!r}: use e.g. 0, 90s, 15m, 2h, 7d")
    return total * 10**9


@dataclass
class Item:
    """One thing gc deletes (or would): kind, name (digest or path), bytes."""

    kind: str  # blob | manifest | orphan | index-row | history | lease | tmp | link | cache-row
    name: str
    size: int = 0


@dataclass
class GcOptions:
    grace_ns: int = DEFAULT_GRACE_NS
    dry_run: bool = False
    keep_history: int | None = None
    retention: Policy | None = None  # per-name history policy (castore/gc/retention.py); keep_history: its `last`
    wait: bool = False
    nice: int = 0  # lower the CPU priority of the unlocked phases by this much (the CLI uses 10)
    list_items: bool = False  # keep every Item in the report (dry runs always do)


@dataclass
class GcReport:
    dry_run: bool = False
    objects: int = 0  # files removed (blobs, manifests, orphans, temps, cache objects)
    bytes: int = 0
    rows: int = 0  # metadata rows removed
    kept_blobs: int = 0
    seconds: float = 0.0
    lock_seconds: float = 0.0  # longest single hold of the exclusive store lock
    counts: dict[str, int] = field(default_factory=dict)
    items: list[Item] = field(default_factory=list)
    phases: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> {wall, cpu} seconds

    def add(self, item: Item, keep: bool, *, is_file: bool = True) -> None:
        self.counts[item.kind] = self.counts.get(item.kind, 0) + 1
        if is_file:
            self.objects += 1
            self.bytes += item.size
        else:
            self.rows += 1
        if keep:
            self.items.append(item)

    def summary(self) -> str:
        verb = "would free" if self.dry_run else "freed"
        parts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        return (
            f"gc: {verb} {self.objects} objects, {self.bytes} bytes ({human_size(self.bytes)}) in "
            f"{self.seconds:.2f}s; kept {self.kept_blobs} blobs; longest store lock "
            f"{self.lock_seconds * 1000:.0f} ms" + (f" [{parts}]" if parts else "")
        )

    def as_json(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "objects": self.objects,
            "bytes": self.bytes,
            "rows": self.rows,
            "kept_blobs": self.kept_blobs,
            "seconds": round(self.seconds, 3),
            "lock_seconds": round(self.lock_seconds, 3),
            "counts": self.counts,
            "phases": self.phases,
            "items": [{"kind": i.kind, "name": i.name, "size": i.size} for i in self.items],
        }
