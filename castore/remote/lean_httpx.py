"""Import httpx without ``httpx._main``, its command-line client (imported first by castore.remote.transport).

``import httpx`` runs ``from ._main import main``, which loads click, rich's
console, tables, progress and syntax highlighting, and pygments: ~40 ms of CPU
of every registry verb, for a ``httpx`` command continuity never runs. httpx
falls back to a stub ``main`` when that import fails, so the import is blocked
while httpx loads and unblocked after (a later ``import httpx._main`` works).
"""

from __future__ import annotations

import sys


def load() -> None:
    if "httpx" in sys.modules or "httpx._main" in sys.modules:
        return
    sys.modules["httpx._main"] = None  # type: ignore[assignment]  # import httpx._main -> ImportError
    try:
        import httpx  # noqa: F401
    finally:
        del sys.modules["httpx._main"]


load()
