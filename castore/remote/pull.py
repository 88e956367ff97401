"""pull: copy a continuity tree from an OCI registry into the store.

Nothing the registry sends is trusted. Order: GET the OCI manifest (bounded;
its digest checked when pulled by digest) -> check it is a continuity tree ->
lease -> continuity manifest blob (digest checked, then its entry and field
counts bounded before parsing, then validated) -> the layer list must be exactly the manifest's references, with
its sizes -> missing blobs streamed into the lease's tmp dir, size and digest
checked as they arrive -> ``commit_manifest`` (blobs durable, index rows,
manifest, catalog entry), the same write order as ingest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from castore.digest import hash_bytes, hex_of
from castore.errors import IntegrityError
from castore.faults import crashpoint
from castore.ingest import commit_manifest
from castore.manifest import codec, validate
from castore.manifest.bounds import check_parse_cost
from castore.remote.client import Registry
from castore.remote.oci import MAX_OCI_MANIFEST, blob_sizes, check_layers, parse_oci_manifest
from castore.remote.ref import Reference
from castore.remote.signatures import fetch_signatures, store_signatures
from castore.remote.transfer import Progress, run_all
from castore.sign.policy import Policy
from castore.store import Store, check_name, manifest_refs
from castore.store.signatures import enforce


@dataclass(frozen=True, slots=True)
class PullResult:
    """What a pull did: the manifest digest now in the store, the OCI digest, the transfer counts."""

    manifest_digest: str
    oci_digest: str
    downloaded: int
    present: int
    downloaded_bytes: int
    signatures: int = 0


def pull(store: Store, ref: Reference, *, name: str | None = None, jobs: int = 4, username: str | None = None,
         password: str | None = None, policy: Policy | None = None) -> PullResult:
    """Pull ``ref`` into ``store`` and record it under ``name`` (if given).

    Raises IntegrityError (exit 4) for any answer that contradicts itself or
    the digests (nothing is recorded then), InvalidManifest (exit 3) for a
    manifest that breaks the rules, RemoteError/NotFound (exit 1) otherwise.
    """
    if name is not None:
        check_name(name)
    with Registry(ref, username=username, password=password, jobs=jobs) as reg:
        raw, _ctype = reg.get_manifest(ref.reference, MAX_OCI_MANIFEST)
        oci_digest = hash_bytes(raw)
        if ref.digest and oci_digest != ref.digest:
            raise IntegrityError(f"registry {ref.registry}: manifest {ref.digest} has digest {oci_digest}")
        first, blobs = parse_oci_manifest(raw, source=str(ref))
        with store.lease() as lease:
            os.makedirs(lease.tmp_dir, mode=0o700)
            data = _manifest_bytes(store, reg, first.digest, first.size, lease.tmp_dir)
            check_parse_cost(data, source=f"{ref} manifest {first.digest}")  # before any parse allocates
            manifest = validate(codec.loads(data, source=f"{ref} manifest {first.digest}"))
            sigs = fetch_signatures(reg, oci_digest, lease.tmp_dir)
            if policy is not None:  # before any blob is fetched: a refused tree writes nothing
                enforce(store, policy, first.digest, [str(ref)] + ([name] if name else []), what=str(ref),
                        message=data, extra=[s.raw for s in sigs])
            refs = manifest_refs(manifest)
            sizes = check_layers(refs, blob_sizes(manifest), blobs, source=str(ref))
            missing = sorted(store.missing_blobs(refs))
            prog = Progress("pull", len(missing))

            def fetch(digests: list[str], suffix: str) -> list[tuple[str, str]]:
                staged = [(os.path.join(lease.tmp_dir, hex_of(d) + suffix), d) for d in digests]

                def one(item: tuple[str, str]) -> None:
                    reg.fetch_blob(item[1], sizes[item[1]], item[0])
                    prog.add(sizes[item[1]])

                try:
                    run_all(staged, one, jobs=jobs, abort=reg.abort)
                finally:
                    prog.done()
                return staged

            staged = fetch(missing, "")
            crashpoint("pull-after-download")
            # redo: content that was in the store when we looked but that gc removed before the commit.
            mdigest = commit_manifest(store, manifest, staged, sizes, name=name,
                                      redo=lambda gone: fetch(sorted(gone), ".again"), sync_fd=lease.fd)
            signed = store_signatures(store, mdigest, data, first.digest, sigs)
    return PullResult(mdigest, oci_digest, len(missing), len(refs) - len(missing),
                      sum(sizes[d] for d in missing), signed)


def _manifest_bytes(store: Store, reg: Registry, digest: str, size: int, tmp_dir: str) -> bytes:
    """The continuity manifest's verified bytes: from the store when it has them, else downloaded."""
    if store.blob_file_ok(digest, size) and store.has_blob(digest):
        return store.read_blob(digest)
    path = os.path.join(tmp_dir, "manifest-" + hex_of(digest))
    reg.fetch_blob(digest, size, path)  # size and digest verified while streaming
    with open(path, "rb") as f:
        data = f.read(size + 1)
    os.unlink(path)
    if len(data) != size or hash_bytes(data) != digest:
        raise IntegrityError(f"continuity manifest {digest} changed on disk while pulling")
    return data
