"""The optimizer and its learning-rate schedule: parameter groups (weight decay on weights only,
or on every parameter), SGD or AdamW, and the per-pass factor of warm-up then --lr-schedule."""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR

from softlabel.training.config import TrainConfig
from softlabel.training.schedules import SCHEDULES


def param_groups(model: nn.Module, weight_decay: float, norms_too: bool = False) -> list[dict]:
    """Weight decay on weights of convolutions and linear layers, none on norms and biases
    (``norms_too``: on every parameter)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() <= 1 and not norms_too else decay).append(p)
    if norms_too:
        return [{"params": decay, "weight_decay": weight_decay}]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(epoch: int, epochs: int, warmup: int, schedule: Callable[[int, int], float]) -> float:
    """Per-epoch learning-rate factor: ``warmup`` epochs of linear warm-up, then ``schedule``
    (softlabel/training/schedules.py) over the remaining epochs."""
    if epoch < warmup:
        return (epoch + 1) / warmup
    return schedule(epoch - warmup, max(1, epochs - warmup))


def schedule_of(cfg: TrainConfig) -> Callable[[int, int], float]:
    if cfg.lr_schedule == "step":
        return functools.partial(SCHEDULES["step"], size=cfg.lr_step_size, gamma=cfg.lr_gamma)
    if cfg.lr_schedule == "multistep":
        return functools.partial(SCHEDULES["multistep"], milestones=cfg.lr_milestones, gamma=cfg.lr_gamma)
    return SCHEDULES[cfg.lr_schedule]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, LambdaLR]:
    if cfg.sgd:
        optimizer = torch.optim.SGD(param_groups(model, cfg.weight_decay, cfg.weight_decay_norms), lr=cfg.learning_rate,
                                    momentum=cfg.momentum, nesterov=cfg.nesterov)
    else:
        optimizer = torch.optim.AdamW(param_groups(model, cfg.adamw_weight_decay, cfg.weight_decay_norms),
                                      lr=cfg.adamw_lr)
    epochs, warmup, schedule = cfg.epochs, cfg.warmup_epochs, schedule_of(cfg)
    # stepped once per pass (an epoch, or train_FKD.py's pass of --num-crops epochs) at its first epoch
    firsts = [first for first, _ in cfg.passes] + [epochs]
    return optimizer, LambdaLR(optimizer, lambda p: lr_factor(firsts[min(p, len(firsts) - 1)], epochs, warmup,
                                                               schedule))
