"""One path source: a manifest whose `path` and `raw_path` fields disagree is refused by every verb,
and the fast readers of indexed manifests (``entries.split_entries``) never hand out a path the validator
did not see (issue 11, item 5)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from castore._pb import manifest_pb2 as pb
from castore.digest import hash_bytes
from castore.manifest import codec
from castore.manifest.entries import split_entries
from castore.store import Store
from castore.testing.trees import write
from tests.helpers import run_cli

PAYLOAD = b"payload\n"
DG = hash_bytes(PAYLOAD)


def crafted(text: str, raw: bytes) -> bytes:
    """A manifest with one file whose field `path` says ``text`` and `raw_path` says ``raw``."""
    msg = pb.Manifest()
    msg.resource.add(path=["/d"], mode=0o20000000755)  # a directory
    msg.resource.add(path=[text], raw_path=[raw], mode=0o644, size=len(PAYLOAD), digest=[DG])
    return msg.SerializeToString()


EVIL = crafted("/../../escaped/x", b"/d/x")


def _deep(tmp_path: Path, name: str) -> Path:
    """A target three levels below tmp_path/name: '../..' from its staging dir lands in tmp_path/name/a."""
    base = tmp_path / name / "a" / "b"
    base.mkdir(parents=True)
    return base / "t"


def _escaped(tmp_path: Path) -> list[str]:
    return [os.path.join(d, n) for d, ds, fs in os.walk(tmp_path) for n in ds + fs if n == "escaped"]


@pytest.fixture
def seeded(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    write(tmp_path / "src" / "f", PAYLOAD)
    write(tmp_path / "src2" / "evil.pb", EVIL)  # its bytes become a blob of the store
    assert run_cli("ingest", tmp_path / "src", store=store).returncode == 0
    assert run_cli("ingest", tmp_path / "src2", store=store).returncode == 0
    return store


def _refused(p: object) -> None:
    assert p.returncode == 3, p.stderr  # type: ignore[attr-defined]
    err = p.stderr  # type: ignore[attr-defined]
    assert err.startswith(b"continuity: error:") and err.count(b"\n") == 1 and b"raw_path" in err, err


def test_disagreeing_raw_path_refused_by_every_verb(tmp_path: Path, seeded: Path) -> None:
    mf = tmp_path / "evil.pb"
    mf.write_bytes(EVIL)
    for link in ("hardlink", "copy", "auto"):
        _refused(run_cli("checkout", mf, _deep(tmp_path, f"co-{link}"), "--link", link, store=seeded))
    root = _deep(tmp_path, "apply")
    root.mkdir()
    _refused(run_cli("apply", root, mf, store=seeded))
    assert os.listdir(root) == []
    _refused(run_cli("verify", root, mf, store=seeded))
    _refused(run_cli("diff", mf, mf, store=seeded))
    _refused(run_cli("export", mf, "-o", tmp_path / "out.tar", store=seeded))
    _refused(run_cli("tag", mf, "evil", store=seeded))
    assert _escaped(tmp_path) == []
    assert not (tmp_path / "out.tar").exists()


def test_agreeing_raw_path_still_reads(tmp_path: Path, seeded: Path) -> None:
    mf = tmp_path / "ok.pb"
    mf.write_bytes(crafted("/d/caf\\xe9", b"/d/caf\xe9"))  # a non-UTF-8 name, as codec.dumps writes it
    target = tmp_path / "out"
    assert run_cli("checkout", mf, target, "--link", "hardlink", store=seeded).returncode == 0
    assert os.listdir(os.fsencode(target / "d")) == [b"caf\xe9"]


def test_rebuilt_index_does_not_index_a_hand_made_encoding(tmp_path: Path, seeded: Path) -> None:
    """fsck --rebuild-index indexes a blob as a manifest only in the encoding commit writes."""
    digest = "sha256:" + hashlib.sha256(EVIL).hexdigest()
    p = run_cli("fsck", "--rebuild-index", store=seeded)
    assert p.returncode == 0, p.stderr
    s = Store.open(str(seeded), create=False)
    assert not s.manifest_indexed(digest)
    s.meta.close()
    for link in ("hardlink", "copy"):
        p = run_cli("checkout", digest, _deep(tmp_path, f"co-{link}"), "--link", link, store=seeded)
        # refused: as a blob that is not a recorded manifest (4), or, were it ever taken for one, as unsafe (3)
        assert p.returncode in (3, 4), p.stderr
    assert _escaped(tmp_path) == []


def test_indexed_hand_made_encoding_never_used(tmp_path: Path, seeded: Path) -> None:
    """A store whose index already lists such a manifest (an older rebuild): its paths are checked where used."""
    digest = "sha256:" + hashlib.sha256(EVIL).hexdigest()
    s = Store.open(str(seeded), create=False)
    s.meta.write(lambda t: s.record_manifest(t, digest, [DG]))
    assert s.manifest_indexed(digest)
    s.meta.close()
    for link in ("hardlink", "copy"):
        p = run_cli("checkout", digest, _deep(tmp_path, f"co-{link}"), "--link", link, store=seeded)
        assert p.returncode == 3, p.stderr
        assert p.stderr.startswith(b"continuity: error:") and p.stderr.count(b"\n") == 1
    root = _deep(tmp_path, "apply")
    root.mkdir()
    p = run_cli("apply", root, digest, store=seeded)
    assert p.returncode == 3, p.stderr
    assert os.listdir(root) == []
    assert _escaped(tmp_path) == []
    p = run_cli("fsck", "--read-data", store=seeded)  # and fsck says so
    assert p.returncode == 4 and digest.encode() in p.stdout + p.stderr, p.stdout + p.stderr


def test_split_entries_paths_are_the_decoded_ones() -> None:
    for data in (EVIL, crafted("/d/x", b"/../x")):
        with pytest.raises(Exception) as exc:
            split_entries(data)
        assert "raw_path" in str(exc.value) or "invalid path" in str(exc.value)
    ok = crafted("/d/caf\\xe9", b"/d/caf\xe9")
    assert split_entries(ok)[1] == [tuple(r.paths) for r in codec.loads(ok).resources]
