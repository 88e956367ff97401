"""Crash safety: SIGKILL at every named point of ingest, checkout and gc.

After every kill: fsck is clean (orphans only), every name checks out and
verifies, a rerun succeeds, and no partial TARGET exists (a staging dir
``.NAME.continuity-*`` may remain beside it; nothing depends on it).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from castore.testing.trees import make_tree, rand_tree

INGEST_POINTS = [
    "ingest-after-read",
    "ingest-after-syncfs",
    "ingest-after-rename",
    "ingest-before-manifest",
    "ingest-after-manifest",
    "ingest-before-tag",
    "ingest-after-commit",
]
CHECKOUT_POINTS = ["checkout-after-dirs", "checkout-mid-files", "checkout-before-sync", "checkout-before-rename"]
GC_POINTS = ["gc-after-mark", "gc-mid-sweep", "gc-after-index-commit"]
REBUILD_POINTS = [
    "rebuild-after-scan",
    "rebuild-mid-build",
    "rebuild-after-build",
    "rebuild-after-swap",
    "rebuild-after-rename",
]


def big_tree(root: Path, seed: int) -> Path:
    files = {f"d{i % 7}/f{i}": f"{seed}:{i}\n".encode() * (i % 5 + 1) for i in range(110)}
    files["big.bin"] = os.urandom(600_000)  # chunked
    return make_tree(root, files)


def assert_sound(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = cli("fsck", "--read-data", "--json")
    rep = json.loads(p.stdout)
    assert p.returncode == 0, rep
    assert {f["kind"] for f in rep["findings"]} <= {"orphan", "stale-cache-row"}, rep["findings"]
    for row in json.loads(cli("list", "--json", check=True).stdout)["names"]:
        out = tmp_path / f"check-{row['name']}-{os.urandom(3).hex()}"
        cli("checkout", row["name"], out, check=True)
        cli("verify", out, row["name"], check=True)


@pytest.fixture
def seeded(cli, tmp_path: Path):  # type: ignore[no-untyped-def]
    cli("ingest", big_tree(tmp_path / "base", 1), "--name", "base", check=True)
    cli("ingest", rand_tree(tmp_path / "gone", 2, n=20), "--name", "gone", check=True)
    return tmp_path


def crash(point: str) -> dict[str, str]:
    return {"CONTINUITY_CRASHPOINT": point}


@pytest.mark.parametrize("point", INGEST_POINTS)
def test_ingest_crash(cli, seeded: Path, point: str) -> None:  # type: ignore[no-untyped-def]
    src = big_tree(seeded / "new", 3)
    p = cli("ingest", src, "--name", "new", env=crash(point))
    assert p.returncode == -9, p.stderr
    assert_sound(cli, seeded)
    d = cli("ingest", src, "--name", "new", check=True).stdout.decode().strip()
    assert cli("list", check=True).stdout.count(d.encode()) == 1
    cli("gc", "--grace", "0", check=True)
    assert_sound(cli, seeded)


@pytest.mark.parametrize("point", CHECKOUT_POINTS)
@pytest.mark.parametrize("link", ["copy", "hardlink"])
def test_checkout_crash(cli, seeded: Path, point: str, link: str) -> None:  # type: ignore[no-untyped-def]
    target = seeded / "out" / "target"
    p = cli("checkout", "--link", link, "base", target, env=crash(point))
    assert p.returncode == -9, p.stderr
    assert not target.exists()
    assert [n for n in os.listdir(seeded / "out") if n.startswith(".target.continuity-")]
    assert_sound(cli, seeded)
    cli("gc", "--grace", "0", check=True)  # the leftover staging dir is outside the store: gc ignores it
    cli("checkout", "--link", link, "base", target, check=True)
    cli("verify", target, "base", check=True)


@pytest.mark.parametrize("point", GC_POINTS)
def test_gc_crash(cli, seeded: Path, store_path: Path, point: str) -> None:  # type: ignore[no-untyped-def]
    cli("rm", "gone", check=True)
    p = cli("gc", "--grace", "0", env=crash(point))
    assert p.returncode == -9, p.stderr
    assert_sound(cli, seeded)
    rep = json.loads(cli("gc", "--grace", "0", "--json", check=True).stdout)
    assert rep["objects"] > 0 or point == "gc-after-mark"
    p = cli("fsck", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["findings"] == []
    cli("checkout", "base", seeded / "after", check=True)


def _catalog(cli) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(r["name"], r["digest"]) for r in json.loads(cli("list", "--json", check=True).stdout)["names"]]


@pytest.mark.parametrize(
    ("index", "point"),
    [("sound", p) for p in REBUILD_POINTS] + [("lost", p) for p in REBUILD_POINTS if p != "rebuild-after-swap"],
)  # nothing to swap
def test_rebuild_index_crash(cli, seeded: Path, store_path: Path, point: str, index: str) -> None:  # type: ignore
    """STORE/meta is the old index or the new one at every step (never none); a re-run completes."""
    before = _catalog(cli)
    if index == "lost":
        shutil.rmtree(store_path / "meta")
    p = cli("fsck", "--rebuild-index", env=crash(point))
    assert p.returncode == -9, p.stderr
    p = cli("list", "--json")
    if p.returncode == 4:  # still the old state: only possible while the index was lost
        assert index == "lost" and b"--rebuild-index" in p.stderr and not (store_path / "meta").exists()
    else:
        assert p.returncode == 0 and _catalog(cli) == before, p.stderr
        assert_sound(cli, seeded)
    cli("fsck", "--rebuild-index", check=True)
    assert _catalog(cli) == before
    assert not list(store_path.glob("meta.rebuild-*"))
    assert_sound(cli, seeded)
    cli("gc", "--grace", "0", check=True)
    assert _catalog(cli) == before
