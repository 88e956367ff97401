"""Scratch filesystem for the store benchmark: a fresh ext4 image on a loop device.

File creation on a long-lived disk gets slow after mass deletes; a fresh
filesystem keeps that out of the figures. Corpora come from the shared
``make_corpus.py`` and are generated inside the image, next to the stores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
MAKE_CORPUS_CANDIDATES = (
    os.environ.get("MAKE_CORPUS", ""),
    os.path.join(HERE, "..", "..", "..", "shared", "bench", "make_corpus.py"),
    "/work/shared/bench/make_corpus.py",
)


def make_corpus_script() -> str:
    """Path of the shared corpus generator."""
    for p in MAKE_CORPUS_CANDIDATES:
        if p and os.path.isfile(p):
            return os.path.abspath(p)
    raise SystemExit("make_corpus.py not found (set MAKE_CORPUS=/path/to/make_corpus.py)")


@dataclass
class Scratch:
    image: str
    mnt: str
    loopdev: str

    def teardown(self, remove_image: bool = True) -> None:
        """Unmount, detach the loop device, delete the image."""
        subprocess.run(["sync"], check=False)
        subprocess.run(["umount", self.mnt], check=False)
        subprocess.run(["losetup", "-d", self.loopdev], check=False)
        if remove_image and os.path.exists(self.image):
            os.unlink(self.image)
        try:
            os.rmdir(self.mnt)
        except OSError:
            pass


def setup_scratch(image: str, mnt: str, size_gib: float) -> Scratch:
    """Create a sparse image of ``size_gib``, mkfs.ext4 it, attach and mount it at ``mnt``."""
    if os.path.ismount(mnt):
        raise SystemExit(f"{mnt} is already a mount point (left over? umount it and losetup -d its device)")
    if os.path.exists(image):
        os.unlink(image)
    with open(image, "wb") as f:
        f.truncate(int(size_gib * (1 << 30)))
    # Initialise inode tables and journal now, so no ext4lazyinit thread writes during the timings.
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", image], check=True)
    loopdev = subprocess.run(["losetup", "-f", "--show", image], check=True, capture_output=True,
                             text=True).stdout.strip()
    os.makedirs(mnt, exist_ok=True)
    try:
        subprocess.run(["mount", "-o", "noatime", loopdev, mnt], check=True)
    except subprocess.CalledProcessError:
        subprocess.run(["losetup", "-d", loopdev], check=False)
        raise
    return Scratch(image=image, mnt=mnt, loopdev=loopdev)


def make_corpora(out: str, names: list[str], scale: float) -> None:
    """Generate ``names`` under ``out`` with the shared generator (src is never scaled by it)."""
    cmd = [sys.executable, make_corpus_script(), "--out", out, "--only", ",".join(names),
           "--scale", str(scale), "--no-summary"]
    subprocess.run(cmd, check=True)


def warm(path: str) -> None:
    """Read every file once so the timings run on a warm page cache."""
    subprocess.run(f"find {path!r} -type f -print0 | xargs -0 -r cat > /dev/null", shell=True, check=True)
