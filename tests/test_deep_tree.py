"""Trees deeper than Python's recursion limit, paths longer than PATH_MAX (issue 11, item 8)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DEPTH = 3000  # "d/" x 3000: 6000 bytes of path, past PATH_MAX and ~3x the recursion limit


def make_deep(root: Path, depth: int = DEPTH) -> None:
    """d/d/.../d with a file and a hardlink pair at a few levels; built through dir fds."""
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(depth):
            if level % 1000 == 999 or level == depth - 1:
                with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
                    f.write(b"level %d" % level)
                os.link("f", "g", src_dir_fd=fd, dst_dir_fd=fd)
            os.mkdir("d", 0o755, dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)


def deepest(root: Path, depth: int = DEPTH) -> bytes:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth - 1):
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        st_f, st_g = os.stat("f", dir_fd=fd), os.stat("g", dir_fd=fd)
        assert st_f.st_ino == st_g.st_ino and st_f.st_nlink >= 2
        with open(os.open("f", os.O_RDONLY, dir_fd=fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


@pytest.mark.slow
def test_deep_tree_ingest_checkout_apply_verify(cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_deep(src)
    p = cli("ingest", src, "--name", "deep")
    assert p.returncode == 0, p.stderr.decode()
    for link in ("copy", "hardlink"):
        out = tmp_path / f"co-{link}"
        p = cli("checkout", "deep", out, "--link", link)
        assert p.returncode == 0, p.stderr.decode()
        assert deepest(out) == b"level %d" % (DEPTH - 1)
        p = cli("verify", out, "deep")
        assert p.returncode == 0, p.stderr.decode()
    # apply: onto an empty root (creates it all), then onto a tree with a change deep down.
    root = tmp_path / "root"
    p = cli("apply", root, "deep")
    assert p.returncode == 0, p.stderr.decode()
    assert deepest(root) == b"level %d" % (DEPTH - 1)
    other = tmp_path / "other"
    make_deep(other, DEPTH + 5)
    p = cli("apply", other, "deep", "--delete")
    assert p.returncode == 0, p.stderr.decode()
    for tree in (root, other):
        p = cli("verify", tree, "deep")
        assert p.returncode == 0, p.stderr.decode()
