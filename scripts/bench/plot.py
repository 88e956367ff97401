#!/usr/bin/env python3
"""Draw the benchmark results as PNG charts: ours against each reference, per corpus.

    python scripts/bench/plot.py                      # from docs/benchmarks.md -> docs/benchmarks/*.png
    python scripts/bench/plot.py --results r.json     # from a results file (format below)
    python scripts/bench/plot.py --out DIR --dump-json charts.json

The figures are read from the fenced result blocks of docs/benchmarks.md (the lines
the bench scripts print: `scripts/bench/store.py`'s table, `build.py`'s per-corpus
lines, `tar.py`'s and `apply.py`'s summaries), so the charts always show the numbers
the page quotes. A results file holds the same thing directly::

    {"charts": [{"file": "store.png", "title": "...", "unit": "seconds",
                 "groups": [{"label": "ingest src", "bars": {"ours": 0.67, "cp -a+sync": 0.53}}]}]}

Needs matplotlib (`pip install '.[plot]'`); exits 1 with one line if it is missing.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "benchmarks.md"


def blocks(text: str) -> list[str]:
    return re.findall(r"^```\n(.*?)^```", text, re.S | re.M)


def store_chart(text: str) -> dict[str, object] | None:
    """`name vs ref  ours  ref  ratio ...` rows of the store table, seconds only."""
    groups: dict[str, dict[str, float]] = {}
    row = re.compile(r"^(\S.*?) vs (.+?)\s+([\d.]+)s\s+([\d.]+)s\s+[\d.]+x", re.M)
    for b in blocks(text):
        for op, ref, ours, theirs in row.findall(b):
            g = groups.setdefault(op.strip(), {"ours": float(ours)})
            g[ref.strip()] = float(theirs)
    if not groups:
        return None
    return {
        "file": "store.png",
        "title": "ingest and checkout (issue 3): ours vs references",
        "unit": "seconds",
        "groups": [{"label": k, "bars": v} for k, v in groups.items()],
    }


def build_chart(text: str) -> dict[str, object] | None:
    row = re.compile(r"^(src|many|big|versions)\s+\d+\s+\d+\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s", re.M)
    groups = []
    for b in blocks(text):
        for corpus, ours, up, ossl in row.findall(b):
            groups.append(
                {
                    "label": f"build {corpus}",
                    "bars": {"ours": float(ours), "upstream (Go)": float(up), "openssl dgst": float(ossl)},
                }
            )
    if not groups:
        return None
    return {
        "file": "build.png",
        "title": "build (issue 2): ours vs upstream and openssl",
        "unit": "seconds",
        "groups": groups,
    }


def tar_apply_chart(text: str) -> dict[str, object] | None:
    pats = [
        (r"^ingest --tar\s+([\d.]+) s\s+tar -x \+ ingest DIR\s+([\d.]+) s", "ingest --tar", "tar -x + ingest DIR"),
        (r"^export\s+([\d.]+) s\s+tar -c\s+([\d.]+) s", "export", "tar -c"),
        (r"^copy\s+([\d.]+)s wall.*?cp -a\s+([\d.]+)s wall", "copy", "cp -a"),
        (r"^apply\s+([\d.]+)s wall.*?rsync\s+([\d.]+)s wall", "apply", "rsync -a --delete"),
    ]
    groups = []
    for pat, label, ref in pats:
        m = re.search(pat, text, re.M)
        if m:
            groups.append({"label": label, "bars": {"ours": float(m.group(1)), ref: float(m.group(2))}})
    if not groups:
        return None
    return {
        "file": "tar-apply.png",
        "title": "tar, copy and apply (issues 5, 6): ours vs references",
        "unit": "seconds",
        "groups": groups,
    }


def charts_from_page(text: str) -> list[dict[str, object]]:
    return [c for c in (build_chart(text), store_chart(text), tar_apply_chart(text)) if c]


def draw(chart: dict[str, object], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: list[dict[str, object]] = chart["groups"]  # type: ignore[assignment]
    series: list[str] = []
    for g in groups:
        for k in g["bars"]:  # type: ignore[attr-defined]
            if k not in series:
                series.append(k)
    series.sort(key=lambda s: s != "ours")  # ours first, in one colour across charts
    width = 0.8 / max(len(g["bars"]) for g in groups)  # type: ignore[arg-type]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) + 2), 4.8), dpi=100)
    labelled: set[str] = set()
    for j, g in enumerate(groups):
        present = [s for s in series if s in g["bars"]]  # type: ignore[operator]
        for i, s in enumerate(present):  # each group's bars side by side, centred on its tick
            x = j + (i - (len(present) - 1) / 2) * width
            ax.bar(
                x,
                g["bars"][s],
                width,
                color=f"C{series.index(s)}",  # type: ignore[index]
                label=None if s in labelled else s,
            )
            labelled.add(s)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([str(g["label"]) for g in groups], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(str(chart.get("unit", "seconds")) + " (lower is better)")
    ax.set_title(str(chart["title"]), fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = out / str(chart["file"])
    fig.savefig(path, format="png", metadata={"Software": None})  # no version stamp: stable bytes
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--page", type=Path, default=PAGE, help="benchmarks page to read (default docs/benchmarks.md)")
    ap.add_argument("--results", type=Path, help="a JSON results file instead of the page")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks", help="where the PNGs go")
    ap.add_argument("--dump-json", type=Path, help="also write the charts' figures as a results file")
    a = ap.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("plot.py: error: needs matplotlib: pip install '.[plot]'", file=sys.stderr)
        return 1
    charts = json.loads(a.results.read_text())["charts"] if a.results else charts_from_page(a.page.read_text())
    if not charts:
        print(f"plot.py: error: no benchmark figures found in {a.results or a.page}", file=sys.stderr)
        return 1
    a.out.mkdir(parents=True, exist_ok=True)
    for c in charts:
        print(draw(c, a.out))
    if a.dump_json:
        a.dump_json.write_text(json.dumps({"charts": charts}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
