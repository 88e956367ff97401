"""ingest -> checkout -> compare, fstest-style, for every link mode; catalog; hardlink objects."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from castore.build import build
from castore.checkout import checkout
from castore.ingest import ingest
from castore.materialize import Options
from castore.store import Store, manifest_refs
from castore.testing.compare import assert_trees_equal, snapshot
from castore.testing.trees import basic, write
from tests.helpers import run_cli

MODES = ["copy", "hardlink", "auto", "reflink"]


def deletion(root: Path) -> None:
    basic(root)
    os.unlink(root / "etc/hostname")
    os.unlink(root / "etc/hosts.lnk")


def update(root: Path) -> None:
    basic(root)
    (root / "etc/hosts").write_bytes(b"10.0.0.1 other\n")
    with open(root / "data.bin", "r+b") as f:
        f.seek(1 << 20)
        f.write(b"patched")


def dir_permissions(root: Path) -> None:
    basic(root)
    (root / "locked").mkdir()
    write(root / "locked/inside", b"in")
    os.chmod(root / "locked", 0o500)
    (root / "private").mkdir(mode=0o700)
    write(root / "private/x", b"x")
    os.chmod(root / "private", 0o000)


def parent_permissions(root: Path) -> None:
    write(root / "a/b/c/d", b"deep", 0o400)
    os.chmod(root / "a/b/c", 0o555)
    os.chmod(root / "a/b", 0o311)
    os.chmod(root / "a", 0o700)


def hardlinks(root: Path) -> None:
    write(root / "one", b"same")
    os.link(root / "one", root / "two")
    (root / "sub").mkdir()
    os.link(root / "one", root / "sub/three")
    write(root / "lone", b"same")  # same bytes, not linked: must stay separate
    write(root / "big", os.urandom(2 << 20))
    os.link(root / "big", root / "big2")


SCENARIOS: dict[str, Callable[[Path], None]] = {
    "basic": basic,
    "deletion": deletion,
    "update": update,
    "dir_permissions": dir_permissions,
    "parent_permissions": parent_permissions,
    "hardlinks": hardlinks,
}


@pytest.mark.parametrize("link", MODES)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_round_trip(tmp_path: Path, store: Store, scenario: str, link: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    SCENARIOS[scenario](src)
    digest = ingest(store, str(src), name=scenario, progress=False)
    m = store.load_manifest(digest)
    if link == "reflink":
        # ext4 has no reflink: --link reflink must fail cleanly and leave nothing behind
        try:
            checkout(store, m, str(tmp_path / "out"), Options(link="reflink"), digest)
        except Exception as exc:  # noqa: BLE001
            assert "reflink" in str(exc)
            assert not (tmp_path / "out").exists()
            assert [p for p in os.listdir(tmp_path) if p.startswith(".out")] == []
            return
    else:
        checkout(store, m, str(tmp_path / "out"), Options(link=link), digest)
    assert_trees_equal(src, tmp_path / "out")
    if link == "hardlink":
        # the checkout's hardlink structure equals the source's
        assert snapshot(src)[1] == snapshot(tmp_path / "out")[1]


def test_versions_dedup_and_history(tmp_path: Path, store: Store) -> None:
    src = tmp_path / "src"
    write(src / "big", os.urandom(8 << 20))
    d1 = ingest(store, str(src), name="v", progress=False)
    blobs_before = _store_bytes(store)
    with open(src / "big", "r+b") as f:
        f.seek(4 << 20)
        f.write(b"insert")
    d2 = ingest(store, str(src), name="v", progress=False)
    added = _store_bytes(store) - blobs_before
    assert d1 != d2
    assert added < (2 << 20), f"a 6-byte change stored {added} bytes"
    hist = [t.digest for t in store.history("v")]
    assert hist == [d1, d2] and store.get_tag("v") == d2
    m = store.load_manifest(d2)
    assert len(m.files()[0].chunks) > 4


def _store_bytes(store: Store) -> int:
    total = 0
    for dirpath, _, files in os.walk(os.path.join(store.path, "blobs")):
        total += sum(os.lstat(os.path.join(dirpath, f)).st_size for f in files)
    return total


def test_stat_cache_skips_rehash(tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import castore.ingest
    import castore.readers
    import castore.store.statcache

    monkeypatch.setattr(castore.store.statcache, "RACY_NS", 0)
    src = tmp_path / "src"
    for i in range(5):
        write(src / f"f{i}", b"content %d" % i)
    calls: list[str] = []
    real = castore.readers.Processor.run_one

    def counting(self: castore.readers.Processor, root_fd: int, job: castore.readers.FileJob) -> object:
        calls.append(job.rel)
        return real(self, root_fd, job)

    monkeypatch.setattr(castore.readers.Processor, "run_one", counting)
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1)  # in-process, so the counter sees every read
    d1 = ingest(store, str(src), progress=False, pool=pool)
    assert len(calls) == 5
    calls.clear()
    assert ingest(store, str(src), progress=False, pool=pool) == d1
    assert calls == []
    (src / "f3").write_bytes(b"changed")
    d3 = ingest(store, str(src), progress=False, pool=pool)
    assert calls == ["f3"] and d3 != d1
    # a cache hit whose blob vanished is read again
    calls.clear()
    m = store.load_manifest(d3)
    r0 = m.by_path()["/f0"]
    os.unlink(store.blob_path(r0.digest))  # type: ignore[union-attr]
    from castore.store import treecache

    def drop(t: object) -> None:  # as gc and fsck --repair drop a row: counted (castore/store/treecache.py)
        t.delete(bytes.fromhex(r0.digest[7:]), db=store.meta.db("blobs"))  # type: ignore
        treecache.note_deletions(store.meta, t)

    store.meta.write(drop)
    assert ingest(store, str(src), progress=False, pool=pool) == d3
    assert calls == ["f0"]
    assert store.read_blob(r0.digest) == b"content 0"  # type: ignore[union-attr]


def test_identical_files_get_distinct_hardlink_objects(tmp_path: Path, store: Store) -> None:
    """ostree#925: two empty files of one tree must not share an inode in a hardlink checkout."""
    src = tmp_path / "src"
    write(src / "etc/machine-id")
    write(src / "usr/lib/a/__init__.py")
    write(src / "usr/lib/b/__init__.py")
    d = ingest(store, str(src), progress=False)
    m = store.load_manifest(d)
    checkout(store, m, str(tmp_path / "o1"), Options(link="hardlink"), d)
    checkout(store, m, str(tmp_path / "o2"), Options(link="hardlink"), d)
    ino = lambda p: os.stat(p).st_ino  # noqa: E731
    assert ino(tmp_path / "o1/usr/lib/a/__init__.py") != ino(tmp_path / "o1/usr/lib/b/__init__.py")
    assert ino(tmp_path / "o1/etc/machine-id") == ino(tmp_path / "o2/etc/machine-id")


def test_edit_through_hardlink_never_reaches_next_checkout(tmp_path: Path, store: Store) -> None:
    src = tmp_path / "src"
    write(src / "conf", b"original\n")
    d = ingest(store, str(src), progress=False)
    m = store.load_manifest(d)
    checkout(store, m, str(tmp_path / "o1"), Options(link="hardlink"), d)
    with open(tmp_path / "o1/conf", "r+b") as f:  # root ignores 0444: this edits the shared inode
        f.write(b"EVIL!!!!\n")
    checkout(store, m, str(tmp_path / "o2"), Options(link="hardlink"), d)
    assert (tmp_path / "o2/conf").read_bytes() == b"original\n"
    checkout(store, m, str(tmp_path / "o3"), Options(link="copy"), d)
    assert (tmp_path / "o3/conf").read_bytes() == b"original\n"


def _object_records(store: Store) -> dict[bytes, bytes]:
    with store.meta.read() as txn:
        return {bytes(k): bytes(v) for k, v in txn.cursor(db=store.meta.db("links")) if k[:1] == b"o"}


def test_hardlink_records_skip_rehash_and_read_the_older_form(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkout proves an object by its packed record (no re-hash); a record of the older
    marshal form still proves it, and is rewritten packed."""
    import marshal

    from castore import fs
    from castore.store import links

    src = tmp_path / "src"
    for i in range(5):
        write(src / f"d/f{i}", f"file {i}\n".encode())
    d = ingest(store, str(src), progress=False)
    checkout(store, None, str(tmp_path / "o1"), Options(link="hardlink"), d)
    recs = _object_records(store)
    assert len(recs) == 5
    for raw in recs.values():
        rec = links.object_record(raw)
        assert raw[0] == links.RECORD_V2 and len(raw) == links.OBJECT_RECORD.size
        assert isinstance(rec[4], str) and rec[4].startswith("sha256:")
    hashed: list[int] = []
    real = fs.hash_fd

    def spy(fd: int, *args: object, **kwargs: object) -> tuple[str, int]:
        hashed.append(fd)
        return real(fd, *args, **kwargs)  # type: ignore[arg-type]

    real_digest = fs.digest_fd

    def digest_spy(fd: int, size: int) -> bytes | None:
        hashed.append(fd)
        return real_digest(fd, size)

    monkeypatch.setattr(fs, "hash_fd", spy)
    monkeypatch.setattr(fs, "digest_fd", digest_spy)  # the re-proof from a record (materialize.objects)
    checkout(store, None, str(tmp_path / "o2"), Options(link="hardlink"), d)
    assert hashed == []  # every object proven by its record
    # Rows written by an older version (marshalled tuples) prove objects too.
    old = {k: marshal.dumps(links.object_record(v)) for k, v in _object_records(store).items()}
    store.meta.write(lambda t: [t.put(k, v, db=store.meta.db("links")) for k, v in old.items()])  # type: ignore
    checkout(store, None, str(tmp_path / "o3"), Options(link="hardlink"), d)
    assert hashed == []
    assert all(v[0] == links.RECORD_V2 for v in _object_records(store).values())
    # Removing a checkout moves the objects' ctime: they are proven again by hashing, once.
    import shutil

    shutil.rmtree(tmp_path / "o1")
    checkout(store, None, str(tmp_path / "o4"), Options(link="hardlink"), d)
    assert len(hashed) == 5
    checkout(store, None, str(tmp_path / "o5"), Options(link="hardlink"), d)
    assert len(hashed) == 5
    assert_trees_equal(src, tmp_path / "o5")


def test_edit_with_restored_mtime_after_unlink_is_caught(tmp_path: Path, store: Store) -> None:
    """The nastiest edit: same size, mtime put back, and a checkout removed too (so nlink and
    ctime both moved). The next checkout must still not hand it out."""
    import shutil

    src = tmp_path / "src"
    write(src / "conf", b"original\n")
    d = ingest(store, str(src), progress=False)
    checkout(store, None, str(tmp_path / "o1"), Options(link="hardlink"), d)
    checkout(store, None, str(tmp_path / "o2"), Options(link="hardlink"), d)
    p = tmp_path / "o1/conf"
    st = os.stat(p)
    with open(p, "r+b") as f:
        f.write(b"EVIL!!!!\n")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    shutil.rmtree(tmp_path / "o2")
    checkout(store, None, str(tmp_path / "o3"), Options(link="hardlink"), d)
    assert (tmp_path / "o3/conf").read_bytes() == b"original\n"
    assert os.stat(tmp_path / "o3/conf").st_ino != os.stat(p).st_ino


def test_after_a_removed_checkout_objects_are_proven_against_their_records(tmp_path: Path, store: Store) -> None:
    """Once an earlier checkout is removed every object's ctime has moved: each is proven again
    from its record (mode, owner, size, mtime, no xattrs, content), and one changed meanwhile
    (chmod, an xattr) is replaced, never handed out."""
    import shutil

    src = tmp_path / "src"
    write(src / "plain", b"plain\n")
    write(src / "chmodded", b"mode\n")
    write(src / "tagged", b"xattr\n")
    write(src / "withx", b"has one\n")
    os.setxattr(src / "withx", "user.k", b"v")
    d = ingest(store, str(src), progress=False)
    checkout(store, None, str(tmp_path / "o1"), Options(link="hardlink"), d)
    checkout(store, None, str(tmp_path / "o2"), Options(link="hardlink"), d)
    os.chmod(tmp_path / "o1/chmodded", 0o600)
    os.setxattr(tmp_path / "o1/tagged", "user.added", b"1")
    shutil.rmtree(tmp_path / "o2")
    checkout(store, None, str(tmp_path / "o3"), Options(link="hardlink"), d)
    assert_trees_equal(src, tmp_path / "o3")
    ino = lambda p: os.stat(p).st_ino  # noqa: E731
    assert ino(tmp_path / "o3/plain") == ino(tmp_path / "o1/plain")  # proven: shared
    assert ino(tmp_path / "o3/withx") == ino(tmp_path / "o1/withx")  # proven through its entry
    assert ino(tmp_path / "o3/chmodded") != ino(tmp_path / "o1/chmodded")  # replaced
    assert ino(tmp_path / "o3/tagged") != ino(tmp_path / "o1/tagged")  # replaced


def test_no_object_record_outlives_a_failed_sync(tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record vouches for an object's bytes, so it commits only after the syncfs that makes new
    objects durable: when that syncfs fails, the checkout fails and no record is left."""
    import errno

    from castore.fs import linux

    src = tmp_path / "src"
    for i in range(3):
        write(src / f"f{i}", f"{i}\n".encode())
    d = ingest(store, str(src), progress=False)

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(linux, "syncfs", eio)
    with pytest.raises(OSError):
        checkout(store, None, str(tmp_path / "o1"), Options(link="hardlink"), d)
    assert _object_records(store) == {}
    assert not (tmp_path / "o1").exists()
    monkeypatch.undo()
    checkout(store, None, str(tmp_path / "o2"), Options(link="hardlink"), d)
    assert len(_object_records(store)) == 3
    assert_trees_equal(src, tmp_path / "o2")


def test_concurrent_first_hardlink_checkouts_share_one_object_each(tmp_path: Path, store: Store) -> None:
    """Three checkouts that all make the objects at once: one object per file wins, all three link
    it, and fsck finds every record naming the object's inode (no replaced-object warnings)."""
    from concurrent.futures import ThreadPoolExecutor

    src = tmp_path / "src"
    for i in range(1500):  # enough for each checkout to fork its second writer too
        write(src / f"d{i % 7}/f{i}", f"file {i}\n".encode())
    d = ingest(store, str(src), progress=False)
    outs = [tmp_path / f"o{i}" for i in range(3)]
    with ThreadPoolExecutor(3) as ex:
        done = list(ex.map(lambda o: run_cli("checkout", "--link", "hardlink", d, o, store=Path(store.path)), outs))
    assert all(p.returncode == 0 for p in done), [p.stderr for p in done]
    for o in outs:
        assert_trees_equal(src, o)
        assert os.stat(o / "d3/f3").st_ino == os.stat(outs[0] / "d3/f3").st_ino
    p = run_cli("fsck", "--json", store=Path(store.path))
    assert p.returncode == 0, p.stdout
    assert json.loads(p.stdout)["findings"] == []


def test_corrupt_blob_is_refused(tmp_path: Path, store: Store) -> None:
    src = tmp_path / "src"
    write(src / "f", b"precious")
    d = ingest(store, str(src), progress=False)
    m = store.load_manifest(d)
    (blob,) = manifest_refs(m)
    path = store.blob_path(blob)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(b"X")
    p = run_cli("checkout", d, tmp_path / "out", store=Path(store.path))
    assert p.returncode == 4 and b"corrupt" in p.stderr
    assert not (tmp_path / "out").exists()
    assert [n for n in os.listdir(tmp_path) if ".continuity-" in n] == []


def test_catalog_verbs(tmp_path: Path, cli: Callable[..., object], store_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "f", b"x")
    d = cli("ingest", src, "--name", "first").stdout.decode().strip()  # type: ignore[attr-defined]
    assert d.startswith("sha256:")
    assert cli("tag", d[7:19], "second").returncode == 0  # type: ignore[attr-defined]
    rows = json.loads(cli("list", "--json").stdout)["names"]  # type: ignore[attr-defined]
    assert {r["name"] for r in rows} == {"first", "second"} and all(r["digest"] == d for r in rows)
    assert cli("ls", d[:19]).returncode == 0  # type: ignore[attr-defined]
    assert cli("ls", "second").returncode == 0  # type: ignore[attr-defined]
    assert cli("rm", "second").returncode == 0  # type: ignore[attr-defined]
    assert cli("rm", "second").returncode == 1  # type: ignore[attr-defined]
    assert cli("ls", "second").returncode == 1  # type: ignore[attr-defined]
    assert cli("tag", d, "../bad").returncode == 3  # type: ignore[attr-defined]
    assert cli("tag", d, "sha256:" + "a" * 64).returncode == 3  # type: ignore[attr-defined]
    assert cli("ingest", src, "--name", "").returncode == 3  # type: ignore[attr-defined]
    hist = cli("history", "first", "--json")  # type: ignore[attr-defined]
    assert json.loads(hist.stdout)["versions"][0]["digest"] == d  # type: ignore[attr-defined]


def test_ingest_unchanged_tree_is_identical(tmp_path: Path, store: Store) -> None:
    src = tmp_path / "src"
    basic(src)
    a = ingest(store, str(src), progress=False)
    b = ingest(store, str(src), progress=False)
    assert a == b
    from castore.manifest import dumps

    # without chunk lists, ingest's manifest equals build's
    m = store.load_manifest(a)
    built = build(str(src))
    assert {r.path for r in m.resources} == {r.path for r in built.resources}
    assert dumps(built) != b""


@pytest.mark.parametrize("encoded", [False, True])
@pytest.mark.parametrize("link", ["copy", "hardlink", "auto"])
def test_parallel_checkout(
    tmp_path: Path, store: Store, link: str, encoded: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The forked second writer: same tree, records from both halves kept, errors from the child surface.
    ``encoded``: the store manifest's bytes, each process reading its own run (materialize.tree)."""
    import castore.materialize.tree

    monkeypatch.setattr(castore.materialize.tree, "PARALLEL_MIN", 1)
    src = tmp_path / "src"
    basic(src)
    for i in range(50):
        write(src / f"many/f{i:02}", b"%d" % i)
    d = ingest(store, str(src), progress=False)
    m = store.load_manifest(d)
    given = None if encoded else m
    checkout(store, given, str(tmp_path / "out"), Options(link=link), d)
    assert_trees_equal(src, tmp_path / "out")
    if link == "hardlink":
        checkout(store, given, str(tmp_path / "out2"), Options(link=link), d)
        assert os.stat(tmp_path / "out/many/f49").st_ino == os.stat(tmp_path / "out2/many/f49").st_ino
        assert os.stat(tmp_path / "out/etc/hostname").st_ino == os.stat(tmp_path / "out2/etc/hostname").st_ino
        assert_trees_equal(src, tmp_path / "out2")
    # corrupt a blob that the child's half needs: the whole checkout fails cleanly
    last = m.by_path()["/many/f49"]
    path = store.blob_path(last.digest)  # type: ignore[union-attr]
    os.chmod(path, 0o644)
    with open(path, "wb") as f:
        f.write(b"XX")
    with pytest.raises(Exception, match="corrupt|wrong size"):
        checkout(store, given, str(tmp_path / "out3"), Options(link="copy"), d)
    assert not (tmp_path / "out3").exists()
    assert [n for n in os.listdir(tmp_path) if ".continuity-" in n] == []


def test_paths_longer_than_path_max_round_trip(tmp_path: Path, store: Store) -> None:
    """Deeper than PATH_MAX (4096 bytes): walked, stored and written through directory fds."""
    from castore.fs.tree import remove_tree
    from castore.verify import verify_tree

    src = tmp_path / "src"
    src.mkdir()
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(250):  # 250 * 20 bytes > 4096
            os.mkdir("d" * 19, dir_fd=fd)
            nxt = os.open("d" * 19, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        leaf = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=fd)
        os.write(leaf, b"deep content")
        os.close(leaf)
    finally:
        os.close(fd)
    try:
        d = ingest(store, str(src), progress=False)
        m = store.load_manifest(d)
        assert len(m.resources) == 251
        for link in ("copy", "hardlink"):
            out = tmp_path / f"out-{link}"
            checkout(store, m, str(out), Options(link=link), d)
            assert verify_tree(str(out), m) == []
    finally:
        for p in ("src", "out-copy", "out-hardlink"):
            remove_tree(str(tmp_path / p))
