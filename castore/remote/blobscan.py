"""The blobs a push sends, read from the manifest's bytes without decoding every entry.

``push`` needs, of a stored manifest, only its blob digests in manifest order
and their sizes. Decoding a whole manifest into resources (``codec.loads``)
costs ~35 µs per entry, 0.9 s of a 25,000-file push on this machine; most
entries of a real tree are plain regular files (one path, no chunks, streams,
xattrs or holes) whose encoding ``castore.manifest.wire.plain_fields`` writes
field by field, so their digest and size are read here straight from those
fields. Any other entry (a directory, a symlink, a file with chunks or
streams, an encoding this reader does not expect) is decoded by the codec, as
before. The manifest comes from the store by digest (verified; validated when
it was committed); a malformed entry is a CorruptManifest/InvalidManifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from castore.errors import CorruptManifest, IntegrityError
from castore.manifest import Manifest
from castore.manifest import gomode as gm
from castore.manifest.codec import decode_entry
from castore.manifest.entries import entry_spans
from castore.manifest.model import RegularFile, Resource
from castore.manifest.wire import read_varint

_VARINT_TAGS = frozenset((0x10, 0x18, 0x30, 0x38, 0x78))  # uid, gid, mode, size, mtime_ns
_SKIPPED_STRINGS = frozenset((0x22, 0x2A))  # user, group names
_SHA = b"sha256:"


@dataclass(slots=True)
class TreeBlobs:
    """A manifest's blobs: ``order`` (each once, in manifest order, ADS blobs after their file, as
    ``castore.remote.packer.blob_order``), ``sizes`` (file and chunk blobs, as ``oci.blob_sizes``),
    ``whole`` (whole-file digests of files without chunks, with their size: the store may hold them
    as chunks only) and ``refs`` (every digest, as ``castore.store.manifest_refs``)."""

    order: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    whole: dict[str, int] = field(default_factory=dict)
    refs: set[str] = field(default_factory=set)

    def _sized(self, d: str, n: int) -> None:
        if self.sizes.setdefault(d, n) != n:
            raise IntegrityError(f"manifest gives blob {d} two sizes ({self.sizes[d]} and {n})")

    def _ref(self, d: str) -> None:
        if d not in self.refs:
            self.refs.add(d)
            self.order.append(d)

    def plain(self, d: str, n: int) -> None:
        self._sized(d, n)
        self.whole.setdefault(d, n)
        self._ref(d)

    def resource(self, r: Resource) -> None:
        if isinstance(r, RegularFile) and r.digest:
            if r.chunks:
                for c in r.chunks:
                    self._sized(c.digest, c.end - c.begin)
                    self._ref(c.digest)
            else:
                self.plain(r.digest, r.size)
        for a in r.ads:
            if a.digest:
                self._ref(a.digest)


def of_manifest(m: Manifest) -> TreeBlobs:
    """The blobs of a decoded manifest."""
    out = TreeBlobs()
    for r in m.resources:
        out.resource(r)
    return out


def scan(data: bytes, *, source: str = "manifest") -> TreeBlobs:
    """The blobs of the encoded manifest ``data`` (plain files read from their fields, the rest decoded)."""
    out = TreeBlobs()
    try:
        for i, end in entry_spans(data, source=source):
            got = _plain(data, i, end)
            if got is None:
                out.resource(decode_entry(data[i:end], source=source))
            else:
                out.plain(*got)
    except (IndexError, ValueError, UnicodeDecodeError) as exc:
        raise CorruptManifest(f"{source}: not a manifest ({exc})") from exc
    return out


def _plain(data: bytes, i: int, end: int) -> tuple[str, int] | None:
    """(digest, size) of the entry data[i:end] when it is a plain regular file in the fields
    ``plain_fields`` writes (one path first; uid, gid, user, group, mode without type bits, size, one
    sha256 digest, mtime); None for anything else (the caller decodes it). Varints of one byte are
    read inline (a call per field would be most of the cost)."""
    if data[i] != 0x0A:
        return None
    plen = data[i + 1]
    i = i + 2 + plen if plen < 0x80 else sum(read_varint(data, i + 1, end))
    size = 0
    digest: str | None = None
    while i < end:
        tag = data[i]
        if tag in _VARINT_TAGS:
            value = data[i + 1]
            if value < 0x80:
                i += 2
            elif data[i + 2] < 0x80:  # two bytes (a mode, most sizes)
                value = (value & 0x7F) | data[i + 2] << 7
                i += 3
            elif tag == 0x78:  # mtime_ns: its value is not needed, only its end
                i += 2
                while data[i] >= 0x80:
                    i += 1
                i += 1
                continue
            else:
                value, i = read_varint(data, i + 1, end)
            if tag == 0x38:
                size = value
            elif tag == 0x30 and (value & gm.TYPE_BITS or value & ~gm.KNOWN_BITS):
                return None
        elif tag == 0x42 and digest is None:
            j = i + 2
            i = j + data[i + 1]
            if data[i - 71 : i - 64] != _SHA or i - j != 71:
                return None
            digest = data[j:i].decode("ascii")
        elif tag == 0x80 and data[i + 1] == 0x01 and data[i + 2] < 0x80:  # has_mtime (field 16)
            i += 3
        elif tag in _SKIPPED_STRINGS:
            slen, j = read_varint(data, i + 1, end)
            i = j + slen
        else:
            return None
    if i != end or digest is None:
        return None
    return digest, size
