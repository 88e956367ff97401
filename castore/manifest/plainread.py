"""The commonest entry read straight from its wire bytes: a regular file with one path, a sha256
digest and nothing else (no chunks, holes, xattrs, alternate data streams, raw path, user or group
names), as ``castore.manifest.wire.plain_fields`` writes it. The codec (``FromString`` and
``from_proto``) costs ~9 us an entry, a third of what the rest of writing a small file costs in
Python (a first hardlink checkout, a copy checkout); this reads one in ~2 us.

Whatever it accepts decodes to exactly what ``codec.decode_entry`` gives (the same field values,
a later scalar field replacing an earlier one as protobuf does); anything else, including
anything the codec would refuse, answers None and the caller decodes with the codec, which
then says what is wrong (``tests/unit/test_plainread.py`` compares the two on the test corpora
and on generated and mutated entries).
"""

from __future__ import annotations

from castore.manifest import gomode as gm
from castore.manifest.model import RegularFile
from castore.manifest.wire import read_varint

#: (path, perm, uid, gid, size, digest, mtime_ns or None)
PlainFields = tuple[str, int, int, int, int, str, int | None]

_U64 = 1 << 64
_I64 = 1 << 63
_SPECIAL = gm.MODE_SETUID | gm.MODE_SETGID | gm.MODE_STICKY
_NOT_PLAIN = ~gm.KNOWN_BITS | gm.TYPE_BITS  # unknown bits (the codec refuses them) or a type
# The varint fields taken: uid (2), gid (3), mode (6), size (7), mtime_ns (15).
_VARINT_TAGS = frozenset((0x10, 0x18, 0x30, 0x38, 0x78))


def plain_fields(e: bytes) -> PlainFields | None:
    """The fields of the plain regular file encoded as ``e`` (one entry, unframed), or None when
    ``e`` is anything else or anything unusual (the codec then decodes it)."""
    try:
        if e[0] != 0x0A:
            return None
        n = e[1]
        if n < 0x80:
            i = 2 + n
            path = e[2:i].decode()
        else:
            n, j = read_varint(e, 1)
            i = j + n
            path = e[j:i].decode()
        end = len(e)
        if i > end:
            return None
        uid = gid = mode = size = mtime = has_mtime = 0
        digest = None
        while i < end:
            tag = e[i]
            if tag in _VARINT_TAGS:
                v = e[i + 1]
                if v < 0x80:
                    i += 2
                elif e[i + 2] < 0x80:  # two bytes: most modes and small sizes
                    v = (v & 0x7F) | e[i + 2] << 7
                    i += 3
                else:  # (inline: an mtime takes 9 bytes, and a call costs more than this loop)
                    i += 1
                    v = shift = 0
                    while True:
                        b = e[i]
                        v |= (b & 0x7F) << shift
                        i += 1
                        if b < 0x80:
                            break
                        shift += 7
                        if shift > 63:
                            return None
                    if v >= _U64:
                        return None
                if tag == 0x38:
                    size = v
                elif tag == 0x30:
                    if v >> 32:
                        return None  # (uint32: a wider value is the codec's to judge)
                    mode = v
                elif tag == 0x78:
                    mtime = v - _U64 if v >= _I64 else v
                elif tag == 0x10:
                    uid = v - _U64 if v >= _I64 else v
                else:
                    gid = v - _U64 if v >= _I64 else v
            elif tag == 0x42:  # digest (repeated: a second one is the codec's to judge)
                n = e[i + 1]
                if digest is not None or n >= 0x80 or i + 2 + n > end:
                    return None
                digest = e[i + 2 : i + 2 + n].decode()
                i += 2 + n
            elif tag == 0x80 and e[i + 1] == 0x01:  # has_mtime (16)
                v = e[i + 2]
                if v < 0x80:
                    i += 3
                else:
                    v, i = read_varint(e, i + 2)
                    if v >= _U64:
                        return None
                has_mtime = v
            else:
                return None
        if digest is None or not digest.startswith("sha256:") or mode & _NOT_PLAIN:
            return None
        perm = gm.go_to_perm(mode) if mode & _SPECIAL else mode & 0o777
        return path, perm, uid, gid, size, digest, mtime if has_mtime else None
    except (IndexError, ValueError):  # (UnicodeDecodeError is a ValueError)
        return None


def plain_file(e: bytes) -> RegularFile | None:
    """``plain_fields`` as the RegularFile ``codec.decode_entry`` would give, or None."""
    f = plain_fields(e)
    if f is None:
        return None
    return RegularFile(paths=(f[0],), perm=f[1], uid=f[2], gid=f[3], size=f[4], digest=f[5], mtime_ns=f[6])
