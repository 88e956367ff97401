"""The continuity manifest in content-defined parts: the cut (pure), then against the real registry a
re-push of a 20,000-file tree after a one-file change (bytes counted), the parts pulled back and
verified, and lying parts (fake registry) refused with nothing stored."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from castore.digest import hash_bytes
from castore.manifest import Manifest, codec
from castore.manifest.model import RegularFile
from castore.remote.manifest_parts import MAX_PART, MIN_PART, cut_points, part_descriptors, split
from castore.remote.oci import (
    CONFIG_DIGEST,
    CONFIG_JSON,
    MANIFEST_PART_MEDIA_TYPE,
    OCI_MANIFEST,
    PACK_INDEX_MEDIA_TYPE,
    build_oci_manifest,
    parse_tree,
)
from castore.remote.ref import parse_reference
from castore.store import Store
from castore.testing.compare import assert_trees_equal
from tests.helpers import run_cli
from tests.remote.registry import FakeRegistry, artifact


def _manifest(n: int, changed: int | None = None) -> bytes:
    files = [
        RegularFile(
            paths=(f"/d{i // 1000:03d}/f{i:06d}",),
            uid=0,
            gid=0,
            perm=0o644,
            size=10,
            digest=hash_bytes(b"%d" % (i + 1_000_000 if i == changed else i)),
        )
        for i in range(n)
    ]
    return codec.dumps(Manifest.of(files))


def test_parts_concatenate_to_the_manifest_and_each_is_one() -> None:
    data = _manifest(20000)
    parts = split(data)
    assert b"".join(parts) == data and len(parts) >= 5
    assert all(len(p) >= MIN_PART for p in parts[:-1]) and all(len(p) <= MAX_PART + 4096 for p in parts)
    assert sum(len(codec.loads(p, source="part").resources) for p in parts) == 20000  # each part parses


def test_one_changed_record_changes_one_part() -> None:
    a, b = split(_manifest(20000)), split(_manifest(20000, changed=12345))
    assert len(a) == len(b) and sum(x != y for x, y in zip(a, b, strict=True)) == 1


def test_an_inserted_record_moves_only_nearby_cuts() -> None:
    files = [f"/d/f{i:06d}" for i in range(20000)]

    def dump(paths: list[str]) -> bytes:
        rs = [RegularFile(paths=(p,), uid=0, gid=0, perm=0o644, size=1, digest=hash_bytes(p.encode())) for p in paths]
        return codec.dumps(Manifest.of(rs))

    a = set(split(dump(files)))
    b = split(dump(files[:9000] + ["/d/f009000x"] + files[9000:]))
    assert sum(p not in a for p in b) <= 2


def test_small_or_odd_bytes_stay_whole() -> None:
    assert cut_points(b"") == [0] and cut_points(b"\x0a\x00" * 10) == [20]
    assert cut_points(b"\x08" * (MIN_PART * 2)) == [MIN_PART * 2]  # not length-delimited records


def test_repush_of_20k_files_after_one_change_uploads_one_part(tmp_path: Path, repo: str) -> None:
    src, a, b = tmp_path / "src", tmp_path / "a", tmp_path / "b"
    for i in range(20000):
        d = src / f"d{i // 500:03d}"
        if i % 500 == 0:
            d.mkdir(parents=True)
        (d / f"f{i:05d}").write_bytes(b"%d\n" % i * (i % 97 + 1))
    tree = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    run_cli("ingest", src, "--name", "v1", store=a, check=True)
    first = json.loads(run_cli("push", "v1", f"{repo}:t", "--json", store=a, check=True).stdout)
    run_cli("pull", f"{repo}:t", "--name", "t", store=b, check=True)
    (src / "d021" / "f10600").write_bytes(b"changed\n")
    d2 = run_cli("ingest", src, "--name", "v2", store=a, check=True).stdout.decode().strip()
    whole = len(Store.open(str(a)).read_blob(d2))
    second = json.loads(run_cli("push", "v2", f"{repo}:t", "--json", store=a, check=True).stdout)
    sent = int(second["uploaded_size"])
    assert whole > 2 << 20 and sent <= 0.01 * tree + (1 << 20), (sent, whole, tree)
    assert sent < whole / 4 and int(second["uploaded"]) <= 5, second  # one part, one pack, its index
    assert first["oci_manifest_size"] < 8192 and second["oci_manifest_size"] < 8192
    got = json.loads(run_cli("pull", f"{repo}:t", "--json", "--name", "t", store=b, check=True).stdout)
    # the pull of the new version takes the unchanged parts from the old manifest (the name's) in the store
    assert got["digest"] == d2 and got["downloaded"] == 1
    r = parse_reference(f"{repo}:t")
    layers = httpx.get(f"{r.base}/manifests/t", headers={"Accept": OCI_MANIFEST}).json()["layers"]
    indexes = sum(int(x["size"]) for x in layers if x["mediaType"] == PACK_INDEX_MEDIA_TYPE)
    assert int(got["downloaded_size"]) <= indexes + 2 * MAX_PART + 4096, (got, whole, indexes)
    run_cli("checkout", "t", tmp_path / "out", store=b, check=True)
    assert_trees_equal(src, tmp_path / "out")
    run_cli("fsck", store=b, check=True)


def _parted(store: Store, mdigest: str) -> tuple[dict[str, object], dict[str, bytes]]:
    oci, blobs = artifact(store, mdigest)
    data = blobs.pop(mdigest)
    parts = split(data)
    descs = part_descriptors(parts)
    doc = json.loads(oci)
    rebuilt = json.loads(
        build_oci_manifest(mdigest, len(data), [(x["digest"], x["size"]) for x in doc["layers"][1:]], (), descs)
    )
    blobs.update({d.digest: p for d, p in zip(descs, parts, strict=True)})
    blobs[CONFIG_DIGEST] = CONFIG_JSON
    return rebuilt, blobs


def test_lying_parts_are_refused_with_nothing_stored(tmp_path: Path, fake: FakeRegistry) -> None:
    src, a = tmp_path / "src", tmp_path / "a"
    src.mkdir()
    for i in range(3000):
        (src / f"file-{i:05d}").write_bytes(b"x%d" % i)
    d = run_cli("ingest", src, "--name", "t", store=a, check=True).stdout.decode().strip()
    doc, blobs = _parted(Store.open(str(a)), d)
    parts = [x for x in doc["layers"] if x["mediaType"] == MANIFEST_PART_MEDIA_TYPE]  # type: ignore[union-attr]
    assert len(parts) >= 2 and parse_tree(json.dumps(doc).encode(), source="t").first.digest == d
    cases: dict[str, tuple[dict[str, object], dict[str, bytes]]] = {}
    swapped = json.loads(json.dumps(doc))
    swapped["layers"][0], swapped["layers"][1] = swapped["layers"][1], swapped["layers"][0]
    cases["parts in another order"] = (swapped, blobs)
    wrong = json.loads(json.dumps(doc))
    wrong["annotations"]["dev.continuity.manifest.size"] = "12"
    cases["do not add up"] = (wrong, blobs)
    bad = dict(blobs)
    bad[parts[0]["digest"]] = b"\x0a\x00" + bad[parts[0]["digest"]][2:]  # type: ignore[index]
    cases["digest"] = (doc, bad)
    for i, (want, (d_, b_)) in enumerate(cases.items()):
        fake.serve_artifact("t/r", f"v{i}", json.dumps(d_).encode(), b_)
        store = tmp_path / f"s{i}"
        p = run_cli("pull", f"http://{fake.host}/t/r:v{i}", store=store)
        assert p.returncode == 4 and p.stderr.count(b"\n") == 1, (want, p.stderr)
        assert b"Traceback" not in p.stderr
        assert Store.open(str(store)).tags() == []


def test_pull_asks_for_what_the_image_path_reads() -> None:
    from castore.remote import image, pull

    assert pull.ACCEPT == image.ACCEPT
