"""The ``continuity`` command: a thin click layer over the castore library.

Only this package imports click. Errors become one line on stderr
(``continuity: error: ...``) and the exit code of their class.
"""

from __future__ import annotations

import sys

from castore.cli import phases  # first: its clock starts before the other imports

# isort: split
import click

from castore.cli.common import LazyGroup, announce_new_store, fail, main_group

phases.mark("cli imports")

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

LazyGroup.summaries.update({
    "apply": "Make ROOT match MANIFEST in place, changing only what differs.",
    "build": "Write the manifest of ROOT to stdout (store untouched).",
    "checkout": "Materialise MANIFEST at TARGET (absent or empty), complete or not at all.",
    "copy": "Duplicate the tree SRC at DST (which must not exist), safely, keeping everything.",
    "diff": "Changes from A to B (manifests or trees): A added, D deleted, M modified, m metadata only.",
    "du": "Disk usage of a manifest or tree, hardlinks counted once.",
    "dump": "Dump MANIFEST as prototext (upstream's dump), JSON, or its stored protobuf bytes.",
    "export": "Write MANIFEST as a tar stream (PAX: xattrs, hardlinks, devices, sparse files, ns times).",
    "fsck": "Check index <-> files, catalog references and (--read-data) content; exit 4 on damage.",
    "gc": "Delete what no catalog name, lease or recent write references (cron-safe).",
    "history": "Every manifest recorded under NAME, oldest first.",
    "ingest": "Store the tree SRC; print the manifest digest alone on stdout.",
    "keygen": "Write a new OpenSSH Ed25519 key pair: FILE (private, 0600) and FILE.pub.",
    "list": "The catalog: names, digests, dates, sizes.",
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
    "sign": "Sign MANIFEST (namespace \"continuity\", over its stored bytes) and keep the signature in the store.",
    "stats": ("Counts and sizes of MANIFEST; without it, of the whole store (bytes stored, logical bytes, dedup "
              "ratio, growth of each name)."),
    "tag": "Record MANIFEST under NAME (a manifest file is stored first).",
    "verify": "Report every difference between ROOT and MANIFEST; exit 1 if any.",
    "verify-signature": "Exit 0 when a signature of MANIFEST verifies for a principal of FILE, 4 otherwise.",
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
