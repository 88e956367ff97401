"""`continuity build`'s bytes come from build_encoded (plain files encoded by the hashing workers):
they must equal codec.dumps(build()) on every kind of tree."""

from __future__ import annotations

import os
from pathlib import Path

from castore.build import WalkOptions, build, build_encoded
from castore.manifest import dumps
from castore.testing.trees import rich_tree, upstream_tree
from tests.helpers import run_cli


def _same(root: Path, opts: WalkOptions | None = None) -> bytes:
    data = build_encoded(str(root), opts)
    assert data == dumps(build(str(root), opts))
    return data


def test_rich_trees(tmp_path: Path) -> None:
    rich_tree(tmp_path / "rich")
    upstream_tree(tmp_path / "up")
    for name in ("rich", "up"):
        _same(tmp_path / name)


def test_mixed_names_links_xattrs_and_sparse(tmp_path: Path) -> None:
    root = tmp_path / "t"
    (root / "d" / "sub").mkdir(parents=True)
    for i in range(300):  # several worker batches, names in an order the walk does not give
        (root / "d" / f"f{(i * 7919) % 300:03d}").write_bytes(os.urandom(i % 40))
    (root / "d" / "sub" / "z").write_bytes(b"")
    os.link(root / "d" / "f001", root / "hard")  # nlink 2: through the model
    (root / "x").write_bytes(b"with xattr")
    os.setxattr(root / "x", "user.k", b"v")
    with open(os.path.join(os.fsencode(root), b"caf\xe9-latin1"), "wb") as f:  # not UTF-8: the library escapes
        f.write(b"raw name")
    (root / "caf\u00e9").write_bytes(b"utf-8 name")
    os.symlink("d/f001", root / "link")
    with open(root / "sparse", "wb") as f:
        f.truncate(1 << 20)
        f.seek(1 << 19)
        f.write(b"x")
    os.chmod(root / "d" / "f002", 0o4755)
    os.chown(root / "d" / "f003", 1234, 5678)
    _same(root)
    _same(root, WalkOptions(ignore=("f00*",)))


def test_cli_build_writes_the_same_bytes(tmp_path: Path) -> None:
    rich_tree(tmp_path / "rich")
    p = run_cli("build", tmp_path / "rich", check=True)
    assert p.stdout == dumps(build(str(tmp_path / "rich")))
