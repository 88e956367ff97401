"""Issue 15 item 3: retention policies on gc (restic forget / borg prune style), per name."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

from castore.gc.retention import Policy, select
from castore.store import Store
from castore.store.revisions import history_key, history_value
from tests.helpers import run_cli

DAY = 86400 * 10**9
HOUR = 3600 * 10**9
# 2026-01-01T12:00:00Z, a Thursday
T0 = 1767268800 * 10**9


def test_select_rules() -> None:
    # one version every 6 hours for 10 days, newest first when sorted
    times = [T0 + i * 6 * HOUR for i in range(40)]
    assert sum(1 for r in select(times, Policy(last=3)) if r) == 3
    kept = [t for t, r in zip(times, select(times, Policy(daily=4)), strict=True) if r]
    # T0 is noon: the last version (index 39) is at 06:00 of day 10, the newest of days 7-9 at 18:00
    assert kept == [times[i] for i in (29, 33, 37, 39)]
    assert len({time.gmtime(t // 10**9).tm_yday for t in kept}) == 4
    kept = [r for r in select(times, Policy(within_ns=DAY)) if r]
    assert len(kept) == 5  # the newest and the four of the day before it (24 h inclusive)
    both = select(times, Policy(last=1, weekly=2))
    assert sum(1 for r in both if r) == 2 and both[-1] == ["last", "weekly 2026-W02"]
    assert all(select(times, Policy()))  # no rule: every version stays
    assert select([T0], Policy(hourly=1)) == [["hourly 2026-01-01T12"]]


def _store_with_dated_history(path: Path, src: Path) -> list[str]:
    """Three real manifests under `t`, plus history rows for them spread over 40 days."""
    digests = []
    for i in range(3):
        (src / "f").write_bytes(b"v%d" % i)
        digests.append(run_cli("ingest", src, "--name", "t", store=path, check=True).stdout.decode().strip())
    store = Store.open(str(path), create=False)
    rows = [(history_key("t", T0 + day * DAY), history_value(digests[day % 3])) for day in range(40)]
    store.meta.write(lambda txn: [txn.put(k, v, db=store.meta.db("history")) for k, v in rows])
    return digests


def test_gc_dry_run_lists_what_goes_then_gc_forgets_it(tmp_path: Path) -> None:
    path, src = tmp_path / "store", tmp_path / "src"
    src.mkdir()
    _store_with_dated_history(path, src)
    before = json.loads(run_cli("history", "t", "--json", store=path, check=True).stdout)["versions"]
    assert len(before) == 43
    p = run_cli(
        "gc", "--dry-run", "--keep-last", "2", "--keep-weekly", "3", "--grace", "0", "--json", store=path, check=True
    )
    plan = json.loads(p.stdout)["retention"]
    assert len(plan) == 43 and [r["revision"] for r in plan[:2]] == ["t@0", "t@1"]
    keep = [r for r in plan if r["keep"]]
    year, week, _ = dt.datetime.now(dt.UTC).isocalendar()
    now_week = f"weekly {year}-W{week:02d}"
    # the 2 real ingests (newest: its week is the first of 3), then the newest of the 2 last weeks of the
    # dated rows (2026-01-01 .. 2026-02-09, a Monday: ISO weeks 7 and 6)
    assert [r["reasons"] for r in keep] == [["last", now_week], ["last"], ["weekly 2026-W07"], ["weekly 2026-W06"]]
    human = (
        run_cli("gc", "--dry-run", "--keep-last", "2", "--keep-weekly", "3", "--grace", "0", store=path, check=True)
        .stdout.decode()
        .splitlines()
    )
    assert sum(1 for line in human if line.startswith("would forget t@")) == 39
    dry = json.loads(run_cli("history", "t", "--json", store=path, check=True).stdout)["versions"]
    assert len(dry) == 43  # dry run
    run_cli("gc", "--keep-last", "2", "--keep-weekly", "3", "--grace", "0", store=path, check=True)
    after = json.loads(run_cli("history", "t", "--json", store=path, check=True).stdout)["versions"]
    assert sorted(h["time"] for h in after) == sorted(r["time"] for r in keep)
    assert run_cli("fsck", store=path).returncode == 0


def test_keep_history_is_keep_last(tmp_path: Path) -> None:
    path, src = tmp_path / "store", tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / "f").write_bytes(b"v%d" % i)
        run_cli("ingest", src, "--name", "t", store=path, check=True)
    p = run_cli("gc", "--keep-history", "1", "--keep-last", "2", store=path)
    assert p.returncode == 2 and p.stderr.count(b"continuity: error:") == 1
    p = run_cli("gc", "--keep-within", "soon", store=path)
    assert p.returncode == 2 and b"--keep-within" in p.stderr
    run_cli("gc", "--keep-history", "1", "--grace", "0", store=path, check=True)
    assert len(json.loads(run_cli("history", "t", "--json", store=path, check=True).stdout)["versions"]) == 1
    assert run_cli("ls", "t", store=path, check=True).stdout.split() == [b"/f"]
