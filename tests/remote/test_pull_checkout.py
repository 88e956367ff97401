"""``pull --checkout DIR``: the pulled tree materialised by the same process, against a real registry.

The blobs the pull fetched (and hashed) are not hashed again; blobs the store held before are, so a
corrupt local blob still stops the checkout (exit 4, no tree)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from castore.store import Store
from castore.testing.compare import assert_trees_equal
from castore.testing.trees import basic
from tests.helpers import run_cli


def _tree(root: Path) -> None:
    basic(root)
    (root / "many").mkdir()
    for i in range(40):
        (root / "many" / f"f{i:02d}").write_bytes(os.urandom(100 + 37 * i))
    os.link(root / "many/f01", root / "many/hl")
    (root / "big.bin").write_bytes(os.urandom(1 << 20) * 2)  # chunked: its pieces verified by the checkout


def test_pull_checkout_gives_the_tree(tmp_path: Path, repo: str) -> None:
    a, b, src = tmp_path / "a", tmp_path / "b", tmp_path / "src"
    _tree(src)
    d = run_cli("ingest", src, "--name", "t", store=a, check=True).stdout.decode().strip()
    run_cli("push", "t", f"{repo}:v1", store=a, check=True)
    out = tmp_path / "out"
    p = run_cli("pull", f"{repo}:v1", "--checkout", out, "--json", store=b, check=True)
    res = json.loads(p.stdout)
    assert res["digest"] == d and res["downloaded"] > 40
    assert_trees_equal(src, out)
    assert Store.open(str(b)).get_tag(f"{repo}:v1") == d
    run_cli("verify", out, f"{repo}:v1", store=b, check=True)
    run_cli("fsck", store=b, check=True)
    # again into a store that has everything: nothing fetched, every blob read back is verified
    o2 = tmp_path / "o2"
    again = json.loads(run_cli("pull", f"{repo}:v1", "--checkout", o2, "--json", store=b, check=True).stdout)
    assert again["downloaded"] == 0
    assert_trees_equal(src, o2)


def test_pull_checkout_verifies_what_it_did_not_fetch(tmp_path: Path, repo: str) -> None:
    a, b, src = tmp_path / "a", tmp_path / "b", tmp_path / "src"
    _tree(src)
    run_cli("ingest", src, "--name", "t", store=a, check=True)
    run_cli("push", "t", f"{repo}:v1", store=a, check=True)
    # b holds one of the files already (indexed), and its blob is corrupt on disk
    part = tmp_path / "part"
    part.mkdir()
    (part / "f05").write_bytes((src / "many/f05").read_bytes())
    run_cli("ingest", part, "--name", "old", store=b, check=True)
    s = Store.open(str(b))
    victim = s.blob_path(s.load_manifest(s.get_tag("old")).files()[0].digest)
    os.chmod(victim, 0o644)
    data = bytearray(Path(victim).read_bytes())
    data[0] ^= 0xFF
    Path(victim).write_bytes(bytes(data))
    out = tmp_path / "out"
    p = run_cli("pull", f"{repo}:v1", "--checkout", out, store=b)
    assert p.returncode == 4 and b"corrupt" in p.stderr and p.stderr.count(b"\n") == 1, p.stderr
    assert not out.exists()


def test_pull_checkout_into_a_full_directory(tmp_path: Path, repo: str) -> None:
    a, b, src = tmp_path / "a", tmp_path / "b", tmp_path / "src"
    _tree(src)
    d = run_cli("ingest", src, "--name", "t", store=a, check=True).stdout.decode().strip()
    run_cli("push", "t", f"{repo}:v1", store=a, check=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_bytes(b"mine")
    p = run_cli("pull", f"{repo}:v1", "--checkout", out, store=b)
    assert p.returncode != 0 and p.stderr.count(b"\n") <= 2 and b"Traceback" not in p.stderr, p.stderr
    assert sorted(os.listdir(out)) == ["keep"] and (out / "keep").read_bytes() == b"mine"
    assert Store.open(str(b)).get_tag(f"{repo}:v1") == d  # the pull itself is recorded
