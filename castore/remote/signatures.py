"""Signatures travel with a pushed tree: an OCI 1.1 artifact whose ``subject`` is the tree's OCI manifest.

The signature artifact (docs/signing.md)::

    {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SIGNATURE_ARTIFACT_TYPE,
     "config": <the empty descriptor>, "subject": <descriptor of the tree's OCI manifest>,
     "layers": [{"mediaType": SSHSIG_MEDIA_TYPE, "digest", "size", "annotations": {principal, fingerprint}}...],
     "annotations": {"dev.continuity.manifest": <continuity manifest digest>}}

It is PUT under the tag ``sha256-<hex>.sig`` (hex of the tree's OCI manifest
digest): registries with the referrers API (OCI 1.1) also index it by its
subject, and those without it (distribution 2.8) still find it by the tag.
``pull`` asks the referrers API first and falls back to the tag. Nothing
fetched is trusted: every signature blob is size-bounded and digest-checked,
and stored only after it verifies over the manifest's bytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from castore.digest import hash_bytes
from castore.errors import CastoreError, IntegrityError, NotFound
from castore.remote.client import Registry
from castore.remote.oci import EMPTY_DIGEST, EMPTY_JSON, EMPTY_MEDIA_TYPE, OCI_MANIFEST
from castore.sign.sshsig import MAX_SIGNATURE, BadSignature, armor, dearmor, parse_signature
from castore.store import Store
from castore.store import signatures as sigdb

SIGNATURE_ARTIFACT_TYPE = "application/vnd.continuity.signature.v1"
SSHSIG_MEDIA_TYPE = "application/vnd.continuity.sshsig.v1"
PRINCIPAL_ANNOTATION = "dev.continuity.signature.principal"
FINGERPRINT_ANNOTATION = "dev.continuity.signature.fingerprint"
MANIFEST_ANNOTATION = "dev.continuity.manifest"
MAX_SIGNATURES = 256
MAX_ARTIFACT = 1 << 20


@dataclass(frozen=True, slots=True)
class RemoteSignature:
    raw: bytes  # binary SSHSIG
    principal: str | None


def sig_tag(oci_digest: str) -> str:
    return oci_digest.replace(":", "-") + ".sig"


def build_artifact(
    subject_digest: str, subject_size: int, manifest_digest: str, blobs: list[tuple[str, int, str | None, str]]
) -> bytes:
    """The signature artifact for (digest, size, principal, fingerprint) blobs, deterministic JSON."""
    layers = []
    for d, n, principal, fp in sorted(blobs, key=lambda b: b[0]):
        ann = {FINGERPRINT_ANNOTATION: fp} if fp else {}
        if principal:
            ann[PRINCIPAL_ANNOTATION] = principal
        layers.append({"mediaType": SSHSIG_MEDIA_TYPE, "digest": d, "size": n, "annotations": ann})
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SIGNATURE_ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": EMPTY_DIGEST, "size": len(EMPTY_JSON), "data": "e30="},
        "layers": layers,
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": subject_size},
        "annotations": {MANIFEST_ANNOTATION: manifest_digest},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _layers(data: bytes, source: str) -> list[tuple[str, int, str | None, str]]:
    """(digest, size, principal, fingerprint) of each signature layer of an artifact; IntegrityError when malformed."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise IntegrityError(f"{source}: signature artifact is not JSON") from None
    if not isinstance(doc, dict) or doc.get("artifactType") != SIGNATURE_ARTIFACT_TYPE:
        raise IntegrityError(f"{source}: not a continuity signature artifact")
    layers = doc.get("layers")
    if not isinstance(layers, list) or len(layers) > MAX_SIGNATURES:
        raise IntegrityError(f"{source}: signature artifact has no valid layer list")
    out = []
    for x in layers:
        if not isinstance(x, dict) or x.get("mediaType") != SSHSIG_MEDIA_TYPE:
            continue
        d, n = x.get("digest"), x.get("size")
        if not isinstance(d, str) or not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= 4 * MAX_SIGNATURE:
            raise IntegrityError(f"{source}: signature layer with an invalid digest or size")
        ann = x.get("annotations")
        ann = ann if isinstance(ann, dict) else {}
        p, fp = ann.get(PRINCIPAL_ANNOTATION), ann.get(FINGERPRINT_ANNOTATION)
        out.append(
            (
                d,
                n,
                p if isinstance(p, str) and p.isprintable() and len(p) <= 255 else None,
                fp if isinstance(fp, str) and fp.isprintable() and len(fp) <= 100 else "",
            )
        )
    return out


def push_signatures(reg: Registry, store: Store, manifest_digest: str, oci_digest: str, oci_size: int) -> int:
    """Send the stored signatures of ``manifest_digest`` (merged with those already pushed). Returns the count."""
    records = sigdb.for_manifest(store, manifest_digest)
    if not records:
        return 0
    tag = sig_tag(oci_digest)
    blobs: dict[str, tuple[str, int, str | None, str]] = {}
    try:
        raw, _ = reg.get_manifest(tag, MAX_ARTIFACT)
        for d, n, p, fp in _layers(raw, f"{reg.where} {tag}"):
            blobs[d] = (d, n, p, fp)
    except (NotFound, IntegrityError):
        pass  # none yet, or not ours: replaced
    for r in records:
        data = armor(r.raw).encode()
        d = hash_bytes(data)
        if not reg.has_blob(d):
            reg.upload_blob(d, len(data), data)
        blobs[d] = (d, len(data), r.principal, r.fingerprint)
    if not reg.has_blob(EMPTY_DIGEST):
        reg.upload_blob(EMPTY_DIGEST, len(EMPTY_JSON), EMPTY_JSON)
    reg.put_manifest(tag, build_artifact(oci_digest, oci_size, manifest_digest, list(blobs.values())))
    return len(records)


def _artifacts(reg: Registry, oci_digest: str) -> list[bytes]:
    """The signature artifacts of a tree: by the referrers API, else by the tag schema."""
    index = reg.get_referrers(oci_digest, SIGNATURE_ARTIFACT_TYPE)
    out: list[bytes] = []
    if index is not None:
        try:
            doc = json.loads(index)
            descs = doc.get("manifests", []) if isinstance(doc, dict) else []
        except (ValueError, RecursionError):
            descs = []
        for x in descs[:MAX_SIGNATURES] if isinstance(descs, list) else []:
            if (
                isinstance(x, dict)
                and x.get("artifactType") == SIGNATURE_ARTIFACT_TYPE
                and isinstance(x.get("digest"), str)
                and x["digest"].startswith("sha256:")
            ):
                raw, _ = reg.get_manifest(x["digest"], MAX_ARTIFACT)
                if hash_bytes(raw) == x["digest"]:
                    out.append(raw)
        if out:
            return out
    try:
        raw, _ = reg.get_manifest(sig_tag(oci_digest), MAX_ARTIFACT)
    except NotFound:
        return []
    return [raw]


def fetch_signatures(reg: Registry, oci_digest: str, tmp_dir: str) -> list[RemoteSignature]:
    """Every well-formed SSHSIG the registry holds for a tree (not yet verified against the manifest)."""
    seen: dict[str, RemoteSignature] = {}
    for art in _artifacts(reg, oci_digest):
        try:
            layers = _layers(art, f"{reg.where} signatures of {oci_digest}")
        except IntegrityError:
            continue
        for d, n, principal, _ in layers:
            if d in seen:
                continue
            path = os.path.join(tmp_dir, "sig-" + d[7:])
            try:
                reg.fetch_blob(d, n, path)
                with open(path, "rb") as f:
                    data = f.read(n + 1)
            except (IntegrityError, NotFound):
                continue
            finally:
                if os.path.exists(path):
                    os.unlink(path)
            try:
                raw = dearmor(data)
                parse_signature(raw)
            except BadSignature:
                continue
            seen[d] = RemoteSignature(raw, principal)
    return list(seen.values())


def store_signatures(
    store: Store, manifest_digest: str, message: bytes, message_digest: str, sigs: list[RemoteSignature]
) -> int:
    """Keep the fetched signatures that verify over the stored manifest's bytes. Returns how many.

    ``message`` (checked to hash to ``message_digest``) is used when it is what the store holds.
    """
    if not sigs:
        return 0
    stored = message if message_digest == manifest_digest else None
    kept = 0
    for s in sigs:
        try:
            sigdb.add(
                store, manifest_digest, parse_signature(s.raw), principal=s.principal, source="pull", message=stored
            )
        except CastoreError:
            continue
        kept += 1
    return kept


__all__ = [
    "RemoteSignature",
    "SIGNATURE_ARTIFACT_TYPE",
    "SSHSIG_MEDIA_TYPE",
    "build_artifact",
    "fetch_signatures",
    "push_signatures",
    "sig_tag",
    "store_signatures",
]
