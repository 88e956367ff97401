"""The public library API: ``castore.__all__`` pinned, and the verbs called through it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import castore
from castore.store import Store
from tests.helpers import run_cli

EXPORTED = [
    "Aborted",
    "AdsEntry",
    "BadPassphrase",
    "BadSignature",
    "BlobNotFound",
    "Busy",
    "CastoreError",
    "Chunk",
    "CorruptManifest",
    "Device",
    "Differences",
    "Directory",
    "IntegrityError",
    "InvalidManifest",
    "KeyError_",
    "Manifest",
    "MountUnavailable",
    "NamedPipe",
    "NotFound",
    "PolicyRefused",
    "RegularFile",
    "RemoteError",
    "Resource",
    "ResourceLimit",
    "Socket",
    "SourceChanged",
    "Store",
    "StoreUnusable",
    "Symlink",
    "TarCorrupt",
    "TarUnsafe",
    "TreeChanged",
    "UnsafeInput",
    "Whiteout",
    "__version__",
    "apply",
    "build",
    "checkout",
    "diff",
    "du",
    "fsck",
    "gc",
    "ingest",
    "load",
    "stats",
    "verify",
]


def _tree(root: Path) -> Path:
    (root / "d").mkdir(parents=True)
    (root / "a").write_bytes(b"hello\n")
    (root / "d" / "b").write_bytes(b"x" * 5000)
    os.link(root / "a", root / "d" / "hl")
    os.symlink("../a", root / "d" / "s")
    return root


def test_exported_names_are_pinned_and_sorted() -> None:
    assert castore.__all__ == EXPORTED
    assert sorted(castore.__all__) == castore.__all__
    for name in castore.__all__:
        assert getattr(castore, name) is not None, name
    assert isinstance(castore.__version__, str) and castore.__version__
    with pytest.raises(AttributeError):
        castore.no_such_name  # noqa: B018


def test_error_classes_come_from_one_module() -> None:
    from castore import errors

    for name in EXPORTED:
        obj = getattr(castore, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert obj.__module__ == "castore.errors", name
            assert obj is getattr(errors, name)
            assert issubclass(obj, castore.CastoreError)
    assert castore.NotFound.exit_code == 1 and castore.UnsafeInput.exit_code == 3
    assert castore.TarCorrupt.exit_code == 4 and castore.ResourceLimit.exit_code == 6
    for name in ("NotFound", "SourceChanged", "TreeChanged", "TarCorrupt", "MountUnavailable"):
        assert name in errors.__doc__, name  # drawn in the tree


def test_import_is_cheap_and_lazy() -> None:
    code = (
        "import sys, castore; heavy = [m for m in ('castore.store', 'castore.api', 'castore.manifest', "
        "'lmdb', 'click', 'typing') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert out.stdout.strip() == "[]"


def test_verbs_that_share_a_module_name_stay_callable() -> None:
    import castore.apply.state  # binds castore.apply to the package
    import castore.gc.collect  # noqa: F401

    assert callable(castore.apply) and callable(castore.gc) and callable(castore.checkout)
    assert castore.apply.state.__name__ == "castore.apply.state"


def test_ingest_checkout_verify_stats_du_through_the_api(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    store = castore.Store.open(str(tmp_path / "store"))
    digest = castore.ingest(store, str(src), name="web")
    assert digest.startswith("sha256:") and store.get_tag("web") == digest

    out = tmp_path / "out"
    castore.checkout(store, "web", str(out), link="hardlink")
    assert (out / "d" / "b").read_bytes() == b"x" * 5000
    assert os.readlink(out / "d" / "s") == "../a"
    assert castore.verify(store, "web", str(out)) == []

    (out / "d" / "b").unlink()
    (out / "d" / "b").write_bytes(b"changed")
    found = castore.verify(store, digest[:20], str(out))
    assert {d.path for d in found} == {"/d", "/d/b"}  # /d: its mtime moved
    assert castore.verify(store, "web", str(out), ignore_attrs=["size", "digest", "mtime"]) == []

    s = castore.stats(store, "web")
    assert (s["files"], s["directories"], s["symlinks"], s["hardlinks"], s["bytes"]) == (2, 1, 1, 1, 5006)
    u = castore.du(store, "web")
    assert (u["bytes"], u["unique_content_bytes"], u["files"], u["entries"]) == (5006, 5006, 2, 5)
    assert castore.du(None, str(src))["bytes"] == 5006  # a directory: built, not looked up

    m = castore.load(store, "web")
    assert isinstance(m, castore.Manifest)
    assert castore.stats(None, m) == s  # a Manifest needs no store
    changes = castore.diff(store, "web", str(out))
    assert [c.path for c in changes] == ["/d", "/d/b"]
    assert castore.build(str(src)).by_path().keys() == m.by_path().keys()


def test_api_takes_a_store_path_and_raises_library_errors(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    store_dir = str(tmp_path / "store")
    digest = castore.ingest(store_dir, str(src), name="web")  # a path: the store is opened (made) for the call
    assert Store.open(store_dir).get_tag("web") == digest
    with pytest.raises(castore.NotFound):
        castore.checkout(store_dir, "nope", str(tmp_path / "x"))
    with pytest.raises(castore.UnsafeInput):
        castore.checkout(store_dir, "web", str(tmp_path / "x"), ignore_attrs=["size"])  # not a write attribute
    assert not (tmp_path / "x").exists()
    report = castore.apply(store_dir, "web", str(tmp_path / "applied"))
    assert report is not None and (tmp_path / "applied" / "a").read_bytes() == b"hello\n"
    assert castore.gc(store_dir, dry_run=True).dry_run
    assert not [f for f in castore.fsck(store_dir).findings if f.severity == "error"]


def test_cli_stats_and_du_print_what_the_library_computes(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    st = tmp_path / "store"
    run_cli("ingest", src, "--name", "web", store=st, check=True)
    import json

    got = json.loads(run_cli("stats", "web", "--json", store=st, check=True).stdout)
    from castore.cli.jsonout import canonical, document  # the CLI's key names (docs/json.md)

    want = canonical(castore.stats(str(st), "web"))
    assert {k: got[k] for k in want} == want
    assert json.loads(run_cli("du", "web", "--json", store=st, check=True).stdout) == document(
        castore.du(str(st), "web")
    )
    assert run_cli("du", "web", "--human", store=st, check=True).stdout.split(b"\t")[0] == b"4.9 KiB"
