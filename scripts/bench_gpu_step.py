"""The trainer's store path against the same step on tensors in memory, on the GPU, with a
profile of where a step's time goes, measured in one run.

Two settings:
  demo      resnet18 student, 64 px crops of the demo's 32 px PNGs, batch 20, AdamW, KL: the
            setting of bench_train.py (the store relabelled here by a random resnet18 teacher);
  imagenet  resnet18 student, bf16, channels_last, batch 256, 224 px crops of bench_loader.py's
            seeded synthetic 1000-class set (IPC 1 JPEGs, packed by scripts/pack_images.py), SGD,
            KL on a top-5 store.
For each: (a) the step alone on resident tensors (bench_train.py's bound: forward under the same
autocast and memory format, KL to resident targets, backward, the same optimizer); (b) the real trainer
on the store (a subprocess), in steady state (its first step excluded). (b)/(a) is the cost of
the data path; the goal at ImageNet shape is <= 1.10. With --profile DIR, each setting is also
trained in this process under torch.profiler: the top operations by self CPU time and by device
time go to DIR/profile_<setting>.txt, a Chrome trace to DIR/trace_<setting>.json.gz (time the main
process spent waiting for its loader workers shows as the DataLoader's __next__).

Runs on a CPU too, slowly (to check the script): --steps 8 --settings demo.

    python scripts/bench_gpu_step.py --work /tmp/gpu_step --profile "$OUT"
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys

import torch
from benchlib import demo_images, demo_store, make_set, make_store, trainer_rate
from benchlib import in_memory_bound as train_bound

from softlabel import files, packed_images, replay
from softlabel.cli import config_of
from softlabel.commands.train import main as train_main
from softlabel.commands.train import train_args
from softlabel.data import scan_image_folder
from softlabel.errors import UserError, run_main

SETTINGS = {
    # name: (batch, crop px, classes, trainer flags beyond the store's, by dest name)
    "demo": (20, 64, 10, {}),
    "imagenet": (256, 224, 1000, {"amp": "bf16", "channels_last": True, "sgd": True,
                                  "temperature": 1.0}),  # temperature: the fill's
}


def in_memory_bound(setting: str, steps: int) -> float:
    """Images/s of the trainer's step on tensors already on the device (bench_train.py's bound,
    with this setting's autocast, memory format, optimizer and temperature)."""
    batch, size, classes, flags = SETTINGS[setting]
    return train_bound(steps, batch, size, classes, amp=torch.bfloat16 if flags.get("amp") == "bf16" else None,
                       channels_last=flags.get("channels_last", False), sgd=flags.get("sgd", False),
                       temperature=flags.get("temperature", 3.0))


def prepare(setting: str, work: str, steps: int) -> tuple[dict, int]:
    """The trainer's data flags for a setting (the set, packed where ImageNet-shaped, and a store
    holding at least ``steps`` steps), and its steps per epoch."""
    batch = SETTINGS[setting][0]
    if setting == "demo":  # bench_train.py's images, teacher and store (batch 20, 64 px)
        per_epoch = replay.batches_per_epoch(len(scan_image_folder(demo_images(work), "--data")), batch)
        train, _, store = demo_store(work, -(-steps // per_epoch))
        return {"train_dir": train, "fkd_path": store}, per_epoch
    data = make_set(os.path.join(work, "jpeg_ipc1"), 1, "jpeg")
    index = scan_image_folder(data, "--data")
    packed = os.path.join(work, "jpeg_ipc1_packed")
    if not packed_images.is_packed(packed):
        packed_images.pack(index, packed)
    per_epoch = replay.batches_per_epoch(len(index), batch)
    epochs = -(-steps // per_epoch)
    store = make_store(os.path.join(work, f"store_imagenet_b{batch}_e{epochs}"), data, batch, epochs)
    return {"train_dir": packed, "fkd_path": store}, per_epoch


def trainer_args(setting: str, data: dict, per_epoch: int, steps: int, workers: int, out: str) -> dict:
    """The trainer's flags, by dest name, for ``train_args``."""
    return {"model": "resnet18", "loss_type": "kl", "epochs": -(-steps // per_epoch), "workers": workers,
            "output_dir": out, **data, **SETTINGS[setting][3]}


def trainer_process_rate(values: dict, work: str, setting: str) -> float:
    """benchlib.trainer_rate (the trainer in its own process) on these flags, passed as a --config
    file; it adds --no-progress and no evaluation or checkpoint before the end."""
    config = os.path.join(work, f"run_{setting}.yaml")
    files.atomic_write_bytes(config, config_of(train_args(**values)).encode())
    return trainer_rate(["--config", config, "--output-dir", values["output_dir"]])


def profile(setting: str, values: dict, out_dir: str, device: torch.device) -> None:
    shutil.rmtree(values["output_dir"], ignore_errors=True)
    values = {**values, "no_progress": True, "eval_interval": 1000, "save_interval": 1000}
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        train_main(train_args(**values))
    table = prof.key_averages()
    with open(os.path.join(out_dir, f"profile_{setting}.txt"), "w") as f:
        f.write(f"{setting}: {', '.join(f'{k}={v!r}' for k, v in values.items())}\n\nby self CPU time:\n")
        f.write(table.table(sort_by="self_cpu_time_total", row_limit=25))
        if device.type == "cuda":
            f.write("\n\nby self device time:\n" + table.table(sort_by="self_cuda_time_total", row_limit=25))
    prof.export_chrome_trace(os.path.join(out_dir, f"trace_{setting}.json.gz"))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="where the sets, packs and stores are kept between runs")
    p.add_argument("--settings", default="demo,imagenet", help="default: demo,imagenet")
    p.add_argument("--steps", type=int, default=60, help="steps per measurement (default: 60)")
    p.add_argument("-j", "--workers", type=int, default=8, help="the trainer's loader processes (default: 8)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians (default: 3)")
    p.add_argument("--profile", metavar="DIR", default=None, help="also profile each setting into DIR")
    p.add_argument("--profile-steps", type=int, default=12, help="steps of the profiled runs (default: 12)")
    return p


def main(args: argparse.Namespace) -> None:
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    if any(s not in SETTINGS for s in settings):
        raise UserError(f"--settings: choose from {', '.join(SETTINGS)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    os.makedirs(args.work, exist_ok=True)
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
          f"{os.cpu_count()} cores; -j {args.workers}, {args.steps} steps, {args.repeats} repeats", flush=True)
    prepared = {s: prepare(s, args.work, max(args.steps, args.profile_steps)) for s in settings}
    rates: dict[tuple[str, str], list[float]] = {}
    for rep in range(args.repeats):
        for s in settings:
            rates.setdefault((s, "a"), []).append(in_memory_bound(s, args.steps))
            run = trainer_args(s, *prepared[s], args.steps, args.workers, os.path.join(args.work, f"run_{s}"))
            rates.setdefault((s, "b"), []).append(trainer_process_rate(run, args.work, s))
        print(f"  repeat {rep + 1}: " + ", ".join(f"{s} ({k}) {v[-1]:.0f}" for (s, k), v in rates.items()), flush=True)
    print("\n| setting | (a) in memory, img/s | (b) trainer from the store, img/s | (b) time / (a) |")
    print("|---|---|---|---|")
    for s in settings:
        a, b = statistics.median(rates[s, "a"]), statistics.median(rates[s, "b"])
        print(f"| {s} | {a:.0f} | {b:.0f} | {a / b:.2f} |")
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        for s in settings:
            with contextlib.redirect_stdout(sys.stderr):
                profile(s, trainer_args(s, *prepared[s], args.profile_steps, args.workers,
                                        os.path.join(args.work, f"profile_{s}")), args.profile, device)
        print(f"\nprofiles in {args.profile}")


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
