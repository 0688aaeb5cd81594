"""Losses against teacher logits, by ``--loss-type``.

Every entry has the signature
``f(student_logits, teacher_logits, targets, *, temperature, ce_weight, alpha) -> scalar``
and is a mean over the samples of a per-sample loss — except ``dist``, whose intra-class term
relates samples to each other — so a batch split across ranks or micro-batches recombines
exactly (the trainer weighs each part by its share of the batch).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[..., torch.Tensor]

# Per-loss defaults where the method's paper fixes them (WSLD: T = 2, alpha = 2.5) or where one
# setting is common (Hinton KD on CIFAR: T = 4, alpha = 0.9).
# The label-optimization study's losses (lo_*) take its opts.py defaults: --T 3, --alpha 0.1.
DEFAULT_TEMPERATURE = {"wsld": 2.0, "kd": 4.0, "lo_kd": 3.0, "lo_sl": 3.0, "lo_sl_gt": 3.0}
DEFAULT_ALPHA = {"wsld": 2.5, "kd": 0.9, "lo_kd": 0.1, "lo_sl": 0.1, "lo_sl_gt": 0.1}


def per_loss(defaults: dict[str, float]) -> str:
    """A per-loss default table as help words: "wsld: 2; kd: 4; lo_kd, lo_sl: 3"."""
    by_value: dict[float, list[str]] = {}
    for loss, value in defaults.items():
        by_value.setdefault(value, []).append(loss)
    return "; ".join(f"{', '.join(losses)}: {value:g}" for value, losses in by_value.items())


# Losses that compare probabilities, and so accept teacher logits masked to their top-k.
PROBABILITY_LOSSES = ("kl", "soft_ce", "dist", "wsld", "kd", "lo_kd", "lo_sl", "lo_sl_gt")


def kl(student, teacher, targets, *, temperature, ce_weight=0.0, alpha=1.0):
    """KL(softmax(t/T) || softmax(s/T)): summed over classes, mean over samples ('batchmean'),
    as the upstream trainers compute it (no T^2 factor; the trainer's --kd-t2 adds it)."""
    p_teacher = F.softmax(teacher.to(student.dtype) / temperature, dim=1)
    return F.kl_div(F.log_softmax(student / temperature, dim=1), p_teacher, reduction="batchmean")


def kd(student, teacher, targets, *, temperature, ce_weight=None, alpha):
    """Hinton et al. 2015: (1 - alpha) * CE(s, y) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T)),
    the KL summed over classes and averaged over samples ('batchmean'); the T^2 is built in (do not
    add --kd-t2). ``ce_weight`` replaces the 1 - alpha (RepDistiller's independent -r and -a). The
    ground truth y is each sample's own label (a mixed partner's is not used)."""
    soft = kl(student, teacher, targets, temperature=temperature)
    gamma = 1.0 - alpha if ce_weight is None else ce_weight
    return gamma * F.cross_entropy(student, targets) + alpha * temperature ** 2 * soft


def soft_ce(student, teacher, targets, *, temperature, ce_weight=0.0, alpha=1.0):
    """Cross-entropy against the teacher's softened distribution (FKD)."""
    p_teacher = F.softmax(teacher.to(student.dtype) / temperature, dim=1)
    return -(p_teacher * F.log_softmax(student / temperature, dim=1)).sum(dim=1).mean()


def ce(student, teacher, targets, *, temperature=1.0, ce_weight=0.0, alpha=1.0):
    """Hard labels only (the stored logits are ignored)."""
    return F.cross_entropy(student, targets)


def _regression(diff: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of ``diff`` over the classes the teacher gives (a top-k store leaves the
    others at -inf: they carry no target value), then the mean over samples."""
    given = torch.isfinite(teacher)
    if bool(given.all()):
        return diff.mean()
    diff = diff.masked_fill(~given, 0.0)
    return (diff.sum(dim=1) / given.sum(dim=1).clamp(min=1)).mean()


def mse_gt(student, teacher, targets, *, temperature=1.0, ce_weight, alpha=1.0):
    """MSE between raw logits plus ``ce_weight`` x cross-entropy with the ground truth (G-VBSM).
    With top-k labels only the stored logits are regressed."""
    teacher = teacher.to(student.dtype)
    diff = (student - teacher.nan_to_num(neginf=0.0)) ** 2
    return _regression(diff, teacher) + ce_weight * F.cross_entropy(student, targets)


def mae_gt(student, teacher, targets, *, temperature=1.0, ce_weight, alpha=1.0):
    """L1 between raw logits plus ``ce_weight`` x cross-entropy with the ground truth."""
    teacher = teacher.to(student.dtype)
    diff = (student - teacher.nan_to_num(neginf=0.0)).abs()
    return _regression(diff, teacher) + ce_weight * F.cross_entropy(student, targets)


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist(student, teacher, targets, *, temperature, ce_weight=0.0, alpha=1.0, beta=2.0, gamma=2.0):
    """DIST (Huang et al. 2022) as PRISM/G-VBSM use it: beta x inter-class relation (Pearson
    correlation of each sample's class probabilities) + gamma x intra-class relation (of each
    class's probabilities across the batch), both on softmax at T and scaled by T^2."""
    y_s = F.softmax(student / temperature, dim=1)
    y_t = F.softmax(teacher.to(student.dtype) / temperature, dim=1)
    inter = 1.0 - _pearson_rows(y_s, y_t).mean()
    intra = 1.0 - _pearson_rows(y_s.t(), y_t.t()).mean()
    return temperature ** 2 * (beta * inter + gamma * intra)


def wsld(student, teacher, targets, *, temperature, ce_weight=0.0, alpha):
    """Weighted soft-label distillation (Zhou et al., ICLR 2021):
    CE(s, y) + alpha * T^2 * mean_i[w_i * soft-CE(t_i/T, s_i/T)], with the per-sample weight
    w_i = 1 - exp(-max(CE_s,i / (CE_t,i + 1e-7), 0)) from the student's and the teacher's
    (detached, T = 1) cross-entropies with the ground truth."""
    teacher = teacher.to(student.dtype)
    soft = -(F.softmax(teacher / temperature, dim=1) * F.log_softmax(student / temperature, dim=1)).sum(dim=1)
    with torch.no_grad():
        ce_s = F.cross_entropy(student.detach(), targets, reduction="none")
        ce_t = F.cross_entropy(teacher, targets, reduction="none")
        weight = 1.0 - torch.exp(-torch.clamp(ce_s / (ce_t + 1e-7), min=0.0))
    return F.cross_entropy(student, targets) + alpha * temperature ** 2 * (weight * soft).mean()


# The label-optimization study, as its source (qwer343/id_8285, function.py
# ``loss_fn``/``model_fit``) computes them; ``validate/label_optimization.py`` maps its methods here.

def lo_kd(student, teacher, targets, *, temperature, ce_weight=0.0, alpha):
    """The study's KD (method ``scratch`` with a smart model): CE(s, y) + alpha * T^2 * KL, where
    the KL is ``nn.KLDivLoss()``'s default reduction, the mean over samples *and classes* -- so
    the soft term is 1/num_classes of Hinton's batch-mean KL."""
    soft = kl(student, teacher, targets, temperature=temperature) / student.shape[1]
    return F.cross_entropy(student, targets) + alpha * temperature ** 2 * soft


def lo_sl(student, teacher, targets, *, temperature, ce_weight=0.0, alpha):
    """The study's SL: alpha * T^2 * soft-CE(softmax(t/T), s/T); no ground-truth term."""
    return alpha * temperature ** 2 * soft_ce(student, teacher, targets, temperature=temperature)


def lo_sl_gt(student, teacher, targets, *, temperature, ce_weight=0.0, alpha):
    """The study's SL with ``--use_gt``: as ``lo_sl``, the teacher's logits plus the one-hot
    ground truth (added to the logits, before the softmax at T)."""
    one_hot = F.one_hot(targets, student.shape[1]).to(student.dtype)
    return lo_sl(student, teacher.to(student.dtype) + one_hot, targets, temperature=temperature, alpha=alpha)


LOSSES: dict[str, LossFn] = {
    "kl": kl,
    "soft_ce": soft_ce,
    "ce": ce,
    "mse_gt": mse_gt,
    "mae_gt": mae_gt,
    "dist": dist,
    "wsld": wsld,
    "kd": kd,
    "lo_kd": lo_kd,
    "lo_sl": lo_sl,
    "lo_sl_gt": lo_sl_gt,
}


def keep_topk(teacher: torch.Tensor, k: int) -> torch.Tensor:
    """Teacher logits with all but each sample's top-k set to -inf (zero probability)."""
    if k >= teacher.shape[1]:
        return teacher
    kth = teacher.topk(k, dim=1).values[:, -1:]
    return teacher.masked_fill(teacher < kth, float("-inf"))
