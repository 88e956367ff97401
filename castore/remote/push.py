"""push: copy a manifest and the blobs it references to an OCI registry, in packs.

Order: lease on the manifest (gc keeps its blobs while we read them) -> the
indexes of the artifacts already in the repository (the tag we overwrite,
every ``bases`` reference) -> a plan (castore.remote.packer: reused packs,
new packs, lone blobs) -> each new pack is built in memory from verified
store blobs, deterministically, then HEAD and uploaded if missing (a re-run
of a killed push rebuilds the same packs and skips what arrived) -> lone
blobs, the continuity manifest (parts), the config, sent while the packs are
built -> PUT the OCI manifest under the tag, last, so a tag never names an
incomplete artifact -> signatures.
"""

from __future__ import annotations

import gc
import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from castore.bulkmode import bulk
from castore.digest import hash_bytes
from castore.errors import Aborted, BlobNotFound, IntegrityError, ResourceLimit
from castore.faults import crashpoint
from castore.manifest import Manifest, codec
from castore.manifest.model import Chunk
from castore.remote import blobscan
from castore.remote.client import Access, Registry
from castore.remote.manifest_parts import part_descriptors, split, upload_parts
from castore.remote.oci import (
    CONFIG_DIGEST,
    CONFIG_JSON,
    MAX_CONTINUITY_MANIFEST,
    MAX_OCI_MANIFEST,
    Descriptor,
    build_oci_manifest,
)
from castore.remote.packbase import load_bases
from castore.remote.packer import PACK_TARGET, Plan, build_pack, make_plan
from castore.remote.packworkers import start_pool
from castore.remote.ref import Reference
from castore.remote.streamup import PackStream
from castore.remote.transfer import Progress, run_all
from castore.store import Store
from castore.store import signatures as sigdb

MIN_PROCS = 256  # blobs from which packs are read by worker processes (castore.remote.packworkers)
MIN_ENTRY = 100  # bytes of manifest per file at least: MIN_PROCS files need MIN_PROCS * MIN_ENTRY bytes
MAX_PACK_MEMORY = 160 << 20  # packs being built or sent at once (each held twice at worst), in bytes


@dataclass(frozen=True, slots=True)
class PushResult:
    """What a push did: the OCI manifest digest (for ``REPO@DIGEST``) and the transfer counts."""

    oci_digest: str
    manifest_digest: str
    uploaded: int
    skipped: int
    uploaded_bytes: int
    signatures: int = 0
    packs_new: int = 0
    packs_reused: int = 0
    oci_manifest_size: int = 0
    manifest_parts: int = 1  # the layers the continuity manifest travels in


@bulk  # 25,000 (digest, size) tuples and Entry objects: the cyclic collector would walk them again and again
def push(
    store: Store,
    manifest: Manifest | None,
    ref: Reference,
    *,
    manifest_digest: str | None = None,
    jobs: int = 4,
    username: str | None = None,
    password: str | None = None,
    bases: Sequence[Reference] = (),
    pack_target: int = PACK_TARGET,
    access: Access | None = None,
) -> PushResult:
    """Push ``manifest`` (stored as ``manifest_digest``, or given by file; None: the store's manifest
    ``manifest_digest``, not decoded: castore.remote.blobscan) and its blobs to ``ref``'s tag.

    ``bases``: other artifacts of the repository whose packs may be reused
    (the tag being overwritten always is). Raises BlobNotFound/IntegrityError
    (exit 4) for missing or corrupt local blobs, RemoteError (exit 1) when the
    registry refuses or cannot be reached, NotFound for a missing ``bases`` reference.
    """
    data = _manifest_bytes(store, manifest, manifest_digest)
    mdigest = _check_manifest_size(data)
    with ExitStack() as stack:
        # Forked first: before the scan fills the heap (a cheaper fork) and before httpx starts
        # threads; the workers start up while the manifest is scanned.
        procs = stack.enter_context(start_pool()) if len(data) >= MIN_PROCS * MIN_ENTRY else None
        # The client is made on a thread meanwhile: its TLS context loads the CA bundle (~40 ms, GIL released).
        opening = ThreadPoolExecutor(1, thread_name_prefix="open")
        conns = 2 * jobs + 4  # connections: the parts on 2 x jobs threads, and each pack's stream and index
        made = opening.submit(Registry, ref, username=username, password=password, push=True, jobs=conns, access=access)
        opening.shutdown(wait=False)
        stack.callback(_close_made, made)
        if manifest is None:
            tree = blobscan.scan(data, source=manifest_digest or mdigest)
        else:
            tree = blobscan.of_manifest(manifest)
        # A file the store holds as chunks only (a manifest without chunk lists) is pushed as the
        # whole-file blob the manifest names, put together from its chunks and verified.
        content = _content_refs(store, tree)
        with store.lease(manifests=[manifest_digest] if manifest_digest else sorted(content)) as lease:
            os.makedirs(lease.tmp_dir, mode=0o700, exist_ok=True)
            missing = store.missing_blobs(content)  # before any request (tests/remote/test_bombs.py)
            if missing:
                raise BlobNotFound(min(missing), context=mdigest)
            assembled = store.chunk_lists(tree.refs - content)
            sizes = tree.sizes
            for d in tree.refs - sizes.keys():  # ADS blobs: their size is in the index only
                sizes[d] = store.blob_size(d) or 0
            reg = made.result()
            base = load_bases(reg, ref, bases, lease.tmp_dir)
            plan = make_plan([(d, sizes[d]) for d in tree.order], base, pack_target)
            job = _Job(store, reg, data, mdigest, plan, assembled, procs, lease.tmp_dir, jobs)
            with _young_gc():
                return job.run(ref, max(1, min(jobs, MAX_PACK_MEMORY // (2 * max(pack_target, 1)))))


@contextmanager
def _young_gc() -> Iterator[None]:
    """The cyclic collector on again, for the objects made from now on only (``gc.freeze``): the transfers
    make short-lived cycles (futures, answers) that would pile up (~50 MB on 100,000 files) with it
    paused, while the tree's own 100,000s of objects made before are never walked again."""
    gc.freeze()
    gc.enable()
    try:
        yield
    finally:
        gc.disable()
        gc.unfreeze()


def _close_made(made: Future[Registry]) -> None:
    """Close the client ``made`` on the opening thread, once it is made (it may have failed: nothing to close)."""
    try:
        reg = made.result()
    except Exception:
        return
    reg.close()


class _Job:
    """One push once planned: new packs built (and streamed, on a first push) while the manifest
    parts, the config and the lone blobs go on another thread; then the OCI manifest."""

    def __init__(
        self,
        store: Store,
        reg: Registry,
        data: bytes,
        mdigest: str,
        plan: Plan,
        assembled: Mapping[str, tuple[Chunk, ...]],
        procs: Executor | None,
        tmp_dir: str,
        jobs: int,
    ) -> None:
        self.store, self.reg, self.data, self.mdigest, self.plan = store, reg, data, mdigest, plan
        self.assembled, self.procs, self.tmp_dir, self.jobs = assembled, procs, tmp_dir, jobs
        self.send = _Sender(reg)
        self.parts: list[bytes] = []  # the manifest travels in content-defined parts (one when small)
        self.descs: list[Descriptor] = []
        self.built: list[tuple[int, Descriptor, Descriptor]] = []
        self.prog = Progress("push", sum(n for pack in plan.new for _, n in pack) + sum(n for _, n in plan.solo))
        # Every blob is read, its size and digest checked, before anything made of it is sent.
        self.read = _reader(store, assembled)
        self.decided = threading.Event()  # the_rest knows whether the registry saw this manifest before
        self.fresh = False  # ... it did not: packs are streamed while they are built (castore.remote.streamup)
        self.first_sent = threading.Event()  # the manifest's first part is in the registry

    def run(self, ref: Reference, in_flight: int) -> PushResult:
        reg, plan, data, mdigest, send = self.reg, self.plan, self.data, self.mdigest, self.send

        def packs() -> None:
            run_all(range(len(plan.new)), self.one_pack, jobs=in_flight, abort=reg.abort)

        try:
            run_all([packs, self.the_rest], _call, jobs=2, abort=reg.abort)
        finally:
            self.prog.done()
        built = [(p, x) for _, p, x in sorted(self.built, key=lambda t: t[0])]
        oci = build_oci_manifest(
            mdigest, len(data), plan.solo, [(b.pack, b.index) for b in plan.reused] + built, self.descs
        )
        oci_digest = _put_oci_manifest(reg, ref, mdigest, oci)
        signed = _push_signatures(reg, self.store, mdigest, oci_digest, len(oci))  # after the tree: never dangling
        return PushResult(
            oci_digest,
            mdigest,
            len(send.sent),
            len(send.skipped),
            sum(send.sent),
            signed,
            len(plan.new),
            len(plan.reused),
            len(oci),
            len(self.parts),
        )

    def one_pack(self, i: int) -> None:
        stream = PackStream(self.reg, self.first_sent, self.streaming) if self.procs is not None else None
        try:
            bp = build_pack(
                self.store,
                self.plan.new[i],
                jobs=min(self.jobs, 4),
                read=self.read,
                procs=self.procs,
                special=self.assembled,
                sink=stream.add if stream is not None else None,
            )
        except BaseException:
            if stream is not None:
                stream.cancel()  # nothing of it is committed
            raise

        def pack() -> None:
            if stream is not None and stream.finish(bp.pack.digest, bp.pack.size):
                self.send.sent.append(bp.pack.size)
            else:  # not streamed (a re-run, a small push) or the stream failed: HEAD, then one PUT
                self.wait_first()
                self.send(bp.pack.digest, bp.pack.size, bp.data)

        def index() -> None:
            self.wait_first()
            self.send(bp.index.digest, bp.index.size, bp.index_data)

        run_all([pack, index], _call, jobs=2, abort=self.reg.abort)
        self.built.append((i, bp.pack, bp.index))
        crashpoint("push-after-pack")
        self.prog.add(sum(n for _, n in self.plan.new[i]))  # the bytes of the blobs it holds

    def wait_first(self) -> None:
        """Until the_rest has sent the manifest's first part (Aborted if it failed)."""
        while not self.first_sent.wait(0.05):
            if self.reg.abort.is_set():
                raise Aborted("aborted")

    def streaming(self) -> bool:
        """Whether packs are streamed: waits until the_rest knows (False when the push is aborted)."""
        while not self.decided.wait(0.05):
            if self.reg.abort.is_set():
                return False
        return self.fresh

    def the_rest(self) -> None:
        """The manifest (or its parts), the config and the lone blobs: round trips, little CPU.

        The first part goes first, and no pack is committed before it is there. A registry that has the
        first or the last part has seen this tree, or one that differs from it in a few files, before: a
        re-run or a re-push, where every part is HEADed and only the missing ones are sent. Otherwise the
        push is *fresh*: its packs are streamed while they are built and its parts are sent without a
        HEAD each (a part an older tree happened to share is sent again)."""
        reg, data, send, descs = self.reg, self.data, self.send, self.descs
        try:
            self.parts.extend(split(data))  # here, not before the packs: the workers read meanwhile
            descs.extend(part_descriptors(self.parts))
            first = descs[0] if len(descs) > 1 else Descriptor("", self.mdigest, len(data))
            has_first = reg.has_blob(first.digest)
            self.fresh = not has_first and (len(descs) < 3 or not reg.has_blob(descs[-1].digest))
        finally:
            self.decided.set()
        if has_first:
            send.skipped.append(first.size)
        else:
            send.upload(first.digest, first.size, self.parts[0])
        self.first_sent.set()
        send(CONFIG_DIGEST, len(CONFIG_JSON), CONFIG_JSON)
        if len(self.parts) > 1:  # small requests, bound by the registry's answers: twice --jobs of them
            upload_parts(reg, self.parts[1:], descs[1:], send.upload if self.fresh else send, 2 * self.jobs)
        run_all(self.plan.solo, self.one_solo, jobs=self.jobs, abort=reg.abort)

    def one_solo(self, item: tuple[str, int]) -> None:
        d, n = item
        chunks = self.assembled.get(d)
        self.send(d, n, _opener(self.store, d) if chunks is None else _assembler(self.store, d, chunks, self.tmp_dir))
        self.prog.add(n)


def _manifest_bytes(store: Store, manifest: Manifest | None, digest: str | None) -> bytes:
    """The manifest's bytes: those of the store's manifest ``digest`` (always when ``manifest`` is None),
    else ``manifest`` encoded."""
    if digest is not None:
        return store.read_blob(digest)
    if manifest is None:
        raise ValueError("push needs a manifest or the digest of one in the store")
    return codec.dumps(manifest)


class _Sender:
    """HEAD a blob, upload it when the registry lacks it; counts both (list.append is atomic)."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        self.sent: list[int] = []  # sizes of the blobs uploaded
        self.skipped: list[int] = []

    def __call__(self, d: str, n: int, source: bytes | bytearray | Callable[[], int]) -> None:
        if self.reg.has_blob(d):
            self.skipped.append(n)
        else:
            self.upload(d, n, source)

    def upload(self, d: str, n: int, source: bytes | bytearray | Callable[[], int]) -> None:
        self.reg.upload_blob(d, n, source)  # type: ignore[arg-type]
        self.sent.append(n)


def _push_signatures(reg: Registry, store: Store, mdigest: str, oci_digest: str, oci_size: int) -> int:
    """castore.remote.signatures.push_signatures, imported only when the manifest has signatures
    (it loads ``cryptography``: ~40 ms of every push)."""
    if not sigdb.for_manifest(store, mdigest):
        return 0
    from castore.remote.signatures import push_signatures

    return push_signatures(reg, store, mdigest, oci_digest, oci_size)


def _content_refs(store: Store, tree: blobscan.TreeBlobs) -> set[str]:
    """``Store.content_refs`` of the manifest ``tree`` was read from: its refs, with each whole-file
    digest the index lacks but the chunk map knows replaced by its chunks."""
    refs = set(tree.refs)
    whole = {d for d, n in tree.whole.items() if n > store.chunking.min_size}
    for d, chunks in store.chunk_lists(store.missing_blobs(whole)).items():
        refs.discard(d)
        refs.update(c.digest for c in chunks)
    return refs


def _call(fn: Callable[[], None]) -> None:
    fn()


def _check_manifest_size(data: bytes) -> str:
    """The digest of the continuity manifest's bytes; ResourceLimit when a pull would refuse them."""
    mdigest = hash_bytes(data)
    if len(data) > MAX_CONTINUITY_MANIFEST:
        raise ResourceLimit(
            f"{mdigest}: the manifest is {len(data)} bytes, more than a pull accepts ({MAX_CONTINUITY_MANIFEST})"
        )
    return mdigest


def _put_oci_manifest(reg: Registry, ref: Reference, mdigest: str, oci: bytes) -> str:
    """Tag ``oci`` (the artifact's OCI manifest) as ``ref``'s tag; its digest, as the registry confirmed it."""
    if len(oci) > MAX_OCI_MANIFEST:
        raise ResourceLimit(
            f"{mdigest}: the OCI manifest would be {len(oci)} bytes (registries take {MAX_OCI_MANIFEST})"
        )
    reported = reg.put_manifest(ref.tag, oci)
    oci_digest = hash_bytes(oci)
    if reported and reported != oci_digest:
        raise IntegrityError(f"registry {ref.registry} stored the manifest as {reported[:80]}, expected {oci_digest}")
    return oci_digest


def _reader(store: Store, assembled: Mapping[str, tuple[Chunk, ...]]) -> Callable[[str, int], bytes]:
    """Verified bytes of a blob for a pack: from the store, or put together from its chunks."""

    def read(digest: str, size: int) -> bytes:
        chunks = assembled.get(digest)
        if chunks is None:
            return store.read_blob(digest, limit=size)
        data = b"".join(store.read_blob(c.digest, limit=c.end - c.begin) for c in chunks)
        if len(data) != size or "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(f"chunks recorded for {digest} do not add up to it (run fsck)")
        return data

    return read


def _opener(store: Store, digest: str) -> Callable[[], int]:
    def opener() -> int:
        return store.open_blob(digest)

    return opener


def _assembler(store: Store, digest: str, chunks: tuple[Chunk, ...], tmp_dir: str) -> Callable[[], int]:
    """An opener of the whole-file blob ``digest`` put together from its chunks (verified) in an
    unnamed temp file under ``tmp_dir`` (gone when closed)."""

    def opener() -> int:
        os.makedirs(tmp_dir, mode=0o700, exist_ok=True)
        fd = os.open(tmp_dir, os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o600)
        try:
            whole = hashlib.sha256()
            for c in chunks:
                data = store.read_blob(c.digest, limit=c.end - c.begin)  # verified
                whole.update(data)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            if "sha256:" + whole.hexdigest() != digest:
                raise IntegrityError(f"chunks recorded for {digest} do not add up to it (run fsck)")
            os.lseek(fd, 0, os.SEEK_SET)
            return fd
        except BaseException:
            os.close(fd)
            raise

    return opener
