"""plot.png from a run's summary.json: requests/s and p99 latency per configuration.

    python benchmarks/plot.py benchmarks/results/<run>/summary.json [--out plot.png]

run.py calls it after each run with the harness venv's Python (`--setup` installs
matplotlib there). One figure, two panels sharing the configuration axis: req/s (more is
better) and p99 at 50 connections (less is better); pygateway's bars are coloured, the
baselines grey, so where pygateway stands among them reads at a glance.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: write the file only
import matplotlib.pyplot as plt

PYGW_COLOUR = "#1f77b4"
BASELINE_COLOUR = "#b0b0b0"


def draw(doc: dict[str, Any], out: Path) -> None:
    rows = [r for r in doc["configs"] if r.get("rps")]
    names = [r["config"] for r in rows]
    colours = [PYGW_COLOUR if r["kind"] == "pygateway" else BASELINE_COLOUR for r in rows]
    height = max(3.0, 0.32 * len(rows) + 1.2)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, height), sharey=True)
    ys = range(len(rows))
    left.barh(ys, [r["rps"] for r in rows], color=colours)
    left.set_xlabel("requests/s (wrk -c50, median)")
    right.barh(ys, [r["p99_ms"] or 0 for r in rows], color=colours)
    right.set_xlabel("p99 latency, ms (wrk -c50, median)")
    left.set_yticks(list(ys), names, fontsize=8)
    left.invert_yaxis()  # the table's order, top to bottom
    for axis, key, fmt in ((left, "rps", "{:,.0f}"), (right, "p99_ms", "{:.1f}")):
        axis.grid(axis="x", alpha=0.3)
        for y, r in zip(ys, rows, strict=True):
            if r.get(key) is not None:
                axis.text(r[key], y, " " + fmt.format(r[key]), va="center", fontsize=7)
    fig.suptitle(doc.get("title", "pygateway benchmark"))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path, help="a run's summary.json")
    parser.add_argument("--out", type=Path, help="default: plot.png next to summary.json")
    args = parser.parse_args()
    out = args.out or args.summary.with_name("plot.png")
    draw(json.loads(args.summary.read_text()), out)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
