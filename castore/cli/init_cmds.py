"""``init``: make a store (idempotent)."""

from __future__ import annotations

import os

import click

from castore.cli.common import Ctx, main_group, print_json
from castore.store import Store, default_store_path
from castore.textsafe import safe_line


@main_group.command("init")
@click.option("--json", "as_json", is_flag=True, help="Print {path, created} as JSON.")
@click.pass_obj
def init_cmd(obj: Ctx, as_json: bool) -> None:
    """Make a store at --store / CONTINUITY_STORE (else the default location).

    Running it on an existing store changes nothing and says so (exit 0).

    \b
    Examples:
      continuity --store /srv/store init
      CONTINUITY_STORE=~/store continuity init
    """
    path = os.path.abspath(obj.store_path or default_store_path())
    existed = os.path.lexists(os.path.join(path, "config"))
    Store.open(path, create=not existed).close()  # an existing one is opened: its checks run (owner, mode, index)
    if as_json:
        print_json({"path": path, "created": not existed})
    elif existed:
        click.echo(safe_line(f"continuity: a store already exists at {path} (nothing changed)"), err=True)
    else:
        click.echo(safe_line(f"continuity: created a store at {path}"), err=True)
