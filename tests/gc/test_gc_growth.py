"""What keeps gc's time linear in the store (issue 16 item 5): the roots are re-read at a hold of the
store lock only when the catalog changed since the previous one (castore/gc/rootpin.py), and files
are unlinked in inode order (castore/gc/collect.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import castore.gc.collect as gcmod
import castore.gc.spill as spill
from castore.fsck.check import fsck
from castore.gc.collect import GcOptions, collect
from castore.gc.files import shard_inodes
from castore.gc.rootpin import RootPin
from castore.ingest import ingest
from castore.store import Store
from castore.store.meta import BLOB_ROW, KIND_RAW
from castore.testing.trees import rand_tree
from tests.gc.gc_util import blob_files, manifest_blobs


def _commit(store: Store, fn=None) -> int:  # type: ignore[no-untyped-def]
    """Run ``fn`` in a write transaction that writes a row of ``blobs`` (an empty one commits nothing); its id."""
    out: list[int] = []

    def write(t) -> None:  # type: ignore[no-untyped-def]
        t.put(os.urandom(32), BLOB_ROW.pack(1, KIND_RAW), db=store.meta.db("blobs"))
        if fn is not None:
            fn(t)
        out.append(t.id())

    store.meta.write(write)
    return out[-1]


def test_the_pin_keeps_the_roots_until_a_root_table_changes(store: Store, tmp_path: Path) -> None:
    d = ingest(store, str(rand_tree(tmp_path / "a", 1, n=3)), name="a", progress=False)
    e = ingest(store, str(rand_tree(tmp_path / "e", 2, n=3)), progress=False)
    pin = RootPin(store.meta)
    roots = {b"x" * 32}
    wid = _commit(store)
    pin.pin(roots, wid)
    # a write to another table (an ingest's blob rows) leaves the roots as they were
    _commit(store)
    assert _take(store, pin) is roots and pin.reused == 1
    assert _take(store, pin) is None  # taken once: the next hold pins again
    pin.pin(roots, store.meta.write(lambda t: t.id()))  # a transaction that wrote nothing committed nothing
    assert pin.txn is None
    for change in (
        lambda: store.tag("b", d),  # a new name
        lambda: store.tag("a", e),  # a name moved (and a history row)
        lambda: store.untag("b"),
    ):
        pin.pin(roots, _commit(store))
        change()
        assert _take(store, pin) is None
    wid = _commit(store)
    _commit(store)
    pin.pin(roots, wid)  # not the last commit: something came after it
    assert pin.txn is None and _take(store, pin) is None
    with store.lease([d]):  # a lease row
        pin.pin(roots, _commit(store))
    assert _take(store, pin) is None


def _take(store: Store, pin: RootPin):  # type: ignore[no-untyped-def]
    out: list[object] = []
    store.meta.write(lambda t: out.append(pin.take(t)))
    return out[0]


def test_a_name_given_between_two_index_chunks_keeps_its_manifest(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The roots of a hold are re-used only while the catalog is unchanged: a garbage manifest
    named again between two holds (no new refs row: only the tag moved) keeps all its blobs."""
    monkeypatch.setattr(gcmod, "COMMIT_CHUNK", 1)
    keep = ingest(store, str(rand_tree(tmp_path / "k", 50, n=5)), name="keep", progress=False)
    ingest(store, str(rand_tree(tmp_path / "j", 52, n=60)), progress=False)  # unnamed: garbage
    gone = ingest(store, str(rand_tree(tmp_path / "g", 55, n=8)), name="gone", progress=False)
    store.untag("gone")
    sp = Path(store.path)
    theirs = {bytes.fromhex(d[7:]) for d in manifest_blobs(sp, gone)}
    real = spill.Records.read_ino
    named: list[int] = []

    def read_ino(self, pos, count):  # type: ignore[no-untyped-def]
        recs = real(self, pos, count)
        if self.f.name.endswith("garbage") and not named and any(r[0] in theirs for r in recs):
            store.tag("gone", gone)  # just before the hold that would delete its first row
            named.append(pos)
        return recs

    monkeypatch.setattr(spill.Records, "read_ino", read_ino)
    rep = collect(store, GcOptions(grace_ns=0))
    assert named and named[0] > 0, "the manifest's blobs came first: pick another seed"
    assert manifest_blobs(sp, gone) <= blob_files(sp) and manifest_blobs(sp, keep) <= blob_files(sp)
    assert rep.objects >= 60 and fsck(store).sound


def test_unlinks_go_in_inode_order_and_free_exactly_the_garbage(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gcmod, "COMMIT_CHUNK", 7)
    keep = ingest(store, str(rand_tree(tmp_path / "k", 60, n=40)), name="keep", progress=False)
    gone = ingest(store, str(rand_tree(tmp_path / "g", 61, n=40)), name="gone", progress=False)
    store.untag("gone")
    sp = Path(store.path)
    inode = {
        k: ino
        for shard in os.listdir(store.blob_root)
        for k, ino in shard_inodes(os.path.join(store.blob_root, shard)).items()
    }
    order: list[bytes] = []
    real = gcmod._Collector._unlink_blob

    def unlink(self, key, size, kind):  # type: ignore[no-untyped-def]
        order.append(key)
        return real(self, key, size, kind)

    monkeypatch.setattr(gcmod._Collector, "_unlink_blob", unlink)
    live = manifest_blobs(sp, keep)
    before = blob_files(sp)
    collect(store, GcOptions(grace_ns=0))
    assert blob_files(sp) == live and {f"sha256:{k.hex()}" for k in order} == before - live
    for i in range(0, len(order), 7):  # each chunk of the index deletes is unlinked in inode order
        part = [inode[k] for k in order[i : i + 7]]
        assert part == sorted(part)
    assert not store.missing_blobs([keep]) and store.missing_blobs([gone]) == {gone}


def test_debug_and_json_report_the_phases(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    cli("init", check=True)
    src = rand_tree(tmp_path / "s", 70, n=6)
    cli("ingest", src, check=True)  # unnamed: garbage once the grace period is 0
    p = cli("--debug", "gc", "--grace", "0", check=True)
    line = [x for x in p.stderr.decode().splitlines() if "gc phases" in x]
    assert len(line) == 1, p.stderr
    names = [part.rsplit(" ", 1)[0] for part in line[0].split("): ", 1)[1].split(", ")]
    assert names == ["mark", "scan", "commit-roots", "commit", "unlink", "caches"], line
    assert "gc phases" not in cli("gc", check=True).stderr.decode()  # only with --debug
    doc = json.loads(cli("gc", "--json", check=True).stdout)
    assert {"mark", "scan", "commit", "caches"} <= set(doc["phases"])
    assert all(set(v) == {"wall", "cpu"} and v["wall"] >= 0 for v in doc["phases"].values())
