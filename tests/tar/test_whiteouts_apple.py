"""Whiteouts between overlayfs and OCI layers, and AppleDouble members."""

from __future__ import annotations

import json
import os
import stat
import struct
import tarfile
from pathlib import Path

import pytest

from castore.testing.compare import assert_trees_equal
from tests.helpers import ROOT
from tests.tar.craft import member, tar


@pytest.mark.skipif(not ROOT, reason="needs root (mknod, trusted.* xattrs)")
def test_overlay_upper_to_oci_layer_and_back(cli, tmp_path: Path):
    up = tmp_path / "upper"
    (up / "etc/opq").mkdir(parents=True)
    (up / "etc/new.conf").write_bytes(b"x=1\n")
    os.mknod(up / "etc/gone", 0o020000, os.makedev(0, 0))
    os.mknod(up / "gone-too", 0o020000, os.makedev(0, 0))
    os.setxattr(up / "etc/opq", "trusted.overlay.opaque", b"y")
    (up / "etc/opq/kept").write_bytes(b"k\n")
    for p in ("etc/opq", "etc", ""):
        os.utime(up / p, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    d1 = cli("ingest", "--whiteouts", "overlay", up, check=True).stdout.decode().strip()
    layer = tmp_path / "layer.tar"
    cli("export", d1, "--whiteouts", "oci", "-o", layer, check=True)
    names = tarfile.open(layer).getnames()
    assert {"etc/.wh.gone", ".wh.gone-too", "etc/opq/.wh..wh..opq"} <= set(names), names
    d2 = cli("ingest", "--tar", layer, "--whiteouts", "oci", check=True).stdout.decode().strip()
    assert d2 == d1
    cli("checkout", d2, tmp_path / "back", "--whiteouts", "overlay", check=True)
    assert_trees_equal(up, tmp_path / "back", times=False)  # whiteouts carry no mtime
    # Without --whiteouts oci the markers are plain files; exporting without it says what is left out.
    p = cli("export", d1, "-o", tmp_path / "plain.tar")
    assert p.returncode == 0 and b"whiteout" in p.stderr


def test_oci_whiteout_and_entry_in_one_layer(cli):
    data = tar(
        member(b".wh.d", b""),
        member(b"d/", typ=b"5"),
        member(b"d/f", b"x"),
        member(b".wh.f", b""),
        member(b"f", b"y"),
        member(b".wh.gone", b""),
    )
    d = cli("ingest", "--tar", "-", "--whiteouts", "oci", input=data, check=True).stdout.decode().strip()
    res = {r["paths"][0]: r for r in json.loads(cli("dump", d, "--format", "json", check=True).stdout)["resources"]}
    assert res["/gone"]["type"] == "whiteout"
    assert res["/f"]["type"] == "file"  # the layer's own file hides the lower one anyway
    assert res["/d"]["type"] == "dir" and res["/d"].get("opaque")


def _appledouble(finder: bytes, rsrc: bytes) -> bytes:
    entries = [(9, finder), (2, rsrc)]
    off = 26 + 12 * len(entries)
    head = struct.pack(">II16sH", 0x00051607, 0x00020000, b"Mac OS X        ", len(entries))
    table, body = b"", b""
    for eid, data in entries:
        table += struct.pack(">III", eid, off + len(body), len(data))
        body += data
    return head + table + body


@pytest.mark.parametrize("mode", ["fold", "drop", "keep"])
def test_appledouble_members(cli, mode):
    finder = b"TEXTttxt" + bytes(24)
    data = tar(
        member(b"doc/", typ=b"5"),
        member(b"doc/._note.txt", _appledouble(finder, b"RSRC")),
        member(b"doc/note.txt", b"hello"),
        member(b"__MACOSX/", typ=b"5"),
        member(b"__MACOSX/doc/._other", _appledouble(finder, b"")),
    )
    p = cli("ingest", "--tar", "-", "--appledouble", mode, input=data, check=True)
    d = p.stdout.decode().strip()
    res = {
        q: r for r in json.loads(cli("dump", d, "--format", "json", check=True).stdout)["resources"] for q in r["paths"]
    }
    if mode == "keep":
        assert "/doc/._note.txt" in res and "/__MACOSX/doc/._other" in res
        return
    assert "/doc/._note.txt" not in res and not any(k.startswith("/__MACOSX") for k in res)
    assert b"AppleDouble" in p.stderr  # never left out silently
    xattrs = res["/doc/note.txt"].get("xattrs", {})
    if mode == "fold":
        assert set(xattrs) == {"com.apple.FinderInfo", "com.apple.ResourceFork"}
    else:
        assert xattrs == {}


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a whiteout needs root")
def test_whiteout_permission_bits_survive_reencoding(cli, tmp_path: Path):
    """overlay char 0/0 -> manifest -> OCI .wh. member -> manifest -> overlay: mode bits and owner kept."""
    up = tmp_path / "upper"
    up.mkdir()
    (up / "f").write_bytes(b"1")
    os.mknod(up / "gone", stat.S_IFCHR | 0o640, os.makedev(0, 0))
    os.chmod(up / "gone", 0o640)
    os.chown(up / "gone", 123, 456)
    d1 = cli("ingest", "--whiteouts", "overlay", up, check=True).stdout.decode().strip()
    assert '"mode": "0640"' in cli("dump", d1, "--format", "json", check=True).stdout.decode()
    layer = tmp_path / "layer.tar"
    cli("export", d1, "--whiteouts", "oci", "-o", layer, check=True)
    wh = tarfile.open(layer).getmember(".wh.gone")
    assert (wh.mode & 0o7777, wh.uid, wh.gid) == (0o640, 123, 456)
    d2 = cli("ingest", "--tar", layer, "--whiteouts", "oci", check=True).stdout.decode().strip()
    assert d2 == d1
    for form, name in (("overlay", "gone"), ("oci", ".wh.gone")):
        out = tmp_path / f"back-{form}"
        cli("checkout", d2, out, "--whiteouts", form, check=True)
        st = os.lstat(out / name)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 123, 456), form
