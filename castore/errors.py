"""The errors castore raises on purpose, each with the exit code the CLI maps it to.

    CastoreError (1)
    ├── Differences (1)          verify/diff found differences
    ├── UnsafeInput (3)          paths, types, modes, names, tar members refused
    │   └── InvalidManifest (3)
    ├── IntegrityError (4)       digest or size mismatch, corrupt manifest/blob/metadata
    │   ├── CorruptManifest (4)
    │   └── BlobNotFound (4)
    ├── Busy (5)                 a lock held by another process
    ├── StoreUnusable (5)        store locked, unreadable or of another version
    └── ResourceLimit (6)        no space, configured limits
"""

from __future__ import annotations

import errno
from typing import ClassVar


class CastoreError(Exception):
    """Base of every error castore raises on purpose."""

    exit_code: ClassVar[int] = 1


class NotFound(CastoreError):
    """A name, path or manifest the user asked for does not exist."""


class NoStore(NotFound):
    """No store where ``--store``/CONTINUITY_STORE points (exit 1): ``continuity init`` makes one."""


class ReadOnlyStore(CastoreError):
    """The verb must write to a store that is read-only (a read-only filesystem, or not ours to write)."""


class Differences(CastoreError):
    """verify or diff found differences (exit 1)."""


class UnsafeInput(CastoreError):
    """Input refused as unsafe or invalid: paths, types, modes, names."""

    exit_code = 3


class InvalidManifest(UnsafeInput):
    """A manifest that parses but breaks the rules (paths, modes, chunks)."""


class IntegrityError(CastoreError):
    """Digest or size mismatch, corrupt manifest, blob or metadata."""

    exit_code = 4


class CorruptManifest(IntegrityError):
    """Bytes that are not a manifest."""


class BlobNotFound(IntegrityError):
    """A blob the operation needs is not in the store."""

    def __init__(self, digest: str, context: str = "") -> None:
        msg = f"blob {digest} not found in store"
        if context:
            msg += f" (needed by {context})"
        super().__init__(msg)
        self.digest = digest


class Busy(CastoreError):
    """A lock is held by another process."""

    exit_code = 5


class StoreUnusable(CastoreError):
    """The store cannot be opened or used."""

    exit_code = 5


class ResourceLimit(CastoreError):
    """No space left, or a configured limit reached."""

    exit_code = 6


def raise_if_full(exc: BaseException, where: str) -> None:
    """Raise ResourceLimit (exit 6) naming ``where`` when ``exc`` is a full disk or quota."""
    if isinstance(exc, OSError) and not isinstance(exc, CastoreError):
        if exc.errno == errno.ENOSPC:
            raise ResourceLimit(f"{where}: no space left on device") from exc
        if exc.errno == errno.EDQUOT:
            raise ResourceLimit(f"{where}: disk quota exceeded") from exc


def warn_mounts_kept(paths: list[str]) -> None:
    """One warning line per mount point a removal left in place (it never crosses filesystems)."""
    import sys
    for p in paths:
        print(f"continuity: warning: {p}: another filesystem is mounted there; left in place, "
              "not removed", file=sys.stderr)
