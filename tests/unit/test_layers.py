"""castore.remote.layers: flattening layer manifests the way a runtime extracts them (pure, no IO)."""

from __future__ import annotations

from castore.manifest.model import Directory, Manifest, RegularFile, Symlink, Whiteout
from castore.remote.layers import flatten

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def f(*paths: str, d: str = D1, perm: int = 0o644) -> RegularFile:
    return RegularFile(paths=paths, size=1, digest=d, perm=perm)


def m(*rs: object) -> Manifest:
    return Manifest.of(list(rs))  # type: ignore[arg-type]


def paths(man: Manifest) -> dict[str, object]:
    return man.by_path()


def test_whiteout_removes_subtree_and_opaque_hides_lower() -> None:
    base = m(
        Directory(paths=("/a",)),
        f("/a/x"),
        Directory(paths=("/a/sub",)),
        f("/a/sub/y"),
        Directory(paths=("/o",), perm=0o700),
        f("/o/old"),
        f("/keep"),
    )
    upper = m(Whiteout(paths=("/a/sub",)), Directory(paths=("/o",), opaque=True), f("/o/new", d=D2))
    got = paths(flatten([base, upper]))
    assert set(got) == {"/a", "/a/x", "/o", "/o/new", "/keep"}
    assert got["/o"].perm == 0o700  # type: ignore[attr-defined]  # an opaque marker only keeps the attributes
    assert not any(isinstance(r, (Whiteout,)) or getattr(r, "opaque", False) for r in got.values())


def test_replacements() -> None:
    base = m(
        Directory(paths=("/d",)),
        f("/d/in"),
        f("/file"),
        Directory(paths=("/dir",), perm=0o755),
        f("/dir/c"),
        Symlink(paths=("/lnk",), target="x"),
    )
    upper = m(
        f("/d", d=D2),
        Directory(paths=("/file",)),
        f("/file/now"),
        Directory(paths=("/dir",), perm=0o711),
        f("/lnk/under"),
    )
    got = paths(flatten([base, upper]))
    assert isinstance(got["/d"], RegularFile) and "/d/in" not in got  # a file over a directory: subtree gone
    assert isinstance(got["/file"], Directory) and "/file/now" in got
    assert got["/dir"].perm == 0o711 and "/dir/c" in got  # type: ignore[attr-defined]  # dir over dir keeps children
    assert "/lnk" not in got and "/lnk/under" in got  # a non-directory in the way becomes an implicit directory


def test_hardlink_keeps_other_names() -> None:
    base = m(f("/a", "/b", "/c"))
    upper = m(Whiteout(paths=("/b",)), f("/c", d=D2))
    got = flatten([base, upper])
    files = {r.digest: r.paths for r in got.files()}
    assert files == {D1: ("/a",), D2: ("/c",)}
