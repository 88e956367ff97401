"""The checkout verb's work, without click: the click command (castore/cli/checkout_cmds.py) and the
fast path (castore/cli/fastpath.py) both call it, so both do the same."""

from __future__ import annotations

from castore.cli.context import Ctx
from castore.cli.resolving import resolve_lazy
from castore.cli.trust import check_trust


def run_checkout(
    obj: Ctx,
    manifest: str,
    target: str,
    *,
    link: str = "auto",
    disable_digest: bool = False,
    devices: str | None = None,
    sockets: bool = False,
    whiteouts: str = "none",
    rewrite_absolute_symlinks: bool = False,
    ignore_attr: frozenset[str] = frozenset(),
) -> str | None:
    """Materialise MANIFEST at TARGET; the manifest's digest (None for a manifest file)."""
    from castore.api import checkout

    m, digest, store = resolve_lazy(obj, manifest, need_store=True)  # a store manifest is read by checkout
    if link == "hardlink" and store is not None and store.readonly:
        from castore.store.readonly import refuse_write

        refuse_write(store.path, "--link hardlink makes link objects in it; use --link copy or reflink")
    check_trust(obj, manifest, digest, store)
    ref = m if m is not None else digest
    assert ref is not None
    checkout(
        store,
        ref,
        target,
        link=link,
        verify=not disable_digest,
        devices=devices,
        sockets=sockets,
        whiteouts=whiteouts,
        rewrite_absolute_symlinks=rewrite_absolute_symlinks,
        ignore_attrs=ignore_attr,
        validated=True,
    )
    return digest
