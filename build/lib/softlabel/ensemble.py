"""Teacher-ensemble rules: how several teachers' logits for one batch become one soft label.

Each rule takes the stacked logits (N teachers, B samples, C classes) and returns (B, C).
"""
from __future__ import annotations

from typing import Callable

import torch

EnsembleRule = Callable[[torch.Tensor, float], torch.Tensor]


def mean(logits: torch.Tensor, primary_weight: float = 0.5) -> torch.Tensor:
    """Plain average of the teachers' logits."""
    return logits.mean(dim=0)


def normmean(logits: torch.Tensor, primary_weight: float = 0.5) -> torch.Tensor:
    """PRISM r18: scale each teacher's (B, C) block to the mean of the teachers' Frobenius
    norms, then average — no teacher dominates through the scale of its logits."""
    norms = logits.flatten(1).norm(dim=1).clamp_min(1e-12)          # (N,)
    scaled = logits * (norms.mean() / norms).view(-1, 1, 1)
    return scaled.mean(dim=0)


def primary_weighted(logits: torch.Tensor, primary_weight: float = 0.5) -> torch.Tensor:
    """PRISM r50/r101: weight ``primary_weight`` on the first teacher, the rest split evenly
    among the others; then rescale each sample's logit vector so that its L2 norm equals the
    batch mean of those norms."""
    n = logits.shape[0]
    if n == 1:
        weights = logits.new_ones(1)
    else:
        weights = logits.new_full((n,), (1.0 - primary_weight) / (n - 1))
        weights[0] = primary_weight
    combined = (logits * weights.view(-1, 1, 1)).sum(dim=0)         # (B, C)
    norms = combined.norm(dim=1, keepdim=True).clamp_min(1e-12)     # (B, 1)
    return combined * (norms.mean() / norms)


ENSEMBLES: dict[str, EnsembleRule] = {
    "mean": mean,
    "normmean": normmean,
    "primary-weighted": primary_weighted,
}


# Rules that change even one teacher's logits: PRISM's r50/r101 relabel rescales every sample to
# the batch's mean norm whatever the number of candidates (--candidate-number 1 included).
RESCALING = ("primary-weighted",)


def combine(per_teacher: list[torch.Tensor], rule: str, primary_weight: float = 0.5) -> torch.Tensor:
    """One (B, C) soft label from a list of per-teacher (B, C) logits (one teacher: as is,
    unless the rule rescales)."""
    if len(per_teacher) == 1 and rule not in RESCALING:
        return per_teacher[0]
    return ENSEMBLES[rule](torch.stack([t.float() for t in per_teacher]), primary_weight)
