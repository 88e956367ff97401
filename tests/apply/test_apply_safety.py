"""apply in place never writes, chmods, chowns or sets xattrs through a symlink, even under a race."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import pytest

from castore.apply.run import ApplyOptions, apply_tree
from castore.errors import CastoreError
from castore.fs.linux import RENAME_EXCHANGE, renameat2
from castore.ingest import ingest
from castore.store import Store
from castore.testing.compare import snapshot
from castore.verify import verify_tree

ITERATIONS = 60


def _outside(base: Path) -> Path:
    out = base / "outside"
    out.mkdir()
    for n in ("a", "b", "c", "new"):
        (out / n).write_bytes(b"sentinel " + n.encode() + b"\n")
        os.chmod(out / n, 0o600)
        os.setxattr(out / n, "user.sentinel", b"1")
    (out / "sub").mkdir()
    (out / "sub" / "x").write_bytes(b"deep sentinel\n")
    os.chmod(out, 0o751)
    for p in sorted(out.rglob("*"), reverse=True):
        os.utime(p, ns=(1, 1))
    os.utime(out, ns=(2, 2))
    return out


def _fingerprint(out: Path) -> object:
    st = os.lstat(out)
    return (
        snapshot(out),
        stat.S_IMODE(st.st_mode),
        st.st_uid,
        st.st_gid,
        st.st_mtime_ns,
        tuple(sorted(os.listxattr(out))),
    )


def _wanted(base: Path, outside: Path) -> Path:
    w = base / "wanted"
    (w / "d" / "sub").mkdir(parents=True)
    for n in ("a", "b", "c"):
        (w / "d" / n).write_bytes(b"version 2 of " + n.encode() * 100)
        os.chmod(w / "d" / n, 0o640)
        os.setxattr(w / "d" / n, "user.v", b"2")
    (w / "d" / "new").write_bytes(b"brand new\n")
    (w / "d" / "sub" / "x").write_bytes(b"v2\n")
    os.chmod(w / "d", 0o750)
    os.symlink(str(outside), w / "s")
    return w


def _current(root: Path, outside: Path) -> None:
    (root / "d" / "sub").mkdir(parents=True)
    for n in ("a", "b", "c"):
        (root / "d" / n).write_bytes(b"version 1 of " + n.encode())
    (root / "d" / "sub" / "x").write_bytes(b"v1\n")
    os.symlink(str(outside), root / "s")


def _swapper(root: Path) -> int:
    pid = os.fork()
    if pid == 0:  # child: swap d and s as fast as possible until killed
        try:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
            while True:
                try:
                    renameat2(fd, "d", fd, "s", RENAME_EXCHANGE)
                except OSError:
                    pass
        finally:
            os._exit(0)
    return pid


@pytest.mark.slow
def test_rename_exchange_race(tmp_path: Path, store: Store) -> None:
    outside = _outside(tmp_path)
    before = _fingerprint(outside)
    digest = ingest(store, str(_wanted(tmp_path, outside)), progress=False)
    want = store.load_manifest(digest)
    outcomes: dict[str, int] = {}
    for i in range(ITERATIONS):
        root = tmp_path / f"root{i}"
        root.mkdir()
        _current(root, outside)
        pid = _swapper(root)
        try:
            time.sleep(0.002)
            try:
                apply_tree(str(root), want, store=store, opts=ApplyOptions(delete=True, note=lambda _m: None))
                outcomes["ok"] = outcomes.get("ok", 0) + 1
            except (CastoreError, OSError) as exc:
                name = type(exc).__name__ if type(exc) is not OSError else f"OSError {exc}"
                outcomes[name] = outcomes.get(name, 0) + 1
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert _fingerprint(outside) == before, f"iteration {i}: something outside ROOT changed"
        # Once the race is over, a rerun converges.
        apply_tree(str(root), want, store=store, opts=ApplyOptions(delete=True, note=lambda _m: None))
        assert verify_tree(str(root), want) == []
        assert _fingerprint(outside) == before
    assert sum(outcomes.values()) == ITERATIONS
    print("race outcomes:", outcomes)


def test_root_symlink_refused(tmp_path: Path, store: Store, cli) -> None:  # noqa: ANN001
    real = tmp_path / "real"
    real.mkdir()
    (real / "f").write_bytes(b"x")
    digest = cli("ingest", real, check=True).stdout.decode().strip()
    link = tmp_path / "link"
    os.symlink(real, link)
    p = cli("apply", link, digest)
    assert p.returncode == 3
    assert b"symlink" in p.stderr and p.stderr.count(b"\n") == 1


def test_symlinked_dir_replaced_not_followed(tmp_path: Path, store: Store) -> None:
    outside = _outside(tmp_path)
    before = _fingerprint(outside)
    digest = ingest(store, str(_wanted(tmp_path, outside)), progress=False)
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(str(outside), root / "d")  # where the manifest wants a directory
    notes: list[str] = []
    apply_tree(str(root), store.load_manifest(digest), store=store, opts=ApplyOptions(note=notes.append))
    assert any("/d: replacing a symlink" in n for n in notes)
    assert _fingerprint(outside) == before
    assert verify_tree(str(root), store.load_manifest(digest)) == []


def test_symlink_leaf_metadata_not_followed(tmp_path: Path, store: Store) -> None:
    """A file in ROOT replaced by a symlink to outside: apply replaces the link, never chmods through it."""
    outside = _outside(tmp_path)
    before = _fingerprint(outside)
    digest = ingest(store, str(_wanted(tmp_path, outside)), progress=False)
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    for n in ("a", "b", "c"):
        os.symlink(str(outside / n), root / "d" / n)
    apply_tree(str(root), store.load_manifest(digest), store=store)
    assert _fingerprint(outside) == before
    assert verify_tree(str(root), store.load_manifest(digest)) == []
