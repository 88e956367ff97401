"""Container images built with umoci for tests and benchmarks (``umoci`` on PATH; Debian package umoci).

``build_layout`` makes an OCI image layout whose layers are the differences umoci
finds between successive states of a bundle's rootfs (``umoci repack``: tar+gzip,
whiteouts for what was deleted), or raw tars appended verbatim (``umoci raw
add-layer``: for opaque directories, which repack never writes). ``unpack`` gives
the reference tree: umoci's own extraction of the image (as root: owners kept).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

Step = Callable[[Path], None] | bytes  # change the rootfs in place, or a raw (uncompressed) layer tar


def umoci(*args: object) -> None:
    p = subprocess.run(["umoci", *map(str, args)], capture_output=True)
    if p.returncode != 0:
        raise RuntimeError(f"umoci {' '.join(map(str, args))}: {p.stderr.decode(errors='replace')[-500:]}")


def build_layout(layout: Path, tag: str, steps: Sequence[Step], *, work: Path) -> None:
    """Make (or extend) ``layout`` with tag ``tag``: one layer per step."""
    if not (layout / "oci-layout").exists():
        umoci("init", "--layout", layout)
    umoci("new", "--image", f"{layout}:{tag}")
    bundle = work / f"bundle-{tag}"
    if bundle.exists():
        shutil.rmtree(bundle)
    for step in steps:
        if isinstance(step, bytes):
            raw = work / "raw-layer.tar"
            raw.write_bytes(step)
            umoci("raw", "add-layer", "--image", f"{layout}:{tag}", raw)
            raw.unlink()
            continue
        if not bundle.exists():
            umoci("unpack", "--image", f"{layout}:{tag}", bundle)
        step(bundle / "rootfs")
        umoci("repack", "--image", f"{layout}:{tag}", bundle)
        shutil.rmtree(bundle)
    if bundle.exists():
        shutil.rmtree(bundle)


def unpack(layout: Path, tag: str, bundle: Path) -> Path:
    """umoci's extraction of the image: ``bundle/rootfs``."""
    umoci("unpack", "--image", f"{layout}:{tag}", bundle)
    return bundle / "rootfs"


def raw_layer(entries: Sequence[tuple[str, str, bytes | str]]) -> bytes:
    """An uncompressed layer tar of (kind, name, data|target): kind is file, dir, link (hard) or wh (empty file)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for kind, name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                t.addfile(info)
            elif kind == "link":
                info.type, info.linkname = tarfile.LNKTYPE, str(data)
                t.addfile(info)
            else:
                body = data if isinstance(data, bytes) else str(data).encode()
                info.size, info.mode = len(body), 0o644
                t.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def copy_tree(src: str, dst: Path, limit: int) -> int:
    """Copy regular files (and their directories) from ``src`` into ``dst`` until ``limit`` bytes; the bytes copied."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel = os.path.relpath(dirpath, src)
        for f in sorted(filenames):
            p = os.path.join(dirpath, f)
            try:
                if os.path.islink(p) or not os.path.isfile(p):
                    continue
                size = os.path.getsize(p)
                target = dst / rel / f
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, target)
            except OSError:
                continue
            total += size
            if total >= limit:
                return total
    return total
