"""Every stage of the toolkit at growing dataset sizes: wall time, time per item, peak memory,
files written and the growth exponent between sizes, extrapolated to ImageNet scale.

Each stage runs as a user runs it, the real script in its own process (CPU, --threads torch
threads), on N tiny 8 x 8 PNGs in 1000 class folders (decoding is negligible, so what grows is
bookkeeping), with a random mlpnet teacher saved as a checkpoint (16 px crops, batch --batch):

  scan + fingerprint       scan_image_folder + FolderIndex.fingerprint(), what every command does first
  relabel full / topk      relabel/generate_soft_label.py, --relabel-epochs epochs (ours; --label-format topk)
  relabel fkd              relabel/generate_soft_label_fkd.py, 2 crops per image
  pack pixels / lmdb       scripts/pack_images.py (--format lmdb)
  open pixels / lmdb       scan_image_folder(PACK): the pack's open, fingerprint, first and last image
  check full / topk / fkd  scripts/fkd_info.py STORE --check on the relabel and FKD stores above
  evaluate                 validate/train_FKD_parallel.py -e on N validation images

and on one store of --store-images images grown to each of --store-steps steps (top-k, packed: a
full-label store of 300k steps at 1000 classes is 30-60 GB). Relabel creates it and is killed; the
steps are written with random logits and relabel's crops through the store's writer, all but the
last --store-missing; then:

  relabel resume           relabel on that store again: the scan of what is done, then the missing steps
  trainer start-up         validate/train_FKD_parallel.py on the store (all its epochs), stopped after
                           --train-epochs epochs: process start to the first step
  trainer read / step      its loader's wait per step in the last of those epochs (store read + crops)
  check store              scripts/fkd_info.py STORE --check

Time and memory count above the import baseline (a fresh interpreter importing the stage's
module, the median of --baseline-runs), so the growth exponent log(t2/t1) / log(n2/n1) between
consecutive sizes is that of the work (1.0: linear). Time is the process's CPU seconds, which a
busy machine changes far less than wall seconds (both are reported); the trainer's rows use its
wall clock. Memory is the peak anonymous resident memory. The last two sizes extrapolate each
stage to 1.28M images or 300k steps.

    .venv/bin/python scripts/bench_scale.py --sizes 10000,50000 --out scale.json
    .venv/bin/python scripts/bench_scale.py --sizes 1000,2000 --store-images 2000 --store-steps 400,800
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from benchlib import (PY, ROOT, extrapolate, growth_exponent, run_measured, tiny_png_folder,
                      tree_size)

from softlabel import files, replay
from softlabel.errors import UserError, run_main
from softlabel.models import create_model

TARGETS = {"image": 1_280_000, "step": 300_000}   # ImageNet-1k train; a PRISM IPC50 store at -b 50
IMAGE = (8, 8)
RELABEL, FKD = "relabel/generate_soft_label.py", "relabel/generate_soft_label_fkd.py"
TRAIN, INFO, PACK = "validate/train_FKD_parallel.py", "scripts/fkd_info.py", "scripts/pack_images.py"
SCAN = "from softlabel.data import scan_image_folder"
# the module each script runs: its import is the stage's baseline
MODULES = {RELABEL: "softlabel.commands.relabel", FKD: "softlabel.commands.relabel_fkd",
           TRAIN: "softlabel.commands.train", INFO: "softlabel.commands.info", PACK: "softlabel.commands.pack",
           SCAN: "softlabel.data"}
MIN_NOISE_S, MIN_NOISE_CPU_S, MIN_NOISE_MB = 0.5, 0.2, 2.0
GROUPS = ("scan", "relabel", "fkd", "pack", "check", "evaluate", "store")


@dataclass
class Bench:
    args: argparse.Namespace
    work: str
    teacher: str
    class_map: str
    env: dict
    rows: list[dict] = field(default_factory=list)
    baselines: dict[str, dict] = field(default_factory=dict)

    def log(self, name: str) -> str:
        return os.path.join(self.work, "logs", re.sub(r"\W+", "_", name) + ".log")


def baseline(bench: Bench, module: str) -> dict:
    """Wall time and peak memory of importing the stage's module (a script's command module):
    the median of --baseline-runs runs, since on a busy machine one start-up varies by seconds."""
    if module not in bench.baselines:
        runs = []
        for i in range(bench.args.baseline_runs):
            got = run_measured([PY, "-c", f"import {module}"], bench.log(f"baseline {module} {i}"), bench.env)
            if got["rc"] != 0:
                log = bench.log(f"baseline {module} {i}")
                raise UserError(f"importing {module} failed (exit {got['rc']}); log {log}")
            runs.append(got)
        got = {key: statistics.median(r[key] for r in runs) for key in ("wall_s", "cpu_s", "peak_mb")}
        # below these, a stage's work cannot be told from its start-up's variation
        for key, least in (("wall_s", MIN_NOISE_S), ("cpu_s", MIN_NOISE_CPU_S), ("peak_mb", MIN_NOISE_MB)):
            got[f"noise_{key}"] = max(least, max(r[key] for r in runs) - min(r[key] for r in runs))
        bench.baselines[module] = got
    return bench.baselines[module]


@dataclass(frozen=True)
class Count:
    """What a stage's row counts: ``items`` of ``unit`` ("image", "step") at ``size`` (images or steps)."""
    unit: str
    items: int
    size: int


def stage(bench: Bench, name: str, argv: list[str], base: str, count: Count, out: Optional[str] = None,
          stop: Optional[Callable[[], bool]] = None) -> dict:
    """Run one stage, add its row, return it (with the log's text under ``text``)."""
    unit, items, size = count.unit, count.items, count.size
    log = bench.log(f"{name} {size}")
    before = tree_size(out) if out else (0, 0)
    got = run_measured(argv, log, bench.env, stop)
    with open(log) as f:
        text = f.read()
    if got["rc"] != 0 and not got["stopped"]:
        raise UserError(f"stage {name} at {size} failed (exit {got['rc']}): {text.strip().splitlines()[-1:]}; "
                        f"log {log}")
    after = tree_size(out) if out else (0, 0)
    b = baseline(bench, MODULES[base])
    row = {"stage": name, "size": size, "unit": unit, "items": items, "wall_s": got["wall_s"],
           "base_s": b["wall_s"], "cpu_s": got["cpu_s"], "base_cpu_s": b["cpu_s"], "peak_mb": got["peak_mb"],
           "base_mb": b["peak_mb"], "hwm_mb": got["hwm_mb"], "maxrss_mb": got["maxrss_mb"],
           "work_s": got["cpu_s"] - b["cpu_s"], "base_work_s": b["cpu_s"], "clock": "CPU", "noise_s": b["noise_cpu_s"],
           "noise_mb": b["noise_peak_mb"],
           "files": after[0] - before[0], "bytes": after[1] - before[1], "x": items, "command": argv[1:]}
    bench.rows.append(row)
    print(f"{name:<22} {size:>8} ({items} {unit}s) {got['wall_s']:7.2f} s (imports {b['wall_s']:.2f} s)  peak "
          f"{got['peak_mb']:7.1f} MB (imports {b['peak_mb']:.1f})  {row['files']} files", flush=True)
    return {**row, "text": text}


# ----------------------------------------------------------------------------- stages at N images


def relabel_argv(bench: Bench, data: str, out: str, epochs: int, fmt: str) -> list[str]:
    return [PY, RELABEL, "--data", data, "--teacher-path", bench.teacher, "--class-map", bench.class_map,
            "--fkd-path", out, "--epochs", str(epochs), "-b", str(bench.args.batch), "--input-size", "16",
            "--label-format", fmt]


def relabel_timing(text: str, batch: int) -> dict:
    """What relabel's last line says: start-up to its first batch, and its steady seconds per step."""
    start = re.search(r"start-up to the first batch ([\d.]+)s", text)
    rate = re.search(r"then ([\d.]+) img/s", text)
    return {"startup_s": float(start.group(1)) if start else None,
            "steady_step_s": batch / float(rate.group(1)) if rate and float(rate.group(1)) > 0 else None}


def at_size(bench: Bench, n: int) -> None:
    """Every image-count stage at ``n`` images (its outputs removed afterwards)."""
    a, groups = bench.args, bench.args.stages
    data = tiny_png_folder(os.path.join(bench.work, f"images_{n}"), n, a.classes)
    out = os.path.join(bench.work, f"out_{n}")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    if "scan" in groups:
        stage(bench, "scan + fingerprint", [PY, "-c", f"{SCAN}\nscan_image_folder({data!r}, '--data').fingerprint()"],
              SCAN, Count("image", n, n))
    steps = a.relabel_epochs * replay.batches_per_epoch(n, a.batch)
    stores = {}
    for fmt in ("full", "topk") if "relabel" in groups else ():
        stores[fmt] = os.path.join(out, f"store_{fmt}")
        row = stage(bench, f"relabel {fmt}", relabel_argv(bench, data, stores[fmt], a.relabel_epochs, fmt),
                    RELABEL, Count("step", steps, n), stores[fmt])
        bench.rows[-1].update(relabel_timing(row["text"], a.batch))
    if "fkd" in groups:
        stores["fkd"] = os.path.join(out, "fkd")
        stage(bench, "relabel fkd", [PY, FKD, data, "--teacher-path", bench.teacher, "--class-map", bench.class_map,
                                     "--input_size", "16", "--num_crops", "2", "--num_seg", "2",
                                     "--save_path", stores["fkd"]], FKD, Count("image", n, n), stores["fkd"])
    for fmt in ("pixels", "lmdb") if "pack" in groups else ():
        pack = os.path.join(out, f"pack_{fmt}")
        stage(bench, f"pack {fmt}", [PY, PACK, data, pack, "--format", fmt, "--no-progress"], PACK,
              Count("image", n, n), pack)
        stage(bench, f"open {fmt}", [PY, "-c", f"{SCAN}\ni = scan_image_folder({pack!r}, '--data')\ni.fingerprint()\n"
                                               f"i.load(i.samples[0][0])\ni.load(i.samples[-1][0])"],
              SCAN, Count("image", n, n))
    for kind, path in stores.items() if "check" in groups else ():
        stage(bench, f"check {kind}", [PY, INFO, path, "--check"], INFO,
              Count("image", n, n) if kind == "fkd" else Count("step", steps, n))
    if "evaluate" in groups:
        stage(bench, "evaluate", [PY, TRAIN, "-e", "--resume", bench.teacher, "--model", "mlpnet", "--val-dir", data,
                                  "--input-size", "16"], TRAIN, Count("image", n, n))
    shutil.rmtree(out, ignore_errors=True)


# ----------------------------------------------------------------------------- stages on a store of S steps


def start_store(bench: Bench, data: str, path: str, epochs: int) -> None:
    """The store as relabel creates it: relabel started, then killed once its manifest is written."""
    manifest = os.path.join(path, "manifest.json")
    got = run_measured(relabel_argv(bench, data, path, epochs, "topk"), bench.log("store create"), bench.env,
                       lambda: os.path.isfile(manifest))
    if not os.path.isfile(manifest):
        raise UserError(f"relabel did not create the store {path} (exit {got['rc']}); log {bench.log('store create')}")


def fill_store(bench: Bench, path: str, epochs: int) -> None:
    """All steps of ``epochs`` epochs but the last --store-missing, through the store's writer in a
    child process (the writer holds the store's lock for its process's life)."""
    # fsync off: this store is remade at will, and flushing every step would dominate its writing
    code = (f"import os, sys\nsys.path.insert(0, {os.path.join(ROOT, 'scripts')!r})\nos.fsync = lambda fd: None\n"
            f"import benchlib\nprint(benchlib.extend_store({path!r}, {epochs}, {bench.args.store_missing}, {IMAGE!r}))")
    got = run_measured([PY, "-c", code], bench.log(f"store fill {epochs}"), bench.env)
    if got["rc"] != 0:
        raise UserError(f"writing the store failed (exit {got['rc']}); log {bench.log(f'store fill {epochs}')}")
    print(f"{'(store written)':<22} {epochs} epochs  {got['wall_s']:7.2f} s", flush=True)


def trainer_rows(bench: Bench, data: str, path: str, steps: int, per_epoch: int) -> None:
    """The trainer on the whole store, stopped after --train-epochs epochs: start-up to the first
    step (the wall time at the first epoch's row less that epoch's steps) and the loader's wait per
    step in the last epoch."""
    out = os.path.join(bench.work, "train")
    shutil.rmtree(out, ignore_errors=True)
    metrics = os.path.join(out, "metrics.jsonl")
    seen: list[float] = []

    def rows_done() -> bool:
        lines = open(metrics).read().splitlines() if os.path.isfile(metrics) else []
        seen.extend(time.perf_counter() for _ in range(len(lines) - len(seen)))
        return len(lines) >= bench.args.train_epochs
    started = time.perf_counter()
    argv = [PY, TRAIN, "--train-dir", data, "--fkd-path", path, "--model", "mlpnet", "--output-dir", out,
            "--eval-interval", "1", "--save-interval", "100000", "--no-progress"]
    row = stage(bench, "trainer start-up", argv, TRAIN, Count("step", steps, steps), out, rows_done)
    rows_done()
    epochs = [json.loads(line) for line in open(metrics).read().splitlines()]
    if not epochs:
        raise UserError(f"the trainer wrote no epoch; log {bench.log(f'trainer start-up {steps}')}")
    first = seen[0] - started - epochs[0]["train_s"]
    # the trainer's own CPU time runs on into its epochs: its start-up is timed on the wall clock
    b = baseline(bench, MODULES[TRAIN])
    bench.rows[-1].update(wall_s=first, work_s=first - b["wall_s"], base_work_s=b["wall_s"], clock="wall",
                          noise_s=b["noise_wall_s"],
                          note="process start to the first step")
    read = {"stage": "trainer read / step", "wall_s": epochs[-1]["data_wait_s"], "base_s": 0.0,
            "work_s": epochs[-1]["data_wait_s"], "base_work_s": 0.0, "clock": "wall", "noise_s": 0.0,
            "items": per_epoch, "x": steps, "extrapolate_per_item": True, "files": 0, "bytes": 0, "memory": False,
            "note": f"loader wait in epoch {len(epochs)} of the run"}
    bench.rows.append({**bench.rows[-1], **read})
    print(f"{'':<22} start-up {first:.2f} s; loader wait {epochs[-1]['data_wait_s']:.2f} s over {per_epoch} steps "
          f"({row['wall_s']:.1f} s until stopped)", flush=True)
    shutil.rmtree(out, ignore_errors=True)


def on_store(bench: Bench) -> None:
    """The store stages at each of --store-steps, one store grown from the smallest size to the largest."""
    a = bench.args
    data = tiny_png_folder(os.path.join(bench.work, f"images_{a.store_images}"), a.store_images, a.classes)
    path = os.path.join(bench.work, "store")
    shutil.rmtree(path, ignore_errors=True)
    per_epoch = replay.batches_per_epoch(a.store_images, a.batch)
    for steps in a.store_steps:
        epochs = steps // per_epoch
        if not os.path.isdir(path):
            start_store(bench, data, path, epochs)
        fill_store(bench, path, epochs)
        row = stage(bench, "relabel resume", relabel_argv(bench, data, path, epochs, "topk"), RELABEL,
                    Count("step", steps, steps), path)
        done = re.search(r"(\d+) already done", row["text"])
        bench.rows[-1].update(relabel_timing(row["text"], a.batch), already_done=int(done.group(1)) if done else 0)
        trainer_rows(bench, data, path, steps, per_epoch)
        stage(bench, "check store", [PY, INFO, path, "--check"], INFO, Count("step", steps, steps))
    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- the table


def work_s(row: dict) -> float:
    return row["work_s"]


def work_mb(row: dict) -> float:
    return row["peak_mb"] - row["base_mb"]


def above_noise(prev: dict, row: dict, work: Callable[[dict], float], noise: str) -> bool:
    return work(prev) > prev[noise] and work(row) > row[noise]


def growth(rows: list[dict]) -> None:
    """Each row's exponents against the previous size of its stage, and the stage's extrapolation
    from its last two sizes (on the largest size's row), where the work at both sizes stands out of
    the import baseline's variation. Both are over ``x``: the items counted, or for a per-step
    figure the store's steps. A relabel or check of N images for one epoch extrapolates its time
    to 300k steps but not its memory, which follows the images, not the steps."""
    by_stage: dict[str, list[dict]] = {}
    for row in rows:
        by_stage.setdefault(row["stage"], []).append(row)
    for runs in by_stage.values():
        runs.sort(key=lambda r: r["x"])
        for prev, row in zip(runs, runs[1:]):
            for key, work, noise in (("time", work_s, "noise_s"), ("mem", work_mb, "noise_mb")):
                measured = above_noise(prev, row, work, noise) and (key == "time" or row.get("memory", True))
                row[f"exponent_{key}"] = growth_exponent(prev["x"], work(prev), row["x"], work(row)) if measured \
                    else None
        if len(runs) < 2:
            continue
        prev, last = runs[-2], runs[-1]
        target = TARGETS[last["unit"]]
        t = extrapolate(prev["x"], work_s(prev), last["x"], work_s(last), target) \
            if last["exponent_time"] is not None else None
        m = extrapolate(prev["x"], work_mb(prev), last["x"], work_mb(last), target) \
            if last["exponent_mem"] is not None and (last["unit"] == "image" or last["stage"] in STORE_STAGES) \
            else None
        last["extrapolated"] = {"to": target, "unit": last["unit"], "from": [prev["x"], last["x"]],
                                "clock": last["clock"], "time_s": None if t is None else t + last["base_work_s"],
                                "peak_mb": None if m is None else m + last["base_mb"]}


def human(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    for unit, size, least in (("d", 86400, 172800), ("h", 3600, 3600), ("min", 60, 100), ("s", 1, 1),
                              ("ms", 1e-3, 1e-3)):
        if seconds >= least:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds * 1e6:.3g} µs"


def cell_extrapolated(row: dict) -> str:
    x = row.get("extrapolated")
    if not x:
        return ""
    parts = []
    if x["time_s"] is not None:
        per = row.get("extrapolate_per_item")
        parts.append(human(x["time_s"] / row["items"] if per else x["time_s"]) + f" {x['clock']}"
                     + (f" / {row['unit']}" if per else ""))
    if x["peak_mb"] is not None:
        parts.append(f"{x['peak_mb']:.0f} MB")
    said = " ≈ " + ", ".join(parts) if parts else ": in start-up noise"
    return f"{x['to']:,} {x['unit']}s{said} (from {x['from'][0]:,}→{x['from'][1]:,})"


def table(rows: list[dict]) -> str:
    lines = ["| stage | N | wall (CPU) | per item | peak MB (+ over imports) | files | bytes | exponent time / mem | "
             "extrapolated 1.28M images / 300k steps |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        k = "/".join("-" if r.get(key) is None else f"{r[key]:.2f}" for key in ("exponent_time", "exponent_mem"))
        per = (human(work_s(r) / r["items"]) + f" {r['clock']} / {r['unit']}" if work_s(r) > r["noise_s"]
               else "in start-up noise")
        size = f"{r['size']:,} {'steps' if r['stage'] in STORE_STAGES else 'images'}"
        clock = f" ({human(r['cpu_s'])})" if r["clock"] == "CPU" else ""
        peak = f"{r['peak_mb']:.0f} (+{work_mb(r):.0f})" if r.get("memory", True) else "(above)"
        lines.append(f"| {r['stage']} | {size} | {human(r['wall_s'])}{clock} | {per} | {peak} "
                     f"| {r['files']} | {r['bytes']:,} | {k if 'exponent_time' in r else ''} | "
                     f"{cell_extrapolated(r)} |")
    return "\n".join(lines)


def notes(rows: list[dict]) -> str:
    """What the scripts' own logs add: relabel's start-up and steady step, the resumed run's skip."""
    lines = []
    for r in rows:
        said = []
        if "already_done" in r:
            said.append(f"{r['already_done']:,} steps already done")
        if r.get("startup_s") is not None and r["stage"].startswith("relabel"):
            said.append(f"start-up to the first batch written {human(r['startup_s'])}")
        if r.get("steady_step_s") is not None and "already_done" not in r:
            said.append(f"then {human(r['steady_step_s'])} / step")
        if said:
            lines.append(f"- {r['stage']}, {r['size']:,}: " + ", ".join(said))
    return "\n".join(lines)


LEGEND = ("Per item, exponents and extrapolations: the stage's CPU seconds (user + system) above those of "
          "importing its module (on a shared machine wall time follows the load; CPU time hardly), except the "
          "trainer's rows, on the wall clock: its start-up (less the import's wall time) and its loader's wait. "
          "Peak: the largest anonymous resident memory of the stage's process, sampled every 0.05 s. Files and "
          "bytes: the net change of the stage's output folder. Extrapolations follow the power law through the "
          "last two sizes; '-' or 'in start-up noise': the work at a size does not stand out of the variation "
          "of the import baseline.")


STORE_STAGES = ("relabel resume", "trainer start-up", "trainer read / step", "check store")


# ----------------------------------------------------------------------------- main


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,50000,200000", help="image counts (default: 10000,50000,200000)")
    p.add_argument("--classes", type=int, default=1000, help="class folders and teacher classes (default: 1000)")
    p.add_argument("--batch", type=int, default=50, help="relabel's -b, the store's batch (default: 50)")
    p.add_argument("--relabel-epochs", type=int, default=1, help="epochs of the relabel stages (default: 1)")
    p.add_argument("--store-images", type=int, default=50000,
                   help="images of the store (default: 50000, ImageNet-1k IPC50)")
    p.add_argument("--store-steps", default="10000,30000,100000",
                   help="store sizes in steps, each a whole number of epochs (default: 10000,30000,100000; "
                        "300000 is a PRISM IPC50 store of 300 epochs at -b 50)")
    p.add_argument("--store-missing", type=int, default=5, help="steps the resumed relabel writes (default: 5)")
    p.add_argument("--train-epochs", type=int, default=2, help="epochs the trainer runs on the store (default: 2)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of every stage (default: 1; on a shared machine more threads measure "
                        "contention between them)")
    p.add_argument("--baseline-runs", type=int, default=3,
                   help="runs of each import baseline, the median taken (default: 3)")
    p.add_argument("--stages", default=",".join(GROUPS), help=f"comma-separated, of: {', '.join(GROUPS)}")
    p.add_argument("--work", default=None, help="image folders, stores and logs (default: a temporary folder)")
    p.add_argument("--out", default=None, help="write the rows and the table as JSON here")
    return p


def settle(args: argparse.Namespace) -> None:
    """Parse the lists and refuse what cannot run, each with one line."""
    def counts(flag: str, value: str) -> list[int]:
        try:
            got = sorted({int(v) for v in value.split(",") if v.strip()})
        except ValueError:
            raise UserError(f"{flag} {value}: comma-separated whole numbers") from None
        if not got or got[0] < 1:
            raise UserError(f"{flag} {value}: at least one positive number")
        return got
    args.sizes, args.store_steps = counts("--sizes", args.sizes), counts("--store-steps", args.store_steps)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if any(s not in GROUPS for s in args.stages):
        raise UserError(f"--stages {','.join(args.stages)}: of {', '.join(GROUPS)}")
    if min(args.sizes + [args.store_images]) < args.classes:
        raise UserError(f"--sizes / --store-images: at least --classes ({args.classes}) images, one per class")
    per_epoch = replay.batches_per_epoch(args.store_images, args.batch)
    if any(s % per_epoch for s in args.store_steps):
        raise UserError(f"--store-steps {','.join(map(str, args.store_steps))}: each a multiple of the "
                        f"{per_epoch} steps of an epoch of --store-images {args.store_images} at --batch {args.batch}")
    if min(args.store_steps) <= args.store_missing or args.train_epochs < 1 or args.baseline_runs < 1:
        raise UserError("--store-missing must be fewer than the smallest --store-steps; --train-epochs and "
                        "--baseline-runs at least 1")


def prepare(args: argparse.Namespace, work: str) -> Bench:
    """The teacher checkpoint, its class map and the environment every stage runs in."""
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)
    torch.manual_seed(0)
    teacher = os.path.join(work, "mlpnet_teacher.pth")
    files.atomic_write_bytes(teacher, files.torch_bytes({"model": create_model("mlpnet", args.classes).state_dict(),
                                                         "arch": "mlpnet", "num_classes": args.classes}))
    # the folders are named like WNIDs (n00000000...) that are not ImageNet's: the map says which class each is
    class_map = os.path.join(work, "class_map.json")
    files.atomic_write_json(class_map, {f"n{c:08d}": c for c in range(args.classes)})
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads), WANDB_MODE="disabled")
    return Bench(args, work, teacher, class_map, env)


def main(args: argparse.Namespace) -> None:
    settle(args)
    temporary = args.work is None
    work = tempfile.mkdtemp(prefix="bench_scale_") if temporary else os.path.abspath(args.work)
    load = os.getloadavg()
    started = time.time()
    try:
        bench = prepare(args, work)
        for n in args.sizes:
            at_size(bench, n)
        if "store" in args.stages:
            on_store(bench)
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    growth(bench.rows)
    text = table(bench.rows) + "\n\n" + notes(bench.rows) + "\n\n" + LEGEND
    print("\n" + text)
    machine = {"cpus": os.cpu_count(), "load_average_before": load, "load_average_after": os.getloadavg(),
               "threads": args.threads, "torch": torch.__version__, "python": sys.version.split()[0],
               "run_s": round(time.time() - started, 1)}
    if args.out:
        files.atomic_write_json(args.out, {"machine": machine, "args": vars(args),
                                           "rows": bench.rows, "table": text})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
