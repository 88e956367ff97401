"""The shared commit path: staged blobs durable and visible, then the manifest and its rows in one transaction.

Every verb that records a manifest (``ingest``, ``ingest --tar``, ``pull``)
ends here. Write order (docs/design.md): blob bytes durable -> index rows ->
manifest blob durable -> manifest rows and catalog entry in one LMDB
transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from castore.errors import IntegrityError
from castore.faults import crashpoint
from castore.store import treecache
from castore.store.meta import BLOB_ROW, KIND_CHUNK, KIND_MANIFEST, KIND_RAW, Txn, dkey

if TYPE_CHECKING:
    from castore.manifest.model import Manifest
    from castore.store import Store


def commit_manifest(
    store: Store,
    manifest: Manifest,
    staged: list[tuple[str, str]],
    sizes: dict[str, int],
    *,
    name: str | None = None,
    redo: Callable[[set[str]], list[tuple[str, str]]] | None = None,
    cache_rows: Iterable[tuple[bytes, bytes]] = (),
    epoch: tuple[bytes, bool] | None = None,
    validated: bool = False,
    synced: Callable[[], None] | None = None,
    fingerprint: tuple[bytes, bytes] | None = None,
    sync_fd: int,
    pinned: set[str] | frozenset[str] = frozenset(),
) -> str:
    """Make staged blobs durable and visible, store the manifest, record it (and ``name``).

    ``staged`` are (temp file, digest) pairs written under a lease's tmp dir;
    ``sizes`` maps every content digest the manifest references to its size.
    ``redo(gone)`` is called, under the lock, when content the manifest relies
    on but did not stage has vanished (gc ran meanwhile); it returns freshly
    staged pairs. ``epoch`` is Store.gc_epoch() taken before anything was
    published: if no gc deleted anything since, the blobs this ingest
    published need no existence check (None: always check).
    ``validated`` skips the validator for a manifest that is valid by
    construction (ingest DIR: paths from readdir, digests and chunks computed
    here); input from outside (tars, registries, files) is always validated.
    ``fingerprint``: (tree key, fingerprint) of the ingested tree, recorded
    with the manifest digest in the same transaction (ingest's shortcut).
    ``sync_fd``: the lease's lock file, opened before any blob was written
    (Store.install_staged: syncfs must report every writeback error since).
    ``pinned``: digests whose staged entries are pins, hardlinks to blob files
    found by name (tar import): put back if a gc removed the name meanwhile, and
    re-hashed unless indexed, as content found by name always is.
    Locking: shared. Returns the manifest digest. One synced LMDB commit.
    """
    from castore.manifest import codec, validate  # here: an unchanged tree's ingest never encodes one

    if not validated:
        validate(manifest)
    data = codec.dumps(manifest)
    from castore.store import chunk_map_rows, manifest_refs

    refs = manifest_refs(manifest)
    mdigest = "sha256:" + hashlib.sha256(data).hexdigest()
    # Everything the transaction puts is prepared before waiting for the blobs'
    # syncfs (on `many` the work left after the disk was done fell from 0.52 s to 0.26 s).
    chunk_digests = {c.digest for r in manifest.files() for c in r.chunks}
    chunk_rows = chunk_map_rows(manifest)
    unchunked = {r.digest for r in manifest.files() if not r.chunks and r.size}
    staged_digests = {d for _, d in staged} - pinned
    cache = sorted(cache_rows)
    with store.shared_lock():
        # Reading the index needs no flushed blob; under the shared lock no gc changes it meanwhile.
        missing = store.missing_blobs(refs)
        # A whole-file digest served by chunks the index holds (a manifest without chunk lists of
        # content stored chunked): nothing to stage, gc keeps the chunks through the chunk map.
        served = {d for d in missing & unchunked if d not in staged_digests}
        missing -= _served_by_chunks(store, served) if served else set()
        if pinned:  # a pin of an indexed blob is not needed: no gc frees it now (the lease tmp dir goes)
            staged = [(t, d) for t, d in staged if d not in pinned or d in missing]
        # In key order (putmulti): each put lands next to the last one, 30% faster than scattered puts.
        blob_rows = sorted(
            (dkey(d), BLOB_ROW.pack(sizes.get(d, 0), KIND_CHUNK if d in chunk_digests else KIND_RAW)) for d in missing
        )
        blob_rows.append((dkey(mdigest), BLOB_ROW.pack(len(data), KIND_MANIFEST)))
        # The marker that tells a rebuilt index this blob is a manifest: made durable by install_staged's
        # last syncfs (after the renames), or here when nothing was staged.
        store.mark_manifest(mdigest, "+" if name is not None else "", name or "", sync=not staged)
        store.install_staged(staged, synced, sync_fd=sync_fd)
        just_staged = {d for _, d in staged} - pinned
        # What we wrote must still be there (a gc may have swept the same name meanwhile);
        # what we found by name but is not indexed (a crash's orphan) is trusted only once re-hashed.
        gc_ran = epoch is None or epoch[1] or store.gc_epoch() != epoch
        gone = {d for d in missing & just_staged if gc_ran and not store.blob_file_ok(d, sizes.get(d, -1))}
        gone |= {d for d in missing - just_staged if not store.blob_file_verified(d, sizes.get(d, -1))}
        if gone and redo is not None:
            store.install_staged(redo(gone), sync_fd=sync_fd)
            gone = {d for d in gone if not store.blob_file_verified(d, sizes.get(d, -1))}
        if gone:
            raise IntegrityError(f"content {sorted(gone)[0]} is neither staged nor in the store")
        crashpoint("ingest-before-manifest")
        store.write_blob_file(data)  # durable before the transaction that indexes it
        crashpoint("ingest-after-manifest")

        def txn_fn(t: Txn) -> None:
            t.cursor(db=store.meta.db("blobs")).putmulti(blob_rows)
            store.record_manifest(t, mdigest, refs, manifest)
            t.cursor(db=store.meta.db("chunkmap")).putmulti(chunk_rows)  # whole file -> chunks (docs/design.md)
            t.cursor(db=store.meta.db("statcache")).putmulti(cache)
            if fingerprint is not None:  # with the index generation of this transaction (treecache.py)
                treecache.record(store.meta, t, fingerprint[0], fingerprint[1], mdigest)
            if name is not None:
                crashpoint("ingest-before-tag")
                store.set_tag(t, name, mdigest, len(data))

        store.meta.write(txn_fn)
        crashpoint("ingest-after-commit")
    return mdigest


def _served_by_chunks(store: Store, digests: set[str]) -> set[str]:
    """The digests of ``digests`` whose recorded chunk list is wholly in the index (and on disk)."""
    found = store.chunk_lists(digests)
    missing = store.missing_blobs({c.digest for cs in found.values() for c in cs})
    return {
        d
        for d, cs in found.items()
        if not any(c.digest in missing or not store.blob_file_ok(c.digest, c.end - c.begin) for c in cs)
    }
