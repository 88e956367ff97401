"""The click-free fast path (castore/cli/fastpath.py) prints what the click command prints.

Each command line runs twice: as users run it (``python -m castore``, where the fast path
applies) and through the click group alone (``castore.cli.click_main``); stdout, stderr and
the exit code must be the same bytes (issue 16 item 1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from castore.errors import NotFound

ROOT = Path(__file__).resolve().parents[1]
CLICK_ONLY = "import sys; sys.argv[0] = 'continuity'; from castore.cli import click_main; click_main()"
MODULES = (
    "import sys, json\nsys.argv = ['continuity', *json.loads(sys.argv[1])]\nfrom castore.cli import main\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\nprint(json.dumps(sorted(sys.modules)), file=sys.stderr)"
)


def _env(extra: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in drop and k != "COLUMNS"}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


def _both(args: list[str], env: dict[str, str], **kw: object) -> tuple[subprocess.CompletedProcess[bytes], ...]:
    fast = subprocess.run([sys.executable, "-m", "castore", *args], capture_output=True, env=env, **kw)  # type: ignore[call-overload]
    slow = subprocess.run([sys.executable, "-c", CLICK_ONLY, *args], capture_output=True, env=env, **kw)  # type: ignore[call-overload]
    return fast, slow


def _same(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    fast, slow = _both(args, env)
    assert (fast.returncode, fast.stdout, fast.stderr) == (slow.returncode, slow.stdout, slow.stderr), args
    assert b"Traceback" not in fast.stderr
    return fast


def _fast_path_taken(args: list[str], env: dict[str, str]) -> bool:
    p = subprocess.run([sys.executable, "-c", MODULES, json.dumps(args)], capture_output=True, env=env, check=False)
    return "click" not in json.loads(p.stderr.decode().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("fastpath")
    s, tree = base / "store", base / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "a").write_bytes(b"x" * 3000)
    (tree / "d" / "b").write_bytes(b"y" * 70)
    env = _env()
    subprocess.run([sys.executable, "-m", "castore", "--store", str(s), "init"], env=env, check=True)
    for name in ("web", "base/os@1.0", "web"):  # web twice: two versions
        (tree / "a").write_bytes(b"x" * (3000 + len(name)))
        (tree / name.replace("/", "_")).write_bytes(name.encode())
        cmd = [sys.executable, "-m", "castore", "--store", str(s), "ingest", "--name", name, str(tree)]
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    return s


def test_the_kept_help_is_clicks_live_rendering() -> None:
    from castore.cli.help_render import WIDTH, live_help
    from castore.cli.help_text import HELP
    from castore.cli.help_text import WIDTH as KEPT

    assert KEPT == WIDTH
    assert HELP == live_help(WIDTH), "castore/cli/help_text.py is stale: run scripts/gen-help-text"
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-help-text"), "--check"], env=_env(), check=False)
    assert p.returncode == 0


@pytest.mark.parametrize("args", [["--help"], ["-h"], []])
def test_help_is_the_same_bytes_on_both_paths(args: list[str]) -> None:
    env = _env()
    p = _same(args, env)
    assert _fast_path_taken(args, env)
    if args:
        assert p.returncode == 0 and p.stdout.startswith(b"Usage: continuity [OPTIONS] COMMAND") and not p.stderr
    else:  # no command: the help on stderr, then the error line
        assert p.returncode == 2 and not p.stdout
        assert p.stderr.endswith(b"continuity: error: missing command (see the list above)\n")


def test_help_at_another_width_is_left_to_click() -> None:
    env = _env({"COLUMNS": "60"})
    p = _same(["--help"], env)
    assert not _fast_path_taken(["--help"], env)
    assert max(len(line) for line in p.stdout.decode().splitlines() if not line.startswith("    continuity")) <= 58


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["list", "--json"],
        ["list", "-H"],
        ["list", "--human", "--json", "-H"],
        ["-q", "list"],
        ["-v", "--quiet", "list", "--json"],
        ["list", "--store", "{store}"],  # --store after the verb (hoisted)
        ["--store={store}", "list"],
        ["list", "--history", "web"],
        ["list", "--history=web", "--json"],
        ["list", "--history", "no-such-name"],  # nothing, exit 0
        ["history", "web"],
        ["history", "--json", "web"],
        ["history", "base/os@1.0", "--json"],
    ],
)
def test_list_is_the_same_bytes_on_both_paths(store: Path, args: list[str]) -> None:
    args = [a.replace("{store}", str(store)) for a in args]
    full = args if any(str(store) in a for a in args) else ["--store", str(store), *args]
    env = _env()
    p = _same(full, env)
    assert p.returncode == 0 and (p.stdout or "no-such-name" in args) and not p.stderr
    assert _fast_path_taken(full, env)


def test_list_output_is_the_catalog(store: Path) -> None:
    p = _same(["--store", str(store), "list", "--json"], _env())
    doc = json.loads(p.stdout)
    assert doc["schema"] == 1
    assert [(n["name"], n["versions"], n["signatures"]) for n in doc["names"]] == [
        ("base/os@1.0", 1, []),
        ("web", 2, []),
    ]
    text = _same(["--store", str(store), "list"], _env()).stdout.decode().splitlines()
    assert [line.split("\t")[0] for line in text] == ["base/os@1.0", "web"]
    assert all(line.endswith("\t-") for line in text)


def test_store_from_the_environment_and_empty_values(store: Path, tmp_path: Path) -> None:
    p = _same(["list"], _env({"CONTINUITY_STORE": str(store)}))
    assert p.returncode == 0 and b"web" in p.stdout
    home = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    for args in (
        ["list"],
        ["list", "--json"],
        ["--store=", "list"],
        ["--store", "", "list", "--json"],
        ["list", "--history", "web", "--json"],
        ["history", "web"],
    ):
        for env in (_env(home, drop=("CONTINUITY_STORE",)), _env({**home, "CONTINUITY_STORE": ""})):
            _same(args, env)  # the default location, absent: an empty catalog, or the NoStore error


def test_errors_are_the_same_line_and_code(tmp_path: Path, store: Path) -> None:
    env = _env()
    missing = _same(["--store", str(tmp_path / "none"), "list"], env)
    assert missing.returncode != 0 and missing.stderr.startswith(b"continuity: error: no store at ")
    bad = tmp_path / "bad"
    bad.mkdir(mode=0o700)
    (bad / "config").write_text("{not json")
    broken = _same(["--store", str(bad), "list", "--json"], env)
    assert broken.returncode != 0 and broken.stderr.count(b"\n") == 1
    no_history = _same(["--store", str(store), "history", "no-such-name"], env)
    assert (
        no_history.returncode == NotFound.exit_code
        and no_history.stderr == b"continuity: error: no history for 'no-such-name'\n"
    )
    for args in (
        ["list", "--bogus"],
        ["list", "--history"],
        ["list", "extra"],
        ["lis"],
        ["--store"],
        ["history"],
        ["history", "a", "b"],
        ["history", "--bogus", "web"],
    ):
        usage = _same(["--store", str(store), *args] if args != ["--store"] else args, env)
        assert usage.returncode == 2 and usage.stderr.startswith(b"continuity: error: ")


def test_options_the_fast_path_does_not_take_are_left_to_click(store: Path) -> None:
    env = _env()
    for args in (["history", "--", "web"], ["--version"], ["list", "--help"], ["-vv", "list"], ["list", "--"]):
        full = ["--store", str(store), *args]
        _same(full, env)
        assert not _fast_path_taken(full, env), args
    ascii_env = _env({"PYTHONIOENCODING": "ascii"})
    _same(["--store", str(store), "list"], ascii_env)
    assert not _fast_path_taken(["--store", str(store), "list"], ascii_env)  # click re-wraps such a stream


@pytest.mark.parametrize("args", [["--help"], ["list"]])
def test_a_reader_that_went_away_ends_both_paths_alike(store: Path, args: list[str]) -> None:
    full = ["--store", str(store), *args] if args[0] == "list" else args
    env = _env()
    results = []
    for argv in ([sys.executable, "-m", "castore", *full], [sys.executable, "-c", CLICK_ONLY, *full]):
        r, w = os.pipe()
        os.close(r)  # no reader: the first write fails with EPIPE
        try:
            p = subprocess.run(argv, stdout=w, stderr=subprocess.PIPE, env=env, check=False)
        finally:
            os.close(w)
        results.append((p.returncode, p.stderr))
    assert results[0] == results[1]
    assert b"Traceback" not in results[0][1]


@pytest.mark.parametrize(
    "args",
    [
        ["checkout", "web", "{t}"],
        ["checkout", "--link", "hardlink", "web", "{t}"],
        ["checkout", "web", "--link=copy", "{t}"],
        ["-q", "--debug", "checkout", "base/os@1.0", "{t}"],
        ["checkout", "web", "{t}", "--store", "{store}"],  # --store after the verb (hoisted)
    ],
)
def test_checkout_does_the_same_on_both_paths(store: Path, tmp_path: Path, args: list[str]) -> None:
    from castore.testing.compare import assert_trees_equal

    env = _env({"CONTINUITY_STORE": str(store)})
    outs = []
    for i, how in enumerate((["-m", "castore"], ["-c", CLICK_ONLY])):
        t = tmp_path / f"t{i}"
        argv = [a.replace("{t}", str(t)).replace("{store}", str(store)) for a in args]
        p = subprocess.run([sys.executable, *how, *argv], capture_output=True, env=env, check=False)
        assert p.returncode == 0 and b"Traceback" not in p.stderr, p.stderr
        err = p.stderr.replace(str(t).encode(), b"T")
        if "--debug" in args:  # the phase timings differ; the rest must not
            err = b"\n".join(x for x in err.splitlines() if b"debug: phases" not in x)
        outs.append((p.stdout.replace(str(t).encode(), b"T"), err))
    assert outs[0] == outs[1]
    assert_trees_equal(tmp_path / "t0", tmp_path / "t1")
    probe = [a.replace("{t}", str(tmp_path / "t2")).replace("{store}", str(store)) for a in args if a != "--debug"]
    assert _fast_path_taken(probe, env)  # (--debug's phase line would follow the probe's module list)


@pytest.mark.parametrize(
    "args",
    [
        ["checkout", "no-such-name", "{t}"],  # exit 1 (not found), one line
        ["checkout", "web", "{full}"],  # TARGET not empty: exit 3
        ["checkout", "web"],  # usage: click's
        ["checkout", "--link", "bogus", "web", "{t}"],  # click's choice error
        ["checkout", "--link", "hardlink", "--json", "web", "{t}"],  # an option the fast path leaves to click
    ],
)
def test_checkout_refusals_are_the_same_bytes(store: Path, tmp_path: Path, args: list[str]) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_bytes(b"x")
    argv = [a.replace("{t}", str(tmp_path / "new")).replace("{full}", str(full)) for a in args]
    env = _env({"CONTINUITY_STORE": str(store)})
    if "--json" in args:
        assert not _fast_path_taken(argv, env)
        return
    p = _same(argv, env)
    assert p.returncode != 0 and p.stderr.count(b"\n") == 1 and p.stderr.startswith(b"continuity: error: ")
    assert not (tmp_path / "new").exists()
    assert _fast_path_taken(argv, env) == (args[1] != "--link" and len(args) == 3)
