"""Digests in OCI form (``sha256:<64 hex>``): parsing, checking, hashing."""

from __future__ import annotations

import re

from castore.errors import UnsafeInput

ALGORITHM = "sha256"
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
EMPTY_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # of b"" (tests check)


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
    import hashlib  # noqa: PLC0415 - not at import: OpenSSL's load is 2 ms of every start

    return "sha256:" + hashlib.sha256(data).hexdigest()


def hex_of(digest: str) -> str:
    """The hex part of a digest."""
    return digest.partition(":")[2]
