"""Benchmark `continuity build` against upstream's Go library and `openssl dgst -sha256`.

    sudo /tmp/venv/bin/python scripts/bench/build.py [--corpora src,many,big] [--runs 3]
        [--scale 1.0] [--corpus-dir DIR] [--json FILE]

For each corpus (``src``: the CPython stdlib, ~7.7k files; ``many``: 100,000
small files; ``big``: 1.5 GiB in 5 files, all from scripts/bench/make_corpus.py),
generated in a fresh ext4 image on a loop device (scripts/bench/corpus.py;
``--corpus-dir`` reuses existing corpora instead), with a warm page cache,
three commands are timed (wall clock, whole process incl. interpreter start):

  ours      python -m castore build DIR > FILE
  upstream  upstream-continuity build DIR > FILE   (cmd/upstream-continuity: NewContext +
            BuildManifest + Marshal of containerd/continuity, Go 1.19, built offline)
  openssl   cd DIR && xargs -0 -P2 -n B openssl dgst -sha256 < LIST > /dev/null
            LIST: every regular file (relative path, NUL-separated, walked beforehand,
            not timed); B = ceil(files / 8) so both cores get work, further split by
            xargs' 128 KiB command-line buffer. Hashing only: no walk, stat or xattrs.

Runs alternate (ours, upstream, openssl, then rotated) and the median of
``--runs`` is reported, with ratios ours/upstream and ours/openssl and the
targets of issue 2 (src and many <= 0.6x upstream, big <= 0.25x). Peak memory
of our build is measured on every corpus: ``maxrss`` is the largest single
process (GNU time's %M, hashing workers included), ``tree`` the sampled sum of
VmRSS over our process tree (counts pages shared after fork more than once).
Before timing, the first outputs are checked: our manifest without mtimes must
equal upstream's bytes.

The machine may be shared: figures are indicative. Needs root (loop mount).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import corpus  # noqa: E402

TARGETS = {"src": 0.6, "many": 0.6, "big": 0.25}
RSS_LIMIT_MIB = 200


def upstream_tool() -> str:
    """Build (or reuse) the Go program exactly as the interop tests do."""
    spec = importlib.util.spec_from_file_location("interop_conftest", os.path.join(REPO, "tests/interop/upstream.py"))
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return str(mod.build_upstream_tool())


def regular_files(root: str) -> list[str]:
    """Every regular file below root, relative, symlinks not followed, sorted."""
    out = []
    for d, _dirs, files in os.walk(root):
        for n in files:
            p = os.path.join(d, n)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append(os.path.relpath(p, root))
    return sorted(out)


@dataclass
class Sample:
    seconds: float
    cpu: float  # user + system seconds of the process and its waited-for children
    maxrss_kib: int
    tree_kib: int


def _tree_rss_kib(pid: int) -> int:
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def timed(
    argv: list[str], *, cwd: str | None = None, stdin_path: str | None = None, stdout_path: str | None = None
) -> Sample:
    """Run argv to completion; wall seconds, peak RSS of the largest process, sampled tree RSS."""
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
    stdout = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL
    # A forked child starts with its parent's RSS high-water mark (the kernel copies
    # it with the mm and keeps it across exec), and this process holds file lists
    # and manifests: so the peak is taken by GNU time, a small process, from its child.
    have_time = os.path.exists("/usr/bin/time")
    report = tempfile.NamedTemporaryFile(prefix="bench-time-", delete=False) if have_time else None
    if report is not None:
        report.close()
        argv = ["/usr/bin/time", "-f", "%U %S %M", "-o", report.name, *argv]
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                peak[0] = max(peak[0], _tree_rss_kib(proc.pid))

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - t0
        done.set()
        th.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv[:8])}... failed ({proc.returncode}): {err.strip()}")
        cpu, maxrss = usage.ru_utime + usage.ru_stime, usage.ru_maxrss
        if report is not None:
            with open(report.name) as f:
                user, system, kib = f.read().split()[-3:]
            cpu, maxrss = float(user) + float(system), int(kib)
        return Sample(elapsed, cpu, maxrss, peak[0])
    finally:
        for f in (stdin, stdout):
            if not isinstance(f, int):
                f.close()
        if report is not None:
            os.unlink(report.name)


@dataclass
class Result:
    corpus: str
    files: int
    bytes: int
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def median(self, tool: str) -> float:
        return statistics.median(s.seconds for s in self.samples[tool])

    def cpu(self, tool: str) -> float:
        return statistics.median(s.cpu for s in self.samples[tool])

    def row(self) -> dict[str, object]:
        ours, up, ssl = self.median("ours"), self.median("upstream"), self.median("openssl")
        target = TARGETS.get(self.corpus)
        rss = max(s.maxrss_kib for s in self.samples["ours"]) / 1024
        tree = max(s.tree_kib for s in self.samples["ours"]) / 1024
        return {
            "corpus": self.corpus,
            "files": self.files,
            "bytes": self.bytes,
            "ours_s": round(ours, 3),
            "upstream_s": round(up, 3),
            "openssl_s": round(ssl, 3),
            "ours_upstream": round(ours / up, 3),
            "ours_openssl": round(ours / ssl, 3),
            "cpu_s": {t: round(self.cpu(t), 3) for t in self.samples},
            "target": target,
            "meets_target": target is None or ours / up <= target,
            "ours_peak_rss_mib": round(rss, 1),
            "ours_tree_rss_mib": round(tree, 1),
            "runs": {t: [round(s.seconds, 3) for s in v] for t, v in self.samples.items()},
        }


def check_same_manifest(ours_pb: str, upstream_pb: str) -> None:
    """Both builds describe the same tree: ours minus mtimes equals upstream's bytes."""
    from castore.manifest import codec
    from castore.manifest.model import Manifest

    with open(ours_pb, "rb") as f:
        ours = codec.loads(f.read())
    with open(upstream_pb, "rb") as f:
        theirs = f.read()
    stripped = codec.dumps(Manifest(tuple(replace(r, mtime_ns=None) for r in ours.resources)))
    if stripped != theirs:
        raise SystemExit(f"manifests differ: {ours_pb} (without mtimes) != {upstream_pb}")


def bench_corpus(name: str, root: str, runs: int, go_tool: str, work: str) -> Result:
    files = regular_files(root)
    total = sum(os.lstat(os.path.join(root, p)).st_size for p in files)
    listing = os.path.join(work, f"{name}.list")
    with open(listing, "wb") as f:
        f.write(b"".join(os.fsencode(p) + b"\0" for p in files))
    batch = max(1, math.ceil(len(files) / 8))
    commands = {
        "ours": ([sys.executable, "-m", "castore", "build", root], {}),
        "upstream": ([go_tool, "build", root], {}),
        "openssl": (
            ["xargs", "-0", "-P2", "-n", str(batch), "openssl", "dgst", "-sha256"],
            {"cwd": root, "stdin_path": listing},
        ),
    }
    corpus.warm(root)
    res = Result(name, len(files), total, {t: [] for t in commands})
    tools = list(commands)
    for i in range(runs):
        order = tools[i % len(tools) :] + tools[: i % len(tools)]
        for tool in order:
            argv, kw = commands[tool]
            out = os.path.join(work, f"{name}.{tool}.out") if i == 0 and tool != "openssl" else None
            s = timed(argv, stdout_path=out, **kw)  # type: ignore[arg-type]
            res.samples[tool].append(s)
            print(
                f"  {name} run {i + 1} {tool:8s} {s.seconds:7.3f} s wall {s.cpu:7.3f} s cpu",
                file=sys.stderr,
                flush=True,
            )
        if i == 0:
            check_same_manifest(os.path.join(work, f"{name}.ours.out"), os.path.join(work, f"{name}.upstream.out"))
    return res


def print_table(rows: list[dict[str, object]]) -> None:
    print(
        f"{'corpus':6s} {'files':>7s} {'MiB':>6s} {'ours s':>7s} {'upstr s':>7s} {'ossl s':>7s} {'ours/up':>7s} "
        f"{'ours/ssl':>8s} {'target':>6s}       {'cpu s: ours':>11s} {'upstr':>6s} {'ossl':>6s} {'peak RSS':>9s}"
    )
    for r in rows:
        ok = "ok" if r["meets_target"] else "MISSED"
        target = f"<={r['target']}" if r["target"] else "-"
        cpu: dict[str, float] = r["cpu_s"]  # type: ignore[assignment]
        print(
            f"{r['corpus']:6s} {r['files']:7d} {int(r['bytes']) / 2**20:6.0f} {r['ours_s']:7.3f} "  # type: ignore[call-overload]
            f"{r['upstream_s']:7.3f} {r['openssl_s']:7.3f} {r['ours_upstream']:7.2f} {r['ours_openssl']:8.2f} "
            f"{target:>6s} {ok:6s} {cpu['ours']:11.2f} {cpu['upstream']:6.2f} {cpu['openssl']:6.2f} "
            f"{r['ours_peak_rss_mib']:6.1f} MiB"
        )
    many = [r for r in rows if r["corpus"] == "many"]
    if many:
        r = many[0]
        verdict = "ok" if float(r["ours_peak_rss_mib"]) < RSS_LIMIT_MIB else "MISSED"  # type: ignore[arg-type]
        print(
            f"peak memory of ours on many: {r['ours_peak_rss_mib']} MiB largest process, "
            f"{r['ours_tree_rss_mib']} MiB process tree (sampled sum); target < {RSS_LIMIT_MIB} MiB: {verdict}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpora", default="src,many,big")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="make_corpus.py --scale (quick trial runs)")
    ap.add_argument("--corpus-dir", help="use corpora already under this dir (no loop fs)")
    ap.add_argument("--prefix", default="/tmp/continuity-bench-build", help="scratch image PREFIX.img, PREFIX.mnt")
    ap.add_argument("--size-gib", type=float, default=6.0)
    ap.add_argument("--json", dest="json_out", help="also write the results here")
    a = ap.parse_args()
    names = [n for n in a.corpora.split(",") if n]
    go_tool = upstream_tool()
    print(
        f"openssl: {subprocess.run(['openssl', 'version'], capture_output=True, text=True).stdout.strip()}; "
        f"cpus: {os.cpu_count()}; load: {os.getloadavg()[0]:.2f}",
        file=sys.stderr,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="continuity-bench-build-") as work:
        if a.corpus_dir:
            for n in names:
                rows.append(bench_corpus(n, os.path.join(a.corpus_dir, n), a.runs, go_tool, work).row())
        else:
            with corpus.scratch_fs(a.prefix, a.size_gib) as fs:
                for n in names:
                    t = time.perf_counter()
                    corpus.make_corpora(fs.mnt, [n], a.scale)
                    print(f"  {n}: generated in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
                    rows.append(bench_corpus(n, os.path.join(fs.mnt, n), a.runs, go_tool, work).row())
    print_table(rows)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"rows": rows, "load": os.getloadavg()}, f, indent=1)


if __name__ == "__main__":
    main()
