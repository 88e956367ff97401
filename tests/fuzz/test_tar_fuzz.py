"""Property tests of the tar reader: any stream gives members or castore's error, in bounded memory."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import tarfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from castore.errors import CastoreError
from castore.tar.format import parse_header, parse_number, parse_pax, pax_int, pax_time_ns
from castore.tar.reader import Stream, members, open_stream
from tests.fuzz.strategies import examples, mutated


def _tarfile_seed(fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:

        def add(name: str, typ: bytes, data: bytes = b"", **kw: object) -> None:
            ti = tarfile.TarInfo(name)
            ti.type, ti.size, ti.mode, ti.mtime = typ, len(data), 0o644, 1_700_000_000
            for k, v in kw.items():
                setattr(ti, k, v)
            tf.addfile(ti, io.BytesIO(data) if data else None)

        add("d", tarfile.DIRTYPE, mode=0o755)
        add("d/file", tarfile.REGTYPE, b"hello\n" * 30)
        if fmt != tarfile.USTAR_FORMAT:
            add("d/" + "long" * 40, tarfile.REGTYPE, b"x" * 600)
        add("d/sym", tarfile.SYMTYPE, linkname="file")
        add("d/hard", tarfile.LNKTYPE, linkname="d/file")
        add("d/fifo", tarfile.FIFOTYPE)
        add("d/null", tarfile.CHRTYPE, devmajor=1, devminor=3)
        if fmt == tarfile.PAX_FORMAT:
            add("d/x", tarfile.REGTYPE, b"attrs", pax_headers={"SCHILY.xattr.user.a": "v", "mtime": "1.5"})
    return buf.getvalue()


def _gnu_sparse_seeds(tmp: Path) -> list[bytes]:
    """GNU tar's sparse formats (old GNU, PAX 0.0, 0.1, 1.0), when GNU tar is here."""
    if shutil.which("tar") is None:
        return []
    src = tmp / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.write(b"a")
        f.seek(20_000)
        f.write(b"b")
    out = []
    for args in (
        ["--format=gnu"],
        ["--format=posix", "--sparse-version=0.0"],
        ["--format=posix", "--sparse-version=0.1"],
        ["--format=posix", "--sparse-version=1.0"],
    ):
        p = subprocess.run(["tar", *args, "--sparse", "-cf", "-", "-C", str(src), "."], capture_output=True)
        if p.returncode == 0:
            out.append(p.stdout)
    return out


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    plain = [_tarfile_seed(f) for f in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT)]
    plain += _gnu_sparse_seeds(tmp_path_factory.mktemp("sparse"))
    return plain + [gzip.compress(plain[1], mtime=0)]


def _consume(stream: Stream) -> int:
    """Read every member's data; return the number of members."""
    n = 0
    buf = memoryview(bytearray(1 << 16))
    for m in members(stream):
        n += 1
        while m.readinto(buf):
            pass
    return n


def _read_all(data: bytes, tmp: Path) -> None:
    """Both paths of the reader (a pipe-like stream, and a file read by offset); castore's errors only,
    memory bounded by the input plus fixed buffers: the file's 1 MiB read buffer, a decoder's 1 MiB
    read size, the decoded stream's 1 MiB buffer (xz, bzip2: castore/tar/decompress.py), the stream's
    1 MiB block and at most a 1 MiB extension header. (Found by hypothesis: a lone zstd magic number
    peaks at 3.07 MiB, a lone bzip2 magic `BZh` at 4.07 MiB; a 16 MiB valid .tar.bz2 at 6.2 MiB, the
    same as a 1 MiB one: constant in the input size.)"""
    tracemalloc.start()
    try:
        try:
            _consume(Stream(io.BufferedReader(io.BytesIO(data))))  # type: ignore[arg-type]
        except CastoreError:
            pass
        path = tmp / "in.tar"
        path.write_bytes(data)
        try:
            with open_stream(str(path)) as s:
                _consume(s)
        except CastoreError:
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < (5 << 20) + 64 * len(data), f"peak {peak} bytes for a {len(data)}-byte stream"


@settings(max_examples=examples(60))
@given(st.data())
def test_mutated_tars(seeds: list[bytes], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(seeds))
    _read_all(data.draw(mutated(seed)), tmp_path_factory.getbasetemp())


@settings(max_examples=examples(60))
@given(st.binary(max_size=2048))
@example(data=b"BZh")  # found by hypothesis in CI: a lone bzip2 magic (4.07 MiB of fixed buffers)
@example(data=b"\x28\xb5\x2f\xfd")  # a lone zstd magic (3.07 MiB)
def test_arbitrary_tars(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    _read_all(data, tmp_path_factory.getbasetemp())


@settings(max_examples=examples(150))
@given(st.binary(min_size=512, max_size=512))
def test_header_fields(block: bytes) -> None:
    for f in (
        lambda: parse_header(block, 0),
        lambda: parse_number(block[124:136]),
        lambda: parse_pax(block, 0),
        lambda: pax_int(b"size", block[:24]),
        lambda: pax_time_ns(block[:30]),
    ):
        try:
            f()
        except CastoreError:
            pass


@settings(max_examples=examples(150))
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    b"path",
                    b"size",
                    b"mtime",
                    b"GNU.sparse.map",
                    b"GNU.sparse.major",
                    b"GNU.sparse.realsize",
                    b"linkpath",
                    b"SCHILY.xattr.user.a",
                    b"LIBARCHIVE.xattr.user.%41",
                    b"GNU.sparse.offset",
                    b"uid",
                ]
            ),
            st.binary(max_size=30),
        ),
        max_size=4,
    ),
    st.sampled_from([b"x", b"g"]),
    st.binary(max_size=64),
)
def test_pax_records(
    tmp_path_factory: pytest.TempPathFactory, records: list[tuple[bytes, bytes]], typ: bytes, body: bytes
) -> None:
    """A PAX header with arbitrary (well-framed) records in front of a small member."""
    pax = b""
    for k, v in records:
        rec = b" " + k + b"=" + v + b"\n"
        n = len(rec) + 1
        while len(str(n).encode()) + len(rec) != n:
            n += 1
        pax += str(n).encode() + rec
    t = tarfile.TarInfo("PaxHeader")
    t.type, t.size = typ, len(pax)
    m = tarfile.TarInfo("f")
    m.size = len(body)
    out = (
        t.tobuf(tarfile.USTAR_FORMAT)
        + pax
        + b"\0" * (-len(pax) % 512)
        + m.tobuf(tarfile.USTAR_FORMAT)
        + body
        + b"\0" * (-len(body) % 512)
        + b"\0" * 1024
    )
    _read_all(out, tmp_path_factory.getbasetemp())


def test_seeds_are_read_whole(seeds: list[bytes], tmp_path: Path) -> None:
    """The seeds themselves are valid: every member comes out (the mutations start from real streams)."""
    for s in seeds:
        path = tmp_path / "s.tar"
        path.write_bytes(s)
        with open_stream(str(path)) as st_:
            assert _consume(st_) >= 1
    assert os.path.getsize(path) > 0
