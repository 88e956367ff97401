"""export: write a manifest's tree as a deterministic tar stream."""

from __future__ import annotations

import os
import sys

import click

from castore.cli.common import Ctx, complete_names, json_opt, main_group, print_json, resolve


@main_group.command("export")
@click.argument("manifest", shell_complete=complete_names)
@click.option("-o", "--output", metavar="FILE|-", default=None, help="Write here (default: stdout).")
@click.option("--compress", type=click.Choice(["gzip", "zstd"]), default=None, help="Compress (deterministic).")
@click.option(
    "--whiteouts",
    type=click.Choice(["none", "oci"]),
    default="none",
    show_default=True,
    help="oci: write whiteouts and opaque directories as .wh.NAME / .wh..wh..opq.",
)
@json_opt
@click.pass_obj
def export_cmd(
    obj: Ctx, manifest: str, output: str | None, compress: str | None, whiteouts: str, as_json: bool
) -> None:
    """Write MANIFEST as a tar stream (PAX: xattrs, hardlinks, devices, sparse files, ns times).

    Members come grouped by directory, so GNU tar and bsdtar both restore
    every time exactly.

    \b
    Examples:
      continuity export web -o web.tar
      continuity export web --compress zstd -o web.tar.zst --json
      continuity export web | tar --xattrs --xattrs-include='*' --numeric-owner -C /srv/restore -xpf -
    """
    from castore.tar.exporter import export_tar

    if output in (None, "-") and sys.stdout.isatty():
        raise click.UsageError("refusing to write a tar to a terminal; use -o FILE or a pipe")
    if as_json and output in (None, "-"):
        raise click.UsageError("--json needs -o FILE (the tar goes to stdout otherwise)")
    m, digest, store = resolve(obj, manifest, need_store=True)
    assert store is not None
    export_tar(store, m, output, compress=compress, whiteouts=whiteouts, manifest_digest=digest)
    if as_json:
        assert output is not None
        print_json({"digest": digest, "path": os.path.abspath(output), "size": os.stat(output).st_size})
