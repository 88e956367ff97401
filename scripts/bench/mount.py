"""Benchmark reads through `continuity mount` against the same tree on ext4 (issue 16 item 6).

    sudo python scripts/bench/mount.py [--runs 3] [--scale 1.0] [--big-mib 512] [--prefix P] [--json FILE]

A fresh ext4 image on a loop device (scripts/bench/corpus.py) holds the ``rootfs`` corpus
(30,000 files of 0-2 KiB in 1,000 directories, a few symlinks and 4 files of 2-8 MiB; scaled by
``--scale``) plus one ``--big-mib`` file (512 MiB), and a store into which the tree is ingested.
The manifest is mounted with ``continuity mount``; then, runs alternating ours / ext4, medians of
``--runs``:

  cold  caches dropped (``sync; echo 3 > /proc/sys/vm/drop_caches``) and the mount remounted
        (a fresh daemon: nothing verified yet), then ``tar -cf - DIR | cat > /dev/null``
  warm  the same command again right after (page cache, dentries, attributes as the cold run left them)

for the small files (the rootfs corpus) and for the big file alone. The small-file lines carry the
targets of issue 16 (cold <= 2x ext4, warm <= 3x). CPU time of the mount daemon over each phase is
printed too (it is what the daemon costs whatever the machine's load), and the requests it answered
over a cold and a warm read of the small files (from its ``--debug`` counters). Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import corpus  # noqa: E402

CLI = [sys.executable, "-m", "castore"]
TARGETS = {("small", "cold"): 2.0, ("small", "warm"): 3.0}


def run(*argv: str, **kw: object) -> str:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=env, **kw).stdout.strip()  # type: ignore[call-overload]


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def read_all(path: str) -> float:
    """Seconds for ``tar -cf - path | cat > /dev/null`` (cat: GNU tar skips reading into /dev/null)."""
    parent, name = os.path.split(path.rstrip("/"))
    t = time.perf_counter()
    subprocess.run(["sh", "-c", 'tar -C "$1" -cf - "$2" | cat > /dev/null', "-", parent, name], check=True)
    return time.perf_counter() - t


def proc_cpu(pid: int) -> float:
    """user + system seconds of process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Mount:
    """A `continuity mount` daemon in the background."""

    def __init__(self, store: str, digest: str, mnt: str) -> None:
        self.store, self.digest, self.mnt = store, digest, mnt
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        os.makedirs(self.mnt, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [*CLI, "--debug", "--store", self.store, "mount", self.digest, self.mnt],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        deadline = time.monotonic() + 120
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"mount failed: {self.proc.stderr.read().decode(errors='replace') if self.proc.stderr else ''}"
                )
            if time.monotonic() > deadline:
                raise SystemExit("mount did not come up in 120 s")
            time.sleep(0.02)

    def stop(self) -> dict[str, int]:
        """Unmount; the daemon's counters (``--debug``: reads, requests, ...), empty when none."""
        if self.proc is None:
            return {}
        subprocess.run(["fusermount3", "-u", self.mnt], check=False, capture_output=True)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            subprocess.run(["umount", "-l", self.mnt], check=False)
        err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
        self.proc = None
        found = re.search(r"debug: mount: (.*)", err)
        return {k: int(v) for k, v in (p.split(" ") for p in found.group(1).split(", "))} if found else {}

    def cpu(self) -> float:
        assert self.proc is not None
        return proc_cpu(self.proc.pid)


@dataclass
class Series:
    ours: list[float] = field(default_factory=list)
    ext4: list[float] = field(default_factory=list)
    daemon_cpu: list[float] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)  # the daemon's requests over a cold and a warm pass

    def row(self, what: str, phase: str) -> dict[str, object]:
        o, e = statistics.median(self.ours), statistics.median(self.ext4)
        target = TARGETS.get((what, phase))
        return {
            "what": what,
            "phase": phase,
            "mount_s": round(o, 3),
            "ext4_s": round(e, 3),
            "ratio": round(o / e, 2),
            "daemon_cpu_s": round(statistics.median(self.daemon_cpu), 3),
            "target": target,
            "ok": target is None or o / e <= target,
            "requests": self.requests,
            "runs": {"mount": [round(x, 3) for x in self.ours], "ext4": [round(x, 3) for x in self.ext4]},
        }


def bench(src: str, big: str, store: str, digest: str, mnt: str, runs: int) -> list[dict[str, object]]:
    targets = {"small": "rootfs", "big": os.path.basename(big)}
    series = {(w, p): Series() for w in targets for p in ("cold", "warm")}
    m = Mount(store, digest, mnt)
    try:
        for i in range(runs):
            order = ("ours", "ext4") if i % 2 == 0 else ("ext4", "ours")
            for side in order:
                for what, rel in targets.items():
                    if side == "ours":
                        m.stop()
                        drop_caches()
                        m.start()
                        path = os.path.join(mnt, rel)
                    else:
                        drop_caches()
                        path = os.path.join(os.path.dirname(src), rel)
                    for phase in ("cold", "warm"):
                        c0 = m.cpu() if side == "ours" else 0.0
                        secs = read_all(path)
                        s = series[(what, phase)]
                        (s.ours if side == "ours" else s.ext4).append(secs)
                        if side == "ours":
                            s.daemon_cpu.append(m.cpu() - c0)
                        print(f"  run {i + 1} {side:4s} {what:5s} {phase} {secs:7.3f} s", file=sys.stderr, flush=True)
                    if side == "ours" and "requests" in (counters := m.stop()):
                        series[(what, "cold")].requests.append(counters["requests"])
    finally:
        m.stop()
    return [series[k].row(*k) for k in series]


def print_rows(rows: list[dict[str, object]], files: int) -> None:
    print(f"{'read':5s} {'phase':5s} {'mount s':>8s} {'ext4 s':>7s} {'ratio':>6s} {'daemon cpu':>10s}  target")
    for r in rows:
        t = f"<= {r['target']}x {'ok' if r['ok'] else 'MISSED'}" if r["target"] else "-"
        print(
            f"{r['what']:5s} {r['phase']:5s} {r['mount_s']:8.3f} {r['ext4_s']:7.3f} {r['ratio']:5.2f}x "
            f"{r['daemon_cpu_s']:9.2f}s  {t}"
        )
    for r in rows:
        if r["target"]:
            print(
                f"mount {r['phase']} read of {files} small files: {r['ratio']}x ext4 "
                f"(target <= {r['target']}x: {'ok' if r['ok'] else 'MISSED'})"
            )
    for r in rows:
        reqs = r["requests"]
        if r["what"] == "small" and reqs:
            n = statistics.median(reqs)  # type: ignore[arg-type]
            print(
                f"mount requests for a cold and a warm read of {files} small files: {n:.0f} ({n / files:.2f} per file)"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="scale of the rootfs corpus (30,000 files at 1)")
    ap.add_argument("--big-mib", type=int, default=512)
    ap.add_argument("--prefix", default="/tmp/continuity-bench-mount", help="scratch image PREFIX.img, PREFIX.mnt")
    ap.add_argument("--size-gib", type=float, default=4.0)
    ap.add_argument("--json", dest="json_out")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (loop device, drop_caches)")
    print(f"cpus: {os.cpu_count()}; load: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    with corpus.scratch_fs(a.prefix, a.size_gib) as fs:
        data = os.path.join(fs.mnt, "data")
        os.makedirs(data)
        info = corpus.make_rootfs(data, a.scale)
        big = os.path.join(data, "big.bin")
        with open(big, "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(a.big_mib):
                f.write(block[1:] + os.urandom(1))
        store = os.path.join(fs.mnt, "store")
        src = os.path.join(data, "rootfs")
        # One manifest holding both: rootfs/... and big.bin, as the directory data/ has them.
        out = run(*CLI, "--store", store, "ingest", data)
        digest = re.findall(r"sha256:[0-9a-f]{64}", out)[-1]
        with tempfile.TemporaryDirectory(prefix="bench-mount-") as work:
            rows = bench(src, big, store, digest, os.path.join(work, "mnt"), a.runs)
    print_rows(rows, info["files"])
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"rows": rows, "files": info["files"], "load": os.getloadavg()}, f, indent=1)


if __name__ == "__main__":
    main()
