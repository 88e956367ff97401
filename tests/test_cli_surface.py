"""The everyday surface (issue 15, item 5): usage errors, pipes, --store anywhere, rm, help, -q/-v,
progress on a terminal, apply's extra entries, gc --dry-run, xz/bzip2 tars, ISO mtimes, ls -l."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.helpers import run_cli, run_pty

REPO = Path(__file__).resolve().parents[1]
VERBS = [
    "ingest",
    "checkout",
    "list",
    "history",
    "tag",
    "rm",
    "build",
    "verify",
    "ls",
    "dump",
    "stats",
    "diff",
    "du",
    "apply",
    "copy",
    "export",
    "gc",
    "fsck",
    "mount",
    "push",
    "pull",
    "keygen",
    "sign",
    "verify-signature",
]


@pytest.fixture
def web(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"x" * 3000)
    (src / "g").write_bytes(b"y" * 10)
    st = tmp_path / "store"
    run_cli("ingest", src, "--name", "web", store=st, check=True)
    return src, st


def test_usage_error_is_one_line(web: tuple[Path, Path]) -> None:
    _, st = web
    for args in (("ls", "--bogus", "web"), ("nosuchverb",), ("checkout", "web")):
        p = run_cli(*args, store=st)
        assert p.returncode == 2, p.stderr
        assert p.stderr.count(b"\n") == 1 and p.stderr.startswith(b"continuity: error: "), p.stderr
        assert b"--help" in p.stderr


def test_store_anywhere(web: tuple[Path, Path]) -> None:
    _, st = web
    argv = [sys.executable, "-m", "castore"]
    a = subprocess.run([*argv, "list", "--store", str(st)], capture_output=True, check=True).stdout
    b = subprocess.run([*argv, "--store", str(st), "list"], capture_output=True, check=True).stdout
    c = subprocess.run([*argv, "ls", f"--store={st}", "web"], capture_output=True, check=True).stdout
    assert a == b and a.startswith(b"web\t") and c == b"/d\n/d/f\n/g\n"


def test_broken_pipe_is_quiet(tmp_path: Path) -> None:
    src = tmp_path / "many"
    src.mkdir()
    for i in range(3000):
        (src / f"file-with-a-longish-name-{i:05d}").touch()
    st = tmp_path / "store"
    run_cli("ingest", src, "--name", "many", store=st, check=True)
    p = subprocess.run(
        ["/bin/sh", "-c", f'{sys.executable} -m castore --store {st} ls many | head -1; echo "rc=$?"'],
        capture_output=True,
        timeout=120,
    )
    assert p.stdout.splitlines()[0] == b"/file-with-a-longish-name-00000"
    assert p.stderr == b"", p.stderr


def test_rm_is_all_or_nothing(web: tuple[Path, Path]) -> None:
    _, st = web
    run_cli("tag", "web", "b", store=st, check=True)
    p = run_cli("rm", "b", "nosuch", store=st)
    assert p.returncode == 1 and b"nosuch" in p.stderr and b"nothing removed" in p.stderr
    names = {r["name"] for r in json.loads(run_cli("list", "--json", store=st, check=True).stdout)["names"]}
    assert names == {"web", "b"}
    run_cli("rm", "b", "web", store=st, check=True)
    assert run_cli("list", store=st, check=True).stdout == b""


def test_every_help_has_examples() -> None:
    for verb in VERBS:
        p = run_cli(verb, "--help", check=True)
        assert b"Examples:" in p.stdout and b"continuity " + verb.encode() in p.stdout, verb
        assert b"SPEC.md" not in p.stdout, verb
    assert b"Examples:" in run_cli("--help", check=True).stdout


_pty = run_pty


def test_progress_on_a_terminal_only(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"f{i}").write_bytes(os.urandom(1 << 20))
    st = tmp_path / "store"
    cli = [sys.executable, "-m", "castore", "--store", str(st)]
    rc, out = _pty([*cli, "ingest", str(src), "--name", "a"])
    assert rc == 0 and b"ingest" in out and b"8.0 MiB" in out and b"100%" in out and b"/s" in out, out
    rc, out = _pty([*cli, "export", "a", "-o", str(tmp_path / "a.tar")])
    assert rc == 0 and b"export" in out and b"100%" in out, out
    rc, out = _pty([*cli, "checkout", "a", str(tmp_path / "co")])
    assert rc == 0 and b"checkout" in out and b"entries" in out, out
    rc, out = _pty([*cli, "ingest", "--tar", str(tmp_path / "a.tar")])
    assert rc == 0 and b"ingest" in out and b"MiB/" in out, out
    (tmp_path / "ap").mkdir()
    rc, out = _pty([*cli, "apply", str(tmp_path / "ap"), "a"])
    assert rc == 0 and b"apply" in out and b"100%" in out and b"8.0 MiB/8.0 MiB" in out, out
    rc, out = _pty([*cli, "copy", str(src), str(tmp_path / "cp")])
    assert rc == 0 and b"copy" in out and b"8.0 MiB/8.0 MiB" in out, out
    rc, out = _pty([*cli, "fsck"])
    assert rc == 0 and b"fsck" in out and b"blobs" in out and b"100%" in out, out
    rc, out = _pty([*cli, "-q", "checkout", "a", str(tmp_path / "co2")])
    assert rc == 0 and out == b"", out
    p = run_cli("checkout", "a", tmp_path / "co3", store=st, check=True)  # not a terminal: silent
    assert p.stderr == b"" and p.stdout == b""
    rc, out = _pty([*cli, "list"])  # a short verb draws nothing
    assert rc == 0 and b"\x1b[" not in out and b"%" not in out, out
    run_cli("rm", "a", store=st, check=True)
    rc, out = _pty([*cli, "gc", "--grace", "0"])
    assert rc == 0 and b"files" in out and b"100%" in out, out


def test_apply_says_how_many_extra_entries_it_left(web: tuple[Path, Path], tmp_path: Path) -> None:
    src, st = web
    root = tmp_path / "root"
    run_cli("checkout", "web", root, store=st, check=True)
    (root / "extra1").write_bytes(b"1")
    (root / "d" / "extra2").write_bytes(b"2")
    p = run_cli("apply", root, "web", store=st, check=True)
    assert b"left 2 entries the manifest does not list" in p.stderr and b"-v lists them" in p.stderr
    p = run_cli("-v", "apply", root, "web", "--rehash", store=st, check=True)
    assert b"/extra1" in p.stderr and b"/d/extra2" in p.stderr
    p = run_cli("apply", root, "web", "--delete", store=st, check=True)
    assert b"left" not in p.stderr and not (root / "extra1").exists()


def test_gc_dry_run_speaks_in_kinds_and_sizes(web: tuple[Path, Path]) -> None:
    _, st = web
    run_cli("rm", "web", store=st, check=True)
    p = run_cli("gc", "--dry-run", "--grace", "0", store=st, check=True)
    lines = p.stdout.decode().splitlines()
    assert "would delete 2 content blobs (2.9 KiB)" in lines, lines
    assert not any("cache-row" in ln or "index rows" in ln for ln in lines[:-1]), lines
    assert lines[-1].startswith("gc: would free")


@pytest.mark.parametrize("mode", ["xz", "bz2"])
def test_xz_and_bzip2_tars(web: tuple[Path, Path], tmp_path: Path, mode: str) -> None:
    src, st = web
    tar = tmp_path / f"t.tar.{mode}"
    with tarfile.open(tar, f"w:{mode}", format=tarfile.PAX_FORMAT) as tf:
        tf.add(src, arcname=".")
    d = run_cli("ingest", "--tar", tar, store=st, check=True).stdout.decode().strip()
    run_cli("diff", "web", d, "--ignore-attr", "owner", "--ignore-attr", "mtime", store=st, check=True)
    root = tmp_path / "applied"
    root.mkdir()
    run_cli("apply", root, "web", "--source", tar, store=st, check=True)
    run_cli("verify", root, "web", store=st, check=True)
    bad = tmp_path / f"bad.tar.{mode}"
    bad.write_bytes(tar.read_bytes()[: len(tar.read_bytes()) // 2])
    p = run_cli("ingest", "--tar", bad, store=st)
    assert p.returncode in (3, 4) and p.stderr.count(b"\n") == 1, p.stderr


def test_verify_shows_iso_mtimes(web: tuple[Path, Path]) -> None:
    src, st = web
    os.utime(src / "g", ns=(1_700_000_000_123456789, 1_700_000_000_123456789))
    p = run_cli("verify", src, "web", store=st)
    assert p.returncode == 1
    assert b"mtime differs: expected 20" in p.stdout and b"got 2023-11-14T22:13:20.123456789Z" in p.stdout, p.stdout


def test_ls_long_prints_the_digest(web: tuple[Path, Path]) -> None:
    _, st = web
    lines = run_cli("ls", "-l", "web", store=st, check=True).stdout.decode().splitlines()
    f = next(ln for ln in lines if ln.endswith(" /d/f"))
    assert " sha256:" in f and " 3000 " in f
    assert any(ln.startswith("d") and " - /d" in ln for ln in lines)


def test_sizes_are_iec(web: tuple[Path, Path]) -> None:
    _, st = web
    assert run_cli("du", "-H", "web", store=st, check=True).stdout.startswith(b"2.9 KiB\t")
    assert b"\t2.9 KiB\t" in run_cli("list", "-H", store=st, check=True).stdout
