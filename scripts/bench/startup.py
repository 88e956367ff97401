"""Start-up cost of the continuity command (issue 16 item 1).

    python scripts/bench/startup.py [--runs 15] [--script PATH] [--instructions]

Times, in milliseconds (the minimum and the median of --runs alternating runs, so
that a shared machine's noise hits every command alike):

  python -c pass             the interpreter alone (the floor)
  python -m castore --help   target <= 50 ms
  python -m castore list     on a small store (3 names), target <= 60 ms
  continuity list / --help   the installed console script (the setuptools wrapper), when found

and the modules each imports (``-X importtime``: the ten slowest of ``list``).
The CPU time (user+sys of the command, median) is printed too: on a shared
machine it is steadier than the wall clock. ``--instructions`` adds each command's
count of executed instructions under valgrind (callgrind), which load does not change.

A venv that loads setuptools' editable import hook (``pip install -e .`` in its default
mode) is named in a note: the hook costs every start of that interpreter ~15 ms, and
``scripts/test`` installs in compat mode (a plain ``.pth`` path entry) instead.

castore's modules are byte-compiled first (``compileall``), as an installed
package is: under PYTHONDONTWRITEBYTECODE=1 an editable install would
otherwise compile every module on every run (~100 ms of ``list``).
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def _ms(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall ms, CPU ms: user+sys of the child)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
    wall = (time.perf_counter() - t) * 1000
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) * 1000


_CLICK = "from castore.cli import click_main; click_main()"


def _instructions(argv: list[str], env: dict[str, str]) -> int | None:
    """Instructions the command executes (valgrind's callgrind; None without valgrind)."""
    if shutil.which("valgrind") is None:
        return None
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv]
    p = subprocess.run(cmd, capture_output=True, env=env, check=False)
    for line in p.stderr.decode(errors="replace").splitlines():
        if "Collected :" in line:
            return int(line.rsplit(":", 1)[1])
    return None


def _compile_castore() -> None:
    spec = importlib.util.find_spec("castore")
    for d in spec.submodule_search_locations or [] if spec else []:
        compileall.compile_dir(d, quiet=1)


def _slowest_imports(argv: list[str], env: dict[str, str], n: int = 10) -> list[str]:
    p = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, env=env, check=False)
    rows = []
    for line in p.stderr.decode().splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()))
    top = [r for r in rows if not r[1].startswith("   ")]  # top-level imports (cumulative)
    return [f"{us / 1000:7.1f} ms {name.strip()}" for us, name in sorted(top, reverse=True)[:n]]


def _editable_hooks() -> list[str]:
    """The setuptools editable-install finders this interpreter loads at start (site's .pth files)."""
    mods = {f.__module__ if isinstance(f, type) else type(f).__module__ for f in sys.meta_path}
    return sorted(m for m in mods if m.startswith("__editable__"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--instructions", action="store_true", help="count each command's instructions (valgrind)")
    ap.add_argument(
        "--script", default=shutil.which("continuity") or os.path.join(os.path.dirname(sys.executable), "continuity")
    )
    args = ap.parse_args()
    env = dict(os.environ)
    _compile_castore()
    work = tempfile.mkdtemp(prefix="startup-bench-")
    try:
        store = os.path.join(work, "store")
        tree = os.path.join(work, "tree")
        os.makedirs(tree)
        with open(os.path.join(tree, "f"), "w") as f:
            f.write("x")
        py = [sys.executable, "-m", "castore", "--store", store]
        subprocess.run([*py, "init"], capture_output=True, check=False)
        for name in ("a", "b", "c"):
            subprocess.run([*py, "ingest", "--name", name, tree], capture_output=True, check=True)
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -m castore --help": [sys.executable, "-m", "castore", "--help"],
            "python -m castore list": [*py, "list"],
            # the same through the click group (what list cost before the fast path): a reference, no target
            "list through click": [sys.executable, "-c", _CLICK, "--store", store, "list"],
        }
        if os.path.exists(args.script):
            cases["continuity --help (script)"] = [args.script, "--help"]
            cases["continuity list (script)"] = [args.script, "--store", store, "list"]
        times: dict[str, list[float]] = {k: [] for k in cases}
        cpu: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.runs):
            for k, argv in cases.items():
                wall, used = _ms(argv, env)
                times[k].append(wall)
                cpu[k].append(used)
        floor = min(times["python -c pass"])
        targets = {
            "python -m castore --help": 50,
            "python -m castore list": 60,
            "continuity --help (script)": 50,
            "continuity list (script)": 60,
        }
        for k, ts in times.items():
            tgt = targets.get(k)
            verdict = "" if tgt is None else f"   target <= {tgt} ms: {'ok' if min(ts) <= tgt else 'MISSED'}"
            print(
                f"{k:30s} min {min(ts):6.1f} ms  median {statistics.median(ts):6.1f} ms  "
                f"cpu {statistics.median(cpu[k]):6.1f} ms  (+{min(ts) - floor:5.1f} over python){verdict}"
            )
        if args.instructions:
            for k, argv in cases.items():
                n = _instructions(argv, env)
                print(f"{k:30s} {n / 1e6 if n else float('nan'):8.1f} M instructions")
        hooks = _editable_hooks()
        if hooks:
            print(f"note: this interpreter loads {', '.join(hooks)} at every start (~15 ms, counted in every line);")
            print("      reinstall with `pip install -e . --config-settings editable_mode=compat` (scripts/test does)")
        print("slowest top-level imports of `list` (-X importtime, one run):")
        for line in _slowest_imports(["-m", "castore", "--store", store, "list"], env):
            print("   " + line)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
