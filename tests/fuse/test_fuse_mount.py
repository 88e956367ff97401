"""`continuity mount`: a real FUSE mount in a subprocess, compared with its source tree."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from castore.manifest.model import RegularFile
from castore.store import Store, manifest_refs
from castore.testing.compare import assert_trees_equal
from castore.testing.trees import upstream_tree
from tests.fuse.fuse_util import FUSE_MISSING, in_mount_table, mounted, needs_fuse, unmount
from tests.helpers import ROOT, run_cli

pytestmark = pytest.mark.fuse
NON_UTF8 = b"latin1-\xe9t\xe9"
PAGE = os.sysconf("SC_PAGE_SIZE")


def source_tree(root: Path) -> Path:
    """rich_tree plus what it leaves out: a name that is not UTF-8, a sparse chunked file, a socket."""
    upstream_tree(root)
    with open(os.path.join(os.fsencode(root), NON_UTF8), "wb") as f:
        f.write(b"not utf-8\n")
    with open(root / "sparse.bin", "wb") as f:
        f.truncate(3 << 20)
        f.seek(1 << 20)
        f.write(b"data in the middle" * 1000)
        f.seek((3 << 20) - 5)
        f.write(b"tail!")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(root / "special" / "sock"))
    s.close()
    return root


def ingest(store: Path, src: Path, name: str) -> str:
    p = run_cli("ingest", src, "--name", name, store=store, check=True)
    return p.stdout.decode().strip()


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """(store, source, digest, mount) of the rich tree, mounted once for the read-only tests."""
    if FUSE_MISSING:
        pytest.skip(FUSE_MISSING)
    base = tmp_path_factory.mktemp("fuse-rich")
    src = source_tree(base / "src")
    digest = ingest(base / "store", src, "rich")
    with mounted(base / "store", "rich", base / "mnt") as m:
        yield base / "store", src, digest, m


# ---------------------------------------------------------------- the view


@needs_fuse
def test_tree_matches_source(rich) -> None:  # type: ignore[no-untyped-def]
    """Types, modes (setuid/setgid/sticky), owners, sizes, content, symlink targets, hardlink
    groups, device numbers, every xattr (ACLs, trusted.*, security.*) and ns mtimes."""
    _, src, _, m = rich
    assert_trees_equal(src, m.mnt)  # times included: FUSE passes sec + nsec, nothing to adapt
    assert os.path.exists(os.path.join(os.fsencode(m.mnt), NON_UTF8))


@needs_fuse
def test_stat_details_and_mount_options(rich) -> None:  # type: ignore[no-untyped-def]
    _, src, _, m = rich
    mnt = m.mnt
    group = [os.lstat(mnt / p) for p in ("links/a", "links/b", "links/sub/c")]
    assert len({st.st_ino for st in group}) == 1 and all(st.st_nlink == 3 for st in group)
    assert os.lstat(mnt / "links/a").st_ino != os.lstat(mnt / "links/empty-a").st_ino
    subdirs = sum(1 for e in os.scandir(src / "modes") if e.is_dir(follow_symlinks=False))
    assert os.lstat(mnt / "modes").st_nlink == 2 + subdirs
    sparse = os.lstat(mnt / "sparse.bin")
    assert sparse.st_size == 3 << 20 and sparse.st_blocks * 512 < sparse.st_size
    with open(mnt / "sparse.bin", "rb") as f:
        assert f.read(4096) == bytes(4096)  # a hole reads as zeros
    assert os.readlink(mnt / "sym/long-target") == "t" * 1000
    assert stat.S_ISSOCK(os.lstat(mnt / "special/sock").st_mode)
    vfs = os.statvfs(mnt)
    assert vfs.f_flag & os.ST_RDONLY and vfs.f_flag & os.ST_NOSUID and vfs.f_flag & os.ST_NODEV
    assert vfs.f_blocks * vfs.f_frsize >= (9 << 20) and vfs.f_bavail == 0 and vfs.f_namemax == 255
    with open("/proc/self/mounts") as f:
        line = next(ln for ln in f if ln.split()[1] == str(mnt))
    opts = line.split()[3].split(",")
    assert {"ro", "nosuid", "nodev", "default_permissions"} <= set(opts)
    assert "allow_other" not in opts


@needs_fuse
def test_random_reads_of_chunked_file(rich) -> None:  # type: ignore[no-untyped-def]
    store_path, src, digest, m = rich
    manifest = Store.open(str(store_path)).load_manifest(digest)
    big = manifest.by_path()["/data/large.bin"]
    assert isinstance(big, RegularFile) and len(big.chunks) > 4  # > 1 MiB files are chunked
    want = (src / "data/large.bin").read_bytes()
    rng = random.Random(11)
    fd = os.open(m.mnt / "data/large.bin", os.O_RDONLY)
    try:
        offsets = [rng.randrange(len(want)) for _ in range(150)]
        offsets += [c.end - 3 for c in big.chunks]  # reads that straddle chunk boundaries
        offsets += [len(want) - 1, len(want), len(want) + 100]
        for off in offsets:
            n = rng.choice([1, 100, 4096, 70_000, 1 << 20])
            assert os.pread(fd, n, off) == want[off : off + n], off
    finally:
        os.close(fd)


@needs_fuse
def test_writes_fail_with_erofs(rich) -> None:  # type: ignore[no-untyped-def]
    mnt = rich[3].mnt
    f = mnt / "plain.txt"
    attempts = [
        lambda: os.open(f, os.O_WRONLY),
        lambda: os.open(f, os.O_RDONLY | os.O_TRUNC),
        lambda: os.open(mnt / "new", os.O_WRONLY | os.O_CREAT, 0o644),
        lambda: os.mkdir(mnt / "newdir"),
        lambda: os.unlink(f),
        lambda: os.rmdir(mnt / "empty-dir"),
        lambda: os.rename(f, mnt / "renamed"),
        lambda: os.link(f, mnt / "hard"),
        lambda: os.symlink("x", mnt / "sym2"),
        lambda: os.mkfifo(mnt / "fifo2"),
        lambda: os.chmod(f, 0o600),
        lambda: os.chown(f, 1, 1),
        lambda: os.utime(f, ns=(1, 1)),
        lambda: os.truncate(f, 0),
        lambda: os.setxattr(f, "user.new", b"1"),
        lambda: os.removexattr(f, "user.comment"),
    ]
    for i, attempt in enumerate(attempts):
        with pytest.raises(OSError) as exc:
            attempt()
        assert exc.value.errno == errno.EROFS, (i, exc.value)
    assert (mnt / "plain.txt").read_bytes() == b"hello, continuity\n"


# ------------------------------------------------------------ integrity, gc, leases


def _blob(store: Path, digest: str) -> Path:
    return store / "blobs" / "sha256" / digest[7:9] / digest[7:]


def _flip_first_byte(path: Path) -> None:
    os.chmod(path, 0o644)
    fd = os.open(path, os.O_RDWR)
    try:
        b = os.pread(fd, 1, 0)
        os.pwrite(fd, bytes([b[0] ^ 0xFF]), 0)
    finally:
        os.close(fd)
    os.chmod(path, 0o444)


@needs_fuse
def test_corrupt_blob_reads_fail_with_eio(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = random.Random(3).randbytes(3 << 20)
    (src / "big.bin").write_bytes(big)
    (src / "small.txt").write_bytes(b"small file\n")
    (src / "other.txt").write_bytes(b"another file\n")
    store = tmp_path / "store"
    digest = ingest(store, src, "t")
    manifest = Store.open(str(store)).load_manifest(digest)
    by_path = manifest.by_path()
    big_r, small_r = by_path["/big.bin"], by_path["/small.txt"]
    assert isinstance(big_r, RegularFile) and isinstance(small_r, RegularFile) and len(big_r.chunks) >= 3
    bad = big_r.chunks[1]
    with mounted(store, "t", tmp_path / "mnt") as m:
        _flip_first_byte(_blob(store, bad.digest))
        _flip_first_byte(_blob(store, small_r.digest))
        fd = os.open(m.mnt / "big.bin", os.O_RDONLY)
        try:
            # The kernel reads whole pages (and readahead windows): only a page that overlaps the bad
            # chunk must fail, so read whole pages inside the good ones, with readahead off.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            with pytest.raises(OSError) as exc:
                os.pread(fd, 100, bad.begin + 10)
            assert exc.value.errno == errno.EIO
            for c in (big_r.chunks[0], big_r.chunks[2], big_r.chunks[-1]):
                first = -(-c.begin // PAGE) * PAGE
                assert c.end - first >= PAGE
                assert os.pread(fd, PAGE, first) == big[first : first + PAGE]
            with pytest.raises(OSError) as exc:  # again: never served from a cache
                os.pread(fd, 100, bad.begin + 10)
            assert exc.value.errno == errno.EIO
        finally:
            os.close(fd)
        with pytest.raises(OSError) as exc:
            (m.mnt / "small.txt").read_bytes()
        assert exc.value.errno == errno.EIO
        assert (m.mnt / "other.txt").read_bytes() == b"another file\n"
        assert os.lstat(m.mnt / "small.txt").st_size == len(b"small file\n")  # metadata still served
    log = m.stderr()
    assert bad.digest in log and small_r.digest in log and "corrupt" in log
    assert "Traceback" not in log


@needs_fuse
def test_gc_during_mount_keeps_its_blobs(tmp_path: Path) -> None:
    if run_cli("gc", "--help").returncode != 0:
        pytest.skip("gc is not available")
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(random.Random(5).randbytes(2 << 20))
    (src / "a.txt").write_bytes(b"only here\n")
    store = tmp_path / "store"
    digest = ingest(store, src, "doomed")
    blobs = sorted(manifest_refs(Store.open(str(store)).load_manifest(digest))) + [digest]
    with mounted(store, "doomed", tmp_path / "mnt") as m:
        run_cli("rm", "doomed", store=store, check=True)
        run_cli("gc", "--grace", "0", store=store, check=True)
        assert all(_blob(store, d).exists() for d in blobs)
        assert_trees_equal(src, m.mnt)
        assert m.stop() == 0
    run_cli("gc", "--grace", "0", store=store, check=True)  # the lease went with the mount
    assert not any(_blob(store, d).exists() for d in blobs)


def _lease_rows(store: Path) -> list[dict[str, object]]:
    s = Store.open(str(store))
    with s.meta.read() as txn:
        return [json.loads(v) for _, v in txn.cursor(db=s.meta.db("leases"))]


@needs_fuse
@pytest.mark.parametrize("how", ["sigterm", "sigint", "fusermount"])
def test_unmount_releases_the_lease(tmp_path: Path, how: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"content\n")
    store = tmp_path / "store"
    digest = ingest(store, src, "t")
    with mounted(store, "t", tmp_path / "mnt") as m:
        rows = _lease_rows(store)
        assert [r["manifests"] for r in rows] == [[digest]]
        assert len(Store.open(str(store)).live_leases()) == 1
        assert (m.mnt / "f").read_bytes() == b"content\n"
        if how == "fusermount":
            subprocess.run(["fusermount3", "-u", str(m.mnt)], check=True, timeout=30)
            assert m.proc.wait(timeout=20) == 0
        else:
            assert m.stop(signal.SIGTERM if how == "sigterm" else signal.SIGINT) == 0
        assert not in_mount_table(m.mnt)
    assert _lease_rows(store) == []
    assert os.listdir(store / "leases") == []
    assert "Traceback" not in m.stderr()


@needs_fuse
def test_allow_other_only_on_request(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    store = tmp_path / "store"
    ingest(store, src, "t")
    with mounted(store, "t", tmp_path / "mnt", "--allow-other") as m:
        with open("/proc/self/mounts") as f:
            line = next(ln for ln in f if ln.split()[1] == str(m.mnt))
        assert "allow_other" in line.split()[3].split(",") and "ro" in line.split()[3].split(",")


@needs_fuse
def test_mount_a_manifest_file_leases_its_blobs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"from a manifest file\n")
    store = tmp_path / "store"
    ingest(store, src, "t")
    mfile = tmp_path / "tree.pb"
    mfile.write_bytes(run_cli("build", src, store=store, check=True).stdout)
    with mounted(store, str(mfile), tmp_path / "mnt") as m:
        assert (m.mnt / "f").read_bytes() == b"from a manifest file\n"
        (row,) = _lease_rows(store)
        s = Store.open(str(store))
        assert row["manifests"] == sorted(manifest_refs(s.load_manifest(s.resolve("t"))))


# ------------------------------------------------------------ refusals


def test_mountpoint_refused_exit_3(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    store = tmp_path / "store"
    ingest(store, src, "t")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_bytes(b"")
    (tmp_path / "file").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    os.symlink("empty", tmp_path / "link")
    for mp, why in [
        ("missing", "does not exist"),
        ("full", "not empty"),
        ("file", "not a directory"),
        ("link", "symlink"),
    ]:
        p = run_cli("mount", "t", tmp_path / mp, store=store)
        err = p.stderr.decode()
        assert p.returncode == 3, (mp, err)
        assert err.count("\n") == 1 and err.startswith("continuity: error: ") and why in err, err
    p = run_cli("mount", "no-such-name", tmp_path / "empty", store=store)
    assert p.returncode != 0 and b"no-such-name" in p.stderr
    assert not in_mount_table(tmp_path / "empty")


def test_missing_library_exit_1(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    store = tmp_path / "store"
    ingest(store, src, "t")
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "pyfuse3.py").write_text("raise ImportError('libfuse3.so.3: cannot open shared object file')\n")
    (tmp_path / "mnt").mkdir()
    p = run_cli("mount", "t", tmp_path / "mnt", store=store, env={"PYTHONPATH": str(shadow)})
    err = p.stderr.decode()
    if not os.path.exists("/dev/fuse"):
        assert p.returncode == 1 and "/dev/fuse" in err, err
        return
    assert p.returncode == 1 and "continuity[fuse]" in err and err.count("\n") == 1, err


def _can_unshare() -> bool:
    try:
        return ROOT and subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare -m")
def test_missing_dev_fuse_exit_1(tmp_path: Path) -> None:
    """In a private mount namespace whose /dev is an empty tmpfs."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    store = tmp_path / "store"
    ingest(store, src, "t")
    (tmp_path / "mnt").mkdir()
    script = 'mount --make-rprivate / && mount -t tmpfs none /dev && exec "$0" -m castore --store "$1" mount t "$2"'
    p = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, sys.executable, str(store), str(tmp_path / "mnt")],
        capture_output=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    err = p.stderr.decode()
    assert p.returncode == 1 and "/dev/fuse" in err and "Traceback" not in err, err
    unmount(tmp_path / "mnt")
