"""Benchmark gc on a large store, and an ingest running beside a gc.

    python scripts/bench/gc.py [--blobs 1000000,3000000] [--manifests N] [--garbage 0.1] [--no-ingest]
                               [--workdir DIR] [--keep] [--inline-data]

Builds a store FAST by writing blob files and LMDB rows directly through the Store/meta API
(not one ingest per manifest): --blobs small blobs (13-40 bytes, unique) spread over
--manifests real manifests (each a valid continuity manifest blob referencing its share of
blobs); 1 - --garbage of the manifests are named, the rest are unnamed and older than the
grace period, so their blobs are garbage; 1,000 old orphan files are added too. Then:

  gc alone            `continuity gc --grace 1h` (a subprocess) on a store of each --blobs size (manifests:
                      blobs / 100): seconds, peak RSS (target < 200 MiB at every size, time growing no
                      worse than linearly), objects freed, longest store-lock hold; then the gc's own
                      per-phase wall/CPU seconds (`--debug`) with the CPU microseconds per blob of each
                      phase: a phase whose per-blob cost rises with the size grows faster than the store
  ingest alone        (first size only) `continuity ingest` of a 2,000-file tree (16 MiB, new content), 5 times, into
                      the big store: median
  ingest during gc    the same, one after another while a second gc (default --nice 10) runs over
                      freshly added garbage; ratio of the medians (target <= 1.5), and the worst

The machine is shared and has 2 cores: gc and ingest compete for CPU, which the ratio includes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402  (scripts/bench/corpus.py: the scratch ext4 image)

from castore.manifest import codec
from castore.manifest.model import Directory, Manifest, RegularFile
from castore.store import Store
from castore.store.meta import BLOB_ROW, KIND_MANIFEST, KIND_RAW

CLI = [sys.executable, "-m", "castore"]
LAST_CPU = [0.0]
LAST_ERR = [""]
OLD = time.time() - 3 * 3600


def build(store: Store, blobs: int, manifests: int, garbage: float, first: int = 0, named: bool = True) -> int:
    """Add ``blobs`` blobs over ``manifests`` manifests; return the number of garbage blobs added."""
    per = max(1, blobs // manifests)
    n_garbage = 0
    made_dirs: set[str] = set()
    meta = store.meta
    rows: list[tuple[bytes, bytes]] = []
    refs_rows: list[tuple[bytes, bytes]] = []
    tags: list[tuple[str, str, int]] = []

    def flush() -> None:
        def fn(txn: object) -> None:
            t: object = txn
            for k, v in rows:
                t.put(k, v, db=meta.db("blobs"))  # type: ignore[attr-defined]
            for k, v in refs_rows:
                t.put(k, v, db=meta.db("refs"))  # type: ignore[attr-defined]
            for name, d, size in tags:
                store.set_tag(t, name, d, size)

        meta.write(fn)
        rows.clear()
        refs_rows.clear()
        tags.clear()

    for m in range(manifests):
        is_garbage = (not named) or (m % max(1, round(1 / garbage)) == 0 if garbage else False)
        files = []
        keys = []
        for j in range(per):
            data = f"{first}:{m}:{j}\n".encode()
            d = "sha256:" + hashlib.sha256(data).hexdigest()
            _write_blob(store, d, data, made_dirs, old=is_garbage)
            rows.append((bytes.fromhex(d[7:]), BLOB_ROW.pack(len(data), KIND_RAW)))
            keys.append(bytes.fromhex(d[7:]))
            files.append(RegularFile(paths=(f"/d/f{j:06d}",), size=len(data), digest=d, perm=0o644))
        man = Manifest(resources=(Directory(paths=("/d",)), *files))
        mdata = codec.dumps(man)
        md = "sha256:" + hashlib.sha256(mdata).hexdigest()
        _write_blob(store, md, mdata, made_dirs, old=is_garbage)
        rows.append((bytes.fromhex(md[7:]), BLOB_ROW.pack(len(mdata), KIND_MANIFEST)))
        refs_rows.append((bytes.fromhex(md[7:]), b"".join(sorted(keys))))
        if is_garbage:
            n_garbage += per + 1
        else:
            tags.append((f"m{first}-{m}", md, len(mdata)))
        if len(rows) > 50_000:
            flush()
    flush()
    return n_garbage


def _write_blob(store: Store, digest: str, data: bytes, made: set[str], old: bool) -> None:
    path = store.blob_path(digest)
    shard = os.path.dirname(path)
    if shard not in made:
        os.makedirs(shard, exist_ok=True)
        made.add(shard)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.write(fd, data)
    if old:
        os.utime(fd, (OLD, OLD))
    os.close(fd)


def orphans(store: Store, n: int) -> None:
    for i in range(n):
        data = f"orphan {i} {random.random()}".encode()
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        _write_blob(store, d, data, set(), old=True)


def make_tree(root: str, seed: int, files: int = 2000, size: int = 8192) -> str:
    rnd = random.Random(seed)
    for i in range(files):
        p = os.path.join(root, f"d{i % 20}", f"f{i}")
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(rnd.randbytes(size))
    return root


_MEASURE = (
    "import os,resource,subprocess,sys,time;t=time.monotonic();"
    "r=subprocess.run(sys.argv[1:],capture_output=True);"
    "u=resource.getrusage(resource.RUSAGE_CHILDREN);"
    "sys.stderr.buffer.write(r.stderr);sys.stdout.buffer.write(r.stdout);"
    "print(time.monotonic()-t,u.ru_maxrss,r.returncode,u.ru_utime+u.ru_stime)"
)


def timed(argv: list[str]) -> tuple[float, int, int, str]:
    """(seconds, peak RSS KiB, exit code, stdout) of one command; its CPU seconds in ``LAST_CPU[0]``.

    Measured from a small intermediate Python process: Linux carries a forking
    parent's high-water RSS into the child across exec, so measuring children
    of this (large) builder process directly would report the builder's size.
    """
    p = subprocess.run([sys.executable, "-c", _MEASURE, *argv], capture_output=True)
    lines = p.stdout.decode().strip().splitlines()
    secs, rss, rc, cpu = lines[-1].split()
    LAST_CPU[0] = float(cpu)
    LAST_ERR[0] = p.stderr.decode(errors="replace")
    if int(rc):
        print(f"  {' '.join(argv[3:6])}: exit {rc}: {p.stderr.decode(errors='replace').strip()}")
    return float(secs), int(rss), int(rc), "\n".join(lines[:-1])


def gc_alone(work: str, blobs: int, manifests: int, garbage: float) -> tuple[str, float, int]:
    """Build a store of ``blobs`` blobs in ``work`` and gc it once: (store path, seconds, peak RSS KiB)."""
    sp = os.path.join(work, f"store-{blobs}")
    store = Store.open(sp)
    t = time.monotonic()
    g = build(store, blobs, manifests, garbage)
    orphans(store, 1000)
    print(
        f"built {blobs} blobs / {manifests} manifests ({g} garbage blobs + 1000 orphans) in {time.monotonic() - t:.1f}s"
    )
    subprocess.run(["sync", "-f", sp])
    secs, rss, rc, out = timed([*CLI, "--store", sp, "--debug", "gc", "--grace", "1h"])
    print(
        f"gc alone {blobs:>9} blobs: {secs:6.2f} s  cpu {LAST_CPU[0]:6.2f} s   peak RSS {rss / 1024:6.1f} MiB "
        f"(target < 200)   exit {rc}   {out}",
        flush=True,
    )
    print_phases(blobs)
    return sp, secs, rss


def print_phases(blobs: int) -> None:
    """The gc's own per-phase line (``--debug``), with the CPU microseconds per blob of each phase."""
    for line in LAST_ERR[0].splitlines():
        if "gc phases" not in line:
            continue
        parts = []
        for item in line.split("): ", 1)[-1].split(", "):
            name, _, times = item.rpartition(" ")
            wall, _, cpu = times.partition("/")
            parts.append(f"{name} {float(wall):.2f}/{float(cpu):.2f} ({float(cpu) * 1e6 / blobs:.1f} us/blob)")
        print(f"  phases {blobs:>9} blobs (s wall/cpu): {', '.join(parts)}", flush=True)


def ingest_beside_gc(work: str, sp: str, blobs: int, manifests: int) -> None:
    """Ingest alone vs ingest while a second gc (default --nice 10) runs over fresh garbage."""
    store = Store.open(sp)
    sync = lambda: subprocess.run(["sync", "-f", sp])  # noqa: E731
    alone = []
    r = 0
    for i in range(5):
        src = make_tree(os.path.join(work, f"alone{i}"), 100 + i)
        sync()
        s, r, _, _ = timed([*CLI, "--store", sp, "ingest", src])
        alone.append(s)
    runs = ", ".join(f"{a:.2f}" for a in alone)
    print(f"ingest alone:      {statistics.median(alone):6.2f} s   (median; runs: {runs}; peak RSS {r / 1024:.1f} MiB)")
    # Fresh garbage for the second gc: 10% of the blobs again, unnamed and old.
    g2 = build(store, blobs // 10, max(1, manifests // 10), 1.0, first=1, named=False)
    srcs = [make_tree(os.path.join(work, f"during{i}"), 200 + i) for i in range(8)]
    sync()
    gcp = subprocess.Popen([*CLI, "--store", sp, "gc", "--grace", "1h"], stdout=subprocess.PIPE)
    t0 = time.monotonic()
    time.sleep(0.3)
    during = []
    for src in srcs:
        if gcp.poll() is not None:
            break
        s, _, _, _ = timed([*CLI, "--store", sp, "ingest", src])
        during.append(s)
    out2 = gcp.communicate()[0].decode().strip()
    gc2 = time.monotonic() - t0
    base = statistics.median(alone)
    if during:
        print(
            f"ingest during gc:  {statistics.median(during):6.2f} s   (median; runs: "
            f"{', '.join(f'{d:.2f}' for d in during)}); ratio median {statistics.median(during) / base:.2f}, "
            f"worst {max(during) / base:.2f} (target <= 1.5)"
        )
    else:
        print("ingest during gc:  gc finished before an ingest could start; use more --blobs")
    print(f"gc with ingests:   {gc2:6.2f} s   ({g2} garbage blobs)   {out2}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--blobs", default="1000000,3000000", help="comma-separated store sizes; each gets its own store and gc run"
    )
    ap.add_argument("--manifests", type=int, default=0, help="manifests per store (default: blobs / 100)")
    ap.add_argument("--garbage", type=float, default=0.1, help="fraction of manifests left unnamed (garbage)")
    ap.add_argument("--no-ingest", action="store_true", help="skip ingest beside gc (run on the first size)")
    ap.add_argument(
        "--workdir",
        default=None,
        help="an existing directory to work in (default: a fresh ext4 image on a loop device)",
    )
    ap.add_argument("--keep", action="store_true")
    ap.add_argument(
        "--inline-data",
        action="store_true",
        help="make the image with ext4 inline_data (tiny blobs in their inodes: no data block each); "
        "chosen anyway when the disk has too little room for a block per blob",
    )
    args = ap.parse_args()
    sizes = [int(x) for x in args.blobs.split(",") if x.strip()]
    scratch = None
    if args.workdir:
        work = tempfile.mkdtemp(prefix="gc-bench-", dir=args.workdir)
    else:  # blobs take a 4 KiB block and an inode each; the image is sparse
        big = max(sizes)
        prefix = tempfile.mktemp(prefix="gc-bench-")
        need = big * 5.5 * 1024 + (2 << 30)  # a block, an inode and index rows per blob
        free = shutil.disk_usage(os.path.dirname(prefix)).free
        inline = args.inline_data or free < 1.5 * need
        scratch = corpus.create_at(
            prefix + ".img",
            prefix + ".mnt",
            max(4.0, big * 6.5 * 1024 / (1 << 30)),
            inodes=int(big * 1.25) + 200_000,
            features="inline_data" if inline else "",
        )
        work = scratch.mnt
        how = "inline_data: small blobs kept in their inodes" if inline else "blobs take a block each"
        print(f"fresh ext4 on {scratch.loopdev} at {work} ({how}; {free / (1 << 30):.1f} GiB free)", flush=True)
    try:
        results = []
        for i, n in enumerate(sizes):
            m = args.manifests or max(1, n // 100)
            sp, secs, rss = gc_alone(work, n, m, args.garbage)
            results.append((n, secs, rss, LAST_CPU[0]))
            if i == 0 and not args.no_ingest:
                ingest_beside_gc(work, sp, n, m)
            if not args.keep:
                shutil.rmtree(sp, ignore_errors=True)
        if len(results) > 1:
            (n0, s0, _, c0), (n1, s1, _, c1) = results[0], results[-1]
            print(
                f"gc growth {n0} -> {n1} blobs: time x{s1 / s0:.2f}, cpu x{c1 / max(c0, 1e-9):.2f} for size "
                f"x{n1 / n0:.2f} ({'no worse than linear' if s1 / s0 <= 1.1 * n1 / n0 else 'WORSE than linear'}); "
                f"peak RSS {', '.join(f'{r[2] / 1024:.0f}' for r in results)} MiB "
                f"({'all under 200' if all(r[2] < 200 * 1024 for r in results) else 'NOT all under 200'})"
            )
        ru = resource.getrusage(resource.RUSAGE_SELF)
        print(f"builder peak RSS {ru.ru_maxrss / 1024:.0f} MiB")
    finally:
        if args.keep:
            print(f"kept {work}")
        elif scratch is not None:
            corpus.teardown(scratch)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
