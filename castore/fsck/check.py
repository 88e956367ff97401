"""fsck: check the store (index <-> files, catalog references, blob content,
hardlink-checkout objects), repair what can be repaired, rebuild the index.

Severity: ``error`` is damage (exit 4), ``warning`` needs attention but
loses nothing, ``info`` is harmless (orphans, stale cache rows; gc removes
them). Every damaged blob is reported with the manifests, catalog names and
paths that need it.

Locking: STORE/gc.lock (so gc and fsck never interleave); ``repair`` also
holds the store lock exclusive for the whole run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import time

from castore import progress
from castore.bulkmode import bulk
from castore.errors import CastoreError, IntegrityError
from castore.fsck.quarantine import hash_file, quarantine
from castore.fsck.rebuild import RebuildReport, rebuild_index
from castore.fsck.report import Finding, FsckOptions, FsckReport, parse_subset
from castore.fsck.signatures import check_signatures
from castore.manifest import Manifest, codec, validate
from castore.store import Store, manifest_refs, treecache, unpack_chunks
from castore.store.links import object_record
from castore.store.lock import flocked
from castore.store.meta import BLOB_ROW, CHUNK_ROW, KIND_NAMES, Txn, dkey, dstr, prefix_rows

READ = 1 << 20
MAX_PATHS = 20


class _Checker:
    def __init__(self, store: Store, opts: FsckOptions) -> None:
        self.store, self.opts = store, opts
        self.meta = store.meta
        self.report = FsckReport()
        self.bad: dict[bytes, Finding] = {}  # damaged or missing content, by key
        self.bad_maps: list[bytes] = []  # chunk-map rows to drop on --repair

    def _selected(self, key: bytes) -> bool:
        if not self.opts.read_data:
            return False
        if self.opts.subset is None:
            return True
        n, m = self.opts.subset
        return int.from_bytes(key[:4], "big") % m == n - 1

    # --------------------------------------------------------- index <-> files

    def blobs(self) -> None:
        for b in range(256):
            prefix = bytes([b])
            rows: dict[bytes, tuple[int, int]] = {}
            for k, v in prefix_rows(self.meta, "blobs", prefix):
                if len(k) != 32 or len(v) != BLOB_ROW.size:
                    self._add("error", "bad-index-row", k.hex(), "malformed blob index row")
                    continue
                rows[k] = BLOB_ROW.unpack(v)
            sdir = os.path.join(self.store.blob_root, prefix.hex())
            try:
                names = os.listdir(sdir)
            except FileNotFoundError:
                names = []
            on_disk = set()
            for n in names:
                try:
                    key = bytes.fromhex(n) if len(n) == 64 else None
                except ValueError:
                    key = None
                path = os.path.join(sdir, n)
                if key is None:
                    self._add("info", "stray-file", path, "not a blob name (gc leaves it; remove by hand)")
                    continue
                on_disk.add(key)
                if key not in rows:
                    self._add(
                        "info", "orphan", dstr(key), "blob file not in the index (gc removes it after the grace period)"
                    )
            for key, (size, kind) in rows.items():
                progress.advance()
                self.report.blobs += 1
                digest = dstr(key)
                path = self.store.blob_path(digest)
                if key not in on_disk:
                    self._damage(
                        key, "missing-blob", f"{KIND_NAMES.get(kind, kind)} blob indexed but its file is missing"
                    )
                    continue
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    self._damage(key, "missing-blob", "blob file vanished")
                    continue
                if not stat.S_ISREG(st.st_mode):
                    self._damage(key, "not-a-file", "blob path is not a regular file")
                elif st.st_size != size:
                    self._damage(key, "size-mismatch", f"expected {size} bytes, file has {st.st_size}")
                elif self._selected(key):
                    got, nread = hash_file(path)
                    self.report.bytes_read += nread
                    if got != digest:
                        self._damage(key, "corrupt-blob", f"content hashes to {got}")

    def _add(self, severity: str, kind: str, subject: str, detail: str) -> Finding:
        f = Finding(severity, kind, subject, detail)
        self.report.findings.append(f)
        return f

    def _damage(self, key: bytes, kind: str, detail: str) -> None:
        self.bad[key] = self._add("error", kind, dstr(key), detail)

    # ------------------------------------------------------ manifests, catalog

    def catalog(self) -> dict[bytes, list[str]]:
        """Manifest key -> catalog names (``name`` current, ``name@time`` history)."""
        names: dict[bytes, list[str]] = {}
        with self.meta.read() as txn:
            for k, v in txn.cursor(db=self.meta.db("tags")):
                name = bytes(k).decode(errors="replace")
                try:
                    rec = json.loads(bytes(v))
                    names.setdefault(dkey(rec["digest"]), []).append(name)
                except (ValueError, KeyError, TypeError):
                    self._add("error", "bad-catalog-row", name, "catalog entry is not readable")
            for k, v in txn.cursor(db=self.meta.db("history")):
                k = bytes(k)
                if len(k) < 10 or len(v) not in (32, 33):  # digest [flags] (castore/store/revisions.py)
                    self._add("error", "bad-catalog-row", k.hex(), "history entry is malformed")
                    continue
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int.from_bytes(k[-8:], "big") / 1e9))
                names.setdefault(bytes(v[:32]), []).append(f"{k[:-9].decode(errors='replace')}@{when}")
        return names

    def manifests(self) -> None:
        catalog = self.catalog()
        blobs_db, refs_db = self.meta.db("blobs"), self.meta.db("refs")
        with self.meta.read() as txn:
            refs = {bytes(k): bytes(v) for k, v in txn.cursor(db=refs_db)}
            missing_manifest = {m for m in set(refs) | set(catalog) if txn.get(m, db=blobs_db) is None}
            needed = {c for raw in refs.values() for c in _split(raw)}
            absent = {c for c in needed if txn.get(c, db=blobs_db) is None}
            # A whole-file digest stored as chunks only is there when its chunk map row's chunks are.
            map_db = self.meta.db("chunkmap")
            for c in list(absent):
                chunks = unpack_chunks(bytes(txn.get(c, b"", db=map_db)))
                if chunks and all(txn.get(dkey(x.digest), db=blobs_db) is not None for x in chunks):
                    absent.discard(c)
        self.report.manifests = len(refs)
        for m in sorted(set(catalog) - set(refs)):
            if m in missing_manifest:
                continue
            self._add(
                "error", "unindexed-manifest", dstr(m), "named manifest has no reference row (run fsck --rebuild-index)"
            ).names = sorted(catalog[m])
        for m in sorted(missing_manifest):
            if m in self.bad:
                continue
            f = self._add("error", "missing-manifest", dstr(m), "manifest blob is not in the index")
            f.names = sorted(catalog.get(m, []))
            self.bad[m] = f
        for c in sorted(absent - set(self.bad)):
            self.bad[c] = self._add("error", "dangling-ref", dstr(c), "referenced content is not in the index")
        if self.opts.read_data:
            for m, raw in refs.items():
                if m in self.bad or not self._selected(m):
                    continue
                try:
                    # Validated again, and in the encoding commit writes: checkout and apply trust an
                    # indexed manifest and read its entries without decoding them (entries.split_entries).
                    data = self.store.read_blob(dstr(m))
                    man = validate(codec.loads(data, source=dstr(m)))
                    if codec.dumps(man) != data:
                        raise IntegrityError(f"manifest {dstr(m)} is indexed but not in the canonical encoding")
                except CastoreError as exc:
                    self._damage(m, "corrupt-manifest", str(exc))
                    continue
                if {dkey(d) for d in manifest_refs(man)} != set(_split(raw)):
                    self._add(
                        "error",
                        "refs-mismatch",
                        dstr(m),
                        "index references differ from the manifest's (run fsck --rebuild-index)",
                    ).names = sorted(catalog.get(m, []))
        self._attribute(refs, catalog)

    def chunk_map(self) -> None:
        """Chunk-map rows: well formed; chunks that left the index make a row stale (info: gc drops
        it); with data reading, the chunks put together hash to the row's whole-file digest."""
        blobs_db, map_db = self.meta.db("blobs"), self.meta.db("chunkmap")
        with self.meta.read() as txn:
            rows = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=map_db)]
            indexed: dict[bytes, int] = {}  # chunk -> size in the index
            for _, v in rows:
                for i in range(0, len(v) - 31, CHUNK_ROW.size):
                    raw = txn.get(bytes(v[i : i + 32]), db=blobs_db)
                    if raw is not None:
                        indexed[bytes(v[i : i + 32])] = BLOB_ROW.unpack(raw)[0]
        for k, v in rows:
            chunks = unpack_chunks(v)
            if len(k) != 32 or not chunks:
                self._add("error", "bad-chunk-map", k.hex(), "chunk map row is malformed (fsck --repair drops it)")
                self.bad_maps.append(k)
                continue
            if any(dkey(c.digest) not in indexed for c in chunks):
                self._add("info", "stale-chunk-map", dstr(k), "a chunk of this file left the store (gc drops the row)")
                continue
            if any(indexed[dkey(c.digest)] != c.end - c.begin for c in chunks):
                self._add(
                    "error",
                    "bad-chunk-map",
                    dstr(k),
                    "its chunks' sizes are not the index's (fsck --repair drops the row)",
                )
                self.bad_maps.append(k)
                continue
            if not self._selected(k):
                continue
            h = hashlib.sha256()
            try:
                for c in chunks:
                    h.update(self.store.read_blob(c.digest, limit=c.end - c.begin))
            except CastoreError:
                continue  # the chunk's own damage is reported by the blob check
            if "sha256:" + h.hexdigest() != dstr(k):
                self._add(
                    "error",
                    "bad-chunk-map",
                    dstr(k),
                    "its chunks do not add up to this file (fsck --repair drops the row)",
                )
                self.bad_maps.append(k)

    def _attribute(self, refs: dict[bytes, bytes], catalog: dict[bytes, list[str]]) -> None:
        """Name the manifests, catalog names and paths each damaged blob affects."""
        if not self.bad:
            return
        users: dict[bytes, list[bytes]] = {}
        for m, raw in refs.items():
            for c in _split(raw):
                if c in self.bad:
                    users.setdefault(c, []).append(m)
        for key, f in self.bad.items():
            ms = users.get(key, [])
            if key in catalog and key not in ms:
                ms = [key, *ms]
            names: set[str] = set()
            paths: list[str] = []
            for m in ms:
                names.update(catalog.get(m, []) or [f"(unnamed {dstr(m)[:19]})"])
                if m != key and len(paths) < MAX_PATHS:
                    paths.extend(_paths_using(self.store, dstr(m), dstr(key))[: MAX_PATHS - len(paths)])
            f.names = sorted(names)
            f.paths = paths
            users_n = sum(m != key for m in ms)
            if users_n:
                f.detail += f"; needed by {users_n} manifest(s)"

    # ------------------------------------------------------ hardlink objects

    def link_objects(self) -> list[tuple[bytes, str]]:
        """Hardlink-checkout objects changed since recorded (an edit through a checkout)."""
        root = os.path.join(self.store.path, "links")
        changed: list[tuple[bytes, str]] = []
        with self.meta.read() as txn:
            rows = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=self.meta.db("links")) if k[:1] == b"o"]
        for k, v in rows:
            path = os.path.join(root, k[1:2].hex(), k[1:].hex())
            try:
                rec = object_record(v)
                st = os.lstat(path)
            except FileNotFoundError:
                self._add("info", "stale-cache-row", path, "hardlink object gone (gc drops the row)")
                continue
            except (ValueError, EOFError, TypeError):
                self._add("warning", "bad-cache-row", path, "unreadable hardlink object record")
                changed.append((k, path))
                continue
            why = _object_changes(rec, st)
            if not why and len(rec) >= 8 and self.opts.read_data:
                got, n = hash_file(path)
                self.report.bytes_read += n
                if got != rec[4]:
                    why = f"content hashes to {got}, expected {rec[4]}"
            if why:
                f = self._add(
                    "warning",
                    "changed-link-object",
                    path,
                    f"hardlink object changed since it was "
                    f"recorded ({why}); a hardlinked checkout was edited; --repair removes it",
                )
                f.paths = [f"{st.st_nlink - 1} checkout link(s)"]
                changed.append((k, path))
        return changed

    # ---------------------------------------------------------------- repair

    def repair(self, changed_links: list[tuple[bytes, str]]) -> None:
        blobs_db, links_db = self.meta.db("blobs"), self.meta.db("links")
        drop: list[bytes] = []
        for key, f in self.bad.items():
            if f.kind in ("corrupt-blob", "size-mismatch", "not-a-file", "corrupt-manifest"):
                path = self.store.blob_path(dstr(key))
                try:
                    f.repaired = f"quarantined to {quarantine(self.store.path, path)}"
                except FileNotFoundError:
                    f.repaired = "file gone"
                drop.append(key)
            elif f.kind in ("missing-blob", "missing-manifest"):
                drop.append(key)
                f.repaired = "index row dropped"

        def fn(txn: Txn) -> None:
            if drop:  # ingest's unchanged-tree shortcut trusts no blob row after this (castore/store/treecache.py)
                treecache.note_deletions(self.meta, txn)
            for k in drop:
                txn.delete(k, db=blobs_db)
                txn.delete(b"v" + k, db=links_db)
            for k, _ in changed_links:
                txn.delete(k, db=links_db)
            for k in self.bad_maps:
                txn.delete(k, db=self.meta.db("chunkmap"))

        self.meta.write(fn)
        for f in self.report.findings:
            if f.kind == "bad-chunk-map":
                f.repaired = "row dropped"
        for _, path in changed_links:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            for f in self.report.findings:
                if f.subject == path and f.kind in ("changed-link-object", "bad-cache-row"):
                    f.repaired = "removed (the next hardlink checkout makes a fresh one)"
        incomplete: set[str] = set()
        for f in self.report.findings:
            if f.severity == "error":
                incomplete.update(n for n in f.names if not n.startswith("(unnamed"))
        self.report.incomplete = sorted(incomplete)


def _split(raw: bytes) -> list[bytes]:
    return [raw[i : i + 32] for i in range(0, len(raw) - 31, 32)]


def _object_changes(rec: tuple[object, ...], st: os.stat_result) -> str:
    """Why a hardlink object no longer matches its record ('' when it still does)."""
    ino, size, mtime = rec[0], rec[1], rec[2]
    if ino != st.st_ino:
        return "replaced"
    if size != st.st_size:
        return f"size {st.st_size}, recorded {size}"
    if mtime != st.st_mtime_ns:
        return "modification time changed"
    if len(rec) >= 8:
        perm, uid, gid = rec[5], rec[6], rec[7]
        if (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) != (perm, uid, gid):
            mode = oct(stat.S_IMODE(st.st_mode))
            return f"mode/owner {mode} {st.st_uid}:{st.st_gid}, recorded {perm:#o} {uid}:{gid}"
    return ""


def _paths_using(store: Store, manifest: str, digest: str) -> list[str]:
    try:
        m: Manifest = store.load_manifest(manifest)
    except CastoreError:
        return [f"(manifest {manifest[:19]} unreadable)"]
    out = []
    for r in m.resources:
        ds = {getattr(r, "digest", None)} | {c.digest for c in getattr(r, "chunks", ())} | {a.digest for a in r.ads}
        if digest in ds:
            out.append(r.path)
            if len(out) >= MAX_PATHS:
                break
    return out


@bulk
def fsck(store: Store, opts: FsckOptions | None = None) -> FsckReport:
    """Check (and with ``opts.repair`` repair) the store. Raises IntegrityError on unreadable metadata."""
    opts = opts or FsckOptions()
    start = time.monotonic()
    # A read-only store (castore/store/readonly.py) is checked without the lock: no gc can run on it.
    with (
        flocked(os.path.join(store.path, "gc.lock"), exclusive=True, what="gc/fsck")
        if not store.readonly or opts.repair
        else contextlib.nullcontext()
    ):
        with store.exclusive_lock() if opts.repair else contextlib.nullcontext():
            c = _Checker(store, opts)
            doubt = store.index_doubt()
            if doubt:
                c._add("error", "index-younger-than-blobs", store.path, doubt)
            with progress.task("fsck", total=store.meta.entries("blobs"), unit="blobs"):
                c.blobs()
            c.manifests()
            c.chunk_map()
            check_signatures(store, c._add, repair=opts.repair)
            changed = c.link_objects()
            if opts.repair:
                c.repair(changed)
    c.report.seconds = time.monotonic() - start
    return c.report


# ------------------------------------------------------------- rebuild-index

__all__ = [
    "Finding",
    "FsckOptions",
    "FsckReport",
    "IntegrityError",
    "RebuildReport",
    "fsck",
    "hash_file",
    "parse_subset",
    "quarantine",
    "rebuild_index",
]
