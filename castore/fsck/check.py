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
import secrets
import stat
import struct
import time
from dataclasses import dataclass, field

from castore import fs
from castore.bulkmode import bulk
from castore.digest import hash_fd
from castore.errors import CastoreError, IntegrityError, UnsafeInput
from castore.faults import crashpoint
from castore.fs.linux import RENAME_EXCHANGE
from castore.fsck.signatures import check_signatures
from castore.manifest import Manifest, codec, validate
from castore.materialize import object_record
from castore.store import MARKER_DIR, Store, check_name, chunk_map_rows, manifest_refs, unpack_chunks
from castore.store.lock import flocked
from castore.store.meta import BLOB_ROW, CHUNK_ROW, KIND_NAMES, dkey, dstr
from castore.textsafe import quote, safe_line

READ = 1 << 20
MAX_PATHS = 20


@dataclass
class Finding:
    severity: str  # error | warning | info
    kind: str
    subject: str  # a digest or a path
    detail: str
    names: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    repaired: str = ""

    def line(self) -> str:
        out = f"{self.severity}: {self.kind}: {quote(self.subject)}: {self.detail}"
        if self.names:
            out += f"; names: {', '.join(map(quote, self.names))}"
        if self.paths:
            out += f"; paths: {', '.join(map(quote, self.paths))}"
        if self.repaired:
            out += f" [{self.repaired}]"
        return safe_line(out)


@dataclass
class FsckReport:
    findings: list[Finding] = field(default_factory=list)
    blobs: int = 0
    manifests: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    incomplete: list[str] = field(default_factory=list)  # names that lack content after repair

    @property
    def sound(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def count(self, severity: str) -> int:
        return sum(f.severity == severity for f in self.findings)

    def summary(self) -> str:
        state = "sound" if self.sound else "DAMAGED"
        out = (f"fsck: store {state}: {self.blobs} blobs, {self.manifests} manifests checked, "
               f"{self.bytes_read} bytes re-hashed in {self.seconds:.2f}s; {self.count('error')} errors, "
               f"{self.count('warning')} warnings, {self.count('info')} info")
        if self.incomplete:
            out += f"; incomplete names (ingest the same content again to heal): {', '.join(self.incomplete)}"
        return out

    def as_json(self) -> dict[str, object]:
        return {"sound": self.sound, "blobs": self.blobs, "manifests": self.manifests,
                "bytes_read": self.bytes_read, "seconds": round(self.seconds, 3), "incomplete": self.incomplete,
                "findings": [f.__dict__ for f in self.findings]}


@dataclass
class FsckOptions:
    read_data: bool = False
    subset: tuple[int, int] | None = None  # (n, m): re-hash the n-th of m parts
    repair: bool = False


def parse_subset(text: str) -> tuple[int, int]:
    """``N/M`` with 1 <= N <= M (restic's --read-data-subset). Raises UnsafeInput."""
    n, sep, m = text.partition("/")
    try:
        a, b = int(n), int(m)
    except ValueError:
        a = b = 0
    if not sep or not 1 <= a <= b <= 1 << 20:
        raise UnsafeInput(f"invalid subset {text[:40]!r}: use N/M with 1 <= N <= M")
    return a, b


def hash_file(path: str) -> tuple[str, int]:
    """(digest, size) of a file's content, streamed."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IntegrityError(f"{path}: not a regular file")
        return hash_fd(fd)
    finally:
        os.close(fd)


def quarantine(store_path: str, path: str) -> str:
    """Move a damaged file to STORE/quarantine/ (never deleted by gc); its new path."""
    qdir = os.path.join(store_path, "quarantine")
    os.makedirs(qdir, mode=0o700, exist_ok=True)
    dest = os.path.join(qdir, f"{os.path.basename(path)}.{time.strftime('%Y%m%dT%H%M%S')}.{secrets.token_hex(3)}")
    os.rename(path, dest)
    return dest


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
        db = self.meta.db("blobs")
        for b in range(256):
            prefix = bytes([b])
            rows: dict[bytes, tuple[int, int]] = {}
            with self.meta.read() as txn:
                cur = txn.cursor(db=db)
                if cur.set_range(prefix):
                    for k, v in cur:
                        if k[:1] != prefix:
                            break
                        if len(k) != 32 or len(v) != BLOB_ROW.size:
                            self._add("error", "bad-index-row", bytes(k).hex(), "malformed blob index row")
                            continue
                        rows[bytes(k)] = BLOB_ROW.unpack(v)
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
                    self._add("info", "orphan", dstr(key), "blob file not in the index (gc removes it after "
                              "the grace period)")
            for key, (size, kind) in rows.items():
                self.report.blobs += 1
                digest = dstr(key)
                path = self.store.blob_path(digest)
                if key not in on_disk:
                    self._damage(key, "missing-blob", f"{KIND_NAMES.get(kind, kind)} blob indexed but its file "
                                 "is missing")
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
            self._add("error", "unindexed-manifest", dstr(m), "named manifest has no reference row "
                      "(run fsck --rebuild-index)").names = sorted(catalog[m])
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
                    # indexed manifest and read its entries without decoding them (codec.split_entries).
                    data = self.store.read_blob(dstr(m))
                    man = validate(codec.loads(data, source=dstr(m)))
                    if codec.dumps(man) != data:
                        raise IntegrityError(f"manifest {dstr(m)} is indexed but not in the canonical encoding")
                except CastoreError as exc:
                    self._damage(m, "corrupt-manifest", str(exc))
                    continue
                if {dkey(d) for d in manifest_refs(man)} != set(_split(raw)):
                    self._add("error", "refs-mismatch", dstr(m), "index references differ from the manifest's "
                              "(run fsck --rebuild-index)").names = sorted(catalog.get(m, []))
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
                    raw = txn.get(bytes(v[i:i + 32]), db=blobs_db)
                    if raw is not None:
                        indexed[bytes(v[i:i + 32])] = BLOB_ROW.unpack(raw)[0]
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
                self._add("error", "bad-chunk-map", dstr(k),
                          "its chunks' sizes are not the index's (fsck --repair drops the row)")
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
                self._add("error", "bad-chunk-map", dstr(k),
                          "its chunks do not add up to this file (fsck --repair drops the row)")
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
                    paths.extend(_paths_using(self.store, dstr(m), dstr(key))[:MAX_PATHS - len(paths)])
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
                f = self._add("warning", "changed-link-object", path, f"hardlink object changed since it was "
                              f"recorded ({why}); a hardlinked checkout was edited; --repair removes it")
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

        def fn(txn: object) -> None:
            for k in drop:
                txn.delete(k, db=blobs_db)  # type: ignore[attr-defined]
                txn.delete(b"v" + k, db=links_db)  # type: ignore[attr-defined]
            for k, _ in changed_links:
                txn.delete(k, db=links_db)  # type: ignore[attr-defined]
            for k in self.bad_maps:
                txn.delete(k, db=self.meta.db("chunkmap"))  # type: ignore[attr-defined]
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
    return [raw[i:i + 32] for i in range(0, len(raw) - 31, 32)]


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
            return (f"mode/owner {oct(stat.S_IMODE(st.st_mode))} {st.st_uid}:{st.st_gid}, recorded "
                    f"{oct(perm)} {uid}:{gid}")  # type: ignore[arg-type]
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
    with (flocked(os.path.join(store.path, "gc.lock"), exclusive=True, what="gc/fsck")
          if not store.readonly or opts.repair else contextlib.nullcontext()):
        lock = store.exclusive_lock() if opts.repair else None
        if lock is not None:
            lock.__enter__()  # type: ignore[attr-defined]
        try:
            c = _Checker(store, opts)
            doubt = store.index_doubt()
            if doubt:
                c._add("error", "index-younger-than-blobs", store.path, doubt)
            c.blobs()
            c.manifests()
            c.chunk_map()
            check_signatures(store, c._add, repair=opts.repair)
            changed = c.link_objects()
            if opts.repair:
                c.repair(changed)
        finally:
            if lock is not None:
                lock.__exit__(None, None, None)  # type: ignore[attr-defined]
    c.report.seconds = time.monotonic() - start
    return c.report


# ------------------------------------------------------------- rebuild-index

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
        out = (f"fsck: index rebuilt from {self.blobs} blob files ({self.manifests} manifests) in "
               f"{self.seconds:.2f}s; {len(self.quarantined)} corrupt files quarantined; ")
        if self.catalog_restored:
            out += (f"the old catalog could not be read ({self.catalog_lost or 'empty'}); {self.catalog_names} "
                    "catalog rows restored from the manifest markers")
        elif self.catalog_lost:
            out += (f"the catalog (names, history) could not be salvaged ({self.catalog_lost}) and cannot be "
                    "rebuilt from blobs: re-tag manifests with `continuity tag DIGEST NAME`")
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
    for shard in _listdir(root):
        for n in _listdir(os.path.join(root, shard)):
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


def _catalog_from_markers(markers: dict[bytes, list[tuple[str, int, str]]],
                          manifests: dict[bytes, int]) -> list[tuple[str, bytes, bytes]]:
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
            rows.append(("tags", name.encode(), json.dumps({"digest": dstr(cur[1]), "time_ns": cur[0],
                                                            "size": manifests[cur[1]]}).encode()))
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
    from castore.store.meta import KIND_ADS, KIND_CHUNK, KIND_MANIFEST, KIND_RAW, MetaDB
    start = time.monotonic()
    path = os.path.abspath(store_path)
    from castore.store import check_store_dir
    check_store_dir(path)  # ours and private, no symlinked shard: the walk below follows none
    rep = RebuildReport()
    blob_root = os.path.join(path, "blobs", "sha256")
    with flocked(os.path.join(path, "gc.lock"), exclusive=True, what="gc/fsck"), \
            flocked(os.path.join(path, "lock"), exclusive=True):
        for n in _listdir(path):
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
        sizes: dict[bytes, int] = {}
        refs: dict[bytes, set[bytes]] = {}
        chunks: set[bytes] = set()
        chunk_map: set[tuple[bytes, bytes]] = set()  # whole file -> chunks, from manifests with chunk lists
        ads: set[bytes] = set()
        for shard in sorted(_listdir(blob_root)):
            sdir = os.path.join(blob_root, shard)
            for n in sorted(_listdir(sdir)):
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
                _fsync_dir(os.path.dirname(mpath))
        os.makedirs(os.path.join(path, MARKER_DIR), exist_ok=True)
        new_path = os.path.join(path, f"meta.rebuild-{secrets.token_hex(4)}")
        new = MetaDB(new_path, create=True)
        try:
            def begin(txn: object) -> None:
                t: object = txn
                t.put(b"index-state", b"building", db=new.db("info"))  # type: ignore[attr-defined]
                t.put(b"index-created-ns", str(created_ns).encode(), db=new.db("info"))  # type: ignore
            new.write(begin)
            items = sorted(sizes.items())
            for i in range(0, len(items), 20000):
                part = items[i:i + 20000]

                def put_blobs(txn: object, part: list[tuple[bytes, int]] = part) -> None:
                    for k, size in part:
                        kind = (KIND_MANIFEST if k in refs else KIND_CHUNK if k in chunks
                                else KIND_ADS if k in ads else KIND_RAW)
                        txn.put(k, BLOB_ROW.pack(size, kind), db=new.db("blobs"))  # type: ignore[attr-defined]
                new.write(put_blobs)
            crashpoint("rebuild-mid-build")

            def put_rest(txn: object) -> None:
                t: object = txn
                for k, rs in refs.items():
                    t.put(k, b"".join(sorted(rs)), db=new.db("refs"))  # type: ignore[attr-defined]
                for dbname, k, v in catalog + sig_rows:
                    t.put(k, v, db=new.db(dbname))  # type: ignore[attr-defined]
                for k, v in sorted(chunk_map):
                    t.put(k, v, db=new.db("chunkmap"))  # type: ignore[attr-defined]
                t.put(b"schema", b"1", db=new.db("info"))  # type: ignore[attr-defined]
                t.put(b"index-state", b"complete", db=new.db("info"))  # type: ignore[attr-defined]
            new.write(put_rest)  # last: the completion record
        finally:
            new.close()
        crashpoint("rebuild-after-build")
        rep.old_meta = os.path.join(path, _damaged_name())
        if os.path.lexists(meta_path):
            fs.renameat2(-100, new_path, -100, meta_path, RENAME_EXCHANGE)  # atomic: old or new, never none
            crashpoint("rebuild-after-swap")
            _fsync_dir(path)
            os.rename(new_path, rep.old_meta)
        else:
            rep.old_meta = "(none)"
            fs.renameat2(-100, new_path, -100, meta_path)
        crashpoint("rebuild-after-rename")
        _fsync_dir(path)
    rep.seconds = time.monotonic() - start
    return rep


def _damaged_name() -> str:
    return f"meta.damaged-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"


def _fsync_dir(path: str) -> None:
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _as_manifest(data: bytes, source: str) -> Manifest | None:
    """The manifest these bytes are, if valid and in the canonical encoding (``codec.dumps``).

    An indexed manifest is trusted as validated, and its encoded entries are read without
    decoding them (``codec.split_entries``): only bytes that ``commit_manifest`` could have
    written may be indexed (a hand-made encoding could say one path in a field the validator
    reads and another in the one used).
    """
    try:
        m = validate(codec.loads(data, source=source))
        return m if codec.dumps(m) == data else None
    except (CastoreError, ValueError, UnicodeError, RecursionError, OverflowError):
        return None


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


__all__ = ["Finding", "FsckOptions", "FsckReport", "IntegrityError", "RebuildReport", "fsck", "hash_file",
           "parse_subset", "quarantine", "rebuild_index"]
