"""The ``continuity`` command: a thin click layer over the castore library.

Only this package imports click. Errors become one line on stderr
(``continuity: error: ...``) and the exit code of their class.
"""

from __future__ import annotations

import sys

import click

from castore.cli.common import LazyGroup, announce_new_store, fail, main_group

# Command name -> the module that defines it; imported only when the command runs.
LazyGroup.lazy.update({
    **dict.fromkeys(["build", "verify", "ls", "dump", "stats", "diff", "du"], "castore.cli.tree_cmds"),
    **dict.fromkeys(["ingest", "list", "history", "tag", "rm"], "castore.cli.catalog_cmds"),
    "checkout": "castore.cli.checkout_cmds",
    **dict.fromkeys(["apply", "copy"], "castore.cli.apply_cmds"),
    "export": "castore.cli.export_cmd",
    **dict.fromkeys(["gc", "fsck"], "castore.cli.gc_cmds"),
    "mount": "castore.cli.mount_cmd",
    "init": "castore.cli.init_cmds",
    "log": "castore.cli.log_cmds",
    **dict.fromkeys(["push", "pull"], "castore.cli.remote_cmds"),
    **dict.fromkeys(["login", "logout"], "castore.cli.login_cmds"),
    **dict.fromkeys(["keygen", "sign", "verify-signature"], "castore.cli.sign_cmds"),
})


def main() -> None:
    """Entry point of the console script.

    click's own errors (bad usage, exit 2) end, like every other failure, with one
    ``continuity: error: ...`` line on stderr (the usage hint precedes it).
    """
    try:
        rv = main_group.main(prog_name="continuity", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else "", err=True)
        fail("missing command (see the list above)", exc.exit_code)
    except click.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        if isinstance(exc, click.UsageError) and ctx is not None:
            click.echo(ctx.get_usage(), err=True)
            click.echo(f"Try '{ctx.command_path} {ctx.help_option_names[0]}' for help.", err=True)
        fail(exc.format_message(), exc.exit_code)
    except click.Abort:
        fail("aborted", 1)
    announce_new_store()
    sys.exit(rv if type(rv) is int else 0)


__all__ = ["main", "click", "sys"]
