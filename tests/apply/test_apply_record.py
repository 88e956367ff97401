"""apply's record of ROOT (castore.apply.state): the next apply lstat's the recorded paths, trusts the
unchanged ones, scans the rest, and converges exactly as a full apply does."""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import castore.apply.state as apply_state
from castore.apply.run import ApplyOptions, ApplyReport, apply_tree
from castore.ingest import commit_manifest, ingest
from castore.manifest.model import Directory, Manifest, RegularFile, Resource
from castore.store import Store
from castore.testing.states import STATES, state
from castore.verify import VerifyOptions, verify_tree

NAMES = list(STATES)
RELATED = {"basic", "updates", "dir_perms", "parent_perms"}  # states that share most entries


@pytest.fixture(scope="module")
def stocked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, dict[str, str]]:
    base = tmp_path_factory.mktemp("record")
    store = Store.open(str(base / "store"))
    return store, {n: ingest(store, str(state(base / "src" / n, n)), progress=False) for n in NAMES}


@pytest.fixture(autouse=True)
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust rows at once (the racy window is 2 s); ``settle`` keeps later changes' ctimes apart."""
    monkeypatch.setattr(apply_state, "RACY_NS", 0)


def settle() -> None:
    time.sleep(0.03)  # past the kernel's coarse clock tick: a later change gets a later ctime


def run(store: Store, root: Path, digest: str, *, delete: bool = True) -> ApplyReport:
    return apply_tree(
        str(root), None, store=store, manifest_digest=digest, opts=ApplyOptions(delete=delete, note=lambda _m: None)
    )


def check(store: Store, root: Path, digest: str) -> None:
    assert verify_tree(str(root), store.load_manifest(digest), VerifyOptions()) == []


@pytest.mark.parametrize(("a", "b"), list(itertools.product(NAMES, NAMES)))
def test_recorded_state_to_state(stocked: tuple[Store, dict[str, str]], tmp_path: Path, a: str, b: str) -> None:
    store, digests = stocked
    root = state(tmp_path / "root", a)
    first = run(store, root, digests[a])
    assert first.trusted == 0  # no record yet: a full scan
    settle()
    report = run(store, root, digests[b])
    if a == b or {a, b} <= RELATED:
        assert report.trusted > 0
    check(store, root, digests[b])
    rec = apply_state.load(store, str(root), os.lstat(root))
    assert rec is not None and rec.digest == digests[b]
    settle()
    run(store, root, digests[a])
    check(store, root, digests[a])
    converged(store, root, digests[a])


def converged(store: Store, root: Path, digest: str) -> None:
    """Reruns change nothing; the second one, after the first scanned what the last apply wrote
    (rows of what apply writes are never trusted at once), reads no file at all."""
    settle()
    again = run(store, root, digest)
    assert (again.created, again.replaced, again.deleted, again.linked, again.metadata) == (0, 0, 0, 0, 0)
    settle()
    third = run(store, root, digest)
    assert (third.created, third.replaced, third.deleted, third.linked, third.metadata, third.hashed) == (
        0,
        0,
        0,
        0,
        0,
        0,
    )
    assert third.trusted > 0
    check(store, root, digest)


def _edit_same_size(root: Path) -> None:
    p = root / "usr/bin/tool"
    st = os.lstat(p)
    data = bytearray(p.read_bytes())
    data[0] ^= 1
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as recorded: only ctime moved


def _swap_dir_for_symlink(root: Path) -> None:
    # The nasty case: lstat through the symlink sees the very inodes the record holds.
    os.rename(root / "usr/bin", root / "usr/bin.moved")
    os.symlink("bin.moved", root / "usr/bin")


def _swap_files(root: Path) -> None:
    a, b = root / "usr/bin/tool", root / "usr/bin/suid"
    os.rename(a, root / "usr/bin/t")
    os.rename(b, a)
    os.rename(root / "usr/bin/t", b)


def _file_to_dir(root: Path) -> None:
    (root / "etc/hostname").unlink()
    (root / "etc/hostname").mkdir()
    (root / "etc/hostname/inner").write_bytes(b"x")


def _root_extra(root: Path) -> None:
    (root / "stray").write_bytes(b"stray\n")


def _xattr(root: Path) -> None:
    os.setxattr(root / "etc/hostname", "user.planted", b"1")


def _deep_extra(root: Path) -> None:
    (root / "var/lib/app/new/deeper").mkdir(parents=True)
    (root / "var/lib/app/new/deeper/f").write_bytes(b"f")


MODS: dict[str, Callable[[Path], None]] = {
    "content edited, size and mtime put back": _edit_same_size,
    "chmod": lambda root: os.chmod(root / "etc/hostname", 0o666),
    "xattr added": _xattr,
    "extra file in a directory": lambda root: (root / "etc/planted").write_bytes(b"p"),
    "extra file at the root": _root_extra,
    "extra directory tree": _deep_extra,
    "file removed": lambda root: (root / "usr/bin/suid").unlink(),
    "directory removed": lambda root: shutil.rmtree(root / "var/lib/app"),
    "directory swapped for a symlink to itself moved": _swap_dir_for_symlink,
    "hardlink added": lambda root: os.link(root / "etc/hostname", root / "etc/hostname.link"),
    "hardlink broken": lambda root: (root / "etc/hosts.allow").unlink(),
    "two files swapped": _swap_files,
    "file replaced by a directory": _file_to_dir,
    "symlink retargeted": lambda root: (
        os.unlink(root / "etc/hosts.lnk"),
        os.symlink("elsewhere", root / "etc/hosts.lnk"),
    ),
    "leftover of an interrupted apply": lambda root: (root / "etc/.continuity-apply-0123456789ab").write_bytes(b"t"),
}


@pytest.mark.parametrize("mod", list(MODS))
def test_local_change_after_the_record_is_repaired(
    stocked: tuple[Store, dict[str, str]], tmp_path: Path, mod: str
) -> None:
    store, digests = stocked
    root = state(tmp_path / "root", "basic")
    run(store, root, digests["basic"])
    settle()
    MODS[mod](root)
    settle()
    report = run(store, root, digests["basic"])
    assert report.trusted > 0
    check(store, root, digests["basic"])
    converged(store, root, digests["basic"])  # ... and the record it left is true too


def test_extra_kept_without_delete_is_found_by_a_later_delete(
    stocked: tuple[Store, dict[str, str]], tmp_path: Path
) -> None:
    store, digests = stocked
    root = state(tmp_path / "root", "basic")
    (root / "etc/mine").write_bytes(b"mine\n")
    run(store, root, digests["basic"], delete=False)
    settle()
    kept = run(store, root, digests["basic"], delete=False)
    assert (root / "etc/mine").exists() and kept.deleted == 0
    settle()
    gone = run(store, root, digests["basic"], delete=True)
    assert gone.deleted == 1 and not (root / "etc/mine").exists()
    check(store, root, digests["basic"])


def test_replaced_root_is_scanned_whole(stocked: tuple[Store, dict[str, str]], tmp_path: Path) -> None:
    store, digests = stocked
    root = state(tmp_path / "root", "basic")
    run(store, root, digests["basic"])
    shutil.move(root, tmp_path / "old")
    state(root, "updates")  # same path, another directory
    report = run(store, root, digests["basic"])
    assert report.trusted == 0
    check(store, root, digests["basic"])


def test_racy_rows_are_not_trusted(
    stocked: tuple[Store, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apply_state, "RACY_NS", 3600 * 10**9)  # every ctime is "recent"
    store, digests = stocked
    root = state(tmp_path / "root", "basic")
    run(store, root, digests["basic"])
    report = run(store, root, digests["updates"])
    assert report.trusted == 0
    check(store, root, digests["updates"])


def test_many_paths_use_two_lstat_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apply_state, "PARALLEL_MIN", 10)
    store = Store.open(str(tmp_path / "store"))
    src = tmp_path / "src"
    for d in range(5):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(20):
            (src / f"d{d}/f{f}").write_bytes(b"%d/%d" % (d, f))
    v1 = ingest(store, str(src), progress=False)
    (src / "d3/f7").write_bytes(b"changed")
    (src / "d4/f1").unlink()
    v2 = ingest(store, str(src), progress=False)
    root = tmp_path / "root"
    run(store, root, v1)  # creates every file: nothing trusted yet
    settle()
    run(store, root, v1)  # finds them clean: all trusted from now on
    settle()
    (root / "d0/f0").write_bytes(b"local edit")
    settle()
    report = run(store, root, v2)
    assert report.trusted > 90 and report.replaced == 2 and report.deleted == 1, report
    check(store, root, v2)


def test_gc_drops_records_of_roots_that_are_gone(stocked: tuple[Store, dict[str, str]], tmp_path: Path) -> None:
    store, digests = stocked
    root = state(tmp_path / "root", "basic")
    run(store, root, digests["basic"])
    assert apply_state.load(store, str(root), os.lstat(root)) is not None
    assert apply_state.prune(store) == 0
    shutil.rmtree(root)
    assert apply_state.prune(store) == 1


def test_record_of_a_manifest_gc_removed_is_not_used(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "store"))
    src = state(tmp_path / "src", "basic")
    v1 = ingest(store, str(src), progress=False)
    (src / "etc/new").write_bytes(b"new\n")
    v2 = ingest(store, str(src), progress=False)
    root = tmp_path / "root"
    run(store, root, v1)
    os.unlink(store.blob_path(v1))  # as if gc had taken it
    report = run(store, root, v2)
    assert report.trusted == 0
    check(store, root, v2)


def _tree(root: Path) -> list[tuple[str, int, bytes]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = os.lstat(p)
            data = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
            out.append((str(p.relative_to(root)), st.st_mode, data))
    return sorted(out)


def _commit(store: Store, *resources: Resource) -> str:
    with store.lease() as lease:
        return commit_manifest(store, Manifest.of(list(resources)), [], {}, sync_fd=lease.fd)


Y = "sha256:" + hashlib.sha256(b"y").hexdigest()


@pytest.mark.parametrize("delete", [True, False])
def test_parents_the_manifest_stops_listing(tmp_path: Path, delete: bool) -> None:
    """A directory listed, then only implied by what is below it, then not needed at all: the
    record keeps it exactly as long as a full scan would (differential: fast vs full)."""
    store = Store.open(str(tmp_path / "store"))
    (tmp_path / "src").mkdir()
    (tmp_path / "src/y").write_bytes(b"y")
    ingest(store, str(tmp_path / "src"), progress=False)  # puts the content in the store
    f = RegularFile(paths=("/x/sub/y",), size=1, digest=Y, mtime_ns=10**18)
    seq = [
        _commit(store, Directory(paths=("/x",), mtime_ns=10**18), Directory(paths=("/x/sub",), mtime_ns=10**18), f),
        _commit(store, f),  # /x and /x/sub only implied now
        _commit(store, RegularFile(paths=("/z",), size=1, digest=Y, mtime_ns=10**18)),  # nothing under /x
        _commit(store, f),
    ]
    fast, full = tmp_path / "fast", tmp_path / "full"
    for d in seq:
        settle()
        report = run(store, fast, d, delete=delete)
        apply_tree(
            str(full),
            None,
            store=store,
            manifest_digest=d,
            opts=ApplyOptions(delete=delete, rehash=True, note=lambda _m: None),
        )
        assert _tree(fast) == _tree(full), report
        settle()
        again = run(store, fast, d, delete=delete)  # and from the record it left
        assert (again.created, again.replaced, again.deleted, again.metadata) == (0, 0, 0, 0)
        assert _tree(fast) == _tree(full)


def test_relayout_keeps_and_drops_parents() -> None:
    order = ["a", "a/b", "a/b/c", "d"]
    rows: list[apply_state.Row] = [b"1", b"2", b"3", b"4"]
    listed = {"/a", "/a/b/c", "/d", "/e/f/g"}.__contains__
    o, r = apply_state.relayout(order, rows, {"a/b/c"}, {"e/f/g"}, listed)
    # a/b (implicit, nothing left below) goes; a is listed and stays; e and e/f are added for e/f/g.
    assert o == ["a", "d", "e", "e/f", "e/f/g"]
    assert r == [b"1", b"4", None, None, None]
    o, r = apply_state.relayout(order, rows, {"a/b"}, set(), {"/a/b/c"}.__contains__)
    assert o == ["a", "a/b", "a/b/c", "d"]  # a/b stays (a/b/c is below it), untrusted
    assert r == [b"1", None, b"3", b"4"]


def test_changed_parent_the_manifest_only_implies_is_kept(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "store"))
    (tmp_path / "src").mkdir()
    (tmp_path / "src/y").write_bytes(b"y")
    ingest(store, str(tmp_path / "src"), progress=False)
    d = _commit(store, RegularFile(paths=("/x/sub/y",), size=1, digest=Y, mtime_ns=10**18))
    root = tmp_path / "root"
    run(store, root, d)
    settle()
    run(store, root, d)
    settle()
    os.chmod(root / "x", 0o700)  # the implied parent changes: scanned, and must not count as an extra
    settle()
    report = run(store, root, d)
    assert report.deleted == 0 and (root / "x/sub/y").read_bytes() == b"y"


def test_lstat_pass_with_many_missing_directories(tmp_path: Path) -> None:
    """More than the pass's open-directory cache, most of them gone: each is distrusted, no error."""
    store = Store.open(str(tmp_path / "store"))
    src = tmp_path / "src"
    for d in range(80):
        (src / f"d{d:02}").mkdir(parents=True)
        (src / f"d{d:02}/f").write_bytes(b"%d" % d)
    v = ingest(store, str(src), progress=False)
    root = tmp_path / "root"
    run(store, root, v)
    settle()
    run(store, root, v)
    for d in range(0, 80, 2):
        shutil.rmtree(root / f"d{d:02}")
    settle()
    report = run(store, root, v)
    assert report.created == 80
    check(store, root, v)


@pytest.mark.parametrize("garbage", [b"", b"\x00garbage", b"\xff" * 100])
def test_unreadable_record_means_a_full_scan(
    stocked: tuple[Store, dict[str, str]], tmp_path: Path, garbage: bytes
) -> None:
    store, digests = stocked
    root = state(tmp_path / "root", "basic")
    run(store, root, digests["basic"])
    db = store.meta.db("roots")
    store.meta.write(lambda txn: txn.put(os.fsencode(str(root)), garbage, db=db))
    settle()
    report = run(store, root, digests["updates"])
    assert report.trusted == 0
    check(store, root, digests["updates"])
    settle()
    assert run(store, root, digests["updates"]).trusted > 0  # and a good record replaced it
