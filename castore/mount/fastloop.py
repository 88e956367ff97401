"""A cheaper request loop for pyfuse3: its stand-in for the ``trio`` module.

pyfuse3 serves each FUSE request in a trio task that first takes a ``trio.Lock`` and then
``await trio.lowlevel.wait_readable(fd)``; each of the two is a trip through trio's scheduler (an
epoll registration, a wait, a reschedule), about half of the daemon's time on a warm tree walk,
where every file costs an ``open`` and a ``release`` request and the reads come from the page cache.
pyfuse3 finds trio through its module attribute ``pyfuse3.trio`` (``pyfuse3.asyncio.enable``
replaces it the same way); ``install`` puts this stand-in there, which forwards everything to trio
except:

- ``Lock``: taken without a checkpoint when it is free (a trio.Lock wait when it is not);
- ``lowlevel.wait_readable``: first a ``poll`` of the FUSE fd for up to ``SPIN_MS`` without leaving
  the task; only when nothing came (the mount is idle), or after ``FAST_MAX`` requests in a row
  (so trio's other tasks, signals and worker-thread results, still run), the real trio wait.
  ``poll`` sleeps in the kernel: an idle mount wakes once, then waits in trio as before.
"""

from __future__ import annotations

import select
import types
from typing import Any

SPIN_MS = 1
FAST_MAX = 64


class _FastLock:
    """trio.Lock, without the two scheduler trips of ``async with`` when nobody holds it."""

    def __init__(self, trio: Any) -> None:
        self._lock = trio.Lock()
        self._would_block = trio.WouldBlock

    async def __aenter__(self) -> None:
        try:
            self._lock.acquire_nowait()
        except self._would_block:
            await self._lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()


class _Waiter:
    """``wait_readable`` that polls first; counts how many waits it saved (``fast``)."""

    def __init__(self, trio: Any) -> None:
        self._trio = trio
        self._trio_wait = trio.lowlevel.wait_readable
        self.raw: Any = None  # a castore.mount.rawloop.RawServer: serves every request after INIT
        self._polls: dict[int, Any] = {}
        self._run = FAST_MAX  # the first wait goes through trio: the other tasks start first
        self.fast = 0
        self.slow = 0

    async def wait_readable(self, fd: Any) -> None:
        fileno = fd if isinstance(fd, int) else fd.fileno()
        if self.raw is not None and self.raw.active:  # libfuse has answered INIT: the rest is the raw server's
            await self.raw.serve(fileno, self._trio)
            return
        if self._run < FAST_MAX:
            p = self._polls.get(fileno)
            if p is None:
                p = self._polls[fileno] = select.poll()
                p.register(fileno, select.POLLIN)
            ready = p.poll(SPIN_MS)
            if ready and ready[0][1] == select.POLLIN:  # readable and nothing else (no error, not closed)
                self._run += 1
                self.fast += 1
                return
        self._run = 0
        self.slow += 1
        await self._trio_wait(fd)


class _Forward(types.ModuleType):
    """A module forwarding every attribute it does not have to ``target``."""

    def __init__(self, name: str, target: Any, **own: Any) -> None:
        super().__init__(name)
        self._target = target
        self.__dict__.update(own)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def install(pyfuse3: Any, trio: Any) -> _Waiter:
    """Make pyfuse3 use the stand-in (until ``uninstall``); the waiter, for its counters."""
    waiter = _Waiter(trio)
    lowlevel = _Forward("trio.lowlevel", trio.lowlevel, wait_readable=waiter.wait_readable)
    pyfuse3.trio = _Forward("trio", trio, lowlevel=lowlevel, Lock=lambda: _FastLock(trio))
    return waiter


def uninstall(pyfuse3: Any, trio: Any) -> None:
    pyfuse3.trio = trio
