"""FKD per-image labelling throughput against the teacher-forward-only bound, measured in one run.

Two settings, each on images made here as PNGs in a temporary folder, one class folder each, and a
teacher with random weights (speed does not depend on them; nothing is downloaded):
  tiny:  an mlpnet teacher (1000 classes), 1000 8 px PNGs, 16 px crops, 2 crops per image;
  heavy: a resnet18 teacher (1000 classes), 100 32 px PNGs, 64 px crops, 10 crops per image.
The bound labels exactly the crops the command labels (the same seed, boxes and flips), already
decoded, normalized and in memory, image by image in a plain loop, with the command's forward
segments; it is timed at one intra-op thread and at torch's default, and the faster counts. The
command, relabel/generate_soft_label_fkd.py, runs as a subprocess on the CPU (CUDA hidden), with
its default -j, -j 0 and -j 2, writing to a fresh --save_path on the temporary folder's disk; its
rate is the images it wrote over the time of its labelling loop (after imports, teacher loading
and its choice of threads; the whole command's wall time is reported too). --baseline-root also
runs the command of another copy of the code and says whether the two wrote the same bytes. Rows
are interleaved per repeat and medians reported.

    .venv/bin/python scripts/bench_fkd.py                      # both settings, 3 repeats
    .venv/bin/python scripts/bench_fkd.py --settings tiny --repeats 5
    .venv/bin/python scripts/bench_fkd.py --baseline-root /tmp/old   # also the command of a copy of older code
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
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from benchlib import ROOT
from PIL import Image

from softlabel import replay
from softlabel.data import IMAGENET_MEAN, IMAGENET_STD, scan_image_folder
from softlabel.errors import UserError, run_main
from softlabel.models import create_model
from softlabel.stores import per_image

WROTE = re.compile(r"wrote (\d+) files to .* in ([\d.]+)s")
SCALE = (0.08, 0.936)  # the command's default crop scales
BOUND = "teacher forward + softmax only (bound)"


@dataclass(frozen=True)
class Setting:
    arch: str
    images: int
    png: int          # side of the square PNGs
    input_size: int
    num_crops: int
    num_seg: int = 50  # the command's default: every crop of an image in one forward here


SETTINGS = {"tiny": Setting("mlpnet", 1000, 8, 16, 2), "heavy": Setting("resnet18", 100, 32, 64, 10)}
CLASSES = 1000


def make_images(root: str, count: int, side: int) -> str:
    """``count`` class folders of one seeded random PNG each; kept when already there."""
    done = os.path.join(root, ".complete")
    if not os.path.isfile(done):
        rng = np.random.default_rng(side)
        for c in range(count):
            folder = os.path.join(root, f"c{c:04d}")
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(os.path.join(folder, "0.png"))
        open(done, "w").close()
    return root


def make_teacher(work: str, arch: str) -> tuple[str, torch.nn.Module]:
    torch.manual_seed(0)
    model = create_model(arch, CLASSES).eval()
    path = os.path.join(work, f"{arch}_random_{CLASSES}.pth")
    torch.save({"model": model.state_dict(), "arch": arch, "num_classes": CLASSES}, path)
    return path, model


def decoded_crops(data: str, s: Setting) -> list[torch.Tensor]:
    """Every image's crops as the command renders them (its dataset, its seed), normalized."""
    index = scan_image_folder(data, "DIR")
    items = per_image.GenerateImages(index, per_image.chunks_of(list(range(len(index))), 1), 42, s.num_crops,
                                     s.input_size, SCALE)
    return [replay.normalize(items[n]["pixels"][0], IMAGENET_MEAN, IMAGENET_STD) for n in range(len(items))]


def bound_rate(crops: list[torch.Tensor], model: torch.nn.Module, seg: int, threads: int) -> float:
    """Images/s of the forward pass and softmax alone, image by image, at ``threads`` intra-op threads."""
    default = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            model(crops[0][:seg])
            start = time.perf_counter()
            for x in crops:
                for k in range(0, len(x), seg):
                    F.softmax(model(x[k:k + seg]).float(), dim=1)
            return len(crops) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(default)


def tree_bytes(root: str) -> dict[str, bytes]:
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                out[os.path.relpath(os.path.join(folder, name), root)] = f.read()
    return out


def command_rate(data: str, teacher: str, store: str, s: Setting, workers: Optional[int], root: str = ROOT
                 ) -> tuple[float, float]:
    """(images/s of the labelling loop, wall seconds of the whole command) of the command in ``root``
    (a copy of the code at another version, e.g. for a before/after table in one run)."""
    shutil.rmtree(store, ignore_errors=True)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    if root != ROOT:  # that copy's softlabel package before the installed one
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    cmd = [sys.executable, os.path.join(root, "relabel", "generate_soft_label_fkd.py"), data, "--teacher-path",
           teacher, "--save_path", store, "--input_size", str(s.input_size), "--num_crops", str(s.num_crops),
           "--num_seg", str(s.num_seg)] + ([] if workers is None else ["-j", str(workers)])
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise UserError(f"the FKD command failed:\n{proc.stderr[-2000:]}")
    m = WROTE.search(proc.stdout)
    if not m:
        raise UserError(f"no 'wrote N files ... in Xs' line in the command's output:\n{proc.stdout[-2000:]}")
    return int(m.group(1)) / max(float(m.group(2)), 1e-9), wall


def run_setting(name: str, s: Setting, work: str, repeats: int, baseline: Optional[str]) -> None:
    data = make_images(os.path.join(work, f"{name}_png{s.png}_n{s.images}"), s.images, s.png)
    teacher, model = make_teacher(work, s.arch)
    crops = decoded_crops(data, s)
    default = torch.get_num_threads()
    print(f"\n{name}: {s.arch} teacher ({CLASSES} classes), {s.images} {s.png} px PNGs, {s.input_size} px crops, "
          f"{s.num_crops} crops per image; bound at 1 and {default} threads", flush=True)
    rates: dict[str, list[float]] = {BOUND: [], "bound, 1 thread": [], f"bound, {default} threads": []}
    walls: dict[str, list[float]] = {}
    for rep in range(repeats):
        # interleaved, so that a slow spell of a shared machine hits every row alike
        one, many = bound_rate(crops, model, s.num_seg, 1), bound_rate(crops, model, s.num_seg, default)
        rates["bound, 1 thread"].append(one)
        rates[f"bound, {default} threads"].append(many)
        rates[BOUND].append(max(one, many))
        for root, tag, runs in [(ROOT, "", (None, 0, 2))] + ([(baseline, " (--baseline-root)", (None,))]
                                                              if baseline else []):
            for workers in runs:
                label = f"generate_soft_label_fkd.py {'(default -j)' if workers is None else f'-j {workers}'}{tag}"
                store = os.path.join(work, f"store_{name}_j{workers}{'_baseline' if tag else ''}")
                rate, wall = command_rate(data, teacher, store, s, workers, root)
                rates.setdefault(label, []).append(rate)
                walls.setdefault(label, []).append(wall)
        same = "" if not baseline else ", files identical to --baseline-root's: " + str(
            tree_bytes(os.path.join(work, f"store_{name}_jNone")) == tree_bytes(
                os.path.join(work, f"store_{name}_jNone_baseline")))
        print(f"  repeat {rep + 1}: " + ", ".join(f"{k}: {v[-1]:.1f} img/s" for k, v in rates.items()) + same,
              flush=True)
    bounds = rates[BOUND]
    print(f"\n| {name} | images/s (median) | time / bound (median) | per-repeat ratios | command wall (s) |")
    print("|---|---|---|---|---|")
    for label, values in rates.items():
        ratios = [b / v for b, v in zip(bounds, values)]
        wall = f"{statistics.median(walls[label]):.1f}" if label in walls else ""
        print(f"| {label} | {statistics.median(values):.1f} | {statistics.median(ratios):.2f} | "
              f"{', '.join(f'{r:.2f}' for r in ratios)} | {wall} |")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", default="tiny,heavy", help="comma list of: tiny, heavy (default: both)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported (default: 3)")
    p.add_argument("--work-dir", default=None, help="where to put the images and stores (default: a temp dir)")
    p.add_argument("--baseline-root", default=None, metavar="DIR",
                   help="also run the command of another copy of the code (a folder holding its relabel/ and "
                        "softlabel/), interleaved: a before/after table in one run")
    return p


def main(args: argparse.Namespace) -> None:
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown or not names:
        raise UserError(f"--settings {args.settings}: expected a comma list of {', '.join(SETTINGS)}")
    if args.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {args.repeats}")
    baseline = os.path.abspath(args.baseline_root) if args.baseline_root else None
    if baseline and not os.path.isfile(os.path.join(baseline, "relabel", "generate_soft_label_fkd.py")):
        raise UserError(f"--baseline-root {args.baseline_root}: no relabel/generate_soft_label_fkd.py there")
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_fkd_")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"{args.repeats} interleaved repeats, medians; work dir {work}", flush=True)
    for name in names:
        run_setting(name, SETTINGS[name], work, args.repeats, baseline)


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
