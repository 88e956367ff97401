"""checkout: materialise a manifest at TARGET, out of place.

TARGET must not exist (or be an empty directory). Work goes into a staging
directory beside it, created and written only through directory fds, and is
renamed into place at the end: TARGET appears complete or not at all. Passes:
directories; files, links, devices and fifos (hardlink groups linked to their
first path); directory metadata bottom-up; one syncfs; rename.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import stat
from collections.abc import Callable, Sequence

from castore import fs, progress
from castore.bulkmode import bulk
from castore.errors import (
    Busy,
    CastoreError,
    Differences,
    IntegrityError,
    ResourceLimit,
    UnsafeInput,
)
from castore.faults import crashpoint
from castore.fs import DirFds, publish
from castore.fs.ordering import metadata_in_order
from castore.manifest import codec
from castore.manifest.entries import split_entries
from castore.manifest.model import Device, Directory, Manifest, RegularFile, Resource, Whiteout
from castore.manifest.validate import validate
from castore.materialize import LinkRef, Options, Writer, count_ads, note_ads, without_attrs
from castore.store import Lease, Store
from castore.store.blobfile import require_blobs


def _split(path: str) -> tuple[str, str]:
    parent, _, name = path[1:].rpartition("/")
    return parent, name


PARALLEL_MIN = 1000  # entries below which forking a second writer does not pay


Item = Resource | LinkRef  # what a checkout creates: a resource, or a store file still encoded


def materialize_into(root_fd: int, items: Sequence[Item], writer: Writer, *, parallel: bool = True) -> None:
    """Create every resource of ``items`` (a manifest's, in order) below the empty directory ``root_fd``.

    Directories first (0700 while filling), then everything else, split
    between this process and a forked one when there is enough work (writing
    small files is CPU-bound in Python; both cores help), then directory
    metadata bottom-up, then ``root_fd`` 0755 and one syncfs of the tree.
    """
    dirs = DirFds(root_fd)
    made_dirs: set[str] = set()
    try:

        def ensure_dir(rel: str) -> None:
            # Implicit parents (not in the manifest) are created 0755. Iterative: no recursion per level.
            todo = []
            while rel and rel not in made_dirs:
                todo.append(rel)
                rel = rel.rpartition("/")[0]
            for rel in reversed(todo):
                parent, _, name = rel.rpartition("/")
                try:
                    os.mkdir(name, 0o700, dir_fd=dirs.get(parent))
                except FileExistsError:
                    pass
                made_dirs.add(rel)

        others: list[Item] = []
        for r in items:
            if isinstance(r, Directory):
                ensure_dir(r.path[1:])
            else:
                others.append(r)
        last = None
        for r in others:
            for p in r.paths:
                parent = p[1 : max(p.rfind("/"), 1)]
                if parent != last:  # entries come sorted: runs of one parent (30 ms for 100k files)
                    ensure_dir(parent)
                    last = parent
        crashpoint("checkout-after-dirs")

        def preload(entries: list[Item]) -> None:
            if writer.store is not None:
                writer.preload([r for r in entries if isinstance(r, (RegularFile, LinkRef))])

        bar = progress.task("checkout", total=len(others), unit="entries")
        bar.__enter__()  # closed below, or by the CLI's error line
        if parallel and len(others) >= PARALLEL_MIN and (os.cpu_count() or 1) > 1:
            # The child's records are read before it forks (it never touches LMDB); ours
            # while it already works, and then the child sorts and sends its records: on
            # `many` both ended together with 48.8% of the hardlinks here.
            mine, theirs = _halves(others, 0.488 if writer.opts.link == "hardlink" else 0.5)
            bar.set_total(len(mine))  # the forked half does not report: this process's share is shown
            preload(theirs)

            def also() -> None:
                preload(mine)
                _create_entries(dirs, mine, writer)

            extra = _in_child(root_fd, theirs, writer, also)
        else:
            preload(others)
            _create_entries(dirs, others, writer)
            extra = []
        bar.__exit__(None, None, None)
        for rel in sorted(made_dirs, key=lambda p: -p.count("/")):
            parent, _, name = rel.rpartition("/")
            os.chmod(name, 0o755, dir_fd=dirs.get(parent))
        for r in reversed(items):
            if isinstance(r, Directory):
                parent, name = _split(r.path)
                writer.dir_metadata(dirs.get(parent), name, r)
        os.fchmod(root_fd, 0o755)
        crashpoint("checkout-before-sync")
        if not writer.needs_sync and metadata_in_order(root_fd):
            # Metadata alone (links to objects their records proved by stat, directories, nodes),
            # on a filesystem that commits it in order: a crash keeps everything made before the
            # rename that follows, and a record whose link is lost just fails its stat (design.md).
            writer.flush(extra)
            return
        # One syncfs for the whole tree (and the new hardlink objects, on the same
        # filesystem); the records are written meanwhile and committed once it is done.
        synced = fs.syncfs_in_background(root_fd)
        try:
            writer.flush(extra, before_commit=synced)
        finally:
            synced()
    finally:
        dirs.close()
        writer.close()


def _create_entries(dirs: DirFds, entries: list[Item], writer: Writer) -> None:
    """Create non-directory entries (their parents exist), hardlink groups included.

    Per entry, the little this loop can spare: a run of one parent's entries reuses its fd
    (nothing else asks DirFds meanwhile, so nothing evicts it), a store file of a hardlink
    checkout goes straight to link_known (copy_encoded for a copy), progress advances every 256 entries."""
    quick = writer.encoded_writer()
    last_parent: str | None = None
    dfd = -1
    pending = 0
    for count, r in enumerate(entries):
        paths = r.paths
        parent, _, name = paths[0][1:].rpartition("/")
        if parent != last_parent:
            dfd, last_parent = dirs.get(parent), parent
        if quick is not None and type(r) is LinkRef:
            quick(dfd, name, r)
        elif isinstance(r, (RegularFile, LinkRef)):
            writer.create_file(dfd, name, r)
        elif not writer.create_other(dfd, name, r, paths[0]):
            continue
        if isinstance(r, Whiteout):
            continue
        if len(paths) > 1:
            for other in paths[1:]:
                p2, n2 = _split(other)
                os.link(name, n2, src_dir_fd=dfd, dst_dir_fd=dirs.get(p2), follow_symlinks=False)
            last_parent = None  # those lookups may have evicted dfd
        pending += 1
        if pending == 256:
            progress.advance(pending)
            pending = 0
        if count == 100:
            crashpoint("checkout-mid-files")
    if pending:
        progress.advance(pending)


def _halves(entries: list[Item], share: float = 0.5) -> tuple[list[Item], list[Item]]:
    """Split into two contiguous runs, the first with about ``share`` of the work (bytes plus a
    per-entry cost)."""
    cost = [(r.size if isinstance(r, RegularFile) else 0) + 16384 for r in entries]  # a LinkRef: a link
    half, acc = sum(cost) * share, 0
    for i, c in enumerate(cost):
        acc += c
        if acc >= half:
            return entries[: i + 1], entries[i + 1 :]
    return entries, []


def _in_child(root_fd: int, entries: list[Item], writer: Writer, also: Callable[[], None]) -> list[tuple[bytes, bytes]]:
    """Create ``entries`` in a forked child while this process runs ``also``.

    The child never touches LMDB (its records were preloaded); it sends back
    the records to write, or its error, through a pipe.
    """
    if not entries:
        also()
        return []
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(rfd)
            writer.forked = True
            child_dirs = DirFds(root_fd)
            try:
                _create_entries(child_dirs, entries, writer)
            finally:
                child_dirs.close()
            # marshal: plain tuples of bytes (52k rows: dumped in 9 ms, pickle 16 ms)
            payload = marshal.dumps(("ok", writer.take_updates(), writer.needs_sync))
        except CastoreError as exc:
            payload = marshal.dumps(("error", exc.exit_code, str(exc)))
        except OSError as exc:
            payload = marshal.dumps(("oserror", exc.errno, exc.strerror, _plain(exc.filename)))
        except BaseException as exc:  # noqa: BLE001 - reported by the parent
            payload = marshal.dumps(("error", 1, f"{type(exc).__name__}: {exc}"))
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(wfd, view) :]
            os.close(wfd)  # EOF for the parent now, not after this process is torn down
        except BaseException:  # noqa: BLE001
            code = 1
        os._exit(code)
    os.close(wfd)
    failure: BaseException | None = None
    try:
        also()
    except BaseException as exc:  # noqa: BLE001 - the child must be reaped first
        failure = exc
    chunks = []
    while True:
        b = os.read(rfd, 1 << 20)
        if not b:
            break
        chunks.append(b)
    os.close(rfd)
    msg = None
    if chunks:
        with contextlib.suppress(Exception):  # a torn message: reported below as a dead worker
            msg = marshal.loads(b"".join(chunks))  # while the child exits
    _, status = os.waitpid(pid, 0)
    if failure is not None:
        raise failure
    if msg is None:
        raise CastoreError(f"checkout worker died (status {status})")
    if msg[0] == "ok":
        writer.needs_sync = writer.needs_sync or msg[2]
        return msg[1]
    if msg[0] == "oserror":
        raise OSError(msg[1], msg[2], msg[3])
    raise _ERROR_BY_CODE.get(msg[1], CastoreError)(msg[2])


def _plain(name: object) -> str | bytes | None:
    return name if isinstance(name, (str, bytes)) or name is None else str(name)


_ERROR_BY_CODE: dict[int, type[CastoreError]] = {3: UnsafeInput, 4: IntegrityError, 5: Busy, 6: ResourceLimit}


def _prepare_target(target: str) -> tuple[str, str, bool]:
    """(parent dir, base name, target-is-an-empty-dir) after safety checks."""
    target = os.path.abspath(target)
    parent, base = os.path.split(target.rstrip("/"))
    if not base:
        raise UnsafeInput(f"{target}: cannot check out onto /")
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return parent, base, False
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeInput(f"{target}: target is a symlink; refusing to write through it")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeInput(f"{target}: target exists and is not a directory")
    if os.listdir(target):
        raise UnsafeInput(f"{target}: target exists and is not empty")
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if fs.is_mount_root(fd, os.stat(parent).st_dev):
            raise UnsafeInput(
                f"{target}: another filesystem is mounted there; checkout puts a new directory in "
                "TARGET's place, which would unmount nothing and fail: give a path below it"
            )
    finally:
        os.close(fd)
    return parent, base, True


@bulk
def checkout(
    store: Store | None,
    manifest: Manifest | None,
    target: str,
    opts: Options,
    manifest_digest: str | None = None,
    *,
    validated: bool = False,
) -> None:
    """Materialise ``manifest`` at ``target`` (complete or not at all).

    ``manifest`` may be None when ``manifest_digest`` names a manifest of
    ``store``: it is read here, and for ``--link hardlink`` its regular files
    are not even decoded (``LinkRef``: their objects are found by the hash of
    their encoded entry). ``validated`` says the caller already ran the
    validator on this manifest (Store.load_manifest and the CLI's resolver do).
    """
    items: Sequence[Item]
    if manifest is None:
        if store is None or manifest_digest is None:
            raise CastoreError("checkout needs a manifest, or a store and the digest of one of its manifests")
        if opts.link in _ENCODED_MODES and not opts.ignore and store.manifest_indexed(manifest_digest):
            items = _encoded_items(store, manifest_digest)
        else:
            manifest = store.load_manifest(manifest_digest)
            items = manifest.resources
    else:
        if not validated:
            validate(manifest)
        items = manifest.resources
    if opts.ignore:
        items = without_attrs(items, opts.ignore)  # type: ignore[arg-type]  # decoded above: Resources
    if opts.devices == "check":
        devices = [r.path for r in items if isinstance(r, Device)]
        if devices:  # a new tree holds no device node to confirm: say so before writing anything
            raise Differences(
                f"{devices[0]}: {len(devices)} device node(s) cannot be checked in a new tree "
                "(--devices check confirms existing nodes, as apply does); use --devices create "
                "or skip"
            )
    parent, base, was_empty_dir = _prepare_target(target)
    ads = count_ads(items)
    if store is not None and manifest_digest is None and manifest is not None:
        _require_blobs(store, manifest)  # early, before anything is made (again under the lease below)
    os.makedirs(parent, exist_ok=True)
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    publish.sweep(pfd, parent)  # staging dirs of checkouts and copies killed here before
    reg = None
    if store is not None:
        with contextlib.suppress(OSError):  # a read-only store: the next checkout here cleans up
            reg = publish.Registration(store.path, parent)
    old_umask = os.umask(0)
    try:
        with publish.staged_dir(pfd, parent, base, target, before=reg.note if reg is not None else None) as staging:
            sfd = staging.open()
            try:
                writer = Writer(store, opts)
                writer.umask_zero = True  # set above: new files are created with their modes
                if store is not None:
                    with store.lease([manifest_digest] if manifest_digest else []) as lease:
                        writer.tmp_dir = lease.tmp_dir  # its new hardlink objects are written there
                        if manifest is not None:
                            # Every blob there, before anything is written. (Hardlink objects of an
                            # encoded manifest need a blob only when made again: missing, it fails
                            # then, with the staging directory discarded all the same.) A manifest
                            # file's blobs are named by the lease first: gc keeps them from then on.
                            _require_blobs(store, manifest, None if manifest_digest else lease)
                        materialize_into(sfd, items, writer)
                else:
                    materialize_into(sfd, items, writer)
            finally:
                os.close(sfd)
            crashpoint("checkout-before-rename")
            if was_empty_dir:
                try:
                    os.rmdir(base, dir_fd=pfd)
                except OSError as exc:
                    raise UnsafeInput(f"{target}: target changed during checkout") from exc
            staging.rename_into_place(f"{target}: target appeared during checkout")
            note_ads(ads, opts.note)  # type: ignore[arg-type]
    finally:
        if reg is not None:
            reg.close()
        os.umask(old_umask)
        os.close(pfd)


#: Link modes that take a store manifest's regular files still encoded (LinkRef): hardlink finds
#: their objects by the hash of the entry; copy decodes each in the process that writes it, so
#: both cores share the decoding (~9 us an entry, 0.27 s of CPU for 30,000 files, all of it
#: before the fork when the manifest was decoded up front). auto and reflink decode them all
#: before writing anything (their preload reads the blobs' verified records by digest).
_ENCODED_MODES = ("hardlink", "copy")


def _encoded_items(store: Store, digest: str) -> list[Item]:
    """A store manifest (indexed: validated at commit) with its regular files left encoded."""
    plain: list[bool] = []
    entries, paths = split_entries(store.read_blob(digest), source=digest, plain=plain)
    return [LinkRef(e, ps) if f else codec.decode_entry(e) for e, ps, f in zip(entries, paths, plain, strict=True)]


def _require_blobs(store: Store, manifest: Manifest, lease: Lease | None = None) -> None:
    refs = store.content_refs(manifest)
    if lease is not None:
        lease.add(sorted(refs))
    require_blobs(store, refs)
