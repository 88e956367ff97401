"""Every error castore raises on purpose, each with the exit code the CLI maps it to.

    CastoreError (1)
    ├── NotFound (1)             a name, path or manifest asked for does not exist
    ├── Differences (1)          verify/diff found differences
    ├── SourceChanged (1)        a source file or tree changed while it was read or copied
    ├── TreeChanged (1)          apply's ROOT changed under it (a race); rerunning converges
    ├── RemoteError (1)          a registry could not be reached or refused a request
    ├── Aborted (1)              another transfer of the same operation failed first
    ├── MountUnavailable (1)     FUSE cannot be used here (no /dev/fuse, no library, mount failed)
    ├── BadPassphrase (1)        the passphrase does not open the signing key
    ├── UnsafeInput (3)          paths, types, modes, names, tar members refused
    │   ├── InvalidManifest (3)  a manifest that parses but breaks the rules
    │   ├── TarUnsafe (3)        a tar member refused as unsafe or beyond a limit
    │   └── KeyError_ (3)        a key file that cannot be used
    ├── IntegrityError (4)       digest or size mismatch, corrupt manifest/blob/metadata
    │   ├── CorruptManifest (4)  bytes that are not a manifest
    │   ├── BlobNotFound (4)     a blob the operation needs is not in the store
    │   ├── TarCorrupt (4)       a tar stream that breaks the format
    │   ├── BadSignature (4)     a signature that is malformed or does not verify
    │   └── PolicyRefused (4)    the trust policy does not accept the manifest
    ├── Busy (5)                 a lock held by another process
    ├── StoreUnusable (5)        store locked, unreadable or of another version
    └── ResourceLimit (6)        no space, quota, open files, configured limits

An ``OSError`` that reaches the CLI is exit 6 when ``is_resource_errno`` says
so (``raise_if_full`` maps it where a verb can name what it was writing),
else exit 1. The verbs' modules re-export the classes they raise under their
old names (``castore.tar.format.TarCorrupt`` is ``castore.errors.TarCorrupt``).
"""

from __future__ import annotations

import errno

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up: castore/__init__.py)

if TYPE_CHECKING:
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


class SourceChanged(CastoreError):
    """A source file kept changing while it was read, or an entry of a copied tree changed
    (type or inode) while it was copied."""


class TreeChanged(CastoreError):
    """ROOT changed under apply (a race); rerunning converges."""


class RemoteError(CastoreError):
    """The registry could not be reached or refused a request (exit 1)."""


class Aborted(CastoreError):
    """Another transfer of the same operation failed first."""


class MountUnavailable(CastoreError):
    """FUSE cannot be used here: no /dev/fuse, no library, or the mount failed (exit 1)."""


class BadPassphrase(CastoreError):
    """The passphrase does not open the key (exit 1)."""


class UnsafeInput(CastoreError):
    """Input refused as unsafe or invalid: paths, types, modes, names."""

    exit_code = 3


class InvalidManifest(UnsafeInput):
    """A manifest that parses but breaks the rules (paths, modes, chunks)."""


class TarUnsafe(UnsafeInput):
    """A tar member refused as unsafe or beyond a limit (exit 3)."""


class KeyError_(UnsafeInput):  # noqa: N801 - KeyError is Python's own
    """A key file that cannot be used (exit 3)."""


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


class TarCorrupt(IntegrityError):
    """A tar stream that breaks the format (exit 4)."""


class BadSignature(IntegrityError):
    """A signature that is malformed, or does not verify."""


class PolicyRefused(IntegrityError):
    """The trust policy does not accept the manifest (exit 4)."""


class Busy(CastoreError):
    """A lock is held by another process."""

    exit_code = 5


class StoreUnusable(CastoreError):
    """The store cannot be opened or used."""

    exit_code = 5


class ResourceLimit(CastoreError):
    """No space left, or a configured limit reached."""

    exit_code = 6


#: errno -> what it means, for the errors that are a full disk or quota (exit 6).
DISK_FULL_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
#: Every errno that is a resource limit (exit 6): a full disk or quota, or out of file descriptors.
RESOURCE_ERRNOS = frozenset({*DISK_FULL_ERRNOS, errno.EMFILE, errno.ENFILE})


def is_disk_full(exc: BaseException) -> bool:
    """``exc`` is an OSError telling of a full disk or quota (ENOSPC, EDQUOT)."""
    return isinstance(exc, OSError) and not isinstance(exc, CastoreError) and exc.errno in DISK_FULL_ERRNOS


def is_resource_errno(code: int | None) -> bool:
    """An OSError errno the CLI reports with exit 6 (``RESOURCE_ERRNOS``)."""
    return code in RESOURCE_ERRNOS


def raise_if_full(exc: BaseException, where: str) -> None:
    """Raise ResourceLimit (exit 6) naming ``where`` when ``exc`` is a full disk or quota.

    The one mapping of a full disk to exit 6: every verb and the store call it
    (the errno set is ``DISK_FULL_ERRNOS``).
    """
    if is_disk_full(exc):
        assert isinstance(exc, OSError)
        raise ResourceLimit(f"{where}: {DISK_FULL_ERRNOS.get(exc.errno or 0, 'disk full')}") from exc


def warn_mounts_kept(paths: list[str]) -> None:
    """One warning line per mount point a removal left in place (it never crosses filesystems)."""
    import sys

    for p in paths:
        print(
            f"continuity: warning: {p}: another filesystem is mounted there; left in place, not removed",
            file=sys.stderr,
        )


__all__ = [
    "Aborted",
    "BadPassphrase",
    "BadSignature",
    "BlobNotFound",
    "Busy",
    "CastoreError",
    "CorruptManifest",
    "DISK_FULL_ERRNOS",
    "Differences",
    "IntegrityError",
    "InvalidManifest",
    "KeyError_",
    "MountUnavailable",
    "NotFound",
    "PolicyRefused",
    "RESOURCE_ERRNOS",
    "RemoteError",
    "ResourceLimit",
    "SourceChanged",
    "StoreUnusable",
    "TarCorrupt",
    "TarUnsafe",
    "TreeChanged",
    "UnsafeInput",
    "is_disk_full",
    "is_resource_errno",
    "raise_if_full",
    "warn_mounts_kept",
]
