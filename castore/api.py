"""The library's verbs with keyword arguments that read well (re-exported by ``castore``).

    with castore.Store.open("/var/lib/continuity") as store:
        digest = castore.ingest(store, "/src", name="web")
        castore.checkout(store, "web", "/srv/web", link="hardlink")
        assert not castore.verify(store, "web", "/srv/web")

``store`` is an open ``Store`` (the caller's to close: ``Store.close``, or ``with``) or the
path of one (opened, and made on first use, for the call, and closed before it returns, error
or not: no descriptor outlives the call). A manifest is a ``Manifest`` or a reference the
store resolves: catalog name, digest, or unique digest prefix. Each function imports its
verb when first called: ``import castore`` stays cheap. Errors are the classes of
``castore.errors``; nothing here prints or exits.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from castore.apply.run import ApplyReport
    from castore.fsck.check import FsckReport
    from castore.gc.collect import GcReport
    from castore.gc.retention import Policy
    from castore.manifest.diff import Change, Difference
    from castore.manifest.model import Manifest
    from castore.store import Store

StoreLike = Union["Store", str, "os.PathLike[str]"]
ManifestRef = Union["Manifest", str]


def open_store(store: StoreLike | None, *, create: bool = True) -> Store:
    """``store`` itself when it is an open Store, else the store at that path (None: the default one), which
    the caller closes (``Store.close``, or ``with``)."""
    from castore.store import Store

    if isinstance(store, Store):
        return store
    return Store.open(os.fspath(store) if store is not None else None, create=create)


@contextmanager
def _store_for_call(store: StoreLike | None, *, create: bool = True, optional: bool = False) -> Iterator[Any]:
    """The Store of one call: ``store`` itself when it is open (the caller's to close), else the store at
    that path, opened for the call and closed at its end, error or not. ``optional``: None gives None."""
    from castore.store import Store

    if isinstance(store, Store) or (optional and store is None):
        yield store
        return
    opened = Store.open(os.fspath(store) if store is not None else None, create=create)
    try:
        yield opened
    finally:
        opened.close()


def manifest_of(store: Store | None, ref: ManifestRef) -> tuple[Manifest | None, str | None]:
    """(manifest, None) for a Manifest; (None, digest) for a reference to a manifest of ``store``
    (a stored blob that merely parses as a manifest is refused)."""
    from castore.errors import CastoreError
    from castore.manifest.model import Manifest

    if isinstance(ref, Manifest):
        return ref, None
    if store is None:
        raise CastoreError(f"{ref!r}: a manifest reference needs a store")
    digest = store.resolve(ref)
    store.require_manifest(digest)
    return None, digest


def load(store: StoreLike | None, ref: ManifestRef) -> Manifest:
    """The manifest ``ref`` names (read, verified, validated); a Manifest itself needs no store."""
    from castore.manifest.model import Manifest

    if isinstance(ref, Manifest):
        return ref
    with _store_for_call(store, optional=True) as st:
        m, digest = manifest_of(st, ref)
        assert st is not None and digest is not None
        return st.load_manifest(digest)


def _default_devices(devices: str | None) -> str:
    return devices if devices is not None else ("create" if os.geteuid() == 0 else "skip")


def _attrs(ignore_attrs: Iterable[str]) -> frozenset[str]:
    from castore.errors import UnsafeInput

    given = tuple(ignore_attrs)
    if not given:
        return frozenset()  # (without importing castore.manifest.diff: 2 ms of every checkout's start)
    from castore.manifest.diff import normalize_ignores

    try:
        return normalize_ignores(given)
    except ValueError as exc:
        raise UnsafeInput(str(exc)) from None


def ingest(
    store: StoreLike,
    src: str,
    *,
    name: str | None = None,
    ignore: Iterable[str] = (),
    keep_appledouble: bool = False,
    whiteouts: str = "none",
    progress: bool = False,
    on_skip: Callable[[str, str], None] | None = None,
) -> str:
    """Store the tree at ``src``; return its manifest digest (recorded under ``name`` when given).

    ``on_skip(path, why)``: an entry that cannot be read is reported there and left out (the version is
    recorded as incomplete); None: it fails the ingest."""
    from castore.build import WalkOptions
    from castore.ingest import ingest as ingest_tree

    opts = WalkOptions(ignore=tuple(ignore), keep_appledouble=keep_appledouble, whiteouts=whiteouts, on_skip=on_skip)
    with _store_for_call(store) as st:
        return ingest_tree(st, src, name=name, opts=opts, progress=progress)


def ingest_tar(
    store: StoreLike,
    src: str,
    *,
    name: str | None = None,
    ignore: Iterable[str] = (),
    whiteouts: str = "none",
    appledouble: str = "fold",
) -> str:
    """Store the tree of the tar stream ``src`` (a file, or ``-`` for stdin; plain, gzip or zstd);
    return its manifest digest. ``whiteouts``: none | oci (``.wh.*`` members as whiteouts);
    ``appledouble``: fold (into com.apple.* xattrs) | drop | keep."""
    from castore.tar.importer import TarOptions
    from castore.tar.importer import ingest_tar as import_tar

    opts = TarOptions(ignore=tuple(ignore), whiteouts=whiteouts, appledouble=appledouble)
    with _store_for_call(store) as st:
        return import_tar(st, src, name=name, opts=opts)


def checkout(
    store: StoreLike | None,
    manifest: ManifestRef,
    target: str,
    *,
    link: str = "auto",
    verify: bool = True,
    devices: str | None = None,
    sockets: bool = False,
    whiteouts: str = "none",
    rewrite_absolute_symlinks: bool = False,
    ignore_attrs: Iterable[str] = (),
    validated: bool = False,
) -> None:
    """Materialise ``manifest`` at ``target`` (absent or empty), complete or not at all.

    ``link``: auto (reflink where possible, else copy), hardlink (share the store's inodes),
    reflink, copy. ``verify``: re-hash content as it is written. ``devices``: create (default
    as root), check, skip (default otherwise). ``ignore_attrs``: mode, uid, gid, owner, xattr,
    mtime not applied. ``validated``: ``manifest`` (a Manifest) went through the validator already.
    """
    from castore.checkout import checkout as checkout_tree
    from castore.materialize import Options

    opts = Options(
        link=link,
        verify=verify,
        devices=_default_devices(devices),
        sockets=sockets,
        whiteouts=whiteouts,
        rewrite_absolute_symlinks=rewrite_absolute_symlinks,
        ignore=write_ignores(ignore_attrs),
    )
    with _store_for_call(store, optional=True) as st:
        m, digest = manifest_of(st, manifest)
        checkout_tree(st, m, target, opts, manifest_digest=digest, validated=validated or m is None)


def write_ignores(ignore_attrs: Iterable[str]) -> frozenset[str]:
    """The attributes a write may leave unapplied (``--ignore-attr``); UnsafeInput for any other."""
    from castore.errors import UnsafeInput
    from castore.materialize import WRITE_IGNORABLE

    ign = _attrs(ignore_attrs)
    if ign - WRITE_IGNORABLE:
        raise UnsafeInput(
            f"{', '.join(sorted(ign - WRITE_IGNORABLE))} cannot be left unapplied "
            f"(only {', '.join(sorted(WRITE_IGNORABLE))}, owner)"
        )
    return ign


def apply(
    store: StoreLike | None,
    manifest: ManifestRef,
    root: str,
    *,
    source: str = "store",
    delete: bool = False,
    verify: bool = True,
    rehash: bool = False,
    link: str = "auto",
    devices: str | None = None,
    sockets: bool = False,
    rewrite_absolute_symlinks: bool = False,
    move: bool = False,
    sync: bool = False,
    ignore_attrs: Iterable[str] = (),
    log: Any = None,
    validated: bool = False,
) -> ApplyReport:
    """Make the tree at ``root`` match ``manifest`` in place, changing only what differs.

    ``source``: "store", a directory or a tar file the content comes from (``move``: rename
    files out of that directory). ``delete``: remove what the manifest does not list.
    ``log``: called with one line per change. ``validated``: as for ``checkout``.
    """
    from castore.apply.run import ApplyOptions, apply_tree

    opts = ApplyOptions(
        delete=delete,
        verify=verify,
        devices=_default_devices(devices),
        sockets=sockets,
        rewrite_absolute_symlinks=rewrite_absolute_symlinks,
        link=link,
        move=move,
        rehash=rehash,
        sync=sync,
        ignore=write_ignores(ignore_attrs),
        log=log,
    )
    with _store_for_call(store, optional=True) as st:
        m, digest = manifest_of(st, manifest)
        return apply_tree(
            root, m, store=st, source=source, opts=opts, manifest_digest=digest, validated=validated or m is None
        )


def build(
    root: str, *, ignore: Iterable[str] = (), keep_appledouble: bool = False, whiteouts: str = "none"
) -> Manifest:
    """The manifest of the tree at ``root`` (the store is not touched)."""
    from castore.build import WalkOptions
    from castore.build import build as build_tree

    return build_tree(root, WalkOptions(ignore=tuple(ignore), keep_appledouble=keep_appledouble, whiteouts=whiteouts))


def verify(
    store: StoreLike | None,
    manifest: ManifestRef,
    root: str,
    *,
    ignore_attrs: Iterable[str] = (),
    ignore_mode_bits: int = 0,
    digest: bool = True,
    sockets: bool = False,
    devices: str = "check",
) -> list[Difference]:
    """Every difference between the tree at ``root`` and ``manifest`` (empty: they match)."""
    from castore.verify import VerifyOptions, verify_tree

    m = load(store, manifest)
    opts = VerifyOptions(
        ignore=_attrs(ignore_attrs),
        ignore_mode_bits=ignore_mode_bits,
        disable_digest=not digest,
        sockets=sockets,
        devices="skip" if devices == "skip" else "check",
    )
    return verify_tree(root, m, opts)


def tree_or_manifest(store: StoreLike | None, ref: ManifestRef) -> Manifest:
    """A directory's manifest (built, AppleDouble files kept), else the manifest ``ref`` names."""
    if isinstance(ref, str) and os.path.isdir(ref):
        from castore.build import WalkOptions
        from castore.build import build as build_tree

        return build_tree(ref, WalkOptions(keep_appledouble=True, note=lambda _m: None))
    return load(store, ref)


def diff(store: StoreLike | None, a: ManifestRef, b: ManifestRef, *, ignore_attrs: Iterable[str] = ()) -> list[Change]:
    """The changes from ``a`` to ``b`` (manifests, references or directories)."""
    from castore.manifest.diff import diff as diff_manifests

    return diff_manifests(tree_or_manifest(store, a), tree_or_manifest(store, b), _attrs(ignore_attrs))


def stats(store: StoreLike | None, manifest: ManifestRef) -> dict[str, int]:
    """Counts and sizes of ``manifest`` (``castore.stats.manifest_stats``)."""
    from castore.stats import manifest_stats

    return manifest_stats(load(store, manifest))


def du(store: StoreLike | None, ref: ManifestRef) -> dict[str, int]:
    """Disk usage of a manifest, reference or directory, hardlinks counted once (``castore.stats.disk_usage``)."""
    from castore.stats import disk_usage

    return disk_usage(tree_or_manifest(store, ref))


def gc(
    store: StoreLike,
    *,
    grace_seconds: float | None = None,
    dry_run: bool = False,
    keep_history: int | None = None,
    wait: bool = False,
    nice: int = 0,
    list_items: bool = False,
    retention: Policy | None = None,
) -> GcReport:
    """Remove what no name, history entry or lease keeps.

    ``grace_seconds``: orphan files and unnamed manifests younger than this are kept (default one
    hour). ``keep_history``: keep only the N newest history entries of each name. ``wait``: wait
    for a running gc (else Busy). ``nice``: lower the CPU priority of the unlocked phases.
    ``list_items``: keep every item in the report (dry runs always do). ``retention``: a per-name
    history policy (castore/gc/retention.py; replaces ``keep_history``).
    """
    from castore.gc.collect import GcOptions, collect

    opts = GcOptions(
        dry_run=dry_run, keep_history=keep_history, wait=wait, nice=nice, list_items=list_items, retention=retention
    )
    if grace_seconds is not None:
        opts.grace_ns = grace_seconds * 10**9 if isinstance(grace_seconds, int) else round(grace_seconds * 10**9)
    with _store_for_call(store, create=False) as st:
        return collect(st, opts)


def fsck(
    store: StoreLike, *, read_data: bool = False, subset: tuple[int, int] | None = None, repair: bool = False
) -> FsckReport:
    """Check (``repair``: and repair) the store; ``read_data`` re-hashes blobs (``subset``: the n-th of m parts)."""
    from castore.fsck.check import FsckOptions
    from castore.fsck.check import fsck as check_store

    with _store_for_call(store, create=False) as st:
        return check_store(st, FsckOptions(read_data=read_data, subset=subset, repair=repair))


__all__ = [
    "apply",
    "build",
    "checkout",
    "diff",
    "du",
    "fsck",
    "gc",
    "ingest",
    "ingest_tar",
    "load",
    "manifest_of",
    "open_store",
    "stats",
    "tree_or_manifest",
    "verify",
    "write_ignores",
]
