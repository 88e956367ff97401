"""Pack blobs and their index layers (pure: no IO). Layout and limits: docs/remote.md "Packs".

A *pack* is the concatenation of entries, one per store blob, each either the
blob's raw bytes or one zstd frame of them (per-entry compression, so that a
range request fetches one entry). Each pack travels with an *index* layer::

    zstd( MAGIC | pack sha256 (32 bytes) | pack size (u64) | entry count (u32) |
          entries sorted by offset: blob sha256 (32) | offset (u64) | stored length (u32) |
                                    size (u64) | compression (u8: 0 raw, 1 zstd) )

Everything a registry sends is checked before use: the index is decompressed
with a byte budget, must name its pack, and every entry must lie inside the
pack, in order, without overlap, with a length that matches its compression.
An entry's bytes are decompressed with a budget of its size and hashed before
they go anywhere.
"""

from __future__ import annotations

import hashlib
import io
import struct
from dataclasses import dataclass

import zstandard

from castore.errors import IntegrityError

MAGIC = b"CTPKIDX1"
HEADER = struct.Struct("<8s32sQI")
ENTRY = struct.Struct("<32sQIQB")
RAW, ZSTD = 0, 1
MAX_ENTRIES = 1 << 16  # per pack: push starts a new pack after this many; pull refuses more
MAX_ENTRY = 64 << 20  # larger blobs travel alone (push uses SOLO_MIN, well below)
MAX_INDEX = HEADER.size + MAX_ENTRIES * ENTRY.size  # decompressed bytes of one index
LEVEL = 3
SAMPLE = 64 << 10  # a larger blob is compressed only when its first SAMPLE bytes shrink
PAYS = 0.9  # compressed / raw below which compression is kept
SKIP_AFTER, SKIP_EVERY = 8, 8  # BatchEncoder: blobs that did not compress in a row, then one tried in so many


@dataclass(frozen=True, slots=True)
class Entry:
    """Where one blob lies in its pack."""

    digest: str
    offset: int
    stored: int
    size: int
    comp: int

    @property
    def end(self) -> int:
        return self.offset + self.stored


@dataclass(frozen=True, slots=True)
class PackIndex:
    pack: str  # the pack's digest
    pack_size: int
    entries: tuple[Entry, ...]


def encode_entry(data: bytes, cctx: zstandard.ZstdCompressor) -> tuple[bytes, int]:
    """(stored bytes, compression) for one blob: zstd when it saves at least 10 %."""
    n = len(data)
    if n < 128:
        return data, RAW
    if n > SAMPLE and len(cctx.compress(data[:SAMPLE])) > SAMPLE * PAYS:
        return data, RAW  # random or compressed content: not worth the full pass
    z = cctx.compress(data)
    return (z, ZSTD) if len(z) < n * PAYS else (data, RAW)


class BatchEncoder:
    """``encode_entry`` for the blobs of one batch, in order, skipping most compression attempts in a run
    of blobs that do not compress: after SKIP_AFTER such blobs in a row only one in SKIP_EVERY is tried
    (one that compresses ends the run). Random or already compressed files come in runs (a directory of
    images, archives, man pages); compressing each only to keep it raw cost ~6 us a blob. The result
    depends only on the batch's blobs (a new encoder per batch), so packs stay deterministic."""

    __slots__ = ("cctx", "misses")

    def __init__(self, cctx: zstandard.ZstdCompressor) -> None:
        self.cctx = cctx
        self.misses = 0

    def __call__(self, data: bytes) -> tuple[bytes, int]:
        if len(data) < 128:
            return data, RAW
        misses = self.misses
        if misses >= SKIP_AFTER and misses % SKIP_EVERY:
            self.misses = misses + 1
            return data, RAW
        stored, comp = encode_entry(data, self.cctx)
        self.misses = 0 if comp == ZSTD else misses + 1
        return stored, comp


def compressor() -> zstandard.ZstdCompressor:
    """A deterministic compressor (same bytes in, same bytes out: re-pushes find their packs by digest)."""
    return zstandard.ZstdCompressor(level=LEVEL, write_content_size=True, write_checksum=False)


def encode_index(idx: PackIndex) -> bytes:
    rows = b"".join(ENTRY.pack(bytes.fromhex(e.digest[7:]), e.offset, e.stored, e.size, e.comp) for e in idx.entries)
    return encode_index_rows(idx.pack, idx.pack_size, len(idx.entries), rows)


def encode_index_rows(pack: str, pack_size: int, count: int, rows: bytes | bytearray) -> bytes:
    """The index layer of ``pack`` from its ``count`` entries already packed as ENTRY rows, in offset order."""
    if len(rows) != count * ENTRY.size:
        raise ValueError(f"{count} index entries in {len(rows)} bytes")
    return compressor().compress(HEADER.pack(MAGIC, bytes.fromhex(pack[7:]), pack_size, count) + rows)


def _bounded_decompress(data: bytes, limit: int, what: str) -> bytes:
    """At most ``limit`` decompressed bytes of one zstd stream; IntegrityError for more or for garbage."""
    try:
        reader = zstandard.ZstdDecompressor(max_window_size=1 << 27).stream_reader(
            io.BytesIO(data), read_across_frames=True
        )
        out = bytearray()
        while True:
            piece = reader.read(min(1 << 20, limit + 1 - len(out)))
            if not piece:
                break
            out += piece
            if len(out) > limit:
                raise IntegrityError(f"{what} decompresses to more than {limit} bytes")
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{what} is not valid zstd ({str(exc)[:80]})") from None
    return bytes(out)


def decode_index(data: bytes, *, pack: str, pack_size: int, what: str) -> PackIndex:
    """Parse and check one index layer against the pack layer it describes. IntegrityError for any lie."""
    raw = _bounded_decompress(data, MAX_INDEX, what)
    if len(raw) < HEADER.size:
        raise IntegrityError(f"{what}: truncated header")
    magic, pdig, psize, count = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise IntegrityError(f"{what}: not a continuity pack index (magic {magic!r})")
    if "sha256:" + pdig.hex() != pack or psize != pack_size:
        raise IntegrityError(
            f"{what}: describes pack sha256:{pdig.hex()} ({psize} bytes), "
            f"not the layer before it, {pack} ({pack_size} bytes)"
        )
    if count > MAX_ENTRIES or len(raw) != HEADER.size + count * ENTRY.size:
        raise IntegrityError(f"{what}: {count} entries in {len(raw)} bytes (at most {MAX_ENTRIES})")
    entries = []
    pos = 0
    for i in range(count):
        d, off, stored, size, comp = ENTRY.unpack_from(raw, HEADER.size + i * ENTRY.size)
        e = Entry("sha256:" + d.hex(), off, stored, size, comp)
        if off < pos or e.end > pack_size:
            raise IntegrityError(
                f"{what}: entry {e.digest} at {off}+{stored} is outside its pack "
                f"({pack_size} bytes) or overlaps the one before"
            )
        if (
            size > MAX_ENTRY
            or comp not in (RAW, ZSTD)
            or (comp == RAW and stored != size)
            or (comp == ZSTD and (stored == 0 or stored > size))
        ):
            raise IntegrityError(
                f"{what}: entry {e.digest} has an impossible length ({stored} stored, {size} bytes, compression {comp})"
            )
        pos = e.end
        entries.append(e)
    return PackIndex(pack, pack_size, tuple(entries))


def decode_entry(stored: bytes, e: Entry, what: str) -> bytes:
    """The verified blob bytes of an entry. IntegrityError for wrong length, bad zstd or another digest."""
    if len(stored) != e.stored:
        raise IntegrityError(f"{what}: entry {e.digest} is {len(stored)} bytes, its index says {e.stored}")
    data = stored if e.comp == RAW else _bounded_decompress(stored, e.size, f"{what}: entry {e.digest}")
    if len(data) != e.size:
        raise IntegrityError(f"{what}: entry {e.digest} is {len(data)} bytes, expected {e.size}")
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != e.digest:
        raise IntegrityError(f"{what}: entry {e.digest} has digest {got} (wrong bytes)")
    return data
