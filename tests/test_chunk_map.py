"""Manifests without chunk lists (`continuity build`, upstream's Go build) of content the store holds
as chunks only (files >= 1 MiB): served through the chunk map (whole-file digest -> chunks) by every
verb that reads content; gc keeps what such a manifest needs and drops map rows that cannot serve.
Also (issue 11, item 10): a tar ingest and a hardlink checkout survive a gc that runs meanwhile."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from castore.manifest import codec
from castore.store import Store
from castore.store.meta import dkey
from tests.helpers import run_cli

BIG = 3 << 20


def big_tree(root: Path) -> Path:
    (root / "d").mkdir(parents=True)
    (root / "d/big.bin").write_bytes(os.urandom(BIG))
    (root / "d/small.txt").write_bytes(b"small\n")
    (root / "top.bin").write_bytes(os.urandom(1 << 20) + b"x")  # just over the threshold
    return root


def _unchunked(path: Path) -> bytes:
    """A manifest file as `continuity build` writes it: no chunk lists, big files by whole digest."""
    data = path.read_bytes()
    m = codec.loads(data, source=str(path))
    big = [r for r in m.files() if r.size >= 1 << 20]
    assert len(big) == 2 and not any(r.chunks for r in big)
    return data


def _same(a: Path, b: Path) -> None:
    assert (a / "d/big.bin").read_bytes() == (b / "d/big.bin").read_bytes()
    assert (a / "top.bin").read_bytes() == (b / "top.bin").read_bytes()


def serve_everywhere(tmp_path: Path, store: Path, src: Path, manifest: Path) -> None:
    """Checkout (copy, hardlink, auto), tag, apply and export of ``manifest``; each verified."""

    def cli(*a: object) -> subprocess.CompletedProcess[bytes]:
        return run_cli(*a, store=store, check=True)

    for link in ("copy", "hardlink", "auto"):
        out = tmp_path / f"co-{link}"
        cli("checkout", "--link", link, manifest, out)
        cli("verify", out, manifest)
        _same(out, src)
    digest = cli("tag", manifest, "built").stdout.decode().strip()
    assert Store.open(str(store)).manifest_indexed(digest)
    cli("checkout", "--link", "hardlink", "built", tmp_path / "co-tagged")
    cli("verify", tmp_path / "co-tagged", "built")
    for ref in (manifest, "built"):
        root = tmp_path / f"apply-{ref == 'built'}"
        root.mkdir()
        cli("apply", root, ref)
        cli("verify", root, manifest)
        _same(root, src)
    tar = tmp_path / "export.tar"
    cli("export", "built", "-o", tar)
    ex = tmp_path / "extracted"
    ex.mkdir()
    with tarfile.open(tar) as t:
        t.extractall(ex, filter="fully_trusted")
    _same(ex, src)


def test_manifest_without_chunk_lists_is_served(tmp_path: Path) -> None:
    store = tmp_path / "store"
    src = big_tree(tmp_path / "src")
    run_cli("ingest", src, "--name", "ingested", store=store, check=True)
    manifest = tmp_path / "built.pb"
    manifest.write_bytes(run_cli("build", src, check=True).stdout)
    _unchunked(manifest)
    serve_everywhere(tmp_path, store, src, manifest)

    # gc: the ingested manifest goes; the tag on the built one keeps the chunks its files need.
    run_cli("rm", "ingested", store=store, check=True)
    run_cli("gc", "--grace", "0", store=store, check=True)
    p = run_cli("fsck", store=store)
    assert p.returncode == 0, p.stderr.decode() + p.stdout.decode()
    run_cli("checkout", "built", tmp_path / "after-gc", store=store, check=True)
    _same(tmp_path / "after-gc", src)

    # Nothing references it any more: chunks and chunk-map rows go.
    s = Store.open(str(store))
    m = codec.loads(manifest.read_bytes())
    whole = [r.digest for r in m.files() if r.size >= 1 << 20]
    assert set(s.chunk_lists(whole)) == set(whole)
    run_cli("rm", "built", store=store, check=True)
    run_cli("gc", "--grace", "0", store=store, check=True)
    assert s.chunk_lists(whole) == {}
    with s.meta.read() as txn:
        assert all(txn.get(dkey(d), db=s.meta.db("chunkmap")) is None for d in whole)
    p = run_cli("checkout", manifest, tmp_path / "gone", store=store)
    assert p.returncode == 4 and b"not found" in p.stderr.lower(), p.stderr


def test_tar_ingest_records_the_chunk_map(tmp_path: Path) -> None:
    """`ingest --tar` writes the map too: a built manifest of the same tree is served."""
    store = tmp_path / "store"
    src = big_tree(tmp_path / "src")
    tar = tmp_path / "t.tar"
    subprocess.run(["tar", "-C", src, "-cf", tar, "."], check=True)
    run_cli("ingest", "--tar", tar, "--name", "t", store=store, check=True)
    manifest = tmp_path / "built.pb"
    manifest.write_bytes(run_cli("build", src, check=True).stdout)
    run_cli("checkout", manifest, tmp_path / "co", store=store, check=True)
    _same(tmp_path / "co", src)


def test_fsck_finds_a_chunk_map_row_that_lies(tmp_path: Path) -> None:
    store = tmp_path / "store"
    src = big_tree(tmp_path / "src")
    run_cli("ingest", src, "--name", "t", store=store, check=True)
    s = Store.open(str(store))
    m = s.load_manifest(s.resolve("t"))
    big, top = sorted((r for r in m.files() if r.chunks), key=lambda r: r.size, reverse=True)
    # Map the big file's digest to the other file's chunks (as corrupt metadata would).
    from castore.store import pack_chunks

    s.meta.write(lambda t: t.put(dkey(big.digest), pack_chunks(top.chunks), db=s.meta.db("chunkmap")))
    p = run_cli("fsck", "--json", store=store)
    assert p.returncode == 4 and b"bad-chunk-map" in p.stdout, p.stdout
    # Serving never hands out content that does not add up: checkout of a built manifest fails cleanly.
    manifest = tmp_path / "built.pb"
    manifest.write_bytes(run_cli("build", src, check=True).stdout)
    s.meta.write(
        lambda t: t.put(
            dkey(big.digest),
            pack_chunks(
                top.chunks[:-1] + (type(top.chunks[-1])(top.chunks[-1].digest, top.chunks[-1].begin, big.size),)
            ),
            db=s.meta.db("chunkmap"),
        )
    )
    p = run_cli("checkout", manifest, tmp_path / "co", store=store)
    assert p.returncode == 4, p.stderr
    assert not (tmp_path / "co").exists()
    run_cli("fsck", "--repair", store=store)
    assert s.chunk_lists([big.digest]) == {}


# ---- item 10: gc while a tar ingest / a hardlink checkout runs -----------------------------------------


def _paused(
    args: list[object], store: Path, point: str, flag: Path, stdin: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start the CLI with CONTINUITY_PAUSE at ``point``; returns once it waits there."""
    env = {**os.environ, "CONTINUITY_PAUSE": f"{point}:{flag}"}
    with open(stdin or os.devnull, "rb") as inp:
        proc = subprocess.Popen(
            [sys.executable, "-m", "castore", "--store", str(store), *map(str, args)],
            stdin=inp,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
    deadline = time.monotonic() + 60
    while not flag.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate()
            pytest.fail(f"never paused at {point}: {err.decode(errors='replace')}")
        time.sleep(0.02)
    return proc


def _resume(proc: subprocess.Popen[bytes], flag: Path) -> tuple[int, bytes, bytes]:
    flag.unlink()
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.mark.parametrize("size", ["small", "large", "pipe"])
def test_tar_ingest_survives_gc_of_what_it_deduplicated_against(tmp_path: Path, size: str) -> None:
    """A tar ingest finds its content in the store, unreferenced; gc frees it before the commit."""
    store = tmp_path / "store"
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"f{i}").write_bytes(os.urandom(3000 + i))
    (src / "big.bin").write_bytes(os.urandom(BIG))
    tar = tmp_path / "t.tar"
    subprocess.run(["tar", "-C", src, "-cf", tar, "."], check=True)
    if size == "large":  # past tarcontent.PARALLEL_MIN: worker processes read by offset
        (src / "huge.bin").write_bytes(os.urandom(17 << 20))
        subprocess.run(["tar", "-C", src, "-cf", tar, "."], check=True)
    run_cli("ingest", "--tar", tar, "--name", "old", store=store, check=True)
    run_cli("rm", "old", store=store, check=True)  # its blobs: in the store, referenced by nothing
    flag = tmp_path / "paused"
    proc = _paused(
        ["ingest", "--tar", "-" if size == "pipe" else tar, "--name", "new"],
        store,
        "tar-before-commit",
        flag,
        stdin=tar if size == "pipe" else None,
    )
    run_cli("gc", "--grace", "0", store=store, check=True)
    assert not any((store / "blobs/sha256").glob("*/*")), "gc freed nothing: the test does not test"
    rc, out, err = _resume(proc, flag)
    assert rc == 0, err.decode(errors="replace")
    run_cli("checkout", "new", tmp_path / "co", store=store, check=True)
    run_cli("verify", tmp_path / "co", "new", store=store, check=True)
    assert (tmp_path / "co/big.bin").read_bytes() == (src / "big.bin").read_bytes()
    p = run_cli("fsck", store=store)
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()


def test_gc_leaves_a_running_hardlink_checkouts_new_objects(tmp_path: Path) -> None:
    store = tmp_path / "store"
    src = big_tree(tmp_path / "src")
    run_cli("ingest", src, "--name", "t", store=store, check=True)
    flag = tmp_path / "paused"
    proc = _paused(["checkout", "--link", "hardlink", "t", tmp_path / "co"], store, "checkout-object-written", flag)
    run_cli("gc", "--grace", "0", store=store, check=True)
    rc, out, err = _resume(proc, flag)
    assert rc == 0, err.decode(errors="replace")
    run_cli("verify", tmp_path / "co", "t", store=store, check=True)
    assert not list((store / "links").glob("*/.tmp-*"))


def test_rebuild_index_restores_the_chunk_map(tmp_path: Path) -> None:
    store = tmp_path / "store"
    src = big_tree(tmp_path / "src")
    run_cli("ingest", src, "--name", "t", store=store, check=True)
    manifest = tmp_path / "built.pb"
    manifest.write_bytes(run_cli("build", src, check=True).stdout)
    run_cli("tag", manifest, "built", store=store, check=True)
    run_cli("fsck", "--rebuild-index", store=store, check=True)
    run_cli("checkout", "built", tmp_path / "co", store=store, check=True)
    _same(tmp_path / "co", src)
    p = run_cli("fsck", store=store)
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()
