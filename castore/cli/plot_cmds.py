"""``stats --plot FILE``: a store's growth and deduplication over time, drawn with matplotlib.

Every version in every name's history, oldest first: the logical bytes (the sum of
every version's file sizes, as if each were kept whole) against the bytes the store
needs for them (each distinct blob or chunk counted once), and their ratio. The
store is only read. matplotlib is optional (``pip install '.[plot]'``) and imported
here only.
"""

from __future__ import annotations

import os
from typing import Any

from castore.cli.common import Ctx, print_json
from castore.errors import CastoreError, NotFound
from castore.units import human_size, iso_s


def growth(store: Any) -> list[dict[str, object]]:
    """One point per recorded version, in time order: time, name, digest, logical and stored bytes so far."""
    rows = []
    for t in store.tags():
        rows.extend(store.history(t.name))
    rows.sort(key=lambda r: (r.time_ns, r.name))
    seen: set[str] = set()
    sizes: dict[str, dict[str, int]] = {}
    logical = stored = 0
    out: list[dict[str, object]] = []
    for r in rows:
        if r.digest not in sizes:
            pieces: dict[str, int] = {}
            try:
                m = store.load_manifest(r.digest)
            except CastoreError:
                continue  # a damaged or collected version: fsck's business, not the chart's
            for f in m.files():
                if f.chunks:
                    for c in f.chunks:
                        pieces[c.digest] = c.end - c.begin
                else:
                    pieces[f.digest] = f.size
            sizes[r.digest] = pieces
            sizes[r.digest][""] = sum(f.size for f in m.files())  # the version's logical size
        pieces = sizes[r.digest]
        logical += pieces[""]
        stored += sum(n for d, n in pieces.items() if d and d not in seen)
        seen.update(d for d in pieces if d)
        out.append(
            {
                "time": iso_s(r.time_ns),
                "time_ns": r.time_ns,
                "name": r.name,
                "digest": r.digest,
                "logical_size": logical,
                "stored_size": stored,
            }
        )
    return out


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise CastoreError("stats --plot needs matplotlib: pip install '.[plot]' (or matplotlib)") from None
    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def plot_store_growth(obj: Ctx, path: str, *, as_json: bool = False) -> None:
    store = obj.store_if_exists()
    if store is None:
        raise NotFound(f"no store at {obj.store_path or 'the default location'}")
    points = growth(store)
    if not points:
        raise NotFound("the catalog is empty: nothing to plot")
    plt = _pyplot()
    import datetime as dt

    when = [dt.datetime.fromtimestamp(int(p["time_ns"]) / 1e9, dt.UTC) for p in points]  # type: ignore[call-overload]
    logical = [int(p["logical_size"]) for p in points]  # type: ignore[call-overload]
    stored = [int(p["stored_size"]) for p in points]  # type: ignore[call-overload]
    unit, div = _unit(max(logical))
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.step(when, [x / div for x in logical], where="post", label="logical (every version whole)")
    ax.step(when, [x / div for x in stored], where="post", label="stored (each blob or chunk once)")
    ax.set_ylabel(unit)
    ax.set_title(f"Store growth: {len(points)} versions, dedup {logical[-1] / max(stored[-1], 1):.2f}x")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    summary = {
        "path": os.path.abspath(path),
        "versions": len(points),
        "logical_size": logical[-1],
        "stored_size": stored[-1],
        "dedup_ratio": round(logical[-1] / max(stored[-1], 1), 3),
    }
    if as_json:
        print_json(summary)
    else:
        import click

        click.echo(
            f"{path}: {len(points)} versions, {human_size(logical[-1])} logical, "
            f"{human_size(stored[-1])} stored ({summary['dedup_ratio']}x)"
        )


def _unit(n: int) -> tuple[str, float]:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return unit, float(div)
    return "bytes", 1.0
