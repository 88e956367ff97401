"""An empty directory is a valid tree: its manifest is zero bytes (as upstream's), accepted by every verb."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from tests.helpers import run_cli

EMPTY = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_empty_dir_builds_and_ingests(tmp_path: Path) -> None:
    st = tmp_path / "store"
    empty = tmp_path / "empty"
    empty.mkdir()
    p = run_cli("build", empty, check=True)
    assert p.stdout == b""
    mf = tmp_path / "empty.pb"
    mf.write_bytes(p.stdout)
    assert run_cli("ingest", empty, "--name", "e", store=st, check=True).stdout.decode().strip() == EMPTY
    assert run_cli("ls", "e", store=st, check=True).stdout == b""
    assert run_cli("ls", mf, store=st, check=True).stdout == b""
    assert b"entries: 0" in run_cli("stats", "e", store=st, check=True).stdout
    out = tmp_path / "out"
    run_cli("checkout", "e", out, store=st, check=True)
    assert os.listdir(out) == []
    run_cli("verify", out, "e", store=st, check=True)
    run_cli("verify", out, mf, store=st, check=True)
    run_cli("diff", "e", mf, store=st, check=True)
    (out / "x").write_bytes(b"1")
    assert run_cli("verify", out, "e", store=st).returncode == 1
    run_cli("apply", out, "e", "--delete", store=st, check=True)
    assert os.listdir(out) == []
    assert run_cli("tag", mf, "e2", store=st, check=True).stdout.decode().strip() == EMPTY
    tar = tmp_path / "e.tar"
    run_cli("export", "e", "-o", tar, store=st, check=True)
    assert run_cli("ingest", "--tar", tar, store=st, check=True).stdout.decode().strip() == EMPTY
    run_cli("gc", "--grace", "0", store=st, check=True)
    run_cli("fsck", store=st, check=True)
    run_cli("checkout", "e2", tmp_path / "out2", store=st, check=True)


def test_empty_manifest_shares_its_digest_with_empty_content(tmp_path: Path) -> None:
    """sha256 of zero bytes is both the empty manifest and an empty file's content: gc/fsck keep both sound."""
    st = tmp_path / "store"
    (tmp_path / "empty").mkdir()
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "zero").write_bytes(b"")
    run_cli("ingest", tmp_path / "t", "--name", "t", store=st, check=True)
    run_cli("ingest", tmp_path / "empty", "--name", "e", store=st, check=True)
    for drop in ("t", "e"):
        run_cli("rm", drop, store=st, check=True)
        run_cli("gc", "--grace", "0", store=st, check=True)
        run_cli("fsck", store=st, check=True)
        keep = "e" if drop == "t" else None
        if keep:
            run_cli("checkout", keep, tmp_path / f"co-{drop}", store=st, check=True)


def test_bytes_without_entries_are_still_refused(tmp_path: Path) -> None:
    st = tmp_path / "store"
    for data in (b"garbage", b"\x7a\x00", b"\x08\x01"):  # unparsable; parsable but only unknown fields
        f = tmp_path / "bad.pb"
        f.write_bytes(data)
        p = run_cli("ls", f, store=st)
        assert p.returncode == 4, (data, p.stderr)
    p = run_cli("ingest", "--tar", "-", input=b"", store=st)  # zero bytes are not a tar (no end marker)
    assert p.returncode == 4


def test_tar_without_members_is_the_empty_tree(tmp_path: Path) -> None:
    buf = io.BytesIO()
    tarfile.open(fileobj=buf, mode="w").close()
    p = run_cli("ingest", "--tar", "-", input=buf.getvalue(), store=tmp_path / "store", check=True)
    assert p.stdout.decode().strip() == EMPTY
