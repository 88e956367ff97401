"""The catalog: names and their history, manifest records and the markers outside the index.

``tags`` maps a name to its manifest; ``history`` keeps every manifest a name
was given; ``refs`` records, per manifest committed, the blobs it references
(gc marks from there). STORE/manifests/ab/<hex> marks each manifest outside
the index, with the catalog events of its names, for fsck --rebuild-index.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import namedtuple
from collections.abc import Iterable

from castore import fs
from castore.digest import is_digest
from castore.errors import BlobNotFound, IntegrityError, NotFound, UnsafeInput
from castore.fs.tree import fsync_dir, remove_tree, sync_tree
from castore.store import revisions
from castore.store.base import StoreState
from castore.store.blobs import write_all
from castore.store.layout import MARKER_DIR, check_name, is_hex_prefix
from castore.store.meta import Txn, dkey, dstr
from castore.store.summary import put_summary

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up: castore/__init__.py)

if TYPE_CHECKING:
    from castore.manifest import Manifest


if TYPE_CHECKING:
    from typing import NamedTuple

    class TagInfo(NamedTuple):
        name: str
        digest: str
        time_ns: int
        size: int

else:  # the same tuple without importing typing (not a dataclass either: list imports neither)
    TagInfo = namedtuple("TagInfo", "name digest time_ns size")


class Catalog(StoreState):
    """Names, history and manifest records (``tags``, ``history``, ``refs``) and the manifest markers."""

    if TYPE_CHECKING:  # methods of BlobFiles (blobs.py) the catalog uses

        def blob_size(self, digest: str) -> int | None: ...
        def blob_path(self, digest: str) -> str: ...
        def read_blob(self, digest: str, *, limit: int = 1 << 31) -> bytes: ...

    def marker_path(self, digest: str) -> str:
        return os.path.join(self.path, MARKER_DIR, digest[7:9], digest[7:])

    def mark_manifest(self, digest: str, event: str = "", name: str = "", *, sync: bool = True) -> None:
        """Record, outside the index, that ``digest`` is a manifest (and a catalog event for it).

        STORE/manifests/ab/<hex> exists for every manifest the store committed;
        its lines ``+ TIME_NS NAME`` / ``- TIME_NS NAME`` log the names given
        to and taken from it. fsck --rebuild-index trusts only these files (and
        the old index) to tell manifests from user files that parse as one.
        ``sync=False``: the caller makes it durable (a syncfs that follows).
        """
        path = self.marker_path(digest)
        line = f"{event} {time.time_ns()} {name}\n".encode() if event else b""
        flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        new_shard = False
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            if not os.path.isdir(os.path.join(self.path, MARKER_DIR)):
                self._backfill_markers()  # only the backfill makes the directory: it lists every older manifest
            with contextlib.suppress(FileExistsError):
                os.mkdir(os.path.dirname(path))
                new_shard = True
            fd = os.open(path, flags | os.O_CREAT, 0o644)
        try:
            if line:
                write_all(fd, line)
            if sync:  # cheap when clean; a marker left by a killed commit may not be durable yet
                os.fdatasync(fd)
        finally:
            os.close(fd)
        if sync:
            fsync_dir(os.path.dirname(path))
            if new_shard:
                fsync_dir(os.path.dirname(os.path.dirname(path)))

    def _backfill_markers(self) -> None:
        """A store of an older version: a marker for every manifest its index records, then the directory."""
        tmp = os.path.join(self.path, f"{MARKER_DIR}.new-{os.urandom(4).hex()}")
        os.makedirs(tmp)
        for d in self.manifests():
            os.makedirs(os.path.join(tmp, d[7:9]), exist_ok=True)
            with open(os.path.join(tmp, d[7:9], d[7:]), "wb") as f:
                for t in self.tags():
                    if t.digest == d:
                        f.write(f"+ {t.time_ns} {t.name}\n".encode())
        sync_tree(tmp)
        try:
            fs.renameat2(-100, tmp, -100, os.path.join(self.path, MARKER_DIR))
        except FileExistsError:
            remove_tree(tmp)
            return
        fsync_dir(self.path)

    def load_manifest(self, digest: str) -> Manifest:
        """Read, verify (by digest) and parse a manifest blob; validated unless indexed.

        A manifest gets its `refs` row only from commit_manifest, which
        validated those exact bytes (they are checked against the digest here),
        so an indexed manifest need not be validated again (13% of a
        100k-entry checkout).
        """
        from castore.manifest import codec, validate  # the codec (protobuf) only where a manifest is read

        data = self.read_blob(digest)
        m = codec.loads(data, source=digest)
        return m if self.manifest_indexed(digest) else validate(m)

    def manifest_indexed(self, digest: str) -> bool:
        """The manifest has its `refs` row: commit_manifest validated it (and its blobs are in)."""
        with self.meta.read() as txn:
            return txn.get(dkey(digest), db=self.meta.db("refs")) is not None

    def set_tag(self, t: Txn, name: str, digest: str, size: int) -> None:
        """Point ``name`` at ``digest`` and record a version (not when the name's newest version already
        is this manifest, unless forced: see castore/store/revisions.py RecordPolicy)."""
        if revisions.unchanged(t, self.meta.db("tags"), self.meta.db("history"), name, digest, self.record):
            return
        now = time.time_ns()
        t.put(
            name.encode(),
            json.dumps({"digest": digest, "time_ns": now, "size": size}).encode(),
            db=self.meta.db("tags"),
        )
        t.put(
            revisions.history_key(name, now),
            revisions.history_value(digest, self.record.flags),
            db=self.meta.db("history"),
        )

    def tag(self, name: str, digest: str) -> None:
        """Name a manifest the store recorded as one (its `refs` row); any other blob is refused."""
        check_name(name)
        size = self.blob_size(digest)
        if size is None:
            raise BlobNotFound(digest)
        self.require_manifest(digest)
        self.mark_manifest(digest, "+", name)
        self.meta.write(lambda t: self.set_tag(t, name, digest, size))

    def require_manifest(self, digest: str) -> None:
        """Raise unless ``digest`` is a manifest the store recorded (a blob that merely parses as one is not)."""
        if self.manifest_indexed(digest):
            return
        if self.blob_size(digest) is None and not os.path.exists(self.blob_path(digest)):
            raise NotFound(f"no manifest {digest} in the store")
        raise IntegrityError(
            f"{digest} is a blob of the store, not a manifest it recorded (a stored file is "
            "never taken for a manifest; name a manifest file to store it)"
        )

    def untag(self, name: str) -> None:
        def fn(t: Txn) -> bool:
            return bool(t.delete(name.encode(), db=self.meta.db("tags")))

        digest = self.get_tag(name)
        if digest is not None:
            self.mark_manifest(digest, "-", name)
        if not self.meta.write(fn):
            raise NotFound(f"no manifest named {name!r}")

    def tags(self) -> list[TagInfo]:
        with self.meta.read() as txn:
            rows = list(txn.cursor(db=self.meta.db("tags")))
        out = []
        for k, v in rows:
            rec = json.loads(v)
            out.append(TagInfo(k.decode(), rec["digest"], rec["time_ns"], rec["size"]))
        return out

    def history(self, name: str) -> list[TagInfo]:
        """Every manifest recorded under ``name``, oldest first."""
        with self.meta.read() as txn:
            return [TagInfo(name, dstr(v[:32]), t, 0) for t, v in revisions.rows_of(txn, self.meta.db("history"), name)]

    def get_tag(self, name: str) -> str | None:
        with self.meta.read() as txn:
            raw = txn.get(name.encode(), db=self.meta.db("tags"))
        return None if raw is None else str(json.loads(raw)["digest"])

    def manifests(self) -> list[str]:
        """Every manifest digest the store holds."""
        with self.meta.read() as txn:
            return [dstr(k) for k in txn.cursor(db=self.meta.db("refs")).iternext(values=False)]

    def resolve(self, ref: str) -> str:
        """The manifest digest a user reference names: catalog name, digest or prefix."""
        if ref.startswith("sha256:") and is_digest(ref):
            return ref
        d = self.get_tag(ref) if len(ref.encode()) < 500 else None
        if d is not None:
            return d
        d = revisions.resolve_revision(self, ref) if len(ref.encode()) < 600 else None
        if d is not None:
            return d
        hexpart = ref[7:] if ref.startswith("sha256:") else ref
        if is_hex_prefix(hexpart) and len(hexpart) < 64:
            found = [m for m in self.manifests() if m[7:].startswith(hexpart)]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise UnsafeInput(f"digest prefix {hexpart} is ambiguous ({len(found)} manifests)")
        raise NotFound(f"no manifest named {ref!r} in the store{revisions.short_prefix_hint(ref)}")

    def record_manifest(self, txn: Txn, digest: str, refs: Iterable[str], manifest: Manifest | None = None) -> None:
        """Index a manifest's references (for gc), and its summary (for list), in the caller's transaction."""
        keys = sorted({dkey(d) for d in refs})
        txn.put(dkey(digest), b"".join(keys), db=self.meta.db("refs"))
        if manifest is not None:
            put_summary(self.meta, txn, digest, manifest)

    def manifest_refs(self, digest: str) -> list[str]:
        with self.meta.read() as txn:
            raw = txn.get(dkey(digest), db=self.meta.db("refs"))
        if raw is None:
            return []
        return [dstr(raw[i : i + 32]) for i in range(0, len(raw), 32)]
