"""Shared fixtures: a fresh store, the CLI runner, tree builders and capability probes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from castore.store import Store

ROOT = os.geteuid() == 0


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(str(tmp_path / "store"))


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store"


def run_cli(*args: object, store: Path | None = None, input: bytes | None = None,
            env: dict[str, str] | None = None, check: bool | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the real `continuity` command (a subprocess, as users do)."""
    argv = [sys.executable, "-m", "castore"]
    if store is not None:
        argv += ["--store", str(store)]
    argv += [os.fsdecode(a) if isinstance(a, (str, bytes, os.PathLike)) else str(a) for a in args]
    p = subprocess.run(argv, capture_output=True, input=input, env={**os.environ, **(env or {})}, timeout=600)
    if check is True:
        assert p.returncode == 0, p.stderr.decode(errors="replace")
    if p.returncode != 0:
        assert b"Traceback" not in p.stderr, p.stderr.decode(errors="replace")
    return p


@pytest.fixture
def cli(store_path: Path):
    def _run(*args: object, **kw: object) -> subprocess.CompletedProcess[bytes]:
        return run_cli(*args, store=store_path, **kw)  # type: ignore[arg-type]
    return _run


def have(cmd: str) -> bool:
    return shutil.which(cmd) is not None


needs_root = pytest.mark.skipif(not ROOT, reason="needs root")
