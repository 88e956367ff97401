"""Verbs over trees and manifests: build, verify, ls, dump, stats, diff, du."""

from __future__ import annotations

import os
import stat as st_mod
import sys

import click

from castore.api import build, diff, tree_or_manifest, verify
from castore.cli.common import Ctx, ignore_opt, main_group, print_json, resolve
from castore.errors import Differences, UnsafeInput
from castore.manifest import Manifest, codec
from castore.manifest.diff import normalize_ignores
from castore.manifest.model import Device, RegularFile, Symlink
from castore.stats import disk_usage, human_size, manifest_stats
from castore.textsafe import quote


@main_group.command("build")
@click.argument("root", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["pb", "text", "json"]), default="pb", show_default=True)
@ignore_opt
@click.option("--keep-appledouble", is_flag=True, help="Keep ._* and __MACOSX entries.")
def build_cmd(root: str, fmt: str, ignore: tuple[str, ...], keep_appledouble: bool) -> None:
    """Write the manifest of ROOT to stdout (store untouched)."""
    m = build(root, ignore=ignore, keep_appledouble=keep_appledouble)
    if fmt == "pb":
        data = codec.dumps(m)
        if sys.stdout.isatty():
            raise UnsafeInput("refusing to write a binary manifest to a terminal; use --format text or redirect")
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    elif fmt == "text":
        click.echo(codec.dumps_text(m), nl=False)
    else:
        click.echo(codec.dumps_json(m))


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
@click.argument("manifest")
@click.option("--ignore-attr", multiple=True, metavar="ATTR",
              help="Do not compare ATTR (mode, uid, gid, owner, size, digest, target, device, xattr, mtime, links, "
                   "ads).")
@click.option("--ignore-mode-bits", callback=parse_octal, metavar="OCTAL", help="Permission bits not compared.")
@click.option("--disable-digest", is_flag=True, help="Do not hash file contents.")
@click.option("--sockets", is_flag=True, help="Compare sockets too.")
@click.option("--devices", type=click.Choice(["check", "skip", "create"]), default="check", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def verify_cmd(obj: Ctx, root: str, manifest: str, ignore_attr: tuple[str, ...], ignore_mode_bits: int,
               disable_digest: bool, sockets: bool, devices: str, as_json: bool) -> None:
    """Report every difference between ROOT and MANIFEST; exit 1 if any."""
    check_ignores(ignore_attr)
    m, _, _ = resolve(obj, manifest)
    found = verify(None, m, root, ignore_attrs=ignore_attr, ignore_mode_bits=ignore_mode_bits,
                   digest=not disable_digest, sockets=sockets, devices=devices)
    if as_json:
        print_json({"ok": not found, "differences": [
            {"path": d.path, "attr": d.attr, "expected": d.expected, "actual": d.actual} for d in found]})
    else:
        for d in found:
            click.echo(str(d))
    if found:
        raise Differences(f"{len(found)} difference(s) between {root} and {manifest}")


def _type_char(r: object) -> str:
    return {"file": "-", "dir": "d", "symlink": "l", "fifo": "p", "socket": "s", "whiteout": "w"}.get(
        getattr(r, "kind", ""), "c" if isinstance(r, Device) and r.char else "b")


def _perm_string(perm: int) -> str:
    return st_mod.filemode(perm | st_mod.S_IFREG)[1:]


@main_group.command("ls")
@click.argument("manifest")
@click.option("-l", "--long", "long_", is_flag=True, help="Mode, owner, size and digest too.")
@click.pass_obj
def ls_cmd(obj: Ctx, manifest: str, long_: bool) -> None:
    """List the entries of MANIFEST, one path per line."""
    m, _, _ = resolve(obj, manifest)
    for r in m.resources:
        for p in r.paths:
            if not long_:
                click.echo(quote(p))
                continue
            size = r.size if isinstance(r, RegularFile) else 0
            extra = f" -> {quote(r.target)}" if isinstance(r, Symlink) else ""
            if isinstance(r, Device):
                extra = f" {r.major},{r.minor}"
            click.echo(f"{_type_char(r)}{_perm_string(r.perm)} {r.uid:>5} {r.gid:>5} {size:>12} {quote(p)}{extra}")


@main_group.command("dump")
@click.argument("manifest")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "pb"]), default="text", show_default=True,
              help="pb: the stored manifest bytes, exactly (what `sign` signs).")
@click.pass_obj
def dump_cmd(obj: Ctx, manifest: str, fmt: str) -> None:
    """Dump MANIFEST as prototext (upstream's dump), JSON, or its stored protobuf bytes."""
    m, digest, store = resolve(obj, manifest)
    if fmt == "pb":
        if sys.stdout.isatty():
            raise UnsafeInput("refusing to write a binary manifest to a terminal; redirect or pipe it")
        if store is not None and digest is not None:
            data = store.read_blob(digest)
        else:  # a manifest file, read and validated by resolve(): its own bytes
            with open(manifest, "rb") as f:
                data = f.read()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    elif fmt == "text":
        click.echo(codec.dumps_text(m), nl=False)
    else:
        click.echo(codec.dumps_json(m))


@main_group.command("stats")
@click.argument("manifest", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def stats_cmd(obj: Ctx, manifest: str | None, as_json: bool) -> None:
    """Counts and sizes of MANIFEST; without it, of the whole store (bytes stored, logical bytes,
    dedup ratio, growth of each name)."""
    if manifest is None:
        from castore.cli.store_stats import print_store_stats
        print_store_stats(obj, as_json)
        return
    m, digest, _ = resolve(obj, manifest)
    s = manifest_stats(m)
    if as_json:
        print_json({"digest": digest, **s} if digest else s)
        return
    if digest:
        click.echo(f"digest: {digest}")
    for k, v in s.items():
        click.echo(f"{k}: {v}")


def _manifest_or_tree(obj: Ctx, ref: str) -> Manifest:
    if os.path.isdir(ref):
        return tree_or_manifest(None, ref)
    return resolve(obj, ref)[0]


@main_group.command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--ignore-attr", multiple=True, metavar="ATTR")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def diff_cmd(obj: Ctx, a: str, b: str, ignore_attr: tuple[str, ...], as_json: bool) -> None:
    """Changes from A to B (manifests or trees): A added, D deleted, M modified, m metadata only."""
    check_ignores(ignore_attr)
    changes = diff(None, _manifest_or_tree(obj, a), _manifest_or_tree(obj, b), ignore_attrs=ignore_attr)
    if as_json:
        print_json({"changes": [{"path": c.path, "change": c.kind, "attrs": list(c.attrs)} for c in changes]})
    else:
        for c in changes:
            click.echo(str(c))
    if changes:
        raise Differences(f"{len(changes)} change(s) from {a} to {b}")


@main_group.command("du")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@click.option("--human", is_flag=True, help="Human-readable sizes.")
@click.pass_obj
def du_cmd(obj: Ctx, ref: str, as_json: bool, human: bool) -> None:
    """Disk usage of a manifest or tree, hardlinks counted once."""
    out = disk_usage(_manifest_or_tree(obj, ref))
    if as_json:
        print_json(out)
    else:
        click.echo(f"{human_size(out['bytes']) if human else out['bytes']}\t{quote(ref)}")
