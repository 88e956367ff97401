"""Trees deeper than Python's recursion limit, paths longer than PATH_MAX (issue 11, item 8)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from castore.testing.trees import deep_tree

DEPTH = 3000  # "d/" x 3000: 6000 bytes of path, past PATH_MAX and ~3x the recursion limit


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
    deep_tree(src)
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
    deep_tree(other, DEPTH + 5)
    p = cli("apply", other, "deep", "--delete")
    assert p.returncode == 0, p.stderr.decode()
    for tree in (root, other):
        p = cli("verify", tree, "deep")
        assert p.returncode == 0, p.stderr.decode()
