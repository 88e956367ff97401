"""fsck of the stored signatures: each row readable, of a manifest the store holds, verifying over its bytes.

Findings: ``bad-signature-row`` (unreadable row) and ``bad-signature`` (does
not verify over the manifest's stored bytes) are errors; ``orphan-signature``
(its manifest is gone: a crash between gc's deletes) is a warning. ``--repair``
drops all three kinds of rows.
"""

from __future__ import annotations

from collections.abc import Callable

from castore.errors import CastoreError
from castore.store import Store
from castore.store import signatures as sigdb
from castore.store.meta import dstr


def check_signatures(store: Store, add: Callable[[str, str, str, str], object], *, repair: bool) -> int:
    """Check every signature row; ``add(severity, kind, subject, detail)`` records a finding.

    Returns how many rows were checked.
    """
    doomed: list[bytes] = []
    messages: dict[str, bytes | None] = {}
    rows = list(sigdb.all_rows(store))
    if not rows:
        return 0
    # Imported only when there is a signature to check: sshsig loads `cryptography` (28 ms), which
    # every gc paid when gc_cmds imported fsck at load time.
    from castore.sign.sshsig import BadSignature, parse_signature, verify_message

    for key, value in rows:
        try:
            rec = sigdb.decode_row(key, value)
        except CastoreError as exc:
            add("error", "bad-signature-row", key[:32].hex() if len(key) >= 32 else key.hex(), str(exc))
            doomed.append(key)
            continue
        if rec.manifest not in messages:
            try:
                messages[rec.manifest] = store.read_blob(rec.manifest) if store.manifest_indexed(rec.manifest) else None
            except CastoreError:
                messages[rec.manifest] = b""  # the manifest's own damage is reported by the manifest checks
        message = messages[rec.manifest]
        if message is None:
            add(
                "warning",
                "orphan-signature",
                rec.manifest,
                f"signature by {rec.fingerprint} of a manifest the store no longer holds",
            )
            doomed.append(key)
            continue
        if not message:
            continue
        try:
            verify_message(
                parse_signature(rec.raw),
                message,
                what=f"stored signature {rec.sig_id[:12]}",
                sha256=bytes.fromhex(rec.manifest[7:]),
            )
        except BadSignature as exc:
            add("error", "bad-signature", rec.manifest, str(exc))
            doomed.append(key)
    if repair and doomed:
        sigdb.delete_rows(store, doomed)
    return len(rows)


__all__ = ["check_signatures", "dstr"]
