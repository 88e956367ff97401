"""Pictures: `stats --plot FILE` (store growth and dedup) and scripts/bench/plot.py (benchmark charts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import run_cli

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"

pytest.importorskip("matplotlib")


def no_matplotlib(tmp_path: Path) -> dict[str, str]:
    """An environment where `import matplotlib` fails (a shadowing package that raises ImportError)."""
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    return {**os.environ, "PYTHONPATH": f"{shadow.parent}:{REPO}"}


def test_stats_plot_draws_growth_and_dedup(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    st = tmp_path / "store"
    for i in range(3):
        (src / f"f{i}").write_bytes(os.urandom(50_000))
        run_cli("ingest", src, "--name", "web", store=st, check=True)
    out = tmp_path / "growth.png"
    doc = json.loads(run_cli("stats", "--plot", out, "--json", store=st, check=True).stdout)
    assert out.read_bytes()[:8] == PNG
    assert doc["versions"] == 3 and doc["logical_size"] == 300_000 and doc["stored_size"] == 150_000
    assert doc["dedup_ratio"] == 2.0
    p = run_cli("stats", "--plot", tmp_path / "again.png", store=st, env=no_matplotlib(tmp_path))
    assert p.returncode == 1 and p.stderr.count(b"\n") == 1 and b"matplotlib" in p.stderr
    assert not (tmp_path / "again.png").exists()


def test_bench_plot_draws_the_committed_charts(tmp_path: Path) -> None:
    script = REPO / "scripts" / "bench" / "plot.py"
    p = subprocess.run(
        [sys.executable, script, "--out", tmp_path, "--dump-json", tmp_path / "c.json"], capture_output=True, check=True
    )
    made = sorted(x.name for x in tmp_path.glob("*.png"))
    assert made == ["build.png", "store.png", "tar-apply.png"], p.stdout
    charts = json.loads((tmp_path / "c.json").read_text())["charts"]
    store = next(c for c in charts if c["file"] == "store.png")
    assert {"ours", "ostree commit", "cp -a+sync"} <= set(store["groups"][0]["bars"])
    page = (REPO / "docs" / "benchmarks.md").read_text()
    for name in made:  # committed and shown on the benchmarks page
        assert (REPO / "docs" / "benchmarks" / name).read_bytes()[:8] == PNG
        assert f"(benchmarks/{name})" in page
    again = tmp_path / "again"
    subprocess.run(
        [sys.executable, script, "--results", tmp_path / "c.json", "--out", again], check=True, capture_output=True
    )
    assert sorted(x.name for x in again.glob("*.png")) == made
    p = subprocess.run(
        [sys.executable, script, "--out", tmp_path / "none"], capture_output=True, env=no_matplotlib(tmp_path)
    )
    assert p.returncode == 1 and b"matplotlib" in p.stderr and b"Traceback" not in p.stderr
