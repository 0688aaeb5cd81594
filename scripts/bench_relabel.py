"""Relabel throughput against the teacher-forward-only bound, measured in one run.

Setting: a resnet18 teacher, 64 px crops of the 32 px demo PNGs, batch 20, cutmix,
fp16 labels, the demo's training split (1347 images), 2 epochs. The bound runs the teacher's
forward pass alone on the very same batches, already decoded, normalized, mixed and resident in
memory. The relabel runs are the real script (subprocesses), with -j 0 and -j 2, in one process
and in two torchrun processes. Steady state excludes each run's start-up (imports, teacher
loading, the first batch), which is reported on its own. The teacher's weights are random:
speed does not depend on them, and nothing is downloaded. Everything runs on the CPU, the bound
and relabel alike (CUDA is hidden from relabel): this measures the CPU path, even on a GPU machine.

--imagenet-shape measures the same rows at ImageNet shape instead: bench_loader.py's seeded
synthetic set (1000 classes x 1 textured 224 px JPEG), a 1000-class resnet18 teacher, 224 px
crops, batch 50, 1 epoch.

    .venv/bin/python scripts/bench_relabel.py                    # prints a Markdown table
    .venv/bin/python scripts/bench_relabel.py --imagenet-shape   # ~10 min on 2 cores
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from benchlib import ROOT

from softlabel import replay
from softlabel.data import scan_image_folder
from softlabel.errors import run_main
from softlabel.loader import RelabelBatches
from softlabel.models import create_model

replay_mean, replay_std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # the teacher's (ImageNet)
STEADY = re.compile(r"start-up to the first batch ([\d.]+)s, then ([\d.]+) img/s")


def decoded_batches(data: str, args) -> list[torch.Tensor]:
    """The relabel run's own batches (same seed, crops and cutmix), decoded, normalized and
    mixed ahead of time, resident in memory."""
    index = scan_image_folder(data, "--data")
    batches = replay.batches_per_epoch(len(index), args.batch_size)
    jobs = [(e, b) for e in range(args.epochs) for b in range(batches)]
    items = RelabelBatches(index, jobs, replay.Augment(42, args.batch_size, args.input_size, (0.08, 1.0), "cutmix"))
    inputs = []
    for i in range(len(items)):
        it = items[i]
        inputs.append(replay.model_inputs(it["pixels"], replay_mean, replay_std, it["mix_index"],
                                          it["mix_lam"], it["mix_bbox"]))
    return inputs


def forward_bound(inputs: list[torch.Tensor], teacher: torch.nn.Module) -> float:
    """Images/s of the teacher's forward pass alone (the first batch counts as start-up, as in
    the relabel runs)."""
    images = sum(len(x) for x in inputs[1:])
    with torch.inference_mode():
        teacher(inputs[0])
        start = time.perf_counter()
        for x in inputs[1:]:
            teacher(x).float().half()
        elapsed = time.perf_counter() - start
    return images / elapsed


def relabel_run(data: str, teacher_path: str, store: str, workers: int, nproc: int, args) -> tuple[float, float]:
    cmd = [sys.executable]
    if nproc > 1:
        cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += [os.path.join(ROOT, "relabel", "generate_soft_label.py"), "--data", data, "--teacher-path", teacher_path,
            "--fkd-path", store, "--epochs", str(args.epochs), "-b", str(args.batch_size), "--input-size",
            str(args.input_size), "--mix-type", "cutmix", "--use-fp16", "-j", str(workers),
            "--print-freq", "1000"] + args.relabel_flags
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    if nproc > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // nproc))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"relabel failed:\n{proc.stderr[-2000:]}")
    m = STEADY.search(proc.stdout)
    if not m:
        raise SystemExit(f"no steady-state line in the relabel output:\n{proc.stdout[-2000:]}")
    return float(m.group(2)), float(m.group(1))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--imagenet-shape", action="store_true",
                   help="1000 classes of 224 px JPEGs, 224 px crops, batch 50, 1 epoch (default: the demo's)")
    p.add_argument("--epochs", type=int, default=None, help="default: 2 (--imagenet-shape: 1)")
    p.add_argument("-b", "--batch-size", type=int, default=None, help="default: 20 (--imagenet-shape: 50)")
    p.add_argument("--input-size", type=int, default=None, help="default: 64 (--imagenet-shape: 224)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported (default: 3)")
    p.add_argument("--work-dir", default=None, help="where to put the demo data and stores (default: a temp dir)")
    return p


def main(args: argparse.Namespace) -> None:
    defaults = (1, 50, 224) if args.imagenet_shape else (2, 20, 64)
    for name, value in zip(("epochs", "batch_size", "input_size"), defaults):
        setattr(args, name, value if getattr(args, name) is None else getattr(args, name))
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_relabel_")
    if args.imagenet_shape:
        from benchlib import CLASSES, make_set  # the loader benchmark's synthetic ImageNet-shaped set
        train, classes, images = make_set(os.path.join(work, "jpeg_ipc1"), 1, "jpeg"), CLASSES, "224 px JPEGs"
        # its folders are named like WNIDs but are not ImageNet's: folder i is class i
        class_map = os.path.join(work, "class_map.json")
        with open(class_map, "w") as f:
            json.dump({name: i for i, name in enumerate(scan_image_folder(train, "--data").classes)}, f)
        args.relabel_flags = ["--class-map", class_map]
    else:
        data = os.path.join(work, "data")
        if not os.path.isdir(os.path.join(data, "train")):
            subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_demo_data.py"), "--out", data,
                            "--ipc", "1"], check=True, capture_output=True)
        train, classes, images = os.path.join(data, "train"), 10, "32 px demo PNGs"
        args.relabel_flags = []
    torch.manual_seed(0)
    teacher = create_model("resnet18", classes).eval()
    teacher_path = os.path.join(work, f"resnet18_random_{classes}.pth")
    torch.save({"model": teacher.state_dict(), "arch": "resnet18", "num_classes": classes}, teacher_path)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; resnet18 "
          f"teacher, {args.input_size} px crops of the {images}, batch {args.batch_size}, cutmix, fp16, "
          f"{args.epochs} epochs of {train}; {args.repeats} interleaved repeats, medians", flush=True)
    inputs = decoded_batches(train, args)
    configs = (("relabel, -j 0", 0, 1), ("relabel, -j 2", 2, 1), ("relabel, 2 processes (torchrun), -j 0", 0, 2))
    rates: dict[str, list[float]] = {"teacher forward only (bound)": []}
    startups: dict[str, list[float]] = {}
    for rep in range(args.repeats):
        # Interleaved, so that a slow spell of a shared machine hits every row alike.
        rates["teacher forward only (bound)"].append(forward_bound(inputs, teacher))
        for label, workers, nproc in configs:
            store = os.path.join(work, f"store_j{workers}_p{nproc}")
            shutil.rmtree(store, ignore_errors=True)
            rate, startup = relabel_run(train, teacher_path, store, workers, nproc, args)
            rates.setdefault(label, []).append(rate)
            startups.setdefault(label, []).append(startup)
        print(f"  repeat {rep + 1}: " + ", ".join(f"{k}: {v[-1]:.1f} img/s" for k, v in rates.items()), flush=True)
    bound = statistics.median(rates["teacher forward only (bound)"])
    print(f"\n{len(inputs)} batches of {args.batch_size}; steady state excludes the first batch.\n")
    print("| run | images/s (median) | time / bound (median) | per-repeat ratios | start-up (s) |")
    print("|---|---|---|---|---|")
    bounds = rates["teacher forward only (bound)"]
    for label, values in rates.items():
        rate = statistics.median(values)
        # each repeat's ratio against the bound measured right before it
        per_repeat = ", ".join(f"{b / v:.2f}" for b, v in zip(bounds, values))
        startup = f"{statistics.median(startups[label]):.2f}" if label in startups else ""
        print(f"| {label} | {rate:.1f} | {bound / rate:.3f} | {per_repeat} | {startup} |")

if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
