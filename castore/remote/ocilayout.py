"""``oci:DIR[:TAG]``: an OCI image layout on disk (``oci-layout``, ``index.json``, ``blobs/sha256/HEX``)
as a blob source for ``castore.remote.image``, as skopeo and umoci write it.

The tag is the ``org.opencontainers.image.ref.name`` annotation of an ``index.json``
entry; without a tag the layout must hold exactly one. Every blob is read with its
size bounded and its digest checked (copied to the lease's tmp dir while hashing),
so a layout that changes or lies is an IntegrityError (exit 4), never a wrong tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading

from castore.digest import is_digest
from castore.errors import IntegrityError, NotFound, UnsafeInput
from castore.fs.io import read_capped
from castore.remote.ref import TAG_RE

REF_NAME = "org.opencontainers.image.ref.name"
MAX_INDEX = 4 << 20
PIECE = 1 << 20


def parse_layout_ref(text: str) -> tuple[str, str | None]:
    """``oci:DIR[:TAG]`` -> (DIR, TAG or None)."""
    rest = text[len("oci:") :] if text.startswith("oci:") else text
    d, sep, tag = rest.rpartition(":")
    if sep and d and TAG_RE.fullmatch(tag):
        return d, tag
    if not rest:
        raise UnsafeInput("oci: needs a directory: oci:DIR[:TAG]")
    return rest, None


class Layout:
    """An OCI image layout directory, read-only."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.abort = threading.Event()
        if not os.path.isfile(os.path.join(path, "oci-layout")):
            raise NotFound(f"{path}: not an OCI image layout (no oci-layout file)")

    def _open(self, digest: str) -> tuple[int, int]:
        if not is_digest(digest):
            raise IntegrityError(f"{self.path}: invalid digest {digest[:80]!r}")
        p = os.path.join(self.path, "blobs", "sha256", digest[7:])
        try:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise IntegrityError(f"{self.path}: blob {digest} is listed but missing") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise IntegrityError(f"{self.path}: blob {digest} is not a regular file")
        return fd, st.st_size

    def _read(self, digest: str, limit: int) -> bytes:
        fd, size = self._open(digest)
        try:
            if size > limit:
                raise IntegrityError(f"{self.path}: blob {digest} is {size} bytes (limit {limit})")
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(limit + 1)
        finally:
            os.close(fd)
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(f"{self.path}: blob {digest} has other bytes (digest mismatch)")
        return data

    def get_manifest(self, reference: str, limit: int, accept: str | None = None) -> tuple[bytes, str]:
        return self._read(reference, limit), ""

    def fetch_blob(self, digest: str, size: int, path: str) -> None:
        """Copy the blob to a new file ``path``, checking its size and digest (``path`` removed on failure)."""
        src, have = self._open(digest)
        ok = False
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
        try:
            if have != size:
                raise IntegrityError(f"{self.path}: blob {digest} is {have} bytes, the descriptor says {size}")
            h = hashlib.sha256()
            left = size
            while left:
                piece = os.read(src, min(PIECE, left))
                if not piece:
                    raise IntegrityError(f"{self.path}: blob {digest} was truncated while read")
                h.update(piece)
                view = memoryview(piece)
                while view:
                    view = view[os.write(out, view) :]
                left -= len(piece)
            if os.read(src, 1) or "sha256:" + h.hexdigest() != digest:
                raise IntegrityError(f"{self.path}: blob {digest} has other bytes (digest mismatch)")
            ok = True
        finally:
            os.close(src)
            os.close(out)
            if not ok:
                os.unlink(path)

    def top(self, tag: str | None) -> bytes:
        """The manifest (or index) ``tag`` names in index.json (the only one without a tag)."""
        p = os.path.join(self.path, "index.json")
        raw = read_capped(p, MAX_INDEX, "an OCI layout's index", UnsafeInput, missing=NotFound)
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            raise IntegrityError(f"{p}: not JSON") from None
        items = doc.get("manifests") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise IntegrityError(f"{p}: no manifests list")
        found = []
        names = []
        for it in items:
            if not isinstance(it, dict):
                continue
            ann = it.get("annotations")
            name = ann.get(REF_NAME) if isinstance(ann, dict) else None
            names.append(str(name))
            if tag is None or name == tag:
                found.append(it)
        if tag is not None and not found:
            raise NotFound(f"{self.path}: no image tagged {tag!r} (has: {', '.join(names[:20]) or 'none'})")
        if len(found) != 1:
            raise UnsafeInput(
                f"{self.path}: {len(found)} images, name one: oci:DIR:TAG (tags: {', '.join(names[:20])})"
            )
        d, n = found[0].get("digest"), found[0].get("size")
        if not isinstance(d, str) or not isinstance(n, int) or isinstance(n, bool):
            raise IntegrityError(f"{p}: entry without digest/size")
        data = self._read(d, MAX_INDEX)
        if len(data) != n:
            raise IntegrityError(f"{p}: manifest {d} is {len(data)} bytes, index.json says {n}")
        return data
