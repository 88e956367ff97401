"""Store permissions (issue 11, item 7): the store root is private (0700, ours), a store owned by
another user or writable by others is refused, and no store directory is reached through a symlink."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from castore.errors import UnsafeInput
from castore.store import Store
from castore.testing.trees import write
from tests.helpers import have, needs_root, run_cli

SECRET = b"top secret\n"
NOBODY = 65534


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp dirs are 0700: nobody could reach anything)."""
    base = Path(tempfile.mkdtemp(prefix="castore-perm-"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _as_nobody(*argv: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["runuser", "-u", "nobody", "--", *map(str, argv)], capture_output=True, timeout=60)


@needs_root
@pytest.mark.root
@pytest.mark.skipif(not have("runuser"), reason="needs runuser")
def test_blobs_and_link_objects_unreachable_by_others(open_dir: Path) -> None:
    store = open_dir / "store"
    store.mkdir(mode=0o755)  # an existing directory: the store made in it must not keep its mode
    os.chmod(store, 0o755)
    src = open_dir / "src"
    write(src / "secret", SECRET)
    os.chmod(src / "secret", 0o600)
    shutil.copy("/bin/true", src / "suid")
    os.chmod(src / "suid", 0o4755)
    control = open_dir / "control"
    control.write_bytes(SECRET)
    os.chmod(control, 0o444)
    assert _as_nobody("cat", control).returncode == 0  # the test can tell: nobody reaches open_dir
    assert run_cli("ingest", src, "--name", "t", store=store).returncode == 0
    co = open_dir / "co"
    assert run_cli("checkout", "t", co, "--link", "hardlink", store=store).returncode == 0
    shutil.rmtree(co)  # the checkout is gone; its objects stay in STORE/links
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o700
    blob = store / "blobs/sha256" / hashlib.sha256(SECRET).hexdigest()[:2] / hashlib.sha256(SECRET).hexdigest()
    assert blob.read_bytes() == SECRET
    p = _as_nobody("cat", blob)
    assert p.returncode != 0 and SECRET not in p.stdout
    objects = [Path(d, n) for d, _, ns in os.walk(store / "links") for n in ns]
    suid = [o for o in objects if os.stat(o).st_mode & stat.S_ISUID]
    assert suid, objects
    for o in suid:
        assert _as_nobody(o).returncode != 0
        assert _as_nobody("cat", o).returncode != 0


@needs_root
@pytest.mark.root
def test_store_owned_by_another_user_refused(open_dir: Path) -> None:
    src = open_dir / "src"
    write(src / "f", SECRET)
    theirs = open_dir / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    for args in (("ingest", src), ("init",)):
        p = run_cli(*args, store=theirs)
        assert p.returncode == 3, p.stderr
        assert p.stderr.startswith(b"continuity: error:") and p.stderr.count(b"\n") == 1
        assert b"owned by uid 65534" in p.stderr, p.stderr
    p = run_cli("list", store=theirs)  # no store there (issue 15): said, and none is made
    assert p.returncode == 1 and b"no store" in p.stderr and p.stderr.count(b"\n") == 1
    assert os.listdir(theirs) == []
    # An existing store handed to another user afterwards: refused too, nothing written.
    ours = open_dir / "ours"
    assert run_cli("ingest", src, store=ours).returncode == 0
    os.chown(ours, NOBODY, NOBODY)
    before = sorted(os.listdir(ours))
    for args in (("ingest", src), ("fsck", "--rebuild-index"), ("gc",)):
        p = run_cli(*args, store=ours)
        assert p.returncode == 3 and b"owned by uid" in p.stderr, (args, p.stderr)
    assert sorted(os.listdir(ours)) == before


def test_writable_store_refused_and_new_store_private(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "f", SECRET)
    empty = tmp_path / "empty"
    empty.mkdir()
    os.chmod(empty, 0o777)  # an existing empty directory: the new store in it becomes private
    assert run_cli("ingest", src, store=empty).returncode == 0
    assert stat.S_IMODE(os.stat(empty).st_mode) == 0o700
    os.chmod(empty, 0o777)  # an existing store others may write in: someone may have planted links
    p = run_cli("list", store=empty)
    assert p.returncode == 3 and b"writable by group or others" in p.stderr, p.stderr
    os.chmod(empty, 0o755)  # ours, only readable by others: tightened
    assert run_cli("list", store=empty).returncode == 0
    assert stat.S_IMODE(os.stat(empty).st_mode) == 0o700
    crowded = tmp_path / "crowded"
    write(crowded / "planted", b"x")
    os.chmod(crowded, 0o777)
    p = run_cli("ingest", src, store=crowded)
    assert p.returncode == 3 and b"not empty" in p.stderr, p.stderr


def _shard(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:2]


def test_symlinked_shard_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    src = tmp_path / "src"
    write(src / "f", SECRET)
    assert run_cli("init", store=store).returncode == 0  # made
    shard = store / "blobs/sha256" / _shard(SECRET)
    shard.rmdir()
    shard.symlink_to(elsewhere)
    p = run_cli("ingest", src, store=store)
    assert p.returncode == 3, p.stderr
    assert p.stderr.startswith(b"continuity: error:") and b"symlink" in p.stderr, p.stderr
    assert os.listdir(elsewhere) == []
    # The links/ area too (hardlink objects): a symlinked shard there is refused as well.
    shard.unlink()
    shard.mkdir()
    assert run_cli("ingest", src, "--name", "t", store=store).returncode == 0
    for i in range(256):
        d = store / "links" / f"{i:02x}"
        if d.exists():
            d.rmdir()
        d.symlink_to(elsewhere)
    p = run_cli("checkout", "t", tmp_path / "co", "--link", "hardlink", store=store)
    assert p.returncode == 3 and b"symlink" in p.stderr, p.stderr
    assert os.listdir(elsewhere) == [] and not (tmp_path / "co").exists()


def test_shard_swapped_after_open_never_followed(tmp_path: Path) -> None:
    """Writes go through fds from the store root: a shard replaced while the store is open is refused."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    s = Store.open(str(tmp_path / "store"))
    shard = Path(s.blob_root) / _shard(SECRET)
    shard.rmdir()
    shard.symlink_to(elsewhere)
    with pytest.raises(UnsafeInput):
        s.write_blob_file(SECRET)
    from castore import fs

    with pytest.raises(UnsafeInput):
        fs.shard_dir_fd(str(shard))
    (Path(s.path) / "links/ab").symlink_to(elsewhere)
    with pytest.raises(UnsafeInput):
        s.open_shard("links", "ab")
    assert os.listdir(elsewhere) == []
