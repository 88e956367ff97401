"""Where upstream containerd/continuity (v0.3.0, Debian's source) cannot follow us.

Each test pins down one documented difference (docs/design-interop.md), so
that a change on either side shows up here instead of being papered over:

1. sockets: upstream's build fails on them; its Unmarshal rejects ours.
2. names that are not UTF-8: upstream's Marshal fails; ours carry an escaped
   UTF-8 form in field 1 (plus raw bytes in a new field), which upstream reads
   as a different, absent path.
3. xattrs on symlinks: upstream reads them but never writes them (its symlink
   type has no XAttrs), so its manifests say "none"; ours record them.
4. xattrs on fifos and devices: upstream never reads them; ours record them,
   and upstream's verify then fails on our manifest ("target missing xattr").
5. hardlinked symlinks: upstream lists each path as its own symlink; we group
   them like any hardlink, and upstream sees only the first path of the group.
6. paths longer than PATH_MAX: upstream walks by full path and fails; our
   walker is directory-fd relative.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from castore.manifest import codec
from castore.manifest.model import NamedPipe, Symlink
from tests.helpers import ROOT, run_cli
from tests.interop.upstream import Upstream

pytestmark = pytest.mark.go
needs_root = pytest.mark.skipif(not ROOT, reason="trusted.* xattrs need root")


def _base(root: Path) -> Path:
    root.mkdir()
    (root / "file").write_bytes(b"content")
    return root


def _ours(root: Path, out: Path) -> Path:
    out.write_bytes(run_cli("build", root, check=True).stdout)
    return out


def test_sockets(tmp_path: Path, upstream: Upstream) -> None:
    import socket

    root = _base(tmp_path / "root")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(root / "sock"))
        built = upstream.run("build", root, check=False)
        assert built.returncode != 0 and b"is not supported" in built.stderr
        ours = _ours(root, tmp_path / "ours.pb")
        assert "socket" in {r.kind for r in codec.loads(ours.read_bytes()).resources}
        read = upstream.run("dump", ours, check=False)
        assert read.returncode != 0 and b"unknown resource record" in read.stderr


def test_names_that_are_not_utf8(tmp_path: Path, upstream: Upstream) -> None:
    root = _base(tmp_path / "root")
    (root / os.fsdecode(b"caf\xe9")).write_bytes(b"latin-1 name")
    built = upstream.run("build", root, check=False)
    assert built.returncode != 0 and b"invalid UTF-8" in built.stderr
    ours = _ours(root, tmp_path / "ours.pb")
    assert run_cli("verify", root, ours).returncode == 0  # the raw bytes round-trip here
    seen = [d["paths"][0] for d in upstream.dump(ours)]
    assert seen == ["/caf\\xe9", "/file"]  # field 1 keeps valid UTF-8: an escaped form
    verified = upstream.run("verify", root, ours, check=False)
    assert verified.returncode != 0 and b"no such file" in verified.stderr


@needs_root
def test_xattrs_on_symlinks(tmp_path: Path, upstream: Upstream) -> None:
    root = _base(tmp_path / "root")
    os.symlink("file", root / "link")
    os.setxattr(root / "link", "trusted.note", b"on a symlink", follow_symlinks=False)
    theirs = tmp_path / "theirs.pb"
    theirs.write_bytes(upstream.build(root))
    link = codec.loads(theirs.read_bytes()).by_path()["/link"]
    assert isinstance(link, Symlink) and link.xattrs == ()
    p = run_cli("verify", root, theirs)
    assert p.returncode == 1 and p.stdout.startswith(b"/link: xattr differs")
    assert run_cli("verify", "--ignore-attr", "xattr", root, theirs).returncode == 0
    ours = _ours(root, tmp_path / "ours.pb")
    assert codec.loads(ours.read_bytes()).by_path()["/link"].xattrs == (("trusted.note", b"on a symlink"),)
    upstream.run("verify", root, ours)  # upstream does not compare symlink xattrs


@needs_root
def test_xattrs_on_fifos_and_devices(tmp_path: Path, upstream: Upstream) -> None:
    root = _base(tmp_path / "root")
    os.mkfifo(root / "fifo")
    os.setxattr(root / "fifo", "trusted.note", b"on a fifo")
    theirs = tmp_path / "theirs.pb"
    theirs.write_bytes(upstream.build(root))
    fifo = codec.loads(theirs.read_bytes()).by_path()["/fifo"]
    assert isinstance(fifo, NamedPipe) and fifo.xattrs == ()
    p = run_cli("verify", root, theirs)
    assert p.returncode == 1 and p.stdout.startswith(b"/fifo: xattr differs")
    ours = _ours(root, tmp_path / "ours.pb")
    verified = upstream.run("verify", root, ours, check=False)
    assert verified.returncode == 1 and b'target missing xattr "trusted.note"' in verified.stderr


def test_hardlinked_symlinks(tmp_path: Path, upstream: Upstream) -> None:
    """Upstream does not group hardlinked symlinks (they are not Hardlinkable there); neither do we."""
    root = _base(tmp_path / "root")
    os.symlink("file", root / "link-a")
    os.link(root / "link-a", root / "link-b", follow_symlinks=False)
    theirs = tmp_path / "theirs.pb"
    theirs.write_bytes(upstream.build(root))
    assert [r.paths for r in codec.loads(theirs.read_bytes()).resources] == [("/file",), ("/link-a",), ("/link-b",)]
    assert run_cli("verify", root, theirs).returncode == 0
    ours = _ours(root, tmp_path / "ours.pb")
    assert [r.paths for r in codec.loads(ours.read_bytes()).resources] == [("/file",), ("/link-a",), ("/link-b",)]
    assert [d["paths"] for d in upstream.dump(ours)] == [["/file"], ["/link-a"], ["/link-b"]]
    upstream.run("verify", root, ours)


def test_paths_longer_than_path_max(tmp_path: Path, upstream: Upstream) -> None:
    root = _base(tmp_path / "root")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(250):  # 250 * 20 bytes > PATH_MAX (4096)
            os.mkdir("d" * 19, dir_fd=fd)
            nxt = os.open("d" * 19, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)
    try:
        built = upstream.run("build", root, check=False)
        assert built.returncode != 0 and b"file name too long" in built.stderr
        ours = codec.loads(_ours(root, tmp_path / "ours.pb").read_bytes())
        assert len(ours.resources) == 251
    finally:
        from castore.fs.tree import remove_tree

        remove_tree(str(root))  # pytest's path-based cleanup cannot reach below PATH_MAX
