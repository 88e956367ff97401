"""Verbs over the store: ingest, list, tag, rm, history."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from castore.cli.common import (
    Ctx,
    complete_names,
    ignore_opt,
    json_opt,
    main_group,
    print_json,
    resolve,
)
from castore.store import check_name

if TYPE_CHECKING:
    from castore.store.meta import Txn


@main_group.command("ingest")
@click.argument("src", required=False, type=click.Path(file_okay=False))
@click.option("--name", help="Catalog name to record the manifest under (history is kept).")
@ignore_opt
@click.option("--keep-appledouble", is_flag=True, help="Keep ._* and __MACOSX entries.")
@click.option(
    "--whiteouts",
    type=click.Choice(["none", "overlay", "oci"]),
    default="none",
    show_default=True,
    help="Read whiteouts as such: overlay (char 0/0, opaque xattrs) for SRC, oci (.wh.*) for --tar.",
)
@click.option(
    "--tar", "tar_src", metavar="FILE|-", help="Read a tar stream (plain, gzip, zstd, xz, bzip2) instead of SRC."
)
@click.option(
    "--appledouble",
    type=click.Choice(["fold", "drop", "keep"]),
    default=None,
    help="--tar: AppleDouble members into com.apple.* xattrs (fold, default), left out, or kept.",
)
@click.option(
    "--force-history",
    is_flag=True,
    help="Record a new version under --name even when the tree is unchanged (by default it is not).",
)
@json_opt
@click.pass_obj
def ingest_cmd(
    obj: Ctx,
    src: str | None,
    name: str | None,
    ignore: tuple[str, ...],
    keep_appledouble: bool,
    whiteouts: str,
    tar_src: str | None,
    appledouble: str | None,
    force_history: bool,
    as_json: bool,
) -> None:
    """Store the tree SRC; print the manifest digest alone on stdout.

    An unchanged tree records no new version under NAME (stderr says "unchanged").
    Entries that cannot be read are skipped with a warning each; the version is then
    recorded as incomplete and the exit code is 3 (the digest is still printed).

    \b
    Examples:
      continuity ingest /srv/web --name web
      continuity ingest --tar rootfs.tar.xz --name rootfs
      curl -sL URL | continuity ingest --tar - --name fetched
      continuity ingest /srv/web --ignore '*.log' --json
    """
    if name is not None:
        check_name(name)
    from castore.cli.ingest_report import begin, finish

    begin(obj, force_history)
    if tar_src is not None:
        if src is not None:
            raise click.UsageError("give either SRC or --tar, not both")
        from castore.cli.tar_support import ingest_tar_cmd

        digest = ingest_tar_cmd(
            obj,
            tar_src,
            name,
            ignore,
            whiteouts=whiteouts,
            appledouble=appledouble or ("keep" if keep_appledouble else "fold"),
        )
    else:
        if src is None:
            raise click.UsageError("missing SRC (or --tar FILE)")
        if whiteouts == "oci":
            raise click.UsageError("--whiteouts oci applies to --tar; a directory holds overlay whiteouts")
        from castore.api import ingest
        from castore.ingest_skips import SkipLog

        digest = ingest(
            obj.store(create=True),
            src,
            name=name,
            ignore=ignore,
            keep_appledouble=keep_appledouble,
            whiteouts=whiteouts,
            progress=True,
            on_skip=SkipLog(src),
        )
    if as_json:
        print_json({"digest": digest, "name": name})
    else:
        click.echo(digest)
    finish(obj, name, digest)


@main_group.command("list")
@json_opt
@click.option("--history", "history", metavar="NAME", help="Every manifest recorded under NAME.")
@click.option("-H", "--human", is_flag=True, help="Sizes in KiB, MiB, GiB.")
@click.pass_obj
def list_cmd(obj: Ctx, as_json: bool, history: str | None, human: bool) -> None:
    """The catalog: name, digest, date (UTC) and tree size in bytes, tab-separated.

    \b
    Examples:
      continuity list
      continuity list -H
      continuity list --json | jq -r '.names[].name'
      continuity list --history web
    """
    from castore.cli.list_view import list_text

    click.echo(list_text(obj, as_json, human, history), nl=False)


@main_group.command("history")
@click.argument("name", shell_complete=complete_names)
@json_opt
@click.pass_obj
def history_cmd(obj: Ctx, name: str, as_json: bool) -> None:
    """Every manifest recorded under NAME, oldest first.

    \b
    Examples:
      continuity history web
      continuity history web --json
    """
    from castore.cli.list_view import history_text

    click.echo(history_text(obj, name, as_json=as_json), nl=False)


@main_group.command("tag")
@click.argument("manifest", shell_complete=complete_names)
@click.argument("name")
@json_opt
@click.pass_obj
def tag_cmd(obj: Ctx, manifest: str, name: str, as_json: bool) -> None:
    """Record MANIFEST under NAME (a manifest file is stored first).

    \b
    Examples:
      continuity tag web web-2026-12-07
      continuity tag ./site.pb site          # a manifest file, its blobs already stored
    """
    check_name(name)
    store = obj.writable_store()
    m, digest, _ = resolve(obj, manifest, need_store=True)
    if digest is None:
        from castore.errors import BlobNotFound
        from castore.manifest import codec
        from castore.store import manifest_refs
        from castore.store.meta import KIND_MANIFEST

        refs = manifest_refs(m)  # recorded as the manifest names them; gc follows the chunk map from there
        with store.shared_lock():  # checked under the lock: no gc frees them before the rows are written
            missing = store.missing_blobs(store.content_refs(m))
            if missing:
                raise BlobNotFound(sorted(missing)[0], "this manifest; ingest its content first")
            data = codec.dumps(m)
            digest = store.put_blob(data, KIND_MANIFEST)
            store.mark_manifest(digest, "+", name)

            def record(t: Txn) -> None:
                store.record_manifest(t, digest, refs, m)
                store.set_tag(t, name, digest, len(data))

            store.meta.write(record)
    else:
        store.tag(name, digest)
    if as_json:
        print_json({"name": name, "digest": digest})
    else:
        click.echo(digest)


@main_group.command("rm")
@click.argument("names", nargs=-1, required=True, shell_complete=complete_names)
@json_opt
@click.pass_obj
def rm_cmd(obj: Ctx, names: tuple[str, ...], as_json: bool) -> None:
    """Remove NAMES from the catalog (content goes at the next gc).

    All or nothing: every name is checked first; if one is not in the
    catalog, none is removed.

    \b
    Examples:
      continuity rm web-old
      continuity rm a b c && continuity gc
    """
    store = obj.writable_store()
    missing = [n for n in dict.fromkeys(names) if store.get_tag(n) is None]
    if missing:
        from castore.errors import NotFound

        raise NotFound(f"no manifest named {', '.join(map(repr, missing))}; nothing removed")
    removed = []
    for n in dict.fromkeys(names):
        store.untag(n)
        removed.append(n)
    if as_json:
        print_json({"removed": removed})


__all__ = ["sys"]
