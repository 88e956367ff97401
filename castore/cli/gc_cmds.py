"""Verbs that keep the store sound: gc and fsck."""

from __future__ import annotations

import os

import click

from castore.api import fsck, gc
from castore.cli.common import Ctx, json_opt, main_group, print_json
from castore.cli.retention_opts import build_policy, print_plan, retention_options, retention_plan
from castore.errors import IntegrityError, NotFound, StoreUnusable, UnsafeInput
from castore.gc.collect import parse_duration
from castore.gc.report import GcReport
from castore.store import default_store_path
from castore.textsafe import quote, safe_line
from castore.units import human_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from castore.fsck.check import FsckReport

MAX_INFO_LINES = 20


@main_group.command("gc")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Say what a real run would delete, per kind with sizes (-v: every object); delete nothing.",
)
@click.option(
    "--grace",
    default="1h",
    show_default=True,
    metavar="DURATION",
    help="Keep orphan files and unnamed manifests younger than this (0, 90s, 15m, 2h, 7d).",
)
@click.option(
    "--keep-history",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Keep only the N newest history entries of each name (default: all); --keep-last N.",
)
@retention_options
@click.option("--wait", is_flag=True, help="Wait for a running gc instead of exiting 5.")
@click.option(
    "--nice",
    type=click.IntRange(0, 19),
    default=10,
    show_default=True,
    help="Lower gc's CPU priority by this much (background work yields to ingests; 0: don't).",
)
@json_opt
@click.option("-v", "--verbose", is_flag=True, help="List every object deleted (as the global -v).")
@click.pass_obj
def gc_cmd(
    obj: Ctx,
    dry_run: bool,
    grace: str,
    keep_history: int | None,
    wait: bool,
    nice: int,
    as_json: bool,
    verbose: bool,
    keep_last: int | None,
    keep_within: str | None,
    **buckets: int | None,
) -> None:
    """Delete what no catalog name, lease or recent write references (cron-safe).

    Roots: every name and its history, live leases (running ingests,
    checkouts, mounts) and unnamed manifests younger than the grace period.
    A second gc exits 5 unless --wait. --dry-run prints what would go per
    kind (count and size); -v lists every object.

    Retention (like restic forget / borg prune), per name: --keep-last,
    --keep-hourly/-daily/-weekly/-monthly/-yearly, --keep-within; a version
    any rule keeps stays, the others are forgotten (listed first; with
    --dry-run nothing goes). A name's current version always stays.

    \b
    Examples:
      continuity gc --dry-run
      continuity gc --dry-run --keep-daily 7 --keep-weekly 4 --keep-monthly 12
      continuity gc --keep-last 10 --keep-within 2d --json
      cmd/continuity-gc/continuity-gc     # the cron/systemd wrapper (README: gc from cron)
    """
    verbose = verbose or obj.verbose > 0
    try:
        grace_ns = parse_duration(grace)
    except UnsafeInput as exc:
        raise click.BadParameter(str(exc), param_hint="--grace") from None
    policy = build_policy(keep_history, keep_last, keep_within, **buckets)
    store = obj.store_if_exists()
    if store is None:
        raise NotFound(
            f"no store at {obj.store_path or default_store_path()}: "
            "run `continuity init` to make one (or check --store / CONTINUITY_STORE)"
        )
    if store.readonly:
        from castore.store.readonly import refuse_write

        refuse_write(store.path, "gc deletes from it")
    plan = retention_plan(store, policy) if policy is not None else None
    report = gc(
        store,
        grace_seconds=grace_ns // 10**9,
        dry_run=dry_run,
        keep_history=keep_history,
        wait=wait,
        nice=nice,
        list_items=verbose or as_json,
        retention=policy,
    )
    if as_json:
        print_json({"ok": True, **report.as_json(), **({"retention": plan} if plan is not None else {})})
        return
    if plan is not None:
        print_plan(plan, dry_run)
    if verbose:
        for item in report.items:
            click.echo(f"{'would delete' if dry_run else 'deleted'} {item.kind} {quote(item.name)} {item.size}")
    elif dry_run:
        for line in dry_run_lines(report):
            click.echo(line)
    click.echo(safe_line(report.summary()))
    if obj.debug:  # where the time went, per phase (scripts/bench/gc.py reads this line)
        parts = ", ".join(f"{n} {t['wall']:.2f}/{t['cpu']:.2f}" for n, t in report.phases.items())
        click.echo(f"continuity: debug: gc phases (s wall/cpu): {parts}", err=True)


#: gc item kinds in words, for the dry-run summary (what a person would call them)
KIND_WORDS = {
    "blob": "content blobs",
    "manifest": "unnamed manifests",
    "orphan": "orphan files (crash leftovers)",
    "history": "history entries",
    "lease": "stale leases",
    "tmp": "temporary directories",
    "link": "hardlink objects",
    "index-row": "index rows",
    "cache-row": "cache rows",
}


def dry_run_lines(report: GcReport) -> list[str]:
    """What a real run would free, per kind: ``would delete 12 content blobs (3.4 MiB)``."""
    sizes: dict[str, int] = {}
    for item in report.items:
        sizes[item.kind] = sizes.get(item.kind, 0) + item.size
    out = []
    for kind, n in sorted(report.counts.items(), key=lambda kv: -sizes.get(kv[0], 0)):
        if kind in ("cache-row", "index-row"):
            continue  # bookkeeping, not the user's data: in the summary's counts only
        size = f" ({human_size(sizes[kind])})" if sizes.get(kind) else ""
        out.append(f"would delete {n} {KIND_WORDS.get(kind, kind)}{size}")
    return out


@main_group.command("fsck")
@click.option(
    "--read-data/--no-read-data",
    default=True,
    show_default=True,
    help="Re-hash every blob (the default); --no-read-data checks index, sizes "
    "and references only, for a quick check of a large store.",
)
@click.option("--read-data-subset", "subset", metavar="N/M", help="Re-hash only the N-th of M parts of the blobs.")
@click.option(
    "--repair",
    is_flag=True,
    help="Quarantine damaged blobs, drop index rows that point nowhere, remove edited hardlink objects.",
)
@click.option(
    "--rebuild-index",
    "rebuild",
    is_flag=True,
    help="Re-derive the blob index and references from the "
    "blob files (the catalog is copied from the old metadata when readable).",
)
@json_opt
@click.option("-v", "--verbose", is_flag=True, help="Print every finding, info included (as the global -v).")
@click.pass_obj
def fsck_cmd(
    obj: Ctx, read_data: bool, subset: str | None, repair: bool, rebuild: bool, as_json: bool, verbose: bool
) -> None:
    """Check index <-> files, catalog references and (--read-data) content; exit 4 on damage.

    Orphan files are info (gc removes them); missing, truncated or corrupt
    blobs and dangling references are errors, reported with the names and
    paths they affect.

    \b
    Examples:
      continuity fsck
      continuity fsck --no-read-data          # index and references only: quick
      continuity fsck --read-data-subset 1/7  # a seventh of the blobs (one per weekday)
      continuity fsck --repair --json
    """
    from castore.fsck.check import parse_subset, rebuild_index  # not at load: gc does not need fsck

    verbose = verbose or obj.verbose > 0
    path = obj.store_path or default_store_path()
    if not os.path.exists(os.path.join(path, "config")):
        raise NotFound(f"no store at {path}")
    try:
        parts = parse_subset(subset) if subset else None
    except UnsafeInput as exc:
        raise click.BadParameter(str(exc), param_hint="--read-data-subset") from None
    rebuilt = None
    if rebuild:
        rebuilt = rebuild_index(path)
        if not as_json:
            if rebuilt.catalog_lost and not rebuilt.catalog_restored:
                for d in rebuilt.manifest_digests:
                    click.echo(f"manifest {d}")
            click.echo(safe_line(rebuilt.summary()))
    hint = "; rebuild the index from the blob files with `continuity fsck --rebuild-index`"
    try:
        store = obj.store(create=False)
    except StoreUnusable as exc:
        if "metadata" not in str(exc):
            raise
        raise IntegrityError(f"{exc}{hint}") from exc
    try:
        report = fsck(store, read_data=read_data or parts is not None, subset=parts, repair=repair)
    except IntegrityError as exc:
        raise IntegrityError(f"{exc}{hint}") from exc
    if as_json:
        out = report.as_json()
        if rebuilt is not None:
            out["rebuild"] = rebuilt.__dict__
        print_json(out)
    else:
        _print(report, verbose)
    if not report.sound:
        raise IntegrityError(f"store damaged: {report.count('error')} error(s) (report on stdout)")


def _print(report: FsckReport, verbose: bool) -> None:
    info = 0
    for f in report.findings:
        if f.severity == "info" and not verbose:
            info += 1
            if info > MAX_INFO_LINES:
                continue
        click.echo(f.line())
    if info > MAX_INFO_LINES:
        click.echo(f"info: ... and {info - MAX_INFO_LINES} more (use --verbose)")
    click.echo(safe_line(report.summary()))
