"""gc's retention options (restic ``forget`` / borg ``prune`` style); see castore/gc/retention.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from castore.gc.retention import BUCKETS, Policy, plan
from castore.store import Store
from castore.store.revisions import versions
from castore.textsafe import quote

_UNITS = {"hourly": "hours", "daily": "days", "weekly": "ISO weeks", "monthly": "months", "yearly": "years"}


def retention_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--keep-last, --keep-hourly … --keep-yearly, --keep-within (applied to each name's history)."""
    opts = [
        click.option(
            "--keep-last",
            type=click.IntRange(min=1),
            default=None,
            metavar="N",
            help="Keep the N newest versions of each name (--keep-history N: the same).",
        )
    ]
    for kind in BUCKETS:
        opts.append(
            click.option(
                f"--keep-{kind}",
                type=click.IntRange(min=1),
                default=None,
                metavar="N",
                help=f"Keep the newest version of each of the N newest {_UNITS[kind]} (UTC) that hold one.",
            )
        )
    opts.append(
        click.option(
            "--keep-within",
            default=None,
            metavar="DURATION",
            help="Keep every version younger than DURATION before the name's newest (2h, 7d, 4w).",
        )
    )
    for o in reversed(opts):
        fn = o(fn)
    return fn


def build_policy(
    keep_history: int | None, keep_last: int | None, keep_within: str | None, **buckets: int | None
) -> Policy | None:
    """The policy the options give (None: keep every version)."""
    from castore.errors import UnsafeInput
    from castore.gc.collect import parse_duration

    if keep_history is not None and keep_last is not None and keep_history != keep_last:
        raise click.UsageError("--keep-history is --keep-last: give one of them")
    last = keep_last if keep_last is not None else keep_history
    within = None
    if keep_within is not None:
        try:
            within = parse_duration(keep_within)
        except UnsafeInput as exc:
            raise click.BadParameter(str(exc), param_hint="--keep-within") from None
    policy = Policy(last=last, within_ns=within, **{k: buckets.get(f"keep_{k}") for k in BUCKETS})
    return None if policy.empty() else policy  # --keep-history 0: only each name's current version stays


def retention_plan(store: Store, policy: Policy) -> list[dict[str, Any]]:
    return plan({t.name: versions(store, t.name) for t in store.tags()}, policy)


def print_plan(rows: list[dict[str, Any]], dry_run: bool) -> None:
    """One line per version: keep (and why) or forget."""
    for r in rows:
        verb = "keep  " if r["keep"] else ("would forget" if dry_run else "forget")
        why = f"  ({', '.join(r['reasons'])})" if r["keep"] else ""
        click.echo(f"{verb} {quote(r['revision'])}  {r['time']}  {r['digest']}{why}")
