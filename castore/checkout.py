"""checkout: materialise a manifest at TARGET, out of place.

TARGET must not exist (or be an empty directory). Work goes into a staging
directory beside it, created and written only through directory fds, and is
renamed into place at the end: TARGET appears complete or not at all. Passes:
directories; files, links, devices and fifos (hardlink groups linked to their
first path); directory metadata bottom-up; one syncfs; rename.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Sequence

from castore import fs
from castore.bulkmode import bulk
from castore.errors import CastoreError, Differences, UnsafeInput
from castore.faults import crashpoint
from castore.fs import publish
from castore.manifest.model import Device, Manifest
from castore.manifest.validate import validate
from castore.materialize import Options, Writer, note_ads, without_attrs
from castore.materialize.encoded import Encoded, Item, items_of
from castore.materialize.tree import PARALLEL_MIN, materialize_into
from castore.store import Lease, Store
from castore.store.blobfile import require_blobs
from castore.timing import mark

__all__ = ["PARALLEL_MIN", "checkout", "materialize_into"]


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
    items: Sequence[Item] | Encoded
    if manifest is None:
        if store is None or manifest_digest is None:
            raise CastoreError("checkout needs a manifest, or a store and the digest of one of its manifests")
        if opts.link in _ENCODED_MODES and not opts.ignore and store.manifest_indexed(manifest_digest):
            # Read by the writer processes, each its own run (castore.materialize.tree)
            items = Encoded(store.read_blob(manifest_digest), manifest_digest)
            if opts.devices == "check":
                items = items_of(items)
        else:
            manifest = store.load_manifest(manifest_digest)
            items = manifest.resources
    else:
        if not validated:
            validate(manifest)
        items = manifest.resources
    if opts.ignore:
        items = without_attrs(items, opts.ignore)  # type: ignore[arg-type]  # decoded above: Resources
    if opts.devices == "check" and not isinstance(items, Encoded):
        devices = [r.path for r in items if isinstance(r, Device)]
        if devices:  # a new tree holds no device node to confirm: say so before writing anything
            raise Differences(
                f"{devices[0]}: {len(devices)} device node(s) cannot be checked in a new tree "
                "(--devices check confirms existing nodes, as apply does); use --devices create "
                "or skip"
            )
    mark("checkout manifest")
    parent, base, was_empty_dir = _prepare_target(target)
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
                        mark("checkout staging")
                        ads = materialize_into(sfd, items, writer)
                else:
                    ads = materialize_into(sfd, items, writer)
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


def _require_blobs(store: Store, manifest: Manifest, lease: Lease | None = None) -> None:
    refs = store.content_refs(manifest)
    if lease is not None:
        lease.add(sorted(refs))
    require_blobs(store, refs)
