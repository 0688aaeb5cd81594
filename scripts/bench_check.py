"""What `fkd_info.py STORE --check` costs per stored step (batch layout) and per label file
(per-image layout), on stores written through the store writer at ImageNet's shape.

The stores (made once in ``--work``, kept when there): C = 1000 classes, 224 px crops sampled as
relabel samples them, cutmix, random logits, batch ``--batch``:

- ``full``: format 1, a float16 (B, 1000) logits file per step;
- ``topk-v1``: format 1, top-5 with the residual fill, a file per step (stores written before
  packed epoch files);
- ``topk``: format 2, top-5 with the residual fill packed one file per epoch (what relabel
  ``--label-format topk`` writes);
- ``per-image``: ``--files`` per-image files of ``--crops`` crops each, top-5 float16 probabilities
  (FKD's ``marginal_smoothing_k5 --use_fp16``), checked with and without ``--data``.

Each check runs ``softlabel.commands.info.main`` (summary, then ``--check``) in a fresh process,
after importing torch, so the time is the command's less its start-up. ``--against REV`` times
the same stores with the package as it was at git revision REV too (exported with ``git archive``
into ``--work``), the two interleaved, so a change is measured in one run on one machine:

    .venv/bin/python scripts/bench_check.py --work /tmp/bench_check --against HEAD
    .venv/bin/python scripts/bench_check.py --work /tmp/bench_check --against HEAD --torch-threads 1

(``--torch-threads 1`` takes out what torch's thread pool costs small operations on busy cores.)
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
from io import BytesIO

import numpy as np
import torch

from softlabel import replay
from softlabel.data import IMAGENET_MEAN, IMAGENET_STD, scan_image_folder
from softlabel.errors import UserError, run_main
from softlabel.stores import batch as store
from softlabel.stores import create_store, per_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
CLASSES, SIZE, SEED = 1000, 224, 42

# Runs in a fresh process: the command's main on the given flags, timed after the imports.
TIMER = """
import contextlib, io, sys, time
import softlabel
from softlabel.commands import info
args = info.get_args_parser().parse_args(sys.argv[1:])
out = io.StringIO()
start = time.perf_counter()
with contextlib.redirect_stdout(out):
    info.main(args)
took = time.perf_counter() - start
print(softlabel.__file__)
print(out.getvalue().strip().splitlines()[-1])
print(took)
"""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/bench_check", help="where the stores are made (kept between runs)")
    p.add_argument("--images", type=int, default=10000, help="images of the batch stores (IPC10 of ImageNet)")
    p.add_argument("--batch", type=int, default=100, help="batch size of the batch stores")
    p.add_argument("--epochs", type=int, default=6, help="epochs of the top-k stores (the full store: half)")
    p.add_argument("--files", type=int, default=2000, help="files of the per-image store")
    p.add_argument("--crops", type=int, default=500, help="crops per file of the per-image store (FKD: 500)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each check (the median is reported)")
    p.add_argument("--kinds", default="full,topk-v1,topk,per-image,per-image --data",
                   help="the stores to time, comma-separated")
    p.add_argument("--against", metavar="REV", default=None,
                   help="also time the package of this git revision (e.g. HEAD), interleaved")
    p.add_argument("--extra", default="", help="flags added to every timed command (e.g. '--sample 10')")
    p.add_argument("--torch-threads", type=int, default=None, metavar="N",
                   help="OMP_NUM_THREADS of the timed processes (default: torch's own, one per core)")
    return p


# ----------------------------------------------------------------------------- the stores

def batch_manifest(args: argparse.Namespace, label_format: str, epochs: int, packed: bool) -> dict:
    names = [f"n{c:08d}" for c in range(CLASSES)]
    container = store.container_of("topk") if packed else {"format_version": 1, "container": "batch"}
    return {**container, "label_keep": 1.0, "fkd_seed": SEED, "batch_size": args.batch, "epochs": epochs,
            "batches_per_epoch": replay.batches_per_epoch(args.images, args.batch), "num_samples": args.images,
            "num_classes": CLASSES, "class_names": names, "class_to_index": {n: i for i, n in enumerate(names)},
            "input_size": SIZE, "min_scale_crops": 0.08, "max_scale_crops": 1.0, "mix_type": "cutmix",
            "mixup": None, "cutmix": 1.0, "use_fp16": True, "label_format": label_format,
            "topk": 5 if label_format == "topk" else None, "topk_fill": "residual" if label_format == "topk" else None,
            "topk_fill_temperature": 1.0 if label_format == "topk" else None, "temperature": 1.0, "teachers": [],
            "ensemble": None, "primary_weight": None, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "dataset_fingerprint": "0" * 64, "created_by": "scripts/bench_check.py"}


def make_batch_store(path: str, manifest: dict) -> str:
    """Every step written through the store's writer: the relabel sample order, crops and cutmix."""
    done = os.path.join(path, ".complete")
    if os.path.isfile(done):
        return path
    writer = create_store(path, manifest, flag="bench")
    g = torch.Generator().manual_seed(0)
    n, batch = manifest["num_samples"], manifest["batch_size"]
    for e, b in replay.epoch_jobs(0, manifest["epochs"], manifest["batches_per_epoch"]):
        if writer.exists(e, b):
            continue
        idx = replay.epoch_order(SEED, e, n)[replay.batch_slice(batch, b)]
        rng = replay.batch_rng(SEED, e, b)
        coords, flips = replay.sample_crops_and_flips(rng, [(SIZE, SIZE)] * len(idx), (0.08, 1.0))
        mix_index, lam, box = replay.sample_mix(rng, "cutmix", len(idx), SIZE)
        logits = (torch.randn(len(idx), CLASSES, generator=g) * 3).half()
        writer.write(e, b, store.BatchRecord(coords, flips, mix_index, lam, box, logits,
                                             torch.from_numpy(idx.astype(np.int64))))
    writer.finish()
    open(done, "w").close()
    return path


def make_image_names(root: str, files: int) -> str:
    """An image folder of ``files`` names (100 class folders; the check reads none of the pixels)."""
    done = os.path.join(root, ".complete")
    if not os.path.isfile(done):
        for i in range(files):
            folder = os.path.join(root, f"n{i % 100:08d}")
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, f"img_{i:07d}.JPEG"), "wb") as f:
                f.write(b"\xff\xd8\xff")
        open(done, "w").close()
    return root


def make_per_image_store(path: str, data: str, crops: int) -> str:
    done = os.path.join(path, ".complete")
    if os.path.isfile(done):
        return path
    index = scan_image_folder(data, "--data")
    manifest = {"format": per_image.FORMAT, "format_version": per_image.FORMAT_VERSION, "num_crops": crops,
                "label_type": "marginal_smoothing_k5", "top_k": 5, "input_size": SIZE, "min_scale_crops": 0.08,
                "max_scale_crops": 1.0, "temperature": 1.0, "use_fp16": True, "fkd_seed": SEED, "teacher": None,
                "num_samples": len(index), "num_classes": CLASSES, "class_names": index.classes,
                "class_to_index": {c: i for i, c in enumerate(index.classes)}, "mean": list(IMAGENET_MEAN),
                "std": list(IMAGENET_STD), "dataset_fingerprint": index.fingerprint()}
    writer = create_store(path, manifest, index=index)
    g = torch.Generator().manual_seed(0)
    for i in range(len(index)):
        coords, flips = per_image.sample_crops(SEED, i, crops, SIZE, SIZE, (0.08, 1.0))
        probs = torch.softmax(torch.randn(crops, CLASSES, generator=g) * 3, dim=1)
        classes, values = per_image.quantize(probs, "marginal_smoothing_k5", True)
        writer.write(i, coords, flips, classes, values)
    writer.finish()
    open(done, "w").close()
    return path


def build(args: argparse.Namespace) -> dict[str, tuple[list[str], int]]:
    """Each store kind: (the command's flags, the steps or files it checks)."""
    w = args.work
    half = max(1, args.epochs // 2)
    per_epoch = replay.batches_per_epoch(args.images, args.batch)
    data = make_image_names(os.path.join(w, f"data_{args.files}"), args.files)
    tag = f"i{args.images}_b{args.batch}"
    stores = {
        "full": ([make_batch_store(os.path.join(w, f"full_{tag}_e{half}"), batch_manifest(args, "full", half, False))],
                 half * per_epoch),
        "topk-v1": ([make_batch_store(os.path.join(w, f"topk_v1_{tag}_e{args.epochs}"),
                                      batch_manifest(args, "topk", args.epochs, False))], args.epochs * per_epoch),
        "topk": ([make_batch_store(os.path.join(w, f"topk_{tag}_e{args.epochs}"),
                                   batch_manifest(args, "topk", args.epochs, True))], args.epochs * per_epoch),
    }
    per_image_store = make_per_image_store(os.path.join(w, f"per_image_{args.files}_k{args.crops}"), data, args.crops)
    stores["per-image"] = ([per_image_store], args.files)
    stores["per-image --data"] = ([per_image_store, "--data", data], args.files)
    return stores


# ----------------------------------------------------------------------------- timing

def export(rev: str, work: str) -> str:
    """The softlabel package of git revision ``rev``, exported into ``work`` (a folder for PYTHONPATH)."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True)
    if sha.returncode != 0:
        raise UserError(f"--against {rev}: not a git revision here ({sha.stderr.strip()})")
    dest = os.path.join(work, f"rev_{sha.stdout.strip()}")
    if not os.path.isdir(os.path.join(dest, "softlabel")):
        tar = subprocess.run(["git", "archive", rev, "softlabel"], cwd=ROOT, capture_output=True, check=True).stdout
        with tarfile.open(fileobj=BytesIO(tar)) as t:
            t.extractall(dest, filter="data")
    return dest


def time_check(flags: list[str], package: str | None, threads: int | None) -> tuple[float, str]:
    """Seconds of one `fkd_info STORE --check` run, and its last line."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if package:
        env["PYTHONPATH"] = package
    # run outside the checkout: `python -c` puts its folder first on sys.path
    proc = subprocess.run([PY, "-c", TIMER, *flags, "--check"], cwd=package or os.path.dirname(ROOT), env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"the check of {flags[0]} failed:\n{proc.stderr[-2000:]}")
    where, last, took = proc.stdout.strip().splitlines()[-3:]
    if package and not where.startswith(package):
        raise UserError(f"--against: the timed process imported {where}, not the exported package")
    return float(took), last


def main(args: argparse.Namespace) -> None:
    os.makedirs(args.work, exist_ok=True)
    stores = build(args)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in stores]
    if unknown:
        raise UserError(f"--kinds: unknown {', '.join(unknown)}; choose from {', '.join(stores)}")
    versions = {"this tree": None}
    if args.against:
        versions = {args.against: export(args.against, args.work), **versions}
    extra = args.extra.split()
    print(f"{'store':18s} {'units':>6s} " + " ".join(f"{v + ' ms/unit':>20s}" for v in versions) + "  last line")
    for kind in kinds:
        flags, units = stores[kind]
        times: dict[str, list[float]] = {v: [] for v in versions}
        last = ""
        for _ in range(args.repeats):
            for name, package in versions.items():
                took, last = time_check(flags + extra, package, args.torch_threads)
                times[name].append(took)
        medians = [statistics.median(times[v]) for v in versions]
        ratio = f"  ({medians[0] / medians[-1]:.1f}x)" if len(medians) > 1 else ""
        print(f"{kind:18s} {units:6d} " + " ".join(f"{1000 * m / units:20.3f}" for m in medians)
              + f"{ratio}  {last}", flush=True)


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
