"""Blobs a verb is about to read: all present, or one BlobNotFound naming the first missing."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from castore.errors import BlobNotFound


def require_blobs(store: Any, refs: Iterable[str], needed_by: str = "of this manifest") -> None:
    """Raise BlobNotFound (exit 4) when any blob of ``refs`` is missing from ``store``: the first
    missing digest, and how many are missing (``N blob(s) <needed_by>``). Call it under the
    lease or lock that keeps gc from taking them afterwards."""
    missing = store.missing_blobs(refs)
    if missing:
        raise BlobNotFound(sorted(missing)[0], f"{len(missing)} blob(s) {needed_by}")
