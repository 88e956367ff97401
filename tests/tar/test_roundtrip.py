"""Tar round trips: GNU tar and bsdtar archives ingest to the manifest of their extracted tree, and
export writes a deterministic tar that both tools extract to exactly the source tree."""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

import pytest
import zstandard

from castore.ingest import ingest
from castore.tar.exporter import export_tar
from castore.tar.importer import ingest_tar
from castore.testing.compare import assert_trees_equal
from castore.testing.trees import special_files
from tests.helpers import ROOT, have

pytestmark = pytest.mark.skipif(not ROOT, reason="needs root (devices, owners, trusted xattrs)")
GNU_X = ["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return special_files(tmp_path / "src")


@pytest.fixture
def src_la(tmp_path: Path) -> Path:
    return special_files(tmp_path / "src", libarchive=True)


def _run(*argv: object) -> None:
    subprocess.run(
        [os.fspath(a) if isinstance(a, Path) else a for a in argv],
        check=True,  # type: ignore[misc]
        capture_output=True,
    )


@pytest.mark.parametrize("fmt", ["posix", "gnu"])
def test_gnu_tar_stream_equals_ingest_of_extracted_tree(store, src, tmp_path, fmt):
    t = tmp_path / "t.tar"
    xattrs = ["--xattrs", "--xattrs-include=*"] if fmt == "posix" else []  # GNU format has no xattrs
    _run("tar", *xattrs, "--sparse", f"--format={fmt}", "-C", src, "-cf", t, ".")
    out = tmp_path / "x"
    out.mkdir()
    _run(*GNU_X, t, "-C", out)
    assert ingest_tar(store, str(t)) == ingest(store, str(out), progress=False)


@pytest.mark.skipif(not have("bsdtar"), reason="bsdtar (libarchive-tools) missing")
def test_bsdtar_stream_equals_ingest_of_extracted_tree(store, src_la, tmp_path):
    src = src_la
    t = tmp_path / "t.tar"
    _run("bsdtar", "--format", "pax", "--xattrs", "-C", src, "-cf", t, ".")
    out = tmp_path / "x"
    out.mkdir()
    _run("bsdtar", "--xattrs", "--numeric-owner", "-xpf", t, "-C", out)
    assert ingest_tar(store, str(t)) == ingest(store, str(out), progress=False)


@pytest.mark.parametrize("tool", ["gnu", "bsdtar"])
def test_export_extracts_to_the_source_tree(store, tmp_path, tool):
    if tool == "bsdtar" and not have("bsdtar"):
        pytest.skip("bsdtar missing")
    src = special_files(tmp_path / "src", libarchive=tool == "bsdtar")
    d = ingest(store, str(src), progress=False)
    t = tmp_path / "e.tar"
    export_tar(store, store.load_manifest(d), str(t))
    out = tmp_path / "x"
    out.mkdir()
    if tool == "gnu":
        _run(*GNU_X, t, "-C", out)
    else:
        _run("bsdtar", "--xattrs", "--numeric-owner", "-xpf", t, "-C", out)
    assert_trees_equal(src, out)
    st = os.stat(out / "sparse")
    assert st.st_blocks * 512 < 1 << 20, "holes were not restored"
    assert ingest_tar(store, str(t)) == d  # and the tar carries the same manifest back


def test_export_is_deterministic_and_compresses(store, src, tmp_path, cli):
    d = ingest(store, str(src), progress=False)
    m = store.load_manifest(d)
    outs = {}
    for comp in (None, "gzip", "zstd"):
        a, b = tmp_path / f"a-{comp}", tmp_path / f"b-{comp}"
        export_tar(store, m, str(a), compress=comp)
        export_tar(store, m, str(b), compress=comp)
        assert a.read_bytes() == b.read_bytes()
        outs[comp] = a.read_bytes()
    assert gzip.decompress(outs["gzip"]) == outs[None]
    assert zstandard.ZstdDecompressor().decompressobj().decompress(outs["zstd"]) == outs[None]
    # CLI: export to stdout, and ingest the compressed streams from stdin.
    p = cli("export", d, "-o", "-")
    assert p.returncode == 0 and p.stdout == outs[None]
    for comp in ("gzip", "zstd"):
        q = cli("ingest", "--tar", "-", input=outs[comp])
        assert q.returncode == 0, q.stderr
        assert q.stdout.decode().strip() == d


def test_export_refuses_corrupt_content(store, tmp_path, cli):
    (tmp_path / "s").mkdir()
    (tmp_path / "s/f").write_bytes(b"precious content\n")
    d = ingest(store, str(tmp_path / "s"), progress=False)
    f = store.load_manifest(d).files()[0]
    blob = store.blob_path(f.digest)
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as fh:
        fh.write(b"P")
    p = cli("export", d, "-o", tmp_path / "out.tar")
    assert p.returncode == 4 and b"corrupt" in p.stderr
    assert not (tmp_path / "out.tar").exists()
    assert [n for n in os.listdir(tmp_path) if "out.tar" in n] == []


def test_export_to_a_directory_or_nowhere_is_a_clear_error(store, tmp_path, cli):
    (tmp_path / "s").mkdir()
    (tmp_path / "s/f").write_bytes(b"x\n")
    d = ingest(store, str(tmp_path / "s"), progress=False)
    (tmp_path / "out").mkdir()
    p = cli("export", d, "-o", tmp_path / "out")
    assert p.returncode == 1 and str(tmp_path / "out").encode() + b": is a directory" in p.stderr
    assert os.listdir(tmp_path / "out") == [] and len(p.stderr.splitlines()) == 1
    q = cli("export", d, "-o", tmp_path / "missing/x.tar")
    assert q.returncode == 1 and b"no such directory" in q.stderr and b"Traceback" not in q.stderr
