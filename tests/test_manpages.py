"""Man pages come from the CLI (scripts/manpages) and the committed ones are current; completion works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import run_cli

REPO = Path(__file__).resolve().parents[1]


def test_committed_man_pages_are_current(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "manpages"), str(tmp_path)],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*.1")}
    committed = {p.name: p.read_text() for p in (REPO / "docs" / "man").glob("*.1")}
    assert "continuity-ingest.1" in fresh and "continuity.1" in fresh
    assert fresh == committed, "run scripts/manpages"
    assert "Examples:" in fresh["continuity-checkout.1"]


def test_completion_offers_catalog_names(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    st = tmp_path / "store"
    for name in ("web", "web-old", "db"):
        run_cli("ingest", src, "--name", name, store=st, check=True)
    env = {
        **os.environ,
        "_CONTINUITY_COMPLETE": "bash_complete",
        "COMP_WORDS": f"continuity --store {st} checkout we",
        "COMP_CWORD": "4",
    }
    p = subprocess.run(
        [sys.executable, "-c", "from castore.cli import main; main()"], env=env, capture_output=True, check=True
    )
    assert p.stdout.decode().split() == ["plain,web", "plain,web-old"]
    for shell in ("bash", "zsh", "fish"):
        p = subprocess.run(
            [sys.executable, "-c", "from castore.cli import main; main()"],
            capture_output=True,
            env={**os.environ, "_CONTINUITY_COMPLETE": f"{shell}_source"},
            check=True,
        )
        assert b"_CONTINUITY_COMPLETE" in p.stdout, shell
