"""The label-optimization study's distillation baselines on the demo: accuracy gap over vanilla.

The study's table (its README, qwer343/id_8285; CIFAR-100): student resnet20 (R20), teacher resnet56 (R56),
"acc. gap" = the distilled student's top-1 minus the vanilla student's, for KD and ten feature
distillers. Here, in miniature on the demo data (10 classes): R56 is trained by our trainer through
the study's front-end (Vanilla, hard labels, the full training split, as bench_methods.py trains
its teachers, in the same --work folder), then every row trains R20 on the full split with the
front-end's optimizer and schedule (SGD lr 0.1, weight decay 5e-4, MultiStepLR scaled to the
epochs, 32 px crops of scale 0.5-1, no mixing): vanilla (hard labels), KD (--teacher resnet56
--loss-type kd: 0.1 CE + 0.9 T^2 KL at T 4, RepDistiller's -r 0.1 -a 0.9) and each --distiller (its
RepDistiller defaults: CE plus beta x its loss; AB and FT with their init stage scaled to the
epochs as RepDistiller's 30 of 240; KDSS, SSKD's definition: KD plus its loss, the teacher head's
init stage scaled as SSKD's 60 of 240). Mean +- std over seeds; the gap is taken per seed (same seed's
vanilla), then averaged.

    .venv/bin/python scripts/bench_distillers.py --work /tmp/bench_methods --write-readme
"""
from __future__ import annotations

import argparse
import json
import os
import time

from benchlib import (
    PY,
    ROOT,
    Job,
    Schedule,
    data_root,
    fmt,
    front_end,
    mean_std,
    read_result,
    run_jobs,
    settle,
    teacher_dir,
    this_command,
    write_readme,
)

from softlabel.distill import DISTILLERS
from softlabel.errors import UserError, run_main
from softlabel.commands.label_optimization import MILESTONES
from softlabel.commands.label_optimization import STUDY_EPOCHS as STUDY_LR_EPOCHS

TRAINER = "validate/train_FKD_parallel.py"
MARK_START, MARK_END = "<!-- bench_distillers:start -->", "<!-- bench_distillers:end -->"
TEACHER = "resnet56"
# The study's README "acc. gap" column (R20 student, R56 teacher, CIFAR-100), in its order; KDSS is run as
# SSKD, the self-supervised KD method defined for CIFAR (docs/validate.md).
SEED_GAPS = {"kd": 1.03, "fitnet": 1.97, "at": 2.15, "sp": 1.85, "vid": 2.08, "rkd": 1.85, "pkt": 1.81,
             "ab": 1.86, "ft": 1.89, "crd": 2.05, "kdss": 1.86}
ROWS = ["vanilla", *SEED_GAPS]
STUDY_EPOCHS = 240  # RepDistiller's and SSKD's; the init stages: AB's and FT's 30, KDSS's 60 (the methods' defaults)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="bench_methods_work", help="teachers, runs and logs, reused when present "
                   "(share it with bench_methods.py: the same teacher folder)")
    p.add_argument("--data", default=None, help="demo data (default: made in WORK/data)")
    p.add_argument("--seeds", default="0,1,2", help="student seeds (default: 0,1,2)")
    p.add_argument("--rows", default=",".join(ROWS), help="which rows (default: all)")
    p.add_argument("--student", default="resnet20", help="student architecture (default: resnet20)")
    p.add_argument("--teacher-epochs", type=int, default=60, help="R56's epochs on the full split (default: 60)")
    p.add_argument("--train-epochs", type=int, default=10, help="student epochs on the full split (default: 10)")
    p.add_argument("-b", "--batch", type=int, default=64, help="batch of teacher and students (default: 64)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default: 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default: 1)")
    p.add_argument("--write-readme", action="store_true", help="put the table into --readme between "
                   f"{MARK_START} and {MARK_END}")
    p.add_argument("--readme", default=os.path.join(ROOT, "docs", "validate.md"), help="(default: docs/validate.md)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 seed, teacher and students on ipc5 for 1 epoch")
    return p


def teacher_run(args) -> str:
    return os.path.join(teacher_dir(args, TEACHER), "folder", "Vanilla", TEACHER, f"seed{args.teacher_seed}", "train")


def init_epochs(args, row: str) -> int:
    return max(1, round(DISTILLERS[row].init_epochs * args.train_epochs / STUDY_EPOCHS))


def student_argv(args, row: str, seed: int, out: str) -> list[str]:
    """The trainer as the front-end runs Vanilla (its log's command), plus the row's teacher and loss."""
    root = data_root(args, "train", args.train_subset)
    milestones = sorted({m * args.train_epochs // STUDY_LR_EPOCHS for m in MILESTONES}
                        - {0, args.train_epochs}) or [args.train_epochs]
    argv = [PY, TRAINER, "--train-dir", os.path.join(root, "train"), "--val-dir", os.path.join(root, "val"),
            "--model", args.student, "--num-classes", str(args.num_classes), "--input-size", "32",
            "--min-scale-crops", "0.5", "--mix-type", "none", "-b", str(args.batch), "--epochs", str(args.train_epochs),
            "--sgd", "-lr", "0.1", "--momentum", "0.9", "--weight-decay", "5e-4", "--weight-decay-norms",
            "--lr-schedule", "multistep", "--lr-milestones", ",".join(map(str, milestones)), "--lr-gamma", "0.1",
            "--crop-pct", "1.0", "--seed", str(seed), "--eval-interval", str(args.train_epochs), "--resume", "auto",
            "--output-dir", out, "--no-progress"]
    if row == "vanilla":
        return argv
    argv += ["--teacher", TEACHER, "--teacher-path", os.path.join(teacher_run(args), "checkpoint.pth")]
    if row == "kd":
        return argv + ["--loss-type", "kd"]
    argv += ["--distiller", row]
    if DISTILLERS[row].init_epochs:
        argv += ["--distill-init-epochs", str(init_epochs(args, row))]
    if row == "ft":  # the rate the table was measured at: RepDistiller's 0.01, capped on large teacher features
        argv += ["--distill-init-lr", "auto"]
    return argv


def build_jobs(args) -> tuple[list[Job], dict]:
    full = data_root(args, "teachers", args.train_subset)
    teacher = Job("teacher-r56", front_end(args, full, TEACHER, "Vanilla",
                                           Schedule(args.batch, args.teacher_epochs, args.teacher_seed),
                                           teacher_dir(args, TEACHER)),
                  os.path.join(teacher_run(args), "results.json"), 3.0 * args.train_images * args.teacher_epochs)
    jobs, cells = [teacher], {}
    base = os.path.join(args.work, f"distillers_{args.train_subset}_e{args.train_epochs}_b{args.batch}_"
                                   f"t{args.teacher_epochs}")
    for seed in args.seeds:
        for row in args.rows:
            out = os.path.join(base, row, f"seed{seed}")
            cost = args.train_images * args.train_epochs * (1.0 if row == "vanilla" else 8.0 if row == "kdss" else 2.0)
            jobs.append(Job(f"{row}-s{seed}", student_argv(args, row, seed, out), os.path.join(out, "results.json"),
                            cost, [] if row == "vanilla" else ["teacher-r56"]))
            cells.setdefault(row, []).append(os.path.join(out, "results.json"))
    for job in jobs:
        job.log = os.path.join(args.work, "logs", job.name + ".log")
    return jobs, cells


def markdown(args, cells: dict) -> str:
    teacher = read_result(os.path.join(teacher_run(args), "results.json"))
    vanilla = [read_result(p)["top1"] for p in cells["vanilla"]]
    rows = ["| method | top-1 (%) | gap over vanilla (points) | the study's gap (CIFAR-100) |", "|---|---|---|---|"]
    for row in args.rows:
        top1 = [read_result(p)["top1"] for p in cells[row]]
        if row == "vanilla":
            rows.append(f"| vanilla | {fmt(top1)} | — | — |")
            continue
        m, s = mean_std([a - b for a, b in zip(top1, vanilla)])
        rows.append(f"| {row} | {fmt(top1)} | {m:+.2f} ± {s:.2f} | {SEED_GAPS[row]:.2f} |")
    note = (f"Student {args.student}, teacher {TEACHER} ({args.teacher_epochs} epochs, hard labels: "
            f"{teacher['top1']:.2f}% top-1), both on the demo's {args.train_subset} split ({args.train_images} images, "
            f"{args.num_classes} classes), students {args.train_epochs} epochs of batch {args.batch}; AB and FT "
            f"first {init_epochs(args, 'ab')} init epoch(s) (RepDistiller's 30 of 240, scaled), KDSS "
            f"{init_epochs(args, 'kdss')} (SSKD's 60 of 240); top-1 on val "
            f"({args.val_images} images); mean ± std over seeds {','.join(map(str, args.seeds))}, the gap taken "
            f"per seed against the same seed's vanilla.")
    return "\n".join(rows) + "\n\n" + note


def main(args: argparse.Namespace) -> None:
    start = time.time()
    args.ipc_steps = 1  # what settle() shortens for --quick
    settle(args)
    if args.quick:  # enough steps for the teacher's batch-norm statistics to settle (FT's init diverges otherwise)
        args.teacher_epochs = 10
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown or "vanilla" not in args.rows:
        raise UserError(f"--rows: {'unknown ' + ', '.join(unknown) if unknown else 'vanilla is the baseline'} "
                        f"(known: {', '.join(ROWS)})")
    jobs, cells = build_jobs(args)
    times = run_jobs(jobs, args.jobs, args.threads)
    table = markdown(args, cells)
    summary = os.path.join(args.work, "distillers.json")
    timing = {"job_seconds": times, "wall_s": time.time() - start}
    if not times and os.path.isfile(summary):  # every run cached: keep the timing of the run that made them
        with open(summary) as f:
            timing = {k: v for k, v in json.load(f).items() if k in timing}
    with open(summary, "w") as f:
        json.dump({**timing, "top1": {r: [read_result(p)["top1"] for p in cells[r]] for r in args.rows}}, f,
                  indent=1)
    print("\n" + table + "\n")
    if args.write_readme:
        command = this_command()
        write_readme(f"{table}\n\n*`{command.strip()}`*", args.readme, MARK_START, MARK_END)


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
