"""Run blob transfers on a bounded thread pool; the first failure stops the rest."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TypeVar

from castore.remote.client import Aborted

T = TypeVar("T")


class Progress:
    """``done/total blobs, MB`` on stderr when it is a terminal; silent otherwise (cron)."""

    def __init__(self, verb: str, total: int) -> None:
        self.on = sys.stderr.isatty() and total > 0
        self.verb, self.total = verb, total
        self.count = self.bytes = 0
        self.last = 0.0
        self.lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        with self.lock:
            self.count += 1
            self.bytes += nbytes
            now = time.monotonic()
            if self.on and (now - self.last > 0.2 or self.count == self.total):
                self.last = now
                print(
                    f"\r{self.verb} {self.count}/{self.total} blobs, {self.bytes / 1e6:.1f} MB ",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )

    def done(self) -> None:
        if self.on and self.count:
            print(file=sys.stderr)


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
