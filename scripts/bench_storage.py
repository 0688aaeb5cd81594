"""What top-k label stores save, and what they cost a student, measured in one run.

1. Bytes per sample of a stored batch file (headers included; batch 1024, as an ImageNet
   relabel writes them) for full fp32 / full fp16 labels and top-K for several K, at
   C = 10, 100 and 1000 classes; written through the store's own writer.
2. Student top-1 on the demo for each K: the demo's teacher relabels the IPC2 subset once
   (full fp16), scripts/convert_labels.py derives each top-K store from it, and the same
   student (same seeds, same steps) trains from each.

    .venv/bin/python scripts/bench_storage.py                # the table of docs/stores.md (~15 min, 2 cores)
    .venv/bin/python scripts/bench_storage.py --sizes-only   # part 1 only (seconds)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import torch

from softlabel.errors import UserError, run_main
from softlabel.stores import batch as store

PY = sys.executable
IMAGENET = 1_281_167


def file_bytes(batch: int, classes: int, label_format: str, k: int | None, fp16: bool, tmp: str) -> int:
    g = torch.Generator().manual_seed(classes)
    rec = store.BatchRecord(torch.rand(batch, 4, generator=g), torch.rand(batch, generator=g) > 0.5,
                            torch.randperm(batch, generator=g), 0.3, [3, 5, 120, 160],
                            torch.randn(batch, classes, generator=g).to(torch.float16 if fp16 else torch.float32),
                            torch.randperm(IMAGENET, generator=g)[:batch])
    root = os.path.join(tmp, f"{classes}-{label_format}-{k}-{fp16}")
    os.makedirs(store.epoch_dir(root, 0), exist_ok=True)
    store.write_batch(root, 0, 0, rec, label_format, k, IMAGENET, fill=label_format == "topk")
    return os.path.getsize(store.batch_path(root, 0, 0))


def sizes_table(batch: int, ks: list[int]) -> str:
    rows = ["| classes C | full fp32 | full fp16 | " + " | ".join(f"top-{k}" for k in ks) + " |",
            "|---|---|---|" + "---|" * len(ks)]
    with tempfile.TemporaryDirectory() as tmp:
        for c in (10, 100, 1000):
            fp32 = file_bytes(batch, c, "full", None, False, tmp) / batch
            fp16 = file_bytes(batch, c, "full", None, True, tmp) / batch
            cells = []
            for k in ks:
                if k >= c:
                    cells.append("—")
                    continue
                b = file_bytes(batch, c, "topk", k, True, tmp) / batch
                cells.append(f"{b:.1f} B ({fp16 / b:.0f}x)")
            rows.append(f"| {c} | {fp32:.1f} B | {fp16:.1f} B | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def run(*args) -> str:
    proc = subprocess.run([PY, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, WANDB_MODE="disabled"))
    if proc.returncode != 0:
        raise UserError(f"{args[0]} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def label_bytes(root: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs
               if f.startswith("batch_"))


def label_distance(full: str, other: str, temperature: float, every: int = 10) -> float:
    """Mean total-variation distance between the teacher's softmax at ``temperature`` from the
    full store and from ``other`` (every ``every``-th epoch): what a top-k encoding loses."""
    readers = [store.Reader(root, store.read_manifest(root)) for root in (full, other)]
    m = readers[0].manifest
    total, n = 0.0, 0
    for e in range(0, m["epochs"], every):
        for b in range(m["batches_per_epoch"]):
            p, q = ((r.read(e, b).soft_label.float() / temperature).softmax(1) for r in readers)
            total += float(0.5 * (p - q).abs().sum(1).sum())
            n += len(p)
    return total / n


def accuracy_table(work: str, ks: list[int], seeds: list[int], epochs: int) -> str:
    data, teacher = os.path.join(work, "data"), os.path.join(work, "teacher")
    run("scripts/make_demo_data.py", "--out", data, "--ipc", 2)
    if not os.path.isfile(os.path.join(teacher, "results.json")):
        run("validate/train_FKD_parallel.py", "--train-dir", f"{data}/train", "--model", "democnn",
            "--input-size", 32, "--min-scale-crops", 0.5, "-b", 64, "--epochs", 20, "--lr-schedule", "cosine", "--eval-interval", 20,
            "--output-dir", teacher, "--no-progress")
    full = os.path.join(work, "store_full")
    run("relabel/generate_soft_label.py", "--data", f"{data}/ipc2", "--teacher-path", f"{teacher}/checkpoint.pth",
        "--fkd-path", full, "--epochs", epochs, "-b", 20, "--input-size", 32, "--min-scale-crops", 0.5,
        "--use-fp16", "--print-freq", 1000)
    stores = {"full fp16": full}
    for k in ks:  # with the residual fill (the default), and without (left-out classes at -inf)
        for fill, suffix in (("residual", ""), ("none", " -inf")):
            path = os.path.join(work, f"store_top{k}" + ("_inf" if suffix else ""))
            stores[f"top-{k}{suffix}"] = path
            run("scripts/convert_labels.py", full, path, "--label-format", "topk", "--topk", k,
                "--topk-fill", fill, "--no-progress")
    rows = ["| labels (C = 10) | label files | TV to full at T = 4 | student top-1 (mean over seeds) | per seed "
            "| cost vs full |", "|---|---|---|---|---|---|"]
    base = None
    for name, path in stores.items():
        accs = []
        for seed in seeds:
            out = os.path.join(work, f"student_{name.replace(' ', '_')}_s{seed}")
            if not os.path.isfile(os.path.join(out, "results.json")):  # a finished run is kept (--work)
                run("validate/train_FKD_parallel.py", "--train-dir", f"{data}/ipc2", "--val-dir", f"{data}/val",
                    "--fkd-path", path, "--model", "democnn", "--loss-type", "kl", "-T", 4, "--lr-schedule", "cosine", "--crop-pct", 1.0,
                    "--seed", seed, "--eval-interval", epochs, "--save-interval", epochs, "--output-dir", out,
                    "--no-progress")
            with open(os.path.join(out, "results.json")) as f:
                accs.append(json.load(f)["top1"])
        mean = statistics.mean(accs)
        base = mean if base is None else base
        rows.append(f"| {name} | {label_bytes(path) / 1024:.0f} KiB | {label_distance(full, path, 4.0):.3f} | {mean:.2f}% | "
                    + ", ".join(f"{a:.2f}" for a in accs) + f" | {mean - base:+.2f} |")
        print(rows[-1], flush=True)
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1024, help="images per stored batch for the size table")
    p.add_argument("--k", default="1,3,5,10", help="top-K values for the size table (default: 1,3,5,10)")
    p.add_argument("--demo-k", default="1,2,3,5", help="top-K values trained on the demo (default: 1,2,3,5)")
    p.add_argument("--seeds", default="0,1,2", help="student seeds (default: 0,1,2)")
    p.add_argument("--epochs", type=int, default=1000, help="stored epochs = student steps (default: 1000)")
    p.add_argument("--work", default=None, help="keep the demo runs here (default: a temporary folder)")
    p.add_argument("--sizes-only", action="store_true", help="only the bytes-per-sample table")
    args = p.parse_args()
    ints = lambda text: [int(v) for v in text.split(",") if v.strip()]  # noqa: E731
    print(f"Bytes per sample of a stored batch of {args.batch} (file size / {args.batch}; x = smaller than full fp16):\n")
    print(sizes_table(args.batch, ints(args.k)), flush=True)
    if args.sizes_only:
        return
    print()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or tmp
        os.makedirs(work, exist_ok=True)
        table = accuracy_table(work, ints(args.demo_k), ints(args.seeds), args.epochs)
    print("\n" + table)


if __name__ == "__main__":
    run_main(main)
