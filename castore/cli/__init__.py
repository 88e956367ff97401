"""The ``continuity`` command: a thin click layer over the castore library.

Only this package imports click. Errors become one line on stderr
(``continuity: error: ...``) and the exit code of their class.
"""

from __future__ import annotations

import sys

import click

from castore.cli.common import LazyGroup, fail, main_group, quiet_broken_pipe

# Command name -> the module that defines it; imported only when the command runs.
LazyGroup.lazy.update({
    **dict.fromkeys(["build", "verify", "ls", "dump", "stats", "diff", "du"], "castore.cli.tree_cmds"),
    **dict.fromkeys(["ingest", "list", "history", "tag", "rm"], "castore.cli.catalog_cmds"),
    "checkout": "castore.cli.checkout_cmds",
    **dict.fromkeys(["apply", "copy"], "castore.cli.apply_cmds"),
    "export": "castore.cli.export_cmd",
    **dict.fromkeys(["gc", "fsck"], "castore.cli.gc_cmds"),
    "mount": "castore.cli.mount_cmd",
    **dict.fromkeys(["push", "pull"], "castore.cli.remote_cmds"),
    **dict.fromkeys(["login", "logout"], "castore.cli.login_cmds"),
    **dict.fromkeys(["keygen", "sign", "verify-signature"], "castore.cli.sign_cmds"),
})


def hoist_store(argv: list[str]) -> list[str]:
    """``--store PATH`` (or ``--store=PATH``) anywhere before ``--`` moves in front of the verb."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest.extend(argv[i:])
            break
        if a == "--store" and i + 1 < len(argv):
            front += argv[i:i + 2]
            i += 2
            continue
        if a.startswith("--store="):
            front.append(a)
        else:
            rest.append(a)
        i += 1
    return front + rest


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script.

    click's own errors (bad usage, exit 2) end, like every other failure, in one
    ``continuity: error: ...`` line on stderr, with the help command to run.
    """
    args = hoist_store(list(sys.argv[1:] if argv is None else argv))
    try:
        rv = main_group.main(args=args, prog_name="continuity", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else "", err=True)
        fail("missing command (see the list above)", exc.exit_code)
    except click.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        hint = ""
        if isinstance(exc, click.UsageError) and ctx is not None:
            hint = f" (see '{ctx.command_path} --help')"
        fail(exc.format_message() + hint, exc.exit_code)
    except click.Abort:
        fail("aborted", 1)
    except BrokenPipeError:
        quiet_broken_pipe()
    sys.exit(rv if type(rv) is int else 0)


__all__ = ["main", "click", "sys"]
