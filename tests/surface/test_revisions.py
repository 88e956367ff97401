"""Issue 15 item 3: revisions (NAME@N, NAME~K, NAME@{DATE}), short prefixes, unchanged ingests, log, stats."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import run_cli


def _ingest(store: Path, src: Path, name: str = "t", *extra: str) -> str:
    p = run_cli("ingest", src, "--name", name, *extra, store=store, check=True)
    return p.stdout.decode().strip()


def _three_versions(tmp_path: Path) -> tuple[Path, list[str]]:
    store, src = tmp_path / "store", tmp_path / "src"
    src.mkdir()
    digests = []
    for i in range(3):
        (src / f"f{i}").write_bytes(b"x" * (10 + i))
        digests.append(_ingest(store, src))
    return store, digests


def test_index_and_parent_revisions(tmp_path: Path) -> None:
    store, d = _three_versions(tmp_path)
    for ref, want in [("t@0", d[2]), ("t@1", d[1]), ("t@2", d[0]), ("t~0", d[2]), ("t~1", d[1]), ("t~2", d[0])]:
        p = run_cli("stats", ref, "--json", store=store, check=True)
        assert json.loads(p.stdout)["digest"] == want, ref
    assert run_cli("ls", "t@2", store=store, check=True).stdout.split() == [b"/f0"]
    p = run_cli("diff", "t@2", "t", store=store)
    assert p.returncode == 1 and b"/f1" in p.stdout and b"/f2" in p.stdout
    p = run_cli("ls", "t@3", store=store)
    assert p.returncode == 1 and p.stderr.count(b"\n") == 1
    assert b"3 version(s)" in p.stderr and b"t@3 does not exist" in p.stderr


def test_date_revisions(tmp_path: Path) -> None:
    store, d = _three_versions(tmp_path)
    hist = json.loads(run_cli("history", "t", "--json", store=store, check=True).stdout)["versions"]
    assert [h["digest"] for h in hist] == d
    newest_time = hist[-1]["time"]  # whole seconds, as fsck and list print them
    for ref in (f"t@{{{newest_time}}}", f"t@{newest_time}", "t@{2999-01-01}", "t@{2999-01-01T00:00:00+02:00}"):
        p = run_cli("stats", ref, "--json", store=store, check=True)
        assert json.loads(p.stdout)["digest"] == d[2], ref
    p = run_cli("ls", "t@{2000-01-01}", store=store)
    assert p.returncode == 1 and b"no version recorded at or before 2000-01-01" in p.stderr
    p = run_cli("ls", "t@{yesterday}", store=store)
    assert p.returncode == 3 and b"ISO 8601" in p.stderr


def test_short_prefix_says_twelve_digits(tmp_path: Path) -> None:
    store, d = _three_versions(tmp_path)
    p = run_cli("ls", d[0][7:15], store=store)
    assert p.returncode == 1 and b"at least 12 hex digits" in p.stderr
    assert run_cli("ls", d[0][7:19], store=store, check=True).stdout.split() == [b"/f0"]
    p = run_cli("ls", "sha256:" + d[0][7:13], store=store)
    assert p.returncode == 1 and b"at least 12 hex digits" in p.stderr


def test_unchanged_tree_records_no_version(tmp_path: Path) -> None:
    store, src = tmp_path / "store", tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d/f").write_bytes(b"hello")
    first = _ingest(store, src)
    for _ in range(2):
        p = run_cli("ingest", src, "--name", "t", store=store, check=True)
        assert p.stdout.decode().strip() == first
        assert b"unchanged" in p.stderr and b"--force-history" in p.stderr
    assert len(json.loads(run_cli("history", "t", "--json", store=store, check=True).stdout)["versions"]) == 1
    p = run_cli("ingest", src, "--name", "t", "--force-history", store=store, check=True)
    assert b"unchanged" not in p.stderr
    assert len(json.loads(run_cli("history", "t", "--json", store=store, check=True).stdout)["versions"]) == 2
    (src / "d/f").write_bytes(b"hello, world")
    assert _ingest(store, src) != first
    assert len(json.loads(run_cli("history", "t", "--json", store=store, check=True).stdout)["versions"]) == 3
    # a name removed and ingested again is recorded again (the catalog entry comes back)
    run_cli("rm", "t", store=store, check=True)
    again = _ingest(store, src)
    assert json.loads(run_cli("list", "--json", store=store, check=True).stdout)["names"][0]["digest"] == again


def test_log(tmp_path: Path) -> None:
    store, src = tmp_path / "store", tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a" * 1000)
    _ingest(store, src)
    (src / "b").write_bytes(b"b" * 5000)
    (src / "a").write_bytes(b"A" * 1000)
    _ingest(store, src)
    (src / "b").unlink()
    _ingest(store, src)
    log = json.loads(run_cli("log", "t", "--json", store=store, check=True).stdout)["versions"]
    assert [e["index"] for e in log] == [0, 1, 2]
    assert [e["revision"] for e in log] == ["t@0", "t@1", "t@2"]
    assert [e["size"] for e in log] == [1000, 6000, 1000]
    assert [e["files_changed"] for e in log] == [1, 2, None]  # b deleted; a modified + b added; first
    assert [e["new_bytes"] for e in log] == [0, 6000, 1000]  # the last version stores nothing new
    assert not any(e["incomplete"] for e in log)
    human = run_cli("log", "t", store=store, check=True).stdout.decode().splitlines()
    assert len(human) == 3 and human[0].startswith("t@0 ") and "first version" in human[2]
    assert len(json.loads(run_cli("log", "t", "-n", "1", "--json", store=store, check=True).stdout)["versions"]) == 1
    p = run_cli("log", "nosuch", store=store)
    assert p.returncode == 1 and b"no history" in p.stderr


def test_store_wide_stats(tmp_path: Path) -> None:
    store, src = tmp_path / "store", tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(b"z" * 10000)
    _ingest(store, src, "one")
    _ingest(store, src, "two")  # the same content under another name: stored once
    (src / "more").write_bytes(b"m" * 2000)
    _ingest(store, src, "two")
    s = json.loads(run_cli("stats", "--json", store=store, check=True).stdout)
    assert s["names"] == 2 and s["content_bytes"] == 12000
    assert s["logical_bytes"] == 10000 + 10000 + 12000
    assert s["dedup_ratio"] == round(32000 / 12000, 3)
    per = {n["name"]: n for n in s["per_name"]}
    assert per["two"]["versions"] == 2 and per["two"]["growth"] == 2000 and per["one"]["growth"] == 0
    human = run_cli("stats", store=store, check=True).stdout.decode()
    assert "dedup ratio: 2.67x" in human
    # stats MANIFEST keeps its meaning
    assert json.loads(run_cli("stats", "one", "--json", store=store, check=True).stdout)["files"] == 1
