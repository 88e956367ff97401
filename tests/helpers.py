"""Helpers every test module may import (``from tests.helpers import ...``); fixtures live in conftest.py."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = os.geteuid() == 0


def loop_fs(tmp_path: Path, name: str, mkfs: list[str], size: int = 64 << 20) -> Iterator[Path]:
    """A fresh filesystem made by ``mkfs`` (argv without the image) on a loop device, mounted at
    ``tmp_path/name`` for the duration of a fixture (``yield from``); skips where mkfs is not
    installed or loop devices cannot be mounted."""
    if not shutil.which(mkfs[0]):
        pytest.skip(f"{mkfs[0]} not installed")
    img, mnt = tmp_path / f"{name}.img", tmp_path / name
    with open(img, "wb") as f:
        f.truncate(size)
    if subprocess.run([*mkfs, str(img)], capture_output=True).returncode != 0:
        pytest.skip(f"{mkfs[0]} failed")
    mnt.mkdir()
    if subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a loop device here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def run_cli(
    *args: object,
    store: Path | None = None,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    check: bool | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run the real `continuity` command (a subprocess, as users do); never a traceback on failure."""
    argv = [sys.executable, "-m", "castore"]
    if store is not None:
        argv += ["--store", str(store)]
    argv += [os.fsdecode(a) if isinstance(a, (str, bytes, os.PathLike)) else str(a) for a in args]
    p = subprocess.run(argv, capture_output=True, input=input, env={**os.environ, **(env or {})}, timeout=600)
    if check is True:
        assert p.returncode == 0, p.stderr.decode(errors="replace")
    if p.returncode != 0:
        assert b"Traceback" not in p.stderr, p.stderr.decode(errors="replace")
    return p


def have(cmd: str) -> bool:
    return shutil.which(cmd) is not None


needs_root = pytest.mark.skipif(not ROOT, reason="needs root")


def run_pty(argv: list[str]) -> tuple[int, bytes]:
    """Run ``argv`` with stdin, stdout and stderr on a pseudo-terminal: (exit code, what it drew)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdin, stdout and stderr are the terminal
        os.execvpe(argv[0], argv, {**os.environ, "COLUMNS": "120"})
    out = b""
    poller = select.poll()  # not select(): the test process may hold fds above FD_SETSIZE (1024)
    poller.register(fd, select.POLLIN)
    while True:
        try:
            r = poller.poll(120_000)
            data = os.read(fd, 65536) if r else b""
        except OSError:
            data = b""
        if not data:
            break
        out += data
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), out
