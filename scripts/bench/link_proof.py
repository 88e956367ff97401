"""What proving a hardlink object costs, step by step (issue 16 item 2; docs/design.md).

Over every object of a store's ``links/`` (made by a hardlink checkout), each step alone:
the record check (a stat) and the parts of the re-proof a checkout after ``rm`` makes (open,
fstat, flistxattr, pread and sha256, close). CPU time per object, best of ``--repeat``.

    python scripts/bench/link_proof.py STORE
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from collections.abc import Callable

FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def objects(store: str) -> list[tuple[int, str, int]]:
    root = os.path.join(store, "links")
    out = []
    for shard in sorted(os.listdir(root)):
        fd = os.open(os.path.join(root, shard), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        for name in os.listdir(fd):
            if not name.startswith("."):
                out.append((fd, name, os.stat(name, dir_fd=fd, follow_symlinks=False).st_size))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    objs = objects(a.store)
    if not objs:
        raise SystemExit(f"{a.store}: no hardlink objects (run a hardlink checkout first)")

    def step(label: str, fn: Callable[[int, str, int], object]) -> None:
        best = float("inf")
        for _ in range(a.repeat):
            t = time.process_time()
            for fd, name, size in objs:
                fn(fd, name, size)
            best = min(best, time.process_time() - t)
        print(f"{label:<44} {best * 1e6 / len(objs):7.2f} us/object", flush=True)

    def opened(then: Callable[[int, int], object]) -> Callable[[int, str, int], object]:
        def fn(fd: int, name: str, size: int) -> None:
            f = os.open(name, FLAGS, dir_fd=fd)
            try:
                then(f, size)
            finally:
                os.close(f)

        return fn

    def proof(f: int, size: int) -> None:
        os.fstat(f)
        os.listxattr(f)
        hashlib.sha256(os.pread(f, size + 1, 0)).hexdigest()

    print(f"{len(objs)} objects in {a.store}/links; CPU time, best of {a.repeat}")
    step("stat (the record check)", lambda fd, name, size: os.stat(name, dir_fd=fd, follow_symlinks=False))
    step("open+close", opened(lambda f, size: None))
    step("open+fstat+close", opened(lambda f, size: os.fstat(f)))
    step("open+flistxattr+close", opened(lambda f, size: os.listxattr(f)))
    step("open+pread+sha256+close", opened(lambda f, size: hashlib.sha256(os.pread(f, size + 1, 0)).digest()))
    step("re-proof: open+fstat+flistxattr+pread+sha256", opened(proof))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
