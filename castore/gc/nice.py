"""gc's CPU priority: niced for the unlocked phases, normal while it holds the store lock."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


class Nice:
    """Lower CPU priority for the unlocked phases, normal priority while holding the store lock.

    gc is background work, but a starved gc holding the store lock would make
    ingests wait (priority inversion). Raising the priority back needs root;
    other users stay niced for the whole run (as ``nice continuity gc`` would).
    """

    def __init__(self, nice: int) -> None:
        self.nice = nice
        self.base = os.getpriority(os.PRIO_PROCESS, 0)
        self.can_restore = os.geteuid() == 0

    def _set(self, value: int) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, min(value, 19))
        except OSError:
            pass

    def __enter__(self) -> Nice:
        if self.nice:
            self._set(self.base + self.nice)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.nice and self.can_restore:
            self._set(self.base)

    @contextmanager
    def normal(self) -> Iterator[None]:
        if self.nice and self.can_restore:
            self._set(self.base)
        try:
            yield
        finally:
            if self.nice and self.can_restore:
                self._set(self.base + self.nice)
