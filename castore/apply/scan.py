"""What ROOT holds, for apply: a full scan, or only what may have changed since apply's record.

``scan_tree`` walks all of ROOT. ``scan_changes`` starts from the record an
earlier apply left (``castore.apply.state``): it lstat's the recorded paths,
scans only those whose lstat changed (listing the directories among them for
new names), takes the state of every other path from the recorded manifest,
and returns the sub-manifest of the new manifest that covers what differs.
Either way the result is a ``Scan``, which ``castore.apply.run`` acts on alike.

Files are hashed only when the manifest wants a file of that size there, and
the store's stat cache stands in for hashing where it can.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass, field

import castore.apply.state as apply_state
import castore.store.statcache as statcache
from castore import fs
from castore.apply.state import Record, Row
from castore.build import make_pool, read_with_retries
from castore.errors import TreeChanged
from castore.fs import DirFds
from castore.manifest.codec import decode_entry
from castore.manifest.entries import first_path
from castore.manifest.model import Directory, Manifest, RegularFile, Resource, Symlink, path_key
from castore.readers import FileResult, Processor
from castore.store import Store
from castore.walk import Seen, Stat, WalkOptions, WalkResult, assemble, see_entry, walk


@dataclass
class Scan:
    """The current tree: its manifest by path, inode groups, and stat-cache rows to record."""

    by_path: dict[str, Resource]
    groups: dict[str, set[str]]  # path -> the (shared) set of paths on its inode
    inode: dict[str, tuple[int, int]]  # path -> (dev, ino) when scanned
    local: dict[str, list[str]]  # digest -> paths holding it
    cache_rows: list[tuple[bytes, bytes]]
    hashed: int
    clean: set[str] = field(default_factory=set)  # paths exactly as wanted (not in by_path)
    stats: dict[str, Stat] = field(default_factory=dict)  # path -> its lstat, for the paths scanned
    started_ns: int = 0  # when the scan began (the racy window of its lstats)


def scan_tree(
    root: str,
    root_fd: int,
    want: dict[str, Resource],
    store: Store | None,
    rehash: bool,
    prune: frozenset[str] = frozenset(),
) -> Scan:
    """Walk all of ROOT but the relative paths in ``prune`` (mount points: never entered)."""
    start = time.time_ns()
    try:
        walked = walk(root_fd, WalkOptions(keep_appledouble=True, note=lambda _m: None, prune=prune))
    except OSError as exc:
        raise _changed_while_scanned(root, exc) from exc
    return classify(root, root_fd, walked, want, store, rehash, start)


def _changed_while_scanned(root: str, exc: OSError) -> OSError | TreeChanged:
    if exc.errno not in (errno.EINVAL, errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
        return exc
    # An entry changed type between readdir and readlink/open (another process).
    return TreeChanged(f"{root}: changed while it was scanned ({exc.strerror}); rerun apply")


def classify(
    root: str,
    root_fd: int,
    walked: WalkResult,
    want: dict[str, Resource],
    store: Store | None,
    rehash: bool,
    start: int,
) -> Scan:
    """Hash (or take from the stat cache) the walked files the manifest wants with that size; sort
    the walked entries into the clean ones and the current state of the rest."""
    jobs = walked.files
    key_of = [(j.dev, j.ino) for j in jobs]
    wanted_keys: set[tuple[int, int]] = set()
    for j, k in zip(jobs, key_of, strict=True):
        w = want.get("/" + j.rel)
        if isinstance(w, RegularFile) and w.size == j.size:
            wanted_keys.add(k)
    results: list[FileResult] = [FileResult()] * len(jobs)
    todo_idx: list[int] = []
    seen: dict[tuple[int, int], int] = {}
    for i, k in enumerate(key_of):
        if k in wanted_keys and k not in seen:
            seen[k] = i
            todo_idx.append(i)
    hits: dict[int, FileResult] = {}
    if store is not None and not rehash and todo_idx:
        sub = [jobs[i] for i in todo_idx]
        hits = {todo_idx[i]: r for i, r in statcache.lookup_many(store, sub).items()}
    todo = [i for i in todo_idx if i not in hits]
    st = os.fstat(root_fd)
    proc = Processor(root=root, root_id=(st.st_dev, st.st_ino))
    todo_jobs = [jobs[i] for i in todo]
    # Worker processes pay off only for much reading (fork + pickling cost ~0.1 s).
    big = len(todo_jobs) >= 1000 or sum(j.size for j in todo_jobs) >= 32 << 20
    pool = make_pool() if big else None
    try:
        fresh = read_with_retries(root_fd, proc, todo_jobs, pool)
    finally:
        if pool is not None:
            pool.shutdown()
    by_key: dict[tuple[int, int], FileResult] = {}
    for i, r in hits.items():
        by_key[key_of[i]] = r
    rows: list[tuple[bytes, bytes]] = []
    threshold = store.chunking.threshold if store is not None else 0
    for i, j, r in zip(todo, todo_jobs, fresh, strict=True):
        by_key[key_of[i]] = r
        jobs[i] = j
        if store is not None and r.digest and not r.chunks and j.size < threshold and statcache.cacheable(j, start):
            rows.append((statcache.key(j), statcache.encode(j, r)))
    res_of: dict[str, FileResult] = {}
    for i, k in enumerate(key_of):
        got = by_key.get(k)
        if got is not None:
            results[i] = got
            res_of[jobs[i].rel] = got
    # Entries already exactly as wanted (the common case) skip the Resource building.
    clean: set[str] = set()
    local: dict[str, list[str]] = {}
    rest: list[Seen] = []
    for e in walked.entries:
        p = "/" + e.path
        w = want.get(p)
        if w is not None and _is_clean(w, e, res_of):
            clean.add(p)
            if isinstance(w, RegularFile):
                local.setdefault(w.digest, []).append(p)
        else:
            rest.append(e)
    current = assemble(WalkResult(rest, walked.files), results) if rest else Manifest(())
    by_path: dict[str, Resource] = {}
    groups: dict[str, set[str]] = {}
    for res in current.resources:
        g = set(res.paths)
        for p in res.paths:
            by_path[p] = res
            groups[p] = g
        if isinstance(res, RegularFile) and res.digest:
            local.setdefault(res.digest, []).extend(res.paths)
    stats = {"/" + e.path: e.st for e in walked.entries}
    inode = {p: (s.st_dev, s.st_ino) for p, s in stats.items()}
    return Scan(by_path, groups, inode, local, rows, len(todo), clean, stats, start)


def _is_clean(w: Resource, e: Seen, res_of: dict[str, FileResult]) -> bool:
    """``e`` is exactly ``w`` (what ``compare`` would find no difference in), for single-path entries."""
    st = e.st
    if len(w.paths) != 1 or st.st_uid != w.uid or st.st_gid != w.gid:
        return False
    if w.mtime_ns is not None and st.st_mtime_ns != w.mtime_ns:
        return False
    mode = st.st_mode
    if isinstance(w, RegularFile):
        if not stat.S_ISREG(mode) or st.st_nlink != 1 or st.st_size != w.size or stat.S_IMODE(mode) != w.perm:
            return False
        r = res_of.get(e.path)
        return r is not None and r.digest == w.digest and r.xattrs == w.xattrs
    if isinstance(w, Directory):
        return stat.S_ISDIR(mode) and stat.S_IMODE(mode) == w.perm and e.xattrs == w.xattrs and not w.opaque
    if isinstance(w, Symlink):
        return stat.S_ISLNK(mode) and st.st_nlink == 1 and e.target == w.target and e.xattrs == w.xattrs
    return False


# ------------------------------------------------------------------ incremental


@dataclass
class Changes:
    """What ``scan_changes`` found: the sub-manifest to apply, its scan, and the record's layout for the
    new manifest (``apply_state.relayout``) with the rows still trusted (None: not trusted)."""

    manifest: Manifest
    scan: Scan
    order: list[str]
    rows: list[Row]


def scan_changes(
    root: str,
    root_fd: int,
    rec: Record,
    old_e: apply_state.Entries,
    lstats: apply_state.ChangedPaths,
    new_e: apply_state.Entries,
    paths: list[tuple[str, ...]],
    shared: dict[str, int],
    store: Store | None,
    rehash: bool,
    start: int,
) -> Changes:
    """Scan what may differ between ROOT, as ``rec`` recorded it (with its manifest's entries
    ``old_e``), and the manifest ``new_e``/``paths`` (``shared``: ``apply_state.shared_paths(paths)``);
    ``lstats``: the lstat pass over ``rec``, started at ``start``."""
    order, rows = rec.order, rec.rows
    # Entries are compared as bytes (manifests are encoded deterministically): an entry holds all
    # its paths, so a path's entry is unchanged exactly when its bytes are in both manifests.
    gone, came = apply_state.differing(
        old_e, new_e, lambda j: path_key(first_path(old_e[j])), lambda i: path_key(paths[i][0])
    )
    old_of: dict[str, Resource] = {}
    for j in gone:
        r = decode_entry(old_e[j])
        for p in r.paths:
            old_of[p] = r
    differing = set(old_of)
    differing.update(p for i in came for p in paths[i])
    new_idx = dict(zip((ps[0] for ps in paths), range(len(paths)), strict=True))
    new_idx.update(shared)

    dirty_k = _dirty_rows(root_fd, order, rows, lstats)
    dirty = {order[k] for k in dirty_k}
    root_dirty = rec.root_row is None or apply_state.row_of(os.fstat(root_fd)) != rec.root_row

    # Paths scanned for real: the dirty ones, with every path of their recorded entry (an inode's
    # paths change together), and parents the new manifest does not list.
    scanned = {"/" + r for r in dirty}
    # Also the changed entries whose recorded one set no mtime: the record vouches only for what that
    # entry says, and it says nothing of the mtime there, which the new entry may set.
    scanned.update(p for p, old in old_of.items() if old.mtime_ns is None)
    for p in list(scanned):
        e = rec.shared.get(p)
        if e is not None:
            scanned.update(decode_entry(old_e[e]).paths)
    sub_paths, parents = _sub_paths(differing | scanned, new_idx, order, paths)
    scanned.update(q for q in parents if q not in new_idx)
    wanted = sorted({new_idx[p] for p in sub_paths | parents if p in new_idx})
    sub = Manifest(tuple(decode_entry(new_e[i]) for i in wanted))
    want = sub.by_path()

    walked = WalkResult()
    dirs = DirFds(root_fd)
    try:
        seen: set[str] = set()
        if root_dirty:
            _list_new(root_fd, "", order, walked, seen)
        _see_paths(dirs, sorted(p[1:] for p in scanned), dirty, order, walked, seen)
    except OSError as exc:
        raise _changed_while_scanned(root, exc) from exc
    finally:
        dirs.close()
    scan = classify(root, root_fd, walked, want, store, rehash, start)

    _as_recorded(scan, differing - scanned, want.keys() - differing - scanned, old_of, want, order, rows)

    new_rows = list(rows)
    for k in dirty_k:
        new_rows[k] = None
    for p in differing:
        k = _find(order, p[1:])
        if k >= 0:
            new_rows[k] = None
    drop = {p[1:] for p in old_of if p not in new_idx}
    add = {p[1:] for i in came for p in paths[i]}
    new_order, new_rows = apply_state.relayout(order, new_rows, drop, add, new_idx.__contains__)
    return Changes(sub, scan, new_order, new_rows)


def _dirty_rows(root_fd: int, order: list[str], rows: list[Row], lstats: apply_state.ChangedPaths) -> set[int]:
    """Rows of the record the lstat pass found changed, and every row below one that was a
    directory and is not one now: there nothing is trusted (the lstat pass already failed there,
    as it never follows a symlink: this also covers a racing swap)."""
    dirty_k = set(lstats.result())
    for k in sorted(dirty_k):
        old = rows[k]
        if old is not None and not stat.S_ISDIR(apply_state.ROW.unpack(old)[2]):
            continue
        try:
            fd = fs.open_beneath(root_fd, order[k], os.O_PATH | os.O_DIRECTORY)
            os.close(fd)
            now_dir = True
        except OSError:
            now_dir = False
        if not now_dir:
            dirty_k.update(apply_state.below(order, order[k]))
    return dirty_k


def _sub_paths(
    sub_paths: set[str], new_idx: dict[str, int], order: list[str], paths: list[tuple[str, ...]]
) -> tuple[set[str], set[str]]:
    """(the paths of the sub-manifest, their parents): ``sub_paths`` with every path of their new
    entries, and the listed entry below each directory the manifest does not list."""
    for p in list(sub_paths):
        i = new_idx.get(p)
        if i is None:
            # A directory the manifest does not list but needs (something it lists is below): one
            # such entry in the sub-manifest makes it an implied parent there too, never an extra.
            # All of that entry's paths: the parents of each are then in the sub-manifest's view.
            for k in apply_state.below(order, p[1:]):
                listed = new_idx.get("/" + order[k])
                if listed is not None:
                    sub_paths.update(paths[listed])
                    break
        elif len(paths[i]) > 1:
            sub_paths.update(paths[i])
    parents: set[str] = set()
    for p in sub_paths:
        q = p.rpartition("/")[0]
        while q and q not in parents:
            parents.add(q)
            q = q.rpartition("/")[0]
    return sub_paths, parents


def _as_recorded(
    scan: Scan,
    unscanned: set[str],
    clean: set[str],
    old_of: dict[str, Resource],
    want: dict[str, Resource],
    order: list[str],
    rows: list[Row],
) -> None:
    """Enter in ``scan`` the differing paths not scanned, as the recorded manifest says (their
    lstat is unchanged), and the ``clean`` paths, as the new manifest says."""
    groups: dict[int, set[str]] = {}
    for p in unscanned:
        r = old_of.get(p)
        if r is None:
            continue  # new in the manifest, and not in ROOT
        scan.by_path[p] = r
        scan.groups[p] = groups.setdefault(id(r), set(r.paths))
        k = _find(order, p[1:])
        row = rows[k] if k >= 0 else None
        if row is not None:
            scan.inode[p] = apply_state.ROW.unpack(row)[:2]
        if isinstance(r, RegularFile) and r.digest:
            scan.local.setdefault(r.digest, []).append(p)
    for p in clean:
        scan.clean.add(p)
        w = want[p]
        if isinstance(w, RegularFile):
            scan.local.setdefault(w.digest, []).append(p)


_find = apply_state.find


def _see_paths(
    dirs: DirFds, rels: list[str], dirty: set[str], order: list[str], out: WalkResult, seen: set[str]
) -> None:
    """Add each path of ``rels`` (sorted, relative) as it is now; a missing one is left out.

    A directory among them is listed for names the record lacks when its own
    lstat changed (``dirty``), and walked whole when the record lacks it.
    Directories are opened from their parent's fd with O_NOFOLLOW.
    """
    for rel in rels:
        if rel in seen:
            continue
        parent, _, name = rel.rpartition("/")
        try:
            pfd = dirs.get(parent)
            st = os.lstat(name, dir_fd=pfd)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                continue  # gone, or its parent is not a directory any more
            raise
        seen.add(rel)
        if see_entry(pfd, rel, name, st, out):
            continue
        fd = dirs.get(rel)
        out.entries.append(Seen(rel, Stat(os.fstat(fd)), fs.read_xattrs(fd)))
        if rel in dirty:
            _list_new(fd, rel, order, out, seen)
        elif _find(order, rel) < 0:
            _walk_into(fd, rel, out, seen)


def _list_new(dir_fd: int, rel: str, order: list[str], out: WalkResult, seen: set[str]) -> None:
    """Add the entries of directory ``rel`` that the record does not list (with all below them)."""
    known = apply_state.children(order, rel)
    with os.scandir(dir_fd) as it:
        names = [e.name for e in it if e.name not in known]
    for name in names:
        child = f"{rel}/{name}" if rel else name
        if child in seen:
            continue
        try:
            st = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        seen.add(child)
        if see_entry(dir_fd, child, name, st, out):
            continue
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            out.entries.append(Seen(child, Stat(os.fstat(fd)), fs.read_xattrs(fd)))
            _walk_into(fd, child, out, seen)
        finally:
            os.close(fd)


def _walk_into(fd: int, rel: str, out: WalkResult, seen: set[str]) -> None:
    n = len(out.entries)
    walk(fd, WalkOptions(keep_appledouble=True, note=lambda _m: None), prefix=rel, out=out)
    seen.update(e.path for e in out.entries[n:])
