"""Benchmark pulling an ordinary container image: continuity vs skopeo + umoci.

    python scripts/bench/image.py [--size-mb 200] [--own-mb 20] [--runs 3] [--jobs 4] [--workdir DIR] [--keep]

Builds with umoci a 3-layer image of about --size-mb from system directories (/usr/lib,
/usr/share, /usr/bin, a third each), and a second image on the same base with one layer of
its own (--own-mb from /usr/libexec and /usr/sbin, else /usr/include). Both are copied with
skopeo into a docker-registry started on 127.0.0.1 (plain http). Then, each --runs times,
into fresh directories:

  continuity   `continuity pull 127.0.0.1:PORT/bench/base:1` into an empty store
               (download, verify, decompress, flatten with whiteouts, store deduplicated)
  baseline     `skopeo copy docker://… oci:DIR:x` + `umoci unpack --image DIR:x BUNDLE`

medians of wall time and of CPU time (user+sys of the processes and everything they ran, from
getrusage: the honest measure on a loaded machine), and the ratios continuity/baseline (target
<= 1.0). Then, in a store holding the base,
`continuity pull` of the second image: the new bytes stored (blob files) against the size of
its own layer's files (target: no more).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from castore.testing.images import build_layout, copy_tree

CLI = [sys.executable, "-m", "castore"]
CONFIG = """version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
http:
  addr: 127.0.0.1:{port}
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_registry(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _port()
    cfg = work / "registry.yml"
    cfg.write_text(CONFIG.format(root=work / "registry", port=port))
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(150):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("docker-registry did not start")


def run(cmd: list[str], **kw: object) -> float:
    return timed(cmd, **kw)[0]


def timed(cmd: list[str], **kw: object) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user+sys of the command and of every process it waited for)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def _add(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return a[0] + b[0], a[1] + b[1]


def blob_bytes(store: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(store / "blobs") for f in fs)


def tree_bytes(root: Path) -> int:
    return sum(
        os.lstat(os.path.join(d, f)).st_size
        for d, _, fs in os.walk(root)
        for f in fs
        if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f))
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--own-mb", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    for tool in ("umoci", "skopeo", "docker-registry"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian packages umoci, skopeo, docker-registry)")
    work = Path(tempfile.mkdtemp(prefix="bench-image-", dir=args.workdir))
    proc = None
    try:
        third = args.size_mb * (1 << 20) // 3
        sizes = {}

        def from_dir(src: str, dst: str, limit: int):  # noqa: ANN202
            def step(root: Path) -> None:
                sizes[dst] = copy_tree(src, root / dst.lstrip("/"), limit)

            return step

        layout = work / "layout"
        t = time.perf_counter()
        build_layout(
            layout,
            "base",
            [
                from_dir("/usr/lib", "/usr/lib", third),
                from_dir("/usr/share", "/usr/share", third),
                from_dir("/usr/bin", "/usr/bin", third),
            ],
            work=work,
        )
        own_src = "/usr/libexec" if os.path.isdir("/usr/libexec") else "/usr/include"
        subprocess.run(["umoci", "tag", "--image", f"{layout}:base", "more"], check=True)
        build_more = work / "bundle-more"
        subprocess.run(
            ["umoci", "unpack", "--image", f"{layout}:more", str(build_more)], check=True, stdout=subprocess.DEVNULL
        )
        own = copy_tree(own_src, build_more / "rootfs/opt/own", args.own_mb << 20)
        own += copy_tree("/usr/sbin", build_more / "rootfs/opt/own2", max(0, (args.own_mb << 20) - own))
        subprocess.run(["umoci", "repack", "--image", f"{layout}:more", str(build_more)], check=True)
        shutil.rmtree(build_more)
        total = sum(sizes.values())
        parts = ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in sizes.items())
        print(
            f"image: 3 layers, {total / 1e6:.0f} MB of files ({parts}); "
            f"built in {time.perf_counter() - t:.0f} s; second image: +1 layer, {own / 1e6:.1f} MB own files"
        )
        proc, reg = start_registry(work)
        for tag in ("base", "more"):
            run(
                [
                    "skopeo",
                    "copy",
                    "-q",
                    "--dest-tls-verify=false",
                    f"oci:{layout}:{tag}",
                    f"docker://{reg}/bench/{tag}:1",
                ]
            )
        ours: list[tuple[float, float]] = []
        theirs: list[tuple[float, float]] = []
        for i in range(args.runs):  # alternated run by run: both see the same load
            st = work / f"st{i}"
            ours.append(timed([*CLI, "-q", "--store", str(st), "pull", "-j", str(args.jobs), f"{reg}/bench/base:1"]))
            oci, bundle = work / f"oci{i}", work / f"bundle{i}"
            copy = ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{reg}/bench/base:1", f"oci:{oci}:x"]
            theirs.append(_add(timed(copy), timed(["umoci", "unpack", "--image", f"{oci}:x", str(bundle)])))
            if i:
                shutil.rmtree(st)
            shutil.rmtree(oci)
            shutil.rmtree(bundle)
        for k, what in ((0, "wall"), (1, "cpu (user+sys)")):
            xs, ys = [r[k] for r in ours], [r[k] for r in theirs]
            a, b = statistics.median(xs), statistics.median(ys)
            print(
                f"pull 3-layer image ({total / 1e6:.0f} MB), {what}: continuity median {a:.2f} s "
                f"(runs {', '.join(f'{x:.2f}' for x in xs)}); skopeo copy + umoci unpack median {b:.2f} s "
                f"(runs {', '.join(f'{x:.2f}' for x in ys)}); ratio {a / b:.2f} (target <= 1.0)"
            )
        st = work / "st0"
        before = blob_bytes(st)
        t = time.perf_counter()
        digest = (
            subprocess.run([*CLI, "--store", str(st), "pull", f"{reg}/bench/more:1"], check=True, capture_output=True)
            .stdout.decode()
            .strip()
        )
        t2 = time.perf_counter() - t
        grown = blob_bytes(st) - before
        mpath = st / "blobs" / "sha256" / digest[7:9] / digest[7:]
        msize = mpath.stat().st_size if mpath.exists() else 0
        content = grown - msize
        print(
            f"second image on the same base: {t2:.2f} s, new bytes stored {grown / 1e6:.2f} MB = content "
            f"{content / 1e6:.2f} MB + its manifest {msize / 1e6:.2f} MB; its own layer's files {own / 1e6:.2f} MB "
            f"({'ok' if content <= own else 'OVER'}: new content <= own files)"
        )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
