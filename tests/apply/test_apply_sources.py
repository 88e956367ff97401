"""apply: content from a directory (copy or --move) or a tar; digests verified; crash reruns converge;
devices, sockets and absolute symlinks."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from castore.apply.run import apply_tree
from castore.build import build
from castore.errors import IntegrityError, NotFound
from castore.ingest import ingest
from castore.manifest import codec
from castore.store import Store
from castore.testing.states import state
from castore.verify import VerifyOptions, verify_tree

ROOT = os.geteuid() == 0


def _manifest_file(tmp_path: Path, src: Path) -> Path:
    m = build(str(src))
    p = tmp_path / "m.pb"
    p.write_bytes(codec.dumps(m))
    return p


def test_source_dir(tmp_path: Path, cli) -> None:  # noqa: ANN001
    src = state(tmp_path / "src", "updates")
    mf = _manifest_file(tmp_path, src)
    root = state(tmp_path / "root", "basic")
    p = cli("apply", root, mf, "--source", src, "--delete")
    assert p.returncode == 0, p.stderr
    assert cli("verify", root, mf).returncode == 0
    assert (src / "etc/new").exists()  # copied, not moved


def test_source_dir_move(tmp_path: Path, cli) -> None:  # noqa: ANN001
    src = state(tmp_path / "src", "updates")
    mf = _manifest_file(tmp_path, src)
    root = state(tmp_path / "root", "deletions")
    p = cli("apply", root, mf, "--source", src, "--move")
    assert p.returncode == 0, p.stderr
    assert cli("verify", root, mf).returncode == 0
    assert not (src / "etc/new").exists()  # moved out of the source
    assert not (src / "usr/bin/tool").exists()


def test_source_dir_digest_mismatch(tmp_path: Path, cli) -> None:  # noqa: ANN001
    src = state(tmp_path / "src", "updates")
    mf = _manifest_file(tmp_path, src)
    (src / "etc/new").write_bytes(b"ADDED\n")  # same size, other content
    root = state(tmp_path / "root", "basic")
    p = cli("apply", root, mf, "--source", src)
    assert p.returncode == 4
    assert b"/etc/new" in p.stderr and b"digest mismatch" in p.stderr
    assert not (root / "etc/new").exists()


def test_source_dir_missing_file_refused_before_changes(tmp_path: Path) -> None:
    src = state(tmp_path / "src", "updates")
    m = build(str(src))
    (src / "etc/new").unlink()
    root = state(tmp_path / "root", "basic")
    before = build(str(root))
    with pytest.raises(NotFound, match="/etc/new"):
        apply_tree(str(root), m, source=str(src))
    assert build(str(root)) == before


def test_source_tar(tmp_path: Path, cli) -> None:  # noqa: ANN001
    src = state(tmp_path / "src", "updates")
    mf = _manifest_file(tmp_path, src)
    tar = tmp_path / "src.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(src, arcname=".")
    root = state(tmp_path / "root", "basic")
    p = cli("apply", root, mf, "--source", tar, "--delete")
    assert p.returncode == 0, p.stderr
    assert cli("verify", root, mf).returncode == 0
    assert not [n for n in os.listdir(root) if n.startswith(".continuity-apply")]


def test_source_tar_corrupt_member(tmp_path: Path) -> None:
    src = state(tmp_path / "src", "updates")
    m = build(str(src))
    (src / "etc/new").write_bytes(b"ADDED\n")
    tar = tmp_path / "src.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(src, arcname=".")
    root = state(tmp_path / "root", "basic")
    with pytest.raises(IntegrityError, match="etc/new"):
        apply_tree(str(root), m, source=str(tar))
    assert not (root / "etc/new").exists()


@pytest.mark.parametrize("point", ["apply-after-deletes", "apply-mid-leaves", "apply-before-dir-metadata"])
def test_crash_rerun_converges(tmp_path: Path, store_path: Path, point: str) -> None:
    store = Store.open(str(store_path))
    big = tmp_path / "big"
    (big / "d").mkdir(parents=True)
    for i in range(150):
        (big / "d" / f"f{i:03}").write_bytes(b"v2 %d" % i)
    os.utime(big / "d", ns=(1, 1))
    digest = ingest(store, str(big), progress=False)
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    for i in range(0, 200, 2):
        (root / "d" / f"f{i:03}").write_bytes(b"v1 %d" % i)
    argv = [sys.executable, "-m", "castore", "--store", str(store_path), "apply", str(root), digest, "--delete"]
    p = subprocess.run(argv, env={**os.environ, "CONTINUITY_CRASHPOINT": point}, capture_output=True)
    assert p.returncode == -9, p.stderr
    assert verify_tree(str(root), store.load_manifest(digest)) != []
    p = subprocess.run(argv, capture_output=True)
    assert p.returncode == 0, p.stderr
    assert verify_tree(str(root), store.load_manifest(digest)) == []
    assert not [n for n in os.listdir(root / "d") if n.startswith(".continuity-apply")]


def test_absolute_symlinks_verbatim_and_rewritten(tmp_path: Path, store: Store, cli) -> None:  # noqa: ANN001
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "usr/share/zoneinfo").mkdir(parents=True)
    (src / "usr/share/zoneinfo/UTC").write_bytes(b"TZif")
    os.symlink("/usr/share/zoneinfo/UTC", src / "etc/localtime")
    os.symlink("/", src / "etc/rootlink")
    digest = cli("ingest", src, check=True).stdout.decode().strip()
    # verbatim (checkout and apply)
    cli("checkout", digest, tmp_path / "co", check=True)
    assert os.readlink(tmp_path / "co/etc/localtime") == "/usr/share/zoneinfo/UTC"
    (tmp_path / "ap").mkdir()
    cli("apply", tmp_path / "ap", digest, check=True)
    assert os.readlink(tmp_path / "ap/etc/localtime") == "/usr/share/zoneinfo/UTC"
    # rewritten: relative to the link's directory, resolving inside the tree
    cli("checkout", digest, tmp_path / "co2", "--rewrite-absolute-symlinks", check=True)
    assert os.readlink(tmp_path / "co2/etc/localtime") == "../usr/share/zoneinfo/UTC"
    assert (tmp_path / "co2/etc/localtime").read_bytes() == b"TZif"
    cli("apply", tmp_path / "ap", digest, "--rewrite-absolute-symlinks", check=True)
    assert os.readlink(tmp_path / "ap/etc/localtime") == "../usr/share/zoneinfo/UTC"
    assert os.readlink(tmp_path / "ap/etc/rootlink") == ".."
    assert (tmp_path / "ap/etc/localtime").read_bytes() == b"TZif"
    # verify compares targets verbatim: the rewritten tree differs only in targets
    v = cli("verify", tmp_path / "ap", digest)
    assert v.returncode == 1 and b"target differs" in v.stdout
    assert cli("verify", tmp_path / "ap", digest, "--ignore-attr", "target").returncode == 0
    # and applying without the option restores the verbatim targets
    cli("apply", tmp_path / "ap", digest, check=True)
    assert cli("verify", tmp_path / "ap", digest).returncode == 0


def _sock(path: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()


def test_sockets_ignored_unless_asked(tmp_path: Path, store: Store, cli) -> None:  # noqa: ANN001
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    _sock(src / "sock")
    digest = cli("ingest", src, check=True).stdout.decode().strip()
    m = store.load_manifest(digest)
    assert any(r.kind == "socket" for r in m.resources)  # recorded
    co = tmp_path / "co"
    cli("checkout", digest, co, check=True)
    assert not (co / "sock").exists()
    cli("checkout", digest, tmp_path / "co2", "--sockets", check=True)
    assert stat.S_ISSOCK(os.lstat(tmp_path / "co2/sock").st_mode)
    ap = tmp_path / "ap"
    ap.mkdir()
    _sock(ap / "extra.sock")
    cli("apply", ap, digest, "--delete", check=True)
    assert not (ap / "sock").exists() and (ap / "extra.sock").exists()  # neither created nor deleted
    assert cli("verify", ap, digest).returncode == 0
    cli("apply", ap, digest, "--delete", "--sockets", check=True)
    assert stat.S_ISSOCK(os.lstat(ap / "sock").st_mode) and not (ap / "extra.sock").exists()
    assert cli("verify", ap, digest, "--sockets").returncode == 0


@pytest.mark.skipif(not ROOT, reason="needs root (mknod)")
def test_devices_create_check_skip(tmp_path: Path, store: Store, cli) -> None:  # noqa: ANN001
    src = tmp_path / "src"
    (src / "dev").mkdir(parents=True)
    os.mknod(src / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(src / "dev/loop9", stat.S_IFBLK | 0o660, os.makedev(7, 9))
    (src / "f").write_bytes(b"x")
    digest = cli("ingest", src, check=True).stdout.decode().strip()
    ap = tmp_path / "ap"
    ap.mkdir()
    # skip: nothing created, verify --devices skip passes
    cli("apply", ap, digest, "--devices", "skip", check=True)
    assert not (ap / "dev/null").exists()
    assert cli("verify", ap, digest, "--devices", "skip").returncode == 0
    # check: reports what is missing, exit 1, creates nothing
    p = cli("apply", ap, digest, "--devices", "check")
    assert p.returncode == 1 and b"/dev/null: expected device c 1:3, found nothing" in p.stderr
    assert not (ap / "dev/null").exists()
    # create
    cli("apply", ap, digest, "--devices", "create", check=True)
    assert os.major(os.lstat(ap / "dev/null").st_rdev) == 1
    assert stat.S_ISBLK(os.lstat(ap / "dev/loop9").st_mode)
    assert cli("verify", ap, digest).returncode == 0
    assert cli("apply", ap, digest, "--devices", "check").returncode == 0
    # wrong numbers: check reports, create replaces
    os.unlink(ap / "dev/null")
    os.mknod(ap / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    p = cli("apply", ap, digest, "--devices", "check")
    assert p.returncode == 1 and b"found c 1:5" in p.stderr
    cli("apply", ap, digest, check=True)
    assert os.minor(os.lstat(ap / "dev/null").st_rdev) == 3
    assert verify_tree(str(ap), store.load_manifest(digest), VerifyOptions()) == []


def test_hostile_inputs_one_line_errors(tmp_path: Path, cli) -> None:  # noqa: ANN001
    src = state(tmp_path / "src", "basic")
    mf = _manifest_file(tmp_path, src)
    root = tmp_path / "root"
    not_tar = tmp_path / "junk.tar"
    not_tar.write_bytes(b"\x00garbage" * 200)
    garbage = tmp_path / "garbage.pb"
    garbage.write_bytes(b"\xff\xfe not a manifest")
    cases = [
        (("apply", root, mf, "--source", not_tar), 3),
        (("apply", root, garbage, "--source", src), 4),
        (("apply", root, tmp_path / "missing.pb", "--source", src), 1),
        (("apply", root, mf, "--source", tmp_path / "nosuchdir"), 1),
        (("apply", root, mf, "--move"), 2),
        (("apply", tmp_path / "no" / "parent", mf, "--source", src), 1),
    ]
    for args, code in cases:
        p = cli(*args)
        assert p.returncode == code, (args, p.stderr)
        if code != 2:
            assert p.stderr.startswith(b"continuity: error:") and p.stderr.count(b"\n") == 1, p.stderr
    # ROOT that does not exist yet (its parent does) is created
    assert cli("apply", root, mf, "--source", src).returncode == 0
    assert cli("verify", root, mf).returncode == 0
