"""``python -m castore``: the continuity command."""

from castore.cli import main

main()
