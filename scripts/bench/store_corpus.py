"""Scratch filesystem for the store benchmark: the shared helper in corpus.py (a fresh
ext4 image on a loop device, corpora from the shared ``make_corpus.py``), with the
image and mount point named by the caller."""

from __future__ import annotations

import corpus

make_corpora = corpus.make_corpora
warm = corpus.warm


class Scratch:
    """A mounted scratch filesystem that tears itself down."""

    def __init__(self, s: corpus.Scratch) -> None:
        self._s = s
        self.image, self.mnt, self.loopdev = s.image, s.mnt, s.loopdev

    def teardown(self, remove_image: bool = True) -> None:
        """Unmount, detach the loop device, delete the image (unless asked to keep it)."""
        if remove_image:
            corpus.teardown(self._s)
            return
        import subprocess

        subprocess.run(["umount", self.mnt], check=False)
        subprocess.run(["losetup", "-d", self.loopdev], check=False)


def setup_scratch(image: str, mnt: str, size_gib: float) -> Scratch:
    """Create a sparse image of ``size_gib``, mkfs.ext4 it, attach and mount it at ``mnt``."""
    return Scratch(corpus.create_at(image, mnt, size_gib))
