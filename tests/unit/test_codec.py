"""Codec: round trips, determinism, Go FileMode bits, hostile bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from castore._pb import manifest_pb2 as pb
from castore.digest import hash_bytes
from castore.errors import CorruptManifest, InvalidManifest
from castore.manifest import (
    Chunk,
    Device,
    Directory,
    Manifest,
    NamedPipe,
    RegularFile,
    Socket,
    Symlink,
    Whiteout,
    codec,
    dumps,
    loads,
    render,
    validate,
)
from castore.manifest import gomode as gm

D1 = hash_bytes(b"one")
D2 = hash_bytes(b"two")


def sample() -> Manifest:
    return Manifest.of(
        [
            Directory(paths=("/etc",), perm=0o755, mtime_ns=5),
            RegularFile(
                paths=("/etc/hosts", "/etc/hosts.allow"),
                perm=0o644,
                size=3,
                digest=D1,
                xattrs=(("security.selinux", b"x"), ("user.a", b"\x00\xff")),
                mtime_ns=1_234_567_890_123,
            ),
            RegularFile(
                paths=("/big",),
                perm=0o4755,
                uid=1000,
                gid=1000,
                size=10,
                digest=D2,
                chunks=(Chunk(D1, 0, 4), Chunk(D2, 4, 10)),
                holes=((0, 2),),
            ),
            Symlink(paths=("/etc/l",), target="/abs/target"),
            Device(paths=("/dev/null",), char=True, major=1, minor=3, perm=0o666),
            Device(paths=("/dev/sda",), char=False, major=8, minor=0, perm=0o660),
            NamedPipe(paths=("/run/fifo",), perm=0o600),
            Socket(paths=("/run/sock",), perm=0o755),
            Whiteout(paths=("/gone",)),
            Directory(paths=("/tmp",), perm=0o1777, opaque=True),
            RegularFile(paths=("/bad-\udcff-name",), size=3, digest=D1),
        ]
    )


def test_round_trip_every_kind() -> None:
    m = sample()
    data = dumps(m)
    assert loads(data) == m
    assert dumps(loads(data)) == data


def test_go_mode_bits() -> None:
    by = {r.path: codec.go_mode(r) for r in sample().resources}
    assert by["/etc"] == gm.MODE_DIR | 0o755
    assert by["/big"] == gm.MODE_SETUID | 0o755
    assert by["/tmp"] == gm.MODE_DIR | gm.MODE_STICKY | 0o777
    assert by["/dev/null"] == gm.MODE_DEVICE | gm.MODE_CHAR_DEVICE | 0o666
    assert by["/dev/sda"] == gm.MODE_DEVICE | 0o660
    assert by["/run/fifo"] == gm.MODE_NAMED_PIPE | 0o600
    assert by["/run/sock"] == gm.MODE_SOCKET | 0o755
    assert by["/etc/l"] == gm.MODE_SYMLINK | 0o777


def test_non_utf8_names_round_trip_with_valid_field_1() -> None:
    data = dumps(sample())
    msg = pb.Manifest()
    msg.ParseFromString(data)  # would raise if field 1 held invalid UTF-8
    bad = [r for r in msg.resource if r.raw_path]
    assert len(bad) == 1 and bad[0].raw_path[0] == b"/bad-\xff-name"
    assert bad[0].path[0] == "/bad-\\xff-name"


def test_upstream_view_of_fields_1_to_13() -> None:
    """Upstream ignores fields >= 14: what it sees is still meaningful."""
    msg = pb.Manifest()
    msg.ParseFromString(dumps(sample()))
    hosts = next(r for r in msg.resource if r.path[0] == "/etc/hosts")
    assert list(hosts.path) == ["/etc/hosts", "/etc/hosts.allow"]
    assert list(hosts.digest) == [D1] and hosts.size == 3


def test_deterministic_bytes() -> None:
    rs = list(sample().resources)
    assert dumps(Manifest.of(rs)) == dumps(Manifest.of(list(reversed(rs))))


@pytest.mark.parametrize("data", [b"\x7a\x00", b"\xff\xff\xff\xff not a manifest", b"\x0a\x05\x0a\x03abc"[:4]])
def test_garbage_is_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptManifest):
        loads(data)


def test_zero_bytes_are_the_empty_manifest() -> None:
    """Upstream serializes an empty tree as zero bytes; so do we, and read them back."""
    assert loads(b"").resources == ()
    assert dumps(Manifest.of([])) == b""


def test_truncated_between_resources_still_refused_by_digest_check() -> None:
    """A truncated manifest may parse; the store checks digests before parsing."""
    data = dumps(sample())
    assert hash_bytes(data[:-5]) != hash_bytes(data)


def _res(**kw: object) -> bytes:
    msg = pb.Manifest()
    msg.resource.add(**kw)
    return msg.SerializeToString()


@pytest.mark.parametrize(
    "kw, why",
    [
        (dict(path=["/d"], mode=gm.MODE_DIR | 0o755, size=3), "size or digest"),
        (dict(path=["/l"], mode=gm.MODE_SYMLINK | 0o777, target="x", digest=[D1]), "size or digest"),
        (dict(path=["/f"], mode=0o644, target="x", digest=[D1]), "link target"),
        (dict(path=["/f"], mode=0o644 | gm.MODE_TEMPORARY, digest=[D1]), "unknown mode bits"),
        (dict(path=["/f"], mode=0o644 | (1 << 12), digest=[D1]), "unknown mode bits"),
        (dict(path=["/f"], mode=0o644), "sha256 digest"),
        (dict(path=["/f"], mode=gm.MODE_DIR | gm.MODE_SYMLINK), "impossible type"),
        (dict(path=["/d", "/e"], mode=gm.MODE_DIR | 0o755), "several paths"),
        (dict(path=[], mode=0o644, digest=[D1]), "without a path"),
        (dict(path=["/f"], mode=0o644, major=1, digest=[D1]), "device numbers"),
    ],
)
def test_impossible_resources(kw: dict[str, object], why: str) -> None:
    with pytest.raises(InvalidManifest, match=why):
        loads(_res(**kw))


@pytest.mark.parametrize(
    "path, why",
    [
        ("/../escaped", "'..' component"),
        ("relative", "not absolute"),
        ("", "not absolute"),
        ("/a//b", "empty component"),
        ("/a/./b", "'.' component"),
        ("/a/", "trailing slash"),
        ("/", "root"),
        ("/a\x00b", "NUL"),
        ("/" + "x" * 256, "NAME_MAX"),
    ],
)
def test_validator_refuses_bad_paths(path: str, why: str) -> None:
    m = Manifest((RegularFile(paths=(path,), size=3, digest=D1),))
    with pytest.raises(InvalidManifest, match=why):
        validate(m)


def test_validator_refuses_duplicates_and_entries_below_non_dirs() -> None:
    f = RegularFile(paths=("/a",), size=3, digest=D1)
    with pytest.raises(InvalidManifest, match="duplicate"):
        validate(Manifest((f, RegularFile(paths=("/a",), size=3, digest=D2))))
    with pytest.raises(InvalidManifest, match="duplicate"):
        validate(Manifest((RegularFile(paths=("/a", "/a"), size=3, digest=D1),)))
    for parent in (Symlink(paths=("/a",), target="/etc"), f, Device(paths=("/a",), char=True, major=1, minor=1)):
        with pytest.raises(InvalidManifest, match="below"):
            validate(Manifest.of([parent, RegularFile(paths=("/a/b/c",), size=3, digest=D1)]))


@pytest.mark.parametrize(
    "chunks, size",
    [
        ((Chunk(D1, 0, 4),), 10),
        ((Chunk(D1, 0, 4), Chunk(D2, 5, 10)), 10),
        ((Chunk(D1, 0, 6), Chunk(D2, 4, 10)), 10),
        ((Chunk(D1, 0, 4), Chunk(D2, 4, 12)), 10),
        ((Chunk("sha256:xyz", 0, 10),), 10),
    ],
)
def test_validator_refuses_bad_chunk_lists(chunks: tuple[Chunk, ...], size: int) -> None:
    with pytest.raises(InvalidManifest):
        validate(Manifest((RegularFile(paths=("/f",), size=size, digest=D1, chunks=chunks),)))


def test_validator_refuses_bad_digest_accepts_empty() -> None:
    with pytest.raises(InvalidManifest):
        validate(Manifest((RegularFile(paths=("/f",), size=1, digest="sha256:ABC"),)))
    assert validate(Manifest(())) == Manifest(())  # the empty tree (upstream: zero bytes)
    with pytest.raises(InvalidManifest):
        validate(Manifest((Device(paths=("/d",), char=True, major=1 << 20, minor=0),)))


# ------------------------------------------------------------------ properties

names = st.text(
    alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=12
).filter(lambda s: s not in (".", ".."))
xattrs = st.lists(
    st.tuples(
        st.sampled_from(["user.a", "user.b", "user.\udcff", "trusted.c", "trusted.\udcfe", "security.d"]),
        st.binary(max_size=8),
    ),
    unique_by=lambda kv: kv[0],
).map(lambda xs: tuple(sorted(xs)))


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    paths = draw(st.lists(names, min_size=1, max_size=8, unique=True))
    out = []
    for p in paths:
        common = dict(
            paths=("/" + p,),
            uid=draw(st.integers(0, 70000)),
            gid=draw(st.integers(0, 70000)),
            perm=draw(st.integers(0, 0o7777)),
            xattrs=draw(xattrs),
            mtime_ns=draw(st.one_of(st.none(), st.integers(-(2**62), 2**62))),
        )
        kind = draw(st.sampled_from(["file", "dir", "symlink", "dev", "fifo", "sock"]))
        if kind not in ("file", "dir"):  # Linux allows user.* xattrs only on files and directories
            common["xattrs"] = tuple(kv for kv in common["xattrs"] if not kv[0].startswith("user."))
        if kind == "file":
            size = draw(st.integers(0, 1 << 40))
            out.append(RegularFile(size=size, digest=hash_bytes(p.encode()), **common))
        elif kind == "dir":
            out.append(Directory(**common))
        elif kind == "symlink":
            out.append(Symlink(target=draw(st.one_of(names, names.map(lambda t: t + "\udcff"))), **common))
        elif kind == "dev":
            out.append(
                Device(
                    char=draw(st.booleans()),
                    major=draw(st.integers(0, 4095)),
                    minor=draw(st.integers(0, 2**20 - 1)),
                    **common,
                )
            )
        elif kind == "fifo":
            out.append(NamedPipe(**common))
        else:
            out.append(Socket(**common))
    return Manifest.of(out)


@settings(max_examples=200, deadline=None)
@given(manifests())
def test_property_loads_dumps_round_trip(m: Manifest) -> None:
    data = dumps(m)
    back = loads(data)
    assert back == m
    assert dumps(back) == data
    validate(back)


@settings(max_examples=100, deadline=None)
@given(manifests())
def test_property_text_and_json_renderings(m: Manifest) -> None:
    assert codec.dumps_text(m)
    import json

    assert len(json.loads(render.dumps_json(m))["resources"]) == len(m.resources)
