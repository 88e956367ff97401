"""Every verb's ``--json`` document: one object, ``"schema": 1``, exactly the keys docs/json.md lists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import run_cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "json.md"


def documented() -> dict[str, tuple[set[str], set[str]]]:
    """``verb`` or ``verb.key`` -> (keys always there, keys sometimes there)."""
    block = re.search(r"```keys\n(.*?)```", DOC.read_text(), re.S)
    assert block, "docs/json.md has no ```keys block"
    out = {}
    for line in block.group(1).splitlines():
        what, _, keys = line.partition(":")
        words = keys.split()
        out[what.strip()] = ({w for w in words if not w.startswith("[")}, {w.strip("[]") for w in words})
    return out


DOCS = documented()


def check(verb: str, stdout: bytes) -> dict[str, object]:
    doc = json.loads(stdout)
    assert isinstance(doc, dict) and next(iter(doc)) == "schema" and doc["schema"] == 1, doc
    must, may = DOCS[verb]
    assert must <= set(doc) <= may, (verb, sorted(set(doc) ^ must))
    for sub, (smust, smay) in DOCS.items():
        if sub.startswith(verb + "."):
            for item in doc[sub.split(".", 1)[1]]:  # type: ignore[attr-defined]
                assert smust <= set(item) <= smay, (sub, sorted(set(item) ^ smust))
    return doc


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, str]:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"hello" * 100)
    (src / "link").symlink_to("d/f")
    st = tmp_path / "store"
    d = json.loads(run_cli("ingest", src, "--name", "web", "--json", store=st, check=True).stdout)["digest"]
    return src, st, d  # type: ignore[return-value]


def test_every_verb_prints_the_documented_keys(setup: tuple[Path, Path, str], tmp_path: Path) -> None:
    src, st, d = setup

    def run(verb: str, *args: object, code: int = 0) -> dict[str, object]:
        p = run_cli(*args, "--json", store=st)
        assert p.returncode == code, p.stderr
        return check(verb, p.stdout)

    seen = set()
    for verb, args in [
        ("ingest", ("ingest", src, "--name", "web2")),
        ("checkout", ("checkout", "web", tmp_path / "co")),
        ("ls", ("ls", "web")),
        ("tag", ("tag", "web", "web3")),
        ("rm", ("rm", "web3")),
        ("export", ("export", "web", "-o", tmp_path / "web.tar")),
        ("copy", ("copy", src, tmp_path / "copy")),
        ("verify", ("verify", tmp_path / "co", "web")),
        ("diff", ("diff", "web", "web2")),
        ("list", ("list",)),
        ("history", ("history", "web")),
        ("stats", ("stats", "web")),
        ("du", ("du", "web")),
        ("apply", ("apply", tmp_path / "co", "web")),
        ("build", ("build", src)),
        ("dump", ("dump", "web")),
        ("gc", ("gc", "--dry-run")),
        ("fsck", ("fsck",)),
    ]:
        doc = run(verb, *args)
        seen.add(verb)
        if verb in ("verify", "diff", "fsck", "gc"):
            assert doc["ok"] is True
    # the documents of a failing verb: still one document, "ok": false
    (tmp_path / "co" / "d" / "f").write_bytes(b"changed")
    doc = run("verify", "verify", tmp_path / "co", "web", code=1)
    assert doc["ok"] is False and doc["differences"]
    doc = run("diff", "diff", "web", tmp_path / "co", code=1)
    assert doc["ok"] is False
    undocumented = {v for v in DOCS if "." not in v} - seen - {"push", "pull"}  # push/pull: tests/remote
    try:
        import matplotlib  # noqa: F401

        run("stats-plot", "stats", "--plot", tmp_path / "g.png")
        undocumented.discard("stats-plot")
    except ImportError:
        undocumented.discard("stats-plot")
    assert not undocumented, undocumented


def test_key_names_mean_one_thing(setup: tuple[Path, Path, str]) -> None:
    """``size`` is bytes everywhere; no verb prints the old names."""
    _, st, _ = setup
    old = {"bytes", "sound", "bytes_read", "uploaded_bytes", "downloaded_bytes", "unique_content_bytes", "manifest"}
    for keys in DOCS.values():
        assert not (keys[1] & old), keys
    stats = json.loads(run_cli("stats", "web", "--json", store=st, check=True).stdout)
    du = json.loads(run_cli("du", "web", "--json", store=st, check=True).stdout)
    listed = json.loads(run_cli("list", "--json", store=st, check=True).stdout)["names"][0]
    assert stats["size"] == du["size"] == listed["size"] == 500


def test_build_and_dump_take_json_as_an_alias(setup: tuple[Path, Path, str]) -> None:
    src, st, _ = setup
    a = run_cli("dump", "web", "--json", store=st, check=True).stdout
    b = run_cli("dump", "web", "--format", "json", store=st, check=True).stdout
    assert a == b and json.loads(a)["resources"]
    assert (
        run_cli("build", src, "--json", check=True).stdout
        == run_cli("build", src, "--format", "json", check=True).stdout
    )
