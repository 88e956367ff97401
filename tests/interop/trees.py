"""A tree with everything upstream continuity can represent, for interop tests.

Root-only parts (devices, owners, trusted.* / security.* xattrs, ACLs) are
added when running as root. Things upstream cannot represent (sockets, names
that are not UTF-8, xattrs on fifos and devices, hardlinked symlinks) are
left out here and tested one by one in test_upstream_differences.py.
"""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

ROOT = os.geteuid() == 0

#: Paths of the rich tree below that are hardlink groups (sorted), for assertions.
HARDLINK_GROUPS = [
    ["/links/a", "/links/b", "/links/sub/c"],
    ["/links/empty-a", "/links/empty-b"],
    ["/special/fifo-a", "/special/fifo-b"],
]
ROOT_HARDLINK_GROUPS = [["/special/null", "/special/null-again"]]


def _write(p: Path, data: bytes = b"", mode: int = 0o644) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.chmod(p, mode)
    return p


def _acl(entries: list[tuple[int, int, int]]) -> bytes:
    """A system.posix_acl_access value (version 2, little endian)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in entries)


def rich_tree(root: Path) -> Path:
    """Create the tree at ``root`` (which must not exist) and return it."""
    rng = random.Random(7)
    root.mkdir(parents=True)
    # Regular files: text, binary, a large one (read in pieces), odd modes.
    _write(root / "plain.txt", b"hello, continuity\n")
    _write(root / "data/random.bin", rng.randbytes(70_000), 0o600)
    _write(root / "data/large.bin", rng.randbytes((9 << 20) + 3), 0o640)
    _write(root / "data/one-byte", b"x", 0o444)
    _write(root / "modes/none", b"no permissions", 0o000)
    _write(root / "modes/all", b"all permissions", 0o777)
    _write(root / "modes/setuid", b"\x7fELF u", 0o4755)
    _write(root / "modes/setgid", b"\x7fELF g", 0o2755)
    _write(root / "modes/setuid-setgid-sticky", b"\x7fELF ugt", 0o7755)
    (root / "modes/sticky-dir").mkdir()
    os.chmod(root / "modes/sticky-dir", 0o1777)
    (root / "modes/setgid-dir").mkdir()
    os.chmod(root / "modes/setgid-dir", 0o2775)
    (root / "modes/private-dir").mkdir()
    _write(root / "modes/private-dir/inside", b"secret")
    os.chmod(root / "modes/private-dir", 0o700)
    # Two empty files in different places (upstream's old "empty files differ" bug).
    _write(root / "empty-1")
    _write(root / "data/empty-2")
    (root / "empty-dir").mkdir()
    # Hardlinks: a group of three across directories, a group of empty files, fifos.
    _write(root / "links/a", b"linked content\n")
    (root / "links/sub").mkdir()
    os.link(root / "links/a", root / "links/b")
    os.link(root / "links/a", root / "links/sub/c")
    _write(root / "links/empty-a")
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
    _write(deep / "bottom.txt", b"at the bottom\n")
    # Unicode and awkward (but UTF-8) names.
    _write(root / "unicode/héllo wörld.txt", "héllo".encode())
    _write(root / "unicode/日本語/ファイル", "日本".encode())
    _write(root / "unicode/emoji-🎉", b"party")
    _write(root / "unicode/new\nline", b"newline in name")
    _write(root / "unicode/tab\tand space ", b"tab")
    _write(root / "unicode/-leading-dash", b"dash")
    _write(root / "unicode" / ("n" * 255), b"255-byte name")
    os.symlink("日本語/ファイル", root / "unicode/ユニコードリンク")
    # user.* xattrs: text, binary, empty values; on files, a hardlink group and directories.
    os.setxattr(root / "plain.txt", "user.comment", b"a text value")
    os.setxattr(root / "plain.txt", "user.binary", bytes(range(256)))
    os.setxattr(root / "plain.txt", "user.empty", b"")
    os.setxattr(root / "links/a", "user.shared", b"by all three links")
    os.setxattr(root / "data", "user.dir", b"on a directory")
    if ROOT:
        _root_parts(root)
    return root


def _root_parts(root: Path) -> None:
    """Devices, owners, trusted.*/security.* xattrs and an ACL (root only)."""
    os.mknod(root / "special/null", 0o666 | 0o020000, os.makedev(1, 3))
    os.link(root / "special/null", root / "special/null-again")
    os.mknod(root / "special/block", 0o660 | 0o060000, os.makedev(7, 200))
    os.mknod(root / "special/big-numbers", 0o600 | 0o020000, os.makedev(4095, 1048575))
    _write(root / "owned/by-1000", b"user file")
    os.chown(root / "owned/by-1000", 1000, 1000)
    os.chown(root / "owned", 4242, 4343)
    os.symlink("by-1000", root / "owned/link")
    os.chown(root / "owned/link", 1234, 5678, follow_symlinks=False)
    _write(root / "owned/nobody", b"nobody", 0o4750)
    os.chown(root / "owned/nobody", 65534, 65534)
    os.chmod(root / "owned/nobody", 0o4750)  # chown cleared setuid
    os.setxattr(root / "plain.txt", "trusted.origin", b"root only")
    os.setxattr(root / "data", "trusted.overlay.opaque", b"y")
    os.setxattr(root / "data/one-byte", "security.test", b"sec")
    acl = _acl([(1, 6, 0xFFFFFFFF), (2, 4, 1000), (4, 4, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF), (0x20, 4, 0xFFFFFFFF)])
    _write(root / "owned/with-acl", b"acl")
    os.setxattr(root / "owned/with-acl", "system.posix_acl_access", acl)


def hardlink_groups() -> list[list[str]]:
    """The hardlink groups rich_tree made, sorted."""
    return sorted(HARDLINK_GROUPS + (ROOT_HARDLINK_GROUPS if ROOT else []))
