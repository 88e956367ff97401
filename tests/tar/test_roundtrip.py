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
from tests.helpers import ROOT, have

pytestmark = pytest.mark.skipif(not ROOT, reason="needs root (devices, owners, trusted xattrs)")
GNU_X = ["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"]


def make_tree(root: Path, *, libarchive: bool = False) -> Path:
    """A tree with every kind of entry. ``libarchive``: no negative fractional mtime, which
    libarchive writes and reads as floor seconds plus a positive fraction (``-2.5`` for -1.5 s)
    where POSIX and GNU tar read a plain decimal."""
    root.mkdir()
    (root / "a").write_bytes(b"hello\n")
    os.setxattr(root / "a", "user.note", b"v\x00\xff")
    (root / "big").write_bytes(os.urandom(3 << 20) + bytes(1 << 20))
    (root / "empty").write_bytes(b"")
    (root / "d").mkdir()
    os.setxattr(root / "d", "trusted.tag", b"t")
    os.link(root / "a", root / "d/hl")
    os.symlink("../a", root / "d/sym")
    os.symlink("x" * 180, root / "d/longtarget")
    deep = root / ("n" * 120) / ("m" * 120)
    deep.mkdir(parents=True)
    (deep / "file").write_bytes(b"deep\n")
    os.mkfifo(root / "fifo")
    os.mknod(root / "cdev", 0o620 | 0o020000, os.makedev(1, 3))
    os.mknod(root / "bdev", 0o640 | 0o060000, os.makedev(7, 0))
    (root / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "suid", 0o4755)
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    (root / "bigid").write_bytes(b"owner\n")
    os.chown(root / "bigid", 3_000_000, 4_000_000)
    (root / os.fsdecode(b"caf\xe9")).write_bytes(b"latin-1 name\n")
    with open(root / "sparse", "wb") as f:
        f.truncate(10 << 20)
        f.seek(5 << 20)
        f.write(b"data in the middle")
    with open(root / "sparse-tail", "wb") as f:
        f.write(b"head" * 2000)
        f.truncate(3 << 20)
    os.utime(root / "a", ns=(1_577_836_800_123_456_789, 1_577_836_800_123_456_789))
    neg = -2_000_000_000 if libarchive else -1_500_000_000
    os.utime(root / "empty", ns=(neg, neg))
    for dirpath, dirnames, _ in os.walk(root, topdown=False):
        for d in dirnames:
            os.utime(os.path.join(dirpath, d), ns=(1_600_000_000_500_000_000, 1_600_000_000_500_000_000))
    return root


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src")


@pytest.fixture
def src_la(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src", libarchive=True)


def _run(*argv: object) -> None:
    subprocess.run([os.fspath(a) if isinstance(a, Path) else a for a in argv], check=True,  # type: ignore[misc]
                   capture_output=True)


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
    src = make_tree(tmp_path / "src", libarchive=tool == "bsdtar")
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
