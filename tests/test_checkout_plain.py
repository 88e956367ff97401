"""The inlined small-file path of checkout (castore/materialize/plainfiles.py): a store manifest's
plain files written from their encoded entries, as copies or as new hardlink objects. It must
make what the general path makes (bytes, metadata, object records) and refuse what it refuses."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from castore.checkout import checkout
from castore.ingest import ingest
from castore.manifest import codec
from castore.manifest.model import RegularFile
from castore.materialize import Options
from castore.store import Store, links
from castore.testing.compare import assert_trees_equal
from castore.testing.trees import write
from tests.helpers import ROOT, run_cli


def _tree(src: Path, n: int = 60) -> Path:
    for i in range(n):
        data = b"" if i % 13 == 0 else f"file {i}\n".encode() * (i % 7 + 1)
        write(src / f"d{i % 4}/f{i}", data, (0o644, 0o755, 0o600, 0o4755, 0o2750, 0o1644)[i % 6])
        os.utime(src / f"d{i % 4}/f{i}", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789 + i))
        if ROOT and i % 5 == 0:
            mode = os.stat(src / f"d{i % 4}/f{i}").st_mode & 0o7777
            os.chown(src / f"d{i % 4}/f{i}", 1000 + i, 2000 + i)
            os.chmod(src / f"d{i % 4}/f{i}", mode)  # (the chown cleared setuid)
    return src


def _object_records(store: Store) -> dict[bytes, bytes]:
    db = store.meta.db("links")
    with store.meta.read() as txn:
        return {bytes(k): bytes(v) for k, v in txn.cursor(db=db).iternext() if bytes(k)[:1] == b"o"}


@pytest.mark.parametrize("link", ["copy", "hardlink"])
def test_encoded_files_come_out_exact(tmp_path: Path, store: Store, link: str) -> None:
    """Contents, modes (setuid, setgid, sticky included), owners, mtimes and empty files, from
    the store manifest's encoded entries as from the decoded manifest."""
    src = _tree(tmp_path / "src")
    d = ingest(store, str(src), progress=False)
    checkout(store, None, str(tmp_path / "enc"), Options(link=link), d)
    assert_trees_equal(src, tmp_path / "enc")
    other = tmp_path / "store2"
    s2 = Store.open(str(other))
    d2 = ingest(s2, str(src), progress=False)
    checkout(s2, s2.load_manifest(d2), str(tmp_path / "dec"), Options(link=link), None)
    assert_trees_equal(tmp_path / "enc", tmp_path / "dec")


def test_first_objects_get_the_records_the_general_path_writes(tmp_path: Path, store: Store) -> None:
    """Each record the inlined path packs equals links.pack_object_record of the object's stat
    and its decoded entry (what link_object writes), and proves the object to the next checkout."""
    src = _tree(tmp_path / "src")
    d = ingest(store, str(src), progress=False)
    checkout(store, None, str(tmp_path / "o1"), Options(link="hardlink"), d)
    recs = _object_records(store)
    files = [r for r in store.load_manifest(d).resources if isinstance(r, RegularFile)]
    assert len(recs) == len(files) == 60
    by_path = {r.path: r for r in files}
    for key, raw in recs.items():
        k = key[1:].hex()
        st = os.stat(os.path.join(store.path, "links", k[:2], k))
        (path,) = [p for p, r in by_path.items() if os.stat(tmp_path / ("o1" + p)).st_ino == st.st_ino]
        assert raw == links.pack_object_record(st, by_path[path]), path
    before = {p: os.stat(tmp_path / ("o1" + p)).st_ino for p in by_path}
    checkout(store, None, str(tmp_path / "o2"), Options(link="hardlink"), d)
    assert {p: os.stat(tmp_path / ("o2" + p)).st_ino for p in by_path} == before


@pytest.mark.parametrize("link", ["copy", "hardlink"])
@pytest.mark.parametrize("damage", ["corrupt", "shorter", "missing", "fifo"])
def test_a_damaged_blob_among_many_is_refused(tmp_path: Path, store: Store, link: str, damage: str) -> None:
    """One blob in the middle of the tree damaged: one error line, exit 4, no target, no staging
    directory, and (hardlink) no object left under that file's key."""
    src = _tree(tmp_path / "src")
    d = ingest(store, str(src), progress=False)
    victim = next(r for r in store.load_manifest(d).resources if r.path == "/d2/f30")
    assert isinstance(victim, RegularFile) and victim.size > 0
    path = store.blob_path(victim.digest)
    os.chmod(path, 0o644)
    if damage == "corrupt":
        data = bytearray(Path(path).read_bytes())
        data[0] ^= 1
        Path(path).write_bytes(bytes(data))
    elif damage == "shorter":
        Path(path).write_bytes(Path(path).read_bytes()[:-1])
    else:
        os.unlink(path)
        if damage == "fifo":
            os.mkfifo(path)
    p = run_cli("checkout", "--link", link, d, tmp_path / "out", store=Path(store.path))
    assert p.returncode == 4, p.stderr
    assert p.stderr.startswith(b"continuity: error:") and p.stderr.count(b"\n") == 1, p.stderr
    assert not (tmp_path / "out").exists()
    assert [n for n in os.listdir(tmp_path) if ".continuity-" in n] == []
    k = hashlib.sha256(codec.to_proto(victim).SerializeToString(deterministic=True)).hexdigest()
    assert not os.path.lexists(os.path.join(store.path, "links", k[:2], k))
    if link == "hardlink":
        assert os.listdir(os.path.join(store.path, "links"))  # the others' objects were made


def test_a_corrupt_trusted_blob_is_not_hashed(tmp_path: Path, store: Store) -> None:
    """Options.trusted (blobs pull --checkout just verified) skips the hash on this path as on the
    general one: a blob damaged after that goes through unnoticed, which is what trusted means."""
    src = _tree(tmp_path / "src", 20)
    d = ingest(store, str(src), progress=False)
    victim = next(r for r in store.load_manifest(d).resources if r.path == "/d1/f9")
    assert isinstance(victim, RegularFile)
    path = store.blob_path(victim.digest)
    os.chmod(path, 0o644)
    Path(path).write_bytes(b"X" * victim.size)
    checkout(store, None, str(tmp_path / "o"), Options(link="copy", trusted=frozenset({victim.digest})), d)
    assert (tmp_path / "o/d1/f9").read_bytes() == b"X" * victim.size
    with pytest.raises(Exception, match="corrupt"):
        checkout(store, None, str(tmp_path / "o2"), Options(link="copy"), d)
