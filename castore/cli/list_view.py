"""``continuity list`` and ``history``: the catalog, a name's versions, as text or JSON, click-free (run by the
click commands and the fast path).

The whole output is built first, then written: an error (a damaged index, a missing store) prints
its one error line and nothing else.
"""

from __future__ import annotations

import os

from castore.textsafe import json_text, quote
from castore.units import human_size, iso_s

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up: castore/__init__.py)

if TYPE_CHECKING:
    from typing import Any

    from castore.cli.context import Ctx
    from castore.store import Store

_when = iso_s


def list_text(obj: Ctx, as_json: bool, human: bool, history: str | None = None) -> str:
    """The output of ``list`` (``--json``, ``-H``, ``--history NAME``), each line ending in a newline."""
    from castore.store import default_store_path
    from castore.store.revisions import versions

    if obj.store_path is None and not os.path.lexists(os.path.join(default_store_path(), "config")):
        # the default location before anything was stored: an empty catalog (README "Stores")
        return json_document({"names": []}) if as_json else ""
    if history is not None:
        return history_text(obj, history, as_json=as_json, require=False)
    store = obj.store()
    from castore.store.summary import summaries

    tags = store.tags()
    known = summaries(store.meta, {t.digest for t in tags})  # recorded at commit: no manifest decoded
    out: list[dict[str, Any]] = []  # the JSON rows
    for t in tags:
        total = known[t.digest].size if t.digest in known else tree_size(store, t.digest)
        vs = versions(store, t.name)
        out.append(
            {
                "name": t.name,
                "digest": t.digest,
                "time": _when(t.time_ns),
                "manifest_size": t.size,
                "size": total,
                "versions": len(vs),
                "signatures": sigs(store, t.digest),
                "incomplete": bool(vs and vs[-1].digest == t.digest and vs[-1].incomplete),
            }
        )
    if as_json:
        return json_document({"names": out})
    lines = []
    for row in out:
        size = human_size(row["size"]) if human else row["size"]
        flag = "\tincomplete" if row["incomplete"] else ""
        lines.append(
            f"{quote(str(row['name']))}\t{row['digest']}\t{row['time']}\t{size}\t{signers(row['signatures'])}{flag}\n"
        )
    return "".join(lines)


def history_text(obj: Ctx, name: str, *, as_json: bool, require: bool = True) -> str:
    """The output of ``history NAME`` (``require``: NotFound when NAME has no version) and ``list --history``."""
    from castore.store.revisions import versions

    store = obj.store()
    rows = versions(store, name)
    if require and not rows:
        from castore.errors import NotFound

        raise NotFound(f"no history for {name!r}")
    if as_json:
        doc = [
            {
                "digest": t.digest,
                "time": _when(t.time_ns),
                "signatures": sigs(store, t.digest),
                "incomplete": t.incomplete,
            }
            for t in rows
        ]
        return json_document({"name": name, "versions": doc})
    return "".join(
        f"{_when(t.time_ns)}  {t.digest}  {signers(sigs(store, t.digest))}{'  incomplete' if t.incomplete else ''}\n"
        for t in rows
    )


def json_document(obj: object) -> str:
    """One JSON document and its newline, as ``print_json`` prints it (docs/json.md)."""
    from castore.cli.jsonout import document

    return json_text(document(obj)) + "\n"


def sigs(store: Store, digest: str) -> list[dict[str, object]]:
    """The stored signatures of a manifest, for list/history (docs/signing.md)."""
    if not any_signature(store):
        return []  # the signing code (cryptography) is not imported for a store without signatures
    from castore.store.signatures import for_manifest

    return [r.as_json() for r in for_manifest(store, digest)]


def any_signature(store: Store) -> bool:
    return store.meta.entries("signatures") > 0


def signers(sigs: list[dict[str, object]]) -> str:
    """The text column: who signed (principal, else key fingerprint), or "-" for unsigned."""
    return ",".join(sorted({quote(str(s["principal"] or s["fingerprint"])) for s in sigs})) or "-"


def tree_size(store: Store, digest: str) -> int:
    try:
        m = store.load_manifest(digest)
    except Exception:  # noqa: BLE001 - a damaged entry still lists
        return -1
    return sum(r.size for r in m.files())
