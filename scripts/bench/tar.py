"""Benchmark tar streams: `ingest --tar` of a layer vs `tar -x` + `ingest DIR`, and `export` vs `tar -c`.

    python scripts/bench/tar.py [--size 2G] [--workdir DIR] [--keep]

Builds a layer of --size bytes (30% in 4-256 KiB files, 70% in 4-48 MiB files, random
content), tars it with GNU tar (--format=posix), then times, each on a fresh store:

  A  continuity ingest --tar layer.tar
  B  tar -xf layer.tar -C x  +  continuity ingest x
  C  continuity export NAME -o out.tar       (tree checked out from A's store)
  D  tar -cf out2.tar -C checkout .

and prints seconds, the ratios B/A (target >= 1.5) and C/D (target <= 1.3), and the peak RSS of
each command (ru_maxrss of its process tree; target < 200 MiB whatever --size is).
Caches are warm (the layer was just written): the figures compare CPU and write paths.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile

CLI = [sys.executable, "-m", "castore"]
_MEASURE = ("import resource,subprocess,sys,time;t=time.monotonic();"
            "r=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL);"
            "print(time.monotonic()-t,resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,r.returncode)")


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def run(argv: list[str]) -> tuple[float, int]:
    """Seconds and peak RSS (KiB) of a command and its children."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True, check=True)
    secs, rss, rc = out.stdout.split()
    if rc != "0":
        raise SystemExit(f"command failed ({rc}): {' '.join(argv)}")
    return float(secs), int(rss)


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="2G", help="layer size (e.g. 512M, 2G)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    size = parse_size(a.size)
    work = a.workdir or tempfile.mkdtemp(prefix="bench-tar-", dir="/var/tmp")
    try:
        src, layer = os.path.join(work, "src"), os.path.join(work, "layer.tar")
        files = make_layer(src, size)
        subprocess.run(["tar", "--format=posix", "-C", src, "-cf", layer, "."], check=True)
        print(f"layer: {size / 2**20:.0f} MiB in {files} files, tar {os.path.getsize(layer) / 2**20:.0f} MiB")
        s1, s2 = os.path.join(work, "store1"), os.path.join(work, "store2")
        ta, ra = run([*CLI, "--store", s1, "ingest", "--tar", layer, "--name", "layer"])
        x = os.path.join(work, "x")
        os.mkdir(x)
        tx, rx = run(["tar", "-xf", layer, "-C", x])
        ti, ri = run([*CLI, "--store", s2, "ingest", x])
        tb = tx + ti
        co = os.path.join(work, "co")
        subprocess.run([*CLI, "--store", s1, "checkout", "layer", co], check=True)
        tc, rc = run([*CLI, "--store", s1, "export", "layer", "-o", os.path.join(work, "out.tar")])
        td, rd = run(["tar", "-cf", os.path.join(work, "out2.tar"), "-C", co, "."])
        print(f"ingest --tar            {ta:7.2f} s  peak RSS {ra / 1024:6.0f} MiB")
        print(f"tar -x + ingest DIR     {tb:7.2f} s  ({tx:.2f} + {ti:.2f}) peak RSS {max(rx, ri) / 1024:6.0f} MiB")
        print(f"  speedup (two-step / ingest --tar): {tb / ta:.2f}x  (target >= 1.5x)")
        print(f"export                  {tc:7.2f} s  peak RSS {rc / 1024:6.0f} MiB")
        print(f"tar -c                  {td:7.2f} s  peak RSS {rd / 1024:6.0f} MiB")
        print(f"  export / tar -c: {tc / td:.2f}x  (target <= 1.3x)")
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
