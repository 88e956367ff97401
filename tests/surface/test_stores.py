"""Issue 15 item 2: `init`, no silent store creation, read-only stores readable by every reading verb."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import needs_root, run_cli

HINT = b"continuity init"


def test_init_is_idempotent(tmp_path: Path) -> None:
    store = tmp_path / "store"
    p = run_cli("init", store=store, check=True)
    assert b"created a store" in p.stderr and (store / "config").is_file()
    config = (store / "config").read_bytes()
    p = run_cli("init", store=store, check=True)
    assert b"already exists" in p.stderr and (store / "config").read_bytes() == config
    assert json.loads(run_cli("init", "--json", store=store, check=True).stdout) == {
        "schema": 1,
        "path": str(store),
        "created": False,
    }
    assert run_cli("list", store=store, check=True).stdout == b""


@pytest.mark.parametrize(
    "verb",
    [
        ["list"],
        ["ls", "x"],
        ["log", "x"],
        ["stats"],
        ["history", "x"],
        ["tag", "x", "y"],
        ["rm", "x"],
        ["gc"],
        ["fsck"],
    ],
)
def test_missing_store_is_an_error_not_a_new_store(tmp_path: Path, verb: list[str]) -> None:
    store = tmp_path / "typo" / "store"
    p = run_cli(*verb, store=store)
    assert p.returncode in (1, 2), p.stderr
    assert p.stderr.count(b"continuity: error:") == 1 and p.stderr.endswith(b"\n")
    if verb[0] not in ("ls",):  # ls x: "no manifest named" (x could have been a file)
        assert HINT in p.stderr or b"no store" in p.stderr, p.stderr
    assert not store.exists() and not store.parent.exists()
    # the environment variable too
    p = run_cli(*verb, env={"CONTINUITY_STORE": str(store)})
    assert p.returncode in (1, 2) and not store.exists()


def test_ingest_creates_the_store_and_says_so(tmp_path: Path) -> None:
    store, src = tmp_path / "new" / "store", tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    p = run_cli("ingest", src, "--name", "t", store=store, check=True)
    assert b"created a new store at" in p.stderr and (store / "config").is_file()
    p = run_cli("ingest", src, "--name", "u", store=store, check=True)
    assert b"created" not in p.stderr


def test_default_store_list_is_empty_before_first_use(tmp_path: Path) -> None:
    if os.geteuid() == 0 and os.path.exists("/var/lib/continuity/config"):
        pytest.skip("a default store exists on this machine")
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg"), "CONTINUITY_STORE": ""}
    env_clean = {k: v for k, v in os.environ.items() if k != "CONTINUITY_STORE"}
    p = subprocess.run([*_python_cli(), "list"], capture_output=True, env={**env_clean, **env}, timeout=120)
    assert p.returncode == 0 and p.stdout == b"", p.stderr
    p = subprocess.run([*_python_cli(), "list", "--json"], capture_output=True, env={**env_clean, **env}, timeout=120)
    assert p.returncode == 0 and json.loads(p.stdout) == {"schema": 1, "names": []}
    assert not (tmp_path / "xdg").exists()


def _python_cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "castore"]


# ------------------------------------------------------------------ read-only stores


@pytest.fixture
def ro_store(tmp_path: Path) -> Iterator[tuple[Path, Path, list[str]]]:
    """A store with two versions of `t`, seen through a read-only bind mount."""
    store, src, ro = tmp_path / "store", tmp_path / "src", tmp_path / "ro"
    (src / "d").mkdir(parents=True)
    (src / "d/f").write_bytes(b"hello\n")
    os.symlink("d/f", src / "l")
    digests = [run_cli("ingest", src, "--name", "t", store=store, check=True).stdout.decode().strip()]
    (src / "g").write_bytes(b"more\n")
    digests.append(run_cli("ingest", src, "--name", "t", store=store, check=True).stdout.decode().strip())
    ro.mkdir()
    subprocess.run(["mount", "--bind", str(store), str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True)
        yield ro, src, digests
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def _tree_state(store: Path) -> list[tuple[str, int, int]]:
    out = []
    for d, dirs, files in os.walk(store):
        for n in dirs + files:
            st = os.lstat(os.path.join(d, n))
            out.append((os.path.relpath(os.path.join(d, n), store), st.st_size, st.st_mtime_ns))
    return sorted(out)


@needs_root
@pytest.mark.root
def test_read_only_store_serves_every_reading_verb(ro_store: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    ro, src, d = ro_store
    before = _tree_state(ro)
    assert [r["digest"] for r in json.loads(run_cli("list", "--json", store=ro, check=True).stdout)["names"]] == [d[1]]
    assert len(json.loads(run_cli("history", "t", "--json", store=ro, check=True).stdout)["versions"]) == 2
    assert len(json.loads(run_cli("log", "t", "--json", store=ro, check=True).stdout)["versions"]) == 2
    assert run_cli("ls", "t@1", store=ro, check=True).stdout.split() == [b"/d", b"/d/f", b"/l"]
    assert b"/d/f" in run_cli("dump", "t", store=ro, check=True).stdout
    p = run_cli("diff", "t@1", "t", store=ro)
    assert p.returncode == 1 and b"/g" in p.stdout
    run_cli("stats", store=ro, check=True)
    run_cli("stats", "t", store=ro, check=True)
    run_cli("du", "t", store=ro, check=True)
    run_cli("verify", src, "t", store=ro, check=True)
    fsck = run_cli("fsck", store=ro)
    assert fsck.returncode == 0, fsck.stderr
    co = tmp_path / "co"
    run_cli("checkout", "t", co, "--link", "copy", store=ro, check=True)
    assert (co / "d/f").read_bytes() == b"hello\n" and os.readlink(co / "l") == "d/f"
    out = tmp_path / "t.tar"
    run_cli("export", "t@1", "-o", out, store=ro, check=True)
    with tarfile.open(out) as tf:
        assert sorted(tf.getnames()) == ["d", "d/f", "l"]
    assert _tree_state(ro) == before  # nothing written, no lock file made or touched


@needs_root
@pytest.mark.root
def test_read_only_store_refuses_writes_with_a_hint(ro_store: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    ro, src, _ = ro_store
    for argv in (
        ["ingest", src, "--name", "u"],
        ["tag", "t", "u"],
        ["rm", "t"],
        ["gc"],
        ["checkout", "t", tmp_path / "co", "--link", "hardlink"],
    ):
        p = run_cli(*argv, store=ro)
        assert p.returncode == 1, (argv, p.stderr)
        err = p.stderr.decode()
        assert err.count("continuity: error:") == 1 and "read-only" in err and "writable" in err, (argv, err)
    assert not (tmp_path / "co").exists()
    p = run_cli("fsck", "--repair", store=ro)
    assert p.returncode != 0 and b"read-only" in p.stderr.lower()
