"""Signatures of manifests, kept in the store's LMDB ``signatures`` sub-database.

Key: the manifest digest (32 bytes) + the sha256 of the binary SSHSIG (32 bytes),
so a manifest has any number of signatures, each once. Value: JSON
``{"sig": base64 SSHSIG, "fingerprint", "key_type", "principal", "time_ns", "source"}``.
A signature is stored only after it verified over the manifest's stored bytes;
gc drops a manifest's signatures with it (``delete_for``), fsck re-verifies them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from castore.errors import IntegrityError, NotFound
from castore.store import Store
from castore.store.meta import Txn, dkey, dstr

# The signature code (castore.sign.sshsig loads `cryptography`: 28 ms) is imported where a signature
# is checked, not here: gc imports this module to drop the rows of the manifests it frees.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from castore.sign.policy import Policy
    from castore.sign.sshsig import Signature

DB = "signatures"


@dataclass(frozen=True, slots=True)
class SignatureRecord:
    manifest: str
    sig_id: str  # sha256 hex of the binary SSHSIG
    raw: bytes
    fingerprint: str
    key_type: str
    principal: str | None
    time_ns: int
    source: str  # sign | import | pull

    def as_json(self) -> dict[str, object]:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.time_ns / 1e9))
        return {
            "fingerprint": self.fingerprint,
            "key_type": self.key_type,
            "principal": self.principal,
            "time": when,
            "source": self.source,
            "id": self.sig_id,
        }


def _decode(key: bytes, value: bytes) -> SignatureRecord:
    try:
        rec = json.loads(value)
        raw = base64.b64decode(rec["sig"])
        return SignatureRecord(
            dstr(key[:32]),
            key[32:].hex(),
            raw,
            str(rec["fingerprint"]),
            str(rec["key_type"]),
            rec.get("principal"),
            int(rec["time_ns"]),
            str(rec.get("source", "sign")),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"store metadata: signature row of {dstr(key[:32])} is unreadable ({exc})") from None


def add(
    store: Store, digest: str, sig: Signature, *, principal: str | None, source: str, message: bytes | None = None
) -> tuple[SignatureRecord, bool]:
    """Verify ``sig`` over the stored manifest ``digest`` and keep it. Returns (record, newly added).

    ``message``: the manifest's bytes, already checked against ``digest`` by the caller (else read here).
    Raises NotFound when the store lacks the manifest, BadSignature (exit 4) when it does not verify.
    """
    if message is None:
        if not store.manifest_indexed(digest):
            raise NotFound(f"no manifest {digest} in the store")
        message = store.read_blob(digest)
    from castore.sign.sshsig import NAMESPACE, verify_message

    verify_message(sig, message, NAMESPACE, what=f"signature for {digest}", sha256=dkey(digest))
    sid = hashlib.sha256(sig.raw).digest()
    key = dkey(digest) + sid
    rec = SignatureRecord(
        digest, sid.hex(), sig.raw, sig.fingerprint, sig.key.key_type, principal, time.time_ns(), source
    )
    value = json.dumps(
        {
            "sig": base64.b64encode(sig.raw).decode(),
            "fingerprint": rec.fingerprint,
            "key_type": rec.key_type,
            "principal": principal,
            "time_ns": rec.time_ns,
            "source": source,
        }
    ).encode()
    db = store.meta.db(DB)

    def fn(txn: Txn) -> bool:
        if txn.get(dkey(digest), db=store.meta.db("refs")) is None:
            raise NotFound(f"no manifest {digest} in the store")
        return bool(txn.put(key, value, db=db, overwrite=False))

    added = store.meta.write(fn)
    if not added:
        existing = [r for r in for_manifest(store, digest) if r.sig_id == rec.sig_id]
        if existing:
            return existing[0], False
    return rec, True


def for_manifest(store: Store, digest: str) -> list[SignatureRecord]:
    """The signatures stored for ``digest``, oldest first."""
    prefix = dkey(digest)
    out = []
    with store.meta.read() as txn:
        cur = txn.cursor(db=store.meta.db(DB))
        if cur.set_range(prefix):
            for k, v in cur:
                if not bytes(k).startswith(prefix):
                    break
                out.append(_decode(bytes(k), bytes(v)))
    return sorted(out, key=lambda r: r.time_ns)


def count_by_manifest(store: Store) -> dict[str, int]:
    out: dict[str, int] = {}
    with store.meta.read() as txn:
        for k in txn.cursor(db=store.meta.db(DB)).iternext(values=False):
            d = dstr(bytes(k[:32]))
            out[d] = out.get(d, 0) + 1
    return out


def all_rows(store: Store) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) row (fsck)."""
    with store.meta.read() as txn:
        rows = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=store.meta.db(DB))]
    yield from rows


def decode_row(key: bytes, value: bytes) -> SignatureRecord:
    if len(key) != 64:
        raise IntegrityError(f"store metadata: signature row with a key of {len(key)} bytes")
    return _decode(key, value)


def delete_for(store: Store, t: Txn, manifest_keys: Iterable[bytes]) -> int:
    """Drop every signature of the given manifests (32-byte keys) in the caller's write transaction."""
    db = store.meta.db(DB)
    doomed = []
    for mk in manifest_keys:
        cur = t.cursor(db=db)
        if cur.set_range(mk):
            for k in cur.iternext(values=False):
                if not bytes(k).startswith(mk):
                    break
                doomed.append(bytes(k))
    for k in doomed:
        t.delete(k, db=db)
    return len(doomed)


def delete_rows(store: Store, keys: list[bytes]) -> None:
    store.meta.write(lambda t: [t.delete(k, db=store.meta.db(DB)) for k in keys])


def remove(store: Store, digest: str, sig_id_prefix: str) -> int:
    """Remove the signatures of ``digest`` whose id starts with ``sig_id_prefix`` (or whose fingerprint is it)."""
    keys = [
        dkey(digest) + bytes.fromhex(r.sig_id)
        for r in for_manifest(store, digest)
        if r.sig_id.startswith(sig_id_prefix) or r.fingerprint == sig_id_prefix
    ]
    if keys:
        delete_rows(store, keys)
    return len(keys)


def parse(raw: bytes, what: str) -> Signature:
    from castore.sign.sshsig import parse_signature

    return parse_signature(raw, what=what)


def enforce(
    store: Store | None,
    policy: Policy,
    digest: str | None,
    names: Iterable[str],
    *,
    what: str,
    message: bytes | None = None,
    extra: Iterable[bytes] = (),
) -> list[str]:
    """Check the trust policy for a manifest (stored as ``digest``, or given as ``message``).

    ``names``: the catalog names or registry references it is known by
    (none for a manifest named by digest or file: the default applies).
    ``extra``: signatures not (yet) in the store, e.g. fetched by pull.
    ``message``, when given with ``digest``, must be the bytes the caller checked against it.
    Returns the principals that signed. Raises PolicyRefused (exit 4).
    """
    from castore.sign.policy import evaluate, select

    scope, reqs = select(policy, names)
    if all(r.type == "accept" for r in reqs):
        return []
    sigs = list(extra)
    if digest is not None and store is not None:
        sigs += [r.raw for r in for_manifest(store, digest)]
        if message is None:
            message = store.read_blob(digest)  # checked against the digest: H(message) for sha256 signatures
    return evaluate(
        reqs,
        message or b"",
        sigs,
        what=what,
        scope=scope,
        sha256=dkey(digest) if digest is not None and message else None,
    )


__all__ = [
    "SignatureRecord",
    "add",
    "all_rows",
    "count_by_manifest",
    "decode_row",
    "delete_for",
    "enforce",
    "for_manifest",
    "remove",
]
