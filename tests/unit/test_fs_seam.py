"""castore.fs: the one copy of each careful OS call (io, publish, attrs), on a real filesystem."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest

from castore import fs
from castore.errors import UnsafeInput
from castore.fs import publish
from castore.fs.attrs import set_fd_attrs, set_name_attrs
from castore.manifest.model import RegularFile
from tests.helpers import ROOT


def test_write_all_finishes_short_writes_on_a_pipe() -> None:
    r, w = os.pipe()
    data = os.urandom(1 << 20)  # far more than a pipe buffer: write(2) returns short
    got = bytearray()

    def drain() -> None:
        while chunk := os.read(r, 1 << 16):
            got.extend(chunk)

    t = threading.Thread(target=drain)
    t.start()
    fs.write_all(w, data)
    os.close(w)
    t.join()
    os.close(r)
    assert bytes(got) == data


def test_pwrite_sparse_keeps_holes_and_hash_fd(tmp_path: Path) -> None:
    size = 3 << 20
    holes = ((0, 1 << 20), (2 << 20, size))
    content = bytes(1 << 20) + os.urandom(1 << 20) + bytes(1 << 20)
    assert fs.data_ranges(size, holes) == [(1 << 20, 2 << 20)]
    assert fs.data_ranges(10, ()) == [(0, 10)] and fs.data_ranges(0, ()) == []
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for pos in range(0, size, 300_000):  # pieces that straddle the range edges
            fs.pwrite_sparse(fd, content[pos : pos + 300_000], pos, fs.data_ranges(size, holes))
        os.ftruncate(fd, size)
        assert fs.data_holes(fd, size) == holes
        want = ("sha256:" + hashlib.sha256(content).hexdigest(), size)
        assert fs.hash_fd(fd) == want == fs.hash_fd(fd, expect=size)
        assert fs.hash_fd(fd, expect=10)[1] == size  # a wrong expectation still reads it all
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # pread only: the offset is untouched
    finally:
        os.close(fd)


def test_write_new_refuses_an_existing_name_and_a_symlink(tmp_path: Path) -> None:
    ino = fs.write_new(str(tmp_path / "a"), b"x" * 100)
    assert os.stat(tmp_path / "a").st_ino == ino and stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o444
    with pytest.raises(FileExistsError):
        fs.write_new(str(tmp_path / "a"), b"y")
    os.symlink(tmp_path / "target", tmp_path / "link")
    with pytest.raises(FileExistsError):
        fs.write_new(str(tmp_path / "link"), b"y")
    assert not (tmp_path / "target").exists()


def test_listdir_and_fsync_dir(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d/x").write_bytes(b"")
    (tmp_path / "file").write_bytes(b"")
    assert fs.listdir(str(tmp_path / "d")) == ["x"]
    assert fs.listdir(str(tmp_path / "missing")) == [] == fs.listdir(str(tmp_path / "file"))
    fs.fsync_dir(str(tmp_path / "d"))
    with pytest.raises(NotADirectoryError):
        fs.fsync_dir(str(tmp_path / "file"))


def _staging_names(parent: Path) -> list[str]:
    return [n for n in os.listdir(parent) if publish.PATTERN.match(n)]


def test_staged_dir_publishes_complete_or_not_at_all(tmp_path: Path) -> None:
    pfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with publish.staged_dir(pfd, str(tmp_path), "out", str(tmp_path / "out")) as st:
            dfd = st.open()
            os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dfd))
            os.close(dfd)
            assert not (tmp_path / "out").exists()  # nothing visible before the rename
            st.rename_into_place("appeared")
        assert (tmp_path / "out/f").exists() and _staging_names(tmp_path) == []
        # Failure: the staging directory is discarded, the target never appears.
        with pytest.raises(RuntimeError), publish.staged_dir(pfd, str(tmp_path), "two", str(tmp_path / "two")) as st:
            dfd = st.open()
            os.mkdir("sub", dir_fd=dfd)
            os.close(dfd)
            raise RuntimeError("writer failed")
        assert not (tmp_path / "two").exists() and _staging_names(tmp_path) == []
        # A target that appeared meanwhile is never replaced (RENAME_NOREPLACE).
        with (
            pytest.raises(UnsafeInput, match="appeared"),
            publish.staged_dir(pfd, str(tmp_path), "out", str(tmp_path / "out")) as st,
        ):
            st.rename_into_place("out: appeared")
        assert (tmp_path / "out/f").exists() and _staging_names(tmp_path) == []
    finally:
        os.close(pfd)


def test_staged_dir_of_a_dead_owner_is_swept(tmp_path: Path) -> None:
    pfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        name, lock_fd = publish.create(pfd, "t")
        assert publish.sweep(pfd, str(tmp_path)) == 0  # alive: its lock is held
        os.close(lock_fd)  # its owner "dies"
        assert publish.sweep(pfd, str(tmp_path)) == 1 and not (tmp_path / name).exists()
    finally:
        os.close(pfd)


def _file(path: str, perm: int, uid: int, gid: int, xattrs: tuple[tuple[str, bytes], ...]) -> RegularFile:
    return RegularFile(
        paths=(path,),
        perm=perm,
        uid=uid,
        gid=gid,
        xattrs=xattrs,
        mtime_ns=1_234_567_890_123_456_789,
        size=0,
        digest="sha256:" + hashlib.sha256(b"").hexdigest(),
    )


@pytest.mark.root
@pytest.mark.skipif(not ROOT, reason="needs root (chown)")
def test_attrs_order_keeps_setuid_and_capability(tmp_path: Path) -> None:
    """chown clears setuid and security.capability: both must survive, so chown comes first."""
    cap = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service, effective
    r = _file("/f", 0o4755, 1000, 1000, (("security.capability", cap), ("user.a", b"1"), ("win.x", b"2")))
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        assert set_fd_attrs(fd, r, (os.geteuid(), os.getegid()), r.xattrs) == ["win.x"]
    finally:
        os.close(fd)
    st = os.lstat(tmp_path / "f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns) == (0o4755, 1000, 1000, r.mtime_ns)
    assert os.getxattr(tmp_path / "f", "security.capability") == cap
    assert os.getxattr(tmp_path / "f", "user.a") == b"1"


def test_name_attrs_never_follow_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "victim").write_bytes(b"")
    os.chmod(tmp_path / "victim", 0o600)
    os.symlink("victim", tmp_path / "name")
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        r = _file("/name", 0o777, os.geteuid(), os.getegid(), ())
        with pytest.raises(UnsafeInput, match="replaced by a symlink"):
            set_name_attrs(dfd, "name", r, (os.geteuid(), os.getegid()))
    finally:
        os.close(dfd)
    assert stat.S_IMODE(os.stat(tmp_path / "victim").st_mode) == 0o600
