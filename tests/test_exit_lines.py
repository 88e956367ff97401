"""Every non-zero exit says why: exactly one ``continuity: error:`` line on stderr, the last one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import run_cli


def assert_error_line(p, code: int | None = None) -> str:  # type: ignore[no-untyped-def]
    assert p.returncode != 0
    if code is not None:
        assert p.returncode == code, p.stderr
    err = p.stderr.decode().splitlines()
    assert err and err[-1].startswith("continuity: error: "), err
    assert sum(line.startswith("continuity: error:") for line in err) == 1, err
    return err[-1]


def make_store(tmp: Path) -> tuple[Path, Path, str]:
    st = tmp / "store"
    src = tmp / "src"
    src.mkdir()
    (src / "a").write_bytes(b"hello")
    (tmp / "garbage").write_bytes(b"\x01" * 1000)
    (tmp / "root").mkdir()
    (tmp / "changed").mkdir()
    (tmp / "changed" / "a").write_bytes(b"HELLO")
    digest = run_cli("ingest", src, "--name", "t", store=st, check=True).stdout.decode().strip()
    return st, src, digest


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    return make_store(tmp_path_factory.mktemp("exits"))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, str]:
    return make_store(tmp_path)


CASES = {
    "no-command": ((), 2),
    "usage-missing-arg": (("verify",), 2),
    "usage-bad-option": (("ls", "--bogus", "x"), 2),
    "usage-bad-choice": (("checkout", "t", "x", "--link", "nope"), 2),
    "bad-ignore-attr": (("verify", "{src}", "t", "--ignore-attr", "bogus"), 2),
    "gc-bad-grace": (("gc", "--grace", "soon"), 2),
    "unknown-manifest": (("ls", "nosuchname"), 1),
    "stats-unknown": (("stats", "nosuchname"), 1),
    "dump-unknown": (("dump", "nosuchname"), 1),
    "du-unknown": (("du", "nosuchname"), 1),
    "history-unknown": (("history", "nosuch"), 1),
    "tag-bad-name": (("tag", "t", "-bad"), 2),
    "tag-invalid-name": (("tag", "t", "a..b"), 3),
    "rm-unknown": (("rm", "nosuch"), 1),
    "ingest-missing-dir": (("ingest", "{tmp}/absent"), None),
    "ingest-tar-garbage": (("ingest", "--tar", "{tmp}/garbage"), None),
    "checkout-occupied": (("checkout", "t", "{src}"), None),
    "export-unknown": (("export", "nosuch", "-o", "{tmp}/out.tar"), 1),
    "apply-unknown": (("apply", "{tmp}/root", "nosuch"), 1),
    "copy-existing-dst": (("copy", "{src}", "{src}"), None),
    "mount-bad-mountpoint": (("mount", "t", "{tmp}/absent"), None),
    "push-bad-ref": (("push", "t", "not a reference"), 2),
    "pull-bad-ref": (("pull", "not a reference"), 2),
    "verify-differs": (("verify", "{tmp}/changed", "t"), 1),
    "verify-differs-json": (("verify", "{tmp}/changed", "t", "--json"), 1),
    "diff-differs": (("diff", "{src}", "{tmp}/changed"), 1),
    "diff-differs-json": (("diff", "{src}", "{tmp}/changed", "--json"), 1),
    "build-missing": (("build", "{tmp}/absent"), None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_nonzero_exit_has_one_error_line(shared: tuple[Path, Path, str], case: str) -> None:
    st, src, _ = shared
    args, code = CASES[case]
    argv = [a.format(src=src, tmp=src.parent) for a in args]
    assert_error_line(run_cli(*argv, store=st), code)


def test_gc_and_fsck_without_store(tmp_path: Path) -> None:
    for verb in ("gc", "fsck"):
        assert_error_line(run_cli(verb, store=tmp_path / "nostore"))


@pytest.mark.parametrize("as_json", [False, True])
def test_fsck_damage_report_on_stdout_one_line_on_stderr(setup: tuple[Path, Path, str], as_json: bool) -> None:
    st, _, _ = setup
    for dirpath, _, files in os.walk(st / "blobs"):
        for f in files:
            fp = os.path.join(dirpath, f)
            if os.path.getsize(fp) == 5:  # the content of /a
                os.chmod(fp, 0o644)
                with open(fp, "r+b") as fh:
                    fh.write(b"J")
    p = run_cli("fsck", *(["--json"] if as_json else []), store=st)
    line = assert_error_line(p, 4)
    assert "damaged" in line and len(p.stderr.decode().splitlines()) == 1
    assert b"corrupt" in p.stdout or b"error" in p.stdout  # the report itself stays on stdout
