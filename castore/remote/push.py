"""push: copy a manifest and every blob it references to an OCI registry.

Order: lease on the manifest (gc keeps its blobs while we read them) ->
HEAD each blob, upload the missing ones (their bytes re-hashed on the way
out) -> PUT the OCI manifest under the tag, last, so a tag never names an
incomplete artifact.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from castore.digest import hash_bytes
from castore.errors import BlobNotFound, IntegrityError, ResourceLimit
from castore.manifest import Manifest, codec
from castore.manifest.model import Chunk
from castore.remote.client import Registry
from castore.remote.oci import (
    EMPTY_DIGEST,
    EMPTY_JSON,
    MAX_CONTINUITY_MANIFEST,
    MAX_OCI_MANIFEST,
    blob_sizes,
    build_oci_manifest,
)
from castore.remote.ref import Reference
from castore.remote.signatures import push_signatures
from castore.remote.transfer import Progress, run_all
from castore.store import Store, manifest_refs


@dataclass(frozen=True, slots=True)
class PushResult:
    """What a push did: the OCI manifest digest (for ``REPO@DIGEST``) and the transfer counts."""

    oci_digest: str
    manifest_digest: str
    uploaded: int
    skipped: int
    uploaded_bytes: int
    signatures: int = 0


def push(store: Store, manifest: Manifest, ref: Reference, *, manifest_digest: str | None = None,
         jobs: int = 4, username: str | None = None, password: str | None = None) -> PushResult:
    """Push ``manifest`` (stored as ``manifest_digest``, or given by file) and its blobs to ``ref``'s tag.

    Raises BlobNotFound/IntegrityError (exit 4) for missing or corrupt local
    blobs, RemoteError (exit 1) when the registry refuses or cannot be reached.
    """
    data = store.read_blob(manifest_digest) if manifest_digest else codec.dumps(manifest)
    mdigest = hash_bytes(data)
    refs = manifest_refs(manifest)
    sizes = blob_sizes(manifest)
    _fitting_oci_manifest(mdigest, len(data), {d: sizes.get(d, 0) for d in refs})  # before any IO
    # A file the store holds as chunks only (a manifest without chunk lists) is pushed as the
    # whole-file blob the manifest names, put together from its chunks and verified.
    content = store.content_refs(manifest)
    with store.lease(manifests=[manifest_digest] if manifest_digest else sorted(content)) as lease:
        missing = store.missing_blobs(content)
        if missing:
            raise BlobNotFound(min(missing), context=mdigest)
        assembled = store.chunk_lists(refs - content)
        for d in refs - sizes.keys():  # ADS blobs: their size is in the index only
            sizes[d] = store.blob_size(d) or 0
        for d, n in [*sizes.items(), *((c.digest, c.end - c.begin) for cs in assembled.values() for c in cs)]:
            if d not in assembled and not store.blob_file_ok(d, n):
                raise IntegrityError(f"store blob {d} is missing or not {n} bytes (run fsck)")
        oci = _fitting_oci_manifest(mdigest, len(data), sizes)
        uploads: list[tuple[str, int, bytes | None]] = [(EMPTY_DIGEST, len(EMPTY_JSON), EMPTY_JSON),
                                                        (mdigest, len(data), data)]
        uploads += [(d, n, None) for d, n in sorted(sizes.items())]
        done: list[int] = []  # sizes of the blobs uploaded (list.append is atomic)
        with Registry(ref, username=username, password=password, push=True, jobs=jobs) as reg:
            prog = Progress("push", len(uploads))

            def one(item: tuple[str, int, bytes | None]) -> None:
                d, n, inline = item
                if not reg.has_blob(d):
                    opener = (_assembler(store, d, assembled[d], lease.tmp_dir) if d in assembled
                              else _opener(store, d))
                    reg.upload_blob(d, n, inline if inline is not None else opener)
                    done.append(n)
                prog.add(n)

            try:
                run_all(uploads, one, jobs=jobs, abort=reg.abort)
            finally:
                prog.done()
            reported = reg.put_manifest(ref.tag, oci)
            oci_digest = hash_bytes(oci)
            if reported and reported != oci_digest:
                raise IntegrityError(f"registry {ref.registry} stored the manifest as {reported[:80]}, "
                                     f"expected {oci_digest}")
            signed = push_signatures(reg, store, mdigest, oci_digest, len(oci))  # after the tree: never dangling
    return PushResult(oci_digest, mdigest, len(done), len(uploads) - len(done), sum(done), signed)


def _fitting_oci_manifest(mdigest: str, size: int, sizes: dict[str, int]) -> bytes:
    """The OCI manifest; ResourceLimit (exit 6) when pull, ours or a registry keeping distribution's
    4 MiB limit, would refuse it, so that nothing is uploaded in vain."""
    oci = build_oci_manifest(mdigest, size, sizes.items())
    if len(oci) > MAX_OCI_MANIFEST or size > MAX_CONTINUITY_MANIFEST:
        raise ResourceLimit(f"{mdigest}: too large for a registry: {len(sizes)} blobs make an OCI manifest of "
                            f"{len(oci)} bytes (limit {MAX_OCI_MANIFEST}); the manifest is {size} bytes "
                            f"(limit {MAX_CONTINUITY_MANIFEST})")
    return oci


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
                    view = view[os.write(fd, view):]
            if "sha256:" + whole.hexdigest() != digest:
                raise IntegrityError(f"chunks recorded for {digest} do not add up to it (run fsck)")
            os.lseek(fd, 0, os.SEEK_SET)
            return fd
        except BaseException:
            os.close(fd)
            raise
    return opener
