"""Publishing a directory tree: staged beside its TARGET, renamed into place with RENAME_NOREPLACE
(TARGET appears complete or not at all), discarded on failure (``staged_dir``); and the removal of
abandoned staging directories.

A staging directory ``.BASE.continuity-[copy-]HEX`` is flock'ed (LOCK_EX, on the directory
itself) by the process that made it, from before anything is written in it until after it
was renamed to TARGET or discarded. The kernel drops the lock when its owner dies (SIGKILL
included), so a staging directory whose lock can be taken is provably abandoned: the next
checkout or copy into the same parent removes it, and so does gc for the checkouts a store
made (each registers its staging path in ``STORE/staging/``, in a file it keeps flock'ed).
A live one is never touched: its lock cannot be taken.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from castore.errors import UnsafeInput, raise_if_full, warn_mounts_kept
from castore.fs.linux import flock, is_mount_root, renameat2
from castore.fs.tree import discard_dir, remove_contents

PATTERN = re.compile(r"\..+\.continuity-(?:copy-)?[0-9a-f]{12}\Z", re.S)
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def create(pfd: int, base: str, kind: str = "", before: Callable[[str], None] | None = None) -> tuple[str, int]:
    """Make and lock a new staging directory for ``base`` in ``pfd``: (its name, its locked fd).

    ``before(name)`` runs before the directory is made (to register it). A cleaner that took
    the lock of the new directory before us (it could not know it was new) has removed it by
    the time we get the lock: then another name is tried.
    """
    while True:
        name = f".{base}.continuity-{kind}{secrets.token_hex(6)}"
        if before is not None:
            before(name)
        os.mkdir(name, 0o700, dir_fd=pfd)
        fd = os.open(name, _DIR, dir_fd=pfd)
        flock(fd)
        if os.fstat(fd).st_nlink > 0:
            return name, fd
        os.close(fd)


def remove_if_abandoned(pfd: int, name: str, where: str) -> bool:
    """Remove the staging directory ``name`` of ``pfd`` if its owner is dead (its lock is free).

    Never crosses into a filesystem mounted inside it (warned about). ``where``: the parent's path,
    for messages. True when it was removed.
    """
    if not PATTERN.match(name):
        return False
    try:
        fd = os.open(name, _DIR, dir_fd=pfd)
    except OSError:
        return False
    try:
        if not flock(fd, wait=False):
            return False  # its checkout or copy is alive
        st = os.fstat(fd)
        try:
            now = os.lstat(name, dir_fd=pfd)
        except FileNotFoundError:
            return False
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or st.st_nlink == 0:
            return False  # renamed into place (or replaced) before we got the lock
        if is_mount_root(fd, os.fstat(pfd).st_dev):
            warn_mounts_kept([os.path.join(where, name)])
            return False
        kept = remove_contents(fd)  # under our lock: a new owner cannot take it meanwhile
        if kept:
            warn_mounts_kept([os.path.join(where, name, k) for k in kept])
            return False
        try:
            os.rmdir(name, dir_fd=pfd)
        except OSError:
            return False
        return True
    finally:
        os.close(fd)


@dataclass
class Staging:
    """A staging directory ``name`` in ``pfd``, to be renamed to ``base`` there."""

    pfd: int
    name: str
    base: str

    def open(self) -> int:
        """An fd on the staging directory (the caller closes it)."""
        return os.open(self.name, _DIR, dir_fd=self.pfd)

    def rename_into_place(self, appeared: str) -> None:
        """Rename it to ``base`` with RENAME_NOREPLACE; UnsafeInput(``appeared``) when ``base`` exists."""
        try:
            renameat2(self.pfd, self.name, self.pfd, self.base)
        except FileExistsError:
            raise UnsafeInput(appeared) from None


@contextlib.contextmanager
def staged_dir(
    pfd: int, parent: str, base: str, target: str, kind: str = "", before: Callable[[str], None] | None = None
) -> Iterator[Staging]:
    """A new, locked staging directory for ``base`` in ``pfd`` (``parent``'s fd; ``target`` its
    path), kept locked until the block ends: renamed into place by then (``rename_into_place``)
    or, when the block raises, removed (mounts below it kept and warned about; a full disk
    reported as ResourceLimit)."""
    name, lock_fd = create(pfd, base, kind, before)
    try:
        try:
            yield Staging(pfd, name, base)
        except BaseException as exc:
            warn_mounts_kept([os.path.join(parent, k) for k in discard_dir(pfd, name)])
            raise_if_full(exc, target)
            raise
    finally:
        os.close(lock_fd)  # only now: renamed into place or discarded


def sweep(pfd: int, where: str) -> int:
    """Remove every abandoned staging directory in ``pfd``; how many were removed."""
    try:
        names = [n for n in os.listdir(pfd) if PATTERN.match(n)]
    except OSError:
        return 0
    removed = 0
    for n in names:
        try:
            removed += remove_if_abandoned(pfd, n, where)
        except OSError:
            continue  # left for later (gc, or the next checkout here); never fails this one
    return removed


class Registration:
    """A store's note of one staging directory (``STORE/staging/ID``), flock'ed while its owner lives."""

    def __init__(self, store_path: str, parent: str) -> None:
        self.dir = os.path.join(store_path, "staging")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.path = os.path.join(self.dir, secrets.token_hex(8))
        self.parent = parent
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        flock(self.fd)

    def note(self, name: str) -> None:
        data = os.fsencode(os.path.join(self.parent, name))
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)


def sweep_registered(store_path: str, dry_run: bool = False) -> list[str]:
    """gc: remove the abandoned staging directories of the store's checkouts (their registration's
    lock is free: the owner died), and those registrations. The paths removed (or, dry, to remove)."""
    reg_dir = os.path.join(store_path, "staging")
    try:
        names = os.listdir(reg_dir)
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        path = os.path.join(reg_dir, n)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if not flock(fd, wait=False):
                continue  # its checkout is alive
            target = os.fsdecode(os.pread(fd, 1 << 16, 0))
            parent, name = os.path.split(target)
            done = not target
            if target and PATTERN.match(name):
                try:
                    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                except OSError:
                    done = True  # its parent is gone
                else:
                    try:
                        if not os.path.lexists(target):
                            done = True
                        elif dry_run:
                            out.append(target)
                        elif remove_if_abandoned(pfd, name, parent):
                            out.append(target)
                            done = True
                    finally:
                        os.close(pfd)
            elif target:
                done = True  # not a staging name: never acted on
            if done and not dry_run:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        finally:
            os.close(fd)
    return out
