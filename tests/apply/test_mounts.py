"""Other filesystems mounted below ROOT/TARGET are never entered, changed or removed (issue 11)."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from castore.fs.tree import discard_dir, remove_tree
from castore.testing.trees import make_tree
from tests.helpers import ROOT

TREE = {"etc/conf": b"conf", "top": b"top"}

pytestmark = [pytest.mark.root, pytest.mark.skipif(not ROOT, reason="needs root (mount)")]


@contextmanager
def mounted(kind: str, at: Path, tmp: Path) -> Iterator[Path]:
    """A bind mount of a fresh directory, or a tmpfs, at ``at``, with content; always unmounted."""
    at.mkdir(parents=True, exist_ok=True)
    if kind == "bind":
        src = tmp / f"bind-src-{at.name}"
        src.mkdir()
        subprocess.run(["mount", "--bind", str(src), str(at)], check=True)
    else:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0751", "tmpfs", str(at)], check=True)
    try:
        (at / "keep").write_bytes(b"precious")
        (at / "sub").mkdir()
        (at / "sub" / "deep").write_bytes(b"deeper")
        os.chmod(at / "sub", 0o750)
        os.utime(at / "sub", ns=(10**18, 10**18))
        os.chmod(at, 0o751)
        yield at
    finally:
        subprocess.run(["umount", "-l", str(at)], check=True)


def is_mounted(at: Path) -> bool:
    """A mount point (bind mounts on the same device included, which os.path.ismount misses)."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == str(at) for line in f)


def snapshot(at: Path) -> dict[str, tuple[int, int, bytes]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(at):
        for n in dirnames + filenames + ["."]:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            data = Path(p).read_bytes() if os.path.isfile(p) else b""
            out[os.path.relpath(p, at)] = (st.st_mode, st.st_mtime_ns, data)
    return out


@pytest.mark.parametrize("kind", ["bind", "tmpfs"])
def test_apply_delete_leaves_a_mount_point_alone(cli, tmp_path: Path, kind: str) -> None:
    src = tmp_path / "src"
    make_tree(src, TREE)
    assert cli("ingest", src, "--name", "m").returncode == 0
    root = tmp_path / "root"
    make_tree(root, TREE)
    (root / "extra").write_bytes(b"x")
    with mounted(kind, root / "data", tmp_path) as data:
        before = snapshot(data)
        p = cli("apply", root, "m", "--delete")
        err = p.stderr.decode()
        assert p.returncode == 0, err
        assert f"{root}/data" in err and "mounted" in err
        assert snapshot(data) == before
        assert is_mounted(data)
        assert not (root / "extra").exists()  # the rest of the apply proceeded
        # And again (the record of the first apply): still untouched.
        p = cli("apply", root, "m", "--delete")
        assert p.returncode == 0, p.stderr.decode()
        assert snapshot(data) == before


def test_apply_delete_keeps_the_parents_of_a_mount_point(cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, TREE)
    assert cli("ingest", src, "--name", "m").returncode == 0
    root = tmp_path / "root"
    make_tree(root, TREE)
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "other").write_bytes(b"o")
    (root / "a" / "b" / "x").write_bytes(b"x")
    with mounted("tmpfs", root / "a" / "b" / "data", tmp_path) as data:
        before = snapshot(data)
        p = cli("apply", root, "m", "--delete")
        assert p.returncode == 0, p.stderr.decode()
        assert snapshot(data) == before
        assert sorted(os.listdir(root / "a")) == ["b"]
        assert sorted(os.listdir(root / "a" / "b")) == ["data"]


def _layer(tmp: Path, whiteouts: list[str]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name in whiteouts:
            ti = tarfile.TarInfo(name)
            t.addfile(ti, io.BytesIO(b""))
        ti = tarfile.TarInfo("new")
        ti.size = 3
        t.addfile(ti, io.BytesIO(b"new"))
    path = tmp / "layer.tar"
    path.write_bytes(buf.getvalue())
    return path


@pytest.mark.parametrize("kind", ["bind", "tmpfs"])
@pytest.mark.parametrize("whiteout", [".wh.data", ".wh.a"])
def test_whiteout_of_a_mount_point_leaves_it_alone(cli, tmp_path: Path, kind: str, whiteout: str) -> None:
    layer = _layer(tmp_path, [whiteout])
    assert cli("ingest", "--tar", layer, "--whiteouts", "oci", "--name", "layer").returncode == 0
    root = tmp_path / "root"
    make_tree(root, TREE)
    at = root / "data" if whiteout == ".wh.data" else root / "a" / "data"
    with mounted(kind, at, tmp_path) as data:
        (data.parent / "sibling").write_bytes(b"s")
        before = snapshot(data)
        p = cli("apply", root, "layer")
        err = p.stderr.decode()
        assert p.returncode == 0, err
        assert snapshot(data) == before
        assert (root / "new").read_bytes() == b"new"
        assert str(data) in err and "mounted" in err
        if whiteout == ".wh.a":  # the rest of the whited-out directory is gone, what holds the mount kept
            assert os.listdir(root / "a") == ["data"]
        else:
            assert (root / "sibling").exists()


def test_apply_refuses_to_replace_or_fill_a_mount_point(cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, TREE)
    (src / "data").write_bytes(b"a file where the mount is")
    assert cli("ingest", src, "--name", "file").returncode == 0
    src2 = tmp_path / "src2"
    make_tree(src2, TREE)
    (src2 / "data").mkdir()
    (src2 / "data" / "keep").write_bytes(b"other")
    assert cli("ingest", src2, "--name", "inside").returncode == 0
    root = tmp_path / "root"
    make_tree(root, TREE)
    with mounted("bind", root / "data", tmp_path) as data:
        before = snapshot(data)
        for name in ("file", "inside"):
            p = cli("apply", root, name, "--delete")
            err = p.stderr.decode().strip().splitlines()
            assert p.returncode == 3, err
            assert len(err) == 1 and err[0].startswith("continuity: error: ") and f"{root}/data" in err[0], err
            assert snapshot(data) == before
            assert is_mounted(data)


def test_tree_removal_never_crosses_a_mount(tmp_path: Path) -> None:
    """The removal under checkout/copy clean-up, gc and leases: a mount inside is left whole."""
    for remover in ("discard", "tree"):
        top = tmp_path / f"doomed-{remover}"
        (top / "x" / "y").mkdir(parents=True)
        (top / "x" / "f").write_bytes(b"f")
        with mounted("tmpfs", top / "x" / "y" / "m", tmp_path) as data:
            before = snapshot(data)
            if remover == "discard":
                fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    kept = discard_dir(fd, top.name)
                finally:
                    os.close(fd)
                assert kept == [f"{top.name}/x/y/m"]
            else:
                assert remove_tree(str(top)) == [f"{top}/x/y/m"]
            assert snapshot(data) == before
            assert not (top / "x" / "f").exists()


def test_clean_up_of_a_killed_checkout_leaves_a_mount_in_it(cli, tmp_path: Path) -> None:
    """A checkout SIGKILLed with a filesystem then mounted in its staging directory: the next
    checkout's clean-up (and gc's) removes all but the mount, and warns about it."""
    src = tmp_path / "src"
    make_tree(src, TREE)
    assert cli("ingest", src, "--name", "m").returncode == 0
    out = tmp_path / "out"
    out.mkdir()
    p = cli("checkout", "m", out / "t", env={"CONTINUITY_CRASHPOINT": "checkout-after-dirs"})
    assert p.returncode == -9
    [stale] = [n for n in os.listdir(out) if ".continuity-" in n]
    with mounted("tmpfs", out / stale / "etc" / "mnt", tmp_path) as data:
        before = snapshot(data)
        for verb in (("checkout", "m", out / "t2"), ("gc",)):
            p = cli(*verb)
            assert p.returncode == 0, p.stderr.decode()
            assert "mnt" in p.stderr.decode() and "mounted" in p.stderr.decode()
            assert snapshot(data) == before
        assert sorted(os.listdir(out / stale)) == ["etc"]
    assert cli("checkout", "m", out / "t3").returncode == 0
    assert sorted(os.listdir(out)) == ["t2", "t3"]


def test_checkout_onto_an_empty_mount_point_is_refused(cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, TREE)
    assert cli("ingest", src, "--name", "m").returncode == 0
    target = tmp_path / "t"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)], check=True)
    try:
        p = cli("checkout", "m", target)
        err = p.stderr.decode().strip().splitlines()
        assert p.returncode == 3 and len(err) == 1 and str(target) in err[0] and "mounted" in err[0], err
        assert is_mounted(target) and os.listdir(target) == []
        assert [n for n in os.listdir(tmp_path) if ".continuity-" in n] == []
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)
