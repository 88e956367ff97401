"""fstest-style appliers: functions that lay out a known tree under a root, for tests and benchmarks
(``castore.testing.states`` holds the declarative states apply converges between).

Each takes the root directory (created as needed) and returns it, so a test reads
``root = rich_tree(tmp_path / "src")``. Owners and device nodes are set only as root.
"""

from __future__ import annotations

import os
import random
import socket
import stat
import struct
from pathlib import Path

from castore.testing.states import state

ROOT = os.geteuid() == 0


def write(p: Path, data: bytes = b"", mode: int = 0o644) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.chmod(p, mode)
    return p


def rich_tree(root: Path) -> Path:
    write(root / "etc/hosts", b"127.0.0.1 localhost\n")
    os.link(root / "etc/hosts", root / "etc/hosts.allow")
    write(root / "etc/empty1")
    write(root / "etc/empty2")
    write(root / "bin/su", b"\x7fELF", 0o4755)
    write(root / "bin/sg", b"\x7fELF2", 0o2755)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    os.symlink("hosts", root / "etc/rel")
    os.symlink("/etc/hosts", root / "etc/abs")
    os.symlink("missing", root / "etc/dangling")
    os.mkfifo(root / "etc/fifo")
    os.setxattr(root / "etc/hosts", "user.origin", b"\x00\xffbinary")
    os.utime(root / "etc/hosts", ns=(1, 1_234_567_890_123_456_789))
    return root


def basic(root: Path) -> Path:
    write(root / "etc/hosts", b"127.0.0.1 localhost\n")
    write(root / "etc/hostname", b"box\n")
    write(root / "etc/fstab", b"/dev/sda1 / ext4 defaults 1 1\n", 0o600)
    write(root / "bin/tool", b"#!/bin/sh\necho hi\n", 0o4755)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    os.symlink("hosts", root / "etc/hosts.lnk")
    os.symlink("/etc/hosts", root / "etc/abs")
    os.mkfifo(root / "etc/initctl")
    write(root / "usr/lib/a/__init__.py")
    write(root / "usr/lib/b/__init__.py")
    write(root / "data.bin", os.urandom(3 << 20))
    os.setxattr(root / "etc/hosts", "user.x", b"1")
    if os.geteuid() == 0:
        os.chown(root / "etc/hostname", 1000, 1001)
        os.setxattr(root / "etc/fstab", "trusted.t", b"2")
        os.mknod(root / "null", 0o666 | 0o020000, os.makedev(1, 3))
    return root


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Regular files ``{relative path: content}`` under ``root`` (parents made as needed)."""
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def rand_tree(root: Path, seed: int, n: int = 5, size: int = 3000) -> Path:
    """``n`` files of random content (1 to ``size`` bytes) in three directories, reproducible by ``seed``."""
    rnd = random.Random(seed)
    return make_tree(root, {f"d{i % 3}/f{i}": rnd.randbytes(rnd.randint(1, size)) for i in range(n)})


def deep_tree(root: Path, depth: int = 3000) -> Path:
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
    return root


def special_files(root: Path, *, libarchive: bool = False) -> Path:
    """A tree with every kind of entry, devices and big owner ids included (root only).
    ``libarchive``: no negative fractional mtime, which
    libarchive writes and reads as floor seconds plus a positive fraction (``-2.5`` for -1.5 s)
    where POSIX and GNU tar read a plain decimal."""
    root.mkdir()
    (root / "a").write_bytes(b"hello\n")
    os.setxattr(root / "a", "user.note", b"v\x00\xff")
    (root / "big").write_bytes(os.urandom(3 << 20) + bytes(1 << 20))
    (root / "empty").write_bytes(b"")
    (root / "d").mkdir()
    os.setxattr(root / "d", "trusted.tag", b"t")
    os.link(root / "a", root / "d/hl")
    os.symlink("../a", root / "d/sym")
    os.symlink("x" * 180, root / "d/longtarget")
    deep = root / ("n" * 120) / ("m" * 120)
    deep.mkdir(parents=True)
    (deep / "file").write_bytes(b"deep\n")
    os.mkfifo(root / "fifo")
    os.mknod(root / "cdev", 0o620 | 0o020000, os.makedev(1, 3))
    os.mknod(root / "bdev", 0o640 | 0o060000, os.makedev(7, 0))
    (root / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "suid", 0o4755)
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    (root / "bigid").write_bytes(b"owner\n")
    os.chown(root / "bigid", 3_000_000, 4_000_000)
    (root / os.fsdecode(b"caf\xe9")).write_bytes(b"latin-1 name\n")
    with open(root / "sparse", "wb") as f:
        f.truncate(10 << 20)
        f.seek(5 << 20)
        f.write(b"data in the middle")
    with open(root / "sparse-tail", "wb") as f:
        f.write(b"head" * 2000)
        f.truncate(3 << 20)
    os.utime(root / "a", ns=(1_577_836_800_123_456_789, 1_577_836_800_123_456_789))
    neg = -2_000_000_000 if libarchive else -1_500_000_000
    os.utime(root / "empty", ns=(neg, neg))
    for dirpath, dirnames, _ in os.walk(root, topdown=False):
        for d in dirnames:
            os.utime(os.path.join(dirpath, d), ns=(1_600_000_000_500_000_000, 1_600_000_000_500_000_000))
    return root


def cp_a_tree(root: Path) -> Path:
    """The "basic" state and everything `cp -a` must keep: hardlinks, xattrs, modes, owners, sparse
    holes, fifos, sockets, links."""
    state(root, "basic")
    sparse = root / "sparse.img"
    with open(sparse, "wb") as f:
        f.truncate(8 << 20)
        f.seek(1 << 20)
        f.write(b"data in the middle" * 1000)
        f.seek((6 << 20) + 123)
        f.write(b"tail data")
    (root / "allhole").write_bytes(b"")
    os.truncate(root / "allhole", 3 << 20)
    big = root / "big.bin"
    big.write_bytes(os.urandom(3 << 20))
    os.link(big, root / "etc" / "big.link")
    os.symlink("/definitely/not/there", root / "dangling-abs")
    os.symlink("../../outside", root / "etc" / "up")
    os.setxattr(root / "usr", "user.dir", b"on a directory")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(root / "sock"))
    s.close()
    if ROOT:
        os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(root / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 200))
        os.chown(root / "etc/hostname", 1234, 5678)
        os.chown(root / "etc/hosts.lnk", 42, 43, follow_symlinks=False)
        os.chown(root / "var", 7, 8)
        os.setxattr(root / "etc/hosts", "trusted.t", b"trusted value")
        os.chmod(root / "usr/bin/tool", 0o2755)
    for p in sorted(root.rglob("*"), key=lambda q: -len(q.parts)):
        os.utime(p, ns=(1_500_000_000_123_456_789, 1_600_000_000_987_654_321), follow_symlinks=False)
    os.chmod(root, 0o750)
    return root


#: Paths of upstream_tree that are hardlink groups (sorted), for assertions.
HARDLINK_GROUPS = [
    ["/links/a", "/links/b", "/links/sub/c"],
    ["/links/empty-a", "/links/empty-b"],
    ["/special/fifo-a", "/special/fifo-b"],
]
ROOT_HARDLINK_GROUPS = [["/special/null", "/special/null-again"]]


def _acl(entries: list[tuple[int, int, int]]) -> bytes:
    """A system.posix_acl_access value (version 2, little endian)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in entries)


def upstream_tree(root: Path) -> Path:
    """Everything upstream continuity can represent (interop tests): create the tree at ``root``
    (which must not exist) and return it. Root-only parts (devices, owners, trusted.*/security.*
    xattrs, ACLs) are added when running as root; what upstream cannot represent (sockets, names
    that are not UTF-8, xattrs on fifos and devices, hardlinked symlinks) is left out."""
    rng = random.Random(7)
    root.mkdir(parents=True)
    # Regular files: text, binary, a large one (read in pieces), odd modes.
    write(root / "plain.txt", b"hello, continuity\n")
    write(root / "data/random.bin", rng.randbytes(70_000), 0o600)
    write(root / "data/large.bin", rng.randbytes((9 << 20) + 3), 0o640)
    write(root / "data/one-byte", b"x", 0o444)
    write(root / "modes/none", b"no permissions", 0o000)
    write(root / "modes/all", b"all permissions", 0o777)
    write(root / "modes/setuid", b"\x7fELF u", 0o4755)
    write(root / "modes/setgid", b"\x7fELF g", 0o2755)
    write(root / "modes/setuid-setgid-sticky", b"\x7fELF ugt", 0o7755)
    (root / "modes/sticky-dir").mkdir()
    os.chmod(root / "modes/sticky-dir", 0o1777)
    (root / "modes/setgid-dir").mkdir()
    os.chmod(root / "modes/setgid-dir", 0o2775)
    (root / "modes/private-dir").mkdir()
    write(root / "modes/private-dir/inside", b"secret")
    os.chmod(root / "modes/private-dir", 0o700)
    # Two empty files in different places (upstream's old "empty files differ" bug).
    write(root / "empty-1")
    write(root / "data/empty-2")
    (root / "empty-dir").mkdir()
    # Hardlinks: a group of three across directories, a group of empty files, fifos.
    write(root / "links/a", b"linked content\n")
    (root / "links/sub").mkdir()
    os.link(root / "links/a", root / "links/b")
    os.link(root / "links/a", root / "links/sub/c")
    write(root / "links/empty-a")
    os.link(root / "links/empty-a", root / "links/empty-b")
    (root / "special").mkdir()
    os.mkfifo(root / "special/fifo-a", 0o640)
    os.link(root / "special/fifo-a", root / "special/fifo-b")
    os.mkfifo(root / "special/fifo", 0o600)
    # Symlinks: absolute, relative, dangling, to a directory, to itself, long target.
    (root / "sym").mkdir()
    os.symlink("/etc/passwd", root / "sym/absolute")
    os.symlink("../plain.txt", root / "sym/relative")
    os.symlink("does/not/exist", root / "sym/dangling")
    os.symlink("../data", root / "sym/to-dir")
    os.symlink("loop", root / "sym/loop")
    os.symlink("t" * 1000, root / "sym/long-target")
    # Deep directories.
    deep = root / "deep"
    for i in range(60):
        deep = deep / f"d{i}"
    write(deep / "bottom.txt", b"at the bottom\n")
    # Unicode and awkward (but UTF-8) names.
    write(root / "unicode/héllo wörld.txt", "héllo".encode())
    write(root / "unicode/日本語/ファイル", "日本".encode())
    write(root / "unicode/emoji-🎉", b"party")
    write(root / "unicode/new\nline", b"newline in name")
    write(root / "unicode/tab\tand space ", b"tab")
    write(root / "unicode/-leading-dash", b"dash")
    write(root / "unicode" / ("n" * 255), b"255-byte name")
    os.symlink("日本語/ファイル", root / "unicode/ユニコードリンク")
    # user.* xattrs: text, binary, empty values; on files, a hardlink group and directories.
    os.setxattr(root / "plain.txt", "user.comment", b"a text value")
    os.setxattr(root / "plain.txt", "user.binary", bytes(range(256)))
    os.setxattr(root / "plain.txt", "user.empty", b"")
    os.setxattr(root / "links/a", "user.shared", b"by all three links")
    os.setxattr(root / "data", "user.dir", b"on a directory")
    if ROOT:
        _upstream_root_parts(root)
    return root


def _upstream_root_parts(root: Path) -> None:
    """Devices, owners, trusted.*/security.* xattrs and an ACL (root only)."""
    os.mknod(root / "special/null", 0o666 | 0o020000, os.makedev(1, 3))
    os.link(root / "special/null", root / "special/null-again")
    os.mknod(root / "special/block", 0o660 | 0o060000, os.makedev(7, 200))
    os.mknod(root / "special/big-numbers", 0o600 | 0o020000, os.makedev(4095, 1048575))
    write(root / "owned/by-1000", b"user file")
    os.chown(root / "owned/by-1000", 1000, 1000)
    os.chown(root / "owned", 4242, 4343)
    os.symlink("by-1000", root / "owned/link")
    os.chown(root / "owned/link", 1234, 5678, follow_symlinks=False)
    write(root / "owned/nobody", b"nobody", 0o4750)
    os.chown(root / "owned/nobody", 65534, 65534)
    os.chmod(root / "owned/nobody", 0o4750)  # chown cleared setuid
    os.setxattr(root / "plain.txt", "trusted.origin", b"root only")
    os.setxattr(root / "data", "trusted.overlay.opaque", b"y")
    os.setxattr(root / "data/one-byte", "security.test", b"sec")
    acl = _acl([(1, 6, 0xFFFFFFFF), (2, 4, 1000), (4, 4, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF), (0x20, 4, 0xFFFFFFFF)])
    write(root / "owned/with-acl", b"acl")
    os.setxattr(root / "owned/with-acl", "system.posix_acl_access", acl)


def hardlink_groups() -> list[list[str]]:
    """The hardlink groups upstream_tree made, sorted."""
    return sorted(HARDLINK_GROUPS + (ROOT_HARDLINK_GROUPS if ROOT else []))
