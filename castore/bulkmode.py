"""Pausing Python's cyclic garbage collector during bulk work.

ingest, checkout, apply, copy and the tar and gc verbs allocate millions of
small objects (lstat results, jobs, manifest entries, LMDB rows) that hold no
reference cycles. The cyclic collector still walks them again and again as
they pile up: on `many` (100,000 files) it cost ingest 0.5-0.7 s of 3.9 s
(user CPU 3.1 s -> 2.35 s without it) and hardlink checkout 0.1-0.2 s.
Reference counting still frees everything at once; only cycles wait until the
collector runs again, when the bulk call returns.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


@contextmanager
def paused() -> Iterator[None]:
    """No cyclic collection inside; the collector's state is put back after (nesting is fine)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def bulk(fn: Callable[P, T]) -> Callable[P, T]:
    """Run ``fn`` with the cyclic collector paused (see the module docstring)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with paused():
            return fn(*args, **kwargs)

    return wrapper
