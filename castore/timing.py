"""Where a run's time goes: library code marks the end of each phase, ``continuity --debug``
prints them (castore.cli.phases). A mark costs one list append; nothing is printed without
``--debug``. Imports only the standard library."""

from __future__ import annotations

import time

#: (phase name, perf_counter, process_time) at the end of each phase, in order
marks: list[tuple[str, float, float]] = []


def mark(name: str) -> None:
    """The phase ``name`` ends now."""
    marks.append((name, time.perf_counter(), time.process_time()))
