"""entries.split_entries (paths, offsets, file flags) and first_path against the full decoder, every kind of entry."""

from __future__ import annotations

import pytest

from castore.ingest import ingest
from castore.manifest import codec
from castore.manifest.entries import first_path, size_of, split_entries
from castore.manifest.model import Manifest, RegularFile
from castore.store import Store


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    from castore.testing.states import STATES, state  # the fstest-style states: every kind, hardlinks, xattrs, modes

    base = tmp_path_factory.mktemp("split")
    store = Store.open(str(base / "store"))
    out = []
    for name in STATES:
        d = ingest(store, str(state(base / name, name)), progress=False)
        out.append(store.read_blob(d))
    return out


def test_split_agrees_with_the_decoder(blobs: list[bytes]) -> None:
    for blob in blobs:
        starts: list[int] = []
        plain: list[bool] = []
        entries, paths = split_entries(blob, starts=starts, plain=plain)
        m = codec.loads(blob)
        assert len(entries) == len(m.resources)
        for e, ps, s, f, r in zip(entries, paths, starts, plain, m.resources, strict=True):
            assert codec.decode_entry(e) == r
            assert ps == r.paths
            assert blob[s : s + len(e)] == e
            assert f == isinstance(r, RegularFile)
            assert first_path(e) == r.paths[0]


def test_odd_names_and_truncation() -> None:
    names = [
        "/" + "x" * 200 + "/" + "y" * 100,
        "/back\\slash",
        "/caf\u00e9",
        "/" + b"\xff\xfe".decode("utf-8", "surrogateescape"),
    ]
    m = Manifest.of([RegularFile(paths=(n,), size=0, digest="sha256:" + "0" * 64) for n in names])
    blob = codec.dumps(m)
    entries, paths = split_entries(blob)
    assert [ps[0] for ps in paths] == [r.path for r in m.resources]
    assert [first_path(e) for e in entries] == [r.path for r in m.resources]
    for cut in (1, len(blob) // 2, len(blob) - 1):
        with pytest.raises(codec.CorruptManifest):
            split_entries(blob[:cut])


def test_frames_that_lie_are_refused() -> None:
    """An entry whose first path runs past its end, or an empty entry, is not read into the next one."""
    from castore.manifest.model import Manifest

    good = codec.dumps(Manifest.of([RegularFile(paths=("/a",), size=0, digest="sha256:" + "0" * 64)]))
    for bad in (b"\x0a\x00" + good, b"\x0a\x03\x0a\x09/" + good):
        with pytest.raises((codec.CorruptManifest, codec.InvalidManifest)):
            split_entries(bad)


def test_size_of_agrees_with_the_decoder(blobs: list[bytes]) -> None:
    """size_of reads a regular file's size without decoding it (checkout's chunked-blob check)."""
    sizes = [0, 1, 127, 128, 2048, 1 << 20, 1 << 40]
    files = [
        RegularFile(
            paths=(f"/f{i}",),
            perm=0o4755 if i % 3 else 0o644,
            uid=i * 1000,
            gid=7,
            size=s,
            digest="sha256:" + "ab" * 32,
        )
        for i, s in enumerate(sizes)
    ]
    extra = codec.dumps(Manifest.of(files))
    seen = 0
    for blob in [*blobs, extra]:
        plain: list[bool] = []
        entries, _ = split_entries(blob, plain=plain)
        for e, f in zip(entries, plain, strict=True):
            if not f:
                continue
            r = codec.decode_entry(e)
            assert isinstance(r, RegularFile)
            got = size_of(e)
            assert got is None or got == r.size, r
            seen += got is not None
    assert seen > len(sizes)
    assert size_of(b"\x0a") is None  # truncated


def test_two_runs_split_at_an_entry_boundary_read_as_the_whole(blobs: list[bytes]) -> None:
    """split_point, and split_entries / entry_hashes over each run of it (a checkout's two writer
    processes), give exactly the entries and the hashes of the whole manifest."""
    import hashlib

    from castore.manifest.entries import entry_hashes, split_point

    for blob in blobs:
        whole, whole_paths = split_entries(blob)
        for share in (0.0, 0.3, 0.5, 0.9, 1.0):
            mid, before = split_point(blob, share)
            assert mid >= len(blob) * share or mid == len(blob)
            a, pa = split_entries(blob, end=mid)
            b, pb = split_entries(blob, begin=mid)
            assert len(a) == before and a + b == whole and pa + pb == whole_paths
            spans: list[tuple[int, int]] = []
            keys = entry_hashes(blob, mid, None, spans)
            assert keys == [hashlib.sha256(e).digest() for e in b]
            assert [blob[i:j] for i, j in spans] == b
        with pytest.raises(codec.CorruptManifest):
            entry_hashes(blob[:-1])
