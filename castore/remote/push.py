"""push: copy a manifest and the blobs it references to an OCI registry, in packs.

Order: lease on the manifest (gc keeps its blobs while we read them) -> the
indexes of the artifacts already in the repository (the tag we overwrite,
every ``bases`` reference) -> a plan (castore.remote.packer: reused packs,
new packs, lone blobs) -> each new pack is built in memory from verified
store blobs, deterministically, then HEAD and uploaded if missing (a re-run
of a killed push rebuilds the same packs and skips what arrived) -> lone
blobs, the continuity manifest, the config -> PUT the OCI manifest under the
tag, last, so a tag never names an incomplete artifact.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from castore.digest import hash_bytes
from castore.errors import BlobNotFound, IntegrityError, ResourceLimit
from castore.faults import crashpoint
from castore.manifest import Manifest, codec
from castore.remote.client import Registry
from castore.remote.oci import (
    CONFIG_DIGEST,
    CONFIG_JSON,
    MAX_CONTINUITY_MANIFEST,
    MAX_OCI_MANIFEST,
    Descriptor,
    blob_sizes,
    build_oci_manifest,
)
from castore.remote.packbase import load_bases
from castore.remote.packer import PACK_TARGET, blob_order, build_pack, make_plan
from castore.remote.ref import Reference
from castore.remote.transfer import Progress, run_all
from castore.store import Store, manifest_refs

MAX_PACK_MEMORY = 160 << 20  # packs being built or sent at once (each held twice at worst), in bytes


@dataclass(frozen=True, slots=True)
class PushResult:
    """What a push did: the OCI manifest digest (for ``REPO@DIGEST``) and the transfer counts."""

    oci_digest: str
    manifest_digest: str
    uploaded: int
    skipped: int
    uploaded_bytes: int
    packs_new: int = 0
    packs_reused: int = 0
    oci_manifest_size: int = 0


def push(store: Store, manifest: Manifest, ref: Reference, *, manifest_digest: str | None = None,
         jobs: int = 4, username: str | None = None, password: str | None = None,
         bases: Sequence[Reference] = (), pack_target: int = PACK_TARGET) -> PushResult:
    """Push ``manifest`` (stored as ``manifest_digest``, or given by file) and its blobs to ``ref``'s tag.

    ``bases``: other artifacts of the repository whose packs may be reused
    (the tag being overwritten always is). Raises BlobNotFound/IntegrityError
    (exit 4) for missing or corrupt local blobs, RemoteError (exit 1) when the
    registry refuses or cannot be reached, NotFound for a missing base.
    """
    data = store.read_blob(manifest_digest) if manifest_digest else codec.dumps(manifest)
    mdigest = hash_bytes(data)
    if len(data) > MAX_CONTINUITY_MANIFEST:
        raise ResourceLimit(f"{mdigest}: the manifest is {len(data)} bytes, more than a pull accepts "
                            f"({MAX_CONTINUITY_MANIFEST})")
    refs = manifest_refs(manifest)
    sizes = blob_sizes(manifest)
    with store.lease(manifests=[mdigest]) as lease:
        os.makedirs(lease.tmp_dir, mode=0o700)
        missing = store.missing_blobs(refs)
        if missing:
            raise BlobNotFound(min(missing), context=mdigest)
        for d in refs - sizes.keys():  # ADS blobs: their size is in the index only
            sizes[d] = store.blob_size(d) or 0
        for d, n in sizes.items():
            if not store.blob_file_ok(d, n):
                raise IntegrityError(f"store blob {d} is missing or not {n} bytes (run fsck)")
        with Registry(ref, username=username, password=password, push=True, jobs=jobs) as reg:
            base = load_bases(reg, ref, bases, lease.tmp_dir)
            plan = make_plan(blob_order(manifest, sizes), base, pack_target)
            sent: list[int] = []  # sizes of the blobs uploaded (list.append is atomic)
            skipped: list[int] = []
            prog = Progress("push", len(plan.new) + len(plan.solo) + 2)

            def send(d: str, n: int, source: bytes | bytearray | Callable[[], int]) -> None:
                if reg.has_blob(d):
                    skipped.append(n)
                else:
                    reg.upload_blob(d, n, source)  # type: ignore[arg-type]
                    sent.append(n)

            built: list[tuple[int, Descriptor, Descriptor]] = []

            def one_pack(i: int) -> None:
                bp = build_pack(store, plan.new[i], jobs=min(jobs, 4))
                send(bp.pack.digest, bp.pack.size, bp.data)
                send(bp.index.digest, bp.index.size, bp.index_data)
                built.append((i, bp.pack, bp.index))
                crashpoint("push-after-pack")
                prog.add(bp.pack.size)

            def one_solo(item: tuple[str, int]) -> None:
                send(item[0], item[1], _opener(store, item[0]))
                prog.add(item[1])

            try:
                in_flight = max(1, min(jobs, MAX_PACK_MEMORY // (2 * max(pack_target, 1))))
                run_all(range(len(plan.new)), one_pack, jobs=in_flight, abort=reg.abort)
                run_all(plan.solo, one_solo, jobs=jobs, abort=reg.abort)
                send(CONFIG_DIGEST, len(CONFIG_JSON), CONFIG_JSON)
                send(mdigest, len(data), data)
            finally:
                prog.done()
            pairs = [(b.pack, b.index) for b in plan.reused] + [(p, x) for _, p, x in sorted(built, key=lambda t: t[0])]
            oci = build_oci_manifest(mdigest, len(data), plan.solo, pairs)
            if len(oci) > MAX_OCI_MANIFEST:
                raise ResourceLimit(f"{mdigest}: the OCI manifest would be {len(oci)} bytes "
                                    f"(registries take {MAX_OCI_MANIFEST})")
            reported = reg.put_manifest(ref.tag, oci)
    oci_digest = hash_bytes(oci)
    if reported and reported != oci_digest:
        raise IntegrityError(f"registry {ref.registry} stored the manifest as {reported[:80]}, expected {oci_digest}")
    return PushResult(oci_digest, mdigest, len(sent), len(skipped), sum(sent), len(plan.new), len(plan.reused),
                      len(oci))


def _opener(store: Store, digest: str) -> Callable[[], int]:
    def opener() -> int:
        return store.open_blob(digest)
    return opener

