"""MANIFEST arguments: a catalog name, a digest, a unique prefix (12+ hex digits) or a manifest file.

Click-free: the fast path (castore/cli/fastpath.py) resolves with it too."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from castore.cli.context import Ctx
from castore.errors import CorruptManifest, NotFound

if TYPE_CHECKING:  # imported where used: `--help` needs neither the store nor the manifest code
    from castore.manifest import Manifest
    from castore.store import Store

MAX_MANIFEST_FILE = 1 << 31


def read_manifest_file(path: str) -> Manifest:
    from castore.fs.io import read_capped  # noqa: PLC0415 - not on every CLI start

    data = read_capped(path, MAX_MANIFEST_FILE, "a manifest", CorruptManifest)
    from castore.manifest import codec, validate  # noqa: PLC0415 - protobuf only when a manifest is read
    from castore.manifest.bounds import check_parse_cost  # noqa: PLC0415

    check_parse_cost(data, source=path)  # a file can be a parse bomb too: priced before protobuf allocates
    return validate(codec.loads(data, source=path))


def looks_like_path(ref: str) -> bool:
    return "/" in ref or ref.endswith((".pb", ".manifest")) or os.path.isfile(ref)


def resolve(ctx: Ctx, ref: str, *, need_store: bool = False) -> tuple[Manifest, str | None, Store | None]:
    """A MANIFEST argument: catalog name, digest, unique prefix (>= 12 hex), or file path."""
    m, digest, store = resolve_lazy(ctx, ref, need_store=need_store)
    if m is None:
        assert store is not None and digest is not None
        m = store.load_manifest(digest)
    return m, digest, store


def resolve_lazy(ctx: Ctx, ref: str, *, need_store: bool = False) -> tuple[Manifest | None, str | None, Store | None]:
    """``resolve``, but a manifest of the store is not read: (None, digest, store)."""
    from castore.store.revisions import NoSuchRevision, short_prefix_hint  # noqa: PLC0415

    if need_store and ctx.store_if_exists() is None and os.path.isfile(ref):
        # No store: a manifest file is still checked first (bad input is refused as such, exit 3), and one
        # that needs no content (fifos, empty files, directories) is served without a store.
        m = read_manifest_file(ref)
        from castore.store import manifest_refs

        if not manifest_refs(m):
            return m, None, None
        ctx.store()  # NoStore, with the hint
    store = ctx.store() if need_store else ctx.store_if_exists()
    if store is not None:
        try:
            digest = store.resolve(ref)
        except NoSuchRevision:
            if not os.path.isfile(ref):
                raise
            digest = None
        except NotFound:
            digest = None
        if digest is not None:
            store.require_manifest(digest)  # a stored blob is never taken for a manifest
            return None, digest, store
    if os.path.isfile(ref) or (os.path.exists(ref) and not os.path.isdir(ref)):
        return read_manifest_file(ref), None, store
    if os.path.isdir(ref):
        raise CorruptManifest(f"{ref}: is a directory, not a manifest")
    raise NotFound(f"no manifest named {ref!r} (not a name, revision, digest or file){short_prefix_hint(ref)}")
