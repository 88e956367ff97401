"""Progress bars under a pseudo-terminal: fsck, push and pull draw a bar with totals, rate and ETA;
apply's total is the bytes it will write, not the whole tree; -q and a non-terminal stay silent."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from tests.helpers import run_cli, run_pty

MIB = 1 << 20


def _tree(root: Path, n: int = 6) -> None:
    root.mkdir()
    for i in range(n):
        (root / f"f{i}").write_bytes(os.urandom(MIB))


def _cli(store: Path) -> list[str]:
    return [sys.executable, "-m", "castore", "--store", str(store)]


def _bar(out: bytes, label: bytes) -> bool:
    """A bar was drawn to its end: the label, a percentage and a rate (click adds the ETA while it runs)."""
    return label in out and b"100%" in out and b"/s" in out


def test_fsck_bar_counts_blobs(tmp_path: Path) -> None:
    st = tmp_path / "store"
    _tree(tmp_path / "src")
    run_cli("ingest", tmp_path / "src", "--name", "a", store=st, check=True)
    rc, out = run_pty([*_cli(st), "fsck", "--read-data"])
    assert rc == 0 and _bar(out, b"fsck") and b"blobs" in out, out
    total = re.findall(rb"(\d+)/(\d+) blobs", out)
    assert total and total[-1][0] == total[-1][1] and int(total[-1][1]) >= 7, out  # 6 files + the manifest
    rc, out = run_pty([*_cli(st), "-q", "fsck"])
    assert rc == 0 and b"store sound" in out and not re.search(rb"\d+/\d+ blobs", out) and b"%" not in out, out
    p = run_cli("fsck", store=st, check=True)  # not a terminal: no bar
    assert b"\r" not in p.stderr and b"%" not in p.stderr


def test_apply_total_is_the_work_left(tmp_path: Path) -> None:
    st = tmp_path / "store"
    _tree(tmp_path / "src")
    run_cli("ingest", tmp_path / "src", "--name", "a", store=st, check=True)
    ap = tmp_path / "ap"
    ap.mkdir()
    rc, out = run_pty([*_cli(st), "apply", str(ap), "a"])
    assert rc == 0 and _bar(out, b"apply") and b"6.0 MiB/6.0 MiB" in out, out
    os.unlink(ap / "f0")
    (ap / "f1").write_bytes(b"changed")
    rc, out = run_pty([*_cli(st), "apply", str(ap), "a"])
    assert rc == 0 and b"2.0 MiB/2.0 MiB" in out and b"/6.0 MiB" not in out, out  # two files (not "156.0 MiB/s")
    rc, out = run_pty([*_cli(st), "apply", str(ap), "a"])
    assert rc == 0 and b"MiB/" not in out and b"%" not in out, out  # nothing to write: no bar


def test_push_and_pull_bars(tmp_path: Path, repo: str) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _tree(tmp_path / "src")
    run_cli("ingest", tmp_path / "src", "--name", "t", store=a, check=True)
    rc, out = run_pty([*_cli(a), "push", "t", f"{repo}:v1"])
    assert rc == 0 and _bar(out, b"push") and b"6.0 MiB/6.0 MiB" in out, out
    run_cli("init", store=b, check=True)
    rc, out = run_pty([*_cli(b), "pull", f"{repo}:v1", "--name", "t"])
    assert rc == 0 and _bar(out, b"pull") and b"6.0 MiB/6.0 MiB" in out, out
    rc, out = run_pty([*_cli(b), "-q", "pull", f"{repo}:v1", "--name", "t2"])
    assert rc == 0 and b"pull" not in out and b"%" not in out, out
    p = run_cli("push", "t", f"{repo}:v2", store=a, check=True)  # not a terminal: no bar
    assert b"\r" not in p.stderr and b"%" not in p.stderr
