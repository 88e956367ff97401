"""push --format image: a tree as a one-layer OCI image that podman, skopeo and docker accept.

The layer is the tree's deterministic ``export`` tar (gzip with mtime 0, or uncompressed),
made in the lease's tmp dir; the config carries ``rootfs.diff_ids`` (the digest of the
uncompressed tar), the host platform and no timestamps, so the same tree always gives
the same image digest. Blobs the registry has are not sent again; the manifest is PUT
last, under the tag.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass

from castore.digest import hash_bytes
from castore.errors import IntegrityError
from castore.manifest import Manifest
from castore.remote.client import Access, Registry
from castore.remote.image import OCI_CONFIG, host_platform
from castore.remote.oci import OCI_MANIFEST
from castore.remote.ref import Reference
from castore.store import Store
from castore.tar.exporter import export_tar

LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
PIECE = 1 << 20


@dataclass(frozen=True, slots=True)
class ImagePushResult:
    oci_digest: str
    layer_digest: str
    diff_id: str
    uploaded: int
    uploaded_bytes: int


def _file_digest(path: str, *, gunzip: bool = False) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with gzip.open(path, "rb") if gunzip else open(path, "rb") as f:
        while piece := f.read(PIECE):
            h.update(piece)
            n += len(piece)
    return "sha256:" + h.hexdigest(), n


def image_config(diff_id: str) -> bytes:
    p = host_platform()
    doc: dict[str, object] = {
        "architecture": p.arch,
        "os": p.os,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    if p.variant:
        doc["variant"] = p.variant
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def image_manifest(config: bytes, layer_digest: str, layer_size: int, compress: bool) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": hash_bytes(config), "size": len(config)},
        "layers": [
            {"mediaType": LAYER_TAR + ("+gzip" if compress else ""), "digest": layer_digest, "size": layer_size}
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def push_image(
    store: Store,
    manifest: Manifest,
    ref: Reference,
    *,
    manifest_digest: str | None = None,
    compress: bool = True,
    jobs: int = 4,
    access: Access | None = None,
) -> ImagePushResult:
    """Export ``manifest`` as a layer and push it to ``ref``'s tag as a one-layer OCI image."""
    with store.lease([manifest_digest] if manifest_digest else []) as lease:
        os.makedirs(lease.tmp_dir, mode=0o700)
        layer = os.path.join(lease.tmp_dir, "layer.tar" + (".gz" if compress else ""))
        export_tar(
            store,
            manifest,
            layer,
            compress="gzip" if compress else None,
            whiteouts="oci",
            manifest_digest=manifest_digest,
        )
        layer_digest, layer_size = _file_digest(layer)
        diff_id = _file_digest(layer, gunzip=True)[0] if compress else layer_digest
        config = image_config(diff_id)
        oci = image_manifest(config, layer_digest, layer_size, compress)
        sent: list[int] = []
        with Registry(ref, push=True, jobs=jobs, access=access) as reg:
            if not reg.has_blob(hash_bytes(config)):
                reg.upload_blob(hash_bytes(config), len(config), config)
                sent.append(len(config))
            if not reg.has_blob(layer_digest):
                reg.upload_blob(layer_digest, layer_size, lambda: os.open(layer, os.O_RDONLY | os.O_CLOEXEC))
                sent.append(layer_size)
            reported = reg.put_manifest(ref.tag, oci)
    oci_digest = hash_bytes(oci)
    if reported and reported != oci_digest:
        raise IntegrityError(f"registry {ref.registry} stored the manifest as {reported[:80]}, expected {oci_digest}")
    return ImagePushResult(oci_digest, layer_digest, diff_id, len(sent), sum(sent))
