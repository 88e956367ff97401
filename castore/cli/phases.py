"""Where a run's time goes before and around its command: printed by ``--debug`` (issue 16 item 1).

``continuity --debug list`` ends with one stderr line such as::

    continuity: debug: phases (ms): python 11.0, cli imports 21.5, command module 2.3, store open 1.9,
    command 0.8, total 37.5

*python* is the interpreter's own start (from the process start time in /proc, 10 ms
resolution) up to the first import of ``castore.cli``; the others are measured with
``perf_counter``. Imported first by ``castore.cli`` and importing only the standard library.
"""

from __future__ import annotations

import atexit
import os
import sys
import time

from castore.timing import mark, marks

__all__ = ["enable", "mark"]

T0 = time.perf_counter()
C0 = time.process_time()
_on = False


def _python_ms() -> float | None:
    """Milliseconds from this process's start to the import of this module (None when unknown)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        now = time.clock_gettime(time.CLOCK_BOOTTIME) - (time.perf_counter() - T0)
        return max(0.0, (now - start_ticks / os.sysconf("SC_CLK_TCK")) * 1000)
    except (OSError, ValueError, IndexError):
        return None


def enable() -> None:
    """Print the phases at exit (``--debug``)."""
    global _on
    if not _on:
        _on = True
        atexit.register(_report)


def _report() -> None:
    end, cend = time.perf_counter(), time.process_time()
    parts, cpu, prev, cprev = [], [], T0, C0
    py = _python_ms()
    if py is not None:
        parts.append(f"python {py:.1f}")
    for name, t, c in marks:
        parts.append(f"{name} {(t - prev) * 1000:.1f}")
        cpu.append(f"{name} {(c - cprev) * 1000:.1f}")
        prev, cprev = t, c
    parts.append(f"command {(end - prev) * 1000:.1f}")
    cpu.append(f"command {(cend - cprev) * 1000:.1f}")
    parts.append(f"total {((end - T0) * 1000 + (py or 0)):.1f}")
    # The CPU of this process by phase (a forked worker's is not in it), then the wall-clock line.
    sys.stderr.write(f"continuity: debug: phases cpu (ms): {', '.join(cpu)}\n")
    sys.stderr.write(f"continuity: debug: phases (ms): {', '.join(parts)}\n")
