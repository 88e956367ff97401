"""What `ingest` says besides the digest: "unchanged" versions, incomplete snapshots (exit 3)."""

from __future__ import annotations

import sys

import click

from castore.cli.common import Ctx, announce_new_store
from castore.store.revisions import FLAG_INCOMPLETE
from castore.textsafe import safe_line

#: exit code of an ingest that recorded its version but skipped entries it could not read
INCOMPLETE_EXIT = 3


def begin(obj: Ctx, force_history: bool) -> None:
    """Before an ingest: how its version is recorded."""
    obj.writable_store(create=True).record.force = force_history


def finish(obj: Ctx, name: str | None, digest: str) -> None:
    """After the digest is printed: say "unchanged", or end with exit 3 for an incomplete snapshot."""
    announce_new_store()  # before the warnings of an incomplete snapshot, which exits 3
    rec = obj.store().record
    if name is not None and name in rec.unchanged:
        click.echo(
            safe_line(
                f"continuity: {name}: unchanged ({digest} is already its newest version; "
                "no new version recorded; --force-history records one)"
            ),
            err=True,
        )
    if rec.flags & FLAG_INCOMPLETE:
        n = rec.skipped
        click.echo(
            safe_line(
                f"continuity: warning: incomplete snapshot {digest}: {n} entr"
                f"{'y' if n == 1 else 'ies'} could not be read and were left out"
                f"{'' if name is None else f'; recorded under {name} as incomplete'}"
            ),
            err=True,
        )
        sys.exit(INCOMPLETE_EXIT)
