"""Contrastive representation distillation (Tian et al., ICLR 2020), with RepDistiller's defaults:
the penultimate embeddings of student and teacher, each through a linear embedding to 128
dimensions and L2-normalized, are contrasted against two memory banks of every training sample's
past embeddings (one per network): for each sample its own entry is the positive and 16384
entries of other classes the negatives (RepDistiller's ``mode exact``), drawn as its
``CIFAR100InstanceSample`` draws them (dataset/cifar100.py of HobbitLong/RepDistiller): uniformly
from the other classes' samples, without replacement where there are at least 16384 of them, with
replacement only where there are fewer (a small set keeps K = 16384), scored exp(v·m / 0.07)
over a normalization constant fixed at the first step, and the NCE loss of its Eq. 18 is taken
both ways (teacher anchor over the student bank and back). After each step the banks move toward
the batch's embeddings with momentum 0.5. Weight 0.8.

Across ranks the banks stay identical: every rank applies every rank's updates (all-gathered,
in rank order), and the normalization constant is the mean over ranks; the banks and the
constant are buffers, so a checkpoint holds them and ``--resume`` continues exactly. The draws
come from torch's generator, which the trainer reseeds every epoch from (``--seed``, epoch): a
resumed run draws the same negatives.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from softlabel.distill.base import Distiller, Features

FEAT_DIM, NCE_K, NCE_T, NCE_M, EPS = 128, 16384, 0.07, 0.5, 1e-7


def nce_loss(x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """RepDistiller's ContrastLoss: column 0 the positive's score, the rest the negatives'."""
    m = x.shape[1] - 1
    noise = m / num_samples
    log_pos = torch.log(x[:, 0] / (x[:, 0] + noise + EPS))
    log_neg = torch.log(noise / (x[:, 1:] + noise + EPS))
    return -(log_pos.sum() + log_neg.sum()) / x.shape[0]


def _gathered(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor concatenated over the ranks in rank order (itself on one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(tensors)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, [t.detach().cpu() for t in tensors])
    return [torch.cat([p[i] for p in parts]).to(tensors[i].device) for i in range(len(tensors))]


def _scores(bank: torch.Tensor, v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, K + 1) dot products of each row of v with its drawn bank entries. A set smaller than
    the draws (repeats) is scored once per entry, then picked: far less work than gathering K rows."""
    if bank.shape[0] < idx.shape[1]:
        return torch.gather(v @ bank.detach().T.clone(), 1, idx)  # a copy: the bank moves after the step
    return torch.bmm(bank[idx].detach(), v.unsqueeze(2)).squeeze(2)


class CRD(Distiller):
    name, weight, source = "crd", 0.8, "Tian et al. 2020; RepDistiller -b 0.8, feat_dim 128, nce_k 16384, nce_t 0.07"
    broadcast_buffers = False

    def __init__(self, student: Features, teacher: Features, num_samples: int = 0,
                 targets: Optional[torch.Tensor] = None, **context):
        super().__init__(student, teacher, **context)
        if not num_samples or targets is None:
            raise ValueError("CRD needs the training set's size and classes (its memory banks)")
        self.num_samples, self.k = num_samples, NCE_K
        self.embed_s = nn.Linear(student.embedding.shape[1], FEAT_DIM)
        self.embed_t = nn.Linear(teacher.embedding.shape[1], FEAT_DIM)
        bound = 1.0 / math.sqrt(FEAT_DIM / 3)
        self.register_buffer("memory_s", torch.rand(num_samples, FEAT_DIM) * 2 * bound - bound)
        self.register_buffer("memory_t", torch.rand(num_samples, FEAT_DIM) * 2 * bound - bound)
        self.register_buffer("z", torch.full((2,), -1.0))  # normalization constants, set at the first step
        self.register_buffer("targets", targets.long().clone())
        # each class's samples as one block of ``order``: the other classes' pool of class c is
        # ``order`` without the block [start[c], start[c] + count[c]) (derived: not checkpointed)
        counts = torch.bincount(self.targets)
        if bool((counts == num_samples).any()):
            raise ValueError("CRD draws its negatives from other classes: the training set has only one")
        self.register_buffer("order", torch.argsort(self.targets, stable=True), persistent=False)
        self.count, self.start = counts.tolist(), (torch.cumsum(counts, 0) - counts).tolist()

    def warnings(self) -> list[str]:
        pools = [self.num_samples - c for c in self.count if c]  # other classes' samples, per class present
        short = [p for p in pools if p < self.k]
        if not short:
            return []
        sizes = f"{min(short)}" + (f" to {max(short)}" if max(short) > min(short) else "")
        return [f"{self.k} negatives per sample, but the other classes hold only {sizes} samples (for {len(short)} "
                f"of {len(pools)} classes): negatives are drawn from them with replacement, never from the "
                f"sample's own class (as RepDistiller's CIFAR100InstanceSample)"]

    def negatives(self, index: torch.Tensor) -> torch.Tensor:
        """(B, K) dataset indices of other classes than each sample's: K distinct ones where the
        pool of other classes holds at least K samples, else K drawn with replacement (RepDistiller's
        ``np.random.choice(cls_negative[target], k, replace=k > len(cls_negative[target]))``)."""
        rows = []
        for c in self.targets[index].tolist():
            pool, skip = self.num_samples - self.count[c], self.count[c]
            if pool >= self.k:
                pos = torch.randperm(pool, device=index.device)[:self.k]
            else:
                pos = torch.randint(pool, (self.k,), device=index.device)
            rows.append(self.order[pos + skip * (pos >= self.start[c])])  # step over the own class's block
        return torch.stack(rows)

    def forward(self, student: Features, teacher: Features, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        if index is None:
            raise ValueError("CRD needs the dataset index of every sample")
        index = index.to(self.memory_s.device).long()
        v_s = F.normalize(self.embed_s(student.embedding.float()), dim=1)
        v_t = F.normalize(self.embed_t(teacher.embedding.float()), dim=1)
        idx = torch.cat([index[:, None], self.negatives(index)], dim=1)  # column 0: the positive
        # teacher anchor against the student's bank, and the student's embedding against the teacher's
        out_t = torch.exp(_scores(self.memory_s, v_t, idx) / NCE_T)
        out_s = torch.exp(_scores(self.memory_t, v_s, idx) / NCE_T)
        if float(self.z[0]) < 0:
            means = torch.stack([out_s.mean(), out_t.mean()]).detach()
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(means)
                means /= dist.get_world_size()
            self.z.copy_(means * self.num_samples)
        loss = nce_loss(out_s / self.z[0], self.num_samples) + nce_loss(out_t / self.z[1], self.num_samples)
        with torch.no_grad():
            every_index, every_s, every_t = _gathered(index, v_s, v_t)
            for bank, v in ((self.memory_s, every_s), (self.memory_t, every_t)):
                moved = F.normalize(bank[every_index] * NCE_M + v * (1 - NCE_M), dim=1)
                bank.index_copy_(0, every_index, moved)
        return loss
