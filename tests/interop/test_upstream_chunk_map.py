"""A manifest from upstream's Go `continuity build` (no chunk lists: it has none) of a tree with files
the store keeps as chunks only: checkout (copy and hardlink), apply and export from the store."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from castore.manifest import codec
from tests.helpers import run_cli
from tests.interop.upstream import Upstream

pytestmark = pytest.mark.go


def test_upstream_manifest_of_chunked_files_is_served(tmp_path: Path, upstream: Upstream) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    big = os.urandom(3 << 20)
    (src / "d/big.bin").write_bytes(big)
    (src / "small").write_bytes(b"small\n")
    store = tmp_path / "store"
    run_cli("ingest", src, "--name", "t", store=store, check=True)
    mfile = tmp_path / "upstream.pb"
    mfile.write_bytes(upstream.build(src))
    m = codec.loads(mfile.read_bytes())
    assert not any(r.chunks for r in m.files()) and max(r.size for r in m.files()) == 3 << 20
    for link in ("copy", "hardlink"):
        out = tmp_path / link
        run_cli("checkout", "--link", link, mfile, out, store=store, check=True)
        assert (out / "d/big.bin").read_bytes() == big
        run_cli("verify", out, mfile, store=store, check=True)
        upstream.run("verify", out, mfile)
    root = tmp_path / "applied"
    root.mkdir()
    run_cli("apply", root, mfile, store=store, check=True)
    assert (root / "d/big.bin").read_bytes() == big
    run_cli("tag", mfile, "upstream", store=store, check=True)
    run_cli("rm", "t", store=store, check=True)
    run_cli("gc", "--grace", "0", store=store, check=True)
    run_cli("export", "upstream", "-o", tmp_path / "e.tar", store=store, check=True)
    with tarfile.open(tmp_path / "e.tar") as t:
        f = t.extractfile("d/big.bin")
        assert f is not None and f.read() == big
