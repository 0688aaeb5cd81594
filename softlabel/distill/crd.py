"""Contrastive representation distillation (Tian et al., ICLR 2020), with RepDistiller's defaults:
the penultimate embeddings of student and teacher, each through a linear embedding to 128
dimensions and L2-normalized, are contrasted against two memory banks of every training sample's
past embeddings (one per network): for each sample its own entry is the positive and 16384
entries of other classes the negatives (RepDistiller's ``mode exact``), scored exp(v·m / 0.07)
over a normalization constant fixed at the first step, and the NCE loss of its Eq. 18 is taken
both ways (teacher anchor over the student bank and back). After each step the banks move toward
the batch's embeddings with momentum 0.5. Weight 0.8.

Across ranks the banks stay identical: every rank applies every rank's updates (all-gathered,
in rank order), and the normalization constant is the mean over ranks; the banks and the
constant are buffers, so a checkpoint holds them and ``--resume`` continues exactly.
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


class CRD(Distiller):
    name, weight, source = "crd", 0.8, "Tian et al. 2020; RepDistiller -b 0.8, feat_dim 128, nce_k 16384, nce_t 0.07"
    broadcast_buffers = False

    def __init__(self, student: Features, teacher: Features, num_samples: int = 0,
                 targets: Optional[torch.Tensor] = None, **context):
        super().__init__(student, teacher, **context)
        if not num_samples or targets is None:
            raise ValueError("CRD needs the training set's size and classes (its memory banks)")
        self.num_samples, self.k = num_samples, min(NCE_K, max(1, num_samples - 1))
        self.embed_s = nn.Linear(student.embedding.shape[1], FEAT_DIM)
        self.embed_t = nn.Linear(teacher.embedding.shape[1], FEAT_DIM)
        bound = 1.0 / math.sqrt(FEAT_DIM / 3)
        self.register_buffer("memory_s", torch.rand(num_samples, FEAT_DIM) * 2 * bound - bound)
        self.register_buffer("memory_t", torch.rand(num_samples, FEAT_DIM) * 2 * bound - bound)
        self.register_buffer("z", torch.full((2,), -1.0))  # normalization constants, set at the first step
        self.register_buffer("targets", targets.long().clone())

    def negatives(self, index: torch.Tensor) -> torch.Tensor:
        """(B, K) dataset indices of other classes than each sample's (uniform; redrawn until so)."""
        idx = torch.randint(self.num_samples, (len(index), self.k), device=index.device)
        own = self.targets[index][:, None]
        for _ in range(100):
            same = self.targets[idx] == own
            if not bool(same.any()):
                break
            idx[same] = torch.randint(self.num_samples, (int(same.sum()),), device=index.device)
        return idx

    def forward(self, student: Features, teacher: Features, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        if index is None:
            raise ValueError("CRD needs the dataset index of every sample")
        index = index.to(self.memory_s.device).long()
        v_s = F.normalize(self.embed_s(student.embedding.float()), dim=1)
        v_t = F.normalize(self.embed_t(teacher.embedding.float()), dim=1)
        idx = torch.cat([index[:, None], self.negatives(index)], dim=1)  # column 0: the positive
        # teacher anchor against the student's bank, and the student's embedding against the teacher's
        out_t = torch.exp(torch.bmm(self.memory_s[idx].detach(), v_t.unsqueeze(2)).squeeze(2) / NCE_T)
        out_s = torch.exp(torch.bmm(self.memory_t[idx].detach(), v_s.unsqueeze(2)).squeeze(2) / NCE_T)
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
