"""What label stores cost on disk, what top-k and label pruning cost a student, measured in one run.

1. Sizes (``--sizes-only`` runs this part alone, about a minute per batch size): bytes per stored
   sample, every file counted (the manifest too), of an ImageNet-shaped store (C = 1000 classes,
   IPC10 = 10,000 images, 300 epochs, cutmix) at batch 50 (PRISM), 100 (EDC) and 1024: full fp16
   and format-1 top-k (one file per step: one epoch written, its bytes x epochs) against the packed
   top-K store (format 2: the whole store written through our writer), with the file counts.
2. Top-k at the temperature a student uses: the total-variation distance between the teacher's
   softmax at T and the one rebuilt from the top K plus the residual fill, and the left-out mass,
   true vs rebuilt, at T = 1, 3, 4, 20 on synthetic ImageNet-like logits (C = 1000).
3. On the demo (C = 10, IPC2, the demo's teacher, 1000 stored epochs, the same student and seeds):
   student top-1 for each top-K (``--demo-k``) with its TV per T;
4. and for each label-pruning fraction (``--keep``), relabelled with ``--label-keep`` and trained
   the full 1000 steps.

    .venv/bin/python scripts/bench_storage.py                # every table of docs/stores.md (~40 min, 2 cores)
    .venv/bin/python scripts/bench_storage.py --sizes-only   # parts 1 and 2
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import torch

from softlabel import replay
from softlabel.errors import UserError, run_main
from softlabel.stores import batch as store
from softlabel.stores import topk
from softlabel.stores import create_store, open_store

PY = sys.executable
TEMPERATURES = (1.0, 3.0, 4.0, 20.0)


# ----------------------------------------------------------------------------- 1. sizes

def imagenet_manifest(batch: int, images: int, epochs: int, k: int) -> dict:
    names = [f"n{c:08d}" for c in range(1000)]  # ImageNet's folder names are 9 characters
    return {**store.container_of("topk"), "label_keep": 1.0, "fkd_seed": 42, "batch_size": batch,
            "epochs": epochs, "batches_per_epoch": math.ceil(images / batch), "num_samples": images,
            "num_classes": 1000, "class_names": names, "class_to_index": {n: i for i, n in enumerate(names)},
            "input_size": 224, "min_scale_crops": 0.08, "max_scale_crops": 1.0, "mix_type": "cutmix", "mixup": None,
            "cutmix": 1.0, "use_fp16": True, "label_format": "topk", "topk": k, "topk_fill": "residual",
            "temperature": 1.0, "teachers": [{"arch": "resnet18", "source": "torchvision", "weights_sha256": "0" * 64}],
            "ensemble": None, "primary_weight": None, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
            "dataset_fingerprint": "0" * 64, "created_by": "scripts/bench_storage.py"}


def synthetic_batch(n: int, images: int, g: torch.Generator) -> store.BatchRecord:
    boxes = torch.rand(n, 4, generator=g) * 0.49 + torch.tensor([0.0, 0.0, 0.01, 0.01])
    return store.BatchRecord(boxes, torch.rand(n, generator=g) > 0.5, torch.randperm(n, generator=g),
                             1 - (120 - 3) * (160 - 5) / 224 ** 2, [3, 5, 120, 160], torch.randn(n, 1000, generator=g).half(),
                             torch.randperm(images, generator=g)[:n])


def tree_size(root: str) -> tuple[int, int]:
    """(bytes, files) of everything under ``root``."""
    sizes = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs]
    return sum(sizes), len(sizes)


def store_sizes(batch: int, images: int, epochs: int, k: int, tmp: str) -> dict[str, tuple[float, int]]:
    """(bytes per stored sample, files) of each format for one batch size."""
    m = imagenet_manifest(batch, images, epochs, k)
    per_epoch, samples = m["batches_per_epoch"], images * epochs
    g = torch.Generator().manual_seed(batch)
    out = {}
    packed_root = os.path.join(tmp, f"packed{batch}")
    writer = create_store(packed_root, m, flag="bench")
    one_epoch = {"full fp16": os.path.join(tmp, f"full{batch}"), "top-k v1": os.path.join(tmp, f"v1_{batch}")}
    for name, root in one_epoch.items():
        os.makedirs(store.epoch_dir(root, 0))
    for e, b in replay.epoch_jobs(0, epochs, per_epoch):
        rec = synthetic_batch(replay.batch_len(images, batch, b), images, g)
        writer.write(e, b, rec)
        if e == 0:  # the per-step formats: one epoch written, the rest the same sizes
            store.write_batch(one_epoch["full fp16"], 0, b, rec, "full")
            store.write_batch(one_epoch["top-k v1"], 0, b, rec, "topk", k, images, fill=True)
    writer.finish()
    manifest_bytes = os.path.getsize(store.manifest_path(packed_root))  # the same entries in every format
    for name, root in one_epoch.items():
        size, files = tree_size(root)
        out[name] = ((size * epochs + manifest_bytes) / samples, files * epochs + 1)
        shutil.rmtree(root)
    size, files = tree_size(packed_root)
    out[f"top-{k} packed"] = (size / samples, files)
    shutil.rmtree(packed_root)
    return out


def sizes_table(batches: list[int], images: int, epochs: int, k: int) -> str:
    rows = [f"| batch | full fp16 | top-{k}, format 1 (a file per step) | top-{k} packed (format 2) | packed vs full "
            f"| files: per step -> packed |", "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for b in batches:
            s = store_sizes(b, images, epochs, k, tmp)
            full, v1, new = s["full fp16"], s["top-k v1"], s[f"top-{k} packed"]
            rows.append(f"| {b} | {full[0]:.1f} B | {v1[0]:.1f} B ({full[0] / v1[0]:.0f}x) | **{new[0]:.1f} B** | "
                        f"**{full[0] / new[0]:.0f}x** | {v1[1]:,} -> {new[1]:,} |")
            print(rows[-1], flush=True)
    return "\n".join(rows)


# ----------------------------------------------------------------------------- 2. top-k at T

def rebuilt(logits: torch.Tensor, k: int, fill_temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits a top-k store with the residual fill gives back (float16 on disk), and the stored mask."""
    values, classes = logits.topk(k, dim=1)
    fill = topk.residual_fill(logits, classes, fill_temperature).half().float()
    return topk.topk_logits(values.half().float(), classes, fill, logits.shape[1])


def at_temperature(logits: torch.Tensor, back: torch.Tensor, stored: torch.Tensor, t: float) -> tuple[float, float, float]:
    """(TV, teacher's left-out mass, rebuilt left-out mass) of the softmaxes at ``t``, means over samples."""
    p, q = (logits / t).softmax(1), (back / t).softmax(1)
    left_out = lambda x: float(x.masked_fill(stored, 0).sum(1).mean())  # noqa: E731
    return float(0.5 * (p - q).abs().sum(1).mean()), left_out(p), left_out(q)


def temperature_table(k: int) -> str:
    g = torch.Generator().manual_seed(0)
    rows = [f"| logits (C = 1000, K = {k}) | T | left-out mass: teacher | fill at T = 1: rebuilt | TV | "
            f"fill at T (--topk-fill-temperature T): rebuilt | TV |", "|---|---|---|---|---|---|---|"]
    for name, scale in (("spread, N(0, 1)", 1.0), ("peaked, N(0, 3²)", 3.0)):
        logits = torch.randn(4096, 1000, generator=g) * scale
        for t in TEMPERATURES:
            tv1, true, got1 = at_temperature(logits, *rebuilt(logits, k, 1.0), t)
            tvt, _, gott = at_temperature(logits, *rebuilt(logits, k, t), t)
            rows.append(f"| {name} | {t:g} | {true:.4f} | {got1:.4f} | {tv1:.4f} | {gott:.4f} | {tvt:.4f} |")
    return "\n".join(rows)


# ----------------------------------------------------------------------------- 3. the demo

def run(*args) -> str:
    proc = subprocess.run([PY, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, WANDB_MODE="disabled"))
    if proc.returncode != 0:
        raise UserError(f"{args[0]} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def store_bytes(root: str) -> int:
    return tree_size(root)[0]


def label_distance(full: str, other: str, temperature: float, every: int = 10) -> float:
    """Mean total-variation distance between the teacher's softmax at ``temperature`` from the
    full store and from ``other`` (every ``every``-th epoch): what a top-k encoding loses."""
    readers = [open_store(root).reader() for root in (full, other)]
    m = readers[0].manifest
    total, n = 0.0, 0
    for e in range(0, m["epochs"], every):
        for b in range(m["batches_per_epoch"]):
            p, q = ((r.read(e, b).soft_label.float() / temperature).softmax(1) for r in readers)
            total += float(0.5 * (p - q).abs().sum(1).sum())
            n += len(p)
    return total / n


class Demo:
    """The demo's data, teacher and full store, and students trained from any store."""

    def __init__(self, work: str, epochs: int, seeds: list[int]):
        self.work, self.epochs, self.seeds = work, epochs, seeds
        self.data, teacher = os.path.join(work, "data"), os.path.join(work, "teacher")
        run("scripts/make_demo_data.py", "--out", self.data, "--ipc", 2)
        if not os.path.isfile(os.path.join(teacher, "results.json")):
            run("validate/train_FKD_parallel.py", "--train-dir", f"{self.data}/train", "--model", "democnn",
                "--input-size", 32, "--min-scale-crops", 0.5, "-b", 64, "--epochs", 20, "--lr-schedule", "cosine",
                "--eval-interval", 20, "--output-dir", teacher, "--no-progress")
        self.teacher = f"{teacher}/checkpoint.pth"
        self.full = self.relabel("store_full")

    def relabel(self, name: str, *extra) -> str:
        path = os.path.join(self.work, name)
        run("relabel/generate_soft_label.py", "--data", f"{self.data}/ipc2", "--teacher-path", self.teacher,
            "--fkd-path", path, "--epochs", self.epochs, "-b", 20, "--input-size", 32, "--min-scale-crops", 0.5,
            "--use-fp16", "--print-freq", 100000, *extra)
        return path

    def students(self, name: str, path: str) -> list[float]:
        accs = []
        for seed in self.seeds:
            out = os.path.join(self.work, f"student_{name.replace(' ', '_')}_s{seed}")
            if not os.path.isfile(os.path.join(out, "results.json")):  # a finished run is kept (--work)
                run("validate/train_FKD_parallel.py", "--train-dir", f"{self.data}/ipc2", "--val-dir",
                    f"{self.data}/val", "--fkd-path", path, "--model", "democnn", "--loss-type", "kl", "-T", 4,
                    "--lr-schedule", "cosine", "--crop-pct", 1.0, "--seed", seed, "--eval-interval", self.epochs,
                    "--save-interval", self.epochs, "--output-dir", out, "--no-progress")
            with open(os.path.join(out, "results.json")) as f:
                accs.append(json.load(f)["top1"])
        return accs


def mean_std(accs: list[float]) -> str:
    return f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs) if len(accs) > 1 else 0.0:.2f}%"


def topk_table(demo: Demo, ks: list[int], students: bool = True) -> str:
    stores = {"full fp16": demo.full}
    for k in ks:  # with the residual fill (the default), and without (left-out classes at -inf)
        for fill, suffix in (("residual", ""), ("none", " -inf")):
            path = os.path.join(demo.work, f"store_top{k}" + ("_inf" if suffix else ""))
            stores[f"top-{k}{suffix}"] = path
            run("scripts/convert_labels.py", demo.full, path, "--label-format", "topk", "--topk", k,
                "--topk-fill", fill, "--no-progress")
    ts = " | ".join(f"TV at T = {t:g}" for t in TEMPERATURES)
    rows = [f"| labels (C = 10) | store | {ts} | student top-1 (mean ± std) | per seed | cost vs full |",
            "|---|---|" + "---|" * len(TEMPERATURES) + "---|---|---|"]
    base = None
    for name, path in stores.items():
        tvs = " | ".join(f"{label_distance(demo.full, path, t):.3f}" for t in TEMPERATURES)
        if not students:
            rows.append(f"| {name} | {store_bytes(path) / 1024:.0f} KiB | {tvs} | — | — | — |")
            print(rows[-1], flush=True)
            continue
        accs = demo.students(name, path)
        base = statistics.mean(accs) if base is None else base
        rows.append(f"| {name} | {store_bytes(path) / 1024:.0f} KiB | {tvs} | {mean_std(accs)} | "
                    + ", ".join(f"{a:.2f}" for a in accs) + f" | {statistics.mean(accs) - base:+.2f} |")
        print(rows[-1], flush=True)
    return "\n".join(rows)


def pruning_table(demo: Demo, keeps: list[float]) -> str:
    rows = ["| --label-keep | labelled steps | store | student top-1 (mean ± std) | per seed | cost vs keep 1 |",
            "|---|---|---|---|---|---|"]
    base = None
    for keep in keeps:
        path = demo.full if keep == 1.0 else demo.relabel(f"store_keep{keep:g}", "--label-keep", keep)
        accs = demo.students("full fp16" if keep == 1.0 else f"keep{keep:g}", path)
        base = statistics.mean(accs) if base is None else base
        kept = len(open_store(path).jobs(demo.epochs))
        rows.append(f"| {keep:g} | {kept} of {demo.epochs} | {store_bytes(path) / 1024:.0f} KiB | {mean_std(accs)} | "
                    + ", ".join(f"{a:.2f}" for a in accs) + f" | {statistics.mean(accs) - base:+.2f} |")
        print(rows[-1], flush=True)
    return "\n".join(rows)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="50,100,1024", help="batch sizes of the size table (default: 50,100,1024)")
    p.add_argument("--k", type=int, default=5, help="top-K of the size and temperature tables (default: 5)")
    p.add_argument("--images", type=int, default=10_000, help="images of the sized store (default: 10000, IPC10)")
    p.add_argument("--size-epochs", type=int, default=300, help="epochs of the sized store (default: 300)")
    p.add_argument("--demo-k", default="1,5", help="top-K values trained on the demo (default: 1,5)")
    p.add_argument("--keep", default="1,0.5,0.1,0.025", help="--label-keep values trained on the demo")
    p.add_argument("--seeds", default="0,1,2", help="student seeds (default: 0,1,2)")
    p.add_argument("--epochs", type=int, default=1000, help="stored epochs = student steps (default: 1000)")
    p.add_argument("--work", default=None, help="keep the demo runs here (default: a temporary folder)")
    p.add_argument("--parts", default="1,2,3,4", help="1 sizes, 2 the fill at T, 3 top-k on the demo, 4 label "
                   "pruning on the demo (default: all)")
    p.add_argument("--no-topk-students", action="store_true", help="part 3: the TV per T only, no students")
    p.add_argument("--sizes-only", action="store_true", help="parts 1 and 2 only")
    return p


def main(args: argparse.Namespace) -> None:
    ints = lambda text: [int(v) for v in text.split(",") if v.strip()]  # noqa: E731
    parts = {1, 2} if args.sizes_only else set(ints(args.parts))
    if 1 in parts:
        print(f"1. Bytes per stored sample, all files counted: C = 1000, {args.images} images x {args.size_epochs} "
              f"epochs, top-{args.k} with the residual fill, cutmix:\n", flush=True)
        print(sizes_table(ints(args.batches), args.images, args.size_epochs, args.k), flush=True)
    if 2 in parts:
        print(f"\n2. Top-{args.k} + residual fill at the student's temperature (4096 synthetic samples):\n")
        print(temperature_table(args.k), flush=True)
    if not parts & {3, 4}:
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or tmp
        os.makedirs(work, exist_ok=True)
        demo = Demo(work, args.epochs, ints(args.seeds))
        tables = []
        if 3 in parts:
            print("\n3. Top-k on the demo:\n", flush=True)
            tables.append(topk_table(demo, ints(args.demo_k), not args.no_topk_students))
        if 4 in parts:
            print("\n4. Label pruning on the demo (full fp16 labels):\n", flush=True)
            tables.append(pruning_table(demo, [float(v) for v in args.keep.split(",") if v.strip()]))
    print("\n" + "\n\n".join(tables))


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
