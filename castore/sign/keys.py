"""SSH keys for signing: OpenSSH private keys (encrypted or not), public key blobs and lines.

Ed25519 and ECDSA P-256, via ``cryptography``; bcrypt-encrypted OpenSSH keys
need the ``bcrypt`` package. Fingerprints are OpenSSH's ``SHA256:<base64>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from castore.errors import BadPassphrase, KeyError_
from castore.fs.io import read_capped

ED25519 = "ssh-ed25519"
ECDSA_P256 = "ecdsa-sha2-nistp256"
KEY_TYPES = (ED25519, ECDSA_P256)
MAX_KEY_FILE = 64 << 10


def _s(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _fields(blob: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(blob):
        if pos + 4 > len(blob):
            raise ValueError("public key blob is truncated")
        (n,) = struct.unpack(">I", blob[pos : pos + 4])
        if pos + 4 + n > len(blob):
            raise ValueError("public key blob is truncated")
        out.append(blob[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def _mpint(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8, "big") if n else b""
    return _s(raw)


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A public key: its SSH wire blob and the ``cryptography`` object."""

    key_type: str
    blob: bytes
    obj: object = field(compare=False, repr=False)

    @property
    def fingerprint(self) -> str:
        return "SHA256:" + base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")

    def openssh(self) -> str:
        return f"{self.key_type} {base64.b64encode(self.blob).decode()}"

    def verify(self, sig_blob: bytes, data: bytes) -> bool:
        """True when ``sig_blob`` (string(type) string(sig)) signs ``data``."""
        try:
            parts = _fields(sig_blob)
        except ValueError:
            return False
        if len(parts) != 2 or parts[0].decode("ascii", "replace") != self.key_type:
            return False
        try:
            if self.key_type == ED25519:
                self.obj.verify(parts[1], data)  # type: ignore[attr-defined]
            else:
                rs = _fields(parts[1])
                if len(rs) != 2:
                    return False
                der = encode_dss_signature(int.from_bytes(rs[0], "big"), int.from_bytes(rs[1], "big"))
                self.obj.verify(der, data, ec.ECDSA(hashes.SHA256()))  # type: ignore[attr-defined]
        except (InvalidSignature, ValueError):
            return False
        return True


def parse_public_blob(blob: bytes) -> PublicKey:
    """A public key from its SSH wire blob. Raises ValueError for other or malformed keys."""
    parts = _fields(blob)
    kt = parts[0].decode("ascii", "replace") if parts else ""
    try:
        if kt == ED25519 and len(parts) == 2 and len(parts[1]) == 32:
            return PublicKey(kt, blob, ed25519.Ed25519PublicKey.from_public_bytes(parts[1]))
        if kt == ECDSA_P256 and len(parts) == 3 and parts[1] == b"nistp256":
            return PublicKey(kt, blob, ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), parts[2]))
    except ValueError:
        raise ValueError(f"malformed {kt} public key") from None
    if kt.startswith("ssh-ed25519") or kt.startswith("ecdsa-") or kt.startswith("ssh-rsa") or kt.startswith("sk-"):
        raise ValueError(f"unsupported key type {kt[:60]!r} (use {ED25519} or {ECDSA_P256})")
    raise ValueError("malformed public key")


def parse_public_text(key_type: str, b64: str) -> PublicKey:
    """A public key from the two words of an OpenSSH public key line. Raises ValueError."""
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("public key is not valid base64") from None
    key = parse_public_blob(blob)
    if key.key_type != key_type:
        raise ValueError(f"public key says {key_type[:60]!r} but holds a {key.key_type} key")
    return key


def _public_of(obj: object) -> PublicKey:
    if isinstance(obj, ed25519.Ed25519PublicKey):
        raw = obj.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return PublicKey(ED25519, _s(ED25519.encode()) + _s(raw), obj)
    if isinstance(obj, ec.EllipticCurvePublicKey) and isinstance(obj.curve, ec.SECP256R1):
        point = obj.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        return PublicKey(ECDSA_P256, _s(ECDSA_P256.encode()) + _s(b"nistp256") + _s(point), obj)
    raise KeyError_(f"unsupported key type {type(obj).__name__} (use {ED25519} or {ECDSA_P256})")


@dataclass(frozen=True, slots=True)
class PrivateKey:
    obj: object = field(repr=False)
    public: PublicKey

    def sign(self, data: bytes) -> bytes:
        """The SSH signature blob (string(type) string(sig)) of ``data``."""
        if self.public.key_type == ED25519:
            return _s(ED25519.encode()) + _s(self.obj.sign(data))  # type: ignore[attr-defined]
        der = self.obj.sign(data, ec.ECDSA(hashes.SHA256()))  # type: ignore[attr-defined]
        r, s = decode_dss_signature(der)
        return _s(ECDSA_P256.encode()) + _s(_mpint(r) + _mpint(s))


def _is_encrypted(data: bytes) -> bool:
    """An OpenSSH private key whose cipher is not "none"."""
    try:
        body = b"".join(data.strip().splitlines()[1:-1])
        raw = base64.b64decode(body)
    except (binascii.Error, ValueError):
        return False
    magic = b"openssh-key-v1\0"
    if not raw.startswith(magic):
        return False
    try:
        cipher = _fields_prefix(raw[len(magic) :], 1)[0]
    except ValueError:
        return False
    return cipher != b"none"


def _fields_prefix(blob: bytes, n: int) -> list[bytes]:
    out, pos = [], 0
    for _ in range(n):
        if pos + 4 > len(blob):
            raise ValueError("truncated")
        (size,) = struct.unpack(">I", blob[pos : pos + 4])
        out.append(blob[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return out


def load_private_key(path: str, passphrase: Callable[[], bytes]) -> PrivateKey:
    """Load an OpenSSH (or PEM/PKCS#8) private key; ``passphrase()`` is asked only for an encrypted one.

    Raises KeyError_ (exit 3) for a file that is not a usable key, BadPassphrase for a wrong passphrase.
    """
    data = read_capped(path, MAX_KEY_FILE, "a private key", KeyError_)
    if data.lstrip().startswith((b"ssh-", b"ecdsa-")):
        raise KeyError_(f"{path}: is a public key; give the private key (without .pub)")
    password = passphrase() if _is_encrypted(data) or b"ENCRYPTED" in data[:200] else None
    obj: object
    try:
        if b"OPENSSH PRIVATE KEY" in data[:100]:
            obj = serialization.load_ssh_private_key(data, password)
        else:
            obj = serialization.load_pem_private_key(data, password)
    except TypeError as exc:
        if "password" in str(exc).lower():
            raise BadPassphrase(f"{path}: the key is encrypted; a passphrase is needed") from None
        raise KeyError_(f"{path}: not a usable private key ({exc})") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        text = str(exc)
        if password is not None and ("checksum" in text or "password" in text.lower() or "decrypt" in text.lower()):
            raise BadPassphrase(f"{path}: wrong passphrase") from None
        raise KeyError_(
            f"{path}: not a usable private key ({text.splitlines()[0][:120] if text else 'unreadable'})"
        ) from None
    pub = _public_of(obj.public_key())
    return PrivateKey(obj, pub)


def generate(path: str, comment: str = "", passphrase: bytes | None = None) -> PublicKey:
    """Write a new Ed25519 key pair: ``path`` (OpenSSH private key, mode 0600) and ``path.pub``.

    Refuses (KeyError_) to overwrite either file.
    """
    for p in (path, path + ".pub"):
        if os.path.lexists(p):
            raise KeyError_(f"{p}: exists; not overwriting a key")
    key = ed25519.Ed25519PrivateKey.generate()
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, enc)
    pub = _public_of(key.public_key())
    _write_new(path, priv, 0o600)
    _write_new(path + ".pub", (pub.openssh() + (f" {comment}" if comment else "") + "\n").encode(), 0o644)
    return pub


def _write_new(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def public_comment(private_path: str) -> str | None:
    """The comment of ``PATH.pub`` next to a private key (often user@host or an email), if any."""
    try:
        with open(private_path + ".pub", "rb") as f:
            words = f.read(MAX_KEY_FILE).decode("utf-8", "replace").split(None, 2)
    except OSError:
        return None
    return words[2].strip() if len(words) == 3 and words[2].strip() else None


__all__ = [
    "BadPassphrase",
    "ECDSA_P256",
    "ED25519",
    "KeyError_",
    "PrivateKey",
    "PublicKey",
    "generate",
    "load_private_key",
    "parse_public_blob",
    "parse_public_text",
    "public_comment",
]
