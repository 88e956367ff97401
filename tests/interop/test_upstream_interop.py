"""Interop with upstream containerd/continuity, both ways, over a rich tree.

(a) A manifest written by upstream's BuildManifest + Marshal loads, lists,
    dumps and verifies here (upstream records no mtimes: verify must not
    complain about that), and is byte-identical to ours with mtimes removed.
(b) A manifest written by ``continuity build`` parses with upstream's schema
    (fields 1-13; our fields 14+ are unknown to it and ignored), upstream's
    VerifyManifest passes on the tree, and upstream sees the same paths,
    modes, owners, sizes, digests, targets, device numbers, xattrs and
    hardlink grouping that we wrote.
Where upstream cannot represent something, see test_upstream_differences.py.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest

from castore.build import build
from castore.digest import hash_bytes
from castore.manifest import codec
from castore.manifest.model import Device, Manifest, RegularFile, Symlink
from castore.testing.trees import hardlink_groups, upstream_tree
from castore.textsafe import quote
from tests.helpers import run_cli
from tests.interop.upstream import Upstream

pytestmark = pytest.mark.go

EMPTY = hash_bytes(b"")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return upstream_tree(tmp_path_factory.mktemp("interop") / "root")


@pytest.fixture(scope="module")
def upstream_pb(tree: Path, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("manifests") / "upstream.pb"
    out.write_bytes(upstream.build(tree))
    return out


@pytest.fixture(scope="module")
def ours_pb(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = run_cli("build", tree, check=True)
    out = tmp_path_factory.mktemp("manifests") / "ours.pb"
    out.write_bytes(p.stdout)
    return out


def without_mtimes(m: Manifest) -> Manifest:
    return Manifest(tuple(dataclasses.replace(r, mtime_ns=None) for r in m.resources))


# ---- (a) upstream -> here -------------------------------------------------------------------------------------


def test_upstream_manifest_lists_and_dumps_here(tree: Path, upstream_pb: Path) -> None:
    ours = build(str(tree))
    expected = "".join(quote(p) + "\n" for r in ours.resources for p in r.paths)  # ls escapes control chars
    ls = run_cli("ls", upstream_pb, check=True)
    assert ls.stdout.decode() == expected
    assert run_cli("ls", "-l", upstream_pb, check=True).stdout.count(b"\n") >= len(ours.resources)
    text = run_cli("dump", upstream_pb, check=True).stdout.decode()
    assert 'path: "/plain.txt"' in text and "mtime_ns" not in text
    dumped = json.loads(run_cli("dump", "--format", "json", upstream_pb, check=True).stdout)
    assert [d["paths"] for d in dumped["resources"]] == [list(r.paths) for r in ours.resources]
    stats = json.loads(run_cli("stats", "--json", upstream_pb, check=True).stdout)
    assert stats["resources"] == len(ours.resources)


def test_upstream_manifest_verifies_here(tree: Path, upstream_pb: Path) -> None:
    p = run_cli("verify", tree, upstream_pb)
    assert (p.returncode, p.stdout, p.stderr) == (0, b"", b"")
    report = json.loads(run_cli("verify", "--json", tree, upstream_pb, check=True).stdout)
    assert report == {"schema": 1, "ok": True, "differences": []}


def test_upstream_records_no_mtimes(upstream_pb: Path) -> None:
    m = codec.loads(upstream_pb.read_bytes())
    assert all(r.mtime_ns is None for r in m.resources)


def test_upstream_bytes_equal_ours_without_mtimes(tree: Path, upstream_pb: Path) -> None:
    """The strongest check: same tree, same wire bytes (our codec is upstream's plus optional fields)."""
    up = upstream_pb.read_bytes()
    assert codec.dumps(without_mtimes(build(str(tree)))) == up
    assert codec.dumps(codec.loads(up)) == up


def test_upstream_and_our_manifests_do_not_differ(upstream_pb: Path, ours_pb: Path) -> None:
    p = run_cli("diff", upstream_pb, ours_pb)
    assert (p.returncode, p.stdout) == (0, b"")


def test_two_empty_files_do_not_differ(tree: Path, upstream_pb: Path, tmp_path: Path) -> None:
    """Upstream's old bug: two empty files compared as different. Here they never do."""
    m = codec.loads(upstream_pb.read_bytes()).by_path()
    for path in ("/empty-1", "/data/empty-2", "/links/empty-a"):
        r = m[path]
        assert isinstance(r, RegularFile) and (r.size, r.digest) == (0, EMPTY)
    # Two trees, each with an empty file of the same metadata (whole-second mtime, as from a tar).
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "empty").write_bytes(b"")
        os.utime(tmp_path / side / "empty", ns=(1_700_000_000 * 10**9,) * 2)
    p = run_cli("diff", tmp_path / "a", tmp_path / "b")
    assert (p.returncode, p.stdout) == (0, b"")
    built = run_cli("build", tmp_path / "a", check=True).stdout
    (tmp_path / "a.pb").write_bytes(built)
    assert run_cli("verify", tmp_path / "b", tmp_path / "a.pb").returncode == 0


# ---- (b) here -> upstream -------------------------------------------------------------------------------------


def test_upstream_verifies_our_manifest(tree: Path, ours_pb: Path, upstream: Upstream) -> None:
    upstream.run("verify", tree, ours_pb)


def test_our_manifest_carries_new_fields_upstream_ignores(ours_pb: Path, upstream_pb: Path) -> None:
    ours = codec.loads(ours_pb.read_bytes())
    assert all(r.mtime_ns is not None for r in ours.resources)  # field 14+: unknown to upstream
    assert len(ours_pb.read_bytes()) > len(upstream_pb.read_bytes())


def _xattrs_of_upstream(d: dict) -> list[tuple[str, bytes]]:
    return [(x["name"], base64.b64decode(x["data"] or "")) for x in d["xattrs"]]


def test_upstream_sees_what_we_wrote(ours_pb: Path, upstream: Upstream) -> None:
    ours = codec.loads(ours_pb.read_bytes())
    theirs = upstream.dump(ours_pb)
    assert len(theirs) == len(ours.resources)
    for r, d in zip(ours.resources, theirs, strict=True):
        assert d["paths"] == list(r.paths), r.path
        assert d["mode"] == codec.go_mode(r), r.path
        assert (d["uid"], d["gid"]) == (r.uid, r.gid), r.path
        assert _xattrs_of_upstream(d) == list(r.xattrs), r.path
        assert (
            d["kind"]
            == {"file": "file", "dir": "dir", "symlink": "symlink", "fifo": "fifo", "device": "device"}[r.kind]
        ), r.path
        if isinstance(r, RegularFile):
            assert (d["size"], d["digests"]) == (r.size, [r.digest]), r.path
        else:
            assert "size" not in d and "digests" not in d, r.path
        if isinstance(r, Symlink):
            assert d["target"] == r.target, r.path
        if isinstance(r, Device):
            assert (d["major"], d["minor"]) == (r.major, r.minor), r.path
    groups = sorted(d["paths"] for d in theirs if len(d["paths"]) > 1)
    assert groups == hardlink_groups()


# ---- both verifiers see the same damage ----------------------------------------------------------------------


def _small_tree(root: Path) -> Path:
    (root / "dir").mkdir(parents=True)
    (root / "dir/file").write_bytes(b"content")
    os.link(root / "dir/file", root / "dir/link")
    os.symlink("file", root / "dir/sym")
    (root / "empty").write_bytes(b"")
    os.mkfifo(root / "fifo")
    return root


def _same_size_edit(root: Path) -> None:
    (root / "dir/file").write_bytes(b"CONTENT")


def _retarget(root: Path) -> None:
    os.unlink(root / "dir/sym")
    os.symlink("elsewhere", root / "dir/sym")


def _unlink_hardlink(root: Path) -> None:
    os.unlink(root / "dir/link")
    (root / "dir/link").write_bytes(b"content")


def _fill_empty(root: Path) -> None:
    (root / "empty").write_bytes(b"x")


def _fifo_to_file(root: Path) -> None:
    os.unlink(root / "fifo")
    (root / "fifo").write_bytes(b"")


MUTATIONS = {
    "content": (_same_size_edit, "/dir/file"),
    "mode": (lambda r: os.chmod(r / "dir/file", 0o600), "/dir/file"),
    "target": (_retarget, "/dir/sym"),
    "hardlink": (_unlink_hardlink, "/dir/link"),
    "empty-file": (_fill_empty, "/empty"),
    "type": (_fifo_to_file, "/fifo"),
    "xattr": (lambda r: os.setxattr(r / "dir/file", "user.new", b"1"), "/dir/file"),
}


@pytest.mark.parametrize("origin", ["ours", "upstream"])
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_damage_found_by_both_verifiers(tmp_path: Path, upstream: Upstream, origin: str, mutation: str) -> None:
    root = _small_tree(tmp_path / "root")
    manifest = tmp_path / "m.pb"
    manifest.write_bytes(run_cli("build", root, check=True).stdout if origin == "ours" else upstream.build(root))
    change, path = MUTATIONS[mutation]
    change(root)
    p = run_cli("verify", root, manifest)
    assert p.returncode == 1 and path.encode() in p.stdout, p.stdout
    theirs = upstream.run("verify", root, manifest, check=False)
    if mutation == "xattr":
        # Upstream checks only that the manifest's xattrs are present: an added one is not a difference there.
        assert theirs.returncode == 0
    else:
        assert theirs.returncode == 1 and path.encode() in theirs.stderr, theirs.stderr


def test_manifests_verify_a_copy_of_the_tree(tmp_path: Path, tree: Path, upstream: Upstream) -> None:
    """A copy of the tree (new inodes, same content) still verifies with both, from both manifests."""
    copy = tmp_path / "copy"
    shutil.copytree(tree / "unicode", copy, symlinks=True)
    ours = tmp_path / "ours.pb"
    ours.write_bytes(run_cli("build", tree / "unicode", check=True).stdout)
    theirs = tmp_path / "theirs.pb"
    theirs.write_bytes(upstream.build(tree / "unicode"))
    assert run_cli("verify", copy, theirs).returncode == 0
    upstream.run("verify", copy, ours)
