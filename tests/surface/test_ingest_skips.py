"""Issue 15 item 4: unreadable or vanished entries are warned about (the path the user gave) and skipped;
the version is recorded, marked incomplete, and the exit code is 3.

The unreadable file needs a user root is not: the CLI runs as `nobody`, in a private mount namespace
where the interpreter (under root's home, 0700) is reachable through a bind mount."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from castore.build import WalkOptions, walk
from castore.ingest_skips import SkipLog
from tests.helpers import have, needs_root, run_cli

NOBODY = 65534


@pytest.fixture
def open_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="castore-skip-"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _as_nobody(base: Path, *argv: object) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI as nobody (a mount namespace makes the interpreter's directories reachable)."""
    exe = os.path.realpath(sys.executable)
    view = base / "view"
    script = base / "run.sh"
    prefix = Path(exe).parents[1]  # .../versions/X.Y.Z
    lines = ["set -e"]
    # Every 0700 directory on the way to the interpreter: shown 0755 through a bind-mounted copy of the mode.
    for anc in reversed(prefix.parents):
        if anc != Path("/") and not os.stat(anc).st_mode & 0o005:
            (view / anc.name).mkdir(parents=True, exist_ok=True)
            os.chmod(view / anc.name, 0o755)
            inner = prefix.relative_to(anc).parts[0]
            (view / anc.name / inner).mkdir(exist_ok=True)
            lines += [
                f"mount --rbind {anc / inner} {view / anc.name / inner}",
                f"mount --rbind {view / anc.name} {anc}",
            ]
            break
    repo = Path(__file__).resolve().parents[2]
    lines.append(f'exec runuser -u nobody -- env PYTHONPATH={repo} "$@"')
    script.write_text("\n".join(lines) + "\n")
    return subprocess.run(
        ["unshare", "-m", "sh", str(script), sys.executable, "-m", "castore", *map(str, argv)],
        capture_output=True,
        timeout=300,
    )


@needs_root
@pytest.mark.root
@pytest.mark.skipif(not (have("runuser") and have("unshare")), reason="needs runuser and unshare")
def test_unreadable_entries_skipped_as_non_root(open_dir: Path) -> None:
    src, store = open_dir / "src", open_dir / "stores"
    (src / "sub/deny").mkdir(parents=True)
    (src / "sub/deny/hidden").write_bytes(b"h")
    (src / "a").write_bytes(b"readable\n")
    (src / "sub/zero").write_bytes(b"secret\n")
    os.chmod(src / "sub/zero", 0)
    os.chmod(src / "sub/deny", 0)
    store.mkdir()
    os.chown(store, NOBODY, NOBODY)
    p = _as_nobody(open_dir, "--store", store / "s", "ingest", src, "--name", "n")
    err = p.stderr.decode()
    assert p.returncode == 3, err
    assert "Traceback" not in err
    assert f"continuity: warning: {src}/sub/zero: Permission denied; skipped" in err
    assert f"continuity: warning: {src}/sub/deny: Permission denied; skipped" in err
    assert "incomplete snapshot" in err
    digest = p.stdout.decode().strip()
    assert digest.startswith("sha256:")  # recorded: the digest is printed
    ls = _as_nobody(open_dir, "--store", store / "s", "ls", "n")
    assert ls.returncode == 0 and ls.stdout.split() == [b"/a", b"/sub"], ls.stderr
    hist = json.loads(_as_nobody(open_dir, "--store", store / "s", "history", "n", "--json").stdout)["versions"]
    assert [h["incomplete"] for h in hist] == [True]
    log = json.loads(_as_nobody(open_dir, "--store", store / "s", "log", "n", "--json").stdout)["versions"]
    assert log[0]["incomplete"] is True
    lst = json.loads(_as_nobody(open_dir, "--store", store / "s", "list", "--json").stdout)["names"]
    assert lst[0]["incomplete"] is True
    # an incomplete snapshot is never "unchanged": the next run records again (and tries the file again)
    again = _as_nobody(open_dir, "--store", store / "s", "ingest", src, "--name", "n")
    assert again.returncode == 3 and b"unchanged" not in again.stderr
    os.chmod(src / "sub/zero", 0o644)
    os.chmod(src / "sub/deny", 0o755)
    fixed = _as_nobody(open_dir, "--store", store / "s", "ingest", src, "--name", "n")
    assert fixed.returncode == 0, fixed.stderr
    hist = json.loads(_as_nobody(open_dir, "--store", store / "s", "history", "n", "--json").stdout)["versions"]
    assert [h["incomplete"] for h in hist] == [True, True, False]


def test_vanished_entries_are_reported_with_the_real_path(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Entries removed while the walk runs (a file listed but gone before its lstat, a directory
    listed but gone before it is entered) are reported, SRC joined with their path, and left out."""
    src = tmp_path / "src"
    (src / "zdir").mkdir(parents=True)
    (src / "zdir/inner").write_bytes(b"i")
    for i in range(20):
        (src / f"f{i:02d}").write_bytes(b"x")
    log = SkipLog(str(src))
    first: list[str] = []

    def on_file(job: object) -> None:
        if not first:  # the first file seen: every other file of the listing and the directory vanish now
            first.append(job.rel)  # type: ignore[attr-defined]
            for i in range(20):
                if f"f{i:02d}" != first[0]:
                    (src / f"f{i:02d}").unlink()
            shutil.rmtree(src / "zdir")

    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        walked = walk(fd, WalkOptions(on_skip=log), on_file)
    finally:
        os.close(fd)
    assert [j.rel for j in walked.files] == first
    assert "zdir" in log.paths and "No such file" in log.paths["zdir"]
    assert all(p.startswith("f") or p == "zdir" for p in log.paths)
    err = capfd.readouterr().err
    assert f"continuity: warning: {src}/zdir: No such file or directory; skipped" in err
    assert len(log.paths) == err.count("continuity: warning:")
    # without a handler (build, apply) the walk still fails as before
    (src / "gone").mkdir()

    def remove_gone(job: object) -> None:
        if (src / "gone").exists():
            os.rmdir(src / "gone")

    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(Exception, match="gone"):
            walk(fd, WalkOptions(), remove_gone)
    finally:
        os.close(fd)


def test_ingest_of_a_tree_that_is_fine_exits_0(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    p = run_cli("ingest", src, "--name", "n", store=tmp_path / "store", check=True)
    assert b"warning" not in p.stderr
    assert (
        json.loads(run_cli("history", "n", "--json", store=tmp_path / "store", check=True).stdout)["versions"][0][
            "incomplete"
        ]
        is False
    )
