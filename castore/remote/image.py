"""Pull an ordinary container image (OCI or Docker schema 2, or an index of them) as one flattened tree.

The image manifest is chosen from an index by platform (``--platform OS/ARCH[/VARIANT]``,
default the host's), its config is checked (``rootfs.diff_ids`` one per layer), every
layer blob is downloaded into the lease's tmp dir (in parallel, digest and size verified
as it streams), and read by the tar importer with OCI whiteouts (plain, gzip or zstd,
detected from the bytes) in a worker process as soon as it is complete
(``castore.remote.image_workers``: layers parse in parallel): its files are hashed, chunked and staged,
deduplicating against the store (a file the store has is pinned, never written again).
``castore.remote.layers`` flattens the layer manifests; the result is committed like any
ingest and recorded under the name given.

Where blobs come from is a ``Source``: a registry (``castore.remote.client.Registry``)
or an OCI image layout on disk (``castore.remote.ocilayout.Layout``).
"""

from __future__ import annotations

import json
import os
import platform as _platform
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from castore.bulkmode import bulk
from castore.digest import hash_bytes, hex_of
from castore.errors import IntegrityError, NotFound, UnsafeInput
from castore.faults import crashpoint
from castore.ingest import commit_manifest
from castore.remote.image_workers import LayerWorkers, Parsed
from castore.remote.layers import Flattener
from castore.remote.oci import OCI_INDEX, OCI_MANIFEST, Descriptor
from castore.remote.transfer import Progress
from castore.store import Store, check_name, manifest_refs

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
ACCEPT = f"{OCI_MANIFEST}, {DOCKER_MANIFEST}, {OCI_INDEX}, {DOCKER_LIST}"
MAX_MANIFEST = 4 << 20
MAX_CONFIG = 8 << 20
MAX_LAYERS = 512


class Source(Protocol):
    abort: threading.Event

    def get_manifest(self, reference: str, limit: int, accept: str | None = None) -> tuple[bytes, str]: ...

    def fetch_blob(self, digest: str, size: int, path: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    arch: str
    variant: str = ""

    def __str__(self) -> str:
        return f"{self.os}/{self.arch}" + (f"/{self.variant}" if self.variant else "")


_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i686": "386",
    "i386": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def host_platform() -> Platform:
    m = _platform.machine().lower()
    return Platform("linux", _ARCH.get(m, m), {"armv7l": "v7", "armv6l": "v6"}.get(m, ""))


def parse_platform(text: str) -> Platform:
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(p and p.isprintable() and len(p) < 64 for p in parts):
        raise UnsafeInput(f"invalid --platform {text[:80]!r}: expected OS/ARCH[/VARIANT], e.g. linux/arm64")
    return Platform(*parts)


def _json(raw: bytes, what: str) -> dict[str, object]:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise IntegrityError(f"{what}: not JSON") from None
    if not isinstance(doc, dict):
        raise IntegrityError(f"{what}: not a JSON object")
    return doc


def kind_of(raw: bytes) -> str | None:
    """ "index" or "image" for an ordinary image manifest (not a continuity tree); None otherwise."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("artifactType") is not None:
        return None
    mt = doc.get("mediaType")
    if mt in (OCI_INDEX, DOCKER_LIST) or (mt is None and isinstance(doc.get("manifests"), list)):
        return "index"
    config = doc.get("config")
    if (
        mt in (OCI_MANIFEST, DOCKER_MANIFEST, None)
        and isinstance(config, dict)
        and config.get("mediaType") in (OCI_CONFIG, DOCKER_CONFIG)
    ):
        return "image"
    return None


def _descriptor(obj: object, what: str) -> Descriptor:
    from castore.remote.oci import _descriptor as parse

    return parse(obj, what, "image")


def choose(raw: bytes, want: Platform, what: str) -> Descriptor:
    """The descriptor of the image for ``want`` in an index; NotFound listing what the index has."""
    doc = _json(raw, what)
    items = doc.get("manifests")
    if not isinstance(items, list):
        raise IntegrityError(f"{what}: index without manifests")
    have = []
    for i, item in enumerate(items):
        d = _descriptor(item, f"{what}: manifests[{i}]")
        plat = item.get("platform") if isinstance(item, dict) else None
        if not isinstance(plat, dict):
            continue
        p = Platform(str(plat.get("os", "")), str(plat.get("architecture", "")), str(plat.get("variant", "") or ""))
        have.append(str(p))
        if (
            p.os == want.os
            and p.arch == want.arch
            and (not want.variant or p.variant == want.variant)
            and d.media_type in (OCI_MANIFEST, DOCKER_MANIFEST)
        ):
            return d
    raise NotFound(
        f"{what}: no image for {want} (the index has: {', '.join(have[:20]) or 'none'}); "
        "choose one with --platform OS/ARCH[/VARIANT]"
    )


@dataclass(frozen=True, slots=True)
class Image:
    config: Descriptor
    layers: tuple[Descriptor, ...]


def parse_image(raw: bytes, what: str) -> Image:
    doc = _json(raw, what)
    if doc.get("schemaVersion") != 2:
        raise IntegrityError(f"{what}: not a schema 2 image manifest")
    config = _descriptor(doc.get("config"), f"{what}: config")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise IntegrityError(f"{what}: image manifest without layers")
    if len(layers) > MAX_LAYERS:
        raise UnsafeInput(f"{what}: {len(layers)} layers (limit {MAX_LAYERS})")
    descs = tuple(_descriptor(x, f"{what}: layer {i}") for i, x in enumerate(layers))
    for i, d in enumerate(descs):
        if d.media_type not in LAYER_TYPES:
            raise UnsafeInput(
                f"{what}: layer {i} has media type {d.media_type[:100]!r}, not a tar layer (tar, tar+gzip or tar+zstd)"
            )
    if config.size > MAX_CONFIG:
        raise IntegrityError(f"{what}: config of {config.size} bytes (limit {MAX_CONFIG})")
    return Image(config, descs)


def _small_blob(src: Source, d: Descriptor, tmp_dir: str) -> bytes:
    path = os.path.join(tmp_dir, "small-" + hex_of(d.digest))
    src.fetch_blob(d.digest, d.size, path)  # size and digest verified
    try:
        with open(path, "rb") as f:
            return f.read(d.size + 1)
    finally:
        os.unlink(path)


def _check_config(raw: bytes, img: Image, what: str) -> None:
    doc = _json(raw, f"{what}: config")
    rootfs = doc.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list) or len(ids) != len(img.layers):
        raise IntegrityError(
            f"{what}: config rootfs.diff_ids lists {len(ids) if isinstance(ids, list) else 'no'} "
            f"layers, the manifest {len(img.layers)}"
        )


def resolve(src: Source, raw: bytes, what: str, platform: Platform | None) -> tuple[bytes, str]:
    """The image manifest (choosing from an index) and its digest."""
    if kind_of(raw) == "index":
        d = choose(raw, platform or host_platform(), what)
        if d.size > MAX_MANIFEST:
            raise IntegrityError(f"{what}: image manifest of {d.size} bytes (limit {MAX_MANIFEST})")
        raw, _ = src.get_manifest(d.digest, MAX_MANIFEST, ACCEPT)
        if hash_bytes(raw) != d.digest or len(raw) != d.size:
            raise IntegrityError(f"{what}: manifest {d.digest} does not match its descriptor")
    if kind_of(raw) != "image":
        raise IntegrityError(f"{what}: neither a continuity tree nor an image manifest")
    return raw, hash_bytes(raw)


def _workers(img: Image) -> int:
    """Worker processes for the layers: one per core (at most 2, as the tar importer), none for one core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cores < 2 else min(2, cores, len(img.layers))


def _load_layers(
    src: Source, img: Image, tmp_dir: str, workers: LayerWorkers, jobs: int
) -> tuple[Flattener, dict[str, str], dict[str, int], set[str]]:
    """Download every layer (``jobs`` threads, digests verified as they stream), hand each to a worker
    as soon as it is complete, and flatten the parsed layers bottom first."""
    prog = Progress("pull", sum(d.size for d in img.layers))
    flat = Flattener()
    staged: dict[str, str] = {}
    pinned: set[str] = set()
    sizes: dict[str, int] = {}

    def load(i: int, d: Descriptor) -> Future[Parsed]:
        path = os.path.join(tmp_dir, f"layer-{i}")
        src.fetch_blob(d.digest, d.size, path)
        prog.add(d.size)
        return workers.submit(path)

    pool = ThreadPoolExecutor(max_workers=max(1, min(jobs, len(img.layers) or 1)), thread_name_prefix="layer")
    try:
        futures = [pool.submit(load, i, d) for i, d in enumerate(img.layers)]
        for fut in futures:
            layer, st, sz, _inos, pins = fut.result().result()
            flat.add_layer(layer)
            sizes.update(sz)
            for tmp, d in st:
                if d not in staged:
                    staged[d] = tmp
                    if d in pins:
                        pinned.add(d)
    except BaseException:
        src.abort.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        prog.done()
    return flat, staged, sizes, pinned


@bulk
def pull_image(
    store: Store,
    src: Source,
    raw: bytes,
    what: str,
    *,
    name: str | None,
    jobs: int = 4,
    platform: Platform | None = None,
) -> tuple[str, str, int, int]:
    """Flatten the image ``raw`` (a manifest or an index) from ``src`` into ``store``.

    Returns (manifest digest, image manifest digest, layers downloaded, their bytes).
    """
    if name is not None:
        check_name(name)
    raw, image_digest = resolve(src, raw, what, platform)
    img = parse_image(raw, what)
    with store.lease() as lease:
        os.makedirs(lease.tmp_dir, mode=0o700)
        # forked before the config download or any thread: a worker process per core reads layers
        workers = LayerWorkers(lease.tmp_dir, store.blob_root, store.chunking, _workers(img))
        failed = True
        try:
            _check_config(_small_blob(src, img.config, lease.tmp_dir), img, what)
            flat, staged, sizes, pinned = _load_layers(src, img, lease.tmp_dir, workers, jobs)
            failed = False
        finally:
            workers.close(failed=failed)
        manifest = flat.manifest()
        refs = manifest_refs(manifest)
        crashpoint("image-before-commit")
        mdigest = commit_manifest(
            store,
            manifest,
            [(t, d) for d, t in staged.items() if d in refs],
            {d: n for d, n in sizes.items() if d in refs},
            name=name,
            sync_fd=lease.fd,
            pinned=pinned & refs,
        )
    return mdigest, image_digest, len(img.layers), sum(d.size for d in img.layers)
