"""Relational KD (Park et al., CVPR 2019): on the penultimate embeddings, the pairwise distances
(each normalized by its mean) and the angles of every triplet, each compared by smooth L1;
distance weight 25, angle weight 50, total weight 1 (RepDistiller)."""
from __future__ import annotations

from typing import Optional

import torch
from torch.nn import functional as F

from softlabel.distill.base import Distiller, Features

W_DISTANCE, W_ANGLE = 25.0, 50.0


def distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    sq = e.pow(2).sum(1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).view(-1)


class RKD(Distiller):
    name, weight, source = "rkd", 1.0, "Park et al. 2019; RepDistiller -b 1, w_d 25, w_a 50"

    def forward(self, student: Features, teacher: Features, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        s, t = student.embedding, teacher.embedding.detach()
        with torch.no_grad():
            td = distances(t)
            td = td / td[td > 0].mean()
            ta = angles(t)
        d = distances(s)
        d = d / d[d > 0].mean()
        return W_DISTANCE * F.smooth_l1_loss(d, td) + W_ANGLE * F.smooth_l1_loss(angles(s), ta)
