"""Per-manifest summaries: what ``list`` shows without decoding a manifest (issue 16).

    summary    manifest digest (32 bytes) -> tree bytes u64, regular files u64 (little-endian)

Written in the transaction that records the manifest's ``refs`` row
(Catalog.record_manifest), so a manifest of this version always has one. A
store of an older version has none for the manifests it recorded then (nor the
sub-database, when opened read-only): ``summaries`` leaves those out and the
caller decodes the manifest, as before. The row depends only on the manifest's
bytes (its digest), so a row that outlives its manifest is never wrong: the
same digest recorded again has the same summary.
"""

from __future__ import annotations

import struct
from collections import namedtuple
from collections.abc import Iterable

from castore.store.meta import MetaDB, dkey

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up: castore/__init__.py)

if TYPE_CHECKING:
    from typing import Any

    from castore.manifest import Manifest

SUMMARY_ROW = struct.Struct("<QQ")


if TYPE_CHECKING:
    from typing import NamedTuple

    class Summary(NamedTuple):
        """The bytes of a tree's regular files (each hardlinked file once) and their count."""

        size: int
        files: int

else:  # the same tuple without importing typing (not a dataclass either: list imports neither)
    Summary = namedtuple("Summary", "size files")


def summarize(manifest: Manifest) -> Summary:
    size = files = 0
    for r in manifest.files():
        size += r.size
        files += 1
    return Summary(size, files)


def put_summary(meta: MetaDB, txn: Any, digest: str, manifest: Manifest) -> None:
    """Record ``manifest``'s summary in the caller's write transaction."""
    s = summarize(manifest)
    txn.put(dkey(digest), SUMMARY_ROW.pack(s.size, s.files), db=meta.db("summary"))


def summaries(meta: MetaDB, digests: Iterable[str]) -> dict[str, Summary]:
    """The recorded summaries of ``digests`` (one read transaction); a digest without one is left out."""
    db = meta.dbs.get("summary")
    if db is None:  # an older store opened read-only: no such sub-database
        return {}
    out: dict[str, Summary] = {}
    with meta.read() as txn:
        for d in digests:
            raw = txn.get(dkey(d), db=db)
            if raw is not None and len(raw) == SUMMARY_ROW.size:
                out[d] = Summary(*SUMMARY_ROW.unpack(raw))
    return out
