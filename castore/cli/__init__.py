"""The ``continuity`` command: a thin click layer over the castore library.

Only this package imports click. Errors become one line on stderr
(``continuity: error: ...``) and the exit code of their class.
"""

from __future__ import annotations

import sys

import click

from castore.cli.common import LazyGroup, main_group

# Command name -> the module that defines it; imported only when the command runs.
LazyGroup.lazy.update({
    **dict.fromkeys(["build", "verify", "ls", "dump", "stats", "diff", "du"], "castore.cli.tree_cmds"),
    **dict.fromkeys(["ingest", "checkout", "list", "history", "tag", "rm"], "castore.cli.catalog_cmds"),
    **dict.fromkeys(["apply", "copy"], "castore.cli.apply_cmds"),
    "export": "castore.cli.export_cmd",
    **dict.fromkeys(["gc", "fsck"], "castore.cli.gc_cmds"),
    "mount": "castore.cli.mount_cmd",
    **dict.fromkeys(["push", "pull"], "castore.cli.remote_cmds"),
    **dict.fromkeys(["keygen", "sign", "verify-signature"], "castore.cli.sign_cmds"),
})


def main() -> None:
    """Entry point of the console script."""
    main_group(prog_name="continuity")


__all__ = ["main", "click", "sys"]
