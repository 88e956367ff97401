"""Where apply's file content comes from, and copying it verified.

Sources: the store (handled by castore.materialize.Writer), a directory
(``DirSource``: files looked up by manifest path, never through a symlink),
or a tar stream staged into a private directory (``stage_tar`` +
``StagedSource``). ``copy_verified`` copies one file's bytes (reflink, then
copy_file_range, then read/write), hashing them unless told not to.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat

from castore import fs
from castore.errors import IntegrityError, NotFound, UnsafeInput
from castore.manifest.model import RegularFile


class Source:
    """Where file content comes from. ``open`` gives (fd at offset 0, already verified) or None."""

    def open(self, r: RegularFile) -> tuple[int, bool] | None:
        return None

    def close(self) -> None:
        return None


class DirSource(Source):
    """A directory: files looked up by the manifest path(s), never through a symlink."""

    def __init__(self, path: str) -> None:
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"{path}: no such source directory") from None
        except NotADirectoryError:
            raise UnsafeInput(f"{path}: source is not a directory") from None

    def lookup(self, r: RegularFile) -> tuple[int, str] | None:
        for p in r.paths:
            try:
                fd = fs.open_beneath(self.fd, p[1:], os.O_RDONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
                    continue
                raise
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_size == r.size:
                return fd, p
            os.close(fd)
        return None

    def open(self, r: RegularFile) -> tuple[int, bool] | None:
        found = self.lookup(r)
        return None if found is None else (found[0], False)

    def close(self) -> None:
        os.close(self.fd)


class StagedSource(Source):
    """Content staged (verified) in a private directory inside ROOT: the tar source."""

    def __init__(self, dir_fd: int, staged: dict[str, str]) -> None:
        self.dir_fd = dir_fd
        self.staged = staged  # digest -> name in dir_fd

    def open(self, r: RegularFile) -> tuple[int, bool] | None:
        name = self.staged.get(r.digest)
        if name is None:
            return None
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dir_fd), True


def _norm_member(name: str) -> str | None:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/" + "/".join(parts)


def stage_tar(tar_path: str, stage_fd: int, needed: dict[str, RegularFile], verify: bool) -> dict[str, str]:
    """Stream ``tar_path`` once; keep the content of every needed file, verified by digest.

    ``needed`` maps manifest paths to the resources whose content is missing.
    Members are only lookup keys (matched by path, or by size and digest):
    nothing is written under a member's name.
    """
    import tarfile  # only the tar source needs it (keeps the CLI's start-up short)

    want_digests = {r.digest for r in needed.values()}
    sizes = {r.size for r in needed.values()}
    staged: dict[str, str] = {}
    try:
        tf = tarfile.open(tar_path, "r|*")
    except FileNotFoundError:
        raise NotFound(f"{tar_path}: no such tar file") from None
    except tarfile.TarError as exc:
        raise UnsafeInput(f"{tar_path}: not a readable tar stream ({exc})") from None
    try:
        with tf:
            for m in tf:
                if not m.isreg() or len(staged) == len(want_digests):
                    continue
                path = _norm_member(m.name)
                r = needed.get(path) if path else None
                if r is not None and r.digest in staged:
                    continue
                if r is None and m.size not in sizes:
                    continue
                src = tf.extractfile(m)
                if src is None:
                    continue
                name = f"s{len(staged)}-{secrets.token_hex(4)}"
                fd = os.open(
                    name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=stage_fd
                )
                h = hashlib.sha256()
                try:
                    while True:
                        data = src.read(fs.READ)
                        if not data:
                            break
                        h.update(data)
                        fs.write_all(fd, data)
                finally:
                    os.close(fd)
                got = "sha256:" + h.hexdigest()
                if got in want_digests and got not in staged:
                    staged[got] = name
                else:
                    if r is not None and verify and got != r.digest:
                        raise IntegrityError(
                            f"{tar_path}: member {m.name!r}: digest mismatch: expected {r.digest}, got {got}"
                        )
                    os.unlink(name, dir_fd=stage_fd)
    except (tarfile.TarError, EOFError) as exc:
        raise UnsafeInput(f"{tar_path}: corrupt tar stream ({exc})") from None
    return staged


# ------------------------------------------------------------------ content


def digest_or_size(fd: int, size: int) -> str:
    """The digest of ``fd``'s content, or "size N" when it is not ``size`` bytes long."""
    digest, got = fs.hash_fd(fd, expect=size)
    return digest if got == size else f"size {got}"


def copy_verified(src_fd: int, out_fd: int, r: RegularFile, verify: bool, can_reflink: list[bool]) -> None:
    """Copy ``r.size`` bytes of src into the empty ``out_fd``; check the digest when ``verify``.

    reflink, then copy_file_range, then read/write; holes of ``r`` are kept.
    Raises IntegrityError on a mismatch.
    """
    if can_reflink[0] and not r.holes:
        try:
            fs.reflink(src_fd, out_fd)
            if verify:
                got = digest_or_size(out_fd, r.size)
                if got != r.digest:
                    raise IntegrityError(f"{r.path}: digest mismatch: expected {r.digest}, got {got}")
            return
        except OSError as exc:
            if exc.errno not in fs.COPY_FALLBACK:
                raise
            can_reflink[0] = False
    if not verify and not r.holes:
        fs.copy_fd(src_fd, out_fd, r.size)
        return
    h = hashlib.sha256()
    ranges = fs.data_ranges(r.size, r.holes) if r.holes else [(0, r.size)]
    pos = 0
    while True:
        data = os.pread(src_fd, fs.READ * 4, pos)
        if not data:
            break
        h.update(data)
        fs.pwrite_sparse(out_fd, data, pos, ranges)
        pos += len(data)
    if r.holes:
        os.ftruncate(out_fd, r.size)
    got = "sha256:" + h.hexdigest() if pos == r.size else f"size {pos}"
    if verify and got != r.digest:
        raise IntegrityError(f"{r.path}: digest mismatch: expected {r.digest}, got {got}")
