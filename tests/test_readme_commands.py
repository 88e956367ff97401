"""The README's own commands, run as written (with a temporary store and directory)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import run_cli

README = Path(__file__).resolve().parents[1] / "README.md"


def export_block() -> list[str]:
    """The sh block of the README's export paragraph: export, GNU tar, verify."""
    text = README.read_text()
    m = re.search(r"```sh\n( *continuity export web -o web\.tar\n.*?) *```", text, re.S)
    assert m, "README lost its export/tar/verify block"
    return [ln.strip() for ln in m.group(1).splitlines() if ln.strip()]


def tree(root: Path) -> Path:
    """Directories whose names share prefixes (python3/ and python3.11/), times set on purpose."""
    for d in ("python3", "python3/x", "python3.11", "python3.11/site", "a", "a-b", "a.b", "a/b"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for f in ("python3/x/f", "python3.11/site/g", "a/b/h", "a-b/i", "a.b/j", "top"):
        (root / f).write_bytes(f.encode() * 10)
    os.link(root / "top", root / "a" / "top-link")
    os.symlink("../top", root / "a" / "sym")
    os.setxattr(root / "top", "user.note", b"kept")
    for i, p in enumerate(sorted(root.rglob("*"), key=lambda p: -len(p.parts))):
        os.utime(p, ns=(1_600_000_000_000_000_000 + i * 1_000_000_007,) * 2, follow_symlinks=False)
    return root


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")
def test_gnu_tar_extracts_an_export_exactly(tmp_path: Path) -> None:
    assert b"GNU tar" in subprocess.run(["tar", "--version"], capture_output=True, check=True).stdout
    src = tree(tmp_path / "src")
    st = tmp_path / "store"
    run_cli("ingest", src, "--name", "web", store=st, check=True)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "CONTINUITY_STORE": str(st), "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    (tmp_path / "bin").mkdir()
    shim = tmp_path / "bin" / "continuity"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m castore "$@"\n')
    shim.chmod(0o755)
    for line in export_block():
        p = subprocess.run(["/bin/sh", "-ec", line], cwd=work, env=env, capture_output=True, timeout=300)
        assert p.returncode == 0, (line, p.stdout, p.stderr)
    assert p.stdout == b""  # verify: not one difference, directory mtimes included
