"""Retention policies for catalog history, like restic's ``forget`` and borg's ``prune``.

Applied per name to its history rows (its versions), newest first:

- ``last N``: the N newest versions;
- ``hourly/daily/weekly/monthly/yearly N``: for each of the N newest hours (days,
  ISO weeks, months, years, in UTC) that hold a version, the newest version of it;
- ``within D``: every version no older than D before the name's newest version
  (restic's rule: a name not written for a while keeps its last versions).

A version is kept when any rule keeps it (each rule says why); the others are
forgotten: their history rows go, and with them, at the next collection, the
content no other version, name or lease references. With no rule given every
version is kept. The name's current version is always kept (it is a root of
its own).
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import Any

from castore.store.revisions import Version

BUCKETS = ("hourly", "daily", "weekly", "monthly", "yearly")


def _bucket(kind: str, ns: int) -> str:
    t = time.gmtime(ns // 10**9)
    if kind == "hourly":
        return time.strftime("%Y-%m-%dT%H", t)
    if kind == "daily":
        return time.strftime("%Y-%m-%d", t)
    if kind == "weekly":
        year, week, _ = datetime.date(t.tm_year, t.tm_mon, t.tm_mday).isocalendar()
        return f"{year}-W{week:02d}"
    if kind == "monthly":
        return time.strftime("%Y-%m", t)
    return time.strftime("%Y", t)


@dataclass(frozen=True)
class Policy:
    last: int | None = None
    hourly: int | None = None
    daily: int | None = None
    weekly: int | None = None
    monthly: int | None = None
    yearly: int | None = None
    within_ns: int | None = None

    def empty(self) -> bool:
        return all(getattr(self, k) is None for k in ("last", *BUCKETS, "within_ns"))

    def describe(self) -> str:
        parts = [f"--keep-{k} {getattr(self, k)}" for k in ("last", *BUCKETS) if getattr(self, k) is not None]
        if self.within_ns is not None:
            parts.append(f"--keep-within {self.within_ns // 10**9}s")
        return " ".join(parts) or "keep everything"


def select(times_ns: list[int], policy: Policy) -> list[list[str]]:
    """Why each version (by its time, any order) is kept: [] for a version the policy forgets."""
    reasons: list[list[str]] = [[] for _ in times_ns]
    if policy.empty():
        return [["no policy"] for _ in times_ns]
    order = sorted(range(len(times_ns)), key=lambda i: times_ns[i], reverse=True)  # newest first
    if not order:
        return reasons
    if policy.last is not None:
        for i in order[: policy.last]:
            reasons[i].append("last")
    for kind in BUCKETS:
        n = getattr(policy, kind)
        if n is None:
            continue
        seen: set[str] = set()
        for i in order:
            if len(seen) >= n:
                break
            b = _bucket(kind, times_ns[i])
            if b not in seen:
                seen.add(b)
                reasons[i].append(f"{kind} {b}")
    if policy.within_ns is not None:
        newest = times_ns[order[0]]
        for i in order:
            if times_ns[i] >= newest - policy.within_ns:
                reasons[i].append("within")
    if not reasons[order[0]]:
        reasons[order[0]].append("newest")  # the current version is never forgotten
    return reasons


def plan(by_name: dict[str, list[Version]], policy: Policy) -> list[dict[str, Any]]:
    """Every version of every name with ``keep`` and ``reasons`` (``gc --dry-run`` prints it)."""

    def when(ns: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // 10**9))

    out = []
    for name in sorted(by_name):
        vs = sorted(by_name[name], key=lambda v: v.time_ns, reverse=True)
        why = select([v.time_ns for v in vs], policy)
        for i, (v, r) in enumerate(zip(vs, why, strict=True)):
            out.append(
                {
                    "name": name,
                    "revision": f"{name}@{i}",
                    "time": when(v.time_ns),
                    "digest": v.digest,
                    "keep": bool(r),
                    "reasons": r,
                    "incomplete": v.incomplete,
                }
            )
    return out
