"""FUSE test helpers: skip without /dev/fuse or pyfuse3; run `continuity mount` in a
subprocess and always unmount in teardown (fusermount3 -u, then umount -l)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _fuse_missing() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        return "pyfuse3 is not installed (pip install -e '.[fuse]')"
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    return None


FUSE_MISSING = _fuse_missing()
needs_fuse = pytest.mark.skipif(FUSE_MISSING is not None, reason=FUSE_MISSING or "")


class Mounted:
    """A running `continuity mount`: its process, mount point and stderr log."""

    def __init__(self, proc: subprocess.Popen[bytes], mnt: Path, log: Path) -> None:
        self.proc, self.mnt, self.log = proc, mnt, log

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Signal the mount process and wait for it; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def in_mount_table(mnt: Path) -> bool:
    """True when ``mnt`` is in the mount table (also a dead FUSE mount, which os.path.ismount misses)."""
    want = os.path.abspath(mnt).replace("\\", "\\134").replace(" ", "\\040").replace("\n", "\\012")
    with open("/proc/self/mounts") as f:
        return any(line.split(" ")[1] == want for line in f)


def unmount(mnt: Path) -> None:
    """Make sure nothing stays mounted at ``mnt``: fusermount3 -u, then -z, then umount -l."""
    for argv in (["fusermount3", "-u", "-q"], ["fusermount3", "-u", "-z", "-q"], ["umount", "-l"]):
        if not in_mount_table(mnt):
            return
        subprocess.run([*argv, str(mnt)], capture_output=True, timeout=30)


@contextmanager
def mounted(store: Path, ref: str, mnt: Path, *extra: str, wait: float = 30, debug: bool = False) -> Iterator[Mounted]:
    """Run `continuity --store STORE mount REF MNT` until the block ends; yield once it is mounted.
    ``debug``: with `--debug` (the mount's counters are printed when it ends)."""
    mnt.mkdir(parents=True, exist_ok=True)
    log = mnt.parent / f"{mnt.name}.mount.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "castore", *(["--debug"] if debug else []), "--store", str(store), "mount"]
            + [ref, str(mnt), *extra],
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
        )
    m = Mounted(proc, mnt, log)
    try:
        deadline = time.monotonic() + wait
        while not os.path.ismount(mnt):
            if proc.poll() is not None:
                pytest.fail(f"mount exited {proc.returncode}: {m.stderr()}")
            if time.monotonic() > deadline:
                pytest.fail(f"not mounted after {wait} s: {m.stderr()}")
            time.sleep(0.05)
        yield m
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                unmount(mnt)
                proc.kill()
                proc.wait(timeout=20)
        unmount(mnt)
