"""Distillation losses, by ``--loss-type``.

Every entry has the signature
``f(student_logits, teacher_logits, targets, *, temperature, ce_weight, alpha) -> scalar``
and returns the mean over the batch, so a split batch can be recombined exactly.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[..., torch.Tensor]


def kl(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, *,
       temperature: float, ce_weight: float = 0.0, alpha: float = 1.0) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)), summed over classes, mean over samples ('batchmean'),
    as the upstream trainers compute it (no T^2 factor)."""
    log_p = F.log_softmax(student / temperature, dim=1)
    log_q = F.log_softmax(teacher.float() / temperature, dim=1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)


def mse_gt(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, *,
           temperature: float = 1.0, ce_weight: float, alpha: float = 1.0) -> torch.Tensor:
    """MSE between raw logits plus ``ce_weight`` x cross-entropy with the ground truth (G-VBSM)."""
    return F.mse_loss(student, teacher.float()) + ce_weight * F.cross_entropy(student, targets)


LOSSES: dict[str, LossFn] = {
    "kl": kl,
    "mse_gt": mse_gt,
}
