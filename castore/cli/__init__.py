"""The ``continuity`` command: a thin click layer over the castore library.

Only this package imports click, and only when a command needs it: ``--help`` and the
common read-only verbs run on a click-free fast path (``castore.cli.fastpath``) whose
output, errors and exit codes are byte for byte those of the click command
(tests/test_fastpath.py runs both). Errors become one line on stderr
(``continuity: error: ...``) and the exit code of their class.
"""

from __future__ import annotations

import sys

from castore.cli import phases  # first: its clock starts before the other imports

# Command name -> the module that defines it; imported only when the command runs.
COMMANDS: dict[str, str] = {
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
}

#: command name -> its help's first paragraph, so that ``--help`` imports no command module
#: (tests/test_startup.py checks each against the command's own help)
SUMMARIES: dict[str, str] = {
    "apply": "Make ROOT match MANIFEST in place, changing only what differs.",
    "build": "Write the manifest of ROOT to stdout (store untouched).",
    "checkout": "Materialise MANIFEST at TARGET (absent or empty), complete or not at all.",
    "copy": "Duplicate the tree SRC at DST (which must not exist), safely, keeping everything.",
    "diff": "Changes from A to B (manifests or trees): A added, D deleted, M modified, m metadata only.",
    "du": "Disk usage (bytes) of a manifest or tree, hardlinks counted once.",
    "dump": "Dump MANIFEST as prototext (upstream's dump), JSON, or its stored protobuf bytes.",
    "export": "Write MANIFEST as a tar stream (PAX: xattrs, hardlinks, devices, sparse files, ns times).",
    "fsck": "Check index <-> files, catalog references and (--read-data) content; exit 4 on damage.",
    "gc": "Delete what no catalog name, lease or recent write references (cron-safe).",
    "history": "Every manifest recorded under NAME, oldest first.",
    "ingest": "Store the tree SRC; print the manifest digest alone on stdout.",
    "keygen": "Write a new OpenSSH Ed25519 key pair: FILE (private, 0600) and FILE.pub.",
    "list": "The catalog: name, digest, date (UTC) and tree size in bytes, tab-separated.",
    "login": "Check USER's password against REGISTRY (GET /v2/), then store it for push and pull.",
    "logout": "Forget the stored credentials of REGISTRY.",
    "init": "Make a store at --store / CONTINUITY_STORE (else the default location).",
    "log": "The versions recorded under NAME, newest first.",
    "ls": "List the entries of MANIFEST, one path per line.",
    "mount": "Mount MANIFEST read-only at MOUNTPOINT (an existing empty directory) until unmounted.",
    "pull": "Copy a tree or a container image (flattened) from a registry or an OCI layout into the store; "
    "print its manifest digest.",
    "push": "Copy MANIFEST and every blob it references to a registry; print REGISTRY/REPO@DIGEST.",
    "rm": "Remove NAMES from the catalog (content goes at the next gc).",
    "sign": 'Sign MANIFEST (namespace "continuity", over its stored bytes) and keep the signature in the store.',
    "stats": (
        "Counts and sizes of MANIFEST; without it, of the whole store (bytes stored, logical bytes, dedup "
        "ratio, growth of each name)."
    ),
    "tag": "Record MANIFEST under NAME (a manifest file is stored first).",
    "verify": "Report every difference between ROOT and MANIFEST; exit 1 if any.",
    "verify-signature": "Exit 0 when a signature of MANIFEST verifies for a principal of FILE, 4 otherwise.",
}


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
            front += argv[i : i + 2]
            i += 2
            continue
        if a.startswith("--store="):
            front.append(a)
        else:
            rest.append(a)
        i += 1
    return front + rest


def _terminal_width() -> int:
    """The help width click's HelpFormatter picks (terminal columns, at most 80, minus 2; at least 50),
    without its import of shutil (and bz2, lzma: 5 ms of `--help`)."""
    import os

    forced = sys.modules["click.formatting"].FORCED_WIDTH if "click.formatting" in sys.modules else None
    if forced is not None:
        return int(forced)
    try:
        cols = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        try:
            cols = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            cols = 80
    return max(min(cols or 80, 80) - 2, 50)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script: the fast path (``castore.cli.fastpath``) where it applies,
    else the click command group (``click_main``)."""
    args = hoist_store(list(sys.argv[1:] if argv is None else argv))
    from castore.cli.fastpath import run_fast

    run_fast(args)  # exits when it ran the command
    _click_main(args)


def click_main(argv: list[str] | None = None) -> None:
    """The click command group alone, never the fast path (tests compare the two)."""
    _click_main(hoist_store(list(sys.argv[1:] if argv is None else argv)))


def _click_main(args: list[str]) -> None:
    """click's own errors (bad usage, exit 2) end, like every other failure, in one
    ``continuity: error: ...`` line on stderr, with the help command to run."""
    import click

    from castore.cli.common import announce_new_store, fail, main_group, quiet_broken_pipe

    phases.mark("cli imports")
    try:
        rv = main_group.main(args=args, prog_name="continuity", standalone_mode=False, terminal_width=_terminal_width())
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
    announce_new_store()
    sys.exit(rv if type(rv) is int else 0)


def __getattr__(name: str) -> object:
    """``castore.cli.main_group``, ``castore.cli.click``: imported on first use (click is not, for the fast path)."""
    if name == "click":
        import click

        return click
    if name in ("main_group", "LazyGroup"):
        from castore.cli import common

        return getattr(common, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["COMMANDS", "SUMMARIES", "click_main", "hoist_store", "main"]
