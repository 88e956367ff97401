"""Verbs that change trees in place or duplicate them: apply, copy."""

from __future__ import annotations

import gc
import os
import sys

import click

from castore.api import apply
from castore.cli.common import (
    Ctx,
    complete_names,
    devices_opt,
    ignore_opt,
    json_opt,
    main_group,
    print_json,
    resolve_lazy,
    write_ignore_opt,
)
from castore.cli.trust import check_trust
from castore.errors import Differences
from castore.materialize import LINK_MODES
from castore.textsafe import safe_line


@main_group.command("apply")
@click.argument("root", type=click.Path(file_okay=False))
@click.argument("manifest", shell_complete=complete_names)
@click.option(
    "--source",
    default="store",
    show_default=True,
    metavar="DIR|TAR|store",
    help="Where file content comes from: the store, a directory (by path) or a tar file.",
)
@click.option("--move", is_flag=True, help="With --source DIR: rename files out of it (same filesystem).")
@click.option("--delete", is_flag=True, help="Remove entries of ROOT the manifest does not list.")
@click.option("--disable-digest", is_flag=True, help="Do not verify written content (trusted sources).")
@click.option("--rehash", is_flag=True, help="Hash every file of ROOT; do not trust the stat cache.")
@click.option(
    "--link",
    type=click.Choice(LINK_MODES),
    default="auto",
    show_default=True,
    help="How content from the store is written (auto: reflink where possible, else copy).",
)
@devices_opt
@click.option("--sockets", is_flag=True, help="Create (and delete) sockets too; ignored otherwise.")
@click.option(
    "--rewrite-absolute-symlinks",
    is_flag=True,
    help="Make absolute symlink targets relative to the link's directory (relocatable trees).",
)
@click.option("--sync", is_flag=True, help="Flush ROOT's filesystem at the end (syncfs).")
@click.option("-v", "--verbose", is_flag=True, help="One line per change on stderr (as the global -v).")
@json_opt
@write_ignore_opt
@click.pass_obj
def apply_cmd(
    obj: Ctx,
    root: str,
    manifest: str,
    source: str,
    move: bool,
    delete: bool,
    disable_digest: bool,
    rehash: bool,
    link: str,
    devices: str | None,
    sockets: bool,
    rewrite_absolute_symlinks: bool,
    sync: bool,
    verbose: bool,
    as_json: bool,
    ignore_attr: frozenset[str],
) -> None:
    """Make ROOT match MANIFEST in place, changing only what differs.

    Without --delete, entries of ROOT the manifest does not list stay; their
    number is said on stderr (-v lists them).

    \b
    Examples:
      continuity apply /srv/web web
      continuity apply /srv/web web --delete -v
      continuity apply /srv/web ./web.pb --source web.tar.xz
      continuity apply /srv/web web --json
    """
    verbose = verbose or obj.verbose > 0
    # Short-lived and allocation-heavy (a Resource per entry, no cycles): the cyclic GC only
    # costs time here (~25% of a no-op apply).
    gc.disable()
    if move and source == "store":
        raise click.UsageError("--move needs --source DIR")
    m, digest, store = resolve_lazy(obj, manifest, need_store=source == "store")
    check_trust(obj, manifest, digest, store)
    log = (lambda msg: click.echo(safe_line(msg), err=True)) if verbose else None
    # resolve_lazy() validated a manifest file; the store's manifests are read (and validated) by apply.
    ref = m if m is not None else digest
    assert ref is not None
    report = apply(
        store,
        ref,
        root,
        source=source,
        delete=delete,
        verify=not disable_digest,
        rehash=rehash,
        link=link,
        devices=devices,
        sockets=sockets,
        rewrite_absolute_symlinks=rewrite_absolute_symlinks,
        move=move,
        sync=sync,
        ignore_attrs=ignore_attr,
        log=log,
        validated=True,
    )
    if as_json:
        print_json({"digest": digest, "path": os.path.abspath(root), **report.as_dict()})
    if report.extra and not obj.quiet:
        click.echo(
            f"continuity: apply left {report.extra} entr{'y' if report.extra == 1 else 'ies'} the manifest "
            f"does not list (--delete removes them{'' if verbose else '; -v lists them'})",
            err=True,
        )
    for p in report.problems:
        click.echo(f"continuity: {safe_line(p)}", err=True)
    if report.problems:
        raise Differences(f"{len(report.problems)} device node(s) not as the manifest says (--devices check)")


@main_group.command("copy")
@click.argument("src", type=click.Path(file_okay=False))
@click.argument("dst", type=click.Path())
@ignore_opt
@json_opt
@click.pass_obj
def copy_cmd(obj: Ctx, src: str, dst: str, ignore: tuple[str, ...], as_json: bool) -> None:
    """Duplicate the tree SRC at DST (which must not exist), safely, keeping everything.

    \b
    Examples:
      continuity copy /srv/web /srv/web.bak
      continuity copy /srv/web /srv/web.bak --ignore '*.tmp' --json
    """
    import dataclasses

    from castore.copy import copy_tree  # here: its imports (multiprocessing, shutil) cost apply 7 ms

    gc.disable()
    stats = copy_tree(src, dst, ignore=ignore)
    if as_json:
        print_json({"source": os.path.abspath(src), "path": os.path.abspath(dst), **dataclasses.asdict(stats)})


__all__ = ["sys"]
