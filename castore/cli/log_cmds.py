"""``log NAME``: the versions of a name with their size, files changed and new bytes."""

from __future__ import annotations

import click

from castore.cli.common import Ctx, main_group, print_json
from castore.textsafe import quote


def human(n: int) -> str:
    """Bytes in binary units (B, KiB, MiB, GiB, TiB), one decimal above bytes."""
    if n < 1024:
        return f"{n} B"
    x = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        x /= 1024
        if x < 1024 or unit == "PiB":
            return f"{x:.1f} {unit}"
    return f"{n} B"


@main_group.command("log")
@click.argument("name")
@click.option(
    "-n",
    "--max-count",
    "limit",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Show only the N newest versions.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON list, newest first.")
@click.pass_obj
def log_cmd(obj: Ctx, name: str, limit: int | None, as_json: bool) -> None:
    """The versions recorded under NAME, newest first.

    Per version: its revision (NAME@N, 0 the newest), date, manifest digest, size of
    its files, the files changed since the version before it and the new bytes it
    stored. "incomplete" marks a snapshot taken while some entries could not be read.

    \b
    Examples:
      continuity log etc
      continuity log etc -n 5 --json
      continuity diff etc@1 etc@0
    """
    from castore.log import version_log, when

    entries = version_log(obj.store(), name, limit)
    if as_json:
        print_json({"name": name, "versions": [e.as_json() for e in entries]})
        return
    for e in entries:
        v = e.version
        changed = "first version" if e.changed is None else f"{e.changed} changed"
        size = "unreadable" if e.size < 0 else human(e.size)
        flag = "  INCOMPLETE" if v.incomplete else ""
        click.echo(
            f"{quote(v.name)}@{e.index}  {when(v.time_ns)}  {v.digest}  {size}  {e.files} files  "
            f"{changed}  +{human(e.new_bytes)} new{flag}"
        )
