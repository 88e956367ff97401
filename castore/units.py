"""Human-readable quantities in one style everywhere: IEC sizes (KiB, MiB, GiB), ISO-8601 times."""

from __future__ import annotations

import datetime as dt

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
    return dt.datetime.fromtimestamp(sec, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def iso_s(ns: int) -> str:
    """Nanoseconds since the epoch as ISO-8601 UTC to the second (catalog dates)."""
    return dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
