"""apply: make an existing tree match a manifest, in place, changing only what differs.

``apply_tree`` finds what ROOT holds, by one of two scans
(``castore.apply.scan``): the whole tree, or, when the store has a record of
the last apply to ROOT (``castore.apply.state``), only what changed there or
in the manifest since; then the applier (``castore.apply.changes``) changes
what differs, in four phases, never through a symlink; then the record is
written for the next apply. Content comes from the store, a directory or a
tar (``castore.apply.sources``), verified.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import itertools
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import castore.apply.state as apply_state
import castore.store.statcache as statcache
from castore import fs, progress
from castore.apply.changes import TMP_PREFIX, Applier, ApplyOptions, ApplyReport, same_content
from castore.apply.scan import Changes, Scan, TreeChanged, scan_changes, scan_tree
from castore.apply.sources import DirSource, Source, StagedSource, stage_tar
from castore.bulkmode import bulk
from castore.errors import CastoreError, IntegrityError, NotFound, UnsafeInput, raise_if_full
from castore.faults import crashpoint
from castore.fs.tree import remove_contents
from castore.manifest import codec
from castore.manifest.entries import split_entries
from castore.manifest.model import Manifest, RegularFile, Resource, Symlink
from castore.manifest.validate import validate
from castore.materialize import Options, Writer, count_ads, note_ads, relative_target, without_attrs
from castore.store import Lease, Store, manifest_refs
from castore.store.blobfile import require_blobs

__all__ = ["ApplyOptions", "ApplyReport", "TreeChanged", "apply_tree"]


def _rewrite_symlinks(m: Manifest) -> Manifest:
    out: list[Resource] = []
    for r in m.resources:
        if isinstance(r, Symlink) and r.target.startswith("/"):
            r = dataclasses.replace(r, target=relative_target(r.path, r.target))
        out.append(r)
    return Manifest(tuple(out))


@contextmanager
def _root(root: str) -> Iterator[tuple[str, int]]:
    root = os.path.abspath(root)
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        parent = os.path.dirname(root)
        if not os.path.isdir(parent):
            raise NotFound(f"{root}: neither it nor its parent directory exists") from None
        os.mkdir(root, 0o755)
        st = os.lstat(root)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeInput(f"{root}: ROOT is a symlink; refusing to apply through it (give the real path)")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeInput(f"{root}: ROOT is not a directory")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        got = os.fstat(fd)
        if (got.st_dev, got.st_ino) != (st.st_dev, st.st_ino):
            raise UnsafeInput(f"{root}: ROOT changed while it was opened")
        yield root, fd
    finally:
        os.close(fd)


@bulk
def apply_tree(
    root: str,
    manifest: Manifest | None,
    *,
    store: Store | None = None,
    source: str = "store",
    opts: ApplyOptions | None = None,
    manifest_digest: str | None = None,
    validated: bool = False,
) -> ApplyReport:
    """Make the tree at ``root`` match ``manifest`` in place; return what was done.

    ``manifest`` may be None when ``manifest_digest`` names a manifest of
    ``store``: it is then read only if ROOT has no usable record of an
    earlier apply (``castore.apply.state``), and otherwise only the entries
    that differ from that record are decoded.
    ``source`` is "store" (content from ``store``), a directory, or a tar file.
    ``validated``: the caller already ran ``validate`` on ``manifest`` (as
    ``Store.load_manifest`` and the CLI's ``resolve`` do).
    Raises UnsafeInput (ROOT a symlink, bad manifest), NotFound / BlobNotFound
    (content missing: checked before anything changes), IntegrityError
    (content that does not match its digest), TreeChanged (ROOT changed under
    us: rerun), ResourceLimit (no space).
    """
    return _apply(root, manifest, store, source, opts or ApplyOptions(), manifest_digest, validated)


def _apply(
    root: str,
    manifest: Manifest | None,
    store: Store | None,
    source: str,
    opts: ApplyOptions,
    manifest_digest: str | None,
    validated: bool,
) -> ApplyReport:
    if manifest is None and (store is None or manifest_digest is None):
        raise CastoreError("apply needs a manifest, or a store and the digest of one of its manifests")
    if manifest is not None and not validated:
        validate(manifest)
    if opts.devices not in ("create", "check", "skip"):
        raise UnsafeInput(f"unknown device policy {opts.devices!r}")
    if source != "store" and not os.path.exists(source):
        raise NotFound(f"{source}: no such source directory or tar file")
    with ExitStack() as stack:
        root, root_fd = stack.enter_context(_root(root))
        old_umask = os.umask(0)
        stack.callback(os.umask, old_umask)
        use_store = source == "store"
        if use_store and store is None:
            raise CastoreError("no store to take content from; give --source DIR|TAR")
        if use_store:
            assert store is not None
            lease = stack.enter_context(store.lease([manifest_digest] if manifest_digest else []))
        started = time.time_ns()
        root_st = os.fstat(root_fd)
        # ROOT's record: read the store's manifest as entries (no decoding) and apply only what
        # differs from the record, or what changed in ROOT since.
        table, changes, blob = _incremental(root, root_fd, root_st, store, manifest_digest, opts, started)
        if changes is not None:
            manifest = changes.manifest
            scan = changes.scan
        else:
            if manifest is None:
                assert store is not None and manifest_digest is not None
                # Indexed (validated at commit) when it was read above: decoded from those bytes.
                manifest = (
                    codec.loads(blob, source=manifest_digest)
                    if blob is not None
                    else store.load_manifest(manifest_digest)
                )
            if opts.rewrite_absolute_symlinks:
                manifest = _rewrite_symlinks(manifest)
            if opts.ignore:
                manifest = Manifest(tuple(without_attrs(manifest.resources, opts.ignore, old_umask)))
            scan = scan_tree(root, root_fd, manifest.by_path(), store, opts.rehash, frozenset(fs.mounts_below(root_fd)))
        note_ads(count_ads(manifest.resources), opts.note)
        writer = Writer(
            store if use_store else None,
            Options(
                link=opts.link if use_store else "copy",
                verify=opts.verify,
                devices=opts.devices,
                sockets=opts.sockets,
                note=opts.note,
            ),
        )
        if use_store:
            writer.tmp_dir = lease.tmp_dir  # new hardlink objects: where gc leaves them alone
        src: Source = Source()
        needed = _needed_content(manifest, scan, opts)
        if use_store:
            assert store is not None
            local_only = _check_store_content(store, lease, manifest_digest, needed, scan)
        elif os.path.isdir(source):
            src = _dir_source(stack, source, needed, scan)
        else:
            src = _tar_source(stack, root_fd, source, needed, scan, opts)
        ap = Applier(root, root_fd, manifest, src, writer, opts)
        ap.scan = scan
        ap.check_mounts()
        if use_store:
            ap.local_only = local_only
        try:
            _phases(ap, writer, root, root_fd, opts)
        finally:
            ap.dirs.close()
        if store is not None and scan.cache_rows:
            statcache.record(store, scan.cache_rows)
        ap.report.hashed = scan.hashed
        if changes is not None:
            ap.report.trusted = len(changes.rows) - changes.rows.count(None)
        if table is not None:
            assert store is not None and manifest_digest is not None
            base = (changes.order, changes.rows) if changes is not None else None
            rec = _record(manifest_digest, table, ap, base, apply_state.trusted_row(root_st, started))
            apply_state.save(store, root, root_st, rec)
        return ap.report
    raise AssertionError("unreachable")


def _incremental(
    root: str,
    root_fd: int,
    root_st: os.stat_result,
    store: Store | None,
    manifest_digest: str | None,
    opts: ApplyOptions,
    started: int,
) -> tuple[tuple[list[bytes], list[tuple[str, ...]], dict[str, int], list[int]] | None, Changes | None, bytes | None]:
    """(the store manifest's entry table, the changes since ROOT's record, the manifest's bytes):
    each None when it does not apply (no indexed store manifest, no usable record)."""
    table: tuple[list[bytes], list[tuple[str, ...]], dict[str, int], list[int]] | None = None
    changes = None
    blob: bytes | None = None  # the store's manifest, read (and verified) once
    if (
        store is not None
        and manifest_digest is not None
        and not opts.rewrite_absolute_symlinks
        and not opts.ignore
        and store.manifest_indexed(manifest_digest)
    ):
        rec = None if opts.rehash else apply_state.load(store, root, root_st)
        lstats = apply_state.ChangedPaths(root_fd, rec) if rec is not None else None
        try:
            starts: list[int] = []
            blob = store.read_blob(manifest_digest)
            entries, paths = split_entries(blob, source=manifest_digest, starts=starts)
            table = entries, paths, apply_state.shared_paths(paths), starts
            old_e = _recorded_entries(store, rec) if rec is not None else None
            if rec is not None and lstats is not None and old_e is not None:
                new_e = apply_state.Entries(blob, starts, [len(e) for e in entries])
                try:
                    changes = scan_changes(
                        root, root_fd, rec, old_e, lstats, new_e, paths, table[2], store, opts.rehash, started
                    )
                except apply_state.PassFailed:
                    changes = None  # the full scan below
        finally:
            if lstats is not None:
                lstats.cancel()
    return table, changes, blob


def _check_store_content(
    store: Store, lease: Lease, manifest_digest: str | None, needed: dict[str, RegularFile], scan: Scan
) -> set[str]:
    """Every blob apply needs from the store is there (else BlobNotFound); the digests only ROOT holds."""
    missing = store.missing_blobs(manifest_refs(Manifest(tuple(needed.values()))))
    local_only = {
        r.digest
        for r in needed.values()
        if r.digest in scan.local and (r.digest in missing or any(c.digest in missing for c in r.chunks))
    }
    from_store = Manifest(tuple(r for r in needed.values() if r.digest not in local_only))
    # Whole-file digests stored as chunks only (a manifest without chunk lists) count by their chunks.
    if manifest_digest is None:  # a manifest file: the lease names its blobs, checked from then on
        refs = store.content_refs(from_store)
        lease.add(sorted(refs))
        require_blobs(store, refs, "apply needs")
    elif missing:
        require_blobs(store, store.content_refs(from_store), "apply needs")
    return local_only


def _dir_source(stack: ExitStack, source: str, needed: dict[str, RegularFile], scan: Scan) -> Source:
    """The directory ``source``, holding every file ROOT lacks (else NotFound)."""
    dsrc = DirSource(source)
    stack.callback(dsrc.close)
    absent = []
    for r in needed.values():
        found = dsrc.lookup(r)
        if found is not None:
            os.close(found[0])
        elif r.digest not in scan.local:
            absent.append(r.path)
    if absent:
        raise NotFound(f"{absent[0]}: not in the source directory {source} ({len(absent)} file(s) missing)")
    return dsrc


def _tar_source(
    stack: ExitStack, root_fd: int, source: str, needed: dict[str, RegularFile], scan: Scan, opts: ApplyOptions
) -> Source:
    """The files ROOT lacks, staged from the tar ``source`` into a private directory of ROOT."""
    stage = TMP_PREFIX + "stage-" + secrets.token_hex(4)
    os.mkdir(stage, 0o700, dir_fd=root_fd)
    sfd = os.open(stage, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)

    def _drop_stage() -> None:
        remove_contents(sfd)
        os.close(sfd)
        os.rmdir(stage, dir_fd=root_fd)

    stack.callback(_drop_stage)
    tar_needed = {p: r for r in needed.values() if r.digest not in scan.local for p in r.paths}
    staged = stage_tar(source, sfd, tar_needed, opts.verify)
    lacking = sorted({r.path for r in tar_needed.values() if r.digest not in staged})
    if lacking:
        raise NotFound(f"{lacking[0]}: not in the tar {source} ({len(lacking)} file(s) missing)")
    return StagedSource(sfd, staged)


def _phases(ap: Applier, writer: Writer, root: str, root_fd: int, opts: ApplyOptions) -> None:
    """The four phases, then the records and syncs; an OSError from a ROOT changed meanwhile is TreeChanged."""
    try:
        ap.deletions()
        ap.directories()
        with progress.task("apply", total=ap.bytes_to_write() if progress.active() else None):
            ap.leaves()
        crashpoint("apply-before-dir-metadata")
        ap.dir_metadata()
        # New hardlink objects (on ROOT's filesystem) are made durable before the records
        # that vouch for them commit; root_fd predates every write, so syncfs sees any EIO.
        writer.flush(before_commit=(lambda: fs.syncfs(root_fd)) if writer.made_objects else None)
        if opts.sync:
            fs.syncfs(root_fd)
    except OSError as exc:
        if isinstance(exc, CastoreError):
            raise
        raise_if_full(exc, root)
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EEXIST, errno.ENOTEMPTY):
            # Something in ROOT changed between the scan and the change (another process).
            where = f" ({os.fsdecode(exc.filename)})" if exc.filename else ""
            raise TreeChanged(f"{root}: changed during apply{where}: {exc.strerror}; rerun apply") from exc
        raise


def _recorded_entries(store: Store, rec: apply_state.Record) -> apply_state.Entries | None:
    """The entries of the manifest ``rec`` names, or None when the store lost it (gc): apply scans it all."""
    try:
        return rec.entries(store.read_blob(rec.digest))
    except (NotFound, IntegrityError):  # gone (gc), or damaged: not to be trusted
        return None


def _record(
    digest: str,
    table: tuple[list[bytes], list[tuple[str, ...]], dict[str, int], list[int]],
    ap: Applier,
    base: tuple[list[str], list[apply_state.Row]] | None,
    root_row: apply_state.Row,
) -> apply_state.Record:
    """What ROOT holds now. ``base``: the manifest's paths with the rows still trusted from the last
    record (``scan_changes``), or None after a full scan. Added: the rows of the paths the scan found
    clean or apply left intact; taken out: every directory apply changed or that keeps entries the
    manifest does not list."""
    entries, paths, shared, starts = table
    if base is None:
        order = apply_state.layout(paths)
        rows: list[apply_state.Row] = [None] * len(order)
        pos = dict(zip(order, range(len(order)), strict=True))
        at: Callable[[str], int] = lambda rel: pos.get(rel, -1)  # noqa: E731
    else:
        order, rows = base
        at = functools.partial(apply_state.find, order)
    scan = ap.scan
    for p in itertools.chain(scan.clean, ap.intact):
        st = scan.stats.get(p)
        if st is not None and (k := at(p[1:])) >= 0:
            rows[k] = apply_state.trusted_row(st, scan.started_ns)
    untrusted = set(ap.touched)
    untrusted.update(p[1:] for p in ap.made_dirs)
    # An extra entry kept (no --delete): its directory must be listed again.
    untrusted.update(p[1:].rpartition("/")[0] for p in scan.by_path if p not in ap.want)
    for rel in untrusted:
        if not rel:
            root_row = None
        elif (k := at(rel)) >= 0:
            rows[k] = None
    return apply_state.Record(digest, apply_state.spans_of(starts, entries), shared, order, rows, root_row)


def _needed_content(m: Manifest, scan: Scan, opts: ApplyOptions) -> dict[str, RegularFile]:
    """Regular files whose content apply will have to write (no reusable inode), by primary path."""
    out: dict[str, RegularFile] = {}
    for r in m.files():
        if not r.size or r.path in scan.clean:
            continue
        ok = False
        for p in r.paths:
            h = scan.by_path.get(p)
            g = scan.groups.get(p)
            if h is not None and same_content(r, h) and g is not None and g <= set(r.paths):
                ok = True
                break
        if not ok:
            out[r.path] = r
    return out
