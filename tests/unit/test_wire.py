"""castore.manifest.wire writes the same bytes as the protobuf library for the resources it takes."""

from __future__ import annotations

import random

from castore.manifest import codec, wire
from castore.manifest.model import Chunk, Manifest, RegularFile

D = "sha256:" + "ab" * 32


def _files(n: int) -> list[RegularFile]:
    rng = random.Random(16)
    ids = [0, 1, 127, 128, 1000, 65534, 2**31 - 1, 2**40]
    sizes = [0, 1, 127, 128, 2048, 2**20, 2**40]
    mtimes = [None, 0, 1, -1, -(10**18), 1_600_000_000_123_456_789, 2**62]
    names = ["a", "dir/file.txt", "x" * 200, "sp ace", "caf\u00e9", "raw-\udce9", "d/\u00fcber"]
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


def test_plain_files_match_the_protobuf_library() -> None:
    taken = 0
    for r in _files(3000):
        want = codec.to_proto(r).SerializeToString(deterministic=True)
        got = wire.plain_file(r)
        if got is not None:
            taken += 1
            assert got == want, r
        else:
            assert not r.paths[0].isascii()  # only non-ASCII paths are left to the library
    assert taken > 1500


def test_other_files_are_left_to_the_library() -> None:
    base = dict(paths=("/f",), perm=0o644, uid=0, gid=0, size=10, digest=D)
    for r in (
        RegularFile(**base, xattrs=(("user.a", b"1"),)),  # type: ignore[arg-type]
        RegularFile(**{**base, "paths": ("/f", "/g")}),  # type: ignore[arg-type]
        RegularFile(**base, chunks=(Chunk(D, 0, 10),)),  # type: ignore[arg-type]
        RegularFile(**base, holes=((0, 5),)),  # type: ignore[arg-type]
    ):
        assert wire.plain_file(r) is None


def test_dumps_round_trips() -> None:
    m = Manifest.of(_files(500))
    data = codec.dumps(m)
    assert codec.dumps(codec.loads(data)) == data
    assert data == b"".join(
        b"\x0a" + wire.varint(len(b)) + b
        for b in (codec.to_proto(r).SerializeToString(deterministic=True) for r in m.resources)
    )


def test_varint() -> None:
    for n in (0, 1, 127, 128, 300, 2**63 - 1):
        assert codec._varint(n) == wire.varint(n)
    assert wire.varint(-1) == b"\xff" * 9 + b"\x01"  # int64 -1, as protobuf writes it
