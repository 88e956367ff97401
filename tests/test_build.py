"""The walker: every resource kind and attribute, hostile names, depth, size, live files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from castore.build import WalkOptions, build
from castore.digest import hash_bytes
from castore.fs.tree import remove_tree
from castore.manifest import Device, Directory, NamedPipe, RegularFile, Socket, Symlink, dumps, loads
from castore.testing.trees import rich_tree, write
from tests.helpers import needs_root, run_cli


def test_every_attribute_recorded(tmp_path: Path) -> None:
    root = rich_tree(tmp_path / "src")
    m = build(str(root))
    by = m.by_path()
    hosts = by["/etc/hosts"]
    assert isinstance(hosts, RegularFile)
    assert hosts.paths == ("/etc/hosts", "/etc/hosts.allow")
    assert hosts.digest == hash_bytes(b"127.0.0.1 localhost\n") and hosts.size == 20
    assert hosts.xattrs == (("user.origin", b"\x00\xffbinary"),)
    assert hosts.mtime_ns == 1_234_567_890_123_456_789
    assert by["/bin/su"].perm == 0o4755 and by["/bin/sg"].perm == 0o2755
    assert isinstance(by["/tmp"], Directory) and by["/tmp"].perm == 0o1777
    assert isinstance(by["/etc/abs"], Symlink) and by["/etc/abs"].target == "/etc/hosts"
    assert isinstance(by["/etc/dangling"], Symlink)
    assert isinstance(by["/etc/fifo"], NamedPipe)
    # two empty files are two resources, not a hardlink group (upstream's bug)
    assert by["/etc/empty1"] is not by["/etc/empty2"]
    assert by["/etc/empty1"].paths == ("/etc/empty1",)


def test_deterministic(tmp_path: Path) -> None:
    root = rich_tree(tmp_path / "src")
    assert dumps(build(str(root))) == dumps(build(str(root)))


@needs_root
def test_devices_sockets_owners_and_trusted_xattrs(tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    os.mknod(root / "null", 0o666 | 0o020000, os.makedev(1, 3))
    os.mknod(root / "sda", 0o660 | 0o060000, os.makedev(8, 1))
    write(root / "owned", b"x")
    os.chown(root / "owned", 1234, 5678)
    os.setxattr(root / "owned", "trusted.t", b"1")
    os.setxattr(root / "owned", "security.s", b"2")
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(str(root / "sock"))
    s.close()
    by = build(str(root)).by_path()
    null, sda = by["/null"], by["/sda"]
    assert isinstance(null, Device) and null.char and (null.major, null.minor) == (1, 3)
    assert isinstance(sda, Device) and not sda.char and (sda.major, sda.minor) == (8, 1)
    assert isinstance(by["/sock"], Socket)
    owned = by["/owned"]
    assert (owned.uid, owned.gid) == (1234, 5678)
    assert dict(owned.xattrs) == {"trusted.t": b"1", "security.s": b"2"}


def test_hostile_names(tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    names = [b"new\nline", b"x" * 255, b"bad\xff\xfe", b"tab\there", b" lead", b"-dash", b"\xe2\x80\x8bzw"]
    for n in names:
        with open(os.path.join(os.fsencode(root), n), "wb") as f:
            f.write(n)
    m = build(str(root))
    back = loads(dumps(m))
    got = sorted(os.fsencode(r.path) for r in back.resources)
    assert got == sorted(b"/" + n for n in names)
    for r in back.resources:
        assert isinstance(r, RegularFile) and r.digest == hash_bytes(os.fsencode(r.path)[1:])


def test_depth_2000(tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    for _ in range(2000):
        os.mkdir("d", dir_fd=fd)
        nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    leaf = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(leaf, b"deep")
    os.close(leaf)
    os.close(fd)
    try:
        m = build(str(root))
        assert len(m.resources) == 2001
        leaf_r = m.by_path()["/d" * 2000 + "/leaf"]
        assert isinstance(leaf_r, RegularFile) and leaf_r.digest == hash_bytes(b"deep")
    finally:
        remove_tree(str(root))  # pytest's own cleanup recurses and would fail at this depth


@pytest.mark.slow
def test_100k_entries(tmp_path: Path) -> None:
    root = tmp_path / "src"
    for d in range(100):
        sub = root / f"d{d:03}"
        sub.mkdir(parents=True)
        for i in range(1000):
            (sub / f"f{i}").write_bytes(b"%d-%d" % (d, i))
    m = build(str(root))
    assert len(m.resources) == 100_100
    assert m.by_path()["/d042/f7"].digest == hash_bytes(b"42-7")  # type: ignore[union-attr]


def test_sparse_holes(tmp_path: Path) -> None:
    p = tmp_path / "src" / "sparse"
    p.parent.mkdir()
    with open(p, "wb") as f:
        f.truncate(8 << 20)
        f.seek(4 << 20)
        f.write(b"data" * 1024)
    r = build(str(tmp_path / "src")).by_path()["/sparse"]
    assert isinstance(r, RegularFile)
    assert r.holes and r.holes[0][0] == 0 and r.holes[-1][1] == 8 << 20
    assert sum(e - b for b, e in r.holes) >= (8 << 20) - (1 << 20)


def test_ignore_and_appledouble(tmp_path: Path) -> None:
    root = tmp_path / "src"
    write(root / "keep.txt", b"k")
    write(root / "skip.log", b"s")
    write(root / "sub/skip.log", b"s")
    write(root / "cache/x", b"x")
    write(root / "._keep.txt", b"apple")
    write(root / "__MACOSX/._x", b"apple")
    notes: list[str] = []
    m = build(str(root), WalkOptions(ignore=("*.log", "/cache"), note=notes.append))
    assert sorted(r.path for r in m.resources) == ["/keep.txt", "/sub"]
    assert notes and "AppleDouble" in notes[0]
    m2 = build(str(root), WalkOptions(keep_appledouble=True))
    assert "/._keep.txt" in m2.by_path()


def test_cli_build_ignore_and_formats(tmp_path: Path) -> None:
    root = rich_tree(tmp_path / "src")
    p = run_cli("build", root, "--ignore", "fifo", store=tmp_path / "st")
    assert p.returncode == 0
    m = loads(p.stdout)
    assert "/etc/fifo" not in m.by_path()
    for fmt in ("text", "json"):
        assert run_cli("build", root, "--format", fmt, store=tmp_path / "st").returncode == 0
    bad = run_cli("build", tmp_path / "nope", store=tmp_path / "st")
    assert bad.returncode != 0 and b"continuity: error:" in bad.stderr


def test_file_changing_while_read_is_reported(tmp_path: Path) -> None:
    """A writer appending all the time: the file is never recorded with a wrong digest."""
    root = tmp_path / "src"
    write(root / "live", b"x" * (64 << 20))
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import os,sys,time\n"
                "f=open(sys.argv[1],'r+b')\n"
                "end=time.time()+30\n"
                "i=0\n"
                "while time.time()<end:\n"
                "  f.seek(i % (64<<20)); f.write(b'y'*4096); f.flush(); i+=4096*97\n"
            ),
            str(root / "live"),
        ]
    )
    try:
        import time

        time.sleep(0.3)
        p = run_cli("build", root, store=tmp_path / "st")
    finally:
        writer.kill()
        writer.wait()
    if p.returncode == 0:  # it got a stable read: then the digest must match some real state
        r = loads(p.stdout).by_path()["/live"]
        assert isinstance(r, RegularFile) and r.size == 64 << 20
    else:
        assert b"changed while" in p.stderr


def test_symlinked_parent_is_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "src"
    outside = tmp_path / "outside"
    write(outside / "secret", b"s")
    root.mkdir()
    os.symlink(outside, root / "link")
    m = build(str(root))
    assert [r.path for r in m.resources] == ["/link"]
