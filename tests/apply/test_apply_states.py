"""apply converges every fstest-style state to every other; verify -> apply -> verify is the repair loop."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from castore.apply.run import ApplyOptions, apply_tree
from castore.ingest import ingest
from castore.store import Store
from castore.testing.states import STATES, state
from castore.verify import VerifyOptions, verify_tree

NAMES = list(STATES)


@pytest.fixture(scope="module")
def stocked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, dict[str, str], Path]:
    base = tmp_path_factory.mktemp("states")
    store = Store.open(str(base / "store"))
    digests = {n: ingest(store, str(state(base / "src" / n, n)), progress=False) for n in NAMES}
    return store, digests, base


@pytest.mark.parametrize(("a", "b"), list(itertools.product(NAMES, NAMES)))
def test_state_to_state(stocked: tuple[Store, dict[str, str], Path], tmp_path: Path, a: str, b: str) -> None:
    store, digests, _ = stocked
    root = state(tmp_path / "root", a)
    want = store.load_manifest(digests[b])
    report = apply_tree(
        str(root), want, store=store, opts=ApplyOptions(delete=True, note=lambda _m: None), manifest_digest=digests[b]
    )
    assert verify_tree(str(root), want, VerifyOptions()) == []
    if a == b:
        assert report.created == report.replaced == report.deleted == report.linked == 0
        assert report.metadata == 0
    # A second run finds nothing to do.
    again = apply_tree(str(root), want, store=store, opts=ApplyOptions(delete=True))
    assert (again.created, again.replaced, again.deleted, again.linked, again.metadata) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize("b", ["basic", "updates", "hardlinks"])
def test_without_delete_keeps_extras(stocked: tuple[Store, dict[str, str], Path], tmp_path: Path, b: str) -> None:
    store, digests, _ = stocked
    root = state(tmp_path / "root", "basic")
    (root / "extra.txt").write_bytes(b"mine\n")
    want = store.load_manifest(digests[b])
    apply_tree(str(root), want, store=store)
    diffs = verify_tree(str(root), want)
    assert (root / "extra.txt").read_bytes() == b"mine\n"
    assert all(d.attr == "extra" for d in diffs), diffs
    assert "/extra.txt" in {d.path for d in diffs}


def test_only_changes_what_differs(stocked: tuple[Store, dict[str, str], Path], tmp_path: Path) -> None:
    store, digests, _ = stocked
    root = state(tmp_path / "root", "basic")
    keep = {p: os.lstat(root / p).st_ino for p in ("etc/hosts", "usr/bin/suid", "var/lib/app/data")}
    tool_ino = os.lstat(root / "usr/bin/tool").st_ino
    report = apply_tree(str(root), store.load_manifest(digests["updates"]), store=store)
    for p, ino in keep.items():
        assert os.lstat(root / p).st_ino == ino or p == "var/lib/app/data"
    assert os.lstat(root / "usr/bin/tool").st_ino != tool_ino  # content changed: new inode, renamed in
    assert report.created == 1  # etc/new
    assert report.unchanged >= 3


def test_cli_repair_loop(stocked: tuple[Store, dict[str, str], Path], tmp_path: Path, cli) -> None:  # noqa: ANN001
    src = state(tmp_path / "src", "basic")
    digest = cli("ingest", src, "--name", "base", check=True).stdout.decode().strip()
    root = state(tmp_path / "root", "types")
    assert cli("verify", root, "base").returncode == 1
    p = cli("apply", root, "base", "--delete", "-v")
    assert p.returncode == 0, p.stderr
    assert b"replacing a symlink" in p.stderr  # /usr was a symlink to /etc
    assert cli("verify", root, digest).returncode == 0
    # corrupt, verify finds it, apply repairs it
    (root / "etc/hostname").write_bytes(b"tampered\n")
    os.chmod(root / "usr/bin", 0o700)
    v = cli("verify", root, "base")
    assert v.returncode == 1 and b"/etc/hostname" in v.stdout and b"/usr/bin" in v.stdout
    assert cli("apply", root, "base", "--rehash").returncode == 0
    assert cli("verify", root, "base").returncode == 0


def test_whiteouts_delete(tmp_path: Path) -> None:
    from castore.manifest.model import Directory, Manifest, RegularFile, Whiteout

    root = state(tmp_path / "root", "basic")
    empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    m = Manifest.of(
        [
            Directory(paths=("/etc",)),
            Whiteout(paths=("/etc/hosts",)),
            Whiteout(paths=("/usr",)),
            RegularFile(paths=("/etc/e",), size=0, digest=empty),
        ]
    )
    apply_tree(str(root), m, source=str(tmp_path))
    assert not (root / "etc/hosts").exists() and not (root / "usr").exists()
    assert (root / "etc/hosts.allow").exists() and (root / "etc/e").exists()  # no --delete: extras stay


def test_link_hardlink_mode(stocked: tuple[Store, dict[str, str], Path], tmp_path: Path) -> None:
    store, digests, _ = stocked
    root = state(tmp_path / "root", "deletions")
    want = store.load_manifest(digests["basic"])
    apply_tree(str(root), want, store=store, opts=ApplyOptions(delete=True, link="hardlink"))
    assert verify_tree(str(root), want) == []
    assert os.lstat(root / "usr/bin/tool").st_nlink >= 2  # shares a store object
