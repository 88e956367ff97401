"""Digests in OCI form (``sha256:<64 hex>``): parsing, checking, hashing."""

from __future__ import annotations

import hashlib
import os
import re

from castore.errors import UnsafeInput

ALGORITHM = "sha256"
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
EMPTY_DIGEST = "sha256:" + hashlib.sha256(b"").hexdigest()


def is_digest(text: str) -> bool:
    """True when ``text`` is a canonical ``sha256:<64 lowercase hex>`` digest."""
    return DIGEST_RE.fullmatch(text) is not None


def check_digest(text: str) -> str:
    """Return ``text`` if it is a canonical digest, else raise UnsafeInput."""
    if not is_digest(text):
        raise UnsafeInput(f"invalid digest {text[:80]!r}")
    return text


def hash_bytes(data: bytes) -> str:
    """The digest of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hash_fd(fd: int, chunk: int = 4 << 20, *, expect: int | None = None) -> tuple[str, int]:
    """(digest, size) of everything readable from ``fd``, from offset 0 (pread: the offset is untouched).

    ``expect``: the size the caller expects. A file that small is read with one
    pread of expect+1 bytes (a short read proves the end), not two preads that
    each allocate a 4 MiB buffer.
    """
    if expect is not None and expect < chunk:
        b = os.pread(fd, expect + 1, 0)
        if len(b) <= expect:
            return "sha256:" + hashlib.sha256(b).hexdigest(), len(b)
        h = hashlib.sha256(b)
        pos = len(b)
    else:
        h = hashlib.sha256()
        pos = 0
    while True:
        b = os.pread(fd, chunk, pos)
        if not b:
            break
        h.update(b)
        pos += len(b)
    return "sha256:" + h.hexdigest(), pos


def hex_of(digest: str) -> str:
    """The hex part of a digest."""
    return digest.partition(":")[2]
