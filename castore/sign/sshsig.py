"""OpenSSH's SSHSIG signature format (PROTOCOL.sshsig), what ``ssh-keygen -Y sign`` writes.

Binary form::

    "SSHSIG" uint32(1) string(publickey) string(namespace) string(reserved)
    string(hash_algorithm) string(signature)

The key signs ``"SSHSIG" string(namespace) string(reserved) string(hash_algorithm)
string(H(message))``. Armored: base64 wrapped at 70 columns between
``-----BEGIN SSH SIGNATURE-----`` and ``-----END SSH SIGNATURE-----``.
Ed25519 and ECDSA P-256 keys; sha256 (written: the manifest digest is H(message)) or sha512
(what ssh-keygen writes by default), both accepted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from castore.errors import BadSignature
from castore.sign.keys import PrivateKey, PublicKey, parse_public_blob

MAGIC = b"SSHSIG"
VERSION = 1
NAMESPACE = "continuity"
BEGIN = "-----BEGIN SSH SIGNATURE-----"
END = "-----END SSH SIGNATURE-----"
HASHES = {"sha512": hashlib.sha512, "sha256": hashlib.sha256}
MAX_SIGNATURE = 16 << 10  # an Ed25519 SSHSIG is ~300 bytes; anything this large is not one


@dataclass(frozen=True, slots=True)
class Signature:
    """A parsed SSHSIG: who (the public key) signed what namespace, with which hash."""

    key: PublicKey
    namespace: str
    hash_algorithm: str
    signature: bytes  # the inner SSH signature blob: string(sig type) string(sig bytes)
    raw: bytes  # the whole binary SSHSIG

    @property
    def fingerprint(self) -> str:
        return self.key.fingerprint


def ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class Reader:
    """Reads SSH wire-format fields, refusing anything truncated."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise BadSignature(f"{self.what} is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def string(self) -> bytes:
        return self.take(self.u32())

    def text(self) -> str:
        try:
            return self.string().decode("ascii")
        except UnicodeDecodeError:
            raise BadSignature(f"{self.what} has a field that is not ASCII") from None

    def end(self) -> None:
        if self.pos != len(self.data):
            raise BadSignature(f"{self.what} has {len(self.data) - self.pos} trailing bytes")


def signed_data(namespace: str, hash_algorithm: str, message: bytes, *, sha256: bytes | None = None) -> bytes:
    """What the key signs for ``message``; ``sha256``: its sha256, when already known (a store digest)."""
    h = sha256 if sha256 is not None and hash_algorithm == "sha256" else HASHES[hash_algorithm](message).digest()
    return (
        MAGIC + ssh_string(namespace.encode()) + ssh_string(b"") + ssh_string(hash_algorithm.encode()) + ssh_string(h)
    )


def armor(raw: bytes) -> str:
    b64 = base64.b64encode(raw).decode()
    lines = [b64[i : i + 70] for i in range(0, len(b64), 70)]
    return "\n".join([BEGIN, *lines, END]) + "\n"


def dearmor(text: bytes | str, *, what: str = "signature") -> bytes:
    """The binary SSHSIG inside an armored signature (or raw binary SSHSIG as is)."""
    if isinstance(text, str):
        text = text.encode("utf-8", "replace")
    if len(text) > 4 * MAX_SIGNATURE:
        raise BadSignature(f"{what} is too large ({len(text)} bytes) to be an SSH signature")
    if text.startswith(MAGIC):
        return text
    body = text.strip()
    if not body.startswith(BEGIN.encode()):
        raise BadSignature(f"{what} is not an SSH signature (no {BEGIN} line)")
    if not body.endswith(END.encode()):
        raise BadSignature(f"{what} is truncated (no {END} line)")
    inner = body[len(BEGIN) : -len(END)]
    try:
        return base64.b64decode(b"".join(inner.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadSignature(f"{what} is not valid base64 (truncated or damaged)") from None


def parse_signature(raw: bytes, *, what: str = "signature") -> Signature:
    """Parse a binary SSHSIG. Raises BadSignature for anything malformed or unsupported."""
    if len(raw) > MAX_SIGNATURE:
        raise BadSignature(f"{what} is too large ({len(raw)} bytes)")
    r = Reader(raw, what)
    if r.take(6) != MAGIC:
        raise BadSignature(f"{what} is not an SSHSIG (bad magic)")
    version = r.u32()
    if version != VERSION:
        raise BadSignature(f"{what} has SSHSIG version {version}, expected {VERSION}")
    key_blob = r.string()
    namespace = r.text()
    r.string()  # reserved
    hash_algorithm = r.text()
    sig = r.string()
    r.end()
    if hash_algorithm not in HASHES:
        raise BadSignature(f"{what} uses hash {hash_algorithm[:40]!r} (sha512 or sha256 expected)")
    try:
        key = parse_public_blob(key_blob)
    except ValueError as exc:
        raise BadSignature(f"{what}: {exc}") from None
    return Signature(key, namespace, hash_algorithm, sig, raw)


def sign_message(
    key: PrivateKey,
    message: bytes,
    namespace: str = NAMESPACE,
    *,
    hash_algorithm: str = "sha256",
    sha256: bytes | None = None,
) -> bytes:
    """A binary SSHSIG of ``message`` by ``key``.

    sha256 by default (PROTOCOL.sshsig allows sha256 and sha512; ``ssh-keygen
    -Y verify`` takes both): H(message) is then the manifest's own digest,
    which the store computes anyway when it reads the bytes, so signing and
    verifying a 11 MB manifest cost one hash each instead of two.
    """
    sig = key.sign(signed_data(namespace, hash_algorithm, message, sha256=sha256))
    return (
        MAGIC
        + struct.pack(">I", VERSION)
        + ssh_string(key.public.blob)
        + ssh_string(namespace.encode())
        + ssh_string(b"")
        + ssh_string(hash_algorithm.encode())
        + ssh_string(sig)
    )


def verify_message(
    sig: Signature, message: bytes, namespace: str = NAMESPACE, *, what: str = "signature", sha256: bytes | None = None
) -> None:
    """Check ``sig`` signs ``message`` in ``namespace``. Raises BadSignature.

    ``sha256``: the message's sha256 when the caller verified it already (a store blob read by digest).
    """
    if sig.namespace != namespace:
        raise BadSignature(f"{what} is for namespace {sig.namespace[:60]!r}, not {namespace!r}")
    if not sig.key.verify(sig.signature, signed_data(namespace, sig.hash_algorithm, message, sha256=sha256)):
        raise BadSignature(f"{what} by {sig.fingerprint} does not match the manifest (tampered, or another one)")


__all__ = [
    "BadSignature",
    "NAMESPACE",
    "Signature",
    "armor",
    "dearmor",
    "parse_signature",
    "sign_message",
    "signed_data",
    "verify_message",
]
