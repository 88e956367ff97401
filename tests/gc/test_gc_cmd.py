"""gc: roots, grace, history policy, leases, dry runs, locking, hardlink objects."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from castore.errors import UnsafeInput
from castore.gc.collect import GcOptions, _Collector, collect, mark, parse_duration
from castore.gc.spill import Scratch
from castore.store import Store
from castore.testing.trees import make_tree, rand_tree
from tests.gc.gc_util import blob_files, manifest_blobs


def ingest(cli, src: Path, *names: str) -> str:  # type: ignore[no-untyped-def]
    args = ["ingest", str(src)] + (["--name", names[0]] if names else [])
    p = cli(*args, check=True)
    return p.stdout.decode().strip()


def gc_json(cli, *args: str) -> dict:  # type: ignore[no-untyped-def]
    p = cli("gc", "--json", *args, check=True)
    return json.loads(p.stdout)


def test_mark_is_a_pure_reachability_walk() -> None:
    graph = {b"a": [b"b", b"c"], b"b": [b"d"], b"x": [b"y"]}
    assert mark([b"a"], lambda k: graph.get(k, [])) == {b"a", b"b", b"c", b"d"}
    seen = {b"b"}
    assert mark([b"a", b"b"], lambda k: graph.get(k, []), seen) == {b"a", b"b", b"c"}  # b already seen


@pytest.mark.parametrize(
    "text,secs", [("0", 0), ("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 7 * 86400), ("1h30m", 5400), ("45", 45)]
)
def test_durations(text: str, secs: int) -> None:
    assert parse_duration(text) == secs * 10**9


@pytest.mark.parametrize("text", ["", "x", "5x", "-1h", "1.5h", "h", "99999999999d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(UnsafeInput):
        parse_duration(text)


def test_bad_grace_is_usage_error(cli) -> None:  # type: ignore[no-untyped-def]
    cli("init", check=True)
    p = cli("gc", "--grace", "5x")
    assert p.returncode == 2 and b"invalid duration" in p.stderr


def test_frees_unreferenced_and_keeps_named(cli, store_path: Path, tmp_path: Path) -> None:  # type: ignore
    a = make_tree(tmp_path / "a", {"keep.bin": os.urandom(300_000), "small": b"hello\n"})
    b = make_tree(tmp_path / "b", {"drop.bin": os.urandom(300_000), "small": b"hello\n"})
    da, db = ingest(cli, a, "a"), ingest(cli, b, "b")
    need_a, need_b = manifest_blobs(store_path, da), manifest_blobs(store_path, db)
    cli("rm", "b", check=True)
    rep = gc_json(cli, "--grace", "0")
    assert rep["size"] >= 300_000
    left = blob_files(store_path)
    assert need_a <= left
    assert not (need_b - need_a) & left
    assert not [ln for ln in cli("list", check=True).stdout.splitlines() if ln.startswith(b"b\t")]
    assert cli("history", "b").returncode != 0  # a removed name's history goes with it
    cli("checkout", "a", tmp_path / "out", check=True)
    cli("verify", tmp_path / "out", "a", check=True)
    assert cli("fsck").returncode == 0
    again = gc_json(cli, "--grace", "0")
    assert again["objects"] == 0


def test_dry_run_lists_exactly_what_a_real_run_deletes(cli, store_path: Path, tmp_path: Path) -> None:  # type: ignore
    for i in range(4):
        ingest(cli, rand_tree(tmp_path / f"t{i}", i), f"n{i}")
    cli("rm", "n1", "n3", check=True)
    (store_path / "blobs" / "sha256" / "00").mkdir(exist_ok=True)
    (store_path / "blobs" / "sha256" / "00" / ("00" * 32)).write_bytes(b"orphan")
    (store_path / "tmp" / ".put-deadbeef").write_bytes(b"temp")
    before = blob_files(store_path)
    dry = gc_json(cli, "--dry-run", "--grace", "0")
    assert dry["dry_run"] and blob_files(store_path) == before
    real = gc_json(cli, "--grace", "0")
    key = lambda r: sorted((i["kind"], i["name"], i["size"]) for i in r["items"])  # noqa: E731
    assert key(dry) == key(real)
    assert (dry["objects"], dry["size"]) == (real["objects"], real["size"])
    assert {i["kind"] for i in real["items"]} >= {"blob", "manifest", "orphan", "tmp", "history"}
    assert before - blob_files(store_path) == {
        i["name"] for i in real["items"] if i["kind"] in ("blob", "manifest", "orphan")
    }


def test_dry_run_lists_the_cache_rows_a_real_run_deletes(store: Store, tmp_path: Path) -> None:
    """Files old enough for the stat cache (as under load in the test above): a real run's commit
    leaves their rows naming deleted blobs, which its cache sweep deletes; the dry run lists them too."""
    from castore.ingest import ingest as do_ingest
    from castore.store import statcache

    srcs = [rand_tree(tmp_path / f"t{i}", 70 + i, n=10) for i in range(2)]
    time.sleep(statcache.RACY_NS / 1e9 + 0.5)  # out of the racy window: ingest records the files
    for i, src in enumerate(srcs):
        do_ingest(store, str(src), name=f"n{i}", progress=False)
    with store.meta.read() as txn:
        assert txn.stat(store.meta.db("statcache"))["entries"] >= 10  # the files were cached
    store.untag("n1")
    key = lambda r: sorted((i.kind, i.name, i.size) for i in r.items)  # noqa: E731
    dry = collect(store, GcOptions(grace_ns=0, dry_run=True))
    real = collect(store, GcOptions(grace_ns=0, list_items=True))
    assert real.counts.get("cache-row", 0) >= 1
    assert key(dry) == key(real)


def test_grace_keeps_young_orphans_and_unnamed_manifests(cli, store_path: Path, tmp_path: Path) -> None:  # type: ignore
    d = ingest(cli, rand_tree(tmp_path / "u", 7))  # unnamed
    orphan = store_path / "blobs" / "sha256" / "ab" / ("ab" * 32)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"x")
    rep = gc_json(cli)  # default grace: 1 hour
    assert rep["objects"] == 0 and orphan.exists()
    assert manifest_blobs(store_path, d) <= blob_files(store_path)
    old = time.time() - 7200
    os.utime(orphan, (old, old))
    rep = gc_json(cli, "--grace", "1h")
    assert not orphan.exists() and rep["counts"] == {"orphan": 1}
    rep = gc_json(cli, "--grace", "0")
    assert d not in blob_files(store_path) and rep["counts"].get("manifest") == 1


def test_reingest_freshens_an_old_unnamed_manifest(cli, store_path: Path, tmp_path: Path) -> None:  # type: ignore
    src = rand_tree(tmp_path / "u", 8)
    d = ingest(cli, src)
    old = time.time() - 7200
    os.utime(Store.open(str(store_path)).blob_path(d), (old, old))
    assert ingest(cli, src) == d
    gc_json(cli, "--grace", "1h")
    assert d in blob_files(store_path)


def test_history_is_kept_until_keep_history_prunes_it(cli, store_path: Path, tmp_path: Path) -> None:  # type: ignore
    vs = [ingest(cli, rand_tree(tmp_path / f"v{i}", 100 + i), "app") for i in range(3)]
    gc_json(cli, "--grace", "0")
    for v in vs:
        assert manifest_blobs(store_path, v) <= blob_files(store_path)
    rep = gc_json(cli, "--grace", "0", "--keep-history", "1")
    assert rep["counts"]["history"] == 2
    left = blob_files(store_path)
    assert manifest_blobs(store_path, vs[2]) <= left
    assert vs[0] not in left and vs[1] not in left
    hist = json.loads(cli("history", "app", "--json", check=True).stdout)["versions"]
    assert [h["digest"] for h in hist] == [vs[2]]
    assert cli("fsck").returncode == 0


def test_live_lease_protects_its_manifest_and_dead_lease_is_cleaned(cli, store_path: Path, tmp_path: Path) -> None:  # type: ignore
    d = ingest(cli, rand_tree(tmp_path / "l", 9))
    store = Store.open(str(store_path))
    with store.lease([d]) as lease:
        gc_json(cli, "--grace", "0")
        assert manifest_blobs(store_path, d) <= blob_files(store_path)
        assert (store_path / "leases" / f"{lease.id}.lock").exists()
    # A lease whose owner died: row, lock file and tmp dir go; its manifest is no longer protected.
    code = (
        "import os,signal,sys; from castore.store import Store; s=Store.open(sys.argv[1]);"
        "cm=s.lease([sys.argv[2]]); l=cm.__enter__(); os.makedirs(l.tmp_dir); "
        "open(os.path.join(l.tmp_dir,'x'),'w').write('y'); print(l.id, flush=True); "
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    p = subprocess.run([sys.executable, "-c", code, str(store_path), d], capture_output=True)
    lid = p.stdout.decode().strip()
    assert p.returncode == -9 and lid
    assert (store_path / "tmp" / lid).exists()
    rep = gc_json(cli, "--grace", "0")
    assert not (store_path / "tmp" / lid).exists()
    assert not (store_path / "leases" / f"{lid}.lock").exists()
    assert rep["counts"]["lease"] >= 1 and rep["counts"]["manifest"] == 1
    assert d not in blob_files(store_path)


def test_second_gc_is_busy_unless_wait(cli, store_path: Path) -> None:  # type: ignore
    cli("init", check=True)
    fd = os.open(store_path / "gc.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        p = cli("gc")
        assert p.returncode == 5
        assert b"another gc is running" in p.stderr and b"--wait" in p.stderr
        threading.Timer(1.0, lambda: os.close(fd)).start()
        t0 = time.monotonic()
        p = cli("gc", "--wait")
        assert p.returncode == 0 and time.monotonic() - t0 >= 0.9
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def test_hardlink_objects_go_when_no_checkout_uses_them(cli, store_path: Path, tmp_path: Path) -> None:  # type: ignore
    ingest(cli, rand_tree(tmp_path / "h", 11), "h")
    out = tmp_path / "out"
    cli("checkout", "--link", "hardlink", "h", out, check=True)
    objs = [p for p in (store_path / "links").rglob("*") if p.is_file()]
    assert objs
    rep = gc_json(cli, "--grace", "0")
    assert rep["counts"].get("link", 0) == 0 and all(p.exists() for p in objs)
    subprocess.run(["rm", "-rf", str(out)], check=True)
    rep = gc_json(cli, "--grace", "0")
    assert rep["counts"]["link"] == len(objs) and not any(p.exists() for p in objs)
    with Store.open(str(store_path)).meta.read() as txn:
        s = Store.open(str(store_path))
        assert not [k for k in txn.cursor(db=s.meta.db("links")).iternext(values=False) if k[:1] == b"o"]
    cli("checkout", "--link", "hardlink", "h", tmp_path / "out2", check=True)
    cli("verify", tmp_path / "out2", "h", check=True)


def test_digest_revived_between_index_commit_and_unlink_keeps_its_file(store: Store, tmp_path: Path) -> None:
    from castore.ingest import ingest as do_ingest

    d = do_ingest(store, str(rand_tree(tmp_path / "r", 12)), progress=False)
    c = _Collector(store, GcOptions(grace_ns=0))
    sc = Scratch(os.path.join(store.path, "tmp"))
    roots = c.snapshot(sc)
    c.scan(sc)
    with store.exclusive_lock():
        c.commit(sc, roots, set(), sc.garbage.read(0, len(sc.garbage)))
    assert store.missing_blobs([d]) == {d} and len(sc.unlink) > 1
    # An ingest commits the same tree again before the unlink batch (its files are still there).
    assert do_ingest(store, str(tmp_path / "r"), progress=False, name="r") == d
    with store.exclusive_lock():
        c.sweep(sc.unlink, 0, time.monotonic() + 10)
    sc.close()
    assert not os.path.exists(sc.dir)
    assert os.path.exists(store.blob_path(d))
    assert collect(store, GcOptions(grace_ns=0)).objects == 0
    from castore.fsck.check import fsck

    assert fsck(store).sound


def test_index_deletes_in_small_chunks(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import castore.gc.collect as gcmod
    from castore.fsck.check import fsck
    from castore.ingest import ingest as do_ingest

    monkeypatch.setattr(gcmod, "COMMIT_CHUNK", 3)
    keep = do_ingest(store, str(rand_tree(tmp_path / "k", 20, n=12)), name="keep", progress=False)
    gone = do_ingest(store, str(rand_tree(tmp_path / "g", 21, n=12)), name="gone", progress=False)
    store.untag("gone")
    dry = collect(store, GcOptions(grace_ns=0, dry_run=True))
    real = collect(store, GcOptions(grace_ns=0, list_items=True, nice=5))
    assert sorted((i.kind, i.name) for i in dry.items) == sorted((i.kind, i.name) for i in real.items)
    assert real.counts["blob"] >= 10 and real.counts["manifest"] == 1
    assert store.missing_blobs([gone]) == {gone} and not store.missing_blobs([keep])
    assert fsck(store).sound and not fsck(store).findings
    assert os.getpriority(os.PRIO_PROCESS, 0) == 0 or os.geteuid() != 0  # priority restored


def test_a_manifest_committed_between_two_index_chunks_keeps_its_blobs(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each chunk's hold finds the manifests added since the previous one (the count of refs rows
    moved): an unnamed one committed between two chunks is a root, its blobs stay."""
    import shutil

    import castore.gc.collect as gcmod
    from castore.fsck.check import fsck
    from castore.ingest import ingest as do_ingest

    monkeypatch.setattr(gcmod, "COMMIT_CHUNK", 2)
    gone_src = rand_tree(tmp_path / "g", 31, n=12)
    gone = do_ingest(store, str(gone_src), name="gone", progress=False)
    store.untag("gone")
    again_src = tmp_path / "again"
    shutil.copytree(gone_src, again_src)
    (again_src / "extra").write_bytes(b"a new file: a new manifest over the garbage blobs\n")
    import castore.gc.spill as spill

    real_read = spill.Records.read_ino
    added: list[str] = []

    def read(self, pos, count):  # type: ignore[no-untyped-def]
        if pos and not added and self.f.name.endswith("garbage"):  # the 2nd chunk, before its hold
            added.append(do_ingest(store, str(again_src), progress=False))
        return real_read(self, pos, count)

    monkeypatch.setattr(spill.Records, "read_ino", read)
    collect(store, GcOptions(grace_ns=0))
    assert added and not store.missing_blobs([added[0]])
    assert manifest_blobs(Path(store.path), added[0]) <= blob_files(Path(store.path))
    assert store.missing_blobs([gone]) == {gone}
    assert fsck(store).sound


def test_a_freed_manifest_takes_its_summary_row(cli, store_path: Path, tmp_path: Path) -> None:  # type: ignore
    from castore.store.meta import dkey
    from castore.store.summary import summaries

    a = make_tree(tmp_path / "a", {"keep": b"a\n"})
    b = make_tree(tmp_path / "b", {"drop": b"b\n"})
    da, db = ingest(cli, a, "a"), ingest(cli, b, "b")
    s = Store.open(str(store_path))
    assert set(summaries(s.meta, [da, db])) == {da, db}
    s.meta.close()
    cli("rm", "b", check=True)
    gc_json(cli, "--grace", "0")
    s = Store.open(str(store_path))
    assert set(summaries(s.meta, [da, db])) == {da}
    with s.meta.read() as txn:
        assert txn.get(dkey(db), db=s.meta.db("summary")) is None
    s.meta.close()
