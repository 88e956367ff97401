"""Hostile tar streams: each refused with one line, exit 3 (unsafe) or 4 (corrupt), nothing recorded,
quickly and in bounded memory."""

from __future__ import annotations

import gzip
import os
import time

import pytest

from castore.store import Store
from castore.tar.format import BLOCK, build_header
from tests.tar.craft import END, member, raw_header, tar

BIG = (1 << 63) - 1

VECTORS: list[tuple[str, bytes, int]] = [
    ("dotdot", tar(member(b"../escape", b"x")), 3),
    ("dotdot-inside", tar(member(b"a/../../escape", b"x")), 3),
    ("absolute", tar(member(b"/etc/evil", b"x")), 3),
    ("pax-path-dotdot", tar(member(b"ok", b"x", pax=[(b"path", b"../../evil")])), 3),
    ("under-symlink", tar(member(b"a", typ=b"2", linkname=b"/tmp"), member(b"a/pwned", b"x")), 3),
    ("under-symlink-dot", tar(member(b"./a", typ=b"2", linkname=b"."), member(b"a/b/c", b"x")), 3),
    ("under-file", tar(member(b"f", b"x"), member(b"f/g", b"y")), 3),
    ("hardlink-absolute", tar(member(b"h", typ=b"1", linkname=b"/etc/passwd")), 3),
    ("hardlink-escaping", tar(member(b"h", typ=b"1", linkname=b"../outside")), 3),
    ("hardlink-unseen", tar(member(b"h", typ=b"1", linkname=b"later"), member(b"later", b"x")), 3),
    ("hardlink-dir", tar(member(b"d/", typ=b"5"), member(b"h", typ=b"1", linkname=b"d")), 3),
    (
        "replace-full-dir",
        tar(member(b"d/", typ=b"5"), member(b"d/f", b"x"), member(b"d", typ=b"2", linkname=b"/tmp")),
        3,
    ),
    ("symlink-over-implicit-dir", tar(member(b"d/f", b"x"), member(b"d", typ=b"2", linkname=b"/tmp")), 3),
    ("huge-pax", tar(raw_header(b"././@PaxHeader", b"x", b"%011o\0" % (2 << 20))), 3),
    ("huge-longname", tar(raw_header(b"././@LongLink", b"L", b"%011o\0" % (1 << 30))), 3),
    ("pax-size-lies-long", tar(member(b"f", b"abc", pax=[(b"size", b"100000")]), end=False), 4),
    ("pax-size-lies-short", tar(member(b"f", b"a" * 3000, pax=[(b"size", b"10")]), member(b"g", b"x")), 4),
    (
        "pax-record-length-lies",
        tar(member(b"f", b"x", pax=[(b"path", b"f")]).replace(b"9 path=f\n", b"99 path=f\n")),
        4,
    ),
    ("pax-size-8eib-truncated", member(b"f", b"abc", pax=[(b"size", str(BIG).encode())], pad=False), 4),
    ("size-8eib-base256-truncated", raw_header(b"f", b"0", b"\x80" + BIG.to_bytes(11, "big")) + b"x" * 4096, 4),
    ("size-negative", raw_header(b"f", b"0", b"\xff" * 12) + END, 4),
    (
        "sparse-10-millions",
        tar(
            member(
                b"GNUSparseFile.0/s",
                b"5000000\n".ljust(BLOCK, b"\0"),
                pax=[
                    (b"GNU.sparse.major", b"1"),
                    (b"GNU.sparse.minor", b"0"),
                    (b"GNU.sparse.name", b"s"),
                    (b"GNU.sparse.realsize", b"1000"),
                ],
            )
        ),
        3,
    ),
    ("sparse-01-lying", tar(member(b"s", b"abc", pax=[(b"GNU.sparse.map", b"0,10"), (b"GNU.sparse.size", b"100")])), 4),
    (
        "sparse-8eib",
        tar(member(b"s", b"abc", pax=[(b"GNU.sparse.map", b"0,3"), (b"GNU.sparse.size", str(BIG).encode())])),
        3,
    ),
    ("bad-checksum", tar(member(b"f", b"x")[:148] + b"0000000\0" + member(b"f", b"x")[156:]), 4),
    ("garbage", os.urandom(4096), 4),
    ("empty", b"", 4),
    ("truncated-gzip", gzip.compress(tar(member(b"f", os.urandom(50000))))[:-2000], 4),
    ("no-end-marker", member(b"f", b"x"), 4),
    ("unknown-type", tar(member(b"v", b"", typ=b"V")), 3),
]


def _old_gnu_sparse_endless() -> bytes:
    # An 'S' header flagged "extended", then extension blocks that always say "one more".
    ext = bytearray(BLOCK)
    for i in range(21):
        ext[24 * i : 24 * i + 12] = b"%011o\0" % (i * 2)
        ext[24 * i + 12 : 24 * i + 24] = b"%011o\0" % 1
    ext[504] = 1
    head = raw_header(b"s", b"S", b"%011o\0" % 0, {482: b"\x01", 483: b"%011o\0" % 100})
    return head + bytes(ext) * 13000


ALL = VECTORS + [("old-gnu-sparse-endless", _old_gnu_sparse_endless(), 3)]


@pytest.mark.parametrize("how", ["pipe", "file"])
@pytest.mark.parametrize("case,data,code", ALL, ids=[v[0] for v in ALL])
def test_hostile_tar_is_refused(cli, tmp_path, case, data, code, how):
    # "file": a plain tar on disk is parsed header by header and its member data read by offset.
    t0 = time.monotonic()
    if how == "pipe":
        p = cli("ingest", "--tar", "-", "--name", "evil", input=data)
    else:
        (tmp_path / "evil.tar").write_bytes(data)
        p = cli("ingest", "--tar", tmp_path / "evil.tar", "--name", "evil")
    assert p.returncode == code, (case, p.returncode, p.stderr)
    err = p.stderr.decode()
    assert err.startswith("continuity: error: ") and err.count("\n") == 1, err
    assert time.monotonic() - t0 < 20
    if (tmp_path / "store" / "config").exists():
        assert Store.open(str(tmp_path / "store")).tags() == []
    tmp = tmp_path / "store" / "tmp"
    assert not tmp.exists() or not [n for n in os.listdir(tmp) if not n.startswith(".")]


def test_duplicate_members_last_wins(cli, tmp_path):
    data = tar(
        member(b"f", b"first"),
        member(b"h", typ=b"1", linkname=b"f"),
        member(b"f", b"second!"),
        member(b"d/", typ=b"5", mode=0o700),
        member(b"d/", typ=b"5", mode=0o751),
    )
    p = cli("ingest", "--tar", "-", input=data, check=True)
    cli("checkout", p.stdout.strip(), tmp_path / "out", check=True)
    assert (tmp_path / "out/f").read_bytes() == b"second!"
    assert (tmp_path / "out/h").read_bytes() == b"first"  # linked before the replacement, as tar -x
    assert os.stat(tmp_path / "out/d").st_mode & 0o777 == 0o751


def test_gnu_tar_agrees_on_last_wins(cli, tmp_path):
    data = tar(member(b"f", b"first"), member(b"f", b"second!"))
    (tmp_path / "t.tar").write_bytes(data)
    (tmp_path / "x").mkdir()
    os.system(f"tar -xf {tmp_path / 't.tar'} -C {tmp_path / 'x'}")
    assert (tmp_path / "x/f").read_bytes() == b"second!"


def test_member_under_symlink_replaced_by_dir_is_fine(cli):
    data = tar(member(b"a", typ=b"2", linkname=b"/tmp"), member(b"a/", typ=b"5"), member(b"a/f", b"x"))
    assert cli("ingest", "--tar", "-", input=data).returncode == 0


def test_header_block_prefix_and_v7_dir():
    # ustar prefix field joins name; a v7 regular member ending in '/' is a directory.
    from castore.tar.format import parse_header

    b = bytearray(build_header(name=b"leaf", mode=0o644, uid=0, gid=0, size=0, mtime=0, typ=b"0"))
    b[345:351] = b"pre/fx"
    b[148:156] = b" " * 8
    b[148:156] = b"%06o\0 " % sum(b)
    assert parse_header(bytes(b), 0).name == b"pre/fx/leaf"
