"""The continuity manifest travels in content-defined parts, so a one-file change re-uploads one part.

The stored manifest is protobuf ``Manifest { repeated Resource resource = 1; }``:
its bytes are a run of top-level records (tag, length, one resource). Protobuf
merges concatenated messages of one type (repeated fields append), so cutting
the bytes at record boundaries gives parts that are each a manifest and whose
concatenation is byte-identical to the whole (whose digest a pull checks after
putting it back together).

Cut points are content-defined: after a record whose path hash (crc32 of the
resource's first path, or of the record when it has none) has its low CUT_BITS
bits zero, once the part has MIN_PART bytes; always once it has MAX_PART bytes
(a part is at most MAX_PART plus one record). An edit moves only the cuts near
it: the parts before are unchanged, and those after re-align at the next cut
point past MIN_PART. Push HEADs every part and uploads the missing ones; pull
fetches the parts in parallel (docs/remote.md "Manifest parts").
"""

from __future__ import annotations

import hashlib
import os
import time
import zlib
from collections.abc import Callable, Mapping

from castore.errors import IntegrityError
from castore.manifest.wire import read_varint
from castore.remote.client import Registry
from castore.remote.oci import MANIFEST_PART_MEDIA_TYPE, Descriptor
from castore.remote.packio import Counter
from castore.remote.transfer import run_all

MIN_PART = 64 << 10
MAX_PART = 256 << 10
CUT_BITS = 9  # one record in 512 is a cut point: ~58 KiB of 114-byte records past MIN_PART, ~120 KiB a part
_MASK = (1 << CUT_BITS) - 1


def _record_hash(data: bytes, start: int, end: int) -> int:
    """crc32 of the record's first path (field 1 of the resource), else of the whole record."""
    if start < end and data[start] == 0x0A:
        n, i = read_varint(data, start + 1)
        if i + n <= end:
            return zlib.crc32(data[i : i + n])
    return zlib.crc32(data[start:end])


def cut_points(data: bytes, *, min_part: int = MIN_PART, max_part: int = MAX_PART) -> list[int]:
    """The end offsets of the parts of ``data`` (the last is ``len(data)``); one part when the bytes are
    not a run of length-delimited records (they always are for a manifest the store holds)."""
    n = len(data)
    if n <= min_part:
        return [n]
    cuts: list[int] = []
    start = i = 0
    try:
        while i < n:
            key, j = read_varint(data, i)
            if key & 7 != 2:
                return [n]
            length, j = read_varint(data, j)
            end = j + length
            if end > n:
                return [n]
            size = end - start
            if size >= max_part or (size >= min_part and _record_hash(data, j, end) & _MASK == 0):
                cuts.append(end)
                start = end
            i = end
    except (IndexError, ValueError):
        return [n]
    if start < n:
        cuts.append(n)
    return cuts


def split(data: bytes) -> list[bytes]:
    """The parts of ``data``, in order; their concatenation is ``data``."""
    out, prev = [], 0
    for c in cut_points(data):
        out.append(data[prev:c])
        prev = c
    return out


def parts_by_digest(data: bytes) -> dict[str, bytes]:
    """The parts of ``data`` (a manifest the store holds) by digest: what a pull need not fetch again."""
    parts = split(data)
    return {d.digest: p for p, d in zip(parts, part_descriptors(parts), strict=True)}


def part_descriptors(parts: list[bytes]) -> list[Descriptor]:
    return [Descriptor(MANIFEST_PART_MEDIA_TYPE, "sha256:" + hashlib.sha256(p).hexdigest(), len(p)) for p in parts]


def upload_parts(
    reg: Registry, parts: list[bytes], descs: list[Descriptor], send: Callable[[str, int, bytes], None], jobs: int
) -> None:
    """``send`` (HEAD, upload when missing) every distinct part, on ``jobs`` threads."""
    todo = {d.digest: (d, p) for d, p in zip(descs, parts, strict=True)}

    def one(item: tuple[Descriptor, bytes]) -> None:
        send(item[0].digest, item[0].size, item[1])

    run_all(list(todo.values()), one, jobs=jobs, abort=reg.abort)


def fetch_parts(
    reg: Registry,
    whole: Descriptor,
    parts: list[Descriptor],
    tmp_dir: str,
    counter: Counter,
    *,
    jobs: int,
    have: Mapping[str, bytes] | None = None,
) -> bytes:
    """The manifest ``whole`` put together from ``parts`` (each verified while it streams; those in
    ``have``, the parts of a manifest the store holds, are not fetched), its digest checked. The part
    sizes add up to ``whole.size`` (checked when the OCI manifest was parsed)."""
    got: dict[str, bytes] = {p.digest: have[p.digest] for p in parts if have and p.digest in have}
    distinct = [p for p in {p.digest: p for p in parts}.values() if p.digest not in got]

    def one(p: Descriptor) -> None:
        path = os.path.join(tmp_dir, f"mpart-{p.digest[7:]}-{os.getpid()}-{time.monotonic_ns()}")
        reg.fetch_blob(p.digest, p.size, path)  # size and digest verified while streaming
        try:
            with open(path, "rb") as f:
                data = f.read(p.size + 1)
        finally:
            os.unlink(path)
        counter.add(p.size)
        got[p.digest] = data

    run_all(distinct, one, jobs=jobs, abort=reg.abort)
    data = b"".join(got[p.digest] for p in parts)
    if len(data) != whole.size or "sha256:" + hashlib.sha256(data).hexdigest() != whole.digest:
        raise IntegrityError(f"{reg.where}: the manifest parts do not add up to continuity manifest {whole.digest}")
    return data
