"""Protobuf wire bytes of the commonest resource written by hand: a regular file with one ASCII
path, no chunks, holes, xattrs or alternate data streams (most of any tree). Building a ``pb.Resource``
and serializing it costs ~15 us per entry, a third of ``build``'s time in its own process on 100,000
small files; these bytes are the same (``tests/unit/test_wire.py`` checks them against the protobuf
library), so ``codec.dumps`` uses them and the generic path for everything else.

Deterministic serialization writes fields by number and leaves out proto3 defaults (0, "", false):
path (1), uid (2), gid (3), mode (6), size (7), digest (8), mtime_ns (15), has_mtime (16).
"""

from __future__ import annotations

from castore.manifest import gomode as gm
from castore.manifest.model import RegularFile

_ONE = [bytes([i]) for i in range(128)]
_MASK64 = (1 << 64) - 1


def varint(n: int) -> bytes:
    """Base-128 varint of ``n`` (an int64 below zero as its two's complement, as protobuf does)."""
    if 0 <= n < 128:
        return _ONE[n]
    n &= _MASK64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varint(data: bytes, i: int, end: int | None = None) -> tuple[int, int]:
    """The varint at ``data[i]`` and the offset after it; ValueError when it runs to ``end`` (default:
    the end of ``data``) or past 64 bits."""
    end = len(data) if end is None else end
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise ValueError(f"bad varint at byte {i}")
        b = data[i]
        value |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return value, i
        shift += 7


_MODE: dict[int, bytes] = {}  # permission bits -> the mode field (tag and varint), filled as seen


def _mode_field(perm: int) -> bytes:
    go = gm.perm_to_go(perm)
    field = b"\x30" + varint(go) if go else b""
    _MODE[perm] = field
    return field


def plain_file(r: RegularFile) -> bytes | None:
    """``r``'s message bytes (unframed) when it is a plain file with an ASCII path; else None."""
    if len(r.paths) != 1 or r.chunks or r.holes or r.xattrs or r.ads:
        return None
    return plain_fields(r.paths[0], r.perm, r.uid, r.gid, r.size, r.digest, r.mtime_ns)


def plain_fields(path: str, perm: int, uid: int, gid: int, size: int, digest: str, mtime: int | None) -> bytes | None:
    """The message bytes of a regular file with one path and no chunks, holes, xattrs or streams;
    None when the path or digest is not ASCII (the protobuf library handles escapes)."""
    if not path.isascii() or not digest.isascii() or not 0 <= perm < 0o10000:
        return None
    p = path.encode()
    d = digest.encode()
    out = (
        b"\x0a"
        + varint(len(p))
        + p
        + (b"\x10" + varint(uid) if uid else b"")
        + (b"\x18" + varint(gid) if gid else b"")
        + (_MODE.get(perm) or _mode_field(perm))
        + (b"\x38" + varint(size) if size else b"")
        + b"\x42"
        + varint(len(d))
        + d
    )
    if mtime is None:
        return out
    return out + (b"\x78" + varint(mtime) + b"\x80\x01\x01" if mtime else b"\x80\x01\x01")


def framed(message: bytes) -> bytes:
    """``message`` as one entry of a Manifest: field 1 (tag 0x0a), its length, its bytes."""
    return b"\x0a" + varint(len(message)) + message
