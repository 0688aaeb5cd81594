"""Evaluation metrics: top-k accuracy, negative log-likelihood and calibration error."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def expected_calibration_error(logits: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> float:
    """The standard equal-width-bin ECE on the max softmax confidence, in [0, 1]:
    sum over bins of (bin size / N) * |accuracy in bin - mean confidence in bin|.
    Bins are (k/n, (k+1)/n]; a confidence of exactly 0 falls in the first bin."""
    probs = torch.softmax(logits.float(), dim=1)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == targets).float()
    bins = torch.clamp(torch.ceil(confidence * n_bins).long() - 1, 0, n_bins - 1)
    ece = torch.zeros((), dtype=torch.float64)
    for b in range(n_bins):
        in_bin = bins == b
        count = int(in_bin.sum())
        if count:
            gap = (correct[in_bin].mean() - confidence[in_bin].mean()).abs()
            ece += count / len(targets) * gap.double()
    return float(ece)


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> dict[str, float]:
    """top1, top5 (percent), nll (mean cross-entropy) and ece (percent) of a whole split."""
    logits = logits.float()
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return {
        "top1": 100.0 * float((top[:, 0] == targets).float().mean()),
        "top5": 100.0 * float((top == targets[:, None]).any(dim=1).float().mean()),
        "nll": float(F.cross_entropy(logits, targets)),
        "ece": 100.0 * expected_calibration_error(logits, targets, n_bins),
    }
