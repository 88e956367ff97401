"""Push streams a new pack while building it (chunked upload, castore/remote/streamup.py), against the real
registry behind a counting proxy: a first push sends PATCHes and pulls back equal; a re-push of the same
tree streams nothing and sends no pack again; a registry that refuses chunked uploads gets the monolithic
upload instead; a corrupt store blob found mid-stream leaves no pack, no blob of it and no tag."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from castore.errors import IntegrityError
from castore.remote import streamup
from castore.remote.blobscan import scan
from castore.remote.manifest_parts import split
from castore.remote.oci import CONFIG_DIGEST
from castore.remote.push import push
from castore.remote.ref import parse_reference
from castore.store import Store
from castore.testing.compare import assert_trees_equal
from tests.helpers import run_cli
from tests.remote.packs_helpers import make_tree
from tests.remote.proxy import CountingProxy


@pytest.fixture
def proxy(registry: str) -> Iterator[CountingProxy]:
    p = CountingProxy(registry)
    try:
        yield p
    finally:
        p.close()


def _push(store: Path, ref: str, *args: str) -> dict[str, object]:
    p = run_cli("push", "t", ref, "--json", *args, store=store)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)  # type: ignore[no-any-return]


def _pull_equal(tmp_path: Path, ref: str, src: Path, name: str) -> None:
    b = tmp_path / f"pull-{name}"
    run_cli("pull", ref, "--checkout", tmp_path / f"out-{name}", store=b, check=True)
    assert_trees_equal(src, tmp_path / f"out-{name}")


def _ingested(tmp_path: Path, files: int = 600) -> tuple[Path, Path]:
    src, a = tmp_path / "src", tmp_path / "a"
    make_tree(src, files=files)
    run_cli("ingest", src, "--name", "t", store=a, check=True)
    return src, a


def test_first_push_streams_and_a_rerun_sends_no_pack(tmp_path: Path, repo: str, proxy: CountingProxy) -> None:
    src, a = _ingested(tmp_path)
    name = repo.split("/", 1)[1]
    first = _push(a, f"{proxy.address}/{name}:v1")
    patches = [s for s in proxy.seen if s.method == "PATCH"]
    assert patches and sum(s.nbytes for s in patches) > 100_000  # the pack went in chunks
    _pull_equal(tmp_path, f"{proxy.address}/{name}:v1", src, "first")
    mark = len(proxy.seen)
    again = _push(a, f"{proxy.address}/{name}:v2")  # the registry has this manifest: nothing streamed
    assert not [s for s in proxy.seen[mark:] if s.method in ("PATCH", "POST")]
    assert again["uploaded"] == 0 and again["oci_digest"] == first["oci_digest"]


def test_registry_without_chunked_uploads_gets_the_whole_pack(tmp_path: Path, repo: str, proxy: CountingProxy) -> None:
    src, a = _ingested(tmp_path)
    name = repo.split("/", 1)[1]
    proxy.refuse = frozenset({"PATCH"})
    res = _push(a, f"{proxy.address}/{name}:v1")
    assert [s for s in proxy.seen if s.method == "PATCH"]  # tried, refused
    puts = [s for s in proxy.seen if s.method == "PUT" and "digest=" in s.path]
    assert max(s.nbytes for s in puts) > 100_000  # the pack, in one PUT
    assert int(res["uploaded"]) > 2  # type: ignore[call-overload]
    proxy.refuse = frozenset()
    _pull_equal(tmp_path, f"{proxy.address}/{name}:v1", src, "fallback")


def test_corrupt_blob_found_mid_stream_commits_nothing(
    tmp_path: Path, repo: str, proxy: CountingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, a = _ingested(tmp_path, files=900)
    s = Store.open(str(a))
    mdigest = s.resolve("t")
    data = s.read_blob(mdigest)
    tree = scan(data)
    vd = [d for d in tree.order if 0 < tree.sizes[d] < 8192][-1]  # late in pack order: chunks went before it
    path = Path(s.blob_path(vd))
    path.chmod(0o644)
    path.write_bytes(b"not " + path.read_bytes())
    monkeypatch.setattr(streamup, "MIN_PATCH", 16 << 10)  # chunks of 16 KiB: several before the victim
    ref = parse_reference(f"{proxy.address}/{repo.split('/', 1)[1]}:bad")
    with pytest.raises(IntegrityError):
        push(s, None, ref, manifest_digest=mdigest, pack_target=64 << 20)
    assert [x for x in proxy.seen if x.method == "PATCH"], "the pack was being streamed"
    committed = {x.path.split("digest=", 1)[1].replace("%3A", ":") for x in proxy.seen if "digest=" in x.path}
    allowed = {CONFIG_DIGEST, mdigest} | {"sha256:" + hashlib.sha256(p).hexdigest() for p in split(data)}
    assert committed <= allowed, committed - allowed  # no pack, no index: only the manifest and config
    assert [x for x in proxy.seen if x.method == "DELETE"], "the upload session was dropped"
    base = ref.base.replace(proxy.address, repo.split("/", 1)[0])
    assert httpx.get(f"{base}/manifests/bad").status_code == 404
    assert httpx.head(f"{base}/blobs/{vd}").status_code == 404


def test_a_blob_gone_from_the_store_is_exit_4_and_no_tag(tmp_path: Path, repo: str) -> None:
    _, a = _ingested(tmp_path)
    s = Store.open(str(a))
    tree = scan(s.read_blob(s.resolve("t")))
    small = [d for d in tree.order if 0 < tree.sizes[d] < 8192]
    victim = small[len(small) // 2]
    Path(s.blob_path(victim)).unlink()
    p = run_cli("push", "t", f"{repo}:gone", store=a)
    assert p.returncode == 4 and p.stderr.count(b"\n") == 1 and victim.encode() in p.stderr, p.stderr
    assert httpx.get(f"{parse_reference(repo).base}/manifests/gone").status_code == 404


def test_repush_after_a_change_in_the_first_part(tmp_path: Path, repo: str) -> None:
    """The first part changed, the last did not: not a fresh push, yet the new first part is sent."""
    src, a = _ingested(tmp_path, files=2500)
    first = _push(a, f"{repo}:v1")
    assert int(first["manifest_parts"]) >= 3  # type: ignore[call-overload]
    victim = sorted(p for p in src.rglob("*") if p.is_file())[0]
    victim.write_bytes(b"changed " + victim.read_bytes())
    run_cli("ingest", src, "--name", "t", store=a, check=True)
    again = _push(a, f"{repo}:v1")
    assert int(again["uploaded"]) <= 4 and int(again["packs_reused"]) >= 1, again  # type: ignore[call-overload]
    _pull_equal(tmp_path, f"{repo}:v1", src, "again")
