"""Shared fixtures: a fresh store and the CLI runner. Importable helpers are in helpers.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from helpers import run_cli

from castore.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(str(tmp_path / "store"))


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def cli(store_path: Path) -> Callable[..., CompletedProcess[bytes]]:
    def _run(*args: object, **kw: object) -> CompletedProcess[bytes]:
        return run_cli(*args, store=store_path, **kw)  # type: ignore[arg-type]
    return _run
