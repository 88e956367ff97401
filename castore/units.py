"""Human-readable quantities in one style everywhere: IEC sizes (KiB, MiB, GiB), ISO-8601 times."""

from __future__ import annotations

import time

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(n: float) -> str:
    """``1536`` -> ``1.5 KiB``; bytes below 1 KiB as ``512 B``; negative (unknown) as ``?``."""
    if n < 0:
        return "?"
    for unit in _UNITS:
        if n < 1024 or unit == _UNITS[-1]:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_rate(nbytes: float, seconds: float) -> str:
    return f"{human_size(nbytes / seconds) if seconds > 0 else '?'}/s"


def iso_ns(ns: int) -> str:
    """Nanoseconds since the epoch as ISO-8601 UTC with all nine digits: ``2026-12-07T13:59:44.123456789Z``."""
    sec, frac = divmod(ns, 1_000_000_000)
    return _utc(sec, "%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def iso_s(ns: int) -> str:
    """Nanoseconds since the epoch as ISO-8601 UTC to the second (catalog dates)."""
    return _utc(ns // 1_000_000_000, "%Y-%m-%dT%H:%M:%SZ")


def _utc(sec: int, fmt: str) -> str:
    """``datetime.fromtimestamp(sec, UTC).strftime(fmt)`` (which formats with time.strftime) without importing
    datetime (1.5 ms of every ``list``); outside datetime's years 1-9999 it raises as datetime does."""
    try:
        t = time.gmtime(sec)
    except (OverflowError, OSError, ValueError):
        t = None
    if t is None or not 1 <= t.tm_year <= 9999:
        import datetime as dt  # noqa: PLC0415

        return dt.datetime.fromtimestamp(sec, dt.UTC).strftime(fmt)
    return time.strftime(fmt, t)
