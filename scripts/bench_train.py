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
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import torch
import torch.nn.functional as F

from softlabel.errors import run_main
from softlabel.models import create_model

STEADY = re.compile(r"then ([\d.]+) img/s")
PY = sys.executable


def in_memory_bound(steps: int, batch: int, size: int, classes: int = 10, *, amp: Optional[torch.dtype] = None,
                    channels_last: bool = False, sgd: bool = False, temperature: float = 3.0) -> float:
    """Images/s of forward + KL + backward + AdamW (or SGD) on tensors already in memory, on the
    device the trainer would use, under the given autocast and memory format."""
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where the trainer runs too
    model = create_model("resnet18", classes).train().to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4) if sgd
           else torch.optim.AdamW(model.parameters(), lr=1e-3))
    t = torch.randn(batch, classes, device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(x).float()
        loss = F.kl_div(F.log_softmax(logits / temperature, 1), F.softmax(t / temperature, 1), reduction="batchmean")
        loss.backward()
        opt.step()

    step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps - 1):
        step()
    sync()
    return (steps - 1) * batch / (time.perf_counter() - start)


def trainer_rate(args: list[str]) -> float:
    out = args[args.index("--output-dir") + 1]
    shutil.rmtree(out, ignore_errors=True)  # each repeat is a new run (the trainer keeps a finished one)
    cmd = [PY, os.path.join(ROOT, "validate", "train_FKD_parallel.py"), *args, "--no-progress",
           "--eval-interval", "1000", "--save-interval", "1000"]
    # CUDA left visible: the trainer must run on the device the bound runs on
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"trainer failed:\n{proc.stderr[-2000:]}")
    m = STEADY.search(proc.stdout)
    if not m:
        raise SystemExit(f"no steady-state figure in:\n{proc.stdout[-2000:]}")
    return float(m.group(1))


def demo_images(work: str) -> str:
    """The demo's training images (IPC1), made once in ``work``."""
    data = os.path.join(work, "data")
    if not os.path.isdir(os.path.join(data, "train")):
        subprocess.run([PY, os.path.join(ROOT, "scripts", "make_demo_data.py"), "--out", data, "--ipc", "1"],
                       check=True, capture_output=True)
    return os.path.join(data, "train")


def demo_store(work: str, epochs: int) -> tuple[str, str, str]:
    """The demo's training images, a random resnet18 teacher, and a store of ``epochs`` epochs
    relabelled by it (64 px crops, batch 20), made once in ``work``."""
    train = demo_images(work)
    torch.manual_seed(1)
    teacher = os.path.join(work, "resnet18_teacher.pth")
    torch.save({"model": create_model("resnet18", 10).state_dict(), "arch": "resnet18", "num_classes": 10}, teacher)
    store = os.path.join(work, "store" if epochs == 1 else f"store_e{epochs}")
    if not os.path.isdir(os.path.join(store, "epoch_0")):
        subprocess.run([PY, os.path.join(ROOT, "relabel", "generate_soft_label.py"), "--data", train, "--teacher-path",
                        teacher, "--fkd-path", store, "--epochs", str(epochs), "-b", "20", "--input-size", "64",
                        "--print-freq", "1000"], check=True, capture_output=True, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    return train, teacher, store


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work-dir", default=None)
    args = p.parse_args()
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
    run_main(main)
