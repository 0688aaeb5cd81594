"""One training step: the run's state (Run), each batch's targets (stored, or the online teachers'
on the same pixels), and the optimizer step over micro-batches whose losses recombine exactly to the
global batch's mean, on one rank or several."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from softlabel import checkpoint, replay
from softlabel.data import FolderIndex
from softlabel.distill import Features
from softlabel.distributed import DistInfo, slice_bounds
from softlabel.teachers import Ensemble
from softlabel.training.config import TrainConfig
from softlabel.training.distillation import DistillRun
from softlabel.training.losses import LOSSES, keep_topk


@dataclass
class Run:
    """The run's state, built once (loop.build_run) and passed whole to every part of the loop: what each
    step, checkpoint and resume uses besides its batch."""
    cfg: TrainConfig
    info: DistInfo
    index: FolderIndex                 # the training images (their classes go into checkpoints)
    student: nn.Module                 # the network itself
    model: nn.Module                   # what runs the forward: the student, or it under DDP / torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    scaler: Optional[torch.amp.GradScaler]
    teachers: Optional[Ensemble]
    distill: Optional[DistillRun]      # the distiller with its trained parts (checkpoints, the init stage)
    mean: list[float]
    std: list[float]
    amp: Optional[torch.dtype]
    step_distill: Optional[DistillRun] = None  # what the steps use of it (distilling(): None once nothing is left)


def targets_of(run: Run, batch: dict, pixels: torch.Tensor, partners: Optional[torch.Tensor],
               views: int = 1) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The soft targets of a batch: stored, or the online teachers' on the same pixels (None: hard
    labels); and with a distiller's ``views`` (KDSS: ``pixels`` holds every view, view-major), the
    teacher's logits on every view."""
    seen = None
    if run.teachers is not None:
        soft, outputs = run.teachers(pixels, partners, batch["mix_lam"], batch["mix_bbox"])
        if views > 1:
            seen, soft = outputs[0].clone(), soft[:len(pixels) // views]
    else:
        soft = batch["soft_label"].to(run.info.device, non_blocking=True) if "soft_label" in batch else None
    if soft is not None and run.cfg.keep_topk:
        soft = keep_topk(soft.float(), run.cfg.keep_topk)
    return soft, seen


def view_rows(part: slice, batch: int, views: int) -> slice | torch.Tensor:
    """The rows of a micro-batch in a view-major batch of ``views`` views."""
    if views == 1:
        return part
    return torch.cat([torch.arange(part.start, part.stop) + v * batch for v in range(views)])


def train_step(run: Run, batch: dict) -> torch.Tensor:
    """One optimizer step on this rank's slice; the loss is a mean over the *global* batch, so
    ranks and micro-batches recombine exactly to the one-process, one-step result."""
    cfg, info, device = run.cfg, run.info, run.info.device
    pixels = batch["pixels"].to(device, non_blocking=True)
    partners = None if batch["partners"] is None else batch["partners"].to(device, non_blocking=True)
    target = batch["target"].to(device, non_blocking=True)
    inputs = replay.slice_inputs(pixels, partners, run.mean, run.std, batch["mix_lam"], batch["mix_bbox"])
    views = checkpoint.unwrap(run.step_distill.distiller).views if run.step_distill else 1
    soft, teacher_logits = targets_of(run, batch, pixels, partners, views)
    teacher_features = run.step_distill.teacher_tap.take().detached() if run.step_distill else None
    if cfg.channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    run.optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=device)
    share = info.world_size / batch["batch_size"]    # each sample's weight in the global mean
    parts = [slice(*slice_bounds(len(target), k, cfg.gradient_accumulation_steps))
             for k in range(cfg.gradient_accumulation_steps)]  # views, no copies
    parts = [p for p in parts if p.stop > p.start]
    for n, part in enumerate(parts):
        with contextlib.ExitStack() as stack:
            if n + 1 < len(parts) and info.distributed:  # gradients are all-reduced once, at the last part
                for m in (run.model, run.step_distill and run.step_distill.distiller):
                    if hasattr(m, "no_sync"):
                        stack.enter_context(m.no_sync())
            stack.enter_context(torch.autocast(device.type, dtype=run.amp or torch.float32,
                                               enabled=run.amp is not None))
            rows = view_rows(part, len(target), views)
            # the distiller's views ride along; the run's loss takes the batch itself (the first view)
            every_view = run.model(inputs[rows]).float()
            logits = every_view[:part.stop - part.start]
            if soft is not None:
                loss = LOSSES[cfg.loss_type](logits, soft[part], target[part], temperature=cfg.temperature,
                                             ce_weight=cfg.ce_weight, alpha=cfg.alpha)
                if cfg.kd_t2:
                    loss = loss * cfg.temperature ** 2
            else:
                partner = batch["partner_target"]
                loss = mixed_cross_entropy(logits, target[part], None if partner is None else partner.to(device)[part],
                                           batch["mix_lam"], cfg.label_smoothing)
            if run.step_distill is not None:
                mine = Features([f[rows] for f in teacher_features.stages],
                                teacher_logits[rows] if views > 1 else None)
                theirs = run.step_distill.student_tap.take()
                theirs.logits = every_view if views > 1 else None
                where = batch["index"].to(device)[part] if "index" in batch else None
                loss = loss + run.step_distill.weight * run.step_distill.distiller(theirs, mine, where).float()
            loss = loss * ((part.stop - part.start) * share)
            (run.scaler.scale(loss) if run.scaler else loss).backward()
        total += loss.detach()
    if run.scaler:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    return total / info.world_size  # this rank's share of the global mean loss


def mixed_cross_entropy(logits: torch.Tensor, target: torch.Tensor, partner: Optional[torch.Tensor],
                        lam: Optional[float], label_smoothing: float) -> torch.Tensor:
    """Cross-entropy with mixed targets: lambda x own class + (1 - lambda) x partner's."""
    loss = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    if partner is None:
        return loss
    return lam * loss + (1.0 - lam) * F.cross_entropy(logits, partner, label_smoothing=label_smoothing)
