"""gc's on-disk working sets (castore/gc/spill.py) and a gc run that exercises their bounds."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

import castore.gc.spill as spill
from castore.fsck.check import fsck
from castore.gc.collect import GcOptions, collect
from castore.gc.spill import MarkSet, Records, SortedKeys
from castore.ingest import ingest
from castore.store import Store
from castore.testing.trees import rand_tree
from tests.gc.gc_util import blob_files, manifest_blobs


def _keys(n: int, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    return [hashlib.sha256(rnd.randbytes(8)).digest() for _ in range(n)]


def test_markset_is_exact_through_repeats_and_compactions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spill, "BUCKET_FLOOR", 64 * 32)  # compact after 64 keys a bucket
    monkeypatch.setattr(spill, "RECENT_MAX", 16)
    monkeypatch.setattr(spill, "BUFFER", 5 * 32)
    keys = _keys(20_000, 1)
    ms = MarkSet(str(tmp_path))
    rnd = random.Random(2)
    for k in keys + rnd.choices(keys, k=60_000):  # every key, then many repeats
        ms.add(k)
    assert max(ms.written) <= 2 * 32 * (20_000 // 64) + 64 * 32  # compacted: within ~2x the distinct keys
    seen: set[bytes] = set()
    for b in range(256):
        part = {k for k in ms.shard(b) if k[0] == b}
        assert part == {k for k in keys if k[0] == b}
        seen |= part
    assert seen == set(keys)
    ms.close()


def test_records_and_sorted_keys(tmp_path: Path) -> None:
    r = Records(str(tmp_path / "r"))
    recs = [(k, i, i % 4 - 1) for i, k in enumerate(_keys(1000, 3))]
    for rec in recs:
        r.add(*rec)
    assert len(r) == 1000 and r.read(990, 50) == recs[990:] and r.read(0, 3) == recs[:3]
    assert [x for c in r.chunks(7) for x in c] == recs
    s = SortedKeys(str(tmp_path / "s"))
    have = sorted(_keys(5000, 4))
    for k in have[::2]:
        s.add(k)
    assert list(s.missing(iter(have))) == have[1::2]
    r.close()
    s.close()


def test_gc_with_tiny_spill_bounds_frees_exactly_the_garbage(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import castore.gc.collect as gcmod

    monkeypatch.setattr(spill, "BUCKET_FLOOR", 4 * 32)
    monkeypatch.setattr(spill, "RECENT_MAX", 2)
    monkeypatch.setattr(spill, "BUFFER", 32)
    monkeypatch.setattr(gcmod, "COMMIT_CHUNK", 5)
    keep = [
        ingest(store, str(rand_tree(tmp_path / f"k{i}", 30 + i, n=40)), name=f"k{i}", progress=False) for i in range(3)
    ]
    gone = [
        ingest(store, str(rand_tree(tmp_path / f"g{i}", 40 + i, n=40)), name=f"g{i}", progress=False) for i in range(2)
    ]
    for i in range(2):
        store.untag(f"g{i}")
    sp = Path(store.path)
    live = set().union(*(manifest_blobs(sp, d) for d in keep))
    before = blob_files(sp)
    rep = collect(store, GcOptions(grace_ns=0, list_items=True))
    after = blob_files(sp)
    assert live <= after and after == live and not set(gone) & after
    assert {i.name for i in rep.items if i.kind in ("blob", "manifest")} == before - live
    assert not [n for n in os.listdir(sp / "tmp") if n.startswith(".gc-scratch")]  # scratch removed
    assert fsck(store).sound


def test_gc_refuses_a_tmp_dir_swapped_for_a_symlink_after_open(store: Store, tmp_path: Path) -> None:
    """Store.open refuses a symlinked tmp/; one swapped in later must not receive gc's scratch files."""
    import shutil

    from castore.errors import UnsafeInput

    outside = tmp_path / "outside"
    outside.mkdir()
    tmp = Path(store.path) / "tmp"
    shutil.rmtree(tmp)
    tmp.symlink_to(outside)
    with pytest.raises(UnsafeInput, match="not a directory"):
        collect(store, GcOptions(grace_ns=0))
    assert os.listdir(outside) == []
