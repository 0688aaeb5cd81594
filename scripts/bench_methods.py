"""Label-enhancement recipes, compared over seeds: top-1 and calibration (ECE) of one student.

The label-optimization study (qwer343/id_8285; CIFAR-100, ResNet20-110) in miniature, on the demo data:
every run, teachers included, is one command of validate/label_optimization.py -- the study's own
flags, run by our relabel and trainer with its losses, SGD lr 0.1 / wd 5e-4 and MultiStepLR scaled
to the epochs. Two data settings: the full training split (as the CIFAR study) and the IPC2
subset (20 images: the distilled-data setting). Teachers are the front-end's Vanilla on the full
training split; everything is cached in --work and reused when the script is run again.

    .venv/bin/python scripts/bench_methods.py --work /tmp/bench_methods --write-readme   # docs table
    .venv/bin/python scripts/bench_methods.py --quick --work /tmp/bm_quick                # smoke test

Recipes (student resnet20; KD teacher resnet32 = R32, "smart" teacher resnet44 = R44):
RECIPE_TABLE
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass

from benchlib import (ROOT, TEACHERS, Job, Schedule, data_root, fmt, front_end, mean_std, read_result, run_jobs,
                      settle, teacher_dir, teacher_run, this_command, write_readme)

from softlabel.errors import UserError, run_main
MARK_START, MARK_END = "<!-- bench_methods:start -->", "<!-- bench_methods:end -->"



@dataclass(frozen=True)
class Recipe:
    name: str
    method: str                       # the front-end's --method (the study's table row)
    smart: tuple[str, ...] = ()       # teacher roles; for `random`, the architecture's role only


# The study's table rows, with its teachers: KD from R32, SL / SL-KD from R44, SL-Ens from both.
RECIPES = [
    Recipe("vanilla", "Vanilla"),
    Recipe("ls", "LS"),
    Recipe("kd", "KD", ("r32",)),
    Recipe("sl", "SL", ("r44",)),
    Recipe("sl-ens", "SL-Ens", ("r32", "r44")),
    Recipe("sl-kd", "SL-KD", ("r44",)),
    Recipe("random", "random", ("r44",)),
]
BY_NAME = {r.name: r for r in RECIPES}


def recipe_table() -> str:
    from softlabel.commands.label_optimization import METHODS
    lines = []
    for r in RECIPES:
        m = METHODS[r.method.lower()]
        smart = ",".join(TEACHERS[t] for t in r.smart)
        how = f"label_optimization.py --method {r.method}" + (f" --smart_model {smart}" if smart else "") \
            + ("" if r.method == "random" or not smart else f" --smart_model_path {','.join(t.upper() for t in r.smart)}")
        what = f"trainer --loss-type {m.loss}" if m.loss else ("hard labels" + (" + " + " ".join(m.hard_flags)
                                                                               if m.hard_flags else ""))
        lines.append(f"  {r.name:8s} {what}\n           {how}")
    return "\n".join(lines)


__doc__ = __doc__.replace("RECIPE_TABLE", recipe_table())


# ----------------------------------------------------------------------------- settings

@dataclass
class Setting:
    key: str          # "train" or "ipc2"
    title: str
    subset: str       # folder under the data directory
    batch: int
    epochs: int




def settings_of(args) -> list[Setting]:
    return [Setting("train", "full train split" if not args.quick else f"train stand-in ({args.train_subset})",
                    args.train_subset, args.batch, args.train_epochs),
            Setting("ipc2", "IPC2 (20 images)", "ipc2", 20, args.ipc_steps)]






def setting_dir(args, s: Setting) -> str:
    return os.path.join(args.work, f"{s.key}_{s.subset}_e{s.epochs}_b{s.batch}_t{args.teacher_epochs}")






def run_of(args, s: Setting, r: Recipe, seed: int) -> str:
    run = args.student + "".join("_" + TEACHERS[t] for t in r.smart)
    return os.path.join(setting_dir(args, s), "folder", r.method, run, f"seed{seed}", "train")


def build_jobs(args) -> tuple[list[Job], dict]:
    """Every teacher and student run (each one front-end command: relabel + trainer), with its
    dependencies, and what each table cell reads."""
    jobs: list[Job] = []
    # rough per-image cost relative to one resnet20 training image (measured on 2 CPU cores)
    train_cost = {"resnet20": 1.0, "resnet32": 1.55, "resnet44": 2.26}
    fwd_cost = {"resnet20": 0.3, "resnet32": 0.41, "resnet44": 0.68}
    n_train = args.train_images
    full = data_root(args, "teachers", args.train_subset)
    for role, arch in TEACHERS.items():
        argv = front_end(args, full, arch, "Vanilla", Schedule(args.batch, args.teacher_epochs, args.teacher_seed),
                         teacher_dir(args, role))
        jobs.append(Job(f"teacher-{role}", argv, os.path.join(teacher_run(args, role), "results.json"),
                        train_cost.get(arch, 2.0) * n_train * args.teacher_epochs))
    cells: dict = {}
    for s in settings_of(args):
        images = n_train if s.key == "train" else 20
        root = data_root(args, s.key, s.subset)
        for seed in args.seeds:
            for r in (BY_NAME[n] for n in args.recipes):
                run = run_of(args, s, r, seed)
                argv = front_end(args, root, args.student, r.method, Schedule(s.batch, s.epochs, seed),
                                 setting_dir(args, s), r.smart)
                cost = images * s.epochs * (1.0 + sum(fwd_cost.get(TEACHERS[t], 1.0) for t in r.smart))
                deps = [f"teacher-{t}" for t in r.smart if r.method != "random"]
                jobs.append(Job(f"{s.key}-{r.name}-s{seed}", argv, os.path.join(run, "results.json"), cost, deps))
                cells.setdefault((s.key, r.name), []).append(os.path.join(run, "results.json"))
    for job in jobs:
        job.log = os.path.join(args.work, "logs", job.name + ".log")
    return jobs, cells


# ----------------------------------------------------------------------------- running



# ----------------------------------------------------------------------------- tables





_VAL: dict = {}


def confidence(run: str, val_dir: str) -> dict:
    """Mean max-softmax confidence and top-1 (percent) of a run's final checkpoint on val, with
    the trainer's evaluation transform (crop-pct 1.0); cached in RUN/confidence.json. ECE says
    how far confidence is from accuracy, this says in which direction."""
    cache = os.path.join(run, "confidence.json")
    if os.path.isfile(cache):
        return read_result(cache)
    import torch
    from torch.utils.data import DataLoader

    from softlabel.checkpoint import read_weights
    from softlabel.data import IndexedImageFolder, scan_image_folder
    from softlabel.evaluation import predict
    from softlabel.models import create_model
    from softlabel.transforms import eval_pixels_transform
    state, meta = read_weights(os.path.join(run, "checkpoint.pth"), "checkpoint")
    model = create_model(meta["arch"], meta["num_classes"])
    model.load_state_dict(state)
    model.eval()
    key = (val_dir, meta["input_size"])
    if key not in _VAL:  # decoded once per process
        data = IndexedImageFolder(scan_image_folder(val_dir, "--data"), eval_pixels_transform(meta["input_size"], 1.0))
        _VAL[key] = list(DataLoader(data, batch_size=256))
    logits, target = predict(model, _VAL[key], torch.device("cpu"), mean=meta["mean"], std=meta["std"])
    conf, pred = torch.softmax(logits, dim=1).max(dim=1)
    correct = (pred == target).float()
    out = {"confidence": 100.0 * float(conf.mean()), "top1": 100.0 * float(correct.mean())}
    with open(cache, "w") as f:
        json.dump(out, f)
    return out


def summarize(args, cells: dict) -> dict:
    summary: dict = {"teachers": {}, "cells": {}}
    for role, arch in TEACHERS.items():
        res = read_result(os.path.join(teacher_run(args, role), "results.json"))
        summary["teachers"][role] = {"arch": arch, "top1": res["top1"], "ece": res["ece"]}
    val = os.path.join(args.data_dir, args.val_subset)
    for (setting, recipe), paths in cells.items():
        results = [read_result(p) for p in paths]
        confs = [confidence(os.path.dirname(p), val) for p in paths]
        for r, c, p in zip(results, confs, paths):
            if abs(r["top1"] - c["top1"]) > 0.5:  # the re-evaluation must see what the trainer saw
                raise UserError(f"{os.path.dirname(p)}: re-evaluated top-1 {c['top1']:.2f}% differs from the "
                                f"trainer's {r['top1']:.2f}%")
        summary["cells"][f"{setting}/{recipe}"] = {
            "top1": [r["top1"] for r in results], "ece": [r["ece"] for r in results],
            "overconfidence": [c["confidence"] - r["top1"] for c, r in zip(confs, results)]}
    return summary




def markdown(args, summary: dict) -> str:
    sets = settings_of(args)
    head = "| recipe | " + " | ".join(f"{s.title}: top-1 (%) | ECE (%) | conf − acc" for s in sets) + " |"
    rows = [head, "|---|" + "---|---|---|" * len(sets)]
    for name in args.recipes:
        cells = []
        for s in sets:
            c = summary["cells"][f"{s.key}/{name}"]
            cells += [fmt(c["top1"]), fmt(c["ece"]), f"{mean_std(c['overconfidence'])[0]:+.1f}"]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    teachers = ", ".join(f"{t['arch']} (R{t['arch'][6:]}) {t['top1']:.2f}% top-1, ECE {t['ece']:.2f}%"
                         for t in summary["teachers"].values())
    note = (f"Student {args.student}, mean ± std over seeds {','.join(map(str, args.seeds))}; top-1 and "
            f"15-bin ECE on {args.val_subset} ({args.val_images} images); conf − acc: mean max-softmax confidence minus top-1, in points "
            f"(> 0 overconfident, < 0 underconfident; mean over seeds). Full train split: {sets[0].epochs} epochs of batch {sets[0].batch}; "
            f"IPC2: {sets[1].epochs} steps of batch 20. Teachers ({args.teacher_epochs} epochs, hard labels, "
            f"full train split): {teachers}.")
    return "\n".join(rows) + "\n\n" + note


# Only orderings the study's table shows (its README, student R20): (claim, a, b, metric,
# sign, the study's a, the study's b); the claim holds when sign * (a - b) > 0.
ORDERINGS = [
    ("SL beats vanilla (top-1)", "sl", "vanilla", "top1", 1, "69.17", "67.66"),
    ("SL-Ens beats vanilla (top-1)", "sl-ens", "vanilla", "top1", 1, "69.66", "67.66"),
    ("KD beats vanilla (top-1)", "kd", "vanilla", "top1", 1, "68.20", "67.66"),
    ("LS beats vanilla (top-1)", "ls", "vanilla", "top1", 1, "67.84", "67.66"),
    ("LS lowers ECE vs vanilla", "ls", "vanilla", "ece", -1, "0.0627", "0.065"),
    ("SL beats KD (top-1)", "sl", "kd", "top1", 1, "69.17", "68.20"),
    ("SL lowers ECE vs KD", "sl", "kd", "ece", -1, "0.0213", "0.061"),
    ("SL better calibrated than SL-Ens (ECE)", "sl", "sl-ens", "ece", -1, "0.0213", "0.0467"),
    ("SL-Ens at least as accurate as SL (top-1)", "sl-ens", "sl", "top1", 1, "69.66", "69.17"),
    ("SL-KD beats SL (top-1)", "sl-kd", "sl", "top1", 1, "69.67", "69.17"),
    ("SL-KD best calibrated: lower ECE than SL", "sl-kd", "sl", "ece", -1, "0.014", "0.0213"),
    ("SL-KD best in top-1: at least SL-Ens", "sl-kd", "sl-ens", "top1", 1, "69.67", "69.66"),
]


def orderings(args, summary: dict) -> str:
    """Which of the study's orderings the measured means reproduce; a difference within the
    larger of the two seed standard deviations is called a tie."""
    sets = settings_of(args)
    rows = ["| ordering (the study) | the study (R20) | " + " | ".join(s.title for s in sets) + " |",
            "|---|---|" + "---|" * len(sets)]
    for claim, a, b, metric, sign, seed_a, seed_b in ORDERINGS:
        if a not in args.recipes or b not in args.recipes:
            continue
        cells = []
        for s in sets:
            ma, sa = mean_std(summary["cells"][f"{s.key}/{a}"][metric])
            mb, sb = mean_std(summary["cells"][f"{s.key}/{b}"][metric])
            diff = sign * (ma - mb)
            noise = max(sa, sb)
            verdict = "yes" if diff > noise else ("no" if diff < -noise else "tie")
            cells.append(f"{verdict} ({ma:.2f} vs {mb:.2f})")
        rows.append(f"| {claim} | {seed_a} vs {seed_b} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot(args, summary: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sets = settings_of(args)
    fig, axes = plt.subplots(len(sets), 3, figsize=(12, 2.2 + 0.35 * len(args.recipes) * len(sets)), squeeze=False)
    ys = range(len(args.recipes))
    for row, s in zip(axes, sets):
        for ax, (metric, title) in zip(row, (("top1", "top-1 (%)"), ("ece", "ECE (%)"),
                                             ("overconfidence", "confidence − accuracy (points)"))):
            vals = [summary["cells"][f"{s.key}/{n}"][metric] for n in args.recipes]
            means = [mean_std(v)[0] for v in vals]
            stds = [mean_std(v)[1] for v in vals]
            ax.barh(list(ys), means, xerr=stds, color=[f"C{i}" for i in ys], alpha=0.75, capsize=3)
            for y, v in zip(ys, vals):
                ax.plot(v, [y] * len(v), "k.", markersize=4)
            ax.set_yticks(list(ys))
            ax.set_yticklabels(args.recipes)
            ax.invert_yaxis()
            ax.set_title(f"{s.title}: {title}", fontsize=10)
            ax.grid(axis="x", alpha=0.3)
            if metric == "overconfidence":
                ax.axvline(0.0, color="k", linewidth=0.8)
            if metric == "top1":
                lo = min(min(v) for v in vals)
                ax.set_xlim(max(0.0, math.floor(lo / 5) * 5 - 5), 100)
    fig.suptitle(f"{args.student} students, {len(args.seeds)} seed(s) (dots); bars: mean ± std", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)




# ----------------------------------------------------------------------------- main

def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Recipes (student resnet20):\n" + recipe_table(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="bench_methods_work", help="teachers, stores, runs and logs, reused "
                   "when present (default: ./bench_methods_work)")
    p.add_argument("--data", default=None, help="demo data made by scripts/make_demo_data.py with train/, val/, "
                   "ipc2/ (default: made in WORK/data)")
    p.add_argument("--seeds", default="0,1,2", help="seeds of the students and of their stores (default: 0,1,2)")
    p.add_argument("--recipes", default=",".join(r.name for r in RECIPES), help="which recipes (default: all)")
    p.add_argument("--student", default="resnet20", help="student architecture (default: resnet20)")
    p.add_argument("--teacher-epochs", type=int, default=60, help="teacher epochs on the full split (default: 60)")
    p.add_argument("--train-epochs", type=int, default=10,
                   help="student epochs on the full split = stored epochs (default: 10)")
    p.add_argument("--ipc-steps", type=int, default=300,
                   help="student steps on IPC2 (batch 20: one step per epoch) = stored epochs (default: 300)")
    p.add_argument("-b", "--batch", type=int, default=64, help="batch of teachers and full-split students (64)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default: 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default: 1)")
    p.add_argument("--write-readme", action="store_true", help="put the tables into --readme between "
                   f"{MARK_START} and {MARK_END}")
    p.add_argument("--readme", default=os.path.join(ROOT, "docs", "recipes.md"), help="the file --write-readme edits "
                   "(default: docs/recipes.md)")
    p.add_argument("--plot", default=None, help="PNG of the results (default: img/methods.png; --quick: WORK/methods.png)")
    p.add_argument("--quick", action="store_true", help="a smoke test of every recipe: 1 seed, teachers and "
                   "students on ipc5 for 1 epoch, IPC2 for 2 steps, evaluated on ipc2 instead of val")
    return p





def record_wall_time(args, jobs: list, times: dict, wall: float, table: str, order: str) -> None:
    """Keep the wall time of a run that executed every job; with --write-readme put the tables in."""
    wall_file = os.path.join(args.work, "wall.json")
    names = sorted(j.name for j in jobs)
    if len(times) == len(jobs):  # everything ran now: this is the wall time of the whole bench
        with open(wall_file, "w") as f:
            json.dump({"wall_s": wall, "jobs": args.jobs, "threads": args.threads, "runs": names}, f)
    if args.write_readme:
        command = this_command()
        timing = ""
        if os.path.isfile(wall_file):
            with open(wall_file) as f:
                whole = json.load(f)
            if whole.get("runs") in (None, names):
                timing = f": {whole['wall_s'] / 60:.0f} min wall time from scratch, {whole['jobs']} runs at a time"
        write_readme(f"{table}\n\n{order}\n\n*`{command.strip()}`{timing}.*", args.readme, MARK_START, MARK_END)


def main(args: argparse.Namespace) -> None:
    start = time.time()
    args.recipes = [v.strip() for v in args.recipes.split(",") if v.strip()]
    unknown = [r for r in args.recipes if r not in BY_NAME]
    if unknown:
        raise UserError(f"--recipes: unknown {', '.join(unknown)} (known: {', '.join(BY_NAME)})")
    if not args.recipes:
        raise UserError("--recipes needs at least one entry")
    settle(args)
    jobs, cells = build_jobs(args)
    times = run_jobs(jobs, args.jobs, args.threads)
    summary = summarize(args, cells)
    summary["job_seconds"] = times
    wall = time.time() - start
    summary["wall_s"] = wall
    with open(os.path.join(args.work, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    table, order = markdown(args, summary), orderings(args, summary)
    plot_path = args.plot or (os.path.join(args.work, "methods.png") if args.quick else os.path.join(ROOT, "img", "methods.png"))
    plot(args, summary, plot_path)
    print("\n" + table + "\n\n" + order + "\n")
    print(f"plot: {plot_path}")
    ran = sum(times.values())
    print(f"total wall time {wall / 60:.1f} min ({wall:.0f} s); {len(times)} runs executed now "
          f"({ran / 60:.1f} run-minutes), {len(jobs) - len(times)} taken from {args.work}")
    record_wall_time(args, jobs, times, wall, table, order)


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
