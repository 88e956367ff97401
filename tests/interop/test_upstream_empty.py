"""Upstream's `build` of an empty directory is zero bytes, and ours is the same."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import run_cli
from tests.interop.upstream import Upstream


def test_empty_dir_manifest_is_zero_bytes_as_upstream(upstream: Upstream, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    theirs = upstream.build(empty)
    assert theirs == b""
    assert run_cli("build", empty, check=True).stdout == theirs
    mf = tmp_path / "up.pb"
    mf.write_bytes(theirs)
    run_cli("verify", empty, mf, check=True)
    run_cli("ls", mf, check=True, store=tmp_path / "store")
