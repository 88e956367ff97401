"""Packs against a real distribution registry: round trip in several packs, re-push after a one-file change
(bytes counted), pull into a store holding an older version (ranges, bytes counted), a push and a pull
killed half-way and resumed, skopeo inspect/copy round trips."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from castore.remote.oci import PACK_INDEX_MEDIA_TYPE, PACK_MEDIA_TYPE
from castore.remote.ref import parse_reference
from castore.store import Store
from castore.testing.compare import assert_trees_equal
from tests.helpers import run_cli
from tests.remote.packs_helpers import make_tree

PACK = str(256 << 10)


def _push(store: Path, what: str, ref: str, *args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    p = run_cli("push", what, ref, "--json", "--pack-size", PACK, *args, store=store, env=env)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)  # type: ignore[no-any-return]


def _pull(store: Path, ref: str, *args: str) -> dict[str, object]:
    p = run_cli("pull", ref, "--json", *args, store=store)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)  # type: ignore[no-any-return]


def _layers(ref: str) -> list[dict[str, object]]:
    r = parse_reference(ref)
    got = httpx.get(
        f"{r.base}/manifests/{r.reference}", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
    )
    return got.json()["layers"]  # type: ignore[no-any-return]


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_roundtrip_in_packs(tmp_path: Path, repo: str) -> None:
    src, a, b = tmp_path / "src", tmp_path / "a", tmp_path / "b"
    make_tree(src)
    d = run_cli("ingest", src, "--name", "t", store=a, check=True).stdout.decode().strip()
    res = _push(a, "t", f"{repo}:v1")
    layers = _layers(f"{repo}:v1")
    kinds = [x["mediaType"] for x in layers[1:]]
    assert kinds == [PACK_MEDIA_TYPE, PACK_INDEX_MEDIA_TYPE] * res["packs_new"] and res["packs_new"] >= 4  # type: ignore[operator]
    assert res["oci_manifest_size"] < 8192
    # compression paid on the text files: the packs are smaller than the tree
    assert sum(int(x["size"]) for x in layers[1:]) < _tree_bytes(src)  # type: ignore[call-overload]
    got = _pull(b, f"{repo}:v1", "--jobs", "3")
    assert got["digest"] == d and got["present"] == 0
    run_cli("checkout", f"{repo}:v1", tmp_path / "out", store=b, check=True)
    assert_trees_equal(src, tmp_path / "out")
    run_cli("fsck", store=b, check=True)


def test_repush_after_one_file_change_and_pull_of_the_difference(tmp_path: Path, repo: str) -> None:
    src, a, b = tmp_path / "src", tmp_path / "a", tmp_path / "b"
    make_tree(src)
    run_cli("ingest", src, "--name", "v1", store=a, check=True)
    first = _push(a, "v1", f"{repo}:latest")
    _pull(b, f"{repo}:latest", "--name", "old")
    changed = src / "d02" / "f0101.bin"
    changed.write_bytes(b"new content " * 300)
    d2 = run_cli("ingest", src, "--name", "v2", store=a, check=True).stdout.decode().strip()
    m2 = len(Store.open(str(a)).read_blob(d2))
    second = _push(a, "v2", f"{repo}:latest")  # overwrites the tag: its packs are reused
    assert second["packs_new"] == 1 and second["packs_reused"] == first["packs_new"]
    content = int(second["uploaded_size"]) - m2  # type: ignore[call-overload]
    assert content <= changed.stat().st_size + 4096, second  # the file (compressed) + its pack's index
    assert content <= 0.01 * _tree_bytes(src) + (1 << 20)
    got = _pull(b, f"{repo}:latest", "--name", "new")
    assert got["digest"] == d2 and got["downloaded"] == 1
    indexes = sum(int(x["size"]) for x in _layers(f"{repo}:latest") if x["mediaType"] == PACK_INDEX_MEDIA_TYPE)  # type: ignore[call-overload]
    assert int(got["downloaded_size"]) <= m2 + indexes + changed.stat().st_size  # type: ignore[call-overload]
    run_cli("checkout", "new", tmp_path / "out", store=b, check=True)
    assert_trees_equal(src, tmp_path / "out")


def test_pull_into_a_store_holding_most_uses_ranges(tmp_path: Path, repo: str) -> None:
    src, a, b = tmp_path / "src", tmp_path / "a", tmp_path / "b"
    make_tree(src)
    run_cli("ingest", src, "--name", "t", store=a, check=True)
    res = _push(a, "t", f"{repo}:v1", "--pack-size", str(1 << 20))
    total = sum(int(x["size"]) for x in _layers(f"{repo}:v1")[1:])  # type: ignore[call-overload]
    older = tmp_path / "older"
    shutil.copytree(src, older)
    lost = [older / "d01" / "f0061.bin", older / "d04" / "f0202.bin", older / "words.txt"]
    for p in lost:
        p.unlink()
    run_cli("ingest", older, "--name", "older", store=b, check=True)
    got = _pull(b, f"{repo}:v1")
    assert got["downloaded"] == 3 and res["packs_new"] >= 2
    assert int(got["downloaded_size"]) < total / 3, (got, total)  # type: ignore[call-overload]
    run_cli("checkout", f"{repo}:v1", tmp_path / "out", store=b, check=True)
    assert_trees_equal(src, tmp_path / "out")


def test_push_killed_half_way_resumes(tmp_path: Path, repo: str) -> None:
    src, a = tmp_path / "src", tmp_path / "a"
    make_tree(src)
    run_cli("ingest", src, "--name", "t", store=a, check=True)
    full = _push(a, "t", f"{repo}-full:v1")
    killed = run_cli(
        "push",
        "t",
        f"{repo}:v1",
        "--pack-size",
        PACK,
        "--jobs",
        "1",
        store=a,
        env={"CONTINUITY_CRASHPOINT": "push-after-pack"},
    )
    assert killed.returncode == -9
    r = parse_reference(f"{repo}:v1")
    assert httpx.get(f"{r.base}/manifests/v1").status_code == 404  # no tag names an incomplete artifact
    again = _push(a, "t", f"{repo}:v1")
    assert again["skipped"] >= 2 and again["oci_digest"] == full["oci_digest"]  # the same packs, rebuilt
    assert int(again["uploaded_size"]) < int(full["uploaded_size"])  # type: ignore[call-overload]
    got = _pull(tmp_path / "b", f"{repo}:v1")
    run_cli("checkout", got["name"], tmp_path / "out", store=tmp_path / "b", check=True)
    assert_trees_equal(src, tmp_path / "out")


def test_pull_killed_half_way_keeps_what_it_fetched(tmp_path: Path, repo: str) -> None:
    src, a, b = tmp_path / "src", tmp_path / "a", tmp_path / "b"
    make_tree(src)
    run_cli("ingest", src, "--name", "t", store=a, check=True)
    _push(a, "t", f"{repo}:v1")
    full = _pull(tmp_path / "c", f"{repo}:v1")
    killed = run_cli("pull", f"{repo}:v1", "--jobs", "1", store=b, env={"CONTINUITY_CRASHPOINT": "pull-after-pack"})
    assert killed.returncode == -9
    assert Store.open(str(b)).tags() == []
    run_cli("fsck", store=b, check=True)
    again = _pull(b, f"{repo}:v1")
    assert again["digest"] == full["digest"] and int(again["resumed"]) > 0  # type: ignore[call-overload]
    assert int(again["downloaded_size"]) < int(full["downloaded_size"])  # type: ignore[call-overload]
    run_cli("checkout", f"{repo}:v1", tmp_path / "out", store=b, check=True)
    assert_trees_equal(src, tmp_path / "out")
    run_cli("fsck", store=b, check=True)


def test_base_reuses_another_tags_packs(tmp_path: Path, repo: str) -> None:
    src, a = tmp_path / "src", tmp_path / "a"
    make_tree(src)
    run_cli("ingest", src, "--name", "v1", store=a, check=True)
    first = _push(a, "v1", f"{repo}:v1")
    (src / "added.txt").write_text("one more file\n")
    run_cli("ingest", src, "--name", "v2", store=a, check=True)
    alone = _push(a, "v2", f"{repo}-other:v2")
    based = _push(a, "v2", f"{repo}:v2", "--base", "v1")
    assert based["packs_reused"] == first["packs_new"] and alone["packs_reused"] == 0
    assert int(based["uploaded_size"]) < int(alone["uploaded_size"]) / 4  # type: ignore[call-overload]
    bad = run_cli("push", "v2", f"{repo}:v3", "--base", "nope", store=a)
    assert bad.returncode == 1 and b"not found" in bad.stderr and bad.stderr.count(b"\n") == 1


SKOPEO = shutil.which("skopeo")


@pytest.mark.skipif(SKOPEO is None, reason="skopeo (Debian package skopeo) is not installed; scripts/test installs it")
def test_skopeo_inspect_and_copy_round_trip(tmp_path: Path, repo: str) -> None:
    src, a = tmp_path / "src", tmp_path / "a"
    make_tree(src, files=60)
    d = run_cli("ingest", src, "--name", "t", store=a, check=True).stdout.decode().strip()
    _push(a, "t", f"{repo}:v1")
    tls = ["--tls-verify=false"]

    def skopeo(*args: str) -> str:
        p = subprocess.run([SKOPEO, *args], capture_output=True, timeout=120)  # type: ignore[list-item]
        assert p.returncode == 0, p.stderr
        return p.stdout.decode()

    info = json.loads(skopeo("inspect", *tls, f"docker://{repo}:v1"))
    assert len(info["Layers"]) >= 3
    skopeo(
        "copy", "--src-tls-verify=false", "--dest-tls-verify=false", f"docker://{repo}:v1", f"docker://{repo}-copy:v1"
    )
    layout = tmp_path / "layout"
    skopeo("copy", "--src-tls-verify=false", f"docker://{repo}:v1", f"oci:{layout}:v1")
    skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{repo}-back:v1")
    for i, ref in enumerate((f"{repo}-copy:v1", f"{repo}-back:v1")):
        store = tmp_path / f"s{i}"
        assert _pull(store, ref)["digest"] == d
        run_cli("checkout", ref, tmp_path / f"out{i}", store=store, check=True)
        assert_trees_equal(src, tmp_path / f"out{i}")
