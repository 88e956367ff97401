"""Test hooks, inert unless set: CONTINUITY_CRASHPOINT=NAME SIGKILLs the process
at the named point; CONTINUITY_FAULT=NAME raises an injected OSError there."""

from __future__ import annotations

import errno
import os
import signal

_POINT = os.environ.get("CONTINUITY_CRASHPOINT", "")
_FAULT = os.environ.get("CONTINUITY_FAULT", "")


def crashpoint(name: str) -> None:
    """Die here (SIGKILL, no cleanup) when CONTINUITY_CRASHPOINT names this point."""
    if _POINT and _POINT == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if _FAULT and _FAULT.partition(":")[0] == name:
        code = _FAULT.partition(":")[2] or "EIO"
        raise OSError(getattr(errno, code, errno.EIO), f"injected fault at {name}")
