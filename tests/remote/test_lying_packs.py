"""A fake registry serving a packed artifact that lies: wrong bytes for a range, a short pack, an index
pointing outside its pack, a 10 GB Content-Length, a wrong Content-Range. Each is refused (exit 4, one
line) with nothing recorded and no blob left behind; a registry that ignores Range still pulls; 429 and
503 answers are retried."""

from __future__ import annotations

import os
import shutil
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from castore.digest import hash_bytes
from castore.manifest.wire import read_varint
from castore.remote.oci import PACK_INDEX_MEDIA_TYPE, Descriptor, build_oci_manifest
from castore.remote.packer import Plan, make_plan
from castore.remote.packfmt import Entry, PackIndex, decode_index, encode_index
from castore.store import Store
from castore.testing.compare import assert_trees_equal
from tests.helpers import run_cli
from tests.remote.packs_helpers import make_tree, packed_artifact, range_server
from tests.remote.registry import FakeRegistry

REPO = "lies/packs"
TARGET = 256 << 10


@pytest.fixture
def packed(tmp_path: Path, fake: FakeRegistry) -> tuple[FakeRegistry, str, bytes, dict[str, bytes], list]:  # type: ignore[type-arg]
    src = tmp_path / "src"
    make_tree(src, files=120)
    a = tmp_path / "a"
    d = run_cli("ingest", src, store=a, check=True).stdout.decode().strip()
    oci, blobs, built = packed_artifact(Store.open(str(a)), d, TARGET)
    fake.serve_artifact(REPO, "v1", oci, blobs)
    for b in built:  # packs answer Range like distribution does
        fake.routes[("GET", f"/v2/{REPO}/blobs/{b.pack.digest}")] = range_server(bytes(b.data))
    return fake, d, oci, blobs, built


def _pull(fake: FakeRegistry, store: Path) -> tuple[int, str]:
    p = run_cli("pull", f"{fake.host}/{REPO}:v1", "--jobs", "2", store=store)
    return p.returncode, p.stderr.decode(errors="replace")


def _blob_files(store: Path) -> list[str]:
    return [f for _, _, fs in os.walk(store / "blobs") for f in fs] if (store / "blobs").exists() else []


def _refused(store: Path, fake: FakeRegistry, text: str, before: list[str] | None = None) -> None:
    rc, err = _pull(fake, store)
    assert rc == 4 and text in err and err.count("\n") == 1, err
    s = Store.open(str(store))
    assert s.tags() == [] or before is not None
    assert [p for p in (store / "tmp").iterdir() if not p.name.startswith(".")] == []
    assert sorted(_blob_files(store)) == sorted(before or []), "a refused pull left blobs behind"


def _store_holding_all_but(tmp_path: Path, victim_file: str) -> Path:
    """A store with the tree minus one file: the pull then needs one entry, fetched with a range request."""
    older = tmp_path / "older"
    shutil.copytree(tmp_path / "src", older)
    (older / victim_file).unlink()
    b = tmp_path / "b"
    run_cli("ingest", older, "--name", "older", store=b, check=True)
    return b


def test_honest_packs_and_ranges(tmp_path: Path, packed: tuple) -> None:  # type: ignore[type-arg]
    fake, d, _, _, _ = packed
    rc, err = _pull(fake, tmp_path / "fresh")
    assert rc == 0, err
    b = _store_holding_all_but(tmp_path, "d01/f0061.bin")
    fake.requests.clear()
    rc, err = _pull(fake, b)
    assert rc == 0, err
    assert any("Range" in h for m, p, h in fake.requests if m == "GET" and "/blobs/" in p)
    run_cli("checkout", f"{fake.host}/{REPO}:v1", tmp_path / "out", store=b, check=True)
    assert_trees_equal(tmp_path / "src", tmp_path / "out")


def test_registry_ignoring_range_still_pulls(tmp_path: Path, packed: tuple) -> None:  # type: ignore[type-arg]
    fake, _, _, blobs, built = packed
    for bp in built:  # a static route: 200 and the whole pack whatever the Range
        fake.routes[("GET", f"/v2/{REPO}/blobs/{bp.pack.digest}")] = (200, {}, bytes(bp.data))
    b = _store_holding_all_but(tmp_path, "d01/f0061.bin")
    rc, err = _pull(fake, b)
    assert rc == 0, err


def test_wrong_bytes_for_a_range(tmp_path: Path, packed: tuple) -> None:  # type: ignore[type-arg]
    fake, _, _, _, built = packed
    for bp in built:
        data = bytes(bp.data)
        fake.routes[("GET", f"/v2/{REPO}/blobs/{bp.pack.digest}")] = range_server(
            data,
            lambda a, b, body, n=len(data): (
                206,
                {"Content-Range": f"bytes {a}-{b - 1}/{n}"},
                bytes(x ^ 1 for x in body),
            ),
        )
    b = _store_holding_all_but(tmp_path, "d01/f0061.bin")
    _refused(b, fake, "wrong bytes", before=_blob_files(b))


def test_wrong_content_range(tmp_path: Path, packed: tuple) -> None:  # type: ignore[type-arg]
    fake, _, _, _, built = packed
    for bp in built:
        data = bytes(bp.data)
        fake.routes[("GET", f"/v2/{REPO}/blobs/{bp.pack.digest}")] = range_server(
            data, lambda a, b, body, n=len(data): (206, {"Content-Range": f"bytes {a + 1}-{b}/{n}"}, body)
        )
    b = _store_holding_all_but(tmp_path, "d01/f0061.bin")
    _refused(b, fake, "Content-Range", before=_blob_files(b))


def test_short_pack(tmp_path: Path, packed: tuple) -> None:  # type: ignore[type-arg]
    fake, _, _, _, built = packed
    bp = built[-1]
    fake.routes[("GET", f"/v2/{REPO}/blobs/{bp.pack.digest}")] = (200, {}, bytes(bp.data[:-100]))
    _refused(tmp_path / "b", fake, "pack")


def test_ten_gigabyte_content_length(tmp_path: Path, packed: tuple) -> None:  # type: ignore[type-arg]
    fake, _, _, _, built = packed

    def huge(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(10 << 30))
        h.end_headers()
        h.wfile.write(b"\0" * 65536)

    fake.routes[("GET", f"/v2/{REPO}/blobs/{built[0].pack.digest}")] = huge
    _refused(tmp_path / "b", fake, str(10 << 30))


def test_index_pointing_outside_its_pack(tmp_path: Path, packed: tuple) -> None:  # type: ignore[type-arg]
    fake, d, oci, blobs, built = packed
    bp = built[0]
    idx = decode_index(bp.index_data, pack=bp.pack.digest, pack_size=bp.pack.size, what="test")
    last = idx.entries[-1]
    moved = Entry(last.digest, bp.pack.size - 10, last.stored, last.size, last.comp)
    bad = encode_index(PackIndex(idx.pack, idx.pack_size, (*idx.entries[:-1], moved)))
    bad_desc = Descriptor(PACK_INDEX_MEDIA_TYPE, hash_bytes(bad), len(bad))
    pairs = [(b.pack, bad_desc if b is bp else b.index) for b in built]
    oci = build_oci_manifest(d, len(blobs[d]), [], pairs)
    blobs = {**blobs, bad_desc.digest: bad}
    fake.serve_artifact(REPO, "v1", oci, blobs)
    _refused(tmp_path / "b", fake, "outside its pack")


def test_transient_errors_are_retried(tmp_path: Path, packed: tuple) -> None:  # type: ignore[type-arg]
    fake, _, _, _, built = packed
    route = f"/v2/{REPO}/blobs/{built[0].pack.digest}"
    honest = fake.routes[("GET", route)]
    answers = iter([(429, {"Retry-After": "0"}, b""), (503, {}, b"")])

    def flaky(h: BaseHTTPRequestHandler) -> None:
        status, headers, body = next(answers, (0, {}, b""))
        if not status:
            honest(h)  # type: ignore[operator]
            return
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", "0")
        h.end_headers()

    fake.routes[("GET", route)] = flaky
    rc, err = _pull(fake, tmp_path / "b")
    assert rc == 0, err
    assert sum(1 for m, p, _ in fake.requests if m == "GET" and p == route) == 3


def test_plan_reuses_live_packs_and_repacks_dead_ones() -> None:
    def digest(i: int) -> str:
        return "sha256:" + f"{i:064x}"

    def base(name: int, live: range, dead: range) -> object:
        from castore.remote.packer import BasePack

        entries = tuple(Entry(digest(i), k * 100, 100, 100, 0) for k, i in enumerate([*live, *dead]))
        size = 100 * len(entries)
        pack = Descriptor("application/vnd.continuity.pack.v1", digest(10_000 + name), size)
        return BasePack(
            pack, Descriptor(PACK_INDEX_MEDIA_TYPE, digest(20_000 + name), 10), PackIndex(pack.digest, size, entries)
        )

    order = [(digest(i), 100) for i in range(0, 30)] + [(digest(99), 40 << 20)]
    mostly_live = base(1, range(0, 10), range(500, 505))  # 10 of 15 entries needed: reused
    mostly_dead = base(2, range(10, 13), range(600, 620))  # 3 of 23 needed: its blobs are packed again
    plan: Plan = make_plan(order, [mostly_live, mostly_dead], 1000)  # type: ignore[list-item]
    assert [b.pack.digest for b in plan.reused] == [digest(10_001)]
    assert plan.solo == [(digest(99), 40 << 20)]
    repacked = [d for p in plan.new for d, _ in p]
    assert repacked == [digest(i) for i in range(10, 30)] and max(len(p) for p in plan.new) == 10


def test_invalid_manifest_with_honest_packs(tmp_path: Path, packed: tuple) -> None:  # type: ignore[type-arg]
    """The manifest is decoded and validated while the blobs are fetched: one the validator refuses
    (here a path listed twice) stops the fetch and leaves no blob behind."""
    fake, d, _, blobs, built = packed
    data = blobs[d]
    length, start = read_varint(data, 1)  # the first entry, framed as 0x0a, length
    bad = data + data[: start + length]
    oci = build_oci_manifest(hash_bytes(bad), len(bad), [], [(b.pack, b.index) for b in built])
    fake.serve_artifact(REPO, "v1", oci, {**blobs, hash_bytes(bad): bad})
    for b in built:
        fake.routes[("GET", f"/v2/{REPO}/blobs/{b.pack.digest}")] = range_server(bytes(b.data))
    store = tmp_path / "b"
    rc, err = _pull(fake, store)
    assert rc == 3 and err.count("\n") == 1 and "Traceback" not in err, err
    assert Store.open(str(store)).tags() == []
    assert _blob_files(store) == [], "a refused pull left blobs behind"
