"""The ``continuity`` command: a thin click layer over the castore library.

Only this package imports click. Errors become one line on stderr
(``continuity: error: ...``) and the exit code of their class.
"""

from __future__ import annotations

import sys

import click

import castore.cli.apply_cmds  # noqa: F401  (apply, copy)
import castore.cli.export_cmd  # noqa: F401  (export)
import castore.cli.gc_cmds  # noqa: F401  (gc, fsck)
import castore.cli.mount_cmd  # noqa: F401  (mount)
import castore.cli.remote_cmds  # noqa: F401  (push, pull)
from castore.cli import store_cmds, tree_cmds  # noqa: F401  (register commands)
from castore.cli.common import main_group


def main() -> None:
    """Entry point of the console script."""
    main_group(prog_name="continuity")


__all__ = ["main", "click", "sys"]
