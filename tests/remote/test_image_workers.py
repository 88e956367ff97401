"""Image layers read in worker processes (castore.remote.image_workers): several layers of every
kind (gzip, zstd, plain; a plain one large enough that ``ingest --tar`` would fork a pool of its
own) flatten as umoci would, and a hostile or corrupt layer read in a worker gives one error
line, the right exit code, nothing recorded, no temp file kept and no process left behind."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import pytest
import zstandard

from castore.testing.images import raw_layer
from tests.helpers import run_cli

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    d = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs/sha256" / d).write_bytes(data)
    return {"digest": "sha256:" + d, "size": len(data)}


def _layout(layout: Path, layers: list[tuple[str, bytes, bytes]]) -> None:
    """An OCI layout tagged ``v`` with ``layers``: (compression "", "gzip" or "zstd", blob, its tar)."""
    layout.mkdir()
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    descs = [{"mediaType": LAYER + (f"+{c}" if c else ""), **_blob(layout, blob)} for c, blob, _ in layers]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest() for _, _, t in layers]},
    }
    cfg = {"mediaType": "application/vnd.oci.image.config.v1+json", **_blob(layout, json.dumps(config).encode())}
    man = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": descs}).encode()
    ref = {"mediaType": OCI_MANIFEST, **_blob(layout, man), "annotations": {"org.opencontainers.image.ref.name": "v"}}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [ref]}))


def _gz(t: bytes) -> tuple[str, bytes, bytes]:
    return "gzip", gzip.compress(t, mtime=0), t


def _children() -> set[int]:
    """Processes whose parent is this test process (a leaked worker would be reparented, so also
    every process whose command line names the store)."""
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}


def test_layers_of_every_kind_flatten_in_workers(tmp_path: Path) -> None:
    big = os.urandom(9 << 20)  # a plain layer over PARALLEL_MIN (16 MiB) with the two below
    base = raw_layer(
        [
            ("dir", "etc", ""),
            ("file", "etc/a", b"a1\n"),
            ("file", "etc/gone", b"x\n"),
            ("dir", "opt", ""),
            ("file", "opt/old", b"old\n"),
        ]
    )
    mid = raw_layer([("file", "big1", big), ("file", "big2", big[::-1]), ("wh", "etc/.wh.gone", b"")])
    top = raw_layer(
        [("file", "etc/a", b"a2\n"), ("dir", "opt", ""), ("wh", "opt/.wh..wh..opq", b""), ("file", "opt/new", b"new\n")]
    )
    layout = tmp_path / "layout"
    _layout(layout, [_gz(base), ("", mid, mid), ("zstd", zstandard.ZstdCompressor().compress(top), top)])
    st = tmp_path / "st"
    run_cli("pull", f"oci:{layout}:v", "--name", "img", store=st, check=True)
    ls = run_cli("ls", "img", store=st, check=True).stdout.split()
    assert ls == [b"/big1", b"/big2", b"/etc", b"/etc/a", b"/opt", b"/opt/new"], ls
    out = tmp_path / "out"
    run_cli("checkout", "img", out, store=st, check=True)
    assert (out / "etc/a").read_bytes() == b"a2\n" and (out / "big1").read_bytes() == big
    assert (out / "big2").read_bytes() == big[::-1]
    run_cli("fsck", store=st, check=True)


@pytest.mark.parametrize(
    "case",
    ["dotdot", "absolute-link", "truncated-gzip", "corrupt-gzip", "below-a-file"],
)
def test_a_bad_layer_in_a_worker(tmp_path: Path, case: str) -> None:
    good = raw_layer([("dir", "d", ""), ("file", "d/f", os.urandom(300_000))])
    if case == "dotdot":
        bad, code, says = _gz(raw_layer([("file", "a/../../evil", b"x")])), 3, b"'..'"
    elif case == "absolute-link":
        bad, code, says = _gz(raw_layer([("file", "f", b"x"), ("link", "g", "/etc/passwd")])), 3, b"absolute"
    elif case == "below-a-file":
        bad, code, says = _gz(raw_layer([("file", "f", b"x"), ("file", "f/g", b"y")])), 3, b"refused"
    else:
        t = raw_layer([("file", "f", os.urandom(200_000))])
        z = bytearray(gzip.compress(t, mtime=0))
        if case == "truncated-gzip":
            z = z[: len(z) // 2]
        else:
            z[len(z) // 2] ^= 0xFF
        bad, code, says = ("gzip", bytes(z), t), 4, b"corrupt"
    layout = tmp_path / "layout"
    _layout(layout, [_gz(good), bad, _gz(good)])
    st = tmp_path / "st"
    before = _children()
    p = run_cli("pull", f"oci:{layout}:v", "--name", "bad", store=st)
    assert p.returncode == code and says in p.stderr, (case, p.returncode, p.stderr)
    assert p.stderr.startswith(b"continuity: error:") and p.stderr.count(b"\n") == 1, p.stderr
    assert b"bad" not in run_cli("list", store=st, check=True).stdout
    leftover = [str(Path(d) / f) for d, _, fs in os.walk(st / "tmp") for f in fs]
    assert leftover == [], leftover  # the lease's temp files (layers, staged blobs) are gone
    assert [f for _, _, fs in os.walk(st / "blobs") for f in fs] == []
    for pid in _children() - before:  # no worker of the failed pull outlived it
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert str(st).encode() not in cmd, cmd
