#!/usr/bin/env python3
"""Store benchmark: `continuity ingest` / `checkout` against cp, ostree, restic, borg, casync.

One run builds a fresh ext4 image on a loop device, generates the shared
corpora inside it (``scripts/bench/make_corpus.py``), keeps every store and
target inside it too, warms the page cache, and times each command as the
median of N runs taken round-robin across the tools. It prints every sample
as it goes and a summary, one line per comparison::

    name  ours  ref  ratio  target  PASS/MISS

Usage (root; needs ostree restic borgbackup casync time)::

    python scripts/bench/store.py                       # everything, 3 runs
    python scripts/bench/store.py --quick --runs 1      # small corpora, a smoke run
    python scripts/bench/store.py --corpus many --sections reingest,checkout
    python scripts/bench/store.py --corpus many,rootfs --sections reingest,checkout   # issue 16's trees
    python scripts/bench/store.py --keep ...            # leave the image mounted
    python scripts/bench/store.py --reuse ...           # use the mounted image again
    python scripts/bench/store.py --rev HEAD ...        # castore/ as committed at REV, not the work tree

Others edit castore/ while a run lasts minutes: ``--rev`` runs
``python -m castore`` from a ``git archive`` of REV put first on PYTHONPATH
(an empty ``castore/__init__.py`` is added to revisions that had none, so the
snapshot is a regular package and wins over the installed one), which pins the
code being measured.

``rootfs`` (scripts/bench/corpus.py make_rootfs: 30,000 files of 0-2 KiB in 1,000
directories and 4 files of 2-8 MiB) gets the re-ingest and checkout lines of ``many``
beside them: on trees of that size the fixed costs decide.

"cp -a+sync" syncs only the benchmark filesystem (``sync -f``, i.e. syncfs,
what ``continuity`` itself does), so writeback of other users of the
machine stays out of it. Every timed command is followed, untimed, by a
syncfs so its leftover writeback does not land in the next sample.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from store_corpus import make_corpora, setup_scratch, warm  # noqa: E402

ALL_CORPORA = ("src", "many", "big", "versions", "rootfs")
SMALL_FILE_CORPORA = ("many", "rootfs")  # re-ingest and checkout run on each of these present
ALL_SECTIONS = ("ingest", "reingest", "checkout", "versions")
MiB = 1 << 20


class CommandFailed(RuntimeError):
    pass


@dataclass
class Sample:
    seconds: float
    maxrss_kib: int
    stdout: str
    cpu: float = 0.0  # user+sys of the command and every process it waited for


def run(cmd: Sequence[str], env: dict[str, str] | None = None, cwd: str | None = None) -> Sample:
    """Run ``cmd``; wall time, peak RSS of it and its waited-for descendants (wait4), stdout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(list(cmd), stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        _, status, ru = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        if p.returncode != 0:
            tail = err.read().decode(errors="replace")[-2000:]
            raise CommandFailed(f"{' '.join(cmd)}: exit {p.returncode}\n{tail}")
    return Sample(dt, ru.ru_maxrss, stdout, ru.ru_utime + ru.ru_stime)


def sh(script: str, *args: str) -> list[str]:
    return ["sh", "-c", script, "sh", *args]


def tree_bytes(path: str) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of the regular files under ``path``."""
    app = alloc = 0
    for root, _dirs, files in os.walk(path):
        for n in files:
            try:
                st = os.lstat(os.path.join(root, n))
            except FileNotFoundError:
                continue
            app += st.st_size
            alloc += st.st_blocks * 512
    return app, alloc


def rmtree(path: str) -> None:
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", "--one-file-system", path], check=True)


def fmt_s(x: float) -> str:
    return f"{x:.3f}s" if x < 10 else f"{x:.2f}s"


@dataclass
class Comparison:
    name: str
    ours: float
    ref: float
    unit: str  # "s", "%", "MiB"
    target: str  # "<=1.5x", "<1x", "info", "<=2%", "<300MiB"
    ref_name: str = ""

    @property
    def ratio(self) -> float:
        return self.ours / self.ref if self.ref else float("inf")

    def verdict(self) -> str:
        t = self.target
        if t == "info":
            return "info"
        if t.endswith("x"):
            lim = float(t.lstrip("<=").rstrip("x"))
            ok = self.ratio <= lim if t.startswith("<=") else self.ratio < lim
        elif t.endswith("%"):
            ok = self.ours <= float(t.lstrip("<=").rstrip("%"))
        elif t.endswith("MiB"):
            ok = self.ours < float(t.lstrip("<").rstrip("MiB"))
        else:
            return "?"
        return "PASS" if ok else "MISS"

    def line(self, width: int) -> str:
        def v(x: float) -> str:
            if self.unit == "s":
                return fmt_s(x)
            if self.unit == "%":
                return f"{x:.2f}%"
            return f"{x:.0f}{self.unit}"

        return (
            f"{self.name:<{width}}  {v(self.ours):>9}  {v(self.ref):>9}  {self.ratio:>6.2f}x  "
            f"{self.target:>8}  {self.verdict()}"
        )


@dataclass
class Bench:
    work: str  # scratch dir for stores and targets, on the benchmark fs
    corpus: str  # corpora root, on the benchmark fs
    runs: int
    continuity: list[str]
    samples: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)  # key -> CPU seconds of each sample
    rss: dict[str, int] = field(default_factory=dict)  # continuity command -> max KiB
    extra: dict[str, object] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)

    # ---- plumbing ------------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        e = dict(os.environ)
        cache = os.path.join(self.work, "cache")
        e.update(
            {
                "RESTIC_PASSWORD": "bench",
                "RESTIC_CACHE_DIR": os.path.join(cache, "restic"),
                "BORG_PASSPHRASE": "",
                "BORG_BASE_DIR": os.path.join(cache, "borg"),
                "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
                "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
                "BORG_CHECK_I_KNOW_WHAT_I_AM_DOING": "YES",
            }
        )
        e.pop("CONTINUITY_STORE", None)
        return e

    def p(self, path: str) -> str:
        return os.path.join(self.work, path)

    def syncfs(self) -> None:
        subprocess.run(["sync", "-f", self.work], check=True)

    def clean(self, *paths: str) -> None:
        for path in paths:
            rmtree(path)
        rmtree(os.path.join(self.work, "cache"))
        self.syncfs()

    def ct(self, *args: str) -> list[str]:
        return [*self.continuity, *args]

    def timed(self, key: str, cmd: Sequence[str], ours: str | None = None) -> Sample:
        """Run and record one sample under ``key``; ``ours`` names a continuity command for the RSS table."""
        s = run(cmd, env=self.env())
        self.syncfs()  # untimed: the next sample must not pay for this one's writeback
        self.samples.setdefault(key, []).append(s.seconds)
        self.cpu.setdefault(key, []).append(s.cpu)
        if ours:
            self.rss[ours] = max(self.rss.get(ours, 0), s.maxrss_kib)
        rss = f"  rss {s.maxrss_kib / 1024:.0f} MiB" if ours else ""
        print(f"  {key:<44} {fmt_s(s.seconds):>9}  cpu {fmt_s(s.cpu):>8}{rss}", flush=True)
        return s

    def untimed(self, cmd: Sequence[str], ours: str | None = None) -> Sample:
        s = run(cmd, env=self.env())
        self.syncfs()
        if ours:
            self.rss[ours] = max(self.rss.get(ours, 0), s.maxrss_kib)
        return s

    def med(self, key: str) -> float:
        return statistics.median(self.samples[key])

    def compare(self, name: str, ours: str, ref: str, target: str) -> None:
        if ours in self.samples and ref in self.samples:
            self.comparisons.append(Comparison(name, self.med(ours), self.med(ref), "s", target, ref))

    def compare_cpu(self, name: str, ours: str, ref: str) -> None:
        """An info line of median CPU time (user+sys): what a loaded machine still measures fairly."""
        if ours in self.cpu and ref in self.cpu:
            m = statistics.median
            self.comparisons.append(Comparison(name, m(self.cpu[ours]), m(self.cpu[ref]), "s", "info", ref))

    def rounds(self, tools: list[tuple[str, Callable[[], None]]], warm_path: str | None = None) -> None:
        """``runs`` rounds; each round runs every tool once, the starting tool rotating.

        ``warm_path`` is read back into the page cache before every tool: borg
        (and restic) drop the cache of the files they read (posix_fadvise
        DONTNEED), which made whichever tool ran next read the corpus cold.
        """
        for r in range(self.runs):
            k = r % len(tools)
            for _name, fn in tools[k:] + tools[:k]:
                if warm_path is not None:
                    warm(warm_path)
                fn()

    # ---- sections ------------------------------------------------------------------------------------
    def ingest(self, corpus: str) -> None:
        src = os.path.join(self.corpus, corpus)
        print(f"[ingest {corpus}]", flush=True)
        store, dst, repo = self.p("store"), self.p("dst"), self.p("repo")

        def ours() -> None:
            self.clean(store)
            self.timed(f"ingest {corpus}: continuity", self.ct("--store", store, "ingest", src), ours="ingest")
            self.clean(store)

        def cp() -> None:
            self.clean(dst)
            self.timed(f"ingest {corpus}: cp -a+sync", sh('cp -a "$1" "$2" && sync -f "$2"', src, dst))
            self.clean(dst)

        def ostree() -> None:
            self.clean(repo)
            self.untimed(["ostree", f"--repo={repo}", "init", "--mode=bare"])
            self.timed(
                f"ingest {corpus}: ostree commit",
                ["ostree", f"--repo={repo}", "commit", "--branch=b", "-s", "bench", f"--tree=dir={src}"],
            )
            self.clean(repo)

        def restic() -> None:
            self.clean(repo)
            self.untimed(["restic", "-q", "-r", repo, "init"])
            self.timed(f"ingest {corpus}: restic backup", ["restic", "-q", "-r", repo, "backup", src])
            self.clean(repo)

        def borg() -> None:
            self.clean(repo)
            self.untimed(["borg", "init", "-e", "none", repo])
            self.timed(f"ingest {corpus}: borg create", ["borg", "create", "--compression", "none", f"{repo}::a", src])
            self.clean(repo)

        self.rounds(
            [("continuity", ours), ("cp", cp), ("ostree", ostree), ("restic", restic), ("borg", borg)], warm_path=src
        )
        k = f"ingest {corpus}: "
        self.compare(f"ingest {corpus} vs cp -a+sync", k + "continuity", k + "cp -a+sync", "<=1.5x")
        self.compare(f"ingest {corpus} vs ostree commit", k + "continuity", k + "ostree commit", "<=0.5x")
        self.compare(f"ingest {corpus} vs restic backup", k + "continuity", k + "restic backup", "info")
        self.compare(f"ingest {corpus} vs borg create", k + "continuity", k + "borg create", "info")

    def reingest(self, corpus: str = "many") -> None:
        src = os.path.join(self.corpus, corpus)
        print(f"[re-ingest {corpus}, unchanged]", flush=True)
        store, cstore, cache, idx = self.p("store"), self.p("castr"), self.p("cacache"), self.p(f"{corpus}.caidx")
        self.clean(store, cstore, cache, idx)
        first = self.untimed(self.ct("--store", store, "ingest", src), ours="ingest").stdout.strip()
        self.untimed(["casync", "make", f"--store={cstore}", f"--cache={cache}", idx, src])
        digests: set[str] = set()

        def ours() -> None:
            s = self.timed(
                f"re-ingest {corpus}: continuity", self.ct("--store", store, "ingest", src), ours="re-ingest"
            )
            digests.add(s.stdout.strip())

        def find() -> None:
            self.timed(
                f"re-ingest {corpus}: find -printf",
                sh('find "$1" -printf "%p %s %T@ %C@ %i %m %U %G\\n" > /dev/null', src),
            )

        def casync() -> None:
            os.unlink(idx)
            self.timed(
                f"re-ingest {corpus}: casync make --cache",
                ["casync", "make", f"--store={cstore}", f"--cache={cache}", idx, src],
            )

        self.rounds([("continuity", ours), ("find", find), ("casync", casync)])
        if digests != {first}:
            print(f"  WARNING: re-ingest printed {sorted(digests)} after {first}", flush=True)
        self.clean(store, cstore, cache, idx)
        k = f"re-ingest {corpus}: "
        self.compare(f"re-ingest {corpus} vs find -printf", k + "continuity", k + "find -printf", "<=4x")
        self.compare(f"re-ingest {corpus} vs casync --cache", k + "continuity", k + "casync make --cache", "<1x")

    def checkout(self, corpus: str = "many") -> None:
        src = os.path.join(self.corpus, corpus)
        print(f"[checkout {corpus}]", flush=True)
        store, repo = self.p("store"), self.p("repo")
        t1, t2 = self.p("co1"), self.p("co2")
        self.clean(repo)
        self.untimed(["ostree", f"--repo={repo}", "init", "--mode=bare"])
        self.untimed(["ostree", f"--repo={repo}", "commit", "--branch=b", "-s", "bench", f"--tree=dir={src}"])
        k = f"checkout {corpus}: "

        def hardlink() -> None:
            # A fresh store per round, so the first checkout really creates the store-side objects.
            self.clean(store, t1, t2)
            digest = self.untimed(self.ct("--store", store, "ingest", src), ours="ingest").stdout.strip()
            self.timed(
                k + "continuity --link hardlink (1st)",
                self.ct("--store", store, "checkout", "--link", "hardlink", digest, t1),
                ours="checkout hardlink",
            )
            self.timed(
                k + "continuity --link hardlink (2nd)",
                self.ct("--store", store, "checkout", "--link", "hardlink", digest, t2),
                ours="checkout hardlink",
            )
            # What users do between checkouts: remove one. The unlinks move every object's ctime,
            # so this checkout proves each object again from its record (content hashed).
            self.clean(t1, t2)
            self.timed(
                k + "continuity --link hardlink (after rm)",
                self.ct("--store", store, "checkout", "--link", "hardlink", digest, t1),
                ours="checkout hardlink",
            )
            self.clean(t1)
            self.timed(
                k + "continuity --link copy",
                self.ct("--store", store, "checkout", "--link", "copy", digest, t1),
                ours="checkout copy",
            )
            self.clean(store, t1)

        def cp_al() -> None:
            self.timed(k + "cp -al", ["cp", "-al", src, t1])
            self.clean(t1)
            self.timed(k + "cp -al+sync", sh('cp -al "$1" "$2" && sync -f "$2"', src, t1))
            self.clean(t1)

        def cp_a() -> None:
            self.timed(k + "cp -a", ["cp", "-a", src, t1])
            self.clean(t1)
            self.timed(k + "cp -a+sync", sh('cp -a "$1" "$2" && sync -f "$2"', src, t1))
            self.clean(t1)

        def ostree() -> None:
            self.timed(k + "ostree checkout -H", ["ostree", f"--repo={repo}", "checkout", "-H", "b", t1])
            self.clean(t1)
            self.timed(k + "ostree checkout -C", ["ostree", f"--repo={repo}", "checkout", "-C", "b", t1])
            self.clean(t1)

        self.rounds([("continuity", hardlink), ("cp -al", cp_al), ("cp -a", cp_a), ("ostree", ostree)])
        self.clean(repo)
        # Issue 16's targets: the first hardlink checkout writes every object, so it is held to
        # cp -a; the second and the one after rm only link, held to cp -al.
        ours = k + "continuity --link hardlink (1st)"
        self.compare(f"checkout {corpus} hardlink (1st) vs cp -a", ours, k + "cp -a", "<=1.5x")
        for nth in ("1st", "2nd", "after rm"):
            ours = k + f"continuity --link hardlink ({nth})"
            if nth != "1st":
                self.compare(f"checkout {corpus} hardlink ({nth}) vs cp -al", ours, k + "cp -al", "<=1.3x")
            self.compare(f"checkout {corpus} hardlink ({nth}) vs ostree -H", ours, k + "ostree checkout -H", "<1x")
            self.compare(f"checkout {corpus} hardlink ({nth}) vs cp -al+sync", ours, k + "cp -al+sync", "info")
        for nth, ref in (("1st", "cp -a"), ("2nd", "cp -al"), ("after rm", "cp -al")):
            ours = k + f"continuity --link hardlink ({nth})"
            self.compare_cpu(f"checkout {corpus} hardlink ({nth}) vs {ref}, cpu", ours, k + ref)
        ours = k + "continuity --link copy"
        self.compare_cpu(f"checkout {corpus} copy vs cp -a, cpu", ours, k + "cp -a")
        self.compare(f"checkout {corpus} copy vs cp -a", ours, k + "cp -a", "<=1.2x")
        self.compare(f"checkout {corpus} copy vs ostree -C", ours, k + "ostree checkout -C", "<1x")
        self.compare(f"checkout {corpus} copy vs cp -a+sync", ours, k + "cp -a+sync", "info")

    def versions(self) -> None:
        base = os.path.join(self.corpus, "versions")
        v1, v2 = os.path.join(base, "v1"), os.path.join(base, "v2")
        size = os.path.getsize(os.path.join(v2, "data.bin"))
        print(f"[versions: bytes a store adds for v2 after v1, % of {size / MiB:.1f} MiB]", flush=True)
        d = self.p("vstore")
        added: dict[str, float] = {}

        def measure(
            tool: str,
            init: list[str] | None,
            step: Callable[[str, str], list[str]],
            sized: str,
            ours: str | None = None,
            whole: str | None = None,
        ) -> None:
            self.clean(d)
            if init:
                self.untimed(init)
            a = self.timed(f"versions v1: {tool}", step(v1, "1"), ours=ours)
            b1 = tree_bytes(sized)[0]
            w1 = tree_bytes(whole)[0] if whole else 0
            b = self.timed(f"versions v2: {tool}", step(v2, "2"), ours=ours)
            b2 = tree_bytes(sized)[0]
            if whole:
                w2 = tree_bytes(whole)[0]
                self.extra[f"versions {tool} whole store"] = {"v1_bytes": w1, "v2_bytes": w2}
                print(
                    f"  (whole {tool} store incl. metadata: +{(w2 - w1) / MiB:.2f} MiB = "
                    f"{100.0 * (w2 - w1) / size:.2f}%)",
                    flush=True,
                )
            pct = 100.0 * (b2 - b1) / size
            added[tool] = pct
            self.extra[f"versions {tool}"] = {
                "v1_bytes": b1,
                "v2_bytes": b2,
                "added_pct": pct,
                "v1_s": a.seconds,
                "v2_s": b.seconds,
            }
            print(
                f"  versions {tool:<34} store {b1 / MiB:8.1f} -> {b2 / MiB:8.1f} MiB: "
                f"+{(b2 - b1) / MiB:.2f} MiB = {pct:.2f}%",
                flush=True,
            )
            self.clean(d)

        measure(
            "continuity",
            None,
            lambda src, n: self.ct("--store", d, "ingest", src),
            os.path.join(d, "blobs"),
            ours="ingest",
            whole=d,
        )
        measure("restic", ["restic", "-q", "-r", d, "init"], lambda src, n: ["restic", "-q", "-r", d, "backup", src], d)
        measure(
            "borg",
            ["borg", "init", "-e", "none", d],
            lambda src, n: ["borg", "create", "--compression", "none", f"{d}::v{n}", src],
            d,
        )
        measure(
            "casync",
            ["mkdir", "-p", d],
            lambda src, n: ["casync", "make", f"--store={d}/castr", f"{d}/v{n}.caidx", src],
            os.path.join(d, "castr"),
        )
        measure(
            "ostree",
            ["ostree", f"--repo={d}", "init", "--mode=bare"],
            lambda src, n: ["ostree", f"--repo={d}", "commit", "--branch=b", "-s", "v", f"--tree=dir={src}"],
            os.path.join(d, "objects"),
        )
        for tool in ("restic", "borg", "casync", "ostree"):
            self.comparisons.append(
                Comparison(f"versions v2 added vs {tool}", added["continuity"], added[tool], "%", "<=2%", tool)
            )

    def rss_rows(self) -> None:
        for cmd, kib in sorted(self.rss.items()):
            self.comparisons.append(Comparison(f"peak RSS continuity {cmd}", kib / 1024, 300, "MiB", "<300MiB"))


def continuity_cmd(arg: str | None) -> list[str]:
    if arg:
        return arg.split()
    exe = os.path.join(os.path.dirname(sys.executable), "continuity")
    if os.access(exe, os.X_OK):
        return [exe]
    found = shutil.which("continuity")
    if found:
        return [found]
    return [sys.executable, "-m", "castore"]


def snapshot(rev: str) -> tuple[list[str], str, str]:
    """Extract castore/ at ``rev``; (command, PYTHONPATH dir, full sha)."""
    repo = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    sha = subprocess.run(
        ["git", "-C", repo, "rev-parse", rev], check=True, capture_output=True, text=True
    ).stdout.strip()
    dest = f"/tmp/continuity-bench-rev-{sha[:12]}"
    if not os.path.isdir(os.path.join(dest, "castore")):
        os.makedirs(dest, exist_ok=True)
        subprocess.run(f"git -C {repo!r} archive {sha} castore | tar -x -C {dest!r}", shell=True, check=True)
    # Revisions before the relayout had no castore/__init__.py: a namespace portion, which loses to a
    # regular package anywhere on sys.path (the editable install's), so the work tree would be measured.
    # An empty __init__.py makes the snapshot a regular package, first on PYTHONPATH: it wins.
    init = os.path.join(dest, "castore", "__init__.py")
    if not os.path.exists(init):
        open(init, "w").close()
    return [sys.executable, "-P", "-m", "castore"], dest, sha  # -P: not the cwd first on sys.path


def compile_castore() -> None:
    """Byte-compile the castore the commands import, as an installed package is: a snapshot (--rev) or an
    editable tree run under PYTHONDONTWRITEBYTECODE=1 would otherwise compile every module on every run
    (~0.1 s of each command, more than the whole of a re-ingest's target margin)."""
    code = "import castore, compileall\nfor d in castore.__path__:\n    compileall.compile_dir(d, quiet=1)"
    subprocess.run([sys.executable, "-c", code], check=False, capture_output=True)


def describe_tree() -> str:
    repo = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    sha = subprocess.run(
        ["git", "-C", repo, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", repo, "status", "--porcelain", "--", "castore"], capture_output=True, text=True
    ).stdout.strip()
    return f"work tree at {sha}{' + uncommitted castore/ changes' if dirty else ''}"


def check_tools(sections: list[str]) -> None:
    need = {"cp", "find", "sync", "mkfs.ext4", "losetup", "ostree"}
    if "ingest" in sections or "versions" in sections:
        need |= {"restic", "borg"}
    if "reingest" in sections or "versions" in sections:
        need.add("casync")
    missing = sorted(t for t in need if shutil.which(t) is None)
    if missing:
        raise SystemExit(f"missing tools: {' '.join(missing)} (apt-get install ostree restic borgbackup casync)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=",".join(ALL_CORPORA), help="comma list of " + ",".join(ALL_CORPORA))
    ap.add_argument("--sections", default=",".join(ALL_SECTIONS), help="comma list of " + ",".join(ALL_SECTIONS))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="corpora at --scale 0.05 (src is not scaled)")
    ap.add_argument("--scale", type=float, default=None, help="corpus scale (default 1, or 0.05 with --quick)")
    ap.add_argument("--image", default="/tmp/continuity-bench-store.img")
    ap.add_argument("--mnt", default="/tmp/continuity-bench-store.mnt")
    ap.add_argument("--size-gib", type=float, default=None, help="image size (default 14, 4 with --quick)")
    ap.add_argument("--keep", action="store_true", help="leave the image mounted (for --reuse)")
    ap.add_argument("--reuse", action="store_true", help="use the image already mounted at --mnt")
    ap.add_argument("--continuity", default=None, help="command to run (default: the venv's continuity)")
    ap.add_argument("--rev", default=None, help="measure castore/ as committed at this git revision")
    ap.add_argument("--json", default=None, help="write raw samples and the summary to this file")
    a = ap.parse_args()

    corpora = [c for c in a.corpus.split(",") if c]
    sections = [s for s in a.sections.split(",") if s]
    for c in corpora:
        if c not in ALL_CORPORA:
            ap.error(f"unknown corpus {c!r}")
    for s in sections:
        if s not in ALL_SECTIONS:
            ap.error(f"unknown section {s!r}")
    scale = a.scale if a.scale is not None else (0.05 if a.quick else 1.0)
    size_gib = a.size_gib or (4.0 if a.quick else 14.0)
    check_tools(sections)
    if os.geteuid() != 0:
        raise SystemExit("run as root (loop device, mount, ostree bare repos)")

    if a.reuse:
        if not os.path.ismount(a.mnt):
            raise SystemExit(f"--reuse: nothing mounted at {a.mnt}")
        scratch = None
    else:
        scratch = setup_scratch(a.image, a.mnt, size_gib)
    try:
        corpus_dir = os.path.join(a.mnt, "corpus")
        work = os.path.join(a.mnt, "work")
        os.makedirs(work, exist_ok=True)
        t = time.monotonic()
        make_corpora(corpus_dir, corpora, scale)
        print(
            f"corpora {','.join(corpora)} at scale {scale} in {corpus_dir} "
            f"({time.monotonic() - t:.0f}s); warming the cache",
            flush=True,
        )
        for c in corpora:
            warm(os.path.join(corpus_dir, c))
        if a.rev:
            cmd, pypath, sha = snapshot(a.rev)
            os.environ["PYTHONPATH"] = pypath + (":" + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
            code = f"castore/ at {sha[:12]} ({pypath})"
        else:
            cmd, code = continuity_cmd(a.continuity), describe_tree()
        b = Bench(work=work, corpus=corpus_dir, runs=a.runs, continuity=cmd)
        compile_castore()
        print(f"code: {code}", flush=True)
        print(
            f"continuity: {' '.join(b.continuity)}; runs: {a.runs}; fs: ext4 on "
            f"{scratch.loopdev if scratch else a.mnt}",
            flush=True,
        )
        if "ingest" in sections:
            for c in corpora:
                b.ingest(c)
        for c in SMALL_FILE_CORPORA:
            if c in corpora and "reingest" in sections:
                b.reingest(c)
            if c in corpora and "checkout" in sections:
                b.checkout(c)
        if "versions" in corpora and "versions" in sections:
            b.versions()
        b.rss_rows()

        width = max([len(c.name) for c in b.comparisons] + [10])
        print(f"\nsummary (median of {a.runs}, warm cache, scale {scale}; ratio = ours / ref)")
        print(f"{'name':<{width}}  {'ours':>9}  {'ref':>9}  {'ratio':>7}  {'target':>8}  verdict")
        for c in b.comparisons:
            print(c.line(width))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(
                    {
                        "runs": a.runs,
                        "scale": scale,
                        "code": code,
                        "samples": b.samples,
                        "rss_kib": b.rss,
                        "extra": b.extra,
                        "summary": [
                            {
                                "name": c.name,
                                "ours": c.ours,
                                "ref": c.ref,
                                "ratio": c.ratio,
                                "target": c.target,
                                "verdict": c.verdict(),
                            }
                            for c in b.comparisons
                        ],
                    },
                    f,
                    indent=1,
                )
        return 0
    finally:
        if scratch is not None and not a.keep:
            scratch.teardown()
        elif scratch is not None:
            print(
                f"kept: {a.mnt} on {scratch.loopdev} ({a.image}); to clean: umount {a.mnt} && "
                f"losetup -d {scratch.loopdev} && rm {a.image}",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
