"""Hostile manifests and targets: refused with exit 3/4, nothing written outside, no staging left."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from castore._pb import manifest_pb2 as pb
from castore.digest import hash_bytes
from castore.manifest import gomode as gm
from castore.testing.trees import write
from tests.helpers import run_cli

PAYLOAD = b"payload\n"
DG = hash_bytes(PAYLOAD)


def manifest(*resources: dict[str, object]) -> bytes:
    msg = pb.Manifest()
    for r in resources:
        msg.resource.add(**r)
    return msg.SerializeToString()


def f(path: str, **kw: object) -> dict[str, object]:
    return {"path": [path], "mode": 0o644, "size": len(PAYLOAD), "digest": [DG], **kw}


HOSTILE = {
    "dotdot": manifest(f("/../escaped")),
    "absolute-ish": manifest(f("//etc/passwd")),
    "relative": manifest(f("etc/passwd")),
    "empty-path": manifest(f("")),
    "dot": manifest(f("/a/./b")),
    "trailing": manifest(f("/a/")),
    "nul": manifest(f("/a\x00b")),
    "duplicate": manifest(f("/a"), f("/a")),
    "under-symlink": manifest({"path": ["/a"], "mode": gm.MODE_SYMLINK | 0o777, "target": "/tmp"}, f("/a/pwned")),
    "under-file": manifest(f("/a"), f("/a/b")),
    "dir-with-size": manifest({"path": ["/d"], "mode": gm.MODE_DIR | 0o755, "size": 5}),
    "symlink-digest": manifest({"path": ["/l"], "mode": gm.MODE_SYMLINK | 0o777, "target": "x", "digest": [DG]}),
    "unknown-type": manifest({"path": ["/x"], "mode": 1 << 28}),
    "bad-digest": manifest({"path": ["/a"], "mode": 0o644, "size": 8, "digest": ["sha256:1234"]}),
    "hardlink-dotdot": manifest({"path": ["/a", "/../b"], "mode": 0o644, "size": 8, "digest": [DG]}),
    "huge-device": manifest({"path": ["/d"], "mode": gm.MODE_DEVICE | gm.MODE_CHAR_DEVICE, "major": 1 << 40}),
}
CORRUPT = {
    "garbage": b"\xff\xff\xff\xff not a manifest",
    "no-entries": b"\x7a\x00",  # parses, but only zero bytes are the empty manifest
    "truncated": manifest(f("/a"), f("/b"))[:-7],
}


@pytest.fixture
def seeded(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    src = tmp_path / "src"
    write(src / "f", PAYLOAD)
    assert run_cli("ingest", src, store=store).returncode == 0
    return store


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_manifest_refused(tmp_path: Path, seeded: Path, name: str) -> None:
    mf = tmp_path / f"{name}.pb"
    mf.write_bytes(HOSTILE[name])
    before = set(os.listdir(tmp_path))
    p = run_cli("checkout", mf, tmp_path / "out" / "target", store=seeded)
    assert p.returncode == 3, p.stderr
    assert p.stderr.startswith(b"continuity: error:") and p.stderr.count(b"\n") == 1
    assert set(os.listdir(tmp_path)) == before
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_corrupt_manifest_refused(tmp_path: Path, seeded: Path, name: str) -> None:
    mf = tmp_path / f"{name}.pb"
    mf.write_bytes(CORRUPT[name])
    p = run_cli("checkout", mf, tmp_path / "out", store=seeded)
    assert p.returncode in (3, 4), p.stderr
    assert not (tmp_path / "out").exists()


def test_size_that_lies_and_unknown_digest(tmp_path: Path, seeded: Path) -> None:
    lie = tmp_path / "lie.pb"
    lie.write_bytes(manifest(f("/a", size=3)))
    p = run_cli("checkout", lie, tmp_path / "out", store=seeded)
    assert p.returncode == 4 and not (tmp_path / "out").exists()
    unknown = tmp_path / "unknown.pb"
    unknown.write_bytes(manifest({"path": ["/a"], "mode": 0o644, "size": 1, "digest": [hash_bytes(b"?")]}))
    p = run_cli("checkout", unknown, tmp_path / "out", store=seeded)
    assert p.returncode == 4 and b"not found" in p.stderr and not (tmp_path / "out").exists()
    assert [n for n in os.listdir(tmp_path) if ".continuity-" in n] == []


def test_target_symlink_nonempty_and_file(tmp_path: Path, seeded: Path) -> None:
    good = tmp_path / "good.pb"
    good.write_bytes(manifest(f("/a")))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, tmp_path / "link")
    assert run_cli("checkout", good, tmp_path / "link", store=seeded).returncode == 3
    assert os.listdir(elsewhere) == []
    write(tmp_path / "full/keep", b"k")
    assert run_cli("checkout", good, tmp_path / "full", store=seeded).returncode == 3
    assert os.listdir(tmp_path / "full") == ["keep"]
    write(tmp_path / "plain", b"p")
    assert run_cli("checkout", good, tmp_path / "plain", store=seeded).returncode == 3
    (tmp_path / "empty").mkdir()
    assert run_cli("checkout", good, tmp_path / "empty", store=seeded).returncode == 0
    assert (tmp_path / "empty/a").read_bytes() == PAYLOAD


def test_checkout_from_manifest_file_and_missing_name(tmp_path: Path, seeded: Path) -> None:
    p = run_cli("checkout", "no-such-name", tmp_path / "out", store=seeded)
    assert p.returncode == 1 and b"continuity: error:" in p.stderr
    p = run_cli("checkout", "sha256:" + "0" * 64, tmp_path / "out", store=seeded)
    assert p.returncode in (1, 4) and not (tmp_path / "out").exists()
