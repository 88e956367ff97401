"""Human-readable output: names with control characters or invalid UTF-8 never break a line or reach the
terminal raw (one escaping convention, castore.textsafe); every non-zero exit ends with one error line."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

from castore.textsafe import quote, safe_line
from tests.helpers import run_cli

# Every name below is one entry; each holds a byte that must not reach a terminal raw.
HOSTILE = [
    b"new\nline",
    b"esc\x1b[31mred",
    b"tab\there",
    b"bad\xffutf8",
    b"c1\xc2\x85nel",
    b"del\x7f",
    b"cr\rret",
    b"back\\slash",
    b"ls\xe2\x80\xa8sep",
]


def hostile_tree(root: Path) -> Path:
    root.mkdir()
    d = os.fsencode(root) + b"/dir\nname"
    os.mkdir(d)
    for i, n in enumerate(HOSTILE):
        with open(os.fsencode(root) + b"/" + n, "wb") as f:
            f.write(b"x" * i)
        with open(d + b"/" + n, "wb") as f:
            f.write(b"y" * i)
    os.symlink(b"target\nwith\x1bcontrols", os.fsencode(root) + b"/link\x1b")
    return root


def entries(root: Path) -> int:
    return sum(len(ds) + len(fs) for _, ds, fs in os.walk(root))


def assert_clean(out: bytes) -> None:
    """No raw control byte but the line ends (and tab separators the format puts), valid UTF-8, no C1."""
    text = out.decode("utf-8")  # strict: no invalid byte reaches the output
    bad = [c for c in text if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029"]
    assert not bad, (bad, text)


def lines(out: bytes) -> list[str]:
    assert_clean(out)
    return out.decode().splitlines()


def test_helper_convention() -> None:
    assert quote(os.fsdecode(b"a\nb\x1bc\td\xffe\\f\xc2\x85g\x7f")) == "a\\nb\\x1bc\\td\\xffe\\\\f\\u0085g\\x7f"
    assert quote("/plain/ascii name") == "/plain/ascii name"
    assert quote("/caf\u00e9") == "/caf\u00e9"  # printable non-ASCII stays
    assert safe_line("x\\y\nz") == "x\\y\\nz"  # a message keeps its backslashes


def test_listings_one_line_per_entry(tmp_path: Path) -> None:
    st = tmp_path / "store"
    src = hostile_tree(tmp_path / "src")
    n = entries(src)
    p = run_cli("ingest", src, "--name", "hostile", store=st, check=True)
    digest = p.stdout.decode().strip()
    assert_clean(p.stderr)

    for args in (("ls", digest), ("ls", "-l", "hostile")):
        p = run_cli(*args, store=st, check=True)
        got = lines(p.stdout)
        assert len(got) == n, got
        assert_clean(p.stderr)
    assert "/dir\\nname/new\\nline" in lines(run_cli("ls", digest, store=st).stdout)
    assert "/bad\\xffutf8" in lines(run_cli("ls", digest, store=st).stdout)
    assert any(
        line.endswith("/link\\x1b -> target\\nwith\\x1bcontrols")
        for line in lines(run_cli("ls", "-l", digest, store=st).stdout)
    )

    # list, history, stats, du: one line per row, whatever the tree holds
    assert len(lines(run_cli("list", store=st, check=True).stdout)) == 1
    assert len(lines(run_cli("history", "hostile", store=st, check=True).stdout)) == 1
    assert len(lines(run_cli("list", "--history", "hostile", store=st, check=True).stdout)) == 1
    stats = json.loads(run_cli("stats", digest, "--json", store=st, check=True).stdout)
    assert len(lines(run_cli("stats", digest, store=st, check=True).stdout)) == len(stats) - 1  # "schema" is JSON only
    odd = tmp_path / "du\ndir\x1b"
    os.rename(src, odd)
    p = run_cli("du", odd, store=st, check=True)
    assert lines(p.stdout) == [f"{p.stdout.decode().split(chr(9))[0]}\t{quote(str(odd))}"]
    os.rename(odd, src)

    # diff against an empty-ish tree: one line per change, as many as --json lists
    other = tmp_path / "other"
    other.mkdir()
    (other / "only").write_bytes(b"1")
    p = run_cli("diff", other, src, store=st)
    assert p.returncode == 1
    changes = json.loads(run_cli("diff", other, src, "--json", store=st).stdout)["changes"]
    assert len(lines(p.stdout)) == len(changes) == n + 1  # every hostile entry added, /only deleted
    assert lines(p.stderr)[-1].startswith("continuity: error: ")

    # verify after changing every file: one line per difference
    for dirpath, _, files in os.walk(os.fsencode(src)):
        for f in files:
            fp = os.path.join(dirpath, f)
            if not os.path.islink(fp):
                with open(fp, "ab") as fh:
                    fh.write(b"!")
    p = run_cli("verify", src, digest, "--ignore-attr", "mtime", store=st)
    assert p.returncode == 1
    found = json.loads(run_cli("verify", src, digest, "--ignore-attr", "mtime", "--json", store=st).stdout)
    assert len(lines(p.stdout)) == len(found["differences"]) > 2 * len(HOSTILE)
    err = lines(p.stderr)
    assert len([e for e in err if e.startswith("continuity: error:")]) == 1 and err[-1].startswith("continuity: error:")


def test_json_output_stays_valid(tmp_path: Path) -> None:
    st = tmp_path / "store"
    src = hostile_tree(tmp_path / "src")
    digest = run_cli("ingest", src, store=st, check=True).stdout.decode().strip()
    p = run_cli("dump", digest, "--format", "json", store=st, check=True)
    assert_clean(p.stdout)
    json.loads(p.stdout)
    p = run_cli("dump", digest, store=st, check=True)  # prototext: its own escapes, C1 and DEL included
    assert_clean(p.stdout)
    assert '"/c1\\302\\205nel"' in p.stdout.decode()
    p = run_cli("diff", tmp_path / "src", digest, "--json", store=st, check=True)
    assert json.loads(p.stdout) == {"schema": 1, "ok": True, "changes": []}


def test_fsck_report_names_paths_on_one_line(tmp_path: Path) -> None:
    st = tmp_path / "store"
    src = hostile_tree(tmp_path / "src")
    run_cli("ingest", src, "--name", "hostile", store=st, check=True)
    # damage every content blob: fsck names the affected paths (hostile ones) in its findings
    for dirpath, _, files in os.walk(st / "blobs"):
        for f in files:
            fp = os.path.join(dirpath, f)
            if os.path.getsize(fp) in range(1, len(HOSTILE)):
                os.chmod(fp, 0o644)
                with open(fp, "r+b") as fh:
                    fh.write(b"Z")
    p = run_cli("fsck", "-v", store=st)
    assert p.returncode == 4
    report = json.loads(run_cli("fsck", "-v", "--json", store=st).stdout)
    out = lines(p.stdout)
    assert len(out) == len(report["findings"]) + 1  # one line per finding, then the summary
    assert any("\\n" in line for line in out)
    err = lines(p.stderr)
    assert len(err) == 1 and err[0].startswith("continuity: error: store damaged")


def test_error_naming_a_hostile_path_is_one_line(tmp_path: Path) -> None:
    st = tmp_path / "store"
    src = hostile_tree(tmp_path / "src")
    digest = run_cli("ingest", src, store=st, check=True).stdout.decode().strip()
    target = tmp_path / "tgt\nsecond line\x1b[2J"
    target.mkdir()
    (target / "occupied").write_bytes(b"")
    for args in (
        ("checkout", digest, target),
        ("verify", os.fsdecode(b"/nonexistent/\xff\n"), digest),
        ("ls", "no\nsuch\x1bname"),
    ):
        p = run_cli(*args, store=st)
        assert p.returncode != 0
        err = lines(p.stderr)
        assert len(err) == 1 and err[0].startswith("continuity: error: "), err


def test_warning_naming_a_hostile_path_is_one_line(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in ("d/._bad\nname\x1b", "d/bad\nname\x1b"):
            ti = tarfile.TarInfo(name)
            ti.size = 3
            tf.addfile(ti, io.BytesIO(b"abc"))  # not a valid AppleDouble file: a note names it
    run_cli("init", store=tmp_path / "store", check=True)  # else ingest's first line says it makes the store
    p = run_cli("ingest", "--tar", "-", input=buf.getvalue(), store=tmp_path / "store", check=True)
    err = lines(p.stderr)
    assert len(err) == 1 and "bad\\nname\\x1b" in err[0], err
