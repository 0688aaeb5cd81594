"""Draw training curves from one or more runs' metrics.jsonl into a PNG.

    python scripts/plot_metrics.py demo/runs/student_soft demo/runs/student_hard --out img/demo_curves.png

Each run is its --output-dir (or the metrics.jsonl itself). Panels: validation top-1, training
loss, and, when the runs have them, validation NLL and calibration error (ECE).
"""
from __future__ import annotations

import argparse
import json
import os

from softlabel.errors import UserError, optional_import, run_main
from softlabel.files import ensure_dir

PANELS = (("top1", "val top-1 (%)"), ("train_loss", "train loss"), ("nll", "val NLL"), ("ece", "val ECE (%)"))


def read_rows(run: str) -> list[dict]:
    path = run if run.endswith(".jsonl") else os.path.join(run, "metrics.jsonl")
    try:
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (is {run} a training --output-dir?)") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not JSON lines ({exc})") from None
    if not rows:
        raise UserError(f"{path}: no evaluations recorded yet")
    return rows


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="RUN", help="--output-dir of a run, or its metrics.jsonl")
    p.add_argument("--labels", default=None, help="comma-separated legend names (default: directory names)")
    p.add_argument("--out", default="img/metrics.png", help="PNG to write (default: img/metrics.png)")
    return p


def main(args: argparse.Namespace) -> None:
    runs = {run: read_rows(run) for run in args.runs}
    names = args.labels.split(",") if args.labels else [os.path.basename(os.path.normpath(r)) for r in runs]
    if len(names) != len(runs):
        raise UserError(f"--labels gives {len(names)} names for {len(runs)} runs")
    panels = [(k, t) for k, t in PANELS if any(k in row for rows in runs.values() for row in rows)]

    optional_import("matplotlib", "plots", "plot_metrics.py").use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for name, rows in zip(names, runs.values()):
            points = [(r["epoch"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    ensure_dir(os.path.dirname(os.path.abspath(args.out)), "--out")
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}: {len(runs)} runs, panels {', '.join(k for k, _ in panels)}")


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
