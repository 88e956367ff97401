"""Crashes scripts/fuzz found, minimized: each must end in castore's own error (or succeed), never another
exception. (Found 2026-12-07; see docs/design.md, Data-safety guarantees.)"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

from castore.checkout import checkout
from castore.digest import EMPTY_DIGEST
from castore.errors import CastoreError
from castore.manifest import Directory, Manifest, NamedPipe, RegularFile, Symlink, dumps
from castore.materialize import Options
from castore.store import Store
from castore.tar.importer import ingest_tar
from tests.helpers import run_cli


def _only_our_errors(fn: Callable[[], object]) -> bool:
    """True when ``fn`` succeeded, False when it raised a CastoreError; anything else propagates."""
    try:
        fn()
    except CastoreError:
        return False
    return True


def _checkout(store: Store, m: Manifest, target: Path) -> bool:
    """Checkout without a store: these manifests have no content (an empty file needs no blob)."""
    return _only_our_errors(lambda: checkout(None, m, str(target), Options(note=lambda _: None)))


def test_kernel_refused_capability_xattr(store: Store, tmp_path: Path) -> None:
    """manifest-ef20aedeea00: an empty security.capability value: setxattr says EINVAL (was OSError)."""
    m = Manifest.of([RegularFile(paths=("/f",), size=0, digest=EMPTY_DIGEST, xattrs=(("security.capability", b""),))])
    _checkout(store, m, tmp_path / "t")


def test_kernel_refused_capability_xattr_on_a_fifo(store: Store, tmp_path: Path) -> None:
    """manifest-428647ec1a0f: security.capability on a FIFO: EINVAL/EPERM (was OSError)."""
    m = Manifest.of([NamedPipe(paths=("/p",), xattrs=(("security.capability", b""),))])
    _checkout(store, m, tmp_path / "t")


def test_kernel_refused_capability_xattr_on_a_directory(store: Store, tmp_path: Path) -> None:
    """registry-5b2f2358b39e: the same on a directory (set last, with its metadata), reached through `pull`
    of a continuity manifest carrying it (was OSError)."""
    m = Manifest.of([Directory(paths=("/d",), xattrs=(("security.capability", b""),))])
    _checkout(store, m, tmp_path / "t")


def test_user_xattr_on_a_symlink(store: Store, tmp_path: Path) -> None:
    """manifest-5dbf5a102df3: Linux refuses user.* xattrs on symlinks with EPERM (was PermissionError)."""
    m = Manifest.of([Symlink(paths=("/l",), target="x", xattrs=(("user.a", b""),))])
    _checkout(store, m, tmp_path / "t")


def test_user_xattr_on_a_symlink_from_a_tar(store: Store, tmp_path: Path) -> None:
    """tar-348d57ad0ce5: the same through `ingest` of a tar whose symlink carries SCHILY.xattr.user.*."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("l")
        ti.type, ti.linkname, ti.pax_headers = tarfile.SYMTYPE, "x", {"SCHILY.xattr.user.a": "v"}
        tf.addfile(ti)
    src = tmp_path / "in.tar"
    src.write_bytes(buf.getvalue())

    def run() -> None:  # refused at ingest now (InvalidManifest, exit 3); either way only our errors
        digest = ingest_tar(store, str(src))
        checkout(store, None, str(tmp_path / "t"), Options(note=lambda _: None), manifest_digest=digest)

    _only_our_errors(run)


def test_deep_path_within_path_max(store: Store, tmp_path: Path) -> None:
    """manifest-c171408cb3fe: 3000 levels (6 KB, under PATH_MAX) hit Python's recursion limit in
    checkout's ensure_dir (was RecursionError)."""
    deep = "/a" * 3000 + "/f"
    m = Manifest.of([RegularFile(paths=(deep,), size=0, digest=EMPTY_DIGEST)])
    if _checkout(store, m, tmp_path / "t"):
        fd = os.open(tmp_path / "t", os.O_RDONLY | os.O_DIRECTORY)
        try:
            for _ in range(3000):
                nfd = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = nfd
            os.stat("f", dir_fd=fd)
        finally:
            os.close(fd)


def test_user_xattr_on_a_symlink_through_the_cli(tmp_path: Path) -> None:
    """The same cause in `checkout` and its sibling `apply` (apply_changes sets xattrs itself): the kernel's
    EPERM came out as exit 1 naming /proc/self/fd/N, not as a refusal (3) or a skipped xattr (0)."""
    mf = tmp_path / "m"
    mf.write_bytes(dumps(Manifest.of([Symlink(paths=("/l",), target="x", xattrs=(("user.a", b""),))])))
    (tmp_path / "root").mkdir()
    for args in (("checkout", mf, tmp_path / "t"), ("apply", tmp_path / "root", mf)):
        p = run_cli(*args, store=tmp_path / "store")
        assert p.returncode in (0, 3), (args[0], p.returncode, p.stderr)
        assert b"/proc/self/fd" not in p.stderr, p.stderr
