#!/usr/bin/env python3
"""Same work, two or more revisions of castore/: the before/after check of a move (issue 12).

A code move must not change what the verbs cost. This script takes revisions
(``--revs 33c8d78,HEAD``: the commit before the relayout and the current one),
extracts ``castore/`` of each with ``git archive`` (as ``store.py --rev`` does),
and times the same commands with each, alternating revision run by run on one
fresh ext4 image with the same corpora, so load and cache drift fall on all of
them alike. Each revision has its own store. Per command it prints the median
wall time and the median CPU time (user+sys of the command and its children,
from ``wait4``) of every revision, and the ratio of each to the first:

    command              rev        wall s   cpu s   wall/1st  cpu/1st  verdict

``same`` means within ``--tolerance`` (default 5%) of the first revision on wall
time or on CPU time (CPU is the figure load does not move), ``faster`` below it,
``SLOWER`` above it on both.

Usage (root; loop device)::

    python scripts/bench/revs.py --revs 33c8d78,HEAD               # rootfs at scale 1 and src, 5 runs
    python scripts/bench/revs.py --revs 33c8d78,5d8b769,HEAD --scale 0.3 --runs 3
    python scripts/bench/revs.py --revs 33c8d78,HEAD --instructions --scale 0.1 --runs 1   # counts, not times
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from store import CommandFailed, rmtree, snapshot  # noqa: E402
from store_corpus import make_corpora, setup_scratch, warm  # noqa: E402


@dataclass
class Rev:
    name: str
    sha: str
    pypath: str
    store: str
    manifest: dict[str, str] = field(default_factory=dict)  # corpus -> digest


def instructions(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(instructions executed by the command and every process it forks or runs, in millions; the same;
    stdout), counted by valgrind's callgrind: unlike time, a count that load and noise do not move."""
    vg = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", "--trace-children=yes"]
    p = subprocess.run([*vg, *cmd], capture_output=True, env=env, check=False)
    if p.returncode != 0:
        raise CommandFailed(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stderr.decode()[-2000:]}")
    n = sum(int(line.rsplit(":", 1)[1]) for line in p.stderr.decode().splitlines() if "Collected :" in line)
    return n / 1e6, n / 1e6, p.stdout.decode()


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall s, cpu s of it and its waited-for children, stdout)."""
    r, w = os.pipe()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=w, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    err = p.stderr.read() if p.stderr else b""
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise CommandFailed(f"{' '.join(cmd)}: exit {os.waitstatus_to_exitcode(status)}\n{err.decode()[-2000:]}")
    return wall, ru.ru_utime + ru.ru_stime, out.decode()


class RevBench:
    def __init__(self, revs: list[Rev], work: str, corpus: str, runs: int, count: bool = False) -> None:
        self.revs, self.work, self.corpus, self.runs = revs, work, corpus, runs
        self.measure = instructions if count else timed
        self.unit = "M instr" if count else "s"
        self.samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
        self.order: list[str] = []

    def env(self, rev: Rev) -> dict[str, str]:
        e = dict(os.environ)
        e.pop("CONTINUITY_STORE", None)
        e["PYTHONPATH"] = rev.pypath
        return e

    def ct(self, rev: Rev, *args: str) -> list[str]:
        return [sys.executable, "-P", "-m", "castore", "--store", rev.store, *args]  # -P: not the cwd first

    def syncfs(self) -> None:
        subprocess.run(["sync", "-f", self.work], check=True)

    def record(self, name: str, rev: Rev, cmd: list[str]) -> str:
        wall, cpu, out = self.measure(cmd, self.env(rev))
        self.syncfs()  # untimed: the next sample must not pay for this one's writeback
        if name not in self.order:
            self.order.append(name)
        self.samples.setdefault((name, rev.name), []).append((wall, cpu))
        if self.measure is instructions:
            print(f"  {name:<34} {rev.name:<10} {wall:10.1f} M instructions", flush=True)
        else:
            print(f"  {name:<34} {rev.name:<10} {wall:8.3f}s  cpu {cpu:7.3f}s", flush=True)
        return out

    def untimed(self, rev: Rev, *args: str) -> str:
        return timed(self.ct(rev, *args), self.env(rev))[2]

    def alternate(self, step: Callable[[Rev], None]) -> None:
        for r in range(self.runs):
            k = r % len(self.revs)
            for rev in self.revs[k:] + self.revs[:k]:
                step(rev)

    def p(self, name: str) -> str:
        return os.path.join(self.work, name)

    def ingest(self, corpus: str) -> None:
        src = os.path.join(self.corpus, corpus)
        print(f"[ingest {corpus}]", flush=True)

        def step(rev: Rev) -> None:
            rmtree(rev.store)
            self.syncfs()
            warm(src)
            rev.manifest[corpus] = self.record(f"ingest {corpus}", rev, self.ct(rev, "ingest", src)).strip()
            self.record(f"re-ingest {corpus}", rev, self.ct(rev, "ingest", src))

        self.alternate(step)

    def checkout(self, corpus: str) -> None:
        print(f"[checkout {corpus}]", flush=True)
        t1, t2 = self.p("co1"), self.p("co2")

        def step(rev: Rev) -> None:
            digest = rev.manifest[corpus]
            for t in (t1, t2):
                rmtree(t)
            self.syncfs()
            self.record(f"checkout {corpus} copy", rev, self.ct(rev, "checkout", "--link", "copy", digest, t1))
            rmtree(t1)
            self.syncfs()
            self.record(
                f"checkout {corpus} hardlink 1st", rev, self.ct(rev, "checkout", "--link", "hardlink", digest, t1)
            )
            self.record(
                f"checkout {corpus} hardlink 2nd", rev, self.ct(rev, "checkout", "--link", "hardlink", digest, t2)
            )
            rmtree(t1)
            rmtree(t2)
            self.syncfs()
            self.record(
                f"checkout {corpus} hardlink after rm",
                rev,
                self.ct(rev, "checkout", "--link", "hardlink", digest, t1),
            )
            self.record(f"verify {corpus}", rev, self.ct(rev, "verify", t1, digest))
            rmtree(t1)
            self.syncfs()
            export = " ".join(self.ct(rev, "export", digest)) + " >/dev/null"
            self.record(f"export {corpus} tar", rev, ["sh", "-c", export])
            self.record(f"list ({corpus} store)", rev, self.ct(rev, "list"))
            self.record(f"gc ({corpus} store, nothing to free)", rev, self.ct(rev, "gc"))

        self.alternate(step)

    def summary(self, tolerance: float) -> list[str]:
        first = self.revs[0].name
        lines = [
            f"{'command':<36} {'rev':<10} {'wall s':>8} {'cpu s':>8} {'wall/1st':>9} {'cpu/1st':>8}  verdict",
        ]
        for name in self.order:
            base = self.samples.get((name, first))
            if not base:
                continue
            bw = statistics.median(w for w, _ in base)
            bc = statistics.median(c for _, c in base)
            for rev in self.revs:
                s = self.samples.get((name, rev.name))
                if not s:
                    continue
                w = statistics.median(x for x, _ in s)
                c = statistics.median(y for _, y in s)
                rw, rc = w / bw, c / bc
                if rev.name == first:
                    verdict = "(reference)"
                elif min(rw, rc) < 1 - tolerance:
                    verdict = "faster"
                elif min(rw, rc) <= 1 + tolerance:
                    verdict = "same"
                else:
                    verdict = "SLOWER"
                lines.append(f"{name:<36} {rev.name:<10} {w:8.3f} {c:8.3f} {rw:8.2f}x {rc:7.2f}x  {verdict}")
        return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--revs", required=True, help="comma list of git revisions; ratios are against the first")
    ap.add_argument("--corpus", default="rootfs,src", help="comma list of rootfs,src,many")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--image", default="/tmp/continuity-bench-revs.img")
    ap.add_argument("--mnt", default="/tmp/continuity-bench-revs.mnt")
    ap.add_argument("--size-gib", type=float, default=8.0)
    ap.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions under valgrind (callgrind) instead of timing: steady under load; "
        "slow (~50x), so use a small --scale; wall and cpu columns then both hold millions of instructions",
    )
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (loop device, mount)")
    corpora = [c for c in a.corpus.split(",") if c]
    scratch = setup_scratch(a.image, a.mnt, a.size_gib)
    try:
        corpus_dir, work = os.path.join(a.mnt, "corpus"), os.path.join(a.mnt, "work")
        os.makedirs(work)
        make_corpora(corpus_dir, corpora, a.scale)
        revs = []
        for name in a.revs.split(","):
            _cmd, pypath, sha = snapshot(name)
            subprocess.run(
                [sys.executable, "-c", "import compileall,sys; compileall.compile_dir(sys.argv[1], quiet=1)", pypath],
                check=True,
            )
            revs.append(Rev(name, sha, pypath, os.path.join(work, f"store-{sha[:12]}")))
            print(f"rev {name}: castore/ at {sha[:12]} ({pypath})", flush=True)
        b = RevBench(revs, work, corpus_dir, a.runs, count=a.instructions)
        for c in corpora:
            b.ingest(c)
            b.checkout(c)
        what = "instructions (millions, callgrind)" if a.instructions else "seconds"
        fs_note = f"fresh ext4 on {scratch.loopdev}"
        print(f"\nsummary ({what}, median of {a.runs} alternating runs, scale {a.scale}, {fs_note})")
        for line in b.summary(a.tolerance):
            print(line)
    finally:
        scratch.teardown()


if __name__ == "__main__":
    main()
