"""fstest-style appliers: functions that lay out a known tree under a root, for tests and benchmarks.

Each takes the root directory (created as needed) and returns it, so a test reads
``root = rich_tree(tmp_path / "src")``. Owners and device nodes are set only as root.
"""

from __future__ import annotations

import os
from pathlib import Path


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
