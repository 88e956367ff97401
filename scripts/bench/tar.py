"""Benchmark tar streams: `ingest --tar` of a layer vs `tar -x` + `ingest DIR`, and `export` vs `tar -c`.

    python scripts/bench/tar.py [--size 2G] [--runs 3] [--fs scratch|host] [--workdir DIR] [--keep]

Builds a layer of --size bytes (30% in 4-256 KiB files, 70% in 4-48 MiB files, random
content), tars it with GNU tar (--format=posix), then times, each on a fresh store:

  A  continuity ingest --tar layer.tar
  B  tar -xf layer.tar -C x  +  continuity ingest x
  C  continuity export NAME -o out.tar       (tree checked out from A's store)
  D  tar -cf out2.tar -C checkout .

and prints seconds (median of --runs rounds, each on fresh stores), CPU seconds (user + system of
the process tree), the ratios B/A (target >= 1.5) and C/D (target <= 1.3), and the peak RSS of
each command (ru_maxrss of its process tree; target < 200 MiB whatever --size is).
As root, everything runs in a fresh ext4 filesystem (an image on a loop device, made and removed
by scripts/bench/corpus.py), so that the host filesystem's state (other jobs' deletions, its
lack of a journal) does not decide the figures; `--fs host` runs in --workdir instead.
Caches are warm: what each command reads is read once (untimed) just before it (at 2 GiB
the page cache no longer holds everything the rounds write). The figures compare CPU and write
paths. Dirty
pages are flushed (`sync`, not timed) before each of A, B, C and D, so that each path pays for
the writeback of its own output and nobody else's (ingest's syncfs would otherwise flush the
freshly written layer too). B is timed as one path: its `ingest DIR` syncfs also flushes what
`tar -x` wrote, as it would for anyone extracting to disk first. `--sync-between` flushes
between the two steps as well (untimed), which leaves that writeback out of B.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile

CLI = [sys.executable, "-m", "castore"]
_MEASURE = (
    "import resource,subprocess,sys,time;t=time.monotonic();"
    "r=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL);"
    "u=resource.getrusage(resource.RUSAGE_CHILDREN);"
    "print(time.monotonic()-t,u.ru_utime+u.ru_stime,u.ru_maxrss,r.returncode)"
)


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


class Timing:
    """Wall seconds, CPU seconds and peak RSS (KiB) of one command over several runs."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.rss = 0

    def run(self, argv: list[str], sync: bool = True, warm: str | None = None) -> None:
        if sync:
            os.sync()  # nobody else's dirty pages are flushed on this command's clock
        if warm is not None:  # what the command reads is in the page cache, as for its rival
            subprocess.run(
                ["sh", "-c", 'find "$1" -type f -print0 | xargs -0 -r -n 512 cat > /dev/null', "-", warm], check=True
            )
        out = subprocess.run([sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True, check=True)
        secs, cpu, rss, rc = out.stdout.split()
        if rc != "0":
            raise SystemExit(f"command failed ({rc}): {' '.join(argv)}")
        self.wall.append(float(secs))
        self.cpu.append(float(cpu))
        self.rss = max(self.rss, int(rss))

    @property
    def secs(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpus(self) -> float:
        return statistics.median(self.cpu)

    def line(self, label: str) -> str:
        runs = " ".join(f"{w:.2f}" for w in self.wall)
        return (
            f"{label:<22} {self.secs:7.2f} s  cpu {self.cpus:6.2f} s  peak RSS {self.rss / 1024:5.0f} MiB"
            f"  (runs: {runs})"
        )


def make_layer(root: str, size: int, seed: int = 1) -> int:
    rnd = random.Random(seed)
    os.makedirs(root)
    made, n = 0, 0
    small_budget = size * 3 // 10
    while made < size:
        n += 1
        d = os.path.join(root, f"d{n % 64:02d}", f"s{n % 7}")
        os.makedirs(d, exist_ok=True)
        fsize = rnd.randint(4 << 10, 256 << 10) if made < small_budget else rnd.randint(4 << 20, 48 << 20)
        fsize = min(fsize, size - made)
        with open(os.path.join(d, f"f{n}"), "wb") as f:
            left = fsize
            while left:
                k = min(left, 8 << 20)
                f.write(os.urandom(k))
                left -= k
        made += fsize
    return n


def bench(work: str, size: int, runs: int, sync_between: bool, scratch: bool) -> None:
    src, layer = os.path.join(work, "src"), os.path.join(work, "layer.tar")
    if os.path.exists(layer):  # --workdir of an earlier --keep run: reuse its layer
        files = sum(len(f) for _, _, f in os.walk(src))
    else:
        files = make_layer(src, size)
        subprocess.run(["tar", "--format=posix", "-C", src, "-cf", layer, "."], check=True)
    print(
        f"layer: {size / 2**20:.0f} MiB in {files} files, tar {os.path.getsize(layer) / 2**20:.0f} MiB"
        f" ({'fresh ext4 image' if scratch else work})"
    )
    ta, tx, ti, tc, td = Timing(), Timing(), Timing(), Timing(), Timing()
    co = os.path.join(work, "co")
    rounds = os.path.join(work, f"rounds-{os.getpid()}")
    for rnd in range(runs):
        # Fresh directories each round. On the host's filesystem they are all deleted at the end
        # only: on an ext4 without a journal, creating files soon after deleting thousands scans
        # the deleted inodes (ext4's recently_deleted), which would charge one round's cleanup to
        # the next. A scratch image has a journal, so each round is deleted after it.
        r = os.path.join(rounds, str(rnd))
        os.makedirs(r)
        s1, s2, x = os.path.join(r, "store1"), os.path.join(r, "store2"), os.path.join(r, "x")
        ta.run([*CLI, "--store", s1, "ingest", "--tar", layer, "--name", "layer"], warm=layer)
        os.mkdir(x)
        tx.run(["tar", "-xf", layer, "-C", x], warm=layer)
        ti.run([*CLI, "--store", s2, "ingest", x], sync=sync_between)
        if not os.path.exists(co):
            subprocess.run([*CLI, "--store", s1, "checkout", "layer", co], check=True)
        tc.run([*CLI, "--store", s1, "export", "layer", "-o", os.path.join(r, "out.tar")], warm=s1)
        td.run(["tar", "-cf", os.path.join(r, "out2.tar"), "-C", co, "."], warm=co)
        if scratch:
            shutil.rmtree(r)
    shutil.rmtree(rounds)
    tb = statistics.median(e + g for e, g in zip(tx.wall, ti.wall, strict=True))
    print(ta.line("ingest --tar"))
    print(tx.line("tar -x"))
    print(ti.line("  + ingest DIR"))
    print(f"  speedup (two-step {tb:.2f} s / ingest --tar): {tb / ta.secs:.2f}x  (target >= 1.5x)")
    print(tc.line("export"))
    print(td.line("tar -c"))
    print(f"  export / tar -c: {tc.secs / td.secs:.2f}x  (target <= 1.3x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="2G", help="layer size (e.g. 512M, 2G)")
    ap.add_argument("--runs", type=int, default=3, help="rounds; medians are reported")
    ap.add_argument("--sync-between", action="store_true", help="sync (untimed) between tar -x and ingest DIR")
    ap.add_argument(
        "--fs",
        choices=("scratch", "host"),
        default="scratch" if os.geteuid() == 0 else "host",
        help="scratch (default as root): a fresh ext4 image on a loop device; host: --workdir",
    )
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    size = parse_size(a.size)
    if a.fs == "scratch":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import corpus

        prefix = os.path.join(a.workdir or "/var/tmp", f"bench-tar-{os.getpid()}")
        with corpus.scratch_fs(prefix, size_gib=9 * size / 2**30 + 1) as s:
            bench(s.mnt, size, a.runs, a.sync_between, True)
        return
    work = a.workdir or tempfile.mkdtemp(prefix="bench-tar-", dir="/var/tmp")
    try:
        bench(work, size, a.runs, a.sync_between, False)
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
