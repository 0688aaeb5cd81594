"""The training loop: the run built from a resolved TrainConfig (student, online teachers, distiller,
optimizer), its epochs, its evaluations and checkpoints, and results.json at the end (train())."""
from __future__ import annotations

import argparse
import math
import os
import time
from typing import Iterator, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from softlabel import distributed, files, models, precision, provenance, tracking
from softlabel.cli import write_config
from softlabel.data import FolderIndex
from softlabel.distributed import DistInfo, require_same_start
from softlabel.errors import UserError
from softlabel.stores import Store
from softlabel.teachers import Ensemble, load_teachers, split_list, weight_names, weight_paths
from softlabel.training.checkpoints import BEST_CHECKPOINT, SECRETS, distill_init, resume, save_checkpoint
from softlabel.training.config import TrainConfig
from softlabel.training.distillation import build_distiller, distilling
from softlabel.training.epochs import epoch_seed, hard_label_epochs, store_epochs
from softlabel.training.metrics import BestAndLast
from softlabel.training.optim import build_optimizer
from softlabel.training.report import (Log, crossed, describe, evaluate_run, log_epoch, read_rows, store_notes,
                                       upstream_of, validation_loader)
from softlabel.training.step import Run, train_step


def online_teachers(cfg: TrainConfig, device: torch.device) -> Optional[Ensemble]:
    if not cfg.teacher:
        return None
    archs = split_list(cfg.teacher)
    paths = weight_paths(cfg.teacher_path, archs)
    teachers = load_teachers(archs, paths, cfg.num_classes, cfg.teacher_source,
                             weight_names(cfg.teacher_weights, archs, paths))
    for t in teachers:  # before --output-dir exists: online KD compares the two networks' classes one to one
        if t.num_classes != cfg.num_classes:
            weights = f"{t.source} {t.weights}" if t.weights else "its weight file"
            raise UserError(f"--teacher {t.arch} ({weights}) outputs {t.num_classes} classes, the student "
                            f"{cfg.num_classes} (--train-dir {cfg.train_dir}); online distillation needs the same "
                            f"classes: a teacher trained on them (--teacher-path), or relabel with --class-map and "
                            f"train from the store")
    # float32 teachers (no autocast), as WSLD's, whatever the student's --amp
    return Ensemble(teachers, "mean", 0.5, device)


def train_one_epoch(run: Run, epoch: int, batches: Iterator[dict], bar,
                    speed: tracking.Throughput) -> tuple[float, int]:
    """Train on one epoch's batches; returns the epoch's mean loss over all ranks and its steps."""
    torch.manual_seed(epoch_seed(run.cfg.seed, epoch))  # dropout & co. restart per epoch too
    loss_sum = torch.zeros((), device=run.info.device)
    seen = steps = 0
    # On a GPU nothing here waits for a step to finish: a step's compute time is the time to queue
    # its work, and queuing blocks once the device is a few steps behind (its launch queue is
    # bounded). Time blocked on the loader is then time the device runs out of work, and the wait
    # for the queued steps at the epoch's end (float() below) counts as compute: the epoch's split
    # holds without a synchronisation per step.
    for batch in speed.timed(batches):
        steps += 1
        loss = train_step(run, batch)
        loss_sum += loss * batch["batch_size"]
        seen += batch["batch_size"]
        speed.step_done(batch["batch_size"])
        bar.update(batch["batch_size"])
        if run.cfg.print_freq and steps % run.cfg.print_freq == 0 and run.info.is_main:  # this rank's loss
            bar.write(f"epoch {epoch + 1} step {steps}: loss {float(loss):.4f} lr "
                      f"{run.optimizer.param_groups[0]['lr']:.4g} {speed.rate():.1f} img/s")
    if run.info.distributed:
        dist.all_reduce(loss_sum)
    loss = float(loss_sum) / max(seen, 1)
    speed.epoch_done()
    if not math.isfinite(loss):  # before this epoch's checkpoint: the last one written stays good
        raise UserError(f"epoch {epoch + 1}: the training loss is {loss} (diverged, or the store's labels or "
                        f"normalization are broken); stopped before writing this epoch's checkpoint")
    return loss, steps


def build_run(cfg: TrainConfig, store: Optional[Store], index: FolderIndex, info: DistInfo) -> Run:
    """The student (seeded by --seed), the online teachers, the distiller, the one optimizer of both
    and the precision: the Run every step, checkpoint and resume uses."""
    torch.manual_seed(cfg.seed)
    student = models.create_model(cfg.model, cfg.num_classes).to(info.device)
    mean, std = ((list(store.settings.mean), list(store.settings.std)) if store is not None
                 else models.default_normalization(cfg.model, student))
    teachers = online_teachers(cfg, info.device)
    if cfg.channels_last:
        student = student.to(memory_format=torch.channels_last)
    distill = build_distiller(cfg, student, teachers, info.device, len(index), index.targets)
    trained = student if distill is None else nn.ModuleList([student, distill.distiller])  # one optimizer
    optimizer, scheduler = build_optimizer(trained, cfg)
    amp = precision.amp_dtype(cfg.amp, info.device)
    scaler = torch.amp.GradScaler(info.device.type) if amp == torch.float16 else None
    if teachers is not None:  # after the distiller's probe forward, which must not touch running statistics
        teachers.set_mode(cfg.teacher_mode)
    return Run(cfg, info, index, student, student, optimizer, scheduler, scaler, teachers, distill, mean, std, amp)


def parallel(run: Run) -> nn.Module:
    """What runs the student's forward: it under DDP with several ranks (and the distiller's trained parts
    too), under torch.compile with --compile."""
    info, distill = run.info, run.distill
    model: nn.Module = run.student
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    if info.distributed:
        model = DistributedDataParallel(run.student, device_ids=device_ids)
        if distill is not None and any(p.requires_grad for p in distill.distiller.parameters()):
            distill.distiller = DistributedDataParallel(distill.distiller, device_ids=device_ids,
                                                        broadcast_buffers=distill.distiller.broadcast_buffers)
    if run.cfg.compile:
        model = torch.compile(model)
    return model


def metrics_file(cfg: TrainConfig, info: DistInfo, resumed: bool) -> str:
    """--output-dir/metrics.jsonl, emptied by a run that starts afresh."""
    path = os.path.join(cfg.output_dir, "metrics.jsonl")
    if os.path.islink(path):  # appends would follow it out of the folder
        raise UserError(f"--output-dir {cfg.output_dir}: metrics.jsonl is a symbolic link; refusing to write "
                        f"through it")
    if info.is_main and not resumed:
        open(path, "w").close()
    return path


def announce(cfg: TrainConfig, store: Optional[Store], index: FolderIndex, info: DistInfo,
             done: int) -> tuple[str, int, str]:
    """The run's first line (and the notes on its store) on the main rank, from ``done`` epochs on;
    returns describe()'s (labels, images per epoch, batch)."""
    labels, images_per_epoch, batch_desc = describe(cfg, store, index)
    if info.is_main:
        print(f"train: {cfg.model} on {len(index)} images, {labels} labels, epochs {done}.."
              f"{cfg.epochs}, batch {batch_desc}" + (f" on {info.world_size} ranks" if info.distributed else "")
              + f", input {cfg.input_size}px, device {info.device}", flush=True)
        for note in store_notes(cfg, store):
            print(f"note: {note}", flush=True)
    return labels, images_per_epoch, batch_desc


def train_epochs(run: Run, epochs: Iterator[tuple[int, Iterator[dict]]], log: Log) -> tuple[int, dict]:
    """Every epoch's steps, then its evaluation every --eval-interval epochs (sharded over the ranks) and,
    on the main rank, its row and its checkpoint every --save-interval, both at the end; returns (steps,
    the last row written)."""
    cfg, passes, bar = run.cfg, run.cfg.passes, log.bar
    n_steps, result = 0, {}
    for epoch, batches in epochs:
        train_loss, steps = train_one_epoch(run, epoch, batches, bar, log.speed)
        n_steps += steps
        run.scheduler.step()
        first, crops = passes[epoch]
        done = first + (crops if cfg.recipe == "fkd" else 1)  # epochs done; a pass may count as several
        bar.set_postfix(epoch=done, loss=f"{train_loss:.4f}", refresh=False)
        last = epoch + 1 == len(passes)
        if crossed(done, first, cfg.eval_interval) or last:
            metrics = evaluate_run(run, log)  # every rank: its share of the images
            if run.info.is_main:
                result = log_epoch(run, log, done, n_steps, train_loss, metrics)
                if log.scores.add(result) and cfg.save_best:
                    save_checkpoint(run, epoch + 1, BEST_CHECKPOINT)
        if run.info.is_main and (crossed(done, first, cfg.save_interval) or last):
            save_checkpoint(run, epoch + 1)
    return n_steps, result


def finish(run: Run, log: Log, n_steps: int, result: dict, labels: str, origin: tracking.StartUp) -> dict:
    """results.json: the last evaluation's row, what ran, the timings, the last and the best top-1; and the
    run's last line."""
    cfg, speed, scores = run.cfg, log.speed, log.scores
    end = time.time()
    result.update({"model": cfg.model, "labels": labels, "fkd_path": cfg.fkd_path,
                   "train_dir": cfg.train_dir, "epochs": cfg.epochs, "steps": n_steps,
                   "train_time_s": round(end - log.started, 2), "steady_images_per_s": round(speed.rate(), 2),
                   "startup_s": round(speed.startup(), 2), "startup_since": origin.since,
                   "train_s": round(speed.busy, 2), "data_wait_s": round(speed.wait, 2),
                   "compute_s": round(speed.compute, 2), **scores.summary(upstream_of(cfg))})
    files.atomic_write_json(os.path.join(cfg.output_dir, "results.json"), result)
    print(f"train: done in {time.perf_counter() - origin.at:.1f}s since {origin.since} (start-up to the first "
          f"step {speed.startup():.2f}s, then {speed.rate():.1f} img/s; data wait {speed.wait:.1f}s, compute "
          f"{speed.compute:.1f}s)" + scores.line(upstream_of(cfg)),
          flush=True)
    return result


def train(cfg: TrainConfig, store: Optional[Store], index: FolderIndex, info: DistInfo, origin: tracking.StartUp,
          given: Optional[argparse.Namespace] = None) -> dict:
    """Train from a resolved config: the student on ``index``'s images with ``store``'s labels (None: hard
    labels or online distillation), resumed or afresh, into --output-dir; ``given``: the flags as
    parsed, written there as args.yaml once the folder is this run's. Returns results.json's content
    ({} on ranks other than the main one)."""
    run = build_run(cfg, store, index, info)
    first_epoch, resumed = resume(run)
    require_same_start(info, first_epoch, "--output-dir", cfg.output_dir)
    if info.is_main and given is not None:
        write_config(cfg.output_dir, given, SECRETS)
    if run.distill is not None and cfg.distill_init_epochs and not resumed:
        distill_init(run)
    model = parallel(run)
    pin = info.device.type == "cuda"
    with distributed.together(info):  # every rank scans --val-dir: each evaluates its share
        val_loader = validation_loader(cfg, index, store, run.mean, run.std, info)
    metrics_path = metrics_file(cfg, info, resumed)
    tracker = tracking.Tracker(cfg.wandb_mode if info.is_main else "disabled", cfg.wandb_project,
                               os.path.basename(os.path.abspath(cfg.output_dir)), cfg.output_dir,
                               provenance.args_dict(cfg, SECRETS))
    epochs = (store_epochs(cfg, store, index, first_epoch, info, pin) if store is not None
              else hard_label_epochs(cfg, index, range(first_epoch, cfg.epochs), info, pin))
    passes = cfg.passes
    done = passes[first_epoch][0] if first_epoch < len(passes) else cfg.epochs
    labels, images_per_epoch, _ = announce(cfg, store, index, info, done)
    run.model, run.step_distill = model, distilling(run.distill)
    total = (len(index) * sum(crops for _, crops in passes[first_epoch:]) if cfg.per_image
             else images_per_epoch * (len(passes) - first_epoch))
    bar = tracking.progress(total, "train", disable=cfg.no_progress or not info.is_main)
    run.student.train()
    # rows of the epochs a resumed run starts after (a row of an epoch whose checkpoint a kill cut short is redone)
    log = Log(val_loader, metrics_path, tracker, bar, time.time(), tracking.Throughput(origin),
              BestAndLast([r for r in read_rows(metrics_path) if r["epoch"] <= done] if info.is_main else []))
    n_steps, result = train_epochs(run, epochs, log)
    bar.close()
    if info.is_main:
        result = finish(run, log, n_steps, result, labels, origin)
    tracker.finish()
    return result
