"""export: a manifest as a deterministic POSIX (PAX) tar stream, content
read from the store and verified.

The same manifest always gives the same bytes: members in path order (a
hardlink group's first path carries the content, the others are link
members to it), fixed header fields (ustar magic, no user/group names,
``././@PaxHeader`` extended headers with mode 0644 and time 0), PAX records
only where the ustar fields cannot hold the value (long or non-ASCII names
and targets, ids over 2**21, sizes over 8 GiB, sub-second or negative
times) plus ``SCHILY.xattr.*`` for every xattr. Files with holes are GNU
sparse 1.0 members (``GNU.sparse.*`` PAX records, map in the data), which
GNU tar and bsdtar restore with their holes. gzip output has mtime 0 and
no name; zstd output is single-threaded.

Every blob or chunk is verified (``castore.tar.export_source``): proven unchanged
since it was last hashed (the store's verified records), then copied by the
kernel into a plain output; else hashed, pieces up to 4 MiB before a byte
of them is written. A mismatch is an IntegrityError (exit 4); with ``-o
FILE`` nothing is left behind, the tar is written to a temporary name and
renamed at the end.

Whiteouts and opaque directories are written as ``.wh.NAME`` and
``.wh..wh..opq`` with ``--whiteouts oci``, else left out with a note, like
sockets and alternate data streams, which a tar cannot hold.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import secrets
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

import zstandard

from castore import fs, progress, textsafe
from castore.bulkmode import bulk
from castore.errors import CastoreError, IntegrityError, NotFound
from castore.fs.io import unlink_on_failure
from castore.manifest.model import (
    Device,
    Directory,
    Manifest,
    NamedPipe,
    RegularFile,
    Resource,
    Socket,
    Symlink,
    Whiteout,
)
from castore.store import Store
from castore.store.blobfile import require_blobs
from castore.tar.export_source import Emitter, Out, Source, load_records, save_records
from castore.tar.format import (
    BLK,
    BLOCK,
    CHR,
    DIR,
    FIFO,
    LNK,
    PAX,
    REG,
    SYM,
    build_header,
    fits_octal,
    format_time_ns,
    padding,
    pax_record,
)

RECORD = 20 * BLOCK
READ = 1 << 20


def _data_ranges(size: int, holes: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    """(offset, length) of the data between holes; a trailing hole ends with (size, 0)."""
    out = [(b, e - b) for b, e in fs.data_ranges(size, holes)]
    if not out or out[-1][0] + out[-1][1] != size:
        out.append((size, 0))
    return out


class TarWriter:
    """Writes the members of one manifest to a binary file object."""

    def __init__(
        self, store: Store, out: Any, *, whiteouts: str = "none", note: Callable[[str], None] | None = None
    ) -> None:
        self.store = store
        self.out = out
        self.whiteouts = whiteouts
        self.note = note or textsafe.note
        self.skipped: dict[str, int] = {}
        self.src: Source | None = None

    # ------------------------------------------------------------- headers

    def _header(
        self,
        name: bytes,
        r: Resource | None,
        typ: bytes,
        *,
        size: int = 0,
        linkname: bytes = b"",
        extra: list[tuple[bytes, bytes]] | None = None,
        perm: int | None = None,
    ) -> None:
        uid, gid = (r.uid, r.gid) if r is not None else (0, 0)
        mtime_ns = (r.mtime_ns or 0) if r is not None else 0
        mode = perm if perm is not None else (r.perm if r is not None else 0o644)
        pax: list[tuple[bytes, bytes]] = []
        binary = False
        for key, value in ((b"path", name), (b"linkpath", linkname)):
            if len(value) > 100 or not value.isascii():
                pax.append((key, value))
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    binary = True
        if binary:
            pax.insert(0, (b"hdrcharset", b"BINARY"))
        if not fits_octal(size, 12):
            pax.append((b"size", str(size).encode()))
        if not fits_octal(uid, 8):
            pax.append((b"uid", str(uid).encode()))
        if not fits_octal(gid, 8):
            pax.append((b"gid", str(gid).encode()))
        secs = mtime_ns // 10**9
        if mtime_ns % 10**9 or not fits_octal(secs, 12):
            pax.append((b"mtime", format_time_ns(mtime_ns)))
        pax.extend(extra or ())
        if r is not None:
            for k, v in r.xattrs:
                pax.append((b"SCHILY.xattr." + os.fsencode(k), v))
        if pax:
            body = b"".join(pax_record(k, v) for k, v in pax)
            self.out.write(
                build_header(name=b"././@PaxHeader", mode=0o644, uid=0, gid=0, size=len(body), mtime=0, typ=PAX)
            )
            self.out.write(body + bytes(padding(len(body))))
        dev = (r.major, r.minor) if isinstance(r, Device) else (0, 0)
        self.out.write(
            build_header(
                name=name,
                mode=mode,
                uid=uid,
                gid=gid,
                size=size,
                mtime=secs,
                typ=typ,
                linkname=linkname,
                devmajor=dev[0],
                devminor=dev[1],
            )
        )

    # ------------------------------------------------------------- content

    def _content(self, r: RegularFile, ranges: list[tuple[int, int]] | None) -> None:
        """The verified content of ``r``: all of it, or only ``ranges`` (offset, length) of it."""
        if r.size == 0:
            if r.digest != "sha256:" + hashlib.sha256(b"").hexdigest():
                raise IntegrityError(f"{r.path}: empty file with a non-empty digest")
            return
        assert self.src is not None
        for begin, end in [(c.begin, c.end) for c in r.chunks] or [(0, r.size)]:
            p = self.src.next()
            try:
                if ranges is None:
                    self.emit.emit(p, 0, end - begin)
                else:
                    for o, n in ranges:
                        lo, hi = max(o, begin), min(o + n, end)
                        if lo < hi:
                            self.emit.emit(p, lo - begin, hi - begin)
            finally:
                self.emit.finish(p)

    def _file(self, name: bytes, r: RegularFile) -> None:
        if not r.holes:
            self._header(name, r, REG, size=r.size)
            self._content(r, None)
            self.out.write(bytes(padding(r.size)))
            return
        ranges = _data_ranges(r.size, r.holes)
        smap = f"{len(ranges)}\n".encode() + b"".join(f"{o}\n{n}\n".encode() for o, n in ranges)
        smap += bytes(padding(len(smap)))
        stored = len(smap) + sum(n for _, n in ranges)
        parent, _, base = name.rpartition(b"/")
        fake = (parent + b"/" if parent else b"") + b"GNUSparseFile.0/" + base
        extra = [
            (b"GNU.sparse.major", b"1"),
            (b"GNU.sparse.minor", b"0"),
            (b"GNU.sparse.name", name),
            (b"GNU.sparse.realsize", str(r.size).encode()),
        ]
        self._header(fake, r, REG, size=stored, extra=extra)
        self.out.write(smap)
        self._content(r, ranges)
        self.out.write(bytes(padding(stored)))

    # ------------------------------------------------------------- members

    def _skip(self, what: str) -> None:
        self.skipped[what] = self.skipped.get(what, 0) + 1

    def write_manifest(self, m: Manifest) -> None:
        entries: list[tuple[bytes, int, Resource]] = []
        for r in m.resources:
            if r.ads:
                self._skip("alternate data stream(s)")
            for i, p in enumerate(r.paths):
                rel = os.fsencode(p)[1:]
                if isinstance(r, Whiteout):
                    if self.whiteouts != "oci":
                        self._skip("whiteout(s) (use --whiteouts oci)")
                        continue
                    parent, _, base = rel.rpartition(b"/")
                    rel = (parent + b"/" if parent else b"") + b".wh." + base
                entries.append((rel, i, r))
                if isinstance(r, Directory) and r.opaque:
                    if self.whiteouts == "oci":
                        entries.append((rel + b"/.wh..wh..opq", -1, r))
                    else:
                        self._skip("opaque director(y/ies) (use --whiteouts oci)")
        # By path components, not whole-path bytes: a directory's members come before any sibling
        # sharing its name as a prefix (`a/`, `a/x`, then `a.b/`), so GNU tar, which sets a
        # directory's times once it has left it, leaves them as recorded.
        entries.sort(key=lambda e: e[0].split(b"/"))
        pieces: list[tuple[str, int, str]] = []
        for _, i, r in entries:
            if i == 0 and isinstance(r, RegularFile) and r.size:
                pieces.extend([(c.digest, c.end - c.begin, r.path) for c in r.chunks] or [(r.digest, r.size, r.path)])
        records = load_records(self.store, {d for d, _, _ in pieces})
        self.src = Source(self.store, pieces, records)
        self.emit = Emitter(self.out, self.src.updates)
        try:
            with progress.task("export", total=sum(size for _, size, _ in pieces)):
                self._write_entries(entries)
        finally:
            self.src.close()
        self.out.write(bytes(2 * BLOCK))
        self.out.write(bytes(-self.out.n % RECORD))
        self.out.flush()
        save_records(self.store, self.src.updates)
        for what, n in self.skipped.items():
            self.note(f"left out {n} {what}: a tar cannot hold them")

    def _write_entries(self, entries: list[tuple[bytes, int, Resource]]) -> None:
        for rel, i, r in entries:
            if i > 0:
                self._header(rel, r, LNK, linkname=os.fsencode(r.paths[0])[1:])
            elif i < 0:
                self._header(rel, None, REG, perm=0)
                self.out.write(b"")
            elif isinstance(r, RegularFile):
                self._file(rel, r)
                progress.advance(r.size)
            elif isinstance(r, Directory):
                self._header(rel + b"/", r, DIR)
            elif isinstance(r, Symlink):
                self._header(rel, r, SYM, linkname=os.fsencode(r.target), perm=0o777)
            elif isinstance(r, Device):
                self._header(rel, r, CHR if r.char else BLK)
            elif isinstance(r, NamedPipe):
                self._header(rel, r, FIFO)
            elif isinstance(r, Whiteout):
                self._header(rel, r, REG)
            elif isinstance(r, Socket):
                self._skip("socket(s)")


def _open_compressor(f: BinaryIO, compress: str | None) -> tuple[Any, Callable[[], None]]:
    if compress == "gzip":
        g = gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=6)
        return g, g.close
    if compress == "zstd":
        z = zstandard.ZstdCompressor(level=3, threads=0).stream_writer(f, closefd=False)
        return z, z.close
    return f, lambda: None


@bulk
def export_tar(
    store: Store,
    manifest: Manifest,
    output: str | None,
    *,
    compress: str | None = None,
    whiteouts: str = "none",
    note: Callable[[str], None] | None = None,
    manifest_digest: str | None = None,
) -> None:
    """Write ``manifest`` as a tar to ``output`` (a path; None or ``-`` for stdout).

    Holds a lease on ``manifest_digest`` (else on the manifest's blobs) meanwhile, so gc
    keeps the content; a file stored as chunks only is read from its chunks.
    Raises BlobNotFound / IntegrityError (exit 4) when content is missing or corrupt.
    """
    refs = store.content_refs(manifest)
    with store.lease([manifest_digest] if manifest_digest else sorted(refs)):
        require_blobs(store, refs)
        _export_tar(store, store.with_chunks(manifest), output, compress=compress, whiteouts=whiteouts, note=note)


def _export_tar(
    store: Store,
    manifest: Manifest,
    output: str | None,
    *,
    compress: str | None,
    whiteouts: str,
    note: Callable[[str], None] | None,
) -> None:
    if output in (None, "-"):
        sys.stdout.flush()
        if compress is None:
            TarWriter(store, Out(fd=sys.stdout.fileno()), whiteouts=whiteouts, note=note).write_manifest(manifest)
            return
        raw = open(sys.stdout.fileno(), "wb", buffering=READ, closefd=False)  # noqa: SIM115
        sink, close = _open_compressor(raw, compress)
        try:
            TarWriter(store, Out(sink), whiteouts=whiteouts, note=note).write_manifest(manifest)
            close()
        finally:
            raw.flush()
        return
    assert output is not None
    out_dir = os.path.dirname(os.path.abspath(output))
    if os.path.isdir(output):
        raise CastoreError(f"{output}: is a directory; give the tar file's name (-o DIR/NAME.tar)")
    if not os.path.isdir(out_dir):
        raise NotFound(f"{output}: no such directory {out_dir}")
    tmp = os.path.join(out_dir, f".{os.path.basename(output)}.tmp-{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with unlink_on_failure(tmp):
        if compress is None:
            try:
                TarWriter(store, Out(fd=fd), whiteouts=whiteouts, note=note).write_manifest(manifest)
            finally:
                os.close(fd)
        else:
            with open(fd, "wb", buffering=READ) as raw:
                sink, close = _open_compressor(raw, compress)
                TarWriter(store, Out(sink), whiteouts=whiteouts, note=note).write_manifest(manifest)
                close()
        os.replace(tmp, output)
