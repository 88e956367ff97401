"""SIGKILL at random moments, and gc + ingest + checkout running side by side."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from castore.checkout import checkout
from castore.fsck.check import FsckOptions, fsck
from castore.materialize import Options
from castore.store import Store
from castore.testing.trees import make_tree
from castore.verify import verify_tree

CLI = [sys.executable, "-m", "castore"]


def tree(root: Path, seed: int, n: int = 40) -> Path:
    rnd = random.Random(seed)
    files = {f"d{i % 4}/f{i}": rnd.randbytes(rnd.randint(1, 4000)) for i in range(n)}
    files["common.txt"] = b"shared by every tree\n" * 100
    files["big.bin"] = random.Random(seed % 3).randbytes(400_000)  # chunked, shared across trees
    return make_tree(root, files)


def check_all_names(store: Store, where: Path) -> None:
    for t in store.tags():
        out = where / f"v-{t.name}-{os.urandom(4).hex()}"
        m = store.load_manifest(t.digest)
        checkout(store, m, str(out), Options(), manifest_digest=t.digest)
        assert verify_tree(str(out), m) == [], t.name


def assert_sound(store: Store) -> None:
    rep = fsck(store)
    assert rep.sound, [f.line() for f in rep.findings if f.severity == "error"]
    assert all(f.severity == "info" for f in rep.findings), [f.line() for f in rep.findings]


@pytest.mark.slow
def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    sp = tmp_path / "store"
    run = lambda *a: subprocess.run([*CLI, "--store", str(sp), *map(str, a)], capture_output=True)  # noqa: E731
    assert run("ingest", tree(tmp_path / "base", 0), "--name", "base").returncode == 0
    srcs = [tree(tmp_path / f"src{i}", i) for i in range(1, 6)]
    store = Store.open(str(sp))
    rnd = random.Random(1234)
    start = time.monotonic()
    kills = 0
    took: dict[str, float] = {}
    for i in range(60):
        op = rnd.choice(["ingest", "ingest", "checkout", "gc", "rm"])
        target = tmp_path / "out" / f"t{i}"
        if op == "ingest":
            args = ["ingest", rnd.choice(srcs), "--name", f"n{rnd.randint(0, 3)}"]
        elif op == "checkout":
            args = ["checkout", "--link", rnd.choice(["copy", "hardlink"]), "base", target]
        elif op == "gc":
            args = ["gc", "--grace", "0"]
        else:
            args = ["rm", f"n{rnd.randint(0, 3)}"]
        t0 = time.monotonic()
        p = subprocess.Popen(
            [*CLI, "--store", str(sp), *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        time.sleep(rnd.uniform(0.1, 1.0) * took.get(op, 0.5))  # somewhere in its run (calibrated)
        if p.poll() is None:
            p.kill()
            kills += 1
        else:
            took[op] = time.monotonic() - t0
        _, err = p.communicate()
        assert b"Traceback" not in err
        assert_sound(store)
        if op == "checkout" and target.exists():  # complete or absent, never partial
            assert verify_tree(str(target), store.load_manifest(store.resolve("base"))) == []
        if i % 15 == 14:
            check_all_names(store, tmp_path / "verify")
    assert kills >= 30, kills
    assert run("gc", "--grace", "0").returncode == 0
    assert_sound(store)
    assert not [f for f in fsck(store).findings]  # the orphans of every kill are gone
    check_all_names(store, tmp_path / "verify")
    for s in srcs[:2]:
        assert run("ingest", s).returncode == 0
    assert time.monotonic() - start < 120


@pytest.mark.slow
def test_gc_ingest_checkout_in_parallel_loops(tmp_path: Path) -> None:
    sp = tmp_path / "store"

    def run(*a: object) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*CLI, "--store", str(sp), *map(str, a)], capture_output=True)

    assert run("ingest", tree(tmp_path / "base", 0), "--name", "keep0").returncode == 0
    srcs = [tree(tmp_path / f"src{i}", i, n=20) for i in range(4)]
    rounds = 20
    failures: list[str] = []
    kept = ["keep0"]
    freed: list[int] = []
    done = threading.Event()

    def ingester() -> None:
        for i in range(rounds):
            name = f"keep{i + 1}" if i % 3 == 0 else f"tmp{i}"
            p = run("ingest", srcs[i % 4], "--name", name)  # content revives what gc may be deleting
            if p.returncode:
                failures.append(f"ingest {i}: {p.stderr.decode()}")
            elif name.startswith("keep"):
                kept.append(name)
            if i >= 2 and (i - 2) % 3:
                run("rm", f"tmp{i - 2}")
        done.set()

    def checker() -> None:
        i = 0
        while not done.is_set() or i < rounds:
            name = kept[i % len(kept)]
            out = tmp_path / "co" / f"{i}"
            p = run("checkout", "--link", "hardlink" if i % 2 else "copy", name, out)
            if p.returncode:
                failures.append(f"checkout {name}: {p.stderr.decode()}")
            else:
                q = run("verify", out, name)
                if q.returncode:
                    failures.append(f"verify {name}: {q.stdout.decode()}")
            subprocess.run(["rm", "-rf", str(out)])
            i += 1

    def collector() -> None:
        i = 0
        while not done.is_set() or i < rounds:
            p = run("gc", "--grace", "0", "--wait", "--json")
            if p.returncode:
                failures.append(f"gc: {p.stderr.decode()}")
            else:
                freed.append(json.loads(p.stdout)["objects"])
            i += 1

    threads = [threading.Thread(target=f) for f in (ingester, checker, collector)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not failures, failures
    store = Store.open(str(sp))
    rep = fsck(store, FsckOptions(read_data=True))
    assert rep.sound, [f.line() for f in rep.findings]
    check_all_names(store, tmp_path / "final")
    assert len(kept) >= 7
    assert len(freed) >= rounds and sum(freed) > 0, freed


def test_kill_leaves_no_worker_processes(tmp_path: Path) -> None:
    """A SIGKILLed ingest takes its hashing pool with it (PR_SET_PDEATHSIG)."""
    src = make_tree(tmp_path / "src", {f"f{i}": os.urandom(2000) for i in range(300)})
    p = subprocess.Popen(
        [*CLI, "--store", str(tmp_path / "s"), "ingest", str(src)],
        env={**os.environ, "CONTINUITY_CRASHPOINT": "ingest-after-read"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = p.communicate(timeout=60)  # EOF on the pipes: no child kept them open
    assert p.returncode == -signal.SIGKILL, err
