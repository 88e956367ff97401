"""Progress of long work: library code reports it, the CLI renders it.

Library code never prints progress. It opens a task and advances it::

    with progress.task("checkout", total=total_bytes) as t:
        ...
        t.advance(len(chunk))

With no reporter installed (library use, tests, cron: stderr not a terminal)
a task costs one attribute lookup per ``advance``. The CLI installs a reporter
(``castore.cli.progress_view``) only when stderr is a terminal and ``-q`` was
not given, so nothing heavier is imported otherwise.

``advance`` may be called from worker threads; a reporter serialises itself.
"""

from __future__ import annotations

import os
import threading
from types import TracebackType
from typing import Protocol


class Reporter(Protocol):
    """What a renderer implements; one task is shown at a time."""

    def begin(self, label: str, total: int | None, unit: str) -> None: ...

    def update(self, done: int, total: int | None) -> None: ...

    def end(self) -> None: ...


_reporter: Reporter | None = None


def install(reporter: Reporter | None) -> None:
    """Route every task to ``reporter`` (None: report nothing)."""
    global _reporter
    _reporter = reporter


def active() -> bool:
    return _reporter is not None


class Task:
    """One unit of long work: ``done`` of ``total`` (bytes or items) so far."""

    __slots__ = ("label", "total", "unit", "done", "_rep", "_lock", "_pid")

    def __init__(self, label: str, total: int | None, unit: str) -> None:  # noqa: D107
        self.label, self.total, self.unit, self.done = label, total, unit, 0
        self._rep = _reporter
        self._lock = threading.Lock()
        self._pid = os.getpid() if _reporter is not None else 0

    def __enter__(self) -> Task:
        if self._rep is not None:
            _open.append(self)
            self._rep.begin(self.label, self.total, self.unit)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._rep is not None:
            if self in _open:
                _open.remove(self)
            self._rep.end()

    def advance(self, n: int = 1) -> None:
        if self._rep is None or self._pid != os.getpid():  # a forked worker does not draw
            return
        with self._lock:
            self.done += n
            self._rep.update(self.done, self.total)

    def set_total(self, total: int | None) -> None:
        """The total became known (a walk finished) or changed."""
        self.total = total
        if self._rep is not None:
            with self._lock:
                self._rep.update(self.done, total)


_open: list[Task] = []


def advance(n: int = 1) -> None:
    """Advance the innermost open task (leaf code that does not know which verb runs it)."""
    if _open:
        _open[-1].advance(n)


def finish() -> None:
    """Close whatever is shown (an error line is about to be printed)."""
    if _reporter is not None:
        _open.clear()
        _reporter.end()


def task(label: str, total: int | None = None, unit: str = "B") -> Task:
    """A task to report; ``unit`` is ``"B"`` (bytes, shown in IEC units) or a noun for items."""
    return Task(label, total, unit)
