"""verify: every difference, one line each; options; JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

from castore.build import build
from castore.manifest import dumps
from castore.testing.trees import rich_tree, write
from castore.verify import VerifyOptions, verify_tree
from tests.helpers import ROOT, run_cli


def test_clean_tree_verifies(tmp_path: Path) -> None:
    root = rich_tree(tmp_path / "src")
    assert verify_tree(str(root), build(str(root))) == []


def test_every_difference_reported(tmp_path: Path) -> None:
    root = rich_tree(tmp_path / "src")
    m = build(str(root))
    os.chmod(root / "bin/su", 0o755)  # mode
    (root / "etc/empty1").write_bytes(b"now full")  # size, digest, mtime
    os.unlink(root / "etc/rel")
    os.symlink("elsewhere", root / "etc/rel")  # target
    os.unlink(root / "etc/fifo")  # missing
    write(root / "new", b"extra")  # extra
    os.setxattr(root / "bin/sg", "user.new", b"1")  # xattr
    os.utime(root / "bin/sg", ns=(5, 5))  # mtime
    os.unlink(root / "etc/hosts.allow")
    write(root / "etc/hosts.allow", b"127.0.0.1 localhost\n")  # hardlink structure
    if ROOT:
        os.chown(root / "etc/empty2", 4242, 4343, follow_symlinks=False)  # uid, gid
    found = verify_tree(str(root), m)
    got = {(d.path, d.attr) for d in found}
    want = {
        ("/bin/su", "mode"),
        ("/etc/empty1", "size"),
        ("/etc/empty1", "digest"),
        ("/etc/rel", "target"),
        ("/etc/fifo", "missing"),
        ("/new", "extra"),
        ("/bin/sg", "xattr"),
        ("/bin/sg", "mtime"),
        ("/etc/hosts", "links"),
    }
    if ROOT:
        want |= {("/etc/empty2", "uid"), ("/etc/empty2", "gid")}
    assert want <= got, sorted(want - got)
    ign = VerifyOptions(ignore=frozenset({"mode", "size", "digest", "mtime", "xattr", "target", "links", "uid", "gid"}))
    rest = {(d.path, d.attr) for d in verify_tree(str(root), m, ign)}
    assert rest == {("/etc/fifo", "missing"), ("/new", "extra")}


def test_ignore_mode_bits_and_disable_digest(tmp_path: Path) -> None:
    root = tmp_path / "src"
    write(root / "f", b"abc", 0o644)
    m = build(str(root))
    os.chmod(root / "f", 0o664)
    assert verify_tree(str(root), m, VerifyOptions(ignore_mode_bits=0o020)) == []
    with open(root / "f", "r+b") as f:
        f.write(b"xyz")
    st = os.stat(root / "f")
    os.utime(root / "f", ns=(st.st_atime_ns, m.by_path()["/f"].mtime_ns))  # type: ignore[arg-type]
    assert verify_tree(str(root), m, VerifyOptions(disable_digest=True, ignore_mode_bits=0o020)) == []
    assert [d.attr for d in verify_tree(str(root), m, VerifyOptions(ignore_mode_bits=0o020))] == ["digest"]


def test_sockets_ignored_unless_asked(tmp_path: Path) -> None:
    import socket

    root = tmp_path / "src"
    write(root / "f", b"x")
    m = build(str(root))
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(root / "sock"))
    s.close()
    assert verify_tree(str(root), m) == []
    assert [d.attr for d in verify_tree(str(root), m, VerifyOptions(sockets=True))] == ["extra"]


def test_cli_verify_exit_codes_and_json(tmp_path: Path) -> None:
    root = rich_tree(tmp_path / "src")
    mf = tmp_path / "m.pb"
    mf.write_bytes(dumps(build(str(root))))
    st = tmp_path / "st"
    assert run_cli("verify", root, mf, store=st).returncode == 0
    os.chmod(root / "bin/su", 0o700)
    (root / "etc/empty2").write_bytes(b"z")
    p = run_cli("verify", root, mf, store=st)
    assert p.returncode == 1
    assert b"/bin/su" in p.stdout and b"/etc/empty2" in p.stdout
    j = run_cli("verify", root, mf, "--json", store=st)
    assert j.returncode == 1
    data = json.loads(j.stdout)
    assert not data["ok"] and {d["path"] for d in data["differences"]} >= {"/bin/su", "/etc/empty2"}
    assert run_cli("verify", root, mf, "--ignore-attr", "bogus", store=st).returncode == 2
    assert run_cli("verify", root, mf, "--ignore-mode-bits", "9z", store=st).returncode == 2
    assert (
        run_cli(
            "verify", root, mf, "--ignore-attr", "mode", "--ignore-attr", "content", "--ignore-attr", "mtime", store=st
        ).returncode
        == 0
    )


def test_cli_ls_dump_stats_diff_du(tmp_path: Path) -> None:
    root = rich_tree(tmp_path / "src")
    st = tmp_path / "st"
    mf = tmp_path / "m.pb"
    mf.write_bytes(dumps(build(str(root))))
    ls = run_cli("ls", mf, store=st)
    assert ls.returncode == 0 and b"/etc/hosts.allow\n" in ls.stdout
    assert run_cli("ls", "-l", mf, store=st).returncode == 0
    assert b'path: "/etc/hosts"' in run_cli("dump", mf, store=st).stdout
    assert json.loads(run_cli("dump", "--format", "json", mf, store=st).stdout)["resources"]
    stats = json.loads(run_cli("stats", "--json", mf, store=st).stdout)
    assert stats["hardlinks"] == 1 and stats["symlinks"] == 3 and stats["fifos"] == 1
    assert run_cli("diff", mf, root, store=st).returncode == 0
    os.chmod(root / "bin/su", 0o700)
    write(root / "added", b"a")
    os.unlink(root / "etc/empty1")
    (root / "etc/empty2").write_bytes(b"changed")
    d = run_cli("diff", mf, root, "--json", store=st)
    assert d.returncode == 1
    kinds = {c["path"]: c["change"] for c in json.loads(d.stdout)["changes"]}
    assert kinds["/added"] == "added" and kinds["/etc/empty1"] == "deleted"
    assert kinds["/etc/empty2"] == "modified" and kinds["/bin/su"] == "metadata"
    du = json.loads(run_cli("du", "--json", mf, store=st).stdout)
    assert du["size"] == 20 + 4 + 5  # hosts counted once


def test_missing_manifest_and_garbage(tmp_path: Path) -> None:
    st = tmp_path / "st"
    root = tmp_path / "src"
    write(root / "f", b"x")
    junk = tmp_path / "junk.pb"
    junk.write_bytes(b"\xff\xff\xff garbage")
    p = run_cli("verify", root, junk, store=st)
    assert p.returncode == 4 and p.stderr.startswith(b"continuity: error:")
    empty = tmp_path / "empty.pb"
    empty.write_bytes(b"\x7a\x00")  # parses, no entry: only zero bytes are the empty manifest
    assert run_cli("ls", empty, store=st).returncode == 4
    assert run_cli("ls", tmp_path / "none.pb", store=st).returncode == 1
