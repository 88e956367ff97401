"""fstest-style tree states for apply (containerd/continuity fs/fstest): declarative
appliers, and the states every other state must converge to."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

Step = Callable[[Path], None]
T0 = 1_600_000_000_000_000_000  # fixed mtimes: states are deterministic


def _t(root: Path, rel: str, n: int) -> None:
    os.utime(root / rel, ns=(T0 + n, T0 + n), follow_symlinks=False)


def create_dir(rel: str, mode: int = 0o755) -> Step:
    def f(root: Path) -> None:
        (root / rel).mkdir(parents=True, exist_ok=True)
        os.chmod(root / rel, mode)

    return f


def create_file(rel: str, data: bytes, mode: int = 0o644, xattrs: dict[str, bytes] | None = None) -> Step:
    def f(root: Path) -> None:
        p = root / rel
        p.write_bytes(data)
        os.chmod(p, mode)
        for k, v in (xattrs or {}).items():
            os.setxattr(p, k, v)

    return f


def symlink(target: str, rel: str) -> Step:
    def f(root: Path) -> None:
        os.symlink(target, root / rel)

    return f


def hardlink(old: str, new: str) -> Step:
    def f(root: Path) -> None:
        os.link(root / old, root / new)

    return f


def fifo(rel: str, mode: int = 0o640) -> Step:
    def f(root: Path) -> None:
        os.mkfifo(root / rel, mode)
        os.chmod(root / rel, mode)

    return f


def chardev(rel: str, major: int, minor: int, mode: int = 0o666) -> Step:
    def f(root: Path) -> None:
        os.mknod(root / rel, stat.S_IFCHR | mode, os.makedev(major, minor))
        os.chmod(root / rel, mode)

    return f


def build_tree(root: Path, steps: list[Step]) -> Path:
    """Create ``root`` from steps, then give every entry a fixed mtime (children before parents)."""
    root.mkdir(parents=True, exist_ok=True)
    for s in steps:
        s(root)
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            paths.append(os.path.relpath(os.path.join(dirpath, n), root))
    for i, rel in enumerate(sorted(paths, key=lambda p: -p.count("/"))):
        _t(root, rel, i)
    return root


BASE: list[Step] = [
    create_dir("etc", 0o755),
    create_file("etc/hosts", b"127.0.0.1 localhost\n", 0o644),
    hardlink("etc/hosts", "etc/hosts.allow"),
    symlink("hosts", "etc/hosts.lnk"),
    symlink("/etc/hosts", "etc/hosts.abs"),
    symlink("../nowhere", "etc/dangling"),
    create_file("etc/hostname", b"box\n", 0o600, {"user.origin": b"fstest"}),
    create_dir("usr/bin", 0o755),
    create_file("usr/bin/tool", b"#!/bin/sh\necho tool\n" * 50, 0o755),
    create_file("usr/bin/suid", b"setuid\n", 0o4755),
    create_dir("var/lib/app", 0o700),
    create_file("var/lib/app/data", os.urandom(0) + b"x" * 70000, 0o640),
    create_file("var/lib/app/empty", b"", 0o600),
    fifo("var/lib/app/pipe"),
    create_dir("tmp", 0o1777),
]

STATES: dict[str, list[Step]] = {
    "empty": [create_dir("only", 0o755)],
    "basic": BASE,
    "deletions": [
        create_dir("etc", 0o755),
        create_file("etc/hosts", b"127.0.0.1 localhost\n", 0o644),
        create_dir("usr", 0o755),
    ],
    "updates": BASE
    + [
        # later steps overwrite earlier ones
        create_file("etc/hostname", b"newbox\n", 0o644, {"user.origin": b"updated", "user.more": b"1"}),
        create_file("usr/bin/tool", b"#!/bin/sh\necho tool v2\n" * 50, 0o700),
        create_file("etc/new", b"added\n"),
        create_file("var/lib/app/data", b"y" * 70001, 0o600),
    ],
    "dir_perms": BASE
    + [
        create_dir("etc", 0o700),
        create_dir("usr/bin", 0o555),
        create_dir("tmp", 0o755),
    ],
    "parent_perms": BASE
    + [
        create_file("var/lib/app/more", b"more\n"),
        create_dir("var/lib/app", 0o500),
        create_dir("var/lib", 0o711),
    ],
    "hardlinks": [
        create_dir("etc", 0o755),
        create_file("etc/hosts", b"127.0.0.1 localhost\n", 0o644),
        create_file("etc/hosts.allow", b"127.0.0.1 localhost\n", 0o644),  # same content, split inode
        create_file("etc/hostname", b"box\n", 0o600, {"user.origin": b"fstest"}),
        hardlink("etc/hostname", "etc/hostname.bak"),
        create_dir("usr/bin", 0o755),
        create_file("usr/bin/tool", b"#!/bin/sh\necho tool\n" * 50, 0o755),
        hardlink("usr/bin/tool", "usr/bin/tool2"),
        hardlink("usr/bin/tool", "etc/tool"),
    ],
    "types": [
        # file <-> dir <-> symlink swaps against BASE
        create_dir("etc/hosts", 0o755),  # was a file
        create_file("etc/hosts/inner", b"inside\n"),
        create_file("etc/hosts.lnk", b"was a symlink\n"),  # symlink -> file
        create_dir("etc/hostname", 0o750),  # file -> dir
        symlink("/etc", "usr"),  # dir -> symlink (absolute, to outside: never followed)
        symlink("hosts", "etc/hosts.allow"),  # hardlink -> symlink
        create_dir("var/lib/app/pipe", 0o755),  # fifo -> dir
        create_file("tmp", b"tmp is a file\n"),  # dir -> file
    ],
}


def state(root: Path, name: str) -> Path:
    return build_tree(root, STATES[name])
