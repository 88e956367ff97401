"""Flatten image layers into one tree, as a container runtime extracts them (pure: no IO).

Every layer is a manifest as ``castore.tar.importer`` reads an OCI layer with
``--whiteouts oci``: a ``Whiteout`` entry deletes that path (and what is below
it) from the layers below, an ``opaque`` directory hides everything the layers
below have under it. Applied in order, bottom layer first:

1. the layer's whiteouts and opaque directories remove from the tree built so far;
2. its entries are added: an entry replaces what the tree had at its path; a
   directory over a directory keeps the children (its attributes are the new
   ones); anything else over a directory removes the whole subtree; an entry
   below a path the tree holds as a non-directory replaces that non-directory
   by an implicit directory.
3. A directory the layer lists only as opaque (no member of its own) keeps the
   attributes it had below.

Hardlinks are per layer (tar hardlinks cannot cross layers): a file replaced at
one of its names keeps its other names. The result has no whiteouts and no
opaque directories; it is validated by the caller's commit.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

from castore.manifest.model import Directory, Manifest, Resource, Whiteout


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


class Flattener:
    """The tree so far: path -> resource, with each directory's children for subtree removal."""

    def __init__(self) -> None:
        self.at: dict[str, int] = {}
        self.res: dict[int, Resource] = {}
        self.children: dict[str, set[str]] = {}
        self._next = 0

    def _remove(self, path: str, *, keep_self: bool = False) -> None:
        stack = [path]
        while stack:
            p = stack.pop()
            stack.extend(self.children.pop(p, ()))
            if p == path and keep_self:
                continue
            if self.at.pop(p, None) is not None:
                sib = self.children.get(_parent(p))
                if sib is not None:
                    sib.discard(p)

    def _put(self, path: str, rid: int) -> None:
        self.at[path] = rid
        self.children.setdefault(_parent(path), set()).add(path)

    def _is_dir(self, path: str) -> bool:
        rid = self.at.get(path)
        return rid is not None and isinstance(self.res[rid], Directory)

    def _clear_parents(self, path: str) -> None:
        """Remove a non-directory standing where ``path`` needs a parent directory."""
        p = _parent(path)
        blocking = None
        while p != "/":
            if p in self.at and not self._is_dir(p):
                blocking = p
            p = _parent(p)
        if blocking is not None:
            self._remove(blocking)

    def add_layer(self, layer: Manifest) -> None:
        for r in layer.resources:
            if isinstance(r, Whiteout):
                for p in r.paths:
                    self._remove(p)
            elif isinstance(r, Directory) and r.opaque:
                self._remove(r.path, keep_self=True)
        for r in layer.resources:
            if isinstance(r, Whiteout):
                continue
            if isinstance(r, Directory):
                if r.opaque and r == Directory(paths=r.paths, opaque=True) and self._is_dir(r.path):
                    continue  # opaque marker only: the directory keeps its attributes from below
                r = dataclasses.replace(r, opaque=False) if r.opaque else r
            rid = self._next
            self._next += 1
            self.res[rid] = r
            for p in r.paths:
                if p in self.at and not (isinstance(r, Directory) and self._is_dir(p)):
                    self._remove(p)
                self._clear_parents(p)
                self._put(p, rid)

    def manifest(self) -> Manifest:
        paths: dict[int, list[str]] = {}
        for p, rid in self.at.items():
            paths.setdefault(rid, []).append(p)
        out = []
        for rid, ps in paths.items():
            r = self.res[rid]
            if len(ps) > 1:
                ps.sort(key=os.fsencode)
            # most resources keep the names their layer gave them: no copy then
            out.append(r if tuple(ps) == r.paths else dataclasses.replace(r, paths=tuple(ps)))
        return Manifest.of(out)


def flatten(layers: Iterable[Manifest]) -> Manifest:
    """The tree of ``layers`` applied bottom first (see the module docstring)."""
    f = Flattener()
    for layer in layers:
        f.add_layer(layer)
    return f.manifest()
