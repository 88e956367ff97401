"""A whole manifest's resources below an empty directory fd (a checkout's staging directory):
directories (0700 while filling), then everything else, split between this process and a forked
writer when there is enough work, then directory metadata bottom-up and one syncfs when needed.

A store manifest comes still encoded (``Encoded``): the fork then comes first, and each process
reads, makes the directories of, and writes its own run of the manifest's bytes (the serial work
before the fork is the forked run's records read from LMDB); the directories' metadata waits for
both, in this process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from castore import fs, progress
from castore.faults import crashpoint
from castore.fs import DirFds
from castore.fs.ordering import metadata_in_order
from castore.manifest.entries import split_point
from castore.manifest.model import Directory, RegularFile, Whiteout
from castore.materialize.encoded import (
    Encoded,
    Fed,
    Item,
    directory_fields,
    directory_from,
    items_of,
    read_run,
    use_run,
)
from castore.materialize.forked import run_forked
from castore.materialize.options import count_ads
from castore.materialize.writer import Writer
from castore.store.links import LinkRef
from castore.timing import mark

PARALLEL_MIN = 1000  # entries below which forking a second writer does not pay
ENCODED_SHARE = 0.47  # this process's share of a store manifest's bytes (it also reads the other's records)


class Tree:
    """What one process made of the tree: the directories (created ones, and those of the manifest,
    whose metadata is set at the end) and the alternate data streams it could not write."""

    def __init__(self, dirs: DirFds) -> None:
        self.dirs = dirs
        self.made: set[str] = set()
        self.directories: list[Directory] = []
        self.ads = 0

    def ensure_dir(self, rel: str) -> None:
        """Make ``rel`` and its missing parents (0700; implicit ones, not in the manifest, end 0755).
        Iterative: no recursion per level. A directory the other writer made first is fine."""
        made, todo = self.made, []
        while rel and rel not in made:
            todo.append(rel)
            rel = rel.rpartition("/")[0]
        for rel in reversed(todo):
            parent, _, name = rel.rpartition("/")
            try:
                os.mkdir(name, 0o700, dir_fd=self.dirs.get(parent))
            except FileExistsError:
                pass
            made.add(rel)

    def make_dirs(self, items: Sequence[Item]) -> list[Item]:
        """Make the directories of ``items`` and the parents of everything else; return the rest."""
        others: list[Item] = []
        add, directories, ensure_dir = others.append, self.directories, self.ensure_dir
        for r in items:
            if type(r) is Directory:
                ensure_dir(r.path[1:])
                directories.append(r)
            else:
                add(r)
        last = None
        for r in others:
            for p in r.paths:
                parent = p[1 : max(p.rfind("/"), 1)]
                if parent != last:  # entries come sorted: runs of one parent (30 ms for 100k files)
                    ensure_dir(parent)
                    last = parent
        self.ads += count_ads(items)
        return others

    def finish(self, writer: Writer) -> None:
        """Directory metadata, bottom-up: the implicit directories 0755, the manifest's their own."""
        dirs = self.dirs
        explicit = {r.path[1:] for r in self.directories}
        for rel in sorted(self.made - explicit, key=lambda p: -p.count("/")):
            parent, _, name = rel.rpartition("/")
            os.chmod(name, 0o755, dir_fd=dirs.get(parent))
        for r in reversed(self.directories):
            parent, _, name = r.path[1:].rpartition("/")
            writer.dir_metadata(dirs.get(parent), name, r)


def materialize_into(
    root_fd: int, items: Sequence[Item] | Encoded, writer: Writer, *, parallel: bool = True, share: float | None = None
) -> int:
    """Create every resource of ``items`` (a manifest's, in order; or its encoded bytes) below the
    empty directory ``root_fd``, then ``root_fd`` 0755 and one syncfs of the tree when needed.
    ``share``: this process's part of the work when a second writer is forked. Returns how many
    alternate data streams were not written (``note_ads``)."""
    tree = Tree(DirFds(root_fd))
    try:
        fork = parallel and (os.cpu_count() or 1) > 1
        if isinstance(items, Encoded):
            # This process also reads the other run's records and sends them (~25 ms on 15,000 files)
            extra = _encoded_runs(root_fd, tree, items, writer, fork, ENCODED_SHARE if share is None else share)
        else:
            # The child's records are read before it forks; ours while it already works, and then the
            # child sorts and sends its records: on `many` both ended together with 48.8% of the
            # hardlinks here.
            if share is None:
                share = 0.488 if writer.opts.link == "hardlink" else 0.5
            extra = _item_runs(root_fd, tree, items, writer, fork, share)
        mark("checkout files")
        tree.finish(writer)
        os.fchmod(root_fd, 0o755)
        mark("checkout dir metadata")
        crashpoint("checkout-before-sync")
        if not writer.needs_sync and metadata_in_order(root_fd):
            # Metadata alone (links to objects their records proved by stat, directories, nodes),
            # on a filesystem that commits it in order: a crash keeps everything made before the
            # rename that follows, and a record whose link is lost just fails its stat (design.md).
            writer.flush(extra)
            mark("checkout records")
            return tree.ads
        # One syncfs for the whole tree (and the new hardlink objects, on the same
        # filesystem); the records are written meanwhile and committed once it is done.
        synced = fs.syncfs_in_background(root_fd)
        try:
            writer.flush(extra, before_commit=synced)
        finally:
            synced()
        mark("checkout records+sync")
        return tree.ads
    finally:
        tree.dirs.close()
        writer.close()


def _item_runs(
    root_fd: int, tree: Tree, items: Sequence[Item], writer: Writer, fork: bool, share: float
) -> list[tuple[bytes, bytes]]:
    """Decoded resources (or LinkRefs): directories first, then the rest, halved when it pays."""
    others = tree.make_dirs(items)
    crashpoint("checkout-after-dirs")
    mark("checkout dirs")
    with progress.task("checkout", total=len(others), unit="entries") as bar:
        if not fork or len(others) < PARALLEL_MIN:
            _preload(writer, others)
            _create_entries(tree.dirs, others, writer)
            return []
        mine, theirs = _halves(others, share)
        bar.set_total(len(mine))  # the forked half does not report: this process's share is shown
        _preload(writer, theirs, chunk_lists=True)

        def child(_: Callable[[], object]) -> object:
            writer.forked = True
            child_dirs = DirFds(root_fd)
            try:
                _create_entries(child_dirs, theirs, writer)
            finally:
                child_dirs.close()
            return writer.take_updates(), writer.needs_sync

        def parent() -> None:
            _preload(writer, mine)
            _create_entries(tree.dirs, mine, writer)

        updates, needs_sync = run_forked(child, parent)
        writer.needs_sync = writer.needs_sync or needs_sync
        return updates


def _encoded_runs(
    root_fd: int, tree: Tree, enc: Encoded, writer: Writer, fork: bool, share: float
) -> list[tuple[bytes, bytes]]:
    """A store manifest's bytes: forked first when it pays (only the framing up to the split is read
    before), each process then reading its own run; this one reads the forked run's records too,
    and sends them (``read_run``), while the other reads its entries."""
    mid, before = split_point(enc.data, share) if fork else (len(enc.data), 0)
    if before < PARALLEL_MIN * share or mid >= len(enc.data):
        items = items_of(enc)
        mark("checkout read")
        return _item_runs(root_fd, tree, items, writer, False, share)

    def child(received: Callable[[], Fed]) -> object:
        writer.forked = True
        mine = Tree(DirFds(root_fd))
        try:
            items = items_of(enc, mid)
            others = mine.make_dirs(items)
            use_run(writer, received())
            _create_entries(mine.dirs, others, writer)
        finally:
            mine.dirs.close()
        dirs = [directory_fields(r) for r in mine.directories]
        return writer.take_updates(), writer.needs_sync, sorted(mine.made), dirs, mine.ads

    def parent() -> None:
        items = items_of(enc, 0, mid)
        others = tree.make_dirs(items)
        crashpoint("checkout-after-dirs")
        with progress.task("checkout", total=len(others), unit="entries"):  # this process's share
            _preload(writer, others)
            _create_entries(tree.dirs, others, writer)

    def feed() -> Fed:
        fed = read_run(writer, enc, mid)
        mark("checkout records of the other half")
        return fed

    updates, needs_sync, made, dirs, ads = run_forked(child, parent, feed)
    mark("checkout wait")
    writer.needs_sync = writer.needs_sync or needs_sync
    tree.made.update(made)
    tree.directories.extend(directory_from(f) for f in dirs)
    tree.ads += ads
    return updates


def _preload(writer: Writer, entries: list[Item], *, chunk_lists: bool = False) -> None:
    """The records ``entries`` may need, and (for a forked writer, which cannot read them later) the
    chunk lists of their big files."""
    if writer.store is not None:
        writer.preload([r for r in entries if isinstance(r, (RegularFile, LinkRef))], chunk_lists=chunk_lists)


def _create_entries(dirs: DirFds, entries: list[Item], writer: Writer) -> None:
    """Create non-directory entries (their parents exist), hardlink groups included.

    A hardlink checkout's store files whose objects their records prove go first, in one tight
    loop (``Writer.link_known``); everything else then, one at a time. Per entry, the little this
    loop can spare: a run of one parent's entries reuses its fd (nothing else asks DirFds meanwhile,
    so nothing evicts it), progress advances every 256 entries."""
    if writer.opts.link == "hardlink" and writer.store is not None:
        entries = writer.link_known(dirs, entries)
    quick = writer.encoded_writer()  # a store file still encoded: plainfiles.py
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
                p2, _, n2 = other[1:].rpartition("/")
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
