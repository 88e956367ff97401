"""ingest --tar: a tar stream straight into the store, never unpacked to disk.

Members are parsed by ``castore.tar.reader``, applied to an in-memory model
of the tree GNU tar would extract (``TarTree``), their content hashed, chunked
with the store's FastCDC parameters and staged under the lease's tmp dir:
for a plain tar file on disk (or stdin redirected from one) by two worker
processes that read member data by offset (``castore.tar.import_content``) while
the parser reads only headers; for a pipe or a gzip/zstd stream as it
streams by (two threads hash and stage chunks). The blobs it writes are
recorded as verified, so that ``export`` can trust them until they change.
The resulting manifest is the one ``ingest DIR`` gives for the tree
``tar --xattrs --xattrs-include='*' --numeric-owner -xpf`` (as root)
extracts, then it is validated and committed by
``castore.store.commit.commit_manifest``.

Rules (README "Tar streams"):

- Names: a leading ``./`` and ``.`` components are dropped; the root member
  (``./``) is not recorded (as the walker leaves out the root). Absolute
  names and ``..`` components are refused (exit 3), in member names and
  hardlink targets alike; symlink targets are data and kept verbatim.
- Duplicates: the last member wins, as with ``tar -x``. A hardlink made
  before the replacement keeps the old content. Replacing a directory that
  has members below it by a non-directory is refused (exit 3).
- A member below a symlink, file or other non-directory member is refused
  (exit 3); so is a hardlink to a name not seen before, or to a directory.
- Missing parent directories stay implicit: the manifest lists exactly the
  members, and checkout (like tar -x) creates the parents 0755.
- Sparse members keep their holes, rounded inward to 4 KiB blocks as a
  filesystem stores them (what the walker reads back with SEEK_HOLE).
- ``--whiteouts oci``: ``.wh.NAME`` is a whiteout of NAME and
  ``.wh..wh..opq`` makes its directory opaque; a whiteout of a name the same
  layer also creates is dropped (a directory becomes opaque instead), and so
  is one below a name the layer makes a non-directory (umoci writes those).
- AppleDouble members (``._NAME``, ``__MACOSX/``): ``fold`` (default) turns
  them into ``com.apple.*`` xattrs of NAME, ``drop`` leaves them out,
  ``keep`` stores them as files; fold and drop say so on stderr.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import pyfastcdc

from castore import fs, progress
from castore.build import make_pool
from castore.bulkmode import bulk
from castore.errors import IntegrityError, TarCorrupt, TarUnsafe
from castore.faults import crashpoint
from castore.manifest import validate
from castore.manifest.model import (
    Chunk,
    Device,
    Directory,
    EntryFields,
    Manifest,
    NamedPipe,
    RegularFile,
    Resource,
    Symlink,
    Whiteout,
)
from castore.readers import ChunkParams
from castore.store import Store, check_name, manifest_refs
from castore.store.commit import commit_manifest
from castore.tar.export_source import save_records, vkey, vval
from castore.tar.format import (
    AREG,
    BLK,
    CHR,
    CONT,
    DIR,
    FIFO,
    LNK,
    REG,
    SYM,
    parse_appledouble,
)
from castore.tar.import_content import PARALLEL_MIN, Dispatcher, OffsetReader, pin
from castore.tar.reader import Member, Stream, members, open_stream
from castore.tar.tree import LogicalReader, TarNode, TarTree, clean_name, holes_of, parent_of
from castore.textsafe import note
from castore.walk import ignored

MAX_APPLEDOUBLE = 16 << 20
MAX_SPARSE_REALSIZE = 1 << 40  # 1 TiB of logical content: hashing holes costs time


@dataclass
class TarOptions:
    """How to read a tar stream."""

    ignore: tuple[str, ...] = ()
    whiteouts: str = "none"  # none | oci
    appledouble: str = "fold"  # fold | drop | keep
    note: Callable[[str], None] = note
    # image layers (castore.remote.image_workers): the flattened tree is validated at commit, and the
    # layer is already read in a worker process, so no per-layer validation and no pool of its own
    validate: bool = True
    parallel: bool = True


class _Importer:
    def __init__(self, tmp_dir: str, blob_root: str, chunking: ChunkParams, opts: TarOptions) -> None:
        self.tmp_dir, self.blob_root, self.cp, self.opts = tmp_dir, blob_root, chunking, opts
        self.tree = TarTree()
        self.staged: list[tuple[str, str]] = []
        self.inos: dict[str, int] = {}  # digest -> inode of the temp file staged for it
        self.pinned: set[str] = set()  # digests staged as pins (hardlinks to blobs found by name)
        self.sizes: dict[str, int] = {}
        self.whiteouts: dict[str, tuple[int, int, int]] = {}  # path -> uid, gid, perm
        self.opaque: set[str] = set()
        self.apple: dict[str, list[tuple[str, bytes]]] = {}
        self.dropped_apple = 0
        self.cdc = pyfastcdc.FastCDC(chunking.avg_size, min_size=chunking.min_size, max_size=chunking.max_size)
        self.buf = bytearray(chunking.threshold)
        # Hashing and writing release the GIL: two threads do them while the main thread parses.
        self.pool = ThreadPoolExecutor(2)
        self.window: deque[Future[None]] = deque()
        self.lock = threading.Lock()
        self.disp: Dispatcher | None = None

    def _submit(self, fn: Callable[..., None], *args: object) -> None:
        self.window.append(self.pool.submit(fn, *args))
        while len(self.window) > 32:  # at most ~32 pieces (<= 16 MiB) in flight
            self.window.popleft().result()

    def drain(self) -> None:
        while self.window:
            self.window.popleft().result()

    def _hash_stage(self, chunks: list[Chunk | None], i: int, begin: int, data: bytes) -> None:
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        chunks[i] = Chunk(d, begin, begin + len(data))
        self._stage(d, data)

    # ------------------------------------------------------------- content

    def _stage(self, digest: str, data: bytes | memoryview) -> None:
        with self.lock:
            if digest in self.sizes:
                return
            self.sizes[digest] = len(data)
        hexd = digest[7:]
        name = os.path.join(self.tmp_dir, secrets.token_hex(12))
        if pin(os.path.join(self.blob_root, hexd[:2], hexd), name):
            with self.lock:  # found by name and pinned: commit_manifest re-hashes it unless indexed
                self.staged.append((name, digest))
                self.pinned.add(digest)
            return
        ino = fs.write_new(name, data)
        with self.lock:
            self.staged.append((name, digest))
            self.inos[digest] = ino

    def content(self, m: Member, node: TarNode) -> None:
        if self.disp is not None and m.sparse is None and m.size > 0:
            stream = m._stream
            assert stream is not None
            node.size = m.size

            def done(digest: str, chunks: tuple[tuple[str, int, int], ...]) -> None:
                node.digest = digest
                node.chunks = tuple(Chunk(d, b, e) for d, b, e in chunks)

            if stream.base + stream.offset + m.size > stream.size:
                raise TarCorrupt(
                    f"tar stream truncated in the data of {m.name[:200]!r} at offset {stream.size - stream.base}"
                )
            self.disp.add(stream.base + stream.offset, m.size, done)
            return
        src = LogicalReader(m)
        size = src.size
        if size >= self.cp.threshold:
            chunks: list[Chunk | None] = []
            for c in self.cdc.cut_stream(src):
                chunks.append(None)
                self._submit(self._hash_stage, chunks, len(chunks) - 1, c.offset, bytes(c.data))
            self.drain()
            node.chunks = tuple(c for c in chunks if c is not None)
        else:
            view = memoryview(self.buf)[:size]
            got = 0
            while got < size:
                n = src.readinto(view[got:])
                if not n:
                    break
                got += n
            self._submit(self._stage, "sha256:" + src.h.hexdigest(), bytes(view[:got]))
        if src.pos != size:
            raise TarCorrupt(f"tar member {m.name[:200]!r} ended early")
        node.size, node.digest = size, "sha256:" + src.h.hexdigest()
        if m.sparse is not None:
            node.holes = holes_of(m.sparse, size)

    # ------------------------------------------------------------- members

    def _special(self, path: str, m: Member) -> bool:
        """AppleDouble and OCI whiteout members; True when handled here."""
        base = path.rsplit("/", 1)[1]
        parent = parent_of(path)
        in_macosx = "/__MACOSX/" in path + "/"
        if self.opts.appledouble != "keep" and (base.startswith("._") or in_macosx):
            rest = path.replace("/__MACOSX", "", 1) if in_macosx else path
            rbase = rest.rsplit("/", 1)[1] if rest else ""
            if (
                self.opts.appledouble == "drop"
                or m.type not in (REG, AREG, CONT)
                or len(rbase) < 3
                or not rbase.startswith("._")
                or m.size > MAX_APPLEDOUBLE
                or m.sparse is not None
            ):
                self.dropped_apple += 1
                return True
            data = bytearray(m.size)
            got = m.readinto(memoryview(data))
            try:
                attrs = parse_appledouble(bytes(data[:got]))
            except TarCorrupt:
                self.opts.note(f"{path}: not a valid AppleDouble file; left out")
                return True
            rparent = parent_of(rest)
            self.apple.setdefault((rparent if rparent != "/" else "") + "/" + rbase[2:], []).extend(attrs)
            return True
        if self.opts.whiteouts == "oci" and base.startswith(".wh."):
            if self._below_non_dir(path):
                return True  # the layer replaces that directory by a non-directory: nothing below is left anyway
            if base == ".wh..wh..opq":
                if parent == "/":
                    self.opts.note("opaque marker at the root of the layer left out")
                else:
                    self.opaque.add(parent)
            elif base.startswith(".wh..wh."):
                self.opts.note(f"{path}: unknown whiteout metadata entry left out")
            else:
                name = base[4:]
                if name in ("", ".", ".."):
                    raise TarUnsafe(f"tar member {path!r}: invalid whiteout name")
                self.whiteouts[(parent if parent != "/" else "") + "/" + name] = (m.uid, m.gid, m.mode & 0o7777)
            return True
        return False

    def _below_non_dir(self, path: str) -> bool:
        """True when a member of this layer that is not a directory stands above ``path`` (OCI whiteouts
        there are moot: umoci writes them for the contents of a directory a file replaced)."""
        p = parent_of(path)
        while p != "/":
            n = self.tree.at.get(p)
            if n is not None and n.kind != "dir":
                return True
            p = parent_of(p)
        return False

    def member(self, m: Member) -> None:
        path = clean_name(m.name, "name")
        if path is None:
            if m.type != DIR:
                raise TarUnsafe(f"tar member {m.name[:200]!r}: not a directory, yet names the root")
            return
        if self.opts.ignore and self._ignored(path):
            return
        if self._special(path, m):
            return
        perm = m.mode & 0o7777
        xattrs = m.xattrs
        t = m.type
        if t == LNK:
            target = clean_name(m.linkname, "hardlink target")
            if target is None:
                raise TarUnsafe(f"tar member {path!r}: hardlink to the root refused")
            self.tree.link(path, target)
            return
        if t in (REG, AREG, CONT):
            if m.sparse is not None and m.realsize > MAX_SPARSE_REALSIZE:
                raise TarUnsafe(f"tar member {path!r}: sparse size {m.realsize} over the 1 TiB limit; refused")
            node = TarNode("file", perm, m.uid, m.gid, m.mtime_ns, xattrs)
            self.tree._check_parents(path)
            self.content(m, node)
        elif t == DIR:
            node = TarNode("dir", perm, m.uid, m.gid, m.mtime_ns, xattrs)
        elif t == SYM:
            if not m.linkname or b"\0" in m.linkname:
                raise TarUnsafe(f"tar member {path!r}: empty symlink target")
            node = TarNode("symlink", 0o777, m.uid, m.gid, m.mtime_ns, xattrs, target=os.fsdecode(m.linkname))
        elif t in (CHR, BLK):
            node = TarNode(
                "device", perm, m.uid, m.gid, m.mtime_ns, xattrs, char=t == CHR, major=m.devmajor, minor=m.devminor
            )
        elif t == FIFO:
            node = TarNode("fifo", perm, m.uid, m.gid, m.mtime_ns, xattrs)
        else:
            raise TarUnsafe(f"tar member {path!r}: unsupported member type {t!r}")
        self.tree.add(path, node)

    def _ignored(self, path: str) -> bool:
        parts = path[1:].split("/")
        return any(ignored("/".join(parts[: i + 1]), parts[i], self.opts.ignore) for i in range(len(parts)))

    # ------------------------------------------------------------ manifest

    def manifest(self) -> Manifest:
        out: list[Resource] = []
        orphans = set(self.apple)
        for n in self.tree.nodes():
            if not n.paths:
                continue
            paths = tuple(sorted(n.paths, key=os.fsencode))
            xattrs = dict(n.xattrs)
            for p in paths:
                for k, v in self.apple.get(p, ()):
                    xattrs.setdefault(k, v)
                orphans.discard(p)
            common = EntryFields(
                paths=paths,
                perm=n.perm,
                uid=n.uid,
                gid=n.gid,
                mtime_ns=n.mtime_ns,
                xattrs=tuple(sorted(xattrs.items())),
            )
            if n.kind == "file":
                out.append(RegularFile(size=n.size, digest=n.digest, chunks=n.chunks, holes=n.holes, **common))
            elif n.kind == "dir":
                out.append(Directory(opaque=paths[0] in self.opaque or paths[0] in self.whiteouts, **common))
            elif n.kind == "symlink":
                out.append(Symlink(target=n.target, **common))
            elif n.kind == "device":
                out.append(Device(char=n.char, major=n.major, minor=n.minor, **common))
            else:
                out.append(NamedPipe(**common))
        at = self.tree.at
        for p in sorted(self.opaque | set(self.whiteouts)):
            if p in at or self._below_non_dir(p):
                continue
            if p in self.tree.has_below or p in self.opaque:
                out.append(Directory(paths=(p,), opaque=True))  # an implicit directory made opaque
            else:
                uid, gid, perm = self.whiteouts[p]
                out.append(Whiteout(paths=(p,), perm=perm, uid=uid, gid=gid))
        if self.dropped_apple:
            self.opts.note(f"left out {self.dropped_apple} AppleDouble member(s) (._* and __MACOSX)")
        for p in sorted(orphans):
            self.opts.note(f"AppleDouble data for {p}, which is not in the stream, left out")
        return validate(Manifest.of(out)) if self.opts.validate else Manifest.of(out)


def read_tar(
    stream: Stream, tmp_dir: str, blob_root: str, chunking: ChunkParams, opts: TarOptions
) -> tuple[Manifest, list[tuple[str, str]], dict[str, int], dict[str, int], set[str]]:
    """Parse a whole stream: its manifest, the staged (temp, digest) pairs, content sizes,
    the inode of each staged temp file (by digest) and the digests staged as pins."""
    imp = _Importer(tmp_dir, blob_root, chunking, opts)
    procs = None
    if stream.seekable:
        reader = OffsetReader(stream.fd, tmp_dir, blob_root, chunking)
        if opts.parallel and stream.size - stream.base >= PARALLEL_MIN:
            procs = make_pool()
            procs.submit(os.getpid)  # fork the workers now, before any thread of ours exists
        imp.disp = Dispatcher(reader, procs, TarCorrupt)
    try:
        with progress.task("ingest", total=stream.size - stream.base if stream.seekable else None) as bar:
            seen = 0
            for m in members(stream):
                imp.member(m)
                bar.advance(stream.offset - seen)  # bytes of the (decoded) stream read so far
                seen = stream.offset
        imp.drain()
        if imp.disp is not None:
            imp.disp.finish()
            imp.staged.extend(imp.disp.staged)
            imp.sizes.update(imp.disp.sizes)
            imp.inos.update(imp.disp.inos)
            imp.pinned.update(imp.disp.pinned)
    finally:
        if procs is not None:
            procs.shutdown(wait=True, cancel_futures=True)
        imp.pool.shutdown(wait=True, cancel_futures=True)
    manifest = imp.manifest()
    refs = manifest_refs(manifest)
    staged = [(t, d) for t, d in imp.staged if d in refs]
    return manifest, staged, imp.sizes, imp.inos, imp.pinned - imp.inos.keys()  # pins only, never written here


@bulk
def ingest_tar(store: Store, src: str, *, name: str | None = None, opts: TarOptions | None = None) -> str:
    """Store the tree of the tar stream ``src`` (a file or ``-``); return its manifest digest.

    Raises TarUnsafe (3) or TarCorrupt (4) on bad input; nothing is recorded then.
    """
    opts = opts or TarOptions()
    if name is not None:
        check_name(name)
    with open_stream(src) as stream, store.lease() as lease:
        os.makedirs(lease.tmp_dir, mode=0o700)
        manifest, staged, sizes, inos, pinned = read_tar(stream, lease.tmp_dir, store.blob_root, store.chunking, opts)
        crashpoint("tar-before-commit")
        try:
            digest = commit_manifest(store, manifest, staged, sizes, name=name, sync_fd=lease.fd, pinned=pinned)
        except IntegrityError as exc:
            raise IntegrityError(f"{exc} (removed by a concurrent gc? ingest the stream again)") from exc
        _record_verified(store, {d: inos[d] for _, d in staged if d in inos})
        return digest


def _record_verified(store: Store, inos: dict[str, int]) -> None:
    """Verified records for the blobs this ingest wrote: their bytes were hashed as they
    were written, so export can trust them until they change (``castore.tar.export_source``).
    Only a blob whose inode is the temp file staged here is recorded, never one that
    already existed (its bytes were not hashed here)."""
    rows = {}
    for d, ino in inos.items():
        try:
            st = os.stat(store.blob_path(d), follow_symlinks=False)
        except FileNotFoundError:
            continue
        if st.st_ino == ino and stat.S_ISREG(st.st_mode):
            rows[vkey(d)] = vval(st)
    save_records(store, rows)
