"""fsck: damage found and attributed, repair + heal by re-ingest, garbage LMDB, rebuild-index."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from castore.store import Store
from castore.testing.trees import make_tree
from tests.gc.gc_util import fsck_json, kinds

PAYLOAD = {"etc/keep.conf": b"keep me\n" * 500, "bin/tool": os.urandom(20_000), "small": b"s\n"}


@pytest.fixture
def tree(cli, tmp_path: Path, store_path: Path):  # type: ignore[no-untyped-def]
    src = make_tree(tmp_path / "src", PAYLOAD)
    d = cli("ingest", src, "--name", "app", check=True).stdout.decode().strip()
    cli("ingest", make_tree(tmp_path / "other", {"x": b"other\n"}), "--name", "other", check=True)
    s = Store.open(str(store_path))
    m = s.load_manifest(d)
    f = next(r for r in m.files() if r.path == "/bin/tool")
    return src, d, s.blob_path(f.digest), f.digest


def _writable(path: str) -> None:
    os.chmod(path, 0o644)


def test_clean_store_is_sound(cli, tree) -> None:  # type: ignore[no-untyped-def]
    rc, rep = fsck_json(cli, "--read-data")
    assert rc == 0 and rep["ok"] and rep["read_size"] > 20_000
    assert cli("fsck").stdout.startswith(b"fsck: store sound")


def test_flipped_byte_found_by_read_data_with_names_and_paths(cli, tree) -> None:  # type: ignore
    _, _, blob, digest = tree
    _writable(blob)
    with open(blob, "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0xFF]))
    assert fsck_json(cli, "--no-read-data")[0] == 0  # same size: only re-reading finds it
    assert fsck_json(cli)[0] == 4  # fsck re-reads by default (SPEC)
    rc, rep = fsck_json(cli, "--read-data")
    assert rc == 4 and not rep["ok"]
    (f,) = [f for f in rep["findings"] if f["severity"] == "error"]
    assert f["kind"] == "corrupt-blob" and f["subject"] == digest
    assert any(n.startswith("app") for n in f["names"]) and "/bin/tool" in f["paths"]
    p = cli("fsck", "--read-data")
    assert p.returncode == 4 and b"/bin/tool" in p.stdout and b"DAMAGED" in p.stdout
    # Subsets split the work: exactly one of 1/2 and 2/2 finds it.
    found = [fsck_json(cli, "--read-data-subset", f"{i}/2")[0] for i in (1, 2)]
    assert sorted(found) == [0, 4]
    assert cli("fsck", "--read-data-subset", "3/2").returncode == 2


def test_truncated_blob_is_a_size_mismatch(cli, tree) -> None:  # type: ignore[no-untyped-def]
    _, _, blob, digest = tree
    _writable(blob)
    os.truncate(blob, 10)
    rc, rep = fsck_json(cli)
    assert rc == 4 and kinds(rep, "error") == {"size-mismatch"}
    (f,) = [f for f in rep["findings"] if f["severity"] == "error"]
    assert f["subject"] == digest and "/bin/tool" in f["paths"]


def test_deleted_blob_then_repair_then_reingest_heals(cli, tree, tmp_path: Path) -> None:  # type: ignore
    src, d, blob, digest = tree
    os.unlink(blob)
    rc, rep = fsck_json(cli)
    assert rc == 4 and kinds(rep, "error") == {"missing-blob"}
    rc, rep = fsck_json(cli, "--repair")
    assert rc == 4 and rep["incomplete"] and rep["incomplete"][0].startswith("app")
    assert all(f["repaired"] for f in rep["findings"] if f["kind"] == "missing-blob")
    rc, rep = fsck_json(cli)
    assert rc == 4 and kinds(rep, "error") == {"dangling-ref"}
    assert cli("checkout", "app", tmp_path / "no").returncode == 4
    assert cli("ingest", src, "--name", "app", check=True).stdout.decode().strip() == d
    assert fsck_json(cli, "--read-data")[0] == 0
    cli("checkout", "app", tmp_path / "out", check=True)
    cli("verify", tmp_path / "out", "app", check=True)


def test_repair_quarantines_a_corrupt_blob_and_reingest_heals(cli, tree, store_path: Path, tmp_path: Path) -> None:  # type: ignore
    src, d, blob, _ = tree
    _writable(blob)
    with open(blob, "r+b") as f:
        f.write(b"XXXX")
    rc, rep = fsck_json(cli, "--read-data", "--repair")
    assert rc == 4 and "quarantined" in rep["findings"][0]["repaired"]
    assert not os.path.exists(blob) and len(os.listdir(store_path / "quarantine")) == 1
    cli("ingest", src, "--name", "app", check=True)
    assert fsck_json(cli, "--read-data")[0] == 0
    cli("checkout", "app", tmp_path / "out", check=True)


def test_orphans_are_info(cli, tree, store_path: Path) -> None:  # type: ignore[no-untyped-def]
    (store_path / "blobs" / "sha256" / "cd").mkdir(exist_ok=True)
    (store_path / "blobs" / "sha256" / "cd" / ("cd" * 32)).write_bytes(b"o")
    rc, rep = fsck_json(cli)
    assert rc == 0 and kinds(rep) == {"orphan"}


def test_dangling_reference_names_the_catalog_entries(cli, tree, store_path: Path) -> None:  # type: ignore
    _, d, blob, digest = tree
    s = Store.open(str(store_path))
    s.meta.write(lambda t: t.delete(bytes.fromhex(digest[7:]), db=s.meta.db("blobs")))
    os.unlink(blob)
    rc, rep = fsck_json(cli)
    (f,) = [f for f in rep["findings"] if f["severity"] == "error"]
    assert rc == 4 and f["kind"] == "dangling-ref" and "/bin/tool" in f["paths"]
    assert any(n == "app" for n in f["names"])


def test_edited_hardlink_checkout_is_reported_and_repaired(cli, tree, tmp_path: Path) -> None:  # type: ignore
    out = tmp_path / "out"
    cli("checkout", "--link", "hardlink", "app", out, check=True)
    assert fsck_json(cli, "--read-data")[0] == 0
    os.chmod(out / "etc" / "keep.conf", 0o600)  # an edit through the checkout reaches the shared object
    rc, rep = fsck_json(cli)
    assert rc == 0 and kinds(rep, "warning") == {"changed-link-object"}
    rc, rep = fsck_json(cli, "--repair")
    assert rc == 0 and rep["findings"][0]["repaired"]
    rc, rep = fsck_json(cli)
    assert rc == 0 and not kinds(rep, "warning")
    cli("checkout", "--link", "hardlink", "app", tmp_path / "out2", check=True)
    cli("verify", tmp_path / "out2", "app", check=True)


def _pages_with(data: bytes, needle: bytes) -> list[int]:
    return [i for i in range(2, len(data) // 4096) if needle in data[i * 4096 : (i + 1) * 4096]]


def test_garbage_lmdb_page_is_reported_and_index_rebuilt(cli, tree, store_path: Path, tmp_path: Path) -> None:  # type: ignore
    src, d, _, digest = tree
    mdb = store_path / "meta" / "data.mdb"
    data = bytearray(mdb.read_bytes())
    pages = _pages_with(bytes(data), bytes.fromhex(digest[7:]))
    assert pages
    for pg in pages:
        data[pg * 4096 : (pg + 1) * 4096] = os.urandom(4096)
    mdb.write_bytes(bytes(data))
    p = cli("fsck")
    assert p.returncode == 4 and b"--rebuild-index" in p.stderr and b"Traceback" not in p.stderr
    p = cli("fsck", "--rebuild-index")
    assert p.returncode == 0, p.stderr
    assert b"index rebuilt" in p.stdout
    if b"could not be salvaged" in p.stdout:
        cli("tag", d, "app", check=True)
    cli("checkout", "app", tmp_path / "out", check=True)
    cli("verify", tmp_path / "out", "app", check=True)
    assert list(store_path.glob("meta.damaged-*"))


def test_garbage_lmdb_file_is_clear_and_rebuild_says_catalog_is_lost(
    cli,
    tree,
    store_path: Path,  # type: ignore
    tmp_path: Path,
) -> None:
    src, d, _, _ = tree
    mdb = store_path / "meta" / "data.mdb"
    mdb.write_bytes(os.urandom(mdb.stat().st_size))
    for args in (("fsck",), ("list",), ("gc",), ("checkout", "app", str(tmp_path / "o"))):
        p = cli(*args)
        assert p.returncode in (4, 5), (args, p.stderr)
        assert p.stderr.startswith(b"continuity: error:") and b"Traceback" not in p.stderr
    assert b"--rebuild-index" in cli("fsck").stderr
    rc, rep = fsck_json(cli, "--rebuild-index")
    assert rc == 0 and rep["rebuild"]["catalog_lost"] and rep["rebuild"]["manifests"] == 2
    p = cli("fsck", "--read-data")
    assert p.returncode == 0
    cli("tag", d, "app", check=True)
    cli("checkout", "app", tmp_path / "out", check=True)
    cli("verify", tmp_path / "out", "app", check=True)


def test_rebuild_of_a_sound_store_keeps_the_catalog(cli, tree, store_path: Path) -> None:  # type: ignore
    before = json.loads(cli("list", "--json", check=True).stdout)
    rc, rep = fsck_json(cli, "--rebuild-index")
    assert rc == 0 and not rep["rebuild"]["catalog_lost"]
    assert json.loads(cli("list", "--json", check=True).stdout) == before
    assert fsck_json(cli, "--read-data")[0] == 0
