"""Export trusts a blob only while the store's verified record still matches it (castore.tar.export_source):
same bytes whether blobs are trusted (kernel copy) or hashed, and a blob changed since it was
verified is caught."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from castore.ingest import ingest
from castore.store import Store
from castore.tar.export_source import load_records, vkey
from castore.tar.exporter import export_tar
from castore.tar.importer import ingest_tar


def _tree(root: Path) -> Path:
    root.mkdir()
    (root / "small").write_bytes(b"small file\n" * 100)
    (root / "big").write_bytes(os.urandom(3 << 20))
    with open(root / "sparse", "wb") as f:
        f.write(b"head" * 3000)
        f.truncate(2 << 20)
        f.seek(1 << 20)
        f.write(b"tail")
    os.link(root / "small", root / "small.link")
    return root


def _blobs(store: Store, digest: str) -> set[str]:
    return set(store.manifest_refs(digest))


def _drop_records(store: Store, digests: set[str]) -> None:
    db = store.meta.db("links")
    store.meta.write(lambda t: [t.delete(vkey(d), db=db) for d in digests])


def test_trusted_and_hashed_exports_are_identical(store: Store, cli, tmp_path: Path):
    src = _tree(tmp_path / "src")
    t = tmp_path / "in.tar"
    subprocess.run(["tar", "--sparse", "--format=posix", "-C", src, "-cf", t, "."], check=True)
    d = ingest_tar(store, str(t))
    blobs = _blobs(store, d)
    assert set(load_records(store, blobs)) == {vkey(b) for b in blobs}  # ingest --tar recorded what it wrote
    m = store.load_manifest(d)
    export_tar(store, m, str(tmp_path / "trusted.tar"))
    p = cli("export", d, "-o", "-")  # trusted, to a pipe
    assert p.returncode == 0, p.stderr
    _drop_records(store, blobs)
    export_tar(store, m, str(tmp_path / "hashed.tar"))
    assert set(load_records(store, blobs)) == {vkey(b) for b in blobs}  # export recorded what it hashed
    hashed = (tmp_path / "hashed.tar").read_bytes()
    assert (tmp_path / "trusted.tar").read_bytes() == hashed == p.stdout
    x = tmp_path / "x"
    x.mkdir()
    subprocess.run(["tar", "-xf", tmp_path / "trusted.tar", "-C", x], check=True)
    assert (x / "big").read_bytes() == (src / "big").read_bytes()
    assert (x / "sparse").read_bytes() == (src / "sparse").read_bytes()


def test_blob_changed_after_its_record_is_caught(store: Store, cli, tmp_path: Path):
    src = _tree(tmp_path / "src")
    d = ingest(store, str(src), progress=False)
    export_tar(store, store.load_manifest(d), str(tmp_path / "first.tar"))  # hashes, then records
    f = next(r for r in store.load_manifest(d).files() if r.paths[0] == "/small")
    assert load_records(store, {f.digest})
    blob = store.blob_path(f.digest)
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as fh:
        fh.write(b"S")
    for out in ("-o", "-"), ("-o", str(tmp_path / "second.tar")):
        p = cli("export", d, *out)
        assert p.returncode == 4 and b"corrupt" in p.stderr, p.stderr
    assert not (tmp_path / "second.tar").exists()
    assert [n for n in os.listdir(tmp_path) if "second.tar" in n] == []
