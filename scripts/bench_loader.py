"""The image path at ImageNet shape, loader only (no model), measured in one run.

A seeded synthetic distilled set shaped like ImageNet's: 1000 classes x IPC k, 224 x 224 images
with texture (smooth colour fields plus fine noise, so that a JPEG decodes at the cost of a real
photograph's), saved as JPEG (quality 90) or PNG (as SRe2L writes its images). Then images/s of
whole epochs after a warm-up epoch (files in the page cache, caches filled; at least 5000 images
timed, so a small set is timed over several epochs), normalization to float included, for:

  (a) torchvision's standard pipeline: ImageFolder + RandomResizedCrop(224) + flip + ToTensor +
      Normalize through a DataLoader (shuffle, persistent workers) — every hard-label run;
  (b) our store path: the trainer's StoreBatches replaying a packed top-5 store of the same
      images, from the folder (with the decoded-image cache, 1 GB split between processes) and
      from the folder packed by scripts/pack_images.py;
  (c) relabel's sampling path: RelabelBatches (sample crops, render), from the folder and packed;

each at -j 0 and -j 2, batch 50 and 256, IPC 1 and 10, repeats interleaved over the paths and the
sets (median reported). The per-image cost (µs per image per core) must stay flat as the set and
the batch grow: the last table gives its growth from the smallest set to the largest, as the
median of each repeat's ratio (the two measured minutes apart, not in separate phases).

    .venv/bin/python scripts/bench_loader.py                     # JPEG, IPC 1 and 10 (~30 min, 2 cores)
    .venv/bin/python scripts/bench_loader.py --ipc 1 --repeats 1 # a quick look
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import torchvision.transforms as T
from benchlib import CLASSES, SIZE, make_set, make_store
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from softlabel import packed_images, replay
from softlabel.data import IMAGENET_MEAN, IMAGENET_STD, scan_image_folder
from softlabel.errors import UserError, run_main
from softlabel.loader import RelabelBatches, batch_loader, cache_bytes
from softlabel.stores import open_store



# ----------------------------------------------------------------------------- the synthetic set







# ----------------------------------------------------------------------------- the three paths

def torchvision_epochs(data: str, batch: int, workers: int):
    transform = T.Compose([T.RandomResizedCrop(SIZE), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    loader = DataLoader(ImageFolder(data, transform), batch_size=batch, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, prefetch_factor=2 if workers else None)
    while True:
        yield (x for x, _ in loader)


def store_epochs(data: str, store_path: str, batch: int, workers: int):
    index = scan_image_folder(data, "--train-dir")
    opened = open_store(store_path, index)
    per_epoch = opened.settings.batches_per_epoch
    dataset = opened.dataset(index, replay.epoch_jobs(0, opened.settings.epochs, per_epoch),
                             cache_bytes(1024, workers))
    items = iter(batch_loader(dataset, workers, pin_memory=False, background=False))
    while True:
        yield (replay.normalize(next(items)["pixels"], IMAGENET_MEAN, IMAGENET_STD) for _ in range(per_epoch))


def relabel_epochs(data: str, batch: int, workers: int, epochs: int):
    index = scan_image_folder(data, "--data")
    per_epoch = replay.batches_per_epoch(len(index), batch)
    augment = replay.Augment(42, batch, SIZE, (0.08, 1.0), "none")
    dataset = RelabelBatches(index, replay.epoch_jobs(0, epochs, per_epoch), augment,
                             cache_bytes=cache_bytes(1024, workers))
    items = iter(batch_loader(dataset, workers, pin_memory=False, background=False))
    while True:
        yield (replay.normalize(next(items)["pixels"], IMAGENET_MEAN, IMAGENET_STD) for _ in range(per_epoch))


def images_per_second(epochs, min_images: int) -> float:
    """One warm-up epoch, then whole epochs timed until at least ``min_images`` images (a small
    set's epoch of a few steps would time the workers' prefetch, not their pace)."""
    for _ in next(epochs):
        pass
    start, n = time.perf_counter(), 0
    while n < min_images:
        for x in next(epochs):
            n += len(x)
    return n / (time.perf_counter() - start)


def epochs_needed(images: int, min_images: int) -> int:
    """Epochs a store or a relabel job list must hold: the warm-up and the timed ones."""
    return 1 + -(-min_images // images)


def run_one(kind: str, data: str, packed: str, store_path: str, batch: int, workers: int, ipc: int,
            min_images: int) -> float:
    torch.manual_seed(0)
    if kind == "a":
        return images_per_second(torchvision_epochs(data, batch, workers), min_images)
    source = packed if kind.endswith("packed") else data
    if kind.startswith("b"):
        return images_per_second(store_epochs(source, store_path, batch, workers), min_images)
    return images_per_second(relabel_epochs(source, batch, workers, epochs_needed(CLASSES * ipc, min_images)),
                             min_images)


KINDS = {"a": "(a) torchvision", "b": "(b) store, folder + cache", "b packed": "(b) store, packed",
         "c": "(c) relabel, folder + cache", "c packed": "(c) relabel, packed"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ipc", default="1,10", help="images per class (default: 1,10)")
    p.add_argument("--batch", default="50,256", help="batch sizes (default: 50,256)")
    p.add_argument("--workers", default="0,2", help="-j values (default: 0,2)")
    p.add_argument("--format", choices=["jpeg", "png"], default="jpeg", help="image files (default: jpeg)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported (default: 3)")
    p.add_argument("--min-images", type=int, default=5000,
                   help="images timed per measurement, whole epochs after a warm-up one (default: 5000)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"paths to measure (default: {','.join(KINDS)})")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "bench_loader"),
                   help="where the synthetic sets, packs and stores are kept between runs")
    return p


def main(args: argparse.Namespace) -> None:
    ints = lambda text: [int(v) for v in text.split(",") if v.strip()]  # noqa: E731
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if any(k not in KINDS for k in kinds) or args.repeats < 1:
        raise UserError(f"--kinds: choose from {', '.join(KINDS)}; --repeats at least 1")
    torch.set_num_threads(1)  # a loader's main process: no intra-op threads fighting the workers
    cores = os.cpu_count() or 1
    ipcs, batches, workers_list = ints(args.ipc), ints(args.batch), ints(args.workers)
    sets = {}
    for ipc in ipcs:
        data = make_set(os.path.join(args.work, f"{args.format}_ipc{ipc}"), ipc, args.format)
        packed = os.path.join(args.work, f"{args.format}_ipc{ipc}_packed")
        if not packed_images.is_packed(packed):
            packed_images.pack(scan_image_folder(data, "DIR"), packed)
        for batch in batches:
            epochs = epochs_needed(CLASSES * ipc, args.min_images)
            sets[ipc, batch] = data, packed, make_store(
                os.path.join(args.work, f"store_{args.format}_ipc{ipc}_b{batch}_e{epochs}"), data, batch, epochs)
    rows, growth = [], []
    for batch in batches:
        for workers in workers_list:
            speeds = {(ipc, k): [] for ipc in ipcs for k in kinds}
            for _ in range(args.repeats):  # interleaved: a slow spell of the machine hits every path and set
                for ipc in ipcs:
                    for k in kinds:
                        speeds[ipc, k].append(run_one(k, *sets[ipc, batch], batch, workers, ipc, args.min_images))
            for ipc in ipcs:
                med = {k: statistics.median(speeds[ipc, k]) for k in kinds}
                rows.append((ipc, batch, workers, med))
                cells = " | ".join(f"{med[k]:.0f}" for k in kinds)
                ratio = " | ".join(f"{med[k] / med['a']:.2f}x" for k in kinds if k != "a" and "a" in med)
                print(f"| {ipc} | {batch} | {workers} | {cells} | {ratio} |", flush=True)
            if len(ipcs) > 1:  # cost at the largest set over the smallest, repeat by repeat
                growth.append((batch, workers, {k: statistics.median(
                    small / large for small, large in zip(speeds[ipcs[0], k], speeds[ipcs[-1], k])) for k in kinds}))
    print(f"\nimages/s, median of {args.repeats} interleaved repeats, at least {args.min_images} images timed after "
          f"a warm-up epoch; {cores} cores; {args.format} 224 px, {CLASSES} classes\n")
    others = [k for k in kinds if k != "a"]
    print("| IPC | batch | -j | " + " | ".join(KINDS[k] for k in kinds) + " | " +
          " | ".join(f"{KINDS[k].split(')')[0]}){k[1:]} / (a)" for k in others if "a" in kinds) + " |")
    print("|---|---|---|" + "---|" * (len(kinds) + (len(others) if "a" in kinds else 0)))
    for ipc, batch, workers, med in rows:
        print(f"| {ipc} | {batch} | {workers} | " + " | ".join(f"{med[k]:.0f}" for k in kinds) + " | "
              + " | ".join(f"{med[k] / med['a']:.2f}x" for k in others if "a" in med) + " |")
    print("\nµs per image per core (cost growth: flat across IPC and batch is the goal):\n")
    print("| IPC | batch | -j | " + " | ".join(KINDS[k] for k in kinds) + " |")
    print("|---|---|---|" + "---|" * len(kinds))
    for ipc, batch, workers, med in rows:
        used = max(1, min(workers, cores)) if workers else 1
        print(f"| {ipc} | {batch} | {workers} | " + " | ".join(f"{1e6 * used / med[k]:.0f}" for k in kinds) + " |")
    if growth:
        print(f"\nper-image cost at IPC {ipcs[-1]} over IPC {ipcs[0]} (median of the repeats' ratios; 1.00 is flat):\n")
        print("| batch | -j | " + " | ".join(KINDS[k] for k in kinds) + " |")
        print("|---|---|" + "---|" * len(kinds))
        for batch, workers, ratio in growth:
            print(f"| {batch} | {workers} | " + " | ".join(f"{ratio[k]:.2f}" for k in kinds) + " |")


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
