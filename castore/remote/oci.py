"""The OCI image manifest that carries a continuity tree (pure: no IO).

Mapping (docs/remote.md)::

    config  = a minimal image config (CONFIG_JSON)
    layers  = [continuity manifest blob (MANIFEST_MEDIA_TYPE) or its parts (MANIFEST_PART_MEDIA_TYPE),
               (pack, index) pairs, lone blobs sorted by digest (BLOB_MEDIA_TYPE)]
    artifactType = ARTIFACT_TYPE
    annotations  = the whole manifest's digest and size, when it travels in parts

The JSON is written with a fixed key order and no whitespace and carries no
timestamps, so the same tree always gives the same OCI manifest digest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from castore.digest import hash_bytes, is_digest
from castore.errors import IntegrityError
from castore.manifest.model import Manifest, RegularFile

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ARTIFACT_TYPE = "application/vnd.continuity.tree.v1"
MANIFEST_MEDIA_TYPE = "application/vnd.continuity.manifest.v1+protobuf"
BLOB_MEDIA_TYPE = "application/vnd.continuity.blob.v1"
MANIFEST_PART_MEDIA_TYPE = "application/vnd.continuity.manifest.part.v1+protobuf"
MANIFEST_DIGEST_ANNOTATION = "dev.continuity.manifest.digest"
MANIFEST_SIZE_ANNOTATION = "dev.continuity.manifest.size"
MAX_PARTS = 16384  # parts of one manifest (push makes at most ~4,096: 256 MiB in parts of 64 KiB or more)
PACK_MEDIA_TYPE = "application/vnd.continuity.pack.v1"
PACK_INDEX_MEDIA_TYPE = "application/vnd.continuity.pack.index.v1+zstd"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
EMPTY_DIGEST = hash_bytes(EMPTY_JSON)
# The config: a minimal image config rather than the empty descriptor, which skopeo/containers-image
# refuse to inspect ("unsupported image-specific operation on artifact"); "unknown" platform: not runnable.
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
CONFIG_JSON = b'{"architecture":"unknown","os":"unknown","rootfs":{"type":"layers","diff_ids":[]}}'
CONFIG_DIGEST = hash_bytes(CONFIG_JSON)
MAX_OCI_MANIFEST = 4 << 20  # what push writes and pull reads: the size registries take (distribution's limit)
MAX_CONTINUITY_MANIFEST = 256 << 20  # ~2M files; parsing is bounded further by castore.manifest.bounds


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def blob_sizes(m: Manifest) -> dict[str, int]:
    """The size of every file and chunk blob ``m`` references (ADS blobs carry no size in the manifest).

    Raises IntegrityError when two entries give one digest two sizes.
    """
    sizes: dict[str, int] = {}

    def put(d: str, n: int) -> None:
        if sizes.setdefault(d, n) != n:
            raise IntegrityError(f"manifest gives blob {d} two sizes ({sizes[d]} and {n})")

    for r in m.resources:
        if isinstance(r, RegularFile) and r.digest:
            if r.chunks:
                for c in r.chunks:
                    put(c.digest, c.end - c.begin)
            else:
                put(r.digest, r.size)
    return sizes


def build_oci_manifest(
    manifest_digest: str,
    manifest_size: int,
    blobs: Iterable[tuple[str, int]],
    packs: Iterable[tuple[Descriptor, Descriptor]] = (),
    parts: list[Descriptor] | None = None,
) -> bytes:
    """The OCI manifest JSON for a continuity manifest (whole, or in ``parts`` when there are two or
    more), its (pack, index) layer pairs and its lone (digest, size) blobs (the only layers of the first,
    unpacked, format)."""
    split = parts is not None and len(parts) > 1
    layers = list(parts or ()) if split else [Descriptor(MANIFEST_MEDIA_TYPE, manifest_digest, manifest_size)]
    for pack, index in packs:
        layers += [pack, index]
    layers += [Descriptor(BLOB_MEDIA_TYPE, d, n) for d, n in sorted(set(blobs))]
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": CONFIG_DIGEST, "size": len(CONFIG_JSON)},
        "layers": [x.to_json() for x in layers],
    }
    if split:
        doc["annotations"] = {MANIFEST_DIGEST_ANNOTATION: manifest_digest, MANIFEST_SIZE_ANNOTATION: str(manifest_size)}
    return json.dumps(doc, separators=(",", ":")).encode()


def _descriptor(obj: object, where: str, source: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise IntegrityError(f"{source}: {where} is not a descriptor")
    mt, d, n = obj.get("mediaType"), obj.get("digest"), obj.get("size")
    if not isinstance(mt, str) or not isinstance(d, str) or not is_digest(d):
        raise IntegrityError(f"{source}: {where} has no valid mediaType/sha256 digest")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise IntegrityError(f"{source}: {where} has an invalid size")
    return Descriptor(mt, d, n)


@dataclass(frozen=True, slots=True)
class TreeLayers:
    """A continuity tree's OCI manifest, parsed: the whole continuity manifest (``first``), the parts it
    travels in (empty when it is one layer) and the layers after it (packs, indexes, lone blobs)."""

    first: Descriptor
    parts: list[Descriptor]
    layers: list[Descriptor]


def parse_oci_manifest(data: bytes, *, source: str) -> tuple[Descriptor, list[Descriptor]]:
    """(the whole continuity manifest's descriptor, the layers after it): ``parse_tree`` without the parts."""
    t = parse_tree(data, source=source)
    return t.first, t.layers


def _manifest_parts(doc: dict[str, object], descs: list[Descriptor], source: str) -> tuple[Descriptor, int]:
    """The whole manifest a run of part layers makes (from the annotations) and how many parts there are."""
    k = 0
    while k < len(descs) and descs[k].media_type == MANIFEST_PART_MEDIA_TYPE:
        k += 1
    notes = doc.get("annotations")
    notes = notes if isinstance(notes, dict) else {}
    digest, size = notes.get(MANIFEST_DIGEST_ANNOTATION), notes.get(MANIFEST_SIZE_ANNOTATION)
    if not isinstance(digest, str) or not is_digest(digest):
        raise IntegrityError(f"{source}: manifest parts without a valid {MANIFEST_DIGEST_ANNOTATION} annotation")
    if not isinstance(size, str) or not size.isdigit() or len(size) > 12:
        raise IntegrityError(f"{source}: manifest parts without a valid {MANIFEST_SIZE_ANNOTATION} annotation")
    if k > MAX_PARTS:
        raise IntegrityError(f"{source}: the continuity manifest is in {k} parts (limit {MAX_PARTS})")
    if any(p.size == 0 for p in descs[:k]):
        raise IntegrityError(f"{source}: an empty manifest part")
    if sum(p.size for p in descs[:k]) != int(size):
        raise IntegrityError(f"{source}: the manifest parts do not add up to {size} bytes")
    return Descriptor(MANIFEST_MEDIA_TYPE, digest, int(size)), k


def parse_tree(data: bytes, *, source: str) -> TreeLayers:
    """Check an OCI manifest is a continuity tree and split its layers (TreeLayers).

    Raises IntegrityError for anything else (not JSON, another artifact, bad descriptors, parts that do
    not add up to the size their annotation gives).
    """
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise IntegrityError(f"{source}: OCI manifest is not JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise IntegrityError(f"{source}: not an OCI image manifest (schemaVersion 2)")
    if doc.get("mediaType", OCI_MANIFEST) != OCI_MANIFEST:
        raise IntegrityError(f"{source}: unexpected mediaType {str(doc.get('mediaType'))[:100]!r}")
    if doc.get("artifactType") != ARTIFACT_TYPE:
        raise IntegrityError(
            f"{source}: not a continuity tree (artifactType "
            f"{str(doc.get('artifactType'))[:100]!r}, expected {ARTIFACT_TYPE})"
        )
    layers = doc.get("layers")
    if not isinstance(layers, list) or not layers:
        raise IntegrityError(f"{source}: OCI manifest has no layers")
    descs = [_descriptor(x, f"layer {i}", source) for i, x in enumerate(layers)]
    if descs[0].media_type == MANIFEST_PART_MEDIA_TYPE:
        first, k = _manifest_parts(doc, descs, source)
    else:
        first, k = descs[0], 1
        if first.media_type != MANIFEST_MEDIA_TYPE:
            raise IntegrityError(f"{source}: first layer is {first.media_type[:100]!r}, expected {MANIFEST_MEDIA_TYPE}")
    if first.size == 0 or first.size > MAX_CONTINUITY_MANIFEST:
        raise IntegrityError(
            f"{source}: continuity manifest size {first.size} is out of range (1..{MAX_CONTINUITY_MANIFEST})"
        )
    parts = descs[:k] if descs[0].media_type == MANIFEST_PART_MEDIA_TYPE else []
    return TreeLayers(first, parts, descs[k:])


def split_layers(
    blobs: list[Descriptor], *, source: str
) -> tuple[list[tuple[Descriptor, Descriptor]], list[Descriptor]]:
    """The layers after the manifest as ((pack, index) pairs, lone blobs): each pack must be followed by
    its index, lone blobs come last; the same pack twice or another media type is refused (IntegrityError)."""
    packs: list[tuple[Descriptor, Descriptor]] = []
    seen: set[str] = set()
    i = 0
    while i < len(blobs) and blobs[i].media_type == PACK_MEDIA_TYPE:
        if i + 1 >= len(blobs) or blobs[i + 1].media_type != PACK_INDEX_MEDIA_TYPE:
            raise IntegrityError(f"{source}: pack layer {blobs[i].digest} is not followed by its index")
        if blobs[i].digest in seen:
            raise IntegrityError(f"{source}: pack {blobs[i].digest} is listed twice")
        seen.add(blobs[i].digest)
        packs.append((blobs[i], blobs[i + 1]))
        i += 2
    solo = blobs[i:]
    for b in solo:
        if b.media_type != BLOB_MEDIA_TYPE:
            raise IntegrityError(f"{source}: unexpected layer type {b.media_type[:100]!r} ({b.digest})")
    return packs, solo


def check_layers(refs: set[str], sizes: Mapping[str, int], blobs: list[Descriptor], *, source: str) -> dict[str, int]:
    """Check the OCI layers list exactly the blobs the continuity manifest references, with its sizes.

    Returns the size of every referenced blob (ADS blobs take the layer's size).
    Raises IntegrityError naming the first difference.
    """
    listed: dict[str, int] = {}
    for b in blobs:
        if b.digest in listed:
            raise IntegrityError(f"{source}: layer {b.digest} is listed twice")
        listed[b.digest] = b.size
    extra = listed.keys() - refs
    if extra:
        raise IntegrityError(f"{source}: layer {min(extra)} is not referenced by the continuity manifest")
    absent = refs - listed.keys()
    if absent:
        raise IntegrityError(f"{source}: blob {min(absent)} referenced by the continuity manifest is not a layer")
    for d, n in sizes.items():
        if listed[d] != n:
            raise IntegrityError(f"{source}: layer {d} has size {listed[d]}, the manifest says {n}")
    return listed
