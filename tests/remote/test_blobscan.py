"""castore.remote.blobscan: the blobs push reads from a manifest's bytes are those of the decoded manifest."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from castore.errors import CorruptManifest, InvalidManifest
from castore.manifest import Manifest, codec
from castore.manifest.model import AdsEntry, RegularFile
from castore.remote import blobscan
from castore.remote.oci import blob_sizes
from castore.remote.packer import blob_order
from castore.store import Store, manifest_refs
from castore.testing.trees import rich_tree, special_files
from tests.helpers import run_cli


def _same(m: Manifest) -> None:
    data = codec.dumps(m)
    got = blobscan.scan(data)
    assert got == blobscan.of_manifest(m)
    sizes = blob_sizes(m)
    assert {d: n for d, n in got.sizes.items()} == sizes
    assert got.refs == manifest_refs(m)
    got_sizes = dict(got.sizes)
    for d in got.refs - got_sizes.keys():
        got_sizes[d] = 0
    assert [(d, got_sizes[d]) for d in got.order] == blob_order(m, got_sizes)


def test_scan_agrees_with_the_codec(tmp_path: Path) -> None:
    src = tmp_path / "src"
    rich_tree(src)
    special_files(src / "special")
    (src / "big.bin").write_bytes(os.urandom(1 << 20) * 3)  # chunked
    (src / "empty").write_bytes(b"")
    (src / "caf\u00e9 \\ odd").write_bytes(b"escaped path")
    os.link(src / "empty", src / "empty-link")
    os.chmod(src / "empty", 0o4755)
    os.chown(src / "caf\u00e9 \\ odd", 123456, 654321)
    os.utime(src / "empty", ns=(0, 0))
    store = tmp_path / "store"
    d = run_cli("ingest", src, "--name", "t", store=store, check=True).stdout.decode().strip()
    m = Store.open(str(store)).load_manifest(d)
    assert any(isinstance(r, RegularFile) and r.chunks for r in m.resources)
    _same(m)
    # files with streams (their blobs after the file) and with xattrs are decoded by the codec
    files = [r for r in m.resources if isinstance(r, RegularFile) and r.size]
    ads = dataclasses.replace(files[0], ads=(AdsEntry("zone", b"", files[1].digest),))
    x = dataclasses.replace(files[2], xattrs=(("user.k", b"v"),))
    _same(Manifest.of([ads if r is files[0] else x if r is files[2] else r for r in m.resources]))


@pytest.mark.parametrize("cut", [1, 5, 40, -3])
def test_scan_refuses_broken_bytes(tmp_path: Path, cut: int) -> None:
    src = tmp_path / "src"
    rich_tree(src)
    store = tmp_path / "store"
    d = run_cli("ingest", src, "--name", "t", store=store, check=True).stdout.decode().strip()
    data = Store.open(str(store)).read_blob(d)
    with pytest.raises((CorruptManifest, InvalidManifest)):
        blobscan.scan(data[:cut] if cut > 0 else data + b"\x0a\x05abc")
    with pytest.raises(CorruptManifest):
        blobscan.scan(b"\x12" + data)
