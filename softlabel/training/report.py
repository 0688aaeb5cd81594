"""What the run reports: the validation loader and its evaluation, the start-up line's words, the
rows of metrics.jsonl (one per evaluation) and the epoch's log line."""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from softlabel import evaluation, tracking
from softlabel.data import FolderIndex, IndexedImageFolder, drop_unreadable, scan_image_folder
from softlabel.distributed import DistInfo, slice_bounds
from softlabel.errors import UserError
from softlabel.stores import Store
from softlabel.training.config import TrainConfig
from softlabel.training.metrics import BestAndLast, SplitMetrics
from softlabel.training.step import Run
from softlabel.transforms import eval_transform


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, channels_last: bool,
             amp: Optional[torch.dtype], info: Optional[DistInfo] = None) -> dict[str, float]:
    """top-1, top-5, NLL and ECE of the model on the validation loader (under torchrun: this rank's
    share, the counts summed over ``info``'s ranks)."""
    model.eval()
    metrics = SplitMetrics()
    for logits, targets in evaluation.batches(model, loader, device, channels_last=channels_last, amp=amp):
        metrics.update(logits, targets)
    model.train()
    if info is not None:
        metrics.reduce(info)
    return metrics.result()


def validation_loader(cfg: TrainConfig, train_index: FolderIndex, store: Optional[Store], mean, std,
                      info: DistInfo) -> Optional[DataLoader]:
    """This rank's share of the --val-dir images (every image on one process)."""
    if not cfg.val_dir:
        return None
    # every image decoded now: a bad one must stop the run before training, not at its first evaluation
    val_index, bad = drop_unreadable(scan_image_folder(cfg.val_dir, "--val-dir"))
    if bad and not cfg.skip_bad_images:
        raise UserError(f"--val-dir {cfg.val_dir}: {len(bad)} images cannot be read (first: {bad[0]}); fix or "
                        f"remove them, or pass --skip-bad-images to leave them out")
    if bad:
        print(f"train: --skip-bad-images: left out {len(bad)} unreadable validation images: "
              + ", ".join(bad[:20]) + (" ..." if len(bad) > 20 else ""), file=sys.stderr, flush=True)
    if val_index.classes != train_index.classes:
        raise UserError(f"--val-dir {cfg.val_dir}: class folders differ from --train-dir "
                        f"{cfg.train_dir} ({len(val_index.classes)} vs {len(train_index.classes)} classes "
                        f"or other names); accuracy would be meaningless")
    val_classes = None if store is None else store.class_index(val_index.classes)
    images = IndexedImageFolder(val_index, eval_transform(cfg.input_size, cfg.crop_pct, mean, std), val_classes)
    lo, hi = slice_bounds(len(images), info.rank, info.world_size)  # each rank its contiguous share, no repeats
    return DataLoader(Subset(images, range(lo, hi)) if info.distributed else images,
                      batch_size=cfg.val_batch_size, shuffle=False,
                      num_workers=min(cfg.workers, 2) if cfg.val_workers is None else cfg.val_workers,
                      pin_memory=info.device.type == "cuda")


def store_notes(cfg: TrainConfig, store: Optional[Store]) -> list[str]:
    """What a user should know about how this store's labels meet this run: pruned steps cycled,
    a residual fill exact at another temperature than the loss's."""
    if store is None or cfg.per_image:
        return []
    notes = []
    if store.settings.label_keep < 1.0:
        notes.append(f"the store labels {len(store.jobs(store.settings.epochs))} of "
                     f"{store.settings.epochs * store.settings.batches_per_epoch} steps (--label-keep "
                     f"{store.settings.label_keep:g}); each step replays the kept ones in turn")
    fill_t = store.fill_temperature()
    if fill_t is not None and cfg.temperature and abs(cfg.temperature - fill_t) > 1e-9:
        notes.append(f"the store's residual fill keeps the left-out classes' probability exactly at T = {fill_t:g}, "
                     f"not at this run's -T {cfg.temperature:g} (the error: docs/stores.md); for an exact one, "
                     f"relabel or convert with --topk-fill-temperature {cfg.temperature:g}")
    return notes


def describe(cfg: TrainConfig, store: Optional[Store], index: FolderIndex) -> tuple[str, int, str]:
    """(labels, images per epoch, batch) as the log and results.json name them; per-image counts are crops
    (per pass: --num-crops of every image)."""
    if cfg.per_image:
        batch = f"{cfg.batch_size} images x {cfg.num_crops} crops"
        if cfg.recipe == "fkd":
            batch += (f", train_FKD.py's epochs: {sum(c > 1 for _, c in cfg.passes)} passes of {cfg.num_crops}, "
                      f"{sum(c == 1 for _, c in cfg.passes)} single-crop")
        return (f"soft ({cfg.loss_type}, FKD {store.settings.label_format})", len(index) * cfg.num_crops, batch)
    if store is not None:
        return f"soft ({cfg.loss_type})", store.settings.num_samples, f"{cfg.batch_size}"
    labels = (f"online KD from {cfg.teacher} ({cfg.loss_type})" if cfg.teacher else
              "hard" + (f" (ls {cfg.label_smoothing})" if cfg.label_smoothing else ""))
    return labels, len(index), f"{cfg.batch_size}"


@dataclass
class Log:
    """Where the loop reports: this rank's share of the validation images (None: no --val-dir),
    metrics.jsonl, the tracker, the progress bar, the loop's timings, the evaluations so far."""
    val_loader: Optional[DataLoader]
    metrics_path: str
    tracker: tracking.Tracker
    bar: Any
    started: float
    speed: tracking.Throughput
    scores: BestAndLast


def evaluate_run(run: Run, log: Log) -> dict[str, float]:
    """The student's metrics on --val-dir, every rank evaluating its share ({} without --val-dir)."""
    if log.val_loader is None:
        return {}
    return evaluate(run.student, log.val_loader, run.info.device, run.cfg.channels_last, run.amp, run.info)


def log_epoch(run: Run, log: Log, epoch: int, n_steps: int, train_loss: float, metrics: dict[str, float]) -> dict:
    """``epoch``: the epochs done (train_FKD.py's count with --recipe fkd); ``metrics``: evaluate_run's;
    the row's timings: where the time of the epochs since the previous row went (Throughput.lap())."""
    times = log.speed.lap()
    row = {"epoch": epoch, "step": n_steps, "train_loss": train_loss,
           "lr": run.optimizer.param_groups[0]["lr"], "elapsed_s": round(time.time() - log.started, 2), **times,
           **metrics}
    with open(log.metrics_path, "a") as f:
        f.write(json.dumps(row) + "\n")
    log.tracker.log(row, n_steps)
    busy = max(times["data_wait_s"] + times["compute_s"], 1e-9)
    log.bar.write(f"epoch {epoch}: train loss {train_loss:.4f}"
                  + f" | data wait {times['data_wait_s']:.2f}s ({100 * times['data_wait_s'] / busy:.0f}%), "
                    f"compute {times['compute_s']:.2f}s"
                  + (" | val top-1 {top1:.2f}% top-5 {top5:.2f}% nll {nll:.3f} ece {ece:.2f}%".format(**row)
                     if "top1" in row else ""))
    return row


def read_rows(path: str) -> list[dict]:
    """The rows of a metrics.jsonl this run wrote (none yet: [])."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def upstream_of(cfg: TrainConfig) -> str:
    """The upstream command whose reported top-1 this run's recipe mirrors (UPSTREAM_REPORTS)."""
    return "wsld" if cfg.recipe == "ours" and cfg.loss_type == "wsld" else cfg.recipe


def crossed(done: int, before: int, interval: int) -> bool:
    """Whether the epochs ``before`` .. ``done`` reached a multiple of ``interval``."""
    return done // interval > before // interval
