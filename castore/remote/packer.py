"""Push side of packs: which blobs go where (reuse, new packs, alone), and building a pack from the store.

Policy (docs/remote.md "Dedup across versions"): a pack already in the
repository (an artifact push found there: the tag it overwrites and every
``--base``) is reused when the blobs the tree needs from it make up at least
REUSE_MIN of its bytes; below that its needed blobs are packed again, so an
artifact never drags along mostly dead packs. The remaining blobs go, in
manifest order (files of one directory stay together for range requests),
into new packs cut at ``target`` raw bytes or MAX_ENTRIES entries; blobs of
SOLO_MIN bytes or more travel alone, as their own layer.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

from castore.manifest import Manifest
from castore.remote.oci import PACK_INDEX_MEDIA_TYPE, PACK_MEDIA_TYPE, Descriptor
from castore.remote.packfmt import ENTRY, MAX_ENTRIES, BatchEncoder, PackIndex, compressor, encode_index_rows
from castore.remote.packworkers import Stored, entries_of, submit
from castore.store import Store

PACK_TARGET = 32 << 20  # measured: docs/benchmarks.md "remote"
SOLO_MIN = 16 << 20
REUSE_MIN = 0.5
BATCH_BYTES = 4 << 20  # blobs read ahead per pack-building thread
MAX_LAYERS = 8192  # packs grow beyond PACK_TARGET so a tree never needs more (OCI manifest < 4 MiB)


@dataclass(frozen=True, slots=True)
class BasePack:
    """A pack already in the repository, with its index layer and parsed index."""

    pack: Descriptor
    index: Descriptor
    parsed: PackIndex


@dataclass(slots=True)
class Plan:
    reused: list[BasePack] = field(default_factory=list)
    new: list[list[tuple[str, int]]] = field(default_factory=list)  # each: (digest, size) in pack order
    solo: list[tuple[str, int]] = field(default_factory=list)


def blob_order(m: Manifest, sizes: dict[str, int]) -> list[tuple[str, int]]:
    """Every referenced blob once, in manifest (path) order; ADS blobs after their file."""
    seen: set[str] = set()
    out: list[tuple[str, int]] = []

    def put(d: str) -> None:
        if d not in seen:
            seen.add(d)
            out.append((d, sizes[d]))

    for r in m.resources:
        digest = getattr(r, "digest", None)
        if isinstance(digest, str) and digest:
            chunks = getattr(r, "chunks", ())
            for d in [c.digest for c in chunks] if chunks else [digest]:
                put(d)
        for a in r.ads:
            if a.digest:
                put(a.digest)
    return out


def pack_target(total: int, target: int = PACK_TARGET) -> int:
    """The pack size for ``total`` bytes of new blobs: ``target``, larger when packs would pass MAX_LAYERS / 2."""
    return max(target, -(-total // (MAX_LAYERS // 2)))


def make_plan(order: list[tuple[str, int]], base: Iterable[BasePack], target: int = PACK_TARGET) -> Plan:
    """Decide, for each blob of ``order``, whether it rides in a reused pack, a new pack, or alone."""
    plan = Plan()
    need = dict(order)
    covered: set[str] = set()
    for bp in base:
        live = [e for e in bp.parsed.entries if e.digest in need and e.digest not in covered]
        if live and sum(e.stored for e in live) >= REUSE_MIN * bp.pack.size:
            plan.reused.append(bp)
            covered.update(e.digest for e in live)
    rest = [(d, n) for d, n in order if d not in covered]
    plan.solo = sorted((d, n) for d, n in rest if n >= SOLO_MIN)
    small = [(d, n) for d, n in rest if n < SOLO_MIN]
    cut = pack_target(sum(n for _, n in small), target)
    cur: list[tuple[str, int]] = []
    acc = 0
    for d, n in small:
        if cur and (acc + n > cut or len(cur) >= MAX_ENTRIES):
            plan.new.append(cur)
            cur, acc = [], 0
        cur.append((d, n))
        acc += n
    if cur:
        plan.new.append(cur)
    return plan


def _batches(blobs: list[tuple[str, int]], limit: int) -> Iterator[list[tuple[str, int]]]:
    """Runs of ``blobs`` of at most 256 blobs or ``limit`` bytes (a read-ahead that bounds memory)."""
    cur: list[tuple[str, int]] = []
    acc = 0
    for d, n in blobs:
        if cur and (len(cur) >= 256 or acc + n > limit):
            yield cur
            cur, acc = [], 0
        cur.append((d, n))
        acc += n
    if cur:
        yield cur


@dataclass(frozen=True, slots=True)
class BuiltPack:
    pack: Descriptor
    index: Descriptor
    data: bytearray
    index_data: bytes


def build_pack(
    store: Store,
    blobs: list[tuple[str, int]],
    jobs: int = 1,
    read: Callable[[str, int], bytes] | None = None,
    procs: Executor | None = None,
    special: Container[str] = (),
    sink: Callable[[bytes], None] | None = None,
) -> BuiltPack:
    """Read (verifying each digest) and pack ``blobs``; the bytes depend only on ``blobs``.

    Batches go to the worker processes ``procs`` (castore.remote.packworkers) when given, except those
    holding a blob of ``special`` (put together from chunks by ``read``); the rest run on ``jobs``
    threads with ``read`` (default store.read_blob). ``sink`` receives the pack's bytes as they are
    put together, in order (castore.remote.streamup sends them meanwhile)."""
    local = threading.local()
    if read is None:

        def read(d: str, n: int) -> bytes:
            return store.read_blob(d, limit=n)

    def batch(items: list[tuple[str, int]]) -> Stored:
        cctx = getattr(local, "cctx", None)
        if cctx is None:
            cctx = local.cctx = compressor()
        encode = BatchEncoder(cctx)
        got = [encode(read(d, n)) for d, n in items]
        return b"".join(b for b, _ in got), [(len(b), c) for b, c in got]

    out = bytearray()
    rows = bytearray()  # the index's entries (castore.remote.packfmt.ENTRY), no object per blob
    row = ENTRY.pack
    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="pack") as pool:
        window: deque[tuple[list[tuple[str, int]], Callable[[], Stored]]] = deque()
        todo = _batches(blobs, BATCH_BYTES)
        while True:
            while len(window) < 2 * jobs:  # read ahead at most 2 batches per thread
                items = next(todo, None)
                if items is None:
                    break
                if procs is not None and not any(d in special for d, _ in items):
                    pf = submit(procs, store.blob_root, items)
                    window.append((items, lambda pf=pf: entries_of(pf.result())))  # type: ignore[misc]
                else:
                    window.append((items, pool.submit(batch, items).result))
            if not window:
                break
            items, result = window.popleft()
            joined, lens = result()
            pos = len(out)
            for (d, n), (ln, comp) in zip(items, lens, strict=True):
                rows += row(bytes.fromhex(d[7:]), pos, ln, n, comp)
                pos += ln
            out += joined
            if sink is not None:
                sink(joined)
    digest = "sha256:" + hashlib.sha256(out).hexdigest()
    index = encode_index_rows(digest, len(out), len(blobs), rows)
    return BuiltPack(
        Descriptor(PACK_MEDIA_TYPE, digest, len(out)),
        Descriptor(PACK_INDEX_MEDIA_TYPE, "sha256:" + hashlib.sha256(index).hexdigest(), len(index)),
        out,
        index,
    )
