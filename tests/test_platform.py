"""Platform behaviour that needs root: reflinks on btrfs, PID namespaces and LMDB."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from castore.checkout import checkout
from castore.ingest import ingest
from castore.materialize import Options
from castore.store import Store
from castore.testing.compare import assert_trees_equal
from castore.testing.trees import basic, write
from tests.helpers import ROOT, loop_fs, run_cli

pytestmark = pytest.mark.skipif(not ROOT, reason="needs root (mount, unshare)")


@pytest.fixture
def btrfs(tmp_path: Path) -> Iterator[Path]:
    yield from loop_fs(tmp_path, "mnt", ["mkfs.btrfs", "-q"], 256 << 20)


def _shared_extents(path: Path) -> bool:
    out = subprocess.run(["filefrag", "-v", str(path)], capture_output=True, text=True).stdout
    return "shared" in out


@pytest.mark.parametrize("link", ["reflink", "auto"])
def test_reflink_checkout_on_btrfs(btrfs: Path, link: str) -> None:
    store = Store.open(str(btrfs / "store"))
    src = btrfs / "src"
    src.mkdir()
    basic(src)
    write(src / "big.bin", b"x" * (512 << 10))
    d = ingest(store, str(src), progress=False)
    m = store.load_manifest(d)
    checkout(store, m, str(btrfs / "out"), Options(link=link), d)
    assert_trees_equal(src, btrfs / "out")
    if shutil.which("filefrag"):
        os.sync()
        assert _shared_extents(btrfs / "out/big.bin"), "reflinked file shares no extents with the store"
    # a second reflink checkout trusts the verified blob record (no re-hash) and is still exact
    checkout(store, m, str(btrfs / "out2"), Options(link=link), d)
    assert_trees_equal(src, btrfs / "out2")


def test_two_pid_1_processes_are_told_apart(tmp_path: Path) -> None:
    if not shutil.which("unshare"):
        pytest.skip("unshare missing")
    store = tmp_path / "store"
    src = tmp_path / "src"
    write(src / "f", b"x")
    assert run_cli("ingest", src, "--name", "x", store=store).returncode == 0
    holder = (
        "import sys, time, os; sys.path.insert(0, sys.argv[2])\n"
        "from castore.store import Store\n"
        "s = Store.open(sys.argv[1]); t = s.meta.env.begin()\n"
        "print(os.getpid(), flush=True); time.sleep(30)\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    p = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", holder, str(store), root],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = p.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != b"1":
            pytest.skip(f"could not run a PID-1 holder: {line!r} {p.stderr.read(300) if p.poll() else b''!r}")
        q = subprocess.run(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount-proc",
                sys.executable,
                "-m",
                "castore",
                "--store",
                str(store),
                "ls",
                "x",
            ],
            capture_output=True,
            cwd=root,
            env={**os.environ, "PYTHONPATH": root},
            timeout=60,
        )
        assert q.returncode == 5, q.stderr
        assert b"PID namespace" in q.stderr and b"Traceback" not in q.stderr
    finally:
        p.kill()
        p.wait()
    time.sleep(0.1)
    assert run_cli("ls", "x", store=store).returncode == 0
