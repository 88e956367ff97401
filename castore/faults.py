"""Test hooks, inert unless set: CONTINUITY_CRASHPOINT=NAME SIGKILLs the process
at the named point; CONTINUITY_FAULT=NAME raises an injected OSError there;
CONTINUITY_PAUSE=NAME:FILE creates FILE at the point and waits (up to 60 s) until
a test removes it (to run something, gc say, right there), the first time only."""

from __future__ import annotations

import errno
import os
import time

_POINT = os.environ.get("CONTINUITY_CRASHPOINT", "")
_FAULT = os.environ.get("CONTINUITY_FAULT", "")
_PAUSE = os.environ.get("CONTINUITY_PAUSE", "")


def crashpoint(name: str) -> None:
    """Die here (SIGKILL, no cleanup) when CONTINUITY_CRASHPOINT names this point."""
    if _POINT and _POINT == name:
        import signal  # noqa: PLC0415

        os.kill(os.getpid(), signal.SIGKILL)
    if _FAULT and _FAULT.partition(":")[0] == name:
        code = _FAULT.partition(":")[2] or "EIO"
        raise OSError(getattr(errno, code, errno.EIO), f"injected fault at {name}")
    global _PAUSE
    if _PAUSE and _PAUSE.partition(":")[0] == name:
        flag = _PAUSE.partition(":")[2]
        _PAUSE = ""  # once per process
        with open(flag, "w"):
            pass
        deadline = time.monotonic() + 60
        while os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.02)
