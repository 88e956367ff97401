"""`continuity mount REGISTRY/REPO:TAG`: a lazy FUSE view of a remote tree, against a real registry behind a
counting proxy: listing needs no blob, a read fetches about that file's bytes, verified and kept in the
store (a later mount reads it locally), old one-layer-per-blob artifacts work, wrong bytes are EIO with
nothing stored."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from castore.remote.ref import parse_reference
from castore.store import Store
from castore.testing.compare import assert_trees_equal
from tests.fuse.fuse_util import mounted, needs_fuse
from tests.helpers import run_cli
from tests.remote.packs_helpers import make_tree, packed_artifact, range_server
from tests.remote.proxy import CountingProxy
from tests.remote.registry import FakeRegistry, artifact

pytestmark = [pytest.mark.fuse, needs_fuse]


@pytest.fixture
def proxy(registry: str) -> Iterator[CountingProxy]:
    p = CountingProxy(registry)
    try:
        yield p
    finally:
        p.close()


def _listing(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every path below ``root`` with (type and mode, size of a file, mtime in seconds, link target length)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (
                st.st_mode,
                st.st_size if stat.S_ISREG(st.st_mode) else 0,
                int(st.st_mtime),
                st.st_nlink if not stat.S_ISDIR(st.st_mode) else 0,
            )
    return out


def _push_tree(tmp_path: Path, ref: str) -> tuple[Path, str]:
    src, a = tmp_path / "src", tmp_path / "a"
    make_tree(src, files=200)
    d = run_cli("ingest", src, "--name", "t", store=a, check=True).stdout.decode().strip()
    p = run_cli("push", "t", ref, "--pack-size", str(256 << 10), store=a)
    assert p.returncode == 0, p.stderr
    return src, d


def _push_old_format(store_dir: Path, mdigest: str, ref: str) -> None:
    """The artifact as pushes before packs wrote it (one layer per blob), uploaded by hand."""
    store = Store.open(str(store_dir))
    oci, blobs = artifact(store, mdigest)
    r = parse_reference(ref)
    with httpx.Client(timeout=30) as c:
        for digest, data in blobs.items():
            post = c.post(f"{r.base}/blobs/uploads/")
            assert post.status_code == 202
            url = post.url.join(post.headers["location"]).copy_merge_params({"digest": digest})
            put = c.put(url, content=data)
            assert put.status_code == 201, put.text
        got = c.put(
            f"{r.base}/manifests/{r.tag}",
            content=oci,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert got.status_code == 201, got.text


def _a_small_file(src: Path) -> Path:
    return src / "d01" / "f0061.bin"


def test_lazy_mount_lists_without_blobs_reads_one_file_small(tmp_path: Path, repo: str, proxy: CountingProxy) -> None:
    name = repo.split("/", 1)[1]
    src, _ = _push_tree(tmp_path, f"{repo}:v1")
    ref = f"{proxy.address}/{name}:v1"
    b, mnt = tmp_path / "b", tmp_path / "mnt"
    with mounted(b, ref, mnt) as m:
        at_mount = len(proxy.seen)
        assert _listing(mnt) == _listing(src)  # ls -lR: names, types, modes, sizes, mtimes, link counts
        assert proxy.blob_gets(at_mount) == [], "listing and stat fetched blobs"
        f = _a_small_file(src)
        before = len(proxy.seen)
        assert (mnt / f.relative_to(src)).read_bytes() == f.read_bytes()
        got = proxy.blob_gets(before)
        assert 1 <= len(got) <= 2 and all(s.range for s in got), got  # a range of a pack, not the pack
        assert sum(s.nbytes for s in got) <= f.stat().st_size + 64, got
        assert (mnt / "words.txt").read_bytes() == (src / "words.txt").read_bytes()
        assert (mnt / "big.bin").read_bytes() == (src / "big.bin").read_bytes()  # chunked: chunk by chunk
        assert (mnt / "empty").read_bytes() == b""
        assert_trees_equal(src, mnt)  # every file read: equal to the source
    assert m.proc.returncode == 0, m.stderr()
    digest = "sha256:" + hashlib.sha256(f.read_bytes()).hexdigest()
    assert Store.open(str(b)).has_blob(digest)
    # a later mount of the same tree reads what the first one kept: no blob request for it
    with mounted(b, ref, tmp_path / "mnt2") as m2:
        before = len(proxy.seen)
        assert (tmp_path / "mnt2" / f.relative_to(src)).read_bytes() == f.read_bytes()
        assert (tmp_path / "mnt2" / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
        assert proxy.blob_gets(before) == []
    assert m2.proc.returncode == 0, m2.stderr()
    fsck = run_cli("fsck", store=b)
    assert fsck.returncode == 0, fsck.stderr
    # what the mounts fetched stays: a pull of the same tree fetches none of it again
    before = len(proxy.seen)
    pulled = json.loads(run_cli("pull", ref, "--json", store=b, check=True).stdout)
    assert pulled["downloaded"] <= 1, pulled  # the empty file's blob: never read, so pull adds it
    assert all(not s.path.endswith(digest) for s in proxy.blob_gets(before))
    run_cli("fsck", store=b, check=True)


def test_lazy_mount_old_artifact_one_layer_per_blob(tmp_path: Path, repo: str, proxy: CountingProxy) -> None:
    src, a = tmp_path / "src", tmp_path / "a"
    make_tree(src, files=30)
    d = run_cli("ingest", src, "--name", "t", store=a, check=True).stdout.decode().strip()
    _push_old_format(a, d, f"{repo}:old")
    ref = f"{proxy.address}/{repo.split('/', 1)[1]}:old"
    b, mnt = tmp_path / "b", tmp_path / "mnt"
    with mounted(b, ref, mnt) as m:
        at_mount = len(proxy.seen)
        assert _listing(mnt) == _listing(src)
        assert proxy.blob_gets(at_mount) == []
        f = src / "d00" / "f0001.bin"
        assert (mnt / "d00" / "f0001.bin").read_bytes() == f.read_bytes()
        got = proxy.blob_gets(at_mount)
        want = "sha256:" + hashlib.sha256(f.read_bytes()).hexdigest()
        assert [s.path.rsplit("/", 1)[1] for s in got] == [want]  # that one blob, nothing else
    assert m.proc.returncode == 0, m.stderr()


def test_lazy_mount_wrong_bytes_is_eio_and_stores_nothing(tmp_path: Path, repo: str, proxy: CountingProxy) -> None:
    src, _ = _push_tree(tmp_path, f"{repo}:v1")
    ref = f"{proxy.address}/{repo.split('/', 1)[1]}:v1"
    b, mnt = tmp_path / "b", tmp_path / "mnt"
    f = _a_small_file(src)
    digest = "sha256:" + hashlib.sha256(f.read_bytes()).hexdigest()
    blob_file = b / "blobs" / "sha256" / digest[7:9] / digest[7:]
    with mounted(b, ref, mnt) as m:
        proxy.lie = True
        with pytest.raises(OSError) as exc:
            (mnt / f.relative_to(src)).read_bytes()
        assert exc.value.errno == errno.EIO
        assert proxy.blob_gets() and not blob_file.exists()
        assert not Store.open(str(b)).has_blob(digest)
        proxy.lie = False  # the registry recovers: the next read fetches again, verified
        assert (mnt / f.relative_to(src)).read_bytes() == f.read_bytes()
    assert m.proc.returncode == 0
    assert "wrong bytes" in m.stderr() or "digest" in m.stderr(), m.stderr()
    assert blob_file.exists()


def test_lazy_mount_refuses_unknown_reference_in_one_line(tmp_path: Path, registry: str) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = run_cli("mount", f"{registry}/test/absent:v1", mnt, store=tmp_path / "s")
    assert p.returncode == 1
    err = p.stderr.decode().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("continuity: error:") and "not found" in err[0], err
    assert not os.path.ismount(mnt)


def test_lazy_mount_enforces_the_policy_before_serving(tmp_path: Path, repo: str, proxy: CountingProxy) -> None:
    _push_tree(tmp_path, f"{repo}:v1")
    pol = tmp_path / "policy.json"
    pol.write_text('{"default": {"type": "reject"}}')
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    before = len(proxy.seen)
    p = run_cli("--policy", pol, "mount", f"{proxy.address}/{repo.split('/', 1)[1]}:v1", mnt, store=tmp_path / "b")
    assert p.returncode == 4 and b"rejects it" in p.stderr, p.stderr
    assert not os.path.ismount(mnt) and os.listdir(mnt) == []
    assert len(proxy.blob_gets(before)) <= 1  # at most the continuity manifest, no content blob


def test_lazy_mount_sequential_read_fetches_chunks_ahead(tmp_path: Path, repo: str, proxy: CountingProxy) -> None:
    src, a = tmp_path / "src", tmp_path / "a"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(6 << 20))
    d = run_cli("ingest", src, "--name", "t", store=a, check=True).stdout.decode().strip()
    run_cli("push", "t", f"{repo}:v1", store=a, check=True)  # default pack size: the chunks share a pack
    chunks = next(r.chunks for r in Store.open(str(a)).load_manifest(d).resources if r.path == "/big.bin")
    assert len(chunks) >= 8
    with mounted(tmp_path / "b", f"{proxy.address}/{repo.split('/', 1)[1]}:v1", tmp_path / "mnt") as m:
        before = len(proxy.seen)
        assert (tmp_path / "mnt" / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
        gets = proxy.blob_gets(before)
        assert len(gets) <= len(chunks) // 4, (len(gets), len(chunks))  # READ_AHEAD: several chunks a request
        # about the file's bytes: parallel kernel reads may read through a few fetched chunks (packio's GAP)
        assert sum(s.nbytes for s in gets) <= (6 << 20) * 1.1
    assert m.proc.returncode == 0, m.stderr()


def test_lying_range_from_a_fake_registry_gives_eio(tmp_path: Path, fake: FakeRegistry) -> None:
    src, a, b = tmp_path / "src", tmp_path / "a", tmp_path / "b"
    make_tree(src, files=60)
    d = run_cli("ingest", src, store=a, check=True).stdout.decode().strip()
    oci, blobs, built = packed_artifact(Store.open(str(a)), d, 1 << 20)
    fake.serve_artifact("lazy/tree", "v1", oci, blobs)
    for bp in built:
        data = bytes(bp.data)
        fake.routes[("GET", f"/v2/lazy/tree/blobs/{bp.pack.digest}")] = range_server(
            data,
            lambda s, e, body, n=len(data): (
                206,
                {"Content-Range": f"bytes {s}-{e - 1}/{n}"},
                bytes(x ^ 0xFF for x in body),
            ),
        )
    with mounted(b, f"{fake.host}/lazy/tree:v1", tmp_path / "mnt") as m:
        with pytest.raises(OSError) as exc:
            (m.mnt / "d00" / "f0001.bin").read_bytes()
        assert exc.value.errno == errno.EIO
        assert os.listdir(m.mnt / "d00")  # the rest of the view still works
    assert "wrong bytes" in m.stderr() or "digest" in m.stderr(), m.stderr()
    assert [p for p in (b / "blobs").rglob("*") if p.is_file()] == []
