"""Verbs over trees and manifests: build, verify, ls, dump, stats, diff, du."""

from __future__ import annotations

import os
import stat as st_mod
import sys

import click

from castore.build import WalkOptions, build
from castore.cli.common import Ctx, handle_errors, ignore_opt, main_group, print_json, resolve
from castore.errors import Differences, UnsafeInput
from castore.manifest import Manifest, codec
from castore.manifest.diff import diff as diff_manifests
from castore.manifest.diff import normalize_ignores
from castore.manifest.model import Device, Directory, RegularFile, Symlink
from castore.textsafe import quote
from castore.verify import VerifyOptions, verify_tree


def walk_options(ignore: tuple[str, ...], keep_appledouble: bool) -> WalkOptions:
    return WalkOptions(ignore=ignore, keep_appledouble=keep_appledouble)


@main_group.command("build")
@click.argument("root", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["pb", "text", "json"]), default="pb", show_default=True)
@ignore_opt
@click.option("--keep-appledouble", is_flag=True, help="Keep ._* and __MACOSX entries.")
@handle_errors
def build_cmd(root: str, fmt: str, ignore: tuple[str, ...], keep_appledouble: bool) -> None:
    """Write the manifest of ROOT to stdout (store untouched)."""
    m = build(root, walk_options(ignore, keep_appledouble))
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


def verify_options(ignore_attr: tuple[str, ...], ignore_mode_bits: int, disable_digest: bool, sockets: bool,
                   devices: str) -> VerifyOptions:
    try:
        ign = normalize_ignores(ignore_attr)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ignore-attr") from None
    return VerifyOptions(ignore=ign, ignore_mode_bits=ignore_mode_bits, disable_digest=disable_digest,
                         sockets=sockets, devices=devices)


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
@handle_errors
def verify_cmd(obj: Ctx, root: str, manifest: str, ignore_attr: tuple[str, ...], ignore_mode_bits: int,
               disable_digest: bool, sockets: bool, devices: str, as_json: bool) -> None:
    """Report every difference between ROOT and MANIFEST; exit 1 if any."""
    opts = verify_options(ignore_attr, ignore_mode_bits, disable_digest, sockets,
                          "skip" if devices == "skip" else "check")
    m, _, _ = resolve(obj, manifest)
    found = verify_tree(root, m, opts)
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
@handle_errors
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
@handle_errors
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


def manifest_stats(m: Manifest) -> dict[str, int]:
    counts = {k: 0 for k in ("file", "dir", "symlink", "device", "fifo", "socket", "whiteout")}
    size = chunks = links = 0
    for r in m.resources:
        counts[r.kind] += 1
        if isinstance(r, RegularFile):
            size += r.size
            chunks += len(r.chunks)
            links += len(r.paths) - 1
    return {"entries": sum(len(r.paths) for r in m.resources), "resources": len(m.resources),
            "files": counts["file"], "directories": counts["dir"], "symlinks": counts["symlink"],
            "devices": counts["device"], "fifos": counts["fifo"], "sockets": counts["socket"],
            "whiteouts": counts["whiteout"], "hardlinks": links, "bytes": size, "chunks": chunks,
            "unique_contents": len({r.digest for r in m.files()})}


@main_group.command("stats")
@click.argument("manifest", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
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
        return build(ref, WalkOptions(keep_appledouble=True, note=lambda _m: None))
    return resolve(obj, ref)[0]


@main_group.command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--ignore-attr", multiple=True, metavar="ATTR")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
def diff_cmd(obj: Ctx, a: str, b: str, ignore_attr: tuple[str, ...], as_json: bool) -> None:
    """Changes from A to B (manifests or trees): A added, D deleted, M modified, m metadata only."""
    try:
        ign = normalize_ignores(ignore_attr)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ignore-attr") from None
    changes = diff_manifests(_manifest_or_tree(obj, a), _manifest_or_tree(obj, b), ign)
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
@handle_errors
def du_cmd(obj: Ctx, ref: str, as_json: bool, human: bool) -> None:
    """Disk usage of a manifest or tree, hardlinks counted once."""
    m = _manifest_or_tree(obj, ref)
    apparent = sum(r.size for r in m.files())
    allocated = sum(r.size - sum(e - b for b, e in r.holes) for r in m.files())
    unique = {}
    for r in m.files():
        unique[r.digest] = r.size
    out = {"bytes": apparent, "allocated": allocated, "unique_content_bytes": sum(unique.values()),
           "files": len(m.files()), "entries": sum(len(r.paths) for r in m.resources),
           "directories": sum(1 for r in m.resources if isinstance(r, Directory))}
    if as_json:
        print_json(out)
    else:
        click.echo(f"{_human(apparent) if human else apparent}\t{quote(ref)}")


def _human(n: float) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.1f}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1024
    return str(n)
