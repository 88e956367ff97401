"""fsck --rebuild-index: re-derive the blob index and manifest references from the blob files,
built aside and swapped in atomically; the catalog salvaged from the old index or replayed from
the manifest markers."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import struct
import time
from dataclasses import dataclass, field

from castore import fs
from castore.errors import CastoreError
from castore.faults import crashpoint
from castore.fsck.quarantine import hash_file, quarantine
from castore.manifest import Manifest, codec, validate
from castore.store import MARKER_DIR, check_name, chunk_map_rows, manifest_refs
from castore.store.lock import flocked
from castore.store.meta import BLOB_ROW, Txn, dkey, dstr


@dataclass
class RebuildReport:
    blobs: int = 0
    manifests: int = 0
    quarantined: list[str] = field(default_factory=list)
    catalog_names: int = 0
    catalog_lost: str = ""  # why the old catalog could not be read ("" when salvaged)
    old_meta: str = ""
    seconds: float = 0.0
    manifest_digests: list[str] = field(default_factory=list)  # to name again when the catalog is lost
    catalog_restored: bool = False  # names replayed from the manifest markers

    def summary(self) -> str:
        out = (
            f"fsck: index rebuilt from {self.blobs} blob files ({self.manifests} manifests) in "
            f"{self.seconds:.2f}s; {len(self.quarantined)} corrupt files quarantined; "
        )
        if self.catalog_restored:
            out += (
                f"the old catalog could not be read ({self.catalog_lost or 'empty'}); {self.catalog_names} "
                "catalog rows restored from the manifest markers"
            )
        elif self.catalog_lost:
            out += (
                f"the catalog (names, history) could not be salvaged ({self.catalog_lost}) and cannot be "
                "rebuilt from blobs: re-tag manifests with `continuity tag DIGEST NAME`"
            )
        else:
            out += f"{self.catalog_names} catalog rows salvaged"
        return out + f"; old metadata kept in {self.old_meta}"


MAX_PARSE = 256 << 20


def _salvage(meta_path: str) -> tuple[list[tuple[str, bytes, bytes]], set[bytes], str]:
    """Catalog rows (tags, history), signatures and recorded manifests of the old environment, and why not all
    could be read.

    The environment is opened only once its header proved the file whole
    (MetaDB checks it): a truncated map would SIGBUS the rebuild itself.
    """
    from castore.store.meta import MetaDB

    if not os.path.exists(os.path.join(meta_path, "data.mdb")):
        return [], set(), "no metadata file"
    try:
        old = MetaDB(meta_path, create=False)
    except CastoreError as exc:
        return [], set(), str(exc)
    rows: list[tuple[str, bytes, bytes]] = []
    known: set[bytes] = set()
    why = ""
    try:
        for dbname in ("tags", "history", "refs", "signatures"):
            try:
                with old.read() as txn:
                    for k, v in txn.cursor(db=old.db(dbname)):
                        if dbname == "refs":
                            known.add(bytes(k))
                        else:
                            rows.append((dbname, bytes(k), bytes(v)))
            except CastoreError as exc:
                why = str(exc)
    finally:
        old.close()
    return rows, known, why


def _markers(path: str) -> tuple[dict[bytes, list[tuple[str, int, str]]], bool]:
    """Manifest markers (STORE/manifests/ab/<hex>) -> their catalog events; False for a store without any."""
    root = os.path.join(path, MARKER_DIR)
    if not os.path.isdir(root):
        return {}, False
    out: dict[bytes, list[tuple[str, int, str]]] = {}
    for shard in fs.listdir(root):
        for n in fs.listdir(os.path.join(root, shard)):
            try:
                key = bytes.fromhex(n)
            except ValueError:
                continue
            if len(key) != 32:
                continue
            events = []
            try:
                with open(os.path.join(root, shard, n), "rb") as fh:
                    text = fh.read(1 << 20).decode(errors="replace")
            except OSError:
                text = ""
            for line in text.splitlines():
                parts = line.split(" ")
                if len(parts) == 3 and parts[0] in "+-" and parts[1].isdigit():
                    try:
                        events.append((parts[0], int(parts[1]), check_name(parts[2])))
                    except CastoreError:
                        continue
            out[key] = events
    return out, True


def _catalog_from_markers(
    markers: dict[bytes, list[tuple[str, int, str]]], manifests: dict[bytes, int]
) -> list[tuple[str, bytes, bytes]]:
    """Catalog rows from the markers' events: every naming is history; a name's newest event decides it."""
    events = sorted((t, op, name, key) for key, evs in markers.items() if key in manifests for op, t, name in evs)
    rows: list[tuple[str, bytes, bytes]] = []
    current: dict[str, tuple[int, bytes] | None] = {}
    for t, op, name, key in events:
        if op == "+":
            rows.append(("history", name.encode() + b"\0" + struct.pack(">Q", t), key))
            current[name] = (t, key)
        else:
            current[name] = None
    for name, cur in current.items():
        if cur is not None:
            rows.append(
                (
                    "tags",
                    name.encode(),
                    json.dumps({"digest": dstr(cur[1]), "time_ns": cur[0], "size": manifests[cur[1]]}).encode(),
                )
            )
    return rows


def rebuild_index(store_path: str) -> RebuildReport:
    """Re-derive the blob index and manifest references from the blob files.

    Every file is hashed (blobs are self-verifying: a file whose content does
    not match its name is quarantined). Only blobs the store recorded as
    manifests (a marker in STORE/manifests/, or a `refs` row of the old index)
    are indexed as manifests: a user file that parses as one stays a file.
    Only a store of an older version (no markers) whose old index is
    unreadable falls back to parsing.
    The catalog (names, history) is copied from the old environment when that
    is readable, else replayed from the markers' naming events.

    Crash-safe at every step: the new index is built aside and swapped in by
    one renameat2(RENAME_EXCHANGE), so STORE/meta is always the old index or
    the new, complete one; the old one is then kept as ``meta.damaged-TIME``.
    A crash leaves at most a ``meta.rebuild-*`` directory, which the next
    rebuild keeps as ``meta.damaged-*`` (it may be the old index).
    Locking: gc.lock and the store lock, exclusive.
    """
    start = time.monotonic()
    path = os.path.abspath(store_path)
    from castore.store import check_store_dir

    check_store_dir(path)  # ours and private, no symlinked shard: the walk below follows none
    rep = RebuildReport()
    blob_root = os.path.join(path, "blobs", "sha256")
    with (
        flocked(os.path.join(path, "gc.lock"), exclusive=True, what="gc/fsck"),
        flocked(os.path.join(path, "lock"), exclusive=True),
    ):
        for n in fs.listdir(path):
            if n.startswith("meta.rebuild-"):  # an earlier rebuild's, killed: keep it, it may be the old index
                os.rename(os.path.join(path, n), os.path.join(path, _damaged_name()))
        created_ns = time.time_ns()
        meta_path = os.path.join(path, "meta")
        catalog, known, rep.catalog_lost = _salvage(meta_path)
        sig_rows = [r for r in catalog if r[0] == "signatures"]  # kept apart: not catalog rows (fsck re-verifies)
        catalog = [r for r in catalog if r[0] != "signatures"]
        markers, have_markers = _markers(path)
        known |= set(markers)
        # Parsing decides only for a store of an older version (no markers) whose old index is unreadable.
        guess = not have_markers and bool(rep.catalog_lost)
        sizes, refs, chunks, chunk_map, ads = _scan_blobs(path, blob_root, known, guess, rep)
        crashpoint("rebuild-after-scan")
        if (rep.catalog_lost or not catalog) and markers:  # lost, or an empty index re-created over the store
            catalog = _catalog_from_markers(markers, {k: sizes[k] for k in refs})
            rep.catalog_restored = bool(rep.catalog_lost or catalog)
        rep.catalog_names = len(catalog)
        rep.blobs, rep.manifests = len(sizes), len(refs)
        rep.manifest_digests = sorted(dstr(k) for k in refs)
        for k in refs:  # markers for what the old index knew (or, without markers, parsing found)
            mpath = os.path.join(path, MARKER_DIR, k[:1].hex(), k.hex())
            if not os.path.exists(mpath):
                os.makedirs(os.path.dirname(mpath), exist_ok=True)
                with open(mpath, "ab") as fh:
                    os.fsync(fh.fileno())
                fs.fsync_dir(os.path.dirname(mpath))
        os.makedirs(os.path.join(path, MARKER_DIR), exist_ok=True)
        new_path = os.path.join(path, f"meta.rebuild-{secrets.token_hex(4)}")
        _build_index(new_path, created_ns, sizes, refs, chunks, ads, catalog + sig_rows, chunk_map)
        crashpoint("rebuild-after-build")
        rep.old_meta = os.path.join(path, _damaged_name())
        if os.path.lexists(meta_path):
            fs.renameat2(-100, new_path, -100, meta_path, fs.RENAME_EXCHANGE)  # atomic: old or new, never none
            crashpoint("rebuild-after-swap")
            fs.fsync_dir(path)
            os.rename(new_path, rep.old_meta)
        else:
            rep.old_meta = "(none)"
            fs.renameat2(-100, new_path, -100, meta_path)
        crashpoint("rebuild-after-rename")
        fs.fsync_dir(path)
    rep.seconds = time.monotonic() - start
    return rep


def _scan_blobs(
    path: str, blob_root: str, known: set[bytes], guess: bool, rep: RebuildReport
) -> tuple[dict[bytes, int], dict[bytes, set[bytes]], set[bytes], set[tuple[bytes, bytes]], set[bytes]]:
    """Hash every blob file (a mismatch is quarantined, in ``rep``): (sizes, manifest refs, chunks,
    chunk-map rows, ADS blobs). Parsed as manifests: the ``known`` ones, or any with ``guess``."""
    sizes: dict[bytes, int] = {}
    refs: dict[bytes, set[bytes]] = {}
    chunks: set[bytes] = set()
    chunk_map: set[tuple[bytes, bytes]] = set()  # whole file -> chunks, from manifests with chunk lists
    ads: set[bytes] = set()
    for shard in sorted(fs.listdir(blob_root)):
        sdir = os.path.join(blob_root, shard)
        for n in sorted(fs.listdir(sdir)):
            fpath = os.path.join(sdir, n)
            try:
                st = os.lstat(fpath)
                key = bytes.fromhex(n) if len(n) == 64 else b""
            except (FileNotFoundError, ValueError):
                continue
            if not stat.S_ISREG(st.st_mode) or not key:
                continue
            data = b""
            may_be_manifest = key in known or guess
            if may_be_manifest and st.st_size <= MAX_PARSE:
                with open(fpath, "rb") as fh:
                    data = fh.read()
                got, size = "sha256:" + hashlib.sha256(data).hexdigest(), len(data)
            else:
                got, size = hash_file(fpath)
            if got != "sha256:" + n:
                rep.quarantined.append(quarantine(path, fpath))
                continue
            sizes[key] = size
            man = _as_manifest(data, got) if data else None
            if man is not None:
                refs[key] = {dkey(d) for d in manifest_refs(man)}
                for f in man.files():
                    chunks.update(dkey(c.digest) for c in f.chunks)
                chunk_map.update(chunk_map_rows(man))
                for res in man.resources:
                    ads.update(dkey(a.digest) for a in res.ads if a.digest)
    return sizes, refs, chunks, chunk_map, ads


def _build_index(
    new_path: str,
    created_ns: int,
    sizes: dict[bytes, int],
    refs: dict[bytes, set[bytes]],
    chunks: set[bytes],
    ads: set[bytes],
    catalog: list[tuple[str, bytes, bytes]],
    chunk_map: set[tuple[bytes, bytes]],
) -> None:
    """Write the new index at ``new_path``: marked building first, complete last."""
    from castore.store.meta import KIND_ADS, KIND_CHUNK, KIND_MANIFEST, KIND_RAW, MetaDB

    new = MetaDB(new_path, create=True)
    try:

        def begin(t: Txn) -> None:
            t.put(b"index-state", b"building", db=new.db("info"))
            t.put(b"index-created-ns", str(created_ns).encode(), db=new.db("info"))

        new.write(begin)
        items = sorted(sizes.items())
        for i in range(0, len(items), 20000):
            part = items[i : i + 20000]

            def put_blobs(txn: Txn, part: list[tuple[bytes, int]] = part) -> None:
                for k, size in part:
                    kind = (
                        KIND_MANIFEST
                        if k in refs
                        else KIND_CHUNK
                        if k in chunks
                        else KIND_ADS
                        if k in ads
                        else KIND_RAW
                    )
                    txn.put(k, BLOB_ROW.pack(size, kind), db=new.db("blobs"))

            new.write(put_blobs)
        crashpoint("rebuild-mid-build")

        def put_rest(t: Txn) -> None:
            for k, rs in refs.items():
                t.put(k, b"".join(sorted(rs)), db=new.db("refs"))
            for dbname, k, v in catalog:
                t.put(k, v, db=new.db(dbname))
            for k, v in sorted(chunk_map):
                t.put(k, v, db=new.db("chunkmap"))
            t.put(b"schema", b"1", db=new.db("info"))
            t.put(b"index-state", b"complete", db=new.db("info"))

        new.write(put_rest)  # last: the completion record
    finally:
        new.close()


def _damaged_name() -> str:
    return f"meta.damaged-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"


def _as_manifest(data: bytes, source: str) -> Manifest | None:
    """The manifest these bytes are, if valid and in the canonical encoding (``codec.dumps``).

    An indexed manifest is trusted as validated, and its encoded entries are read without
    decoding them (``entries.split_entries``): only bytes that ``commit_manifest`` could have
    written may be indexed (a hand-made encoding could say one path in a field the validator
    reads and another in the one used).
    """
    try:
        m = validate(codec.loads(data, source=source))
        return m if codec.dumps(m) == data else None
    except (CastoreError, ValueError, UnicodeError, RecursionError, OverflowError):
        return None
