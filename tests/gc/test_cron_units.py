"""gc from cron and systemd: the units' own command lines, run against a temporary store.

The service's ``ExecStart=`` (with its ``Environment=`` lines) and the cron line
are parsed from the files in cmd/continuity-gc/, the installed wrapper path is
mapped to the repository's copy, and the exit codes must reach the caller
unchanged: 0 for a run, 5 when another gc holds the lock, 4 for a damaged store.
"""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import run_cli

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "cmd" / "continuity-gc"
WRAPPER = UNITS / "continuity-gc"
INSTALLED = "/usr/local/bin/continuity-gc"


def service() -> tuple[list[str], dict[str, str], set[int]]:
    """ExecStart argv, Environment= pairs and SuccessExitStatus of the .service file."""
    env: dict[str, str] = {}
    argv: list[str] = []
    ok = {0}
    for line in (UNITS / "continuity-gc.service").read_text().splitlines():
        key, sep, value = line.partition("=")
        if not sep or line.startswith("#"):
            continue
        if key == "Environment":
            for pair in shlex.split(value):
                k, _, v = pair.partition("=")
                env[k] = v
        elif key == "ExecStart":
            argv = shlex.split(value)
        elif key == "SuccessExitStatus":
            ok |= {int(x) for x in value.split()}
    return argv, env, ok


def cron_command() -> str:
    lines = [
        ln
        for ln in (UNITS / "continuity-gc.cron").read_text().splitlines()
        if ln.strip() and not ln.startswith("#") and not re.match(r"^[A-Z_]+=", ln)
    ]
    assert len(lines) == 1, lines
    fields = lines[0].split(None, 6)  # minute hour day month weekday user command
    assert fields[5] == "root"
    return fields[6]


def wrapper_env(store: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        **os.environ,
        **(extra or {}),
        "CONTINUITY": f"{sys.executable} -m castore",
        "CONTINUITY_STORE": str(store),
        "PYTHONPATH": str(REPO),
        "CONTINUITY_GC_NO_SYSLOG": "1",
    }


@pytest.fixture
def store(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"kept")
    st = tmp_path / "store"
    run_cli("ingest", src, "--name", "t", store=st, check=True)
    (src / "g").write_bytes(b"garbage soon")
    d = run_cli("ingest", src, store=st, check=True).stdout.decode().strip()
    assert d.startswith("sha256:")
    return st


def test_install_paths_agree() -> None:
    """README, docs/gc.md and both units name one install path for the wrapper."""
    argv, _, _ = service()
    assert argv[0] == INSTALLED
    assert cron_command().split()[0] == INSTALLED
    for doc in (REPO / "README.md", REPO / "docs" / "gc.md"):
        installs = re.findall(r"install -m 755 cmd/continuity-gc/continuity-gc (\S+)", doc.read_text())
        assert installs == [INSTALLED], (doc, installs)


def test_service_execstart_runs_gc(store: Path) -> None:
    argv, env, ok = service()
    argv = [str(WRAPPER) if a == INSTALLED else a for a in argv]
    p = subprocess.run(argv, env=wrapper_env(store, env), capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b""
    assert p.stderr.startswith(b"gc: freed ") and p.stderr.count(b"\n") == 1, p.stderr
    assert 5 in ok  # another gc running is no failure of this run


def test_exit_codes_reach_cron(store: Path) -> None:
    cmd = cron_command().replace(INSTALLED, shlex.quote(str(WRAPPER)), 1)
    env = wrapper_env(store)
    p = subprocess.run(["/bin/sh", "-c", cmd], env=env, capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    with open(store / "gc.lock", "a+b") as lock:  # another gc holds the lock: exit 5 reaches cron
        fcntl.flock(lock, fcntl.LOCK_EX)
        p = subprocess.run(["/bin/sh", "-c", cmd], env=env, capture_output=True, timeout=300)
    assert p.returncode == 5, p.stderr
    assert p.stderr.startswith(b"continuity: error: another gc is running") and p.stderr.count(b"\n") == 1


def test_damage_exit_code_reaches_systemd(store: Path) -> None:
    argv, env, ok = service()
    argv = [str(WRAPPER) if a == INSTALLED else a for a in argv]
    os.rename(store / "meta", store / "meta.gone")  # no index: refused, exit 4, never recreated
    p = subprocess.run(argv, env=wrapper_env(store, env), capture_output=True, timeout=300)
    assert p.returncode == 4 and p.returncode not in ok, p.stderr
    assert p.stderr.startswith(b"continuity: error:") and p.stderr.count(b"\n") == 1


def test_syslog_never_changes_the_exit_code(store: Path, tmp_path: Path) -> None:
    """With a `logger` that fails, the wrapper still exits with gc's code."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "logger").write_text("#!/bin/sh\nexit 42\n")
    (bindir / "logger").chmod(0o755)
    env = wrapper_env(store)
    del env["CONTINUITY_GC_NO_SYSLOG"]
    env["PATH"] = f"{bindir}:{env.get('PATH', '/usr/bin:/bin')}"
    p = subprocess.run([str(WRAPPER)], env=env, capture_output=True, timeout=300)
    assert p.returncode == 0 and p.stderr.startswith(b"gc: "), p.stderr
