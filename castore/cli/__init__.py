"""The ``continuity`` command: a thin click layer over the castore library.

Only this package imports click. Errors become one line on stderr
(``continuity: error: ...``) and the exit code of their class.
"""

from __future__ import annotations

import sys

import click

from castore.cli.common import main_group
from castore.cli import tree_cmds, store_cmds  # noqa: F401  (register commands)


def main() -> None:
    """Entry point of the console script."""
    main_group(prog_name="continuity")


__all__ = ["main", "click", "sys"]
