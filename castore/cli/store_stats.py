"""``stats`` without MANIFEST: store-wide figures (castore/log.py ``store_stats``)."""

from __future__ import annotations

import click

from castore.cli.common import Ctx, print_json
from castore.cli.log_cmds import human
from castore.textsafe import quote


def print_store_stats(obj: Ctx, as_json: bool) -> None:
    from castore.log import store_stats

    s = store_stats(obj.store())
    if as_json:
        print_json(s)
        return
    ratio = "n/a" if s["dedup_ratio"] is None else f"{s['dedup_ratio']:.2f}x"
    click.echo(f"store: {quote(s['store'])}")
    click.echo(f"names: {s['names']}  manifests: {s['manifests']}")
    for kind, row in s["blobs"].items():
        click.echo(f"blobs ({kind}): {row['count']}  {human(row['bytes'])}")
    click.echo(
        f"stored: {human(s['stored_bytes'])}, content {human(s['content_bytes'])} "
        f"(blob files on disk: {human(s['disk_bytes'])})"
    )
    click.echo(f"logical: {human(s['logical_bytes'])} (every version of every name)")
    click.echo(f"dedup ratio: {ratio}")
    for n in s["per_name"]:
        growth = n["growth"]
        sign = "+" if growth >= 0 else "-"
        click.echo(
            f"  {quote(n['name'])}: {n['versions']} version(s) {n['first']} .. {n['last']}, "
            f"{human(n['size'] if n['size'] and n['size'] > 0 else 0)} now, {sign}{human(abs(growth))}"
            + (f", {n['incomplete_versions']} incomplete" if n["incomplete_versions"] else "")
        )
