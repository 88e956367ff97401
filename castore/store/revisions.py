"""Revisions of a catalog name, and the history rows that record them.

Syntax (every MANIFEST argument; see README "Naming versions"):

    NAME@N        the Nth version in NAME's history, 0 the newest
    NAME~K        K versions before the newest (the same as NAME@K)
    NAME@{DATE}   the newest version recorded at or before DATE
    NAME@DATE     the same, without braces, for the ``name@2026-12-07T13:59:44Z`` form fsck prints

DATE is ISO 8601: a date (``2026-12-07``: the end of that day, UTC) or a date
and time (``2026-12-07T13:59:44Z``, ``2026-12-07 13:59``; without a zone: UTC).

A history row is ``name \\0 time_ns (8 bytes, big endian) -> digest (32 bytes) [flags (1 byte)]``;
flag bit 0 marks an incomplete snapshot (entries skipped, see castore/ingest_skips.py).
"""

from __future__ import annotations

import re
import struct
from collections import namedtuple
from collections.abc import Iterator

from castore.errors import NotFound, UnsafeInput
from castore.store.meta import DB, Txn, dkey, dstr

FLAG_INCOMPLETE = 0x01
_REV = (  # compiled where used: a verb that resolves no revision does not pay for it
    r"^(?P<name>.+?)(?:@(?P<n>\d{1,9})|~(?P<k>\d{1,9})|@\{(?P<date>[^{}]+)\}"
    r"|@(?P<bare>\d{4}-\d\d-\d\d\S*))$"
)


class NoSuchRevision(NotFound):
    """A revision of a known name that does not exist (too old an index, a date before the first version)."""


TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up: castore/__init__.py)
if TYPE_CHECKING:
    from typing import Any, NamedTuple

    class _VersionRow(NamedTuple):
        name: str
        digest: str
        time_ns: int
        flags: int = 0

else:  # the same tuple without importing typing (not a dataclass either: list imports neither)
    _VersionRow = namedtuple("Version", "name digest time_ns flags", defaults=(0,))


class Version(_VersionRow):
    """One history row of a name."""

    __slots__ = ()

    @property
    def incomplete(self) -> bool:
        return bool(self.flags & FLAG_INCOMPLETE)


def history_key(name: str, time_ns: int) -> bytes:
    return name.encode() + b"\0" + struct.pack(">Q", time_ns)


def history_value(digest: str, flags: int = 0) -> bytes:
    return dkey(digest) + (bytes([flags]) if flags else b"")


def parse_value(raw: bytes) -> tuple[str, int]:
    """(digest, flags) of a history row's value."""
    raw = bytes(raw)
    return dstr(raw[:32]), (raw[32] if len(raw) > 32 else 0)


def parse_date(text: str) -> int:
    """An ISO 8601 date or date-time as ns since the epoch; a bare date means the end of that day (UTC)."""
    import datetime as dt  # noqa: PLC0415 - only a date revision needs it

    t = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d\d-\d\d", t):
            d = dt.datetime.fromisoformat(t).replace(tzinfo=dt.UTC) + dt.timedelta(days=1)
            return int(d.timestamp() * 10**9) - 1
        when = dt.datetime.fromisoformat(t.replace("Z", "+00:00") if t.endswith("Z") else t)
    except ValueError:
        raise UnsafeInput(f"{text!r} is not an ISO 8601 date (2026-12-07, 2026-12-07T13:59:44Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    # The whole second (or microsecond) named is "at or before" it: fsck and list print whole seconds.
    slack = 999 if "." in t else 10**9 - 1
    return int(when.timestamp()) * 10**9 + when.microsecond * 1000 + slack


def split_revision(ref: str) -> tuple[str, str, str] | None:
    """(name, kind, argument) when ``ref`` is a revision (kind: index, date), else None."""
    m = re.match(_REV, ref)
    if m is None:
        return None
    if m["n"] is not None:
        return m["name"], "index", m["n"]
    if m["k"] is not None:
        return m["name"], "index", m["k"]
    return m["name"], "date", m["date"] if m["date"] is not None else m["bare"]


def pick(name: str, versions: list[Version], kind: str, arg: str) -> Version:
    """The version a revision names among ``versions`` (oldest first). Raises NotFound."""
    if not versions:
        raise NoSuchRevision(f"no history for {name!r}")
    if kind == "index":
        n = int(arg)
        if n >= len(versions):
            raise NoSuchRevision(
                f"{name!r} has {len(versions)} version(s): {name}@{n} does not exist "
                f"(0 is the newest, {len(versions) - 1} the oldest)"
            )
        return versions[-1 - n]
    limit = parse_date(arg)
    older = [v for v in versions if v.time_ns <= limit]
    if not older:
        import datetime as dt  # noqa: PLC0415

        first = dt.datetime.fromtimestamp(versions[0].time_ns / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        raise NoSuchRevision(f"{name!r} has no version recorded at or before {arg} (the oldest is of {first})")
    return older[-1]


def short_prefix_hint(ref: str) -> str:
    """A hint for a reference that looks like a too-short digest prefix ('' when it does not)."""
    hexpart = ref[7:] if ref.startswith("sha256:") else ref
    if 4 <= len(hexpart) < 12 and all(c in "0123456789abcdef" for c in hexpart):
        return f" (a digest prefix needs at least 12 hex digits; {hexpart} has {len(hexpart)})"
    return ""


class RecordPolicy:
    """How this process records versions (set by the CLI before an ingest, pull or tag).

    ``force``: a history row even when the manifest equals the name's newest
    (``ingest --force-history``); ``flags``: of the next recorded row
    (FLAG_INCOMPLETE); ``unchanged``: the names whose recording found the same
    manifest already newest (nothing written; the CLI says "unchanged").
    """

    def __init__(
        self, force: bool = False, flags: int = 0, unchanged: list[str] | None = None, skipped: int = 0
    ) -> None:
        self.force = force
        self.flags = flags
        self.unchanged: list[str] = [] if unchanged is None else unchanged
        self.skipped = skipped  # entries an ingest left out (unreadable, vanished)

    def __repr__(self) -> str:
        return (
            f"RecordPolicy(force={self.force!r}, flags={self.flags!r}, unchanged={self.unchanged!r}, "
            f"skipped={self.skipped!r})"
        )


def rows_of(txn: Txn, db: DB, name: str) -> Iterator[tuple[int, bytes]]:
    """(time_ns, value) of each history row of ``name``, oldest first, in the caller's transaction."""
    prefix = name.encode() + b"\0"
    cur = txn.cursor(db=db)
    if cur.set_range(prefix):
        for k, v in cur:
            if not k.startswith(prefix):
                break
            if len(k) != len(prefix) + 8:
                continue  # a longer name that begins like this one and a NUL: not ours
            yield struct.unpack(">Q", k[len(prefix) :])[0], v


def newest(txn: Txn, db: DB, name: str) -> tuple[str, int] | None:
    """(digest, flags) of the newest history row of ``name``, in the caller's transaction."""
    last = None
    for _, v in rows_of(txn, db, name):
        last = v
    return None if last is None else parse_value(last)


def unchanged(txn: Txn, tags_db: DB, history_db: DB, name: str, digest: str, policy: RecordPolicy) -> bool:
    """True when recording ``digest`` under ``name`` would change nothing: the name points to it, its
    newest version is it (complete), and no new row is forced."""
    if policy.force or policy.flags:
        return False
    raw = txn.get(name.encode(), db=tags_db)
    if raw is None:
        return False
    import json

    try:
        if json.loads(raw).get("digest") != digest:
            return False
    except (ValueError, AttributeError):
        return False
    last = newest(txn, history_db, name)
    if last is None or last != (digest, 0):
        return False
    policy.unchanged.append(name)
    return True


def versions(store: Any, name: str) -> list[Version]:
    """Every version recorded under ``name``, oldest first."""
    out = []
    with store.meta.read() as txn:
        for t, v in rows_of(txn, store.meta.db("history"), name):
            d, flags = parse_value(v)
            out.append(Version(name, d, t, flags))
    return out


def resolve_revision(store: Any, ref: str) -> str | None:
    """The digest a revision reference names (None when ``ref`` is no revision of a known name)."""
    parts = split_revision(ref)
    if parts is None:
        return None
    name, kind, arg = parts
    found = versions(store, name)
    if not found and store.get_tag(name) is None:
        return None
    return pick(name, found, kind, arg).digest
