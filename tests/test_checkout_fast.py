"""The per-file shortcuts of checkout (issue 16): objects written in place in a first hardlink
checkout, files created with their final mode, the hardlink fast path; each keeps what the
slower way guaranteed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from castore.checkout import PARALLEL_MIN, checkout
from castore.ingest import ingest
from castore.materialize import Options
from castore.store import Store
from castore.testing.compare import assert_trees_equal
from castore.testing.trees import write


def _drop_object_records(store: Store) -> int:
    db = store.meta.db("links")
    with store.meta.read() as txn:
        keys = [bytes(k) for k in txn.cursor(db=db).iternext(values=False) if bytes(k)[:1] == b"o"]
    store.meta.write(lambda t: [t.delete(k, db=db) for k in keys])
    return len(keys)


def test_first_checkout_without_records_proves_the_objects_it_finds(tmp_path: Path, store: Store) -> None:
    """With its records lost, a checkout writes each file in place and finds the object's name
    taken: it must prove that object (an altered one, mtime put back, is replaced; a sound one
    is shared), and leave no stray file behind."""
    src = tmp_path / "src"
    write(src / "good", b"good\n")
    write(src / "bad", b"original\n")
    d = ingest(store, str(src), progress=False)
    checkout(store, None, str(tmp_path / "o1"), Options(link="hardlink"), d)
    p = tmp_path / "o1/bad"
    st = os.stat(p)
    with open(p, "r+b") as f:  # root ignores the mode: this edits the object
        f.write(b"EVIL!!!!\n")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _drop_object_records(store) == 2, "no records: the test does not test"
    checkout(store, None, str(tmp_path / "o2"), Options(link="hardlink"), d)
    assert (tmp_path / "o2/bad").read_bytes() == b"original\n"
    assert os.stat(tmp_path / "o2/bad").st_ino != st.st_ino
    assert os.stat(tmp_path / "o2/good").st_ino == os.stat(tmp_path / "o1/good").st_ino
    assert sorted(os.listdir(tmp_path / "o2")) == ["bad", "good"]
    assert not list(Path(store.path).glob("links/*/.tmp-*"))
    shutil.rmtree(tmp_path / "o1")
    checkout(store, None, str(tmp_path / "o3"), Options(link="hardlink"), d)
    assert_trees_equal(src, tmp_path / "o3")


@pytest.mark.parametrize("link", ["copy", "hardlink"])
def test_modes_made_at_creation_are_exact(tmp_path: Path, store: Store, link: str) -> None:
    """Files are created with their mode unless it holds setuid, setgid or sticky bits (a chown
    after would clear those): every mode, owner and content comes out exact, also for mode 0."""
    src = tmp_path / "src"
    modes = [0o4755, 0o2711, 0o1644, 0o6750, 0o000, 0o444, 0o640, 0o755, 0o600]
    for m in modes:
        write(src / f"m{m:04o}", f"mode {m:o}\n".encode(), m)
    if os.geteuid() == 0:
        for m in (0o4755, 0o0640):
            os.chown(src / f"m{m:04o}", 1234, 5678)
            os.chmod(src / f"m{m:04o}", m)  # (the chown cleared setuid)
    d = ingest(store, str(src), progress=False)
    checkout(store, None, str(tmp_path / "o1"), Options(link=link), d)
    assert_trees_equal(src, tmp_path / "o1")
    for m in modes:
        assert os.stat(tmp_path / f"o1/m{m:04o}").st_mode & 0o7777 == m


def test_fast_path_serves_a_big_tree_from_records(tmp_path: Path, store: Store) -> None:
    """Enough files for the forked writer: second checkout links every object (same inodes), a
    checkout after rm proves them, and records follow each link (no re-hash the time after)."""
    src = tmp_path / "src"
    n = PARALLEL_MIN + 500
    for i in range(n):
        write(src / f"d{i % 37}/f{i}", f"file {i}\n".encode(), 0o644 if i % 3 else 0o755)
    os.link(src / "d0/f0", src / "d1/hl")
    d = ingest(store, str(src), progress=False)
    for name in ("o1", "o2"):
        checkout(store, None, str(tmp_path / name), Options(link="hardlink"), d)
        assert_trees_equal(src, tmp_path / name)
    assert os.stat(tmp_path / "o1/d5/f5").st_ino == os.stat(tmp_path / "o2/d5/f5").st_ino
    assert os.stat(tmp_path / "o2/d0/f0").st_ino == os.stat(tmp_path / "o2/d1/hl").st_ino
    p = tmp_path / "o2/d7/f7"
    st = os.stat(p)
    with open(p, "r+b") as f:
        f.write(b"EVIL")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    shutil.rmtree(tmp_path / "o1")
    checkout(store, None, str(tmp_path / "o3"), Options(link="hardlink"), d)
    assert_trees_equal(src, tmp_path / "o3")
    assert os.stat(tmp_path / "o3/d5/f5").st_ino == os.stat(tmp_path / "o2/d5/f5").st_ino


@pytest.mark.root
def test_hardlink_checkout_to_another_filesystem_copies(tmp_path: Path, store: Store) -> None:
    """Target on a tmpfs, store on disk: the link of a new object into its shard fails (EXDEV)
    and the file written in place stays, as the copy."""
    src = tmp_path / "src"
    for i in range(20):
        write(src / f"f{i}", f"file {i}\n".encode(), 0o640)
    d = ingest(store, str(src), progress=False)
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(other)], check=True)
    try:
        notes: list[str] = []
        checkout(store, None, str(other / "co"), Options(link="hardlink", note=notes.append), d)
        assert_trees_equal(src, other / "co")
        assert any("hardlinks impossible" in n for n in notes)
        assert all(os.stat(other / f"co/f{i}").st_nlink == 1 for i in range(20))
    finally:
        subprocess.run(["umount", str(other)], check=True)
