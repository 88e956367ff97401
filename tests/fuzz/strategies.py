"""Generators for the fuzz suite: valid manifests, and mutations of valid byte strings."""

from __future__ import annotations

import os
import posixpath

from hypothesis import strategies as st

from castore.digest import EMPTY_DIGEST, hash_bytes
from castore.manifest import (
    Chunk,
    Device,
    Directory,
    Manifest,
    NamedPipe,
    RegularFile,
    Socket,
    Symlink,
    Whiteout,
)
from castore.manifest.model import AdsEntry


def examples(n: int) -> int:
    """``n`` examples in the default ("ci") profile, 50x with HYPOTHESIS_PROFILE=long."""
    return n * 50 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else n


_text_names = st.text(
    st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=12
)
_raw_names = st.binary(min_size=1, max_size=10).filter(lambda b: b"/" not in b and b"\0" not in b).map(os.fsdecode)
names = st.one_of(_text_names, _raw_names, st.sampled_from(["a", "b", "...", ".a", "\\", " ", "-"])).filter(
    lambda n: n not in (".", "..")
)

digests = st.binary(max_size=8).map(hash_bytes)
perms = st.integers(0, 0o7777)
ids = st.integers(0, (1 << 32) - 2)
mtimes = st.none() | st.integers(-(1 << 63), (1 << 63) - 1)
xattr_lists = st.lists(
    st.tuples(
        st.sampled_from(["user.a", "user.b", "security.selinux", "trusted.x", "com.apple.q"]), st.binary(max_size=16)
    ),
    max_size=3,
    unique_by=lambda kv: kv[0],
).map(lambda kvs: tuple(sorted(kvs)))
ads_lists = st.lists(
    st.builds(AdsEntry, st.text(max_size=5), st.binary(max_size=5), st.just("") | digests), max_size=2
).map(tuple)


@st.composite
def file_content(draw: st.DrawFn) -> dict[str, object]:
    size = draw(st.integers(0, 1 << 40) | st.integers(0, 100))
    if size == 0:
        return {"size": 0, "digest": EMPTY_DIGEST}
    out: dict[str, object] = {"size": size, "digest": draw(digests)}
    if size > 1 and draw(st.booleans()):
        cuts = sorted(set(draw(st.lists(st.integers(1, size - 1), max_size=4))))
        bounds = [0, *cuts, size]
        out["chunks"] = tuple(Chunk(draw(digests), b, e) for b, e in zip(bounds, bounds[1:], strict=False))
    if size > 1 and draw(st.booleans()):
        pts = sorted(set(draw(st.lists(st.integers(0, size), min_size=2, max_size=6))))
        out["holes"] = tuple((b, e) for b, e in zip(pts[::2], pts[1::2], strict=False) if e > b)
    return out


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    """A valid manifest: a tree of every kind, hardlinks, xattrs, ADS, raw (non-UTF-8) names."""
    dirs = ["/"]
    taken: set[str] = set()
    out = []
    for _ in range(draw(st.integers(1, 8))):
        parent = draw(st.sampled_from(dirs))
        path = posixpath.join(parent, draw(names))
        if path in taken:
            continue
        taken.add(path)
        common = {
            "perm": draw(perms),
            "uid": draw(ids),
            "gid": draw(ids),
            "xattrs": draw(xattr_lists),
            "mtime_ns": draw(mtimes),
            "ads": draw(ads_lists),
        }
        kind = draw(
            st.sampled_from(["dir", "dir", "file", "file", "link", "symlink", "device", "fifo", "socket", "whiteout"])
        )
        if kind not in ("dir", "file", "link"):  # Linux allows user.* only on files and directories
            common["xattrs"] = tuple(kv for kv in common["xattrs"] if not kv[0].startswith("user."))
        if kind == "dir":
            dirs.append(path)
            out.append(Directory(paths=(path,), opaque=draw(st.booleans()), **common))
        elif kind in ("file", "link"):
            paths = [path]
            if kind == "link":
                other = posixpath.join(draw(st.sampled_from(dirs)), draw(names))
                if other not in taken:
                    taken.add(other)
                    paths.append(other)
            paths.sort(key=os.fsencode)
            out.append(RegularFile(paths=tuple(paths), **draw(file_content()), **common))
        elif kind == "symlink":
            target = draw(
                st.text(
                    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1, max_size=40
                )
            )
            out.append(Symlink(paths=(path,), target=target, **common))
        elif kind == "device":
            out.append(
                Device(
                    paths=(path,),
                    char=draw(st.booleans()),
                    major=draw(st.integers(0, 4095)),
                    minor=draw(st.integers(0, (1 << 20) - 1)),
                    **common,
                )
            )
        elif kind == "fifo":
            out.append(NamedPipe(paths=(path,), **common))
        elif kind == "socket":
            out.append(Socket(paths=(path,), **common))
        else:
            out.append(Whiteout(paths=(path,), **{**common, "perm": 0}))
    return Manifest.of(out)


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` with a few byte-level edits: flips, interesting bytes, deletions, insertions, truncation."""
    b = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "delete", "insert", "truncate", "copy"]))
        n = len(b)
        if not n:
            b += draw(st.binary(min_size=1, max_size=8))
            continue
        i = draw(st.integers(0, n - 1))
        if op == "flip":
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            b[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0x30, 0x37, 0x20, 0x2F, 0x2E, 0x0A, 0x3D]))
        elif op == "delete":
            del b[i : i + draw(st.integers(1, 600))]
        elif op == "insert":
            b[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "truncate":
            del b[i:]
        else:
            j = draw(st.integers(0, n - 1))
            k = draw(st.integers(1, 64))
            b[j : j + k] = b[i : i + k]
    return bytes(b)
