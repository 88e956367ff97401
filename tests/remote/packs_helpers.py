"""Trees and hand-built packed artifacts for the pack tests (no network: built from a store)."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from castore.remote.oci import CONFIG_DIGEST, CONFIG_JSON, blob_sizes, build_oci_manifest
from castore.remote.packer import BuiltPack, blob_order, build_pack, make_plan
from castore.store import Store, manifest_refs


def make_tree(root: Path, files: int = 300, seed: int = 1) -> None:
    """Small files (random and text) in a few directories, a compressible text file, a chunked 3 MiB file."""
    rng = random.Random(seed)
    for i in range(files):
        d = root / f"d{i // 50:02d}"
        d.mkdir(parents=True, exist_ok=True)
        if i % 3:
            (d / f"f{i:04d}.bin").write_bytes(rng.randbytes(rng.randrange(1, 4096)))
        else:
            (d / f"f{i:04d}.txt").write_text(f"line {i}\n" * rng.randrange(1, 300))
    (root / "empty").write_bytes(b"")
    (root / "words.txt").write_text(" ".join(f"word{rng.randrange(1000)}" for _ in range(40000)))
    (root / "big.bin").write_bytes(rng.randbytes(3 << 20))


def packed_artifact(store: Store, mdigest: str, target: int) -> tuple[bytes, dict[str, bytes], list[BuiltPack]]:
    """What push writes for ``mdigest`` with new packs of ``target`` bytes: OCI manifest, blobs by digest, packs."""
    m = store.load_manifest(mdigest)
    data = store.read_blob(mdigest)
    sizes = blob_sizes(m)
    for d in manifest_refs(m) - sizes.keys():
        sizes[d] = store.blob_size(d) or 0
    plan = make_plan(blob_order(m, sizes), [], target)
    built = [build_pack(store, p) for p in plan.new]
    oci = build_oci_manifest(mdigest, len(data), plan.solo, [(b.pack, b.index) for b in built])
    blobs = {mdigest: data, CONFIG_DIGEST: CONFIG_JSON}
    for b in built:
        blobs[b.pack.digest] = bytes(b.data)
        blobs[b.index.digest] = b.index_data
    for d, _ in plan.solo:
        blobs[d] = store.read_blob(d)
    return oci, blobs, built


def range_server(
    data: bytes, mangle: Callable[[int, int, bytes], tuple[int, dict[str, str], bytes]] | None = None
) -> Callable[[BaseHTTPRequestHandler], None]:
    """A blob route that honours ``Range: bytes=a-b`` (206), optionally ``mangle``d: (start, end, bytes) -> answer."""

    def serve(h: BaseHTTPRequestHandler) -> None:
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", h.headers.get("Range", ""))
        if m:
            a, b = int(m[1]), int(m[2]) + 1
            status, headers, body = 206, {"Content-Range": f"bytes {a}-{b - 1}/{len(data)}"}, data[a:b]
            if mangle is not None:
                status, headers, body = mangle(a, b, body)
        else:
            status, headers, body = 200, {}, data
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        if "Content-Length" not in headers:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    return serve
