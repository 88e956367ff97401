"""The one conftest: a fresh store and the CLI runner; the registry and upstream fixtures come in as plugins.

Importable helpers are in tests/helpers.py and castore/testing/ (``from tests.helpers import run_cli``);
tests run with ``--import-mode=importlib`` and the repository root on ``pythonpath`` (pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from castore.store import Store
from tests.helpers import run_cli

pytest_plugins = ["tests.interop.upstream", "tests.remote.registry", "tests.remote.secure"]


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
