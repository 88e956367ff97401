"""export: write a manifest's tree as a deterministic tar stream."""

from __future__ import annotations

import sys

import click

from castore.cli.common import Ctx, main_group, resolve


@main_group.command("export")
@click.argument("manifest")
@click.option("-o", "--output", metavar="FILE|-", default=None, help="Write here (default: stdout).")
@click.option("--compress", type=click.Choice(["gzip", "zstd"]), default=None, help="Compress (deterministic).")
@click.option("--whiteouts", type=click.Choice(["none", "oci"]), default="none", show_default=True,
              help="oci: write whiteouts and opaque directories as .wh.NAME / .wh..wh..opq.")
@click.pass_obj
def export_cmd(obj: Ctx, manifest: str, output: str | None, compress: str | None, whiteouts: str) -> None:
    """Write MANIFEST as a tar stream (PAX: xattrs, hardlinks, devices, sparse files, ns times)."""
    from castore.tar.exporter import export_tar
    if output in (None, "-") and sys.stdout.isatty():
        raise click.UsageError("refusing to write a tar to a terminal; use -o FILE or a pipe")
    m, digest, store = resolve(obj, manifest, need_store=True)
    assert store is not None
    export_tar(store, m, output, compress=compress, whiteouts=whiteouts, manifest_digest=digest)
