"""copy SRC DST: the same tree as `cp -a`, safely (never through a symlink), with every fallback path."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

import castore.copy as copymod
from castore import fs
from castore.copy import copy_tree
from castore.errors import UnsafeInput
from castore.testing.compare import assert_trees_equal
from castore.testing.trees import cp_a_tree

ROOT = os.geteuid() == 0


def _holes(p: Path) -> tuple[tuple[int, int], ...]:
    fd = os.open(p, os.O_RDONLY)
    try:
        return fs.data_holes(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


@pytest.fixture
def rich(tmp_path: Path) -> Path:
    return cp_a_tree(tmp_path / "src")


def _cp_a(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


def test_copy_equals_cp_a(rich: Path, tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    stats = copy_tree(str(rich), str(ours))
    _cp_a(rich, theirs)
    assert_trees_equal(theirs, ours)
    assert_trees_equal(rich, ours)
    for name in ("sparse.img", "allhole"):
        assert _holes(ours / name) == _holes(rich / name) != ()
    assert os.lstat(ours / "big.bin").st_ino == os.lstat(ours / "etc/big.link").st_ino
    assert os.lstat(ours).st_mode & 0o7777 == 0o750
    assert os.lstat(ours).st_mtime_ns == os.lstat(rich).st_mtime_ns
    assert stats.links >= 2 and stats.files > 5


@pytest.mark.parametrize("fault", ["EPERM", "EXDEV", "ENOSYS", "EINVAL", "EOPNOTSUPP"])
def test_copy_file_range_fallback(rich: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    calls = []

    def broken(*a: object, **k: object) -> int:
        calls.append(a)
        raise OSError(getattr(errno, fault), os.strerror(getattr(errno, fault)))

    monkeypatch.setattr(os, "copy_file_range", broken)
    monkeypatch.setattr(copymod.fs, "reflink", lambda s, d: (_ for _ in ()).throw(OSError(errno.EOPNOTSUPP, "no")))
    stats = copy_tree(str(rich), str(tmp_path / "out"), workers=1)
    assert calls and stats.rw > 0 and stats.ranged == 0
    assert_trees_equal(rich, tmp_path / "out")
    assert _holes(tmp_path / "out/sparse.img") == _holes(rich / "sparse.img")


def test_copy_file_range_short_then_fallback(rich: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """copy_file_range that stops early (returns 0) or fails midway: the rest is read/written."""
    real = os.copy_file_range
    n = {"calls": 0}

    def flaky(src: int, dst: int, count: int, offset_src: int, offset_dst: int) -> int:
        n["calls"] += 1
        if n["calls"] % 3 == 0:
            raise OSError(errno.EPERM, "EPERM as on s390x")
        if n["calls"] % 3 == 1:
            return real(src, dst, min(count, 4096), offset_src, offset_dst)
        return 0

    monkeypatch.setattr(os, "copy_file_range", flaky)
    copy_tree(str(rich), str(tmp_path / "out"), workers=1)
    assert_trees_equal(rich, tmp_path / "out")


def test_copy_other_errors_are_not_swallowed(rich: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def eio(*a: object) -> int:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "copy_file_range", eio)
    monkeypatch.setattr(copymod.fs, "reflink", lambda s, d: (_ for _ in ()).throw(OSError(errno.EOPNOTSUPP, "no")))
    with pytest.raises(OSError, match="I/O error"):
        copy_tree(str(rich), str(tmp_path / "out"), workers=1)
    assert not (tmp_path / "out").exists()
    assert not [n for n in os.listdir(tmp_path) if "continuity-copy" in n]  # staging removed


@pytest.mark.parametrize("fault", ["copy-reflink:EOPNOTSUPP", "copy-file-range:EPERM", "copy-file-range:EXDEV"])
def test_cli_fault_hooks(rich: Path, tmp_path: Path, cli, fault: str) -> None:  # noqa: ANN001
    p = cli("copy", rich, tmp_path / "out", env={"CONTINUITY_FAULT": fault})
    assert p.returncode == 0, p.stderr
    assert_trees_equal(rich, tmp_path / "out")


def test_cli_fault_not_a_fallback(rich: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    p = cli("copy", rich, tmp_path / "out", env={"CONTINUITY_FAULT": "copy-file-range:EIO"})
    assert p.returncode == 1 and p.stderr.startswith(b"continuity: error:") and p.stderr.count(b"\n") == 1
    assert not (tmp_path / "out").exists()


def test_copy_parallel_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    for d in range(10):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(60):
            (src / f"d{d}" / f"f{i}").write_bytes(b"%d-%d" % (d, i) * (i + 1))
    os.link(src / "d0/f1", src / "d9/linked")
    monkeypatch.setattr(copymod, "POOL_MIN_FILES", 10)
    stats = copy_tree(str(src), str(tmp_path / "out"), workers=2)
    assert stats.files == 600
    assert_trees_equal(src, tmp_path / "out")


def test_symlinked_subdir_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"do not copy")
    src = tmp_path / "src"
    src.mkdir()
    os.symlink(outside, src / "link")
    os.symlink(outside / "secret", src / "file-link")
    copy_tree(str(src), str(tmp_path / "out"))
    assert os.readlink(tmp_path / "out/link") == str(outside)
    assert stat.S_ISLNK(os.lstat(tmp_path / "out/file-link").st_mode)
    assert sorted(os.listdir(tmp_path / "out")) == ["file-link", "link"]


def test_refusals(tmp_path: Path, cli) -> None:  # noqa: ANN001
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    (tmp_path / "exists").mkdir()
    os.symlink(src, tmp_path / "srclink")
    p = cli("copy", src, tmp_path / "exists")
    assert p.returncode == 3 and b"DST exists" in p.stderr
    p = cli("copy", tmp_path / "srclink", tmp_path / "new")
    assert p.returncode == 3 and b"symlink" in p.stderr
    p = cli("copy", src, src / "inside")
    assert p.returncode == 3
    p = cli("copy", tmp_path / "missing", tmp_path / "new")
    assert p.returncode == 1 and b"no such directory" in p.stderr
    with pytest.raises(UnsafeInput):
        copy_tree(str(src), str(tmp_path / "exists"))


def test_ignore(rich: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    p = cli("copy", rich, tmp_path / "out", "--ignore", "*.img", "--ignore", "/usr/bin")
    assert p.returncode == 0, p.stderr
    assert not (tmp_path / "out/sparse.img").exists()
    assert not (tmp_path / "out/usr/bin").exists() and (tmp_path / "out/usr").is_dir()
    ref = tmp_path / "ref"
    _cp_a(rich, ref)
    os.unlink(ref / "sparse.img")
    shutil.rmtree(ref / "usr/bin")
    os.utime(ref / "usr", ns=(1, os.lstat(rich / "usr").st_mtime_ns))
    assert_trees_equal(ref, tmp_path / "out")


def test_deep_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    fd = os.open(src, os.O_RDONLY)
    for _ in range(1200):
        os.mkdir("d", dir_fd=fd)
        nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(os.open("leaf", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    os.close(fd)
    try:
        stats = copy_tree(str(src), str(tmp_path / "out"))
        assert stats.dirs == 1200 and stats.files == 1
    finally:
        from castore.fs.tree import remove_tree

        for p in ("src", "out"):
            remove_tree(str(tmp_path / p))  # pytest's recursive cleanup fails at this depth
