"""Print a Markdown table of training runs from their results.json files.

    python scripts/summarize_runs.py demo/runs/teacher demo/runs/student_soft demo/runs/student_hard
"""
from __future__ import annotations

import argparse
import json
import os

from softlabel.errors import UserError, run_main
from softlabel.files import read_json


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="OUTPUT_DIR", help="--output-dir of each run")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead")
    return p


def main(args: argparse.Namespace) -> None:
    rows = []
    for run in args.runs:
        res = read_json(os.path.join(run, "results.json"), "run results")
        if "top1" not in res:
            raise UserError(f"run {run}: no validation result (was it trained with --val-dir?)")
        rows.append({"run": os.path.basename(os.path.normpath(run)), "student": res["model"],
                     "labels": res["labels"], "train data": os.path.basename(os.path.normpath(res["train_dir"])),
                     "steps": res["steps"], "top-1 (%)": round(res["top1"], 2),
                     "ECE (%)": round(res["ece"], 2) if "ece" in res else "-"})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
