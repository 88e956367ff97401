"""Manifest <-> protobuf bytes (deterministic), and the prototext rendering.

The only module that imports the generated protobuf code. ``loads`` decodes
and checks the per-resource schema (types, modes, fields that belong to
another kind); ``castore.manifest.validate`` checks the tree as a whole.
Reading entries without decoding them: ``castore.manifest.entries``; the
JSON rendering: ``castore.manifest.render``.
"""

from __future__ import annotations

import os
from typing import Any

from google.protobuf.message import DecodeError

from castore._pb import manifest_pb2 as pb
from castore.errors import CorruptManifest, InvalidManifest
from castore.manifest import gomode as gm
from castore.manifest.model import (
    AdsEntry,
    Chunk,
    Device,
    Directory,
    Manifest,
    NamedPipe,
    RegularFile,
    Resource,
    Socket,
    Symlink,
    Whiteout,
)
from castore.manifest.wire import plain_file, varint


def escaped(path: str) -> tuple[str, bytes | None]:
    """The UTF-8 form of a path for field 1, and its raw bytes when not UTF-8."""
    raw = os.fsencode(path)
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace"), raw


def go_mode(r: Resource) -> int:
    """The Go FileMode of a resource."""
    mode = gm.perm_to_go(r.perm)
    if isinstance(r, Directory):
        mode |= gm.MODE_DIR
    elif isinstance(r, Symlink):
        mode |= gm.MODE_SYMLINK
    elif isinstance(r, Device):
        mode |= gm.MODE_DEVICE | (gm.MODE_CHAR_DEVICE if r.char else 0)
    elif isinstance(r, NamedPipe):
        mode |= gm.MODE_NAMED_PIPE
    elif isinstance(r, Socket):
        mode |= gm.MODE_SOCKET
    elif isinstance(r, Whiteout):
        # Upstream sees the overlayfs form (char device 0/0); the flag is authoritative.
        mode |= gm.MODE_DEVICE | gm.MODE_CHAR_DEVICE  # with its permission bits, kept through re-encoding
    return mode


def to_proto(r: Resource) -> pb.Resource:
    """One resource as its protobuf message."""
    if type(r) is RegularFile and len(r.paths) == 1 and not (r.chunks or r.holes or r.ads or r.xattrs):
        # The common case in one constructor call (about twice as fast as field by field).
        text, raw = escaped(r.paths[0])
        if raw is None:
            if r.mtime_ns is None:
                return pb.Resource(
                    path=(text,), uid=r.uid, gid=r.gid, mode=gm.perm_to_go(r.perm), size=r.size, digest=(r.digest,)
                )
            return pb.Resource(
                path=(text,),
                uid=r.uid,
                gid=r.gid,
                mode=gm.perm_to_go(r.perm),
                size=r.size,
                digest=(r.digest,),
                mtime_ns=r.mtime_ns,
                has_mtime=True,
            )
    out = pb.Resource()
    raws: list[bytes] = []
    any_raw = False
    for p in r.paths:
        text, raw = escaped(p)
        out.path.append(text)
        raws.append(raw if raw is not None else text.encode())
        any_raw |= raw is not None
    if any_raw:
        out.raw_path.extend(raws)
    out.uid = r.uid
    out.gid = r.gid
    out.mode = go_mode(r)
    for name, data in r.xattrs:
        text, raw = escaped(name)
        if raw is None:
            out.xattr.add(name=text, data=data)
        else:
            out.xattr.add(name=text, data=data, raw_name=raw)
    for a in r.ads:
        out.ads.add(name=a.name, data=a.data, digest=a.digest)
    if r.mtime_ns is not None:
        out.mtime_ns = r.mtime_ns
        out.has_mtime = True
    if isinstance(r, RegularFile):
        out.size = r.size
        out.digest.append(r.digest)
        for c in r.chunks:
            out.chunk.add(digest=c.digest, begin=c.begin, end=c.end)
        for b, e in r.holes:
            out.hole.add(begin=b, end=e)
    elif isinstance(r, Symlink):
        out.target, raw = escaped(r.target)
        if raw is not None:
            out.raw_target = raw
    elif isinstance(r, Device):
        out.major = r.major
        out.minor = r.minor
    elif isinstance(r, Directory):
        out.opaque = r.opaque
    elif isinstance(r, Whiteout):
        out.whiteout = True
    return out


def dumps(m: Manifest) -> bytes:
    """Deterministic protobuf bytes of a manifest: same manifest, same bytes.

    Each resource is serialized alone and framed as field 1 of ``Manifest``
    (tag 0x0a, length): the bytes of serializing the whole message, without
    holding every message at once (100k entries: 70 MB less, and faster).
    """
    parts = []
    for r in m.resources:
        data = plain_file(r) if type(r) is RegularFile else None  # most entries: bytes written by hand
        if data is None:
            data = to_proto(r).SerializeToString(deterministic=True)
        parts.append(b"\x0a" + varint(len(data)) + data)
    return b"".join(parts)


def _bad(paths: Any, why: str) -> InvalidManifest:
    name = paths[0] if paths else "<no path>"
    return InvalidManifest(f"invalid manifest entry {name!r}: {why}")


def from_proto(msg: pb.Resource) -> Resource:
    """One protobuf resource as a value, refusing impossible combinations."""
    if msg.raw_path:
        # One path source: raw_path is what is used, so path must be its escaped text form
        # exactly (as ``to_proto`` writes it); a reader of either field then sees the same paths.
        if len(msg.raw_path) != len(msg.path):
            raise _bad(list(msg.path), "raw_path does not match path")
        paths = tuple(os.fsdecode(bytes(b)) for b in msg.raw_path)
        for text, p in zip(msg.path, paths, strict=True):
            if escaped(p)[0] != text:
                raise _bad(paths, f"path {text[:200]!r} and its raw_path disagree")
    else:
        paths = tuple(msg.path)
    if not paths:
        raise _bad(paths, "resource without a path")
    mode = msg.mode
    if mode & ~gm.KNOWN_BITS:
        raise _bad(paths, f"unknown mode bits {mode & ~gm.KNOWN_BITS:#o}")
    typ = mode & gm.TYPE_BITS
    perm = mode & 0o777
    if mode & _SPECIAL_BITS:
        perm = gm.go_to_perm(mode)
    xattrs = (
        tuple((os.fsdecode(x.raw_name) if x.raw_name else x.name, bytes(x.data)) for x in msg.xattr)
        if msg.xattr
        else ()
    )
    mtime_ns = msg.mtime_ns if msg.has_mtime else None
    ads = tuple(AdsEntry(a.name, bytes(a.data), a.digest) for a in msg.ads) if msg.ads else ()
    whiteout = msg.whiteout
    if typ == 0 and not whiteout:  # the common case first: a regular file
        if msg.target or msg.raw_target or msg.major or msg.minor or msg.opaque:
            raise _bad(paths, "link target, device numbers or opaque flag on a regular file")
        digests = msg.digest
        if len(digests) == 1 and digests[0].startswith("sha256:"):
            digest = digests[0]
        else:
            sha = [d for d in digests if d.startswith("sha256:")]
            if len(sha) != 1:
                raise _bad(paths, "a regular file needs exactly one sha256 digest")
            digest = sha[0]
        chunks = tuple(Chunk(c.digest, c.begin, c.end) for c in msg.chunk) if msg.chunk else ()
        holes = tuple((h.begin, h.end) for h in msg.hole) if msg.hole else ()
        return RegularFile(
            paths=paths,
            perm=perm,
            uid=msg.uid,
            gid=msg.gid,
            xattrs=xattrs,
            mtime_ns=mtime_ns,
            ads=ads,
            size=msg.size,
            digest=digest,
            chunks=chunks,
            holes=holes,
        )
    common: dict[str, Any] = {
        "paths": paths,
        "perm": perm,
        "uid": msg.uid,
        "gid": msg.gid,
        "xattrs": xattrs,
        "mtime_ns": mtime_ns,
        "ads": ads,
    }
    if typ != 0 and (msg.size or msg.digest or msg.chunk or msg.hole):
        raise _bad(paths, "size or digest on a resource that is not a regular file")
    if typ != gm.MODE_SYMLINK and (msg.target or msg.raw_target):
        raise _bad(paths, "link target on a resource that is not a symlink")
    if not typ & gm.MODE_DEVICE and (msg.major or msg.minor):
        raise _bad(paths, "device numbers on a resource that is not a device")
    if msg.opaque and typ != gm.MODE_DIR:
        raise _bad(paths, "opaque flag on a resource that is not a directory")
    if whiteout:
        if typ not in (0, gm.MODE_DEVICE | gm.MODE_CHAR_DEVICE) or msg.major or msg.minor:
            raise _bad(paths, "whiteout with a type")
        if msg.size or msg.digest or msg.chunk or msg.hole:
            raise _bad(paths, "whiteout with content")
        return Whiteout(**common)
    if len(paths) > 1 and typ == gm.MODE_DIR:
        raise _bad(paths, "a directory cannot have several paths")
    if typ == gm.MODE_DIR:
        return Directory(opaque=msg.opaque, **common)
    if typ == gm.MODE_SYMLINK:
        return Symlink(target=os.fsdecode(msg.raw_target) if msg.raw_target else msg.target, **common)
    if typ in (gm.MODE_DEVICE, gm.MODE_DEVICE | gm.MODE_CHAR_DEVICE):
        return Device(char=bool(typ & gm.MODE_CHAR_DEVICE), major=msg.major, minor=msg.minor, **common)
    if typ == gm.MODE_NAMED_PIPE:
        return NamedPipe(**common)
    if typ == gm.MODE_SOCKET:
        return Socket(**common)
    raise _bad(paths, f"impossible type bits {typ:#o}")


_SPECIAL_BITS = gm.MODE_SETUID | gm.MODE_SETGID | gm.MODE_STICKY


def loads(data: bytes, *, source: str = "manifest") -> Manifest:
    """Decode manifest bytes. Raises CorruptManifest or InvalidManifest."""
    if not data:
        return Manifest.of([])  # an empty tree: upstream serializes it as zero bytes
    msg = pb.Manifest()
    try:
        msg.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise CorruptManifest(f"{source}: not a manifest ({exc})") from exc
    resources = [from_proto(r) for r in msg.resource]
    if not resources:  # the empty manifest is zero bytes; anything else without entries is not one
        raise CorruptManifest(f"{source}: not a manifest ({len(data)} bytes without entries)")
    return Manifest.of(resources)


def decode_entry(entry: bytes, *, source: str = "") -> Resource:
    """One resource from its encoded bytes (an element of ``castore.manifest.entries.split_entries``);
    ``source``: the manifest it is from, named in the error."""
    try:
        return from_proto(pb.Resource.FromString(entry))
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise CorruptManifest(
            f"{source}: not a manifest ({exc})" if source else f"not a manifest entry ({exc})"
        ) from exc


def dumps_text(m: Manifest) -> str:
    """The prototext rendering (upstream's ``dump``)."""
    msg = pb.Manifest()
    msg.resource.extend(to_proto(r) for r in m.resources)
    from google.protobuf import text_format  # only here: 8 ms of every CLI start otherwise

    # as_utf8 leaves DEL, C1 controls and line separators raw: octal escapes of their UTF-8 bytes, as the
    # format's own escapes for C0 (the text parses back to the same strings).
    return text_format.MessageToString(msg, as_utf8=True).translate(_TEXT_ESCAPES)


_TEXT_ESCAPES = {c: "".join(f"\\{b:03o}" for b in chr(c).encode()) for c in (0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)}
