"""pull: copy a continuity tree from an OCI registry into the store.

Nothing the registry sends is trusted. Order: GET the OCI manifest (bounded;
its digest checked when pulled by digest) -> check it is a continuity tree ->
lease -> continuity manifest blob (digest checked, then its entry and field
counts bounded before parsing) -> its blob digests and sizes read from its
bytes (castore.remote.blobscan) -> the pack index layers (bounded, checked
against their packs) -> every referenced blob must be in a pack or a lone
layer, with the manifest's size -> the blobs the store lacks are fetched
(whole packs, byte ranges of packs, lone layers: castore.remote.packio), each
verified before it is published (castore.remote.landing), while the manifest
is decoded and validated (a refused manifest takes back what was published) ->
``commit_manifest`` (blobs durable, index rows, manifest, catalog entry), the
same write order as ingest. Old artifacts (one layer per blob) have no packs.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, wait
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from castore.digest import hash_bytes, hex_of
from castore.errors import IntegrityError
from castore.faults import crashpoint
from castore.manifest import Manifest, codec, validate
from castore.manifest.bounds import check_parse_cost
from castore.remote import blobscan
from castore.remote.client import Access, Registry
from castore.remote.landing import Landing, present_files
from castore.remote.manifest_parts import fetch_parts, parts_by_digest
from castore.remote.oci import (
    ARTIFACT_TYPE,
    MAX_OCI_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    blob_sizes,
    parse_tree,
    split_layers,
)
from castore.remote.packfmt import Entry, PackIndex
from castore.remote.packio import Counter, fetch_entries, read_index
from castore.remote.ref import Reference
from castore.remote.signatures import fetch_signatures, store_signatures
from castore.remote.transfer import Progress, run_all
from castore.sign.policy import Policy
from castore.store import Store, check_name, manifest_refs
from castore.store.commit import commit_manifest
from castore.store.signatures import enforce

if TYPE_CHECKING:
    from castore.remote.image import Platform

Where = tuple[Descriptor, Entry] | Descriptor  # in a pack, or a lone layer
WRITE_BATCH, WRITE_BATCH_BYTES = 64, 1 << 20  # small blobs handed to a writer thread at once
# castore.remote.image.ACCEPT (tests/remote/test_manifest_parts.py checks they agree): that module (the
# image path, with the tar importer) is imported only for an answer that is not a continuity tree.
ACCEPT = (
    f"{OCI_MANIFEST}, application/vnd.docker.distribution.manifest.v2+json, {OCI_INDEX}, "
    "application/vnd.docker.distribution.manifest.list.v2+json"
)


@dataclass(frozen=True, slots=True)
class PullResult:
    """What a pull did: the manifest digest now in the store, the OCI digest, the transfer counts."""

    manifest_digest: str
    oci_digest: str
    downloaded: int
    present: int
    downloaded_bytes: int
    signatures: int = 0
    resumed: int = 0  # blobs a killed pull had published, re-hashed and kept
    manifest: Manifest | None = None  # the tree pulled (None for a container image)
    verified: frozenset[str] = frozenset()  # blobs this pull wrote from bytes it had just hashed


def pull(
    store: Store,
    ref: Reference,
    *,
    name: str | None = None,
    jobs: int = 4,
    username: str | None = None,
    password: str | None = None,
    access: Access | None = None,
    platform: Platform | None = None,
    policy: Policy | None = None,
) -> PullResult:
    """Pull ``ref`` into ``store`` and record it under ``name`` (if given).

    Raises IntegrityError (exit 4) for any answer that contradicts itself or
    the digests (nothing is recorded then), InvalidManifest (exit 3) for a
    manifest that breaks the rules, RemoteError/NotFound (exit 1) otherwise.
    """
    if name is not None:
        check_name(name)
    with Registry(ref, username=username, password=password, jobs=jobs, access=access) as reg:
        raw, _ctype = reg.get_manifest(ref.reference, MAX_OCI_MANIFEST, accept=ACCEPT)
        oci_digest = hash_bytes(raw)
        if ref.digest and oci_digest != ref.digest:
            raise IntegrityError(f"registry {ref.registry}: manifest {ref.digest} has digest {oci_digest}")
        if not _is_tree(raw) and _image().kind_of(raw) is not None:  # a container image: flattened (image.py)
            if policy is not None:  # images carry no continuity signatures: only an accepting scope takes them
                enforce(None, policy, None, [str(ref)] + ([name] if name else []), what=str(ref))
            got = _image().pull_image(store, reg, raw, str(ref), name=name, jobs=jobs, platform=platform)
            return PullResult(got[0], got[1], got[2], 0, got[3])
        tree = parse_tree(raw, source=str(ref))
        first = tree.first
        packs, solo = split_layers(tree.layers, source=str(ref))
        with store.lease() as lease:
            os.makedirs(lease.tmp_dir, mode=0o700)
            counter = Counter([])
            data = manifest_bytes(store, reg, first, tree.parts, lease.tmp_dir, counter, jobs=jobs, previous=name)
            src = f"{ref} manifest {first.digest}"
            check_parse_cost(data, source=src)  # before any parse allocates
            sigs = fetch_signatures(reg, oci_digest, lease.tmp_dir)
            if policy is not None:  # before any blob is fetched: a refused tree writes nothing
                enforce(
                    store,
                    policy,
                    first.digest,
                    [str(ref)] + ([name] if name else []),
                    what=str(ref),
                    message=data,
                    extra=[s.raw for s in sigs],
                )
            blobs = blobscan.scan(data, source=src)  # what to fetch while the manifest is decoded
            refs = blobs.refs
            indexes = _read_indexes(reg, packs, lease.tmp_dir, counter, jobs)
            where, sizes = locate(refs, blobs.sizes, packs, indexes, solo, source=str(ref))
            missing = store.missing_blobs(refs)
            resumed = present_files(store, missing, sizes)  # a killed pull's; commit re-hashes
            todo = sorted(missing - resumed)
            landing = Landing(store, lease.tmp_dir)
            epoch = store.gc_epoch()  # before anything is published: commit stats our blobs only if a gc ran
            try:
                manifest = _decode_while_fetching(
                    data, src, blobs, lambda: fetch_blobs(reg, todo, where, landing, counter, jobs=jobs), reg, landing
                )
                crashpoint("pull-after-download")

                def redo(gone: set[str]) -> list[tuple[str, str]]:
                    # content that was in the store when we looked but that gc removed (or a killed
                    # pull's file that failed its re-hash) before the commit: fetched again.
                    before = len(landing.published)
                    fetch_blobs(reg, sorted(gone), where, landing, counter, jobs=jobs, replace=True)
                    return [("", d) for d in landing.published[before:]]

                mdigest = commit_manifest(
                    store,
                    manifest,
                    landing.staged(),
                    sizes,
                    name=name,
                    redo=redo,
                    validated=True,  # above
                    sync_fd=lease.fd,
                    epoch=epoch,
                )
            except IntegrityError:
                landing.take_back()
                raise
            signed = store_signatures(store, mdigest, data, first.digest, sigs)
    return PullResult(
        mdigest,
        oci_digest,
        len(todo),
        len(refs) - len(missing),
        counter.total,
        signed,
        len(resumed),
        manifest,
        frozenset(landing.published),
    )


def _read_indexes(
    reg: Registry, packs: list[tuple[Descriptor, Descriptor]], tmp_dir: str, counter: Counter, jobs: int
) -> list[PackIndex]:
    """The checked index of every pack, on ``jobs`` threads."""
    indexes: list[PackIndex | None] = [None] * len(packs)

    def one_index(i: int) -> None:
        indexes[i] = read_index(reg, packs[i][0], packs[i][1], tmp_dir, counter)

    run_all(range(len(packs)), one_index, jobs=jobs, abort=reg.abort)
    return [x for x in indexes if x]


def _decode_while_fetching(
    data: bytes,
    src: str,
    blobs: blobscan.TreeBlobs,
    fetch: Callable[[], None],
    reg: Registry,
    landing: Landing,
) -> Manifest:
    """The manifest ``data``, decoded and validated on this thread while ``fetch`` (the blobs, planned
    from ``blobs``: its digests and sizes read from the same bytes) runs on another one: the writes of
    a fetch are system calls, which leave the interpreter lock to the decode (1.5 s of 100,000 entries
    otherwise before the first byte is fetched). A manifest that fails (exit 3/4), or whose decoded
    blobs differ from ``blobs``, stops the fetch, and what it published is taken back: nothing is stored.
    """
    failed: list[BaseException] = []

    def run() -> None:
        try:
            fetch()
        except BaseException as exc:  # raised on the calling thread below
            failed.append(exc)

    worker = threading.Thread(target=run, name="pull-fetch")
    worker.start()
    try:
        manifest = validate(codec.loads(data, source=src))
        if manifest_refs(manifest) != blobs.refs or blob_sizes(manifest) != blobs.sizes:
            raise IntegrityError(f"{src}: its blobs read from its bytes and from its decoded entries disagree")
    except BaseException:
        reg.abort.set()  # the transfers stop between pieces
        worker.join()
        landing.take_back()
        raise
    worker.join()
    if failed:
        raise failed[0]
    return manifest


def _image() -> ModuleType:
    from castore.remote import image

    return image


def _is_tree(raw: bytes) -> bool:
    """Whether an OCI manifest says it is a continuity tree (checked in full by parse_tree)."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and doc.get("artifactType") == ARTIFACT_TYPE


def locate(
    refs: set[str],
    msizes: Mapping[str, int],
    packs: list[tuple[Descriptor, Descriptor]],
    indexes: list[PackIndex],
    solo: list[Descriptor],
    *,
    source: str,
) -> tuple[dict[str, Where], dict[str, int]]:
    """Where each referenced blob is, and its size. Every reference must be in a pack or a lone layer,
    every lone layer must be referenced, sizes must agree with the manifest (IntegrityError)."""
    where: dict[str, Where] = {}
    for b in solo:
        if b.digest in where:
            raise IntegrityError(f"{source}: layer {b.digest} is listed twice")
        if b.digest not in refs:
            raise IntegrityError(f"{source}: layer {b.digest} is not referenced by the continuity manifest")
        where[b.digest] = b
    for (pack, _), idx in zip(packs, indexes, strict=True):
        for e in idx.entries:
            if e.digest in refs and e.digest not in where:
                where[e.digest] = (pack, e)
    absent = refs - where.keys()
    if absent:
        raise IntegrityError(
            f"{source}: blob {min(absent)} referenced by the continuity manifest is not a layer and in no pack"
        )
    sizes: dict[str, int] = {}
    for d, w in where.items():
        n = w.size if isinstance(w, Descriptor) else w[1].size
        if d in msizes and msizes[d] != n:
            kind = "layer" if isinstance(w, Descriptor) else "pack entry"
            raise IntegrityError(f"{source}: {kind} {d} has size {n}, the manifest says {msizes[d]}")
        sizes[d] = n
    return where, sizes


def fetch_blobs(
    reg: Registry,
    digests: list[str],
    where: Mapping[str, Where],
    landing: Landing,
    counter: Counter,
    *,
    jobs: int,
    replace: bool = False,
) -> None:
    """Fetch ``digests`` (whole packs, ranges, lone layers) on ``jobs`` threads, publishing each verified blob."""
    by_pack: dict[str, tuple[Descriptor, list[Entry]]] = {}
    lone: list[Descriptor] = []
    for d in digests:
        w = where[d]
        if isinstance(w, Descriptor):
            lone.append(w)
        elif w[1].stored == 0:
            landing.put(d, b"", replace=replace)  # the empty blob: nothing to fetch
        else:
            by_pack.setdefault(w[0].digest, (w[0], []))[1].append(w[1])
    work: list[tuple[Descriptor, list[Entry]] | Descriptor] = []
    work += [(p, sorted(es, key=lambda e: e.offset)) for p, es in by_pack.values()]
    work += lone
    prog = Progress("pull", sum(sum(e.size for e in w[1]) if isinstance(w, tuple) else w.size for w in work))

    def one(w: tuple[Descriptor, list[Entry]] | Descriptor) -> None:
        if isinstance(w, Descriptor):
            path = landing.tmp_path()
            reg.fetch_blob(w.digest, w.size, path)  # size and digest verified while streaming
            counter.add(w.size)
            landing.publish(path, w.digest, replace=replace)
            prog.add(w.size)
        else:
            writes: list[Future[None]] = []
            batch: list[tuple[str, bytes]] = []
            held = 0

            def flush() -> None:
                nonlocal batch, held
                if batch:
                    writes.append(landing.put_many_async(batch, jobs=jobs, replace=replace))
                    batch, held = [], 0

            def sink(e: Entry, data: bytes) -> None:
                nonlocal held
                batch.append((e.digest, data))
                held += len(data)
                if len(batch) >= WRITE_BATCH or held >= WRITE_BATCH_BYTES:
                    flush()
                prog.add(len(data))

            fetch_entries(reg, w[0], w[1], sink, counter)
            flush()
            wait(writes)  # the pack is in the store (errors surface in drain)
        crashpoint("pull-after-pack")

    work.sort(key=lambda w: -(w.size if isinstance(w, Descriptor) else sum(e.stored for e in w[1])))
    try:
        run_all(work, one, jobs=jobs, abort=reg.abort)
    except BaseException:
        with contextlib.suppress(Exception):
            landing.drain()
        raise
    finally:
        prog.done()
    landing.drain()


def manifest_bytes(
    store: Store,
    reg: Registry,
    first: Descriptor,
    parts: list[Descriptor],
    tmp_dir: str,
    counter: Counter,
    *,
    jobs: int = 4,
    previous: str | None = None,
) -> bytes:
    """The continuity manifest's verified bytes: from the store when it has them, else downloaded
    (whole, or its ``parts`` put together: castore.remote.manifest_parts; the parts of ``previous``, a
    catalog name's manifest, e.g. the tag's last pull, are taken from the store)."""
    digest, size = first.digest, first.size
    if store.blob_file_ok(digest, size) and store.has_blob(digest):
        return store.read_blob(digest)
    if parts:
        old = store.get_tag(previous) if previous else None
        have = parts_by_digest(store.read_blob(old)) if old and store.has_blob(old) else None
        return fetch_parts(reg, first, parts, tmp_dir, counter, jobs=jobs, have=have)
    path = os.path.join(tmp_dir, "manifest-" + hex_of(digest))
    reg.fetch_blob(digest, size, path)  # size and digest verified while streaming
    counter.add(size)
    with open(path, "rb") as f:
        data = f.read(size + 1)
    os.unlink(path)
    if len(data) != size or hash_bytes(data) != digest:
        raise IntegrityError(f"continuity manifest {digest} changed on disk while pulling")
    return data
