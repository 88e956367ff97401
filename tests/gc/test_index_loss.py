"""A lost or damaged index is refused, never re-created; the rebuild trusts only recorded manifests.

Issue 11 items 2, 3, 5 and 6: a missing meta/, a truncated data.mdb (SIGBUS
before), an index younger than the blobs (gc would free everything), a user
file that parses as a manifest (rebuild and tag took it for one).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import lmdb
import pytest

from castore.store import new_index
from castore.testing.trees import make_tree
from tests.gc.gc_util import blob_files, fsck_json

PAYLOAD = {"etc/a.conf": b"alpha\n" * 300, "bin/tool": os.urandom(30_000), "data": b"shared content\n"}
VERBS = (("list",), ("fsck",), ("gc", "--grace", "0"), ("checkout", "app", "{out}"))


@pytest.fixture
def app(cli, tmp_path: Path):  # type: ignore[no-untyped-def]
    d = cli("ingest", make_tree(tmp_path / "src", PAYLOAD), "--name", "app", check=True).stdout.decode().strip()
    cli("ingest", make_tree(tmp_path / "gone", {"g": b"gone\n"}), "--name", "gone", check=True)
    cli("rm", "gone", check=True)
    return d


def _refused(cli, tmp_path: Path, want: bytes) -> None:  # type: ignore[no-untyped-def]
    for i, args in enumerate(VERBS):
        args = tuple(a.format(out=tmp_path / f"out{i}") for a in args)
        p = cli(*args)
        assert p.returncode == 4, (args, p.returncode, p.stderr)
        lines = p.stderr.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith("continuity: error:"), (args, p.stderr)
        assert want in p.stderr and b"continuity fsck --rebuild-index" in p.stderr, (args, p.stderr)


def _restored(cli, tmp_path: Path, app: str, manifests: int = 2) -> None:  # type: ignore[no-untyped-def]
    rows = json.loads(cli("list", "--json", check=True).stdout)["names"]
    assert [(r["name"], r["digest"]) for r in rows] == [("app", app)]  # "gone" was removed: not brought back
    rc, rep = fsck_json(cli, "--read-data")
    assert rc == 0 and rep["manifests"] == manifests, rep
    out = tmp_path / f"restored-{os.urandom(3).hex()}"
    cli("checkout", "app", out, check=True)
    cli("verify", out, "app", check=True)


def test_lost_index_is_refused_not_recreated(cli, app: str, store_path: Path, tmp_path: Path) -> None:  # type: ignore
    blobs = blob_files(store_path)
    shutil.rmtree(store_path / "meta")
    _refused(cli, tmp_path, b"has no index")
    p = cli("ingest", make_tree(tmp_path / "new", {"n": b"new\n"}), "--name", "new")
    assert p.returncode == 4 and b"--rebuild-index" in p.stderr
    assert not (store_path / "meta").exists()  # never re-created empty
    assert blob_files(store_path) == blobs  # gc deleted nothing
    p = cli("fsck", "--rebuild-index")
    assert p.returncode == 0, p.stderr
    assert b"restored from the manifest markers" in p.stdout
    _restored(cli, tmp_path, app)


@pytest.mark.parametrize("size", ["0", "page", "2pages", "half"])
def test_truncated_index_is_refused_and_rebuilt(
    cli,
    app: str,
    store_path: Path,
    tmp_path: Path,  # type: ignore
    size: str,
) -> None:
    mdb = store_path / "meta" / "data.mdb"
    full = mdb.stat().st_size
    assert full > 4 * 4096
    n = {"0": 0, "page": 4096, "2pages": 8192, "half": full // 2}[size]
    os.truncate(mdb, n)
    _refused(cli, tmp_path, b"data.mdb")  # exit 4, not SIGBUS (-7)
    assert mdb.stat().st_size == n  # nobody re-initialised it
    p = cli("fsck", "--rebuild-index")
    assert p.returncode == 0, p.stderr
    assert list(store_path.glob("meta.damaged-*"))
    _restored(cli, tmp_path, app)


def _set_info(store_path: Path, **kv: bytes | None) -> None:
    env = lmdb.open(str(store_path / "meta"), max_dbs=20)
    with env.begin(write=True) as txn:
        db = env.open_db(b"info", txn=txn)
        for k, v in kv.items():
            key = k.replace("_", "-").encode()
            if v is None:
                txn.delete(key, db=db)
            else:
                txn.put(key, v, db=db)
    env.close()


def _age_blobs(store_path: Path, seconds: int) -> None:
    root = store_path / "blobs" / "sha256"
    past = time.time() - seconds
    for d in os.listdir(root):
        for n in os.listdir(root / d):
            os.utime(root / d / n, (past, past))


@pytest.mark.parametrize("record", ["created-now", "no-record"])
def test_gc_refuses_an_index_younger_than_the_blobs(
    cli,
    app: str,
    store_path: Path,
    tmp_path: Path,  # type: ignore
    record: str,
) -> None:
    """An empty index made after the blobs (a lost one re-created by hand or by an older version)."""
    blobs = blob_files(store_path)
    _age_blobs(store_path, 3600)
    shutil.rmtree(store_path / "meta")
    new_index(str(store_path), "init")
    if record == "no-record":
        _set_info(store_path, index_created_ns=None)
    p = cli("gc", "--grace", "0")
    assert p.returncode == 4 and b"gc refused" in p.stderr and b"--rebuild-index" in p.stderr, p.stderr
    assert len(p.stderr.splitlines()) == 1
    assert cli("gc", "--dry-run", "--grace", "0").returncode == 4
    assert blob_files(store_path) == blobs
    rc, rep = fsck_json(cli)
    assert rc == 4 and "index-younger-than-blobs" in {f["kind"] for f in rep["findings"]}
    p = cli("fsck", "--rebuild-index", check=True)
    assert b"restored from the manifest markers" in p.stdout  # the empty index had no names: the markers do
    cli("gc", "--grace", "0", check=True)  # a rebuilt index knows every blob: gc runs again
    _restored(cli, tmp_path, app, manifests=1)  # gc freed the unnamed one


def test_gc_runs_on_a_young_store_without_manifests(cli, store_path: Path, tmp_path: Path) -> None:  # type: ignore
    """No false alarm: a new store whose only blobs are orphans written after its index."""
    src = make_tree(tmp_path / "src", {"f": b"x" * 100})
    d = cli("ingest", src, check=True).stdout.decode().strip()  # unnamed
    assert cli("gc", "--grace", "0", check=True)
    assert d not in blob_files(store_path)
    assert fsck_json(cli)[0] == 0


def test_unfinished_index_is_refused(cli, app: str, store_path: Path, tmp_path: Path) -> None:  # type: ignore
    _set_info(store_path, index_state=b"building")
    _refused(cli, tmp_path, b"unfinished rebuild")
    cli("fsck", "--rebuild-index", check=True)
    _restored(cli, tmp_path, app)


@pytest.fixture
def lookalike(cli, tmp_path: Path, store_path: Path):  # type: ignore[no-untyped-def]
    """A store holding, as a user file, the bytes of a valid manifest whose content is in the store too."""
    inner = make_tree(tmp_path / "inner", {"data": PAYLOAD["data"]})
    mbytes = cli("build", inner, check=True).stdout
    evil = "sha256:" + __import__("hashlib").sha256(mbytes).hexdigest()
    files = {**PAYLOAD, "evil.pb": mbytes}
    d = cli("ingest", make_tree(tmp_path / "src", files), "--name", "app", check=True).stdout.decode().strip()
    assert evil in blob_files(store_path)
    return d, evil


@pytest.mark.parametrize("lost", ["meta", "manifests"])  # the index; or the markers (a store of an older version)
def test_rebuild_does_not_take_a_user_file_for_a_manifest(
    cli,
    lookalike,
    store_path: Path,  # type: ignore
    tmp_path: Path,
    lost: str,
) -> None:
    app, evil = lookalike
    shutil.rmtree(store_path / lost)
    p = cli("fsck", "--rebuild-index", "--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["rebuild"]["manifest_digests"] == [app] and rep["manifests"] == 1
    assert [r["digest"] for r in json.loads(cli("list", "--json", check=True).stdout)["names"]] == [app]
    assert cli("tag", evil, "evil").returncode == 4
    cli("rm", "app", check=True)
    cli("gc", "--grace", "0", check=True)
    assert blob_files(store_path) == set()  # nothing kept alive by a fake manifest


def test_tag_and_checkout_refuse_a_blob_that_parses_as_a_manifest(
    cli,
    lookalike,
    store_path: Path,  # type: ignore
    tmp_path: Path,
) -> None:
    app, evil = lookalike
    for args in (
        ("tag", evil, "evil"),
        ("tag", evil[7:19], "evil"),
        ("checkout", evil, str(tmp_path / "o")),
        ("ls", evil),
        ("export", evil, "-o", str(tmp_path / "e.tar")),
    ):
        p = cli(*args)
        assert p.returncode in (1, 4), (args, p.stderr)
        assert len(p.stderr.splitlines()) == 1 and p.stderr.startswith(b"continuity: error:"), (args, p.stderr)
        if args[1] == evil:
            assert b"not a manifest it recorded" in p.stderr, (args, p.stderr)
    assert not (tmp_path / "o").exists()
    assert [r["name"] for r in json.loads(cli("list", "--json", check=True).stdout)["names"]] == ["app"]
    cli("tag", app, "again", check=True)  # a recorded manifest still takes a name
    rc, rep = fsck_json(cli, "--read-data")
    assert rc == 0 and rep["manifests"] == 1


def test_markers_backfilled_for_a_store_of_an_older_version(
    cli,
    app: str,
    store_path: Path,  # type: ignore
    tmp_path: Path,
) -> None:
    shutil.rmtree(store_path / "manifests")
    cli("list", check=True)  # the first open writes a marker for every manifest the index records
    assert (store_path / "manifests" / app[7:9] / app[7:]).exists()
    shutil.rmtree(store_path / "meta")
    cli("fsck", "--rebuild-index", check=True)
    _restored(cli, tmp_path, app)
