"""Benchmark: `continuity apply` of a 1% change vs `rsync -a --delete`; `continuity copy` vs `cp -a`.

    python scripts/bench/apply.py [--files 100000] [--change 1.0] [--workdir DIR] [--scratch] [--keep]

The tree mirrors make_corpus.py's ``many`` layout (dNNN/sNN/fNNN.dat, sizes
0..2048 B, seeded) at ``--files`` files. v2 is v1 with ``--change`` percent of
the files touched: half rewritten, a quarter deleted, a quarter added, plus
as many chmods. Targets: apply faster than rsync; copy <= 1.2x cp -a.

Steps (only the starred ones are timed; every command is the real CLI):
  v1 generated; *copy v1 -> v2 with `continuity copy`* and *`cp -a` v1 -> v2cp*;
  v2 edited; both ingested; v1 checked out three times (apply root A, rsync
  root B, and D to put B back), v2 once (rsync source C). Then --runs times:
  after the racy window (git's rule: ctimes must be 2 s old), a no-op
  `apply A v1` records ROOT (apply's record, castore/apply/state.py, and the
  stat cache); *apply A v2 --delete* and *rsync -a --delete C/ B/* in
  alternating order; (untimed) verify A, then A and B put back to v1.
  Medians are printed. A cold apply (--rehash, no record: walks and hashes
  every same-size file) is timed too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
T0 = 1_600_000_000


def cli(store: str, *args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "castore", "--store", store, *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"continuity {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout.strip()


class Took:
    """Wall seconds and CPU seconds (user+sys of the child processes, which load on a shared box inflates less)."""

    def __init__(self, wall: float, cpu: float) -> None:
        self.wall, self.cpu = wall, cpu

    def __str__(self) -> str:
        return f"{self.wall:6.2f}s wall {self.cpu:6.2f}s cpu"


def timed(fn: object, *args: object) -> Took:
    c0, t = os.times(), time.perf_counter()
    fn(*args)  # type: ignore[operator]
    c1 = os.times()
    return Took(time.perf_counter() - t, c1.children_user + c1.children_system - c0.children_user - c0.children_system)


def ratio(a: Took, b: Took) -> str:
    return f"wall {a.wall / b.wall:.2f}x, cpu {a.cpu / max(b.cpu, 1e-3):.2f}x"


def median(ts: list[Took]) -> Took:
    """The run with the median wall time."""
    return sorted(ts, key=lambda t: t.wall)[len(ts) // 2]


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True)


def generate(root: str, files: int, seed: int = 1) -> list[str]:
    rnd = random.Random(seed)
    paths = []
    per_dir = 100
    dirs = max(1, files // per_dir)
    for d in range(dirs):
        sub = os.path.join(root, f"d{d // 10:03}", f"s{d % 10:02}")
        os.makedirs(sub, exist_ok=True)
        for f in range(min(per_dir, files - d * per_dir)):
            p = os.path.join(sub, f"f{f:03}.dat")
            with open(p, "wb") as fh:
                fh.write(rnd.randbytes(rnd.randrange(0, 2049)))
            os.utime(p, (T0, T0))
            paths.append(p)
    for dirpath, _, _ in os.walk(root, topdown=False):
        os.utime(dirpath, (T0, T0))
    return paths


def edit(root: str, pct: float, seed: int = 2) -> int:
    rnd = random.Random(seed)
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
    n = max(4, int(len(files) * pct / 100))
    picked = rnd.sample(files, n)
    q = n // 4
    for p in picked[: n // 2]:
        with open(p, "wb") as fh:
            fh.write(rnd.randbytes(rnd.randrange(1, 2049)))
    for p in picked[n // 2 : n // 2 + q]:
        os.unlink(p)
    for i, p in enumerate(picked[n // 2 + q :]):
        with open(p + f".new{i}", "wb") as fh:
            fh.write(rnd.randbytes(rnd.randrange(0, 2049)))
    for p in rnd.sample(files, n):
        if os.path.exists(p):
            os.chmod(p, 0o600)
    return n


@contextlib.contextmanager
def workspace(args: argparse.Namespace) -> Iterator[str]:
    if args.scratch:
        sys.path.insert(0, HERE)
        from corpus import scratch_fs  # type: ignore[import-not-found]

        # ~9 trees of --files entries plus the store's blobs; ext4 makes one inode per 16 KiB (sparse image).
        size = max(4.0, args.files * 10 * 16384 / 2**30 + 2)
        with scratch_fs(os.path.join(args.workdir or tempfile.gettempdir(), "bench-apply"), size_gib=size) as s:
            yield s.mnt
        return
    base = tempfile.mkdtemp(prefix="bench-apply-", dir=args.workdir)
    try:
        yield base
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--change", type=float, default=1.0, help="percent of files changed")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--scratch", action="store_true", help="work in a fresh ext4 image (root; corpus.py)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--runs", type=int, default=3, help="timed apply/rsync pairs (alternating order; medians)")
    ap.add_argument("--only", choices=["all", "copy"], default="all", help="copy: just copy vs cp -a")
    args = ap.parse_args()
    if shutil.which("rsync") is None:
        raise SystemExit("rsync not found (apt-get install rsync)")
    with workspace(args) as w:
        store = os.path.join(w, "store")
        v1, v2, v2cp = (os.path.join(w, n) for n in ("v1", "v2", "v2cp"))
        t = time.perf_counter()
        generate(v1, args.files)
        print(f"generated {args.files} files in {time.perf_counter() - t:.1f}s", flush=True)
        run("sync")
        t_copy = timed(cli, store, "copy", v1, v2)
        t_cp = timed(run, "cp", "-a", v1, v2cp)
        t_help = timed(cli, store, "--help")
        if args.only == "copy":
            print(f"files={args.files} load={os.getloadavg()[0]:.1f} cpus={os.cpu_count()}")
            print(f"copy   {t_copy}   cp -a  {t_cp}   copy/cp: {ratio(t_copy, t_cp)} (target <= 1.2)")
            print(f"startup of the CLI alone (--help) {t_help}")
            return
        n = edit(v2, args.change)
        d1 = cli(store, "ingest", v1, "--name", "v1")
        d2 = cli(store, "ingest", v2, "--name", "v2")
        a, b, c, d = (os.path.join(w, n) for n in ("A", "B", "C", "D"))
        cold = os.path.join(w, "cold")
        for root, dg in ((a, d1), (b, d1), (c, d2), (d, d1), (cold, d1)):
            cli(store, "checkout", dg, root)
        applies: list[Took] = []
        rsyncs: list[Took] = []
        warm: list[Took] = []
        for rep in range(args.runs):
            if rep:  # back to v1, untimed: A by apply, B by rsync from a v1 checkout
                cli(store, "apply", a, d1, "--delete")
                run("rsync", "-a", "--delete", d + "/", b + "/")
            run("sync")
            time.sleep(2.5)  # ctimes leave the racy window: the stat cache and apply's record may trust them
            warm.append(timed(cli, store, "apply", a, d1))  # a no-op that records ROOT as v1
            if rep % 2:
                rsyncs.append(timed(run, "rsync", "-a", "--delete", c + "/", b + "/"))
                applies.append(timed(cli, store, "apply", a, d2, "--delete"))
            else:
                applies.append(timed(cli, store, "apply", a, d2, "--delete"))
                rsyncs.append(timed(run, "rsync", "-a", "--delete", c + "/", b + "/"))
            cli(store, "verify", a, d2)
        t_apply, t_rsync, t_warm = median(applies), median(rsyncs), median(warm)
        t_cold = timed(cli, store, "apply", cold, d2, "--delete", "--rehash")
        cli(store, "verify", cold, d2)
        p = subprocess.run([sys.executable, "-m", "castore", "--store", store, "verify", b, d2], capture_output=True)
        rs = "rsync result verifies" if p.returncode == 0 else "rsync result differs (dir mtimes etc.)"
        print(
            "apply runs: "
            + " ".join(f"{t.wall:.2f}" for t in applies)
            + "   rsync runs: "
            + " ".join(f"{t.wall:.2f}" for t in rsyncs)
        )
        print(f"files={args.files} changed={n} ({args.change}%) load={os.getloadavg()[0]:.1f} cpus={os.cpu_count()}")
        print(f"copy   {t_copy}   cp -a  {t_cp}   copy/cp: {ratio(t_copy, t_cp)} (target <= 1.2)")
        print(f"apply  {t_apply}   rsync  {t_rsync}   apply/rsync: {ratio(t_apply, t_rsync)} (target < 1; medians)")
        print(f"apply --rehash (cold stat cache) {t_cold}   vs rsync: {ratio(t_cold, t_rsync)}")
        print(f"apply no-op (the warm-up run before each, which records ROOT) {t_warm}")
        print(f"startup of the CLI alone (--help) {t_help}")
        print(f"verify after apply: ok; {rs}")


if __name__ == "__main__":
    main()
