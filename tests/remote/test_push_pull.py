"""push/pull against a real distribution registry on loopback: round trips, dedup, pinned pulls,
hand-written bad artifacts (exit 4, nothing recorded), local corruption never uploaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx

from castore.digest import hash_bytes
from castore.remote.client import Registry
from castore.remote.oci import (
    ARTIFACT_TYPE,
    CONFIG_DIGEST,
    EMPTY_DIGEST,
    EMPTY_JSON,
    MANIFEST_MEDIA_TYPE,
    OCI_MANIFEST,
    build_oci_manifest,
)
from castore.remote.ref import parse_reference
from castore.store import Store, manifest_refs
from castore.testing.compare import assert_trees_equal
from castore.testing.trees import basic
from tests.helpers import run_cli
from tests.test_json_contract import check as check_json


def _hardlinks_and_more(root: Path) -> None:
    basic(root)
    (root / "hl").mkdir()
    (root / "hl/one").write_bytes(b"linked\n")
    os.link(root / "hl/one", root / "hl/two")
    (root / "hl/empty").write_bytes(b"")
    (root / "big.bin").write_bytes(os.urandom(1 << 20) * 2)  # chunked, repeated chunks dedup


def _ingest(tmp_path: Path, store: Path, name: str = "t") -> tuple[Path, str]:
    src = tmp_path / "src"
    if not src.exists():
        _hardlinks_and_more(src)
    d = run_cli("ingest", src, "--name", name, store=store, check=True).stdout.decode().strip()
    return src, d


def _nothing_recorded(store: Path) -> None:
    s = Store.open(str(store))
    assert s.tags() == [], s.tags()
    assert s.manifests() == []
    tmp = store / "tmp"
    assert [p for p in tmp.iterdir() if not p.name.startswith(".")] == []


def test_roundtrip_dedup_and_pinned_pull(tmp_path: Path, repo: str) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    src, d = _ingest(tmp_path, a)
    first = check_json("push", run_cli("push", "t", f"{repo}:v1", "--json", store=a, check=True).stdout)
    # one pack and its index, the config, the manifest
    assert first["digest"] == d and first["uploaded"] == 4 and first["skipped"] == 0
    assert first["packs_new"] == 1 and first["packs_reused"] == 0
    assert first["reference"] == f"{repo}@{first['oci_digest']}"

    again = json.loads(run_cli("push", d, f"{repo}:v1", "--json", "--jobs", "1", store=a, check=True).stdout)
    assert again["uploaded"] == 0 and again["uploaded_size"] == 0 and again["packs_reused"] == 1
    assert again["skipped"] == 2 and again["oci_digest"] == first["oci_digest"]

    p = run_cli("pull", f"{repo}:v1", store=b, check=True)
    assert p.stdout.decode().strip() == d
    assert [t.name for t in Store.open(str(b)).tags()] == [f"{repo}:v1"]
    run_cli("checkout", f"{repo}:v1", tmp_path / "out", store=b, check=True)
    assert_trees_equal(src, tmp_path / "out")
    run_cli("fsck", store=b, check=True)

    pinned = json.loads(
        run_cli("pull", first["reference"], "--name", "pinned", "--json", "--jobs", "1", store=b, check=True).stdout
    )
    assert pinned["digest"] == d and pinned["downloaded"] == 0 and pinned["present"] > 3
    assert Store.open(str(b)).get_tag("pinned") == d

    fresh = tmp_path / "c"
    q = check_json("pull", run_cli("pull", first["reference"], "--json", "--jobs", "8", store=fresh, check=True).stdout)
    assert q["digest"] == d and q["name"] == first["reference"] and q["downloaded_size"] > 3 << 20


def test_push_manifest_file_and_tag_digest_refused(tmp_path: Path, repo: str) -> None:
    a = tmp_path / "a"
    src, d = _ingest(tmp_path, a)
    mfile = tmp_path / "m.pb"
    mfile.write_bytes(Store.open(str(a)).read_blob(d))
    res = json.loads(run_cli("push", mfile, f"http://{repo}:file", "--json", store=a, check=True).stdout)
    assert res["uploaded"] >= 1 and res["digest"] == d
    # build's manifest names whole files, the store keeps their chunks (the chunk map): each such
    # file is pushed as the whole-file blob the manifest names, put together from its chunks.
    mfile.write_bytes(run_cli("build", src, check=True).stdout)
    run_cli("push", mfile, f"{repo}:built", store=a, check=True)
    run_cli("pull", f"{repo}:built", store=tmp_path / "fresh", check=True)
    run_cli("checkout", f"{repo}:built", tmp_path / "built-out", store=tmp_path / "fresh", check=True)
    assert_trees_equal(src, tmp_path / "built-out")
    bad = run_cli("push", "t", f"{repo}@{d}", store=a)
    assert bad.returncode == 2 and b"push takes a tag" in bad.stderr


def test_pull_wrong_digest_and_unknown(tmp_path: Path, repo: str) -> None:
    b = tmp_path / "b"
    run_cli("init", store=b, check=True)  # else pull's first line says it made the store
    p = run_cli("pull", f"{repo}@sha256:{'0' * 64}", store=b)
    assert p.returncode == 1 and p.stderr.count(b"\n") == 1 and b"not found" in p.stderr
    p = run_cli("pull", f"{repo}:nope", store=b)
    assert p.returncode == 1 and b"not found" in p.stderr
    _nothing_recorded(b)


def test_local_corruption_is_never_uploaded(tmp_path: Path, repo: str) -> None:
    a = tmp_path / "a"
    _, d = _ingest(tmp_path, a)
    s = Store.open(str(a))
    victim = min(manifest_refs(s.load_manifest(d)), key=lambda x: (s.blob_size(x) == 0, x))
    path = s.blob_path(victim)
    os.chmod(path, 0o644)
    data = bytearray(Path(path).read_bytes())
    data[0] ^= 0xFF
    Path(path).write_bytes(bytes(data))
    p = run_cli("push", "t", f"{repo}:bad", store=a)
    assert p.returncode == 4 and victim.encode() in p.stderr, p.stderr
    ref = parse_reference(repo)
    with Registry(ref) as reg:
        assert not reg.has_blob(victim)
        assert httpx.get(f"{ref.base}/manifests/bad").status_code == 404


def test_network_errors_are_one_line(tmp_path: Path) -> None:
    a = tmp_path / "a"
    _ingest(tmp_path, a)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        for argv in (("push", "t", f"127.0.0.1:{port}/x/y:z"), ("pull", f"127.0.0.1:{port}/x/y:z")):
            p = run_cli(*argv, store=a)
            assert p.returncode == 1, p.stderr
            assert p.stderr.startswith(b"continuity: error: registry 127.0.0.1:") and p.stderr.count(b"\n") == 1


# ------------------------------------------------------- hand-written artifacts


def _upload_pieces(tmp_path: Path, repo: str) -> tuple[str, bytes, dict[str, int]]:
    """Push a tree's blobs to ``repo``; return its manifest digest, bytes and blob sizes."""
    a = tmp_path / "a"
    _, d = _ingest(tmp_path, a)
    run_cli("push", "t", f"{repo}:good", store=a, check=True)
    s = Store.open(str(a))
    refs = manifest_refs(s.load_manifest(d))
    _put(repo, None, b"", {x: s.read_blob(x) for x in refs})  # as lone layers too (the first format)
    return d, s.read_blob(d), {x: s.blob_size(x) or 0 for x in refs}


def _put(repo: str, tag: str | None, doc: dict[str, object] | bytes, blobs: dict[str, bytes] = {}) -> None:  # noqa: B006
    ref = parse_reference(f"{repo}:{tag or 'x'}")
    with Registry(ref, push=True) as reg:
        for dg, data in blobs.items():
            if not reg.has_blob(dg):
                reg.upload_blob(dg, len(data), data)
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        if tag is not None:
            reg.put_manifest(tag, body)


def _doc(layers: list[dict[str, object]], artifact: str = ARTIFACT_TYPE) -> dict[str, object]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": EMPTY_DIGEST, "size": 2},
        "layers": layers,
    }


def _layer(d: str, n: int, mt: str = "application/vnd.continuity.blob.v1") -> dict[str, object]:
    return {"mediaType": mt, "digest": d, "size": n}


def test_bad_artifacts_exit_4_and_record_nothing(tmp_path: Path, repo: str) -> None:
    d, data, sizes = _upload_pieces(tmp_path, repo)
    first = _layer(d, len(data), MANIFEST_MEDIA_TYPE)
    rest = [_layer(x, n) for x, n in sorted(sizes.items())]
    garbage = b"\xff\xff\xff\xff not a manifest"
    cases = {
        # the continuity manifest references blobs the OCI manifest does not list
        "missing-refs": (_doc([first]), "is not a layer"),
        "extra-layer": (_doc([first, *rest, _layer(EMPTY_DIGEST, 2)]), "not referenced"),
        "twice": (_doc([first, *rest, rest[0]]), "listed twice"),
        "artifact": (_doc([first, *rest], "application/vnd.example.other"), "not a continuity tree"),
        "first-layer": (_doc([_layer(d, len(data)), *rest]), "first layer"),
        "garbage": (_doc([_layer(hash_bytes(garbage), len(garbage), MANIFEST_MEDIA_TYPE)]), "not a manifest"),
    }
    for tag, (doc, _) in cases.items():
        _put(repo, tag, doc, {hash_bytes(garbage): garbage, EMPTY_DIGEST: EMPTY_JSON})
    b = tmp_path / "b"
    run_cli("init", store=b, check=True)  # else pull's first line says it made the store
    for tag, (_, why) in cases.items():
        p = run_cli("pull", f"{repo}:{tag}", store=b)
        assert p.returncode == 4, (tag, p.stderr)
        assert why.encode() in p.stderr and p.stderr.count(b"\n") == 1, (tag, p.stderr)
    _nothing_recorded(b)
    # and the honest one still pulls into the same store
    assert run_cli("pull", f"{repo}:good", store=b, check=True).stdout.decode().strip() == d


def test_oci_manifest_is_deterministic() -> None:
    a = build_oci_manifest("sha256:" + "a" * 64, 10, [("sha256:" + "c" * 64, 3), ("sha256:" + "b" * 64, 4)])
    b = build_oci_manifest("sha256:" + "a" * 64, 10, [("sha256:" + "b" * 64, 4), ("sha256:" + "c" * 64, 3)])
    assert a == b
    doc = json.loads(a)
    assert [x["digest"][7] for x in doc["layers"]] == ["a", "b", "c"]
    assert doc["config"]["digest"] == CONFIG_DIGEST and doc["artifactType"] == ARTIFACT_TYPE


def test_crash_or_enospc_during_pull_leaves_a_sound_store(tmp_path: Path, repo: str) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _, d = _ingest(tmp_path, a)
    run_cli("push", "t", f"{repo}:v1", store=a, check=True)
    for point in (
        "pull-after-download",
        "ingest-after-syncfs",
        "ingest-after-rename",
        "ingest-before-manifest",
        "ingest-before-tag",
    ):
        if b.exists():
            run_cli("gc", "--grace", "0", store=b, check=True)  # else the next pull resumes: nothing to download
        p = run_cli("pull", f"{repo}:v1", store=b, env={"CONTINUITY_CRASHPOINT": point})
        assert p.returncode == -9, (point, p.returncode, p.stderr)
        f = run_cli("fsck", store=b)
        assert f.returncode == 0, (point, f.stdout, f.stderr)
        assert Store.open(str(b)).tags() == [], point
    run_cli("gc", "--grace", "0", store=b, check=True)
    p = run_cli("pull", f"{repo}:v1", store=b, env={"CONTINUITY_FAULT": "ingest-after-syncfs:ENOSPC"})
    assert p.returncode == 6 and p.stderr.count(b"\n") == 1, p.stderr
    assert run_cli("pull", f"{repo}:v1", store=b, check=True).stdout.decode().strip() == d
    run_cli("fsck", store=b, check=True)
    run_cli("gc", "--grace", "0", store=b, check=True)
    run_cli("checkout", f"{repo}:v1", tmp_path / "out", store=b, check=True)
    assert_trees_equal(tmp_path / "src", tmp_path / "out")
