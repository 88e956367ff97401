"""scripts/fuzz itself: a short run of every target executes mutated inputs; --replay runs a saved input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fuzz"


def _fuzz(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--tmp", str(tmp), *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_short_run_of_every_target(tmp_path: Path) -> None:
    out = tmp_path / "crashes"
    p = _fuzz(
        "--minutes",
        "0.01",
        "--target",
        "all",
        "--seed",
        "7",
        "--out",
        str(out),
        "--minimize-seconds",
        "1",
        tmp=tmp_path,
    )
    done = dict(re.findall(r"fuzz: (\w+): done: (\d+) executions", p.stdout))
    assert set(done) == {"manifest", "tar", "registry"}, p.stdout + p.stderr[-3000:]
    assert all(int(n) > 0 for n in done.values()), done
    # Real seeds go all the way through (a harness whose valid inputs fail would only find refusals).
    seeds_ok = dict(re.findall(r"fuzz: (\w+): seeds: \d+ .*'ok': (\d+)", p.stdout))
    assert set(seeds_ok) == {"manifest", "tar", "registry"}, p.stdout
    # A crash found is saved with its traceback, and the exit code says so.
    saved = sorted(out.glob("*.bin")) if out.exists() else []
    assert (p.returncode == 1) == bool(saved), (p.returncode, saved)
    assert not [n for n in os.listdir(tmp_path) if n.startswith("fuzz-")]  # sandboxes removed


def test_replay(tmp_path: Path) -> None:
    refused = tmp_path / "manifest-garbage.bin"
    refused.write_bytes(b"\x0a\x05garbage")
    p = _fuzz("--replay", str(refused), tmp=tmp_path)
    assert p.returncode == 0 and "expected CorruptManifest" in p.stdout, p.stdout + p.stderr
    unnamed = tmp_path / "whatever.bin"
    unnamed.write_bytes(b"")
    assert _fuzz("--replay", str(unnamed), tmp=tmp_path).returncode == 2
