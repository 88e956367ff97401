"""Staging directories of killed checkouts and copies are removed later, only when provably
abandoned (their owner's flock is gone); a live one is never touched (issue 11, item 14)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import run_cli


def _tree(src: Path, n: int) -> None:
    (src / "sub").mkdir(parents=True)
    for i in range(n):
        (src / "sub" / f"f{i}").write_bytes(b"content %d" % i)


def _staging(parent: Path) -> list[str]:
    return sorted(n for n in os.listdir(parent) if ".continuity-" in n)


def _stopped_checkout(store: Path, target: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A real checkout, SIGSTOPped once its staging directory exists (it keeps its lock)."""
    for _ in range(20):
        proc = subprocess.Popen(
            [sys.executable, "-m", "castore", "--store", str(store), "checkout", "big", str(target)],
            stderr=subprocess.PIPE,
        )
        before = set(_staging(target.parent))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            new = set(_staging(target.parent)) - before
            # Stopped while it writes files (it holds no store lock then, only its staging dir's).
            if (
                new
                and len(
                    os.listdir(target.parent / next(iter(new)) / "sub")
                    if os.path.isdir(target.parent / next(iter(new)) / "sub")
                    else ()
                )
                > 10
            ):
                os.kill(proc.pid, signal.SIGSTOP)
                if proc.poll() is None and os.path.isdir(target.parent / next(iter(new))):
                    return proc, next(iter(new))
                os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.0005)
        proc.wait()
        for p in (target,):
            if p.exists():
                subprocess.run(["rm", "-rf", str(p)], check=True)
    raise AssertionError("could not catch a checkout mid-way")


def test_killed_staging_dirs_go_live_ones_stay(tmp_path: Path) -> None:
    store = tmp_path / "store"
    src = tmp_path / "src"
    _tree(src, 3000)
    assert run_cli("ingest", src, "--name", "big", store=store).returncode == 0
    out = tmp_path / "out"
    out.mkdir()
    # A copy and a checkout killed mid-way leave their staging directories; the next one into
    # the same parent removes them (here the checkout, before it was killed, the copy's).
    p = run_cli("copy", src, out / "b", store=store, env={"CONTINUITY_CRASHPOINT": "copy-before-links"})
    assert p.returncode == -signal.SIGKILL
    [copy_stale] = _staging(out)
    assert ".continuity-copy-" in copy_stale
    (out / "x").mkdir()
    os.rename(out / copy_stale, out / "x" / copy_stale)  # kept aside for the checkout below
    p = run_cli("checkout", "big", out / "a", store=store, env={"CONTINUITY_CRASHPOINT": "checkout-mid-files"})
    assert p.returncode == -signal.SIGKILL
    os.rename(out / "x" / copy_stale, out / copy_stale)
    os.rmdir(out / "x")
    stale = _staging(out)
    assert len(stale) == 2, stale
    # A live checkout (stopped mid-way, its lock held) beside them.
    live_proc, live = _stopped_checkout(store, out / "live")
    try:
        before = sorted(os.listdir(out / live))
        p = run_cli("checkout", "big", out / "c", store=store)
        assert p.returncode == 0, p.stderr.decode()
        assert _staging(out) == [live]  # the two stale ones are gone, the live one is there
        assert sorted(os.listdir(out / live)) == before
        p = run_cli("gc", store=store)
        assert p.returncode == 0, p.stderr.decode()
        assert _staging(out) == [live]
    finally:
        os.kill(live_proc.pid, signal.SIGCONT)
        assert live_proc.wait(timeout=120) == 0, live_proc.stderr.read().decode() if live_proc.stderr else ""
    assert _staging(out) == []
    assert len(os.listdir(out / "live" / "sub")) == 3000
    assert sorted(os.listdir(out)) == ["c", "live"]


def test_gc_removes_a_killed_checkouts_staging_dir(tmp_path: Path) -> None:
    store = tmp_path / "store"
    src = tmp_path / "src"
    _tree(src, 3000)
    assert run_cli("ingest", src, "--name", "big", store=store).returncode == 0
    out = tmp_path / "out"
    out.mkdir()
    live_proc, live = _stopped_checkout(store, out / "live")
    try:
        p = run_cli("checkout", "big", out / "a", store=store, env={"CONTINUITY_CRASHPOINT": "checkout-mid-files"})
        assert p.returncode == -signal.SIGKILL
        [stale] = [n for n in _staging(out) if n != live]
        p = run_cli("gc", "--dry-run", store=store)
        assert p.returncode == 0, p.stderr.decode()
        assert _staging(out) == sorted([stale, live])
        p = run_cli("gc", store=store)
        assert p.returncode == 0, p.stderr.decode()
        assert _staging(out) == [live]
        assert os.listdir(store / "staging") != []  # the live checkout's registration stays
    finally:
        os.kill(live_proc.pid, signal.SIGCONT)
        assert live_proc.wait(timeout=120) == 0
    assert _staging(out) == []
    assert os.listdir(store / "staging") == []
