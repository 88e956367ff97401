"""Removing and requiring directory trees: never following a symlink, never crossing a mount.

``remove_tree`` (a path), ``discard_dir`` (a name in a directory fd) and
``remove_contents`` (an open directory) work iteratively, fd-relative, and
leave any mount point below them in place (like ``rm --one-file-system``),
returning the paths they kept. ``require_dir`` checks a directory a verb is
given (ROOT, SRC) before it is opened; ``listdir``, ``fsync_dir`` and
``sync_tree`` are the small directory helpers the store, gc and fsck share.
"""

from __future__ import annotations

import errno
import os
import stat

from castore.errors import NotFound, UnsafeInput
from castore.fs.linux import is_mount_root


def fsync_dir(path: str) -> None:
    """fsync the directory ``path`` (its entries: a rename or create in it made durable)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def listdir(path: str) -> list[str]:
    """The names in ``path``; [] when it is missing or not a directory."""
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def sync_tree(top: str) -> None:
    """fsync every file and directory below ``top`` (small trees: marker backfill)."""
    for dirpath, _dirs, files in os.walk(top):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def require_dir(path: str, what: str = "") -> os.stat_result:
    """The lstat of the directory ``path``; NotFound when it does not exist, UnsafeInput when it
    is a symlink (never followed: give the real path) or not a directory. ``what``: its role in
    the messages (``ROOT``, ``SRC``)."""
    label = f"{what} " if what else ""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise NotFound(f"{path}: no such directory") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeInput(f"{path}: {label}is a symlink; refusing to follow it (give the real path)")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeInput(f"{path}: {label}is not a directory")
    return st


def remove_tree(path: str) -> list[str]:
    """Remove a directory tree without following symlinks (fd-relative, iterative).

    Mount points below it are left untouched (see ``remove_contents``); their paths are returned.
    """
    try:
        top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return []
    try:
        if is_mount_root(top):
            return [path]
        kept = remove_contents(top)
    finally:
        os.close(top)
    try:
        os.rmdir(path)
    except OSError:
        pass
    return [f"{path}/{k}" for k in kept]


def discard_dir(parent_fd: int, name: str) -> list[str]:
    """Remove the directory ``name`` in ``parent_fd`` and all below it, never following symlinks.

    Mount points at or below it are left untouched; their paths (relative to ``parent_fd``) are returned.
    """
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    except OSError:
        return []
    try:
        if is_mount_root(fd, os.fstat(parent_fd).st_dev):
            return [name]
        kept = remove_contents(fd)
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=parent_fd)
    except OSError:
        pass
    return [f"{name}/{k}" for k in kept]


def remove_contents(dir_fd: int) -> list[str]:
    """Empty the directory ``dir_fd`` (iteratively; never follows symlinks).

    Never crosses into another filesystem (like ``rm --one-file-system``): a mount point below
    ``dir_fd`` (a directory on another device, or any mount root, bind mounts included) is neither
    entered, chmod'ed nor removed, and a mounted file is not unlinked. Their paths (relative to
    ``dir_fd``) are returned; the directories holding them stay, emptied of everything else.
    """
    kept: list[str] = []
    stack: list[tuple[int, str | None, str]] = [(os.dup(dir_fd), None, "")]
    tried: set[tuple[int, int]] = set()
    while stack:
        fd, name_in_parent, rel = stack[-1]
        pushed = False
        with os.scandir(fd) as it:
            entries = list(it)
        dev = os.fstat(fd).st_dev
        for e in entries:
            child = f"{rel}/{e.name}" if rel else e.name
            if e.is_dir(follow_symlinks=False):
                try:
                    cfd = os.open(e.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError:
                    continue
                cst = os.fstat(cfd)
                if (cst.st_dev, cst.st_ino) in tried:
                    os.close(cfd)
                    continue
                tried.add((cst.st_dev, cst.st_ino))
                if cst.st_dev != dev or is_mount_root(cfd, dev):
                    os.close(cfd)
                    kept.append(child)
                    continue
                try:
                    os.fchmod(cfd, 0o700)
                except OSError:
                    pass
                stack.append((cfd, e.name, child))
                pushed = True
                break
            try:
                os.unlink(e.name, dir_fd=fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.EBUSY:  # a file bind-mounted there
                    raise
                if child not in kept:
                    kept.append(child)
        if pushed:
            continue
        os.close(fd)
        stack.pop()
        if stack and name_in_parent is not None:
            try:
                os.rmdir(name_in_parent, dir_fd=stack[-1][0])
            except OSError:
                pass
    return kept
