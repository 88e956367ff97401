"""Verbs over trees and manifests: build, verify, ls, dump, stats, diff, du."""

from __future__ import annotations

import os
import stat as st_mod
import sys
from collections.abc import Callable

import click

from castore.api import build, diff, tree_or_manifest, verify
from castore.cli.common import Ctx, complete_names, ignore_opt, json_opt, main_group, print_json, resolve
from castore.errors import Differences, UnsafeInput
from castore.manifest import Manifest, codec
from castore.manifest.diff import normalize_ignores
from castore.manifest.model import Device, RegularFile, Resource, Symlink
from castore.stats import disk_usage, manifest_stats
from castore.textsafe import quote
from castore.units import human_size


@main_group.command("build")
@click.argument("root", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["pb", "text", "json"]), default="pb", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@ignore_opt
@click.option("--keep-appledouble", is_flag=True, help="Keep ._* and __MACOSX entries.")
def build_cmd(root: str, fmt: str, as_json: bool, ignore: tuple[str, ...], keep_appledouble: bool) -> None:
    """Write the manifest of ROOT to stdout (store untouched).

    \b
    Examples:
      continuity build /srv/web > web.pb
      continuity build /srv/web --format text | less
      continuity build /srv/web --json | jq '.resources | length'
    """
    fmt = "json" if as_json else fmt
    if fmt == "pb":
        if sys.stdout.isatty():
            raise UnsafeInput("refusing to write a binary manifest to a terminal; use --format text or redirect")
        from castore.build import WalkOptions, build_encoded

        # codec.dumps(build(...))'s bytes, most entries encoded by the hashing workers
        data = build_encoded(root, WalkOptions(ignore=tuple(ignore), keep_appledouble=keep_appledouble))
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    m = build(root, ignore=ignore, keep_appledouble=keep_appledouble)
    _print_manifest(m, fmt, lambda: codec.dumps(m))


def _print_manifest(m: Manifest, fmt: str, pb_bytes: Callable[[], bytes]) -> None:
    """``m`` on stdout as prototext, JSON or (``pb``: never to a terminal) the bytes ``pb_bytes`` gives."""
    if fmt == "pb":
        if sys.stdout.isatty():
            raise UnsafeInput("refusing to write a binary manifest to a terminal; use --format text or redirect")
        sys.stdout.buffer.write(pb_bytes())
        sys.stdout.buffer.flush()
    elif fmt == "text":
        click.echo(codec.dumps_text(m), nl=False)
    else:
        print_manifest_json(m)


def print_manifest_json(m: Manifest) -> None:
    from castore.manifest.render import resource_json

    print_json({"resources": [resource_json(r) for r in m.resources]})


def parse_octal(ctx: click.Context, param: click.Parameter, value: str | None) -> int:
    if value is None:
        return 0
    try:
        n = int(value, 8)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an octal number") from None
    if n < 0 or n > 0o7777:
        raise click.BadParameter(f"{value!r} is out of range (0-7777)")
    return n


def check_ignores(ignore_attr: tuple[str, ...]) -> tuple[str, ...]:
    """``--ignore-attr`` values, refused as a usage error (exit 2) when one names no attribute."""
    try:
        normalize_ignores(ignore_attr)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ignore-attr") from None
    return ignore_attr


@main_group.command("verify")
@click.argument("root", type=click.Path(file_okay=False))
@click.argument("manifest", shell_complete=complete_names)
@click.option(
    "--ignore-attr",
    multiple=True,
    metavar="ATTR",
    help="Do not compare ATTR (mode, uid, gid, owner, size, digest, target, device, xattr, mtime, links, ads).",
)
@click.option("--ignore-mode-bits", callback=parse_octal, metavar="OCTAL", help="Permission bits not compared.")
@click.option("--disable-digest", is_flag=True, help="Do not hash file contents.")
@click.option("--sockets", is_flag=True, help="Compare sockets too.")
@click.option("--devices", type=click.Choice(["check", "skip", "create"]), default="check", show_default=True)
@json_opt
@click.pass_obj
def verify_cmd(
    obj: Ctx,
    root: str,
    manifest: str,
    ignore_attr: tuple[str, ...],
    ignore_mode_bits: int,
    disable_digest: bool,
    sockets: bool,
    devices: str,
    as_json: bool,
) -> None:
    """Report every difference between ROOT and MANIFEST; exit 1 if any.

    Times are shown as ISO-8601 UTC with nanoseconds.

    \b
    Examples:
      continuity verify /srv/web web
      continuity verify /srv/web web --ignore-attr mtime --json
      continuity verify /mnt/restore ./web.pb --disable-digest
    """
    check_ignores(ignore_attr)
    m, _, _ = resolve(obj, manifest)
    found = verify(
        None,
        m,
        root,
        ignore_attrs=ignore_attr,
        ignore_mode_bits=ignore_mode_bits,
        digest=not disable_digest,
        sockets=sockets,
        devices=devices,
    )
    if as_json:
        print_json(
            {
                "ok": not found,
                "differences": [
                    {"path": d.path, "attr": d.attr, "expected": d.expected, "actual": d.actual} for d in found
                ],
            }
        )
    else:
        for d in found:
            click.echo(str(d))
    if found:
        raise Differences(f"{len(found)} difference(s) between {root} and {manifest}")


def _type_char(r: object) -> str:
    return {"file": "-", "dir": "d", "symlink": "l", "fifo": "p", "socket": "s", "whiteout": "w"}.get(
        getattr(r, "kind", ""), "c" if isinstance(r, Device) and r.char else "b"
    )


def _perm_string(perm: int) -> str:
    return st_mod.filemode(perm | st_mod.S_IFREG)[1:]


@main_group.command("ls")
@click.argument("manifest", shell_complete=complete_names)
@click.option(
    "-l",
    "--long",
    "long_",
    is_flag=True,
    help="Type and mode, uid, gid, size in bytes, content digest (files; '-' otherwise), path.",
)
@json_opt
@click.pass_obj
def ls_cmd(obj: Ctx, manifest: str, long_: bool, as_json: bool) -> None:
    """List the entries of MANIFEST, one path per line.

    \b
    Examples:
      continuity ls web
      continuity ls -l web | sort -k4 -n | tail    # the largest files
      continuity ls web --json
    """
    m, digest, _ = resolve(obj, manifest)
    if as_json:
        print_json({"digest": digest, "entries": [_entry_json(r, p) for r in m.resources for p in r.paths]})
        return
    for r in m.resources:
        for p in r.paths:
            if not long_:
                click.echo(quote(p))
                continue
            size = r.size if isinstance(r, RegularFile) else 0
            extra = f" -> {quote(r.target)}" if isinstance(r, Symlink) else ""
            if isinstance(r, Device):
                extra = f" {r.major},{r.minor}"
            dg = r.digest if isinstance(r, RegularFile) else "-"
            click.echo(f"{_type_char(r)}{_perm_string(r.perm)} {r.uid:>5} {r.gid:>5} {size:>12} {dg} {quote(p)}{extra}")


def _entry_json(r: Resource, path: str) -> dict[str, object]:
    out: dict[str, object] = {
        "path": path,
        "type": r.kind,
        "mode": f"{r.perm:04o}",
        "uid": r.uid,
        "gid": r.gid,
        "size": r.size if isinstance(r, RegularFile) else 0,
        "digest": r.digest if isinstance(r, RegularFile) else None,
    }
    if isinstance(r, Symlink):
        out["target"] = r.target
    return out


@main_group.command("dump")
@click.argument("manifest", shell_complete=complete_names)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "pb"]),
    default="text",
    show_default=True,
    help="pb: the stored manifest bytes, exactly (what `sign` signs).",
)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.pass_obj
def dump_cmd(obj: Ctx, manifest: str, fmt: str, as_json: bool) -> None:
    """Dump MANIFEST as prototext (upstream's dump), JSON, or its stored protobuf bytes.

    \b
    Examples:
      continuity dump web
      continuity dump web --json | jq '.resources[0]'
      continuity dump web --format pb > web.pb
    """
    m, digest, store = resolve(obj, manifest)

    def stored_bytes() -> bytes:
        if store is not None and digest is not None:
            return store.read_blob(digest)
        with open(manifest, "rb") as f:  # a manifest file, read and validated by resolve(): its own bytes
            return f.read()

    _print_manifest(m, "json" if as_json else fmt, stored_bytes)


@main_group.command("stats")
@click.argument("manifest", required=False, shell_complete=complete_names)
@json_opt
@click.option(
    "--plot",
    "plot",
    metavar="FILE.png",
    type=click.Path(dir_okay=False),
    help="Draw the store's growth and dedup over time (every name's history) as a PNG (needs matplotlib).",
)
@click.pass_obj
def stats_cmd(obj: Ctx, manifest: str | None, as_json: bool, plot: str | None) -> None:
    """Counts and sizes of MANIFEST; without it, of the whole store (bytes stored, logical bytes,
    dedup ratio, growth of each name).

    \b
    Examples:
      continuity stats                       # the whole store: stored vs logical bytes, dedup
      continuity stats web
      continuity stats web --json
      continuity stats --plot growth.png     # logical vs stored bytes over time
    """
    if plot is not None:
        from castore.cli.plot_cmds import plot_store_growth

        plot_store_growth(obj, plot, as_json=as_json)
        return
    if manifest is None:
        from castore.cli.store_stats import print_store_stats

        print_store_stats(obj, as_json)
        return
    m, digest, _ = resolve(obj, manifest)
    s = manifest_stats(m)
    if as_json:
        print_json({"digest": digest, **s})
        return
    if digest:
        click.echo(f"digest: {digest}")
    for k, v in s.items():
        click.echo(f"{k}: {v}" + (f" ({human_size(v)})" if k in ("size", "bytes") else ""))


def _manifest_or_tree(obj: Ctx, ref: str) -> Manifest:
    if os.path.isdir(ref):
        return tree_or_manifest(None, ref)
    return resolve(obj, ref)[0]


@main_group.command("diff")
@click.argument("a", shell_complete=complete_names)
@click.argument("b", shell_complete=complete_names)
@click.option("--ignore-attr", multiple=True, metavar="ATTR", help="Do not compare ATTR (as verify). Repeatable.")
@json_opt
@click.pass_obj
def diff_cmd(obj: Ctx, a: str, b: str, ignore_attr: tuple[str, ...], as_json: bool) -> None:
    """Changes from A to B (manifests or trees): A added, D deleted, M modified, m metadata only.

    Exit 1 when they differ.

    \b
    Examples:
      continuity diff web-old web
      continuity diff web /srv/web --ignore-attr mtime
      continuity diff web-old web --json
    """
    check_ignores(ignore_attr)
    changes = diff(None, _manifest_or_tree(obj, a), _manifest_or_tree(obj, b), ignore_attrs=ignore_attr)
    if as_json:
        print_json(
            {
                "ok": not changes,
                "changes": [{"path": c.path, "change": c.kind, "attrs": list(c.attrs)} for c in changes],
            }
        )
    else:
        for c in changes:
            click.echo(str(c))
    if changes:
        raise Differences(f"{len(changes)} change(s) from {a} to {b}")


@main_group.command("du")
@click.argument("ref", shell_complete=complete_names)
@json_opt
@click.option("-H", "--human", is_flag=True, help="Sizes in KiB, MiB, GiB.")
@click.pass_obj
def du_cmd(obj: Ctx, ref: str, as_json: bool, human: bool) -> None:
    """Disk usage (bytes) of a manifest or tree, hardlinks counted once.

    \b
    Examples:
      continuity du web
      continuity du -H /srv/web
      continuity du web --json
    """
    out = disk_usage(_manifest_or_tree(obj, ref))
    if as_json:
        print_json(out)
    else:
        click.echo(f"{human_size(out['bytes']) if human else out['bytes']}\t{quote(ref)}")
