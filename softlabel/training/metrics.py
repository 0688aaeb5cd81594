"""Evaluation metrics: top-k accuracy, negative log-likelihood and calibration error."""
from __future__ import annotations

import torch
import torch.nn.functional as F


class SplitMetrics:
    """top-1, top-5, NLL and ECE of a split, accumulated batch by batch: what it keeps is a few
    sums per calibration bin, never a logit per image (ImageNet's 50,000 validation images hold
    200 MB of logits at 1000 classes, the train set's 1.28M about 5 GB).

    ECE is the standard equal-width-bin one on the max softmax confidence: the sum over bins of
    (bin size / N) · |accuracy in bin − mean confidence in bin| = Σ |Σ correct − Σ confidence| / N.
    Bins are (k/n, (k+1)/n]; a confidence of exactly 0 falls in the first bin."""

    def __init__(self, n_bins: int = 15):
        self.n_bins = n_bins
        self.seen = self.top1 = self.top5 = 0
        self.nll = 0.0
        self.bin_confidence = torch.zeros(n_bins, dtype=torch.float64)
        self.bin_correct = torch.zeros(n_bins, dtype=torch.float64)

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        logits, targets = logits.float(), targets.to(logits.device)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = top == targets[:, None]
        self.top1 += int(hit[:, 0].sum())
        self.top5 += int(hit.any(dim=1).sum())
        self.nll += float(F.cross_entropy(logits, targets, reduction="sum").double())
        confidence = torch.softmax(logits, dim=1).max(dim=1).values.double().cpu()
        correct = hit[:, 0].double().cpu()
        bins = torch.clamp(torch.ceil(confidence * self.n_bins).long() - 1, 0, self.n_bins - 1)
        self.bin_confidence += torch.bincount(bins, weights=confidence, minlength=self.n_bins)
        self.bin_correct += torch.bincount(bins, weights=correct, minlength=self.n_bins)
        self.seen += len(targets)

    def reduce(self, info) -> None:
        """Sum the counts of every rank's share of the split (``info``: softlabel.distributed.DistInfo):
        top-1 and top-5 are counts, so a sharded evaluation reports exactly one process's."""
        if not info.distributed:
            return
        import torch.distributed as dist
        device = info.device if info.device.type == "cuda" else torch.device("cpu")
        sums = torch.cat([torch.tensor([self.seen, self.top1, self.top5, self.nll], dtype=torch.float64),
                          self.bin_confidence, self.bin_correct]).to(device)
        dist.all_reduce(sums)
        sums = sums.cpu()
        self.seen, self.top1, self.top5 = (int(v) for v in sums[:3].tolist())
        self.nll = float(sums[3])
        self.bin_confidence, self.bin_correct = sums[4:4 + self.n_bins].clone(), sums[4 + self.n_bins:].clone()

    def ece(self) -> float:
        """The calibration error in [0, 1]."""
        return float((self.bin_correct - self.bin_confidence).abs().sum()) / max(self.seen, 1)

    def result(self) -> dict[str, float]:
        """top1, top5 (percent), nll (mean cross-entropy) and ece (percent)."""
        n = max(self.seen, 1)
        return {"top1": 100.0 * self.top1 / n, "top5": 100.0 * self.top5 / n, "nll": self.nll / n,
                "ece": 100.0 * self.ece()}


def expected_calibration_error(logits: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> float:
    """The ECE of whole-split logits, in [0, 1] (see ``SplitMetrics``)."""
    metrics = SplitMetrics(n_bins)
    metrics.update(logits, targets)
    return metrics.ece()


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> dict[str, float]:
    """top1, top5 (percent), nll (mean cross-entropy) and ece (percent) of whole-split logits."""
    metrics = SplitMetrics(n_bins)
    metrics.update(logits, targets)
    return metrics.result()


# Which top-1 each upstream training command reports, by our recipe (and loss): FKD's train_FKD.py and
# PRISM's train_FKD_parallel.py keep `best_acc1` (is_best = top1 > best_acc1) in their checkpoints and
# model_best files; WSLD's trainer keeps its best; RepDistiller's train_student.py prints the best "only for
# printing purpose", its README and the CRD paper giving the last epoch's.
UPSTREAM_REPORTS = {"fkd": ("best", "FKD's train_FKD.py"), "ours": ("best", "PRISM's train_FKD_parallel.py"),
                    "wsld": ("best", "WSLD's trainer"), "repdistiller": ("last", "RepDistiller's train_student.py")}


class BestAndLast:
    """The last and the best (first highest) evaluation top-1 of a run, with their epochs; a resumed
    run starts from the rows its metrics.jsonl already holds."""

    def __init__(self, rows: list[dict] = ()):
        self.best = self.last = None
        for row in rows:
            self.add(row)

    def add(self, row: dict) -> bool:
        """Record an evaluation row; True when it is the best so far."""
        if "top1" not in row:
            return False
        self.last = (row["top1"], row["epoch"])
        if self.best is None or row["top1"] > self.best[0]:
            self.best = self.last
            return True
        return False

    def summary(self, upstream: str) -> dict:
        """results.json's fields: both numbers, and which one ``upstream`` (a UPSTREAM_REPORTS key) reports."""
        if self.last is None:
            return {}
        which, who = UPSTREAM_REPORTS[upstream]
        top1, epoch = self.best if which == "best" else self.last
        return {"top1_last": self.last[0], "epoch_last": self.last[1], "top1_best": self.best[0],
                "epoch_best": self.best[1], "reported": {"top1": top1, "epoch": epoch, "which": which, "as": who}}

    def line(self, upstream: str) -> str:
        """The log's words for both numbers."""
        if self.last is None:
            return ""
        which, who = UPSTREAM_REPORTS[upstream]
        return (f"; val top-1 {self.last[0]:.2f}% last (epoch {self.last[1]}), {self.best[0]:.2f}% best "
                f"(epoch {self.best[1]}): {who} reports the {which}")
