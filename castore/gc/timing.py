"""Where a gc run's time goes: wall and CPU seconds per phase, summed over the run.

The phases (``docs/gc.md``): ``mark`` (roots and the manifest walk into the on-disk mark set),
``scan`` (the index cursor and the listing of every blob shard), ``commit`` (the holds of the store
lock that re-read the roots and delete index rows), ``unlink`` (the holds that unlink files),
``caches`` (phase 4: leases, temps, link objects, stat cache, chunk map). ``--json`` reports them as
``phases``; ``scripts/bench/gc.py`` prints them per size, so a phase that grows faster than the
store shows as a per-blob cost that rises with it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class PhaseTimes:
    """Wall and CPU (this process: user + system) seconds per phase name, summed."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        w, c = time.monotonic(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.monotonic() - w
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c

    def as_json(self) -> dict[str, dict[str, float]]:
        return {n: {"wall": round(self.wall[n], 3), "cpu": round(self.cpu[n], 3)} for n in self.wall}


__all__ = ["PhaseTimes"]
