"""Run blob transfers on a bounded thread pool; the first failure stops the rest."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TypeVar

from castore import progress
from castore.remote.client import Aborted

T = TypeVar("T")


class Progress:
    """Bytes transferred of ``total`` as a ``castore.progress`` task: the CLI draws it (total, rate,
    ETA) when stderr is a terminal and ``-q`` was not given; silent otherwise (cron, library use)."""

    def __init__(self, verb: str, total: int) -> None:
        self.task = progress.task(verb, total=total)
        self.task.__enter__()

    def add(self, nbytes: int) -> None:
        self.task.advance(nbytes)

    def done(self) -> None:
        self.task.__exit__(None, None, None)


def run_all(items: Sequence[T], fn: Callable[[T], None], *, jobs: int, abort: threading.Event) -> None:
    """Call ``fn`` on every item with at most ``jobs`` threads.

    On the first exception, ``abort`` is set (transfers check it between
    pieces), queued work is cancelled, and that exception is raised once the
    running calls have returned, preferring a real error over ``Aborted``.
    """
    if not items:
        return
    if jobs <= 1 or len(items) == 1:
        for it in items:
            fn(it)
        return
    with ThreadPoolExecutor(max_workers=min(jobs, len(items)), thread_name_prefix="transfer") as pool:
        futures = [pool.submit(fn, it) for it in items]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        errors = [f.exception() for f in done if not f.cancelled() and f.exception() is not None]
        if errors:
            abort.set()
            for f in futures:
                f.cancel()
            wait(futures)
            errors = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
            real = [e for e in errors if not isinstance(e, Aborted)]
            raise (real or errors)[0]  # type: ignore[misc]
