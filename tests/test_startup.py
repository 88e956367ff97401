"""Start-up stays cheap: `--help` and `list` import only what they use (issue 16 item 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click

from castore.cli import main_group
from castore.cli.common import LazyGroup

_MODULES = (
    "import sys, json\nsys.argv = ['continuity', *json.loads(sys.argv[1])]\nfrom castore.cli import main\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\nprint(json.dumps(sorted(sys.modules)), file=sys.stderr)"
)


def _imported(*args: str) -> set[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    p = subprocess.run(
        [sys.executable, "-c", _MODULES, json.dumps(list(args))], capture_output=True, env=env, check=False
    )
    return set(json.loads(p.stderr.decode().strip().splitlines()[-1]))


def test_help_imports_no_store_manifest_or_command_module() -> None:
    mods = _imported("--help")
    heavy = {
        "click",  # the fast path prints the help kept in castore/cli/help_text.py
        "castore.store",
        "lmdb",
        "castore.manifest",
        "google.protobuf",
        "pyfastcdc",
        "cryptography",
        "castore.materialize",
        *LazyGroup.lazy.values(),
    }
    assert not mods & heavy, mods & heavy


def test_list_without_signatures_skips_chunking_signing_and_checkout_code(tmp_path: Path) -> None:
    from tests.helpers import run_cli

    assert run_cli("init", store=tmp_path / "s").returncode == 0
    mods = _imported("--store", str(tmp_path / "s"), "list")
    assert "castore.store" in mods and "castore.cli.list_view" in mods
    heavy = {
        "click",  # the fast path (castore/cli/fastpath.py)
        "castore.cli.catalog_cmds",
        "castore.readers",
        "dataclasses",
        "_hashlib",  # OpenSSL: nothing is hashed
        "datetime",
        "pyfastcdc",
        "cryptography",
        "castore.sign",
        "castore.materialize",
        "castore.checkout",
        "castore.cli.tree_cmds",
    }
    assert not mods & heavy, mods & heavy


def test_help_summaries_match_the_commands() -> None:
    ctx = click.Context(main_group)
    assert set(LazyGroup.summaries) == set(LazyGroup.lazy)
    for name, summary in LazyGroup.summaries.items():
        cmd = main_group.get_command(ctx, name)
        assert cmd is not None and cmd.help is not None
        assert " ".join(cmd.help.strip().split("\n\n")[0].split()) == summary, name  # the first paragraph


def test_debug_prints_the_phases_and_only_with_debug(tmp_path: Path) -> None:
    from tests.helpers import run_cli

    store = tmp_path / "s"
    assert run_cli("init", store=store).returncode == 0  # a missing store is an error (README "Stores")
    quiet = run_cli("list", store=store)
    assert quiet.returncode == 0 and b"phases" not in quiet.stderr
    loud = run_cli("--debug", "list", store=store)
    line = loud.stderr.decode().strip().splitlines()[-1]
    assert loud.returncode == 0 and line.startswith("continuity: debug: phases (ms): ")
    names = [p.rsplit(" ", 1)[0] for p in line.split(": ", 2)[2].split(", ")]
    assert names[-5:] == ["command module", "before store", "store open", "command", "total"]


def _list_json(store: Path) -> list[dict[str, object]]:
    from tests.helpers import run_cli

    p = run_cli("list", "--json", store=store)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)["names"]  # type: ignore[no-any-return]


def _two_trees(tmp_path: Path) -> Path:
    from tests.helpers import run_cli

    store = tmp_path / "s"
    assert run_cli("init", store=store).returncode == 0
    for name, files in (("small", {"a": b"x" * 10}), ("big", {"a": b"y" * 3000, "d/b": b"z" * 70, "d/c": b""})):
        tree = tmp_path / name
        for rel, data in files.items():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            (tree / rel).write_bytes(data)
        os.link(tree / "a", tree / "hardlink")  # counted once, as the tree's size always was
        assert run_cli("ingest", "--name", name, tree, store=store).returncode == 0
    return store


def test_list_reads_the_summaries_recorded_at_commit_and_decodes_no_manifest(tmp_path: Path) -> None:
    from castore.store import Store
    from castore.store.summary import summaries

    store = _two_trees(tmp_path)
    assert {r["name"]: r["size"] for r in _list_json(store)} == {"small": 10, "big": 3070}
    s = Store.open(str(store), create=False)
    for t in s.tags():
        m = s.load_manifest(t.digest)
        got = summaries(s.meta, [t.digest])[t.digest]
        assert (got.size, got.files) == (sum(r.size for r in m.files()), len(list(m.files())))
    mods = _imported("--store", str(store), "list")
    heavy = {"google.protobuf", "castore.manifest.codec", "castore.manifest.model", "castore._pb", "httpx", "pyfastcdc"}
    assert not mods & heavy, mods & heavy


def test_a_store_without_summaries_still_lists_its_sizes(tmp_path: Path) -> None:
    """A store of an older version: no summary rows (nor the table): list decodes those manifests, as before."""
    from castore.store import Store

    store = _two_trees(tmp_path)
    before = _list_json(store)
    s = Store.open(str(store), create=False)
    s.meta.write(lambda t: t.drop(s.meta.db("summary"), delete=True))
    s.meta.close()
    assert _list_json(store) == before
    assert "google.protobuf" in _imported("--store", str(store), "list")  # (the fallback decodes)
