"""Shared CLI plumbing: the group, error mapping, manifest references."""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from castore.cli import COMMANDS, SUMMARIES
from castore.cli.context import NEW_STORE, Ctx
from castore.cli.errmap import F, fail, handle_errors, mapped_errors, quiet_broken_pipe
from castore.cli.resolving import MAX_MANIFEST_FILE, looks_like_path, read_manifest_file, resolve, resolve_lazy
from castore.errors import UnsafeInput
from castore.textsafe import json_text, safe_line

if TYPE_CHECKING:  # imported where used: `--help` needs neither the store nor the manifest code
    pass

ignore_opt = click.option(
    "--ignore",
    "ignore",
    multiple=True,
    metavar="GLOB",
    help="Leave out entries matching GLOB (name, or path from the root). Repeatable.",
)

json_opt = click.option(
    "--json", "as_json", is_flag=True, help="Print the result as one JSON document (keys: docs/json.md)."
)


def complete_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Shell completion of MANIFEST/NAME arguments: the catalog's names (the store is only read)."""
    from castore.store import Store, default_store_path  # noqa: PLC0415

    path = ctx.find_root().params.get("store_path") or os.environ.get("CONTINUITY_STORE") or default_store_path()
    if not os.path.exists(os.path.join(path, "config")):
        return []
    try:
        with Store.open(path, create=False) as store:
            names = [t.name for t in store.tags()]
    except Exception:  # noqa: BLE001 - completion never fails loudly
        return []
    from click.shell_completion import CompletionItem

    return [CompletionItem(n) for n in sorted(names) if n.startswith(incomplete)]


def _write_ignores(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> frozenset[str]:
    from castore.api import write_ignores

    try:
        return write_ignores(value)
    except UnsafeInput as exc:
        raise click.BadParameter(str(exc)) from None


devices_opt = click.option(
    "--devices",
    type=click.Choice(["create", "check", "skip"]),
    default=None,
    help="Device nodes: create (default as root), check (confirm only), skip (default otherwise).",
)

write_ignore_opt = click.option(
    "--ignore-attr",
    "ignore_attr",
    multiple=True,
    metavar="ATTR",
    callback=_write_ignores,
    help="Do not apply ATTR (mode, uid, gid, owner, xattr, mtime): what a plain write gives instead (owner: "
    "you; mode: from the umask; no xattrs; mtime: now). Repeatable.",
)


def announce_new_store() -> None:
    """Say that this command made a new store (once, at the end of a successful run)."""
    while NEW_STORE:
        click.echo(f"continuity: created a new store at {safe_line(NEW_STORE.pop())}", err=True)


class LazyGroup(click.Group):
    """A group whose commands' modules are imported on first use (startup stays cheap)."""

    #: command name -> module that registers it on main_group (the table in castore/cli/__init__.py)
    lazy: dict[str, str] = COMMANDS

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            importlib.import_module(self.lazy[cmd_name])
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self.lazy))

    #: command name -> its help's first paragraph, so that ``--help`` imports no command module
    #: (tests/test_startup.py checks each against the command's own help)
    summaries: dict[str, str] = SUMMARIES

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list, from ``summaries`` where a command's module is not imported yet."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            if name not in self.commands and name in self.summaries:  # click's own shortening, on a stand-in
                rows.append((name, click.Command(name, help=self.summaries[name]).get_short_help_str(limit)))
                continue
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the group and its command with every library error mapped (``mapped_errors``)."""
        with mapped_errors():
            return super().invoke(ctx)


#: verbs that draw a progress bar on a terminal (docs/cli.md)
LONG_VERBS = frozenset({"ingest", "checkout", "apply", "export", "copy", "push", "pull", "gc", "fsck"})


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--store",
    "store_path",
    envvar="CONTINUITY_STORE",
    metavar="PATH",
    help="Store location (default: /var/lib/continuity for root, else $XDG_DATA_HOME/continuity; "
    "env CONTINUITY_STORE). Accepted before or after the verb.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or notes on stderr (errors still print).")
@click.option("-v", "--verbose", count=True, help="More detail on stderr (repeat for more).")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.option(
    "--policy",
    "policy_path",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Trust policy (default: $CONTINUITY_POLICY, $XDG_CONFIG_HOME/continuity/policy.json, "
    "/etc/continuity/policy.json, else accept all; see docs/signing.md).",
)
@click.version_option(package_name="castore", prog_name="continuity")
@click.pass_context
def main_group(
    ctx: click.Context, store_path: str | None, quiet: bool, verbose: int, debug: bool, policy_path: str | None
) -> None:
    """A content-addressed store with a manifest catalog (containerd/continuity manifests).

    \b
    Examples:
      continuity ingest /srv/web --name web       # store a tree, print its manifest digest
      continuity list                             # the catalog
      continuity checkout web /tmp/web            # materialise it elsewhere
      continuity ls web | head                    # its paths
      continuity gc --dry-run                     # what garbage collection would free

    Exit codes: 0 ok, 1 differences or other failure, 2 usage, 3 unsafe input
    refused, 4 integrity, 5 busy, 6 resource limit. `continuity VERB --help`
    shows each verb's options and examples.
    """
    ctx.obj = Ctx(store_path, debug, quiet, verbose, policy_path)
    if debug:
        from castore.cli import phases  # noqa: PLC0415

        phases.mark("command module")  # click resolved (and imported) the command before this callback
        phases.enable()
    if ctx.invoked_subcommand in LONG_VERBS and not quiet and sys.stderr.isatty():
        from castore.cli.progress_view import install_if_terminal  # only when a bar can be drawn

        install_if_terminal(quiet)


def print_json(obj: object) -> None:
    """Print one JSON document: ``{"schema": 1, ...}`` (see docs/json.md for the keys)."""
    from castore.cli.jsonout import document

    click.echo(json_text(document(obj)))


__all__ = [
    "LONG_VERBS",
    "MAX_MANIFEST_FILE",
    "NEW_STORE",
    "Ctx",
    "F",
    "LazyGroup",
    "announce_new_store",
    "complete_names",
    "devices_opt",
    "fail",
    "handle_errors",
    "ignore_opt",
    "json_opt",
    "looks_like_path",
    "main_group",
    "mapped_errors",
    "print_json",
    "quiet_broken_pipe",
    "read_manifest_file",
    "resolve",
    "resolve_lazy",
    "write_ignore_opt",
]
