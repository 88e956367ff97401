"""Byte-level tar crafting for hostile and unusual streams (no tarfile: it refuses to write lies)."""

from __future__ import annotations

from castore.tar.format import BLOCK, build_header, padding, pax_record


def member(
    name: bytes,
    data: bytes = b"",
    *,
    typ: bytes = b"0",
    mode: int = 0o644,
    size: int | None = None,
    linkname: bytes = b"",
    uid: int = 0,
    gid: int = 0,
    mtime: int = 1_600_000_000,
    pax: list[tuple[bytes, bytes]] | None = None,
    pad: bool = True,
) -> bytes:
    out = b""
    if pax:
        body = b"".join(pax_record(k, v) for k, v in pax)
        out += build_header(name=b"././@PaxHeader", mode=0o644, uid=0, gid=0, size=len(body), mtime=0, typ=b"x")
        out += body + bytes(padding(len(body)))
    out += build_header(
        name=name,
        mode=mode,
        uid=uid,
        gid=gid,
        size=len(data) if size is None else size,
        mtime=mtime,
        typ=typ,
        linkname=linkname,
    )
    out += data
    if pad:
        out += bytes(padding(len(data)))
    return out


def raw_header(name: bytes, typ: bytes, size_field: bytes, extra: dict[int, bytes] | None = None) -> bytes:
    """A header whose size field is given verbatim (e.g. base-256), checksum fixed up."""
    b = bytearray(build_header(name=name, mode=0o644, uid=0, gid=0, size=0, mtime=0, typ=typ))
    b[124:136] = size_field
    for off, val in (extra or {}).items():
        b[off : off + len(val)] = val
    b[148:156] = b" " * 8
    b[148:156] = b"%06o\0 " % sum(b)
    return bytes(b)


END = bytes(2 * BLOCK)


def tar(*members: bytes, end: bool = True) -> bytes:
    return b"".join(members) + (END if end else b"")
