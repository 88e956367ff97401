"""checkout/apply options: --ignore-attr (not applied), ADS said and verified, --devices check."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest

from castore.build import build
from castore.manifest import dumps
from castore.manifest.model import AdsEntry, Manifest, RegularFile
from tests.helpers import ROOT, needs_root, run_cli


def meta_tree(root: Path) -> Path:
    root.mkdir()
    (root / "d").mkdir()
    f = root / "d" / "f"
    f.write_bytes(b"content")
    os.chmod(f, 0o640)
    x = root / "x"
    x.write_bytes(b"#!/bin/sh\n")
    os.chmod(x, 0o750)
    os.setxattr(f, "user.tag", b"v")
    os.utime(f, ns=(10**18, 10**18))
    if ROOT:
        os.chown(f, 4321, 8765)
    return root


@pytest.mark.parametrize("verb", ["checkout", "apply"])
def test_ignore_attr_leaves_attribute_unapplied(tmp_path: Path, verb: str) -> None:
    st = tmp_path / "store"
    src = meta_tree(tmp_path / "src")
    digest = run_cli("ingest", src, store=st, check=True).stdout.decode().strip()
    out = tmp_path / "out"
    args = ["--ignore-attr", "mode", "--ignore-attr", "xattr", "--ignore-attr", "mtime", "--ignore-attr", "owner"]
    if verb == "checkout":
        run_cli("checkout", digest, out, *args, store=st, check=True)
    else:
        out.mkdir()
        run_cli("apply", out, digest, *args, store=st, check=True)
    f = out / "d" / "f"
    assert f.read_bytes() == b"content"
    s = os.lstat(f)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(s.st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(os.lstat(out / "x").st_mode) == 0o777 & ~umask  # x bits kept
    assert os.listxattr(f) == []
    assert s.st_mtime_ns != 10**18
    assert (s.st_uid, s.st_gid) == (os.geteuid(), os.getegid())
    # verify agrees once told the same; without, it reports exactly those attributes
    run_cli("verify", out, digest, *args, store=st, check=True)
    p = run_cli("verify", out, digest, "--json", store=st)
    import json

    attrs = {d["attr"] for d in json.loads(p.stdout)["differences"]}
    assert attrs == {"mode", "xattr", "mtime"} | ({"uid", "gid"} if ROOT else set())


def test_ignore_attr_refuses_what_cannot_be_left_out(tmp_path: Path) -> None:
    for verb_args in (("checkout", "x", str(tmp_path / "o")), ("apply", str(tmp_path), "x")):
        p = run_cli(*verb_args, "--ignore-attr", "digest", store=tmp_path / "store")
        assert p.returncode == 2 and b"cannot be left unapplied" in p.stderr


def test_ads_not_materialized_is_said_and_verified(tmp_path: Path) -> None:
    st = tmp_path / "store"
    src = tmp_path / "src"
    src.mkdir()
    (src / "doc").write_bytes(b"text")
    (src / "plain").write_bytes(b"plain")
    m = build(str(src))
    res = [
        dataclasses.replace(
            r, ads=(AdsEntry("Zone.Identifier", b"[ZoneTransfer]\r\nZoneId=3"), AdsEntry("extra", b"1"))
        )
        if isinstance(r, RegularFile) and r.path == "/doc"
        else r
        for r in m.resources
    ]
    mf = tmp_path / "ads.pb"
    mf.write_bytes(dumps(Manifest.of(res)))
    run_cli("ingest", src, store=st, check=True)  # the content
    digest = run_cli("tag", mf, "ads", store=st, check=True).stdout.decode().strip()
    for link in ("copy", "hardlink"):
        out = tmp_path / f"out-{link}"
        p = run_cli("checkout", digest, out, "--link", link, store=st, check=True)
        assert b"2 alternate data streams not materialized" in p.stderr, p.stderr
        assert p.stderr.count(b"\n") == 1
    out = tmp_path / "out-copy"
    p = run_cli("verify", out, digest, store=st)
    assert p.returncode == 1
    assert p.stdout.decode().splitlines() == [
        "/doc: ads differs: expected 2 alternate data stream(s) {Zone.Identifier, extra}, got no alternate data stream"
    ]
    run_cli("verify", out, digest, "--ignore-attr", "ads", store=st, check=True)
    p = run_cli("apply", tmp_path / "out-copy", digest, store=st, check=True)
    assert b"2 alternate data streams not materialized" in p.stderr
    # diff between manifests sees ADS changes too
    plain = tmp_path / "plain.pb"
    plain.write_bytes(dumps(m))
    p = run_cli("diff", plain, mf, store=st)
    assert p.returncode == 1 and p.stdout.decode().splitlines() == ["M /doc (ads)"]


@needs_root
def test_devices_check_on_checkout_fails_clearly(tmp_path: Path) -> None:
    st = tmp_path / "store"
    src = tmp_path / "src"
    src.mkdir()
    os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (src / "f").write_bytes(b"1")
    digest = run_cli("ingest", src, store=st, check=True).stdout.decode().strip()
    out = tmp_path / "out"
    p = run_cli("checkout", digest, out, "--devices", "check", store=st)
    assert p.returncode == 1, p.stderr
    err = p.stderr.decode().splitlines()
    assert err[-1].startswith("continuity: error: ") and "/null" in err[-1] and "--devices" in err[-1], err
    assert not out.exists()  # all or nothing
