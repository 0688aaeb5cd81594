"""Training throughput from a store, against the same steps on tensors in memory, and online
distillation against stored labels, measured in one run.

Setting: a resnet18 student, AdamW, KL loss, 64 px crops of the 32 px demo PNGs,
batch 20, 2 CPU cores, one epoch of the demo's 1347 training images (68 steps):
(a) train steps on synthetic tensors already in memory (in this process: the bound);
(b) the real trainer from a real store (relabelled here by a resnet18 teacher);
(c) the real trainer distilling online from that teacher on the same augmentations.
(b)/(a) is the cost of our data path; (c)/(b) what stored labels save over online KD. Rows are
interleaved per repeat and medians reported; steady state excludes each run's first step.

    .venv/bin/python scripts/bench_train.py --repeats 3
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile

import torch
from benchlib import demo_store, in_memory_bound, trainer_rate

from softlabel.errors import run_main










def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work-dir", default=None)
    return p


def main(args: argparse.Namespace) -> None:
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_train_")
    train, teacher, store = demo_store(work, 1)
    common = ["--train-dir", train, "--model", "resnet18", "--loss-type", "kl", "--epochs", "1"]
    runs = {
        "(a) in-memory tensors": lambda j: in_memory_bound(68, 20, 64),
        "(b) from the store": lambda j: trainer_rate(common + ["--fkd-path", store, "-j", str(j),
                                                               "--output-dir", os.path.join(work, f"b{j}")]),
        "(c) online KD": lambda j: trainer_rate(common + ["--teacher", "resnet18", "--teacher-path", teacher,
                                                          "--input-size", "64", "-b", "20", "-j", str(j),
                                                          "--output-dir", os.path.join(work, f"c{j}")]),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; resnet18 student, AdamW, KL, 64 px crops "
          f"of the 32 px demo PNGs, batch 20, 68 steps; {args.repeats} interleaved repeats, medians", flush=True)
    rates: dict[tuple[str, int], list[float]] = {}
    for rep in range(args.repeats):
        for workers in (0, 2):
            for name, run in runs.items():
                if name.startswith("(a)") and workers == 2:
                    continue
                rates.setdefault((name, workers), []).append(run(workers))
        print(f"  repeat {rep + 1}: " + ", ".join(f"{n} -j {w}: {v[-1]:.1f}" for (n, w), v in rates.items()), flush=True)
    a = statistics.median(rates[("(a) in-memory tensors", 0)])
    print("\n| run | -j | images/s (median) | time vs (a) | time vs (b) |")
    print("|---|---|---|---|---|")
    print(f"| (a) in-memory tensors | - | {a:.1f} | 1.000 | |")
    for workers in (0, 2):
        b = statistics.median(rates[("(b) from the store", workers)])
        c = statistics.median(rates[("(c) online KD", workers)])
        print(f"| (b) from the store | {workers} | {b:.1f} | {a / b:.3f} | 1.000 |")
        print(f"| (c) online KD | {workers} | {c:.1f} | {a / c:.3f} | {b / c:.3f} |")
    shutil.rmtree(os.path.join(work, "b0"), ignore_errors=True)


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
