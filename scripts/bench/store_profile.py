#!/usr/bin/env python3
"""Profile one `continuity` command in-process: cProfile of the main process, peak RSS split.

Usage::

    python scripts/bench/store_profile.py [--top 25] [--sort tottime] [--out FILE.prof] -- \\
        --store S ingest DIR

Prints wall time, peak RSS of this process and of its (forked hashing)
children, peak Python heap (with --tracemalloc), and the top functions by
own time and by cumulative time, as a percentage of the wall time. Worker
processes are not profiled here; use ``py-spy record --subprocesses`` for
them (see docs/benchmarks/store.md).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--sort", default="tottime", choices=["tottime", "cumulative"])
    ap.add_argument("--out", default=None, help="also dump the raw profile here")
    ap.add_argument("--tracemalloc", action="store_true", help="report peak Python heap (slower)")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    from castore.cli import main as cli_main

    if a.tracemalloc:
        import tracemalloc

        tracemalloc.start()
    prof = cProfile.Profile()
    sys.argv = ["continuity", *args]
    t0 = time.perf_counter()
    code: object = 0
    prof.enable()
    try:
        cli_main()
    except SystemExit as exc:
        code = exc.code
    finally:
        prof.disable()
    wall = time.perf_counter() - t0
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"\nexit {code}; wall {wall:.3f}s; peak RSS main {self_rss:.0f} MiB, children {kids_rss:.0f} MiB",
        file=sys.stderr,
    )
    if a.tracemalloc:
        import tracemalloc

        _, peak = tracemalloc.get_traced_memory()
        print(f"peak Python heap (tracemalloc) {peak / 2**20:.0f} MiB", file=sys.stderr)
    if a.out:
        prof.dump_stats(a.out)
    st = pstats.Stats(prof)
    rows = []
    for (file, line, fn), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        rows.append((tt, ct, nc, f"{os.path.relpath(file) if file.startswith('/') else file}:{line}:{fn}"))
    key = 0 if a.sort == "tottime" else 1
    rows.sort(key=lambda r: -r[key])
    out = io.StringIO()
    out.write(f"{'own s':>8} {'own%':>6} {'cum s':>8} {'cum%':>6} {'calls':>9}  function\n")
    for tt, ct, nc, name in rows[: a.top]:
        out.write(f"{tt:8.3f} {100 * tt / wall:5.1f}% {ct:8.3f} {100 * ct / wall:5.1f}% {nc:9d}  {name}\n")
    print(out.getvalue(), file=sys.stderr)
    return int(code) if isinstance(code, int) else 1


if __name__ == "__main__":
    sys.exit(main())
