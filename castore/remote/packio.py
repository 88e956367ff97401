"""Reading packs from a registry: index layers, whole packs, byte ranges of packs.

A pack is fetched whole when the blobs needed from it make up at least
WHOLE_MIN of its bytes, else as HTTP ranges around the needed entries (gaps
under GAP are read through, so neighbours cost one request). A range answer
must be 206 with exactly the Content-Range asked for; a registry that ignores
Range (200) is read as a whole pack instead. Every byte count is bounded by
what the index promised, never by Content-Length; every entry is
decompressed within its size and hashed before ``sink`` sees it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from castore.errors import IntegrityError
from castore.remote.client import Registry
from castore.remote.oci import Descriptor
from castore.remote.packfmt import MAX_INDEX, Entry, PackIndex, decode_entry, decode_index
from castore.remote.wire import Answer, _bounded_body, _refuse_encoding, guarded_pieces

WHOLE_MIN = 0.5
GAP = 256 << 10
MAX_INDEX_LAYER = MAX_INDEX + (1 << 20)  # compressed index bytes accepted (zstd never grows it by more)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

Sink = Callable[[Entry, bytes], None]


@dataclass(slots=True)
class Counter:
    """Bytes that crossed the wire (list of ints: += under the GIL is not atomic, append is)."""

    parts: list[int]

    def add(self, n: int) -> None:
        self.parts.append(n)

    @property
    def total(self) -> int:
        return sum(self.parts)


def read_small_blob(reg: Registry, desc: Descriptor, tmp_dir: str, limit: int, counter: Counter) -> bytes:
    """A small blob's verified bytes (size and digest checked while streaming), at most ``limit``."""
    if desc.size > limit:
        raise IntegrityError(f"{reg.where}: blob {desc.digest} is {desc.size} bytes (limit {limit})")
    path = os.path.join(tmp_dir, f"small-{desc.digest[7:]}-{os.getpid()}-{time.monotonic_ns()}")
    reg.fetch_blob(desc.digest, desc.size, path)
    try:
        with open(path, "rb") as f:
            data = f.read(desc.size + 1)
    finally:
        os.unlink(path)
    if len(data) != desc.size or "sha256:" + hashlib.sha256(data).hexdigest() != desc.digest:
        raise IntegrityError(f"blob {desc.digest} changed on disk while being read")
    counter.add(desc.size)
    return data


def read_index(reg: Registry, pack: Descriptor, index: Descriptor, tmp_dir: str, counter: Counter) -> PackIndex:
    """The checked index of ``pack``."""
    raw = read_small_blob(reg, index, tmp_dir, MAX_INDEX_LAYER, counter)
    return decode_index(raw, pack=pack.digest, pack_size=pack.size, what=f"{reg.where}: index {index.digest}")


def plan_ranges(entries: list[Entry], pack_size: int) -> list[tuple[int, int]] | None:
    """Byte ranges [start, end) covering ``entries`` (sorted by offset), or None: fetch the whole pack."""
    need = sum(e.stored for e in entries)
    if need >= WHOLE_MIN * pack_size:
        return None
    out: list[tuple[int, int]] = []
    for e in entries:
        if out and e.offset - out[-1][1] <= GAP:
            out[-1] = (out[-1][0], max(out[-1][1], e.end))
        else:
            out.append((e.offset, e.end))
    return out


class _Cutter:
    """Cuts the needed entries out of a stream of pack bytes starting at ``pos``."""

    def __init__(self, entries: list[Entry], pos: int, sink: Sink, what: str) -> None:
        self.entries = [e for e in entries if e.offset >= pos]
        self.i, self.pos, self.buf, self.sink, self.what = 0, pos, bytearray(), sink, what

    def feed(self, piece: bytes) -> None:
        view = memoryview(piece)
        while view and self.i < len(self.entries):
            e = self.entries[self.i]
            if self.pos < e.offset:
                skip = min(len(view), e.offset - self.pos)
                view, self.pos = view[skip:], self.pos + skip
                continue
            take = min(len(view), e.end - self.pos)
            self.buf += view[:take]
            view, self.pos = view[take:], self.pos + take
            if self.pos == e.end:
                self.sink(e, decode_entry(bytes(self.buf), e, self.what))
                self.buf.clear()
                self.i += 1
        self.pos += len(view)

    @property
    def left(self) -> list[Entry]:
        return self.entries[self.i :]


def fetch_entries(reg: Registry, pack: Descriptor, entries: list[Entry], sink: Sink, counter: Counter) -> None:
    """Fetch ``entries`` (sorted by offset, each stored > 0) of ``pack`` and give each verified blob to ``sink``."""
    what = f"{reg.where}: pack {pack.digest}"
    ranges = plan_ranges(entries, pack.size)
    if ranges is None:
        reg._call(f"GET pack {pack.digest}", lambda: _whole(reg, pack, entries, sink, counter, what))
        return
    left = entries
    for start, end in ranges:
        part = [e for e in left if start <= e.offset and e.end <= end]
        whole = reg._call(
            f"GET pack {pack.digest} range {start}-{end - 1}",
            functools.partial(_range, reg, pack, start, end, part, left, sink, counter, what),
        )
        if whole:  # the registry ignored Range and sent (and we cut) every entry
            return
        left = [e for e in left if e.end > end]


def _whole(reg: Registry, pack: Descriptor, entries: list[Entry], sink: Sink, counter: Counter, what: str) -> None:
    with _get(reg, pack, None, what) as resp:
        _read_whole(reg, resp, pack, entries, sink, counter, what)


def _read_whole(
    reg: Registry, resp: httpx.Response, pack: Descriptor, entries: list[Entry], sink: Sink, counter: Counter, what: str
) -> None:
    length = resp.headers.get("content-length")
    if length is not None and length != str(pack.size):
        raise IntegrityError(f"{what}: answer of {length[:30]} bytes for a pack of {pack.size}")
    cut = _Cutter(entries, 0, sink, what)
    h = hashlib.sha256()
    got = 0
    for piece in _pieces(reg, resp, pack.size, what):
        got += len(piece)
        h.update(piece)
        cut.feed(piece)
    counter.add(got)
    if got != pack.size:
        raise IntegrityError(f"{what} is {got} bytes, expected {pack.size} (short pack)")
    if "sha256:" + h.hexdigest() != pack.digest:
        raise IntegrityError(f"{what} has digest sha256:{h.hexdigest()} (wrong bytes)")
    if cut.left:
        raise IntegrityError(f"{what}: entry {cut.left[0].digest} was not in the pack")


def _range(
    reg: Registry,
    pack: Descriptor,
    start: int,
    end: int,
    entries: list[Entry],
    rest: list[Entry],
    sink: Sink,
    counter: Counter,
    what: str,
) -> bool:
    """One range request for ``entries``; True when the registry ignored Range and answered with the
    whole pack, from which every entry of ``rest`` (all still needed) was cut."""
    with _get(reg, pack, (start, end), what) as resp:
        if resp.status_code == 200:
            _read_whole(reg, resp, pack, rest, sink, counter, what)
            return True
        m = _CONTENT_RANGE.fullmatch(resp.headers.get("content-range", "").strip())
        if not m or (int(m[1]), int(m[2]) + 1) != (start, end) or m[3] not in (str(pack.size), "*"):
            raise IntegrityError(
                f"{what}: asked for bytes {start}-{end - 1}, got Content-Range "
                f"{resp.headers.get('content-range', '')[:60]!r}"
            )
        length = resp.headers.get("content-length")
        if length is not None and length != str(end - start):
            raise IntegrityError(f"{what}: range of {end - start} bytes answered with {length[:30]}")
        cut = _Cutter(entries, start, sink, what)
        got = 0
        for piece in _pieces(reg, resp, end - start, what):
            got += len(piece)
            cut.feed(piece)
        counter.add(got)
        if got != end - start:
            raise IntegrityError(f"{what}: range {start}-{end - 1} is {got} bytes, expected {end - start}")
    return False


@contextmanager
def _get(reg: Registry, pack: Descriptor, rng: tuple[int, int] | None, what: str) -> Iterator[httpx.Response]:
    headers = {"Range": f"bytes={rng[0]}-{rng[1] - 1}"} if rng else {}
    with reg._stream("GET", f"{reg.ref.base}/blobs/{pack.digest}", headers=headers) as resp:
        ok = (200, 206) if rng else (200,)
        if resp.status_code not in ok:
            body = _bounded_body(resp, reg.small_deadline())
            if resp.status_code == 404:
                raise IntegrityError(f"{what} is listed but missing")
            reg._check(
                Answer(resp.status_code, resp.headers, str(resp.url), body, resp.reason_phrase),
                f"GET pack {pack.digest}",
                ok,
            )
        _refuse_encoding(resp, what)
        yield resp


def _pieces(reg: Registry, resp: httpx.Response, limit: int, what: str) -> Iterator[bytes]:
    """The raw body, refusing a byte beyond ``limit`` and a transfer slower than the client's minimum rate."""
    long = f"{what}: answer is longer than the {limit} bytes expected"
    return guarded_pieces(reg, resp, limit, slow=f"{what}: too slow", long=long)
