"""Apply's record of each ROOT it brought to a manifest, so that the next apply skips what is unchanged.

Like git's index. After an apply, the store keeps, per ROOT, the manifest's
digest with where each entry lies in its bytes (``entries.split_entries``: no
decoding), and the lstat row of every path that apply found, or left,
exactly as that manifest says. The next apply to the same ROOT lstat's the
recorded paths (in two processes on big trees) and trusts each one whose row
is unchanged: ctime moves on every change
of content, mode, owner, xattrs or link count, and cannot be set back. Only the
paths that changed locally, and the entries that differ between the recorded
manifest and the new one, are then scanned and applied, by the same code as a
full apply (``castore.apply.run``), on the sub-manifest that covers them.

Trust rules:

- a row is recorded only for a path that apply did not change and whose ctime
  is ``RACY_NS`` older than its lstat (git's racy-clean rule: a change within
  the same clock tick would otherwise go unseen);
- a directory's row is recorded only when its listing held nothing the
  manifest does not list (so a changed directory is listed again, and its
  extras found);
- nothing below a path that was a directory and no longer is (a symlink, say)
  is trusted: each path is lstat'ed in its parent, opened from ROOT with no
  symlink followed, so nothing outside ROOT is ever looked at;
- the record is keyed by ROOT's absolute path and checked against ROOT's
  (dev, ino); it is a cache: when it is missing, stale or unreadable, apply
  walks the whole tree, as without it.
"""

from __future__ import annotations

import array
import bisect
import itertools
import marshal
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from castore import fs
from castore.store import Store, apply_records
from castore.store.statcache import RACY_NS

VERSION = apply_records.VERSION
PARALLEL_MIN = 20_000  # recorded paths from which the lstat pass forks a second process

#: A path's lstat as it was recorded: (dev, ino, mode, uid, gid, size, mtime_ns, ctime_ns, nlink)
#: packed (10x faster to unmarshal than tuples of ints: 3 ms for 100k rows), or None: not trusted.
ROW = struct.Struct("<QQQQQqqqQ")
Row = bytes | None


def row_of(st: os.stat_result | object) -> bytes:
    """The row of an lstat result (``os.stat_result`` or ``build.Stat``)."""
    s: os.stat_result = st  # type: ignore[assignment]
    return ROW.pack(
        s.st_dev, s.st_ino, s.st_mode, s.st_uid, s.st_gid, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_nlink
    )


def trusted_row(st: os.stat_result | object, seen_ns: int) -> Row:
    """The row of a path lstat'ed at ``seen_ns``, or None when its ctime is inside the racy window."""
    s: os.stat_result = st  # type: ignore[assignment]
    return row_of(s) if s.st_ctime_ns <= seen_ns - RACY_NS else None


@dataclass
class Record:
    """What a ROOT held after an apply: the manifest's entries and the rows of its paths."""

    digest: str  # the manifest (a blob of the store: its entries are read from it)
    spans: bytes  # each entry's (offset, length) in the manifest's bytes, as array("Q")
    shared: dict[str, int]  # "/path" -> entry index, for the entries with more than one path (hardlinks)
    order: list[str]  # every recorded path, relative ("a/b"), sorted
    rows: list[Row]  # aligned with ``order``
    root_row: Row

    def entries(self, manifest: bytes) -> Entries | None:
        """The entries, as spans of the manifest's bytes; None if they do not fit."""
        spans = array.array("Q", self.spans)
        offsets, lengths = spans[0::2], spans[1::2]
        if len(spans) % 2 or (len(spans) and offsets[-1] + lengths[-1] > len(manifest)):
            return None
        return Entries(manifest, offsets, lengths)


@dataclass
class Entries:
    """A manifest's encoded entries as (offset, length) spans of its bytes."""

    data: bytes
    offsets: Sequence[int]
    lengths: Sequence[int]

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> bytes:
        o = self.offsets[i]
        return self.data[o : o + self.lengths[i]]

    def run(self, i: int, k: int) -> bytes:
        """The bytes of entries [i, i + k), framing included (k >= 1)."""
        return self.data[self.offsets[i] : self.offsets[i + k - 1] + self.lengths[i + k - 1]]


def differing(
    old: Entries, new: Entries, old_path: Callable[[int], bytes], new_path: Callable[[int], bytes]
) -> tuple[list[int], list[int]]:
    """Indexes of the entries of ``old`` not in ``new`` and of ``new`` not in ``old``, by a merge.

    Runs of entries are compared as bytes, growing while they match and
    shrinking to one entry where they do not (a 1% change of 100k entries
    costs ~2k comparisons, not 100k); single entries are merged by primary
    path (``*_path``: its sort key). Anything matched is byte-identical in
    both, so whatever the order, no difference is missed: an unsorted
    manifest only makes the result larger.
    """
    gone: list[int] = []
    came: list[int] = []
    i = j = 0
    n, m = len(old), len(new)
    k = 64
    while i < n and j < m:
        k = min(k, n - i, m - j)
        if old.run(i, k) == new.run(j, k):
            i += k
            j += k
            k *= 2
            continue
        if k > 1:
            k = max(1, k // 8)
            continue
        a, b = old_path(i), new_path(j)
        if a == b:
            gone.append(i)
            came.append(j)
            i += 1
            j += 1
        elif a < b:
            gone.append(i)
            i += 1
        else:
            came.append(j)
            j += 1
        k = 1
    gone.extend(range(i, n))
    came.extend(range(j, m))
    return gone, came


def spans_of(starts: list[int], entries: list[bytes]) -> bytes:
    """``Record.spans`` from ``entries.split_entries``'s ``starts`` and entries."""
    spans = array.array("Q", bytes(16 * len(starts)))
    spans[0::2] = array.array("Q", starts)
    spans[1::2] = array.array("Q", map(len, entries))
    return spans.tobytes()


def shared_paths(paths: list[tuple[str, ...]]) -> dict[str, int]:
    """ "/path" -> entry index, for the entries with more than one path."""
    many = itertools.compress(range(len(paths)), map((1).__lt__, map(len, paths)))  # in C: 3x faster
    return {p: i for i in many for p in paths[i]}


def load(store: Store, root: str, root_st: os.stat_result) -> Record | None:
    """The record of ``root`` (an absolute path), if there is one for this very directory."""
    fields = apply_records.load_row(store, root, root_st)
    if fields is None:
        return None
    try:
        digest, spans, shared, order, rows, root_row = fields
    except ValueError:
        return None
    if not isinstance(order, list) or not isinstance(rows, list) or len(order) != len(rows):
        return None
    return Record(digest, spans, shared, order, rows, root_row)


def save(store: Store, root: str, root_st: os.stat_result, rec: Record) -> None:
    """Replace ``root``'s record (one synced LMDB transaction)."""
    apply_records.save_row(store, root, root_st, (rec.digest, rec.spans, rec.shared, rec.order, rec.rows, rec.root_row))


prune = apply_records.prune


# ------------------------------------------------------------------ the lstat pass


def _changed(root_fd: int, order: list[str], rows: list[Row], lo: int, hi: int) -> list[int]:
    """Indexes in [lo, hi) whose lstat differs from the recorded row (or fails).

    Each name is lstat'ed in its parent directory, opened from ROOT a
    component at a time with O_NOFOLLOW (``fs.DirFds``): nothing outside ROOT
    is ever looked at, and a path below anything that is no longer a
    directory fails, so is not trusted. As fast as one lstat of the whole
    relative path.
    """
    lstat, pack = os.lstat, ROW.pack
    out = []
    dirs = fs.DirFds(root_fd)
    last, pfd = None, -1
    try:
        for k in range(lo, hi):
            old = rows[k]
            if old is None:
                out.append(k)
                continue
            parent, _, name = order[k].rpartition("/")
            if parent != last:
                last = parent
                try:
                    pfd = dirs.get(parent)
                except OSError:
                    pfd = -1
            if pfd < 0:
                out.append(k)
                continue
            try:
                s = lstat(name, dir_fd=pfd)
            except OSError:
                out.append(k)
                continue
            if (
                pack(
                    s.st_dev,
                    s.st_ino,
                    s.st_mode,
                    s.st_uid,
                    s.st_gid,
                    s.st_size,
                    s.st_mtime_ns,
                    s.st_ctime_ns,
                    s.st_nlink,
                )
                != old
            ):
                out.append(k)
    finally:
        dirs.close()
    return out


class PassFailed(Exception):
    """The lstat pass could not finish (a worker died): apply scans the whole tree instead."""


class ChangedPaths:
    """The lstat pass over ``rec.order``, started at once: ``result()`` gives the indexes whose lstat
    is not the recorded row.

    On big trees two child processes share the pass while the caller reads
    the new manifest (the pass is syscall-bound; this overlaps it with the
    manifest's splitting and diffing). A path is lstat'ed by its whole
    relative path (2x fewer syscalls than opening each directory); a symlink
    met on the way is caught by the caller, which distrusts everything below
    a directory that changed type.
    """

    def __init__(self, root_fd: int, rec: Record) -> None:
        self.root_fd, self.rec = root_fd, rec
        self.children: list[tuple[int, int]] = []  # (pid, read end of its pipe)
        n = len(rec.order)
        if n >= PARALLEL_MIN:
            for lo, hi in ((0, n // 2), (n // 2, n)):
                self._fork(lo, hi)

    def _fork(self, lo: int, hi: int) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: lstat its share, send the indexes back, exit without cleanup
            code = 1
            try:
                os.close(r)
                data = marshal.dumps(_changed(self.root_fd, self.rec.order, self.rec.rows, lo, hi))
                with os.fdopen(w, "wb") as out:
                    out.write(data)
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        self.children.append((pid, r))

    def result(self) -> list[int]:
        if not self.children:
            return _changed(self.root_fd, self.rec.order, self.rec.rows, 0, len(self.rec.order))
        out: list[int] = []
        failed = False
        while self.children:
            pid, r = self.children.pop(0)
            with os.fdopen(r, "rb") as inp:
                data = inp.read()
            _, status = os.waitpid(pid, 0)
            if status != 0:
                failed = True
            else:
                out += marshal.loads(data)
        if failed:
            raise PassFailed("an lstat process failed")
        return out

    def cancel(self) -> None:
        """Stop the children (the caller gave up)."""
        for pid, r in self.children:
            os.close(r)
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
        self.children = []


def below(order: list[str], rel: str) -> range:
    """Indexes of the paths strictly below ``rel`` in the sorted ``order``."""
    lo = bisect.bisect_left(order, rel + "/")
    hi = bisect.bisect_left(order, rel + "0")  # "0" is the byte after "/"
    return range(lo, hi)


def children(order: list[str], rel: str) -> set[str]:
    """Names recorded directly in directory ``rel`` ("" for ROOT)."""
    if not rel:
        return {p for p in order if "/" not in p}
    plen = len(rel) + 1
    return {order[k][plen:] for k in below(order, rel) if "/" not in order[k][plen:]}


def layout(paths: list[tuple[str, ...]]) -> list[str]:
    """Sorted relative paths of every entry's paths ("/a/b") and of every parent they need."""
    rel = [ps[0][1:] for ps in paths]
    rel.extend(p[1:] for ps in paths if len(ps) > 1 for p in ps[1:])
    have = set(rel)
    missing = {q for p in rel if (q := p.rpartition("/")[0]) not in have}
    missing.discard("")
    while missing:  # parents the manifest does not list (rare), and theirs
        rel.extend(missing)
        have |= missing
        missing = {q for p in missing if (q := p.rpartition("/")[0]) not in have}
        missing.discard("")
    rel.sort()  # nearly sorted already: the manifest is in byte order
    return rel


def find(order: list[str], rel: str) -> int:
    """The index of ``rel`` in the sorted ``order``, or -1."""
    k = bisect.bisect_left(order, rel)
    return k if k < len(order) and order[k] == rel else -1


def relayout(
    order: list[str], rows: list[Row], drop: set[str], add: set[str], listed: Callable[[str], bool]
) -> tuple[list[str], list[Row]]:
    """``order`` and its ``rows`` without the paths ``drop`` and with the paths ``add`` (untrusted).

    Parents keep their place while something below them stays; parents the
    added paths need and ``order`` lacks are added; a parent the manifest
    does not list (``listed``) goes once nothing below it is left.
    O(changes) but for one pass of C-level filtering.
    """
    if drop:
        keep = [o not in drop for o in order]
        order = list(itertools.compress(order, keep))
        rows = list(itertools.compress(rows, keep))
    else:
        order, rows = list(order), list(rows)
    new: set[str] = set()
    for rel in add:
        q = rel
        while q and q not in new and find(order, q) < 0:
            new.add(q)
            q = q.rpartition("/")[0]
    for rel in sorted(new):
        k = bisect.bisect_left(order, rel)
        order.insert(k, rel)
        rows.insert(k, None)
    # A dropped path something still lies below stays (a parent the manifest no longer lists);
    # a parent left with nothing below it that the manifest does not list goes.
    # (unless an added path brought it back already: listed twice, its second row would never be trusted)
    back = sorted(d for d in drop if len(below(order, d)) and find(order, d) < 0)
    for rel in back:
        k = bisect.bisect_left(order, rel)
        order.insert(k, rel)
        rows.insert(k, None)
    parents = {d.rpartition("/")[0] for d in drop} - {""}
    while parents:
        up: set[str] = set()
        for q in parents:
            k = find(order, q)
            if k >= 0 and not len(below(order, q)) and not listed("/" + q):
                del order[k]
                del rows[k]
                if "/" in q:
                    up.add(q.rpartition("/")[0])
        parents = up
    return order, rows
