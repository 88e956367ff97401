"""Real ENOSPC on a small tmpfs (root can mount one; skipped otherwise)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from castore.testing.trees import make_tree


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {p.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def big_tree(root: Path) -> Path:
    files = {f"f{i}": os.urandom(1 << 20) for i in range(12)}  # 12 MiB: more than the tmpfs holds
    files["small"] = b"small\n"
    return make_tree(root, files)


def assert_usable(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = cli("fsck", "--read-data", "--json")
    assert p.returncode == 0, p.stdout
    assert {f["kind"] for f in json.loads(p.stdout)["findings"]} <= {"orphan"}
    small = make_tree(tmp_path / f"ok-{os.urandom(3).hex()}", {"a": b"fits\n"})
    cli("ingest", small, "--name", "small", check=True)
    out = tmp_path / f"out-{os.urandom(3).hex()}"
    cli("checkout", "small", out, check=True)
    cli("verify", out, "small", check=True)
    cli("gc", "--grace", "0", check=True)


def test_enospc_during_ingest(small_fs: Path, tmp_path: Path) -> None:
    store = small_fs / "store"

    def cli(*a: object, check: bool = False) -> subprocess.CompletedProcess[bytes]:
        p = subprocess.run([sys.executable, "-m", "castore", "--store", str(store), *map(str, a)], capture_output=True)
        assert not check or p.returncode == 0, p.stderr
        assert b"Traceback" not in p.stderr
        return p

    cli("ingest", make_tree(tmp_path / "first", {"x": b"before\n"}), "--name", "first", check=True)
    p = cli("ingest", big_tree(tmp_path / "big"), "--name", "big")
    assert p.returncode == 6, p.stderr
    assert p.stderr.startswith(b"continuity: error:") and b"space" in p.stderr
    assert b"big" not in cli("list", check=True).stdout
    assert not os.listdir(store / "tmp")  # the lease's staged temps are gone
    assert_usable(cli, tmp_path)
    cli("checkout", "first", tmp_path / "first-out", check=True)


def test_enospc_during_checkout(cli, small_fs: Path, tmp_path: Path) -> None:  # type: ignore
    cli("ingest", big_tree(tmp_path / "big"), "--name", "big", check=True)
    target = small_fs / "target"
    for link in ("copy", "hardlink"):
        p = cli("checkout", "--link", link, "big", target)
        assert p.returncode == 6, p.stderr
        assert b"continuity: error:" in p.stderr and b"space" in p.stderr
        assert not target.exists()
        assert not os.listdir(small_fs)  # the staging dir was discarded too
    assert_usable(cli, tmp_path)


def test_enospc_in_the_forked_checkout_writer(cli, small_fs: Path, tmp_path: Path) -> None:  # type: ignore
    """Enough files for checkout to fork a second writer (castore.checkout.PARALLEL_MIN): the
    child's ENOSPC comes back through its pipe as the same one-line error and exit 6."""
    files = {f"d{i // 100}/f{i}": os.urandom(6000) for i in range(2400)}  # ~14 MiB of blocks
    cli("ingest", make_tree(tmp_path / "many", files), "--name", "many", check=True)
    target = small_fs / "target"
    for link in ("copy", "hardlink"):
        p = cli("checkout", "--link", link, "many", target)
        assert p.returncode == 6, p.stderr
        errors = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith(b"continuity: note:")]
        assert len(errors) == 1, p.stderr and errors[0].startswith(b"continuity: error:") and b"space" in errors[0]
        assert not target.exists() and not os.listdir(small_fs)
    assert_usable(cli, tmp_path)
