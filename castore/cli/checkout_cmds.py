"""The checkout verb: materialise a manifest at a new TARGET."""

from __future__ import annotations

import os

import click

from castore.cli.common import (
    Ctx,
    complete_names,
    devices_opt,
    json_opt,
    main_group,
    print_json,
    write_ignore_opt,
)
from castore.materialize import LINK_MODES


@main_group.command("checkout")
@click.argument("manifest", shell_complete=complete_names)
@click.argument("target", type=click.Path())
@click.option(
    "--link",
    type=click.Choice(LINK_MODES),
    default="auto",
    show_default=True,
    help="auto: reflink where possible, else copy; hardlink: share store inodes.",
)
@click.option("--disable-digest", is_flag=True, help="Do not re-hash content (trusted stores).")
@devices_opt
@click.option("--sockets", is_flag=True, help="Create sockets too.")
@click.option("--whiteouts", type=click.Choice(["none", "overlay", "oci"]), default="none", show_default=True)
@click.option("--rewrite-absolute-symlinks", is_flag=True, help="Make in-tree absolute symlinks relative.")
@write_ignore_opt
@json_opt
@click.pass_obj
def checkout_cmd(
    obj: Ctx,
    manifest: str,
    target: str,
    link: str,
    disable_digest: bool,
    devices: str | None,
    sockets: bool,
    whiteouts: str,
    rewrite_absolute_symlinks: bool,
    ignore_attr: frozenset[str],
    as_json: bool,
) -> None:
    """Materialise MANIFEST at TARGET (absent or empty), complete or not at all.

    \b
    Examples:
      continuity checkout web /srv/web-copy
      continuity checkout web /srv/web-ro --link hardlink    # share the store's inodes
      continuity checkout sha256:3f2a9c0d1e7b /tmp/t          # a digest prefix (12+ hex digits)
    """
    from castore.cli.checkout_run import run_checkout

    digest = run_checkout(
        obj,
        manifest,
        target,
        link=link,
        disable_digest=disable_digest,
        devices=devices,
        sockets=sockets,
        whiteouts=whiteouts,
        rewrite_absolute_symlinks=rewrite_absolute_symlinks,
        ignore_attr=ignore_attr,
    )
    if as_json:
        print_json({"digest": digest, "path": os.path.abspath(target)})
