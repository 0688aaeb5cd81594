"""RepDistiller's canonical pair through its own command, on the demo: vanilla, KD and CRD.

RepDistiller's table (HobbitLong/RepDistiller README, the CRD paper's Table 1, CIFAR-100, last-epoch
top-1): resnet56 -> resnet20 gives vanilla 69.06, KD 70.66, CRD 71.16. Here in miniature on the demo
data (10 classes of 32 x 32 digits): the teacher, RepDistiller's option-B resnet56 (``resnet56_b``), is
trained with hard labels by our trainer under RepDistiller's recipe (--recipe repdistiller) into a
folder named as RepDistiller names its teachers (save/models/resnet56_vanilla/), then every row runs
``validate/train_student.py`` as RepDistiller's scripts/run_cifar_distill.sh writes it — vanilla is our
trainer with the same recipe and hard labels (train_teacher.py's role) — with the epochs this CPU
allows instead of 240 (the learning-rate milestones 150/180/210 of 240 scaled with them). Each cell:
mean +- std over seeds of the last epoch's top-1, the number RepDistiller reports; the best epoch's
beside it.

    .venv/bin/python scripts/bench_repdistiller.py --work /tmp/bench_repdistiller --write-readme
"""
from __future__ import annotations

import argparse
import os
import time

from benchlib import PY, ROOT, Job, fmt, mean_std, read_result, run_jobs, this_command, write_readme

from softlabel.errors import run_main

MARK_START, MARK_END = "<!-- bench_repdistiller:start -->", "<!-- bench_repdistiller:end -->"
# the CRD paper's Table 1 / RepDistiller's README, resnet56 -> resnet20 on CIFAR-100 (top-1, %)
UPSTREAM = {"vanilla": 69.06, "kd": 70.66, "crd": 71.16}
# run_cifar_distill.sh's weights for each method (-r, -a, -b)
WEIGHTS = {"kd": ("0.1", "0.9", "0"), "crd": ("1", "0", "0.8")}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="bench_repdistiller_work", help="data, teacher, runs and logs (reused)")
    p.add_argument("--seeds", default="0,1", help="student seeds (default: 0,1)")
    p.add_argument("--teacher-epochs", type=int, default=30, help="the teacher's epochs (default: 30)")
    p.add_argument("--epochs", type=int, default=30, help="each student's epochs (default: 30)")
    p.add_argument("--train", default="ipc10", help="the students' training split: train (all) or ipcN (default: ipc10)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default: 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default: 1)")
    p.add_argument("--write-readme", action="store_true",
                   help=f"put the table into --readme between {MARK_START} and {MARK_END}")
    p.add_argument("--readme", default=os.path.join(ROOT, "docs", "validate.md"), help="(default: docs/validate.md)")
    return p


def demo(work: str, subset: str) -> tuple[str, str, str]:
    """(full train split, the students' split, val) of the demo data, made once in ``work``."""
    data = os.path.join(work, "data")
    ipc = int(subset[3:]) if subset.startswith("ipc") else 1
    if not os.path.isdir(os.path.join(data, subset)):
        import subprocess
        subprocess.run([PY, os.path.join(ROOT, "scripts", "make_demo_data.py"), "--out", data, "--ipc", str(ipc)],
                       check=True, capture_output=True)
    return os.path.join(data, "train"), os.path.join(data, subset), os.path.join(data, "val")


def milestones(epochs: int) -> str:
    """RepDistiller's 150,180,210 of 240, scaled to ``epochs``."""
    return ",".join(str(e) for e in sorted({max(1, round(m * epochs / 240)) for m in (150, 180, 210)}))


def build_jobs(args) -> tuple[list[Job], dict]:
    full, train, val = demo(args.work, args.train)
    teacher_dir = os.path.join(args.work, "save", "models", "resnet56_vanilla")
    recipe = ["--recipe", "repdistiller", "--val-dir", val, "--no-progress", "-j", "0"]
    teacher = Job("teacher", [PY, "validate/train_FKD_parallel.py", *recipe, "--train-dir", full, "--model",
                              "resnet56_b", "--epochs", str(args.teacher_epochs), "--lr-milestones",
                              milestones(args.teacher_epochs), "--eval-interval", str(args.teacher_epochs),
                              "--output-dir", teacher_dir],
                  os.path.join(teacher_dir, "results.json"), 10.0)
    jobs, cells = [teacher], {}
    for seed in args.seeds:
        for row in ("vanilla", "kd", "crd"):
            out = os.path.join(args.work, "runs", f"{args.train}_e{args.epochs}", row, f"seed{seed}")
            common = ["--epochs", str(args.epochs), "--seed", str(seed), "--output-dir", out]
            if row == "vanilla":
                argv = [PY, "validate/train_FKD_parallel.py", *recipe, "--train-dir", train, "--model", "resnet20_b",
                        "--lr-milestones", milestones(args.epochs), "--eval-interval", "1", *common]
            else:
                r, a, b = WEIGHTS[row]
                argv = [PY, "validate/train_student.py", "--path_t", os.path.join(teacher_dir, "checkpoint.pth"),
                        "--distill", row, "--model_s", "resnet20", "-r", r, "-a", a, "-b", b, "--trial", "1",
                        "--lr_decay_epochs", milestones(args.epochs), "--num_workers", "0", "--train-dir", train,
                        "--val-dir", val, "--no-progress", *common]
            jobs.append(Job(f"{row}-s{seed}", argv, os.path.join(out, "results.json"), 2.0,
                            [] if row == "vanilla" else ["teacher"]))
            cells.setdefault(row, []).append(os.path.join(out, "results.json"))
    for job in jobs:
        job.log = os.path.join(args.work, "logs", job.name + ".log")
    return jobs, cells


def markdown(args, cells: dict) -> str:
    teacher = read_result(os.path.join(args.work, "save", "models", "resnet56_vanilla", "results.json"))
    rows = ["| method (RepDistiller's `--distill`) | top-1, last epoch (%) | top-1, best epoch (%) | gap over vanilla, "
            "last (points) | RepDistiller, CIFAR-100 (last) |", "|---|---|---|---|---|"]
    vanilla = [read_result(p)["top1_last"] for p in cells["vanilla"]]
    for row, paths in cells.items():
        last = [read_result(p)["top1_last"] for p in paths]
        best = [read_result(p)["top1_best"] for p in paths]
        gap = "—" if row == "vanilla" else "{:+.2f} ± {:.2f}".format(*mean_std([a - b for a, b in zip(last, vanilla)]))
        rows.append(f"| {row} | {fmt(last)} | {fmt(best)} | {gap} | {UPSTREAM[row]:.2f} |")
    note = (f"Teacher resnet56 (RepDistiller's option B, `resnet56_b`), {args.teacher_epochs} epochs of hard labels on "
            f"the demo's full training split ({teacher['top1_last']:.2f}% top-1); students resnet20 (`resnet20_b`) on "
            f"its {args.train} split, {args.epochs} epochs (RepDistiller: 240, its milestones scaled to "
            f"{milestones(args.epochs)}; the CPU decides the epochs), batch 64, SGD 0.05; top-1 on the demo's val "
            f"split, mean ± std over seeds {','.join(map(str, args.seeds))}, the gap taken per seed.")
    return "\n".join(rows) + "\n\n" + note


def main(args: argparse.Namespace) -> None:
    start = time.time()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    jobs, cells = build_jobs(args)
    run_jobs(jobs, args.jobs, args.threads)
    table = markdown(args, cells)
    print(f"\n{table}\n\n({time.time() - start:.0f} s)")
    if args.write_readme:
        command = this_command()
        write_readme(f"{table}\n\n*`{command.strip()}`*", args.readme, MARK_START, MARK_END)


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
