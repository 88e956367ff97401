"""castore.manifest.plainread decodes what it accepts exactly as the codec does, and leaves the rest
(anything unusual, anything the codec refuses) to the codec: compared on written entries, on
hypothesis-generated manifests, on mutations of plain entries and on hand-made odd encodings."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from castore._pb import manifest_pb2 as pb
from castore.errors import CastoreError
from castore.manifest import codec, wire
from castore.manifest.entries import split_entries
from castore.manifest.model import Manifest, RegularFile
from castore.manifest.plainread import plain_fields, plain_file
from tests.fuzz.strategies import examples, manifests, mutated

D = "sha256:" + "ab" * 32


def _codec(e: bytes) -> object:
    """What the codec makes of ``e``: a resource, or the error's type."""
    try:
        return codec.decode_entry(e)
    except CastoreError as exc:
        return type(exc)


def _agrees(e: bytes) -> bool:
    """plainread's answer for ``e`` is None or the codec's; True when it was not None."""
    got = plain_file(e)
    if got is None:
        return False
    want = _codec(e)
    assert got == want, (e, got, want)
    f = plain_fields(e)
    assert (
        f is not None
        and RegularFile(paths=(f[0],), perm=f[1], uid=f[2], gid=f[3], size=f[4], digest=f[5], mtime_ns=f[6]) == got
    )
    return True


def _files(n: int) -> list[RegularFile]:
    rng = random.Random(16)
    ids = [0, 1, 127, 128, 1000, 65534, 2**31 - 1, 2**32 - 2, 2**40, 2**63 - 1, -1, -(2**63)]
    sizes = [0, 1, 127, 128, 2048, 2**20, 2**40, 2**64 - 1]
    mtimes = [None, 0, 1, -1, -(10**18), 1_600_000_000_123_456_789, 2**62, 2**63 - 1, -(2**63)]
    names = ["a", "dir/file.txt", "x" * 200, "sp ace", "caf\u00e9", "raw-\udce9", "d/\u00fcber", "back\\slash"]
    out = []
    for i in range(n):
        out.append(
            RegularFile(
                paths=(f"/{i}/{rng.choice(names)}",),
                perm=rng.randrange(0o10000),
                uid=rng.choice(ids),
                gid=rng.choice(ids),
                size=rng.choice(sizes),
                digest=D,
                mtime_ns=rng.choice(mtimes),
            )
        )
    return out


def test_written_plain_files_read_back_as_the_codec_reads_them() -> None:
    files = _files(3000)
    entries, _ = split_entries(codec.dumps(Manifest.of(files)))
    taken = sum(_agrees(e) for e in entries)
    # Only raw (non-UTF-8) paths are not plain: their entry carries raw_path (field 19).
    assert taken == sum(1 for r in files if "\udce9" not in r.path)
    assert taken > 2500


def test_every_plain_file_wire_writes_is_read() -> None:
    for r in _files(500):
        data = wire.plain_file(r)
        if data is not None:
            assert plain_file(data) == r


@settings(max_examples=examples(300))
@given(manifests())
def test_generated_manifests(m: Manifest) -> None:
    entries, _ = split_entries(codec.dumps(m))
    for e, r in zip(entries, m.resources, strict=True):
        if _agrees(e):
            assert type(r) is RegularFile and len(r.paths) == 1
            assert not (r.chunks or r.holes or r.xattrs or r.ads)


@settings(max_examples=examples(600))
@given(st.data())
def test_mutated_plain_entries(data: st.DataObject) -> None:
    r = data.draw(st.sampled_from(_files(64)))
    seed = codec.to_proto(r).SerializeToString(deterministic=True)
    _agrees(data.draw(mutated(seed)))


@settings(max_examples=examples(300))
@given(st.binary(max_size=120))
def test_arbitrary_bytes(e: bytes) -> None:
    _agrees(e)
    _agrees(b"\x0a\x02/f" + e)


def _pb(**fields: object) -> bytes:
    return pb.Resource(**fields).SerializeToString()  # type: ignore[arg-type]


def test_odd_encodings() -> None:
    base = b"\x0a\x02/f\x30\xa4\x03\x38\x05\x42\x47" + D.encode()
    assert plain_file(base) == RegularFile(paths=("/f",), perm=0o644, size=5, digest=D)
    same = [
        base + b"\x38\x06",  # a later scalar replaces the earlier one (size 6)
        base + b"\x10\x05\x10\x07",  # uid 7
        b"\x38\x05" + base,  # out of field order: path not first -> not taken
        base + b"\x78\x05",  # mtime without has_mtime: None
        base + b"\x78\x05\x80\x01\x02",  # has_mtime of 2 is true
        base + b"\x80\x01\x01\x80\x01\x00",  # has_mtime true then false
        base + b"\x80\x01\x81\x00",  # a two-byte varint for true
        base + b"\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # uid -1
        base + b"\x38\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f",  # more than 64 bits
        base + b"\x30\x80\x80\x80\x80\x10",  # mode wider than 32 bits
        base + b"\x30\x80\x80\x80\x80\x08",  # a type bit (directory)
        base + b"\x30\x80\x80\x80\x80\x04",  # unknown bit (append): the codec refuses it
        base + b"\x30\xa4\x83\x80\x04",  # setuid
        base + b"\x42\x47" + D.encode(),  # a second digest
        base + b"\x22\x01a",  # user name (deprecated field)
        base + b"\x50\x01",  # major
        base + b"\x88\x01\x01",  # whiteout
        base + b"\x0a\x02/g",  # a second path
        base + b"\x9a\x01\x02/f",  # raw_path
        base[:-1],  # truncated digest
        base + b"\x10",  # truncated varint
        base + b"\x80\x01",  # truncated tag
        b"\x0a\x02\xff\xfe" + base[4:],  # path not UTF-8
        b"\x0a\x03\xed\xa0\x80" + base[4:],  # an encoded surrogate
        b"\x0a\x80\x01" + b"/" * 128 + base[4:],  # a long path
        b"\x0a\x82\x00/f" + base[4:],  # a path length in two bytes
        base.replace(b"sha256:", b"sha512:"),
        base.replace(b"\x42\x47", b"\x42\x07")[:13] + b"sha256:",  # short digest
        b"\x0a\x02/f\x42\x47" + D.encode(),  # no mode: perm 0
        b"",
        b"\x0a",
    ]
    for e in same:
        _agrees(e)
    assert plain_file(base + b"\x38\x06") is not None and plain_file(base + b"\x38\x06").size == 6  # type: ignore[union-attr]
    assert plain_file(base + b"\x80\x01\x02" + b"\x78\x05").mtime_ns == 5  # type: ignore[union-attr]
    assert plain_file(base + b"\x30\x80\x80\x80\x80\x04") is None


@settings(max_examples=examples(300))
@given(
    st.lists(st.text(max_size=6).map(lambda s: "/" + s), min_size=0, max_size=2),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
    st.lists(st.sampled_from([D, "sha256:", "sha1:x", "sha256:zz"]), max_size=2),
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.booleans(),
)
def test_protobuf_messages(
    paths: list[str], uid: int, mode: int, size: int, digests: list[str], mtime: int, has: bool, target: bool
) -> None:
    e = _pb(
        path=paths,
        uid=uid,
        gid=-uid if uid > -(2**63) else 0,
        mode=mode,
        size=size,
        digest=digests,
        mtime_ns=mtime,
        has_mtime=has,
        target="t" if target else "",
    )
    _agrees(e)
