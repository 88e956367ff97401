"""The ``--tar`` half of ``ingest``: read a tar stream (file or ``-``) into the store."""

from __future__ import annotations

from castore.api import ingest_tar
from castore.cli.common import Ctx


def ingest_tar_cmd(
    obj: Ctx,
    tar_src: str,
    name: str | None,
    ignore: tuple[str, ...],
    *,
    whiteouts: str = "none",
    appledouble: str = "fold",
) -> str:
    """Ingest the tar stream ``tar_src``; return the manifest digest.

    ``whiteouts``: none | oci (``.wh.NAME`` and ``.wh..wh..opq`` as whiteouts);
    ``appledouble``: fold (into com.apple.* xattrs) | drop | keep.
    """
    if whiteouts not in ("none", "oci"):
        import click

        raise click.UsageError("--tar reads whiteouts in the oci form only (--whiteouts oci)")
    return ingest_tar(
        obj.store(create=True), tar_src, name=name, ignore=ignore, whiteouts=whiteouts, appledouble=appledouble
    )
